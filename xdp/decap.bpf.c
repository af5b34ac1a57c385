// SPDX-License-Identifier: Apache-2.0
/* xdplb decap: the backend side of DSR. The load balancer sends every packet
 * of a VIP to its backend inside an outer IPv4 (IPIP, protocol 4, RFC 2003) or
 * IPv6 (IP6IP6, next header 41, RFC 2473) header. This program, attached to a
 * backend's receiving interface, strips that outer header and hands the inner
 * packet (destination: the VIP, held on the backend's loopback) to the local
 * stack with XDP_PASS. The backend answers the client directly.
 *
 *   1 parse Ethernet (one VLAN tag allowed)  2 outer IP header  3 is it ours?
 *   4 inner header  5 strip (bpf_xdp_adjust_head), ethertype  6 ECN  7 count
 *
 * Choices worth knowing (each counted under its own reason, below):
 *  - Whose packets: only tunnel packets whose outer destination is one of the
 *    backend's own addresses, listed in xdplb_decap_local (filled from user
 *    space: the lab, or bpftool for an operator). A transit tunnel packet on a
 *    backend that also routes is left alone. One entry with family 0 (the
 *    wildcard) makes every IPIP/IP6IP6 packet ours, whatever its destination.
 *  - Which tunnels: IPv4-in-IPv4 and IPv6-in-IPv6, as the load balancer sends
 *    them. 6in4 (IPv4 protocol 41) and 4in6 (IPv6 next header 4) pass untouched
 *    (not_tunnel). An outer IPv6 header may carry hop-by-hop and destination
 *    options (Linux ip6tnl adds a tunnel encapsulation limit option); they go
 *    with the outer header.
 *  - Anything doubtful passes to the kernel unchanged and counted, never dropped:
 *    a bad outer IPv4 checksum, a fragment (the kernel reassembles it, or drops
 *    it when it has no tunnel device), an inner header of the wrong version.
 *    The one drop is RFC 6040's: outer CE over a Not-ECT inner packet.
 *  - ECN (RFC 6040, normal mode, as Linux's ip_tunnel does): outer CE is copied
 *    into an ECT inner header (IPv4 header checksum updated).
 *  - Ethernet padding after the outer packet stays; the stack trims the inner
 *    packet to its own length. A VLAN tag stays, its inner ethertype rewritten.
 *  - TTL / hop limit of the inner packet is not touched: the tunnel is one hop.
 *  - Sink mode (xdplb_decap_config flag DECAP_CFG_F_SINK), for benchmarks only:
 *    every verdict is carried out as far as the frame goes (the outer header
 *    is stripped, counters bumped) and then the frame is dropped instead of
 *    passed. bench/forward.ts puts it behind the load balancer: stripping puts
 *    the generator's frame back as it was, which matters because live-frame
 *    test runs recycle their pages with whatever the load balancer wrote.
 *
 * L4 DNAT (a service port that differs from the backend's port) needs one
 * more step on the way back: the server answers from the backend port, the
 * client expects the service port. xdplb_revnat, a tc egress program on the
 * same interface, rewrites the source port of replies from a VIP according to
 * xdplb_decap_revnat ((VIP, protocol, backend port) -> service port, filled
 * from user space), L4 checksum updated. Without DNAT it is not needed.
 * ICMP errors the backend sends about such a flow still quote the backend
 * port. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "csum.h"
#include "parse_hdr.h"
#include "decap_layout.h"

/* Why a packet got its verdict; one per-CPU counter each (decap_reasons.def). */
enum xdplb_decap_reason {
#define DECAP_REASON(name, verdict, description) DECAP_R_##name,
#include "decap_reasons.def"
#undef DECAP_REASON
	DECAP_R_MAX
};

/* Extension headers of the outer IPv6 header walked before giving up */
#define DECAP_IPV6_EXT_MAX	4

#define ECN_MASK	3
#define ECN_NOT_ECT	0
#define ECN_CE		3

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_decap_addr);
	__type(value, __u32);	/* unused; 1 */
} xdplb_decap_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DECAP_R_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_decap_counter);
} xdplb_decap_reasons SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_decap_config);
} xdplb_decap_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_revnat_key);
	__type(value, struct xdplb_revnat_val);
} xdplb_decap_revnat SEC(".maps");

/* What the steps after parsing need to know. */
struct tunnel {
	__u32 frame_len;	/* bytes received */
	__u32 strip;		/* outer header bytes (with IPv6 extension headers) */
	__u8 l2_len;		/* 14, or 18 with a VLAN tag */
	__u8 family;		/* DECAP_FAMILY_V4/V6: outer and inner alike */
	__u8 outer_ecn;		/* ECN bits of the outer header */
	__u8 pad;
};

