/* SPDX-License-Identifier: Apache-2.0 */
/* Step 1: parse. Cursor-based (xdp-tools style, parse_hdr.h): each
 * parse_*() checks the bounds of one header once, advances the cursor and
 * says what comes next. The result is a struct packet of offsets and the flow tuple; later steps
 * re-derive pointers from ctx with their own bounds checks. */
#ifndef XDPLB_PARSE_H
#define XDPLB_PARSE_H

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
#include "parse_hdr.h"

/* ICMP types and codes (linux/icmp.h pulls in libc socket headers) */
#define ICMP_ECHOREPLY		0
#define ICMP_DEST_UNREACH	3
#define ICMP_FRAG_NEEDED	4
#define ICMP_ECHO		8
#define ICMP_TIME_EXCEEDED	11
#define ICMP6_ECHO_REQUEST	128
#define ICMP6_ECHO_REPLY	129
#define ICMP6_DEST_UNREACH	1
#define ICMP6_PACKET_TOO_BIG	2
#define ICMP6_TIME_EXCEEDED	3

/* Offsets kept in struct packet are below this (a single-buffer XDP frame is
 * at most a page); saying so again where they are used lets the verifier
 * bound the pointers made from them. */
#define XDPLB_MAX_OFF 4096

/* What the packet is, for the steps after parsing. */
enum pkt_kind {
	PKT_FLOW = 0,		/* TCP/UDP to (maybe) a VIP: balance it */
	PKT_ICMP_ECHO,		/* echo request: answer it if the VIP allows */
	PKT_ICMP_ERROR,		/* ICMP error quoting a flow: flow = the quoted tuple reversed */
	PKT_ICMP_TUNNEL,	/* ICMP error quoting an IPIP/IP6IP6 packet from its destination
				 * (pmtu.h): flow = the error's own tuple, inner_off set */
};

struct packet {
	struct xdplb_flow_key flow;	/* client -> VIP tuple that selects service and backend */
	__u32 frame_len;		/* bytes received */
	__u32 hash;			/* flow hash, set at step 4 */
	__u16 l3_off;			/* IP header offset in the frame */
	__u16 l4_off;			/* transport header offset in the frame */
	__u16 ip_len;			/* IP packet length per its header (v6: 40 + payload length) */
	__be16 ip_id;			/* IPv4 identification */
	__u8 l2_len;			/* 14, or 18 with one VLAN tag */
	__u8 kind;			/* enum pkt_kind */
	__u8 l4_proto;			/* transport of the packet itself (ICMP for ICMP errors) */
	__u8 tos;			/* IPv4 TOS / IPv6 traffic class: DSCP + ECN */
	__u8 df;			/* IPv4 DF set (IPv6: 1, it never fragments on path) */
	__u8 tcp_flags;			/* byte 13 of the TCP header (TCP_FLAG_*); 0 for anything else */
	__u16 inner_off;		/* PKT_ICMP_TUNNEL: offset of the quoted inner IP header */
};

/* Bits of struct packet.tcp_flags: read as one byte, not through the
 * bitfields of struct tcphdr, which clang loads and masks one by one. */
#define TCP_FLAG_FIN	0x01
#define TCP_FLAG_SYN	0x02
#define TCP_FLAG_RST	0x04
#define TCP_FLAG_ACK	0x10
#define TCP_FLAGS_OFF	13

/* The load balancer's reason for what a shared header parse found. */
static __always_inline int hdr_reason(int status)
{
	switch (status) {
	case HDR_OK:
		return XDPLB_CONTINUE;
	case HDR_TRUNCATED:
		return XDPLB_R_PASS_TRUNCATED;
	case HDR_BAD:
		return XDPLB_R_PASS_BAD_IP_HEADER;
	case HDR_VLAN_STACKED:
		return XDPLB_R_PASS_VLAN_STACKED;
	}
	return XDPLB_R_PASS_IPV4_FRAGMENT;
}

