// The daemon end to end: a real process in its own namespace, the datapath
// attached to a veth, services from the file and from the gRPC API, errors that
// name the field and change nothing, and the maps holding exactly the state.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import * as L from '../src/datapath/layout';
import { vipFilterBit } from '../src/datapath/flowhash';
import { Address } from '../src/net/address';
import { daemonFixture, reflectedServices, rpc } from '../harness/daemon';
import { needsRoot } from '../harness/fixtures';

const FILE_SERVICES = `
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
      - address: 198.51.100.12
`;

interface Svc {
  name: string;
  vip: string;
  port: number;
  protocol: string;
  owner: string;
  flags: Record<string, boolean>;
  backends: Array<{ address: string; port: number; weight: number; state: string }>;
}

/** Every entry of both pinned service maps (IPv4 and IPv6 VIPs), decoded. */
function serviceMapEntries(bpffs: string): Array<L.ServiceKey & L.Service> {
  const maps = [L.MAP_NAMES.services4, L.MAP_NAMES.services].map((name) => bpf.mapFromPin(path.join(bpffs, name)));
  try {
    return maps.flatMap((m) => [...m.keys()].map((k) => ({ ...L.decodeServiceMapKey(k), ...L.decodeService(m.lookup(k) as Buffer) })));
  } finally {
    for (const m of maps) m.close();
  }
}

const isVipEntry = (e: L.ServiceKey) => e.proto === L.IPPROTO_ICMP || e.proto === L.IPPROTO_ICMPV6;

function serviceKeys(bpffs: string): string[] {
  return serviceMapEntries(bpffs).map((e) => `${e.vip} ${e.port} ${e.proto}`).sort();
}

/**
 * The services as xdplb_svc_by_id holds them, and as the service maps do
 * (their ids and flags; VIP entries left out): the two must always agree.
 */
function servicesById(bpffs: string): { byId: string[]; byKey: string[] } {
  const byIdMap = bpf.mapFromPin(path.join(bpffs, L.MAP_NAMES.servicesById));
  try {
    const dump = byIdMap.dump();
    const size = L.LAYOUT.xdplb_service_def.size;
    const byId: string[] = [];
    for (let i = 0; i < dump.count; i++) {
      const d = L.decodeServiceDef(dump.values.subarray(i * size, (i + 1) * size));
      if (d) byId.push(`${dump.keys.readUInt32LE(i * 4)}: ${d.vip} ${d.port} ${d.proto} id ${d.id} flags ${d.flags}`);
    }
    const byKey = serviceMapEntries(bpffs)
      .filter((e) => !isVipEntry(e))
      .map((e) => `${e.id}: ${e.vip} ${e.port} ${e.proto} id ${e.id} flags ${e.flags}`);
    return { byId: byId.sort(), byKey: byKey.sort() };
  } finally {
    byIdMap.close();
  }
}

/** The bits set in xdplb_vip_filter, and those the VIPs of the service maps need. */
function vipFilter(bpffs: string): { set: number[]; needed: number[] } {
  const filter = bpf.mapFromPin(path.join(bpffs, L.MAP_NAMES.vipFilter));
  try {
    const dump = filter.dump();
    const set: number[] = [];
    for (let i = 0; i < dump.count; i++) {
      const word = dump.values.readBigUInt64LE(i * 8);
      for (let b = 0; b < 64; b++) if ((word >> BigInt(b)) & 1n) set.push(dump.keys.readUInt32LE(i * 4) * 64 + b);
    }
    const needed = new Set(serviceMapEntries(bpffs).filter((e) => !isVipEntry(e)).map((e) => vipFilterBit(Address.of(e.vip))));
    return { set: set.sort((a, b) => a - b), needed: [...needed].sort((a, b) => a - b) };
  } finally {
    filter.close();
  }
}

