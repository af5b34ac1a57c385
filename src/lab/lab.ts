// The lab: a self-contained network-namespace topology running xdplb end to
// end with real DSR traffic. `up` builds it (topology.ts), attaches the
// decapsulator on every backend (decap.ts), starts a server on every backend
// (server.ts) and the daemon in the load balancer's namespace; `test` sends
// traffic from the client (client.ts) and checks it (report.ts); `down`
// removes everything; `status` says what is there.
//
// Everything a lab makes is found again from its prefix and its run directory
// (lab.json, pid files), so `down` works after a crash and is safe twice.
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as bpf from '../datapath/bpf';
import * as sys from '../sys/system';
import { PACKAGE_ROOT } from '../sys/paths';
import { parse, stringify } from 'yaml';
import { loadConfigFile } from '../config';
import type { Config } from '../control/model';
import { call, connect, type ApiService, type Client } from '../client/client';
import type { CountersSnapshot, NodeStatusSnapshot } from '../datapath/snapshot';
import { attachRevNatIn as attachRevNat, Decap, detachIn, pinnedDecapCounters, syncPinnedRevNat, type RevNat } from './decap';
import { allNamespaces, buildTopology, destroyTopology, labPlan, LAB_PREFIX, linkStats, tcpInSegs, namespaceExists, namespacesWithPrefix, pidsIn, type LabPlan, type LbNode } from './topology';
import { nodeBgpSection, routerBirdConf, vipNexthops } from './router';
import { isAlive, livePid, signalPid, startDetached, stopPidFile, waitForLog } from './procs';
import { formatListen, type Listen } from './server';
import type { RequestResult, RequestSpec, SessionSpec, UploadResult, UploadSpec } from './client';

export const MAIN = path.resolve(__dirname, '..', 'cli', 'main.js');
export const SERVER_JS = path.join(__dirname, 'server.js');
export const CLIENT_JS = path.join(__dirname, 'client.js');
export const LAB_CONFIG = path.join(PACKAGE_ROOT, 'config', 'lab.yaml');
export const LAB_RUN_DIR = '/run/xdplb-lab';
export const LAB_DECAP_PINS = '/sys/fs/bpf/xdplb-lab-decap';

export interface LabOptions {
  /** namespace name prefix (default xdplb-lab-) */
  prefix?: string;
  /** pid files, logs, lab.json (default /run/xdplb-lab) */
  runDir?: string;
  /** the daemon's configuration (default config/lab.yaml) */
  configPath?: string;
  /** bpffs directory for the decapsulators' pins, one subdirectory per backend */
  decapPins?: string;
  /** backend namespaces (default 3) */
  backends?: number;
  /** load-balancer nodes (default: as the lab that is up, or 1); several: behind a BGP router with ECMP */
  nodes?: number;
  /** VIPs on every backend's loopback (default: every VIP of the config's services) */
  vips?: string[];
  /** what every backend's server listens on (default: from the config's services) */
  listens?: Listen[];
  /** lab processes die with this process (tests) */
  tied?: boolean;
  /** progress lines */
  log?: (line: string) => void;
}

/** What `up` made, written to RUN_DIR/lab.json for the other commands. */
export interface LabState {
  prefix: string;
  runDir: string;
  configPath: string;
  decapPins: string;
  bpffs: string;
  socket: string;
  backends: number;
  /** every node's daemon (one: the config's own paths) */
  nodes: LabNodeState[];
  vips: string[];
  listens: string[];
  created: string;
}

/** One load-balancer node's daemon: its namespace, configuration and API. */
export interface LabNodeState {
  name: string;
  ns: string;
  configPath: string;
  socket: string;
  bpffs: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function vipsOf(config: Config): string[] {
  return [...new Set(config.services.map((s) => s.vip))];
}

/** Server listen sockets for a backend: each service's port, or the backend's port with L4 DNAT. */
function listensOf(config: Config, backend: { v4: string; v6: string }): Listen[] {
  const out = new Map<string, Listen>();
  for (const s of config.services) {
    if (s.port === 0) continue; // every port of a VIP: nothing to bind to
    for (const b of s.backends) {
      if (b.address !== backend.v4 && b.address !== backend.v6) continue;
      const l: Listen = { proto: s.protocol, address: s.vip, port: s.flags.l4Dnat ? b.port : s.port };
      out.set(formatListen(l), l);
    }
  }
  return [...out.values()];
}

export class Lab {
  readonly prefix: string;
  readonly runDir: string;
  readonly configPath: string;
  readonly decapPins: string;
  readonly plan: LabPlan;
  private readonly log: (line: string) => void;

