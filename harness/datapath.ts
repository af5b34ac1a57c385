// Fixtures for datapath tests: lb.bpf.o loaded into a private pin directory and
// programmed as the daemon programs it (LbDatapath, src/datapath/lb.ts, from
// node settings and service specs), and a namespace whose FIB has routes and
// permanent neighbours towards backend prefixes, so bpf_fib_lookup inside
// BPF_PROG_TEST_RUN answers. Everything is removed in t.teardown.
//
// Lb's own writes (service, backend, maglev, ...) are raw: map contents by
// hand, for what the daemon never writes (hand-made tables, ids, malformed or
// half-written states). A test of what the daemon writes goes through apply().
import * as path from 'node:path';
import * as os from 'node:os';
import * as fs from 'node:fs';
import pino from 'pino';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import * as L from '../src/datapath/layout';
import { LbDatapath } from '../src/datapath/lb';
import { backendKey, DEFAULT_NODE, type NodeSettings, type ServiceFlags, type ServiceSpec } from '../src/control/model';
import { validateService } from '../src/control/validate';
import { vipFilterBit } from '../src/datapath/flowhash';
import { DEFAULT_M } from '../src/maglev/table';
import { Address } from '../src/net/address';
import { REASONS, REASON } from '../src/datapath/reasons';
import { netns, onOneCpu, pinDir, sh, veth, ifindexIn, type Teardown } from './fixtures';
import { CHECK_FIELDS, macText, readIpv4, readIpv6, tsharkFields, tsharkVerbose } from './packets';
import { NO_BACKEND } from '../src/maglev';

/** A service as raw map contents: the tuple and the id it is written at. */
export interface RawService {
  vip: string;
  port: number;
  proto: number;
  id: number;
  flags?: number;
}

export interface RawBackend {
  id: number;
  address: string;
  port?: number;
  state?: number;
  /** the owning service's id; by default the one given before for this id, else the service whose Maglev table (maglev()) first named it */
  service?: number;
}

export class Lb {
  readonly prog: bpf.BpfProgram;
  readonly maps: Record<keyof typeof L.MAP_NAMES, bpf.BpfMap>;
  private readonly inner: bpf.BpfMap[] = [];
  /** backend id -> owning service, from the first Maglev table that named it */
  private readonly owners = new Map<number, number>();
  private readonly backendSpecs = new Map<number, RawBackend>();

  constructor(
    readonly obj: bpf.BpfObject,
    readonly pinRoot: string,
  ) {
    this.prog = obj.program(L.PROGRAM_NAME);
    const m = {} as Record<keyof typeof L.MAP_NAMES, bpf.BpfMap>;
    for (const [k, name] of Object.entries(L.MAP_NAMES)) m[k as keyof typeof L.MAP_NAMES] = obj.map(name);
    this.maps = m;
  }

  /** Raw: the node config as it is, with `c` written over it. */
  config(c: Partial<L.NodeConfig>): void {
    const now = L.decodeConfig(this.maps.config.lookup(L.u32(0))!);
    this.maps.config.update(L.u32(0), L.encodeConfig({ ...now, ...c }));
  }

  /**
   * Raw: a service at the id given, by id and its VIP's filter bit first,
   * then its service map, in the daemon's order. (The bit stays set when the
   * service goes: a bit too many only costs lookups.)
   */
  service(s: RawService): void {
    const k = L.serviceMapKey(s);
    const flags = s.flags ?? 0;
    this.maps.servicesById.update(L.u32(s.id), L.encodeServiceDef({ ...s, flags }));
    this.vipFilterBit(s.vip, true);
    this.maps[L.serviceMapOf(k)].update(k, L.encodeService({ id: s.id, flags }));
  }

  /** Sets or clears the VIP filter bit of an address. */
  vipFilterBit(vip: string, on: boolean): void {
    const bit = vipFilterBit(Address.of(vip));
    const key = L.u32(bit >>> 6);
    const word = this.maps.vipFilter.lookup(key)!.readBigUInt64LE(0);
    const mask = 1n << BigInt(bit & 63);
    this.maps.vipFilter.update(key, L.u64(on ? word | mask : word & ~mask));
  }

  deleteService(s: { vip: string; port: number; proto: number }): void {
    const k = L.serviceMapKey(s);
    const map = this.maps[L.serviceMapOf(k)];
    const v = map.lookup(k);
    map.delete(k);
    if (v) this.maps.servicesById.update(L.u32(L.decodeService(v).id), L.encodeServiceDef(undefined));
  }

