// A small packet builder and reader for datapath tests: Ethernet (with VLAN
// tags), IPv4 (with options), IPv6 (with extension headers), TCP, UDP, ICMP,
// ICMPv6, all checksums right unless told otherwise; PCAP files and tshark
// as the independent decoder.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { addressBytes } from '../src/datapath/layout';

export const ETH_P_IP = 0x0800;
export const ETH_P_IPV6 = 0x86dd;
export const ETH_P_ARP = 0x0806;
export const ETH_P_8021Q = 0x8100;

export const CLIENT_MAC = '02:00:00:00:00:01';
export const LB_MAC = '02:00:00:00:00:02';

export function mac(text: string): Buffer {
  return Buffer.from(text.split(':').map((h) => parseInt(h, 16)));
}

export function macText(b: Buffer): string {
  return [...b.subarray(0, 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** One's complement sum of 16-bit big-endian words, unfolded. */
export function sum16(b: Buffer, initial = 0): number {
  let s = initial;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length % 2) s += b[b.length - 1] << 8;
  return s;
}

export function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return ~s & 0xffff;
}

/** Internet checksum of b (RFC 1071): 0 when b contains a correct checksum. */
export function checksum(b: Buffer, initial = 0): number {
  return fold(sum16(b, initial));
}

/** Sum of the IPv4/IPv6 pseudo-header for an upper-layer protocol. */
export function pseudoSum(src: string, dst: string, proto: number, length: number): number {
  const s = addressBytes(src);
  const d = addressBytes(dst);
  if (s.length === 4) return sum16(Buffer.concat([s, d])) + proto + length;
  const l = Buffer.alloc(8);
  l.writeUInt32BE(length, 0);
  l.writeUInt32BE(proto, 4);
  return sum16(Buffer.concat([s, d, l]));
}

/** A transport segment that knows how to finish itself once the IP addresses are known. */
export interface L4 {
  proto: number;
  build(src: string, dst: string): Buffer;
}

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;

export interface TcpOptions {
  sport: number;
  dport: number;
  seq?: number;
  ack?: number;
  flags?: number;
  window?: number;
  /** TCP options, padded to 4 bytes */
  options?: Buffer;
  payload?: Buffer;
}

export function tcp(o: TcpOptions): L4 {
  return {
    proto: 6,
    build(src, dst) {
      const opts = o.options ?? Buffer.alloc(0);
      const optLen = Math.ceil(opts.length / 4) * 4;
      const payload = o.payload ?? Buffer.alloc(0);
      const h = Buffer.alloc(20 + optLen);
      h.writeUInt16BE(o.sport, 0);
      h.writeUInt16BE(o.dport, 2);
      h.writeUInt32BE((o.seq ?? 1000) >>> 0, 4);
      h.writeUInt32BE((o.ack ?? 0) >>> 0, 8);
      h[12] = ((20 + optLen) / 4) << 4;
      h[13] = o.flags ?? TCP_SYN;
      h.writeUInt16BE(o.window ?? 64240, 14);
      opts.copy(h, 20);
      const seg = Buffer.concat([h, payload]);
      seg.writeUInt16BE(checksum(seg, pseudoSum(src, dst, 6, seg.length)), 16);
      return seg;
    },
  };
}

export interface UdpOptions {
  sport: number;
  dport: number;
  payload?: Buffer;
  /** IPv4 only: send checksum 0 ("no checksum") */
  noChecksum?: boolean;
}

export function udp(o: UdpOptions): L4 {
  return {
    proto: 17,
    build(src, dst) {
      const payload = o.payload ?? Buffer.alloc(0);
      const seg = Buffer.alloc(8 + payload.length);
      seg.writeUInt16BE(o.sport, 0);
      seg.writeUInt16BE(o.dport, 2);
      seg.writeUInt16BE(seg.length, 4);
      payload.copy(seg, 8);
      if (!o.noChecksum) {
        const c = checksum(seg, pseudoSum(src, dst, 17, seg.length));
        seg.writeUInt16BE(c === 0 ? 0xffff : c, 6);
      }
      return seg;
    },
  };
}

/** ICMP (IPv4) or ICMPv6 (v6) message: type, code, 4 bytes of "rest of header", body. */
export function icmp(o: { type: number; code?: number; rest?: Buffer; body?: Buffer; v6?: boolean }): L4 {
  const v6 = !!o.v6;
  return {
    proto: v6 ? 58 : 1,
    build(src, dst) {
      const body = o.body ?? Buffer.alloc(0);
      const m = Buffer.alloc(8 + body.length);
      m[0] = o.type;
      m[1] = o.code ?? 0;
      (o.rest ?? Buffer.alloc(4)).copy(m, 4, 0, 4);
      body.copy(m, 8);
      m.writeUInt16BE(v6 ? checksum(m, pseudoSum(src, dst, 58, m.length)) : checksum(m), 2);
      return m;
    },
  };
}

/** ICMP echo request (type 8, or 128 for ICMPv6: pass v6). */
export function echoRequest(o: { id: number; seq: number; payload?: Buffer; v6?: boolean }): L4 {
  const rest = Buffer.alloc(4);
  rest.writeUInt16BE(o.id, 0);
  rest.writeUInt16BE(o.seq, 2);
  return icmp({ type: o.v6 ? 128 : 8, rest, body: o.payload ?? Buffer.from('xdplb-echo-payload'), v6: o.v6 });
}

/** An ICMP error quoting `quoted` (an IP packet, cut as the sender wishes). */
export function icmpError(o: { type: number; code: number; quoted: Buffer; v6?: boolean; mtu?: number }): L4 {
  const rest = Buffer.alloc(4);
  if (o.mtu !== undefined) {
    if (o.v6) rest.writeUInt32BE(o.mtu, 0);
    else rest.writeUInt16BE(o.mtu, 2);
  }
  return icmp({ type: o.type, code: o.code, rest, body: o.quoted, v6: o.v6 });
}

/** Any protocol number with a fixed payload (no checksum computed). */
export function rawL4(proto: number, payload: Buffer): L4 {
  return { proto, build: () => payload };
}

export interface Ipv4Options {
  src: string;
  dst: string;
  ttl?: number;
  tos?: number;
  id?: number;
  df?: boolean;
  mf?: boolean;
  /** fragment offset in 8-byte units */
  fragOffset?: number;
  /** IP options, padded with zeros (EOL) to 4 bytes */
  options?: Buffer;
  /** overrides for malformed packets */
  version?: number;
  ihl?: number;
  totalLength?: number;
  badChecksum?: boolean;
}

export function ipv4(o: Ipv4Options, l4: L4): Buffer {
  const seg = l4.build(o.src, o.dst);
  const opts = o.options ?? Buffer.alloc(0);
  const optLen = Math.ceil(opts.length / 4) * 4;
  const h = Buffer.alloc(20 + optLen);
  h[0] = ((o.version ?? 4) << 4) | (o.ihl ?? (20 + optLen) / 4);
  h[1] = o.tos ?? 0;
  h.writeUInt16BE(o.totalLength ?? h.length + seg.length, 2);
  h.writeUInt16BE(o.id ?? 0x1234, 4);
  h.writeUInt16BE(((o.df ?? true) ? 0x4000 : 0) | (o.mf ? 0x2000 : 0) | (o.fragOffset ?? 0), 6);
  h[8] = o.ttl ?? 64;
  h[9] = l4.proto;
  addressBytes(o.src).copy(h, 12);
  addressBytes(o.dst).copy(h, 16);
  opts.copy(h, 20);
  h.writeUInt16BE(checksum(h) ^ (o.badChecksum ? 0x5555 : 0), 10);
  return Buffer.concat([h, seg]);
}

export interface Ipv6Ext {
  /** 0 hop-by-hop, 43 routing, 60 destination options, 44 fragment, 51 AH */
  type: number;
  /** body after next-header and length bytes; padded to the header's unit */
  body?: Buffer;
}

export interface Ipv6Options {
  src: string;
  dst: string;
  hopLimit?: number;
  tclass?: number;
  flowLabel?: number;
  ext?: Ipv6Ext[];
  version?: number;
  payloadLength?: number;
}

function extHeader(e: Ipv6Ext, next: number): Buffer {
  if (e.type === 44) {
    const f = Buffer.alloc(8);
    f[0] = next;
    (e.body ?? Buffer.alloc(6)).copy(f, 2, 0, 6);
    return f;
  }
  const body = e.body ?? Buffer.alloc(e.type === 51 ? 10 : 6);
  if (e.type === 51) {
    const len = Math.ceil((2 + body.length) / 4) * 4;
    const h = Buffer.alloc(len);
    h[0] = next;
    h[1] = len / 4 - 2;
    body.copy(h, 2);
    return h;
  }
  const len = Math.ceil((2 + body.length) / 8) * 8;
  const h = Buffer.alloc(len);
  h[0] = next;
  h[1] = len / 8 - 1;
  body.copy(h, 2);
  if (e.type === 0 || e.type === 60) {
    // PadN over the rest so the options are well formed
    const pad = len - 2 - body.length;
    if (body.length === 0 && pad >= 2) {
      h[2] = 1;
      h[3] = pad - 2;
    }
  }
  return h;
}

export function ipv6(o: Ipv6Options, l4: L4): Buffer {
  const seg = l4.build(o.src, o.dst);
  const exts = o.ext ?? [];
  const parts: Buffer[] = [];
  for (let i = 0; i < exts.length; i++) parts.push(extHeader(exts[i], i + 1 < exts.length ? exts[i + 1].type : l4.proto));
  const ext = Buffer.concat(parts);
  const h = Buffer.alloc(40);
  h.writeUInt32BE((((o.version ?? 6) << 28) | ((o.tclass ?? 0) << 20) | (o.flowLabel ?? 0)) >>> 0, 0);
  h.writeUInt16BE(o.payloadLength ?? ext.length + seg.length, 4);
  h[6] = exts.length ? exts[0].type : l4.proto;
  h[7] = o.hopLimit ?? 64;
  addressBytes(o.src).copy(h, 8);
  addressBytes(o.dst).copy(h, 24);
  return Buffer.concat([h, ext, seg]);
}

export interface EtherOptions {
  dst?: string;
  src?: string;
  /** ethertype; default from the IP version of the payload */
  type?: number;
  /** VLAN ids, outermost first */
  vlans?: number[];
  /** TPID of the tags (0x8100, or 0x88a8 for the outer QinQ tag) */
  tpid?: number;
}

export function ether(payload: Buffer, o: EtherOptions = {}): Buffer {
  const type = o.type ?? (payload.length && payload[0] >> 4 === 6 ? ETH_P_IPV6 : ETH_P_IP);
  const tags = (o.vlans ?? []).map((id) => {
    const t = Buffer.alloc(4);
    t.writeUInt16BE(o.tpid ?? ETH_P_8021Q, 0);
    t.writeUInt16BE(id, 2);
    return t;
  });
  const t = Buffer.alloc(2);
  t.writeUInt16BE(type);
  return Buffer.concat([mac(o.dst ?? LB_MAC), mac(o.src ?? CLIENT_MAC), ...tags, t, payload]);
}

/** An ARP request frame (who has tpa, tell spa). */
export function arp(spa: string, tpa: string): Buffer {
  const a = Buffer.alloc(28);
  a.writeUInt16BE(1, 0);
  a.writeUInt16BE(ETH_P_IP, 2);
  a[4] = 6;
  a[5] = 4;
  a.writeUInt16BE(1, 6);
  mac(CLIENT_MAC).copy(a, 8);
  addressBytes(spa).copy(a, 14);
  addressBytes(tpa).copy(a, 24);
  return ether(a, { dst: 'ff:ff:ff:ff:ff:ff', type: ETH_P_ARP });
}

// ---- reading ----

export interface Ipv4Header {
  version: number;
  ihl: number;
  tos: number;
  totalLength: number;
  id: number;
  df: boolean;
  mf: boolean;
  fragOffset: number;
  ttl: number;
  proto: number;
  checksumOk: boolean;
  src: string;
  dst: string;
}

export function readIpv4(b: Buffer, off = 0): Ipv4Header {
  const ihl = b[off] & 0xf;
  const fo = b.readUInt16BE(off + 6);
  return {
    version: b[off] >> 4,
    ihl,
    tos: b[off + 1],
    totalLength: b.readUInt16BE(off + 2),
    id: b.readUInt16BE(off + 4),
    df: !!(fo & 0x4000),
    mf: !!(fo & 0x2000),
    fragOffset: fo & 0x1fff,
    ttl: b[off + 8],
    proto: b[off + 9],
    checksumOk: checksum(b.subarray(off, off + ihl * 4)) === 0,
    src: [...b.subarray(off + 12, off + 16)].join('.'),
    dst: [...b.subarray(off + 16, off + 20)].join('.'),
  };
}

export interface Ipv6Header {
  version: number;
  tclass: number;
  flowLabel: number;
  payloadLength: number;
  nextHeader: number;
  hopLimit: number;
  src: Buffer;
  dst: Buffer;
}

export function readIpv6(b: Buffer, off = 0): Ipv6Header {
  const w = b.readUInt32BE(off);
  return {
    version: w >>> 28,
    tclass: (w >>> 20) & 0xff,
    flowLabel: w & 0xfffff,
    payloadLength: b.readUInt16BE(off + 4),
    nextHeader: b[off + 6],
    hopLimit: b[off + 7],
    src: b.subarray(off + 8, off + 24),
    dst: b.subarray(off + 24, off + 40),
  };
}

// ---- PCAP and tshark ----

/** A classic PCAP file (Ethernet link type) holding the frames. */
export function pcap(frames: readonly Buffer[]): Buffer {
  const head = Buffer.alloc(24);
  head.writeUInt32LE(0xa1b2c3d4, 0);
  head.writeUInt16LE(2, 4);
  head.writeUInt16LE(4, 6);
  head.writeUInt32LE(262144, 16);
  head.writeUInt32LE(1, 20);
  const parts: Buffer[] = [head];
  frames.forEach((f, i) => {
    const r = Buffer.alloc(16);
    r.writeUInt32LE(1700000000 + i, 0);
    r.writeUInt32LE(f.length, 8);
    r.writeUInt32LE(f.length, 12);
    parts.push(r, f);
  });
  return Buffer.concat(parts);
}

/**
 * Checksum validation on. checkL4 false: TCP/UDP checksums are not validated,
 * for frames whose only TCP/UDP header is the start of a packet quoted by an
 * ICMP error (its checksum covers bytes that were cut off).
 */
function tsharkChecks(checkL4: boolean): string[] {
  return checkL4 ? TSHARK_CHECKS : TSHARK_CHECKS.map((a) => a.replace(/^(tcp|udp)\.check_checksum:TRUE$/, '$1.check_checksum:FALSE'));
}

const TSHARK_CHECKS = [
  '-o', 'ip.check_checksum:TRUE',
  '-o', 'tcp.check_checksum:TRUE',
  '-o', 'udp.check_checksum:TRUE',
  // test payloads are not application messages: stop at the transport
  '--disable-protocol', 'dns',
  '--disable-protocol', 'mdns',
  '--disable-protocol', 'http',
];

/**
 * Decodes frames with tshark; one row per frame, one string per field (several
 * occurrences of a field, like the outer and inner ip.src, joined by ',').
 */
export function tsharkFields(file: string, frames: readonly Buffer[], fields: readonly string[], checkL4 = true): string[][] {
  fs.writeFileSync(file, pcap(frames));
  const args = ['-r', file, ...tsharkChecks(checkL4), '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=a', '-E', 'aggregator=,'];
  for (const f of fields) args.push('-e', f);
  const out = execFileSync('tshark', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 28 });
  return out
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.split('|'));
}

/** tshark -V text of the frames (for failure messages and spot checks). */
export function tsharkVerbose(file: string, frames: readonly Buffer[], checkL4 = true): string {
  fs.writeFileSync(file, pcap(frames));
  return execFileSync('tshark', ['-r', file, ...tsharkChecks(checkL4), '-V'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 28 });
}

/** Fields every forwarded or LB-made frame is checked with. */
export const CHECK_FIELDS = [
  'frame.number',
  'ip.checksum.status',
  'tcp.checksum.status',
  'udp.checksum.status',
  'icmp.checksum.status',
  'icmpv6.checksum.status',
  '_ws.malformed',
  '_ws.expert.severity',
] as const;
