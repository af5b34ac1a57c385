/* SPDX-License-Identifier: Apache-2.0 */
/* Step 4, established flows: a per-CPU, direct-mapped cache of
 * connection-table answers (xdplb_flow_cache), read inline where the
 * service lookup and the connection table cost two kernel calls. What it
 * holds is checked against the service it names and the backend's state
 * (maglev.h: choose_cached()), so it only saves the lookups (and the flow
 * hash, when the flow needs one); an entry is written when the connection
 * table answered or a new flow was placed, and trusted for
 * XDPLB_FLOW_CACHE_JIFFIES. Two flows sharing a slot only cost each other
 * lookups. */
#ifndef XDPLB_FLOWCACHE_H
#define XDPLB_FLOWCACHE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "consts.h"
#include "layout.h"
#include "maps.h"

_Static_assert((XDPLB_FLOW_CACHE_SLOTS & (XDPLB_FLOW_CACHE_SLOTS - 1)) == 0, "flow cache slots: a power of two");
_Static_assert(sizeof(struct xdplb_flow_key) == 40, "the flow key as five 8-byte words");

/* The flow's slot: its ten words folded, then a multiplicative hash (the top
 * bits of the product). Not the flow hash: that is a jhash, which an IPv4
 * connection-table hit does not otherwise need. */
static __always_inline struct xdplb_flow_cache_entry *flow_cache_slot(const struct xdplb_flow_key *f)
{
	const __u32 *w = (const __u32 *)f;
	__u32 x, slot;

	x = w[0] ^ w[1] ^ w[2] ^ w[3];
	x ^= (w[4] ^ w[5] ^ w[6] ^ w[7]) * 0x85ebca6bU;
	x ^= w[8] * 0xc2b2ae35U ^ w[9];
	slot = (x * 0x9e3779b1U) >> (32 - __builtin_ctz(XDPLB_FLOW_CACHE_SLOTS));
	return bpf_map_lookup_elem(&xdplb_flow_cache, &slot);
}

static __always_inline int flow_equal(const struct xdplb_flow_key *a, const struct xdplb_flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4]));
}

/* The cached answer for f, or NULL. A pending placement is no
 * connection-table answer: the packet goes on to the connection table. */
static __always_inline struct xdplb_flow_cache_entry *flow_cache_get(struct xdplb_flow_cache_entry *c,
								     const struct xdplb_flow_key *f)
{
	if (!c || c->pending || !flow_equal(&c->flow, f) || bpf_jiffies64() - c->filled_jiffies >= XDPLB_FLOW_CACHE_JIFFIES)
		return NULL;
	return c;
}

/* The pending placement of f, or NULL. A SYN that meets no connection-table
 * entry is placed by Maglev and remembered only here, in its CPU's slot: an
 * insert into the connection table (a large, memory-cold LRU hash) costs
 * several times the rest of a new flow's path, and a flood of SYNs that never
 * complete would evict live connections. The flow's next packets on this CPU
 * (SYN retransmissions, the handshake's ACK) take the pending backend, and
 * its first packet that opens nothing writes the connection-table entry.
 * Lost with the slot (another flow's placement, another CPU, after
 * XDPLB_FLOW_PENDING_JIFFIES): Maglev places the flow again, on the same
 * backend unless the service's table changed in between. */
static __always_inline struct xdplb_flow_cache_entry *flow_cache_pending(struct xdplb_flow_cache_entry *c,
									 const struct xdplb_flow_key *f)
{
	if (!c || !c->pending || !flow_equal(&c->flow, f) || bpf_jiffies64() - c->filled_jiffies >= XDPLB_FLOW_PENDING_JIFFIES)
		return NULL;
	return c;
}

/* Remembers (backend, service) for f in its slot, and the flow hash when
 * the packet needed it: a hit then spares the jhash too (10 words for IPv6). */
static __always_inline void flow_cache_put(struct xdplb_flow_cache_entry *c, const struct xdplb_flow_key *f,
					   __u32 backend_id, __u32 service_id, __u32 hash, __u32 hashed, __u32 pending)
{
	if (!c)
		return;
	__builtin_memcpy(&c->flow, f, sizeof(*f));
	c->backend_id = backend_id;
	c->service_id = service_id;
	c->filled_jiffies = bpf_jiffies64();
	c->hash = hash;
	c->hashed = hashed;
	c->pending = pending;
	cache_stat_inc(XDPLB_CACHE_STAT_FLOW_FILLS);
}

#endif /* XDPLB_FLOWCACHE_H */
