// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * xdpdns XDP program.
 *
 * UDP to a configured destination (address, port) goes to the AF_XDP socket of
 * the queue the frame arrived on. Everything else goes to the kernel stack,
 * and so does a matching frame on a queue without a socket (bpf_redirect_map
 * falls back to XDP_PASS for an empty XSKMAP slot): a dataplane that dies
 * degrades its queue to the kernel path, it never blackholes it.
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPDNS_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} XDPDNS_MAP_STATS SEC(".maps");

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

static __always_inline int count(__u32 slot, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&XDPDNS_MAP_STATS, &slot);

	if (n)
		*n += 1;
	return verdict;
}

static __always_inline int to_socket(struct xdp_md *ctx, void *data, void *end)
{
	int verdict;

	if (max_frame_len && (__u64)(end - data) > max_frame_len)
		return count(XDPDNS_STAT_TOO_LARGE, XDP_PASS);
	verdict = bpf_redirect_map(&XDPDNS_MAP_XSKS, ctx->rx_queue_index, XDP_PASS);
	return count(verdict == XDP_REDIRECT ? XDPDNS_STAT_REDIRECT : XDPDNS_STAT_NO_SOCKET, verdict);
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

SEC("xdp")
int xdpdns(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	__u16 proto;

	if (l3 > end)
		return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > end)
			return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
		proto = vlan->proto;
		l3 = vlan + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		struct udphdr *udp = (void *)(ip + 1);
		struct dest_v4_key key = {};

		if ((void *)(ip + 1) > end)
			return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
		if (ip->version != 4 || ip->ihl < 5)
			return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
		if (ip->ihl != 5)
			return count(XDPDNS_STAT_IPV4_OPTIONS, XDP_PASS);
		if (ip->frag_off & bpf_htons(0x3fff))
			return count(XDPDNS_STAT_FRAGMENT, XDP_PASS);
		if (ip->protocol != IPPROTO_UDP)
			return count(XDPDNS_STAT_NOT_UDP, XDP_PASS);
		if ((void *)(udp + 1) > end)
			return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
		key.addr = ip->daddr;
		key.port = udp->dest;
		if (!bpf_map_lookup_elem(&XDPDNS_MAP_DEST_V4, &key))
			return count(XDPDNS_STAT_OTHER_DEST, XDP_PASS);
		return to_socket(ctx, data, end);
	}

	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		struct udphdr *udp = (void *)(ip6 + 1);
		struct dest_v6_key key = {};

		if ((void *)(ip6 + 1) > end)
			return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
		if (ip6->version != 6)
			return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
		if (ip6->nexthdr != IPPROTO_UDP)
			return count(is_ipv6_ext(ip6->nexthdr) ? XDPDNS_STAT_IPV6_EXT : XDPDNS_STAT_NOT_UDP,
				     XDP_PASS);
		if ((void *)(udp + 1) > end)
			return count(XDPDNS_STAT_TRUNCATED, XDP_PASS);
		__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
		key.port = udp->dest;
		if (!bpf_map_lookup_elem(&XDPDNS_MAP_DEST_V6, &key))
			return count(XDPDNS_STAT_OTHER_DEST, XDP_PASS);
		return to_socket(ctx, data, end);
	}

	return count(XDPDNS_STAT_NOT_IP, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
