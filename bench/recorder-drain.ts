// The recorder's event-loop side alone (no root): how many samples per second
// the daemon's Recorder takes from the native reader's batches and writes into a
// PCAP file (reorder window, rule dispatch, PCAP records, file sink), with
// batches as the reader thread hands them over. Figures, not a check.
//   node dist/bench/recorder-drain.js [samples] [format]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { encodeSampleBatch, type RecorderDatapath, type Sample, type SampleBatch } from '../src/recorder/datapath';
import { Recorder, REORDER_MS } from '../src/recorder/recordings';
import { KernelClock, type CaptureFormat } from '../src/recorder/pcap';
import { parseFilter } from '../src/recorder/filter';
import { NO_ROTATION } from '../src/recorder/sink-file';

const TOTAL = Number(process.argv[2] ?? 1_000_000);
const FORMAT = (process.argv[3] ?? 'pcap') as CaptureFormat;
/** samples of 118-byte frames in a 1 MiB batch, as the reader thread fills it */
const PER_BATCH = 6000;

class Feed implements RecorderDatapath {
  onBatch?: (b: SampleBatch) => void;
  apply(): void {}
  read(onBatch: (b: SampleBatch) => void): () => void {
    this.onBatch = onBatch;
    return () => (this.onBatch = undefined);
  }
  stats() {
    return { emitted: 0, outputFailures: 0 };
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-bench-drain-'));
  try {
    const feed = new Feed();
    const recorder = new Recorder({ datapath: feed, dir, log: pino({ level: 'warn' }) });
    const r = recorder.startFile(
      { name: 'bench', filters: [parseFilter('dst=203.0.113.10/32')], capLength: 0, stop: { packets: 0, bytes: 0, durationMs: 0 }, format: FORMAT },
      { prefix: 'xdplb', fileName: 'drain', overwrite: true, rotation: NO_ROTATION },
    );
    const frame = Buffer.alloc(118, 0x61);
    // after the recording's start, and old enough to leave the reorder window at
    // once: the bench measures the work, not the wait
    await new Promise((res) => setTimeout(res, REORDER_MS + 20));
    const t0 = KernelClock.nowNs() - BigInt(REORDER_MS) * 1_000_000n - 10_000_000n;
    const batches: SampleBatch[] = [];
    for (let i = 0; i < TOTAL; i += PER_BATCH) {
      const samples: Sample[] = [];
      for (let j = i; j < Math.min(TOTAL, i + PER_BATCH); j++)
        samples.push({ tsNs: t0 + BigInt(j), rules: 1n << BigInt(r.ruleId), origLen: 118, point: j & 1 ? 'out' : 'in', ifindex: 2, family: 4, data: frame });
      batches.push(encodeSampleBatch(samples));
    }
    const start = process.hrtime.bigint();
    for (const b of batches) {
      feed.onBatch!(b);
      // one turn of the loop per batch, as the reader's acknowledgement makes it
      await new Promise((res) => setImmediate(res));
    }
    const handled = process.hrtime.bigint();
    const final = await recorder.stop(r.id);
    const s = (ns: bigint) => Number(ns) / 1e9;
    process.stdout.write(
      `${FORMAT}: ${final.stats.packetsWritten} written, ${final.stats.droppedSlowClient} dropped (file queue); ` +
        `${(TOTAL / s(handled - start) / 1000).toFixed(0)} k samples/s on the event loop ` +
        `(node ${process.version}, ${os.cpus().length} CPUs, load average ${os.loadavg()[0].toFixed(1)})\n`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: Error) => {
  process.stderr.write(`bench/recorder-drain: ${e.message}\n`);
  process.exit(1);
});
