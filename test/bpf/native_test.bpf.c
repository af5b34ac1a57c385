// A small object for the native addon's own tests: maps of each kind the
// daemon uses, and programs with a known effect on a packet.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} test_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} test_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} test_events SEC(".maps");

SEC("xdp")
int xdp_count_pass(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&test_percpu, &key);

	if (n)
		*n += 1;
	return XDP_PASS;
}

/* Swaps the Ethernet addresses and sends the frame back: a known rewrite. */
SEC("xdp")
int xdp_swap_tx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	unsigned char tmp[ETH_ALEN];

	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

struct event_hdr {
	__u64 seq;
	__u32 len;
	__u32 pad;
};

/* Emits a header plus the whole frame (up to 256 bytes) to the perf ring. */
SEC("xdp")
int xdp_emit(struct xdp_md *ctx)
{
	__u32 key = 1;
	__u64 *seq = bpf_map_lookup_elem(&test_percpu, &key);
	struct event_hdr hdr = {};
	__u64 len = ctx->data_end - ctx->data;

	if (!seq)
		return XDP_ABORTED;
	hdr.seq = (*seq)++;
	hdr.len = len;
	if (len > 256)
		len = 256;
	bpf_perf_event_output(ctx, &test_events, (len << 32) | BPF_F_CURRENT_CPU, &hdr, sizeof(hdr));
	return XDP_PASS;
}

/* Sends every frame unchanged: a traffic generator with live-frames test runs,
 * and the empty XDP_TX baseline of the benchmarks. */
SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

SEC("xdp")
int xdp_drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