  constructor(readonly opts: LabOptions = {}) {
    this.prefix = opts.prefix ?? LAB_PREFIX;
    this.runDir = opts.runDir ?? LAB_RUN_DIR;
    this.configPath = path.resolve(opts.configPath ?? LAB_CONFIG);
    this.decapPins = opts.decapPins ?? (this.prefix === LAB_PREFIX ? LAB_DECAP_PINS : `/sys/fs/bpf/${this.prefix}decap`);
    this.plan = labPlan(this.prefix, opts.backends ?? 3, opts.nodes ?? this.state()?.nodes?.length ?? 1);
    this.log = opts.log ?? (() => {});
  }

  get statePath(): string {
    return path.join(this.runDir, 'lab.json');
  }
  /** Where a node's daemon keeps its pid file and log: the run directory itself with one node. */
  private nodeDir(node = 0): string {
    return this.plan.nodes.length === 1 ? this.runDir : path.join(this.runDir, this.plan.nodes[node].name);
  }
  get daemonLog(): string {
    return this.nodeDaemonLog(0);
  }
  nodeDaemonLog(node: number): string {
    return path.join(this.nodeDir(node), 'daemon.log');
  }
  get daemonPidFile(): string {
    return this.nodeDaemonPidFile(0);
  }
  private nodeDaemonPidFile(node: number): string {
    return path.join(this.nodeDir(node), 'daemon.pid');
  }
  private get routerDir(): string {
    return path.join(this.runDir, 'router');
  }
  private get routerPidFile(): string {
    return path.join(this.routerDir, 'bird.pid');
  }
  private get routerMarker(): string {
    return `bird -f -c ${path.join(this.routerDir, 'bird.conf')}`;
  }
  serverPidFile(be: string): string {
    return path.join(this.runDir, 'servers', `${be}.pid`);
  }
  serverLog(be: string): string {
    return path.join(this.runDir, 'servers', `${be}.log`);
  }
  private daemonMarker(node: number): string {
    return `daemon --config ${this.nodeState(node).configPath}`;
  }

  /** A node's daemon as `up` made it (before that, as it will make it). */
  nodeState(node = 0): LabNodeState {
    const n = this.state()?.nodes?.[node];
    if (n) return n;
    if (this.plan.nodes.length === 1) return { name: this.plan.lb.name, ns: this.plan.lb.ns, configPath: this.configPath, socket: '', bpffs: '' };
    const lb = this.plan.nodes[node];
    return { name: lb.name, ns: lb.ns, configPath: path.join(this.runDir, lb.name, 'xdplb.yaml'), socket: path.join(this.runDir, lb.name, 'xdplb.sock'), bpffs: '' };
  }
  private serverMarker(be: string): string {
    return `${SERVER_JS} --name ${be}`;
  }

  state(): LabState | null {
    try {
      return JSON.parse(fs.readFileSync(this.statePath, 'utf8')) as LabState;
    } catch {
      return null;
    }
  }