  /** The VIP entry: whether the VIP answers ICMP echo (the daemon writes one for a VIP with services, so its filter bit is set). */
  vipEntry(vip: string, echo: boolean): void {
    this.vipFilterBit(vip, true);
    const k = L.vipEntryKey(vip);
    this.maps[L.serviceMapOf(k)].update(k, L.encodeService({ id: 0, flags: echo ? L.SVC_F_ICMP_ECHO : 0 }));
  }

  /**
   * Empties the flow cache on every CPU: what a test writes into the connection
   * table then counts at once, not only after the cache's bound.
   */
  flushFlowCache(): void {
    const n = this.maps.flowCache.maxEntries;
    const keys = Buffer.alloc(4 * n);
    for (let i = 0; i < n; i++) keys.writeUInt32LE(i, 4 * i);
    const size = L.LAYOUT.xdplb_flow_cache_entry.size * sys.possibleCpus();
    this.maps.flowCache.batchUpdatePacked(keys, Buffer.alloc(size * n), n);
  }

  backend(b: RawBackend): void {
    const serviceId = b.service ?? this.backendSpecs.get(b.id)?.service ?? this.owners.get(b.id) ?? 0;
    this.backendSpecs.set(b.id, { ...b, service: b.service ?? this.backendSpecs.get(b.id)?.service });
    this.maps.backends.update(L.u32(b.id), L.encodeBackend({ address: b.address, port: b.port ?? 0, state: b.state ?? L.BACKEND_ACTIVE, serviceId }));
  }

  deleteBackend(id: number): void {
    this.backendSpecs.delete(id);
    this.maps.backends.update(L.u32(id), L.encodeBackend({ address: '', port: 0, state: L.BACKEND_NONE, serviceId: 0 }));
  }

  /**
   * Installs a whole Maglev table for a service (a new inner map, swapped in
   * atomically). The backends it names become the service's, unless a test
   * gave them another owner.
   */
  maglev(serviceId: number, table: Uint32Array): void {
    for (const id of new Set(table)) {
      if (id === NO_BACKEND || this.owners.has(id)) continue;
      this.owners.set(id, serviceId);
      const b = this.backendSpecs.get(id);
      if (b && b.service === undefined) this.backend(b);
    }
    const inner = bpf.createMap({
      type: 'array',
      keySize: 4,
      valueSize: 4,
      maxEntries: table.length,
      flags: L.MAGLEV_INNER_FLAGS,
      name: `xdplbt_mg${serviceId}`,
    });
    const keys: Buffer[] = [];
    for (let i = 0; i < table.length; i++) keys.push(L.u32(i));
    inner.batchUpdate(keys, L.encodeMaglevTable(table));
    this.maps.maglev.update(L.u32(serviceId), L.u32(inner.fd));
    this.inner.push(inner);
  }

  /** Packets counted for a reason, summed over CPUs. */
  reason(name: string): bigint {
    const i = REASON[name];
    if (i === undefined) throw new Error(`unknown reason ${name}`);
    return L.sumCounters(this.maps.reasons.lookupPerCpu(L.u32(i))).packets;
  }

  /** All reason counters by name. */
  reasons(): Record<string, bigint> {
    const out: Record<string, bigint> = {};
    REASONS.forEach((r, i) => (out[r.name] = L.sumCounters(this.maps.reasons.lookupPerCpu(L.u32(i))).packets));
    return out;
  }

  serviceStats(id: number): L.Counter {
    return L.sumCounters(this.maps.serviceStats.lookupPerCpu(L.u32(id)));
  }

  backendStats(id: number): L.Counter {
    return L.sumCounters(this.maps.backendStats.lookupPerCpu(L.u32(id)));
  }

  run(data: Buffer, ingressIfindex?: number): bpf.TestRunResult {
    return this.prog.testRun({ data, ctx: ingressIfindex ? bpf.xdpContext(ingressIfindex) : undefined, dataSizeOut: data.length + 2048 });
  }

  /** The raw tables' maps closed: the rest belongs to whoever opened the object. */
  closeTables(): void {
    for (const m of this.inner) m.close();
  }

  close(): void {
    this.closeTables();
    for (const m of Object.values(this.maps)) m.close();
    this.prog.close();
    this.obj.close();
  }
}