/* IPv4 header: version, IHL, total length against the frame, fragments. */
static __always_inline int parse_iphdr(struct hdr_cursor *c, void *end, struct iphdr **iphp)
{
	int r = ipv4_hdr_start(c, end, iphp);

	if (r == HDR_OK)
		r = ipv4_hdr_rest(c, end, *iphp);
	return hdr_reason(r);
}

/* IPv6 header and extension headers, up to XDPLB_IPV6_EXT_MAX of them.
 * On success *nexthdr is the transport protocol and the cursor points at it. */
static __always_inline int parse_ipv6hdr(struct hdr_cursor *c, void *end, struct ipv6hdr **ip6p, __u8 *nexthdr)
{
	struct ipv6hdr *ip6 = NULL;
	int r = ipv6_hdr_start(c, end, &ip6);
	__u8 nh;

	if (r != HDR_OK)
		return hdr_reason(r);
	if (ip6->payload_len == 0)
		return XDPLB_R_PASS_BAD_IP_HEADER; /* jumbogram or nonsense */
	if ((void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len) > end)
		return XDPLB_R_PASS_TRUNCATED;
	c->pos = ip6 + 1;
	nh = ip6->nexthdr;

#pragma unroll
	for (int i = 0; i < XDPLB_IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr *eh = c->pos;
		__u32 len;

		switch (nh) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(eh + 1) > end)
				return XDPLB_R_PASS_TRUNCATED;
			len = ((__u32)eh->hdrlen + 1) * 8;
			break;
		case IPPROTO_AH:
			if ((void *)(eh + 1) > end)
				return XDPLB_R_PASS_TRUNCATED;
			len = ((__u32)eh->hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			return XDPLB_R_PASS_IPV6_FRAGMENT;
		default:
			*nexthdr = nh;
			*ip6p = ip6;
			return XDPLB_CONTINUE;
		}
		if (c->pos + len > end)
			return XDPLB_R_PASS_TRUNCATED;
		nh = eh->nexthdr;
		c->pos += len;
	}
	switch (nh) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
		return XDPLB_R_PASS_IPV6_EXT_LIMIT;
	case IPPROTO_FRAGMENT:
		return XDPLB_R_PASS_IPV6_FRAGMENT;
	}
	*nexthdr = nh;
	*ip6p = ip6;
	return XDPLB_CONTINUE;
}

/* Source and destination ports of TCP or UDP (both start with them). */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

/* Transport header: bounds of its fixed part. Ports for TCP and UDP. */
static __always_inline int parse_l4(struct hdr_cursor *c, void *end, __u8 proto, struct l4_ports *ports, __u32 *hlen)
{
	__u32 need;

	switch (proto) {
	case IPPROTO_TCP:
		need = sizeof(struct tcphdr);
		break;
	case IPPROTO_UDP:
		need = sizeof(struct udphdr);
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		need = 8;
		break;
	default:
		return XDPLB_R_PASS_L4_UNSUPPORTED;
	}
	if (c->pos + need > end)
		return XDPLB_R_PASS_TRUNCATED;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
		*ports = *(struct l4_ports *)c->pos;
	*hlen = need;
	return XDPLB_CONTINUE;
}

/* What parse_l4() could not check without the IP payload length: a TCP
 * header that claims fewer than 20 bytes or more than the payload, a UDP
 * length below its header or beyond the payload. Such a packet would be
 * forwarded as garbage the backend's stack drops, or worse, parsed there
 * differently than here. Sets the TCP flags. */
static __always_inline int check_l4(void *l4, void *end, __u8 proto, __u32 payload, struct packet *pkt)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		__u32 doff;

		if ((void *)(th + 1) > end)
			return XDPLB_R_PASS_TRUNCATED;
		doff = th->doff;
		if (doff < 5 || doff * 4 > payload)
			return XDPLB_R_PASS_BAD_L4_HEADER;
		pkt->tcp_flags = *((__u8 *)th + TCP_FLAGS_OFF);
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		__u32 len;

		if ((void *)(uh + 1) > end)
			return XDPLB_R_PASS_TRUNCATED;
		len = bpf_ntohs(uh->len);
		if (len < sizeof(struct udphdr) || len > payload)
			return XDPLB_R_PASS_BAD_L4_HEADER;
	}
	return XDPLB_CONTINUE;
}

