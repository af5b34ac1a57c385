// The multi-node lab's router: BIRD 2 in the router namespace, one BGP session
// per node and family, and the routes it learns merged into one ECMP route per
// VIP in the kernel (`merge paths`), which hashes flows over the nodes by
// 5-tuple (fib_multipath_hash_policy=1, set by topology.ts).
//
// Resilient next-hop groups are not used: BIRD 2.0 writes multipath routes as
// RTA_MULTIPATH, never as nexthop objects (`ip nexthop ... type resilient`),
// so a node joining or leaving rehashes flows over the whole set.
import { execFileSync } from 'node:child_process';
import type { LabPlan } from './topology';

/** Private ASNs: the router, and every node (one anycast AS). */
export const ROUTER_ASN = 64513;
export const NODE_ASN = 64512;
/** BGP hold time of the lab's sessions (the shortest BIRD accepts): a dead node is dropped within it */
export const LAB_HOLD_TIME_S = 3;

/** The router's BIRD configuration for the plan's nodes. */
export function routerBirdConf(p: LabPlan): string {
  const session = (name: string, local: string, neighbor: string, family: 'ipv4' | 'ipv6') => [
    `protocol bgp ${name} {`,
    `  local ${local} as ${ROUTER_ASN};`,
    `  neighbor ${neighbor} as ${NODE_ASN};`,
    `  hold time ${LAB_HOLD_TIME_S};`,
    '  connect retry time 1;',
    '  error wait time 1, 3;',
    '  graceful restart on;',
    `  ${family} { import all; export none; };`,
    '}',
  ];
  return [
    `router id ${p.client.gw4};`,
    'protocol device {}',
    // merge paths: equal routes from several nodes become one multipath route
    'protocol kernel kernel4 { ipv4 { import none; export all; }; merge paths on; }',
    'protocol kernel kernel6 { ipv6 { import none; export all; }; merge paths on; }',
    ...p.nodes.flatMap((n) => [...session(`${n.name}_v4`, n.router4, n.v4, 'ipv4'), ...session(`${n.name}_v6`, n.router6, n.v6, 'ipv6')]),
    '',
  ].join('\n');
}

/** The `bgp:` section of a node's configuration (YAML object), peering with the router. */
export function nodeBgpSection(p: LabPlan, node: number): Record<string, unknown> {
  const n = p.nodes[node];
  return {
    asn: NODE_ASN,
    router_id: n.v4,
    peers: [
      { address: n.router4, asn: ROUTER_ASN, hold_time: LAB_HOLD_TIME_S },
      { address: n.router6, asn: ROUTER_ASN, hold_time: LAB_HOLD_TIME_S },
    ],
  };
}

/** The router interfaces (to-lb1, ...) a VIP's route in the router namespace leads to; [] without a route. */
export function vipNexthops(p: LabPlan, vip: string): string[] {
  const six = vip.includes(':');
  let out: string;
  try {
    out = execFileSync('ip', ['-n', p.ns.router, '-j', six ? '-6' : '-4', 'route', 'show', 'exact', `${vip}/${six ? 128 : 32}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    return [];
  }
  const routes = JSON.parse(out || '[]') as Array<{ dev?: string; nexthops?: Array<{ dev: string }> }>;
  if (!routes.length) return [];
  const r = routes[0];
  return r.nexthops ? r.nexthops.map((h) => h.dev) : r.dev ? [r.dev] : [];
}
