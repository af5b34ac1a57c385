// A change is one transaction: whichever map or pin write fails, the maps, the
// pins, the id pools, the API's view and the state file are exactly as before,
// and the next change succeeds. Capacity is counted before anything is written:
// at full capacity a change that cannot fit is refused cleanly, and replacing a
// backend by another (same total) fits.
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { LbDatapath } from '../src/datapath/lb';
import { Controller } from '../src/control/controller';
import { ServiceStore } from '../src/control/store';
import { validateService } from '../src/control/validate';
import { DEFAULT_NODE, type NodeSettings, type ServiceSpec } from '../src/control/model';
import { needsRoot, pinDir, type Teardown } from '../harness/fixtures';

const silent = pino({ level: 'silent' });

// Every write through the map API (what the kernel can refuse) is counted; the
// failAt-th from the moment it is set throws, once: the rollback's own writes pass.
let failAt = 0;
let writes = 0;
const proto = bpf.BpfMap.prototype as unknown as Record<string, (...args: unknown[]) => unknown>;
for (const name of ['update', 'updatePerCpu', 'delete', 'batchUpdate', 'batchUpdatePacked', 'batchUpdatePackedAsync', 'batchDelete', 'pin']) {
  const write = proto[name];
  proto[name] = function (this: bpf.BpfMap, ...args: unknown[]) {
    if (failAt && ++writes === failAt) {
      failAt = 0;
      throw Object.assign(new Error(`injected failure of write ${writes} (${name} ${this.name})`), { code: 'EIO' });
    }
    return write.apply(this, args);
  };
}

/** The maps the daemon writes, by their pins. */
const DAEMON_MAPS = ['services', 'services4', 'servicesById', 'vipFilter', 'backends', 'maglev', 'serviceStats', 'backendStats', 'revnat', 'config'] as const;

const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 16);

/** A map's entries sorted by key (a hash map's order changes when an entry is put back), as a digest and a count. */
function mapDigest(pin: string): string {
  const m = bpf.mapFromPin(pin);
  try {
    const d = m.dump();
    const vs = d.values.length / Math.max(1, d.count);
    const entries = Array.from({ length: d.count }, (_, i) => Buffer.concat([d.keys.subarray(i * m.keySize, (i + 1) * m.keySize), d.values.subarray(i * vs, (i + 1) * vs)]));
    entries.sort(Buffer.compare);
    return `${d.count} entries ${digest(Buffer.concat(entries))}`;
  } finally {
    m.close();
  }
}

interface World {
  dp: LbDatapath;
  c: Controller;
  store: ServiceStore;
  bpffs: string;
}

/** Everything a change may touch, as it is now. */
function snapshot(w: World): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of DAEMON_MAPS) out[L.MAP_NAMES[k]] = mapDigest(path.join(w.bpffs, L.MAP_NAMES[k]));
  out.xdplb_be_owner = mapDigest(path.join(w.bpffs, 'xdplb_be_owner'));
  for (const f of fs.readdirSync(path.join(w.bpffs, 'maglev')).sort()) {
    const m = bpf.mapFromPin(path.join(w.bpffs, 'maglev', f));
    out[`pin maglev/${f}`] = `map id ${m.id}`;
    m.close();
    out[`table maglev/${f}`] = mapDigest(path.join(w.bpffs, 'maglev', f));
  }
  out.api = JSON.stringify(w.c.list());
  out.ids = JSON.stringify(w.c.list().map((s) => [s.name, w.dp.ids(s)?.service, [...(w.dp.ids(s)?.backends ?? [])]]));
  for (const pool of ['serviceIds', 'backendIds'] as const) {
    const p = w.dp[pool] as unknown as { used: Uint8Array; next: number; resting: Map<number, number> };
    out[pool] = JSON.stringify({ used: digest(Buffer.from(p.used)), next: p.next, resting: [...p.resting].sort((a, b) => a[0] - b[0]) });
  }
  if (fs.existsSync(w.store.dir)) for (const f of fs.readdirSync(w.store.dir).sort()) out[`state ${f}`] = digest(fs.readFileSync(path.join(w.store.dir, f)));
  return out;
}

async function world(t: Teardown, backends: number): Promise<World> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-txn-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const bpffs = path.join(pinDir(t), 'lb');
  const node: NodeSettings = { ...DEFAULT_NODE, interfaces: [], maglevSize: 251, bpffs, stateDir };
  const dp = LbDatapath.open(node, silent, { backends });
  t.teardown(() => dp.uninstall());
  const store = new ServiceStore(path.join(stateDir, 'state'));
  return { dp, c: new Controller(dp, store, validateService, silent), store, bpffs };
}

const be = (...hosts: number[]) => hosts.map((h) => ({ address: `198.51.100.${h}` }));

function fileService(i: number): ServiceSpec {
  return validateService({ name: `f${i}`, vip: `203.0.113.${100 + i}`, port: 80, protocol: 'tcp', backends: be(150 + (i % 50), 200 + (i % 50)) });
}

