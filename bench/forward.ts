// Live forwarding benchmark (root): real frames through the load balancer's
// XDP program on a veth, next to an empty XDP_TX program in the same position
// measured in the same run, as a ratio. Figures, not a pass/fail check.
//   node dist/bench/forward.js [rounds] [seconds-per-round] [shared|threaded|both]
//
//   gen namespace                          lb namespace
//   g0 ───────────────── veth ───────────── lb0  [xdplb_main | empty XDP_TX]
//   ↑ generator: BPF_PROG_TEST_RUN, live frames, xdp_tx on g0 (frames leave g0)
//   ↓ sink: xdp/decap.bpf.c attached to g0 in sink mode (receives what lb0
//     sends back, strips the outer header, counts, drops)
//
// The load balancer is one-armed, as in the lab: it sends every packet,
// encapsulated, back out of lb0 (XDP_TX) towards a next hop behind g0; the
// empty program sends the frame back unchanged. So both programs sit in the
// same position and use the same egress; only the program differs. The sink
// is the generator namespace's own veth end (a veth end receives its peer's
// XDP_TX frames only with an XDP program of its own).
//
// Why the decapsulator as the sink: a live-frames test run recycles its pages
// within the run (a run costs ~24 ms to set up, so every run must send many
// batches), and a recycled page holds whatever was last written into it. The
// load balancer writes the outer header and new MACs over the frame's first
// bytes; stripping the outer header at the sink writes the Ethernet header
// back in front of the untouched inner packet, so the page holds the original
// frame again (MACs swapped, which no XDP program here looks at). Its cost
// differs between the cases (a strip for the load balancer's frames, a parse
// for the empty program's) and is part of the load balancer's figure.
//
// Rounds alternate empty, lb, empty, lb, ...: each round runs the generator
// for about `seconds` and counts frames at three points: sent by the
// generator (repeat), received by lb0's program and transmitted by it
// (lb0's rx_queue_*_xdp_packets / xdp_tx), dropped by the sink (g0's
// xdp_drops). pps = frames lb0's program sent on to the sink / wall time of
// the run (the sink must have dropped that many, give or take the odd frame of
// the lb namespace's own kernel).
// Checked per round: the load balancer counted every frame as forward_tx and
// nothing else, and the sink got what lb0 sent.
//
// Where the work runs (the third argument: shared, the default; threaded; or
// both, one after the other with the same datapath): "shared", the veth default, runs lb0's NAPI, and
// so the program under test, in the softirq of the CPU that sent the frames:
// generator, program and sink share one CPU and the ratio compares whole
// paths. "threaded" turns on threaded NAPI for lb0 and pins its thread to
// CPU 1, the generator (the main thread) to CPU 0: lb0's program no longer
// competes with the generator. The sink stays with lb0 on CPU 1 (g0's NAPI
// runs in the softirq lb0's transmissions raise there): pinned to CPU 0
// instead, it starves behind the generator's test run and its ring overflows.
// The generator then offers more than CPU 1 takes; the surplus fails at g0's
// transmit (counted there) and the rate is what lb0's program sent on. CPU
// use per side: the generator's thread and lb0's NAPI thread, CPU seconds
// over the wall time of the rounds.
//
// Cases: IPv4 and IPv6 TCP to a VIP (an established flow: the connection
// table hit), with 1 service per family, and with 10,000 services (5,000 per
// family, 4 backends each, Maglev M = 1021 to bound memory, as in the datapath
// benchmark). Namespaces, pins and attachments are removed at the end, on
// error and on SIGINT/SIGTERM.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import * as L from '../src/datapath/layout';
import { DEFAULT_M } from '../src/maglev';
import { REASON, REASON_COUNT } from '../src/datapath/reasons';
import type { ServiceSpec } from '../src/control/model';
import { validateService } from '../src/control/validate';
import { ether, ipv4, ipv6, tcp, TCP_ACK, TCP_PSH } from '../harness/packets';
import { pinDir } from '../harness/fixtures';
import { Cleanup, stopOnSignal } from './cleanup';
import { ethtool, liveLab, liveNode, napiOn, openLiveDatapath, pinMainThread, sumMatching, threadCpuSeconds } from './live-lab';

