// Health checks without root: the rise/fall state machine and its flap damping,
// the health_check configuration, the controller's health overrides (effective
// state in the API, spec on disk, last table kept when all are down), the
// checker against a scripted probe, and the real probes against local servers.
import t from 'tap';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../src/config';
import { Controller, type DatapathChange, type DatapathSink } from '../src/control/controller';
import { XdplbError } from '../src/control/errors';
import type { HealthCheckSpec, ServiceSpec, StoredService } from '../src/control/model';
import { ServiceStore } from '../src/control/store';
import { validateService } from '../src/control/validate';
import { HealthChecker } from '../src/health/checker';
import type { Teardown } from '../harness/fixtures';
import { httpProbe, tcpProbe, udpProbe, type ProbeResult } from '../src/health/probe';
import { holdDownMs, initialHealth, observe, type BackendHealth } from '../src/health/state';

const silent = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('state machine: fall failures take a backend down, rise successes bring it back', async (t) => {
  const rules = { rise: 2, fall: 3 };
  let h: BackendHealth = initialHealth(0);
  const step = (ok: boolean, now: number) => {
    const o = observe(h, ok, now, rules);
    h = o.next;
    return o.transition;
  };
  t.equal(step(false, 1000), undefined, 'one failure: still unknown');
  t.equal(step(false, 2000), undefined);
  t.same(step(false, 3000), { from: 'unknown', to: 'down' }, 'third failure in a row: down');
  t.equal(step(false, 4000), undefined, 'stays down');
  t.equal(step(true, 5000), undefined, 'one success is not enough');
  t.equal(step(false, 6000), undefined, 'a failure resets the successes');
  t.equal(step(true, 7000), undefined);
  t.same(step(true, 8000), { from: 'down', to: 'up' }, 'rise successes in a row: up');
  t.equal(h.since, 8000);
  t.equal(step(false, 9000), undefined);
  t.equal(step(true, 10000), undefined, 'a success resets the failures');
  t.equal(step(false, 11000), undefined);
  t.equal(step(false, 12000), undefined);
  t.same(step(false, 13000), { from: 'up', to: 'down' });
  t.equal(h.lastError, undefined, 'no error text given');
  t.same(observe(initialHealth(0), true, 0, { rise: 1, fall: 1 }).transition, { from: 'unknown', to: 'up' }, 'rise 1');
});

t.test('flap damping: a second fall within the window holds the backend down, doubling', async (t) => {
  const damping = { windowMs: 60_000, baseHoldMs: 10_000, maxHoldMs: 40_000 };
  t.same([1, 2, 3, 4, 5, 6].map((n) => holdDownMs(n, damping)), [0, 10_000, 20_000, 40_000, 40_000, 40_000]);
  const rules = { rise: 1, fall: 1 };
  let h = initialHealth(0);
  const step = (ok: boolean, now: number) => {
    const o = observe(h, ok, now, rules, damping, ok ? undefined : 'ECONNREFUSED');
    h = o.next;
    return o.transition?.to;
  };
  t.equal(step(false, 1000), 'down', 'first fall');
  t.equal(h.lastError, 'ECONNREFUSED');
  t.equal(step(true, 2000), 'up', 'first fall holds nothing: back at once');
  t.equal(step(false, 3000), 'down', 'second fall within the window');
  t.equal(h.holdUntil, 13_000);
  t.equal(step(true, 4000), undefined, 'held down');
  t.equal(step(true, 12_999), undefined, 'still held');
  t.equal(step(true, 13_000), 'up', 'released after the hold');
  t.equal(step(false, 14_000), 'down', 'third fall');
  t.equal(h.holdUntil, 34_000, 'held twice as long');
  t.equal(step(true, 34_000), 'up');
  t.equal(step(false, 200_000), 'down', 'a fall long after the others');
  t.equal(h.holdUntil, 200_000, 'outside the window: no hold');
});

