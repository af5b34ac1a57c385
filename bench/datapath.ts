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
// the last flow's entry exists with the backend Maglev predicts).
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { flowHash, maglevIndex } from '../src/datapath/flowhash';
import { REASON } from '../src/datapath/reasons';
import { buildTable } from '../src/maglev';
import { CLIENT4, CLIENT6, LB_SRC4, LB_SRC6, OUTER_TTL, VIP4, VIP6, decap, fibNamespace, openLb, type FibNs, type Lb } from '../test/helpers/datapath';
import type { Teardown } from '../test/helpers/fixtures';
import { TCP_ACK, TCP_PSH, TCP_SYN, ether, ipv4, ipv6, tcp } from '../test/helpers/packets';

const RUNS = Number(process.argv[2] ?? 7);
const REPEAT = Number(process.argv[3] ?? 200_000);
const WARMUP_ROUNDS = 1;
const MANY_SERVICES = 10_000;
const BACKENDS_PER_SERVICE = 4;
/** Maglev size: the default with one service; 1021 with 10,000 (41 MB of tables instead of 655 MB). */
const M_ONE = L.MAGLEV_DEFAULT_M;
const M_MANY = 1021;
const DOWN_BACKEND = 60_000;
const BENCH_F_NEW_FLOW = 1;
const FIRST_FLOW_SEQ = 0x10000; // high half never 0: no generated flow is the original one

// ---- cleanup, even on error or signal ----

class Cleanup implements Teardown {
  private fns: Array<() => void | Promise<void>> = [];
  teardown(fn: () => void | Promise<void>): void {
    this.fns.push(fn);
  }
  async run(): Promise<void> {
    const fns = this.fns.reverse();
    this.fns = [];
    for (const fn of fns) {
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`cleanup: ${(e as Error).message}\n`);
      }
    }
  }
}

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
    const inner = bpf.createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: this.m, flags: L.MAGLEV_INNER_FLAGS, name: 'xdplbb_mg' });
    try {
      inner.batchUpdatePacked(this.keys, Buffer.from(table.buffer, table.byteOffset, table.byteLength), this.m);
      lb.maps.maglev.update(L.u32(serviceId), L.u32(inner.fd));
    } finally {
      inner.close();
    }
  }
}

// ---- one world: the load balancer's maps, the bench object sharing them ----

interface World {
  services: number;
  m: number;
  lb: Lb;
  tables: Tables;
  progs: { lb: bpf.BpfProgram; noop: bpf.BpfProgram; empty: bpf.BpfProgram };
  benchConfig: bpf.BpfMap;
  verdicts: bpf.BpfMap;
  flowSeq: bpf.BpfMap;
}

function openWorld(c: Cleanup, services: number): World {
  const m = services > 1 ? M_MANY : M_ONE;
  const lb = openLb(c);
  lb.config({ src4: LB_SRC4, src6: LB_SRC6, ttl: OUTER_TTL, maglevM: m });
  // The bench object declares the same pinned maps: it adopts lb's, so both
  // programs see one set of services, tables and connections.
  const obj = bpf.openObject(benchObject(), { pinRoot: lb.pinRoot });
  const w: World = {
    services,
    m,
    lb,
    tables: new Tables(m),
    progs: { lb: obj.program('bench_lb'), noop: obj.program('bench_noop'), empty: obj.program('bench_empty') },
    benchConfig: obj.map('bench_config'),
    verdicts: obj.map('bench_verdicts'),
    flowSeq: obj.map('bench_flow_seq'),
  };
  c.teardown(() => {
    for (const p of Object.values(w.progs)) p.close();
    for (const mp of [w.benchConfig, w.verdicts, w.flowSeq]) mp.close();
    obj.close();
  });
  w.flowSeq.update(L.u32(0), L.u32(FIRST_FLOW_SEQ));

  // the case services' backends and tables, and the down backend of the swapped tables
  const caseServices = CASES.flatMap((k) => (k.service ? [k.service] : []));
  for (const s of caseServices) {
    for (const id of backendIds(s.id)) lb.backend({ id, address: backendAddress(familyOfCase(s.id), id), port: 80 });
    w.tables.install(lb, s.id, w.tables.forService(s.id));
  }
  lb.backend({ id: DOWN_BACKEND, address: backendAddress(4, 0), state: L.BACKEND_DOWN });

  if (services > 1) {
    const keys: Buffer[] = [];
    const values: Buffer[] = [];
    const bkeys: Buffer[] = [];
    const bvalues: Buffer[] = [];
    for (const s of caseServices) {
      keys.push(L.encodeServiceKey({ vip: s.vip, port: s.port, proto: L.IPPROTO_TCP }));
      values.push(L.encodeService({ id: s.id, flags: s.flags }));
    }
    for (let k = 0; keys.length < services; k++) {
      const f = fillerService(k);
      keys.push(L.encodeServiceKey({ vip: f.vip, port: f.port, proto: L.IPPROTO_TCP }));
      values.push(L.encodeService({ id: f.id, flags: 0 }));
      for (const id of backendIds(f.id)) {
        bkeys.push(L.u32(id));
        bvalues.push(L.encodeBackend({ address: backendAddress(f.family, id), port: 80, state: L.BACKEND_ACTIVE }));
      }
      w.tables.install(lb, f.id, w.tables.forService(f.id));
    }
    lb.maps.services.batchUpdate(keys, values);
    lb.maps.backends.batchUpdate(bkeys, bvalues);
  }
  return w;
}

