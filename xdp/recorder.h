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
 * Two things spare the hash lookups (about 30 ns each) of masks that have no
 * entry for the packet:
 *   - the memo (xdplb_rec_memo): per CPU, a tuple's last match under the
 *     maps' current generation (xdplb_rec_config.gen, moved on by the
 *     daemon after each change): the next packet of the flow pays one array
 *     read and a compare, however many masks there are;
 *   - otherwise, and with a single mask before the memo, the filter
 *     (xdplb_rec_filter): two bits per entry key hash
 *     (rec_filter_hash): a mask whose key for the packet misses a bit has
 *     no entry for it, so a packet that matches nothing pays array reads and
 *     arithmetic per mask, and a lookup only where both bits are set. The
 *     daemon sets an entry's bits before inserting it and clears them only
 *     after deleting the last entry that needs them: a set bit with no entry
 *     costs a lookup, never a wrong answer.
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
	__u32 cand;		/* the match's slots whose filter bits are set (see there) */
};

/* The tuple in the layout of the keys, as 64-bit words for the masking. */
union xdplb_rec_tuple {
	struct xdplb_rec_key key;
	__u64 w[sizeof(struct xdplb_rec_key) / 8];
};

_Static_assert(sizeof(union xdplb_rec_tuple) == 40, "recorder key: five 64-bit words");
_Static_assert(XDPLB_REC_FILTER_WORDS == 1 << XDPLB_REC_FILTER_WORDS_LOG, "recorder filter: words indexed by the top bits of the hash");

/* The flow tuple as the words of struct xdplb_rec_key (mask slot 0). Read
 * with memcpy: the flow key may sit on a 4-byte boundary of the stack. */
static __always_inline void rec_tuple(const struct xdplb_flow_key *f, __u64 t[5])
{
	__u32 ports;

	__builtin_memcpy(&t[1], f->src, 8);
	__builtin_memcpy(&t[2], f->src + 8, 8);
	__builtin_memcpy(&t[3], f->dst, 8);
	__builtin_memcpy(&t[4], f->dst + 8, 8);
	__builtin_memcpy(&ports, &f->sport, 4);
	t[0] = f->family | (__u64)f->proto << 8 | (__u64)ports << 16;
}

/* The filter's hash of a key (five words, its mask slot in byte 6): each
 * word times its own odd constant, XORed. Its top XDPLB_REC_FILTER_WORDS_LOG
 * bits pick the word, the next two 6-bit fields the two bits in it.
 * src/recorder/filter.ts recFilterBits() computes the same. */
static __always_inline __u64 rec_filter_hash(__u64 k0, __u64 k1, __u64 k2, __u64 k3, __u64 k4)
{
	return k0 * 0x9e3779b97f4a7c15ULL ^ k1 * 0xc2b2ae3d27d4eb4fULL ^ k2 * 0x165667b19e3779f9ULL ^
	       k3 * 0x85ebca77c2b2ae63ULL ^ k4 * 0x27d4eb2f165667c5ULL;
}

/* The key of slot i: the tuple under mask m, the slot in byte 6. */
static __always_inline void rec_masked(const __u64 t[5], const __u64 *m, __u32 i, __u64 k[5])
{
	k[0] = (t[0] & m[0]) | (__u64)i << 48;
	k[1] = t[1] & m[1];
	k[2] = t[2] & m[2];
	k[3] = t[3] & m[3];
	k[4] = t[4] & m[4];
}

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

/* The slots below n_masks whose key for tuple t has both filter bits set:
 * the only masks with an entry this packet can hit. Branch-free per mask, so
 * the verifier walks the loop once, not once per combination of bits. */
static __always_inline __u32 rec_candidates(const __u64 t[5], __u32 n_masks)
{
	__u64 h, *bits;
	__u32 cand = 0;
	const __u64 *m;

	for (__u32 i = 0; i < XDPLB_REC_MAX_MASKS; i++) {
		/* the array key in a full 8-byte stack slot: the verifier tracks
		 * its value there (not in a 4-byte one), so it sees the loop end */
		__u64 slot = i;
		__u32 word;

		if (i >= n_masks)
			break;
		m = bpf_map_lookup_elem(&xdplb_rec_masks, &slot);
		if (!m)
			break;
		h = rec_filter_hash((t[0] & m[0]) | (__u64)i << 48, t[1] & m[1], t[2] & m[2], t[3] & m[3], t[4] & m[4]);
		word = h >> (64 - XDPLB_REC_FILTER_WORDS_LOG);
		bits = bpf_map_lookup_elem(&xdplb_rec_filter, &word);
		if (!bits)
			break;
		cand |= (__u32)((*bits >> ((h >> 44) & 63)) & (*bits >> ((h >> 38) & 63)) & 1) << i;
	}
	return cand;
}

/* With one mask, whether its key for the flow has both filter bits set:
 * inline, without the call, so that a packet matching nothing costs array
 * reads only; the tuple is read into registers, not onto the stack, which
 * the match's frame leaves no room for. */
