// Health checks against real servers: TCP servers (Node.js, one per backend
// address) run in the peer namespace that the load balancer routes the backend
// prefix to; the daemon probes them from its own namespace. Killing a server
// takes its backend down within interval × fall + timeout, restarting it brings
// it back within interval × rise + timeout, and in between new flows to the VIP
// are not sent to it (the scraped per-backend counters say so). When every
// backend is down, the service keeps its last table and says so.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { daemonFixture, PEER_MAC, peerSender, rpc, type DaemonFixture } from '../harness/daemon';
import { needsRoot, sh, type Teardown } from '../harness/fixtures';
import { ether, ipv4, tcp, TCP_SYN } from '../harness/packets';

const INTERVAL = 500;
const TIMEOUT = 200;
const RISE = 2;
const FALL = 3;
/** scheduling, the controller transaction and our 25 ms polling */
const SLACK = 400;
const BACKENDS = ['198.51.100.11', '198.51.100.12', '198.51.100.13'];

const SERVICES = `
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    health_check:
      type: tcp
      interval: ${INTERVAL}ms
      timeout: ${TIMEOUT}ms
      rise: ${RISE}
      fall: ${FALL}
    backends:
${BACKENDS.map((a) => `      - address: ${a}`).join('\n')}
`;

const SERVER = `
const net = require('net');
const [address, port] = process.argv.slice(1);
// Probes close with a reset (no TIME_WAIT on the load balancer): not an error here.
net.createServer((s) => s.on('error', () => undefined).end('hello\\n')).listen(Number(port), address, () => console.log('listening'));
`;

/** A TCP server on address:80 in `ns`; resolves once it listens. */
async function server(t: Teardown, ns: string, address: string): Promise<ChildProcess> {
  const p = spawn('ip', ['netns', 'exec', ns, 'setpriv', '--pdeathsig', 'KILL', process.execPath, '-e', SERVER, address, '80'], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void p.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    p.stdout?.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
    p.once('exit', (code) => reject(new Error(`server ${address} exited with ${code}`)));
  });
  return p;
}

function kill(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    p.once('exit', () => resolve());
    p.kill('SIGKILL');
  });
}

/** The peer namespace owns the backend addresses (on lo) and answers the LB on 192.0.2.1. */
function backendHost(d: DaemonFixture): void {
  const ip = (...a: string[]) => sh('ip', '-n', d.topo.peerNs, ...a);
  ip('addr', 'add', '192.0.2.1/24', 'dev', 'peer0');
  for (const a of BACKENDS) ip('addr', 'add', `${a}/32`, 'dev', 'lo');
}

type BackendStates = Record<string, string>;

async function states(d: DaemonFixture): Promise<BackendStates> {
  const [e, svc] = await rpc<{ backends: Array<{ address: string; state: string }> }>(d.client(), 'GetService', { name: 'web' });
  if (e) throw e;
  return Object.fromEntries(svc.backends.map((b) => [b.address, b.state.replace('BACKEND_STATE_', '').toLowerCase()]));
}

