// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * xdpdns XDP program.
 *
 * UDP to a listen address (address, port): the client's address is looked
 * up in the ACL; a client outside it is dropped, or answered REFUSED right
 * here (XDP_TX); a client inside goes to the AF_XDP socket of the queue the
 * frame arrived on — if its UDP checksum verifies: a frame whose checksum
 * does not (a local peer's offloaded, partial checksum, or corruption) goes
 * to the kernel stack, which can tell the two apart.
 *
 * UDP to one of our forwarding source addresses, on a port of the
 * forwarding range: a backend's reply, redirected to AF_XDP if it comes from
 * a backend and dropped if it does not.
 *
 * Everything else goes to the kernel stack, and so does a matching frame on
 * a queue without a socket (bpf_redirect_map falls back to XDP_PASS for an
 * empty XSKMAP slot): a dataplane that dies degrades its queue to the kernel
 * path, it never blackholes it.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdpdns_abi.h"

/* Matches common/src/maps.rs DestV4Key: address and port in network order. */
struct dest_v4_key {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

/* Matches common/src/maps.rs DestV6Key. */
struct dest_v6_key {
	__u8 addr[16];
	__u16 port;
	__u16 pad;
};

/* LPM trie keys: prefix length, then the address in network order. */
struct lpm_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XDPDNS_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} XDPDNS_MAP_XSKS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPDNS_MAX_DESTINATIONS);
	__type(key, struct dest_v4_key);
	__type(value, __u32);
} XDPDNS_MAP_DEST_V4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPDNS_MAX_DESTINATIONS);
	__type(key, struct dest_v6_key);
	__type(value, __u32);
} XDPDNS_MAP_DEST_V6 SEC(".maps");

/* Backends: the value is our address their queries leave from (network
 * order), so a reply to it is known ours with this one lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPDNS_MAX_BACKENDS);
	__type(key, struct dest_v4_key);
	__type(value, __u32);
} XDPDNS_MAP_BACKENDS_V4 SEC(".maps");

struct backend_v6_source {
	__u32 w[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPDNS_MAX_BACKENDS);
	__type(key, struct dest_v6_key);
	__type(value, struct backend_v6_source);
} XDPDNS_MAP_BACKENDS_V6 SEC(".maps");

#define ACL_TRIE(name, key_type)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                                               \
		__uint(max_entries, XDPDNS_MAX_ACL);                                               \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                              \
		__type(key, key_type);                                                             \
		__type(value, __u32);                                                              \
	} name SEC(".maps")

/* Twin: common/src/maps.rs `AclFast`. Bit b of the 1,024 words: the /16
 * whose first 16 bits are b. `all` set: allowed; else `some` set: the trie
 * decides; neither: denied. */
struct acl_fast {
	__u64 all[XDPDNS_ACL_FAST_WORDS];
	__u64 some[XDPDNS_ACL_FAST_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct acl_fast);
} XDPDNS_MAP_ACL_FAST SEC(".maps");

ACL_TRIE(XDPDNS_MAP_ACL_V4_0, struct lpm_v4_key);
ACL_TRIE(XDPDNS_MAP_ACL_V4_1, struct lpm_v4_key);
ACL_TRIE(XDPDNS_MAP_ACL_V6_0, struct lpm_v6_key);
ACL_TRIE(XDPDNS_MAP_ACL_V6_1, struct lpm_v6_key);
ACL_TRIE(XDPDNS_MAP_POLICY_V4_0, struct lpm_v4_key);
ACL_TRIE(XDPDNS_MAP_POLICY_V4_1, struct lpm_v4_key);
ACL_TRIE(XDPDNS_MAP_POLICY_V6_0, struct lpm_v6_key);
ACL_TRIE(XDPDNS_MAP_POLICY_V6_1, struct lpm_v6_key);

/* Rate limits (twin: common/src/maps.rs `Limits`). A client prefix may send
 * one query per interval_ns on average and run ahead of that by at most
 * tolerance_ns (its burst): GCRA, one u64 of state per prefix. */
struct xdpdns_limits {
	__u64 interval_ns;
	__u64 tolerance_ns;
	__u32 v4_prefix;
	__u32 v6_prefix;
	__u32 flags;
	__u32 action;
	__u32 slip;
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct xdpdns_limits);
} XDPDNS_MAP_LIMITS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPDNS_MAX_BLOCK_HITS);
	__type(key, __u32);
	__type(value, __u64);
} XDPDNS_MAP_BLOCK_HITS SEC(".maps");

