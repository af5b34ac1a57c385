// Datapath benchmark (root): ns per packet of the load balancer's XDP program
// under BPF_PROG_TEST_RUN, next to an empty XDP_TX program measured the same
// way in the same run, as a ratio. Figures, not a pass/fail check.
//   node dist/bench/datapath.js [runs] [repeat]
//
// A test run with `repeat` runs each iteration on the buffer the previous one
// left, so the load balancer is measured through bench/bpf/bench_lb.bpf.c:
// bench_lb saves the frame, calls xdplb_process() (the code of xdplb_main),
// restores head and bytes and counts the verdict; bench_noop is the same
// wrapper around a no-op; bench_empty is the baseline. Per round:
//   wrapper overhead = noop − empty
//   load balancer    = bench_lb − wrapper overhead
//   ratio            = load balancer / empty
// and the table gives the median of each over the rounds. Every run is checked:
// the wrapper's verdict counts (count == repeat for the expected verdict, no
// other), the load balancer's reason counters, the frame left in the buffer
// (the original one), the connection table (established: the entry exists and
// the service's Maglev table is swapped for one that only names a down
// backend, so any iteration that missed the entry would be dropped; new flow:
// the last flow's entry exists with the backend Maglev predicts, or for a SYN
// its pending placement in the flow cache, and no entry).
// New flows come as SYNs (placed, pending in the flow cache) and as ACKs that
// open a flow the load balancer has not seen (the connection-table insert a
// handshake's ACK makes); both are divided by the bypass row in the report.
//
// Times are the kernel's own mean per iteration (whole ns): a repeated XDP test
// run costs tens of ms outside its timed loop here, so wall-clock time is no use.
// Also printed: the path cut after each step (bench_upto_*, a cheap profile),
// bpf_fib_lookup alone, and new-flow diagnostics (bypass, emptied table, a
// 4,096-entry table). Namespace and pins are removed at the end, on error and
// on SIGINT/SIGTERM (noticed between cases).
import * as os from 'node:os';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import * as L from '../src/datapath/layout';
import { flowCacheSlot, flowHash, maglevIndex, vipFilterWords } from '../src/datapath/flowhash';
import { buildTable, DEFAULT_M } from '../src/maglev';
import { Address } from '../src/net/address';
import { CLIENT4, CLIENT6, LB_SRC4, LB_SRC6, OUTER_TTL, VIP4, VIP6, decap, fibNamespace, openLb, Lb as LbFixture, type FibNs, type Lb } from '../harness/datapath';
import { pinDir } from '../harness/fixtures';
import { Cleanup } from './cleanup';
import { TCP_ACK, TCP_PSH, TCP_SYN, ether, ipv4, ipv6, tcp } from '../harness/packets';

const RUNS = Number(process.argv[2] ?? 7);
const REPEAT = Number(process.argv[3] ?? 200_000);
const WARMUP_ROUNDS = 1;
const MANY_SERVICES = 10_000;
const BACKENDS_PER_SERVICE = 4;
/** Maglev size: the default with one service; 1021 with 10,000 (41 MB of tables instead of 655 MB). */
const M_ONE = DEFAULT_M;
const M_MANY = 1021;
const DOWN_BACKEND = 60_000;
const BENCH_F_NEW_FLOW = 1;
const BENCH_F_FLOW_CACHE_MISS = 2;
const FIRST_FLOW_SEQ = 0x10000; // high half never 0: no generated flow is the original one

// ---- the cases ----

type Kind = 'established' | 'new' | 'pass';

interface Case {
  label: string;
  family: 4 | 6;
  kind: Kind;
  /** the case's own service (absent for non-VIP traffic) */
  service?: { id: number; vip: string; port: number; flags: number };
  client: string;
  dst: string;
  dport: number;
  frame: Buffer;
  verdict: number;
  reason: string;
  /** diagnostic case: one-service world only, in its own table */
  diagnostic?: boolean;
  /** run in a one-service world of its own whose connection tables have this many entries */
  ctSize?: number;
  /** run in a one-service world of its own whose connection tables carry these map flags instead of maps.h's */
  ctFlags?: number;
  /** empty the connection table before every round (and use a repeat that cannot fill it) */
  clearConntrack?: boolean;
  /** established: the wrapper clears the flow's flow-cache slot before every iteration */
  flowCacheMiss?: boolean;
  /** new: the wrapper's flows repeat, this many in turn (all established after the warm-up round) */
  flowMod?: number;
  /** the node's flow cache off (flow_cache: false) for this case */
  flowCacheOff?: boolean;
  repeat?: number;
}

const SPORT = 40000;
const PAYLOAD = Buffer.alloc(64, 0x61);

function frameOf(family: 4 | 6, src: string, dst: string, dport: number, kind: Kind): Buffer {
  const seg = kind === 'new' ? tcp({ sport: SPORT, dport, flags: TCP_SYN }) : tcp({ sport: SPORT, dport, flags: TCP_ACK | TCP_PSH, payload: PAYLOAD });
  return ether(family === 4 ? ipv4({ src, dst }, seg) : ipv6({ src, dst }, seg));
}

function vipCase(label: string, family: 4 | 6, kind: Kind, id: number, port: number, flags = 0): Case {
  const client = family === 4 ? CLIENT4 : CLIENT6;
  const vip = family === 4 ? VIP4 : VIP6;
  return {
    label,
    family,
    kind,
    service: { id, vip, port, flags },
    client,
    dst: vip,
    dport: port,
    frame: frameOf(family, client, vip, port, kind),
    verdict: bpf.XDP_TX,
    reason: 'forward_tx',
  };
}

