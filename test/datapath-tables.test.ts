// Maglev tables at scale: the daemon keeps no copy of the tables it installed
// (10,000 of M=16381 entries cost 655 MB), so a change is written as the
// difference from what the kernel's table holds; services with the same
// backends share one build, each table naming its own backend ids.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import * as bpf from '../src/datapath/bpf';
import { LbDatapath } from '../src/datapath/lb';
import { Controller } from '../src/control/controller';
import { ServiceStore } from '../src/control/store';
import { validateService } from '../src/control/validate';
import { backendKey, DEFAULT_NODE, type NodeSettings, type ServiceSpec } from '../src/control/model';
import { TableStream, buildTable } from '../src/maglev';
import { needsRoot, pinDir, type Teardown } from '../harness/fixtures';

const silent = pino({ level: 'silent' });
const M = 251;

function world(t: Teardown): { dp: LbDatapath; c: Controller; bpffs: string } {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-tables-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const bpffs = path.join(pinDir(t), 'lb');
  const node: NodeSettings = { ...DEFAULT_NODE, interfaces: [], maglevSize: M, bpffs, stateDir };
  const dp = LbDatapath.open(node, silent, { backends: 256 });
  t.teardown(() => dp.uninstall());
  return { dp, c: new Controller(dp, new ServiceStore(path.join(stateDir, 'state')), validateService, silent), bpffs };
}

/** The table the kernel holds for a service, by its pin. */
function kernelTable(bpffs: string, id: number): number[] {
  const m = bpf.mapFromPin(path.join(bpffs, 'maglev', String(id)));
  try {
    const d = m.dump();
    return Array.from({ length: d.count }, (_, i) => d.values.readUInt32LE(i * 4));
  } finally {
    m.close();
  }
}

/** The table a service must have: built from its backends and the ids the datapath gave them. */
function expected(dp: LbDatapath, spec: ServiceSpec): number[] {
  const ids = dp.ids(spec);
  if (!ids) throw new Error(`${spec.name} not installed`);
  const set = spec.backends.map((b) => ({ id: ids.backends.get(backendKey(b.address, b.port)) as number, key: `${b.address}:${b.port}`, weight: b.weight }));
  return [...buildTable(set, M)];
}

const be = (...hosts: number[]) => hosts.map((h) => ({ address: `198.51.100.${h}` }));

t.test('a change is written as the difference from the table the kernel holds', needsRoot, async (t) => {
  const w = world(t);
  const s = await w.c.create({ name: 'a', vip: '203.0.113.1', port: 80, protocol: 'tcp', backends: be(1, 2, 3) });
  const id = w.dp.ids(s)?.service as number;
  t.same(kernelTable(w.bpffs, id), expected(w.dp, s));
  // Entries changed behind the daemon's back (another writer, or a table a
  // previous daemon left half-written): the next change must mend them too.
  const m = bpf.mapFromPin(path.join(w.bpffs, 'maglev', String(id)));
  const first = kernelTable(w.bpffs, id)[0];
  const wrong = [...w.dp.ids(s)?.backends.values() ?? []].find((b) => b !== first) as number;
  for (let j = 0; j < 20; j++) m.update(Buffer.from(new Uint32Array([j]).buffer), Buffer.from(new Uint32Array([wrong]).buffer));
  m.close();
  const s2 = await w.c.addBackend('a', { address: '198.51.100.4' });
  t.same(kernelTable(w.bpffs, id), expected(w.dp, s2), 'every entry as built from the new backends');
});

t.test('services with the same backends, in any order, share one build; each table names its own backends', needsRoot, async (t) => {
  const sets = [
    [{ id: 0, key: '198.51.100.1:80', weight: 1 }, { id: 1, key: '198.51.100.2:80', weight: 1 }],
    [{ id: 1, key: '198.51.100.2:80', weight: 1 }, { id: 0, key: '198.51.100.1:80', weight: 1 }],
    [{ id: 0, key: '198.51.100.1:80', weight: 2 }, { id: 1, key: '198.51.100.2:80', weight: 1 }],
  ];
  const stream = new TableStream(sets, M);
  t.equal(stream.size, 2, 'two distinct sets: the weights differ');
  t.same([...(await stream.get(0))], [...buildTable(sets[0], M)]);
  t.same([...(await stream.get(1))], [...buildTable(sets[1], M)]);
  t.same([...(await stream.get(2))], [...buildTable(sets[2], M)]);

  const w = world(t);
  const specs = [
    { name: 'a', vip: '203.0.113.1', port: 80, protocol: 'tcp', backends: be(1, 2, 3) },
    { name: 'b', vip: '203.0.113.2', port: 80, protocol: 'tcp', backends: be(3, 1, 2) },
    { name: 'c', vip: '203.0.113.3', port: 80, protocol: 'tcp', backends: be(2, 3, 1) },
  ].map((s) => validateService(s, 'service'));
  await w.c.restore(specs, []);
  for (const s of specs) t.same(kernelTable(w.bpffs, w.dp.ids(s)?.service as number), expected(w.dp, s), `${s.name}: its own backend ids`);
  const ids = specs.map((s) => new Set(w.dp.ids(s)?.backends.values()));
  t.equal(new Set([...ids[0], ...ids[1], ...ids[2]]).size, 9, 'no backend id shared between services');
});
