// Live capture benchmark (root): how fast the recorder can write real traffic
// into a PCAP file without losing a sample in the ring, next to xdpdump
// (xdp-tools) capturing the same traffic in the same run. Figures, not a check.
//   node dist/bench/recorder-live.js [seconds-per-step]
//
//   gen namespace                        lb namespace
//   g0 ───────────────── veth ─────────── lb0  [xdplb_main + recorder]
//   ↑ generator: live-frames test runs of xdp_tx on g0     ↑ xdpdump -i lb0
//   ↓ sink: xdp/decap.bpf.c on g0 in sink mode                (entry and exit)
//
// The generator: a live-frames test run costs ~24 ms to set up whatever its
// size (a run of one frame costs 0.2 ms, but a run of two already 24 ms), so
// traffic comes as bursts of B frames at the generator's full speed, run after
// run, for `seconds`. Each step doubles B: the offered rate is frames sent over
// the step's wall time, and the burst is what stresses a ring.
//
// Both capture the same frames at the same two points: the recorder's rule
// matches every packet to the VIP (in: as received, out: encapsulated), and
// xdpdump runs with --rx-capture entry,exit on lb0's program (fentry/fexit),
// so each packet should appear twice in each capture. Per step:
// packets through lb0's program (its xdp_packets counter), what each tool
// wrote, and what each lost (the recorder: ring losses reported by the kernel;
// xdpdump: its "dropped by perf ring" count). The recorder runs as in the
// daemon (src/recorder/recordings.ts: reader thread, reorder window, file sink
// through an async stream), on its default ring of 64 pages per CPU.
import { spawn, type ChildProcess } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import type { ServiceSpec } from '../src/control/model';
import { validateService } from '../src/control/validate';
import { RecorderMaps } from '../src/recorder/datapath';
import { Recorder } from '../src/recorder/recordings';
import { NO_ROTATION } from '../src/recorder/sink-file';
import { parseFilter } from '../src/recorder/filter';
import { ether, ipv4, tcp, TCP_ACK, TCP_PSH } from '../harness/packets';
import { pinDir } from '../harness/fixtures';
import { Cleanup, stopOnSignal } from './cleanup';
import { ethtool, liveLab, liveNode, openLiveDatapath, sumMatching } from './live-lab';
import type { GeneratorResult, GeneratorSetup, GeneratorStep } from './live-frames-worker';

const SECONDS = Number(process.argv[2] ?? 2);
const BURSTS = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];
const VIP4 = '203.0.113.10';

