/* SPDX-License-Identifier: Apache-2.0 */
/* Step 8 (and the MTU that step 7 needs): egress interface, next-hop MACs and
 * route MTU towards a backend, from the kernel FIB through a per-CPU cache. */
#ifndef XDPLB_FIB_H
#define XDPLB_FIB_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"
#include "parse.h"
#include "encap.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Internal: "too big for the egress MTU", with the MTU alongside. */
#define XDPLB_TOO_BIG (-2)

/* The next hop is cached per backend and CPU (xdplb_nexthops, direct-mapped
 * by backend id): a FIB lookup
 * costs more than the rest of the packet path. Correctness rests on three
 * things, none of them on the daemon:
 *  - an entry counts only for the backend address, family and ingress
 *    interface it was resolved for, so a reused backend slot or a packet from
 *    another interface (forwarding on/off, FIB rules by iif) looks up afresh
 *    (a CPU serving one backend from two interfaces in turn looks it up each
 *    time the interface changes);
 *  - it expires after the bound (XDPLB_NEXTHOP_TTL_MS or the config's), so a
 *    route, neighbour or MTU change, or a path MTU reported by a router past
 *    the node (pmtu.h), takes effect within it (and at most one jiffy, see
 *    nexthop_stale());
 *  - only a complete answer is stored: a FIB miss or forwarding off is
 *    passed, a missing neighbour dropped (the daemon resolves it; consts.h),
 *    and counted on every packet, as without cache.
 * The request is the same for every flow to a backend: the node's configured
 * outer source (not the flow's bits of a source prefix) and TOS / flow label 0,
 * so all flows to a backend share one next hop (no per-flow multipath or TOS
 * routing). The node's MTU override is applied per packet, never cached. */

/* Whether *nh must be looked up again for backend be and this packet. The
 * clock (bpf_ktime_get_coarse_ns(), a helper call of about 15 ns here) is read
 * at most once per jiffy per entry and CPU: bpf_jiffies64(), which the
 * verifier inlines as one load, says when a new jiffy began. So an expiry is
 * seen at most one jiffy (1-10 ms) late, and no kernel config (HZ) is needed.
 * An expired entry stays expired until a lookup succeeds. */
static __always_inline int nexthop_stale(const struct xdp_md *ctx, const struct xdplb_backend *be,
					 struct xdplb_nexthop *nh)
{
	__u64 jiffies = bpf_jiffies64();

	if (nh->iif != ctx->ingress_ifindex || nh->family != be->family ||
	    *(const __u64 *)nh->addr != *(const __u64 *)be->addr ||
	    *(const __u64 *)(nh->addr + 8) != *(const __u64 *)(be->addr + 8))
		return 1;
	if (jiffies == nh->checked_jiffies)
		return 0;
	if (bpf_ktime_get_coarse_ns() >= nh->expires_ns)
		return 1; /* left unchecked: a failed lookup must not make it fresh */
	nh->checked_jiffies = jiffies;
	return 0;
}

/* The FIB request for the outer packet to a backend, with tot_len for the
 * MTU check. */
static __always_inline void fib_request(struct xdp_md *ctx, const struct xdplb_config *cfg,
					const struct xdplb_backend *be, __u16 tot_len, struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ctx->ingress_ifindex;
	fib->tot_len = tot_len;
	if (be->family == XDPLB_FAMILY_V4) {
		fib->family = AF_INET;
		fib->l4_protocol = IPPROTO_IPIP;
		fib->ipv4_src = *(const __be32 *)cfg->src4;
		fib->ipv4_dst = *(const __be32 *)be->addr;
	} else {
		fib->family = AF_INET6;
		fib->l4_protocol = IPPROTO_IPV6;
		__builtin_memcpy(fib->ipv6_src, cfg->src6, 16);
		__builtin_memcpy(fib->ipv6_dst, be->addr, 16);
	}
}

/* The MTU a packet must fit: the route's, lowered by the node's override. */
static __always_inline __u32 egress_mtu(const struct xdplb_config *cfg, __u32 route_mtu)
{
	return cfg->mtu && cfg->mtu < route_mtu ? cfg->mtu : route_mtu;
}

/* The route MTU lowered by the path MTU a router past the node reported
 * for this backend (pmtu.h), while that report lasts. Read here, when a next
 * hop is resolved, and never on the cached path: a report reaches every CPU
 * within the next-hop bound. */
static __always_inline __u32 path_mtu(const struct xdplb_backend *be, __u32 route_mtu)
{
	struct xdplb_pmtu_key k = { .family = be->family };
	struct xdplb_pmtu *p;

	__builtin_memcpy(k.addr, be->addr, 16);
	p = bpf_map_lookup_elem(&xdplb_pmtu, &k);
	if (!p || p->mtu >= route_mtu || bpf_ktime_get_coarse_ns() >= p->expires_ns)
		return route_mtu;
	return p->mtu;
}