struct rate_v6_key {
	__u32 w[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPDNS_RATE_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} XDPDNS_MAP_RATE_V4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPDNS_RATE_ENTRIES);
	__type(key, struct rate_v6_key);
	__type(value, __u64);
} XDPDNS_MAP_RATE_V6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} XDPDNS_MAP_SETTINGS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPDNS_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} XDPDNS_MAP_STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPDNS_MAX_LISTEN *XDPDNS_LISTEN_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} XDPDNS_MAP_LISTEN_STATS SEC(".maps");

/*
 * Never read by the program: the loader stores a fingerprint of this object
 * and its load parameters here, so a restarted loader can tell whether the
 * pinned program is the one it would load (and adopt it) or must replace it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} XDPDNS_MAP_META SEC(".maps");

/*
 * Largest frame (from the Ethernet header on) that fits a UMEM chunk after the
 * kernel's headroom. Set by the loader from xsk.frame_size; 0 disables the check.
 */
volatile const __u32 max_frame_len = 0;
/* The forwarding port range: [fwd_port_lo, fwd_port_lo + fwd_ports). */
volatile const __u32 fwd_port_lo = 0;
volatile const __u32 fwd_ports = 0;

/* Longest UDP datagram whose checksum is verified here: what the largest
 * UMEM frame (4096 bytes less the kernel's headroom) holds; longer frames
 * take the kernel path anyway. */
#define MAX_VERIFY 3840
/* Labels walked in a question name (255 bytes hold at most 127). */
#define MAX_LABELS 128
/* Our answers' hop limit. */
#define REPLY_TTL 64

static __always_inline int count(__u32 slot, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&XDPDNS_MAP_STATS, &slot);

	if (n)
		*n += 1;
	return verdict;
}

static __always_inline void count_listen(__u32 listen, __u32 stat)
{
	__u32 slot = listen * XDPDNS_LISTEN_STAT_COUNT + stat;
	__u64 *n;

	if (listen >= XDPDNS_MAX_LISTEN)
		return;
	n = bpf_map_lookup_elem(&XDPDNS_MAP_LISTEN_STATS, &slot);
	if (n)
		*n += 1;
}

static __always_inline __u32 current_settings(void)
{
	__u32 k = 0;
	__u32 *v = bpf_map_lookup_elem(&XDPDNS_MAP_SETTINGS, &k);

	return v ? *v : 0;
}

static __always_inline int to_socket(struct xdp_md *ctx, void *data, void *end)
{
	int verdict;

	if (max_frame_len && (__u64)(end - data) > max_frame_len)
		return count(XDPDNS_STAT_TOO_LARGE, XDP_PASS);
	verdict = bpf_redirect_map(&XDPDNS_MAP_XSKS, ctx->rx_queue_index, XDP_PASS);
	return count(verdict == XDP_REDIRECT ? XDPDNS_STAT_REDIRECT : XDPDNS_STAT_NO_SOCKET, verdict);
}

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* Keeps clang from re-deriving a packet pointer from a loop counter, which
 * hides the bounds check from the verifier. */
#define BARRIER(p) asm volatile("" : "+r"(p))

/*
 * The ones' complement sum of `len` bytes from `p` (as the kernel's
 * csum_partial sums them: folding and storing without swapping gives the
 * network-order checksum). 64-byte blocks go to bpf_csum_diff, the rest in
 * words. Sets *ok to 0 if the bytes run past `end` or `len` is too long.
 */
static __always_inline __u64 sum_bytes(void *p, void *end, __u32 len, int *ok)
{
	__u64 sum = 0;
	__u32 left = len;
	int i;

	*ok = 0;
	if (len > MAX_VERIFY)
		return 0;
	for (i = 0; i < MAX_VERIFY / 64; i++) {
		__s64 s;

		if (left < 64)
			break;
		BARRIER(p);
		if (p + 64 > end)
			return 0;
		s = bpf_csum_diff(0, 0, p, 64, 0);
		if (s < 0)
			return 0;
		sum += (__u64)s;
		p += 64;
		left -= 64;
	}
	/* Under 64 bytes left: 32, 16, 8 and 4 at a time, each step straight
	 * loads under one bounds check (a DNS query is mostly this part). */
#define SUM_WORDS(n)                                                                               \
	do {                                                                                       \
		if (left >= (n) * 4) {                                                             \
			__u32 *w;                                                                  \
                                                                                                   \
			BARRIER(p);                                                                \
			if (p + (n) * 4 > end)                                                     \
				return 0;                                                          \
			w = p;                                                                     \
			for (i = 0; i < (n); i++)                                                  \
				sum += w[i];                                                       \
			p += (n) * 4;                                                              \
			left -= (n) * 4;                                                           \
		}                                                                                  \
	} while (0)
	SUM_WORDS(8);
	SUM_WORDS(4);
	SUM_WORDS(2);
	SUM_WORDS(1);
#undef SUM_WORDS
	BARRIER(p);
	if (left >= 2) {
		if (p + 2 > end)
			return 0;
		sum += *(__u16 *)p;
		p += 2;
		left -= 2;
	}
	BARRIER(p);
	if (left == 1) {
		if (p + 1 > end)
			return 0;
		sum += *(__u8 *)p;
	}
	*ok = 1;
	return sum;
}

