/* SPDX-License-Identifier: Apache-2.0 */
/* xdplb datapath constants: capacities, flags, states and the one enum of
 * reasons. Mirrored in TypeScript by src/datapath/layout.ts (capacities,
 * flags, states); the reasons come from reasons.def, which
 * src/datapath/reasons.ts reads. */
#ifndef XDPLB_CONSTS_H
#define XDPLB_CONSTS_H

/* ---- capacities (max_entries; the daemon may override some at load) ---- */
#define XDPLB_MAX_SERVICES	65536	/* services hashes, services by id, Maglev outer map, service stats */
#define XDPLB_MAX_BACKENDS	262144	/* backends array, backend stats */
#define XDPLB_CT_SIZE		262144	/* connection table (LRU, per-CPU LRU lists) */
#define XDPLB_MAX_DEVICES	256	/* devmap for XDP_REDIRECT, keyed by ifindex */

/* Maglev: the inner map template has the default size; BPF_F_INNER_MAP lets
 * the daemon install inner maps of any prime size up to XDPLB_MAGLEV_MAX_M,
 * each indexed by its own size (maps.h). The daemon's default and bound are
 * src/maglev/table.ts DEFAULT_M and MAX_M (a test holds them equal). */
#define XDPLB_MAGLEV_DEFAULT_M	16381
#define XDPLB_MAGLEV_MAX_M	131071
#define XDPLB_NO_BACKEND	0xffffffffU	/* Maglev entry of an empty table */

/* Flow hash: Linux jhash2 over the flow words, with a fleet-wide fixed seed so
 * every load balancer picks the same backend for the same flow. */
#define XDPLB_FLOW_HASH_SEED	0x7864706cU	/* "xdpl" */

/* Next-hop cache (fib.h): each CPU looks a backend's route, MACs and MTU up
 * in the kernel FIB at most once per this bound (xdplb_config.nexthop_ttl_ms
 * overrides it), so a route or neighbour change takes effect within it. A
 * lookup per packet would cost 95 ns (IPv4) to 230 ns (IPv6), more than the
 * rest of the packet path (BENCHMARKS.md). */
#define XDPLB_NEXTHOP_TTL_MS	1000

/* Slots of the next-hop cache per CPU, direct-mapped by backend id (a power
 * of two). Sized for the backends one node really sends to, not for
 * XDPLB_MAX_BACKENDS: a per-CPU array of every backend slot would take 14 MiB
 * per CPU, nearly a gigabyte on a 64-core edge node. Two backends sharing a
 * slot stay correct (an entry holds the address it was resolved for) and only
 * cost extra lookups. 16384 x 56 bytes = 896 KiB per CPU. */
#define XDPLB_NEXTHOP_SLOTS	16384

/* Flow cache (flowcache.h): per CPU, direct-mapped, in front of the
 * connection table. A connection-table lookup is a hash-map lookup, a kernel
 * function call of about 25 ns on these machines; an array slot is read
 * inline. Slots: a power of two; 8192 x 64 bytes = 512 KiB per CPU. An entry
 * is trusted for XDPLB_FLOW_CACHE_JIFFIES jiffies after it was written
 * (0.1 s at HZ=1000, 1 s at HZ=100): every active flow still looks up, and
 * keeps fresh in the LRU, its connection-table entry at least that often,
 * and a change made to the connection table from user space reaches it
 * within that bound. Counting jiffies (an inlined load) rather than reading
 * the clock (a helper call) keeps both the hit and the fill cheap. */
#define XDPLB_FLOW_CACHE_SLOTS		8192
#define XDPLB_FLOW_CACHE_JIFFIES	100

/* How long a SYN's pending placement (flowcache.h) steers the flow's next
 * packets: the handshake's round trip and the first SYN retransmission
 * (1 s) at any HZ (3 s at HZ=1000, 30 s at HZ=100). */
#define XDPLB_FLOW_PENDING_JIFFIES	3000