static __always_inline int rec_maybe1(const struct xdplb_flow_key *f)
{
	__u64 slot = 0, w1, w2, w3, w4, h, *bits;
	__u32 lo, hi, ports, word;
	const __u64 *m;

	m = bpf_map_lookup_elem(&xdplb_rec_masks, &slot);
	if (!m)
		return 1;
	__builtin_memcpy(&lo, f->src, 4);
	__builtin_memcpy(&hi, f->src + 4, 4);
	w1 = lo | (__u64)hi << 32;
	__builtin_memcpy(&lo, f->src + 8, 4);
	__builtin_memcpy(&hi, f->src + 12, 4);
	w2 = lo | (__u64)hi << 32;
	__builtin_memcpy(&lo, f->dst, 4);
	__builtin_memcpy(&hi, f->dst + 4, 4);
	w3 = lo | (__u64)hi << 32;
	__builtin_memcpy(&lo, f->dst + 8, 4);
	__builtin_memcpy(&hi, f->dst + 12, 4);
	w4 = lo | (__u64)hi << 32;
	__builtin_memcpy(&ports, &f->sport, 4);
	h = rec_filter_hash((f->family | (__u64)f->proto << 8 | (__u64)ports << 16) & m[0], w1 & m[1], w2 & m[2],
			    w3 & m[3], w4 & m[4]);
	word = h >> (64 - XDPLB_REC_FILTER_WORDS_LOG);
	bits = bpf_map_lookup_elem(&xdplb_rec_filter, &word);
	return !bits || ((*bits >> ((h >> 44) & 63)) & (*bits >> ((h >> 38) & 63)) & 1);
}

/* The memo slot of tuple t on this CPU (the filter's hash of the tuple, mask
 * slot 0, picks it). */
static __always_inline struct xdplb_rec_memo *rec_memo_slot(const __u64 t[5])
{
	__u32 slot = rec_filter_hash(t[0], t[1], t[2], t[3], t[4]) >> (64 - XDPLB_REC_MEMO_SLOTS_LOG);

	return bpf_map_lookup_elem(&xdplb_rec_memo, &slot);
}

/* Whether memo holds tuple t's match under gen. */
static __always_inline int rec_memo_valid(const struct xdplb_rec_memo *memo, const __u64 t[5], __u32 gen)
{
	return memo->gen == gen && memo->tuple[0] == t[0] && memo->tuple[1] == t[1] && memo->tuple[2] == t[2] &&
	       memo->tuple[3] == t[3] && memo->tuple[4] == t[4];
}

/* The inbound point: fills *hit and, when any rule matched, writes the
 * sample (one call from the hook: one state after it for the verifier,
 * whatever happened inside). The memo answers first (unless
 * XDPLB_REC_F_NO_MEMO) when it holds the tuple under rc->gen, and learns the
 * answer otherwise. Returns 1 when a sample was written. The memo and the
 * filter are read here, not inline in the hook: inline, they deepened the
 * hook's stack past the limit and made the verifier walk the rest of the
 * program again. */
__noinline int xdplb_rec_match(struct xdp_md *ctx, const struct xdplb_flow_key *flow,
			       const struct xdplb_rec_config *rc, struct rec_match *hit, struct xdplb_rec_meta *meta)
{
	struct xdplb_rec_memo *memo = NULL;
	union xdplb_rec_tuple k;
	struct xdplb_rec_entry *e;
	__u32 want = 0, c, cand, gen;
	__u64 rules = 0, t[5];
	const __u64 *m;

	if (!flow || !rc || !hit || !meta)
		return 0;
	rec_tuple(flow, t);
	gen = rc->gen;
	if (!(rc->flags & XDPLB_REC_F_NO_MEMO)) {
		memo = rec_memo_slot(t);
		if (memo && rec_memo_valid(memo, t, gen)) {
			rules = memo->rules;
			want = memo->caplen;
			goto out;
		}
	}
	/* through memory: the verifier then knows no bits of it, and walks
	 * the lookups below once, not once per mask count */
	*(volatile __u32 *)&hit->cand = rec_candidates(t, rc->n_masks);
	cand = *(volatile __u32 *)&hit->cand;
	for (__u32 i = 0; i < XDPLB_REC_MAX_MASKS; i++) {
		__u64 slot = i;

		if (!((cand >> i) & 1))
			continue;
		m = bpf_map_lookup_elem(&xdplb_rec_masks, &slot);
		if (!m)
			break;
		rec_masked(t, m, i, k.w);
		e = bpf_map_lookup_elem(&xdplb_rec_entries, &k.key);
		if (!e)
			continue;
		rules |= e->rules;
		/* 0 = the whole frame: larger than any cap length */
		c = e->caplen ? e->caplen : ~0U;
		if (c > want)
			want = c;
	}
	if (memo) {
		__builtin_memcpy(memo->tuple, t, sizeof(memo->tuple));
		memo->rules = rules;
		memo->caplen = want;
		memo->gen = gen;
	}
out:
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
		if (rc->n_masks == 1 && !rec_maybe1(&pkt->flow))
			return;
	} else if (!hit->rules) {
		return;
	}
	struct xdplb_rec_meta meta = { .backend_id = backend_id, .point = point, .family = pkt->flow.family };

	if (point == XDPLB_CAPTURE_IN)
		xdplb_rec_match(ctx, &pkt->flow, rc, hit, &meta);
	else
		xdplb_rec_emit(ctx, hit, &meta);
}

#endif /* XDPLB_RECORDER_H */
