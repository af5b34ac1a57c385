// BIRD 2 as xdplb's BGP speaker: its configuration written from the desired
// announcements, the process started in the daemon's namespace, applied with
// `birdc configure`, asked with `birdc show protocols`, stopped with `birdc down`.
//
// BIRD runs in a session of its own, so it outlives the daemon: a daemon that
// is killed leaves the sessions up and the routes announced while the XDP
// program keeps forwarding, and the next daemon adopts the BIRD it finds on its
// socket (as it adopts the pinned datapath). Graceful restart covers BIRD's own
// restarts: routers keep the routes for restart_time while it comes back.
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { XdplbError } from '../control/errors';
import { MAX_SOCKET_PATH_BYTES } from '../control/validate';
import { effectiveCapabilities } from '../sys/capabilities';
import type { BgpPeer, BgpSettings } from '../control/model';
import { peerFamily } from './config';

/** One prefix to announce, with its path attributes. */
export interface Announcement {
  /** "203.0.113.10/32", "2001:db8::10/128" */
  prefix: string;
  communities: string[];
  med?: number;
}

export interface ProtocolState {
  name: string;
  /** BIRD's protocol state: up, start, down, ... */
  state: string;
  /** BGP: Established, Active, Connect, Idle, ... and the last error, if any */
  info: string;
  since: string;
}

const BIRDC_TIMEOUT_MS = 5000;
const START_TIMEOUT_MS = 5000;
const CAP_SETPCAP = 8;
const CAP_NET_BIND_SERVICE = 10;
const CAP_NAMES: Record<number, string> = { 8: 'CAP_SETPCAP', 12: 'CAP_NET_ADMIN', 21: 'CAP_SYS_ADMIN', 38: 'CAP_PERFMON', 39: 'CAP_BPF' };
/**
 * BIRD parses what routers send, so it runs with the one capability it needs,
 * to listen on port 179 (TCP MD5 needs none: test/bgp-systemd.test.ts runs it
 * with this alone), not with the daemon's BPF and network administration. Only
 * a daemon with CAP_SETPCAP can narrow the bounding set BIRD inherits; setpriv
 * without it leaves the set as it is and says nothing.
 */
const NARROW = ['setpriv', '--bounding-set', '-all,+net_bind_service', '--inh-caps', '-all', '--'];

