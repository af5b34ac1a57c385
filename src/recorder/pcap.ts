// PCAP and pcapng encoding for the recorder: pure functions that turn captured
// frames into the bytes of a capture file or stream, and the clock conversion
// from the kernel's timestamps to wall time. No I/O here: the daemon writes the
// buffers to a file, to stdout or into a gRPC stream.
//
// Classic PCAP (https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcap/):
//   file header (24 bytes, little-endian)
//      0 u32 magic 0xa1b23c4d   nanosecond timestamps (0xa1b2c3d4 would be µs)
//      4 u16 version major 2
//      6 u16 version minor 4
//      8 u32 reserved 0         (was thiszone)
//     12 u32 reserved 0         (was sigfigs)
//     16 u32 snaplen            = the recording's cap length
//     20 u32 link type          1 = LINKTYPE_ETHERNET (FCS length bits 0)
//   record header (16 bytes) then the captured bytes, no padding
//      0 u32 seconds since the epoch
//      4 u32 nanoseconds within the second
//      8 u32 captured length    (<= snaplen)
//     12 u32 original length    (as it was on the wire)
//
// pcapng (https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcapng/), little-endian:
//   Section Header Block, then one Interface Description Block per capture point
//   (interface 0 "xdplb-in": frames as received; interface 1 "xdplb-out": frames
//   as sent, after encapsulation), each with if_tsresol = 9 (nanoseconds) and the
//   snaplen, then one Enhanced Packet Block per frame with the interface of its
//   capture point, its direction (epb_flags) and an opt_comment naming the rule
//   and the backend. Every block is a multiple of 4 bytes and ends with its own
//   total length repeated; every option value is padded to 32 bits.

import { performance } from 'node:perf_hooks';

// ---- constants -----------------------------------------------------------------

export const PCAP_MAGIC_NS = 0xa1b23c4d;
export const PCAP_VERSION_MAJOR = 2;
export const PCAP_VERSION_MINOR = 4;
export const PCAP_HEADER_LEN = 24;
export const PCAP_RECORD_HEADER_LEN = 16;
export const LINKTYPE_ETHERNET = 1;

/** The largest snaplen Wireshark and libpcap accept for Ethernet (tcpdump's default). */
export const MAX_SNAPLEN = 262144;

export const PCAPNG_SHB = 0x0a0d0d0a;
export const PCAPNG_IDB = 0x00000001;
export const PCAPNG_EPB = 0x00000006;
export const PCAPNG_BYTE_ORDER_MAGIC = 0x1a2b3c4d;

/** Option codes used here (pcapng §3.5, §4.1, §4.2, §4.3). */
export const OPT_ENDOFOPT = 0;
export const OPT_COMMENT = 1;
export const SHB_USERAPPL = 4;
export const IF_NAME = 2;
export const IF_DESCRIPTION = 3;
export const IF_TSRESOL = 9;
export const EPB_FLAGS = 2;

/** epb_flags bits 0-1: the direction of the frame. */
export const EPB_FLAG_INBOUND = 1;
export const EPB_FLAG_OUTBOUND = 2;

const NS_PER_S = 1_000_000_000n;
const U32_MAX = 0xffffffff;

export type CaptureFormat = 'pcap' | 'pcapng';
/** Where the datapath copied the frame: step 2 (as received) or step 9 (as sent). */
export type CapturePoint = 'in' | 'out';

export const CAPTURE_POINTS: readonly CapturePoint[] = ['in', 'out'];

/** pcapng interface of each capture point: its index in the section and its name. */
export const CAPTURE_INTERFACES: Readonly<Record<CapturePoint, { id: number; name: string; description: string }>> = {
  in: { id: 0, name: 'xdplb-in', description: 'xdplb recorder, inbound point: frames as received, before any change' },
  out: { id: 1, name: 'xdplb-out', description: 'xdplb recorder, outbound point: frames as sent, after encapsulation' },
};

