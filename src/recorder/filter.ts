// Recorder filters: the text operators type, the Hubble-Recorder-like API message,
// and their compilation into what the datapath looks up — a few masks and one hash
// of masked keys — so that the cost per packet grows with the number of distinct
// filter shapes (masks), not with the number of filters.
//
// Filter text (CLI):  'src=10.0.0.0/8 dst=192.0.2.10/32 sport=1234 dport=80 proto=tcp'
//   src, dst  IPv4 or IPv6 prefix; a bare address is /32 or /128; both of one family;
//             host bits must be clear (10.0.0.0/8, not 10.1.2.3/8)
//   sport, dport  0..65535, exact
//   proto     tcp | udp | icmp | icmpv6 | any | 0..255
//   Every key is optional; an absent key matches anything. A filter without
//   prefixes matches both families.
//
// What a filter is matched against: the datapath's flow tuple (struct packet's
// `flow`), the client -> VIP tuple at both capture points. For an ICMP error that
// quotes a flow, that tuple is the quoted flow's (its protocol and ports); for
// other ICMP packets the ports are 0.
//
// The maps (xdp/layout.h, struct xdplb_rec_key and its neighbours):
//   xdplb_rec_masks    array of REC_MAX_MASKS struct xdplb_rec_key: mask slot i
//                      (an unused slot below the count holds a zero mask)
//   xdplb_rec_entries  hash, key struct xdplb_rec_key (a masked tuple, `mask` =
//                      its mask's slot), value struct xdplb_rec_entry: the
//                      rules (bit r = rule r) and the largest cap length of them
//   xdplb_rec_config   the mask count n_masks (CompiledFilters.maskSlots) and gen
//
// The program, at each capture point: for i in 0..n_masks-1 (constant bound 32):
//   key = flow AND mask[i] (byte by byte, or as 5 x u64 words), key.mask = i,
//   rules |= lookup(entries, key). Every mask is looked up (a packet may match
//   several rules through different masks); a packet with rules != 0 is copied
//   once, up to the largest cap length of its rules, with the 64-bit `rules`,
//   and the daemon hands the copy to each recording whose bit is set. The mask
//   index in the key keeps masks apart: without it, the key 10.0.0.0 made by a
//   /8 mask would hit an entry 10.0.0.0 of a /16 mask. (The datapath spares the
//   lookups no entry answers: a per-CPU memo of each tuple's last match, and a
//   filter with two bits per entry key, recFilterBits() below; xdp/recorder.h.)
//
// Changing the set of recordings: compileFilters(..., { previous }) keeps the
// slots of surviving shapes, and diffCompiled(prev, next) lists the map writes
// in an order that never matches a packet to a rule it matches under neither
// the old nor the new set (deletes, masks, count, upserts).
//
// A rule is one running recording: up to 64 at once (REC_MAX_RULES), each with its
// own filters; identical masked keys of several filters or recordings share one
// entry whose `rules` is the OR of their bits.

import { XdplbError } from '../control/errors';
import { Address, type Family } from '../net/address';
import {
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
  REC_FILTER_WORDS,
  REC_FILTER_WORDS_LOG,
  REC_KEY,
  REC_MAX_ENTRIES,
  REC_MAX_MASKS,
  REC_MAX_RULES,
} from '../datapath/layout';

/** Bytes of a tuple, key or mask: struct xdplb_rec_key. */
const TUPLE_LEN = REC_KEY.size;
const MASK_BYTE = REC_KEY.fields.mask.offset;

const PROTO_NAMES: Readonly<Record<string, number>> = {
  icmp: IPPROTO_ICMP,
  tcp: IPPROTO_TCP,
  udp: IPPROTO_UDP,
  icmpv6: IPPROTO_ICMPV6,
};

// ---- types --------------------------------------------------------------------------

export interface Prefix {
  family: Family;
  /** 16 bytes, network order; IPv4 in the first 4, the rest 0; host bits 0 */
  bytes: Uint8Array;
  /** prefix length: 0..32 or 0..128 */
  len: number;
}

