// The state directory: a change appends what it changed to a journal instead
// of rewriting every service; a restart reads services.json and its journal,
// a line a crash cut short is no change, and the journal is folded into a new
// services.json once it is as long as the set.
import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ServiceStore } from '../src/control/store';
import { DEFAULT_FLAGS, type StoredService } from '../src/control/model';

const spec = (name: string, backend = '198.51.100.1'): StoredService => ({
  name,
  vip: '203.0.113.10',
  port: 80,
  protocol: 'tcp',
  flags: { ...DEFAULT_FLAGS },
  backends: [{ address: backend, port: 80, weight: 1, state: 'active' }],
});

function dir(t: Test): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-store-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

const journals = (d: string) => fs.readdirSync(d).filter((f) => f.endsWith('.journal'));

/** The journal's lines: what precedes the zeros written ahead. */
const journalText = (file: string) => fs.readFileSync(file, 'utf8').split('\0')[0];

/** Text written where the next line would go, as a write a crash cut short leaves it. */
function writeAtEnd(file: string, text: string): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, text, Buffer.byteLength(journalText(file)));
  } finally {
    fs.closeSync(fd);
  }
}

t.test('a change appends only the services it changed; a restart reads them back', async (t) => {
  const d = dir(t);
  const store = new ServiceStore(d);
  const a = spec('a');
  const b = spec('b');
  await store.save([a, b]);
  const file = fs.readFileSync(store.file, 'utf8');
  const b2 = spec('b', '198.51.100.2');
  const c = spec('c');
  await store.save([a, b2, c]);
  await store.save([b2, c]);
  t.equal(fs.readFileSync(store.file, 'utf8'), file, 'services.json is not rewritten');
  t.equal(journals(d).length, 1);
  const lines = journalText(path.join(d, journals(d)[0])).trim().split('\n');
  t.same(
    lines.map((l) => Object.keys(JSON.parse(l) as object)[0]),
    ['put', 'put', 'delete'],
    'b changed, c added, a deleted: three lines',
  );
  t.same(
    (await new ServiceStore(d).load()).map((s) => `${s.name} ${s.backends[0].address}`).sort(),
    ['b 198.51.100.2', 'c 198.51.100.1'],
  );
});

t.test('a journal line a crash cut short is no change; a bad line before the last is an error', async (t) => {
  const d = dir(t);
  const store = new ServiceStore(d);
  const a = spec('a');
  await store.save([a]);
  await store.save([a, spec('b')]);
  const journal = path.join(d, journals(d)[0]);
  writeAtEnd(journal, '{"put":{"name":"c"');
  t.same(
    (await new ServiceStore(d).load()).map((s) => s.name),
    ['a', 'b'],
  );
  writeAtEnd(journal, '\n{"delete":"a"}\n');
  await t.rejects(new ServiceStore(d).load(), { message: /services\.1\.journal:2: / });
});

t.test('the journal is folded into a new services.json once it is longer than the set', async (t) => {
  const d = dir(t);
  const store = new ServiceStore(d);
  await store.save([spec('a')]);
  for (let i = 0; i < 300; i++) await store.save([spec('a', `198.51.100.${(i % 200) + 1}`)]);
  t.same(journals(d), ['services.2.journal'], 'folded once, the old journal removed');
  const state = JSON.parse(fs.readFileSync(store.file, 'utf8')) as { journal: number; services: StoredService[] };
  t.equal(state.journal, 2);
  t.same(
    state.services.map((s) => s.backends[0].address),
    ['198.51.100.57'],
    'services.json holds the 257th change',
  );
  t.same(
    (await new ServiceStore(d).load()).map((s) => `${s.name} ${s.backends[0].address}`),
    ['a 198.51.100.100'],
  );
});

t.test('a change is written over zeros already on disk: the sync flushes data, not the file size', async (t) => {
  const d = dir(t);
  const store = new ServiceStore(d);
  await store.save([spec('a')]);
  await store.save([spec('a'), spec('b')]);
  const journal = path.join(d, journals(d)[0]);
  const size = fs.statSync(journal).size;
  const first = Buffer.byteLength(journalText(journal));
  t.ok(size >= 64 * 1024, `zeros written ahead (${size} bytes)`);
  await store.save([spec('a'), spec('b'), spec('c')]);
  t.equal(fs.statSync(journal).size, size, 'the next change leaves the size as it was');
  t.ok(Buffer.byteLength(journalText(journal)) > first, 'and its line follows the first');
  await store.close();
  t.same(
    (await new ServiceStore(d).load()).map((s) => s.name),
    ['a', 'b', 'c'],
  );
});

t.test('a change whose write fails leaves no line behind and the next one follows the last good line', async (t) => {
  const d = dir(t);
  const store = new ServiceStore(d);
  await store.save([spec('a')]);
  await store.save([spec('a'), spec('b')]);
  const journal = path.join(d, journals(d)[0]);
  const before = journalText(journal);
  // the open journal's handle closed under the store: its next write fails
  await (store as unknown as { open: { fh: { close(): Promise<void> } } }).open.fh.close();
  await t.rejects(store.save([spec('a'), spec('b'), spec('c')]));
  t.equal(journalText(journal), before, 'nothing of the refused change on disk');
  t.same(
    (await new ServiceStore(d).load()).map((s) => s.name),
    ['a', 'b'],
  );
});