/** Milliseconds until `pred` holds for the API's view, polled every 25 ms. */
async function msUntil(d: DaemonFixture, pred: (s: BackendStates) => boolean, limitMs: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (pred(await states(d))) return Date.now() - t0;
    if (Date.now() - t0 > limitMs) throw new Error(`not within ${limitMs} ms: ${JSON.stringify(await states(d))}\n${d.logs.slice(-20).join('\n')}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

interface Lab {
  d: DaemonFixture;
  servers: Map<string, ChildProcess>;
  /** n new flows (SYNs from new ports) to the VIP, sent for real from the peer into lb0 */
  flows(n: number): void;
  scrape(): string;
  perBackend(): Record<string, number>;
}

const metric = (text: string, series: string) => Number(new RegExp(`^${series.replace(/[{}[\].]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);

async function lab(t: Teardown): Promise<Lab> {
  const d = await daemonFixture(t, { servicesYaml: SERVICES, extraYaml: 'metrics: 127.0.0.1:9464' });
  backendHost(d);
  const servers = new Map<string, ChildProcess>();
  for (const a of BACKENDS) servers.set(a, await server(t, d.topo.peerNs, a));
  await d.start();
  const { lbNs } = d.topo;
  const peer = peerSender(t, d);
  let round = 0;
  const flows = (n: number) => {
    round++;
    peer.send(
      Array.from({ length: n }, (_, i) =>
        ether(ipv4({ src: `192.0.2.${100 + (i % 100)}`, dst: '203.0.113.10' }, tcp({ sport: 10000 + round * 300 + i, dport: 80, flags: TCP_SYN })), { dst: peer.lbMac, src: PEER_MAC }),
      ),
    );
  };
  const scrape = () => sh('ip', 'netns', 'exec', lbNs, 'curl', '-sS', '--fail', '--max-time', '5', 'http://127.0.0.1:9464/metrics');
  const perBackend = () => {
    const text = scrape();
    return Object.fromEntries(BACKENDS.map((a) => [a, metric(text, `xdplb_backend_packets_total{service="web",backend="${a}:80"}`)]));
  };
  await msUntil(d, (s) => BACKENDS.every((a) => s[a] === 'active'), 5000);
  // Let the first probes of every backend through (they start spread over one interval).
  await new Promise((r) => setTimeout(r, INTERVAL * RISE + TIMEOUT));
  return { d, servers, flows, scrape, perBackend };
}

const settle = () => new Promise((r) => setTimeout(r, 100));
const diff = (a: Record<string, number>, b: Record<string, number>) => Object.fromEntries(BACKENDS.map((x) => [x, b[x] - a[x]]));

/** A line of the daemon's log, waited for: the API can answer before the line has come through the daemon's stdout pipe. */
async function logLine(d: DaemonFixture, match: (line: string) => boolean, timeoutMs = 2000): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = d.logs.find(match);
    if (line || Date.now() > deadline) return line;
    await new Promise((r) => setTimeout(r, 25));
  }
}

t.test('a killed backend server goes down within interval × fall + timeout, comes back after a restart; traffic follows', needsRoot, async (t) => {
  const { d, servers, flows, scrape, perBackend } = await lab(t);
  t.match(scrape(), /xdplb_backend_health\{service="web",backend="198\.51\.100\.12:80",status="up"\} 1/, 'all up in the metrics');

  // Kill one server.
  const victim = '198.51.100.12';
  await kill(servers.get(victim) as ChildProcess);
  const downBound = INTERVAL * FALL + TIMEOUT;
  const downMs = await msUntil(d, (s) => s[victim] === 'down', downBound + SLACK + 2000);
  t.comment(`down after ${downMs} ms (bound interval × fall + timeout = ${downBound} ms)`);
  t.ok(downMs <= downBound + SLACK, `down within ${downBound} ms (+${SLACK} ms slack): ${downMs} ms`);
  t.same(await states(d), { '198.51.100.11': 'active', [victim]: 'down', '198.51.100.13': 'active' }, 'the others stay active');
  t.ok(await logLine(d, (l) => l.includes('"msg":"backend down"') && l.includes(`"backend":"${victim}:80"`)), 'one log line says so');
  t.match(d.cli('service', 'get', 'web').stdout, /down/, 'the CLI shows it');

  const before = perBackend();
  flows(120);
  await settle();
  const sent = diff(before, perBackend());
  t.equal(sent[victim], 0, `no new flow to the down backend (${JSON.stringify(sent)})`);
  t.equal(sent['198.51.100.11'] + sent['198.51.100.13'], 120, 'the others took every flow');
  const text = scrape();
  t.equal(metric(text, `xdplb_backend_health{service="web",backend="${victim}:80",status="down"}`), 1, 'metrics: health down');
  t.equal(metric(text, `xdplb_backend_state{service="web",backend="${victim}:80",state="down"}`), 1, 'metrics: state down');
  t.equal(metric(text, `xdplb_health_transitions_total{service="web",backend="${victim}:80",to="down"}`), 1, 'metrics: one transition');
  t.ok(metric(text, 'xdplb_health_probes_total{type="tcp",result="failure"}') >= FALL, 'failed probes counted');

  // Restart it.
  servers.set(victim, await server(t, d.topo.peerNs, victim));
  const upBound = INTERVAL * RISE + TIMEOUT;
  const upMs = await msUntil(d, (s) => s[victim] === 'active', upBound + SLACK + 2000);
  t.comment(`up again after ${upMs} ms (bound interval × rise + timeout = ${upBound} ms)`);
  t.ok(upMs <= upBound + SLACK, `back within ${upBound} ms (+${SLACK} ms slack): ${upMs} ms`);
  t.ok(await logLine(d, (l) => l.includes('"msg":"backend up"') && l.includes(`"backend":"${victim}:80"`)), 'logged');
  const b2 = perBackend();
  flows(120);
  await settle();
  const back = diff(b2, perBackend());
  t.ok(back[victim] > 0, `new flows reach it again (${JSON.stringify(back)})`);
});

t.test('every backend down: the API reports it, the datapath keeps forwarding with its last table', needsRoot, async (t) => {
  const { d, servers, flows, scrape, perBackend } = await lab(t);
  const [a, b, c] = BACKENDS;
  await kill(servers.get(a) as ChildProcess);
  await kill(servers.get(b) as ChildProcess);
  await msUntil(d, (s) => s[a] === 'down' && s[b] === 'down', 5000);
  await kill(servers.get(c) as ChildProcess);
  await msUntil(d, (s) => Object.values(s).every((x) => x === 'down'), 5000);
  t.pass('all three reported down through the API');
  t.match(await logLine(d, (l) => l.includes('every backend of the service is down')), /"level":"error"/, 'logged as an error');
  const text = scrape();
  t.equal(metric(text, 'xdplb_service_all_backends_down{service="web"}'), 1, 'metrics say so');

  const before = perBackend();
  const dropsBefore = metric(text, 'xdplb_packets_total{verdict="XDP_DROP",reason="drop_no_backend"}');
  flows(60);
  await settle();
  const sent = diff(before, perBackend());
  t.same(sent, { [a]: 0, [b]: 0, [c]: 60 }, 'new flows go to the last backend that was serving, as its last table says');
  t.equal(metric(scrape(), 'xdplb_packets_total{verdict="XDP_DROP",reason="drop_no_backend"}'), dropsBefore, 'nothing dropped for want of a backend');
});
