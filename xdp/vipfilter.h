/* SPDX-License-Identifier: Apache-2.0 */
/* Step 3, cheaply first: whether a destination can be a VIP at all. A bit per
 * hash of the address (xdplb_vip_filter), set by the daemon for every VIP
 * with a service (src/datapath/layout.ts vipFilterBit() computes the same
 * bit); a clear bit means "no VIP", a set one "look it up". Read inline: an
 * array word, where the lookups it saves are kernel calls. */
#ifndef XDPLB_VIPFILTER_H
#define XDPLB_VIPFILTER_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"

_Static_assert(XDPLB_VIP_FILTER_WORDS * 64 == 1 << 16, "VIP filter: 2^16 bits, indexed by the top 16 bits of the hash");

/* The address's four words (an IPv4 one: the first, the rest zero) folded,
 * times the golden ratio; the top 16 bits of the product pick the bit. */
static __always_inline int vip_maybe(const struct xdplb_flow_key *f)
{
	const __u32 *w = (const __u32 *)f->dst;
	__u32 h = ((w[0] ^ w[1] ^ w[2] ^ w[3]) * 0x9e3779b1U) >> 16;
	__u32 word = h >> 6;
	__u64 *bits = bpf_map_lookup_elem(&xdplb_vip_filter, &word);

	return bits && (*bits >> (h & 63)) & 1;
}

#endif /* XDPLB_VIPFILTER_H */
