// SPDX-License-Identifier: Apache-2.0
/* xdplb: the XDP load balancer. xdplb_process() is the packet path of
 * DESIGN.md, one step after the other:
 *
 *   1 parse  2 recorder (in)  3 service  4 backend  5 L4 DNAT  6 encap
 *   7 PMTU  8 FIB/L2  9 recorder (out)  10 counters
 *
 * Two deviations from the numbering, on purpose:
 *  - The FIB lookup of step 8 runs before steps 5 and 6 change anything,
 *    because step 7 needs its MTU and because a packet that cannot be
 *    forwarded (FIB miss, too big) must reach the kernel, or be quoted in the
 *    ICMP error, exactly as it arrived.
 *  - Step 3 starts with a bit per VIP address hash (vipfilter.h): traffic
 *    that is no VIP's goes to the kernel without any hash lookup. For a flow
 *    this CPU has seen lately step 4 then comes first: its per-CPU
 *    flow-cache entry names the service too (by id, in an array), and no
 *    hash lookup is made at all.
 *
 * Choices worth knowing (each counted under its own reason, consts.h):
 *  - Echo: an echo request to a VIP is answered when the VIP entry (service
 *    key with protocol ICMP/ICMPv6 and port 0) carries XDPLB_SVC_F_ICMP_ECHO.
 *    The daemon keeps one such entry per VIP, flag set when any service of
 *    the VIP allows echo.
 *  - ICMP errors (IPv4 types 3 and 11; ICMPv6 types 1, 2, 3) addressed to a
 *    VIP and quoting a TCP/UDP packet from it are sent, unchanged, to the
 *    backend of the quoted flow (its tuple reversed: the same hash, the same
 *    connection-table entry). They never create connection-table entries,
 *    are never DNATed, and are dropped rather than answered when too big.
 *  - PMTU: IPv4 without DF that does not fit once encapsulated is dropped
 *    (XDP cannot fragment; the kernel would route it to the VIP, not to a
 *    backend). The node's MTU override can only lower the FIB's MTU, and so
 *    does a path MTU a router past the node reported (pmtu.h).
 *  - ICMP errors about the node's own tunnel packets, and everything else
 *    addressed to an outer source prefix: pmtu.h.
 *  - ICMP errors from clients' side addressed to a VIP about a DNAT
 *    service's flow quote the VIP port (the client's view), so they find
 *    the flow's backend; they travel unchanged, and the backend's stack
 *    matches them against its own, translated, socket only if its reverse
 *    translation rewrites ICMP quotes too.
 *  - Frames arriving with a VLAN tag leave encapsulated untagged (the FIB
 *    names the egress device); LB-made replies keep the tag.
 *  - The outer IPv4 header copies DSCP/ECN, DF and the identification of the
 *    inner one; the outer IPv6 header copies the traffic class and takes the
 *    flow label from the flow hash.
 *  - The IPv4 header checksum of received packets is not verified: a
 *    corrupted header reaches the backend, whose stack drops it.
 *  - What the daemon changes (services, backends, their states) reaches
 *    flows in the flow cache with the next packet: it is checked on every
 *    one. Two things reach a flow cached on a CPU only within 100 jiffies:
 *    a connection-table entry written from user space (the daemon writes
 *    none), and a service's source-hash flag, for the outer source bits and
 *    flow label of its established flows (the cache keeps their hash). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"
#include "parse.h"
#include "recorder.h"
#include "vipfilter.h"
#include "maglev.h"
#include "encap.h"
#include "icmp.h"
#include "fib.h"
#include "pmtu.h"
#include "stats.h"

/* Step 10 for everything that is not forwarded: count the reason, return
 * the verdict it implies. */
static __always_inline int finish(const struct packet *pkt, int reason)
{
	count_reason(reason, pkt->frame_len);
	return reason_verdict(reason);
}

/* Step 7: too big once encapsulated. IPv4 without DF cannot be fragmented
 * here (XDP has no fragmentation) and an ICMP error about it would be
 * ignored by the client: such packets are dropped and counted. No ICMP error
 * is ever sent about an ICMP error. */