const BYPASS4 = 'IPv4 TCP SYN, new flow, connection-table bypass (Maglev only, no insert)';
const BYPASS6 = 'IPv6 TCP SYN, new flow, connection-table bypass (Maglev only, no insert)';
/** Connection-table kinds compared in one run: LRU hashes of the same size, flags as named. */
const CT_KINDS: Array<{ kind: string; flags: number; size?: number }> = [
  { kind: 'LRU hash with per-CPU LRU lists (BPF_F_NO_COMMON_LRU)', flags: bpf.BPF_F_NO_COMMON_LRU },
  { kind: 'LRU hash with the common LRU list (no flag)', flags: 0 },
  // A map per CPU (Katran's array of maps indexed by CPU), as one CPU sees it:
  // a common-LRU map of its share of the entries (the outer array's lookup aside).
  {
    kind: `common-LRU hash of ${(L.CT_SIZE / os.cpus().length).toLocaleString('en-US')} entries (this CPU's map, were there one per CPU)`,
    flags: 0,
    size: L.CT_SIZE / os.cpus().length,
  },
];

/** The case with an ACK segment: as a new flow, one the connection table gets at once. */
function ackOpened(c: Case): Case {
  return { ...c, frame: frameOf(c.family, c.client, c.dst, c.dport, 'established') };
}

/** Whether the case's segment opens a connection (a SYN). */
function opens(c: Case): boolean {
  return (c.frame[flowOffsets(c.family).sport + 13] & TCP_SYN) !== 0;
}

// Established cases first: the new-flow cases fill the connection table (LRU)
// and would only make an established entry's eviction more likely.
const CASES: Case[] = [
  vipCase('IPv4 TCP to a VIP, established flow', 4, 'established', 2, 81),
  vipCase('IPv6 TCP to a VIP, established flow', 6, 'established', 4, 81),
  vipCase('IPv4 TCP, L4 DNAT on (8080 → 80), established flow', 4, 'established', 5, 8080, L.SVC_F_L4_DNAT),
  {
    label: 'IPv4 TCP not for a VIP (XDP_PASS)',
    family: 4,
    kind: 'pass',
    client: CLIENT4,
    dst: LB_SRC4,
    dport: 22,
    frame: frameOf(4, CLIENT4, LB_SRC4, 22, 'established'),
    verdict: bpf.XDP_PASS,
    reason: 'pass_not_vip',
  },
  vipCase('IPv4 TCP SYN to a VIP, new flow', 4, 'new', 1, 80),
  vipCase('IPv6 TCP SYN to a VIP, new flow', 6, 'new', 3, 80),
  ackOpened(vipCase('IPv4 TCP ACK opening a new flow (no pending SYN placement: the connection-table insert)', 4, 'new', 23, 95)),
  ackOpened(vipCase('IPv6 TCP ACK opening a new flow (no pending SYN placement: the connection-table insert)', 6, 'new', 24, 95)),
  // diagnostics: an established flow without the flow cache's help, and where the new-flow time goes
  {
    ...vipCase('IPv4 TCP to a VIP, established flow, flow-cache miss on every packet (connection-table hit)', 4, 'established', 9, 85),
    diagnostic: true,
    flowCacheMiss: true,
  },
  ...[1000, 8192, 65536].flatMap((n, i) =>
    [false, true].map((off) => ({
      ...vipCase(`IPv4 TCP to a VIP, ${n.toLocaleString('en-US')} established flows in turn${off ? ', flow cache off' : ''}`, 4, 'new', 10 + 2 * i + (off ? 1 : 0), 86 + 2 * i + (off ? 1 : 0)),
      diagnostic: true,
      flowMod: n,
      flowCacheOff: off,
      // the segments of established connections: a SYN goes past the flow cache to the connection table
      frame: frameOf(4, CLIENT4, VIP4, 86 + 2 * i + (off ? 1 : 0), 'established'),
    })),
  ),
  { ...vipCase(BYPASS4, 4, 'new', 6, 82, L.SVC_F_CT_BYPASS), diagnostic: true },
  { ...vipCase(BYPASS6, 6, 'new', 16, 82, L.SVC_F_CT_BYPASS), diagnostic: true },
  // the connection tables' kinds side by side, each in a world of its own (full after the warm-up round)
  ...CT_KINDS.flatMap(({ kind, flags, size }, i) =>
    ([4, 6] as const).map((family) => ({
      ...ackOpened(vipCase(`IPv${family} TCP ACK opening a new flow, ${kind}`, family, 'new', 17 + 2 * i + (family === 6 ? 1 : 0), 92 + i)),
      diagnostic: true,
      ctFlags: flags,
      ctSize: size,
    })),
  ),
  {
    ...ackOpened(vipCase('IPv4 TCP ACK opening a new flow, connection table emptied before each round (never full)', 4, 'new', 7, 83)),
    diagnostic: true,
    clearConntrack: true,
    repeat: 100_000,
  },
  { ...ackOpened(vipCase('IPv4 TCP ACK opening a new flow, connection table of 4,096 entries (cache-resident, always evicting)', 4, 'new', 8, 84)), diagnostic: true, ctSize: 4096 },
];
/** The one service installed with the non-VIP case in the one-service world. */
const PASS_COMPANION = CASES.find((c) => c.kind === 'new' && c.family === 4)!;

/** Offsets the wrapper rewrites for a new flow: TCP source port, last 2 bytes of the client address. */
function flowOffsets(family: 4 | 6): { sport: number; src: number } {
  return family === 4 ? { sport: 14 + 20, src: 14 + 12 + 2 } : { sport: 14 + 40, src: 14 + 8 + 14 };
}