/** frames lb0's program ran on, and frames it sent back out (XDP_TX) */
function lbCounts(ns: string): { rx: number; tx: number } {
  const st = ethtool(ns, 'lb0');
  return { rx: sumMatching(st, /^rx_queue_\d+_xdp_packets$/), tx: sumMatching(st, /^rx_queue_\d+_xdp_tx$/) };
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface XdpdumpResult {
  captured: number;
  dropped: number;
  error?: string;
}

/** xdpdump on lb0 (nsenter, so bpffs and BTF stay visible), until stop(). */
async function startXdpdump(lbNs: string, file: string): Promise<{ stop(): Promise<XdpdumpResult> } | { error: string }> {
  const p: ChildProcess = spawn('nsenter', [`--net=/var/run/netns/${lbNs}`, 'xdpdump', '-i', 'lb0', '--rx-capture', 'entry,exit', '-w', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => p.once('exit', (c) => r(c)));
  const deadline = Date.now() + 10000;
  while (!/listening on/i.test(out)) {
    if (p.exitCode !== null || Date.now() > deadline) {
      p.kill('SIGKILL');
      return { error: out.trim().split('\n').slice(-12).join(' / ') || `exit ${p.exitCode}` };
    }
    await sleep(50);
  }
  return {
    async stop() {
      p.kill('SIGINT');
      await exited;
      const captured = /(\d+) packets captured/.exec(out);
      const dropped = /(\d+) packets dropped by perf ring/.exec(out);
      return captured ? { captured: Number(captured[1]), dropped: Number(dropped?.[1] ?? 0) } : { captured: 0, dropped: 0, error: out.trim() };
    },
  };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root: BPF, bpffs and network namespaces');
  const cleanup = new Cleanup();
  const signal = stopOnSignal('step');
  const t0 = Date.now();
  try {
    const lab = liveLab(cleanup);
    const { genNs, lbNs, g0, lb0Mac, g0Mac, gen } = lab;

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-bench-rec-'));
    cleanup.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const log = pino({ level: 'warn' });
    const bpffs = pinDir(cleanup);
    const node = liveNode({ bpffs, dir, maglevSize: 1021 });
    const { dp } = openLiveDatapath(cleanup, lab, node, log);
    const svc: ServiceSpec = validateService({
      name: 'web',
      vip: VIP4,
      port: 80,
      protocol: 'tcp',
      flags: { l4Dnat: false, sourceHash: false, conntrackBypass: false, icmpEcho: true },
      backends: [11, 12, 13, 14].map((i) => ({ address: `198.51.100.${i}`, port: 80, weight: 1, state: 'active' as const })),
    });
    (await dp.apply([svc])).commit();
    const maps = RecorderMaps.open(bpffs);
    if (!maps) throw new Error('lb.bpf.o has no recorder maps');
    cleanup.teardown(() => maps.close());
    maps.reset();
    const recorder = new Recorder({ datapath: maps, dir: node.recorderDir, log });
    cleanup.teardown(() => recorder.close());
    const frame = ether(ipv4({ src: '192.0.2.100', dst: VIP4 }, tcp({ sport: 40000, dport: 80, flags: TCP_ACK | TCP_PSH, payload: Buffer.alloc(64, 0x61) })), { dst: lb0Mac, src: g0Mac });
    // the flow's first packet makes its connection-table entry
    sys.withNetns(genNs, () => gen.testRun({ data: frame, ctx: bpf.xdpContext(g0), repeat: 1, flags: bpf.BPF_F_TEST_XDP_LIVE_FRAMES }));

    const worker = new Worker(path.join(__dirname, 'live-frames-worker.js'), { workerData: { ns: genNs, ifname: 'g0', frame, pinRoot: pinDir(cleanup) } satisfies GeneratorSetup });
    cleanup.teardown(() => worker.terminate().then(() => undefined));

    const probe = await startXdpdump(lbNs, path.join(dir, 'probe.pcap'));
    const xdpdumpError = 'error' in probe ? probe.error : undefined;
    if (!('error' in probe)) await probe.stop();
    if (xdpdumpError) process.stderr.write(`xdpdump does not run here: ${xdpdumpError}\n`);

    const rows: string[] = [];
    let bestRec = 0;
    let bestDump = 0;
    for (const burst of BURSTS) {
      if (signal.stopping) break;
      const dump = xdpdumpError ? undefined : await startXdpdump(lbNs, path.join(dir, `xdpdump-${burst}.pcap`));
      const rec = recorder.startFile(
        { name: 'bench', filters: [parseFilter(`dst=${VIP4}/32`)], capLength: 0, stop: { packets: 0, bytes: 0, durationMs: 0 }, format: 'pcap' },
        { prefix: 'xdplb', fileName: `xdplb-${burst}`, overwrite: true, rotation: NO_ROTATION },
      );
      const before = lbCounts(lbNs);
      const { sent, secs } = await new Promise<GeneratorResult>((resolve) => {
        worker.once('message', resolve);
        worker.postMessage({ burst, seconds: SECONDS } satisfies GeneratorStep);
      });
      await sleep(300);
      const after = lbCounts(lbNs);
      // the program copies every packet at both points, also one whose XDP_TX then fails
      const seen = after.rx - before.rx;
      const forwarded = after.tx - before.tx;
      const final = await recorder.stop(rec.id);
      const d = dump && !('error' in dump) ? await dump.stop() : undefined;
      const fileBytes = fs.statSync(final.files[0].path).size;
      // the program also sees the odd frame of the namespace's own kernel (IPv6 ND), which no filter matches
      const ours = Math.min(sent, seen);
      const recOk = final.stats.lostInRing === 0 && final.stats.packetsWritten === 2 * ours && final.stats.droppedSlowClient === 0;
      const dumpOk = d !== undefined && d.dropped === 0 && d.captured >= 2 * ours;
      const pps = forwarded / secs;
      if (recOk) bestRec = Math.max(bestRec, pps);
      if (dumpOk) bestDump = Math.max(bestDump, pps);
      const row = `| ${burst} | ${(sent / secs / 1000).toFixed(0)} | ${(pps / 1000).toFixed(0)} | ${seen} | ${final.stats.packetsWritten} | ${final.stats.lostInRing} | ${final.stats.droppedSlowClient} | ${(fileBytes / secs / 1e6).toFixed(1)} | ${d ? `${d.captured} | ${d.dropped}` : `– | –`} |`;
      process.stdout.write(`${row}\n`);
      rows.push(row);
      fs.rmSync(final.files[0].path, { force: true });
      fs.rmSync(path.join(dir, `xdpdump-${burst}.pcap`), { force: true });
    }
    process.stdout.write(
      [
        '',
        `${SECONDS} s per step, ${Math.round((Date.now() - t0) / 1000)} s in all, ${new Date().toISOString().slice(0, 10)}, kernel ${os.release()}, node ${process.version}, ${os.cpus().length} CPUs, load average ${os.loadavg()[0].toFixed(1)}`,
        `highest rate with every packet written at both points and zero ring loss: xdplb recorder ${(bestRec / 1000).toFixed(0)} kpps; xdpdump ${xdpdumpError ? `does not run (${xdpdumpError})` : `${(bestDump / 1000).toFixed(0)} kpps`}`,
        '',
        '| burst (frames per run) | offered kpps | forwarded kpps | packets through the program | xdplb written (in+out) | xdplb lost in ring | xdplb dropped (file queue) | xdplb file MB/s | xdpdump captured (entry+exit) | xdpdump dropped |',
        '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
        ...rows,
      ].join('\n') + '\n',
    );
  } finally {
    await cleanup.run();
  }
}

main().catch((e: Error) => {
  process.stderr.write(`bench/recorder-live: ${e.message}\n`);
  process.exit(1);
});