static __always_inline int too_big(struct xdp_md *ctx, const struct packet *pkt, const struct xdplb_config *cfg, __u32 mtu)
{
	if (pkt->kind != PKT_FLOW)
		return XDPLB_R_DROP_TOO_BIG_ICMP;
	if (!pkt->df)
		return XDPLB_R_DROP_FRAG_NEEDED_NO_DF;
	return icmp_too_big_reply(ctx, pkt, cfg, mtu);
}

/* A parse failure to the kernel, unless addressed to the outer source
 * prefix (pmtu.h): nothing may loop between the node and a router. */
static __always_inline int parse_failed(const struct packet *pkt, int reason)
{
	__u32 zero = 0;
	struct xdplb_config *cfg;

	if (!pkt->flow.family)
		return reason;
	cfg = bpf_map_lookup_elem(&xdplb_config, &zero);
	return cfg && in_outer_prefix(cfg, pkt->flow.family, pkt->flow.dst) ? XDPLB_R_DROP_OUTER_SOURCE : reason;
}

/* An ICMP error about a tunnel packet (pmtu.h), sent on or counted. */
static __always_inline int tunnel_error(struct xdp_md *ctx, const struct packet *pkt, const struct xdplb_config *cfg)
{
	__u32 ifindex = 0;
	int r = pmtu_relay(ctx, pkt, cfg, &ifindex);

	if (r != XDPLB_R_PMTU_RELAY_REDIRECT)
		return finish(pkt, r);
	count_reason(r, pkt->frame_len);
	return bpf_redirect_map(&xdplb_devmap, ifindex, 0);
}

/* Where the benchmark's step profile (bench/bpf/bench_lb.bpf.c) may end the
 * packet path: xdplb_process() stops after the step `stop` names, if the
 * build defines XDPLB_BENCH_STOP. The daemon's build does not: the stop
 * points compile to nothing and xdplb_main never reads `stop`. */
enum xdplb_stop {
	XDPLB_STOP_NONE = 0,	/* the whole path */
	XDPLB_STOP_PARSE,	/* step 1 */
	XDPLB_STOP_FLOW_CACHE,	/* + recorder (in), config, VIP filter: the flow-cache lookup is next */
	XDPLB_STOP_BACKEND,	/* + service and backend (steps 3, 4) */
	XDPLB_STOP_ROUTE,	/* + outer header plan, next hop, PMTU check (steps 6a, 8a, 7) */
	XDPLB_STOP_ENCAP,	/* + L4 DNAT and encapsulation (steps 5, 6) */
};

#ifndef XDPLB_BENCH_STOP
#define XDPLB_BENCH_STOP(step)
#endif

