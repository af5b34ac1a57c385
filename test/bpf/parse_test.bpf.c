// Both parse paths of xdp/parse.h on one frame, for
// test/datapath-parse.test.ts: parse_fast_v4_tcp() and parse_general() each
// fill their own struct packet (zeroed but for frame_len, as parse_packet()
// starts), and the program leaves both, with what each returned, in
// parse_results[0]. The test reads the fields through this object's BTF.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"

struct parse_result {
	__s32 fast;			/* parse_fast_v4_tcp(): 1 filled in, 0 declined */
	__s32 general;			/* parse_general(): XDPLB_CONTINUE or the reason */
	struct packet fast_pkt;
	struct packet general_pkt;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct parse_result);
} parse_results SEC(".maps");

SEC("xdp")
int parse_both(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct parse_result *res;
	__u32 zero = 0;

	res = bpf_map_lookup_elem(&parse_results, &zero);
	if (!res)
		return XDP_ABORTED;
	__builtin_memset(res, 0, sizeof(*res));
	res->fast_pkt.frame_len = end - data;
	res->general_pkt.frame_len = end - data;
	res->fast = parse_fast_v4_tcp(data, end, &res->fast_pkt);
	res->general = parse_general(data, end, &res->general_pkt);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