/** One filter. An absent field matches anything. */
export interface Filter {
  /** the family of its prefixes; undefined when it has none (matches IPv4 and IPv6) */
  family?: Family;
  src?: Prefix;
  dst?: Prefix;
  sport?: number;
  dport?: number;
  proto?: number;
}

/** A packet's flow tuple, or a key or mask in the datapath's layout. */
export interface Tuple {
  /** 4 or 6 (a mask: 0xff or 0) */
  family: number;
  proto: number;
  sport: number;
  dport: number;
  /** index of the mask (keys of the entries map only; 0 elsewhere) */
  mask?: number;
  /** 16 bytes each, IPv4 in the first 4 */
  src: Uint8Array;
  dst: Uint8Array;
}

/** What a mask keeps of a tuple: one per distinct filter shape. */
export interface MaskShape {
  /** 0 when the filters of this shape have no prefixes (either family) */
  family: 0 | Family;
  srcLen: number;
  dstLen: number;
  sport: boolean;
  dport: boolean;
  proto: boolean;
}

export interface Mask extends MaskShape {
  /** its slot in the datapath's mask array, and the `mask` byte of its keys */
  index: number;
  /** the AND mask in tuple layout */
  bits: Tuple;
}

export interface CompiledEntry {
  maskIndex: number;
  /** the masked key (key.mask = maskIndex) */
  key: Tuple;
  /** the rules whose filters produced this key, ascending */
  ruleIds: number[];
  /** bit r set for each rule r: the value of the datapath's entry (u64) */
  ruleMask: bigint;
}

export interface CompiledFilters {
  /** ascending by index; without `previous`, indices 0..masks.length-1 */
  masks: Mask[];
  /** the datapath's mask count: highest index + 1 (unused slots below it hold a zero mask) */
  maskSlots: number;
  entries: CompiledEntry[];
}

/** The filters of one rule (one running recording). */
export interface RuleFilters {
  ruleId: number;
  filters: readonly Filter[];
}

export interface CompileOptions {
  /** default REC_MAX_MASKS (32) */
  maxMasks?: number;
  /**
   * The compilation in force in the datapath: shapes it has keep their mask
   * slot, and new shapes avoid the slots it uses where they can, so that
   * diffCompiled() touches only what changed.
   */
  previous?: CompiledFilters;
  /** default REC_MAX_ENTRIES (131072), the size of the datapath's hash */
  maxEntries?: number;
}

// ---- parsing ------------------------------------------------------------------------

const KEYS = ['src', 'dst', 'sport', 'dport', 'proto'] as const;
type Key = (typeof KEYS)[number];

/** Parses "10.0.0.0/8", "2001:db8::/32" or a bare address; a string says why it is not a prefix. */
export function parsePrefix(text: string): Prefix | string {
  const slash = text.indexOf('/');
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const a = Address.parse(addrText);
  if (typeof a === 'string') return 'not an IPv4/IPv6 prefix';
  const max = a.bits;
  let len: number = max;
  if (slash >= 0) {
    const lenText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(lenText)) return 'not an IPv4/IPv6 prefix';
    len = Number(lenText);
    if (len > max) return `prefix length ${len} > ${max}`;
  }
  if (!a.hostBitsClear(len)) return `${text} has host bits set; write ${a.network(len).text}/${len}`;
  const bytes = new Uint8Array(16);
  bytes.set(a.bytes, 0);
  return { family: a.family, bytes, len };
}

/** "10.0.0.0/8", "2001:db8::/32" */
export function prefixText(p: Prefix): string {
  return `${Address.fromBytes(p.bytes.subarray(0, p.family === 4 ? 4 : 16)).text}/${p.len}`;
}

function parsePort(v: string): number | string {
  if (!/^\d{1,5}$/.test(v)) return 'not a port number (0..65535)';
  const n = Number(v);
  return n > 65535 ? 'not a port number (0..65535)' : n;
}

function parseProto(v: string): number | undefined | string {
  const lower = v.toLowerCase();
  if (lower === 'any') return undefined;
  if (lower in PROTO_NAMES) return PROTO_NAMES[lower];
  if (/^\d{1,3}$/.test(v) && Number(v) <= 255) return Number(v);
  return 'not a protocol (tcp, udp, icmp, icmpv6, any or 0..255)';
}

