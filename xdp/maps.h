/* SPDX-License-Identifier: Apache-2.0 */
/* The maps of lb.bpf.c. Every map but the devmap and the flow cache is pinned
 * by name (LIBBPF_PIN_BY_NAME) so a restarted daemon adopts them, and the
 * program keeps forwarding meanwhile. */
#ifndef XDPLB_MAPS_H
#define XDPLB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "layout.h"

/* (family, proto, port, VIP) -> service, IPv6 VIPs */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPLB_MAX_SERVICES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_service_key);
	__type(value, struct xdplb_service);
} xdplb_services SEC(".maps");

/* (VIP, port, proto) -> service, IPv4 VIPs */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPLB_MAX_SERVICES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_service4_key);
	__type(value, struct xdplb_service);
} xdplb_services4 SEC(".maps");

/* service id -> the service (the connection table's way to it) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_MAX_SERVICES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_service_def);
} xdplb_svc_by_id SEC(".maps");

/* word -> 64 bits of the VIP filter (vipfilter.h), written by the daemon */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_VIP_FILTER_WORDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} xdplb_vip_filter SEC(".maps");

/* backend id -> backend */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_MAX_BACKENDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_backend);
} xdplb_backends SEC(".maps");

/* backend id % XDPLB_NEXTHOP_SLOTS -> next hop (fib.h), per CPU: each CPU
 * refreshes its own entries, so no reader ever sees one half written */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_NEXTHOP_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_nexthop);
} xdplb_nexthops SEC(".maps");

/* (VIP, protocol, backend port) -> service port of an L4 DNAT service (pmtu.h) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPLB_MAX_SERVICES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_service_key);
	__type(value, struct xdplb_revnat);
} xdplb_revnat SEC(".maps");

/* backend -> path MTU a router past the node reported (pmtu.h); read when
 * a next hop is resolved (fib.h) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPLB_PMTU_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_pmtu_key);
	__type(value, struct xdplb_pmtu);
} xdplb_pmtu SEC(".maps");

/* XDPLB_CACHE_STAT_* -> per-CPU count: how often the per-CPU caches
 * (next hops, flows) were filled */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_CACHE_STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} xdplb_cache_stats SEC(".maps");

/* Maglev table template: entry i = backend id for flow_hash % M == i.
 * BPF_F_INNER_MAP: replacement tables may have another max_entries (M);
 * they must be created with BPF_F_INNER_MAP as well. M is each table's own
 * max_entries, read from the table a packet looked up (maglev.h), so tables
 * of different sizes serve side by side and a swap of one table is the whole
 * change of its service's M. XDPLB_MAGLEV_DEFAULT_M only sizes the template
 * the verifier checks against. */
struct xdplb_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_MAGLEV_DEFAULT_M);
	__uint(map_flags, BPF_F_INNER_MAP);
	__type(key, __u32);
	__type(value, __u32);
};

/* The kernel's struct bpf_array and struct bpf_map as far as maglev.h reads
 * an inner map (the ___xdplb flavour: matched by CO-RE against this kernel's
 * BTF, so the offset of max_entries is this kernel's). The verifier allows
 * reads of a map's fields where it allows pointer leaks: CAP_PERFMON, which
 * the daemon needs for this program anyway (systemd/xdplb.service). */
struct bpf_map___xdplb {
	__u32 max_entries;
} __attribute__((preserve_access_index));

struct bpf_array___xdplb {
	struct bpf_map___xdplb map;
} __attribute__((preserve_access_index));

/* service id -> Maglev table; the daemon swaps a whole table atomically */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, XDPLB_MAX_SERVICES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__array(values, struct xdplb_maglev_inner);
} xdplb_maglev SEC(".maps");

/* [0] -> this node's settings */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_config);
} xdplb_config SEC(".maps");

/* Connection tables: flow -> backend, one per family (IPv6 here, IPv4 in
 * xdplb_conntrack4 with a 16-byte key, cheaper to hash and compare). One key
 * space each (a flow that moves to another CPU keeps its backend) with
 * per-CPU LRU lists (no shared LRU lock). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPLB_CT_SIZE);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_flow_key);
	__type(value, struct xdplb_ct_entry);
} xdplb_conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XDPLB_CT_SIZE);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_flow4_key);
	__type(value, struct xdplb_ct_entry);
} xdplb_conntrack4 SEC(".maps");

/* flow_cache_slot() -> the connection-table answer this CPU last used
 * (flowcache.h). Not pinned: a cache, rebuilt from the connection table by
 * the first packet of each flow that misses it; a new program starts empty. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_FLOW_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct xdplb_flow_cache_entry);
} xdplb_flow_cache SEC(".maps");

/* service id -> packets/bytes forwarded */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_MAX_SERVICES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_counter);
} xdplb_svc_stats SEC(".maps");

/* backend id -> packets/bytes forwarded */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_MAX_BACKENDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_counter);
} xdplb_be_stats SEC(".maps");

/* enum xdplb_reason -> packets/bytes */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_R_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_counter);
} xdplb_reasons SEC(".maps");

/* egress ifindex -> devmap entry, for XDP_REDIRECT. Not pinned: the kernel
 * adds BPF_F_RDONLY_PROG to a devmap's flags, which libbpf 1.1 then reports as
 * a parameter mismatch when reusing the pin. It is derived state anyway: the
 * daemon fills it from its interfaces before attaching each new program. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, XDPLB_MAX_DEVICES);
	__type(key, __u32);
	__type(value, struct xdplb_devmap_val);
} xdplb_devmap SEC(".maps");

/* ---- the recorder (recorder.h) ---- */

/* mask slot -> mask (struct xdplb_rec_key); slots at or above n_masks are
 * never read, an unused slot below it holds a zero mask */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_REC_MAX_MASKS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_rec_key);
} xdplb_rec_masks SEC(".maps");

/* masked tuple (its mask slot in key.mask) -> rules and cap length */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPLB_REC_MAX_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct xdplb_rec_key);
	__type(value, struct xdplb_rec_entry);
} xdplb_rec_entries SEC(".maps");

/* word -> 64 bits of the recorder's filter (recorder.h), written by the
 * daemon: a bit is set before an entry that needs it is inserted, cleared
 * after the last such entry is deleted */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPLB_REC_FILTER_WORDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} xdplb_rec_filter SEC(".maps");

/* slot -> a tuple's last match on this CPU (recorder.h). Not pinned: a new
 * program starts empty and fills it from the other recorder maps. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_REC_MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct xdplb_rec_memo);
} xdplb_rec_memo SEC(".maps");

/* [0] -> mask count, gen, flags; 0 masks = recorder off */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct xdplb_rec_config);
} xdplb_rec_config SEC(".maps");

/* The samples: one perf ring per CPU (max_entries 0: libbpf makes it the
 * number of possible CPUs). The reader's ring fds are its own; a restarted
 * daemon installs new ones in the pinned map. */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} xdplb_rec_ring SEC(".maps");

/* XDPLB_REC_STAT_* -> per-CPU count */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPLB_REC_STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} xdplb_rec_stats SEC(".maps");

/* One more XDPLB_CACHE_STAT_* event on this CPU. */
static __always_inline void cache_stat_inc(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&xdplb_cache_stats, &stat);

	if (n)
		*n += 1;
}

#endif /* XDPLB_MAPS_H */
