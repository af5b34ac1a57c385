/* SPDX-License-Identifier: Apache-2.0 */
/* Internet checksum helpers (RFC 1071, RFC 1624). Values are 16-bit words as
 * they sit in memory: the one's complement sum does not care about byte order
 * as long as the result is stored the way the words were loaded. */
#ifndef XDPLB_CSUM_H
#define XDPLB_CSUM_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one 16-bit word. */
static __always_inline void csum_replace2(__u16 *check, __u16 old, __u16 new)
{
	__u64 sum = (__u16)~*check;

	sum += (__u16)~old;
	sum += new;
	*check = csum_fold(sum);
}

/* Header checksum of an IPv4 header without options (check field zero). */
static __always_inline __u16 csum_ipv4_hdr20(const void *hdr)
{
	const __u16 *w = hdr;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return csum_fold(sum);
}

/* Unfolded sum of n bytes at p, where p..end is packet memory; n is bounded by
 * max (a constant). Stops at end. For ICMP bodies built by the LB. */
#define CSUM_CHUNK 64
static __always_inline __u64 csum_packet_bytes(void *p, void *end, __u32 max_chunks)
{
	__u64 sum = 0;
	int i;

	for (i = 0; i < max_chunks; i++) {
		if (p + CSUM_CHUNK > end)
			break;
		sum += bpf_csum_diff(0, 0, p, CSUM_CHUNK, 0);
		p += CSUM_CHUNK;
	}
	for (i = 0; i < CSUM_CHUNK / 4; i++) {
		if (p + 4 > end)
			break;
		sum += *(__u32 *)p;
		p += 4;
	}
	if (p + 2 <= end) {
		sum += *(__u16 *)p;
		p += 2;
	}
	if (p + 1 <= end)
		sum += *(__u8 *)p; /* a lone last byte is padded with a zero byte */
	return sum;
}

#endif /* XDPLB_CSUM_H */