/*
 * Whether the UDP checksum of the query at `l3` verifies: 1 yes (or none,
 * over IPv4), 0 no (RFC 8200 forbids a zero checksum over IPv6), 2 too long
 * to verify here, 3 a partial checksum (the field holds just the folded
 * pseudo-header sum, as a local peer's TX offload leaves it: the kernel
 * accepts those from a veth, and a corrupt frame matches it no more often
 * than it matches the right checksum). A global function: the verifier
 * checks it once.
 */
__attribute__((noinline)) int query_checksum(struct xdp_md *ctx, __u32 l3, __u32 v6)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct udphdr *udp;
	__u64 sum = 0;
	__u32 len;
	int ok, i;

	/* The Ethernet header, with or without one VLAN tag: never anything else. */
	l3 = l3 == 18 ? 18 : 14;
	if (v6) {
		struct ipv6hdr *ip6 = data + l3;
		__u32 *a;

		if ((void *)(ip6 + 1) > end)
			return 0;
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > end || udp->check == 0)
			return 0;
		a = (__u32 *)&ip6->saddr;
		for (i = 0; i < 8; i++)
			sum += a[i];
	} else {
		struct iphdr *ip = data + l3;

		if ((void *)(ip + 1) > end)
			return 0;
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return 0;
		if (udp->check == 0)
			return 1;
		sum = (__u64)ip->saddr + ip->daddr;
	}
	len = bpf_ntohs(udp->len);
	/* A UDP length the frame does not hold, or shorter than the header,
	 * cannot verify: the kernel judges (and drops) it. */
	if (len < sizeof(struct udphdr) || (void *)udp + len > end)
		return 0;
	if (len > MAX_VERIFY)
		return 2;
	sum += bpf_htons(IPPROTO_UDP) + udp->len;
	if (udp->check == fold(sum))
		return 3;
	sum += sum_bytes(udp, end, len, &ok);
	return ok && fold(sum) == 0xffff;
}

/*
 * Turns the query in this frame into an answer with the rcode in `how` and
 * nothing but the question (and TC if `how` has ANSWER_TC), in place, for XDP_TX: headers turned round,
 * the frame cut after the question, checksums computed. 0 on success, -1 if
 * the query cannot be answered so (a response, not one question, a question
 * that does not parse): the caller then drops it. A global function: the
 * verifier checks it once.
 */
/* What answer_here writes: an rcode, and TC. */
#define ANSWER_TC 0x100

__attribute__((noinline)) int finish_answer(struct xdp_md *ctx, __u32 l3, __u32 v6, __u32 how,
					    __u32 dns_len);

__attribute__((noinline)) int answer_here(struct xdp_md *ctx, __u32 l3, __u32 v6, __u32 how)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 l4, off = 12;
	int found = 0, i;
	__u8 *dns;

	l3 = l3 == 18 ? 18 : 14;
	l4 = l3 + (v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	dns = data + l4 + sizeof(struct udphdr);
	BARRIER(dns);
	if ((void *)(dns + 12) > end)
		return -1;
	if ((dns[2] & 0x80) || dns[4] != 0 || dns[5] != 1)
		return -1;
	for (i = 0; i < MAX_LABELS; i++) {
		__u8 *p;
		__u8 n;

		if (off > 12 + 254)
			return -1;
		p = dns + off;
		BARRIER(p);
		if ((void *)(p + 1) > end)
			return -1;
		n = *p;
		if (n == 0) {
			found = 1;
			break;
		}
		if (n > 63)
			return -1;
		off += n + 1;
	}
	if (!found)
		return -1;
	return finish_answer(ctx, l3, v6, how, off + 1 + 4 /* root, type, class */);
}

/*
 * The rest of answer_here, once the question's end is known: the DNS part
 * is `dns_len` bytes. Its own global function, so the verifier checks it
 * once rather than once per length the name walk can end with.
 */
