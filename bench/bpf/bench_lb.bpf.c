// SPDX-License-Identifier: Apache-2.0
/* Benchmark-only XDP programs around the load balancer's packet path, for
 * bench/datapath.ts. Never loaded by the daemon (built into build/bpf-test).
 *
 * BPF_PROG_TEST_RUN with `repeat` runs every iteration after the first on the
 * buffer the previous one left behind: an encapsulating program would see its
 * own output (and run out of headroom after a dozen iterations). bench_lb
 * makes every iteration start from the original frame:
 *
 *   1. save the frame as it arrived into a per-CPU scratch value (bounded copy);
 *   2. optionally make the flow new: write a running 32-bit sequence number
 *      into the TCP/UDP source port (low 16 bits) and XOR its high 16 bits
 *      into the last two bytes of the client address, so no iteration ever
 *      meets the connection-table entry an earlier one created (or, with
 *      flow_mod, N flows in turn: established after their first round); or make the
 *      flow cache miss: clear the flow's slot, so every iteration looks the
 *      connection table up;
 *   3. xdplb_process(), the load balancer exactly as xdplb_main runs it;
 *   4. move the head back by the difference in length, with the same helper
 *      call when there is none (the no-op), and write the saved bytes back
 *      (the benchmark's frames carry no Ethernet padding, so the load
 *      balancer never moves the tail);
 *   5. count the verdict in a per-CPU array, so the benchmark can check that
 *      every iteration returned the one it expects.
 *
 * bench_noop is the same wrapper with a no-op (verdict XDP_TX) standing in
 * for step 3: its time minus the empty program's is the wrapper's own cost.
 * bench_empty is the baseline, an empty XDP_TX program.
 *
 * bench_upto_* are a cheap profile: the same wrapper around the packet path
 * cut short after one of its steps (verdict XDP_TX there), so the difference
 * between consecutive cuts is what that step costs. The cuts are
 * xdplb_process()'s own stop points (enum xdplb_stop): defined here, they end
 * the path when the program's `stop` names them; the one before the flow
 * cache looks the flow's slot up first (a hit after the first iteration on
 * this CPU: the cut has no connection-table lookup that would fill it). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct packet;
static __always_inline int bench_stopped(int step, const struct packet *pkt);

#define XDPLB_BENCH_STOP(step)					\
	do {							\
		if (stop == (step))				\
			return bench_stopped((step), &pkt);	\
	} while (0)
#define XDPLB_NO_MAIN
#include "lb.bpf.c"

static __always_inline int bench_stopped(int step, const struct packet *pkt)
{
	if (step == XDPLB_STOP_FLOW_CACHE) {
		struct xdplb_flow_cache_entry *c = flow_cache_get(flow_cache_slot(&pkt->flow), &pkt->flow);

		asm volatile("" : : "r"(c));
	}
	return XDP_TX;
}

#define BENCH_MAX_FRAME 512

/* bench_config.flags */
#define BENCH_F_NEW_FLOW (1U << 0)
#define BENCH_F_FLOW_CACHE_MISS (1U << 1)

/* Verdict slots: XDP_ABORTED..XDP_REDIRECT, then anything else. */
#define BENCH_VERDICT_SLOTS 6

struct bench_config {
	__u32 flags;		/* BENCH_F_* */
	__u16 sport_off;	/* offset of the TCP/UDP source port in the frame */
	__u16 src_off;		/* offset of the last two bytes of the client address */
	__u32 cache_slot;	/* BENCH_F_FLOW_CACHE_MISS: the flow's slot in xdplb_flow_cache */
	__u32 flow_mod;		/* BENCH_F_NEW_FLOW: 0, or this many flows in turn (flow_base + n % flow_mod) */
	__u32 flow_base;
};

struct bench_frame {
	__u8 bytes[BENCH_MAX_FRAME];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_config);
} bench_config SEC(".maps");

/* The frame as it arrived, per CPU (an iteration never changes CPU midway). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_frame);
} bench_frame SEC(".maps");

/* Next flow sequence number. Shared, not per CPU: a test run that migrates
 * between iterations must not replay the other CPU's flows. Test runs of one
 * benchmark never overlap, so a plain increment suffices. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bench_flow_seq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BENCH_VERDICT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} bench_verdicts SEC(".maps");

static __always_inline void bench_count(int verdict)
{
	__u32 slot = verdict >= 0 && verdict < BENCH_VERDICT_SLOTS - 1 ? verdict : BENCH_VERDICT_SLOTS - 1;
	__u64 *n = bpf_map_lookup_elem(&bench_verdicts, &slot);

	if (n)
		*n += 1;
}

/* Step 2: a new flow per iteration. */
static __always_inline int bench_new_flow(struct xdp_md *ctx, const struct bench_config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0, n, sport_off, src_off;
	__u16 *sport, *src;
	__u32 *seq;

	seq = bpf_map_lookup_elem(&bench_flow_seq, &zero);
	if (!seq)
		return -1;
	n = *seq;
	*seq = n + 1;
	if (cfg->flow_mod)
		n = cfg->flow_base + n % cfg->flow_mod;
	sport_off = cfg->sport_off & (BENCH_MAX_FRAME - 1);
	src_off = cfg->src_off & (BENCH_MAX_FRAME - 1);
	sport = data + sport_off;
	src = data + src_off;
	if ((void *)(sport + 1) > end || (void *)(src + 1) > end)
		return -1;
	*sport = bpf_htons(n & 0xffff);
	*src ^= bpf_htons(n >> 16);
	return 0;
}

