// BPF_PROG_TEST_RUN through the addon: verdicts, output bytes, repeat, ctx.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import { needsRoot, pinDir } from '../harness/fixtures';

const OBJ = bpf.testObjectPath('native_test');

function frame(): Buffer {
  const f = Buffer.alloc(64);
  Buffer.from('020000000001', 'hex').copy(f, 0); // destination
  Buffer.from('020000000002', 'hex').copy(f, 6); // source
  f.writeUInt16BE(0x0800, 12);
  for (let i = 14; i < 64; i++) f[i] = i;
  return f;
}

t.test('a rewriting program returns its verdict and the rewritten bytes', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const input = frame();
  const r = obj.program('xdp_swap_tx').testRun({ data: input });
  t.equal(r.retval, bpf.XDP_TX);
  t.equal(r.data.length, 64);
  t.equal(r.data.subarray(0, 6).toString('hex'), '020000000002', 'destination is the old source');
  t.equal(r.data.subarray(6, 12).toString('hex'), '020000000001', 'source is the old destination');
  t.same(r.data.subarray(12), frame().subarray(12), 'the rest is untouched');
  t.same(input, frame(), "the caller's frame is not written: the output is a buffer of its own");
  t.ok(Number.isSafeInteger(r.duration), `duration: whole nanoseconds as the kernel counts them (${r.duration})`);
  t.throws(() => obj.program('xdp_swap_tx').testRun({ data: frame(), dataSizeOut: 32 }), { code: 'ENOSPC', op: 'test run' }, 'an output buffer smaller than the frame is refused');
  t.end();
});

t.test('repeat runs the program that many times', needsRoot, async (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const counter = obj.map('test_percpu');
  const key = Buffer.alloc(4);
  const sum = () => (counter.lookupPerCpu(key) ?? []).reduce((a, v) => a + v.readBigUInt64LE(), 0n);
  const before = sum();
  const r = obj.program('xdp_count_pass').testRun({ data: frame(), repeat: 1000 });
  t.equal(r.retval, bpf.XDP_PASS);
  t.equal(sum() - before, 1000n);
  const a = await obj.program('xdp_count_pass').testRunAsync({ data: frame(), repeat: 500 });
  t.equal(a.retval, bpf.XDP_PASS);
  t.equal(sum() - before, 1500n, 'the asynchronous form runs too');
});

t.test('ctx sets the ingress interface; a bad ctx is an error', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const p = obj.program('xdp_drop_all');
  t.equal(obj.program('xdp_swap_tx').testRun({ data: frame(), ctx: bpf.xdpContext(1) }).retval, bpf.XDP_TX, 'loopback is a valid ingress');
  t.throws(() => p.testRun({ data: frame(), ctx: bpf.xdpContext(0x7ffffff0) }), { code: 'ENODEV', op: 'test run' });
  t.throws(() => p.testRun({ data: Buffer.alloc(4) }), { code: 'EINVAL', op: 'test run' }, 'a frame shorter than Ethernet is refused');
  t.end();
});

t.test('program info reports instruction counts', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const i = obj.program('xdp_swap_tx').info();
  t.equal(i.type, 'xdp');
  t.ok(i.id > 0);
  t.ok(i.instructions > 5 && i.instructions < 100, `${i.instructions} instructions`);
  t.end();
});