/** The family of a filter's prefixes, the ports' sense, or why not. */
function checkFilter(f: Filter, names: Record<'src' | 'dst' | 'sport' | 'dport', string>): string | undefined {
  if (f.src && f.dst && f.src.family !== f.dst.family)
    return `${names.dst}: an IPv${f.dst.family} prefix with an IPv${f.src.family} ${names.src}; both must be of one family`;
  if (f.proto === IPPROTO_ICMP && f.family === 6) return `proto icmp with IPv6 prefixes; use icmpv6`;
  if (f.proto === IPPROTO_ICMPV6 && f.family === 4) return `proto icmpv6 with IPv4 prefixes; use icmp`;
  if (f.proto !== undefined && f.proto !== IPPROTO_TCP && f.proto !== IPPROTO_UDP) {
    const p = protoText(f.proto);
    if (f.sport !== undefined) return `${names.sport}: proto ${p} has no ports`;
    if (f.dport !== undefined) return `${names.dport}: proto ${p} has no ports`;
  }
  return undefined;
}

function filterError(text: string, reason: string, field?: string): XdplbError {
  return new XdplbError('INVALID_ARGUMENT', `filter ${JSON.stringify(text)}: ${reason}`, { field });
}

/**
 * Parses one filter of the CLI: space-separated key=value tokens, each key at
 * most once. Throws an INVALID_ARGUMENT XdplbError naming the filter and the key:
 *   filter "src=10.0.0.300/8": src: not an IPv4/IPv6 prefix
 * (`field`, when given, is put in front: "filters[1]: filter ...").
 */
export function parseFilter(text: string, field?: string): Filter {
  const f: Filter = {};
  const seen = new Set<string>();
  for (const token of text.trim().split(/\s+/).filter((x) => x !== '')) {
    const eq = token.indexOf('=');
    if (eq <= 0) throw filterError(text, `${token}: not key=value (keys: ${KEYS.join(', ')})`, field);
    const key = token.slice(0, eq).toLowerCase();
    const value = token.slice(eq + 1);
    if (!(KEYS as readonly string[]).includes(key))
      throw filterError(text, `${token.slice(0, eq)}: unknown key (keys: ${KEYS.join(', ')})`, field);
    if (seen.has(key)) throw filterError(text, `${key}: given twice`, field);
    seen.add(key);
    switch (key as Key) {
      case 'src':
      case 'dst': {
        const p = parsePrefix(value);
        if (typeof p === 'string') throw filterError(text, `${key}: ${p}`, field);
        f[key as 'src' | 'dst'] = p;
        break;
      }
      case 'sport':
      case 'dport': {
        const p = parsePort(value);
        if (typeof p === 'string') throw filterError(text, `${key}: ${p}`, field);
        f[key as 'sport' | 'dport'] = p;
        break;
      }
      case 'proto': {
        const p = parseProto(value);
        if (typeof p === 'string') throw filterError(text, `proto: ${p}`, field);
        if (p !== undefined) f.proto = p;
        break;
      }
    }
  }
  return finish(f, (why) => filterError(text, why, field), { src: 'src', dst: 'dst', sport: 'sport', dport: 'dport' });
}

function finish(f: Filter, fail: (why: string) => XdplbError, names: Record<'src' | 'dst' | 'sport' | 'dport', string>): Filter {
  const family = f.src?.family ?? f.dst?.family;
  if (family !== undefined) f.family = family;
  const why = checkFilter(f, names);
  if (why) throw fail(why);
  return f;
}

/** The filter as text parseFilter reads back: "src=10.0.0.0/8 dport=80 proto=tcp" ("" matches everything). */
export function formatFilter(f: Filter): string {
  const parts: string[] = [];
  if (f.src) parts.push(`src=${prefixText(f.src)}`);
  if (f.dst) parts.push(`dst=${prefixText(f.dst)}`);
  if (f.sport !== undefined) parts.push(`sport=${f.sport}`);
  if (f.dport !== undefined) parts.push(`dport=${f.dport}`);
  if (f.proto !== undefined) parts.push(`proto=${protoText(f.proto)}`);
  return parts.join(' ');
}