__attribute__((noinline)) int finish_answer(struct xdp_md *ctx, __u32 l3, __u32 v6, __u32 how,
					    __u32 dns_len)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 l4, new_len;
	struct ethhdr *eth;
	struct udphdr *udp;
	__u8 mac[ETH_ALEN];
	int i, delta, ok;
	__be16 port;
	__u8 *dns;
	__u64 sum;

	l3 = l3 == 18 ? 18 : 14;
	l4 = l3 + (v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	if (dns_len < 12 + 5 || dns_len > 12 + 256 + 4)
		return -1;
	dns = data + l4 + sizeof(struct udphdr);
	BARRIER(dns);
	if ((void *)(dns + dns_len) > end)
		return -1;
	new_len = l4 + sizeof(struct udphdr) + dns_len;
	delta = (int)new_len - (int)(end - data);
	if (delta > 0)
		return -1;
	if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta))
		return -1;

	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	if (v6) {
		struct ipv6hdr *ip6 = data + l3;
		struct in6_addr a;
		__u32 *w;

		if ((void *)(ip6 + 1) > end)
			return -1;
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > end)
			return -1;
		a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
		ip6->payload_len = bpf_htons(sizeof(struct udphdr) + dns_len);
		ip6->hop_limit = REPLY_TTL;
		w = (__u32 *)&ip6->saddr;
		sum = 0;
		for (i = 0; i < 8; i++)
			sum += w[i];
	} else {
		struct iphdr *ip = data + l3;
		__u64 hs = 0;
		__u16 *h;
		__u32 t;

		if ((void *)(ip + 1) > end)
			return -1;
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return -1;
		t = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = t;
		ip->tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct udphdr) + dns_len);
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); /* DF */
		ip->ttl = REPLY_TTL;
		ip->check = 0;
		h = (__u16 *)ip;
		for (i = 0; i < 10; i++)
			hs += h[i];
		ip->check = ~fold(hs);
		sum = (__u64)ip->saddr + ip->daddr;
	}
	port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(sizeof(struct udphdr) + dns_len);
	udp->check = 0;
	dns = (void *)(udp + 1);
	BARRIER(dns);
	if ((void *)(dns + 12) > end)
		return -1;
	/* QR, the opcode and RD kept, AA and TC cleared (TC set if asked); CD
	 * kept, RA/Z/AD cleared, the rcode. One question, nothing else. */
	dns[2] = (dns[2] & 0x79) | 0x80 | ((how & ANSWER_TC) ? 0x02 : 0);
	dns[3] = (dns[3] & 0x10) | (how & 0x0f);
	dns[6] = 0;
	dns[7] = 0;
	dns[8] = 0;
	dns[9] = 0;
	dns[10] = 0;
	dns[11] = 0;
	sum += bpf_htons(IPPROTO_UDP) + udp->len;
	sum += sum_bytes(udp, end, sizeof(struct udphdr) + dns_len, &ok);
	if (!ok)
		return -1;
	udp->check = ~fold(sum);
	if (udp->check == 0)
		udp->check = 0xffff;
	return 0;
}

/* A query from outside the ACL: dropped, or answered REFUSED here (or by
 * the kernel path, which applies the same ACL, where XDP_TX cannot work). */
static __always_inline int deny(struct xdp_md *ctx, __u32 set, __u32 listen, __u32 l3, int v6)
{
	if ((set & XDPDNS_SETTING_ACL_REFUSED) && (set & XDPDNS_SETTING_NO_TX)) {
		count_listen(listen, XDPDNS_LISTEN_STAT_ACL_REFUSED);
		return count(XDPDNS_STAT_ACL_TO_KERNEL, XDP_PASS);
	}
	if ((set & XDPDNS_SETTING_ACL_REFUSED) && answer_here(ctx, l3, v6, 5) == 0) {
		count_listen(listen, XDPDNS_LISTEN_STAT_ACL_REFUSED);
		return count(XDPDNS_STAT_ACL_REFUSED, XDP_TX);
	}
	count_listen(listen, XDPDNS_LISTEN_STAT_ACL_DROPPED);
	return count(XDPDNS_STAT_ACL_DROPPED, XDP_DROP);
}

/* The fast path's verdict on the /16 `top` of family `v6`: 1 allowed, 0
 * denied, -1 the trie decides. An array lookup (inlined by the verifier),
 * so a client the list covers or misses by whole /16s costs no trie walk. */
static __always_inline int acl_fast_verdict(__u32 set, int v6, __u32 top)
{
	__u32 k = ((set & XDPDNS_SETTING_ACL_SLOT) ? 2 : 0) + (v6 ? 1 : 0);
	struct acl_fast *f = bpf_map_lookup_elem(&XDPDNS_MAP_ACL_FAST, &k);
	__u32 w = (top >> 6) & (XDPDNS_ACL_FAST_WORDS - 1);
	__u64 bit = 1ULL << (top & 63);

	if (!f)
		return -1;
	if (f->all[w] & bit)
		return 1;
	if (f->some[w] & bit)
		return -1;
	return 0;
}