/** The flow the wrapper makes of sequence number n. */
function generatedFlow(c: Case, n: number): L.FlowKey {
  const src = L.addressBytes(c.client);
  src.writeUInt16BE(src.readUInt16BE(src.length - 2) ^ (n >>> 16), src.length - 2);
  return { src: L.addressText(src, c.family), dst: c.dst, sport: n & 0xffff, dport: c.dport, proto: L.IPPROTO_TCP };
}

// ---- services, backends, Maglev tables ----

function backendAddress(family: 4 | 6, n: number): string {
  // 198.51.100.0/26 and 2001:db8:100::/64 are routed out of the ingress interface (XDP_TX)
  return family === 4 ? `198.51.100.${1 + (n % 62)}` : `2001:db8:100::${(1 + (n % 0xfffe)).toString(16)}`;
}

function backendIds(serviceId: number): number[] {
  return Array.from({ length: BACKENDS_PER_SERVICE }, (_, j) => serviceId * BACKENDS_PER_SERVICE + j);
}

/** Filler service k (k = 0 .. 9,994): half IPv4, half IPv6, none equal to a case's service. */
function fillerService(k: number): { id: number; vip: string; port: number; family: 4 | 6 } {
  const id = 100 + k;
  if (k % 2 === 0) {
    const i = k >> 1;
    return { id, vip: `203.0.113.${20 + (i % 200)}`, port: 1000 + Math.floor(i / 200), family: 4 };
  }
  return { id, vip: `2001:db8:f00::1:${(k >> 1).toString(16)}`, port: 80, family: 6 };
}

class Tables {
  private readonly keys: Buffer;
  private readonly shape: Uint32Array;
  constructor(readonly m: number) {
    this.keys = Buffer.alloc(m * 4);
    for (let i = 0; i < m; i++) this.keys.writeUInt32LE(i, i * 4);
    // Every service gets a table of the same shape over its own backend ids:
    // the same permutations as buildTable over keys b0..b3, ids offset.
    this.shape = buildTable(Array.from({ length: BACKENDS_PER_SERVICE }, (_, j) => ({ id: j, key: `b${j}`, weight: 1 })), m);
  }
  forService(serviceId: number): Uint32Array {
    const base = serviceId * BACKENDS_PER_SERVICE;
    return this.shape.map((j) => base + j);
  }
  /** A new inner map with the table, swapped in; the outer map keeps it alive. */
  install(lb: Lb, serviceId: number, table: Uint32Array): void {
    this.installMany(lb, [[serviceId, table]]);
  }
  /**
   * Many tables with one outer-map batch per 1,000: every syscall write to a
   * map-in-map waits for an RCU grace period, once per call.
   */
  installMany(lb: Lb, tables: ReadonlyArray<readonly [number, Uint32Array]>): void {
    for (let i = 0; i < tables.length; i += 1000) {
      const chunk = tables.slice(i, i + 1000);
      const inner: bpf.BpfMap[] = [];
      try {
        const keys = Buffer.alloc(chunk.length * 4);
        const fds = Buffer.alloc(chunk.length * 4);
        chunk.forEach(([id, table], j) => {
          const m = bpf.createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: this.m, flags: L.MAGLEV_INNER_FLAGS, name: 'xdplbb_mg' });
          inner.push(m);
          m.batchUpdatePacked(this.keys, Buffer.from(table.buffer, table.byteOffset, table.byteLength), this.m);
          keys.writeUInt32LE(id, j * 4);
          fds.writeUInt32LE(m.fd, j * 4);
        });
        lb.maps.maglev.batchUpdatePacked(keys, fds, chunk.length);
      } finally {
        for (const m of inner) m.close();
      }
    }
  }
}

// ---- one world: the load balancer's maps, the bench object sharing them ----

interface World {
  services: number;
  m: number;
  lb: Lb;
  tables: Tables;
  progs: Record<string, bpf.BpfProgram>;
  benchConfig: bpf.BpfMap;
  benchConfigFib: bpf.BpfMap;
  verdicts: bpf.BpfMap;
  flowSeq: bpf.BpfMap;
  /** the bench object's own flow cache (not pinned: not lb's) */
  flowCache: bpf.BpfMap;
}

function nodeConfig(flags: number): Partial<L.NodeConfig> {
  return { src4: LB_SRC4, src6: LB_SRC6, ttl: OUTER_TTL, flags };
}

/** A world: how many services, and the connection tables' size and map flags where not maps.h's. */
interface WorldKind {
  services: number;
  ctSize?: number;
  ctFlags?: number;
}

