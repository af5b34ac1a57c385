/* SPDX-License-Identifier: Apache-2.0 */
/* The decapsulator's map layouts (xdp/decap.bpf.c): every key and value of
 * its maps and the constants stored in them, the one source of truth for
 * the user space that fills and reads them. */
#ifndef XDPLB_DECAP_LAYOUT_H
#define XDPLB_DECAP_LAYOUT_H

#include <linux/types.h>

/* xdplb_decap_config[0].flags */
#define DECAP_CFG_F_SINK	(1U << 0)	/* drop every frame after its verdict (benchmark sink) */

#define DECAP_FAMILY_ANY	0	/* xdplb_decap_local wildcard: every tunnel packet */
#define DECAP_FAMILY_V4		4
#define DECAP_FAMILY_V6		6

/* xdplb_decap_local key: one of this backend's addresses (IPv4 in addr[0..3]) */
struct xdplb_decap_addr {
	__u8 family;		/* 0: DECAP_FAMILY_V4/V6, or DECAP_FAMILY_ANY with addr all zero */
	__u8 pad[3];		/* 1: 0 */
	__u8 addr[16];		/* 4: network order */
};				/* 20 */

/* per-CPU counter, as struct xdplb_counter of xdp/layout.h */
struct xdplb_decap_counter {
	__u64 packets;
	__u64 bytes;		/* frame bytes as received */
};

/* xdplb_decap_revnat key: a reply's source as the backend sends it */
struct xdplb_revnat_key {
	__u8 family;		/* 0: DECAP_FAMILY_V4/V6 */
	__u8 proto;		/* 1: IPPROTO_TCP or IPPROTO_UDP */
	__be16 port;		/* 2: the backend port (network order) */
	__u8 addr[16];		/* 4: the VIP (IPv4 in addr[0..3]) */
};				/* 20 */

/* xdplb_decap_revnat value */
struct xdplb_revnat_val {
	__be16 port;		/* 0: the service port (network order) */
	__u16 pad;		/* 2: 0 */
};				/* 4 */

/* xdplb_decap_config[0] */
struct xdplb_decap_config {
	__u32 flags;		/* 0: DECAP_CFG_F_* */
};				/* 4 */

_Static_assert(sizeof(struct xdplb_decap_addr) == 20, "decap address key");
_Static_assert(sizeof(struct xdplb_revnat_key) == 20, "revnat key");
_Static_assert(sizeof(struct xdplb_revnat_val) == 4, "revnat value");

#endif /* XDPLB_DECAP_LAYOUT_H */
