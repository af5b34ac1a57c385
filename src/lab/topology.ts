// The lab's network: namespaces, veth links, addresses, routes, sysctls. Pure
// description (labPlan) and the commands that build and remove it. Every
// address is from the documentation ranges; nothing touches the host's own
// interfaces or routes.
//
//   client ──┐                      ┌── be1  198.51.100.11  2001:db8:200::11
//            │                      ├── be2  198.51.100.12  2001:db8:200::12
//            └──────── router ──────┼── be3  198.51.100.13  2001:db8:200::13
//                        │          └── ...  (VIPs on each backend's lo)
//                        │
//                       lb (lb0, xdplb's XDP program)
//
// With several nodes (--nodes N) the router has one link per node (lb1..lbN,
// 192.0.2.128/26 cut in /29s) and learns the VIPs from each node's BGP speaker
// instead of a static route: an N-way ECMP route per VIP, hashed on L4.
//
// client → VIP: client → router → lb (XDP: Maglev, IPIP/IP6IP6, XDP_TX back out
// of lb0) → router → backend (XDP decap) → server on the VIP.
// backend → client: backend → router → client. Replies never reach the lb.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { Address } from '../net/address';

export interface BackendNode {
  /** be1, be2, ... (the name its server answers with) */
  name: string;
  ns: string;
  /** the router's end of its link */
  routerIf: string;
  v4: string;
  v6: string;
}

/** A load-balancer namespace and its link to the router. */
export interface LbNode {
  /** lb (one node), or lb1, lb2, ... */
  name: string;
  ns: string;
  if: string;
  v4: string;
  v6: string;
  /** prefix length of the IPv4 link */
  len4: number;
  router4: string;
  router6: string;
  /** the router's end of its link */
  routerIf: string;
}

export const MAX_NODES = 8;

export interface LabPlan {
  prefix: string;
  ns: { client: string; router: string; lb: string };
  client: { if: string; v4: string[]; v6: string[]; gw4: string; gw6: string };
  /** the first node: with one node, the only one */
  lb: LbNode;
  nodes: LbNode[];
  backends: BackendNode[];
  /** routed from the router to the load balancer */
  vipPrefixes: { v4: string; v6: string };
  /** the router's address on every backend link, and its link-local gateway */
  backendGw: { v4: string; v6: string };
}

export const LAB_PREFIX = 'xdplb-lab-';

/**
 * The lab's names and addresses. Backend i (1-based) is 198.51.100.(10+i) and
 * 2001:db8:200::(10+i), as in config/lab.yaml.
 */
export function labPlan(prefix = LAB_PREFIX, backends = 3, nodes = 1): LabPlan {
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > MAX_NODES) throw new Error(`nodes: an integer in 1..${MAX_NODES}, not ${nodes}`);
  const be: BackendNode[] = [];
  for (let i = 1; i <= backends; i++)
    be.push({ name: `be${i}`, ns: `${prefix}be${i}`, routerIf: `to-be${i}`, v4: `198.51.100.${10 + i}`, v6: `2001:db8:200::${10 + i}` });
  const lbs: LbNode[] =
    nodes === 1
      ? [{ name: 'lb', ns: `${prefix}lb`, if: 'lb0', v4: '192.0.2.34', v6: '2001:db8:2::2', len4: 27, router4: '192.0.2.33', router6: '2001:db8:2::1', routerIf: 'to-lb' }]
      : Array.from({ length: nodes }, (_, k) => ({
          name: `lb${k + 1}`,
          ns: `${prefix}lb${k + 1}`,
          if: 'lb0',
          v4: `192.0.2.${128 + 8 * k + 2}`,
          v6: `2001:db8:2:${k + 1}::2`,
          len4: 29,
          router4: `192.0.2.${128 + 8 * k + 1}`,
          router6: `2001:db8:2:${k + 1}::1`,
          routerIf: `to-lb${k + 1}`,
        }));
  return {
    prefix,
    ns: { client: `${prefix}client`, router: `${prefix}router`, lb: lbs[0].ns },
    client: { if: 'eth0', v4: ['192.0.2.10', '192.0.2.11'], v6: ['2001:db8:1::10', '2001:db8:1::11'], gw4: '192.0.2.1', gw6: '2001:db8:1::1' },
    lb: lbs[0],
    nodes: lbs,
    backends: be,
    vipPrefixes: { v4: '203.0.113.0/24', v6: '2001:db8:100::/64' },
    backendGw: { v4: '198.51.100.1', v6: 'fe80::1' },
  };
}

