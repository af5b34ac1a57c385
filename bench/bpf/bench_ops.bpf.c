// SPDX-License-Identifier: Apache-2.0
/* Benchmark-only XDP programs for bench/ops.ts: what one map lookup or helper
 * call of the kinds xdp/lb.bpf.c uses costs on this kernel and machine. Each
 * op_* program does BENCH_OPS_N of the same operation per run (a test run
 * with `repeat`; nothing rewrites the frame), op_none the same loop without
 * it; the difference over BENCH_OPS_N is one operation. The maps have the
 * types, key sizes and flags of the load balancer's own. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "layout.h"
#include "consts.h"

#define BENCH_OPS_N 8

#define OPS_MAP(name, map_type, key_t, n, flags)	\
	struct {					\
		__uint(type, map_type);			\
		__uint(max_entries, n);			\
		__uint(map_flags, flags);		\
		__type(key, key_t);			\
		__type(value, __u64);			\
	} name SEC(".maps")

OPS_MAP(ops_array, BPF_MAP_TYPE_ARRAY, __u32, XDPLB_MAX_SERVICES, 0);
OPS_MAP(ops_percpu_array, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, XDPLB_FLOW_CACHE_SLOTS, 0);
OPS_MAP(ops_hash_service4, BPF_MAP_TYPE_HASH, struct xdplb_service4_key, XDPLB_MAX_SERVICES, 0);
OPS_MAP(ops_hash_service6, BPF_MAP_TYPE_HASH, struct xdplb_service_key, XDPLB_MAX_SERVICES, 0);
OPS_MAP(ops_lru_flow4, BPF_MAP_TYPE_LRU_HASH, struct xdplb_flow4_key, XDPLB_CT_SIZE, BPF_F_NO_COMMON_LRU);
OPS_MAP(ops_lru_flow6, BPF_MAP_TYPE_LRU_HASH, struct xdplb_flow_key, XDPLB_CT_SIZE, BPF_F_NO_COMMON_LRU);

/* The all-zero key of each map: the benchmark stores one value under it, so
 * every lookup hits. */
#define OPS_LOOKUP(prog, map, key_t)						\
	SEC("xdp")								\
	int prog(struct xdp_md *ctx)						\
	{									\
		key_t key;							\
		__u64 sum = 0;							\
										\
		__builtin_memset(&key, 0, sizeof(key));				\
		for (int i = 0; i < BENCH_OPS_N; i++) {				\
			__u64 *v;						\
										\
			asm volatile("" : : : "memory");			\
			v = bpf_map_lookup_elem(&map, &key);			\
			if (v)							\
				sum += *v;					\
		}								\
		return sum == BENCH_OPS_N ? XDP_TX : XDP_ABORTED;		\
	}

OPS_LOOKUP(op_array, ops_array, __u32)
OPS_LOOKUP(op_percpu_array, ops_percpu_array, __u32)
OPS_LOOKUP(op_hash_service4, ops_hash_service4, struct xdplb_service4_key)
OPS_LOOKUP(op_hash_service6, ops_hash_service6, struct xdplb_service_key)
OPS_LOOKUP(op_lru_flow4, ops_lru_flow4, struct xdplb_flow4_key)
OPS_LOOKUP(op_lru_flow6, ops_lru_flow6, struct xdplb_flow_key)

SEC("xdp")
int op_none(struct xdp_md *ctx)
{
	__u64 sum = 0;

	for (int i = 0; i < BENCH_OPS_N; i++) {
		asm volatile("" : "+r"(sum) : : "memory");
		sum += 1;
	}
	return sum == BENCH_OPS_N ? XDP_TX : XDP_ABORTED;
}

/* A pair per iteration (out and back), so the frame stays as it was. */
SEC("xdp")
int op_adjust_head(struct xdp_md *ctx)
{
	int bad = 0;

	for (int i = 0; i < BENCH_OPS_N / 2; i++) {
		asm volatile("" : : : "memory");
		bad |= bpf_xdp_adjust_head(ctx, -20);
		bad |= bpf_xdp_adjust_head(ctx, 20);
	}
	return bad ? XDP_ABORTED : XDP_TX;
}

SEC("xdp")
int op_jiffies64(struct xdp_md *ctx)
{
	__u64 sum = 0;

	for (int i = 0; i < BENCH_OPS_N; i++) {
		asm volatile("" : : : "memory");
		sum += bpf_jiffies64() != 0;
	}
	return sum == BENCH_OPS_N ? XDP_TX : XDP_ABORTED;
}

SEC("xdp")
int op_ktime_coarse(struct xdp_md *ctx)
{
	__u64 sum = 0;

	for (int i = 0; i < BENCH_OPS_N; i++) {
		asm volatile("" : : : "memory");
		sum += bpf_ktime_get_coarse_ns() != 0;
	}
	return sum == BENCH_OPS_N ? XDP_TX : XDP_ABORTED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
