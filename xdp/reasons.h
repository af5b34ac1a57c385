/* SPDX-License-Identifier: Apache-2.0 */
/* The verdict every reason implies, from the table of reasons (reasons.def). */
#ifndef XDPLB_REASONS_H
#define XDPLB_REASONS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"

static __always_inline int reason_verdict(int reason)
{
	switch (reason) {
#define XDPLB_REASON(name, verdict, description) case XDPLB_R_##name: return verdict;
#include "reasons.def"
#undef XDPLB_REASON
	}
	return XDP_DROP;
}

#endif /* XDPLB_REASONS_H */
