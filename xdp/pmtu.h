/* SPDX-License-Identifier: Apache-2.0 */
/* Path MTU past the load balancer, and everything else addressed to the
 * tunnel's outer source. The node is a tunnel endpoint (RFC 2003 / RFC 2473):
 * a router between it and a backend sends its ICMP errors to the outer
 * source of the IPIP / IP6IP6 packet it could not forward. Nothing on the
 * node owns an outer source prefix, so such an error must end here: the
 * datapath keeps the path MTU a "fragmentation needed" / "packet too big"
 * reports (xdplb_pmtu, which fib.h folds into the next hop's MTU), and
 * relays the error to the client of the quoted inner packet, from the VIP,
 * with the MTU less the outer header.
 *
 * "Addressed to an outer source" means:
 *  - with a prefix (src4_prefix_len 1..31, src6_prefix_len 1..127): any
 *    address of it; what is not a tunnel error is dropped (never looped
 *    through the kernel, whose routes for it are not the datapath's to
 *    trust);
 *  - with an exact address (prefix length 0 or full): that address is the
 *    node's own (SSH, BGP, ...), so only ICMP errors quoting an IPIP /
 *    IP6IP6 packet from it are taken; everything else goes to the kernel. */
#ifndef XDPLB_PMTU_H
#define XDPLB_PMTU_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"
#include "parse.h"
#include "encap.h"
#include "csum.h"
#include "icmp.h"
#include "fib.h"

/* Whether addr lies in the configured outer source prefix (a prefix only:
 * an exact outer source is not "a prefix of one"). */
static __always_inline int in_outer_prefix(const struct xdplb_config *cfg, __u8 family, const __u8 *addr)
{
	__u32 len, diff = 0;

	if (family == XDPLB_FAMILY_V4) {
		len = cfg->src4_prefix_len;
		if (!len || len >= 32 || !*(const __u32 *)cfg->src4)
			return 0;
		return !((*(const __u32 *)addr ^ *(const __u32 *)cfg->src4) & bpf_htonl(~host_mask(32 - len)));
	}
	len = cfg->src6_prefix_len;
	if (!len || len >= 128)
		return 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 bits = len > 32 * i ? len - 32 * i : 0;

		if (bits > 32)
			bits = 32;
		diff |= (((const __u32 *)addr)[i] ^ ((const __u32 *)cfg->src6)[i]) & bpf_htonl(~host_mask(32 - bits));
	}
	return !diff;
}

/* Whether addr is an outer source of this node: an address of the prefix,
 * or the exact address. */
static __always_inline int is_outer_source(const struct xdplb_config *cfg, __u8 family, const __u8 *addr)
{
	if (in_outer_prefix(cfg, family, addr))
		return 1;
	if (family == XDPLB_FAMILY_V4)
		return *(const __u32 *)cfg->src4 && *(const __u32 *)addr == *(const __u32 *)cfg->src4;
	return (*(const __u64 *)cfg->src6 | *(const __u64 *)(cfg->src6 + 8)) &&
	       *(const __u64 *)addr == *(const __u64 *)cfg->src6 &&
	       *(const __u64 *)(addr + 8) == *(const __u64 *)(cfg->src6 + 8);
}

/* The reason for a packet that is no VIP's: dropped when it is addressed to
 * the outer source prefix, to the kernel otherwise. */
static __always_inline int not_vip(const struct packet *pkt, const struct xdplb_config *cfg)
{
	return in_outer_prefix(cfg, pkt->flow.family, pkt->flow.dst) ? XDPLB_R_DROP_OUTER_SOURCE : XDPLB_R_PASS_NOT_VIP;
}

/* Keeps the lowest path MTU reported for a backend within the expiry (the
 * kernel, too, never raises a learnt PMTU on a report: it waits for expiry). */
static __always_inline void pmtu_record(__u8 family, const void *backend, __u32 mtu)
{
	struct xdplb_pmtu_key k = { .family = family };
	struct xdplb_pmtu v = {}, *old;
	__u64 now = bpf_ktime_get_coarse_ns();

	__builtin_memcpy(k.addr, backend, family == XDPLB_FAMILY_V4 ? 4 : 16);
	old = bpf_map_lookup_elem(&xdplb_pmtu, &k);
	if (old && now < old->expires_ns && old->mtu < mtu)
		mtu = old->mtu;
	v.mtu = mtu;
	v.expires_ns = now + (__u64)XDPLB_PMTU_EXPIRES_S * 1000000000ULL;
	bpf_map_update_elem(&xdplb_pmtu, &k, &v, BPF_ANY);
}

