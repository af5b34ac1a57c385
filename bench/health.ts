// Health-check load benchmark (root): a real daemon in its namespace checks
// 1,000 backends every second (TCP connect, 10 services × 100 backends; the
// backends are 250 addresses × 4 ports served by one Node.js process in the peer
// namespace). Measured on the same daemon before and after the health checks
// are configured (SIGHUP reload):
//   - API latency, p50/p99: GetService (read) and AddBackend/RemoveBackend
//     (a transaction that writes the datapath), 500 calls each;
//   - probes per second achieved, probe duration p50, probes waiting for a slot;
//   - the daemon's CPU share and its event-loop lag p99 (prom-client), with and
//     without the API calls running;
//   - that no backend was wrongly taken down.
// Run: node dist/bench/health.js [seconds=10]
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { daemonFixture, rpc, type DaemonFixture } from '../harness/daemon';
import { sh } from '../harness/fixtures';
import type { Client } from '../src/client/client';
import { Cleanup } from './cleanup';

const SECONDS = Number(process.argv[2] ?? 10);
const ADDRESSES = 250;
const PORTS = [8001, 8002, 8003, 8004];
const SERVICES = 10;

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function servicesYaml(health: boolean): string {
  const backends = PORTS.flatMap((port) => Array.from({ length: ADDRESSES }, (_, i) => ({ address: `198.51.100.${i + 1}`, port })));
  const out: string[] = [];
  for (let s = 0; s < SERVICES; s++) {
    out.push(`  - name: svc${s}`, `    vip: 203.0.113.${10 + s}`, '    port: 80', '    protocol: tcp');
    if (health) out.push('    health_check:', '      type: tcp', '      interval: 1s', '      timeout: 500ms', '      rise: 2', '      fall: 3');
    out.push('    backends:');
    for (const b of backends.slice(s * 100, s * 100 + 100)) out.push(`      - address: ${b.address}`, `        port: ${b.port}`);
  }
  return out.join('\n');
}

const SERVER = `
const net = require('net');
for (const port of process.argv.slice(1)) net.createServer((s) => s.on('error', () => undefined).end()).listen(Number(port), '0.0.0.0');
console.log('listening');
`;

async function apiLatency(client: Client): Promise<string> {
  const read: number[] = [];
  const write: number[] = [];
  for (let i = 0; i < 500; i++) {
    let t0 = process.hrtime.bigint();
    const [e1] = await rpc(client, 'GetService', { name: 'bench' });
    read.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (e1) throw e1;
    t0 = process.hrtime.bigint();
    const [e2] = await rpc(client, i % 2 ? 'RemoveBackend' : 'AddBackend', { service: 'bench', backend: { address: '198.51.100.251', port: 80 } });
    write.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (e2) throw e2;
  }
  read.sort((a, b) => a - b);
  write.sort((a, b) => a - b);
  return `${pct(read, 50).toFixed(2)} / ${pct(read, 99).toFixed(2)} ms | ${pct(write, 50).toFixed(2)} / ${pct(write, 99).toFixed(2)} ms`;
}

