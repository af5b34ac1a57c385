/* SPDX-License-Identifier: Apache-2.0 */
/* Every map key and value of xdplb: the single source of truth for the map
 * ABI. src/datapath/layout.ts declares each struct once, field by field, and
 * derives its encoder and decoder from that; the daemon compares the
 * declarations with the BTF of build/bpf/lb.bpf.o when it loads the object
 * (and refuses to start on a difference), as does a test.
 *
 * Byte order: addresses and ports are in network order (as on the wire), so
 * the datapath compares them without swapping; everything else is host order.
 * No implicit padding: every hole is a named field that must be zero. */
#ifndef XDPLB_LAYOUT_H
#define XDPLB_LAYOUT_H

#include <linux/types.h>

/* xdplb_services key (IPv6 VIPs; IPv4 ones are in xdplb_services4, keyed by
 * struct xdplb_service4_key: the kernel hashes and compares the whole key on
 * every lookup). An IPv4 VIP here would sit in vip[0..3], vip[4..15] zero.
 * port 0 is the all-ports service of the VIP (looked up after the exact port).
 * proto IPPROTO_ICMP / IPPROTO_ICMPV6 with port 0 is the VIP entry that says
 * whether the LB answers echo requests (XDPLB_SVC_F_ICMP_ECHO). */
struct xdplb_service_key {
	__u8 family;		/* 0: XDPLB_FAMILY_V4 or XDPLB_FAMILY_V6 */
	__u8 proto;		/* 1: IPPROTO_TCP, IPPROTO_UDP (or ICMP for the VIP entry) */
	__be16 port;		/* 2: network order; 0 = every port */
	__u8 vip[16];		/* 4 */
};				/* 20 */

/* xdplb_services4 key: the same for an IPv4 VIP, in 8 bytes instead of 20 */
struct xdplb_service4_key {
	__u8 vip[4];		/* 0 */
	__be16 port;		/* 4: network order; 0 = every port */
	__u8 proto;		/* 6: IPPROTO_TCP, IPPROTO_UDP (or IPPROTO_ICMP for the VIP entry) */
	__u8 pad;		/* 7: 0 */
};				/* 8 */

/* xdplb_services and xdplb_services4 value */
struct xdplb_service {
	__u32 id;		/* 0: index of the Maglev table and of the service counters */
	__u32 flags;		/* 4: XDPLB_SVC_F_* */
};				/* 8 */

/* xdplb_svc_by_id value, indexed by service id: a service as its
 * xdplb_services / xdplb_services4 entry names it, so that a connection-table
 * hit finds its service without the hash lookup, and can tell whether that
 * service still serves the flow. family 0: no service has this id. */
struct xdplb_service_def {
	__u8 vip[16];		/* 0: IPv4 in vip[0..3], vip[4..15] zero */
	__be16 port;		/* 16: network order; 0 = every port */
	__u8 proto;		/* 18: IPPROTO_TCP, IPPROTO_UDP */
	__u8 family;		/* 19: XDPLB_FAMILY_V4/V6; 0 = empty slot */
	struct xdplb_service svc; /* 20: the same as its service-map value */
};				/* 28 */

/* xdplb_backends value, indexed by backend id (the ids in Maglev tables).
 * service_id: the service the id was handed to. A connection-table or
 * flow-cache entry names a backend by id; it counts only for that service,
 * so an id freed and handed to another service's backend never receives
 * the old service's flows. */
struct xdplb_backend {
	__u8 addr[16];		/* 0: IPv4 in addr[0..3] */
	__be16 port;		/* 16: network order; the L4 DNAT destination port */
	__u8 family;		/* 18: XDPLB_FAMILY_V4/V6; 0 = empty slot */
	__u8 state;		/* 19: XDPLB_BACKEND_* */
	__u32 service_id;	/* 20: the owning service (xdplb_svc_by_id index) */
};				/* 24 */

/* xdplb_nexthops value (per CPU), indexed by backend id: the route to the
 * backend as bpf_fib_lookup() last resolved it on this CPU (fib.h). Written
 * only by the datapath; an entry for another address, family or ingress
 * interface, or older than the bound, is resolved again. */