function familyOfCase(serviceId: number): 4 | 6 {
  return CASES.find((k) => k.service?.id === serviceId)!.family;
}

function benchObject(): string {
  const obj = bpf.testObjectPath('bench_lb');
  // CMake rebuilds bench_lb.bpf.o when its own source or xdp/*.h change, not
  // when xdp/lb.bpf.c does: refuse to measure a stale copy of the program.
  const root = bpf.PACKAGE_ROOT;
  const sources = [path.join(root, 'bench', 'bpf', 'bench_lb.bpf.c'), path.join(root, 'xdp', 'lb.bpf.c')];
  for (const f of fs.readdirSync(path.join(root, 'xdp'))) if (f.endsWith('.h')) sources.push(path.join(root, 'xdp', f));
  const built = fs.statSync(obj).mtimeMs;
  const newer = sources.filter((s) => fs.statSync(s).mtimeMs > built);
  if (newer.length) throw new Error(`${obj} is older than ${newer.join(', ')}: touch bench/bpf/bench_lb.bpf.c and run scripts/bootstrap.sh`);
  return obj;
}

// ---- measuring ----

interface Sample {
  /** wall-clock ns per iteration around the test-run call */
  ns: number;
  /** the kernel's own mean (integer ns, time spent rescheduled excluded) */
  kernelNs: number;
}

function sumPerCpu(m: bpf.BpfMap, key: number): bigint {
  let n = 0n;
  for (const v of m.lookupPerCpu(L.u32(key)) ?? []) n += v.readBigUInt64LE(0);
  return n;
}

function verdictCounts(w: World): bigint[] {
  return Array.from({ length: 6 }, (_, i) => sumPerCpu(w.verdicts, i));
}

const VERDICT = (v: number) => bpf.XDP_VERDICT_NAMES[v] ?? `verdict ${v}`;

/** One test run of `repeat` iterations, checked. */
function measure(w: World, fib: FibNs, c: Case, which: 'lb' | 'noop' | 'empty', repeat: number): Sample {
  const prog = w.progs[which];
  const expect = which === 'lb' ? c.verdict : bpf.XDP_TX;
  const ctx = bpf.xdpContext(fib.lb0);
  const before = which === 'empty' ? [] : verdictCounts(w);
  const reasonBefore = which === 'lb' ? w.lb.reason(c.reason) : 0n;
  const { r, ns } = bpf.withNetns(fib.ns, () => {
    const t0 = process.hrtime.bigint();
    const res = prog.testRun({ data: c.frame, ctx, repeat });
    return { r: res, ns: Number(process.hrtime.bigint() - t0) / repeat };
  });
  const where = `${c.label}, ${w.services} service(s), ${prog.name}`;
  if (r.retval !== expect) throw new Error(`${where}: last verdict ${VERDICT(r.retval)}, expected ${VERDICT(expect)}`);
  if (!r.data.equals(c.frame)) throw new Error(`${where}: the frame left in the buffer is not the original one`);
  if (which !== 'empty') {
    const after = verdictCounts(w);
    after.forEach((n, v) => {
      const got = n - before[v];
      const want = v === expect ? BigInt(repeat) : 0n;
      if (got !== want) throw new Error(`${where}: ${got} iterations returned ${v < 5 ? VERDICT(v) : 'an unknown verdict'}, expected ${want}`);
    });
  }
  if (which === 'lb') {
    const got = w.lb.reason(c.reason) - reasonBefore;
    if (got !== BigInt(repeat)) throw new Error(`${where}: reason ${c.reason} counted ${got} times, expected ${repeat}`);
  }
  return { ns, kernelNs: r.duration };
}

