/* SPDX-License-Identifier: Apache-2.0 */
/* Steps 5 and 6: optional L4 DNAT of the inner packet, then IPIP (IPv4) or
 * IP6IP6 (IPv6) encapsulation towards the backend (RFC 2003, RFC 2473). */
#ifndef XDPLB_ENCAP_H
#define XDPLB_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "layout.h"
#include "csum.h"
#include "parse.h"

/* The outer header, decided before the packet is touched. */
struct encap_plan {
	__u8 src[16];		/* outer source (node address, or prefix + flow hash bits) */
	__u8 dst[16];		/* backend address */
	__u32 outer_len;	/* IP length once encapsulated */
	__be32 flowinfo;	/* IPv6: version, traffic class, flow label (from the flow hash) */
	__u8 hdr_len;		/* 20 or 40 */
	__u8 pad[3];
};

static __always_inline __u32 host_mask(__u32 host_bits)
{
	return host_bits >= 32 ? 0xffffffffU : (1U << host_bits) - 1;
}

/* Outer source: the configured address, or its prefix with the host bits
 * (at most the last 32) taken from the flow hash: one flow, one source; many
 * flows spread over the prefix (RSS entropy at the backend's NIC). */
static __always_inline int outer_source(const struct xdplb_config *cfg, __u8 family, __u32 hash, __u8 *src)
{
	__u32 w, mask, len;

	if (family == XDPLB_FAMILY_V4) {
		w = *(const __u32 *)cfg->src4;
		if (!w)
			return XDPLB_R_DROP_NO_OUTER_SOURCE;
		len = cfg->src4_prefix_len;
		if (len && len < 32) {
			mask = host_mask(32 - len);
			w = bpf_htonl((bpf_ntohl(w) & ~mask) | (hash & mask));
		}
		*(__u32 *)src = w;
		return XDPLB_CONTINUE;
	}
	__builtin_memcpy(src, cfg->src6, 16);
	if (!(*(const __u64 *)cfg->src6 | *(const __u64 *)(cfg->src6 + 8)))
		return XDPLB_R_DROP_NO_OUTER_SOURCE;
	len = cfg->src6_prefix_len;
	if (len && len < 128) {
		mask = host_mask(128 - len);
		w = bpf_ntohl(*(__u32 *)(src + 12));
		*(__u32 *)(src + 12) = bpf_htonl((w & ~mask) | (hash & mask));
	}
	return XDPLB_CONTINUE;
}

/* Whether plan_encap() uses the flow hash: for the IPv6 flow label and the
 * host bits of an IPv4 outer source prefix. */
static __always_inline int encap_uses_hash(const struct packet *pkt, const struct xdplb_config *cfg)
{
	return pkt->flow.family != XDPLB_FAMILY_V4 || (cfg->src4_prefix_len && cfg->src4_prefix_len < 32);
}

static __always_inline int plan_encap(const struct packet *pkt, const struct xdplb_config *cfg,
				      const struct xdplb_backend *be, struct encap_plan *e)
{
	int r = outer_source(cfg, pkt->flow.family, pkt->hash, e->src);

	if (r != XDPLB_CONTINUE)
		return r;
	__builtin_memcpy(e->dst, be->addr, 16);
	e->hdr_len = pkt->flow.family == XDPLB_FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	e->outer_len = (__u32)pkt->ip_len + e->hdr_len;
	e->flowinfo = bpf_htonl(6U << 28 | (__u32)pkt->tos << 20 | (pkt->hash & 0xfffff));
	return XDPLB_CONTINUE;
}

/* Step 5: inner destination port := backend port, L4 checksum updated
 * incrementally (a zero IPv4 UDP checksum means "none" and stays zero). */
static __always_inline void l4_dnat(struct xdp_md *ctx, const struct packet *pkt, __be16 port)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 off = pkt->l4_off;

	if (!port || port == pkt->flow.dport || off > XDPLB_MAX_OFF)
		return;
	if (pkt->flow.proto == IPPROTO_TCP) {
		struct tcphdr *th = data + off;

		if ((void *)(th + 1) > end)
			return;
		csum_replace2(&th->check, th->dest, port);
		th->dest = port;
	} else if (pkt->flow.proto == IPPROTO_UDP) {
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > end)
			return;
		if (uh->check || pkt->flow.family == XDPLB_FAMILY_V6) {
			csum_replace2(&uh->check, uh->dest, port);
			if (!uh->check)
				uh->check = 0xffff;
		}
		uh->dest = port;
	}
}

/* Step 6: Ethernet padding trimmed, the outer IP header inserted between a
 * fresh (untagged) Ethernet header and the inner IP packet. The inner packet
 * is left byte for byte as it was (after DNAT). */
static __always_inline int encap(struct xdp_md *ctx, const struct packet *pkt, const struct encap_plan *e,
				 const struct xdplb_config *cfg)
{
	__u32 extra = pkt->frame_len - pkt->l3_off - pkt->ip_len;
	int delta = (int)e->hdr_len - ((int)pkt->l2_len - (int)sizeof(struct ethhdr));
	__u8 ttl = cfg->ttl ? cfg->ttl : XDPLB_DEFAULT_TTL;
	void *data, *end;
	struct ethhdr *eth;

	if (extra && bpf_xdp_adjust_tail(ctx, -(int)extra))
		return XDPLB_R_DROP_ADJUST_FAILED;
	if (bpf_xdp_adjust_head(ctx, -delta))
		return XDPLB_R_DROP_ADJUST_FAILED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;

	if (pkt->flow.family == XDPLB_FAMILY_V4) {
		struct iphdr *o = (void *)(eth + 1);
		/* the header's words as they go to memory; the checksum is summed
		 * from them, not read back from the packet (reading back what was
		 * just written in smaller stores stalls store forwarding) */
		__be16 w0 = bpf_htons(0x4500 | pkt->tos);
		__be16 len = bpf_htons(e->outer_len);
		__be16 frag = pkt->df ? bpf_htons(IP_DF_BIT) : 0;
		__be16 w4 = bpf_htons((__u16)ttl << 8 | IPPROTO_IPIP);
		__be32 saddr = *(__be32 *)e->src, daddr = *(__be32 *)e->dst;

		if ((void *)(o + 1) > end)
			return XDPLB_R_DROP_ADJUST_FAILED;
		*(__be16 *)(data + offsetof(struct ethhdr, h_proto)) = bpf_htons(ETH_P_IP);
		*(__be16 *)o = w0;
		o->tot_len = len;
		o->id = pkt->ip_id;
		o->frag_off = frag;
		*(__be16 *)&o->ttl = w4;
		o->saddr = saddr;
		o->daddr = daddr;
		o->check = csum_fold((__u64)w0 + len + pkt->ip_id + frag + w4 + saddr + daddr);
	} else {
		struct ipv6hdr *o = (void *)(eth + 1);

		if ((void *)(o + 1) > end)
			return XDPLB_R_DROP_ADJUST_FAILED;
		*(__be16 *)(data + offsetof(struct ethhdr, h_proto)) = bpf_htons(ETH_P_IPV6);
		*(__be32 *)o = e->flowinfo;
		o->payload_len = bpf_htons(pkt->ip_len);
		o->nexthdr = IPPROTO_IPV6;
		o->hop_limit = ttl;
		__builtin_memcpy(&o->saddr, e->src, 16);
		__builtin_memcpy(&o->daddr, e->dst, 16);
	}
	return XDPLB_CONTINUE;
}

#endif /* XDPLB_ENCAP_H */