/** The effective set of a process, or undefined when its status is unreadable. */
function capabilities(pid: number | 'self'): bigint | undefined {
  try {
    return effectiveCapabilities(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return undefined;
  }
}

const has = (caps: bigint, bit: number) => ((caps >> BigInt(bit)) & 1n) === 1n;

/** BIRD's protocol name for a peer: a symbol made of its address. */
export function peerProtocol(p: BgpPeer): string {
  return `peer_${p.address.replace(/[.:]/g, '_')}`;
}

function staticProtocol(family: 4 | 6, routes: Announcement[]): string {
  return [`protocol static xdplb_vips${family} {`, `  ipv${family} { table xdplb${family}; };`, ...routes.map((r) => `  route ${r.prefix} blackhole;`), '}'].join('\n');
}

/**
 * A session's export filter: the path attributes of each VIP. BIRD sends an
 * eBGP peer a MED only when the export filter set it, so they are set here.
 */
function exportFilter(routes: Announcement[]): string {
  const lines = routes.flatMap((r) => {
    const attrs = [...(r.med === undefined ? [] : [`bgp_med = ${r.med};`]), ...r.communities.map((c) => `bgp_community.add((${c.replace(':', ',')}));`)];
    return attrs.length ? [`    if net = ${r.prefix} then { ${attrs.join(' ')} }`] : [];
  });
  return ['export filter {', ...lines, '    accept;', '  }'].join('\n');
}

/**
 * The whole BIRD configuration. The VIPs are blackhole routes in tables of
 * their own that only the BGP sessions export: BIRD has no kernel protocol
 * here, so it never touches the node's routes.
 */
export function birdConfig(s: BgpSettings, announce: readonly Announcement[]): string {
  const v4 = announce.filter((a) => !a.prefix.includes(':'));
  const v6 = announce.filter((a) => a.prefix.includes(':'));
  const peers = s.peers.map((p) => {
    const f = peerFamily(p);
    return [
      `protocol bgp ${peerProtocol(p)} {`,
      `  local as ${s.asn};`,
      `  neighbor ${p.address} as ${p.asn};`,
      `  hold time ${p.holdTime};`,
      `  keepalive time ${Math.max(1, Math.floor(p.holdTime / 3))};`,
      '  connect retry time 5;',
      '  error wait time 1, 10;',
      '  graceful restart on;',
      `  graceful restart time ${s.restartTime};`,
      ...(p.password === undefined ? [] : [`  password "${p.password}";`]),
      `  ipv${f} { table xdplb${f}; import none; next hop self; ${exportFilter(f === 4 ? v4 : v6)}; };`,
      '}',
    ].join('\n');
  });
  return [
    '# Written by xdplb (src/bgp); every change is rewritten and applied with `birdc configure`.',
    `router id ${s.routerId};`,
    'log stderr all;',
    'timeformat protocol iso long;',
    'protocol device {}',
    'ipv4 table xdplb4;',
    'ipv6 table xdplb6;',
    staticProtocol(4, v4),
    staticProtocol(6, v6),
    ...peers,
    '',
  ].join('\n');
}

/** `birdc show protocols` lines (with `timeformat protocol iso long`): name, proto, table, state, date time, info. */
export function parseProtocols(out: string): ProtocolState[] {
  const rows: ProtocolState[] = [];
  for (const line of out.split('\n')) {
    const m = /^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s*(.*)$/.exec(line);
    if (m) rows.push({ name: m[1], state: m[4], since: m[5], info: m[6].trim() });
  }
  return rows;
}

/** A live BIRD process: not another program that took the pid over, not a zombie. */
function alive(pid: number): boolean {
  try {
    const m = /^\d+ \((.*)\) (\S)/.exec(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
    return m?.[1] === 'bird' && m[2] !== 'Z';
  } catch {
    return false;
  }
}

export class Bird {
  readonly confPath: string;
  readonly socketPath: string;
  readonly pidPath: string;
  readonly logPath: string;

  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.confPath = path.join(dir, 'bird.conf');
    this.socketPath = path.join(dir, 'bird.ctl');
    this.pidPath = path.join(dir, 'bird.pid');
    this.logPath = path.join(dir, 'bird.log');
    if (Buffer.byteLength(this.socketPath) > MAX_SOCKET_PATH_BYTES)
      throw XdplbError.invalid('state_dir', `BIRD's control socket ${this.socketPath} would be longer than ${MAX_SOCKET_PATH_BYTES} bytes; use a shorter state_dir`);
  }

  /** The pid of the BIRD running on this directory's socket, if one is. */
  pid(): number | undefined {
    let pid: number;
    try {
      pid = Number(fs.readFileSync(this.pidPath, 'utf8').trim());
    } catch {
      return undefined;
    }
    return pid > 0 && alive(pid) ? pid : undefined;
  }

  birdc(...command: string[]): Promise<string> {
    return new Promise((resolve, reject) =>
      execFile('birdc', ['-s', this.socketPath, ...command], { timeout: BIRDC_TIMEOUT_MS }, (err, stdout, stderr) => {
        if (err) reject(XdplbError.failedPrecondition(`birdc ${command.join(' ')}: ${(stderr || stdout || err.message).trim()}`));
        else resolve(stdout);
      }),
    );
  }

  private write(text: string): void {
    const tmp = `${this.confPath}.tmp`;
    fs.writeFileSync(tmp, text, { mode: 0o600 });
    fs.renameSync(tmp, this.confPath);
  }

  /**
   * Starts BIRD with this configuration; resolves once its socket answers. A
   * pid file left behind means the last BIRD died without `birdc down`: the new
   * one starts in graceful restart recovery (-R), so its OPEN tells routers the
   * forwarding state was preserved and they keep the stale routes until its
   * End-of-RIB, instead of flushing them when the session comes back.
   */
  async start(text: string): Promise<number> {
    const recover = fs.existsSync(this.pidPath);
    this.write(text);
    const check = await new Promise<string>((resolve) =>
      execFile('bird', ['-p', '-c', this.confPath], (err, stdout, stderr) => {
        if ((err as NodeJS.ErrnoException | null)?.code === 'ENOENT') resolve('bird is not installed (Debian package bird2; scripts/bootstrap.sh installs it)');
        else resolve(err ? `BIRD refused its configuration: ${(stderr || stdout || err.message).trim()}` : '');
      }),
    );
    if (check) throw XdplbError.failedPrecondition(check);
    const log = fs.openSync(this.logPath, 'a');
    try {
      const self = capabilities('self');
      const argv = [...(self !== undefined && has(self, CAP_SETPCAP) ? NARROW : []), 'bird', '-f', '-c', this.confPath, '-s', this.socketPath, '-P', this.pidPath, ...(recover ? ['-R'] : [])];
      const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', log, log] });
      child.unref();
    } finally {
      fs.closeSync(log);
    }
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      const pid = this.pid();
      if (pid && (await this.birdc('show', 'status').then((o) => o.includes('up and running'), () => false))) return pid;
      if (Date.now() > deadline) throw XdplbError.failedPrecondition(`BIRD did not start in ${START_TIMEOUT_MS / 1000} s; see ${this.logPath}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Writes the configuration and has the running BIRD apply it. */
  async configure(text: string): Promise<void> {
    this.write(text);
    const out = await this.birdc('configure');
    if (!/Reconfigured|Reconfiguration in progress/.test(out)) throw XdplbError.failedPrecondition(`birdc configure: ${out.trim()}`);
  }

  async protocols(): Promise<ProtocolState[]> {
    return parseProtocols(await this.birdc('show', 'protocols')).map((p) => ({ ...p, info: this.explain(p.info) }));
  }

  /**
   * BIRD's "No listening socket" names no cause, and BIRD gives up on the
   * session for good. Its cause is nearly always the capability BIRD did not
   * inherit: it runs with the daemon's, and the unit alone does not grant it.
   */
  private explain(info: string): string {
    if (!/No listening socket/.test(info)) return info;
    const pid = this.pid();
    const caps = pid === undefined ? undefined : capabilities(pid);
    const cause =
      caps !== undefined && !has(caps, CAP_NET_BIND_SERVICE)
        ? 'BIRD cannot bind TCP port 179 without CAP_NET_BIND_SERVICE, which it inherits from the daemon; under systemd install systemd/xdplb.service.d/bgp.conf (README, "Announcing the VIPs over BGP") and restart'
        : 'BIRD could not bind TCP port 179 (does another BGP daemon hold it?)';
    return `${info}: ${cause}; see ${this.logPath}`;
  }

  /** The capabilities the running BIRD holds beyond CAP_NET_BIND_SERVICE: those of a daemon that could not narrow them. */
  excessCapabilities(): string[] {
    const pid = this.pid();
    const caps = pid === undefined ? undefined : capabilities(pid);
    if (caps === undefined) return [];
    return [...Array(64).keys()].filter((bit) => bit !== CAP_NET_BIND_SERVICE && has(caps, bit)).map((bit) => CAP_NAMES[bit] ?? `capability ${bit}`);
  }

  /** `birdc down`: sessions closed, BIRD exits; killed when it does not within the timeout. */
  async stop(): Promise<void> {
    const pid = this.pid();
    if (!pid) return;
    await this.birdc('down').catch(() => undefined);
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
}