struct xdplb_nexthop {
	__u8 addr[16];		/* 0: backend address it was resolved for (xdplb_backend.addr) */
	__u8 dmac[6];		/* 16: next hop's MAC */
	__u8 smac[6];		/* 22: egress interface's MAC */
	__u16 mtu;		/* 28: route MTU (65535: at least that) */
	__u8 family;		/* 30: XDPLB_FAMILY_V4/V6 of addr; 0 = never resolved */
	__u8 pad;		/* 31: 0 */
	__u32 ifindex;		/* 32: egress interface */
	__u32 iif;		/* 36: ingress interface it was resolved for */
	__u64 expires_ns;	/* 40: bpf_ktime_get_coarse_ns() from which it is looked up again */
	__u64 checked_jiffies;	/* 48: jiffies of the last look at the clock (fib.h: nexthop_stale()) */
};				/* 56 */

/* xdplb_revnat value, keyed by struct xdplb_service_key with the backend
 * port in `port` (IPv4 VIPs too): the service port an L4 DNAT service
 * translates to that backend port, for the quotes of relayed ICMP errors
 * (pmtu.h). Written by the daemon for every DNAT service and backend port
 * that differs from the service's; two services sending a VIP's port to the
 * same backend port leave the first one's. */
struct xdplb_revnat {
	__be16 port;		/* 0: the service port (network order) */
	__u16 pad;		/* 2: 0 */
};				/* 4 */

/* xdplb_pmtu key: a backend a router reported a smaller path MTU for */
struct xdplb_pmtu_key {
	__u8 addr[16];		/* 0: backend address (the outer destination), IPv4 in addr[0..3] */
	__u8 family;		/* 16: XDPLB_FAMILY_V4/V6 */
	__u8 pad[3];		/* 17: 0 */
};				/* 20 */

/* xdplb_pmtu value: written by the datapath (pmtu.h), read by fib.h when it
 * resolves a next hop, deleted by the daemon once expired */
struct xdplb_pmtu {
	__u64 expires_ns;	/* 0: bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC) from which it no longer counts */
	__u32 mtu;		/* 8: largest outer packet the path takes */
	__u32 pad;		/* 12: 0 */
};				/* 16 */

/* xdplb_config[0]: this node's settings */
struct xdplb_config {
	__u8 src4[4];		/* 0: outer IPv4 source */
	__u8 src6[16];		/* 4: outer IPv6 source */
	__u8 src4_prefix_len;	/* 20: 0 or 32 = exactly src4; 1..31 = host bits from the flow hash */
	__u8 src6_prefix_len;	/* 21: 0 or 128 = exactly src6; else last min(32, 128-len) bits from the flow hash */
	__u8 ttl;		/* 22: outer TTL / hop limit, and of LB-made replies; 0 = 64 */
	__u8 flags;		/* 23: XDPLB_CFG_F_* */
	__u16 mtu;		/* 24: egress MTU override (lowers the FIB's); 0 = the FIB's only */
	__u16 nexthop_ttl_ms;	/* 26: next-hop cache bound (fib.h), for entries looked up from now on; 0 = XDPLB_NEXTHOP_TTL_MS */
	__u32 pad;		/* 28: 0 (M is each Maglev table's own max_entries: maps.h) */
	__u32 ct_tcp_s;		/* 32: idle lifetime of a TCP connection-table entry, seconds; 0 = XDPLB_CT_TCP_S */
	__u32 ct_udp_s;		/* 36: the same for UDP; 0 = XDPLB_CT_UDP_S */
	__u32 ct_closing_s;	/* 40: after a FIN or RST; 0 = XDPLB_CT_CLOSING_S */
	__u32 pad2;		/* 44: 0 */
};				/* 48 */

/* xdplb_conntrack key: an IPv6 flow as the client sent it (and the tuple
 * of every packet, struct packet in parse.h, for either family) */
struct xdplb_flow_key {
	__u8 src[16];		/* 0: client address */
	__u8 dst[16];		/* 16: VIP */
	__be16 sport;		/* 32 */
	__be16 dport;		/* 34 */
	__u8 proto;		/* 36 */
	__u8 family;		/* 37: XDPLB_FAMILY_V4/V6 */
	__u16 pad;		/* 38: 0 */
};				/* 40 */

