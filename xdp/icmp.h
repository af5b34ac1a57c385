/* SPDX-License-Identifier: Apache-2.0 */
/* ICMP made by the load balancer itself: echo replies from a VIP, and the
 * "fragmentation needed" / "packet too big" errors of step 7. Both go back
 * out of the ingress interface (XDP_TX) with the MACs swapped (pmtu.h makes
 * the same error from a router's, towards the client by the FIB). ICMP errors
 * from the network about VIP flows are not handled here: parse.h turns them
 * into their flow and they are forwarded like the flow's packets. */
#ifndef XDPLB_ICMP_H
#define XDPLB_ICMP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "layout.h"
#include "csum.h"
#include "parse.h"

static __always_inline void swap_macs(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/* Echo request -> echo reply, in place: addresses and MACs swapped, type
 * changed, TTL/hop limit from the config, checksums updated incrementally.
 * The VLAN tag, identifier, sequence and payload stay as they were. */
static __always_inline int icmp_echo_reply(struct xdp_md *ctx, const struct packet *pkt, const struct xdplb_config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 ttl = cfg->ttl ? cfg->ttl : XDPLB_DEFAULT_TTL;
	struct ethhdr *eth = data;
	__u32 l3 = pkt->l3_off, l4 = pkt->l4_off;
	__u16 *icmp_word, *icmp_check, old;

	if ((void *)(eth + 1) > end || l3 > 18 || l4 > XDPLB_MAX_OFF)
		return XDPLB_R_DROP_ADJUST_FAILED;
	icmp_word = data + l4;
	if ((void *)(icmp_word + 2) > end)
		return XDPLB_R_DROP_ADJUST_FAILED;
	icmp_check = icmp_word + 1;

	if (pkt->flow.family == XDPLB_FAMILY_V4) {
		struct iphdr *iph = data + l3;
		__be32 a;

		if ((void *)(iph + 1) > end)
			return XDPLB_R_DROP_ADJUST_FAILED;
		a = iph->saddr;
		iph->saddr = iph->daddr;
		iph->daddr = a;
		old = *(__u16 *)&iph->ttl;
		iph->ttl = ttl;
		csum_replace2(&iph->check, old, *(__u16 *)&iph->ttl);
		old = *icmp_word;
		*(__u8 *)icmp_word = ICMP_ECHOREPLY;
	} else {
		struct ipv6hdr *ip6 = data + l3;
		struct in6_addr a;

		if ((void *)(ip6 + 1) > end)
			return XDPLB_R_DROP_ADJUST_FAILED;
		a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
		ip6->hop_limit = ttl;
		old = *icmp_word;
		*(__u8 *)icmp_word = ICMP6_ECHO_REPLY;
	}
	csum_replace2(icmp_check, old, *icmp_word);
	swap_macs(eth);
	return XDPLB_R_ICMP_ECHO_REPLY;
}

/* The IP and ICMP headers of a "fragmentation needed" (IPv4, type 3 code 4,
 * RFC 1191) or "packet too big" (ICMPv6, RFC 4443) at data + l2, the quoted
 * packet (q bytes) already behind them: from the quote's destination to its
 * source, advertising mtu minus the outer header (20 / 40), checksums
 * computed. The frame ends with the quote. */
static __always_inline int icmp_too_big_fill(struct xdp_md *ctx, __u32 l2, int v4, __u32 q, __u32 mtu, __u8 ttl)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	void *ip;
	__u8 *icmp;
	__u64 sum;

	if (l2 > 18)
		return XDPLB_R_DROP_ADJUST_FAILED;
	ip = data + l2;
	if (v4) {
		struct iphdr *iph = ip;
		struct iphdr *qh = ip + sizeof(struct iphdr) + 8;

		if ((void *)(qh + 1) > end)
			return XDPLB_R_DROP_ADJUST_FAILED;
		icmp = (void *)(iph + 1);

		*(__u8 *)iph = 0x45;
		iph->tos = 0;
		iph->tot_len = bpf_htons(sizeof(struct iphdr) + 8 + q);
		iph->id = 0;
		iph->frag_off = 0;
		iph->ttl = ttl;
		iph->protocol = IPPROTO_ICMP;
		iph->check = 0;
		iph->saddr = qh->daddr;
		iph->daddr = qh->saddr;
		iph->check = csum_ipv4_hdr20(iph);

		icmp[0] = ICMP_DEST_UNREACH;
		icmp[1] = ICMP_FRAG_NEEDED;
		*(__u16 *)(icmp + 2) = 0;
		*(__u16 *)(icmp + 4) = 0;
		*(__be16 *)(icmp + 6) = bpf_htons(mtu - sizeof(struct iphdr));
		sum = csum_packet_bytes(icmp, end, XDPLB_ICMP4_QUOTE_MAX / CSUM_CHUNK + 1);
	} else {
		struct ipv6hdr *ip6 = ip;
		struct ipv6hdr *qh = ip + sizeof(struct ipv6hdr) + 8;
		__u32 plen = 8 + q;

		if ((void *)(qh + 1) > end)
			return XDPLB_R_DROP_ADJUST_FAILED;
		icmp = (void *)(ip6 + 1);

		*(__be32 *)ip6 = bpf_htonl(6U << 28);
		ip6->payload_len = bpf_htons(plen);
		ip6->nexthdr = IPPROTO_ICMPV6;
		ip6->hop_limit = ttl;
		ip6->saddr = qh->daddr;
		ip6->daddr = qh->saddr;

		icmp[0] = ICMP6_PACKET_TOO_BIG;
		icmp[1] = 0;
		*(__u16 *)(icmp + 2) = 0;
		*(__be32 *)(icmp + 4) = bpf_htonl(mtu - sizeof(struct ipv6hdr));
		/* pseudo-header: addresses, upper-layer length, next header */
		sum = 0;
#pragma unroll
		for (int i = 0; i < 4; i++)
			sum += ip6->saddr.in6_u.u6_addr32[i] + (__u64)ip6->daddr.in6_u.u6_addr32[i];
		sum += bpf_htonl(plen);
		sum += bpf_htonl(IPPROTO_ICMPV6);
		sum += csum_packet_bytes(icmp, end, XDPLB_ICMP6_QUOTE_MAX / CSUM_CHUNK + 1);
	}
	*(__u16 *)(icmp + 2) = csum_fold(sum);
	return XDPLB_CONTINUE;
}

