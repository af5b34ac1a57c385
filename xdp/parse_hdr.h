/* SPDX-License-Identifier: Apache-2.0 */
/* Header parsing both XDP programs share (the load balancer's parse.h, the
 * decapsulator's decap.bpf.c): the cursor, Ethernet with at most one VLAN
 * tag, the checks of an IPv4 header and the start of an IPv6 one. Each
 * parse_*() checks the bounds of its header once, advances the cursor and
 * says what it found as an enum hdr_status; each program names its own
 * reason (its own counter) for every status. */
#ifndef XDPLB_PARSE_HDR_H
#define XDPLB_PARSE_HDR_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define IP_DF_BIT	0x4000
#define IP_MF_BIT	0x2000
#define IP_OFFSET_MASK	0x1fff

struct hdr_cursor {
	void *pos;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

enum hdr_status {
	HDR_OK = 0,		/* the header is whole and sound; the cursor is past it */
	HDR_TRUNCATED,		/* the frame ends before the header, or before the length it claims */
	HDR_BAD,		/* wrong IP version, IHL below 5, total length below the header */
	HDR_VLAN_STACKED,	/* more than one VLAN tag (QinQ) */
	HDR_FRAGMENT,		/* an IPv4 fragment (first or later) */
};

/* Ethernet and at most one VLAN tag: *proto is the ethertype after them. */
static __always_inline int parse_ethhdr(struct hdr_cursor *c, void *end, __u16 *proto, __u8 *l2_len)
{
	struct ethhdr *eth = c->pos;
	struct vlan_hdr *vh;
	__u16 p;

	if ((void *)(eth + 1) > end)
		return HDR_TRUNCATED;
	c->pos = eth + 1;
	p = bpf_ntohs(eth->h_proto);
	*l2_len = sizeof(*eth);
	if (p == ETH_P_8021Q || p == ETH_P_8021AD) {
		vh = c->pos;
		if ((void *)(vh + 1) > end)
			return HDR_TRUNCATED;
		c->pos = vh + 1;
		p = bpf_ntohs(vh->encap_proto);
		*l2_len += sizeof(*vh);
		if (p == ETH_P_8021Q || p == ETH_P_8021AD)
			return HDR_VLAN_STACKED;
	}
	*proto = p;
	return HDR_OK;
}

/* The fixed part of an IPv4 header at the cursor, of version 4. The cursor
 * stays: the decapsulator looks at the protocol before the rest is checked. */
static __always_inline int ipv4_hdr_start(struct hdr_cursor *c, void *end, struct iphdr **iphp)
{
	struct iphdr *iph = c->pos;

	if ((void *)(iph + 1) > end)
		return HDR_TRUNCATED;
	if (iph->version != 4)
		return HDR_BAD;
	*iphp = iph;
	return HDR_OK;
}

/* The rest of the IPv4 header ipv4_hdr_start() found: IHL, total length
 * against the frame, not a fragment. The cursor moves past the options. */
static __always_inline int ipv4_hdr_rest(struct hdr_cursor *c, void *end, struct iphdr *iph)
{
	__u32 hl = iph->ihl * 4, tot;

	if (hl < sizeof(*iph))
		return HDR_BAD;
	if (c->pos + hl > end)
		return HDR_TRUNCATED;
	tot = bpf_ntohs(iph->tot_len);
	if (tot < hl)
		return HDR_BAD;
	if (c->pos + tot > end)
		return HDR_TRUNCATED;
	if (iph->frag_off & bpf_htons(IP_MF_BIT | IP_OFFSET_MASK))
		return HDR_FRAGMENT;
	c->pos += hl;
	return HDR_OK;
}

/* The fixed part of an IPv6 header at the cursor, of version 6. The cursor
 * stays: each program walks the extension headers it accepts. */
static __always_inline int ipv6_hdr_start(struct hdr_cursor *c, void *end, struct ipv6hdr **ip6p)
{
	struct ipv6hdr *ip6 = c->pos;

	if ((void *)(ip6 + 1) > end)
		return HDR_TRUNCATED;
	if (ip6->version != 6)
		return HDR_BAD;
	*ip6p = ip6;
	return HDR_OK;
}

/* IPv6 traffic class (DSCP and ECN), split over the header's first bytes. */
static __always_inline __u8 ipv6_tclass(const struct ipv6hdr *ip6)
{
	return (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
}

#endif /* XDPLB_PARSE_HDR_H */