  /** Builds the lab from nothing; leftovers of an earlier lab with this prefix are removed first. */
  async up(): Promise<LabState> {
    if (process.getuid?.() !== 0) throw new Error('the lab needs root: network namespaces, BPF and bpffs');
    await this.down({ quiet: true });
    const config = loadConfigFile(this.configPath);
    const node = config.node;
    if (!node.interfaces.some((i) => i.name === this.plan.lb.if))
      throw new Error(`${this.configPath}: the lab's load balancer interface is ${this.plan.lb.if}; the config attaches to ${node.interfaces.map((i) => i.name).join(', ') || 'nothing'}`);
    const vips = this.opts.vips ?? vipsOf(config);
    const nodes = this.plan.nodes.length === 1 ? [{ name: this.plan.lb.name, ns: this.plan.lb.ns, configPath: this.configPath, socket: node.api.socket, bpffs: node.bpffs }] : this.nodeConfigs(node.bpffs);
    const state: LabState = {
      prefix: this.prefix,
      runDir: this.runDir,
      configPath: this.configPath,
      decapPins: this.decapPins,
      bpffs: node.bpffs,
      socket: nodes[0].socket,
      backends: this.plan.backends.length,
      nodes,
      vips,
      listens: [],
      created: new Date().toISOString(),
    };
    fs.mkdirSync(path.join(this.runDir, 'servers'), { recursive: true });
    // written first: a failing `up` leaves enough behind for `down`
    fs.writeFileSync(this.statePath, JSON.stringify(state, null, 2) + '\n');
    try {
      const outer = nodes.map((n) => {
        const o = loadConfigFile(n.configPath).node.outerSource;
        return [o.ipv4, o.ipv6].filter((x) => x !== undefined).map((x) => `${x.address}/${x.prefixLength}`);
      });
      buildTopology(this.plan, { outerSources: outer, vips });
      this.log(`namespaces: ${allNamespaces(this.plan).join(' ')}`);
      this.attachDecap();
      state.listens = await this.startServers(config);
      fs.writeFileSync(this.statePath, JSON.stringify(state, null, 2) + '\n');
      if (this.plan.nodes.length > 1) await this.startRouter();
      for (let i = 0; i < nodes.length; i++) await this.startDaemon(i);
      if (this.plan.nodes.length > 1) await this.waitForRoutes(vips);
      const rn = await this.syncRevNat();
      for (const c of rn.conflicts) this.log(`reverse DNAT: ${c}`);
    } catch (e) {
      await this.down({ quiet: true });
      throw e;
    }
    return state;
  }

  /** xdp/decap.bpf.c on every backend's eth0, in its namespace, maps pinned per backend. */
  private attachDecap(): void {
    for (const b of this.plan.backends) {
      const pins = path.join(this.decapPins, b.name);
      const d = Decap.open(pins);
      try {
        d.addLocal(b.v4, b.v6);
        d.attach('eth0', { ns: b.ns, mode: 'native' });
        d.pinPrograms(pins);
      } finally {
        d.close();
      }
      attachRevNat(b.ns, 'eth0', pins);
    }
    // On the router's end of the load balancer's link: with no local address
    // it decapsulates nothing (every tunnel packet passes, counted as
    // pass_not_local: the router's own count of what the load balancer sent).
    // A veth end receives its peer's XDP_TX frames only when it has an XDP
    // program; GRO alone leaves them queued on this kernel.
    for (const n of this.plan.nodes) {
      const pins = this.routerPins(n);
      const d = Decap.open(pins);
      try {
        d.attach(n.routerIf, { ns: this.plan.ns.router, mode: 'native' });
        d.pinPrograms(pins);
      } finally {
        d.close();
      }
    }
    this.log(`decap attached on eth0 of ${this.plan.backends.map((b) => b.name).join(', ')}; pass-through on the router's ${this.plan.nodes.map((n) => n.routerIf).join(', ')}`);
  }

  /** The pins of the router's pass-through program on a node's link. */
  private routerPins(n: LbNode): string {
    return path.join(this.state()?.decapPins ?? this.decapPins, this.plan.nodes.length === 1 ? 'router' : `router-${n.name}`);
  }

  /**
   * Each node's configuration: the lab's, with paths of its own (bpffs, state,
   * API socket), its own outer source prefixes (the router routes them back to
   * it) and a bgp: section peering with the router.
   */
  private nodeConfigs(bpffs: string): LabNodeState[] {
    const base = parse(fs.readFileSync(this.configPath, 'utf8')) as Record<string, unknown>;
    return this.plan.nodes.map((n, k) => {
      const dir = path.join(this.runDir, n.name);
      fs.mkdirSync(dir, { recursive: true });
      const st: LabNodeState = { name: n.name, ns: n.ns, configPath: path.join(dir, 'xdplb.yaml'), socket: path.join(dir, 'xdplb.sock'), bpffs: `${bpffs}-${n.name}` };
      const cfg = {
        ...base,
        bpffs: st.bpffs,
        state_dir: path.join(dir, 'state'),
        recorder_dir: path.join(dir, 'recordings'),
        api: { socket: st.socket },
        outer_source: { ipv4: `198.51.100.${128 + 16 * k}/28`, ipv6: `2001:db8:300:${k + 1}::/120` },
        bgp: nodeBgpSection(this.plan, k),
      };
      fs.writeFileSync(st.configPath, stringify(cfg));
      return st;
    });
  }

