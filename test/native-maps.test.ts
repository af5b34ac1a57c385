// The native addon's object and map operations on a real kernel.
import t from 'tap';
import * as fs from 'node:fs';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import * as L from '../src/datapath/layout';
import { needsRoot, pinDir } from '../harness/fixtures';

const OBJ = bpf.testObjectPath('native_test');

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

t.test('an object loads and names its programs and maps', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  t.same(obj.programs().sort(), ['xdp_count_pass', 'xdp_drop_all', 'xdp_emit', 'xdp_swap_tx', 'xdp_tx']);
  t.same(obj.maps().sort(), ['test_events', 'test_hash', 'test_percpu']);
  const m = obj.map('test_hash');
  t.equal(m.type, 'hash');
  t.equal(m.keySize, 4);
  t.equal(m.valueSize, 8);
  t.equal(m.maxEntries, 1024);
  t.end();
});

t.test('a hash map round-trips single entries', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  const m = obj.map('test_hash');
  obj.close();
  t.teardown(() => m.close());
  t.equal(m.lookup(u32(7)), null, 'absent key reads as null');
  m.update(u32(7), u64(0x1122334455667788n));
  t.same(m.lookup(u32(7)), u64(0x1122334455667788n));
  t.throws(() => m.update(u32(7), u64(1n), bpf.BPF_NOEXIST), { code: 'EEXIST', op: 'map update', target: 'test_hash' });
  t.equal(m.delete(u32(7)), true);
  t.equal(m.delete(u32(7)), false, 'deleting an absent key says so');
  t.equal(m.lookup(u32(7)), null);
  t.end();
});

t.test('batched updates and deletes write and remove every element', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const m = obj.map('test_hash');
  const keys = Array.from({ length: 500 }, (_, i) => u32(i * 3));
  const values = keys.map((_, i) => u64(BigInt(i) * 1000n + 1n));
  t.equal(m.batchUpdate(keys, values), 500);
  t.equal([...m.keys()].length, 500);
  for (let i = 0; i < 500; i += 37) t.same(m.lookup(keys[i]), values[i], `entry ${i}`);
  t.equal(m.batchDelete(keys.slice(0, 300)), 300);
  const left = [...m.keys()].map((k) => k.readUInt32LE()).sort((a, b) => a - b);
  t.same(left, keys.slice(300).map((k) => k.readUInt32LE()));
  t.throws(() => m.batchUpdate([u32(1)], []), RangeError);
  t.end();
});

t.test('a per-CPU array gives one value per possible CPU', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const m = obj.map('test_percpu');
  t.equal(m.perCpu, true);
  const vals = m.lookupPerCpu(u32(2));
  t.equal(vals?.length, sys.possibleCpus());
  m.updatePerCpu(u32(2), u64(42n));
  for (const v of m.lookupPerCpu(u32(2)) ?? []) t.equal(v.readBigUInt64LE(), 42n);
  t.end();
});

t.test('maps pinned by name are reused by the next load', needsRoot, (t) => {
  const dir = pinDir(t);
  const first = bpf.openObject(OBJ, { pinRoot: dir });
  first.map('test_hash').update(u32(1), u64(99n));
  first.close();
  t.ok(fs.existsSync(`${dir}/test_hash`), 'pin exists after the object is closed');
  const second = bpf.openObject(OBJ, { pinRoot: dir });
  t.teardown(() => second.close());
  t.same(second.map('test_hash').lookup(u32(1)), u64(99n), 'state survived');
  const byPin = bpf.mapFromPin(`${dir}/test_hash`);
  t.teardown(() => byPin.close());
  t.equal(byPin.name, 'test_hash');
  t.same(byPin.lookup(u32(1)), u64(99n));
  t.end();
});

t.test('max_entries can be set before load', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t), maxEntries: { test_hash: 4096 } });
  t.teardown(() => obj.close());
  t.equal(obj.map('test_hash').maxEntries, 4096);
  t.end();
});

t.test('map-in-map: an inner map is created and stored by fd', needsRoot, (t) => {
  const inner = bpf.createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: 7, name: 'inner_t', flags: 0 });
  const outer = bpf.createMap({ type: 'array_of_maps', keySize: 4, valueSize: 4, maxEntries: 2, name: 'outer_t', innerMap: inner });
  t.teardown(() => {
    outer.close();
    inner.close();
  });
  inner.update(u32(3), u32(33));
  outer.update(u32(1), u32(inner.fd));
  t.equal(outer.lookup(u32(1))?.readUInt32LE(), inner.id, 'outer map holds the inner map id');
  t.end();
});