t.test('the daemon attaches, serves the file services and refuses to change them', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES });
  await d.start();
  const q = sys.withNetns(d.topo.lbNs, () => bpf.queryXdp(sys.ifIndex('lb0')));
  t.equal(q.mode, 'native', 'attached in native mode');
  t.ok(q.progId > 0);
  t.equal(fs.statSync(d.socket).mode & 0o777, 0o600, 'the API socket is mode 0600');

  const c = d.client();
  const [e1, list] = await rpc<{ services: Svc[] }>(c, 'ListServices', {});
  t.error(e1);
  t.equal(list.services.length, 1);
  t.match(list.services[0], { name: 'web', vip: '203.0.113.10', port: 80, protocol: 'PROTOCOL_TCP', owner: 'OWNER_FILE' });
  t.same(list.services[0].backends.map((b) => [b.address, b.port, b.weight, b.state]), [
    ['198.51.100.11', 80, 1, 'BACKEND_STATE_ACTIVE'],
    ['198.51.100.12', 80, 1, 'BACKEND_STATE_ACTIVE'],
  ]);
  t.same(serviceKeys(d.bpffs), ['203.0.113.10 0 1', '203.0.113.10 80 6'], 'the service and its VIP entry are in the map');

  const [e2] = await rpc(c, 'AddBackend', { service: 'web', backend: { address: '198.51.100.13', port: 80 } });
  t.equal(e2?.code, grpc.status.FAILED_PRECONDITION, 'file-owned services are read-only');
  t.match(e2?.details, /declared in the configuration file/);

  const [e3, status] = await rpc<{ attachments: Array<{ interface: string; mode: string; programId: number }>; programId: number; maglevSize: number }>(c, 'GetNodeStatus', {});
  t.error(e3);
  t.same(status.attachments.map((a) => [a.interface, a.mode]), [['lb0', 'native']]);
  t.equal(status.attachments[0].programId, q.progId);
  t.equal(status.maglevSize, 1021);
});

