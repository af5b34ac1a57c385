// The `bgp:` section of the configuration, by meaning: config/schema.ts has
// already checked its shape (keys, types, ranges), as it does for every other
// section; this checks what a schema cannot say (addresses, communities,
// duplicates) and normalises. Pure; loaded only when the file has a `bgp:` key.
import { quote, XdplbError } from '../control/errors';
import type { BgpPeer, BgpSettings, BgpVipAttributes, Family } from '../control/model';
import { parseDuration } from '../control/validate';
import { Address } from '../net/address';

export const DEFAULT_HOLD_TIME_S = 9;
export const DEFAULT_DRAIN_QUIET_MS = 5000;
export const DEFAULT_RESTART_TIME_S = 120;
const MAX_DRAIN_QUIET_MS = 3600_000;
const COMMUNITY_RE = /^([0-9]{1,5}):([0-9]{1,5})$/;

/** An "asn:value" standard community, each half 0..65535. */
function community(v: string, field: string): string {
  const m = COMMUNITY_RE.exec(v);
  if (!m || Number(m[1]) > 0xffff || Number(m[2]) > 0xffff)
    throw XdplbError.invalid(field, `${quote(v)} is not a community "asn:value" (two numbers 0..65535)`);
  return `${Number(m[1])}:${Number(m[2])}`;
}

function attributes(o: { communities?: string[]; med?: number }, field: string, dflt?: BgpVipAttributes): BgpVipAttributes {
  const communities = o.communities ? o.communities.map((c, i) => community(c, `${field}.communities[${i}]`)) : [...(dflt?.communities ?? [])];
  const med = o.med ?? dflt?.med;
  return med === undefined ? { communities } : { communities, med };
}

function address(v: string, field: string): Address {
  const a = Address.parse(v);
  if (typeof a === 'string') throw XdplbError.invalid(field, `${quote(v)} ${a}`);
  if (a.bytes.every((x) => x === 0)) throw XdplbError.invalid(field, `${quote(v)} is the unspecified address`);
  return a;
}

interface BgpInput {
  asn: number;
  routerId: string;
  peers: Array<{ address: string; asn: number; holdTime?: number; password?: string }>;
  communities?: string[];
  med?: number;
  vips?: Array<{ vip: string; communities?: string[]; med?: number }>;
  drainQuiet?: string | number;
  restartTime?: number;
}

/** The section (camelCase keys, shape-checked), normalised; errors name `field`.x. */
export function validateBgp(input: unknown, field = 'bgp'): BgpSettings {
  const o = input as BgpInput;
  const rid = address(o.routerId, `${field}.routerId`);
  if (rid.family !== 4) throw XdplbError.invalid(`${field}.routerId`, `${quote(o.routerId)} is not an IPv4 address (a BGP identifier is 32 bits)`);
  const seenPeers = new Map<string, number>();
  const peers = o.peers.map((p, i): BgpPeer => {
    const f = `${field}.peers[${i}]`;
    const a = address(p.address, `${f}.address`);
    const first = seenPeers.get(a.text);
    if (first !== undefined) throw XdplbError.duplicate(`${f}.address`, `peer ${a.text} is also ${field}.peers[${first}]`);
    seenPeers.set(a.text, i);
    // BIRD takes the password as a quoted string: what cannot be quoted is refused.
    if (p.password !== undefined && (!/^[\x20-\x7e]+$/.test(p.password) || /["\\]/.test(p.password)))
      throw XdplbError.invalid(`${f}.password`, 'must be printable ASCII without " or \\');
    const peer: BgpPeer = { address: a.text, asn: p.asn, holdTime: p.holdTime ?? DEFAULT_HOLD_TIME_S };
    if (p.password !== undefined) peer.password = p.password;
    return peer;
  });
  const defaults = attributes(o, field);
  const vips = new Map<string, BgpVipAttributes>();
  const seenVips = new Map<string, number>();
  (o.vips ?? []).forEach((v, i) => {
    const f = `${field}.vips[${i}]`;
    const a = address(v.vip, `${f}.vip`);
    const first = seenVips.get(a.text);
    if (first !== undefined) throw XdplbError.duplicate(`${f}.vip`, `VIP ${a.text} is also ${field}.vips[${first}]`);
    seenVips.set(a.text, i);
    vips.set(a.text, attributes(v, f, defaults));
  });
  return {
    asn: o.asn,
    routerId: rid.text,
    peers,
    defaults,
    vips,
    drainQuiet: o.drainQuiet === undefined ? DEFAULT_DRAIN_QUIET_MS : parseDuration(o.drainQuiet, `${field}.drainQuiet`, 1000, MAX_DRAIN_QUIET_MS),
    restartTime: o.restartTime ?? DEFAULT_RESTART_TIME_S,
  };
}

export function peerFamily(p: BgpPeer): Family {
  return Address.of(p.address).family;
}
