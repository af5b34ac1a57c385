// Labs for tests: each with a namespace prefix, run directory, bpffs
// directories and configuration of its own (xdplbti<pid>x<n>-...), so tests
// never collide with each other or with a running `xdplb lab`, and each torn
// down in t.teardown, passed or failed. Labs of a test process that died
// before its teardown are removed by the next one.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parse, stringify } from 'yaml';
import { Lab, LAB_CONFIG, MAIN } from './lab';
import { namespacesWithPrefix } from './topology';
import { parseListen } from './server';

export interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

export interface LabFixtureOptions {
  /** services of the configuration file, as YAML objects (default: none; tests create them through the API) */
  services?: unknown[];
  /** backend namespaces (default 3) */
  backends?: number;
  /** every backend's server listens on these, e.g. "tcp:203.0.113.10:80" */
  listens: string[];
  /** VIPs on the backends' loopback (default: those of `listens`) */
  vips?: string[];
  /** top-level settings over config/lab.yaml's (maglev_size, mtu, ...) */
  settings?: Record<string, unknown>;
}

const PREFIX_RE = /^xdplbti(\d+)x(\d+)-/;
let serial = 0;

/** A fresh set of names and paths for one test lab. */
export function uniqueLabPaths(): LabPaths {
  return paths(process.pid, ++serial);
}

export interface LabPaths {
  id: string;
  prefix: string;
  runDir: string;
  bpffs: string;
  decapPins: string;
}

function paths(pid: number, n: number): LabPaths {
  const id = `xdplbti${pid}x${n}`;
  return { id, prefix: `${id}-`, runDir: `/run/${id}`, bpffs: `/sys/fs/bpf/${id}`, decapPins: `/sys/fs/bpf/${id}-decap` };
}

/** The lab configuration (config/lab.yaml) with this lab's own paths and services. */
export function labConfigYaml(p: LabPaths, services: unknown[], settings: Record<string, unknown> = {}): string {
  const cfg = parse(fs.readFileSync(LAB_CONFIG, 'utf8')) as Record<string, unknown>;
  Object.assign(cfg, settings, {
    bpffs: p.bpffs,
    state_dir: path.join(p.runDir, 'state'),
    recorder_dir: path.join(p.runDir, 'recordings'),
    api: { socket: path.join(p.runDir, 'xdplb.sock') },
    services,
  });
  return stringify(cfg);
}

let swept = false;
/** Labs left by test processes that are gone. */
export async function sweep(): Promise<void> {
  if (swept) return;
  swept = true;
  const seen = new Set<string>();
  for (const ns of namespacesWithPrefix('xdplbti')) {
    const m = PREFIX_RE.exec(ns);
    if (!m || seen.has(m[0])) continue;
    seen.add(m[0]);
    const pid = Number(m[1]);
    if (pid === process.pid || fs.existsSync(`/proc/${pid}`)) continue;
    const p = paths(pid, Number(m[2]));
    await new Lab({ prefix: p.prefix, runDir: p.runDir, decapPins: p.decapPins, configPath: '/nonexistent' }).down({ quiet: true });
    fs.rmSync(p.bpffs, { recursive: true, force: true });
  }
}

export interface LabFixture {
  lab: Lab;
  socket: string;
  /** runs the xdplb CLI against this lab's daemon; throws with stderr on failure */
  cli(...args: string[]): string;
}

export async function labFixture(t: Teardown, o: LabFixtureOptions): Promise<LabFixture> {
  await sweep();
  const p = uniqueLabPaths();
  const cfgDir = fs.mkdtempSync(path.join(os.tmpdir(), `${p.id}-`));
  const configPath = path.join(cfgDir, 'lab.yaml');
  fs.writeFileSync(configPath, labConfigYaml(p, o.services ?? [], o.settings));
  const listens = o.listens.map(parseListen);
  const lab = new Lab({
    prefix: p.prefix,
    runDir: p.runDir,
    configPath,
    decapPins: p.decapPins,
    backends: o.backends,
    listens,
    vips: o.vips ?? [...new Set(listens.map((l) => l.address))],
    tied: true,
  });
  t.teardown(async () => {
    await lab.down({ quiet: true });
    fs.rmSync(p.bpffs, { recursive: true, force: true });
    fs.rmSync(cfgDir, { recursive: true, force: true });
  });
  await lab.up();
  const socket = path.join(p.runDir, 'xdplb.sock');
  return {
    lab,
    socket,
    cli: (...args: string[]) => {
      try {
        return execFileSync(process.execPath, [MAIN, '--socket', socket, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      } catch (e) {
        const err = e as { stderr?: string; message: string };
        throw new Error(`xdplb ${args.join(' ')}: ${(err.stderr ?? '').trim() || err.message}`);
      }
    },
  };
}

export interface LabCliFixture {
  paths: LabPaths;
  /** config/lab.yaml with its own services, this lab's paths */
  config: string;
  /** `xdplb lab ARGS` with this lab's prefix, run directory and config; throws on exit status ≠ 0 */
  xdplb(...args: string[]): string;
}

/** A lab driven from the command line, as a user does: config/lab.yaml's services, paths of its own, down at teardown. */
export async function labCliFixture(t: Teardown): Promise<LabCliFixture> {
  await sweep();
  const p = uniqueLabPaths();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${p.id}-`));
  const config = path.join(dir, 'lab.yaml');
  const services = (parse(fs.readFileSync(LAB_CONFIG, 'utf8')) as { services: unknown[] }).services;
  fs.writeFileSync(config, labConfigYaml(p, services));
  const flags = ['--prefix', p.prefix, '--run-dir', p.runDir, '--config', config];
  t.teardown(async () => {
    // as many nodes as lab.json says
    await new Lab({ prefix: p.prefix, runDir: p.runDir, configPath: config }).down({ quiet: true });
    fs.rmSync(p.bpffs, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { paths: p, config, xdplb: (...args) => execFileSync(process.execPath, [MAIN, 'lab', ...flags, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }) };
}
