/* SPDX-License-Identifier: Apache-2.0 */
/* Step 10: per-CPU counters, per reason, per service and per backend. */
#ifndef XDPLB_STATS_H
#define XDPLB_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"
#include "reasons.h"

static __always_inline void counter_add(void *map, __u32 key, __u32 bytes)
{
	struct xdplb_counter *c = bpf_map_lookup_elem(map, &key);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
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