/* Connection-table lifetimes (maglev.h), when the node config gives none:
 * an entry idle for this long is absent, and the next packet of its flow is
 * placed by Maglev again. Between IPVS (TCP 15 min, UDP 5 min) and Cilium
 * (TCP 6 h, UDP 1 min, closing 10 s). A FIN or RST shortens the entry to
 * the closing lifetime, so a drain ends and the 5-tuple is free soon after
 * the connection. An entry's expiry moves forward at most once per
 * XDPLB_CT_REFRESH_JIFFIES (the clock is a helper call and the write
 * dirties the LRU value's cache line); within that many jiffies of the last
 * move a lookup trusts it without the clock. The daemon keeps every
 * lifetime at least XDPLB_CT_MIN_S, far above that step (1 s at HZ=100),
 * so a flow-cache entry (trusted as long) never outlives its entry. */
#define XDPLB_CT_TCP_S			3600
#define XDPLB_CT_UDP_S			120
#define XDPLB_CT_CLOSING_S		10
#define XDPLB_CT_MIN_S			5
#define XDPLB_CT_REFRESH_JIFFIES	100	/* = XDPLB_FLOW_CACHE_JIFFIES */

/* xdplb_cache_stats indices: per-CPU __u64 counters of cache fills */
#define XDPLB_CACHE_STAT_NEXTHOP_LOOKUPS	0	/* next hops looked up in the FIB and stored (fib.h) */
#define XDPLB_CACHE_STAT_FLOW_FILLS		1	/* flow-cache entries written (flowcache.h): packets
							 * that missed it and were answered by the connection
							 * table or placed anew; against the forwarded
							 * packets, the cache's miss rate */
#define XDPLB_CACHE_STAT_MAX			2

/* VIP filter (vipfilter.h): one bit per hash of a VIP address, set by the
 * daemon for every VIP with a service. A packet whose destination's bit is
 * clear is no VIP's: passed without the connection-table and service
 * lookups (three hash lookups, about 75 ns here). 65,536 bits in 1,024
 * words: with 10,000 VIPs about one address in seven still looks up. */
#define XDPLB_VIP_FILTER_WORDS	1024

/* IPv6 extension headers walked before giving up (XDP_PASS, ipv6_ext_limit) */
#define XDPLB_IPV6_EXT_MAX	6

/* Quoted bytes in LB-made ICMP errors: IPv4 keeps the reply within 576 bytes
 * (RFC 1812 4.3.2.3), ICMPv6 within the IPv6 minimum MTU 1280 (RFC 4443 2.4). */
#define XDPLB_ICMP4_QUOTE_MAX	(576 - 20 - 8)
#define XDPLB_ICMP6_QUOTE_MAX	(1280 - 40 - 8)

#define XDPLB_DEFAULT_TTL	64

/* Path MTU past the load balancer (pmtu.h): what a router reports about a
 * tunnel packet to a backend is kept XDPLB_PMTU_EXPIRES_S, as the kernel
 * keeps a learnt PMTU (net.ipv4.route.mtu_expires, net.ipv6.route.mtu_expires).
 * A report below the protocol's floor counts as the floor, as in the kernel
 * (net.ipv4.route.min_pmtu 552; IPv6 1280, RFC 8201). XDPLB_PMTU_SLOTS:
 * backends one node sends to (an LRU: forged reports cannot fill it up). */
#define XDPLB_PMTU_EXPIRES_S	600
#define XDPLB_PMTU_MIN4		552
#define XDPLB_PMTU_MIN6		1280
#define XDPLB_PMTU_SLOTS	16384

/* ---- node flags (struct xdplb_config.flags) ---- */
#define XDPLB_CFG_F_NO_FLOW_CACHE	(1U << 0)	/* the flow cache neither read nor written */

/* ---- address families as stored in maps (not AF_*) ---- */
#define XDPLB_FAMILY_V4		4
#define XDPLB_FAMILY_V6		6