function protoText(p: number): string {
  for (const [name, n] of Object.entries(PROTO_NAMES)) if (n === p) return name;
  return String(p);
}

/**
 * The API's Filter message (proto/xdplb/v1/recorder.proto, camelCase as
 * @grpc/proto-loader gives it, or snake_case as written in the .proto).
 */
export interface FilterMessage {
  sourceCidr?: string;
  destinationCidr?: string;
  sourcePort?: number | null;
  destinationPort?: number | null;
  /** CaptureProtocol: its name ("CAPTURE_PROTOCOL_TCP"), or the IP protocol number */
  protocol?: string | number;
  source_cidr?: string;
  destination_cidr?: string;
  source_port?: number | null;
  destination_port?: number | null;
}

/** The same Filter from the API's message; errors name the message field under `field` ("filters[0].source_cidr: ..."). */
export function filterFromMessage(m: FilterMessage, field = 'filter'): Filter {
  const f: Filter = {};
  const sub = (name: string) => `${field}.${name}`;
  const fail = (name: string, why: string) => XdplbError.invalid(sub(name), why);
  const cidr = (name: 'source_cidr' | 'destination_cidr', v: string | undefined): Prefix | undefined => {
    if (v === undefined || v === '') return undefined;
    const p = parsePrefix(v);
    if (typeof p === 'string') throw fail(name, `${JSON.stringify(v)}: ${p}`);
    return p;
  };
  const port = (name: 'source_port' | 'destination_port', v: number | null | undefined): number | undefined => {
    if (v === undefined || v === null) return undefined;
    if (!Number.isInteger(v) || v < 0 || v > 65535) throw fail(name, `${v} is not a port number (0..65535)`);
    return v;
  };
  const src = cidr('source_cidr', m.sourceCidr ?? m.source_cidr);
  const dst = cidr('destination_cidr', m.destinationCidr ?? m.destination_cidr);
  const sport = port('source_port', m.sourcePort ?? m.source_port);
  const dport = port('destination_port', m.destinationPort ?? m.destination_port);
  if (src) f.src = src;
  if (dst) f.dst = dst;
  if (sport !== undefined) f.sport = sport;
  if (dport !== undefined) f.dport = dport;
  const proto = m.protocol;
  if (typeof proto === 'string') {
    const name = proto.replace(/^CAPTURE_PROTOCOL_/, '').toLowerCase();
    if (name !== 'any' && !(name in PROTO_NAMES)) throw fail('protocol', `${JSON.stringify(proto)} is not a CaptureProtocol`);
    if (name !== 'any') f.proto = PROTO_NAMES[name];
  } else if (typeof proto === 'number') {
    if (!Number.isInteger(proto) || proto < 0 || proto > 255) throw fail('protocol', `${proto} is not an IP protocol number (0..255)`);
    if (proto !== 0) f.proto = proto; // 0 = CAPTURE_PROTOCOL_ANY
  }
  return finish(f, (why) => new XdplbError('INVALID_ARGUMENT', why.replace(/^(\w+): /, ''), { field: fieldOf(why, sub) }), {
    src: 'source_cidr',
    dst: 'destination_cidr',
    sport: 'source_port',
    dport: 'destination_port',
  });
}

const CAPTURE_PROTOCOLS: Readonly<Record<number, string>> = {
  [IPPROTO_ICMP]: 'CAPTURE_PROTOCOL_ICMP',
  [IPPROTO_TCP]: 'CAPTURE_PROTOCOL_TCP',
  [IPPROTO_UDP]: 'CAPTURE_PROTOCOL_UDP',
  [IPPROTO_ICMPV6]: 'CAPTURE_PROTOCOL_ICMPV6',
};

