// The two-namespace setup of the live benchmarks (forward.ts, recorder-live.ts):
//
//   gen ns: g0 [generator: live-frames test runs of an XDP_TX program; sink: decap in sink mode]
//      │ veth
//   lb ns:  lb0 [the load balancer, or what the benchmark attaches]
//
// lb0 routes the backends (198.51.100.0/24, 2001:db8:200::/64) back through g0
// with permanent neighbours, so encapsulated frames leave lb0 with XDP_TX and
// end in the sink, which strips them (putting the generator's page back).
import * as fs from 'node:fs';
import * as os from 'node:os';
import pino, { type Logger } from 'pino';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import { LbDatapath } from '../src/datapath/lb';
import { DEFAULT_NODE, type NodeSettings } from '../src/control/model';
import { netns, pinDir, sh, veth } from '../harness/fixtures';
import { Decap, detachIn } from '../src/lab/decap';
import type { Cleanup } from './cleanup';

export interface LiveLab {
  genNs: string;
  lbNs: string;
  g0: number;
  lb0: number;
  g0Mac: string;
  lb0Mac: string;
  /** test object holding the generator's XDP_TX program (and more copies of it) */
  test: bpf.BpfObject;
  gen: bpf.BpfProgram;
  /** decap on g0 in sink mode: counts what it stripped */
  sink: Decap;
}

/** ethtool -S of a device in a namespace, per counter name. */
export function ethtool(ns: string, dev: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of sh('ip', 'netns', 'exec', ns, 'ethtool', '-S', dev).split('\n')) {
    const m = /^\s*(\S+):\s*(\d+)/.exec(line);
    if (m) out[m[1]] = (out[m[1]] ?? 0) + Number(m[2]);
  }
  return out;
}

export function sumMatching(stats: Record<string, number>, re: RegExp): number {
  return Object.entries(stats).reduce((n, [k, v]) => (re.test(k) ? n + v : n), 0);
}

const mac = (ns: string, dev: string) => (JSON.parse(sh('ip', '-n', ns, '-j', 'link', 'show', 'dev', dev)) as Array<{ address: string }>)[0].address;

export function liveLab(cleanup: Cleanup): LiveLab {
  const genNs = netns(cleanup);
  const lbNs = netns(cleanup);
  veth(genNs, lbNs, 'g0', 'lb0');
  sh('ip', 'netns', 'exec', lbNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', 'net.ipv6.conf.lb0.accept_dad=0');
  const g0Mac = mac(genNs, 'g0');
  const lb0Mac = mac(lbNs, 'lb0');
  const ip = (...a: string[]) => sh('ip', '-n', lbNs, ...a);
  ip('addr', 'add', '192.0.2.2/24', 'dev', 'lb0');
  ip('-6', 'addr', 'add', '2001:db8::2/64', 'dev', 'lb0', 'nodad');
  ip('neigh', 'replace', '192.0.2.1', 'lladdr', g0Mac, 'dev', 'lb0', 'nud', 'permanent');
  ip('-6', 'neigh', 'replace', '2001:db8::1', 'lladdr', g0Mac, 'dev', 'lb0', 'nud', 'permanent');
  ip('route', 'add', '198.51.100.0/24', 'via', '192.0.2.1', 'dev', 'lb0');
  ip('-6', 'route', 'add', '2001:db8:200::/64', 'via', '2001:db8::1', 'dev', 'lb0');

  const test = bpf.openObject(bpf.testObjectPath('native_test'), { pinRoot: pinDir(cleanup) });
  cleanup.teardown(() => test.close());
  const sink = Decap.open(pinDir(cleanup));
  cleanup.teardown(() => sink.close());
  sink.addLocal('any');
  sink.setSink(true);
  sink.attach('g0', { ns: genNs });
  cleanup.teardown(() => detachIn(genNs, 'g0'));
  return {
    genNs,
    lbNs,
    g0: sys.withNetns(genNs, () => sys.ifIndex('g0')),
    lb0: sys.withNetns(lbNs, () => sys.ifIndex('lb0')),
    g0Mac,
    lb0Mac,
    test,
    gen: test.program('xdp_tx'),
    sink,
  };
}

/** Node settings for a datapath on lb0 with its pins in `bpffs` and its files under `dir`. */
export function liveNode(o: { bpffs: string; dir: string; maglevSize: number }): NodeSettings {
  return {
    interfaces: [{ name: 'lb0', mode: 'native' }],
    maglevSize: o.maglevSize,
    outerSource: { ipv4: { address: '192.0.2.64', prefixLength: 28 }, ipv6: { address: '2001:db8:300::', prefixLength: 120 } },
    ttl: 64,
    mtu: 0,
    flowCache: true,
    conntrack: { ...DEFAULT_NODE.conntrack },
    bpffs: o.bpffs,
    api: { socket: `${o.dir}/unused.sock` },
    stateDir: `${o.dir}/state`,
    recorderDir: `${o.dir}/rec`,
    logLevel: 'warn',
  };
}

/** The load balancer's datapath on lb0; close() (also at cleanup, once) detaches it and closes the handles. */
export function openLiveDatapath(cleanup: Cleanup, lab: LiveLab, node: NodeSettings, log: Logger = pino({ level: 'warn' })): { dp: LbDatapath; close(): void } {
  const dp = sys.withNetns(lab.lbNs, () => LbDatapath.open(node, log));
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    try {
      sys.withNetns(lab.lbNs, () => {
        if (bpf.queryXdp(lab.lb0).progId) bpf.detachXdp(lab.lb0, 'native');
      });
    } catch {
      // namespace gone
    }
    dp.close();
  };
  cleanup.teardown(close);
  return { dp, close };
}

const napiThreads = (): Set<number> => {
  const out = new Set<number>();
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (fs.readFileSync(`/proc/${p}/comm`, 'utf8').startsWith('napi/')) out.add(Number(p));
    } catch {
      // gone
    }
  }
  return out;
};

/** CPU seconds (user + system) a thread of this machine has used. */
export function threadCpuSeconds(tid: number): number {
  const stat = fs.readFileSync(`/proc/${tid}/stat`, 'utf8');
  // fields after the command (which may hold spaces), from the last ')': state is field 3, utime 14, stime 15
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
}
const CLOCK_TICKS = Number(sh('getconf', 'CLK_TCK').trim());

/**
 * Threaded NAPI on a veth end (/sys/class/net/DEV/threaded): its receive
 * polling, XDP program included, moves from the softirq of whichever CPU sent
 * the frames into kernel threads of its own, pinned here to `cpu`; or back
 * (cpu undefined). The veth's NAPI exists only while an XDP program is
 * attached to it. Returns the threads.
 */
export function napiOn(ns: string, dev: string, cpu: number | undefined): number[] {
  const before = napiThreads();
  sh('ip', 'netns', 'exec', ns, 'sh', '-c', `echo ${cpu === undefined ? 0 : 1} > /sys/class/net/${dev}/threaded`);
  if (cpu === undefined) return [];
  const tids = [...napiThreads()].filter((t) => !before.has(t));
  if (!tids.length) throw new Error(`${dev}: no NAPI thread appeared (is an XDP program attached?)`);
  for (const t of tids) sh('taskset', '-pc', String(cpu), String(t));
  return tids;
}

/** Pins the process's main thread (where the generator's test runs execute) to `cpu`, or to every CPU again. */
export function pinMainThread(cpu: number | undefined): void {
  sh('taskset', '-pc', cpu === undefined ? `0-${os.cpus().length - 1}` : String(cpu), String(process.pid));
}