/** The snaplen of a recording's files: its cap length, or MAX_SNAPLEN for 0 ("whole frames"). */
export function snaplenFor(capLength: number): number {
  if (capLength === 0) return MAX_SNAPLEN;
  checkSnaplen(capLength);
  return capLength;
}

// ---- checks --------------------------------------------------------------------

function checkSnaplen(snaplen: number): void {
  if (!Number.isInteger(snaplen) || snaplen < 1 || snaplen > MAX_SNAPLEN)
    throw new RangeError(`snaplen must be an integer in 1..${MAX_SNAPLEN}, got ${snaplen}`);
}

function checkLengths(data: Buffer, origLen: number): void {
  if (!Number.isInteger(origLen) || origLen < data.length || origLen > U32_MAX)
    throw new RangeError(`original length must be an integer >= the captured length ${data.length}, got ${origLen}`);
}

/** Seconds and nanoseconds of a wall-clock time in ns since the epoch, for a PCAP record. */
function splitNs(tsNs: bigint): [number, number] {
  if (tsNs < 0n) throw new RangeError(`timestamp must not be before the epoch, got ${tsNs} ns`);
  const s = tsNs / NS_PER_S;
  if (s > BigInt(U32_MAX)) throw new RangeError(`timestamp ${tsNs} ns is past what PCAP's 32-bit seconds hold (2106)`);
  return [Number(s), Number(tsNs % NS_PER_S)];
}

const pad4 = (n: number) => (n + 3) & ~3;

// ---- classic PCAP ----------------------------------------------------------------

/** The 24-byte PCAP file header: nanosecond timestamps, Ethernet, this snaplen. */
export function pcapHeader(snaplen: number, linktype = LINKTYPE_ETHERNET): Buffer {
  checkSnaplen(snaplen);
  const b = Buffer.alloc(PCAP_HEADER_LEN);
  b.writeUInt32LE(PCAP_MAGIC_NS, 0);
  b.writeUInt16LE(PCAP_VERSION_MAJOR, 4);
  b.writeUInt16LE(PCAP_VERSION_MINOR, 6);
  // 8, 12: reserved, zero
  b.writeUInt32LE(snaplen, 16);
  b.writeUInt32LE(linktype, 20);
  return b;
}

/**
 * One PCAP record: the 16-byte header and `data` (the captured bytes, already
 * cut to the snaplen by the caller or the datapath). `tsNs` is wall-clock time in
 * nanoseconds since the Unix epoch (see KernelClock); `origLen` is the frame's
 * length on the wire, >= data.length.
 */
export function pcapRecord(tsNs: bigint, data: Buffer, origLen: number = data.length): Buffer {
  checkLengths(data, origLen);
  const [s, ns] = splitNs(tsNs);
  const b = Buffer.allocUnsafe(PCAP_RECORD_HEADER_LEN + data.length);
  b.writeUInt32LE(s, 0);
  b.writeUInt32LE(ns, 4);
  b.writeUInt32LE(data.length, 8);
  b.writeUInt32LE(origLen, 12);
  data.copy(b, PCAP_RECORD_HEADER_LEN);
  return b;
}

// ---- pcapng ----------------------------------------------------------------------

/** One option value: its code and bytes (UTF-8 for strings). */
export interface PcapngOption {
  code: number;
  value: Buffer;
}

/** Option list bytes: each option code, length, value padded to 32 bits, then opt_endofopt. Empty when there are none. */
export function pcapngOptions(options: readonly PcapngOption[]): Buffer {
  if (options.length === 0) return Buffer.alloc(0);
  let len = 4; // opt_endofopt
  for (const o of options) {
    if (o.value.length > 0xffff) throw new RangeError(`pcapng option ${o.code} is longer than 65535 bytes`);
    len += 4 + pad4(o.value.length);
  }
  const b = Buffer.alloc(len); // zero-filled: padding and opt_endofopt are zeros
  let off = 0;
  for (const o of options) {
    b.writeUInt16LE(o.code, off);
    b.writeUInt16LE(o.value.length, off + 2);
    o.value.copy(b, off + 4);
    off += 4 + pad4(o.value.length);
  }
  return b;
}