function scrape(d: DaemonFixture): Map<string, number> {
  const text = sh('ip', 'netns', 'exec', d.topo.lbNs, 'curl', '-sS', '--fail', 'http://127.0.0.1:9464/metrics');
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

const sum = (m: Map<string, number>, prefix: string) => [...m].filter(([k]) => k.startsWith(prefix)).reduce((a, [, v]) => a + v, 0);

/** Median from a histogram's cumulative buckets. */
function histogramP50(m: Map<string, number>, name: string): string {
  const buckets = [...m].filter(([k]) => k.startsWith(`${name}_bucket`)).map(([k, v]) => [Number(/le="([^"]+)"/.exec(k)?.[1]), v] as const);
  const total = buckets.find(([le]) => le === Infinity)?.[1] ?? 0;
  const hit = buckets.sort((a, b) => a[0] - b[0]).find(([, v]) => v >= total / 2);
  return hit ? `≤ ${hit[0] * 1000} ms` : 'n/a';
}

async function phase(d: DaemonFixture, client: Client, label: string, api = true): Promise<string> {
  const m0 = scrape(d);
  const t0 = Date.now();
  const latency = api ? await apiLatency(client) : '(no calls) | (no calls)';
  const rest = SECONDS * 1000 - (Date.now() - t0);
  if (rest > 0) await sleep(rest);
  const m1 = scrape(d);
  const secs = (Date.now() - t0) / 1000;
  const probes = (sum(m1, 'xdplb_health_probes_total') - sum(m0, 'xdplb_health_probes_total')) / secs;
  const cpu = ((sum(m1, 'process_cpu_seconds_total') - sum(m0, 'process_cpu_seconds_total')) / secs) * 100;
  const lag = m1.get('nodejs_eventloop_lag_p99_seconds') ?? NaN;
  const up = [...m1].filter(([k, v]) => k.startsWith('xdplb_backend_health{') && k.includes('status="up"') && v === 1).length;
  const down = [...m1].filter(([k, v]) => k.startsWith('xdplb_backend_health{') && k.includes('status="down"') && v === 1).length;
  const probeP50 = histogramP50(m1, 'xdplb_health_probe_duration_seconds');
  return `| ${label} | ${latency} | ${probes.toFixed(0)} | ${probeP50} | ${up} / ${down} | ${cpu.toFixed(0)} % | ${(lag * 1000).toFixed(1)} ms |`;
}

async function main(): Promise<void> {
  const c = new Cleanup();
  try {
    const d = await daemonFixture(c, { servicesYaml: servicesYaml(false), extraYaml: 'metrics: 127.0.0.1:9464' });
    fs.writeFileSync(d.configPath, fs.readFileSync(d.configPath, 'utf8').replace('log_level: debug', 'log_level: info'));
    const { peerNs } = d.topo;
    const batch = ['addr add 192.0.2.1/24 dev peer0', ...Array.from({ length: ADDRESSES + 1 }, (_, i) => `addr add 198.51.100.${i + 1}/32 dev lo`)].join('\n');
    fs.writeFileSync(`${d.dir}/peer.batch`, batch + '\n');
    sh('ip', '-n', peerNs, '-batch', `${d.dir}/peer.batch`);
    const server = spawn('ip', ['netns', 'exec', peerNs, 'setpriv', '--pdeathsig', 'KILL', process.execPath, '-e', SERVER, ...PORTS.map(String), '80'], { stdio: ['ignore', 'pipe', 'inherit'] });
    c.teardown(() => void server.kill('SIGKILL'));
    await new Promise<void>((r) => server.stdout.on('data', (b: Buffer) => b.toString().includes('listening') && r()));
    await d.start(60000);
    const client = d.client();
    const [e] = await rpc(client, 'CreateService', {
      service: { name: 'bench', vip: '203.0.113.100', port: 80, protocol: 'PROTOCOL_TCP', backends: Array.from({ length: 10 }, (_, i) => ({ address: `198.51.100.${i + 1}`, port: 80 })) },
    });
    if (e) throw e;

    const rows: string[] = [];
    rows.push(await phase(d, client, 'no health checks, idle', false));
    rows.push(await phase(d, client, 'no health checks'));
    const yaml = fs.readFileSync(d.configPath, 'utf8');
    fs.writeFileSync(d.configPath, yaml.slice(0, yaml.indexOf('services:')) + 'services:\n' + servicesYaml(true) + '\n');
    d.logs = [];
    d.proc?.kill('SIGHUP');
    for (let i = 0; i < 100 && !d.logs.some((l) => l.includes('configuration reloaded')); i++) await sleep(100);
    await sleep(3000); // every backend probed a few times
    rows.push(await phase(d, client, '1,000 backends, TCP, every 1 s, no API calls', false));
    rows.push(await phase(d, client, '1,000 backends, TCP, every 1 s'));
    const falseDowns = d.logs.filter((l) => l.includes('"msg":"backend down"')).length;

    process.stdout.write(
      [
        `Health-check load: ${SERVICES} services × 100 backends, one daemon, ${SECONDS} s per phase, 2 cores`,
        '',
        '| phase | GetService p50 / p99 | Add/RemoveBackend p50 / p99 | probes/s | probe p50 | backends up / down | daemon CPU | event-loop lag p99 |',
        '| --- | --- | --- | --- | --- | --- | --- | --- |',
        ...rows,
        '',
        `backends taken down during the run: ${falseDowns}`,
        '',
      ].join('\n'),
    );
  } finally {
    await c.run();
  }
}

main().catch((e: Error) => {
  process.stderr.write(`${e.stack ?? e.message}\n`);
  process.exit(1);
});
