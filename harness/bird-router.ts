// BIRD as the router in the peer namespace of a daemon fixture, and what the
// BGP tests ask of the daemon's speaker: its status, its BIRD reaped at teardown.
// The router peers with 192.0.2.2 (AS 64512, TCP MD5 "lab secret") over IPv4
// and 2001:db8:1::2 over IPv6; BGP_PEERS is the speaker's side of both.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DaemonFixture } from './daemon';
import { sh, type Teardown } from './fixtures';

/** The `peers:` of a bgp: section that match the router (indented for `bgp:`). */
export const BGP_PEERS = `  asn: 64512
  router_id: 192.0.2.2
  peers:
    - address: 192.0.2.1
      asn: 64513
      hold_time: 6
      password: "lab secret"
    - address: 2001:db8:1::1
      asn: 64513
      hold_time: 6`;

const ROUTER_CONF = `
router id 192.0.2.1;
log stderr all;
protocol device {}
protocol bgp node4 {
  local 192.0.2.1 as 64513;
  neighbor 192.0.2.2 as 64512;
  hold time 6;
  connect retry time 1;
  error wait time 1, 3;
  graceful restart on;
  password "lab secret";
  ipv4 { import all; export none; };
}
protocol bgp node6 {
  local 2001:db8:1::1 as 64513;
  neighbor 2001:db8:1::2 as 64512;
  hold time 6;
  connect retry time 1;
  error wait time 1, 3;
  graceful restart on;
  ipv6 { import all; export none; };
}
`;

export interface Route {
  prefix: string;
  attributes: string[];
}

export interface Router {
  routes(): Map<string, Route>;
  /** the router's view of its sessions (`name`: one session, in detail) */
  protocols(name?: string): string;
}

/** BIRD as the router in the peer namespace; killed at teardown. */
export async function router(t: Teardown, d: DaemonFixture): Promise<Router> {
  const ns = d.topo.peerNs;
  sh('ip', '-n', ns, 'addr', 'add', '192.0.2.1/24', 'dev', 'peer0');
  // The fixture's lb0 address 2001:db8::2 lies in its IPv6 outer source prefix,
  // which the datapath keeps for tunnel replies: the IPv6 session has a subnet of its own.
  sh('ip', '-n', ns, '-6', 'addr', 'add', '2001:db8:1::1/64', 'dev', 'peer0', 'nodad');
  sh('ip', '-n', d.topo.lbNs, '-6', 'addr', 'add', '2001:db8:1::2/64', 'dev', 'lb0', 'nodad');
  const dir = path.join(d.dir, 'router');
  fs.mkdirSync(dir);
  const conf = path.join(dir, 'bird.conf');
  const sock = path.join(dir, 'bird.ctl');
  fs.writeFileSync(conf, ROUTER_CONF);
  const proc = spawn('ip', ['netns', 'exec', ns, 'bird', '-f', '-c', conf, '-s', sock], { stdio: 'ignore' });
  t.teardown(() => {
    proc.kill('SIGKILL');
  });
  for (let i = 0; i < 50 && !fs.existsSync(sock); i++) await sleep(100);
  return {
    protocols: (name?: string) => sh('birdc', '-s', sock, 'show', 'protocols', ...(name ? ['all', name] : [])),
    routes() {
      const out = sh('birdc', '-s', sock, 'show', 'route', 'all');
      const routes = new Map<string, Route>();
      let cur: Route | undefined;
      for (const line of out.split('\n')) {
        const m = /^([0-9a-f:.]+\/\d+)\s/.exec(line);
        if (m) routes.set(m[1], (cur = { prefix: m[1], attributes: [] }));
        else if (cur && /^\s+BGP\./.test(line)) cur.attributes.push(line.trim());
      }
      return routes;
    },
  };
}

/** Kills the BIRD the daemon started (it outlives the daemon by design) at teardown. */
export function reapSpeaker(t: Teardown, d: DaemonFixture): void {
  t.teardown(() => {
    try {
      process.kill(Number(fs.readFileSync(path.join(d.stateDir, 'bgp', 'bird.pid'), 'utf8')), 'SIGKILL');
    } catch {
      // not started, or stopped already
    }
  });
}

export interface BgpStatus {
  speakerPid: number;
  speakerRestarts: number;
  peers: Array<{ address: string; state: string; established: boolean; info: string }>;
  vips: Array<{ vip: string; announced: boolean; reason: string }>;
  drain: { drained: boolean; trafficStopped: boolean; packetsSinceDrain: number };
}

/** `xdplb -o json bgp status`. */
export function bgpStatus(d: DaemonFixture): BgpStatus {
  const r = d.cli('-o', 'json', 'bgp', 'status');
  if (r.code !== 0) throw new Error(`bgp status: ${r.stderr}`);
  return JSON.parse(r.stdout) as BgpStatus;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
