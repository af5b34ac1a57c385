// Control-plane benchmark (root): a real daemon in its own namespace.
//   1. latency of one backend change, from the API call until the datapath maps
//      hold it (the daemon answers only after writing them; each answer is then
//      checked against the pinned maps), p50/p99 over 1000 changes;
//   2. time to apply 10,000 services × 10 backends from a config file (start to
//      ready), and the daemon's resident memory at that size;
//   3. creating and updating one service with 0, 1,000 and 10,000 API services
//      already there (M=16381), p50/p99, and how long a read (GetService)
//      takes while one of those writes runs.
// Run: node dist/bench/control.js [scale [OPS] | change | start [M]] (scale: only 3, OPS
// changes per size; change: only 1; start: only 2, at M or at both sizes)
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { daemonFixture, rpc } from '../harness/daemon';
import { Cleanup } from './cleanup';


const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

function liveBackends(bpffs: string): Set<string> {
  const m = bpf.mapFromPin(path.join(bpffs, L.MAP_NAMES.backends));
  try {
    const d = m.dump();
    const out = new Set<string>();
    for (let i = 0; i < d.count; i++) {
      const size = L.LAYOUT.xdplb_backend.size;
      const b = L.decodeBackend(d.values.subarray(i * size, i * size + size));
      if (b.state !== L.BACKEND_NONE) out.add(`${b.address}:${b.port}`);
    }
    return out;
  } finally {
    m.close();
  }
}

async function changeLatency(): Promise<string> {
  const c = new Cleanup();
  try {
    const d = await daemonFixture(c, { extraYaml: '' });
    d.writeConfig({});
    fs.writeFileSync(d.configPath, fs.readFileSync(d.configPath, 'utf8').replace('maglev_size: 1021', 'maglev_size: 16381').replace('log_level: debug', 'log_level: info'));
    await d.start();
    const client = d.client();
    const base = Array.from({ length: 10 }, (_, i) => ({ address: `198.51.100.${10 + i}`, port: 80 }));
    const [e] = await rpc(client, 'CreateService', { service: { name: 'bench', vip: '203.0.113.10', port: 80, protocol: 'PROTOCOL_TCP', backends: base } });
    if (e) throw e;
    const ms: number[] = [];
    let checked = 0;
    for (let i = 0; i < 1000; i++) {
      const backend = { address: '198.51.100.200', port: 80 };
      const add = i % 2 === 0;
      const t0 = process.hrtime.bigint();
      const [err] = await rpc(client, add ? 'AddBackend' : 'RemoveBackend', { service: 'bench', backend });
      ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (err) throw err;
      if (i % 50 < 2) {
        if (liveBackends(d.bpffs).has('198.51.100.200:80') !== add) throw new Error(`change ${i} not in the datapath`);
        checked++;
      }
    }
    ms.sort((a, b) => a - b);
    return `| backend change (add/remove, 10-backend service, M=16381), API call → maps written | 1000 | ${pct(ms, 50).toFixed(2)} ms | ${pct(ms, 99).toFixed(2)} ms | (${checked} changes checked in the pinned maps) |`;
  } finally {
    await c.run();
  }
}

async function bulkApply(services: number, backends: number, m: number): Promise<string> {
  const c = new Cleanup();
  try {
    const d = await daemonFixture(c);
    const lines: string[] = [];
    for (let s = 0; s < services; s++) {
      const vip = `10.${(s >> 8) & 255}.${s & 255}.1`;
      lines.push(`  - name: s${s}`, `    vip: ${vip}`, '    port: 80', '    protocol: tcp', '    backends:');
      for (let b = 0; b < backends; b++) lines.push(`      - address: 198.51.${(b >> 8) & 255}.${(b + s) % 250 + 1}`);
    }
    d.writeConfig({ servicesYaml: lines.join('\n') });
    fs.writeFileSync(d.configPath, fs.readFileSync(d.configPath, 'utf8').replace('maglev_size: 1021', `maglev_size: ${m}`).replace('log_level: debug', 'log_level: info'));
    const t0 = Date.now();
    await d.start(600_000);
    const seconds = (Date.now() - t0) / 1000;
    const status = fs.readFileSync(`/proc/${d.proc?.pid}/status`, 'utf8');
    const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
    return `| ${services} services × ${backends} backends from the config file, M=${m}: start → ready | 1 | ${seconds.toFixed(1)} s | | daemon RSS ${rss.toFixed(0)} MiB |`;
  } finally {
    await c.run();
  }
}