static __always_inline int acl_allows_v4(__u32 set, __u32 saddr)
{
	struct lpm_v4_key k = { .prefixlen = 32 };
	int fast = acl_fast_verdict(set, 0, bpf_ntohl(saddr) >> 16);

	if (fast >= 0)
		return fast;
	__builtin_memcpy(k.addr, &saddr, 4);
	if (set & XDPDNS_SETTING_ACL_SLOT)
		return bpf_map_lookup_elem(&XDPDNS_MAP_ACL_V4_1, &k) != NULL;
	return bpf_map_lookup_elem(&XDPDNS_MAP_ACL_V4_0, &k) != NULL;
}

static __always_inline int acl_allows_v6(__u32 set, struct in6_addr *saddr)
{
	struct lpm_v6_key k = { .prefixlen = 128 };
	int fast = acl_fast_verdict(set, 1, ((__u32)saddr->s6_addr[0] << 8) | saddr->s6_addr[1]);

	if (fast >= 0)
		return fast;
	__builtin_memcpy(k.addr, saddr, 16);
	if (set & XDPDNS_SETTING_ACL_SLOT)
		return bpf_map_lookup_elem(&XDPDNS_MAP_ACL_V6_1, &k) != NULL;
	return bpf_map_lookup_elem(&XDPDNS_MAP_ACL_V6_0, &k) != NULL;
}

static __always_inline const struct xdpdns_limits *current_limits(__u32 set)
{
	__u32 k = (set & XDPDNS_SETTING_ACL_SLOT) ? 1 : 0;

	return bpf_map_lookup_elem(&XDPDNS_MAP_LIMITS, &k);
}

/* Network-order mask of the first `bits` (0..32) bits of a word. */
static __always_inline __u32 mask32(__u32 bits)
{
	if (bits == 0)
		return 0;
	if (bits >= 32)
		return 0xffffffff;
	return bpf_htonl(0xffffffffu << (32 - bits));
}

/*
 * GCRA on one prefix's state `tat` (the time its next query is due): 1 if
 * this query is over the limit. CPUs update it with compare-and-swap, so
 * a client spread over every queue is one client; after a few lost races
 * the query counts as limited (the state moved on: others were served).
 */
static __always_inline int over_rate(__u64 *tat, const struct xdpdns_limits *l, __u64 now)
{
	int i;

	for (i = 0; i < 4; i++) {
		__u64 old = *(volatile __u64 *)tat;
		__u64 base = old > now ? old : now;

		if (base - now > l->tolerance_ns)
			return 1;
		if (__sync_val_compare_and_swap(tat, old, base + l->interval_ns) == old)
			return 0;
	}
	return 1;
}

static __always_inline void count_block(__u32 index)
{
	__u64 *n = bpf_map_lookup_elem(&XDPDNS_MAP_BLOCK_HITS, &index);

	if (n)
		*n += 1;
}

/* The per-CPU count of limited queries so far, dropped or answered (for
 * slip: every Nth). */
static __always_inline __u64 limited_so_far(void)
{
	__u32 dropped = XDPDNS_STAT_RATE_LIMITED, answered = XDPDNS_STAT_LIMIT_ANSWERED;
	__u64 *d = bpf_map_lookup_elem(&XDPDNS_MAP_STATS, &dropped);
	__u64 *a = bpf_map_lookup_elem(&XDPDNS_MAP_STATS, &answered);

	return (d ? *d : 0) + (a ? *a : 0);
}

/* A limited query: dropped, or answered REFUSED / TC=1 right here (XDP_TX)
 * where that reaches the wire; where it does not (a veth), dropped. */
static __always_inline int limit(struct xdp_md *ctx, __u32 set, __u32 l3, int v6,
				 const struct xdpdns_limits *l)
{
	__u32 how = 0;

	if (l->action == XDPDNS_LIMIT_REFUSED)
		how = 5;
	else if (l->action == XDPDNS_LIMIT_TC)
		how = ANSWER_TC;
	else if (l->slip && limited_so_far() % l->slip == l->slip - 1)
		how = ANSWER_TC;
	if (how && !(set & XDPDNS_SETTING_NO_TX) && answer_here(ctx, l3, v6, how) == 0)
		return count(XDPDNS_STAT_LIMIT_ANSWERED, XDP_TX);
	return count(XDPDNS_STAT_RATE_LIMITED, XDP_DROP);
}