function openWorld(c: Cleanup, { services, ctSize, ctFlags }: WorldKind): World {
  const m = services > 1 ? M_MANY : M_ONE;
  const both = (v: number | undefined): Record<string, number> => (v === undefined ? {} : { [L.MAP_NAMES.conntrack]: v, [L.MAP_NAMES.conntrack4]: v });
  const opts = { maxEntries: both(ctSize), mapFlags: both(ctFlags) };
  let lb: Lb;
  if (ctSize !== undefined || ctFlags !== undefined) {
    const dir = pinDir(c);
    lb = new LbFixture(bpf.openObject(bpf.objectPath('lb'), { pinRoot: dir, ...opts }), dir);
    c.teardown(() => lb.close());
  } else {
    lb = openLb(c);
  }
  lb.config(nodeConfig(0));
  // The bench object declares the same pinned maps: it adopts lb's, so both
  // programs see one set of services, tables and connections.
  const obj = bpf.openObject(bpf.testObjectPath('bench_lb'), { pinRoot: lb.pinRoot, ...opts });
  const w: World = {
    services,
    m,
    lb,
    tables: new Tables(m),
    progs: Object.fromEntries(obj.programs().map((name) => [name, obj.program(name)])),
    benchConfig: obj.map('bench_config'),
    benchConfigFib: obj.map('bench_fib_params'),
    verdicts: obj.map('bench_verdicts'),
    flowSeq: obj.map('bench_flow_seq'),
    flowCache: obj.map(L.MAP_NAMES.flowCache),
  };
  c.teardown(() => {
    for (const p of Object.values(w.progs)) p.close();
    for (const mp of [w.benchConfig, w.benchConfigFib, w.verdicts, w.flowSeq, w.flowCache]) mp.close();
    obj.close();
  });
  w.flowSeq.update(L.u32(0), L.u32(FIRST_FLOW_SEQ));

  // the case services' backends and tables, and the down backend of the swapped tables
  const caseServices = CASES.flatMap((k) => (k.service ? [k.service] : []));
  for (const s of caseServices) {
    for (const id of backendIds(s.id)) lb.backend({ id, address: backendAddress(familyOfCase(s.id), id), port: 80, service: s.id });
  }
  w.tables.installMany(lb, caseServices.map((s) => [s.id, w.tables.forService(s.id)] as const));
  lb.backend({ id: DOWN_BACKEND, address: backendAddress(4, 0), state: L.BACKEND_DOWN });

  if (services > 1) {
    const keys: Buffer[] = [];
    const values: Buffer[] = [];
    const bkeys: Buffer[] = [];
    const bvalues: Buffer[] = [];
    const tables: Array<readonly [number, Uint32Array]> = [];
    const ids: Buffer[] = [];
    const defs: Buffer[] = [];
    const vips: string[] = [];
    const add = (s: { vip: string; port: number; id: number; flags: number }) => {
      vips.push(s.vip);
      keys.push(L.serviceMapKey({ vip: s.vip, port: s.port, proto: L.IPPROTO_TCP }));
      values.push(L.encodeService({ id: s.id, flags: s.flags }));
      ids.push(L.u32(s.id));
      defs.push(L.encodeServiceDef({ ...s, proto: L.IPPROTO_TCP }));
    };
    for (const s of caseServices) add(s);
    for (let k = 0; keys.length < services; k++) {
      const f = fillerService(k);
      add({ ...f, flags: 0 });
      for (const id of backendIds(f.id)) {
        bkeys.push(L.u32(id));
        bvalues.push(L.encodeBackend({ address: backendAddress(f.family, id), port: 80, state: L.BACKEND_ACTIVE, serviceId: f.id }));
      }
      tables.push([f.id, w.tables.forService(f.id)]);
    }
    lb.maps.backends.batchUpdate(bkeys, bvalues);
    w.tables.installMany(lb, tables);
    lb.maps.servicesById.batchUpdate(ids, defs);
    const filter = vipFilterWords(vips.map((v) => Address.of(v)));
    lb.maps.vipFilter.batchUpdate([...filter.keys()].map((i) => L.u32(i)), [...filter].map((w) => L.u64(w)));
    for (const map of ['services4', 'services'] as const) {
      const i = keys.flatMap((k, j) => (L.serviceMapOf(k) === map ? [j] : []));
      lb.maps[map].batchUpdate(i.map((j) => keys[j]), i.map((j) => values[j]));
    }
    const n = [...lb.maps.services4.keys()].length + [...lb.maps.services.keys()].length;
    if (n !== services) throw new Error(`${n} services installed, expected ${services}`);
  }
  return w;
}

function familyOfCase(serviceId: number): 4 | 6 {
  return CASES.find((k) => k.service?.id === serviceId)!.family;
}

// ---- measuring ----

function sumPerCpu(m: bpf.BpfMap, key: number): bigint {
  let n = 0n;
  for (const v of m.lookupPerCpu(L.u32(key)) ?? []) n += v.readBigUInt64LE(0);
  return n;
}

function verdictCounts(w: World): bigint[] {
  return Array.from({ length: 6 }, (_, i) => sumPerCpu(w.verdicts, i));
}

const VERDICT = (v: number) => bpf.XDP_VERDICT_NAMES[v] ?? `verdict ${v}`;

/**
 * One test run of `repeat` iterations of a bench program, checked; returns the
 * kernel's mean ns per iteration. The wrapper's verdict counts must show every
 * iteration with the expected verdict (bench_empty counts nothing: it has no
 * other); bench_lb must also have counted the case's reason every time.
 */
function measure(w: World, fib: FibNs, c: Case, name: string, repeat = c.repeat ?? REPEAT): number {
  const prog = w.progs[name];
  const expect = name === 'bench_lb' ? c.verdict : bpf.XDP_TX;
  const counted = name !== 'bench_empty';
  const ctx = bpf.xdpContext(fib.lb0);
  const before = counted ? verdictCounts(w) : [];
  const reasonBefore = name === 'bench_lb' ? w.lb.reason(c.reason) : 0n;
  const r = sys.withNetns(fib.ns, () => prog.testRun({ data: c.frame, ctx, repeat }));
  const where = `${c.label}, ${w.services} service(s), ${name}`;
  if (r.retval !== expect) throw new Error(`${where}: last verdict ${VERDICT(r.retval)}, expected ${VERDICT(expect)}`);
  if (!r.data.equals(c.frame)) throw new Error(`${where}: the frame left in the buffer is not the original one`);
  if (counted) {
    const after = verdictCounts(w);
    after.forEach((n, v) => {
      const got = n - before[v];
      const want = v === expect ? BigInt(repeat) : 0n;
      if (got !== want) throw new Error(`${where}: ${got} iterations returned ${v < 5 ? VERDICT(v) : 'an unknown verdict'}, expected ${want}`);
    });
  }
  if (name === 'bench_lb') {
    const got = w.lb.reason(c.reason) - reasonBefore;
    if (got !== BigInt(repeat)) throw new Error(`${where}: reason ${c.reason} counted ${got} times, expected ${repeat}`);
  }
  return r.duration;
}