static __always_inline void set_v4(__u8 *dst16, __be32 a)
{
	*(__be32 *)dst16 = a;
}

static __always_inline void set_v6(__u8 *dst16, const struct in6_addr *a)
{
	__builtin_memcpy(dst16, a, 16);
}

/* An ICMP error about a packet sent from the address it is addressed to,
 * and that packet an IPIP / IP6IP6 one (a tunnel packet of this node, if the
 * address is one of its outer sources: pmtu.h decides and checks the inner
 * packet). The error's own tuple stays in pkt->flow. */
static __always_inline int icmp_tunnel_quote(struct hdr_cursor *c, void *data, struct packet *pkt, __u32 outer_hl)
{
	long off = c->pos - data; /* a scalar first: 32-bit pointer arithmetic is refused */

	off += outer_hl;
	if (off > XDPLB_MAX_OFF)
		return XDPLB_R_PASS_ICMP_QUOTE;
	pkt->kind = PKT_ICMP_TUNNEL;
	pkt->inner_off = off;
	return XDPLB_CONTINUE;
}

/* The packet quoted by an ICMP error, at the cursor: its tuple reversed is
 * the client -> VIP flow it belongs to. Only TCP/UDP quotes with their ports,
 * and only of a packet sent from the address the error is addressed to. */
static __always_inline int parse_icmp_quote(struct hdr_cursor *c, void *data, void *end, struct packet *pkt)
{
	struct l4_ports *ports;

	if (pkt->flow.family == XDPLB_FAMILY_V4) {
		struct iphdr *q = c->pos;
		__u32 hl;

		if ((void *)(q + 1) > end)
			return XDPLB_R_PASS_ICMP_QUOTE;
		hl = q->ihl * 4;
		if (q->version != 4 || hl < sizeof(*q))
			return XDPLB_R_PASS_ICMP_QUOTE;
		if (q->frag_off & bpf_htons(IP_OFFSET_MASK))
			return XDPLB_R_PASS_ICMP_QUOTE; /* a later fragment quotes no ports */
		if (q->protocol == IPPROTO_IPIP && q->saddr == *(__be32 *)pkt->flow.dst)
			return icmp_tunnel_quote(c, data, pkt, hl);
		if (q->protocol != IPPROTO_TCP && q->protocol != IPPROTO_UDP)
			return XDPLB_R_PASS_ICMP_QUOTE;
		ports = c->pos + hl;
		if ((void *)(ports + 1) > end)
			return XDPLB_R_PASS_ICMP_QUOTE;
		if (q->saddr != *(__be32 *)pkt->flow.dst)
			return XDPLB_R_PASS_ICMP_QUOTE; /* not about a packet from the address it is sent to */
		set_v4(pkt->flow.src, q->daddr);
		set_v4(pkt->flow.dst, q->saddr);
		pkt->flow.proto = q->protocol;
	} else {
		struct ipv6hdr *q = c->pos;

		if ((void *)(q + 1) > end)
			return XDPLB_R_PASS_ICMP_QUOTE;
		if (q->version != 6)
			return XDPLB_R_PASS_ICMP_QUOTE;
		if (*(__u64 *)&q->saddr != *(__u64 *)pkt->flow.dst ||
		    *((__u64 *)&q->saddr + 1) != *(__u64 *)(pkt->flow.dst + 8))
			return XDPLB_R_PASS_ICMP_QUOTE;
		if (q->nexthdr == IPPROTO_IPV6)
			return icmp_tunnel_quote(c, data, pkt, sizeof(*q));
		if (q->nexthdr != IPPROTO_TCP && q->nexthdr != IPPROTO_UDP)
			return XDPLB_R_PASS_ICMP_QUOTE;
		ports = (void *)(q + 1);
		if ((void *)(ports + 1) > end)
			return XDPLB_R_PASS_ICMP_QUOTE;
		set_v6(pkt->flow.src, &q->daddr);
		set_v6(pkt->flow.dst, &q->saddr);
		pkt->flow.proto = q->nexthdr;
	}
	/* the quote must lie inside the ICMP packet, not in Ethernet padding */
	if ((void *)(ports + 1) - data > pkt->l3_off + pkt->ip_len)
		return XDPLB_R_PASS_ICMP_QUOTE;
	pkt->flow.sport = ports->dest;
	pkt->flow.dport = ports->source;
	return XDPLB_CONTINUE;
}