/* xdplb_conntrack4 key: an IPv4 flow as the client sent it. IPv4 flows have
 * their own connection table: the kernel hashes and compares the whole key
 * on every lookup, 16 bytes here against 40 in struct xdplb_flow_key. */
struct xdplb_flow4_key {
	__u8 src[4];		/* 0: client address */
	__u8 dst[4];		/* 4: VIP */
	__be16 sport;		/* 8 */
	__be16 dport;		/* 10 */
	__u8 proto;		/* 12 */
	__u8 pad[3];		/* 13: 0 */
};				/* 16 */

/* xdplb_conntrack and xdplb_conntrack4 value. An entry is absent once
 * bpf_ktime_get_coarse_ns() / 1e9 reaches expires_s (maglev.h: ct_alive()). */
struct xdplb_ct_entry {
	__u32 backend_id;	/* 0 */
	__u32 service_id;	/* 4: xdplb_svc_by_id index; ignored unless that service still serves the flow */
	__u32 expires_s;	/* 8: monotonic seconds from which the entry counts as absent */
	__u32 checked_jiffies;	/* 12: low 32 bits of bpf_jiffies64() when expires_s was last set */
	__u8 closing;		/* 16: 1: a FIN or RST was seen; the closing lifetime applies */
	__u8 pad[3];		/* 17: 0 */
};				/* 20 */

/* xdplb_flow_cache value (per CPU), indexed by flow_cache_slot() (flowcache.h):
 * a connection-table answer as this CPU last used it. Written only by the
 * datapath; an entry of another flow (flow.family 0: never written) or older
 * than XDPLB_FLOW_CACHE_JIFFIES is not used. */
struct xdplb_flow_cache_entry {
	struct xdplb_flow_key flow;	/* 0: the flow it answers for */
	__u32 backend_id;		/* 40: as struct xdplb_ct_entry */
	__u32 service_id;		/* 44 */
	__u64 filled_jiffies;		/* 48: bpf_jiffies64() when written */
	__u32 hash;			/* 56: the flow hash, when hashed */
	__u16 hashed;			/* 60: 1: hash is set (the flow needed it: Maglev, IPv6, an outer source prefix) */
	__u16 pending;			/* 62: 1: a SYN's placement, not yet in the connection table (flowcache.h) */
};				/* 64: one entry per cache line */

/* xdplb_svc_stats, xdplb_be_stats, xdplb_reasons: per-CPU values */
struct xdplb_counter {
	__u64 packets;		/* 0 */
	__u64 bytes;		/* 8: frame bytes as received */
};				/* 16 */

/* xdplb_devmap value (the kernel's struct bpf_devmap_val) */
struct xdplb_devmap_val {
	__u32 ifindex;		/* 0: egress interface */
	__s32 prog_fd;		/* 4: 0 = no devmap program; reads back as its id */
};				/* 8 */

/* ---- the recorder (recorder.h) ----
 * Filters compile (src/recorder/filter.ts) into up to XDPLB_REC_MAX_MASKS
 * masks and a hash of masked keys. A packet's tuple ANDed with mask i, its
 * `mask` byte set to i, is looked up in xdplb_rec_entries; the hits' rules
 * are ORed. */

/* xdplb_rec_entries key, and the value of xdplb_rec_masks. The tuple of a
 * packet is its struct xdplb_flow_key (the client -> VIP tuple at both
 * capture points) in this order; filter.ts encodeTuple() writes it. */
struct xdplb_rec_key {
	__u8 family;		/* 0: XDPLB_FAMILY_V4/V6; in a mask 0xff, or 0 for either */
	__u8 proto;		/* 1: IP protocol; in a mask 0xff or 0 */
	__be16 sport;		/* 2: network order; in a mask 0xffff or 0 */
	__be16 dport;		/* 4: likewise */
	__u8 mask;		/* 6: in a key, the slot of the mask that made it; in a mask 0 */
	__u8 pad;		/* 7: 0 */
	__u8 src[16];		/* 8: IPv4 in src[0..3]; in a mask, the prefix bits */
	__u8 dst[16];		/* 24: likewise */
};				/* 40 */

/* xdplb_rec_entries value */
struct xdplb_rec_entry {
	__u64 rules;		/* 0: bit r = recording rule r (0..XDPLB_REC_MAX_RULES-1) */
	__u32 caplen;		/* 8: bytes to copy: the largest cap length of its rules; 0 = the whole frame */
	__u32 pad;		/* 12: 0 */
};				/* 16 */