/** The API's Filter message of a filter (the inverse of filterFromMessage), canonical prefixes, protocol by name where it has one. */
export function filterToMessage(f: Filter): FilterMessage {
  const m: FilterMessage = {
    sourceCidr: f.src ? prefixText(f.src) : '',
    destinationCidr: f.dst ? prefixText(f.dst) : '',
    protocol: f.proto === undefined ? 'CAPTURE_PROTOCOL_ANY' : (CAPTURE_PROTOCOLS[f.proto] ?? f.proto),
  };
  if (f.sport !== undefined) m.sourcePort = f.sport;
  if (f.dport !== undefined) m.destinationPort = f.dport;
  return m;
}

function fieldOf(why: string, sub: (n: string) => string): string {
  const m = /^(\w+): /.exec(why);
  return m && m[1] !== 'proto' ? sub(m[1]) : sub('protocol');
}

// ---- tuples -------------------------------------------------------------------------

/** A packet tuple from text: tupleOf({src: '192.0.2.1', dst: '203.0.113.10', sport: 40000, dport: 80, proto: 6}). */
export function tupleOf(t: { src: string; dst: string; sport?: number; dport?: number; proto: number }): Tuple {
  const s = Address.parse(t.src);
  const d = Address.parse(t.dst);
  if (typeof s === 'string') throw new RangeError(`src: ${JSON.stringify(t.src)} ${s}`);
  if (typeof d === 'string') throw new RangeError(`dst: ${JSON.stringify(t.dst)} ${d}`);
  if (s.family !== d.family) throw new RangeError(`src ${t.src} and dst ${t.dst} are of different families`);
  const src = new Uint8Array(16);
  const dst = new Uint8Array(16);
  src.set(s.bytes);
  dst.set(d.bytes);
  return { family: s.family, proto: t.proto, sport: t.sport ?? 0, dport: t.dport ?? 0, src, dst };
}

/** The struct xdplb_rec_key of a tuple (into `into` when given). */
export function encodeTuple(t: Tuple, into?: Buffer): Buffer {
  return REC_KEY.encode({ family: t.family, proto: t.proto, sport: t.sport, dport: t.dport, mask: t.mask ?? 0, src: t.src.subarray(0, 16), dst: t.dst.subarray(0, 16) }, into);
}

/** The inverse of encodeTuple. */
export function decodeTuple(b: Buffer): Tuple {
  if (b.length !== TUPLE_LEN) throw new RangeError(`a tuple is ${TUPLE_LEN} bytes, got ${b.length}`);
  const k = REC_KEY.decode(b);
  const t: Tuple = { family: k.family, proto: k.proto, sport: k.sport, dport: k.dport, src: new Uint8Array(k.src), dst: new Uint8Array(k.dst) };
  if (k.mask) t.mask = k.mask;
  return t;
}

function maskBytes(bytes: Uint8Array, len: number): Uint8Array {
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) {
    const bits = Math.max(0, Math.min(8, len - 8 * i));
    out[i] = bytes[i] & ((0xff00 >> bits) & 0xff);
  }
  return out;
}

function prefixMask(len: number): Uint8Array {
  return maskBytes(new Uint8Array(16).fill(0xff), len);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return a.length === b.length;
}

// ---- the reference matcher ------------------------------------------------------------

function inPrefix(p: Prefix, addr: Uint8Array): boolean {
  return equalBytes(maskBytes(addr, p.len), p.bytes);
}

/** Whether a packet's tuple matches one filter: the plain reading of the filter, no masks. */
export function matches(f: Filter, t: Tuple): boolean {
  if (f.family !== undefined && t.family !== f.family) return false;
  if (f.proto !== undefined && t.proto !== f.proto) return false;
  if (f.sport !== undefined && t.sport !== f.sport) return false;
  if (f.dport !== undefined && t.dport !== f.dport) return false;
  if (f.src && !inPrefix(f.src, t.src)) return false;
  if (f.dst && !inPrefix(f.dst, t.dst)) return false;
  return true;
}

// ---- compilation ---------------------------------------------------------------------

export function shapeOf(f: Filter): MaskShape {
  return {
    family: f.family ?? 0,
    srcLen: f.src?.len ?? 0,
    dstLen: f.dst?.len ?? 0,
    sport: f.sport !== undefined,
    dport: f.dport !== undefined,
    proto: f.proto !== undefined,
  };
}

