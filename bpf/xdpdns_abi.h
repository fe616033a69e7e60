/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * xdpdns ABI shared by the XDP program and userspace.
 *
 * Every value here has a twin in common/src/maps.rs; a unit test there reads
 * this file and fails if the two disagree. Change both, or neither.
 */
#ifndef XDPDNS_ABI_H
#define XDPDNS_ABI_H

/* Map names, as the loader looks them up in the object and pins them. */
#define XDPDNS_MAP_XSKS     xsks
#define XDPDNS_MAP_DEST_V4  dest_v4
#define XDPDNS_MAP_DEST_V6  dest_v6
#define XDPDNS_MAP_STATS    stats
/* One u64: the loader's fingerprint of the object and its load parameters. */
#define XDPDNS_MAP_META     meta
/* Client ACL, double-buffered: the loader fills the inactive pair, then flips. */
#define XDPDNS_MAP_ACL_V4_0 acl_v4_0
#define XDPDNS_MAP_ACL_V4_1 acl_v4_1
#define XDPDNS_MAP_ACL_V6_0 acl_v6_0
#define XDPDNS_MAP_ACL_V6_1 acl_v6_1
/* The ACL's fast path, one entry per slot and family (slot * 2 + v6):
 * per /16 (an address's first 16 bits), whether the allow list covers all
 * of it, some of it (the trie decides) or none (denied, no trie lookup). */
#define XDPDNS_MAP_ACL_FAST acl_fast
#define XDPDNS_ACL_FAST_WORDS 1024
/* One u32 of settings the loader changes live (see XDPDNS_SETTING_*). */
#define XDPDNS_MAP_SETTINGS settings
/* Backends (address, port) whose replies the program redirects; the value:
 * our source address toward them (u32 or 16 bytes, network order). */
#define XDPDNS_MAP_BACKENDS_V4 backends_v4
#define XDPDNS_MAP_BACKENDS_V6 backends_v6
/* Per-CPU counters per listen address (XDPDNS_LISTEN_STAT_*). */
#define XDPDNS_MAP_LISTEN_STATS listen_stats
/* Abuse protection. Per-client policy tries (exempt from limits, or
 * blocked), double-buffered with the ACL (same slot bit); rate-limit
 * parameters, two entries, the slot bit picks one; per-client-prefix rate
 * state (LRU hashes: a GCRA "theoretical arrival time" each). */
#define XDPDNS_MAP_POLICY_V4_0 policy_v4_0
#define XDPDNS_MAP_POLICY_V4_1 policy_v4_1
#define XDPDNS_MAP_POLICY_V6_0 policy_v6_0
#define XDPDNS_MAP_POLICY_V6_1 policy_v6_1
#define XDPDNS_MAP_LIMITS  limits
#define XDPDNS_MAP_RATE_V4 rate_v4
#define XDPDNS_MAP_RATE_V6 rate_v6
/* Per-CPU hits per block, by the index in the upper bits of its policy value. */
#define XDPDNS_MAP_BLOCK_HITS block_hits

/* Default size of the XSKMAP; the loader resizes it to the device's queue count. */
#define XDPDNS_MAX_QUEUES 64
/* Capacity of each destination map (listen addresses and forwarding sources). */
#define XDPDNS_MAX_DESTINATIONS 4096
/* Listen addresses the per-listen counters cover. */
#define XDPDNS_MAX_LISTEN 256
/* Prefixes per ACL trie, backends per backend map. */
#define XDPDNS_MAX_ACL 4096
#define XDPDNS_MAX_BACKENDS 4096
/* Client prefixes the rate state tracks at once, per family (LRU). */
#define XDPDNS_RATE_ENTRIES 65536

/* Block hit counters (and so blocks with one of their own). */
#define XDPDNS_MAX_BLOCK_HITS 8192

/* Policy trie values: the longest matching prefix decides. The low 4 bits
 * say what (XDPDNS_POLICY_KIND: below), bits 4-5 how a block's UDP queries
 * are answered, bits 8 and up a block's index in block_hits. */
#define XDPDNS_POLICY_KIND   15
#define XDPDNS_POLICY_EXEMPT 1 /* never rate-limited */
#define XDPDNS_POLICY_BLOCK  2 /* UDP dropped (TCP left alone: TC-slipped clients retry) */
#define XDPDNS_POLICY_BLOCK_TCP 3 /* UDP and TCP to listen addresses dropped */
#define XDPDNS_POLICY_ANSWER_REFUSED 16 /* a block's UDP queries answered REFUSED */
#define XDPDNS_POLICY_ANSWER_TC      32 /* a block's UDP queries answered TC=1 */

/* struct xdpdns_limits flags. */
#define XDPDNS_LIMIT_ON      1 /* rate limits apply */
#define XDPDNS_LIMIT_DRY_RUN 2 /* limits and blocks only count */
/* struct xdpdns_limits action: what a limited query gets. */
#define XDPDNS_LIMIT_DROP    0 /* dropped; with slip N, every Nth answered TC=1 */
#define XDPDNS_LIMIT_REFUSED 1 /* REFUSED, built here */
#define XDPDNS_LIMIT_TC      2 /* TC=1, built here: the client retries over TCP */