/* The quoted inner packet as the client sent it: for an L4 DNAT service the
 * router quoted the backend port, and the client's stack would match the
 * error to no socket. The destination port goes back to the service port
 * (xdplb_revnat), the L4 checksum with it when the quote holds it (room:
 * quoted L4 bytes; a UDP checksum 0 over IPv4 means none). */
static __always_inline void quote_unnat(__u8 family, __u8 proto, const void *vip, struct l4_ports *ports,
					void *end, __u32 room)
{
	struct xdplb_service_key k = { .family = family, .proto = proto, .port = ports->dest };
	__u32 check_off = proto == IPPROTO_TCP ? 16 : 6;
	struct xdplb_revnat *v;
	__u16 *check;

	__builtin_memcpy(k.vip, vip, family == XDPLB_FAMILY_V4 ? 4 : 16);
	v = bpf_map_lookup_elem(&xdplb_revnat, &k);
	if (!v)
		return;
	check = (void *)ports + check_off;
	if (room >= check_off + 2 && (void *)(check + 1) <= end && (proto == IPPROTO_TCP || *check))
		csum_replace2(check, ports->dest, v->port);
	ports->dest = v->port;
}

/* An ICMP error quoting an IPIP / IP6IP6 packet from the address it is
 * addressed to (parse.h: PKT_ICMP_TUNNEL). When that address is an outer
 * source of this node and the error is a frag needed / packet too big
 * quoting the inner IP header and 8 bytes of TCP/UDP: the path MTU is
 * recorded and the frame becomes the error to the client (icmp.h), quoting
 * the client's packet as the client sent it (quote_unnat()), with
 * MACs and egress interface from the FIB (the client may be behind another
 * interface than the router); *ifindex is set for XDP_REDIRECT. */