t.test('failures are errors with errno name, operation and object', needsRoot, (t) => {
  t.throws(() => bpf.openObject('/nonexistent/x.bpf.o'), { code: 'ENOENT', op: 'open object', target: '/nonexistent/x.bpf.o' });
  t.throws(() => bpf.mapFromPin('/sys/fs/bpf/xdplbt-no-such-pin'), { code: 'ENOENT', op: 'open pinned map' });
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  t.throws(() => obj.map('nope'), { code: 'ENOENT', op: 'find map' });
  const m = obj.map('test_hash');
  t.throws(() => m.lookup(Buffer.alloc(3)), RangeError, 'wrong key size is refused before the syscall');
  m.close();
  t.throws(() => m.lookup(u32(1)), { code: 'EBADF', op: 'use of closed map' });
  t.end();
});

t.test('count() counts entries on a worker thread while the event loop turns', needsRoot, async (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const m = obj.map('test_hash');
  t.equal(await m.count(), 0, 'an empty hash');
  const keys = Array.from({ length: 1000 }, (_, i) => u32(i * 7));
  m.batchUpdate(keys, keys.map((k) => u64(BigInt(k.readUInt32LE()))));
  t.equal(await m.count(), 1000, 'every key of a hash');
  t.equal(await obj.map('test_percpu').count(), 4, 'every index of a per-CPU array');

  // the load balancer's connection table (LRU hash, per-CPU lists) with 100,000 flows
  const lb = bpf.openObject(bpf.objectPath('lb'), { pinRoot: pinDir(t) });
  t.teardown(() => lb.close());
  const ct = lb.map('xdplb_conntrack');
  const n = 100_000;
  const flows = Array.from({ length: n }, (_, i) => {
    const k = Buffer.alloc(40);
    k.writeUInt32BE(i + 1, 0);
    k[37] = 4;
    return k;
  });
  for (let i = 0; i < n; i += 10_000) ct.batchUpdate(flows.slice(i, i + 10_000), flows.slice(i, i + 10_000).map(() => Buffer.alloc(L.LAYOUT.xdplb_ct_entry.size)));
  let turned = false;
  setImmediate(() => (turned = true));
  const counting = ct.count();
  ct.close();
  t.equal(await counting, n, `${n} flows counted, the handle closed meanwhile`);
  t.ok(turned, 'the event loop turned while counting');
});

t.test('lookupMany() reads many keys on a worker thread: values in key order, zero where a key is missing', needsRoot, async (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const m = obj.map('test_hash');
  m.batchUpdate([u32(1), u32(2), u32(3)], [u64(10n), u64(20n), u64(30n)]);
  const got = await m.lookupMany([u32(3), u32(99), u32(1)]);
  t.same(got.map((b) => b.readBigUInt64LE(0)), [30n, 0n, 10n], 'key order; the missing key reads zero');
  t.same(await m.lookupMany([]), [], 'no keys, no values');
  const pc = obj.map('test_percpu');
  const cpus = sys.possibleCpus();
  pc.updatePerCpu(u32(2), u64(7n));
  const [two, zero] = await pc.lookupManyPerCpu([u32(2), u32(0)]);
  t.same(two.map((b) => b.readBigUInt64LE(0)), Array.from({ length: cpus }, () => 7n), 'one value per possible CPU');
  t.equal(zero.length, cpus);
  await t.rejects(pc.lookupMany([Buffer.alloc(3)]), { name: 'RangeError' }, 'keys of the wrong size are refused');
});

t.test('dump reads every element in batches', needsRoot, (t) => {
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const m = obj.map('test_hash');
  t.equal(m.dump().count, 0, 'an empty map dumps nothing');
  const keys = Array.from({ length: 1000 }, (_, i) => u32(i * 7));
  m.batchUpdate(keys, keys.map((k) => u64(BigInt(k.readUInt32LE()) + 5n)));
  const d = m.dump();
  t.equal(d.count, 1000);
  const seen = new Map<number, bigint>();
  for (let i = 0; i < d.count; i++) seen.set(d.keys.readUInt32LE(i * 4), d.values.readBigUInt64LE(i * 8));
  t.equal(seen.size, 1000);
  t.equal(seen.get(693), 698n);
  const pc = obj.map('test_percpu').dump();
  t.equal(pc.count, 4, 'an array dumps every index');
  t.equal(pc.valueBytes, 8 * sys.possibleCpus(), 'per-CPU values come whole');
  t.end();
});