/** xdplb_main itself with `repeat`: valid only where it leaves the frame as it is (XDP_PASS). */
function measureDirect(w: World, fib: FibNs, c: Case): number {
  const r = sys.withNetns(fib.ns, () => w.lb.prog.testRun({ data: c.frame, ctx: bpf.xdpContext(fib.lb0), repeat: c.repeat ?? REPEAT }));
  if (r.retval !== c.verdict || !r.data.equals(c.frame)) throw new Error(`${c.label}: xdplb_main measured directly did not pass the frame unchanged`);
  return r.duration;
}

// ---- preparing a case ----

function expectedBackend(w: World, c: Case, flow: L.FlowKey): number {
  const id = c.service!.id;
  const table = w.tables.forService(id);
  return table[maglevIndex(flowHash(flow), w.m)];
}

/** One run of xdplb_main itself (lb.bpf.o): the case does what it says. */
function validate(w: World, fib: FibNs, c: Case): void {
  const r = sys.withNetns(fib.ns, () => w.lb.run(c.frame, fib.lb0));
  const where = `${c.label}, ${w.services} service(s), xdplb_main`;
  if (r.retval !== c.verdict) throw new Error(`${where}: ${VERDICT(r.retval)}, expected ${VERDICT(c.verdict)}`);
  if (c.kind === 'pass') {
    if (!r.data.equals(c.frame)) throw new Error(`${where}: passed frame changed`);
    return;
  }
  const flow = { src: c.client, dst: c.dst, sport: SPORT, dport: c.dport, proto: L.IPPROTO_TCP };
  const want = backendAddress(c.family, expectedBackend(w, c, flow));
  const d = decap(r.data);
  const outerDst = d.outer4 ? d.outer4.dst : L.addressText(d.outer6!.dst, 6);
  if (L.addressText(L.addressBytes(outerDst), c.family) !== L.addressText(L.addressBytes(want), c.family)) {
    throw new Error(`${where}: encapsulated to ${outerDst}, Maglev predicts ${want}`);
  }
  const l4 = c.family === 4 ? 20 : 40;
  const dport = d.inner.readUInt16BE(l4 + 2);
  const wantPort = c.service!.flags & L.SVC_F_L4_DNAT ? 80 : c.dport;
  if (dport !== wantPort) throw new Error(`${where}: inner destination port ${dport}, expected ${wantPort}`);
}

function ctEntry(w: World, flow: L.FlowKey): L.CtEntry | null {
  const { map, key } = L.conntrackKey(flow);
  const v = w.lb.maps[map].lookup(key);
  return v ? L.decodeCtEntry(v) : null;
}

/** Installs what the case needs; returns the undo. */
function prepare(w: World, fib: FibNs, c: Case): () => void {
  const undo: Array<() => void> = [];
  const installed = c.service ?? (w.services === 1 ? PASS_COMPANION.service : undefined);
  if (w.services === 1 && installed) {
    w.lb.service({ ...installed, proto: L.IPPROTO_TCP });
    undo.push(() => w.lb.deleteService({ vip: installed.vip, port: installed.port, proto: L.IPPROTO_TCP }));
  }
  if (c.flowCacheOff) {
    w.lb.config(nodeConfig(L.CFG_F_NO_FLOW_CACHE));
    undo.push(() => w.lb.config(nodeConfig(0)));
  }
  validate(w, fib, c);
  const off = flowOffsets(c.family);
  const flow = { src: c.client, dst: c.dst, sport: SPORT, dport: c.dport, proto: L.IPPROTO_TCP };
  const flags = (c.kind === 'new' ? BENCH_F_NEW_FLOW : 0) | (c.flowCacheMiss ? BENCH_F_FLOW_CACHE_MISS : 0);
  w.benchConfig.update(L.u32(0), benchConfig(flags, off.sport, off.src, flowCacheSlot(flow), c.flowMod ?? 0));
  if (c.kind === 'established') {
    // the run above created the entry; from now on only that entry can forward the flow
    const e = ctEntry(w, flow);
    const want = expectedBackend(w, c, flow);
    if (!e || e.backendId !== want || e.serviceId !== c.service!.id) throw new Error(`${c.label}: no connection-table entry after the first packet`);
    const id = c.service!.id;
    w.tables.install(w.lb, id, new Uint32Array(w.m).fill(DOWN_BACKEND));
    undo.push(() => w.tables.install(w.lb, id, w.tables.forService(id)));
  }
  return () => undo.reverse().forEach((f) => f());
}

function benchConfig(flags: number, sportOff: number, srcOff: number, cacheSlot: number, flowMod: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32LE(flags, 0);
  b.writeUInt16LE(sportOff, 4);
  b.writeUInt16LE(srcOff, 6);
  b.writeUInt32LE(cacheSlot, 8);
  b.writeUInt32LE(flowMod, 12);
  b.writeUInt32LE(FIRST_FLOW_SEQ, 16);
  return b;
}

