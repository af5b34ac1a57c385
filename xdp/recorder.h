/* SPDX-License-Identifier: Apache-2.0 */
/* Steps 2 and 9: the packet recorder. At both points the packet's flow tuple
 * (pkt->flow: the client -> VIP tuple, which no later step changes) is
 * matched against the masks of xdplb_rec_masks: for each slot i below
 * n_masks, tuple AND mask[i] with key.mask = i is looked up in
 * xdplb_rec_entries and the hits' rules are ORed. A packet with any rule is
 * copied once to the perf ring: a struct xdplb_rec_meta, then the frame up
 * to the largest cap length of the entries it hit.
 *   XDPLB_CAPTURE_IN:  the frame as received, before any change (every
 *                      parsed packet, for a VIP or not);
 *   XDPLB_CAPTURE_OUT: the frame as it leaves (after encapsulation), just
 *                      before the XDP_TX/XDP_REDIRECT verdict.
 * The match and the copy are one global function: the verifier checks it
 * once, however many paths reach the two hooks, and the program carries one
 * copy of it (its signature also puts struct xdplb_rec_meta in the BTF that
 * the layout test reads). The hooks themselves only read n_masks, so a
 * recorder that is off costs one array lookup per point. */
#ifndef XDPLB_RECORDER_H
#define XDPLB_RECORDER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"
#include "parse.h"

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

/* meta arrives with what the hook knows (point, backend_id; the rest zero)
 * and is completed here. Returns 1 when the packet matched (and a sample was
 * attempted), else 0. */
__noinline int xdplb_rec_capture(struct xdp_md *ctx, const struct xdplb_flow_key *flow, __u32 n_masks,
				 struct xdplb_rec_meta *meta)
{
	union xdplb_rec_tuple t = {}, k;
	struct xdplb_rec_entry *e;
	__u32 want = 0, c, len;
	__u64 rules = 0;
	const __u64 *m;

	if (!flow || !meta)
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
	if (!rules)
		return 0;

	/* the frame as it is now: at the outbound point it grew by the outer
	 * header (and is what the helper copies from) */
	len = bpf_xdp_get_buff_len(ctx);
	meta->ts_ns = bpf_ktime_get_ns();
	meta->rules = rules;
	meta->orig_len = len;
	meta->cap_len = want < len ? want : len;
	meta->ifindex = ctx->ingress_ifindex;
	meta->family = flow->family;
	if (bpf_perf_event_output(ctx, &xdplb_rec_ring, BPF_F_CURRENT_CPU | ((__u64)meta->cap_len << 32), meta,
				  sizeof(*meta)))
		rec_count(XDPLB_REC_STAT_OUTPUT_FAILED);
	else
		rec_count(XDPLB_REC_STAT_SAMPLES);
	return 1;
}

/* The hook: backend_id is the backend chosen (XDPLB_CAPTURE_OUT), or
 * XDPLB_NO_BACKEND before there is one. */
static __always_inline void xdplb_record(struct xdp_md *ctx, const struct packet *pkt, int point, __u32 backend_id)
{
	struct xdplb_rec_config *rc;
	__u32 zero = 0;

	rc = bpf_map_lookup_elem(&xdplb_rec_config, &zero);
	if (!rc || !rc->n_masks)
		return;
	struct xdplb_rec_meta meta = { .backend_id = backend_id, .point = point };

	xdplb_rec_capture(ctx, &pkt->flow, rc->n_masks, &meta);
}

#endif /* XDPLB_RECORDER_H */