/** A block: type, total length, body (padded to 32 bits), total length again. */
function block(type: number, body: Buffer): Buffer {
  const total = 12 + pad4(body.length);
  const b = Buffer.alloc(total);
  b.writeUInt32LE(type, 0);
  b.writeUInt32LE(total, 4);
  body.copy(b, 8);
  b.writeUInt32LE(total, total - 4);
  return b;
}

const text = (code: number, s: string): PcapngOption => ({ code, value: Buffer.from(s, 'utf8') });

/** Section Header Block: little-endian, version 1.0, section length unknown (-1), shb_userappl "xdplb". */
export function pcapngSectionHeader(userappl = 'xdplb'): Buffer {
  const fixed = Buffer.alloc(16);
  fixed.writeUInt32LE(PCAPNG_BYTE_ORDER_MAGIC, 0);
  fixed.writeUInt16LE(1, 4); // major
  fixed.writeUInt16LE(0, 6); // minor
  fixed.writeBigInt64LE(-1n, 8); // section length: not specified (we stream)
  const opts = userappl ? [text(SHB_USERAPPL, userappl)] : [];
  return block(PCAPNG_SHB, Buffer.concat([fixed, pcapngOptions(opts)]));
}

export interface InterfaceDescription {
  name: string;
  description?: string;
  snaplen: number;
  linktype?: number;
}

/** Interface Description Block with if_name, if_description, if_tsresol = 9 (ns). */
export function pcapngInterface(i: InterfaceDescription): Buffer {
  checkSnaplen(i.snaplen);
  const fixed = Buffer.alloc(8);
  fixed.writeUInt16LE(i.linktype ?? LINKTYPE_ETHERNET, 0);
  // 2: reserved
  fixed.writeUInt32LE(i.snaplen, 4);
  const opts = [text(IF_NAME, i.name)];
  if (i.description) opts.push(text(IF_DESCRIPTION, i.description));
  opts.push({ code: IF_TSRESOL, value: Buffer.from([9]) }); // 10^-9 s
  return block(PCAPNG_IDB, Buffer.concat([fixed, pcapngOptions(opts)]));
}

export interface EnhancedPacket {
  /** index of the interface in the section (CAPTURE_INTERFACES[point].id) */
  interfaceId: number;
  /** wall-clock ns since the epoch (the interfaces' if_tsresol is 9) */
  tsNs: bigint;
  data: Buffer;
  origLen?: number;
  /** epb_flags: EPB_FLAG_INBOUND / EPB_FLAG_OUTBOUND (0 = leave out) */
  flags?: number;
  comment?: string;
}

/**
 * Enhanced Packet Block: interface, 64-bit timestamp, lengths, the data padded to
 * 32 bits, options (epb_flags, opt_comment). Written in one allocation: this is
 * the per-packet path of a pcapng recording.
 */
