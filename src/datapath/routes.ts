// Routes an edge node needs so that nothing the datapath passes to the kernel
// loops back out (README.md, "Routes and MTU"): the outer source prefixes and
// the VIPs must be local or unreachable (or blackhole/prohibit) on the node.
// A VIP packet the datapath passes (no service for its port, a FIB miss, a
// fragment) or a packet to the outer source it cannot handle would otherwise
// be routed by the kernel, often back towards the router that sent it.
import { routeGet } from '../net/iproute';

/** Route types that never forward (what the kernel does not answer with an error). */
const SAFE_TYPES = new Set(['local', 'unreachable', 'blackhole', 'prohibit', 'throw']);

export interface RouteCheck {
  /** what the address is, for the warning: "outer source", "VIP" */
  what: string;
  /** the configured address or prefix, as the operator wrote it */
  prefix: string;
  /** an address of it to ask the kernel about */
  address: string;
}

/**
 * One line per address the kernel would forward, saying which route to add;
 * none when all is well. One `ip -batch` for every address (opts: leading
 * `ip` options, `-n NETNS` in tests). An address the kernel answers with an
 * error (no route, unreachable, blackhole, prohibit) is never forwarded.
 */
export async function routeWarnings(checks: readonly RouteCheck[], opts: readonly string[] = []): Promise<string[]> {
  let routes;
  try {
    routes = await routeGet([...new Set(checks.map((c) => c.address))], opts);
  } catch (e) {
    return [`routes of outer sources and VIPs not checked: ${(e as Error).message}`];
  }
  const out: string[] = [];
  for (const c of checks) {
    const route = routes.get(c.address);
    if (!route || SAFE_TYPES.has(route.type ?? 'unicast')) continue;
    const via = [route.gateway ? `via ${route.gateway}` : '', route.dev ? `dev ${route.dev}` : ''].filter(Boolean).join(' ');
    out.push(`${c.what} ${c.prefix}: the kernel forwards ${c.address} (${via || 'unicast'}), so what the datapath passes to it loops; add a local or unreachable route for it (ip route add unreachable ${c.prefix})`);
  }
  return out;
}