/**
 * After a new-flow case: the last generated flow went through Maglev into the
 * connection table (with bypass: Maglev chose the backend, nothing was stored).
 */
function checkNewFlows(w: World, c: Case): void {
  const next = w.flowSeq.lookup(L.u32(0))!.readUInt32LE(0);
  const flow = generatedFlow(c, c.flowMod ? FIRST_FLOW_SEQ + ((next - 1) % c.flowMod) : next - 1);
  const e = ctEntry(w, flow);
  if (c.service!.flags & L.SVC_F_CT_BYPASS) {
    if (e) throw new Error(`${c.label}: a bypassing service stored a connection`);
    return;
  }
  const want = expectedBackend(w, c, flow);
  if (opens(c) && !c.flowCacheOff) {
    if (e) throw new Error(`${c.label}: a SYN stored a connection`);
    const E = L.LAYOUT.xdplb_flow_cache_entry.fields;
    const pending = (w.flowCache.lookupPerCpu(L.u32(flowCacheSlot(flow))) ?? []).some(
      (b) => b.subarray(0, 40).equals(L.encodeFlowKey(flow)) && b.readUInt16LE(E.pending.offset) === 1 && b.readUInt32LE(E.backend_id.offset) === want,
    );
    if (!pending) throw new Error(`${c.label}: the last generated flow (${flow.src}:${flow.sport}) has no pending placement on backend ${want}`);
    return;
  }
  if (!e || e.backendId !== want) throw new Error(`${c.label}: the last generated flow (${flow.src}:${flow.sport}) has no entry for backend ${want}`);
}

function clearConntrack(w: World): void {
  for (const [map, size] of [[w.lb.maps.conntrack, L.LAYOUT.xdplb_flow_key.size], [w.lb.maps.conntrack4, L.LAYOUT.xdplb_flow4_key.size]] as const) {
    const d = map.dump();
    const keys: Buffer[] = [];
    for (let i = 0; i < d.count; i++) keys.push(d.keys.subarray(i * size, i * size + size));
    for (let i = 0; i < keys.length; i += 10_000) map.batchDelete(keys.slice(i, i + 10_000));
  }
}

// ---- statistics and the table ----

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

interface Row {
  c: Case;
  services: number;
  m: number;
  lbNs: number;
  rawNs: number;
  emptyNs: number;
  overheadNs: number;
  ratio: number;
  ratioMin: number;
  ratioMax: number;
  /** xdplb_main measured directly with repeat: only where it does not rewrite (XDP_PASS) */
  directNs?: number;
  /** profile: step -> median ns of the path cut after it, wrapper overhead taken off */
  upto?: Record<string, number>;
  /** flow-cache fills per bench_lb iteration over the measured rounds: its miss rate */
  fillsPerPacket: number;
}

const PROFILE_STEPS = ['bench_upto_parse', 'bench_upto_conntrack', 'bench_upto_backend', 'bench_upto_route', 'bench_upto_encap'];

interface Run {
  w: World;
  c: Case;
  profile: boolean;
}

/**
 * The cases' rounds, interleaved (round r of every case, then round r + 1):
 * cases compared with each other then share whatever else loads the machine.
 */
function runCases(fib: FibNs, runs: Run[]): Row[] {
  const undo: Array<() => void> = [];
  try {
    for (const { w, c } of runs) undo.push(prepare(w, fib, c));
    const rounds: Array<Array<Record<string, number>>> = runs.map(() => []);
    const fills = runs.map(() => 0n);
    for (let r = 0; r < WARMUP_ROUNDS + RUNS; r++) {
      runs.forEach(({ w, c, profile }, i) => {
        if (c.clearConntrack) clearConntrack(w);
        const ns: Record<string, number> = {};
        for (const p of ['bench_empty', 'bench_noop', 'bench_lb', ...(profile ? PROFILE_STEPS : [])]) {
          const before = sumPerCpu(w.lb.maps.cacheStats, L.CACHE_STAT_FLOW_FILLS);
          ns[p] = measure(w, fib, c, p);
          if (p === 'bench_lb' && r >= WARMUP_ROUNDS) fills[i] += sumPerCpu(w.lb.maps.cacheStats, L.CACHE_STAT_FLOW_FILLS) - before;
        }
        if (c.kind === 'pass') ns.direct = measureDirect(w, fib, c);
        if (r >= WARMUP_ROUNDS) rounds[i].push(ns);
      });
    }
    return runs.map(({ w, c, profile }, i) => {
      if (c.kind === 'new') checkNewFlows(w, c);
      return row(w, c, profile, rounds[i], fills[i]);
    });
  } finally {
    undo.reverse().forEach((f) => f());
  }
}

function row(w: World, c: Case, profile: boolean, rounds: Array<Record<string, number>>, fills: bigint): Row {
  // per round: the wrapper's cost is noop − empty; a wrapped program's own
  // time is its time minus that
  const overhead = rounds.map((x) => x.bench_noop - x.bench_empty);
  const self = (p: string) => rounds.map((x, i) => x[p] - overhead[i]);
  const ratios = rounds.map((x, i) => (x.bench_lb - overhead[i]) / x.bench_empty);
  return {
    c,
    services: w.services,
    m: w.m,
    lbNs: median(self('bench_lb')),
    rawNs: median(rounds.map((x) => x.bench_lb)),
    emptyNs: median(rounds.map((x) => x.bench_empty)),
    overheadNs: median(overhead),
    ratio: median(ratios),
    ratioMin: Math.min(...ratios),
    ratioMax: Math.max(...ratios),
    directNs: c.kind === 'pass' ? median(rounds.map((x) => x.direct)) : undefined,
    upto: profile ? Object.fromEntries([...PROFILE_STEPS, 'bench_lb'].map((p) => [p, median(self(p))])) : undefined,
    fillsPerPacket: Number(fills) / (RUNS * (c.repeat ?? REPEAT)),
  };
}