export function allNamespaces(p: LabPlan): string[] {
  return [p.ns.client, p.ns.router, ...p.nodes.map((n) => n.ns), ...p.backends.map((b) => b.ns)];
}

function run(cmd: string, args: string[], input?: string): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${(err.stderr ?? '').trim() || err.message}`);
  }
}

/** `ip -n NS -batch -`: many commands, one process. */
function ipBatch(ns: string, lines: string[]): void {
  run('ip', ['-n', ns, '-batch', '-'], lines.join('\n') + '\n');
}

function sysctl(ns: string, settings: string[]): void {
  run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', ...settings]);
}

export function namespaceExists(ns: string): boolean {
  return fs.existsSync(`/var/run/netns/${ns}`);
}

/** Namespaces whose name starts with the prefix (leftovers included). */
export function namespacesWithPrefix(prefix: string): string[] {
  let out = '';
  try {
    out = run('ip', ['netns', 'list']);
  } catch {
    return [];
  }
  return out
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((n) => n && n.startsWith(prefix));
}

function macOf(ns: string, dev: string): string {
  const j = JSON.parse(run('ip', ['-n', ns, '-j', 'link', 'show', 'dev', dev])) as Array<{ address: string }>;
  return j[0].address;
}

export interface BuildOptions {
  /** outer source prefixes of each load balancer (as plan.nodes), routed back to it */
  outerSources: string[][];
  /** VIPs held on every backend's loopback */
  vips: string[];
}

/**
 * Builds the whole network. Throws on the first failure; the caller removes
 * whatever was made (destroyTopology).
 */
export function buildTopology(p: LabPlan, o: BuildOptions): void {
  const names = allNamespaces(p);
  for (const ns of names) run('ip', ['netns', 'add', ns]);
  // before any interface exists, so every interface inherits "default"
  for (const ns of names) {
    sysctl(ns, ['net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0']);
    ipBatch(ns, ['link set lo up']);
  }
  const link = (nsA: string, a: string, nsB: string, b: string) => run('ip', ['link', 'add', a, 'netns', nsA, 'type', 'veth', 'peer', 'name', b, 'netns', nsB]);
  link(p.ns.client, p.client.if, p.ns.router, 'to-client');
  for (const n of p.nodes) link(n.ns, n.if, p.ns.router, n.routerIf);
  for (const b of p.backends) link(b.ns, 'eth0', p.ns.router, b.routerIf);

  // router: forwards everything; no reverse-path filter (replies from the VIPs
  // come from the backends, while the VIPs are routed to the load balancer)
  sysctl(p.ns.router, ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
  // ECMP over the nodes by the flow's 5-tuple, not only its addresses: the
  // connections of one client spread over every node
  if (p.nodes.length > 1) sysctl(p.ns.router, ['net.ipv4.fib_multipath_hash_policy=1', 'net.ipv6.fib_multipath_hash_policy=1']);
  // the load balancer: forwarding on, or bpf_fib_lookup answers "forwarding disabled"
  for (const n of p.nodes) sysctl(n.ns, ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
  // backends: never answer ARP for the VIPs held on lo (docs/backend-setup.md)
  for (const b of p.backends) sysctl(b.ns, ['net.ipv4.conf.all.arp_ignore=1', 'net.ipv4.conf.all.arp_announce=2']);

  ipBatch(p.ns.client, [
    `link set ${p.client.if} up`,
    ...p.client.v4.map((a) => `addr add ${a}/27 dev ${p.client.if}`),
    ...p.client.v6.map((a) => `addr add ${a}/64 dev ${p.client.if} nodad`),
    `route add default via ${p.client.gw4} dev ${p.client.if}`,
    `route add ::/0 via ${p.client.gw6} dev ${p.client.if}`,
  ]);
  const router = ['link set to-client up', `addr add ${p.client.gw4}/27 dev to-client`, `addr add ${p.client.gw6}/64 dev to-client nodad`];
  p.nodes.forEach((n, i) =>
    router.push(
      `link set ${n.routerIf} up`,
      `addr add ${n.router4}/${n.len4} dev ${n.routerIf}`,
      `addr add ${n.router6}/64 dev ${n.routerIf} nodad`,
      ...(o.outerSources[i] ?? []).map((s) => `route add ${s} via ${Address.of(s.split('/')[0]).family === 6 ? n.v6 : n.v4} dev ${n.routerIf}`),
    ),
  );
  // one node: the VIPs are routed to it; several: each announces them over BGP
  if (p.nodes.length === 1) router.push(`route add ${p.vipPrefixes.v4} via ${p.lb.v4} dev ${p.lb.routerIf}`, `route add ${p.vipPrefixes.v6} via ${p.lb.v6} dev ${p.lb.routerIf}`);
  for (const b of p.backends)
    router.push(
      `link set ${b.routerIf} up`,
      `addr add ${p.backendGw.v4}/32 dev ${b.routerIf}`,
      `addr add ${p.backendGw.v6}/64 dev ${b.routerIf} nodad`,
      `route add ${b.v4}/32 dev ${b.routerIf}`,
      `route add ${b.v6}/128 dev ${b.routerIf}`,
    );
  ipBatch(p.ns.router, router);
  for (const n of p.nodes)
    ipBatch(n.ns, [
      `link set ${n.if} up`,
      `addr add ${n.v4}/${n.len4} dev ${n.if}`,
      `addr add ${n.v6}/64 dev ${n.if} nodad`,
      `route add default via ${n.router4} dev ${n.if}`,
      `route add ::/0 via ${n.router6} dev ${n.if}`,
      // What XDP passes for a VIP (no such service) ends here with an ICMP
      // unreachable, instead of going back to the router and round again.
      `route add unreachable ${p.vipPrefixes.v4}`,
      `route add unreachable ${p.vipPrefixes.v6}`,
    ]);
  for (const b of p.backends)
    ipBatch(b.ns, [
      'link set eth0 up',
      `addr add ${b.v4}/32 dev eth0`,
      `addr add ${b.v6}/128 dev eth0 nodad`,
      `route add ${p.backendGw.v4}/32 dev eth0`,
      `route add default via ${p.backendGw.v4} dev eth0`,
      `route add ::/0 via ${p.backendGw.v6} dev eth0`,
      ...o.vips.map((v) => `addr add ${v}/${Address.of(v).bits} dev lo`),
    ]);

  // Permanent neighbours on every link: bpf_fib_lookup needs a resolved next
  // hop, and no packet of a test ever waits for (or loses to) ARP/ND.
  const clientMac = macOf(p.ns.client, p.client.if);
  const routerClientMac = macOf(p.ns.router, 'to-client');
  const neigh = (addr: string, mac: string, dev: string) => `neigh replace ${addr} lladdr ${mac} dev ${dev} nud permanent`;
  const routerNeigh = [...p.client.v4, ...p.client.v6].map((a) => neigh(a, clientMac, 'to-client'));
  for (const n of p.nodes) {
    const routerMac = macOf(p.ns.router, n.routerIf);
    const lbMac = macOf(n.ns, n.if);
    ipBatch(n.ns, [neigh(n.router4, routerMac, n.if), neigh(n.router6, routerMac, n.if)]);
    routerNeigh.push(neigh(n.v4, lbMac, n.routerIf), neigh(n.v6, lbMac, n.routerIf));
  }
  ipBatch(p.ns.client, [neigh(p.client.gw4, routerClientMac, p.client.if), neigh(p.client.gw6, routerClientMac, p.client.if)]);
  for (const b of p.backends) {
    const beMac = macOf(b.ns, 'eth0');
    const gwMac = macOf(p.ns.router, b.routerIf);
    routerNeigh.push(neigh(b.v4, beMac, b.routerIf), neigh(b.v6, beMac, b.routerIf));
    ipBatch(b.ns, [neigh(p.backendGw.v4, gwMac, 'eth0'), neigh(p.backendGw.v6, gwMac, 'eth0')]);
  }
  ipBatch(p.ns.router, routerNeigh);
  // The router's end of the load balancer's link needs an XDP program of its
  // own to receive the load balancer's XDP_TX frames: Lab.up attaches one
  // (GRO alone is not enough for XDP_TX on this kernel: the frames are queued
  // on the peer but its NAPI is never scheduled).
  // The client computes its checksums itself. With offload, a veth sends TCP
  // and UDP with only the pseudo-header sum in place (CHECKSUM_PARTIAL); the
  // load balancer's XDP_TX turns the packet into a bare frame, that promise
  // is lost, and the backend drops the segment as corrupt (TcpInCsumErrors).
  // A real NIC computes the checksum on the wire, so this is the lab's
  // stand-in for real hardware, not a workaround in xdplb.
  run('ip', ['netns', 'exec', p.ns.client, 'ethtool', '-K', p.client.if, 'tx', 'off']);
}

/** Deletes the namespaces (their veths go with them). Safe when they are gone. */
export function destroyTopology(prefix: string, known: readonly string[] = []): string[] {
  const names = new Set([...namespacesWithPrefix(prefix), ...known.filter(namespaceExists)]);
  const removed: string[] = [];
  for (const ns of names) {
    try {
      run('ip', ['netns', 'delete', ns]);
      removed.push(ns);
    } catch {
      // gone meanwhile
    }
  }
  return removed;
}

/** Processes living in a namespace (ip netns pids). */
export function pidsIn(ns: string): number[] {
  try {
    return run('ip', ['netns', 'pids', ns])
      .split('\n')
      .map((l) => Number(l.trim()))
      .filter((n) => Number.isInteger(n) && n > 1 && n !== process.pid);
  } catch {
    return [];
  }
}

/** RX/TX packet counters of an interface in a namespace. */
export function linkStats(ns: string, dev: string): { rx: number; tx: number } {
  const j = JSON.parse(run('ip', ['-n', ns, '-s', '-j', 'link', 'show', 'dev', dev])) as Array<{ stats64: { rx: { packets: number }; tx: { packets: number } } }>;
  return { rx: j[0].stats64.rx.packets, tx: j[0].stats64.tx.packets };
}

/** TCP segments the namespace's kernel received, IPv4 and IPv6 (one MIB for both). */
export function tcpInSegs(ns: string): number {
  const lines = inNs(ns, 'cat', '/proc/net/snmp').split('\n').filter((l) => l.startsWith('Tcp:'));
  const names = lines[0].split(/\s+/);
  return Number(lines[1].split(/\s+/)[names.indexOf('InSegs')]);
}

/** Runs a command in a namespace (ip netns exec) and returns its stdout. */
export function inNs(ns: string, cmd: string, ...args: string[]): string {
  return run('ip', ['netns', 'exec', ns, cmd, ...args]);
}

/** `ip -n NS ...` */
export function ipIn(ns: string, ...args: string[]): string {
  return run('ip', ['-n', ns, ...args]);
}