/* ---- service flags (struct xdplb_service.flags) ---- */
#define XDPLB_SVC_F_L4_DNAT	(1U << 0)	/* inner destination port := backend port */
#define XDPLB_SVC_F_SRC_HASH	(1U << 1)	/* hash the client address only (ports zeroed) */
#define XDPLB_SVC_F_CT_BYPASS	(1U << 2)	/* no connection table: Maglev for every packet */
#define XDPLB_SVC_F_ICMP_ECHO	(1U << 3)	/* on a VIP entry: answer ICMP echo requests */

/* ---- backend states (struct xdplb_backend.state) ---- */
#define XDPLB_BACKEND_NONE	0	/* slot unused or deleted: never chosen */
#define XDPLB_BACKEND_ACTIVE	1	/* new and established flows */
#define XDPLB_BACKEND_DRAINING	2	/* established flows (connection table) only; no SYN */
#define XDPLB_BACKEND_DOWN	3	/* never chosen: its flows move to the table's backends */

/* ---- reasons: why a packet got its verdict; one per-CPU counter each ----
 * The names, their order and their verdicts are one table, reasons.def. */
enum xdplb_reason {
#define XDPLB_REASON(name, verdict, description) XDPLB_R_##name,
#include "reasons.def"
#undef XDPLB_REASON
	XDPLB_R_MAX
};

/* Internal: "no verdict yet, go on with the next step". Never counted. */
#define XDPLB_CONTINUE	(-1)

/* Where the recorder hooks sit (recorder.h). */
#define XDPLB_CAPTURE_IN	1	/* step 2: as received, before any change */
#define XDPLB_CAPTURE_OUT	2	/* step 9: as sent, after encapsulation */

/* ---- the recorder (recorder.h) ---- */
#define XDPLB_REC_MAX_MASKS	32	/* mask slots: every packet pays up to this many lookups */
#define XDPLB_REC_MAX_ENTRIES	131072	/* masked keys of every running recording's filters */
#define XDPLB_REC_MAX_RULES	64	/* bits of struct xdplb_rec_entry.rules: running recordings */
/* The recorder's filter (recorder.h): a blocked Bloom filter of the entries'
 * keys (mask slot included): two bits in one word per key, set by the daemon
 * for every entry. A mask whose key for a packet misses a bit is not looked
 * up in xdplb_rec_entries (a hash lookup, about 30 ns here). 16,384 words
 * (128 KiB, one array read per mask), shared by the masks since one shape
 * may hold every entry: with 100,000 entries about one key in thirty that
 * has no entry still looks up. */
#define XDPLB_REC_FILTER_WORDS_LOG	14
#define XDPLB_REC_FILTER_WORDS		16384	/* 2^XDPLB_REC_FILTER_WORDS_LOG */
/* The recorder's memo (recorder.h): per CPU, a tuple's last match, used
 * while the recorder maps are unchanged (xdplb_rec_config.gen) by the next
 * packet of the tuple: one array read and a compare instead of a look at
 * every mask. 1,024 slots of 56 bytes per CPU. */
#define XDPLB_REC_MEMO_SLOTS_LOG	10
#define XDPLB_REC_MEMO_SLOTS		1024	/* 2^XDPLB_REC_MEMO_SLOTS_LOG */
/* xdplb_rec_config.flags */
#define XDPLB_REC_F_NO_MEMO		(1U << 0)	/* match every packet afresh (benchmarks) */

/* xdplb_rec_stats indices: per-CPU __u64 counters */
#define XDPLB_REC_STAT_SAMPLES		0	/* samples written to the perf ring */
#define XDPLB_REC_STAT_OUTPUT_FAILED	1	/* bpf_perf_event_output failed: ring full or no reader on that CPU */
#define XDPLB_REC_STAT_MAX		2

#endif /* XDPLB_CONSTS_H */