const shapeKey = (s: MaskShape) =>
  `${s.family}/${s.srcLen}/${s.dstLen}/${+s.sport}${+s.dport}${+s.proto}`;

function maskOf(s: MaskShape, index: number): Mask {
  return {
    ...s,
    index,
    bits: {
      family: s.family ? 0xff : 0,
      proto: s.proto ? 0xff : 0,
      sport: s.sport ? 0xffff : 0,
      dport: s.dport ? 0xffff : 0,
      src: prefixMask(s.srcLen),
      dst: prefixMask(s.dstLen),
    },
  };
}

/** key = tuple AND mask, in the datapath's byte layout, with the mask's index in key.mask. */
export function applyMask(tuple: Buffer, mask: Buffer, maskIndex: number): Buffer {
  const key = Buffer.allocUnsafe(TUPLE_LEN);
  for (let i = 0; i < TUPLE_LEN; i++) key[i] = tuple[i] & mask[i];
  key[MASK_BYTE] = maskIndex;
  return key;
}

function normalize(input: readonly Filter[] | readonly RuleFilters[]): RuleFilters[] {
  if (input.length === 0) return [];
  if ('filters' in input[0]) return input as RuleFilters[];
  return [{ ruleId: 0, filters: input as Filter[] }];
}

/**
 * Compiles filters into masks and masked keys. Given plain filters they all
 * belong to rule 0; given RuleFilters (one per running recording) each keeps its
 * rule id, 0..63. Filters of one shape share a mask. Mask slots: with
 * `opts.previous`, a shape it has keeps its slot and a new shape takes the
 * lowest slot free in both; otherwise slots are numbered in the order shapes
 * first appear. Identical masked keys merge into one entry carrying every rule
 * id. Throws RESOURCE_EXHAUSTED past maxMasks shapes or maxEntries entries,
 * INVALID_ARGUMENT for a rule id out of range. Nothing is half-compiled: it
 * returns all of it or throws.
 */
export function compileFilters(input: readonly Filter[] | readonly RuleFilters[], opts: CompileOptions = {}): CompiledFilters {
  const maxMasks = opts.maxMasks ?? REC_MAX_MASKS;
  const maxEntries = opts.maxEntries ?? REC_MAX_ENTRIES;
  const rules = normalize(input);

  // 1. the distinct shapes, in the order they first appear
  const shapes = new Map<string, MaskShape>();
  for (const rule of rules) {
    if (!Number.isInteger(rule.ruleId) || rule.ruleId < 0 || rule.ruleId >= REC_MAX_RULES)
      throw XdplbError.invalid('rule', `rule id must be in 0..${REC_MAX_RULES - 1}, got ${rule.ruleId}`);
    for (const f of rule.filters) {
      const shape = shapeOf(f);
      const sk = shapeKey(shape);
      if (!shapes.has(sk)) shapes.set(sk, shape);
    }
  }
  if (shapes.size > maxMasks) throw XdplbError.exhausted(`too many distinct filter shapes: ${shapes.size} > ${maxMasks}`, 'filters');

  // 2. their slots
  const slotOf = new Map<string, number>();
  const taken = new Set<number>();
  const before = new Map<string, number>();
  for (const m of opts.previous?.masks ?? []) before.set(shapeKey(m), m.index);
  for (const sk of shapes.keys()) {
    const i = before.get(sk);
    if (i !== undefined && i < maxMasks) {
      slotOf.set(sk, i);
      taken.add(i);
    }
  }
  const usedBefore = new Set(before.values());
  for (const sk of shapes.keys()) {
    if (slotOf.has(sk)) continue;
    let i = 0;
    while (i < maxMasks && (taken.has(i) || usedBefore.has(i))) i++;
    if (i === maxMasks) for (i = 0; taken.has(i); i++); // every free slot was in use before: reuse one
    slotOf.set(sk, i);
    taken.add(i);
  }
  const masks = [...shapes].map(([sk, shape]) => maskOf(shape, slotOf.get(sk)!)).sort((a, b) => a.index - b.index);
  const maskBufs: Buffer[] = [];
  for (const m of masks) maskBufs[m.index] = encodeTuple(m.bits);

  // 3. the entries
  const entries: CompiledEntry[] = [];
  const entryIndex = new Map<string, CompiledEntry>();
  const scratch = Buffer.alloc(TUPLE_LEN);
  for (const rule of rules) {
    const bit = 1n << BigInt(rule.ruleId);
    for (const f of rule.filters) {
      const mi = slotOf.get(shapeKey(shapeOf(f)))!;
      const key = applyMask(encodeTuple(filterTuple(f), scratch), maskBufs[mi], mi);
      const bytes = key.toString('latin1');
      const e = entryIndex.get(bytes);
      if (e) {
        if (!(e.ruleMask & bit)) {
          e.ruleMask |= bit;
          e.ruleIds.push(rule.ruleId);
          e.ruleIds.sort((a, b) => a - b);
        }
        continue;
      }
      if (entries.length >= maxEntries)
        throw XdplbError.exhausted(`too many filter entries: more than ${maxEntries}`, 'filters');
      const entry: CompiledEntry = { maskIndex: mi, key: decodeTuple(key), ruleIds: [rule.ruleId], ruleMask: bit };
      entryIndex.set(bytes, entry);
      entries.push(entry);
    }
  }
  const maskSlots = masks.length ? masks[masks.length - 1].index + 1 : 0;
  const compiled: CompiledFilters = { masks, maskSlots, entries };
  lookups.set(compiled, { maskBufs, index: entryIndex });
  return compiled;
}

