/* SPDX-License-Identifier: Apache-2.0 */
/* Step 8 (and the MTU that step 7 needs): egress interface, next-hop MACs and
 * path MTU for the outer destination, from the kernel FIB. */
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

/* Looks up the route to the backend for the encapsulated packet. Returns
 * XDPLB_CONTINUE (fib filled in), XDPLB_TOO_BIG (*mtu set), or a pass reason.
 * Nothing in the packet changes here, so a pass hands it over untouched. */
static __always_inline int fib_lookup_backend(struct xdp_md *ctx, const struct packet *pkt,
					      const struct encap_plan *e, const struct xdplb_config *cfg,
					      struct bpf_fib_lookup *fib, __u32 *mtu)
{
	long rc;

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ctx->ingress_ifindex;
	fib->tot_len = e->outer_len > 0xffff ? 0xffff : e->outer_len;
	if (pkt->flow.family == XDPLB_FAMILY_V4) {
		fib->family = AF_INET;
		fib->tos = pkt->tos;
		fib->l4_protocol = IPPROTO_IPIP;
		fib->ipv4_src = *(__be32 *)e->src;
		fib->ipv4_dst = *(__be32 *)e->dst;
	} else {
		fib->family = AF_INET6;
		fib->flowinfo = e->flowinfo;
		fib->l4_protocol = IPPROTO_IPV6;
		__builtin_memcpy(fib->ipv6_src, e->src, 16);
		__builtin_memcpy(fib->ipv6_dst, e->dst, 16);
	}

	rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		break;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		*mtu = fib->mtu_result;
		if (cfg->mtu && cfg->mtu < *mtu)
			*mtu = cfg->mtu;
		return XDPLB_TOO_BIG;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return XDPLB_R_PASS_FIB_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return XDPLB_R_PASS_FIB_FWD_DISABLED;
	default:
		return XDPLB_R_PASS_FIB_MISS;
	}
	if (cfg->mtu && e->outer_len > cfg->mtu) {
		*mtu = cfg->mtu;
		return XDPLB_TOO_BIG;
	}
	if (fib->ifindex != ctx->ingress_ifindex) {
		__u32 ifindex = fib->ifindex;

		if (!bpf_map_lookup_elem(&xdplb_devmap, &ifindex))
			return XDPLB_R_PASS_NO_EGRESS_DEV;
	}
	return XDPLB_CONTINUE;
}

/* Writes the next-hop MACs (the outer Ethernet header is at data) and gives
 * the verdict: XDP_TX out of the ingress interface, XDP_REDIRECT otherwise. */
static __always_inline int l2_forward(struct xdp_md *ctx, const struct bpf_fib_lookup *fib, int *reason)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end) {
		*reason = XDPLB_R_DROP_ADJUST_FAILED;
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	if (fib->ifindex == ctx->ingress_ifindex) {
		*reason = XDPLB_R_FORWARD_TX;
		return XDP_TX;
	}
	*reason = XDPLB_R_FORWARD_REDIRECT;
	return bpf_redirect_map(&xdplb_devmap, fib->ifindex, 0);
}

#endif /* XDPLB_FIB_H */