static __always_inline int xdplb_process(struct xdp_md *ctx, const int stop)
{
	struct packet pkt = {};
	struct backend_choice choice = {};
	struct encap_plan plan = {};
	struct rec_match rec = {};
	struct xdplb_nexthop *nh = NULL;
	struct xdplb_service *svc;
	struct xdplb_config *cfg;
	__u32 zero = 0, mtu = 0;
	int r, verdict;

	/* 1. Parse: anything not parseable goes to the kernel untouched */
	r = parse_packet(ctx, &pkt);
	if (r != XDPLB_CONTINUE)
		return finish(&pkt, parse_failed(&pkt, r));
	XDPLB_BENCH_STOP(XDPLB_STOP_PARSE);

	/* 2. Recorder, inbound point */
	xdplb_record(ctx, &pkt, &rec, XDPLB_CAPTURE_IN, XDPLB_NO_BACKEND);

	cfg = bpf_map_lookup_elem(&xdplb_config, &zero);
	if (!cfg)
		return finish(&pkt, XDPLB_R_PASS_NOT_VIP);

	/* ICMP errors about the node's own tunnel packets (pmtu.h) */
	if (pkt.kind == PKT_ICMP_TUNNEL)
		return tunnel_error(ctx, &pkt, cfg);

	/* 3. Not for a VIP: to the kernel after one bit (vipfilter.h), before
	 * any other lookup (or dropped: to the outer source prefix) */
	if (!vip_maybe(&pkt.flow))
		return finish(&pkt, not_vip(&pkt, cfg));

	/* 3. Service lookup (echo requests: the VIP entry, answered here) */
	if (pkt.kind == PKT_ICMP_ECHO) {
		svc = lookup_vip_entry(&pkt.flow);
		if (!svc)
			return finish(&pkt, not_vip(&pkt, cfg));
		if (!(svc->flags & XDPLB_SVC_F_ICMP_ECHO))
			return finish(&pkt, XDPLB_R_PASS_ICMP_ECHO_OFF);
		return finish(&pkt, icmp_echo_reply(ctx, &pkt, cfg));
	}
	XDPLB_BENCH_STOP(XDPLB_STOP_FLOW_CACHE);
	/* 3 + 4. An established flow this CPU has seen lately: the flow cache
	 * names service and backend. Otherwise the service lookup, then the
	 * connection table or Maglev */
	if ((cfg->flags & XDPLB_CFG_F_NO_FLOW_CACHE) || !choose_cached(&pkt, &choice)) {
		svc = lookup_service(&pkt.flow);
		if (!svc)
			return finish(&pkt, not_vip(&pkt, cfg));
		r = choose_backend(&pkt, svc, cfg, &choice);
		if (r != XDPLB_CONTINUE)
			return finish(&pkt, r);
	}
	if (choice.be->family != pkt.flow.family)
		return finish(&pkt, XDPLB_R_DROP_FAMILY_MISMATCH);
	/* an IPv4 connection-table hit with a fixed outer source needs no hash
	 * at all (a jhash, about 8 ns); a flow-cache hit has it if it needs it */
	if (!choice.hashed && encap_uses_hash(&pkt, cfg)) {
		pkt.hash = flow_hash(&pkt.flow, choice.svc.flags & XDPLB_SVC_F_SRC_HASH);
		choice.hashed = 1;
	}
	if (choice.remember && !(cfg->flags & XDPLB_CFG_F_NO_FLOW_CACHE))
		flow_cache_put(flow_cache_slot(&pkt.flow), &pkt.flow, choice.id, choice.svc.id, pkt.hash, choice.hashed, choice.pending);
	XDPLB_BENCH_STOP(XDPLB_STOP_BACKEND);

	/* 6a. The outer header to be: source, destination, length */
	r = plan_encap(&pkt, cfg, choice.be, &plan);
	if (r != XDPLB_CONTINUE)
		return finish(&pkt, r);

	/* 8a + 7. Next hop to the backend and the PMTU check, nothing changed yet */
	r = nexthop_lookup(ctx, &plan, cfg, choice.be, choice.id, &nh, &mtu);
	if (r == XDPLB_TOO_BIG)
		return finish(&pkt, too_big(ctx, &pkt, cfg, mtu));
	if (r != XDPLB_CONTINUE)
		return finish(&pkt, r);
	XDPLB_BENCH_STOP(XDPLB_STOP_ROUTE);

	/* 5. L4 DNAT (flows only: ICMP errors travel as they came) */
	if ((choice.svc.flags & XDPLB_SVC_F_L4_DNAT) && pkt.kind == PKT_FLOW)
		l4_dnat(ctx, &pkt, choice.be->port);

	/* 6. Encapsulation */
	r = encap(ctx, &pkt, &plan, cfg);
	if (r != XDPLB_CONTINUE)
		return finish(&pkt, r);
	XDPLB_BENCH_STOP(XDPLB_STOP_ENCAP);

	/* 8. L2: next-hop MACs, XDP_TX or XDP_REDIRECT */
	verdict = l2_forward(ctx, nh, &r);

	/* 9. Recorder, outbound point */
	xdplb_record(ctx, &pkt, &rec, XDPLB_CAPTURE_OUT, choice.id);

	/* 10. Counters */
	count_reason(r, pkt.frame_len);
	if (verdict == XDP_TX || verdict == XDP_REDIRECT)
		count_forward(choice.svc.id, choice.id, pkt.frame_len);
	return verdict;
}

#ifndef XDPLB_NO_MAIN
SEC("xdp")
int xdplb_main(struct xdp_md *ctx)
{
	return xdplb_process(ctx, XDPLB_STOP_NONE);
}
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";