t.test('health_check in the configuration: defaults, durations, and fields of the wrong type refused', async (t) => {
  const cfg = (hc: string) =>
    parseConfig(
      `services:\n  - name: web\n    vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n    health_check:\n${hc}\n    backends:\n      - address: 198.51.100.11\n`,
      'test.yaml',
    ).services[0].healthCheck;
  t.same(cfg('      type: tcp'), { type: 'tcp', interval: 1000, timeout: 500, rise: 2, fall: 3 });
  t.same(cfg('      type: http'), { type: 'http', interval: 1000, timeout: 500, rise: 2, fall: 3, path: '/', expectStatus: 200 });
  t.same(cfg('      type: https\n      path: /healthz\n      expect_status: 204\n      port: 8443\n      interval: 1.5s\n      timeout: 250ms\n      rise: 1\n      fall: 5'), {
    type: 'https',
    interval: 1500,
    timeout: 250,
    rise: 1,
    fall: 5,
    port: 8443,
    path: '/healthz',
    expectStatus: 204,
  });
  t.same(cfg('      type: udp\n      send: ping\n      expect: pong\n      interval: 200ms'), { type: 'udp', interval: 200, timeout: 200, rise: 2, fall: 3, send: 'ping', expect: 'pong' });
  const refused = (hc: string, message: RegExp) => {
    try {
      cfg(hc);
      t.fail(`accepted ${hc}`);
    } catch (e) {
      t.ok(e instanceof XdplbError && e.code === 'INVALID_ARGUMENT', 'INVALID_ARGUMENT');
      t.match((e as Error).message, message);
    }
  };
  refused('      type: icmp', /health_check\.type: must be one of tcp, http, https, udp/);
  refused('      type: tcp\n      path: /', /health_check\.path: applies to http and https checks only, not tcp/);
  refused('      type: http\n      send: x', /health_check\.send: applies to tcp and udp checks only/);
  refused('      type: tcp\n      interval: 1m', /health_check\.interval: "1m" is not a duration/);
  refused('      type: tcp\n      interval: 50ms', /health_check\.interval: must be at least 100 ms/);
  refused('      type: tcp\n      timeout: 2s', /health_check\.timeout: "2s" is longer than the interval \(1000 ms\)/);
  refused('      type: tcp\n      fall: 0', /health_check\.fall: must be >= 1/);
  refused('      type: http\n      path: no-slash', /health_check\.path: "no-slash" is not a request path/);
  refused('      port: 80', /health_check\.type: is required/);
  // The state directory stores the normalised spec (milliseconds): it validates again unchanged.
  const spec = validateService({ name: 'a', vip: '203.0.113.1', port: 80, protocol: 'tcp', healthCheck: cfg('      type: http') });
  t.same(validateService(JSON.parse(JSON.stringify(spec))), spec, 'normalised spec round-trips');
});

// ---------------------------------------------------------------------------
// Controller overrides

class RecordingSink implements DatapathSink {
  applied: ServiceSpec[][] = [];
  apply(services: readonly ServiceSpec[]): Promise<DatapathChange> {
    this.applied.push(JSON.parse(JSON.stringify(services)) as ServiceSpec[]);
    return Promise.resolve({ commit: () => undefined, rollback: () => undefined });
  }
  last(name: string): ServiceSpec {
    return this.applied[this.applied.length - 1].find((s) => s.name === name) as ServiceSpec;
  }
}

const WEB = {
  name: 'web',
  vip: '203.0.113.10',
  port: 80,
  protocol: 'tcp',
  healthCheck: { type: 'tcp', interval: 100, timeout: 50, rise: 1, fall: 1 },
  backends: [{ address: '198.51.100.11' }, { address: '198.51.100.12' }, { address: '198.51.100.13' }],
};

async function controller(t: Teardown) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-health-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sink = new RecordingSink();
  const store = new ServiceStore(dir);
  const c = new Controller(sink, store, validateService, silent);
  await c.restore([validateService({ ...WEB, name: 'file-web', vip: '203.0.113.11' })], []);
  await c.create(WEB);
  return { c, sink, store };
}

const states = (s: Pick<StoredService, 'backends'>) => s.backends.map((b) => b.state);

