// The datapath's hashes, bit for bit: the flow hash (xdp/maglev.h) and what
// follows from it, the Maglev entry of a flow and its outer source address
// (xdp/encap.h); the VIP filter's bit of an address (xdp/vipfilter.h); the
// flow-cache slot of a flow (xdp/flowcache.h). The flow hash is
// node-independent by design: every load balancer of a fleet, and every tool
// that predicts where a flow goes, computes the same numbers.

import { DEFAULT_M } from '../maglev/table';
import { Address } from '../net/address';
import { encodeFlowKey, FLOW_CACHE_SLOTS, FLOW_HASH_SEED, VIP_FILTER_WORDS } from './layout';

const JHASH_INITVAL = 0xdeadbeef;

function rol32(w: number, s: number): number {
  return ((w << s) | (w >>> (32 - s))) >>> 0;
}

/** Linux jhash2() (include/linux/jhash.h) over 32-bit words. */
export function jhash2(k: ArrayLike<number>, initval: number): number {
  let length = k.length;
  let a = (JHASH_INITVAL + (length << 2) + initval) >>> 0;
  let b = a;
  let c = a;
  let i = 0;
  while (length > 3) {
    a = (a + k[i]) >>> 0;
    b = (b + k[i + 1]) >>> 0;
    c = (c + k[i + 2]) >>> 0;
    // __jhash_mix
    a = (a - c) >>> 0; a = (a ^ rol32(c, 4)) >>> 0; c = (c + b) >>> 0;
    b = (b - a) >>> 0; b = (b ^ rol32(a, 6)) >>> 0; a = (a + c) >>> 0;
    c = (c - b) >>> 0; c = (c ^ rol32(b, 8)) >>> 0; b = (b + a) >>> 0;
    a = (a - c) >>> 0; a = (a ^ rol32(c, 16)) >>> 0; c = (c + b) >>> 0;
    b = (b - a) >>> 0; b = (b ^ rol32(a, 19)) >>> 0; a = (a + c) >>> 0;
    c = (c - b) >>> 0; c = (c ^ rol32(b, 4)) >>> 0; b = (b + a) >>> 0;
    length -= 3;
    i += 3;
  }
  if (length === 0) return c;
  if (length === 3) c = (c + k[i + 2]) >>> 0;
  if (length >= 2) b = (b + k[i + 1]) >>> 0;
  a = (a + k[i]) >>> 0;
  // __jhash_final
  c = (c ^ b) >>> 0; c = (c - rol32(b, 14)) >>> 0;
  a = (a ^ c) >>> 0; a = (a - rol32(c, 11)) >>> 0;
  b = (b ^ a) >>> 0; b = (b - rol32(a, 25)) >>> 0;
  c = (c ^ b) >>> 0; c = (c - rol32(b, 16)) >>> 0;
  a = (a ^ c) >>> 0; a = (a - rol32(c, 4)) >>> 0;
  b = (b ^ a) >>> 0; b = (b - rol32(a, 14)) >>> 0;
  c = (c ^ b) >>> 0; c = (c - rol32(b, 24)) >>> 0;
  return c;
}

export interface Flow {
  /** client address */
  src: string;
  /** VIP */
  dst: string;
  sport: number;
  dport: number;
  proto: number;
}

function words(addr: Address): number[] {
  const b = addr.bytes;
  const out: number[] = [];
  for (let i = 0; i < b.length; i += 4) out.push(b.readUInt32BE(i));
  return out;
}

/**
 * The flow hash: jhash2 with seed FLOW_HASH_SEED over the words
 *   IPv4: src, dst, ports, proto
 *   IPv6: src[0..3], dst[0..3], ports, proto
 * each the big-endian value of 4 address bytes; ports = sport << 16 | dport,
 * or 0 when the service hashes on the source only.
 */
export function flowHash(f: Flow, sourceOnly = false): number {
  const src = Address.of(f.src);
  const dst = Address.of(f.dst);
  if (src.family !== dst.family) throw new RangeError(`flow mixes families: ${f.src} -> ${f.dst}`);
  const ports = sourceOnly ? 0 : ((f.sport << 16) | f.dport) >>> 0;
  return jhash2([...words(src), ...words(dst), ports, f.proto], FLOW_HASH_SEED);
}

/** Index of the flow's entry in a Maglev table of size m. */
export function maglevIndex(hash: number, m = DEFAULT_M): number {
  return hash % m;
}

/**
 * Outer source address of a flow: `address` itself when prefixLen is 0 or the
 * full length, otherwise the address with its host bits (at most the last 32)
 * taken from the flow hash.
 */
export function outerSource(address: string, prefixLen: number, hash: number): string {
  const a = Address.of(address);
  if (prefixLen === 0 || prefixLen >= a.bits) return address;
  const b = Buffer.from(a.bytes);
  const hostBits = Math.min(32, a.bits - prefixLen);
  const mask = hostBits >= 32 ? 0xffffffff : (1 << hostBits) - 1;
  const off = b.length - 4;
  const w = b.readUInt32BE(off);
  b.writeUInt32BE(((w & ~mask) | (hash & mask)) >>> 0, off);
  return Address.fromBytes(b).text;
}

/** IPv6 outer flow label: the low 20 bits of the flow hash. */
export function flowLabel(hash: number): number {
  return hash & 0xfffff;
}

/**
 * The bit of xdp/vipfilter.h vip_maybe() for an address: its four
 * little-endian words (IPv4: one, then zeros) folded, times the golden
 * ratio, the top 16 bits of the product.
 */
export function vipFilterBit(address: Address): number {
  const a = address.bytes;
  const x = address.family === 4 ? a.readUInt32LE(0) : a.readUInt32LE(0) ^ a.readUInt32LE(4) ^ a.readUInt32LE(8) ^ a.readUInt32LE(12);
  return Math.imul(x, 0x9e3779b1) >>> 16;
}

/** The filter words (xdplb_vip_filter) with the bits of the given VIPs set. */
export function vipFilterWords(vips: Iterable<Address>): BigUint64Array {
  const words = new BigUint64Array(VIP_FILTER_WORDS);
  for (const vip of vips) {
    const bit = vipFilterBit(vip);
    words[bit >>> 6] |= 1n << BigInt(bit & 63);
  }
  return words;
}

/** xdp/flowcache.h flow_cache_slot(): the ten words of the flow key folded, times the golden ratio. */
export function flowCacheSlot(f: Flow): number {
  const k = encodeFlowKey(f);
  const w = (i: number) => k.readUInt32LE(4 * i);
  let x = (w(0) ^ w(1) ^ w(2) ^ w(3)) >>> 0;
  x = (x ^ Math.imul(w(4) ^ w(5) ^ w(6) ^ w(7), 0x85ebca6b)) >>> 0;
  x = (x ^ Math.imul(w(8), 0xc2b2ae35) ^ w(9)) >>> 0;
  return Math.imul(x, 0x9e3779b1) >>> (32 - Math.log2(FLOW_CACHE_SLOTS));
}
