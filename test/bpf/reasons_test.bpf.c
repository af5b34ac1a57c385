// The verdict of a reason as the datapath computes it (xdp/reasons.h), for
// test/datapath-reasons.test.ts: the frame carries a reason (a __u32 in host
// order after the Ethernet header), known to the program only at run time as
// most reasons are to the load balancer; the program returns
// reason_verdict() of it and records both in reason_verdicts[0], whose
// reason field carries enum xdplb_reason into this object's BTF, where the
// test reads the enum as the compiler saw it.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include "reasons.h"

struct reason_verdict_entry {
	enum xdplb_reason reason;
	__u32 verdict;			/* XDP_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reason_verdict_entry);
} reason_verdicts SEC(".maps");

SEC("xdp")
int reason_verdict_of(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 *reason = data + sizeof(struct ethhdr);
	struct reason_verdict_entry *e;
	__u32 zero = 0;

	if ((void *)(reason + 1) > end)
		return XDP_ABORTED;
	e = bpf_map_lookup_elem(&reason_verdicts, &zero);
	if (!e)
		return XDP_ABORTED;
	e->reason = *reason;
	e->verdict = reason_verdict(*reason);
	return e->verdict;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