static __always_inline void count(int reason, __u32 bytes)
{
	__u32 key = reason;
	struct xdplb_decap_counter *c = bpf_map_lookup_elem(&xdplb_decap_reasons, &key);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline int finish(int reason, __u32 bytes)
{
	__u32 zero = 0;
	struct xdplb_decap_config *cfg = bpf_map_lookup_elem(&xdplb_decap_config, &zero);

	count(reason, bytes);
	if (reason == DECAP_R_DROP_ECN_CE_NOT_ECT || (cfg && (cfg->flags & DECAP_CFG_F_SINK)))
		return XDP_DROP;
	return XDP_PASS;
}

/* The decapsulator's reason for what a shared header parse found
 * (parse_hdr.h): Ethernet and the outer IP header are parsed with it, so a
 * bad IP header is a bad outer one. */
static __always_inline int decap_hdr_reason(int status)
{
	switch (status) {
	case HDR_OK:
		return -1;
	case HDR_TRUNCATED:
		return DECAP_R_PASS_TRUNCATED;
	case HDR_BAD:
		return DECAP_R_PASS_BAD_OUTER;
	case HDR_VLAN_STACKED:
		return DECAP_R_PASS_VLAN_STACKED;
	}
	return DECAP_R_PASS_FRAGMENT;
}

/* Header checksum of an IPv4 header of hl bytes (20..60) at iph: 0 when right. */
static __always_inline __u16 ipv4_hdr_csum(void *iph, void *end, __u32 hl)
{
	__u16 *w = iph;
	__u64 sum = 0;

	for (int i = 0; i < 30; i++) {
		if (i * 2 >= hl || (void *)(w + i + 1) > end)
			break;
		sum += w[i];
	}
	return csum_fold(sum);
}

/* 2. Outer IPv4: protocol 4, a whole header, not a fragment, checksum right.
 * The cursor ends past the outer header. */
static __always_inline int parse_outer4(struct hdr_cursor *c, void *end, struct tunnel *tn, struct xdplb_decap_addr *dst)
{
	struct iphdr *iph = NULL;
	int r = ipv4_hdr_start(c, end, &iph);
	__u32 hl;

	if (r != HDR_OK)
		return decap_hdr_reason(r);
	if (iph->protocol != IPPROTO_IPIP)
		return DECAP_R_PASS_NOT_TUNNEL;
	r = ipv4_hdr_rest(c, end, iph);
	if (r != HDR_OK)
		return decap_hdr_reason(r);
	hl = iph->ihl * 4;
	if (ipv4_hdr_csum(iph, end, hl) != 0)
		return DECAP_R_PASS_BAD_OUTER;
	/* the inner header must lie inside the outer packet */
	if (bpf_ntohs(iph->tot_len) < hl + sizeof(struct iphdr))
		return DECAP_R_PASS_BAD_INNER;
	dst->family = DECAP_FAMILY_V4;
	*(__be32 *)dst->addr = iph->daddr;
	tn->family = DECAP_FAMILY_V4;
	tn->outer_ecn = iph->tos & ECN_MASK;
	tn->strip = hl;
	return -1;
}

/* 2. Outer IPv6: next header 41, after hop-by-hop / destination options */
static __always_inline int parse_outer6(struct hdr_cursor *c, void *end, struct tunnel *tn, struct xdplb_decap_addr *dst)
{
	struct ipv6hdr *ip6 = NULL;
	int r = ipv6_hdr_start(c, end, &ip6);
	__u32 plen, off = sizeof(*ip6);
	__u8 nh;

	if (r != HDR_OK)
		return decap_hdr_reason(r);
	plen = bpf_ntohs(ip6->payload_len);
	nh = ip6->nexthdr;

	for (int i = 0; i < DECAP_IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr *eh = c->pos + off;

		if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_DSTOPTS)
			break;
		if ((void *)(eh + 1) > end)
			return DECAP_R_PASS_TRUNCATED;
		nh = eh->nexthdr;
		off += ((__u32)eh->hdrlen + 1) * 8;
	}
	if (nh == IPPROTO_FRAGMENT)
		return DECAP_R_PASS_FRAGMENT;
	if (nh != IPPROTO_IPV6)
		return DECAP_R_PASS_NOT_TUNNEL;
	if (plen == 0)
		return DECAP_R_PASS_BAD_OUTER; /* jumbogram */
	if (c->pos + sizeof(*ip6) + plen > end)
		return DECAP_R_PASS_TRUNCATED;
	if (off + sizeof(struct ipv6hdr) > sizeof(*ip6) + plen)
		return DECAP_R_PASS_BAD_INNER;
	dst->family = DECAP_FAMILY_V6;
	__builtin_memcpy(dst->addr, &ip6->daddr, 16);
	tn->family = DECAP_FAMILY_V6;
	tn->outer_ecn = ipv6_tclass(ip6) & ECN_MASK;
	tn->strip = off;
	c->pos += off;
	return -1;
}