t.test('controller: a held-down backend is down in the API and the datapath, active in the spec on disk', async (t) => {
  const { c, sink, store } = await controller(t);
  await c.setHealthDown('web', { address: '198.51.100.12', port: 80 }, true);
  t.same(states(c.get('web')), ['active', 'down', 'active'], 'get() shows the effective state');
  t.same(states(c.list().find((s) => s.name === 'web') as ServiceSpec), ['active', 'down', 'active'], 'list() too');
  t.same(states(sink.last('web')), ['active', 'down', 'active'], 'the datapath got it');
  t.same(states(c.declared().find((s) => s.name === 'web') as ServiceSpec), ['active', 'active', 'active'], 'declared() is the spec');
  t.same(states((await store.load())[0]), ['active', 'active', 'active'], 'the state directory keeps the spec');
  t.ok(c.healthHeld('web', { address: '198.51.100.12', port: 80 }));

  await c.setHealthDown('file-web', { address: '198.51.100.11', port: 80 }, true);
  t.same(states(c.get('file-web')), ['down', 'active', 'active'], 'file-owned services can be held down too');
  await t.rejects(c.drainBackend('file-web', { address: '198.51.100.11', port: 80 }), { code: 'FAILED_PRECONDITION' }, 'while still read-only through the API');

  const n = sink.applied.length;
  await c.setHealthDown('web', { address: '198.51.100.12', port: 80 }, true);
  t.equal(sink.applied.length, n, 'holding what is held writes nothing');

  // An API change keeps the override: the spec changes, the hold stays.
  await c.drainBackend('web', { address: '198.51.100.13', port: 80 });
  t.same(states(c.get('web')), ['active', 'down', 'draining']);
  await c.setHealthDown('web', { address: '198.51.100.12', port: 80 }, false);
  t.same(states(c.get('web')), ['active', 'active', 'draining'], 'released');
  t.same(states(sink.last('web')), ['active', 'active', 'draining']);

  await t.rejects(c.setHealthDown('web', { address: '198.51.100.99', port: 80 }, true), { code: 'NOT_FOUND' });
  await t.rejects(c.setHealthDown('nope', { address: '198.51.100.11', port: 80 }, true), { code: 'NOT_FOUND' });

  // A removed backend forgets its hold: added again, it serves until its probes say otherwise.
  await c.setHealthDown('web', { address: '198.51.100.11', port: 80 }, true);
  await c.removeBackend('web', { address: '198.51.100.11', port: 80 });
  await c.addBackend('web', { address: '198.51.100.11', port: 80 });
  t.same(states(c.get('web')), ['active', 'draining', 'active'], 'no stale hold');
});

t.test('controller: when every active backend is held down the datapath keeps the last table', async (t) => {
  const { c, sink } = await controller(t);
  const down = (a: string) => c.setHealthDown('web', { address: a, port: 80 }, true);
  await down('198.51.100.11');
  await down('198.51.100.12');
  t.same(states(sink.last('web')), ['down', 'down', 'active'], 'one left');
  await down('198.51.100.13');
  t.same(states(c.get('web')), ['down', 'down', 'down'], 'the API reports all of them down');
  t.same(states(sink.last('web')), ['down', 'down', 'active'], 'the datapath still forwards to the last one serving');
  await c.setHealthDown('web', { address: '198.51.100.11', port: 80 }, false);
  t.same(states(sink.last('web')), ['active', 'down', 'down'], 'a recovered backend takes over at once');
});

// ---------------------------------------------------------------------------
// The checker, with a scripted probe

t.test('checker: scripted probe outcomes become holds in the controller, logged and counted', async (t) => {
  const { c } = await controller(t);
  const failing = new Set<string>(['198.51.100.12']);
  const probes: string[] = [];
  const transitions: string[] = [];
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  let maxInFlight = 0;
  let inFlight = 0;
  const checker = new HealthChecker(c, log, {
    maxConcurrent: 2,
    resyncMs: 50,
    probe: async (address): Promise<ProbeResult> => {
      probes.push(address);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await sleep(5);
      inFlight--;
      return failing.has(address) ? { ok: false, error: 'ECONNREFUSED' } : { ok: true };
    },
    events: { transition: (s, b, from, to) => transitions.push(`${s} ${b} ${from}->${to}`) },
  });
  t.teardown(() => checker.stop());
  checker.start();
  t.equal(checker.load().targets, 6, 'two services with three backends each');
  const until = async (what: string, cond: () => boolean) => {
    const deadline = Date.now() + 3000;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(10);
    }
  };
  await until('down', () => c.healthHeld('web', { address: '198.51.100.12', port: 80 }));
  t.same(states(c.get('web')), ['active', 'down', 'active']);
  t.ok(lines.some((l) => l.msg === 'backend down' && l.service === 'web' && l.backend === '198.51.100.12:80' && l.error === 'ECONNREFUSED'), 'one log line with fields');
  t.ok(maxInFlight <= 2, `at most 2 probes in flight (saw ${maxInFlight})`);

  failing.clear();
  await until('up', () => !c.healthHeld('web', { address: '198.51.100.12', port: 80 }));
  t.ok(lines.some((l) => l.msg === 'backend up' && l.service === 'web'), 'back up, logged');
  t.ok(transitions.includes('web 198.51.100.12:80 down->up'));

  // A backend declared down is not probed; a removed one is forgotten.
  await c.update({ ...WEB, backends: [{ address: '198.51.100.11' }, { address: '198.51.100.13', state: 'down' }] });
  checker.sync();
  t.same(
    checker.snapshot().filter((v) => v.service === 'web').map((v) => v.backend),
    ['198.51.100.11:80'],
    'only the active backend is checked',
  );
  failing.add('198.51.100.11');
  await until('all down', () => checker.allDown().includes('web'));
  t.ok(lines.some((l) => l.msg === 'every backend of the service is down; its last Maglev table stays in place' && l.service === 'web'));
});

