/* SPDX-License-Identifier: Apache-2.0 */
/* Steps 2 and 9: the packet recorder. The packet's flow tuple (pkt->flow: the
 * client -> VIP tuple, which no later step changes) is matched against the
 * masks of xdplb_rec_masks: for each slot i below n_masks, tuple AND mask[i]
 * with key.mask = i is looked up in xdplb_rec_entries and the hits' rules
 * are ORed. A packet with any rule is copied at each point to the perf ring:
 * a struct xdplb_rec_meta, then the frame up to the largest cap length of the
 * entries it hit.
 *   XDPLB_CAPTURE_IN:  the frame as received, before any change (every
 *                      parsed packet, for a VIP or not);
 *   XDPLB_CAPTURE_OUT: the frame as it leaves (after encapsulation), just
 *                      before the XDP_TX/XDP_REDIRECT verdict.
 * The match is made once, at the inbound point, and its result (struct
 * rec_match, a local of xdplb_process) serves the outbound point too: the
 * tuple is the same, and a forwarded packet would otherwise pay every mask
 * lookup twice. So a recorder that is off costs one array lookup per packet,
 * and the outbound point of a packet that matched nothing costs a test.
 * The match and the copy are global functions: the verifier checks each
 * once, however many paths reach the hooks, and the program carries one copy
 * of each (the copy's signature also puts struct xdplb_rec_meta in the BTF
 * that the layout test reads). The inbound hook makes a single call (the
 * match calls the copy): after two calls in a row the verifier would carry
 * two differing states through the rest of the program and verify it twice. */
#ifndef XDPLB_RECORDER_H
#define XDPLB_RECORDER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"
#include "parse.h"

/* What the inbound point found, for both points. */
struct rec_match {
	__u64 rules;		/* OR of the hits' rules; 0 = not recorded */
	__u32 caplen;		/* largest cap length of the hits; ~0U = the whole frame */
	__u32 pad;
};

/* The tuple in the layout of the keys, as 64-bit words for the masking. */
union xdplb_rec_tuple {
	struct xdplb_rec_key key;
	__u64 w[sizeof(struct xdplb_rec_key) / 8];
};

static __always_inline void rec_count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&xdplb_rec_stats, &stat);

	if (n)
		*n += 1;
}

/* One sample: meta arrives with what the hook knows (point, backend_id,
 * family; the rest zero) and is completed here. Returns 1 when written. */
__noinline int xdplb_rec_emit(struct xdp_md *ctx, const struct rec_match *hit, struct xdplb_rec_meta *meta)
{
	__u32 len;

	if (!hit || !meta)
		return 0;
	/* the frame as it is now: at the outbound point it grew by the outer
	 * header (and is what the helper copies from) */
	len = bpf_xdp_get_buff_len(ctx);
	meta->ts_ns = bpf_ktime_get_ns();
	meta->rules = hit->rules;
	meta->orig_len = len;
	meta->cap_len = hit->caplen < len ? hit->caplen : len;
	meta->ifindex = ctx->ingress_ifindex;
	if (bpf_perf_event_output(ctx, &xdplb_rec_ring, BPF_F_CURRENT_CPU | ((__u64)meta->cap_len << 32), meta,
				  sizeof(*meta))) {
		rec_count(XDPLB_REC_STAT_OUTPUT_FAILED);
		return 0;
	}
	rec_count(XDPLB_REC_STAT_SAMPLES);
	return 1;
}

/* The inbound point: fills *hit from the first n_masks masks and, when any
 * rule matched, writes the sample (one call from the hook: one state after
 * it for the verifier, whatever happened inside). Returns 1 when a sample
 * was written. */
__noinline int xdplb_rec_match(struct xdp_md *ctx, const struct xdplb_flow_key *flow, __u32 n_masks,
			       struct rec_match *hit, struct xdplb_rec_meta *meta)
{
	union xdplb_rec_tuple t = {}, k;
	struct xdplb_rec_entry *e;
	__u32 want = 0, c;
	__u64 rules = 0;
	const __u64 *m;

	if (!flow || !hit || !meta)
		return 0;
	t.key.family = flow->family;
	t.key.proto = flow->proto;
	t.key.sport = flow->sport;
	t.key.dport = flow->dport;
	__builtin_memcpy(t.key.src, flow->src, sizeof(t.key.src));
	__builtin_memcpy(t.key.dst, flow->dst, sizeof(t.key.dst));

	for (__u32 i = 0; i < XDPLB_REC_MAX_MASKS; i++) {
		/* the array key in a full 8-byte stack slot: the verifier tracks
		 * its value there (not in a 4-byte one), so it sees the loop end */
		__u64 slot = i;

		if (i >= n_masks)
			break;
		m = bpf_map_lookup_elem(&xdplb_rec_masks, &slot);
		if (!m)
			break;
		k.w[0] = t.w[0] & m[0];
		k.w[1] = t.w[1] & m[1];
		k.w[2] = t.w[2] & m[2];
		k.w[3] = t.w[3] & m[3];
		k.w[4] = t.w[4] & m[4];
		k.key.mask = i;
		k.key.pad = 0;
		e = bpf_map_lookup_elem(&xdplb_rec_entries, &k.key);
		if (!e)
			continue;
		rules |= e->rules;
		/* 0 = the whole frame: larger than any cap length */
		c = e->caplen ? e->caplen : ~0U;
		if (c > want)
			want = c;
	}
	hit->rules = rules;
	hit->caplen = want;
	if (!rules)
		return 0;
	return xdplb_rec_emit(ctx, hit, meta);
}

/* The hook. *hit starts zeroed; the inbound point fills it, the outbound
 * point reads it. backend_id is the backend chosen (XDPLB_CAPTURE_OUT), or
 * XDPLB_NO_BACKEND before there is one. */
static __always_inline void xdplb_record(struct xdp_md *ctx, const struct packet *pkt, struct rec_match *hit,
					 int point, __u32 backend_id)
{
	struct xdplb_rec_config *rc;
	__u32 zero = 0;

	if (point == XDPLB_CAPTURE_IN) {
		rc = bpf_map_lookup_elem(&xdplb_rec_config, &zero);
		if (!rc || !rc->n_masks)
			return;
	} else if (!hit->rules) {
		return;
	}
	struct xdplb_rec_meta meta = { .backend_id = backend_id, .point = point, .family = pkt->flow.family };

	if (point == XDPLB_CAPTURE_IN)
		xdplb_rec_match(ctx, &pkt->flow, rc->n_masks, hit, &meta);
	else
		xdplb_rec_emit(ctx, hit, &meta);
}

#endif /* XDPLB_RECORDER_H */