function table(rows: Row[]): string {
  const lines = [
    '| case | services (Maglev M) | LB ns/pkt | empty XDP_TX ns/pkt | ratio (min–max of rounds) | bench-wrapper overhead ns | bench_lb as measured ns |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.c.label} | ${r.services.toLocaleString('en-US')} (${r.m}) | ${r.lbNs} | ${r.emptyNs} | **${r.ratio.toFixed(2)}×** (${r.ratioMin.toFixed(2)}–${r.ratioMax.toFixed(2)}) | ${r.overheadNs} | ${r.rawNs} |`,
    );
  }
  return lines.join('\n');
}

const STEP_LABELS: Record<string, string> = {
  bench_upto_parse: '1 parse (Ethernet, IP, TCP)',
  bench_upto_conntrack: '2 recorder (in, no recording) + config + VIP filter + flow-cache lookup (hit)',
  bench_upto_backend: '3/4 service by id (array) + its check + backend (+ flow hash where needed and not cached)',
  bench_upto_route: '6a/8a/7 outer-header plan + next hop (cache hit) + PMTU check',
  bench_upto_encap: '5/6 DNAT (if on) + adjust_head + outer header',
  bench_lb: '8/10 MACs, verdict, reason/service/backend counters (= whole program)',
};

function profileTable(rows: Row[]): string {
  const prof = rows.filter((r) => r.upto);
  const head = ['step (path cut after it)', ...prof.map((r) => `${r.c.label.replace(/ to a VIP, established flow/, '')}, ${r.services.toLocaleString('en-US')} svc: cumulative / step ns`)];
  const lines = [`| ${head.join(' | ')} |`, `|---|${prof.map(() => '---:').join('|')}|`];
  const steps = [...PROFILE_STEPS, 'bench_lb'];
  steps.forEach((p, i) => {
    const cells = prof.map((r) => {
      const cum = r.upto![p];
      const step = i === 0 ? cum : cum - r.upto![steps[i - 1]];
      return `${cum} / ${step}`;
    });
    lines.push(`| ${STEP_LABELS[p]} | ${cells.join(' | ')} |`);
  });
  return lines.join('\n');
}

/** How often each case's packets missed the flow cache (bench_lb's fills, measured rounds). */
function fillsTable(rows: Row[]): string {
  const lines = ['| case | services | flow-cache fills per packet (miss rate) | LB ns/pkt |', '|---|---:|---:|---:|'];
  for (const r of rows) lines.push(`| ${r.c.label} | ${r.services.toLocaleString('en-US')} | ${r.fillsPerPacket.toFixed(4)} | ${r.lbNs} |`);
  return lines.join('\n');
}

/**
 * New flow ÷ bypass, per family: the bypass row does everything a new flow does
 * but the connection table (issue 17 §1), so the ratio isolates the table on
 * any CPU. The connection-table kinds' rows are divided by the same bypass row.
 */
function newFlowRatios(rows: Row[]): string {
  const lines = ['| new-flow case | services | LB ns/pkt | bypass ns/pkt (one service) | new flow ÷ bypass |', '|---|---:|---:|---:|---:|'];
  for (const family of [4, 6] as const) {
    const bypass = rows.find((r) => r.c.label === (family === 4 ? BYPASS4 : BYPASS6))!;
    for (const r of rows) {
      if (r.c.family !== family || r.c.kind !== 'new' || r === bypass || r.c.flowMod || r.c.clearConntrack || (r.c.ctSize && r.c.ctFlags === undefined)) continue;
      lines.push(`| ${r.c.label} | ${r.services.toLocaleString('en-US')} | ${r.lbNs} | ${bypass.lbNs} | **${(r.lbNs / bypass.lbNs).toFixed(2)}×** |`);
    }
  }
  return lines.join('\n');
}

// ---- bpf_fib_lookup alone ----

const FIB_FLAGS: Array<[string, number]> = [
  ['none (as lb.bpf.c calls it)', 0],
  ['BPF_FIB_LOOKUP_DIRECT', 1],
  ['BPF_FIB_LOOKUP_SKIP_NEIGH', 4],
  ['BPF_FIB_LOOKUP_DIRECT + SKIP_NEIGH', 1 | 4],
];

/** struct bench_fib_params: the lookup lb.bpf.c makes for a backend of the family, and the flags. */
function fibParams(family: 4 | 6, flags: number): Buffer {
  const b = Buffer.alloc(72);
  b[0] = family === 4 ? 2 : 10; // AF_INET, AF_INET6
  b[1] = family === 4 ? 4 : 41; // IPPROTO_IPIP, IPPROTO_IPV6
  b.writeUInt16LE(family === 4 ? 124 : 144, 6); // tot_len: the encapsulated packet
  L.addressBytes(family === 4 ? LB_SRC4 : LB_SRC6).copy(b, 16);
  L.addressBytes(backendAddress(family, 9)).copy(b, 32);
  b.writeUInt32LE(flags, 64);
  return b;
}