export function pcapngPacket(p: EnhancedPacket): Buffer {
  const origLen = p.origLen ?? p.data.length;
  checkLengths(p.data, origLen);
  if (p.tsNs < 0n || p.tsNs >= 1n << 64n) throw new RangeError(`timestamp must be in 0..2^64-1 ns, got ${p.tsNs}`);
  const capLen = p.data.length;
  const commentLen = p.comment ? Buffer.byteLength(p.comment, 'utf8') : 0;
  if (commentLen > 0xffff) throw new RangeError(`pcapng option ${OPT_COMMENT} is longer than 65535 bytes`);
  const hasOptions = !!p.flags || commentLen > 0;
  const dataEnd = 28 + pad4(capLen);
  const total = dataEnd + (p.flags ? 8 : 0) + (commentLen ? 4 + pad4(commentLen) : 0) + (hasOptions ? 4 : 0) + 4;
  const b = Buffer.allocUnsafe(total);
  b.writeUInt32LE(PCAPNG_EPB, 0);
  b.writeUInt32LE(total, 4);
  b.writeUInt32LE(p.interfaceId, 8);
  b.writeUInt32LE(Number(p.tsNs >> 32n), 12); // timestamp, upper 32 bits
  b.writeUInt32LE(Number(p.tsNs & 0xffffffffn), 16); // lower 32 bits
  b.writeUInt32LE(capLen, 20);
  b.writeUInt32LE(origLen, 24);
  p.data.copy(b, 28);
  b.fill(0, 28 + capLen, dataEnd);
  let off = dataEnd;
  if (p.flags) {
    b.writeUInt16LE(EPB_FLAGS, off);
    b.writeUInt16LE(4, off + 2);
    b.writeUInt32LE(p.flags, off + 4);
    off += 8;
  }
  if (commentLen) {
    b.writeUInt16LE(OPT_COMMENT, off);
    b.writeUInt16LE(commentLen, off + 2);
    b.write(p.comment!, off + 4, 'utf8');
    b.fill(0, off + 4 + commentLen, off + 4 + pad4(commentLen));
    off += 4 + pad4(commentLen);
  }
  if (hasOptions) {
    b.writeUInt32LE(0, off); // opt_endofopt
    off += 4;
  }
  b.writeUInt32LE(total, off);
  return b;
}

/** The comment of a captured packet: "rule 3 web; backend 198.51.100.11". */
export function packetComment(rule: { id: number; name?: string }, backend?: string): string {
  const r = `rule ${rule.id}${rule.name ? ` ${rule.name}` : ''}`;
  return backend ? `${r}; backend ${backend}` : r;
}

// ---- the encoder -------------------------------------------------------------------

export interface PcapEncoderOptions {
  format: CaptureFormat;
  /** the recording's cap length: longer frames are cut to it (their original length is kept) */
  snaplen: number;
  linktype?: number;
}

export interface CapturedPacket {
  /** wall-clock ns since the epoch (KernelClock.toWallNs of the datapath's time) */
  tsNs: bigint;
  /** the copied bytes; cut to the snaplen here if longer */
  data: Buffer;
  /** length of the frame at the capture point; default data.length */
  origLen?: number;
  point: CapturePoint;
  /** pcapng only: opt_comment, e.g. packetComment(rule, backend) */
  comment?: string;
}

/**
 * Encodes one capture (a file or a stream) in either format, independent of
 * where the bytes go: header() once at the start (and again at the start of every
 * rotated file), then packet() for each frame. A Ctrl-C between two packet()
 * buffers leaves a valid file: there is nothing to finish at the end.
 */
export class PcapEncoder {
  readonly format: CaptureFormat;
  readonly snaplen: number;
  readonly linktype: number;

  constructor(opts: PcapEncoderOptions) {
    if (opts.format !== 'pcap' && opts.format !== 'pcapng')
      throw new RangeError(`format must be "pcap" or "pcapng", got ${JSON.stringify(opts.format)}`);
    checkSnaplen(opts.snaplen);
    this.format = opts.format;
    this.snaplen = opts.snaplen;
    this.linktype = opts.linktype ?? LINKTYPE_ETHERNET;
  }

  /** The file extension of the format, with its dot. */
  get extension(): string {
    return this.format === 'pcap' ? '.pcap' : '.pcapng';
  }

  /** PCAP: the file header. pcapng: the section header and one interface per capture point. */
  header(): Buffer {
    if (this.format === 'pcap') return pcapHeader(this.snaplen, this.linktype);
    return Buffer.concat([
      pcapngSectionHeader(),
      ...CAPTURE_POINTS.map((p) =>
        pcapngInterface({
          name: CAPTURE_INTERFACES[p].name,
          description: CAPTURE_INTERFACES[p].description,
          snaplen: this.snaplen,
          linktype: this.linktype,
        }),
      ),
    ]);
  }