static __always_inline int pmtu_relay(struct xdp_md *ctx, const struct packet *pkt,
				      const struct xdplb_config *cfg, __u32 *ifindex)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	int v4 = pkt->flow.family == XDPLB_FAMILY_V4;
	__u32 hdr = v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 qmax = v4 ? XDPLB_ICMP4_QUOTE_MAX : XDPLB_ICMP6_QUOTE_MAX;
	__u32 min = v4 ? XDPLB_PMTU_MIN4 : XDPLB_PMTU_MIN6;
	__u32 l4 = pkt->l4_off, in = pkt->inner_off, ip_end = pkt->l3_off + pkt->ip_len;
	__u8 ttl = cfg->ttl ? cfg->ttl : XDPLB_DEFAULT_TTL;
	struct bpf_fib_lookup fib;
	__u32 mtu, q, need, shrink; /* need: inner IP header + 8 bytes, inside the error (not padding) */
	__u8 *icmp;
	struct l4_ports *ports;
	struct ethhdr *eth;
	int r;

	if (!is_outer_source(cfg, pkt->flow.family, pkt->flow.dst))
		return XDPLB_R_PASS_ICMP_QUOTE;
	if (l4 > XDPLB_MAX_OFF || in > XDPLB_MAX_OFF)
		return XDPLB_R_DROP_TUNNEL_ICMP;
	icmp = data + l4;
	if ((void *)(icmp + 8) > end)
		return XDPLB_R_DROP_TUNNEL_ICMP;
	if (v4 ? icmp[0] != ICMP_DEST_UNREACH || icmp[1] != ICMP_FRAG_NEEDED : icmp[0] != ICMP6_PACKET_TOO_BIG)
		return XDPLB_R_DROP_TUNNEL_ICMP;
	mtu = v4 ? bpf_ntohs(*(__be16 *)(icmp + 6)) : bpf_ntohl(*(__be32 *)(icmp + 4));
	if (mtu < min)
		mtu = min;
	if (mtu > 0xffff)
		mtu = 0xffff;

	__builtin_memset(&fib, 0, sizeof(fib));
	fib.ifindex = ctx->ingress_ifindex;
	if (v4) {
		struct iphdr *o = (void *)(icmp + 8);
		struct iphdr *ih = data + in;
		__u32 hl;

		if ((void *)(o + 1) > end || (void *)(ih + 1) > end)
			return XDPLB_R_DROP_TUNNEL_ICMP;
		hl = ih->ihl * 4;
		if (ih->version != 4 || hl < sizeof(*ih) || (ih->protocol != IPPROTO_TCP && ih->protocol != IPPROTO_UDP))
			return XDPLB_R_DROP_TUNNEL_ICMP;
		need = hl + 8;
		if (in + need > ip_end || data + in + need > end)
			return XDPLB_R_DROP_TUNNEL_ICMP;
		pmtu_record(XDPLB_FAMILY_V4, &o->daddr, mtu);
		ports = (void *)ih + hl;
		if ((void *)(ports + 1) > end)
			return XDPLB_R_DROP_TUNNEL_ICMP;
		quote_unnat(XDPLB_FAMILY_V4, ih->protocol, &ih->daddr, ports, end, ip_end - in - hl);
		fib.family = AF_INET;
		fib.l4_protocol = IPPROTO_ICMP;
		fib.ipv4_src = ih->daddr;
		fib.ipv4_dst = ih->saddr;
	} else {
		struct ipv6hdr *o = (void *)(icmp + 8);
		struct ipv6hdr *ih = data + in;

		if ((void *)(o + 1) > end || (void *)(ih + 1) > end)
			return XDPLB_R_DROP_TUNNEL_ICMP;
		if (ih->version != 6 || (ih->nexthdr != IPPROTO_TCP && ih->nexthdr != IPPROTO_UDP))
			return XDPLB_R_DROP_TUNNEL_ICMP;
		need = sizeof(*ih) + 8;
		if (in + need > ip_end || data + in + need > end)
			return XDPLB_R_DROP_TUNNEL_ICMP;
		pmtu_record(XDPLB_FAMILY_V6, &o->daddr, mtu);
		ports = (void *)(ih + 1);
		if ((void *)(ports + 1) > end)
			return XDPLB_R_DROP_TUNNEL_ICMP;
		quote_unnat(XDPLB_FAMILY_V6, ih->nexthdr, &ih->daddr, ports, end, ip_end - in - sizeof(*ih));
		fib.family = AF_INET6;
		fib.l4_protocol = IPPROTO_ICMPV6;
		__builtin_memcpy(fib.ipv6_src, &ih->daddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ih->saddr, 16);
	}
	q = ip_end - in < qmax ? ip_end - in : qmax;
	fib.tot_len = hdr + 8 + q;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDPLB_R_DROP_RELAY_NO_ROUTE;
	*ifindex = fib.ifindex;
	if (fib.ifindex != ctx->ingress_ifindex && !bpf_map_lookup_elem(&xdplb_devmap, ifindex))
		return XDPLB_R_DROP_RELAY_NO_ROUTE;

	/* the quote stays where it is: the headers before it shrink to an
	 * untagged Ethernet header, the IP header and 8 bytes of ICMP (the
	 * error's own headers and the quoted outer one are longer), and
	 * whatever follows the quote goes */
	shrink = pkt->frame_len - in - q;
	if (bpf_xdp_adjust_head(ctx, (int)(in - sizeof(struct ethhdr) - hdr - 8)))
		return XDPLB_R_DROP_ADJUST_FAILED;
	if (shrink && bpf_xdp_adjust_tail(ctx, -(int)shrink))
		return XDPLB_R_DROP_ADJUST_FAILED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return XDPLB_R_DROP_ADJUST_FAILED;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(v4 ? ETH_P_IP : ETH_P_IPV6);
	r = icmp_too_big_fill(ctx, sizeof(struct ethhdr), v4, q, mtu, ttl);
	if (r != XDPLB_CONTINUE)
		return r;
	return fib.ifindex == ctx->ingress_ifindex ? XDPLB_R_PMTU_RELAY_TX : XDPLB_R_PMTU_RELAY_REDIRECT;
}

#endif /* XDPLB_PMTU_H */