t.test('services through the API: every error names the field and changes nothing', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  await d.start();
  const c = d.client();
  const svc = {
    name: 'api1',
    vip: '2001:DB8:100::10',
    port: 443,
    protocol: 'PROTOCOL_TCP',
    flags: { l4Dnat: true },
    backends: [{ address: '2001:db8:200::11', port: 8443 }, { address: '2001:db8:200::12', port: 8443, weight: 3 }],
  };
  const [e1, created] = await rpc<Svc>(c, 'CreateService', { service: svc });
  t.error(e1);
  t.equal(created.vip, '2001:db8:100::10', 'addresses come back canonical');
  t.equal(created.owner, 'OWNER_API');
  t.same(created.backends.map((b) => b.weight), [1, 3], 'an unset weight defaults to 1');
  t.equal(created.flags.icmpEcho, true, 'an unset icmp_echo defaults to on');
  const before = serviceKeys(d.bpffs);

  const cases: Array<[string, unknown, grpc.status, RegExp]> = [
    ['CreateService', { service: svc }, grpc.status.ALREADY_EXISTS, /api1/],
    ['CreateService', { service: { ...svc, name: 'other' } }, grpc.status.ALREADY_EXISTS, /service\.vip.*2001:db8:100::10 port 443 tcp/],
    ['CreateService', { service: { ...svc, name: 'bad', vip: '10.0.0.300' } }, grpc.status.INVALID_ARGUMENT, /service\.vip/],
    ['CreateService', { service: { ...svc, name: 'mixed', port: 444, backends: [{ address: '198.51.100.1', port: 80 }] } }, grpc.status.INVALID_ARGUMENT, /service\.backends\[0\]\.address/],
    ['CreateService', { service: { ...svc, name: 'BadName', port: 445 } }, grpc.status.INVALID_ARGUMENT, /service\.name/],
    ['CreateService', {}, grpc.status.INVALID_ARGUMENT, /service/],
    ['GetService', { name: 'nope' }, grpc.status.NOT_FOUND, /nope/],
    ['DeleteService', { name: 'nope' }, grpc.status.NOT_FOUND, /nope/],
    ['AddBackend', { service: 'api1', backend: { address: '2001:db8:200::11', port: 8443 } }, grpc.status.ALREADY_EXISTS, /^backend: backend 2001:db8:200::11 port 8443 is already in service api1$/],
    ['AddBackend', { service: 'api1', backend: { address: '2001:db8:200::13', port: 8443, weight: 70000 } }, grpc.status.INVALID_ARGUMENT, /weight/],
    ['RemoveBackend', { service: 'api1', backend: { address: '2001:db8:200::99', port: 8443 } }, grpc.status.NOT_FOUND, /2001:db8:200::99/],
    ['DrainBackend', { service: 'nope', backend: { address: '2001:db8:200::11', port: 8443 } }, grpc.status.NOT_FOUND, /nope/],
    ['DrainNode', {}, grpc.status.FAILED_PRECONDITION, /^BGP is not configured/],
    ['GetBgpStatus', {}, grpc.status.FAILED_PRECONDITION, /^BGP is not configured/],
    ['WatchCounters', null, grpc.status.OK, /./],
  ];
  for (const [method, req, code, msg] of cases) {
    if (method === 'WatchCounters') continue;
    const [e] = await rpc(c, method, req);
    t.equal(e?.code, code, `${method} ${JSON.stringify(req).slice(0, 60)} → ${grpc.status[code]}`);
    t.match(e?.details ?? '', msg);
  }
  const [, after] = await rpc<Svc>(c, 'GetService', { name: 'api1' });
  t.same(after, created, 'nothing changed');
  t.same(serviceKeys(d.bpffs), before, 'the datapath did not change either');

  const [e2, added] = await rpc<Svc>(c, 'AddBackend', { service: 'api1', backend: { address: '2001:db8:200::13', port: 8443 } });
  t.error(e2);
  t.equal(added.backends.length, 3);
  const [e3, drained] = await rpc<Svc>(c, 'DrainBackend', { service: 'api1', backend: { address: '2001:DB8:200::11', port: 8443 } });
  t.error(e3);
  t.equal(drained.backends[0].state, 'BACKEND_STATE_DRAINING', 'drain finds the backend by canonical address');
  const [e4, removed] = await rpc<Svc>(c, 'RemoveBackend', { service: 'api1', backend: { address: '2001:db8:200::12', port: 8443 } });
  t.error(e4);
  t.same(removed.backends.map((b) => b.address), ['2001:db8:200::11', '2001:db8:200::13']);

  const backends = bpf.mapFromPin(path.join(d.bpffs, L.MAP_NAMES.backends));
  t.teardown(() => backends.close());
  const live: string[] = [];
  for (let id = 0; id < 16; id++) {
    const b = L.decodeBackend(backends.lookup(L.u32(id)) as Buffer);
    if (b.state !== L.BACKEND_NONE) live.push(`${b.address}:${b.port}:${b.state}`);
  }
  t.same(live.sort(), [`2001:db8:200::11:8443:${L.BACKEND_DRAINING}`, `2001:db8:200::13:8443:${L.BACKEND_ACTIVE}`], 'the backends map holds exactly the live backends');

  const many = Array.from({ length: 1100 }, (_, i) => ({ address: `2001:db8:200::${(0x1000 + i).toString(16)}`, port: 80 }));
  const [e6] = await rpc(c, 'CreateService', { service: { name: 'huge', vip: '2001:db8:100::99', port: 80, protocol: 'PROTOCOL_TCP', backends: many } });
  t.equal(e6?.code, grpc.status.RESOURCE_EXHAUSTED, 'more backends than the Maglev table has entries');
  t.match(e6?.details, /1100 backends.*1021/);
  t.notOk(serviceKeys(d.bpffs).some((k) => k.startsWith('2001:db8:100::99')), 'and nothing of it reached the datapath');

  const withApi1 = servicesById(d.bpffs);
  t.equal(withApi1.byId.length, 1, 'xdplb_svc_by_id holds the service');
  t.same(withApi1.byId, withApi1.byKey, 'as the service map names it');
  const filterWithApi1 = vipFilter(d.bpffs);
  t.equal(filterWithApi1.needed.length, 1);
  t.same(filterWithApi1.set, filterWithApi1.needed, "the VIP filter has the VIP's bit, and only that");
  const [e5] = await rpc(c, 'DeleteService', { name: 'api1' });
  t.error(e5);
  t.same(serviceKeys(d.bpffs), [], 'the service and its VIP entry are gone from the map');
  t.same(servicesById(d.bpffs).byId, [], 'and from xdplb_svc_by_id');
  t.same(vipFilter(d.bpffs).set, [], 'and its VIP filter bit is cleared');
});