/** ns of bpf_fib_lookup per flags and family: bench_fib minus bench_fib_none, median over rounds. */
function fibBench(w: World, fib: FibNs): string {
  const params = w.benchConfigFib;
  const frame = CASES[0].frame;
  const run = (name: string) => {
    const r = sys.withNetns(fib.ns, () => w.progs[name].testRun({ data: frame, ctx: bpf.xdpContext(fib.lb0), repeat: REPEAT }));
    if (r.retval !== bpf.XDP_TX) throw new Error(`${name}: ${VERDICT(r.retval)} (lookup failed)`);
    return r.duration;
  };
  const lines = ['| bpf_fib_lookup flags | IPv4 ns | IPv6 ns |', '|---|---:|---:|'];
  for (const [label, flags] of FIB_FLAGS) {
    const cells = ([4, 6] as const).map((family) => {
      params.update(L.u32(0), fibParams(family, flags));
      const d: number[] = [];
      for (let r = 0; r < WARMUP_ROUNDS + RUNS; r++) {
        const none = run('bench_fib_none');
        const full = run('bench_fib');
        if (r >= WARMUP_ROUNDS) d.push(full - none);
      }
      return median(d);
    });
    lines.push(`| ${label} | ${cells[0]} | ${cells[1]} |`);
  }
  return lines.join('\n');
}

/** Cases profiled step by step (established flows: the target's case). */
const PROFILED = (c: Case, services: number) => c.kind === 'established' && !(c.service!.flags & L.SVC_F_L4_DNAT) && (services === 1 || c.family === 4);

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root: BPF, bpffs and network namespaces');
  const c = new Cleanup();
  // Test runs are synchronous: a signal is noticed between cases, and the
  // finally below cleans up before the process exits.
  let interrupted: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => (interrupted = sig);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const checkpoint = async () => {
    await new Promise((resolve) => setImmediate(resolve));
    if (interrupted) throw new Error(`interrupted by ${interrupted}`);
  };
  const started = Date.now();
  try {
    const fib = fibNamespace(c);
    const rows: Row[] = [];
    let info: bpf.ProgramInfo | undefined;
    let benchInfo: Record<string, bpf.ProgramInfo> = {};
    let fibTable = '';
    const worlds: WorldKind[] = [
      { services: 1 },
      { services: MANY_SERVICES },
      ...[...new Set(CASES.flatMap((k) => (k.ctSize && k.ctFlags === undefined ? [k.ctSize] : [])))].map((ctSize) => ({ services: 1, ctSize })),
    ];
    for (const world of worlds) {
      const { services, ctSize } = world;
      await checkpoint();
      const t0 = Date.now();
      const w = openWorld(c, world);
      info ??= w.lb.prog.info();
      if (!Object.keys(benchInfo).length) benchInfo = Object.fromEntries(Object.entries(w.progs).map(([n, p]) => [n, p.info()]));
      process.stderr.write(`${services} service(s)${ctSize ? `, connection table ${ctSize}` : ''}: set up in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
      for (const k of CASES) {
        if (k.ctSize !== ctSize || k.ctFlags !== undefined || (k.diagnostic && services > 1)) continue;
        await checkpoint();
        const [row] = runCases(fib, [{ w, c: k, profile: PROFILED(k, services) }]);
        rows.push(row);
        process.stderr.write(`  ${k.label}: ${row.lbNs} ns, ${row.ratio.toFixed(2)}× (${((Date.now() - started) / 1000).toFixed(0)} s)\n`);
      }
      if (services === 1 && !ctSize) fibTable = fibBench(w, fib);
    }
    // the connection-table kinds: a world each, their rounds interleaved per family
    const kindWorlds = CT_KINDS.map(({ flags, size }) => openWorld(c, { services: 1, ctFlags: flags, ctSize: size }));
    for (const family of [4, 6] as const) {
      await checkpoint();
      const runs = CASES.filter((k) => k.ctFlags !== undefined && k.family === family).map((k, i) => ({ w: kindWorlds[i], c: k, profile: false }));
      for (const row of runCases(fib, runs)) {
        rows.push(row);
        process.stderr.write(`  ${row.c.label}: ${row.lbNs} ns, ${row.ratio.toFixed(2)}× (${((Date.now() - started) / 1000).toFixed(0)} s)\n`);
      }
    }
    const date = new Date().toISOString().slice(0, 10);
    const out: string[] = [];
    out.push(`Datapath, BPF_PROG_TEST_RUN (node ${process.version}, kernel ${os.release()}, ${date}; median of ${RUNS} rounds of repeat=${REPEAT} after ${WARMUP_ROUNDS} warm-up round; ns are the kernel's means, integers)`);
    out.push('');
    out.push(table(rows.filter((r) => !r.c.diagnostic)));
    out.push('');
    out.push(profileTable(rows));
    out.push('');
    out.push(table(rows.filter((r) => r.c.diagnostic)));
    out.push('');
    out.push(fillsTable(rows));
    out.push('');
    out.push(newFlowRatios(rows));
    out.push('');
    out.push(fibTable);
    out.push('');
    out.push(`xdplb_main: ${info!.instructions} instructions (xlated), ${info!.verifiedInstructions} processed by the verifier, ${info!.jitedBytes} bytes JITed.`);
    out.push(`bench object (xlated instructions): ${Object.entries(benchInfo).map(([n, i]) => `${n} ${i.instructions}`).join(', ')}.`);
    for (const r of rows.filter((x) => x.directNs !== undefined)) {
      out.push(`Cross-check, ${r.services} service(s): xdplb_main measured directly on the non-VIP frame (which it does not rewrite) ${r.directNs} ns, through the wrapper ${r.lbNs} ns.`);
    }
    out.push(`Total time ${((Date.now() - started) / 1000).toFixed(0)} s.`);
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    await c.run();
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