/** lb.bpf.o loaded with its maps pinned in a fresh directory; closed and unpinned at teardown. */
export function openLb(t: Teardown, objPath = bpf.objectPath('lb')): Lb {
  const dir = pinDir(t);
  const lb = new Lb(bpf.openObject(objPath, { pinRoot: dir }), dir);
  t.teardown(() => lb.close());
  return lb;
}

/** A scratch file path for pcaps, removed at teardown. */
export function scratch(t: Teardown, name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplbt-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, name);
}

// ---- the FIB namespace ----
// One namespace, two veth pairs:
//   lb0 (ingress, "client side"): 192.0.2.2/24, 2001:db8::2/64; router 192.0.2.1 /
//       2001:db8::1 at ROUTER_MAC (permanent). Backend prefixes routed via the router:
//       198.51.100.0/26 and 2001:db8:100::/64 (XDP_TX: same interface),
//       198.51.100.64/26 and 2001:db8:164::/64 with route MTU PMTU_ROUTE_MTU.
//   lb1 (other interface): 198.51.100.254/25 on-link for 198.51.100.128/25 and
//       2001:db8:200::fe/64; neighbours BACKEND_MAC for .129-.139 and
//       2001:db8:200::1-b (XDP_REDIRECT, via the devmap).
//   198.51.100.140 and 2001:db8:200::ff: on-link, no neighbour (FIB no_neigh).
//   203.0.113.0/24 and 2001:db8:dead::/48: no route (FIB miss).
export const ROUTER_MAC = '02:00:00:00:01:01';
export const BACKEND_MAC = '02:00:00:00:02:02';
export const PMTU_ROUTE_MTU = 1400;

export interface FibNs {
  ns: string;
  lb0: number;
  lb1: number;
  lb0Mac: string;
  lb1Mac: string;
}

function macOf(ns: string, dev: string): string {
  const j = JSON.parse(sh('ip', '-n', ns, '-j', 'link', 'show', 'dev', dev)) as Array<{ address: string }>;
  return j[0].address;
}

export function fibNamespace(t: Teardown): FibNs {
  const ns = netns(t);
  const ip = (...a: string[]) => sh('ip', '-n', ns, ...a);
  veth(ns, ns, 'lb0', 'peer0');
  veth(ns, ns, 'lb1', 'peer1');
  sh('ip', 'netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', 'net.ipv6.conf.default.accept_dad=0');
  for (const d of ['lb0', 'lb1', 'peer0', 'peer1']) sh('ip', 'netns', 'exec', ns, 'sysctl', '-qw', `net.ipv6.conf.${d}.accept_dad=0`);
  ip('addr', 'add', '192.0.2.2/24', 'dev', 'lb0');
  ip('-6', 'addr', 'add', '2001:db8::2/64', 'dev', 'lb0', 'nodad');
  ip('neigh', 'replace', '192.0.2.1', 'lladdr', ROUTER_MAC, 'dev', 'lb0', 'nud', 'permanent');
  ip('-6', 'neigh', 'replace', '2001:db8::1', 'lladdr', ROUTER_MAC, 'dev', 'lb0', 'nud', 'permanent');
  ip('route', 'add', '198.51.100.0/26', 'via', '192.0.2.1', 'dev', 'lb0');
  ip('route', 'add', '198.51.100.64/26', 'via', '192.0.2.1', 'dev', 'lb0', 'mtu', 'lock', String(PMTU_ROUTE_MTU));
  ip('-6', 'route', 'add', '2001:db8:100::/64', 'via', '2001:db8::1', 'dev', 'lb0');
  ip('-6', 'route', 'add', '2001:db8:164::/64', 'via', '2001:db8::1', 'dev', 'lb0', 'mtu', 'lock', String(PMTU_ROUTE_MTU));
  ip('addr', 'add', '198.51.100.254/25', 'dev', 'lb1');
  ip('-6', 'addr', 'add', '2001:db8:200::fe/64', 'dev', 'lb1', 'nodad');
  for (let i = 129; i <= 139; i++) ip('neigh', 'replace', `198.51.100.${i}`, 'lladdr', BACKEND_MAC, 'dev', 'lb1', 'nud', 'permanent');
  for (let i = 1; i <= 11; i++) ip('-6', 'neigh', 'replace', `2001:db8:200::${i.toString(16)}`, 'lladdr', BACKEND_MAC, 'dev', 'lb1', 'nud', 'permanent');
  return { ns, lb0: ifindexIn(ns, 'lb0'), lb1: ifindexIn(ns, 'lb1'), lb0Mac: macOf(ns, 'lb0'), lb1Mac: macOf(ns, 'lb1') };
}