t.test('API-owned services and the datapath survive a SIGKILL and restart', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES });
  await d.start();
  let c = d.client();
  const [e1] = await rpc(c, 'CreateService', {
    service: { name: 'dns', vip: '203.0.113.10', port: 53, protocol: 'PROTOCOL_UDP', backends: [{ address: '198.51.100.21', port: 53 }] },
  });
  t.error(e1);
  const progBefore = sys.withNetns(d.topo.lbNs, () => bpf.queryXdp(sys.ifIndex('lb0')).progId);
  const defsBefore = servicesById(d.bpffs);
  t.equal(defsBefore.byId.length, 2);
  t.same(defsBefore.byId, defsBefore.byKey, 'xdplb_svc_by_id agrees with the service maps');
  await d.signal('SIGKILL');
  // derived state a crash could have left half written: the next daemon rewrites it
  const byId = bpf.mapFromPin(path.join(d.bpffs, L.MAP_NAMES.servicesById));
  for (const line of defsBefore.byId) byId.update(L.u32(Number(line.split(':')[0])), L.encodeServiceDef(undefined));
  byId.update(L.u32(4000), L.encodeServiceDef({ vip: '203.0.113.99', port: 1, proto: L.IPPROTO_TCP, id: 4000, flags: 0 }));
  byId.close();
  const filter = bpf.mapFromPin(path.join(d.bpffs, L.MAP_NAMES.vipFilter));
  for (let i = 0; i < L.VIP_FILTER_WORDS; i++) filter.update(L.u32(i), L.u64(i % 2 ? 0n : 0xffn));
  filter.close();
  t.equal(sys.withNetns(d.topo.lbNs, () => bpf.queryXdp(sys.ifIndex('lb0')).progId), progBefore, 'the program stays attached while no daemon runs');
  await d.start();
  c = d.client();
  const [e2, list] = await rpc<{ services: Svc[] }>(c, 'ListServices', {});
  t.error(e2);
  t.same(list.services.map((s) => [s.name, s.owner]), [['dns', 'OWNER_API'], ['web', 'OWNER_FILE']]);
  const progAfter = sys.withNetns(d.topo.lbNs, () => bpf.queryXdp(sys.ifIndex('lb0')).progId);
  t.not(progAfter, progBefore, 'the restarted daemon swapped in its own program');
  t.ok(d.logs.some((l) => l.includes('adopted pinned datapath state') && l.includes('"services":2')), 'it adopted both services');
  t.same(servicesById(d.bpffs).byId, defsBefore.byId, 'xdplb_svc_by_id rewritten from the adopted services, the stray entry gone');
  const filterAfter = vipFilter(d.bpffs);
  t.equal(filterAfter.needed.length, 1, 'one VIP (two services)');
  t.same(filterAfter.set, filterAfter.needed, 'the VIP filter rewritten too: their bits, no others');
});

