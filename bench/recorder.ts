// Recorder benchmark (root): what the recorder adds to the load balancer's
// packet path, in ns per packet under BPF_PROG_TEST_RUN, as ratios to the same
// packet with the recorder off, measured in the same rounds. Figures, not a
// pass/fail check.
//   node dist/bench/recorder.js [runs] [repeat]
//
// The packet is an established IPv4 TCP flow to a VIP (XDP_TX), run through
// bench/bpf/bench_lb.bpf.c like bench/datapath.ts does: bench_lb restores the
// frame after every iteration, bench_noop is the same wrapper around nothing,
// bench_empty the baseline; per round, load balancer = bench_lb − (noop −
// empty). Each mask count (1, 8, 32) gets 100,000 entries compiled by
// src/recorder/filter.ts (shapes: IPv4 destination prefix /32 down to /(33 −
// masks), exact source, ports and protocol), programmed once; then every
// round measures, with n_masks 0 (off) and n_masks = masks (on):
//   - a packet that matches nothing: with one mask, its filter bits; with
//     more, the memo answers for it (the same tuple every iteration, as for
//     the packets of an established flow);
//   - the same with the memo off (REC_F_NO_MEMO): every mask's filter bits,
//     and a hash lookup for each mask whose bits are set, as for the first
//     packet of a flow or a tuple the memo lost;
//   - a packet that matches one entry (of the last mask): one sample at each
//     point (in and out), whole frame, with a PerfReader draining the rings
//     on its native thread meanwhile (its batches reach JavaScript after the
//     synchronous test run). A test run emits far faster than any reader
//     drains (millions of samples a second from one core), so these runs are
//     MATCH_REPEAT iterations, whose samples fit in the rings even undrained:
//     the figure is the cost of a sample actually written, and the table
//     reports the output failures (expected 0);
//   - the same packet with no reader: every bpf_perf_event_output fails
//     (ENOENT), so the row shows the match without the copy.
// Every run is checked: the wrapper counted `repeat` XDP_TX verdicts, the
// frame left is the original, and the recorder's counters moved by exactly
// what the case implies (0, or 2 × repeat samples + failures).
import * as os from 'node:os';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import * as L from '../src/datapath/layout';
import { DEFAULT_M } from '../src/maglev';
import { compileFilters, matchCompiled, type Filter, type RuleFilters } from '../src/recorder/filter';
import { CLIENT4, LB_SRC4, LB_SRC6, OUTER_TTL, VIP4, fibNamespace, openLb, type FibNs, type Lb } from '../harness/datapath';
import { RecorderMaps } from '../harness/datapath-recorder';
import { TCP_ACK, TCP_PSH, ether, ipv4, tcp } from '../harness/packets';
import { Cleanup } from './cleanup';

const RUNS = Number(process.argv[2] ?? 7);
const REPEAT = Number(process.argv[3] ?? 200_000);
const WARMUP_ROUNDS = 1;
const ENTRIES = 100_000;
const MASK_COUNTS = [1, 8, 32];
const SERVICE_ID = 1;
const BACKEND_ID = 4;
const SPORT_MATCH = 40000;
const SPORT_MISS = 40001;
const READER_PAGES = 1024; // 4 MiB per CPU
/** 2 samples of 8 + 4 + 40 + 118 bytes (perf header, size, meta, frame) per iteration: 10,000 use 3.4 MB of a 4 MiB ring */
const MATCH_REPEAT = 10_000;

const frameOf = (sport: number) => ether(ipv4({ src: CLIENT4, dst: VIP4 }, tcp({ sport, dport: 80, flags: TCP_ACK | TCP_PSH, payload: Buffer.alloc(64, 0x61) })));
const FRAME_MATCH = frameOf(SPORT_MATCH);
const FRAME_MISS = frameOf(SPORT_MISS);

const v4 = (a: number[]) => new Uint8Array([...a, ...new Array(16 - a.length).fill(0)]);

/**
 * ENTRIES filters over `masks` shapes (destination /32 .. /(33 − masks)), all
 * distinct: source 192.0.2.(i % 256), source port 1 + ⌊i / 256⌋ (below 400,
 * so never SPORT_MISS); filter 0 is replaced by the matching packet's tuple
 * in the last shape.
 */