/**
 * Runs `change` with the 1st, 2nd, ... write failing until it runs through:
 * after each failure everything is as before and another change succeeds.
 * Resolves with the number of writes the change makes.
 */
async function everyFailure(t: Test, w: World, what: string, change: () => Promise<unknown>): Promise<number> {
  for (let k = 1; k <= 400; k++) {
    const before = snapshot(w);
    writes = 0;
    failAt = k;
    let error: unknown;
    try {
      await change();
    } catch (e) {
      error = e;
    }
    const failed = failAt === 0;
    failAt = 0;
    if (!failed) {
      t.error(error, `${what}: made with no failure (${k - 1} writes)`);
      return k - 1;
    }
    t.ok(error, `${what}: write ${k} failed, the change is refused`);
    t.same(snapshot(w), before, `${what}: write ${k} failed: maps, pins, ids, API and state file as before`);
    await w.c.create({ name: 'probe', vip: '192.0.2.99', port: 7, protocol: 'udp', backends: be(99) });
    await w.c.delete('probe');
  }
  throw new Error(`${what}: still failing after 400 writes`);
}

t.test('a change put back exactly whichever of its writes fails', needsRoot, async (t) => {
  const w = await world(t, 256);
  await w.c.restore([fileService(1), fileService(2)], []);
  await w.c.create({ name: 'a', vip: '203.0.113.10', port: 80, protocol: 'tcp', backends: be(11, 12) });
  await w.c.create({ name: 'b', vip: '2001:db8::10', port: 53, protocol: 'udp', flags: { icmpEcho: true }, backends: [{ address: '2001:db8::11' }, { address: '2001:db8::12' }] });

  const c = { name: 'c', vip: '203.0.113.20', port: 80, protocol: 'tcp', flags: { l4Dnat: true, icmpEcho: true }, backends: [{ address: '198.51.100.31', port: 8080 }, { address: '198.51.100.32', port: 8080 }] };
  t.ok((await everyFailure(t, w, 'create', () => w.c.create(c))) >= 8, 'create writes backends, a table, a pin, the service, its VIP entry and reverse NAT');
  await everyFailure(t, w, 'update moving the VIP', () => w.c.update({ ...c, vip: '203.0.113.21' }));
  t.equal(w.c.get('c').vip, '203.0.113.21');
  await everyFailure(t, w, 'backend replaced', () => w.c.setBackends('a', be(11, 13)));
  t.same(
    w.c.get('a').backends.map((b) => b.address),
    ['198.51.100.11', '198.51.100.13'],
  );
  await everyFailure(t, w, 'delete', () => w.c.delete('b'));
  t.throws(() => w.c.get('b'));
  const api = await w.store.load();
  const many = Array.from({ length: 16 }, (_, i) => fileService(i + 1));
  await everyFailure(t, w, 'restore of many services', () => w.c.restore(many, api));
  t.equal(w.c.list().length, 18);
  await everyFailure(t, w, 'replace of the file services', () => w.c.replaceOwned('file', many.slice(6).map((s) => ({ ...s, backends: s.backends.slice(1) }))));
  t.equal(w.c.list().length, 12);

  // the state directory refuses the write: the datapath change is put back
  const before = snapshot(w);
  const save = w.store.save.bind(w.store);
  w.store.save = () => Promise.reject(new Error('no space left on device'));
  await t.rejects(w.c.create({ ...c, name: 'd', vip: '203.0.113.30' }), { code: 'UNAVAILABLE' });
  w.store.save = save;
  t.same(snapshot(w), before, 'the state file failed: maps, pins, ids and API as before');
  await w.c.create({ ...c, name: 'd', vip: '203.0.113.30' });
});

t.test('at full capacity a change that cannot fit is refused and changes nothing', needsRoot, async (t) => {
  const w = await world(t, 8);
  await w.c.create({ name: 'a', vip: '203.0.113.10', port: 80, protocol: 'tcp', backends: be(11, 12, 13, 14) });
  await w.c.create({ name: 'b', vip: '203.0.113.20', port: 80, protocol: 'tcp', backends: be(21, 22, 23, 24) });

  const before = snapshot(w);
  await t.rejects(w.c.update({ name: 'b', vip: '203.0.113.21', port: 80, protocol: 'tcp', backends: be(21, 22, 23, 24) }), {
    code: 'RESOURCE_EXHAUSTED',
    message: /no free backend id: this change adds 4 backends; 0 of 8 ids are free or resting; the 4 ids of removed services can be handed out from the next change on/,
  });
  t.same(snapshot(w), before, 'moving a VIP at capacity changes nothing');
  await t.rejects(w.c.addBackend('a', { address: '198.51.100.15' }), { code: 'RESOURCE_EXHAUSTED' });
  t.same(snapshot(w), before, 'one backend too many changes nothing');
  await w.c.create({ name: 'empty', vip: '203.0.113.30', port: 80, protocol: 'tcp' });
  await w.c.delete('empty');
});

