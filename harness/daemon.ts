// A real xdplb daemon for integration tests: its own network namespace with a
// veth (lb0 ↔ peer0 in a second namespace), routes and permanent neighbours
// towards the backend prefixes, a private bpffs directory, state directory and
// API socket. The daemon runs as a child process inside the namespace (nsenter,
// so bpffs stays visible). Everything is removed at teardown, also on failure.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { connect, type Client } from '../src/client/client';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import { netns, pinDir, sh, veth, type Teardown } from './fixtures';

export const MAIN = path.resolve(__dirname, '..', 'src', 'cli', 'main.js');
export const PEER_MAC = '02:00:00:00:0a:01';

export interface Topology {
  /** the load balancer's namespace (lb0) */
  lbNs: string;
  /** the other end (peer0): router towards clients and backends */
  peerNs: string;
}

/** lb0 192.0.2.2 / 2001:db8::2 ↔ peer0 192.0.2.1 / 2001:db8::1; backends routed via peer0. */
export function topology(t: Teardown): Topology {
  const lbNs = netns(t);
  const peerNs = netns(t);
  veth(lbNs, peerNs, 'lb0', 'peer0');
  sh('ip', '-n', peerNs, 'link', 'set', 'peer0', 'address', PEER_MAC);
  sh('ip', 'netns', 'exec', lbNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', 'net.ipv6.conf.lb0.accept_dad=0');
  const ip = (...a: string[]) => sh('ip', '-n', lbNs, ...a);
  ip('addr', 'add', '192.0.2.2/24', 'dev', 'lb0');
  ip('-6', 'addr', 'add', '2001:db8::2/64', 'dev', 'lb0', 'nodad');
  ip('neigh', 'replace', '192.0.2.1', 'lladdr', PEER_MAC, 'dev', 'lb0', 'nud', 'permanent');
  ip('-6', 'neigh', 'replace', '2001:db8::1', 'lladdr', PEER_MAC, 'dev', 'lb0', 'nud', 'permanent');
  ip('route', 'add', '198.51.100.0/24', 'via', '192.0.2.1', 'dev', 'lb0');
  ip('-6', 'route', 'add', '2001:db8:200::/64', 'via', '2001:db8::1', 'dev', 'lb0');
  sh('ip', 'netns', 'exec', peerNs, 'ethtool', '-K', 'peer0', 'gro', 'on');
  return { lbNs, peerNs };
}

export interface DaemonOptions {
  /** YAML for services: (the rest of the config is generated) */
  servicesYaml?: string;
  /** extra top-level YAML lines */
  extraYaml?: string;
}

export class DaemonFixture {
  proc?: ChildProcess;
  logs: string[] = [];
  readonly socket: string;
  readonly stateDir: string;
  readonly configPath: string;
  private clients: Client[] = [];

  constructor(
    readonly topo: Topology,
    readonly bpffs: string,
    readonly dir: string,
  ) {
    this.socket = path.join(dir, 'xdplb.sock');
    this.stateDir = path.join(dir, 'state');
    this.configPath = path.join(dir, 'xdplb.yaml');
  }

  writeConfig(o: DaemonOptions): void {
    const yaml = [
      'interfaces:',
      '  - name: lb0',
      '    mode: native',
      'maglev_size: 1021',
      'outer_source:',
      '  ipv4: 192.0.2.64/28',
      '  ipv6: 2001:db8::/120',
      `bpffs: ${this.bpffs}`,
      `state_dir: ${this.stateDir}`,
      `recorder_dir: ${path.join(this.dir, 'recordings')}`,
      'log_level: debug',
      'api:',
      `  socket: ${this.socket}`,
      o.extraYaml ?? '',
      'services:',
      o.servicesYaml ?? '  []',
    ].join('\n');
    fs.writeFileSync(this.configPath, yaml + '\n');
  }

  /**
   * nsenter's argv for the daemon in the LB namespace. setpriv --pdeathsig ties
   * the daemon's life to the test process: a test killed by a timeout takes its
   * daemon with it instead of leaving it running.
   */
  daemonArgv(...extra: string[]): string[] {
    return [`--net=/var/run/netns/${this.topo.lbNs}`, 'setpriv', '--pdeathsig', 'KILL', process.execPath, MAIN, 'daemon', '--config', this.configPath, ...extra];
  }

  /** Starts the daemon and resolves once its API answers. */
  async start(timeoutMs = 15000): Promise<void> {
    this.logs = [];
    const proc = spawn('nsenter', this.daemonArgv(), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    const collect = (d: Buffer) => this.logs.push(...d.toString().split('\n').filter(Boolean));
    proc.stdout?.on('data', collect);
    proc.stderr?.on('data', collect);
    const exited = new Promise<number>((resolve) => proc.once('exit', (code) => resolve(code ?? -1)));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const code = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 100))]);
      if (code !== null) throw new Error(`daemon exited with ${code}:\n${this.logs.join('\n')}`);
      if (this.logs.some((l) => l.includes('"msg":"ready"'))) return;
      if (Date.now() > deadline) throw new Error(`daemon not ready in ${timeoutMs / 1000} s:\n${this.logs.join('\n')}`);
    }
  }

  /** Runs the daemon to completion (for configurations it must refuse). */
  async runToExit(): Promise<{ code: number; output: string }> {
    const proc = spawn('nsenter', this.daemonArgv(), { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    proc.stdout.on('data', (d: Buffer) => (output += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const code = await new Promise<number>((resolve) => proc.once('exit', (c) => resolve(c ?? -1)));
    return { code, output };
  }

  async signal(sig: NodeJS.Signals): Promise<number> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return proc?.exitCode ?? -1;
    const exited = new Promise<number>((resolve) => proc.once('exit', (code, s) => resolve(code ?? (s ? 128 : -1))));
    proc.kill(sig);
    return exited;
  }

  client(service: 'LoadBalancer' | 'Recorder' = 'LoadBalancer'): Client {
    const c = connect({ socket: this.socket }, service);
    this.clients.push(c);
    return c;
  }

  /** Runs the CLI against this daemon. */
  cli(...args: string[]): { code: number; stdout: string; stderr: string } {
    try {
      const stdout = sh(process.execPath, MAIN, '--socket', this.socket, ...args);
      return { code: 0, stdout, stderr: '' };
    } catch (e) {
      const err = e as { status: number; stdout: string; stderr: string };
      return { code: err.status, stdout: err.stdout, stderr: err.stderr };
    }
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.close();
    await this.signal('SIGKILL');
  }
}

export async function daemonFixture(t: Teardown, o: DaemonOptions = {}, topo?: Topology): Promise<DaemonFixture> {
  const tp = topo ?? topology(t);
  const dir = fs.mkdtempSync(`/run/xdplbt-${process.pid}-`);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const d = new DaemonFixture(tp, pinDir(t), dir);
  t.teardown(() => d.close());
  d.writeConfig(o);
  return d;
}

/** Unary call on a grpc client returning [error, response]. */
export function rpc<T = unknown>(client: Client, method: string, req: unknown, options: grpc.CallOptions = {}): Promise<[grpc.ServiceError | null, T]> {
  return new Promise((resolve) => {
    const fn = client[method] as (r: unknown, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, res: T) => void) => void;
    fn.call(client, req, options, (e, res) => resolve([e, res]));
  });
}

/** Real frames from the peer into lb0: live-frames test runs of an XDP_TX program on peer0. */
export interface PeerSender {
  /** lb0's MAC: the Ethernet destination of the frames */
  lbMac: string;
  /** Sends every frame `repeat` times out of peer0; returns how many frames went. */
  send(frames: readonly Buffer[], repeat?: number): number;
}

export function peerSender(t: Teardown, d: DaemonFixture): PeerSender {
  const { lbNs, peerNs } = d.topo;
  const lbMac = (JSON.parse(sh('ip', '-n', lbNs, '-j', 'link', 'show', 'dev', 'lb0')) as Array<{ address: string }>)[0].address;
  const gen = bpf.openObject(bpf.testObjectPath('native_test'), { pinRoot: pinDir(t) });
  t.teardown(() => gen.close());
  const tx = gen.program('xdp_tx');
  const peerIf = sys.withNetns(peerNs, () => sys.ifIndex('peer0'));
  return {
    lbMac,
    send: (frames, repeat = 1) =>
      sys.withNetns(peerNs, () => {
        for (const data of frames) {
          const r = tx.testRun({ data, ctx: bpf.xdpContext(peerIf), repeat, flags: bpf.BPF_F_TEST_XDP_LIVE_FRAMES });
          if (r.retval !== 0) throw new Error(`live frames run returned ${r.retval}`);
        }
        return frames.length * repeat;
      }),
  };
}

/** The services a daemon's server reflection lists, asked through @grpc/reflection's own proto. */
export async function reflectedServices(t: Teardown, socket: string): Promise<string[]> {
  const reflDir = path.dirname(require.resolve('@grpc/reflection/package.json'));
  const reflProto = sh('find', reflDir, '-name', 'reflection.proto', '-path', '*v1alpha*').trim().split('\n')[0];
  const refl = grpc.loadPackageDefinition(protoLoader.loadSync(reflProto, { keepCase: true })) as unknown as { grpc: { reflection: { v1alpha: { ServerReflection: grpc.ServiceClientConstructor } } } };
  const rc = new refl.grpc.reflection.v1alpha.ServerReflection(`unix:${socket}`, grpc.credentials.createInsecure());
  t.teardown(() => rc.close());
  const stream = (rc as unknown as { ServerReflectionInfo(): grpc.ClientDuplexStream<unknown, { list_services_response?: { service: Array<{ name: string }> } }> }).ServerReflectionInfo();
  return new Promise<string[]>((resolve, reject) => {
    stream.on('data', (r) => {
      resolve((r.list_services_response?.service ?? []).map((s: { name: string }) => s.name));
      stream.end();
    });
    stream.on('error', reject);
    stream.write({ list_services: '*' });
  });
}