  /**
   * One frame straight from a batch of samples: `capLen` bytes of `src` at
   * `start`, at wall time `sec` s + `nsec` ns since the epoch. The same bytes as
   * packet(); a PCAP record takes no BigInt and no intermediate buffer, which is
   * the recorder's per-packet path.
   */
  packetFrom(sec: number, nsec: number, src: Buffer, start: number, capLen: number, origLen: number, point: CapturePoint, comment?: string): Buffer {
    if (this.format === 'pcapng') {
      const tsNs = BigInt(sec) * NS_PER_S + BigInt(nsec);
      return this.packet({ tsNs, data: src.subarray(start, start + capLen), origLen, point, comment });
    }
    if (!Number.isInteger(origLen) || origLen < capLen || origLen > U32_MAX)
      throw new RangeError(`original length must be an integer >= the captured length ${capLen}, got ${origLen}`);
    if (!Number.isInteger(sec) || sec < 0 || sec > U32_MAX) throw new RangeError(`timestamp must be in 1970..2106, got ${sec} s`);
    const len = Math.min(capLen, this.snaplen);
    const b = Buffer.allocUnsafe(PCAP_RECORD_HEADER_LEN + len);
    b.writeUInt32LE(sec, 0);
    b.writeUInt32LE(nsec, 4);
    b.writeUInt32LE(len, 8);
    b.writeUInt32LE(origLen, 12);
    src.copy(b, PCAP_RECORD_HEADER_LEN, start, start + len);
    return b;
  }

  /** One frame: a PCAP record, or a pcapng Enhanced Packet Block on its point's interface. */
  packet(p: CapturedPacket): Buffer {
    const origLen = p.origLen ?? p.data.length;
    checkLengths(p.data, origLen);
    const data = p.data.length > this.snaplen ? p.data.subarray(0, this.snaplen) : p.data;
    if (this.format === 'pcap') return pcapRecord(p.tsNs, data, origLen);
    const iface = CAPTURE_INTERFACES[p.point];
    if (!iface) throw new RangeError(`capture point must be "in" or "out", got ${JSON.stringify(p.point)}`);
    return pcapngPacket({
      interfaceId: iface.id,
      tsNs: p.tsNs,
      data,
      origLen,
      flags: p.point === 'in' ? EPB_FLAG_INBOUND : EPB_FLAG_OUTBOUND,
      comment: p.comment,
    });
  }
}

// ---- the kernel clock ----------------------------------------------------------------

/** Clock readings KernelClock calibrates with; replaceable in tests. */
export interface ClockSources {
  /** CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns() */
  monotonicNs(): bigint;
  /** wall-clock ms since the epoch, as Date.now() */
  wallMs(): number;
}

export const SYSTEM_CLOCKS: ClockSources = {
  monotonicNs: () => process.hrtime.bigint(),
  wallMs: () => Date.now(),
};

export interface CalibrateOptions {
  /** how many offsets to measure; the one with the tightest bracket is kept (default 5) */
  samples?: number;
  /**
   * "date" (default): the current wall clock, read with Date.now() at the instant
   * its millisecond changes. "performance": performance.timeOrigin +
   * performance.now() — sub-millisecond, but its wall-clock part is read once at
   * process start, so it misses every step or slew of the system clock since.
   */
  source?: 'date' | 'performance';
  clocks?: ClockSources;
}