t.test("at full capacity a backend replaced by another takes the id its service frees; a removed service's ids go to the next change", needsRoot, async (t) => {
  const w = await world(t, 8);
  await w.c.create({ name: 'a', vip: '203.0.113.10', port: 80, protocol: 'tcp', backends: be(11, 12, 13, 14) });
  await w.c.create({ name: 'b', vip: '203.0.113.20', port: 80, protocol: 'tcp', backends: be(21, 22, 23, 24) });
  const ids = w.dp.ids(w.c.get('a'))?.backends as Map<string, number>;
  await w.c.setBackends('a', be(11, 12, 13, 15));
  const after = w.dp.ids(w.c.get('a'))?.backends as Map<string, number>;
  t.equal(after.get('198.51.100.15|80'), ids.get('198.51.100.14|80'), "the new backend takes the replaced one's id (its own service's)");
  const backends = bpf.mapFromPin(path.join(w.bpffs, L.MAP_NAMES.backends));
  t.teardown(() => backends.close());
  t.match(L.decodeBackend(backends.lookup(L.u32(after.get('198.51.100.15|80') as number)) as Buffer), { address: '198.51.100.15', state: L.BACKEND_ACTIVE, serviceId: w.dp.ids(w.c.get('a'))?.service });

  // b's ids rest once b is gone; a new service may take them: its entries name another service
  await w.c.delete('b');
  await w.c.create({ name: 'c', vip: '203.0.113.40', port: 80, protocol: 'tcp', backends: be(41, 42, 43, 44) });
  const c = w.dp.ids(w.c.get('c'));
  for (const id of c?.backends.values() ?? []) t.match(L.decodeBackend(backends.lookup(L.u32(id)) as Buffer), { serviceId: c?.service }, `backend id ${id} names its new service`);
});

t.test('a change builds the Maglev tables of the services it changes, and no other', needsRoot, async (t) => {
  const w = await world(t, 256);
  // the module object itself (not a namespace copy): lb.ts's builds call through it
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const table = require('../src/maglev/table') as { buildTable: (...a: unknown[]) => Uint32Array };
  const build = table.buildTable;
  let built = 0;
  table.buildTable = (...a: unknown[]) => {
    built++;
    return build(...a);
  };
  t.teardown(() => void (table.buildTable = build));
  await w.c.restore(
    Array.from({ length: 20 }, (_, i) => fileService(i + 1)),
    [],
  );
  await w.c.create({ name: 'a', vip: '203.0.113.10', port: 80, protocol: 'tcp', backends: be(11, 12) });
  built = 0;
  await w.c.setBackends('a', be(11, 13));
  t.equal(built, 1, 'one service changed: one table built');
  built = 0;
  await w.c.create({ name: 'b', vip: '203.0.113.11', port: 80, protocol: 'tcp', backends: be(11, 12) });
  await w.c.delete('b');
  t.equal(built, 1, 'a create builds its own table, a delete none');
});

t.test('many large tables are built off the event loop: it turns while they are', needsRoot, async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-txn-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const node: NodeSettings = { ...DEFAULT_NODE, interfaces: [], maglevSize: 65537, bpffs: path.join(pinDir(t), 'lb'), stateDir };
  const dp = LbDatapath.open(node, silent);
  t.teardown(() => dp.uninstall());
  let turned = false;
  const applied = Promise.resolve(dp.apply(Array.from({ length: 30 }, (_, i) => fileService(i + 1))) as unknown);
  setImmediate(() => (turned = true));
  const change = (await applied) as { commit(): void } | undefined;
  change?.commit();
  t.ok(turned, 'the event loop turned before the 30 tables of 65537 entries were in place');
});

t.test('a restarted daemon removes a pinned Maglev table that no service names', needsRoot, async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-txn-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const bpffs = path.join(pinDir(t), 'lb');
  const node: NodeSettings = { ...DEFAULT_NODE, interfaces: [], maglevSize: 251, bpffs, stateDir };
  let dp = LbDatapath.open(node, silent);
  t.teardown(() => dp.uninstall());
  const c = new Controller(dp, new ServiceStore(path.join(stateDir, 'state')), validateService, silent);
  await c.create({ name: 'a', vip: '203.0.113.10', port: 80, protocol: 'tcp', backends: be(11) });
  const id = dp.ids(c.get('a'))?.service as number;
  // what a daemon that failed between two writes left behind
  const stray = bpf.createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: 251, name: 'xdplb_mg77' });
  stray.pin(path.join(bpffs, 'maglev', '77'));
  stray.close();
  dp.close();
  dp = LbDatapath.open(node, silent);
  t.same(fs.readdirSync(path.join(bpffs, 'maglev')), [String(id)], "only service a's table stays pinned");
});
