// The daemon's recordings over a fake datapath (no root): which recording gets
// which sample, ring losses, a slow stream reader, file rotation and rings of
// files, stop conditions, time order across CPUs, the reader's lifetime, and
// failed starts that change nothing.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { Recorder } from '../src/recorder/recordings';
import { KernelClock, PCAP_HEADER_LEN } from '../src/recorder/pcap';
import { parseFilter, type CompiledFilters } from '../src/recorder/filter';
import { NO_ROTATION, type FileRotation } from '../src/recorder/sink-file';
import { encodeSampleBatch, type RecorderDatapath, type Sample, type SampleBatch } from '../src/recorder/datapath';
import type { FileSpec, RecordingSpec } from '../src/recorder/request';
import type { StreamTarget } from '../src/recorder/sink-stream';

class FakeDatapath implements RecorderDatapath {
  applied: Array<{ compiled: CompiledFilters; caps: Map<number, number> }> = [];
  readers = 0;
  running = false;
  private onBatch?: (b: SampleBatch) => void;
  failNext = false;

  apply(next: CompiledFilters, capOf: (rule: number) => number): void {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('EPERM');
    }
    const caps = new Map<number, number>();
    for (const e of next.entries) for (const r of e.ruleIds) caps.set(r, capOf(r));
    this.applied.push({ compiled: next, caps });
  }
  read(onBatch: (b: SampleBatch) => void): () => void {
    this.readers++;
    this.running = true;
    this.onBatch = onBatch;
    return () => {
      this.running = false;
      this.onBatch = undefined;
    };
  }
  stats() {
    return { emitted: 0, outputFailures: 0 };
  }
  emit(samples: Sample[], lost = 0): void {
    this.onBatch?.(encodeSampleBatch(samples, lost));
  }
  get current(): CompiledFilters | undefined {
    return this.applied.at(-1)?.compiled;
  }
}

const log = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** long enough for samples to leave the reorder window */
const SETTLE = 250;

function sample(rules: bigint, o: { len?: number; point?: 'in' | 'out'; tsNs?: bigint; fill?: number } = {}): Sample {
  const len = o.len ?? 60;
  const tsNs = o.tsNs ?? KernelClock.nowNs();
  return { tsNs, rules, origLen: len, point: o.point ?? 'in', ifindex: 2, family: 4, data: Buffer.alloc(len, o.fill ?? 0xab) };
}

function spec(o: Partial<RecordingSpec> = {}): RecordingSpec {
  return { name: '', filters: [parseFilter('dst=203.0.113.10/32 dport=80 proto=tcp')], capLength: 0, stop: { packets: 0, bytes: 0, durationMs: 0 }, format: 'pcap', ...o };
}

function fileSpec(name: string, rotation: Partial<FileRotation> = {}): FileSpec {
  return { prefix: 'xdplb', fileName: name, overwrite: false, rotation: { ...NO_ROTATION, ...rotation } };
}

/** The records of a classic PCAP capture: [seconds, ns, caplen, origlen] each; throws on a torn file. */
function pcapRecords(b: Buffer): Array<[number, number, number, number]> {
  if (b.readUInt32LE(0) !== 0xa1b23c4d) throw new Error('not a nanosecond PCAP file');
  const out: Array<[number, number, number, number]> = [];
  let off = PCAP_HEADER_LEN;
  while (off < b.length) {
    if (off + 16 > b.length) throw new Error(`torn record header at ${off}`);
    const rec: [number, number, number, number] = [b.readUInt32LE(off), b.readUInt32LE(off + 4), b.readUInt32LE(off + 8), b.readUInt32LE(off + 12)];
    off += 16 + rec[2];
    if (off > b.length) throw new Error(`torn record at ${off}`);
    out.push(rec);
  }
  return out;
}

function collector(o: { flushes?: boolean } = {}) {
  const chunks: Buffer[] = [];
  const held: Array<() => void> = [];
  let ended = false;
  const target: StreamTarget = {
    send(data, done) {
      chunks.push(data);
      if (o.flushes === false) held.push(done);
      else setImmediate(done);
    },
    end() {
      ended = true;
    },
  };
  return { target, bytes: () => Buffer.concat(chunks), ended: () => ended, release: () => held.splice(0).forEach((d) => d()) };
}