/* Step 7: the packet would not fit the egress MTU once encapsulated. Turns
 * the frame into the ICMP error of icmp_too_big_fill() from the VIP to the
 * client, quoting the original IP packet: up to 548 bytes (IPv4: the reply
 * stays within 576) or 1232 bytes (ICMPv6: the reply stays within 1280).
 * Frame: client's MACs swapped, VLAN tag kept. */
static __always_inline int icmp_too_big_reply(struct xdp_md *ctx, const struct packet *pkt,
					      const struct xdplb_config *cfg, __u32 mtu)
{
	int v4 = pkt->flow.family == XDPLB_FAMILY_V4;
	__u32 add = v4 ? sizeof(struct iphdr) + 8 : sizeof(struct ipv6hdr) + 8;
	__u32 qmax = v4 ? XDPLB_ICMP4_QUOTE_MAX : XDPLB_ICMP6_QUOTE_MAX;
	__u32 q = pkt->ip_len < qmax ? pkt->ip_len : qmax;
	__u32 l2 = pkt->l2_len;
	__u32 cur = add + pkt->frame_len, want = l2 + add + q;
	__u8 ttl = cfg->ttl ? cfg->ttl : XDPLB_DEFAULT_TTL;
	void *data, *end;
	struct ethhdr *eth, *old_eth;
	int r;

	if (l2 > 18)
		return XDPLB_R_DROP_ADJUST_FAILED;
	if (bpf_xdp_adjust_head(ctx, -(int)add))
		return XDPLB_R_DROP_ADJUST_FAILED;
	if (cur > want && bpf_xdp_adjust_tail(ctx, -(int)(cur - want)))
		return XDPLB_R_DROP_ADJUST_FAILED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;

	/* the old Ethernet header (and tag) is at data + add; it moves to the
	 * front with the MACs swapped (no overlap: add >= 28 > 18 >= l2) */
	eth = data;
	old_eth = data + add;
	if ((void *)old_eth + 18 > end)
		return XDPLB_R_DROP_ADJUST_FAILED;
	__builtin_memcpy(eth->h_dest, old_eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old_eth->h_dest, ETH_ALEN);
	eth->h_proto = old_eth->h_proto;
	if (l2 == 18)
		*(__u32 *)(eth + 1) = *(__u32 *)(old_eth + 1);

	r = icmp_too_big_fill(ctx, l2, v4, q, mtu, ttl);
	return r == XDPLB_CONTINUE ? XDPLB_R_PMTU_REPLY : r;
}

#endif /* XDPLB_ICMP_H */