/* 3. Addressed to this backend (or the wildcard entry is there) */
static __always_inline int is_local(struct xdplb_decap_addr *dst)
{
	struct xdplb_decap_addr any = {};

	if (bpf_map_lookup_elem(&xdplb_decap_local, dst))
		return 1;
	return bpf_map_lookup_elem(&xdplb_decap_local, &any) != NULL;
}

/* 4. The inner header: of the tunnel's family, whole in the frame */
static __always_inline int check_inner(struct hdr_cursor *c, void *end, const struct tunnel *tn)
{
	if (tn->family == DECAP_FAMILY_V4) {
		struct iphdr *in = c->pos;

		if ((void *)(in + 1) > end)
			return DECAP_R_PASS_TRUNCATED;
		if (in->version != 4)
			return DECAP_R_PASS_BAD_INNER;
	} else {
		struct ipv6hdr *in6 = c->pos;

		if ((void *)(in6 + 1) > end)
			return DECAP_R_PASS_TRUNCATED;
		if (in6->version != 6)
			return DECAP_R_PASS_BAD_INNER;
	}
	return -1;
}

/* ECN bits of the inner header at the cursor (checked by check_inner) */
static __always_inline __u8 inner_ecn(struct hdr_cursor *c, void *end, const struct tunnel *tn)
{
	if (tn->family == DECAP_FAMILY_V4) {
		struct iphdr *in = c->pos;

		if ((void *)(in + 1) > end)
			return ECN_NOT_ECT;
		return in->tos & ECN_MASK;
	}
	struct ipv6hdr *in6 = c->pos;

	if ((void *)(in6 + 1) > end)
		return ECN_NOT_ECT;
	return ipv6_tclass(in6) & ECN_MASK;
}

/* 5. Strip: the L2 header moves forward over the outer header, its (inner)
 * ethertype becomes the inner family's. Nothing changes if the kernel refuses. */
static __always_inline int strip(struct xdp_md *ctx, const struct tunnel *tn)
{
	struct {
		struct ethhdr eth;
		struct vlan_hdr vlan;
	} l2;
	__be16 proto = bpf_htons(tn->family == DECAP_FAMILY_V4 ? ETH_P_IP : ETH_P_IPV6);
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if (tn->l2_len == sizeof(struct ethhdr)) {
		if (data + sizeof(struct ethhdr) > end)
			return DECAP_R_PASS_TRUNCATED;
		__builtin_memcpy(&l2.eth, data, sizeof(struct ethhdr));
		l2.eth.h_proto = proto;
	} else {
		if (data + sizeof(l2) > end)
			return DECAP_R_PASS_TRUNCATED;
		__builtin_memcpy(&l2, data, sizeof(l2));
		l2.vlan.encap_proto = proto;
	}
	if (bpf_xdp_adjust_head(ctx, (int)tn->strip))
		return DECAP_R_PASS_ADJUST_FAILED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (tn->l2_len == sizeof(struct ethhdr)) {
		if (data + sizeof(struct ethhdr) > end)
			return DECAP_R_PASS_TRUNCATED; /* cannot happen: the inner header follows */
		__builtin_memcpy(data, &l2.eth, sizeof(struct ethhdr));
	} else {
		if (data + sizeof(l2) > end)
			return DECAP_R_PASS_TRUNCATED;
		__builtin_memcpy(data, &l2, sizeof(l2));
	}
	return -1;
}

/* 6. Outer CE into an ECT inner header (called when both say so) */
static __always_inline void set_inner_ce(struct xdp_md *ctx, const struct tunnel *tn)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	void *l3 = data + tn->l2_len;

	if (tn->family == DECAP_FAMILY_V4) {
		struct iphdr *in = l3;
		__u16 old;

		if ((void *)(in + 1) > end)
			return;
		old = *(__u16 *)in; /* version, IHL, TOS */
		in->tos |= ECN_CE;
		csum_replace2(&in->check, old, *(__u16 *)in);
	} else {
		struct ipv6hdr *in6 = l3;

		if ((void *)(in6 + 1) > end)
			return;
		in6->flow_lbl[0] |= ECN_CE << 4;
	}
}

