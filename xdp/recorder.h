/* SPDX-License-Identifier: Apache-2.0 */
/* Steps 2 and 9: the packet recorder's hook points. No-ops until the recorder
 * lands: it matches the flow tuple (pkt->flow, always the client -> VIP
 * tuple) against its masks and copies the frame to a perf ring.
 *   XDPLB_CAPTURE_IN:  the frame as received, before any change;
 *   XDPLB_CAPTURE_OUT: the frame as it leaves (after encapsulation), just
 *                      before the XDP_TX/XDP_REDIRECT verdict. */
#ifndef XDPLB_RECORDER_H
#define XDPLB_RECORDER_H

#include <linux/bpf.h>
#include "consts.h"
#include "parse.h"

static __always_inline void xdplb_record(struct xdp_md *ctx, const struct packet *pkt, int point)
{
	(void)ctx;
	(void)pkt;
	(void)point;
}

#endif /* XDPLB_RECORDER_H */
