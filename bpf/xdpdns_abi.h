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

/* Default size of the XSKMAP; the loader resizes it to the device's queue count. */
#define XDPDNS_MAX_QUEUES 64
/* Capacity of each destination map (listen addresses, later backend reply ports). */
#define XDPDNS_MAX_DESTINATIONS 4096

/* Kernel constant: copy-mode AF_XDP places frames this far into a UMEM chunk. */
#define XDPDNS_XDP_PACKET_HEADROOM 256

/* Values stored in the destination maps: why the destination is ours. */
#define XDPDNS_DEST_LISTEN 1

/*
 * Per-CPU counters, one slot per outcome. Exactly one slot is incremented per
 * frame the program sees. Only REDIRECT hands a frame to AF_XDP; every other
 * outcome is XDP_PASS (the kernel stack). The program never drops.
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
#define XDPDNS_STAT_COUNT       10

#endif /* XDPDNS_ABI_H */