  /** BIRD in the router namespace, peering with every node. */
  private async startRouter(): Promise<void> {
    fs.mkdirSync(this.routerDir, { recursive: true });
    const conf = path.join(this.routerDir, 'bird.conf');
    const sock = path.join(this.routerDir, 'bird.ctl');
    fs.writeFileSync(conf, routerBirdConf(this.plan));
    const log = path.join(this.routerDir, 'bird.log');
    const pid = startDetached({ ns: this.plan.ns.router, via: 'ip-netns-exec', argv: ['bird', '-f', '-c', conf, '-s', sock], log, pidFile: this.routerPidFile, tied: this.opts.tied });
    for (let i = 0; i < 100 && !fs.existsSync(sock); i++) {
      if (!isAlive(pid)) throw new Error(`the router's BIRD exited; ${log}:\n${fs.readFileSync(log, 'utf8').slice(-2000)}`);
      await sleep(50);
    }
    this.log(`router: BIRD ${pid} in ${this.plan.ns.router}, socket ${sock}`);
  }

  /** The router's control socket (birdc -s). */
  get routerSocket(): string {
    return path.join(this.routerDir, 'bird.ctl');
  }

  /** The router interfaces each VIP's route leads to, in the router namespace. */
  vipRoutes(vips = this.state()?.vips ?? []): Map<string, string[]> {
    return new Map(vips.map((v) => [v, vipNexthops(this.plan, v)]));
  }

  /** Until the router has a route over every node for every VIP (the nodes announce them). */
  private async waitForRoutes(vips: string[]): Promise<void> {
    const n = this.plan.nodes.length;
    const deadline = Date.now() + 30000;
    for (;;) {
      const short = [...this.vipRoutes(vips)].filter(([, hops]) => hops.length !== n);
      if (!short.length) break;
      if (Date.now() > deadline) throw new Error(`the router has no ${n}-way route after 30 s for ${short.map(([v, h]) => `${v} (${h.length ? h.join(' ') : 'none'})`).join(', ')}; see ${path.join(this.routerDir, 'bird.log')} and the nodes' daemon logs`);
      await sleep(200);
    }
    this.log(`router: ${vips.length} VIPs routed over ${this.plan.nodes.map((x) => x.name).join(', ')} (ECMP, L4 hash)`);
  }

  private async startServers(config: Config, only?: string): Promise<string[]> {
    const all = new Set<string>();
    const started: Array<{ be: string; pid: number }> = [];
    for (const b of this.plan.backends) {
      if (only !== undefined && b.name !== only) continue;
      const listens = this.opts.listens ?? listensOf(config, b);
      if (!listens.length) continue;
      const argv = [process.execPath, SERVER_JS, '--name', b.name, ...listens.flatMap((l) => ['--listen', formatListen(l)])];
      fs.rmSync(this.serverLog(b.name), { force: true });
      const pid = startDetached({ ns: b.ns, via: 'ip-netns-exec', argv, log: this.serverLog(b.name), pidFile: this.serverPidFile(b.name), tied: this.opts.tied });
      started.push({ be: b.name, pid });
      listens.forEach((l) => all.add(formatListen(l)));
    }
    await Promise.all(started.map((s) => waitForLog(this.serverLog(s.be), /"msg":"listening"/, s.pid, 10000)));
    this.log(`servers on ${started.map((s) => s.be).join(', ')}: ${[...all].join(' ')}`);
    return [...all];
  }

