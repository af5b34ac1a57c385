/* SPDX-License-Identifier: Apache-2.0 */
/* Step 10: per-CPU counters, per reason, per service and per backend. */
#ifndef XDPLB_STATS_H
#define XDPLB_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"

static __always_inline void counter_add(void *map, __u32 key, __u32 bytes)
{
	struct xdplb_counter *c = bpf_map_lookup_elem(map, &key);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

/* The verdict every reason implies (see enum xdplb_reason). */
static __always_inline int reason_verdict(int reason)
{
	if (reason == XDPLB_R_FORWARD_REDIRECT || reason == XDPLB_R_PMTU_RELAY_REDIRECT)
		return XDP_REDIRECT;
	if (reason <= XDPLB_R_PMTU_REPLY || reason == XDPLB_R_PMTU_RELAY_TX)
		return XDP_TX;
	if (reason == XDPLB_R_DROP_FIB_NO_NEIGH)
		return XDP_DROP;
	if (reason < XDPLB_R_DROP_NO_BACKEND || reason == XDPLB_R_PASS_BAD_L4_HEADER)
		return XDP_PASS;
	return XDP_DROP;
}

static __always_inline void count_reason(int reason, __u32 bytes)
{
	counter_add(&xdplb_reasons, (__u32)reason, bytes);
}

static __always_inline void count_forward(__u32 service_id, __u32 backend_id, __u32 bytes)
{
	counter_add(&xdplb_svc_stats, service_id, bytes);
	counter_add(&xdplb_be_stats, backend_id, bytes);
}

#endif /* XDPLB_STATS_H */