function setup(t: { teardown(fn: () => void | Promise<void>): void }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplbt-rec-'));
  const dp = new FakeDatapath();
  const rec = new Recorder({ datapath: dp, dir, log, backendName: (id) => `198.51.100.${id}` });
  t.teardown(async () => {
    await rec.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, dp, rec };
}

t.test('a sample goes to every recording whose rule it carries, cut to each one\'s cap length', async (t) => {
  const { dp, rec } = setup(t);
  const a = rec.startFile(spec({ capLength: 40 }), fileSpec('a'));
  const s = collector();
  const b = rec.startStream(spec({ filters: [parseFilter('src=192.0.2.0/24')] }), { maxBuffered: 1 << 20 }, s.target);
  t.not(a.ruleId, b.ruleId, 'each its own rule');
  t.same(Object.fromEntries(dp.applied.at(-1)!.caps), { [a.ruleId]: 40, [b.ruleId]: 0 }, 'cap length per rule handed to the datapath');
  t.equal(dp.current!.maskSlots, 2, 'two shapes, two masks');
  const bitA = 1n << BigInt(a.ruleId);
  const bitB = 1n << BigInt(b.ruleId);
  dp.emit([sample(bitA | bitB, { len: 100 }), sample(bitA, { len: 50 }), sample(bitB, { len: 70, point: 'out' }), sample(1n << 63n)]);
  await sleep(SETTLE);
  const fa = await rec.stop(a.id);
  const fb = await rec.stop(b.id);
  t.equal(fa.stats.packetsWritten, 2);
  t.equal(fb.stats.packetsWritten, 2);
  t.same(pcapRecords(fs.readFileSync(fa.files[0].path)).map((r) => [r[2], r[3]]), [[40, 100], [40, 50]], 'a: cut to 40 bytes, original lengths kept');
  t.same(pcapRecords(s.bytes()).map((r) => [r[2], r[3]]), [[100, 100], [70, 70]], 'b: whole frames');
  t.equal(fa.stats.bytesCaptured, 80);
  t.ok(s.ended(), 'the stream ended');
  t.equal(dp.current!.entries.length, 0, 'no rules left in the datapath');
  t.notOk(dp.running, 'the reader stopped with the last recording');
});

t.test('ring losses count for every recording running when they are reported', async (t) => {
  const { dp, rec } = setup(t);
  const a = rec.startFile(spec(), fileSpec('a'));
  const b = rec.startFile(spec(), fileSpec('b'));
  dp.emit([], 5);
  const fa = await rec.stop(a.id);
  dp.emit([], 2);
  const fb = await rec.stop(b.id);
  t.equal(fa.stats.lostInRing, 5);
  t.equal(fb.stats.lostInRing, 7);
  t.equal(rec.totals().lost, 7, 'the metrics total');
});

t.test('a slow stream reader: whole packets dropped and counted beyond its buffer; the bytes stay a valid capture', async (t) => {
  const { dp, rec } = setup(t);
  const s = collector({ flushes: false });
  const r = rec.startStream(spec(), { maxBuffered: 4096 }, s.target);
  const bit = 1n << BigInt(r.ruleId);
  dp.emit(Array.from({ length: 100 }, (_, i) => sample(bit, { len: 100, fill: i })));
  await sleep(SETTLE);
  const mid = rec.get(r.id);
  t.ok(mid.stats.droppedSlowClient > 0, `${mid.stats.droppedSlowClient} dropped`);
  t.equal(mid.stats.packetsWritten + mid.stats.droppedSlowClient, 100, 'every packet either written or counted as dropped');
  t.ok(mid.stats.bytesWritten <= 4096, `at most the buffer held (${mid.stats.bytesWritten} bytes)`);
  s.release();
  const stopping = rec.stop(r.id);
  await sleep(10);
  s.release();
  const final = await stopping;
  t.equal(pcapRecords(s.bytes()).length, final.stats.packetsWritten, 'the stream parses into exactly the packets written');
});

t.test('file rotation by packets, as a ring of two files', async (t) => {
  const { dir, dp, rec } = setup(t);
  const r = rec.startFile(spec(), fileSpec('ring', { maxPackets: 3, maxFiles: 2 }));
  const bit = 1n << BigInt(r.ruleId);
  dp.emit(Array.from({ length: 10 }, () => sample(bit)));
  await sleep(SETTLE);
  const final = await rec.stop(r.id);
  await sleep(50);
  t.same(final.files.map((f) => [path.basename(f.path), f.packets, f.deleted, f.closed]), [
    ['ring.pcap', 3, true, true],
    ['ring.1.pcap', 3, true, true],
    ['ring.2.pcap', 3, false, true],
    ['ring.3.pcap', 1, false, true],
  ]);
  t.same(fs.readdirSync(dir).sort(), ['ring.2.pcap', 'ring.3.pcap'], 'only the newest two are kept');
  t.equal(pcapRecords(fs.readFileSync(path.join(dir, 'ring.2.pcap'))).length, 3, 'each file complete in itself');
});

t.test('file rotation by size: no file grows past the limit', async (t) => {
  const { dp, rec } = setup(t);
  const r = rec.startFile(spec(), fileSpec('size', { maxBytes: 1024 }));
  const bit = 1n << BigInt(r.ruleId);
  dp.emit(Array.from({ length: 30 }, () => sample(bit, { len: 100 })));
  await sleep(SETTLE);
  const final = await rec.stop(r.id);
  t.ok(final.files.length >= 3, `${final.files.length} files`);
  for (const f of final.files) {
    t.ok(f.sizeBytes <= 1024, `${path.basename(f.path)}: ${f.sizeBytes} bytes`);
    t.equal(fs.statSync(f.path).size, f.sizeBytes);
  }
  t.equal(final.files.reduce((n, f) => n + f.packets, 0), 30, 'every packet in one of them');
});

t.test('file rotation by age: the first packet after the age starts the next file', async (t) => {
  const { dp, rec } = setup(t);
  const r = rec.startFile(spec(), fileSpec('age', { maxDurationMs: 200 }));
  const bit = 1n << BigInt(r.ruleId);
  dp.emit([sample(bit), sample(bit)]);
  await sleep(SETTLE);
  dp.emit([sample(bit)]);
  await sleep(SETTLE);
  const final = await rec.stop(r.id);
  t.same(final.files.map((f) => [path.basename(f.path), f.packets]), [
    ['age.pcap', 2],
    ['age.1.pcap', 1],
  ]);
});

t.test('stop conditions: captured bytes, then time', async (t) => {
  const { dp, rec } = setup(t);
  const r = rec.startFile(spec({ stop: { packets: 0, bytes: 250, durationMs: 0 } }), fileSpec('bytes'));
  const bit = 1n << BigInt(r.ruleId);
  dp.emit(Array.from({ length: 10 }, () => sample(bit, { len: 100 })));
  await sleep(SETTLE);
  const byBytes = rec.list(true).find((x) => x.id === r.id)!;
  t.equal(byBytes.state, 'stopped');
  t.equal(byBytes.stopReason, 'bytes');
  t.equal(byBytes.stats.packetsWritten, 3, 'stopped at the packet that reached 250 bytes');
  const d = rec.startFile(spec({ stop: { packets: 0, bytes: 0, durationMs: 200 } }), fileSpec('time'));
  await sleep(200 + 400);
  const byTime = rec.list(true).find((x) => x.id === d.id)!;
  t.equal(byTime.stopReason, 'duration');
  t.ok(byTime.stoppedAt! - byTime.startedAt >= 200);
});

t.test('samples leave in time order across CPUs; samples from before a recording started are not its own', async (t) => {
  const { dp, rec } = setup(t);
  const r = rec.startFile(spec(), fileSpec('order'));
  const bit = 1n << BigInt(r.ruleId);
  const now = KernelClock.nowNs();
  // as the reader delivers them: CPU 0's ring, then CPU 1's
  dp.emit([sample(bit, { tsNs: now + 1000n, len: 61 }), sample(bit, { tsNs: now + 3000n, len: 63 })]);
  dp.emit([sample(bit, { tsNs: now + 2000n, len: 62 }), sample(bit, { tsNs: now - 10_000_000n, len: 99 })]);
  await sleep(SETTLE);
  const final = await rec.stop(r.id);
  const recs = pcapRecords(fs.readFileSync(final.files[0].path));
  t.same(recs.map((x) => x[2]), [61, 62, 63], 'in time order, without the older sample');
  const ts = recs.map((x) => BigInt(x[0]) * 1_000_000_000n + BigInt(x[1]));
  t.ok(ts[0] < ts[1] && ts[1] < ts[2]);
});

t.test('failed starts change nothing; the reader runs only while a recording holds a rule', async (t) => {
  const { dir, dp, rec } = setup(t);
  fs.writeFileSync(path.join(dir, 'taken.pcap'), 'x');
  t.throws(() => rec.startFile(spec(), fileSpec('taken')), { code: 'ALREADY_EXISTS' });
  t.equal(dp.applied.length, 0, 'nothing applied');
  t.equal(dp.readers, 0, 'no reader started');
  dp.failNext = true;
  t.throws(() => rec.startFile(spec(), fileSpec('fails')), { code: 'INTERNAL' });
  t.notOk(dp.running, 'the reader closed again');
  await sleep(SETTLE);
  t.notOk(fs.existsSync(path.join(dir, 'fails.pcap')), 'the failed start left no file behind');
  t.same(rec.list(true), [], 'nothing listed');
  const r = rec.startFile(spec(), fileSpec('ok'));
  t.ok(dp.running);
  await rec.stop(r.id);
  t.notOk(dp.running);
  const none = new Recorder({ dir, log });
  t.throws(() => none.startFile(spec(), fileSpec('x')), { code: 'FAILED_PRECONDITION' }, 'no recorder maps: FAILED_PRECONDITION');
});
