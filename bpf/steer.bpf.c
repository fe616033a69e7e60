// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * xdpdns socket-reply steering (BPF_PROG_TYPE_SK_LOOKUP, attached by the
 * loader to its network namespace).
 *
 * Forwarding over sockets sends every query from one of many
 * sockets (`[forwarding] backend_sockets` per backend, one drawn per query,
 * so that an off-path attacker must guess the port as well as the ID). Left
 * to the kernel, the replies land on all of those sockets, and the dataplane
 * reads them one socket at a time — a system call per reply, and the cache
 * misses of touching many sockets. This program hands every reply that the
 * kernel would give to one of a dataplane's pool sockets to that
 * dataplane's one receiving socket instead; the dataplane learns the port
 * the reply came to from IP(V6)_ORIGDSTADDR, so the port check stands.
 *
 * It steers only what the kernel itself would have delivered to a pool
 * socket if it were connected: the destination (address, port) is a live
 * pool socket's local end, and the source is the backend that socket sends
 * to. The pool sockets are not connected — the kernel finds a connected
 * socket before it runs sk_lookup programs — so this program plays the
 * connection's part and drops what comes to a pool socket from anyone else.
 * The pool sockets live in a SOCKHASH, which the kernel empties as they
 * close: a port we held once and another program holds now is never
 * steered, whatever the owner table still says. Everything else — any other
 * UDP, all TCP, a pool whose dataplane has no receiver (restarting) — goes
 * through the kernel's own lookup, untouched.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10

/* Matches loader/src/bpf/steer.rs SteerKey: a socket's local end. */
struct steer_key {
	__u32 family;
	__u32 ip[4]; /* network order; IPv4 in ip[0], the rest zero */
	__u32 port;  /* host order */
};

/* Pool sockets by local end (the kernel removes one as it closes). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1024);
	__type(key, struct steer_key);
	__type(value, __u32); /* a socket fd when written (aya's SockHash) */
} steer_pool SEC(".maps");

/* Matches loader/src/bpf/steer.rs SteerOwner: where a pool socket's
 * replies go, and who may send them. */
struct steer_owner {
	__u32 rx;	   /* index in steer_rx: queue * 2 + v6 */
	__u32 peer_ip[4];  /* the backend: network order, IPv4 in [0] */
	__u32 peer_port;   /* network order, in the low 16 bits */
};

/* Local end -> its owner (trusted only while steer_pool holds the socket). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct steer_key);
	__type(value, struct steer_owner);
} steer_owner SEC(".maps");

/* Each dataplane's receiving sockets (unconnected, one per family). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} steer_rx SEC(".maps");

enum {
	STEER_STEERED,  /* handed to a receiver */
	STEER_NOT_PEER, /* to a pool socket, not from its peer: dropped */
	STEER_NO_RX,    /* to a pool socket whose dataplane has no receiver */
	STEER_REFUSED,  /* the kernel refused the assignment */
	STEER_STATS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_STATS);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *v = bpf_map_lookup_elem(&steer_stats, &what);
	if (v)
		*v += 1;
}

SEC("sk_lookup")
int xdpdns_steer(struct bpf_sk_lookup *ctx)
{
	struct steer_key k = {};
	struct bpf_sock *pool, *rx;
	struct steer_owner *owner;
	__u32 index;
	int peer;

	if (ctx->protocol != IPPROTO_UDP)
		return SK_PASS;
	k.family = ctx->family;
	k.port = ctx->local_port;
	if (ctx->family == AF_INET) {
		k.ip[0] = ctx->local_ip4;
	} else if (ctx->family == AF_INET6) {
		k.ip[0] = ctx->local_ip6[0];
		k.ip[1] = ctx->local_ip6[1];
		k.ip[2] = ctx->local_ip6[2];
		k.ip[3] = ctx->local_ip6[3];
	} else {
		return SK_PASS;
	}
	/* The one look-up all other UDP of the namespace pays. */
	owner = bpf_map_lookup_elem(&steer_owner, &k);
	if (!owner)
		return SK_PASS;
	pool = bpf_map_lookup_elem(&steer_pool, &k);
	if (!pool)
		return SK_PASS; /* closed since: not ours any more */
	bpf_sk_release(pool);
	if (ctx->family == AF_INET)
		peer = owner->peer_ip[0] == ctx->remote_ip4;
	else
		peer = owner->peer_ip[0] == ctx->remote_ip6[0] &&
		       owner->peer_ip[1] == ctx->remote_ip6[1] &&
		       owner->peer_ip[2] == ctx->remote_ip6[2] &&
		       owner->peer_ip[3] == ctx->remote_ip6[3];
	peer = peer && (__u16)owner->peer_port == (__u16)ctx->remote_port;
	if (!peer) {
		/* What a connected socket would do. */
		count(STEER_NOT_PEER);
		return SK_DROP;
	}
	index = owner->rx;
	rx = bpf_map_lookup_elem(&steer_rx, &index);
	if (!rx) {
		count(STEER_NO_RX);
		return SK_PASS;
	}
	if (bpf_sk_assign(ctx, rx, 0) == 0)
		count(STEER_STEERED);
	else
		count(STEER_REFUSED);
	bpf_sk_release(rx);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