// ---- the standard world of the forwarding tests ----
export const VIP4 = '203.0.113.10';
export const VIP6 = '2001:db8:f00::10';
export const CLIENT4 = '192.0.2.100';
export const CLIENT6 = '2001:db8::100';
export const LB_SRC4 = '192.0.2.2';
export const LB_SRC6 = '2001:db8::2';
export const OUTER_TTL = 33;

export interface World {
  fib: FibNs;
  /** the daemon's programmer */
  dp: LbDatapath;
  /** LbDatapath.apply(), committed: the datapath holds exactly these services */
  apply(services: readonly ServiceSpec[]): Promise<void>;
  /** reads, counters, and raw writes of the same maps */
  lb: Lb;
  /** test run with lb0 as the ingress interface, inside the FIB namespace */
  run(frame: Buffer): bpf.TestRunResult;
  /** same, in a batch: one enter/leave of the namespace */
  runAll(frames: readonly Buffer[]): bpf.TestRunResult[];
  /** the size of the Maglev tables oneBackend() installs */
  maglevM: number;
}

/**
 * The FIB namespace and lb.bpf.o opened by LbDatapath as the daemon opens it,
 * from node settings: outer sources LB_SRC4 and LB_SRC6, TTL OUTER_TTL, each as
 * `config` says otherwise (an empty source: none for the family; MTU, flow
 * cache and connection-table lifetimes likewise); `maglevM` the Maglev size. The next-hop lifetime, which no node setting holds, is
 * written raw.
 */
export function world(t: Teardown, o: { maglevM?: number; config?: Partial<L.NodeConfig> } = {}): World {
  // per-CPU state (flow-cache slots, pending placements) must meet the next run
  onOneCpu(t);
  const fib = fibNamespace(t);
  const c = o.config ?? {};
  const source = (address: string, prefixLength: number | undefined, bits: number) => (address ? { address, prefixLength: prefixLength || bits } : undefined);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplbt-state-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const node: NodeSettings = {
    ...DEFAULT_NODE,
    interfaces: [],
    bpffs: pinDir(t),
    stateDir,
    maglevSize: o.maglevM || DEFAULT_NODE.maglevSize,
    outerSource: { ipv4: source(c.src4 ?? LB_SRC4, c.src4PrefixLen, 32), ipv6: source(c.src6 ?? LB_SRC6, c.src6PrefixLen, 128) },
    ttl: c.ttl ?? OUTER_TTL,
    mtu: c.mtu ?? 0,
    flowCache: !((c.flags ?? 0) & L.CFG_F_NO_FLOW_CACHE),
    conntrack: {
      tcpTimeout: c.ctTcpS ?? DEFAULT_NODE.conntrack.tcpTimeout,
      udpTimeout: c.ctUdpS ?? DEFAULT_NODE.conntrack.udpTimeout,
      closingTimeout: c.ctClosingS ?? DEFAULT_NODE.conntrack.closingTimeout,
    },
  };
  const dp = LbDatapath.open(node, pino({ level: 'silent' }));
  const lb = new Lb(dp['obj'], node.bpffs);
  t.teardown(() => {
    lb.closeTables();
    dp.uninstall();
  });
  if (c.nexthopTtlMs !== undefined) lb.config({ nexthopTtlMs: c.nexthopTtlMs });
  // devmap entries resolve the ifindex in the caller's namespace
  sys.withNetns(fib.ns, () => lb.maps.devmap.update(L.u32(fib.lb1), L.encodeDevmapVal({ ifindex: fib.lb1, progFd: 0 })));
  return {
    fib,
    dp,
    apply: async (services) => (await dp.apply(services)).commit(),
    lb,
    run: (frame) => sys.withNetns(fib.ns, () => lb.run(frame, fib.lb0)),
    runAll: (frames) => sys.withNetns(fib.ns, () => frames.map((f) => lb.run(f, fib.lb0))),
    maglevM: o.maglevM ?? DEFAULT_M,
  };
}

/** Raw: one service with one Maglev table filled with a single backend, at the ids given (what apply() decides for the daemon). */
export function rawOneBackend(w: World, s: RawService, b: RawBackend): void {
  w.lb.service(s);
  w.lb.backend(b);
  w.lb.maglev(s.id, new Uint32Array(w.maglevM).fill(b.id));
}