function filters(masks: number): RuleFilters[] {
  const rules: Filter[][] = Array.from({ length: 64 }, () => []);
  for (let i = 0; i < ENTRIES; i++) {
    const shape = i === 0 ? masks - 1 : i % masks;
    const len = 32 - shape;
    const dst = v4([203, 0, 113, 10]);
    if (len < 32) dst[3] &= (0xff << (32 - len)) & 0xff;
    rules[i % 64].push({
      family: 4,
      src: { family: 4, bytes: i === 0 ? v4([192, 0, 2, 100]) : v4([192, 0, 2, i % 256]), len: 32 },
      dst: { family: 4, bytes: dst, len },
      sport: i === 0 ? SPORT_MATCH : 1 + Math.floor(i / 256),
      dport: 80,
      proto: L.IPPROTO_TCP,
    });
  }
  return rules.map((fs, ruleId) => ({ ruleId, filters: fs }));
}

interface World {
  lb: Lb;
  rec: RecorderMaps;
  progs: Record<string, bpf.BpfProgram>;
  verdicts: bpf.BpfMap;
}

function openWorld(c: Cleanup): World {
  const lb = openLb(c);
  lb.config({ src4: LB_SRC4, src6: LB_SRC6, ttl: OUTER_TTL });
  lb.service({ vip: VIP4, port: 80, proto: L.IPPROTO_TCP, id: SERVICE_ID });
  lb.backend({ id: BACKEND_ID, address: '198.51.100.10', port: 80 });
  lb.maglev(SERVICE_ID, new Uint32Array(DEFAULT_M).fill(BACKEND_ID));
  const rec = new RecorderMaps(lb.obj);
  c.teardown(() => rec.close());
  // the bench object adopts lb's pinned maps: one set of services, connections and recorder maps
  const obj = bpf.openObject(bpf.testObjectPath('bench_lb'), { pinRoot: lb.pinRoot });
  const w: World = {
    lb,
    rec,
    progs: Object.fromEntries(['bench_empty', 'bench_noop', 'bench_lb'].map((n) => [n, obj.program(n)])),
    verdicts: obj.map('bench_verdicts'),
  };
  c.teardown(() => {
    for (const p of Object.values(w.progs)) p.close();
    w.verdicts.close();
    obj.close();
  });
  return w;
}

const sumPerCpu = (m: bpf.BpfMap, key: number) => L.sumU64(m.lookupPerCpu(L.u32(key)));

type Expect = 'none' | 'all' | 'attempted';

/**
 * One checked test run of `repeat` iterations: the kernel's mean ns per
 * iteration, and the recorder's output failures during it. (Synchronous: the
 * ingress interface and the FIB are those of the namespace this thread enters.)
 */