/* -1: go on; otherwise the verdict for a blocked or limited query. */
static __always_inline int police(struct xdp_md *ctx, __u32 set, __u32 l3, int v6, __u32 *policy,
				  const struct xdpdns_limits *l, void *rate, void *key)
{
	int dry = l && (l->flags & XDPDNS_LIMIT_DRY_RUN);
	__u64 now, *tat;

	__u32 kind = policy ? (*policy & XDPDNS_POLICY_KIND) : 0;

	if (kind == XDPDNS_POLICY_EXEMPT)
		return -1;
	if (kind == XDPDNS_POLICY_BLOCK || kind == XDPDNS_POLICY_BLOCK_TCP) {
		__u32 how = 0;

		if (dry) {
			count(XDPDNS_STAT_DRY_RUN, 0);
			return -1;
		}
		count_block(*policy >> 8);
		if (*policy & XDPDNS_POLICY_ANSWER_REFUSED)
			how = 5;
		else if (*policy & XDPDNS_POLICY_ANSWER_TC)
			how = ANSWER_TC;
		/* Answered here where XDP_TX reaches the peer; otherwise (and
		 * for what cannot be answered) dropped, never passed: the
		 * kernel path would serve it. */
		if (how && !(set & XDPDNS_SETTING_NO_TX) && answer_here(ctx, l3, v6, how) == 0)
			return count(XDPDNS_STAT_BLOCK_ANSWERED, XDP_TX);
		return count(XDPDNS_STAT_BLOCKED, XDP_DROP);
	}
	if (!l || !(l->flags & XDPDNS_LIMIT_ON))
		return -1;
	now = bpf_ktime_get_ns();
	tat = bpf_map_lookup_elem(rate, key);
	if (!tat) {
		__u64 first = now + l->interval_ns;

		/* A new prefix: its first query is due now. A lost race with
		 * another CPU inserting it is one query served unmetered. */
		bpf_map_update_elem(rate, key, &first, BPF_NOEXIST);
		return -1;
	}
	if (!over_rate(tat, l, now))
		return -1;
	if (dry) {
		count(XDPDNS_STAT_DRY_RUN, 0);
		return -1;
	}
	return limit(ctx, set, l3, v6, l);
}

/* The policy (exempt, blocked) of a client address, in the active slot. */
static __always_inline __u32 *policy_v4(__u32 set, __u32 saddr)
{
	struct lpm_v4_key k = { .prefixlen = 32 };

	__builtin_memcpy(k.addr, &saddr, 4);
	if (set & XDPDNS_SETTING_ACL_SLOT)
		return bpf_map_lookup_elem(&XDPDNS_MAP_POLICY_V4_1, &k);
	return bpf_map_lookup_elem(&XDPDNS_MAP_POLICY_V4_0, &k);
}

static __always_inline __u32 *policy_v6(__u32 set, struct in6_addr *saddr)
{
	struct lpm_v6_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, saddr, 16);
	if (set & XDPDNS_SETTING_ACL_SLOT)
		return bpf_map_lookup_elem(&XDPDNS_MAP_POLICY_V6_1, &k);
	return bpf_map_lookup_elem(&XDPDNS_MAP_POLICY_V6_0, &k);
}

static __always_inline int police_v4(struct xdp_md *ctx, __u32 set, __u32 l3, __u32 saddr)
{
	const struct xdpdns_limits *l = current_limits(set);
	__u32 *policy = policy_v4(set, saddr);
	__u32 key;

	key = saddr & mask32(l ? l->v4_prefix : 32);
	return police(ctx, set, l3, 0, policy, l, &XDPDNS_MAP_RATE_V4, &key);
}

static __always_inline int police_v6(struct xdp_md *ctx, __u32 set, __u32 l3,
				     struct in6_addr *saddr)
{
	const struct xdpdns_limits *l = current_limits(set);
	__u32 *policy = policy_v6(set, saddr);
	struct rate_v6_key key;
	__u32 bits = l ? l->v6_prefix : 128;
	int i;

	__builtin_memcpy(&key, saddr, 16);
	for (i = 0; i < 4; i++) {
		__u32 b = bits > 32 * (__u32)i ? bits - 32 * (__u32)i : 0;

		key.w[i] &= mask32(b);
	}
	return police(ctx, set, l3, 1, policy, l, &XDPDNS_MAP_RATE_V6, &key);
}

/* The ports of a TCP header (all this program reads of one). */
struct tcp_ports {
	__be16 source;
	__be16 dest;
};

/* TCP to a listen address from a prefix blocked with TCP: dropped. Every
 * other TCP segment goes to the kernel stack. */
