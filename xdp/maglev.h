/* SPDX-License-Identifier: Apache-2.0 */
/* Steps 3 and 4: the service and the backend of a flow (the connection
 * table, or the service lookup and the service's Maglev table), and the flow
 * hash, which src/datapath/flowhash.ts computes bit for bit. */
#ifndef XDPLB_MAGLEV_H
#define XDPLB_MAGLEV_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"
#include "parse.h"
#include "flowcache.h"

/* ---- Linux jhash2 (include/linux/jhash.h, Bob Jenkins' lookup3) ---- */
#define JHASH_INITVAL 0xdeadbeefU

static __always_inline __u32 rol32(__u32 w, unsigned int s)
{
	return (w << s) | (w >> (32 - s));
}

#define __jhash_mix(a, b, c)                        \
	{                                           \
		a -= c; a ^= rol32(c, 4);  c += b;  \
		b -= a; b ^= rol32(a, 6);  a += c;  \
		c -= b; c ^= rol32(b, 8);  b += a;  \
		a -= c; a ^= rol32(c, 16); c += b;  \
		b -= a; b ^= rol32(a, 19); a += c;  \
		c -= b; c ^= rol32(b, 4);  b += a;  \
	}

#define __jhash_final(a, b, c)                 \
	{                                      \
		c ^= b; c -= rol32(b, 14);     \
		a ^= c; a -= rol32(c, 11);     \
		b ^= a; b -= rol32(a, 25);     \
		c ^= b; c -= rol32(b, 16);     \
		a ^= c; a -= rol32(c, 4);      \
		b ^= a; b -= rol32(a, 14);     \
		c ^= b; c -= rol32(b, 24);     \
	}

/* jhash2(k, length, initval) for a length known at compile time. */
static __always_inline __u32 jhash2(const __u32 *k, const __u32 length, __u32 initval)
{
	__u32 a, b, c, n = length;

	a = b = c = JHASH_INITVAL + (length << 2) + initval;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (n <= 3)
			break;
		a += k[0];
		b += k[1];
		c += k[2];
		__jhash_mix(a, b, c);
		n -= 3;
		k += 3;
	}
	switch (n) {
	case 3:
		c += k[2];
		/* fallthrough */
	case 2:
		b += k[1];
		/* fallthrough */
	case 1:
		a += k[0];
		__jhash_final(a, b, c);
		break;
	}
	return c;
}

static __always_inline __u32 addr_word(const __u8 *a)
{
	return bpf_ntohl(*(const __u32 *)a);
}

/* The flow hash. Words, each the big-endian value of its 4 bytes:
 *   IPv4: src, dst, ports, proto                 (jhash2 over 4 words)
 *   IPv6: src[0..3], dst[0..3], ports, proto     (jhash2 over 10 words)
 * ports = sport << 16 | dport, or 0 when hashing on the source only
 * (XDPLB_SVC_F_SRC_HASH). Seed XDPLB_FLOW_HASH_SEED. */
static __always_inline __u32 flow_hash(const struct xdplb_flow_key *f, int src_only)
{
	__u32 ports = src_only ? 0 : ((__u32)bpf_ntohs(f->sport) << 16 | bpf_ntohs(f->dport));
	__u32 w[10];

	if (f->family == XDPLB_FAMILY_V4) {
		w[0] = addr_word(f->src);
		w[1] = addr_word(f->dst);
		w[2] = ports;
		w[3] = f->proto;
		return jhash2(w, 4, XDPLB_FLOW_HASH_SEED);
	}
#pragma unroll
	for (int i = 0; i < 4; i++) {
		w[i] = addr_word(f->src + 4 * i);
		w[4 + i] = addr_word(f->dst + 4 * i);
	}
	w[8] = ports;
	w[9] = f->proto;
	return jhash2(w, 10, XDPLB_FLOW_HASH_SEED);
}

/* A service of VIP f->dst: (proto, port) in the map of the VIP's family. */
static __always_inline struct xdplb_service *lookup_service_key(const struct xdplb_flow_key *f, __u8 proto, __be16 port)
{
	if (f->family == XDPLB_FAMILY_V4) {
		struct xdplb_service4_key k4 = { .port = port, .proto = proto };

		__builtin_memcpy(k4.vip, f->dst, 4);
		return bpf_map_lookup_elem(&xdplb_services4, &k4);
	}
	struct xdplb_service_key key = { .family = f->family, .proto = proto, .port = port };

	__builtin_memcpy(key.vip, f->dst, 16);
	return bpf_map_lookup_elem(&xdplb_services, &key);
}

