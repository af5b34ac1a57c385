// IP addresses as xdplb handles them: parsed once from text into a value that
// carries its family, its bytes and its canonical text, so that validation, the
// model, the flow hash and the recorder filter never parse or print one again.
//
// Canonical text: IPv4 dotted quad; IPv6 compressed lowercase (RFC 5952), so
// "2001:DB8:0::1" and "2001:db8::1" are one address.
//
// Refused on parsing (each with a reason a message can follow the value with):
// zone indexes ("fe80::1%eth0") and IPv4-mapped IPv6 addresses (::ffff:a.b.c.d),
// which the datapath would send as IPv6.
import { isIP } from 'node:net';

export type Family = 4 | 6;

export const familyName = (f: Family): string => (f === 4 ? 'IPv4' : 'IPv6');

/** The address length in bits of a family. */
export const familyBits = (f: Family): 32 | 128 => (f === 4 ? 32 : 128);

function v4Bytes(text: string): Buffer {
  return Buffer.from(text.split('.').map(Number));
}

/** `text` must be an IPv6 address as isIP() accepts it. */
function v6Bytes(text: string): Buffer {
  const out = Buffer.alloc(16);
  let s = text.toLowerCase();
  let v4: Buffer | undefined;
  if (s.includes('.')) {
    const colon = s.lastIndexOf(':');
    v4 = v4Bytes(s.slice(colon + 1));
    s = `${s.slice(0, colon + 1)}0:0`;
  }
  const [head, tail] = s.split('::');
  const h = head ? head.split(':') : [];
  const t = tail === undefined ? [] : tail ? tail.split(':') : [];
  const groups = [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t].map((g) => parseInt(g, 16));
  groups.forEach((g, i) => out.writeUInt16BE(g, 2 * i));
  if (v4) v4.copy(out, 12);
  return out;
}

/** RFC 5952: lowercase, no leading zeros, the longest run (first on a tie) of two or more zero groups as "::". */
function v6Text(b: Uint8Array): string {
  const g = Array.from({ length: 8 }, (_, i) => (b[2 * i] << 8) | b[2 * i + 1]);
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) (best = i), (bestLen = j - i);
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (bestLen < 2) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

const isV4Mapped = (b: Uint8Array): boolean => b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;

export class Address {
  private constructor(
    readonly family: Family,
    /** 4 bytes (IPv4) or 16 (IPv6), network order; not to be written to */
    readonly bytes: Buffer,
    /** canonical text */
    readonly text: string,
  ) {}

  /**
   * Parses an IP address, or returns why it is not one xdplb accepts, phrased
   * to follow the value: `"x" ${reason}`.
   */
  static parse(text: string): Address | string {
    if (text.includes('%')) return 'has a zone index; write the address without it';
    const family = isIP(text);
    if (family === 4) return new Address(4, v4Bytes(text), text);
    if (family !== 6) return 'is not an IPv4 or IPv6 address';
    const bytes = v6Bytes(text);
    if (isV4Mapped(bytes)) return `is an IPv4-mapped IPv6 address; write the IPv4 address ${bytes.subarray(12).join('.')}`;
    return new Address(6, bytes, v6Text(bytes));
  }

  /** An address the program itself holds in text (a spec's, a map's decoded): a RangeError when it is not one. */
  static of(text: string): Address {
    const a = Address.parse(text);
    if (typeof a === 'string') throw new RangeError(`${JSON.stringify(text)} ${a}`);
    return a;
  }

  /** From 4 or 16 bytes in network order (copied). */
  static fromBytes(bytes: Uint8Array): Address {
    if (bytes.length === 4) return new Address(4, Buffer.from(bytes), Array.from(bytes).join('.'));
    if (bytes.length !== 16) throw new RangeError(`an address has 4 or 16 bytes, not ${bytes.length}`);
    return new Address(6, Buffer.from(bytes), v6Text(bytes));
  }

  /** The address length in bits: 32 or 128. */
  get bits(): 32 | 128 {
    return familyBits(this.family);
  }

  /** Why this is not a unicast address, phrased to follow the value; undefined when it is one. */
  notUnicast(): string | undefined {
    const b = this.bytes;
    if (b.every((x) => x === 0)) return 'is the unspecified address';
    if (this.family === 4) {
      if ((b[0] & 0xf0) === 0xe0) return 'is a multicast address';
      if (b.every((x) => x === 0xff)) return 'is the broadcast address';
    } else if (b[0] === 0xff) return 'is a multicast address';
    return undefined;
  }

  /** Whether every bit past the first `length` is clear. */
  hostBitsClear(length: number): boolean {
    for (let bit = length; bit < this.bits; bit++) if (this.bytes[bit >> 3] & (0x80 >> (bit & 7))) return false;
    return true;
  }

  /** The network of this address under a prefix of `length` bits: the host bits cleared. */
  network(length: number): Address {
    const net = Buffer.from(this.bytes);
    for (let bit = length; bit < this.bits; bit++) net[bit >> 3] &= ~(0x80 >> (bit & 7));
    return Address.fromBytes(net);
  }

  equals(o: Address): boolean {
    return this.family === o.family && this.bytes.equals(o.bytes);
  }

  toString(): string {
    return this.text;
  }

  toJSON(): string {
    return this.text;
  }
}

/** "address:port", the address in brackets when it is IPv6 (as URLs and logs write it). */
export function hostPort(address: string, port: number): string {
  return isIP(address) === 6 ? `[${address}]:${port}` : `${address}:${port}`;
}