// ---- preparing a case ----

function expectedBackend(w: World, c: Case, flow: L.FlowKey): number {
  const id = c.service!.id;
  const table = w.tables.forService(id);
  return table[maglevIndex(flowHash(flow), w.m)];
}

/** One run of xdplb_main itself (lb.bpf.o): the case does what it says. */
function validate(w: World, fib: FibNs, c: Case): void {
  const r = bpf.withNetns(fib.ns, () => w.lb.run(c.frame, fib.lb0));
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
  const v = w.lb.maps.conntrack.lookup(L.encodeFlowKey(flow));
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
  validate(w, fib, c);
  const off = flowOffsets(c.family);
  w.benchConfig.update(L.u32(0), benchConfig(c.kind === 'new' ? BENCH_F_NEW_FLOW : 0, off.sport, off.src));
  if (c.kind === 'established') {
    // the run above created the entry; from now on only that entry can forward the flow
    const flow = { src: c.client, dst: c.dst, sport: SPORT, dport: c.dport, proto: L.IPPROTO_TCP };
    const e = ctEntry(w, flow);
    const want = expectedBackend(w, c, flow);
    if (!e || e.backendId !== want || e.serviceId !== c.service!.id) throw new Error(`${c.label}: no connection-table entry after the first packet`);
    const id = c.service!.id;
    w.tables.install(w.lb, id, new Uint32Array(w.m).fill(DOWN_BACKEND));
    undo.push(() => w.tables.install(w.lb, id, w.tables.forService(id)));
  }
  return () => undo.reverse().forEach((f) => f());
}

function benchConfig(flags: number, sportOff: number, srcOff: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(flags, 0);
  b.writeUInt16LE(sportOff, 4);
  b.writeUInt16LE(srcOff, 6);
  return b;
}

/** After a new-flow case: the last generated flow went through Maglev into the table. */
function checkNewFlows(w: World, c: Case): number {
  const next = w.flowSeq.lookup(L.u32(0))!.readUInt32LE(0);
  const flow = generatedFlow(c, next - 1);
  const e = ctEntry(w, flow);
  const want = expectedBackend(w, c, flow);
  if (!e || e.backendId !== want) throw new Error(`${c.label}: the last generated flow (${flow.src}:${flow.sport}) has no entry for backend ${want}`);
  return next - FIRST_FLOW_SEQ;
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
  kernel: { lb: number; noop: number; empty: number };
  /** xdplb_main measured directly with repeat: only where it does not rewrite (XDP_PASS) */
  directNs?: number;
}

