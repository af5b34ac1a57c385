// Health checks in the lab, through real DSR: the backends' servers answer on
// the VIP (decapsulated on the backend) and on a health port of their own
// address. Killing one server takes its backend down by health check; while it
// is down no new connection reaches it — the clients' answers, the servers'
// own request logs and the load balancer's per-backend counters agree — and
// once the server is back, so is its share, again agreed by all three.
import t from 'tap';
import { labFixture, type LabFixture } from '../src/lab/fixture';
import type { ApiService } from '../src/client/client';
import { needsRoot } from '../harness/fixtures';

const VIP = '203.0.113.10';
const HEALTH_PORT = 8080;
const INTERVAL = 300;
const TIMEOUT = 200;
const FALL = 2;
const RISE = 2;
const CONNECTIONS = 90;

const SERVICES = [
  {
    name: 'web',
    vip: VIP,
    port: 80,
    protocol: 'tcp',
    health_check: { type: 'tcp', port: HEALTH_PORT, interval: `${INTERVAL}ms`, timeout: `${TIMEOUT}ms`, fall: FALL, rise: RISE },
    backends: [{ address: '198.51.100.11' }, { address: '198.51.100.12' }, { address: '198.51.100.13' }],
  },
];

async function states(f: LabFixture): Promise<Record<string, string>> {
  const svc = await f.lab.api<ApiService>('GetService', { name: 'web' });
  return Object.fromEntries(svc.backends.map((b) => [f.lab.backendName(b.address) ?? b.address, b.state.replace('BACKEND_STATE_', '').toLowerCase()]));
}

async function waitState(f: LabFixture, be: string, want: string, limitMs: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if ((await states(f))[be] === want) return Date.now() - t0;
    if (Date.now() - t0 > limitMs) throw new Error(`${be} not ${want} after ${limitMs} ms: ${JSON.stringify(await states(f))}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function backendPackets(f: LabFixture): Promise<Record<string, number>> {
  const c = await f.lab.counters();
  const web = c.services.find((s) => s.name === 'web');
  return Object.fromEntries((web?.backends ?? []).map((b) => [f.lab.backendName(b.address) ?? b.address, b.traffic.packets]));
}

/** New TCP connections to the VIP; answers per backend, and what each server logged meanwhile. */
async function round(f: LabFixture) {
  const logged = (be: string) => f.lab.serverRequests(be).filter((r) => r.local === `${VIP}:80`).length;
  const names = f.lab.plan.backends.map((b) => b.name);
  const alive = (be: string) => {
    try {
      return logged(be);
    } catch {
      return 0;
    }
  };
  const logsBefore = Object.fromEntries(names.map((n) => [n, alive(n)]));
  const packetsBefore = await backendPackets(f);
  const results = await f.lab.requests({ targets: [{ proto: 'tcp', vip: VIP, port: 80, count: CONNECTIONS / 2, sources: f.lab.plan.client.v4 }] });
  const packetsAfter = await backendPackets(f);
  const answers: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  for (const r of results) if (r.backend) answers[r.backend] = (answers[r.backend] ?? 0) + 1;
  return {
    errors: results.filter((r) => r.error).length,
    answers,
    logs: Object.fromEntries(names.map((n) => [n, alive(n) - logsBefore[n]])),
    packets: Object.fromEntries(names.map((n) => [n, (packetsAfter[n] ?? 0) - (packetsBefore[n] ?? 0)])),
  };
}

t.test('health checks through DSR: a killed server leaves, comes back; answers, server logs and counters agree', needsRoot, async (t) => {
  const f = await labFixture(t, { services: SERVICES, listens: [`tcp:${VIP}:80`, `tcp:0.0.0.0:${HEALTH_PORT}`] });
  await waitState(f, 'be2', 'active', 5000);

  const all = await round(f);
  t.equal(all.errors, 0, `${CONNECTIONS} connections answered`);
  for (const be of ['be1', 'be2', 'be3']) {
    t.ok(all.answers[be] > 0, `${be} answered ${all.answers[be]}`);
    t.equal(all.logs[be], all.answers[be], `${be}'s log has one line per connection it answered`);
    t.ok(all.packets[be] >= 3 * all.answers[be], `the load balancer forwarded ${all.packets[be]} packets to ${be} (at least SYN, ACK and data per connection)`);
  }

  t.ok(await f.lab.stopServer('be2'), "be2's server killed");
  const downMs = await waitState(f, 'be2', 'down', INTERVAL * FALL + TIMEOUT + 3000);
  t.comment(`be2 down by health check after ${downMs} ms (interval × fall + timeout = ${INTERVAL * FALL + TIMEOUT} ms)`);
  t.same(await states(f), { be1: 'active', be2: 'down', be3: 'active' }, 'only be2 is down');

  const down = await round(f);
  t.equal(down.errors, 0, `${CONNECTIONS} connections answered while be2 is down`);
  t.equal(down.answers.be2, 0, 'no answer from be2');
  t.equal(down.packets.be2, 0, 'the load balancer sent be2 nothing');
  t.equal(down.answers.be1 + down.answers.be3, CONNECTIONS, 'be1 and be3 answered every connection');
  for (const be of ['be1', 'be3']) t.equal(down.logs[be], down.answers[be], `${be}'s log agrees (${down.logs[be]})`);

  await f.lab.startServer('be2');
  const upMs = await waitState(f, 'be2', 'active', INTERVAL * RISE + TIMEOUT + 3000);
  t.comment(`be2 active again after ${upMs} ms (interval × rise + timeout = ${INTERVAL * RISE + TIMEOUT} ms)`);

  const back = await round(f);
  t.equal(back.errors, 0, `${CONNECTIONS} connections answered after the restart`);
  t.ok(back.answers.be2 > 0, `be2 answers again (${back.answers.be2} of ${CONNECTIONS})`);
  for (const be of ['be1', 'be2', 'be3']) {
    t.equal(back.logs[be], back.answers[be], `${be}'s log agrees (${back.logs[be]})`);
    t.ok(back.packets[be] >= 3 * back.answers[be], `counters: ${back.packets[be]} packets to ${be}`);
  }
});
