// What the datapath reports of itself, read from its maps: counters per
// service, backend and reason, and the node's status.
import * as bpf from './bpf';
import * as L from './layout';
import { REASON, REASONS } from './reasons';
import { agePathMtus } from './pmtu';
import { routeWarnings, type RouteCheck } from './routes';
import { backendKey, serviceKey, type BackendKey, type NodeSettings, type ServiceKey, type ServiceSpec } from '../control/model';
import type { Attachment } from './attach';
import type { CountersSnapshot, NodeStatusSnapshot } from './snapshot';

export type DatapathMaps = Record<keyof typeof L.MAP_NAMES, bpf.BpfMap>;

/** A service's ids as installed. */
export interface InstalledIds {
  id: number;
  backends: ReadonlyMap<BackendKey, number>;
}

export interface StatusSource {
  maps: DatapathMaps;
  program: bpf.BpfProgram;
  node: NodeSettings;
  attachments: Array<Attachment & { programId: number }>;
  /** services installed */
  installed: number;
  /** VIP entries (ICMP echo) installed */
  vipEntries: number;
}

export async function readCounters(maps: DatapathMaps, installed: ReadonlyMap<ServiceKey, InstalledIds>, services: readonly ServiceSpec[], only?: string): Promise<CountersSnapshot> {
  const picked = services.flatMap((spec) => {
    const s = only && spec.name !== only ? undefined : installed.get(serviceKey(spec));
    return s ? [{ spec, id: s.id, backendIds: spec.backends.map((b) => s.backends.get(backendKey(b.address, b.port))) }] : [];
  });
  const backendIds = picked.flatMap((p) => p.backendIds.filter((id): id is number => id !== undefined));
  const [svcValues, beValues, reasonValues, cacheStats] = await Promise.all([
    maps.serviceStats.lookupManyPerCpu(picked.map((p) => L.u32(p.id))),
    maps.backendStats.lookupManyPerCpu(backendIds.map((id) => L.u32(id))),
    maps.reasons.lookupManyPerCpu(REASONS.map((_, i) => L.u32(i))),
    maps.cacheStats.lookupManyPerCpu([L.u32(L.CACHE_STAT_NEXTHOP_LOOKUPS), L.u32(L.CACHE_STAT_FLOW_FILLS)]),
  ]);
  const traffic = (perCpu: Buffer[] | undefined) => {
    const c = L.sumCounters(perCpu ?? null);
    return { packets: Number(c.packets), bytes: Number(c.bytes) };
  };
  const byBackend = new Map(backendIds.map((id, i) => [id, beValues[i]]));
  const out: CountersSnapshot = { timestamp: Date.now() / 1000, services: [], verdicts: {}, reasons: {}, nexthopLookups: Number(L.sumU64(cacheStats[0])), flowCacheFills: Number(L.sumU64(cacheStats[1])) };
  picked.forEach((p, i) =>
    out.services.push({
      name: p.spec.name,
      traffic: traffic(svcValues[i]),
      backends: p.spec.backends.map((b, j) => {
        const id = p.backendIds[j];
        return { address: b.address, port: b.port, traffic: traffic(id === undefined ? undefined : byBackend.get(id)) };
      }),
    }),
  );
  REASONS.forEach((r, i) => {
    const c = traffic(reasonValues[i]);
    out.reasons[r.name] = c.packets;
    out.verdicts[r.verdict] = (out.verdicts[r.verdict] ?? 0) + c.packets;
  });
  return out;
}

/** Packets counted under one reason, summed over CPUs: one lookup, cheap enough to poll. */
export function reasonPackets(reasons: bpf.BpfMap, name: string): number {
return Number(L.sumCounters(reasons.lookupPerCpu(L.u32(REASON[name]))).packets);
}

export async function readStatus(d: StatusSource, services: readonly ServiceSpec[], uptimeSeconds: number): Promise<NodeStatusSnapshot> {
  const info = d.program.info();
  const attachments = d.attachments;
  // the connection table: IPv6 flows in xdplb_conntrack, IPv4 in xdplb_conntrack4
  const [ct6, ct4] = await Promise.all([d.maps.conntrack.count(), d.maps.conntrack4.count()]);
  const backends = services.reduce((n, s) => n + s.backends.length, 0);
  return {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    version: (require('../../../package.json') as { version: string }).version,
    attachments,
    programId: info.id,
    programInstructions: info.instructions,
    maglevSize: d.node.maglevSize,
    maps: [
      { name: L.MAP_NAMES.services, entries: d.installed + d.vipEntries, capacity: d.maps.services.maxEntries },
      { name: L.MAP_NAMES.backends, entries: backends, capacity: d.maps.backends.maxEntries },
      { name: L.MAP_NAMES.maglev, entries: d.installed, capacity: d.maps.maglev.maxEntries },
      { name: L.MAP_NAMES.conntrack, entries: ct6 + ct4, capacity: d.maps.conntrack.maxEntries + d.maps.conntrack4.maxEntries },
    ],
    services: services.length,
    backends,
    bpffs: d.node.bpffs,
    uptimeSeconds,
    pathMtus: agePathMtus(d.maps.pmtu),
    routeWarnings: await routeWarnings(routeChecks(d.node, services)),
  };
}

/** The addresses whose packets the kernel must not forward: outer sources and VIPs. */
function routeChecks(node: NodeSettings, services: readonly ServiceSpec[]): RouteCheck[] {
  const checks: RouteCheck[] = [];
  for (const o of [node.outerSource.ipv4, node.outerSource.ipv6]) {
    if (o) checks.push({ what: 'outer source', prefix: o.prefixLength ? `${o.address}/${o.prefixLength}` : o.address, address: o.address });
  }
  for (const vip of new Set(services.map((s) => s.vip))) checks.push({ what: 'VIP', prefix: vip, address: vip });
  return checks;
}