  /** Stops one backend's server (a crash, with SIGKILL): its VIP ports close, its health checks fail. */
  async stopServer(be: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<boolean> {
    return stopPidFile(this.serverPidFile(be), this.serverMarker(be), 3000, signal);
  }

  /** Starts one backend's server again, with a fresh log. */
  async startServer(be: string): Promise<void> {
    if (livePid(this.serverPidFile(be), this.serverMarker(be)) !== null) throw new Error(`${be}: its server is running`);
    await this.startServers(loadConfigFile(this.configPath), be);
  }

  /** The requests one backend's server has logged since it started. */
  serverRequests(be: string): Array<{ proto: 'tcp' | 'udp'; local: string; remote: string }> {
    return fs
      .readFileSync(this.serverLog(be), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{"msg":"request"'))
      .map((l) => JSON.parse(l) as { proto: 'tcp' | 'udp'; local: string; remote: string });
  }

  /** The daemon in the load balancer's namespace (nsenter: bpffs stays visible). */
  async startDaemon(node = 0): Promise<number> {
    const n = this.nodeState(node);
    const log = this.nodeDaemonLog(node);
    const argv = [process.execPath, MAIN, 'daemon', '--config', n.configPath];
    const start = fs.existsSync(log) ? fs.statSync(log).size : 0;
    const pid = startDetached({ ns: n.ns, via: 'nsenter', argv, log, pidFile: this.nodeDaemonPidFile(node), tied: this.opts.tied });
    // ready: a "ready" line written after this start (the log is appended to)
    const deadline = Date.now() + 20000;
    for (;;) {
      const text = fs.readFileSync(log, 'utf8').slice(start);
      if (text.includes('"msg":"ready"')) break;
      // by its pid, not livePid(): until nsenter has exec'd, the child's command
      // line is still this process's own
      if (!isAlive(pid)) throw new Error(`the daemon exited; ${log}:\n${text.split('\n').slice(-15).join('\n')}`);
      if (Date.now() > deadline) throw new Error(`the daemon is not ready after 20 s; see ${log}`);
      await sleep(50);
    }
    this.log(`daemon ${pid} in ${n.ns}, log ${log}`);
    return pid;
  }

  /**
   * L4 DNAT in DSR: the backend's replies must leave from the service port.
   * Writes every backend's reverse-DNAT map (xdplb_revnat, tc egress) from the
   * daemon's services. Two services sending the same VIP and protocol to the
   * same backend port cannot both be reversed: reported, the first one wins.
   */
  async syncRevNat(): Promise<{ rules: number; conflicts: string[] }> {
    const { services } = await this.api<{ services: ApiService[] }>('ListServices', {});
    const perBackend = new Map<string, Map<string, RevNat & { service: string }>>();
    const conflicts: string[] = [];
    for (const s of services) {
      if (!s.flags.l4Dnat || s.port === 0) continue;
      const proto = s.protocol.toLowerCase().endsWith('udp') ? 'udp' : 'tcp';
      for (const b of s.backends) {
        const be = this.backendName(b.address);
        if (!be || b.port === s.port) continue;
        const rules = perBackend.get(be) ?? new Map<string, RevNat & { service: string }>();
        perBackend.set(be, rules);
        const k = `${s.vip}|${proto}|${b.port}`;
        const cur = rules.get(k);
        if (cur && cur.servicePort !== s.port) {
          conflicts.push(`${be}: ${s.vip} ${proto} port ${b.port} is the backend port of ${cur.service} and ${s.name}; replies keep ${cur.service}'s port ${cur.servicePort}`);
          continue;
        }
        rules.set(k, { vip: s.vip, proto, backendPort: b.port, servicePort: s.port, service: s.name });
      }
    }
    let n = 0;
    const st = this.state();
    for (const b of this.plan.backends) {
      const rules = [...(perBackend.get(b.name)?.values() ?? [])];
      syncPinnedRevNat(path.join(st?.decapPins ?? this.decapPins, b.name), rules);
      n += rules.length;
    }
    return { rules: n, conflicts };
  }

  daemonPid(node = 0): number | null {
    return livePid(this.nodeDaemonPidFile(node), this.daemonMarker(node));
  }

  /** Stops a node's daemon: SIGTERM (a clean stop; the program stays attached) or SIGKILL. */
  async stopDaemon(signal: NodeJS.Signals = 'SIGTERM', node = 0): Promise<boolean> {
    return stopPidFile(this.nodeDaemonPidFile(node), this.daemonMarker(node), 5000, signal);
  }

  /** Removes everything the lab made. Safe when nothing is there. */
  async down(o: { quiet?: boolean } = {}): Promise<string[]> {
    const st = this.state();
    // the lab that is up decides how many nodes there are to stop
    if (st?.nodes && st.nodes.length !== this.plan.nodes.length) return new Lab({ ...this.opts, prefix: this.prefix, runDir: this.runDir, configPath: this.configPath, decapPins: this.decapPins, nodes: st.nodes.length }).down(o);
    const done: string[] = [];
    for (let i = 0; i < this.plan.nodes.length; i++) if (await this.stopDaemon('SIGTERM', i)) done.push(this.plan.nodes.length === 1 ? 'daemon stopped' : `daemon ${this.plan.nodes[i].name} stopped`);
    if (await stopPidFile(this.routerPidFile, this.routerMarker, 2000)) done.push('router BIRD stopped');
    const servers = fs.existsSync(path.join(this.runDir, 'servers')) ? fs.readdirSync(path.join(this.runDir, 'servers')).filter((f) => f.endsWith('.pid')) : [];
    for (const f of servers) {
      const be = f.slice(0, -4);
      if (await stopPidFile(this.serverPidFile(be), this.serverMarker(be), 2000)) done.push(`server ${be} stopped`);
    }
    // Whatever still runs inside the lab's namespaces was started by a lab whose
    // pid files are gone (a crash, a removed run directory): the namespaces are
    // the lab's own, so everything in them goes.
    const stray = namespacesWithPrefix(this.prefix).flatMap((ns) => pidsIn(ns));
    if (stray.length) {
      for (const pid of stray) signalPid(pid, 'SIGTERM');
      for (let i = 0; i < 100 && stray.some(isAlive); i++) await sleep(20);
      for (const pid of stray.filter(isAlive)) signalPid(pid, 'SIGKILL');
      done.push(`stopped leftover processes ${stray.join(' ')}`);
    }
    // Detach before the namespaces go, so no program outlives its interface.
    for (const b of this.plan.backends) if (namespaceExists(b.ns)) detachIn(b.ns, 'eth0');
    if (namespaceExists(this.plan.ns.router)) for (const n of this.plan.nodes) detachIn(this.plan.ns.router, n.routerIf);
    const removed = destroyTopology(this.prefix, allNamespaces(this.plan));
    if (removed.length) done.push(`namespaces removed: ${removed.join(' ')}`);
    for (const dir of new Set([st?.bpffs, ...(st?.nodes ?? []).map((n) => n.bpffs), st?.decapPins ?? this.decapPins, ...(st ? [] : this.pinsFromConfig())])) {
      if (!dir || !dir.startsWith('/sys/fs/bpf/') || !fs.existsSync(dir)) continue;
      fs.rmSync(dir, { recursive: true, force: true });
      done.push(`pins removed: ${dir}`);
    }
    if (fs.existsSync(this.runDir)) {
      fs.rmSync(this.runDir, { recursive: true, force: true });
      done.push(`removed ${this.runDir}`);
    }
    if (!o.quiet) for (const d of done) this.log(d);
    return done;
  }

  /** Without lab.json: the config's bpffs directory, and its nodes' (bpffs-lb1, ...). */
  private pinsFromConfig(): string[] {
    let base: string;
    try {
      base = loadConfigFile(this.configPath).node.bpffs;
    } catch {
      return [];
    }
    const parent = path.dirname(base);
    const name = `${path.basename(base)}-lb`;
    const nodes = fs.existsSync(parent) ? fs.readdirSync(parent).filter((d) => d.startsWith(name) && /^\d+$/.test(d.slice(name.length))) : [];
    return [base, ...nodes.map((d) => path.join(parent, d))];
  }

  /** The daemon's API, as the CLI sees it. */
  client(node = 0): Client {
    const st = this.state();
    if (!st) throw new Error(`no lab here (${this.statePath} missing); run: xdplb lab up`);
    return connect({ socket: st.nodes?.[node]?.socket ?? st.socket });
  }

  async api<T>(method: string, req: unknown = {}, node = 0): Promise<T> {
    const c = this.client(node);
    try {
      return await call<T>(c, method, req);
    } finally {
      c.close();
    }
  }

  /** Runs the client program in the client namespace. */
  runClient<T>(mode: 'requests' | 'upload', spec: RequestSpec | UploadSpec, timeoutMs = 120000): Promise<T> {
    return new Promise((resolve, reject) => {
      execFile(
        'ip',
        ['netns', 'exec', this.plan.ns.client, process.execPath, CLIENT_JS, mode, JSON.stringify(spec)],
        { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 1 << 26 },
        (err, stdout, stderr) => {
          if (err) return reject(new Error(`lab client ${mode}: ${stderr.trim() || err.message}`));
          try {
            resolve(JSON.parse(stdout) as T);
          } catch {
            reject(new Error(`lab client ${mode}: not JSON: ${stdout.slice(0, 200)}`));
          }
        },
      );
    });
  }

  requests(spec: RequestSpec): Promise<RequestResult[]> {
    return this.runClient<RequestResult[]>('requests', spec);
  }

  upload(spec: UploadSpec): Promise<UploadResult> {
    return this.runClient<UploadResult>('upload', spec, (spec.timeoutMs ?? 60000) + 10000);
  }

  /**
   * One TCP connection from the client kept open (client.js session): ask()
   * sends a line and resolves with the answer line; close() ends it.
   */
  async session(spec: SessionSpec, timeoutMs = 5000): Promise<LabSession> {
    const child = spawn('ip', ['netns', 'exec', this.plan.ns.client, process.execPath, CLIENT_JS, 'session', JSON.stringify(spec)], { stdio: ['pipe', 'pipe', 'pipe'] });
    const lines: string[] = [];
    const waiters: Array<(l: string | null) => void> = [];
    let buf = '';
    let stderr = '';
    const push = (l: string | null) => {
      const w = waiters.shift();
      if (w) w(l);
      else if (l !== null) lines.push(l);
    };
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        push(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', () => {
      while (waiters.length) push(null);
    });
    const next = () =>
      new Promise<string>((resolve, reject) => {
        const l = lines.shift();
        if (l !== undefined) return resolve(l);
        if (child.exitCode !== null) return reject(new Error(`session ended ${stderr.trim()}`));
        const timer = setTimeout(() => reject(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
        waiters.push((x) => {
          clearTimeout(timer);
          if (x === null) reject(new Error(`session ended ${stderr.trim()}`));
          else resolve(x);
        });
      });
    const first = await next();
    const m = /^CONNECTED (\d+)$/.exec(first);
    if (!m) {
      child.kill('SIGKILL');
      throw new Error(`session: ${first}`);
    }
    return {
      sport: Number(m[1]),
      ask: async (line: string) => {
        child.stdin.write(`${line}\n`);
        return next();
      },
      close: () =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.stdin.end();
          setTimeout(() => child.kill('SIGKILL'), 3000).unref();
        }),
    };
  }

  /** Backend name for a backend address. */
  backendName(address: string): string | undefined {
    return this.plan.backends.find((b) => b.v4 === address || b.v6 === address)?.name;
  }

  counters(node = 0): Promise<CountersSnapshot> {
    return this.api<CountersSnapshot>('GetCounters', { service: '' }, node);
  }

  nodeStatus(node = 0): Promise<NodeStatusSnapshot> {
    return this.api<NodeStatusSnapshot>('GetNodeStatus', {}, node);
  }

  /** Packets through the interfaces that tell where replies went. */
  linkCounters(): { lbRx: number; clientRx: number; clientTx: number; backendTx: Record<string, number> } {
    const backendTx: Record<string, number> = {};
    for (const b of this.plan.backends) backendTx[b.name] = linkStats(b.ns, 'eth0').tx;
    const c = linkStats(this.plan.ns.client, this.plan.client.if);
    const lbRx = this.plan.nodes.reduce((n, lb) => n + linkStats(lb.ns, lb.if).rx, 0);
    return { lbRx, clientRx: c.rx, clientTx: c.tx, backendTx };
  }

  /** TCP segments the load balancers' own kernels received (with several nodes: their BGP sessions). */
  nodesTcpIn(): number {
    return this.plan.nodes.reduce((n, lb) => n + tcpInSegs(lb.ns), 0);
  }

  /** What is there: namespaces, processes, attachments, decap counters. */
  async status(): Promise<LabStatus> {
    const st = this.state();
    const namespaces = namespacesWithPrefix(this.prefix);
    const backends = this.plan.backends
      .filter((b) => namespaceExists(b.ns) || fs.existsSync(this.serverPidFile(b.name)))
      .map((b) => {
        let xdp: bpf.XdpAttachment | null = null;
        try {
          xdp = sys.withNetns(b.ns, () => bpf.queryXdp(sys.ifIndex('eth0')));
        } catch {
          // namespace or interface missing
        }
        const c = pinnedDecapCounters(path.join(st?.decapPins ?? this.decapPins, b.name));
        return {
          name: b.name,
          v4: b.v4,
          v6: b.v6,
          namespace: namespaceExists(b.ns),
          serverPid: livePid(this.serverPidFile(b.name), this.serverMarker(b.name)),
          decap: xdp && xdp.progId ? `${xdp.mode} id ${xdp.progId}` : 'none',
          decapped: c ? Number(c.decap_ipip.packets + c.decap_ip6ip6.packets) : 0,
          passed: c ? Object.entries(c).filter(([k]) => k.startsWith('pass_')).reduce((n, [, v]) => n + Number(v.packets), 0) : 0,
        };
      });
    const nodes: LabStatus['nodes'] = [];
    for (let i = 0; i < this.plan.nodes.length; i++) {
      const lb = this.plan.nodes[i];
      let daemon: LabStatus['daemon'] = { pid: this.daemonPid(i), api: false };
      if (daemon.pid !== null && st) {
        try {
          const s = await this.nodeStatus(i);
          daemon = { ...daemon, api: true, services: s.services, backends: s.backends, programId: s.programId, attachments: s.attachments.map((a) => `${a.interface} ${a.mode}`) };
        } catch (e) {
          daemon.error = (e as Error).message;
        }
      }
      let progId = 0;
      try {
        progId = sys.withNetns(this.plan.ns.router, () => bpf.queryXdp(sys.ifIndex(lb.routerIf)).progId);
      } catch {
        // namespace or interface missing
      }
      const c = pinnedDecapCounters(this.routerPins(lb));
      nodes.push({
        name: lb.name,
        namespace: namespaceExists(lb.ns),
        v4: lb.v4,
        v6: lb.v6,
        daemon,
        router: { xdpProgId: progId, fromLb: c ? Number(c.pass_not_local.packets) : 0, otherFromLb: c ? Object.entries(c).filter(([k]) => k !== 'pass_not_local').reduce((n, [, v]) => n + Number(v.packets), 0) : 0 },
      });
    }
    const router = namespaceExists(this.plan.ns.router) ? nodes[0].router : null;
    const routes = this.plan.nodes.length > 1 && namespaceExists(this.plan.ns.router) ? Object.fromEntries(this.vipRoutes()) : undefined;
    const bird = this.plan.nodes.length > 1 ? livePid(this.routerPidFile, this.routerMarker) : undefined;
    return { up: st !== null, state: st, namespaces, daemon: nodes[0].daemon, backends, router, nodes, ...(routes ? { routes } : {}), ...(bird !== undefined ? { routerBird: bird } : {}) };
  }
}

export interface LabSession {
  /** the client's source port */
  sport: number;
  /** sends a line, resolves with the answer line */
  ask(line: string): Promise<string>;
  close(): Promise<void>;
}

export interface LabStatus {
  up: boolean;
  state: LabState | null;
  namespaces: string[];
  daemon: { pid: number | null; api: boolean; services?: number; backends?: number; programId?: number; attachments?: string[]; error?: string };
  backends: Array<{ name: string; v4: string; v6: string; namespace: boolean; serverPid: number | null; decap: string; decapped: number; passed: number }>;
  /** the router's pass-through XDP program on the (first) load balancer's link: tunnel packets from the lb, and other frames */
  router: { xdpProgId: number; fromLb: number; otherFromLb: number } | null;
  /** every node, the first one as `daemon` and `router` */
  nodes: Array<{ name: string; namespace: boolean; v4: string; v6: string; daemon: LabStatus['daemon']; router: { xdpProgId: number; fromLb: number; otherFromLb: number } }>;
  /** several nodes: the router interfaces of each VIP's route */
  routes?: Record<string, string[]>;
  /** several nodes: the router's BIRD */
  routerBird?: number | null;
}