t.test('SIGHUP applies a valid file and keeps the running state on an invalid one', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES });
  await d.start();
  const c = d.client();
  d.writeConfig({ servicesYaml: FILE_SERVICES.replace('198.51.100.12', '198.51.100.14') });
  d.proc?.kill('SIGHUP');
  await new Promise((r) => setTimeout(r, 700));
  const [, s1] = await rpc<Svc>(c, 'GetService', { name: 'web' });
  t.same(s1.backends.map((b) => b.address), ['198.51.100.11', '198.51.100.14'], 'a valid reload applied');
  d.writeConfig({ servicesYaml: FILE_SERVICES.replace('port: 80', 'port: 80000') });
  d.proc?.kill('SIGHUP');
  await new Promise((r) => setTimeout(r, 700));
  const [, s2] = await rpc<Svc>(c, 'GetService', { name: 'web' });
  t.same(s2, s1, 'an invalid reload changed nothing');
  t.ok(d.logs.some((l) => l.includes('reload rejected') && l.includes('services[0].port')), 'the rejection is logged with the field');
});

t.test('flow_cache in the node settings reaches the datapath, at start and on SIGHUP', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES, extraYaml: 'flow_cache: false' });
  await d.start();
  const config = bpf.mapFromPin(path.join(d.bpffs, L.MAP_NAMES.config));
  t.teardown(() => config.close());
  const flags = () => L.decodeConfig(config.lookup(L.u32(0))!).flags;
  t.equal(flags(), L.CFG_F_NO_FLOW_CACHE, 'off: the flag is set');
  d.writeConfig({ servicesYaml: FILE_SERVICES });
  d.proc?.kill('SIGHUP');
  await new Promise((r) => setTimeout(r, 700));
  t.equal(flags(), 0, 'on again (the default) after a reload');
});

t.test('a bad config keeps the daemon from starting, with file, line, column and field', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES.replace('protocol: tcp', 'protocol: sctp') });
  const r = await d.runToExit();
  t.equal(r.code, 1);
  t.match(r.output, new RegExp(`${d.configPath.replace(/[.]/g, '\\.')}:\\d+:\\d+: services\\[0\\]\\.protocol`));
  const q = sys.withNetns(d.topo.lbNs, () => bpf.queryXdp(sys.ifIndex('lb0')));
  t.equal(q.progId, 0, 'nothing was attached');
});

t.test('standard health service and server reflection answer', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  await d.start();
  const healthDef = protoLoader.loadSync(require.resolve('grpc-health-check/proto/health/v1/health.proto'), { enums: String });
  const health = grpc.loadPackageDefinition(healthDef) as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } };
  const hc = new health.grpc.health.v1.Health(`unix:${d.socket}`, grpc.credentials.createInsecure());
  t.teardown(() => hc.close());
  for (const service of ['', 'xdplb.v1.LoadBalancer']) {
    const res = await new Promise<{ status: string }>((resolve, reject) =>
      (hc as unknown as { check(r: unknown, cb: (e: Error | null, r: { status: string }) => void): void }).check({ service }, (e, r) => (e ? reject(e) : resolve(r))),
    );
    t.equal(res.status, 'SERVING', `health of "${service}"`);
  }
  const names = await reflectedServices(t, d.socket);
  t.ok(names.includes('xdplb.v1.LoadBalancer'), `reflection lists ${names.join(', ')}`);
});