// ---------------------------------------------------------------------------
// Real probes against servers on the loopback

const listen = (server: net.Server | http.Server) =>
  new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
const check = (o: Partial<HealthCheckSpec>): HealthCheckSpec => ({ type: 'tcp', interval: 1000, timeout: 300, rise: 1, fall: 1, ...o });

t.test('probes: tcp, http and udp against local servers', async (t) => {
  const tcp = net.createServer((s) => s.on('data', (d) => s.end(d.toString() === 'PING\r\n' ? '+PONG\r\n' : '-ERR\r\n')));
  const tcpPort = await listen(tcp);
  t.teardown(() => tcp.close());
  t.same(await tcpProbe('127.0.0.1', tcpPort, check({})), { ok: true }, 'tcp connect');
  t.same(await tcpProbe('127.0.0.1', tcpPort, check({ send: 'PING\r\n', expect: '+PONG' })), { ok: true }, 'tcp request and reply');
  t.match(await tcpProbe('127.0.0.1', tcpPort, check({ send: 'HELLO\r\n', expect: '+PONG' })), { ok: false, error: 'closed before the expected reply' });
  const closed = net.createServer();
  const closedPort = await listen(closed);
  await new Promise((r) => closed.close(r));
  t.same(await tcpProbe('127.0.0.1', closedPort, check({})), { ok: false, error: 'ECONNREFUSED' }, 'nothing listening');

  let status = 200;
  const seen: string[] = [];
  const web = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url} ${req.headers['user-agent']}`);
    res.statusCode = req.url === '/slow' ? 200 : status;
    if (req.url === '/slow') setTimeout(() => res.end(), 1000);
    else res.end('ok');
  });
  const webPort = await listen(web);
  t.teardown(() => web.close());
  t.same(await httpProbe('127.0.0.1', webPort, check({ type: 'http', path: '/healthz', expectStatus: 200 })), { ok: true });
  t.equal(seen[0], 'GET /healthz xdplb-health');
  status = 503;
  t.same(await httpProbe('127.0.0.1', webPort, check({ type: 'http', path: '/healthz', expectStatus: 200 })), { ok: false, error: 'status 503, expected 200' });
  const t0 = Date.now();
  t.same(await httpProbe('127.0.0.1', webPort, check({ type: 'http', path: '/slow', timeout: 100 })), { ok: false, error: 'timeout after 100 ms' });
  t.ok(Date.now() - t0 < 900, 'the timeout ends the probe');

  const udp = dgram.createSocket('udp4');
  await new Promise<void>((r) => udp.bind(0, '127.0.0.1', () => r()));
  t.teardown(() => udp.close());
  udp.on('message', (m, rinfo) => udp.send(m.toString() === 'ping' ? 'pong' : 'what', rinfo.port, rinfo.address));
  const udpPort = udp.address().port;
  t.same(await udpProbe('127.0.0.1', udpPort, check({ type: 'udp', send: 'ping', expect: 'pong' })), { ok: true });
  t.same(await udpProbe('127.0.0.1', udpPort, check({ type: 'udp', send: 'nope', expect: 'pong', timeout: 100 })), { ok: false, error: 'timeout after 100 ms' });
  t.same(await udpProbe('127.0.0.1', closedPort, check({ type: 'udp', send: 'ping' })), { ok: false, error: 'ECONNREFUSED' }, 'ICMP port unreachable');
});