/* xdplb_rec_config[0] */
struct xdplb_rec_config {
	__u32 n_masks;		/* 0: mask slots in use, from 0; 0 = recorder off (one lookup per packet) */
	__u32 gen;		/* 4: changed by the daemon after every change of the other recorder maps:
				 * memos (xdplb_rec_memo) of another gen are not used */
	__u32 flags;		/* 8: XDPLB_REC_F_* */
	__u32 pad;		/* 12: 0 */
};				/* 16 */

/* xdplb_rec_memo value: a tuple's last match on this CPU */
struct xdplb_rec_memo {
	__u64 tuple[5];		/* 0: the tuple as the words of struct xdplb_rec_key, mask slot 0 */
	__u64 rules;		/* 40: as struct rec_match (recorder.h) */
	__u32 caplen;		/* 48: likewise */
	__u32 gen;		/* 52: xdplb_rec_config.gen it was matched under */
};				/* 56 */

/* The header of every xdplb_rec_ring sample; cap_len frame bytes follow it. */
struct xdplb_rec_meta {
	__u64 ts_ns;		/* 0: bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u64 rules;		/* 8: OR of the rules of every matching entry */
	__u32 orig_len;		/* 16: frame length at the capture point */
	__u32 cap_len;		/* 20: frame bytes that follow */
	__u32 ifindex;		/* 24: ingress interface */
	__u32 backend_id;	/* 28: backend chosen (XDPLB_CAPTURE_OUT); XDPLB_NO_BACKEND inbound */
	__u8 point;		/* 32: XDPLB_CAPTURE_IN / XDPLB_CAPTURE_OUT */
	__u8 family;		/* 33: XDPLB_FAMILY_V4/V6 of the tuple */
	__u16 pad;		/* 34: 0 */
	__u32 pad2;		/* 36: 0 */
};				/* 40 */

_Static_assert(sizeof(struct xdplb_service_key) == 20, "service key");
_Static_assert(sizeof(struct xdplb_service4_key) == 8, "IPv4 service key");
_Static_assert(sizeof(struct xdplb_service) == 8, "service");
_Static_assert(sizeof(struct xdplb_service_def) == 28, "service by id");
_Static_assert(sizeof(struct xdplb_backend) == 24, "backend");
_Static_assert(sizeof(struct xdplb_nexthop) == 56, "next hop");
_Static_assert(__builtin_offsetof(struct xdplb_nexthop, dmac) % 8 == 0 &&
	       __builtin_offsetof(struct xdplb_nexthop, smac) == __builtin_offsetof(struct xdplb_nexthop, dmac) + 6,
	       "next-hop MACs: as in an Ethernet header, copied as 8 + 4 bytes (fib.h)");
_Static_assert(sizeof(struct xdplb_revnat) == 4, "reverse DNAT");
_Static_assert(sizeof(struct xdplb_pmtu_key) == 20, "path MTU key");
_Static_assert(sizeof(struct xdplb_pmtu) == 16, "path MTU");
_Static_assert(sizeof(struct xdplb_config) == 48, "config");
_Static_assert(sizeof(struct xdplb_flow_key) == 40, "flow key");
_Static_assert(sizeof(struct xdplb_flow4_key) == 16, "IPv4 flow key");
_Static_assert(sizeof(struct xdplb_ct_entry) == 20, "ct entry");
_Static_assert(sizeof(struct xdplb_flow_cache_entry) == 64, "flow cache entry: one cache line");
_Static_assert(sizeof(struct xdplb_counter) == 16, "counter");
_Static_assert(sizeof(struct xdplb_devmap_val) == 8, "devmap value");
_Static_assert(sizeof(struct xdplb_rec_key) == 40, "recorder key");
_Static_assert(sizeof(struct xdplb_rec_entry) == 16, "recorder entry");
_Static_assert(sizeof(struct xdplb_rec_config) == 16, "recorder config");
_Static_assert(sizeof(struct xdplb_rec_memo) == 56, "recorder memo");
_Static_assert(sizeof(struct xdplb_rec_meta) == 40, "recorder sample header");

#endif /* XDPLB_LAYOUT_H */
