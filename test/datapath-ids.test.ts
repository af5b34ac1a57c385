// What the daemon's side of the datapath (src/datapath/lb.ts) keeps for the
// connection table: a removed backend's id rests for as long as entries naming
// it may live, across a daemon restart too; every backend carries its
// service's id for the datapath to compare with an entry; the node's
// connection-table lifetimes reach the datapath's config.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import * as L from '../src/datapath/layout';
import { LbDatapath } from '../src/datapath/lb';
import { backendKey, DEFAULT_FLAGS, DEFAULT_NODE, type NodeSettings, type ServiceSpec } from '../src/control/model';
import { validateService } from '../src/control/validate';
import { needsRoot, pinDir } from '../harness/fixtures';

const silent = pino({ level: 'silent' });

const service = (name: string, vip: string, backends: string[]): ServiceSpec =>
  validateService({
    name,
    vip,
    port: 80,
    protocol: 'tcp',
    flags: { ...DEFAULT_FLAGS },
    backends: backends.map((address) => ({ address, port: 80, weight: 1, state: 'active' })),
  });

t.test("a removed backend's id rests across a restart: another service's new backend gets another id", needsRoot, async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-ids-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const node: NodeSettings = { ...DEFAULT_NODE, interfaces: [], maglevSize: 251, bpffs: path.join(pinDir(t), 'lb'), stateDir };
  let dp = LbDatapath.open(node, silent);
  t.teardown(() => dp.uninstall());

  const a = service('a', '203.0.113.10', ['198.51.100.1', '198.51.100.2']);
  (await dp.apply([a])).commit();
  const removed = dp.ids(a)!.backends.get(backendKey('198.51.100.2', 80))!;
  const aId = dp.ids(a)!.service;
  const a1 = service('a', '203.0.113.10', ['198.51.100.1']);
  (await dp.apply([a1])).commit();

  // the daemon restarts: a new process adopts the pins
  dp.close();
  dp = LbDatapath.open(node, silent);
  const b = service('b', '203.0.113.20', ['198.51.100.3', '198.51.100.4']);
  (await dp.apply([a1, b])).commit();
  const bIds = [...dp.ids(b)!.backends.values()];
  t.notOk(bIds.includes(removed), `the freed id ${removed} is not handed out again (got ${bIds.join(', ')})`);
  t.same([...dp.ids(a1)!.backends.values()], [dp.ids(a)?.backends.get(backendKey('198.51.100.1', 80))], 'the kept backend keeps its id');

  const backends = dp['maps'].backends;
  t.match(L.decodeBackend(backends.lookup(L.u32(bIds[0]))!), { address: '198.51.100.3', serviceId: dp.ids(b)!.service }, "a backend names its service's id");
  t.match(L.decodeBackend(backends.lookup(L.u32(dp.ids(a1)!.backends.get(backendKey('198.51.100.1', 80))!))!), { serviceId: aId });
  t.match(L.decodeBackend(backends.lookup(L.u32(removed))!), { address: '', state: L.BACKEND_NONE }, 'the freed slot stays empty');
});

t.test('the conntrack lifetimes of the node settings reach the datapath, at start and on reconfigure (SIGHUP)', needsRoot, async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-ct-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const node: NodeSettings = { ...DEFAULT_NODE, interfaces: [], maglevSize: 251, bpffs: path.join(pinDir(t), 'lb'), stateDir };
  const dp = LbDatapath.open(node, silent);
  t.teardown(() => dp.uninstall());
  const config = () => L.decodeConfig(dp['maps'].config.lookup(L.u32(0))!);
  t.match(config(), { ctTcpS: 3600, ctUdpS: 120, ctClosingS: 10 }, 'the defaults');
  await dp.reconfigure({ ...node, conntrack: { tcpTimeout: 900, udpTimeout: 30, closingTimeout: 5 } });
  t.match(config(), { ctTcpS: 900, ctUdpS: 30, ctClosingS: 5 }, 'changed in place');
});