const ROUNDS = Number(process.argv[2] ?? 5);
const SECONDS = Number(process.argv[3] ?? 1);
const PLACEMENTS = (process.argv[4] ?? 'shared') === 'both' ? (['shared', 'threaded'] as const) : [process.argv[4] as 'shared' | 'threaded'];
if (PLACEMENTS.some((p) => p !== 'shared' && p !== 'threaded')) throw new Error(`placement: shared, threaded or both, got ${process.argv[4]}`);
const MANY = 10_000;
const BACKENDS = 4;
const M_ONE = DEFAULT_M;
const M_MANY = 1021;
const BATCH = 256;

const VIP4 = '203.0.113.10';
const VIP6 = '2001:db8:100::10';
const CLIENT4 = '192.0.2.100';
const CLIENT6 = '2001:db8::100';
const PAYLOAD = Buffer.alloc(64, 0x61); // 64 bytes of TCP payload: 118 / 138-byte frames

interface Counts {
  lbRx: number;
  lbTx: number;
  lbErr: number;
  sink: number;
}

function services(family: 4 | 6 | 'both', count: number): ServiceSpec[] {
  const out: ServiceSpec[] = [];
  const be = (fam: 4 | 6, i: number, b: number) => (fam === 4 ? `198.51.100.${10 + ((i * BACKENDS + b) % 200)}` : `2001:db8:200::${(i * BACKENDS + b).toString(16)}`);
  const mk = (fam: 4 | 6, i: number, vip: string, port: number): ServiceSpec =>
    validateService({
      name: `s${fam}-${i}`,
      vip,
      port,
      protocol: 'tcp',
      flags: { l4Dnat: false, sourceHash: false, conntrackBypass: false, icmpEcho: true },
      backends: Array.from({ length: BACKENDS }, (_, b) => ({ address: be(fam, i, b), port, weight: 1, state: 'active' as const })),
    });
  const fams: Array<4 | 6> = family === 'both' ? [4, 6] : [family];
  const per = Math.floor(count / fams.length);
  for (const fam of fams)
    for (let i = 0; i < per; i++) {
      // the measured service first: VIP:80; the rest: other VIPs and ports of the documentation ranges
      if (i === 0) out.push(mk(fam, i, fam === 4 ? VIP4 : VIP6, 80));
      else out.push(mk(fam, i, fam === 4 ? `203.0.113.${100 + (i % 100)}` : `2001:db8:100::${(0x1000 + (i % 100)).toString(16)}`, 1000 + Math.floor(i / 100)));
    }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root: BPF, bpffs and network namespaces');
  const cleanup = new Cleanup();
  const signal = stopOnSignal('round');
  const t0 = Date.now();
  try {
    const lab = liveLab(cleanup);
    const { genNs, lbNs, g0, lb0, g0Mac, lb0Mac, gen, sink } = lab;
    const empty = lab.test.program('xdp_tx');

    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-bench-'));
    cleanup.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
    const log = pino({ level: 'warn' });
    const frames = {
      4: ether(ipv4({ src: CLIENT4, dst: VIP4 }, tcp({ sport: 40000, dport: 80, flags: TCP_ACK | TCP_PSH, payload: PAYLOAD })), { dst: lb0Mac, src: g0Mac }),
      6: ether(ipv6({ src: CLIENT6, dst: VIP6 }, tcp({ sport: 40000, dport: 80, flags: TCP_ACK | TCP_PSH, payload: PAYLOAD })), { dst: lb0Mac, src: g0Mac }),
    };

    const counts = (): Counts => {
      const l = ethtool(lbNs, 'lb0');
      const g = ethtool(genNs, 'g0');
      return { lbRx: sumMatching(l, /^rx_queue_\d+_xdp_packets$/), lbTx: sumMatching(l, /^rx_queue_\d+_xdp_tx$/), lbErr: sumMatching(l, /^rx_queue_\d+_xdp_tx_errors$/), sink: sumMatching(g, /^rx_queue_\d+_xdp_drops$/) };
    };
    /** One generator run of `repeat` frames, timed; frames counted at each point. */
    let lbThreads: number[] = [];
    const cpu = () => ({ gen: threadCpuSeconds(process.pid), lb: lbThreads.reduce((n, t) => n + threadCpuSeconds(t), 0) });
    const run = (frame: Buffer, repeat: number) => {
      const before = counts();
      const cpuBefore = cpu();
      const start = process.hrtime.bigint();
      sys.withNetns(genNs, () => gen.testRun({ data: frame, ctx: bpf.xdpContext(g0), repeat, flags: bpf.BPF_F_TEST_XDP_LIVE_FRAMES, batchSize: BATCH }));
      const secs = Number(process.hrtime.bigint() - start) / 1e9;
      const after = counts();
      const cpuAfter = cpu();
      return {
        secs,
        repeat,
        lbRx: after.lbRx - before.lbRx,
        lbTx: after.lbTx - before.lbTx,
        lbErr: after.lbErr - before.lbErr,
        sink: after.sink - before.sink,
        genCpu: (cpuAfter.gen - cpuBefore.gen) / secs,
        lbCpu: (cpuAfter.lb - cpuBefore.lb) / secs,
      };
    };
    cleanup.teardown(() => pinMainThread(undefined));

    const rows: string[] = [];
    const worlds: Array<{ count: number; m: number }> = [
      { count: 1, m: M_ONE },
      { count: MANY, m: M_MANY },
    ];
    for (const w of worlds) {
      if (signal.stopping) break;
      const bpffs = pinDir(cleanup);
      const node = liveNode({ bpffs, dir: path.join(stateDir, String(w.count)), maglevSize: w.m });
      const tApply = Date.now();
      const { dp, close: detach } = openLiveDatapath(cleanup, lab, node, log);
      const specs = w.count === 1 ? [...services(4, 1), ...services(6, 1)] : services('both', w.count);
      (await dp.apply(specs)).commit();
      process.stderr.write(`${specs.length} services applied in ${Date.now() - tApply} ms (M=${w.m})\n`);
      const reasonsMap = bpf.mapFromPin(path.join(bpffs, L.MAP_NAMES.reasons));
      cleanup.teardown(() => reasonsMap.close());
      /** packets per reason index, summed over CPUs */
      const reasons = () => Array.from({ length: REASON_COUNT }, (_, i) => Number(L.sumCounters(reasonsMap.lookupPerCpu(L.u32(i))).packets));
      let current: bpf.BpfProgram = dp.program;
      const use = (prog: bpf.BpfProgram) => {
        if (prog === current) return;
        sys.withNetns(lbNs, () => bpf.attachXdp(lb0, prog, { mode: 'native', replace: current }));
        current = prog;
      };

      for (const placement of PLACEMENTS) {
        for (const fam of [4, 6] as const) {
          if (signal.stopping) break;
          const frame = frames[fam];
          const threaded = placement === 'threaded';
          use(dp.program);
          napiOn(lbNs, 'lb0', undefined);
          lbThreads = threaded ? napiOn(lbNs, 'lb0', 1) : [];
          pinMainThread(threaded ? 0 : undefined);
          // the flow's first packet makes the connection-table entry; then calibrate
          run(frame, 1);
          const cal = run(frame, 200_000);
          const repeat = Math.max(100_000, Math.round((cal.repeat / cal.secs) * SECONDS));
          const pps: Record<'empty' | 'lb', number[]> = { empty: [], lb: [] };
          const offered: Record<'empty' | 'lb', number[]> = { empty: [], lb: [] };
          const cpuUse: Record<'empty' | 'lb', Array<{ gen: number; lb: number }>> = { empty: [], lb: [] };
          const ratios: number[] = [];
          for (let r = 0; r < ROUNDS && !signal.stopping; r++) {
            for (const which of ['empty', 'lb'] as const) {
              use(which === 'empty' ? empty : dp.program);
              const before = reasons();
              const sinkBefore = sink.counters();
              const x = run(frame, repeat);
              const after = reasons();
              const sinkAfter = sink.counters();
              const stripped = Number(sinkAfter.decap_ipip.packets + sinkAfter.decap_ip6ip6.packets - sinkBefore.decap_ipip.packets - sinkBefore.decap_ip6ip6.packets);
              if (which === 'lb' ? stripped !== x.lbTx : stripped !== 0) throw new Error(`${which}: the sink decapsulated ${stripped} of ${x.lbTx} frames`);
              // the sink also sees the odd frame of the lb namespace's own kernel (IPv6 ND, MLD)
              // Frames offered faster than a ring drains are lost at lb0's ring (generator
              // to lb0) or g0's (lb0 to the sink): overload, counted, not an error.
              // Either namespace's own kernel adds the odd frame (IPv6 ND, MLD): a slack of 16.
              const slack = (a: number, b: number) => a >= b && a <= b + 16;
              if (!slack(x.sink, x.lbTx) || x.lbRx > repeat + 16 || !slack(x.lbRx, x.lbTx + x.lbErr))
                throw new Error(`${which}: ${repeat} sent, lb0 received ${x.lbRx} and sent ${x.lbTx} (errors ${x.lbErr}), the sink dropped ${x.sink}`);
              const delta = after.map((v, i) => v - before[i]);
              const fwd = delta[REASON.forward_tx];
              const other = delta.reduce((a, b) => a + b, 0) - fwd;
              if (which === 'lb' && (fwd !== x.lbTx + x.lbErr || other > 16)) throw new Error(`lb: ${x.lbRx} frames received, ${x.lbTx + x.lbErr} sent back, ${fwd} counted forward_tx, ${other} other reasons`);
              if (which === 'empty' && fwd + other !== 0) throw new Error('empty: the load balancer counted packets while detached');
              pps[which].push(x.lbTx / x.secs);
              offered[which].push(x.repeat / x.secs);
              cpuUse[which].push({ gen: x.genCpu, lb: x.lbCpu });
            }
            ratios.push(pps.lb[pps.lb.length - 1] / pps.empty[pps.empty.length - 1]);
          }
          use(dp.program);
          const mE = median(pps.empty);
          const mL = median(pps.lb);
          const pct = (xs: Array<{ gen: number; lb: number }>) =>
            threaded ? `${Math.round(100 * median(xs.map((c) => c.gen)))} / ${Math.round(100 * median(xs.map((c) => c.lb)))}` : `${Math.round(100 * median(xs.map((c) => c.gen)))} / –`;
          const row = `| IPv${fam} TCP to a VIP, established flow | ${placement} | ${w.count === 1 ? '1' : '10,000'} (${w.m}) | ${(mL / 1e6).toFixed(2)} | ${(mE / 1e6).toFixed(2)} | **${median(ratios).toFixed(2)}** (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}) | ${Math.round(1e9 / mL - 1e9 / mE)} | ${(median(offered.empty) / 1e6).toFixed(2)} / ${(median(offered.lb) / 1e6).toFixed(2)} | ${pct(cpuUse.empty)} | ${pct(cpuUse.lb)} |`;
          process.stdout.write(`${row}\n`);
          rows.push(row);
        }
      }
      napiOn(lbNs, 'lb0', undefined);
      pinMainThread(undefined);
      detach();
    }
    process.stdout.write(`\nrounds ${ROUNDS} × ${SECONDS} s per program, ${Math.round((Date.now() - t0) / 1000)} s in all, ${new Date().toISOString().slice(0, 10)}, kernel ${os.release()}, node ${process.version}, load average ${os.loadavg()[0].toFixed(1)}\n`);
    process.stdout.write(['', '| case | NAPI | services (Maglev M) | LB Mpps | empty XDP_TX Mpps | ratio (min–max of rounds) | ns per frame more than empty | offered Mpps (empty / LB rounds) | CPU % generator / lb0, empty rounds | same, LB rounds |', '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|', ...rows].join('\n') + '\n');
  } finally {
    await cleanup.run();
  }
}

main().catch((e: Error) => {
  process.stderr.write(`bench/forward: ${e.message}\n`);
  process.exit(1);
});