/** An encapsulated frame taken apart: Ethernet, outer header, inner IP packet. */
export interface Encapsulated {
  dstMac: string;
  srcMac: string;
  ethertype: number;
  outer4?: import('./packets').Ipv4Header;
  outer6?: import('./packets').Ipv6Header;
  inner: Buffer;
}

export function decap(frame: Buffer): Encapsulated {
  const ethertype = frame.readUInt16BE(12);
  const base = { dstMac: macText(frame.subarray(0, 6)), srcMac: macText(frame.subarray(6, 12)), ethertype };
  if (ethertype === 0x0800) {
    const outer4 = readIpv4(frame, 14);
    return { ...base, outer4, inner: frame.subarray(14 + outer4.ihl * 4) };
  }
  const outer6 = readIpv6(frame, 14);
  return { ...base, outer6, inner: frame.subarray(54) };
}

/** The IP packet inside a frame as sent (VLAN tags skipped, padding cut). */
export function ipPacket(frame: Buffer): Buffer {
  let off = 12;
  while (frame.readUInt16BE(off) === 0x8100 || frame.readUInt16BE(off) === 0x88a8) off += 4;
  const ip = frame.subarray(off + 2);
  const len = ip[0] >> 4 === 4 ? ip.readUInt16BE(2) : 40 + ip.readUInt16BE(4);
  return ip.subarray(0, len);
}

const TSHARK_ERROR = 0x800000;

export interface DecodedRow {
  frame: number;
  ip: string[];
  tcp: string[];
  udp: string[];
  icmp: string[];
  icmpv6: string[];
  malformed: boolean;
  errors: boolean;
  extra: string[];
}

/**
 * Decodes frames with tshark (checksum validation on) and asserts that each
 * decodes cleanly: no malformed packet, no error-level expert info, no bad
 * checksum. Returns the rows with any extra fields asked for. quotes: the
 * frames carry ICMP errors, whose quoted TCP/UDP header is not validated.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function tsharkCheck(
  t: { ok: (v: any, ...rest: any[]) => unknown },
  file: string,
  frames: readonly Buffer[],
  extra: readonly string[] = [],
  o: { quotes?: boolean } = {},
): DecodedRow[] {
  const checkL4 = !o.quotes;
  const rows = tsharkFields(file, frames, [...CHECK_FIELDS, ...extra], checkL4);
  const split = (s: string) => (s ? s.split(',') : []);
  const out = rows.map((r) => ({
    frame: Number(r[0]),
    ip: split(r[1]),
    tcp: split(r[2]),
    udp: split(r[3]),
    icmp: split(r[4]),
    icmpv6: split(r[5]),
    malformed: r[6] !== '',
    errors: split(r[7]).some((s) => Number(s) >= TSHARK_ERROR),
    extra: r.slice(CHECK_FIELDS.length),
  }));
  t.ok(out.length === frames.length, `tshark decoded ${out.length} of ${frames.length} frames`);
  const bad = out.filter((r) => r.malformed || r.errors || [...r.ip, ...r.tcp, ...r.udp, ...r.icmp, ...r.icmpv6].includes('0'));
  t.ok(bad.length === 0, bad.length ? `tshark found problems in frames ${bad.map((b) => b.frame).join(' ')}:\n${tsharkVerbose(file, bad.slice(0, 3).map((b) => frames[b.frame - 1]), checkL4)}` : 'tshark: no malformed frame, no bad checksum, no error');
  return out;
}

let specs = 0;

/** A service as a client hands it to the daemon, validated: backends as "address" or { address, port }. */
export function serviceSpec(o: {
  vip: string;
  port: number;
  protocol?: 'tcp' | 'udp';
  backends: ReadonlyArray<string | { address: string; port?: number; weight?: number }>;
  flags?: Partial<ServiceFlags>;
}): ServiceSpec {
  const backends = o.backends.map((b) => (typeof b === 'string' ? { address: b, port: o.port || 80 } : b));
  return validateService({ name: `s${++specs}`, vip: o.vip, port: o.port, protocol: o.protocol ?? 'tcp', flags: o.flags, backends });
}

/** The ids the daemon gave a service and its backends (in the spec's order). */
export function idsOf(w: World, spec: ServiceSpec): { service: number; backends: number[] } {
  const ids = w.dp.ids(spec);
  if (!ids) throw new Error(`${spec.name} is not installed`);
  return { service: ids.service, backends: spec.backends.map((b) => ids.backends.get(backendKey(b.address, b.port)) as number) };
}
