// The perf-ring reader: records emitted by a program reach JavaScript in batches
// from the native thread, and what the rings could not hold is counted as lost.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import { needsRoot, pinDir } from '../harness/fixtures';

const OBJ = bpf.testObjectPath('native_test');

function frame(len: number, tag: number): Buffer {
  const f = Buffer.alloc(len, tag);
  f.writeUInt16BE(0x0800, 12);
  return f;
}

function waitFor(cond: () => boolean, ms: number): Promise<void> {
  const until = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (cond()) resolve();
      else if (Date.now() > until) reject(new Error('timed out'));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

t.test('every emitted record arrives with its bytes, in order per CPU', needsRoot, async (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const got: bpf.PerfRecord[] = [];
  let lost = 0;
  let batches = 0;
  const reader = new bpf.PerfReader(obj.map('test_events'), (b) => {
    batches++;
    lost += b.lost;
    for (const r of b.records) got.push({ cpu: r.cpu, data: Buffer.from(r.data) });
  });
  t.teardown(() => reader.close());
  const prog = obj.program('xdp_emit');
  for (let i = 0; i < 200; i++) prog.testRun({ data: frame(100, i) });
  await waitFor(() => got.length >= 200, 5000);
  t.equal(got.length, 200);
  t.equal(lost, 0);
  t.ok(batches >= 1 && batches <= 200, `${batches} batches`);
  const bySeqPerCpu = new Map<number, bigint[]>();
  got.forEach((r, i) => {
    t.equal(r.data.length, 16 + 100, 'header plus the whole frame');
    t.equal(r.data.readUInt32LE(8), 100, 'original length');
    if (i % 50 === 0) t.same(r.data.subarray(16 + 14), frame(100, r.data[16 + 20]).subarray(14), 'frame bytes');
    const seqs = bySeqPerCpu.get(r.cpu) ?? [];
    seqs.push(r.data.readBigUInt64LE(0));
    bySeqPerCpu.set(r.cpu, seqs);
  });
  for (const seqs of bySeqPerCpu.values()) t.same(seqs, [...seqs].sort((a, b) => (a < b ? -1 : 1)), 'per-CPU order kept');
  t.same(reader.stats(), { received: 200, lost: 0, pollErrors: 0 });
});

t.test('records the rings cannot hold are counted as lost, none invented', needsRoot, async (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  let received = 0;
  let lost = 0;
  // One page per CPU holds only a dozen 272-byte records; emit far more in one
  // syscall so the reader cannot keep up.
  const reader = new bpf.PerfReader(
    obj.map('test_events'),
    (b) => {
      received += b.records.length;
      lost += b.lost;
    },
    1,
  );
  t.teardown(() => reader.close());
  const emitted = 20000;
  const prog = obj.program('xdp_emit');
  prog.testRun({ data: frame(256, 7), repeat: emitted });
  // The kernel reports a loss with the next record it can store in the same
  // CPU's ring, so once the reader has drained it, one more record on that CPU
  // carries the count. The test's thread may have moved to another CPU: a few
  // more records, until one lands on the ring with the pending count.
  await new Promise((r) => setTimeout(r, 300));
  let extra = 0;
  for (let i = 0; i < 20 && received + lost < emitted + extra; i++) {
    prog.testRun({ data: frame(64, 8) });
    extra++;
    await waitFor(() => received + lost >= emitted + extra, 500).catch(() => undefined);
  }
  t.ok(lost > 0, `${lost} lost`);
  t.ok(received > 0, `${received} received`);
  t.equal(received + lost, emitted + extra, `received + lost = emitted (and ${extra} records to carry the count)`);
  t.same(reader.stats(), { received, lost, pollErrors: 0 });
});

t.test('a closed reader delivers nothing more and close is idempotent', needsRoot, async (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  let received = 0;
  const reader = new bpf.PerfReader(obj.map('test_events'), (b) => {
    received += b.records.length;
  });
  reader.close();
  reader.close();
  obj.program('xdp_emit').testRun({ data: frame(64, 1) });
  await new Promise((r) => setTimeout(r, 200));
  t.equal(received, 0);
});