function measure(w: World, fib: FibNs, name: string, frame: Buffer, expectSamples: Expect, where: string, repeat: number): { ns: number; failed: bigint } {
  const before = sumPerCpu(w.verdicts, bpf.XDP_TX);
  const recBefore = w.rec.counts();
  const r = sys.withNetns(fib.ns, () => w.progs[name].testRun({ data: frame, ctx: bpf.xdpContext(fib.lb0), repeat }));
  if (r.retval !== bpf.XDP_TX) throw new Error(`${where}, ${name}: last verdict ${bpf.XDP_VERDICT_NAMES[r.retval]}`);
  if (!r.data.equals(frame)) throw new Error(`${where}, ${name}: the frame left is not the original one`);
  if (name !== 'bench_empty') {
    const n = sumPerCpu(w.verdicts, bpf.XDP_TX) - before;
    if (n !== BigInt(repeat)) throw new Error(`${where}, ${name}: ${n} XDP_TX verdicts counted, expected ${repeat}`);
  }
  const recAfter = w.rec.counts();
  const samples = recAfter.samples - recBefore.samples;
  const failed = recAfter.outputFailed - recBefore.outputFailed;
  const want = name === 'bench_lb' && expectSamples !== 'none' ? 2n * BigInt(repeat) : 0n;
  if (samples + failed !== want) throw new Error(`${where}, ${name}: ${samples} samples + ${failed} failures, expected ${want} in all`);
  if (expectSamples === 'attempted' && name === 'bench_lb' && samples !== 0n) throw new Error(`${where}: samples written with no reader`);
  return { ns: r.duration, failed };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

type CaseName = 'miss' | 'miss-no-memo' | 'match' | 'match-no-reader';

interface Round {
  off: Record<'miss' | 'match', number>;
  on: Record<CaseName, number>;
  empty: number;
  failedFraction: number;
}

/** The load balancer's own ns of a frame: bench_lb minus the wrapper (noop − empty), all three measured now. */
function lbNs(w: World, fib: FibNs, frame: Buffer, expect: Expect, where: string, repeat = REPEAT): { ns: number; empty: number; failed: bigint } {
  const empty = measure(w, fib, 'bench_empty', frame, expect, where, repeat).ns;
  const noop = measure(w, fib, 'bench_noop', frame, expect, where, repeat).ns;
  const lb = measure(w, fib, 'bench_lb', frame, expect, where, repeat);
  return { ns: lb.ns - (noop - empty), empty, failed: lb.failed };
}

async function round(w: World, fib: FibNs, masks: number): Promise<Round> {
  const where = `${masks} mask(s)`;
  w.rec.off();
  const offMiss = lbNs(w, fib, FRAME_MISS, 'none', `${where}, off`);
  const offMatch = lbNs(w, fib, FRAME_MATCH, 'none', `${where}, off`, MATCH_REPEAT);
  w.rec.setConfig({ nMasks: masks });
  const miss = lbNs(w, fib, FRAME_MISS, 'none', `${where}, non-matching`);
  w.rec.setConfig({ flags: L.REC_F_NO_MEMO });
  const missNoMemo = lbNs(w, fib, FRAME_MISS, 'none', `${where}, non-matching, memo off`);
  w.rec.setConfig({ flags: 0 });
  let received = 0;
  const reader = new bpf.PerfReader(
    w.rec.ring,
    (b) => {
      received += b.records.length;
    },
    READER_PAGES,
  );
  let match: { ns: number; failed: bigint };
  try {
    match = lbNs(w, fib, FRAME_MATCH, 'all', `${where}, matching`, MATCH_REPEAT);
    const until = Date.now() + 10_000;
    const written = Number(2n * BigInt(MATCH_REPEAT) - match.failed);
    while (received < written && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    if (received < written) throw new Error(`${where}: the reader got ${received} of ${written} samples written`);
  } finally {
    reader.close();
  }
  const noReader = lbNs(w, fib, FRAME_MATCH, 'attempted', `${where}, matching, no reader`, MATCH_REPEAT);
  return {
    off: { miss: offMiss.ns, match: offMatch.ns },
    on: { miss: miss.ns, 'miss-no-memo': missNoMemo.ns, match: match.ns, 'match-no-reader': noReader.ns },
    empty: offMiss.empty,
    failedFraction: Number(match.failed) / (2 * MATCH_REPEAT),
  };
}

interface Row {
  masks: number;
  label: string;
  ns: number;
  offNs: number;
  ratio: number;
  min: number;
  max: number;
  note: string;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root: BPF, bpffs and network namespaces');
  const c = new Cleanup();
  let interrupted: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => (interrupted = sig);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const started = Date.now();
  try {
    const fib = fibNamespace(c);
    const w = openWorld(c);
    // the first packet of the flow makes its connection-table entry; every
    // measured iteration is then an established flow
    const first = sys.withNetns(fib.ns, () => w.lb.run(FRAME_MATCH, fib.lb0));
    const second = sys.withNetns(fib.ns, () => w.lb.run(FRAME_MISS, fib.lb0));
    if (first.retval !== bpf.XDP_TX || second.retval !== bpf.XDP_TX) throw new Error('the benchmark flows are not forwarded');
    const info = w.lb.prog.info();
    const rows: Row[] = [];
    const empties: number[] = [];
    let offAll: number[] = [];
    for (const masks of MASK_COUNTS) {
      const t0 = Date.now();
      const compiled = compileFilters(filters(masks));
      if (compiled.masks.length !== masks || compiled.entries.length !== ENTRIES) throw new Error(`${masks} masks: compiled ${compiled.masks.length} masks, ${compiled.entries.length} entries`);
      const tuple = (sport: number) => ({ family: 4, proto: L.IPPROTO_TCP, sport, dport: 80, src: v4([192, 0, 2, 100]), dst: v4([203, 0, 113, 10]) });
      if (matchCompiled(compiled, tuple(SPORT_MATCH)) !== 1n || matchCompiled(compiled, tuple(SPORT_MISS)) !== 0n) throw new Error('the benchmark packets do not match as intended');
      w.rec.program(compiled);
      process.stderr.write(`${masks} mask(s): ${ENTRIES} entries compiled and programmed in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
      const rounds: Round[] = [];
      for (let r = 0; r < WARMUP_ROUNDS + RUNS; r++) {
        if (interrupted) throw new Error(`interrupted by ${interrupted}`);
        const x = await round(w, fib, masks);
        if (r >= WARMUP_ROUNDS) rounds.push(x);
      }
      empties.push(...rounds.map((x) => x.empty));
      offAll = [...offAll, ...rounds.map((x) => x.off.miss)];
      const add = (label: string, k: CaseName, note: (rs: Round[]) => string) => {
        const base = k === 'miss' || k === 'miss-no-memo' ? 'miss' : 'match';
        const ratios = rounds.map((x) => x.on[k] / x.off[base]);
        rows.push({
          masks,
          label,
          ns: median(rounds.map((x) => x.on[k])),
          offNs: median(rounds.map((x) => x.off[base])),
          ratio: median(ratios),
          min: Math.min(...ratios),
          max: Math.max(...ratios),
          note: note(rounds),
        });
      };
      add('non-matching', 'miss', () => (masks === 1 ? "the mask's filter bits, inline" : 'the memo answers'));
      add('non-matching, memo off', 'miss-no-memo', () => 'filter bits of each mask, a lookup where both are set');
      add('matching, reader draining', 'match', (rs) => {
        const f = rs.map((x) => x.failedFraction);
        return `repeat=${MATCH_REPEAT}; output failures ${(100 * Math.max(...f)).toFixed(1)} % at most`;
      });
      add('matching, no reader', 'match-no-reader', () => `repeat=${MATCH_REPEAT}; every output fails (no ring): the match without the copy`);
      process.stderr.write(`  ${rows.slice(-4).map((r) => `${r.label} ${r.ns} ns (${r.ratio.toFixed(2)}×)`).join(', ')} (${((Date.now() - started) / 1000).toFixed(0)} s)\n`);
    }
    const date = new Date().toISOString().slice(0, 10);
    const out: string[] = [];
    out.push(`Recorder (datapath), BPF_PROG_TEST_RUN (node ${process.version}, kernel ${os.release()}, ${os.cpus().length} CPUs, ${date}; median of ${RUNS} rounds of repeat=${REPEAT} after ${WARMUP_ROUNDS} warm-up round; established IPv4 TCP flow to a VIP, ${FRAME_MATCH.length}-byte frame, XDP_TX; ${ENTRIES.toLocaleString('en-US')} entries in every case)`);
    out.push('');
    out.push('| masks | packet | LB ns/pkt, recorder on | LB ns/pkt, recorder off (same rounds) | ratio on / off (min–max of rounds) | note |');
    out.push('|---:|---|---:|---:|---:|---|');
    for (const r of rows) out.push(`| ${r.masks} | ${r.label} | ${r.ns} | ${r.offNs} | **${r.ratio.toFixed(2)}×** (${r.min.toFixed(2)}–${r.max.toFixed(2)}) | ${r.note} |`);
    out.push('');
    out.push(`Recorder off, all rounds: LB ${median(offAll)} ns/pkt; empty XDP_TX program ${median(empties)} ns/pkt.`);
    out.push(`xdplb_main: ${info.instructions} instructions (xlated), ${info.verifiedInstructions} processed by the verifier, ${info.jitedBytes} bytes JITed.`);
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