/**
 * Turns the datapath's timestamps — bpf_ktime_get_ns(), CLOCK_MONOTONIC in ns —
 * into wall-clock ns since the Unix epoch: wall = monotonic + offset.
 *
 * Node's process.hrtime.bigint() is CLOCK_MONOTONIC on Linux (libuv's
 * uv_hrtime), the very clock the kernel stamps the samples with, so the offset
 * can be measured in user space. Date.now() only has millisecond resolution, so
 * one reading says little; but the instant at which its value changes is a
 * millisecond boundary of the wall clock. calibrate() reads monotonic, wall,
 * monotonic in a tight loop until the wall value ticks: that boundary lies
 * between the monotonic reading before the previous read and the one after this
 * read (the bracket, typically well under a microsecond). The offset is
 * boundary − midpoint of the bracket, off by at most half the bracket. This is
 * repeated a few times and the sample with the tightest bracket is kept (a
 * preemption or a GC pause widens a bracket, never narrows it).
 *
 * The wall clock can be stepped or slewed (NTP) while the monotonic clock runs on;
 * the daemon calibrates again from time to time (a calibration costs up to
 * `samples` ms of one thread) and at the start of every recording.
 */
export class KernelClock {
  /** wall ns − monotonic ns */
  readonly offsetNs: bigint;
  /** half the width of the bracket the offset was measured in: its worst-case error, ns */
  readonly errorNs: bigint;
  /** monotonic time of the calibration */
  readonly calibratedAtNs: bigint;

  constructor(offsetNs: bigint, errorNs = 0n, calibratedAtNs = 0n) {
    this.offsetNs = offsetNs;
    this.errorNs = errorNs;
    this.calibratedAtNs = calibratedAtNs;
  }

  /** Wall-clock ns since the epoch of a bpf_ktime_get_ns() value. */
  toWallNs(ktimeNs: bigint): bigint {
    return ktimeNs + this.offsetNs;
  }

  /** The current time in bpf_ktime_get_ns() terms. */
  static nowNs(clocks: ClockSources = SYSTEM_CLOCKS): bigint {
    return clocks.monotonicNs();
  }

  static calibrate(opts: CalibrateOptions = {}): KernelClock {
    const samples = opts.samples ?? 5;
    if (!Number.isInteger(samples) || samples < 1) throw new RangeError(`samples must be a positive integer, got ${samples}`);
    const clocks = opts.clocks ?? SYSTEM_CLOCKS;
    let best: { offset: bigint; width: bigint; at: bigint } | undefined;
    for (let i = 0; i < samples; i++) {
      const s = opts.source === 'performance' ? performanceSample(clocks) : dateEdgeSample(clocks);
      if (!best || s.width < best.width) best = s;
    }
    return new KernelClock(best!.offset, best!.width / 2n, best!.at);
  }
}

/** One offset from the instant Date.now() ticks to its next millisecond. */
function dateEdgeSample(c: ClockSources): { offset: bigint; width: bigint; at: bigint } {
  // Spin up to ~3 ms (the tick is <= 1 ms away; the margin covers preemption).
  let prevBefore = c.monotonicNs();
  let prevWall = c.wallMs();
  const deadline = prevBefore + 3_000_000n;
  for (;;) {
    const before = c.monotonicNs();
    const wall = c.wallMs();
    const after = c.monotonicNs();
    if (wall !== prevWall) {
      // the boundary `wall` ms lies in (prevBefore, after]
      const width = after - prevBefore;
      const mid = prevBefore + width / 2n;
      return { offset: BigInt(wall) * 1_000_000n - mid, width, at: mid };
    }
    prevBefore = before;
    prevWall = wall;
    if (after > deadline) {
      // A wall clock that does not tick (a test clock, a frozen VM): fall back to
      // the plain reading, ±1 ms.
      const mid = before + (after - before) / 2n;
      return { offset: BigInt(wall) * 1_000_000n + 500_000n - mid, width: after - before + 1_000_000n, at: mid };
    }
  }
}

/** One offset from performance.timeOrigin + performance.now() (see CalibrateOptions.source). */
function performanceSample(c: ClockSources): { offset: bigint; width: bigint; at: bigint } {
  const before = c.monotonicNs();
  const wallNs = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
  const after = c.monotonicNs();
  const width = after - before;
  const mid = before + width / 2n;
  return { offset: wallNs - mid, width, at: mid };
}