t.test('the CLI talks to the daemon and reports errors in one line', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES });
  await d.start();
  const created = d.cli('service', 'create', 'dns', '--vip', '203.0.113.10', '--port', '53', '--protocol', 'udp', '--backend', '198.51.100.31:53', '--backend', '198.51.100.32:53,weight=2', '-o', 'json');
  t.equal(created.code, 0, created.stderr);
  t.match(JSON.parse(created.stdout), { name: 'dns', protocol: 'udp', owner: 'api', backends: [{ address: '198.51.100.31', weight: 1 }, { address: '198.51.100.32', weight: 2 }] });
  t.same(Object.keys(JSON.parse(created.stdout).flags).sort(), ['conntrackBypass', 'icmpEcho', 'l4Dnat', 'sourceHash'], 'only the real flags');
  const list = d.cli('service', 'list');
  t.equal(list.code, 0);
  t.match(list.stdout, /^NAME\s+VIP\s+PORT/);
  t.match(list.stdout, /web\s+203\.0\.113\.10\s+80\s+tcp/);
  t.match(list.stdout, /dns\s+203\.0\.113\.10\s+53\s+udp\s+icmpEcho\s/, 'flags column names each set flag once');
  const drained = d.cli('backend', 'drain', 'dns', '198.51.100.32:53', '-o', 'yaml');
  t.equal(drained.code, 0);
  t.match(drained.stdout, /state: draining/);
  const missing = d.cli('service', 'get', 'nope');
  t.equal(missing.code, 1);
  t.match(missing.stderr, /^xdplb: NOT_FOUND: .*nope.*\n$/);
  t.equal(missing.stderr.split('\n').length, 2, 'one line');
  const bad = d.cli('backend', 'add', 'dns', '198.51.100.33:53,weight=x');
  t.equal(bad.code, 1);
  t.match(bad.stderr, /weight/);
  const status = d.cli('status', '-o', 'json');
  t.equal(status.code, 0);
  t.match(JSON.parse(status.stdout), { services: 2, attachments: [{ interface: 'lb0', mode: 'native' }] });
  const stats = d.cli('stats', '-o', 'json');
  t.equal(stats.code, 0);
  t.match(JSON.parse(stats.stdout), { services: [{ name: 'dns' }, { name: 'web' }], reasons: { forward_tx: 0 } });
  const down = d.cli('--socket', '/run/xdplbt-none.sock', 'status');
  t.equal(down.code, 1);
  t.match(down.stderr, /cannot reach the daemon/);
});

t.test('WatchCounters streams snapshots until the client cancels', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES });
  await d.start();
  const c = d.client();
  const stream = (c.WatchCounters as (r: unknown) => grpc.ClientReadableStream<{ services: Array<{ name: string }>; timestamp: number }>)({ service: 'web', intervalMs: 100 });
  const got: number[] = [];
  await new Promise<void>((resolve) => {
    stream.on('data', (s) => {
      got.push(s.timestamp);
      t.equal(s.services[0].name, 'web');
      if (got.length === 3) stream.cancel();
    });
    stream.on('error', () => resolve());
    stream.on('end', () => resolve());
  });
  t.equal(got.length, 3);
  t.ok(got[2] > got[0], 'snapshots are fresh');
  const bad = (c.WatchCounters as (r: unknown) => grpc.ClientReadableStream<unknown>)({ service: 'web', intervalMs: 5 });
  const code = await new Promise<number>((resolve) => bad.on('error', (e: grpc.ServiceError) => resolve(e.code)));
  t.equal(code, grpc.status.INVALID_ARGUMENT, 'an interval under 100 ms is refused');
});

t.test('--detach-on-exit=true removes the program and every pin', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: FILE_SERVICES });
  await d.start();
  await d.signal('SIGKILL');
  t.ok(fs.readdirSync(d.bpffs).length > 5, 'pins stay after a kill');
  const proc = (await import('node:child_process')).spawn(
    'nsenter',
    d.daemonArgv('--detach-on-exit=true'),
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  proc.stdout.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  while (!out.includes('"msg":"ready"')) await new Promise((r) => setTimeout(r, 50));
  proc.kill('SIGTERM');
  t.equal(await exited, 0, 'exits cleanly');
  t.match(out, /datapath detached and pins removed/);
  t.equal(sys.withNetns(d.topo.lbNs, () => bpf.queryXdp(sys.ifIndex('lb0'))).progId, 0, 'nothing attached');
  t.notOk(fs.existsSync(d.bpffs), 'the bpffs directory is gone');
});