const since = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

/** Creates and updates with `existing` API services in the state directory, and reads while each runs. */
async function scale(existing: number, ops: number): Promise<string[]> {
  const c = new Cleanup();
  try {
    const d = await daemonFixture(c);
    fs.writeFileSync(d.configPath, fs.readFileSync(d.configPath, 'utf8').replace('maglev_size: 1021', 'maglev_size: 16381').replace('log_level: debug', 'log_level: info'));
    const backend = (address: string) => ({ address, port: 80, weight: 1, state: 'active' });
    const flags = { l4Dnat: false, sourceHash: false, conntrackBypass: false, icmpEcho: false };
    const services = Array.from({ length: existing }, (_, s) => ({
      name: `s${s}`,
      vip: `10.${(s >> 8) & 255}.${s & 255}.1`,
      port: 80,
      protocol: 'tcp',
      flags,
      backends: [backend(`198.51.100.${(s % 250) + 1}`), backend(`198.51.101.${(s % 250) + 1}`)],
    }));
    fs.mkdirSync(d.stateDir, { recursive: true });
    fs.writeFileSync(path.join(d.stateDir, 'services.json'), JSON.stringify({ format: 1, services }));
    await d.start(1_800_000);
    const client = d.client();
    const bench = (i: number, b: number) => ({ name: `bench${i}`, vip: `203.0.113.${i % 250}`, port: 1000 + i, protocol: 'PROTOCOL_TCP', backends: [{ address: `198.51.100.${b}` }, { address: '198.51.100.250' }] });
    const [e0] = await rpc(client, 'CreateService', { service: { ...bench(0, 1), name: 'reader' } });
    if (e0) throw e0;
    const reads: number[] = [];
    /** One write, with GetService calls one after another until it is answered. */
    const timed = async (method: string, req: unknown): Promise<number> => {
      let answered = false;
      const t0 = process.hrtime.bigint();
      const write = rpc(client, method, req).then(([e]) => {
        answered = true;
        if (e) throw e;
        return since(t0);
      });
      while (!answered) {
        const r0 = process.hrtime.bigint();
        const [e] = await rpc(client, 'GetService', { name: 'reader' });
        if (e) throw e;
        reads.push(since(r0));
      }
      return write;
    };
    const creates: number[] = [];
    const updates: number[] = [];
    for (let i = 1; i <= ops; i++) creates.push(await timed('CreateService', { service: bench(i, 1) }));
    for (let i = 1; i <= ops; i++) updates.push(await timed('UpdateService', { service: bench(i, 2) }));
    const row = (what: string, v: number[]) => {
      v.sort((a, b) => a - b);
      return `| ${what}, ${existing.toLocaleString('en')} API services there (2 backends each, M=16381) | ${v.length} | ${pct(v, 50).toFixed(1)} ms | ${pct(v, 99).toFixed(1)} ms | |`;
    };
    return [row('create a service', creates), row('update a service (one backend replaced)', updates), row('GetService while one of those writes runs', reads)];
  } finally {
    await c.run();
  }
}

async function main(): Promise<void> {
  const rows = ['| what | runs | p50 / time | p99 | notes |', '|---|---:|---:|---:|---|'];
  if (process.argv[2] === 'scale') {
    const ops = Number(process.argv[3] ?? 50);
    for (const existing of [0, 1000, 10000]) rows.push(...(await scale(existing, ops)));
    process.stdout.write(`Control plane at scale (node ${process.version}, ${new Date().toISOString().slice(0, 10)})\n\n${rows.join('\n')}\n`);
    return;
  }
  const only = process.argv[2];
  if (only !== 'start') rows.push(await changeLatency());
  if (only !== 'change') for (const m of only === 'start' && process.argv[3] ? [Number(process.argv[3])] : [1021, 16381]) rows.push(await bulkApply(10000, 10, m));
  process.stdout.write(`Control plane (node ${process.version}, ${new Date().toISOString().slice(0, 10)})\n\n${rows.join('\n')}\n`);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
