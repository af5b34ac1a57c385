// Routes an edge node needs so that nothing the datapath passes to the kernel
// loops back out (README.md, "Routes and MTU"): the outer source prefixes and
// the VIPs must be local or unreachable (or blackhole/prohibit) on the node.
// A VIP packet the datapath passes (no service for its port, a FIB miss, a
// fragment) or a packet to the outer source it cannot handle would otherwise
// be routed by the kernel, often back towards the router that sent it.
import { execFile } from 'node:child_process';

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

/** `ip -j route get ADDRESS` in the daemon's network namespace: [exit code, stdout, stderr]. */
export type RouteGet = (address: string) => Promise<[number, string, string]>;

export const ipRouteGet: RouteGet = (address) =>
  new Promise((resolve) => {
    execFile('ip', ['-j', 'route', 'get', address], { timeout: 2000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve([code, stdout, stderr]);
    });
  });

/** One line per address the kernel would forward, saying which route to add; none when all is well. */
export async function routeWarnings(checks: readonly RouteCheck[], get: RouteGet = ipRouteGet): Promise<string[]> {
  const out: string[] = [];
  for (const c of checks) {
    const [code, stdout, stderr] = await get(c.address);
    const fix = `add a local or unreachable route for it (ip route add unreachable ${c.prefix})`;
    if (code !== 0) {
      // the kernel answers with the route's error: no route at all ENETUNREACH,
      // unreachable EHOSTUNREACH, blackhole EINVAL, prohibit EACCES
      if (/network is unreachable|no route to host|invalid argument|permission denied/i.test(stderr)) continue;
      out.push(`${c.what} ${c.prefix}: ip route get ${c.address} failed (${stderr.trim() || `exit ${code}`})`);
      continue;
    }
    let route: { type?: string; gateway?: string; dev?: string } | undefined;
    try {
      route = (JSON.parse(stdout) as Array<{ type?: string; gateway?: string; dev?: string }>)[0];
    } catch {
      out.push(`${c.what} ${c.prefix}: ip route get ${c.address} gave no JSON`);
      continue;
    }
    if (route && SAFE_TYPES.has(route.type ?? 'unicast')) continue;
    const via = [route?.gateway ? `via ${route.gateway}` : '', route?.dev ? `dev ${route.dev}` : ''].filter(Boolean).join(' ');
    out.push(`${c.what} ${c.prefix}: the kernel forwards ${c.address} (${via || 'unicast'}), so what the datapath passes to it loops; ${fix}`);
  }
  return out;
}