/** The tuple whose masked form is the filter's key: its values, zero where it has none. */
function filterTuple(f: Filter): Tuple {
  return {
    family: f.family ?? 0,
    proto: f.proto ?? 0,
    sport: f.sport ?? 0,
    dport: f.dport ?? 0,
    src: f.src?.bytes ?? ZERO16,
    dst: f.dst?.bytes ?? ZERO16,
  };
}

const ZERO16 = new Uint8Array(16);

/** The masks (by slot) and the hash as byte strings, as the datapath holds them. */
interface Lookup {
  maskBufs: Buffer[];
  index: Map<string, CompiledEntry>;
}

const lookups = new WeakMap<CompiledFilters, Lookup>();

function lookupOf(c: CompiledFilters): Lookup {
  let l = lookups.get(c);
  if (!l) {
    l = { maskBufs: [], index: new Map() };
    for (const m of c.masks) l.maskBufs[m.index] = encodeTuple(m.bits);
    for (const e of c.entries) l.index.set(entryKey(e).toString('latin1'), e);
    lookups.set(c, l);
  }
  return l;
}

/** The datapath key of an entry (struct xdplb_rec_key, its mask slot in byte 6). */
export function entryKey(e: CompiledEntry): Buffer {
  return encodeTuple({ ...e.key, mask: e.maskIndex });
}

const ZERO_MASK = Buffer.alloc(TUPLE_LEN);

/**
 * The rules a packet matches, exactly as the datapath finds them: for every mask
 * slot below maskSlots, key = encodeTuple(packet) AND mask with key.mask = the
 * slot, looked up in the hash; the rule masks of the hits ORed together.
 * 0n = no match. (An unused slot holds a zero mask, whose key no entry has.)
 */
export function matchCompiled(c: CompiledFilters, packet: Tuple): bigint {
  const { maskBufs, index } = lookupOf(c);
  const tuple = encodeTuple({ ...packet, mask: 0 });
  let rules = 0n;
  for (let i = 0; i < c.maskSlots; i++) {
    const e = index.get(applyMask(tuple, maskBufs[i] ?? ZERO_MASK, i).toString('latin1'));
    if (e) rules |= e.ruleMask;
  }
  return rules;
}

/**
 * The map writes that take the datapath from `prev` (undefined: empty maps) to
 * `next`, in the order to apply them:
 *   1. deleteEntries — entries that go, and every entry of a slot whose shape
 *      changes (its bytes would mean something else under the new mask);
 *   2. masks — slots to write: a new shape's mask, or a zero mask for a slot
 *      that falls out of use;
 *   3. maskSlots — the new mask count;
 *   4. upsertEntries — new entries and entries whose rules changed.
 * In between, a packet matches only rules it matches under prev or under next:
 * recordings that stop lose their entries first, those that start gain theirs
 * last, and the others keep matching throughout.
 */