static __always_inline int tcp_verdict(__u32 set, __u32 *policy)
{
	const struct xdpdns_limits *l;

	if (!policy || (*policy & XDPDNS_POLICY_KIND) != XDPDNS_POLICY_BLOCK_TCP)
		return count(XDPDNS_STAT_NOT_UDP, XDP_PASS);
	l = current_limits(set);
	if (l && (l->flags & XDPDNS_LIMIT_DRY_RUN)) {
		count(XDPDNS_STAT_DRY_RUN, 0);
		return count(XDPDNS_STAT_NOT_UDP, XDP_PASS);
	}
	count_block(*policy >> 8);
	return count(XDPDNS_STAT_BLOCKED, XDP_DROP);
}

static __always_inline int tcp_v4(struct iphdr *ip, void *end, __u32 set)
{
	struct tcp_ports *tcp = (void *)(ip + 1);
	struct dest_v4_key key = {};
	__u32 *dest;

	if ((void *)(tcp + 1) > end)
		return count(XDPDNS_STAT_NOT_UDP, XDP_PASS);
	key.addr = ip->daddr;
	key.port = tcp->dest;
	dest = bpf_map_lookup_elem(&XDPDNS_MAP_DEST_V4, &key);
	if (!dest || (*dest & 0xffff) != XDPDNS_DEST_LISTEN)
		return count(XDPDNS_STAT_NOT_UDP, XDP_PASS);
	return tcp_verdict(set, policy_v4(set, ip->saddr));
}

static __always_inline int tcp_v6(struct ipv6hdr *ip6, void *end, __u32 set)
{
	struct tcp_ports *tcp = (void *)(ip6 + 1);
	struct dest_v6_key key = {};
	__u32 *dest;

	if ((void *)(tcp + 1) > end)
		return count(XDPDNS_STAT_NOT_UDP, XDP_PASS);
	__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
	key.port = tcp->dest;
	dest = bpf_map_lookup_elem(&XDPDNS_MAP_DEST_V6, &key);
	if (!dest || (*dest & 0xffff) != XDPDNS_DEST_LISTEN)
		return count(XDPDNS_STAT_NOT_UDP, XDP_PASS);
	return tcp_verdict(set, policy_v6(set, &ip6->saddr));
}

static __always_inline int in_forward_range(__be16 port)
{
	__u32 p = bpf_ntohs(port);

	return fwd_ports && p >= fwd_port_lo && p - fwd_port_lo < fwd_ports;
}

static __always_inline int is_ipv6_ext(__u8 next)
{
	switch (next) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_ESP:
	case 135: /* Mobility */
	case 139: /* HIP */
	case 140: /* Shim6 */
		return 1;
	}
	return 0;
}

/* A UDP query to listen address `listen`, from `saddr4` (IPv4) or, when
 * `saddr6` is set, from `*saddr6` (IPv6): the ACL, the policing, the size
 * and checksum checks, then the queue's XSK. Inlined into each family's
 * handler with the family constant, so each gets its own straight code. */
static __always_inline int serve_query(struct xdp_md *ctx, __u32 listen, __u32 l3, __u32 saddr4,
				       struct in6_addr *saddr6)
{
	__u32 set = current_settings();
	int v6 = saddr6 != NULL;
	void *data, *end;
	int v;

	if (!(v6 ? acl_allows_v6(set, saddr6) : acl_allows_v4(set, saddr4)))
		return deny(ctx, set, listen, l3, v6);
	count_listen(listen, XDPDNS_LISTEN_STAT_ALLOWED);
	v = -1;
	if (set & XDPDNS_SETTING_POLICE)
		v = v6 ? police_v6(ctx, set, l3, saddr6) : police_v4(ctx, set, l3, saddr4);
	if (v >= 0)
		return v;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (max_frame_len && (__u64)(end - data) > max_frame_len)
		return count(XDPDNS_STAT_TOO_LARGE, XDP_PASS);
	if (set & XDPDNS_SETTING_VERIFY_CSUM) {
		int c = query_checksum(ctx, l3, v6);

		if (c == 2)
			return count(XDPDNS_STAT_UNVERIFIED, XDP_PASS);
		if (c == 3)
			count(XDPDNS_STAT_PARTIAL_CSUM, 0);
		else if (c != 1)
			return count(XDPDNS_STAT_BAD_CSUM, XDP_PASS);
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
	}
	return to_socket(ctx, data, end);
}