/* A real lookup into *nh. The FIB reports a route's MTU only when a packet
 * exceeds it (FRAG_NEEDED, before the neighbour lookup), so the first request
 * claims the largest length: the answer is the route MTU, or success when the
 * route takes 65535. A packet too big for it gets the ICMP error right away,
 * as it would from a lookup of its own length; otherwise a second request of
 * the MTU's length resolves the neighbour. */
static __always_inline int nexthop_resolve(struct xdp_md *ctx, const struct xdplb_config *cfg,
					   const struct xdplb_backend *be, __u32 outer_len,
					   struct xdplb_nexthop *nh, __u32 *mtu)
{
	__u64 ttl_ms = cfg->nexthop_ttl_ms ? cfg->nexthop_ttl_ms : XDPLB_NEXTHOP_TTL_MS;
	struct bpf_fib_lookup fib;
	__u32 route_mtu = 0xffff;
	long rc;

	fib_request(ctx, cfg, be, 0xffff, &fib);
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && outer_len <= fib.mtu_result) {
		route_mtu = fib.mtu_result;
		fib_request(ctx, cfg, be, route_mtu, &fib);
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	}
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		*mtu = egress_mtu(cfg, path_mtu(be, fib.mtu_result));
		return XDPLB_TOO_BIG;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return XDPLB_R_DROP_FIB_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return XDPLB_R_PASS_FIB_FWD_DISABLED;
	default:
		return XDPLB_R_PASS_FIB_MISS;
	}
	__builtin_memcpy(nh->addr, be->addr, 16);
	__builtin_memcpy(nh->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(nh->smac, fib.smac, ETH_ALEN);
	nh->mtu = path_mtu(be, route_mtu);
	nh->family = be->family;
	nh->ifindex = fib.ifindex;
	nh->iif = ctx->ingress_ifindex;
	nh->expires_ns = bpf_ktime_get_coarse_ns() + ttl_ms * 1000000;
	nh->checked_jiffies = bpf_jiffies64();
	cache_stat_inc(XDPLB_CACHE_STAT_NEXTHOP_LOOKUPS);
	return XDPLB_CONTINUE;
}

/* Step 8a + 7: the next hop to backend `id` (cached, or looked up) and the
 * PMTU check of the encapsulated packet. Returns XDPLB_CONTINUE (*out set),
 * XDPLB_TOO_BIG (*mtu set), or a pass reason. Nothing in the packet changes
 * here, so a pass hands it over untouched. */
static __always_inline int nexthop_lookup(struct xdp_md *ctx, const struct encap_plan *e,
					  const struct xdplb_config *cfg, const struct xdplb_backend *be,
					  __u32 id, struct xdplb_nexthop **out, __u32 *mtu)
{
	__u32 slot = id & (XDPLB_NEXTHOP_SLOTS - 1);
	struct xdplb_nexthop *nh;
	int r;

	nh = bpf_map_lookup_elem(&xdplb_nexthops, &slot);
	if (!nh)
		return XDPLB_R_PASS_FIB_MISS;
	if (nexthop_stale(ctx, be, nh)) {
		r = nexthop_resolve(ctx, cfg, be, e->outer_len, nh, mtu);
		if (r != XDPLB_CONTINUE)
			return r;
	}
	*mtu = egress_mtu(cfg, nh->mtu);
	if (e->outer_len > *mtu)
		return XDPLB_TOO_BIG;
	if (nh->ifindex != nh->iif) {
		__u32 ifindex = nh->ifindex;

		if (!bpf_map_lookup_elem(&xdplb_devmap, &ifindex))
			return XDPLB_R_PASS_NO_EGRESS_DEV;
	}
	*out = nh;
	return XDPLB_CONTINUE;
}

/* Writes the next-hop MACs (the outer Ethernet header is at data) and gives
 * the verdict: XDP_TX out of the ingress interface, XDP_REDIRECT otherwise.
 * nh->iif is the ingress interface (nexthop_lookup() checked it), and on the
 * entry's cache line, where ctx->ingress_ifindex is three loads away. */
static __always_inline int l2_forward(struct xdp_md *ctx, const struct xdplb_nexthop *nh, int *reason)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end) {
		*reason = XDPLB_R_DROP_ADJUST_FAILED;
		return XDP_DROP;
	}
	/* both MACs in two stores: struct ethhdr is packed, so memcpy into it
	 * would be 12 byte copies; dmac and smac lie next to each other in the
	 * entry as in the header (layout.h), dmac 8-byte aligned */
	*(__u64 *)data = *(const __u64 *)nh->dmac;
	*(__u32 *)(data + 8) = *(const __u32 *)(nh->dmac + 8);
	if (nh->ifindex == nh->iif) {
		*reason = XDPLB_R_FORWARD_TX;
		return XDP_TX;
	}
	*reason = XDPLB_R_FORWARD_REDIRECT;
	return bpf_redirect_map(&xdplb_devmap, nh->ifindex, 0);
}

#endif /* XDPLB_FIB_H */