function runCase(w: World, fib: FibNs, c: Case): Row {
  const undo = prepare(w, fib, c);
  try {
    const rounds: Array<{ lb: Sample; noop: Sample; empty: Sample; direct?: number }> = [];
    for (let r = 0; r < WARMUP_ROUNDS + RUNS; r++) {
      const empty = measure(w, fib, c, 'empty', REPEAT);
      const noop = measure(w, fib, c, 'noop', REPEAT);
      const lb = measure(w, fib, c, 'lb', REPEAT);
      let direct: number | undefined;
      if (c.kind === 'pass') {
        direct = bpf.withNetns(fib.ns, () => {
          const t0 = process.hrtime.bigint();
          const res = w.lb.prog.testRun({ data: c.frame, ctx: bpf.xdpContext(fib.lb0), repeat: REPEAT });
          const ns = Number(process.hrtime.bigint() - t0) / REPEAT;
          if (res.retval !== c.verdict || !res.data.equals(c.frame)) throw new Error(`${c.label}: xdplb_main direct run went wrong`);
          return ns;
        });
      }
      if (r >= WARMUP_ROUNDS) rounds.push({ lb, noop, empty, direct });
    }
    if (c.kind === 'new') checkNewFlows(w, c);
    const per = rounds.map((x) => {
      const overhead = x.noop.ns - x.empty.ns;
      const lbNs = x.lb.ns - overhead;
      return { overhead, lbNs, ratio: lbNs / x.empty.ns };
    });
    const ratios = per.map((p) => p.ratio);
    return {
      c,
      services: w.services,
      m: w.m,
      lbNs: median(per.map((p) => p.lbNs)),
      rawNs: median(rounds.map((x) => x.lb.ns)),
      emptyNs: median(rounds.map((x) => x.empty.ns)),
      overheadNs: median(per.map((p) => p.overhead)),
      ratio: median(ratios),
      ratioMin: Math.min(...ratios),
      ratioMax: Math.max(...ratios),
      kernel: {
        lb: median(rounds.map((x) => x.lb.kernelNs)),
        noop: median(rounds.map((x) => x.noop.kernelNs)),
        empty: median(rounds.map((x) => x.empty.kernelNs)),
      },
      directNs: c.kind === 'pass' ? median(rounds.map((x) => x.direct!)) : undefined,
    };
  } finally {
    undo();
  }
}

function table(rows: Row[]): string {
  const lines = [
    '| case | services (M) | LB ns/pkt | empty XDP_TX ns/pkt | ratio (min–max) | wrapper overhead ns | bench_lb raw ns | kernel ns lb / noop / empty |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.c.label} | ${r.services.toLocaleString('en-US')} (${r.m}) | ${r.lbNs.toFixed(1)} | ${r.emptyNs.toFixed(1)} | ${r.ratio.toFixed(2)}× (${r.ratioMin.toFixed(2)}–${r.ratioMax.toFixed(2)}) | ${r.overheadNs.toFixed(1)} | ${r.rawNs.toFixed(1)} | ${r.kernel.lb} / ${r.kernel.noop} / ${r.kernel.empty} |`,
    );
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root: BPF, bpffs and network namespaces');
  const c = new Cleanup();
  const onSignal = (sig: NodeJS.Signals) => {
    void c.run().then(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const started = Date.now();
  try {
    const fib = fibNamespace(c);
    const rows: Row[] = [];
    let insns: bpf.ProgramInfo | undefined;
    let benchInsns: Record<string, bpf.ProgramInfo> = {};
    for (const services of [1, MANY_SERVICES]) {
      const t0 = Date.now();
      const w = openWorld(c, services);
      insns ??= w.lb.prog.info();
      if (!Object.keys(benchInsns).length) benchInsns = { lb: w.progs.lb.info(), noop: w.progs.noop.info(), empty: w.progs.empty.info() };
      process.stderr.write(`${services} service(s): set up in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
      for (const k of CASES) {
        const row = runCase(w, fib, k);
        rows.push(row);
        process.stderr.write(`  ${k.label}: ${row.lbNs.toFixed(1)} ns, ${row.ratio.toFixed(2)}×\n`);
      }
    }
    const date = new Date().toISOString().slice(0, 10);
    const out: string[] = [];
    out.push(`Datapath, BPF_PROG_TEST_RUN (node ${process.version}, ${date}; ${RUNS} rounds of repeat=${REPEAT} after ${WARMUP_ROUNDS} warm-up round)`);
    out.push('');
    out.push(table(rows));
    out.push('');
    out.push(`xdplb_main: ${insns!.instructions} instructions (xlated), ${insns!.verifiedInstructions} processed by the verifier, ${insns!.jitedBytes} bytes JITed.`);
    out.push(
      `bench object: bench_lb ${benchInsns.lb.instructions}, bench_noop ${benchInsns.noop.instructions}, bench_empty ${benchInsns.empty.instructions} instructions (xlated).`,
    );
    const pass = rows.filter((r) => r.directNs !== undefined);
    for (const r of pass) {
      out.push(
        `Cross-check, ${r.services} service(s): xdplb_main measured directly on the non-VIP frame (it does not rewrite it) ${r.directNs!.toFixed(1)} ns vs ${r.lbNs.toFixed(1)} ns through the wrapper.`,
      );
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