/* ICMP/ICMPv6 to classify: echo request, an error quoting a flow, or other. */
static __always_inline int parse_icmp(struct hdr_cursor *c, void *data, void *end, struct packet *pkt)
{
	__u8 *type = c->pos;
	__u8 t;

	if ((void *)(type + 8) > end)
		return XDPLB_R_PASS_TRUNCATED;
	t = *type;
	if (pkt->flow.family == XDPLB_FAMILY_V4) {
		if (t == ICMP_ECHO) {
			pkt->kind = PKT_ICMP_ECHO;
			return XDPLB_CONTINUE;
		}
		if (t != ICMP_DEST_UNREACH && t != ICMP_TIME_EXCEEDED)
			return XDPLB_R_PASS_ICMP_OTHER;
	} else {
		if (t == ICMP6_ECHO_REQUEST) {
			pkt->kind = PKT_ICMP_ECHO;
			return XDPLB_CONTINUE;
		}
		if (t != ICMP6_DEST_UNREACH && t != ICMP6_PACKET_TOO_BIG && t != ICMP6_TIME_EXCEEDED)
			return XDPLB_R_PASS_ICMP_OTHER;
	}
	pkt->kind = PKT_ICMP_ERROR;
	c->pos += 8;
	return parse_icmp_quote(c, data, end, pkt);
}

/* The common case in one bounds check and few branches: untagged Ethernet,
 * IPv4 without options, not a fragment, TCP, the TCP header inside the IP
 * packet and the IP packet inside the frame. Returns 1 with *pkt filled in
 * exactly as parse_general() would fill it, or 0 (nothing written
 * but frame_len): the general path then decides. The headers are read
 * through their own types, not a packed struct of all three: clang reads a
 * packed struct byte by byte. */
static __always_inline int parse_fast_v4_tcp(void *data, void *end, struct packet *pkt)
{
	__be16 *eth_proto = data + offsetof(struct ethhdr, h_proto);
	struct iphdr *ip = data + sizeof(struct ethhdr);
	struct l4_ports *ports = (void *)(ip + 1);
	struct tcphdr *th = (void *)(ip + 1);
	__u32 tot;

	if ((void *)(ip + 1) + sizeof(struct tcphdr) > end)
		return 0;
	if (*eth_proto != bpf_htons(ETH_P_IP) || *(__u8 *)ip != 0x45 || ip->protocol != IPPROTO_TCP ||
	    (ip->frag_off & bpf_htons(IP_MF_BIT | IP_OFFSET_MASK)))
		return 0;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < sizeof(struct iphdr) + sizeof(struct tcphdr) || sizeof(struct ethhdr) + tot > pkt->frame_len ||
	    th->doff < 5 || sizeof(struct iphdr) + th->doff * 4 > tot)
		return 0;
	pkt->flow.family = XDPLB_FAMILY_V4;
	set_v4(pkt->flow.src, ip->saddr);
	set_v4(pkt->flow.dst, ip->daddr);
	pkt->flow.sport = ports->source;
	pkt->flow.dport = ports->dest;
	pkt->flow.proto = IPPROTO_TCP;
	pkt->l4_proto = IPPROTO_TCP;
	pkt->ip_len = tot;
	pkt->ip_id = ip->id;
	pkt->tos = ip->tos;
	pkt->df = !!(ip->frag_off & bpf_htons(IP_DF_BIT));
	pkt->l2_len = sizeof(struct ethhdr);
	pkt->l3_off = sizeof(struct ethhdr);
	pkt->l4_off = sizeof(struct ethhdr) + sizeof(struct iphdr);
	pkt->tcp_flags = *((__u8 *)th + TCP_FLAGS_OFF);
	pkt->kind = PKT_FLOW;
	return 1;
}