SEC("xdp")
int xdplb_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct hdr_cursor c = { .pos = data };
	struct xdplb_decap_addr dst = {};
	struct tunnel tn = {};
	__u16 proto = 0;
	__u8 l2_len = 0, in_ecn;
	int r;

	tn.frame_len = end - data;

	/* 1. Ethernet */
	r = parse_ethhdr(&c, end, &proto, &l2_len);
	if (r != HDR_OK)
		return finish(decap_hdr_reason(r), tn.frame_len);
	tn.l2_len = l2_len;

	/* 2. Outer header */
	if (proto == ETH_P_IP)
		r = parse_outer4(&c, end, &tn, &dst);
	else if (proto == ETH_P_IPV6)
		r = parse_outer6(&c, end, &tn, &dst);
	else
		r = DECAP_R_PASS_NOT_IP;
	if (r >= 0)
		return finish(r, tn.frame_len);

	/* 3. Ours? */
	if (!is_local(&dst))
		return finish(DECAP_R_PASS_NOT_LOCAL, tn.frame_len);

	/* 4. Inner header */
	r = check_inner(&c, end, &tn);
	if (r >= 0)
		return finish(r, tn.frame_len);
	in_ecn = inner_ecn(&c, end, &tn);
	if (tn.outer_ecn == ECN_CE && in_ecn == ECN_NOT_ECT)
		return finish(DECAP_R_DROP_ECN_CE_NOT_ECT, tn.frame_len);

	/* 5. Strip */
	r = strip(ctx, &tn);
	if (r >= 0)
		return finish(r, tn.frame_len);

	/* 6. ECN */
	if (tn.outer_ecn == ECN_CE && in_ecn != ECN_CE)
		set_inner_ce(ctx, &tn);

	/* 7. Count */
	return finish(tn.family == DECAP_FAMILY_V4 ? DECAP_R_DECAP_IPIP : DECAP_R_DECAP_IP6IP6, tn.frame_len);
}

/* Reverse L4 DNAT on the backend's egress: a TCP/UDP reply from a VIP whose
 * source port is a DNAT backend port leaves with the service port instead.
 * Anything else leaves untouched and uncounted (this runs for every packet the
 * backend sends). IPv6 extension headers are not walked: the local stack
 * sends replies without them. */
SEC("tc")
int xdplb_revnat(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct xdplb_revnat_key key = {};
	struct xdplb_revnat_val *val;
	__u32 l4_off, csum_off;
	__u64 flags;
	__be16 old;

	if (data + sizeof(struct ethhdr) > end)
		return TC_ACT_OK;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = data + sizeof(struct ethhdr);

		if ((void *)(iph + 1) > end || iph->ihl < 5)
			return TC_ACT_OK;
		if (iph->frag_off & bpf_htons(IP_OFFSET_MASK))
			return TC_ACT_OK; /* later fragments carry no ports */
		key.family = DECAP_FAMILY_V4;
		key.proto = iph->protocol;
		*(__be32 *)key.addr = iph->saddr;
		l4_off = sizeof(struct ethhdr) + iph->ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);

		if ((void *)(ip6 + 1) > end)
			return TC_ACT_OK;
		key.family = DECAP_FAMILY_V6;
		key.proto = ip6->nexthdr;
		__builtin_memcpy(key.addr, &ip6->saddr, 16);
		l4_off = sizeof(struct ethhdr) + sizeof(*ip6);
	} else {
		return TC_ACT_OK;
	}
	if (key.proto == IPPROTO_TCP) {
		csum_off = l4_off + offsetof(struct tcphdr, check);
		flags = 0;
	} else if (key.proto == IPPROTO_UDP) {
		csum_off = l4_off + offsetof(struct udphdr, check);
		/* IPv4 UDP without a checksum keeps none; a computed 0 becomes 0xffff */
		flags = key.family == DECAP_FAMILY_V4 ? BPF_F_MARK_MANGLED_0 : 0;
	} else {
		return TC_ACT_OK;
	}
	if (bpf_skb_load_bytes(skb, l4_off, &old, sizeof(old)))
		return TC_ACT_OK;
	key.port = old;
	val = bpf_map_lookup_elem(&xdplb_decap_revnat, &key);
	if (!val)
		return TC_ACT_OK;
	if (bpf_l4_csum_replace(skb, csum_off, old, val->port, flags | sizeof(__be16)))
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, l4_off, &val->port, sizeof(val->port), 0))
		return TC_ACT_OK;
	count(DECAP_R_REVNAT_PORT, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