/* Kernel constant: copy-mode AF_XDP places frames this far into a UMEM chunk. */
#define XDPDNS_XDP_PACKET_HEADROOM 256

/* Destination map values: kind in the low 16 bits, listen index above. */
#define XDPDNS_DEST_LISTEN  1 /* a listen address: ACL, then AF_XDP */
#define XDPDNS_DEST_FORWARD 2 /* a forwarding source address (port 0): replies */

/* The settings word: which ACL pair is active, what denial does, whether
 * query checksums are verified. One u32, so the loader changes it at once. */
#define XDPDNS_SETTING_ACL_SLOT    1 /* bit: the _1 tries are active */
#define XDPDNS_SETTING_ACL_REFUSED 2 /* bit: denied queries get REFUSED */
#define XDPDNS_SETTING_VERIFY_CSUM 4 /* bit: verify queries' UDP checksums */
#define XDPDNS_SETTING_POLICE     16 /* bit: limits, exempt or blocked prefixes exist
                                      * (without it no lookup is spent on them) */
#define XDPDNS_SETTING_TCP_BLOCKS 32 /* bit: some block covers TCP too */
#define XDPDNS_SETTING_NO_TX       8 /* bit: XDP_TX does not reach the wire (a veth
                                      * whose peer runs no XDP): what would be
                                      * answered here goes to the kernel stack */

/* Per-listen counters, XDPDNS_LISTEN_STAT_COUNT per listen index. */
#define XDPDNS_LISTEN_STAT_ALLOWED     0 /* passed the ACL */
#define XDPDNS_LISTEN_STAT_ACL_DROPPED 1 /* outside the ACL: dropped */
#define XDPDNS_LISTEN_STAT_ACL_REFUSED 2 /* outside the ACL: REFUSED sent */
#define XDPDNS_LISTEN_STAT_COUNT       3

/*
 * Per-CPU counters, one slot per outcome. Exactly one slot is incremented per
 * frame the program sees, and PARTIAL_CSUM or DRY_RUN besides for some. REDIRECT hands a frame to AF_XDP; ACL_DROPPED and
 * NOT_BACKEND are XDP_DROP, ACL_REFUSED is XDP_TX (an answer built in place);
 * every other outcome is XDP_PASS (the kernel stack).
 */
#define XDPDNS_STAT_REDIRECT     0 /* to the receiving queue's AF_XDP socket */
#define XDPDNS_STAT_NO_SOCKET    1 /* ours, but the queue has no socket: kernel path */
#define XDPDNS_STAT_TOO_LARGE    2 /* ours, but larger than a UMEM frame: kernel path */
#define XDPDNS_STAT_OTHER_DEST   3 /* UDP to an address/port that is not ours */
#define XDPDNS_STAT_NOT_IP       4 /* ARP, LLDP, unknown ethertype, double VLAN */
#define XDPDNS_STAT_NOT_UDP      5 /* TCP, ICMP, ... */
#define XDPDNS_STAT_FRAGMENT     6 /* IPv4 fragment (IPv6 fragments count as IPV6_EXT) */
#define XDPDNS_STAT_IPV4_OPTIONS 7 /* IHL > 5 */
#define XDPDNS_STAT_IPV6_EXT     8 /* any IPv6 extension header */
#define XDPDNS_STAT_TRUNCATED    9 /* headers cut short, or a bad IP version/IHL */
#define XDPDNS_STAT_ACL_DROPPED 10 /* a query from outside the ACL: dropped */
#define XDPDNS_STAT_ACL_REFUSED 11 /* a query from outside the ACL: REFUSED in XDP */
#define XDPDNS_STAT_NOT_BACKEND 12 /* to a forwarding port, not from a backend: dropped */
#define XDPDNS_STAT_BAD_CSUM    13 /* a query whose UDP checksum does not verify: the
                                    * kernel judges it (offloaded partial: accepted) */
#define XDPDNS_STAT_UNVERIFIED  14 /* a query too long to verify here: kernel path */
#define XDPDNS_STAT_ACL_TO_KERNEL  15 /* outside the ACL, REFUSED wanted but no XDP_TX
                                    * here (SETTING_NO_TX): the kernel path answers */
#define XDPDNS_STAT_PARTIAL_CSUM 16 /* of the redirected queries (counted there too):
                                    * a local peer's offloaded partial checksum */
#define XDPDNS_STAT_BLOCKED     17 /* a query from a blocked prefix: dropped */
#define XDPDNS_STAT_RATE_LIMITED 18 /* over its prefix's rate: dropped */
#define XDPDNS_STAT_DRY_RUN     19 /* would have been blocked or limited (dry run:
                                    * counted here too, then served) */
#define XDPDNS_STAT_LIMIT_ANSWERED 20 /* over its prefix's rate: answered REFUSED or
                                       * TC=1 (slip) in XDP (XDP_TX) */
#define XDPDNS_STAT_BLOCK_ANSWERED 21 /* a query from a blocked prefix: answered
                                       * REFUSED or TC=1 in XDP (XDP_TX) */
#define XDPDNS_STAT_COUNT       22

#endif /* XDPDNS_ABI_H */