/* Step 1 for any frame (pkt->frame_len set). Returns XDPLB_CONTINUE with
 * *pkt filled in, or the reason to pass the packet to the kernel unchanged. */
static __always_inline int parse_general(void *data, void *end, struct packet *pkt)
{
	struct hdr_cursor c = { .pos = data };
	struct l4_ports ports = {};
	__u16 eth_proto = 0;
	__u32 l4_hlen = 0;
	__u8 l2_len = 0;
	__u8 l4 = 0;
	int r;

	r = parse_ethhdr(&c, end, &eth_proto, &l2_len);
	if (r != HDR_OK)
		return hdr_reason(r);
	pkt->l2_len = l2_len;
	pkt->l3_off = l2_len;

	if (eth_proto == ETH_P_IP) {
		struct iphdr *iph = NULL;

		r = parse_iphdr(&c, end, &iph);
		if (r != XDPLB_CONTINUE)
			return r;
		pkt->flow.family = XDPLB_FAMILY_V4;
		set_v4(pkt->flow.src, iph->saddr);
		set_v4(pkt->flow.dst, iph->daddr);
		pkt->ip_len = bpf_ntohs(iph->tot_len);
		pkt->ip_id = iph->id;
		pkt->tos = iph->tos;
		pkt->df = !!(iph->frag_off & bpf_htons(IP_DF_BIT));
		l4 = iph->protocol;
	} else if (eth_proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = NULL;

		r = parse_ipv6hdr(&c, end, &ip6, &l4);
		if (r != XDPLB_CONTINUE)
			return r;
		pkt->flow.family = XDPLB_FAMILY_V6;
		set_v6(pkt->flow.src, &ip6->saddr);
		set_v6(pkt->flow.dst, &ip6->daddr);
		pkt->ip_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		pkt->tos = ipv6_tclass(ip6);
		pkt->df = 1;
	} else {
		return XDPLB_R_PASS_NOT_IP;
	}
	pkt->l4_off = c.pos - data;
	if (pkt->l4_off > XDPLB_MAX_OFF)
		return XDPLB_R_PASS_TRUNCATED;
	if ((l4 == IPPROTO_ICMP && pkt->flow.family != XDPLB_FAMILY_V4) ||
	    (l4 == IPPROTO_ICMPV6 && pkt->flow.family != XDPLB_FAMILY_V6))
		return XDPLB_R_PASS_L4_UNSUPPORTED;
	r = parse_l4(&c, end, l4, &ports, &l4_hlen);
	if (r != XDPLB_CONTINUE)
		return r;
	/* the frame may be longer than the IP packet (Ethernet padding): the
	 * transport header must lie inside the IP packet */
	if (pkt->l4_off + l4_hlen > pkt->l3_off + pkt->ip_len)
		return XDPLB_R_PASS_TRUNCATED;
	r = check_l4(c.pos, end, l4, pkt->l3_off + pkt->ip_len - pkt->l4_off, pkt);
	if (r != XDPLB_CONTINUE)
		return r;
	pkt->l4_proto = l4;
	pkt->flow.proto = l4;
	pkt->flow.sport = ports.source;
	pkt->flow.dport = ports.dest;
	if (l4 == IPPROTO_ICMP || l4 == IPPROTO_ICMPV6)
		return parse_icmp(&c, data, end, pkt);
	pkt->kind = PKT_FLOW;
	return XDPLB_CONTINUE;
}

/* Step 1 as a whole: the fast path when it applies, else the general one.
 * test/datapath-parse.test.ts checks that both fill struct packet alike. */
static __always_inline int parse_packet(struct xdp_md *ctx, struct packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	pkt->frame_len = end - data;
	if (parse_fast_v4_tcp(data, end, pkt))
		return XDPLB_CONTINUE;
	return parse_general(data, end, pkt);
}

#endif /* XDPLB_PARSE_H */