export interface CompiledDiff {
  deleteEntries: Buffer[];
  masks: Array<{ index: number; mask: Buffer }>;
  maskSlots: number;
  upsertEntries: Array<{ key: Buffer; ruleMask: bigint }>;
}

export function diffCompiled(prev: CompiledFilters | undefined, next: CompiledFilters): CompiledDiff {
  const prevMask = new Map<number, string>();
  for (const m of prev?.masks ?? []) prevMask.set(m.index, shapeKey(m));
  const nextMask = new Map<number, string>();
  for (const m of next.masks) nextMask.set(m.index, shapeKey(m));
  const changed = (i: number) => prevMask.get(i) !== nextMask.get(i);

  const nextIndex = lookupOf(next).index;
  const prevIndex = prev ? lookupOf(prev).index : new Map<string, CompiledEntry>();
  const deleteEntries: Buffer[] = [];
  for (const [k, e] of prevIndex) if (changed(e.maskIndex) || !nextIndex.has(k)) deleteEntries.push(Buffer.from(k, 'latin1'));

  const masks: CompiledDiff['masks'] = [];
  const slots = new Set([...prevMask.keys(), ...nextMask.keys()]);
  for (const i of [...slots].sort((a, b) => a - b)) {
    if (!changed(i)) continue;
    const m = next.masks.find((x) => x.index === i);
    masks.push({ index: i, mask: m ? encodeTuple(m.bits) : Buffer.alloc(TUPLE_LEN) });
  }

  const upsertEntries: CompiledDiff['upsertEntries'] = [];
  for (const [k, e] of nextIndex) {
    const old = prevIndex.get(k);
    if (!old || changed(e.maskIndex) || old.ruleMask !== e.ruleMask) upsertEntries.push({ key: Buffer.from(k, 'latin1'), ruleMask: e.ruleMask });
  }
  return { deleteEntries, masks, maskSlots: next.maskSlots, upsertEntries };
}

// ---- the filter in front of the hash -------------------------------------------------

/** xdp/recorder.h rec_filter_hash()'s multipliers, one per 64-bit word of a key. */
const FILTER_K = [0x9e3779b97f4a7c15n, 0xc2b2ae3d27d4eb4fn, 0x165667b19e3779f9n, 0x85ebca77c2b2ae63n, 0x27d4eb2f165667c5n];
const WORD_SHIFT = BigInt(64 - REC_FILTER_WORDS_LOG);

/**
 * Where xdp/recorder.h looks for a key (struct xdplb_rec_key, its mask slot in
 * byte 6) in xdplb_rec_filter: the hash is each little-endian 64-bit word
 * times its own odd constant, XORed; its top REC_FILTER_WORDS_LOG bits pick the
 * word, bits 44..49 and 38..43 the two bits of it (`bits`, one or two set).
 */
export function recFilterBits(key: Buffer): { word: number; bits: bigint } {
  let h = 0n;
  for (let i = 0; i < FILTER_K.length; i++) h ^= BigInt.asUintN(64, key.readBigUInt64LE(8 * i) * FILTER_K[i]);
  return { word: Number(h >> WORD_SHIFT), bits: (1n << ((h >> 44n) & 63n)) | (1n << ((h >> 38n) & 63n)) };
}

/** The filter words (xdplb_rec_filter) with the bits of every entry of `c` set. */
export function recFilterWords(c: CompiledFilters): BigUint64Array {
  const words = new BigUint64Array(REC_FILTER_WORDS);
  for (const e of c.entries) {
    const { word, bits } = recFilterBits(entryKey(e));
    words[word] |= bits;
  }
  return words;
}

/** The rule ids of a rule mask, ascending. */
export function ruleIdsOf(ruleMask: bigint): number[] {
  const ids: number[] = [];
  for (let r = 0; r < REC_MAX_RULES; r++) if (ruleMask & (1n << BigInt(r))) ids.push(r);
  return ids;
}