static __always_inline int handle_v4(struct xdp_md *ctx, void *data, void *end, __u32 l3)
{
	struct iphdr *ip = data + l3;
	struct udphdr *udp = (void *)(ip + 1);
	struct dest_v4_key key = {};
	__u32 *dest;

	if ((void *)(ip + 1) > end)
		return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
	if (ip->version != 4 || ip->ihl < 5)
		return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
	if (ip->ihl != 5)
		return count(XDPDNS_STAT_IPV4_OPTIONS, XDP_PASS);
	if (ip->frag_off & bpf_htons(0x3fff))
		return count(XDPDNS_STAT_FRAGMENT, XDP_PASS);
	if (ip->protocol == IPPROTO_TCP) {
		__u32 set = current_settings();

		if (set & XDPDNS_SETTING_TCP_BLOCKS)
			return tcp_v4(ip, end, set);
	}
	if (ip->protocol != IPPROTO_UDP)
		return count(XDPDNS_STAT_NOT_UDP, XDP_PASS);
	if ((void *)(udp + 1) > end)
		return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
	key.addr = ip->daddr;
	/* A forwarding port is never a listen port (the loader refuses that):
	 * replies are told apart first. A backend's reply to the address its
	 * queries leave from takes one lookup; anything else to a forwarding
	 * port is judged by whether its destination is one of our forwarding
	 * sources (address, 0): then it is a backend's (redirected) or not
	 * (dropped). */
	if (in_forward_range(udp->dest)) {
		struct dest_v4_key from = { .addr = ip->saddr, .port = udp->source };
		__u32 *source = bpf_map_lookup_elem(&XDPDNS_MAP_BACKENDS_V4, &from);

		if (source && *source == ip->daddr)
			return to_socket(ctx, data, end);
		dest = bpf_map_lookup_elem(&XDPDNS_MAP_DEST_V4, &key);
		if (dest && (*dest & 0xffff) == XDPDNS_DEST_FORWARD) {
			if (!source)
				return count(XDPDNS_STAT_NOT_BACKEND, XDP_DROP);
			return to_socket(ctx, data, end);
		}
	}
	key.port = udp->dest;
	dest = bpf_map_lookup_elem(&XDPDNS_MAP_DEST_V4, &key);
	if (dest && (*dest & 0xffff) == XDPDNS_DEST_LISTEN)
		return serve_query(ctx, *dest >> 16, l3, ip->saddr, NULL);
	return count(XDPDNS_STAT_OTHER_DEST, XDP_PASS);
}

static __always_inline int handle_v6(struct xdp_md *ctx, void *data, void *end, __u32 l3)
{
	struct ipv6hdr *ip6 = data + l3;
	struct udphdr *udp = (void *)(ip6 + 1);
	struct dest_v6_key key = {};
	__u32 *dest;

	if ((void *)(ip6 + 1) > end)
		return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
	if (ip6->version != 6)
		return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
	if (ip6->nexthdr == IPPROTO_TCP) {
		__u32 set = current_settings();

		if (set & XDPDNS_SETTING_TCP_BLOCKS)
			return tcp_v6(ip6, end, set);
	}
	if (ip6->nexthdr != IPPROTO_UDP)
		return count(is_ipv6_ext(ip6->nexthdr) ? XDPDNS_STAT_IPV6_EXT : XDPDNS_STAT_NOT_UDP,
			     XDP_PASS);
	if ((void *)(udp + 1) > end)
		return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
	__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
	if (in_forward_range(udp->dest)) {
		struct dest_v6_key from = { .port = udp->source };
		struct backend_v6_source *source;
		__u32 *d = (__u32 *)&ip6->daddr;

		__builtin_memcpy(from.addr, &ip6->saddr, sizeof(from.addr));
		source = bpf_map_lookup_elem(&XDPDNS_MAP_BACKENDS_V6, &from);
		if (source && source->w[0] == d[0] && source->w[1] == d[1] &&
		    source->w[2] == d[2] && source->w[3] == d[3])
			return to_socket(ctx, data, end);
		dest = bpf_map_lookup_elem(&XDPDNS_MAP_DEST_V6, &key);
		if (dest && (*dest & 0xffff) == XDPDNS_DEST_FORWARD) {
			if (!source)
				return count(XDPDNS_STAT_NOT_BACKEND, XDP_DROP);
			return to_socket(ctx, data, end);
		}
	}
	key.port = udp->dest;
	dest = bpf_map_lookup_elem(&XDPDNS_MAP_DEST_V6, &key);
	if (dest && (*dest & 0xffff) == XDPDNS_DEST_LISTEN)
		return serve_query(ctx, *dest >> 16, l3, 0, &ip6->saddr);
	return count(XDPDNS_STAT_OTHER_DEST, XDP_PASS);
}

SEC("xdp")
int xdpdns(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l3 = sizeof(struct ethhdr);
	__u16 proto;

	if ((void *)(eth + 1) > end)
		return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = (void *)(eth + 1);

		if ((void *)(vlan + 1) > end)
			return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
		proto = vlan->proto;
		l3 += sizeof(struct vlan_hdr);
	}
	if (proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx, data, end, l3);
	if (proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx, data, end, l3);
	return count(XDPDNS_STAT_NOT_IP, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