/* Step 3: the service of a flow: exact port first, then the all-ports one. */
static __always_inline struct xdplb_service *lookup_service(const struct xdplb_flow_key *f)
{
	struct xdplb_service *svc;

	svc = lookup_service_key(f, f->proto, f->dport);
	if (svc)
		return svc;
	return lookup_service_key(f, f->proto, 0);
}

/* The VIP entry (ICMP protocol, port 0) that says whether echo is answered. */
static __always_inline struct xdplb_service *lookup_vip_entry(const struct xdplb_flow_key *f)
{
	return lookup_service_key(f, f->family == XDPLB_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6, 0);
}

/* The connection table of the flow's family (maps.h), looked up and
 * written with its own key. */
static __always_inline void flow4_key(const struct xdplb_flow_key *f, struct xdplb_flow4_key *k)
{
	__builtin_memcpy(k->src, f->src, 4);
	__builtin_memcpy(k->dst, f->dst, 4);
	k->sport = f->sport;
	k->dport = f->dport;
	k->proto = f->proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

static __always_inline struct xdplb_ct_entry *ct_lookup(const struct xdplb_flow_key *f)
{
	struct xdplb_flow4_key k4;

	if (f->family == XDPLB_FAMILY_V4) {
		flow4_key(f, &k4);
		return bpf_map_lookup_elem(&xdplb_conntrack4, &k4);
	}
	return bpf_map_lookup_elem(&xdplb_conntrack, f);
}

static __always_inline void ct_update(const struct xdplb_flow_key *f, const struct xdplb_ct_entry *e)
{
	struct xdplb_flow4_key k4;

	if (f->family == XDPLB_FAMILY_V4) {
		flow4_key(f, &k4);
		bpf_map_update_elem(&xdplb_conntrack4, &k4, e, BPF_ANY);
		return;
	}
	bpf_map_update_elem(&xdplb_conntrack, f, e, BPF_ANY);
}

/* A TCP segment that opens a connection: SYN without ACK. */
static __always_inline int opens_connection(const struct packet *pkt)
{
	return (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* The lifetime an entry gets from now: closing (after a FIN or RST), or
 * idle TCP or UDP, from the node config or its default. */
static __always_inline __u32 ct_lifetime(const struct xdplb_config *cfg, __u8 proto, __u8 closing)
{
	if (closing)
		return cfg->ct_closing_s ? cfg->ct_closing_s : XDPLB_CT_CLOSING_S;
	if (proto == IPPROTO_TCP)
		return cfg->ct_tcp_s ? cfg->ct_tcp_s : XDPLB_CT_TCP_S;
	return cfg->ct_udp_s ? cfg->ct_udp_s : XDPLB_CT_UDP_S;
}

/* Whether entry e is closing once pkt has passed: a FIN or RST closes it, a
 * SYN (a new connection on the 5-tuple) opens it again. */
static __always_inline __u8 ct_closing_after(const struct xdplb_ct_entry *e, const struct packet *pkt)
{
	if (pkt->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		return 1;
	return opens_connection(pkt) ? 0 : e->closing;
}

static __always_inline void ct_stamp(struct xdplb_ct_entry *e, const struct packet *pkt, const struct xdplb_config *cfg,
				     __u8 closing, __u32 jiffies)
{
	__u32 now = bpf_ktime_get_coarse_ns() / 1000000000ULL;

	e->closing = closing;
	e->expires_s = now + ct_lifetime(cfg, pkt->flow.proto, closing);
	e->checked_jiffies = jiffies;
}

/* Whether connection-table entry e still exists for pkt; a flow's packet
 * also moves its expiry forward. Within XDPLB_CT_REFRESH_JIFFIES of the last
 * move, and with nothing to change (no FIN, RST or reopening SYN), the entry
 * is alive without reading the clock or writing it (consts.h). An expired
 * entry is left as it is: the caller places the flow and overwrites it. */
static __always_inline int ct_alive(struct xdplb_ct_entry *e, const struct packet *pkt, const struct xdplb_config *cfg)
{
	__u32 jiffies = bpf_jiffies64();
	__u8 closing = ct_closing_after(e, pkt);

	if (jiffies - e->checked_jiffies < XDPLB_CT_REFRESH_JIFFIES && closing == e->closing)
		return 1;
	if (bpf_ktime_get_coarse_ns() / 1000000000ULL >= e->expires_s)
		return 0;
	if (pkt->kind == PKT_FLOW)
		ct_stamp(e, pkt, cfg, closing, jiffies);
	return 1;
}

struct backend_choice {
	struct xdplb_service svc;	/* the flow's service, copied: the same scalars whichever map it came from */
	struct xdplb_backend *be;
	__u32 id;
	__u32 hashed;		/* pkt->hash set: by Maglev, which needs it, or from a flow-cache entry that has it */
	__u32 remember;		/* an answer of the connection table (or a new entry): worth a flow-cache entry */
	__u32 pending;		/* a SYN's placement, in the flow cache only (flowcache.h: flow_cache_pending()) */
};

/* Whether a connection-table or flow-cache entry of service sid that names
 * be still decides where pkt goes. The backend must still be that
 * service's (an id freed and handed to another service names someone else)
 * and take the flow: active, or draining for a flow it already has. A SYN
 * is a new connection even on an old 5-tuple (client port reuse, NAT), so
 * only an active backend keeps it: a retransmitted SYN then reaches the
 * backend the first one did, and a SYN never lands on a draining backend.
 * A down backend keeps nothing: its flows move to a live backend, which
 * resets them at once rather than leaving them to time out. */
static __always_inline int entry_holds(const struct xdplb_backend *be, __u32 sid, const struct packet *pkt)
{
	if (!be || be->service_id != sid)
		return 0;
	if (be->state == XDPLB_BACKEND_ACTIVE)
		return 1;
	return be->state == XDPLB_BACKEND_DRAINING && !opens_connection(pkt);
}

/* Whether d is the service of flow f: its VIP, protocol and port, or its
 * VIP's all-ports service while the flow's port has no service of its own
 * (as lookup_service() would find it). Addresses of either family compare as
 * 16 bytes: an IPv4 one is zero past its 4 bytes in both. */
static __always_inline int service_serves(const struct xdplb_service_def *d, const struct xdplb_flow_key *f)
{
	if (d->family != f->family || d->proto != f->proto ||
	    *(const __u64 *)d->vip != *(const __u64 *)f->dst ||
	    *(const __u64 *)(d->vip + 8) != *(const __u64 *)(f->dst + 8))
		return 0;
	if (d->port == f->dport)
		return 1;
	return d->port == 0 && !lookup_service_key(f, f->proto, f->dport);
}

/* Steps 3 and 4 for an established flow this CPU has seen lately, without
 * a hash lookup: its flow-cache entry (flowcache.h) names the service (by
 * id, an array) and the backend. The answer counts only while that service
 * still serves the flow and keeps using the connection table, and the entry
 * still holds (entry_holds()); a SYN, FIN or RST goes to the connection
 * table, whose entry it changes. Returns 1 with *out set, or 0: then the
 * service lookup and choose_backend() decide. */
static __always_inline int choose_cached(struct packet *pkt, struct backend_choice *out)
{
	struct xdplb_flow_cache_entry *c = flow_cache_get(flow_cache_slot(&pkt->flow), &pkt->flow);
	struct xdplb_service_def *d;
	struct xdplb_backend *be;
	__u32 sid, bid;

	if (!c)
		return 0;
	/* what changes the connection-table entry (SYN, FIN, RST) goes to it */
	if (pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST))
		return 0;
	sid = c->service_id;
	bid = c->backend_id;
	d = bpf_map_lookup_elem(&xdplb_svc_by_id, &sid);
	if (!d || !service_serves(d, &pkt->flow) || (d->svc.flags & XDPLB_SVC_F_CT_BYPASS))
		return 0;
	be = bpf_map_lookup_elem(&xdplb_backends, &bid);
	if (!entry_holds(be, sid, pkt))
		return 0;
	out->svc = d->svc;
	out->be = be;
	out->id = bid;
	out->hashed = c->hashed;
	pkt->hash = c->hash;
	return 1;
}

/* A flow without a connection-table entry that this CPU placed at its SYN
 * lately: the pending backend, if it still holds for pkt. Returns 1 with
 * out set, or 0. */
static __always_inline int choose_pending(struct packet *pkt, __u32 sid, struct backend_choice *out)
{
	struct xdplb_flow_cache_entry *c = flow_cache_pending(flow_cache_slot(&pkt->flow), &pkt->flow);
	struct xdplb_backend *be;
	__u32 id;

	if (!c || c->service_id != sid)
		return 0;
	id = c->backend_id;
	be = bpf_map_lookup_elem(&xdplb_backends, &id);
	if (!entry_holds(be, sid, pkt))
		return 0;
	out->be = be;
	out->id = id;
	out->hashed = c->hashed;
	pkt->hash = c->hash;
	return 1;
}

/* The backend at entry flow hash % M of the service's Maglev table (M: the
 * table's own size, maps.h), which must be active. Returns XDPLB_CONTINUE
 * with out set, or a drop reason. */
static __always_inline int choose_maglev(struct packet *pkt, const struct xdplb_service *svc,
					 struct backend_choice *out)
{
	struct xdplb_backend *be;
	struct bpf_array___xdplb *table;
	__u32 idx, id, *idp;

	pkt->hash = flow_hash(&pkt->flow, svc->flags & XDPLB_SVC_F_SRC_HASH);
	out->hashed = 1;
	table = bpf_map_lookup_elem(&xdplb_maglev, &svc->id);
	if (!table)
		return XDPLB_R_DROP_NO_BACKEND;
	idx = pkt->hash % table->map.max_entries;
	idp = bpf_map_lookup_elem(table, &idx);
	if (!idp)
		return XDPLB_R_DROP_NO_BACKEND;
	id = *idp;
	be = bpf_map_lookup_elem(&xdplb_backends, &id);
	if (!be || be->state != XDPLB_BACKEND_ACTIVE)
		return XDPLB_R_DROP_NO_BACKEND;
	out->be = be;
	out->id = id;
	return XDPLB_CONTINUE;
}

/* Step 4 for the rest. The connection table first (unless bypassed): an
 * entry of this service that has not expired (ct_alive()) and still holds
 * (entry_holds()) keeps the flow there. Without an entry, a placement
 * pending from the flow's SYN on this CPU (choose_pending()); otherwise
 * Maglev. A new placement is then remembered (not for ICMP errors: they
 * follow flows, never start them): a SYN's with the flow cache on only in
 * the flow cache, as pending, anything else in the connection table. Either
 * way a flow of the connection table is marked for the flow cache
 * (xdplb_process() writes it once the flow hash is known or known not to be
 * needed). Returns XDPLB_CONTINUE or a drop reason. */
static __always_inline int choose_backend(struct packet *pkt, const struct xdplb_service *svc,
					  const struct xdplb_config *cfg, struct backend_choice *out)
{
	int use_ct = !(svc->flags & XDPLB_SVC_F_CT_BYPASS);
	int cache = !(cfg->flags & XDPLB_CFG_F_NO_FLOW_CACHE);
	struct xdplb_ct_entry *ct = NULL;
	struct xdplb_backend *be;
	__u32 id;
	int r;

	out->svc = *svc;
	if (use_ct) {
		ct = ct_lookup(&pkt->flow);
		if (ct && ct->service_id == svc->id && ct_alive(ct, pkt, cfg)) {
			id = ct->backend_id;
			be = bpf_map_lookup_elem(&xdplb_backends, &id);
			if (entry_holds(be, svc->id, pkt)) {
				out->remember = 1;
				out->be = be;
				out->id = id;
				return XDPLB_CONTINUE;
			}
		}
	}

	if (!(use_ct && !ct && cache && choose_pending(pkt, svc->id, out))) {
		r = choose_maglev(pkt, svc, out);
		if (r != XDPLB_CONTINUE)
			return r;
	}

	if (use_ct && pkt->kind == PKT_FLOW) {
		struct xdplb_ct_entry e = { .backend_id = out->id, .service_id = svc->id };

		if (!ct && cache && opens_connection(pkt)) {
			out->pending = 1;
		} else {
			ct_stamp(&e, pkt, cfg, !!(pkt->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)), bpf_jiffies64());
			ct_update(&pkt->flow, &e);
		}
		out->remember = 1;
	}
	return XDPLB_CONTINUE;
}

#endif /* XDPLB_MAGLEV_H */