/* Steps 1-5; noop and stop are constants, so each program keeps only its own
 * branch and its own stop point. */
static __always_inline int bench_run(struct xdp_md *ctx, const int noop, const int stop)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct bench_config *cfg;
	struct bench_frame *f;
	__u64 len, after;
	__u32 zero = 0;
	int verdict;

	f = bpf_map_lookup_elem(&bench_frame, &zero);
	cfg = bpf_map_lookup_elem(&bench_config, &zero);
	len = end - data;
	if (!f || !cfg || len == 0 || len > BENCH_MAX_FRAME)
		goto abort;
	if (bpf_xdp_load_bytes(ctx, 0, f->bytes, len))
		goto abort;
	if ((cfg->flags & BENCH_F_NEW_FLOW) && bench_new_flow(ctx, cfg))
		goto abort;
	if (cfg->flags & BENCH_F_FLOW_CACHE_MISS) {
		__u32 slot = cfg->cache_slot;
		struct xdplb_flow_cache_entry *c = bpf_map_lookup_elem(&xdplb_flow_cache, &slot);

		if (c)
			c->flow.family = 0;
	}

	if (noop) {
		asm volatile("" ::: "memory"); /* ctx may have changed, as after the LB */
		verdict = XDP_TX;
	} else {
		verdict = xdplb_process(ctx, stop);
	}

	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	after = end - data;
	asm volatile("" : "+r"(after)); /* a scalar from here, not pointer arithmetic */
	/* unconditionally, so the no-op pays this helper call as the load
	 * balancer's run does: restoring the head is the wrapper's work */
	if (bpf_xdp_adjust_head(ctx, (int)after - (int)len))
		goto abort;
	if (len == 0 || len > BENCH_MAX_FRAME)
		goto abort;
	if (bpf_xdp_store_bytes(ctx, 0, f->bytes, len))
		goto abort;
	bench_count(verdict);
	return verdict;
abort:
	bench_count(XDP_ABORTED);
	return XDP_ABORTED;
}

#define BENCH_PROGRAM(name, noop, stop)			\
	SEC("xdp")					\
	int name(struct xdp_md *ctx)			\
	{						\
		return bench_run(ctx, noop, stop);	\
	}

BENCH_PROGRAM(bench_lb, 0, XDPLB_STOP_NONE)
BENCH_PROGRAM(bench_noop, 1, XDPLB_STOP_NONE)
BENCH_PROGRAM(bench_upto_parse, 0, XDPLB_STOP_PARSE)
BENCH_PROGRAM(bench_upto_conntrack, 0, XDPLB_STOP_FLOW_CACHE)
BENCH_PROGRAM(bench_upto_backend, 0, XDPLB_STOP_BACKEND)
BENCH_PROGRAM(bench_upto_route, 0, XDPLB_STOP_ROUTE)
BENCH_PROGRAM(bench_upto_encap, 0, XDPLB_STOP_ENCAP)

/* bench_fib: bpf_fib_lookup() alone, with the request and the flags the
 * benchmark puts in bench_fib_params (ifindex: the ingress interface). It
 * changes nothing in the frame, so it is measured without the wrapper. */
struct bench_fib_params {
	struct bpf_fib_lookup fib;
	__u32 flags;		/* BPF_FIB_LOOKUP_* */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_fib_params);
} bench_fib_params SEC(".maps");

SEC("xdp")
int bench_fib(struct xdp_md *ctx)
{
	struct bench_fib_params *p;
	struct bpf_fib_lookup fib;
	__u32 zero = 0;

	p = bpf_map_lookup_elem(&bench_fib_params, &zero);
	if (!p)
		return XDP_ABORTED;
	__builtin_memcpy(&fib, &p->fib, sizeof(fib));
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), p->flags) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_ABORTED;
	return XDP_TX;
}

/* bench_fib's baseline: the same without the lookup. */
SEC("xdp")
int bench_fib_none(struct xdp_md *ctx)
{
	struct bench_fib_params *p;
	struct bpf_fib_lookup fib;
	__u32 zero = 0;

	p = bpf_map_lookup_elem(&bench_fib_params, &zero);
	if (!p)
		return XDP_ABORTED;
	__builtin_memcpy(&fib, &p->fib, sizeof(fib));
	fib.ifindex = ctx->ingress_ifindex;
	asm volatile("" : : "r"(&fib) : "memory");
	return fib.family ? XDP_TX : XDP_ABORTED;
}

/* The baseline: nothing but the verdict. */
SEC("xdp")
int bench_empty(struct xdp_md *ctx)
{
	return XDP_TX;
}
