// The kernel's routes and neighbours as iproute2's `ip` reports them, for the
// daemon's own network namespace (the datapath's). Spawned, never waited for on
// the event loop; many questions go to one `ip -batch` process.
import { spawn } from 'node:child_process';

/** Runs `ip ARGS` with optional stdin; resolves with its stdout, or with the error text. */
export function ip(args: string[], input?: string): Promise<{ ok: boolean; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn('ip', args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    p.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    p.once('error', (e) => resolve({ ok: false, out, err: e.message }));
    p.once('close', (code) => resolve({ ok: code === 0, out, err: err.trim() }));
    if (input !== undefined) p.stdin!.end(input);
  });
}

/** One answer of `ip -j route get`. */
export interface RouteAnswer {
  type?: string;
  dst: string;
  gateway?: string;
  dev?: string;
}

/**
 * `ip route get` for every address, in one `ip -batch` (`opts`: leading
 * options such as `-n NETNS`). `-j` with -batch prints one JSON array per
 * command; with -force an address the kernel answers with an error (no
 * route, unreachable, blackhole, prohibit) does not stop the others and is
 * undefined in the result. Throws only when `ip` itself cannot run.
 */
export async function routeGet(addresses: readonly string[], opts: readonly string[] = []): Promise<Map<string, RouteAnswer | undefined>> {
  const out = new Map<string, RouteAnswer | undefined>(addresses.map((a) => [a, undefined]));
  if (!addresses.length) return out;
  const r = await ip([...opts, '-j', '-force', '-batch', '-'], addresses.map((a) => `route get ${a}`).join('\n') + '\n');
  if (!r.ok && !r.out) {
    // every lookup failed: the kernel's errors, or no `ip` at all
    if (!/unreachable|no route|invalid argument|permission denied/i.test(r.err)) throw new Error(`ip route get: ${r.err}`);
    return out;
  }
  for (const line of r.out.split('\n')) {
    if (!line.startsWith('[')) continue;
    for (const a of JSON.parse(line) as RouteAnswer[]) if (out.has(a.dst)) out.set(a.dst, a);
  }
  return out;
}

/** One answer of `ip -j netconf show`: the per-family settings of an interface. */
export interface NetconfAnswer {
  family: 'inet' | 'inet6';
  interface: string;
  forwarding?: boolean;
}

/**
 * An interface's IPv4 and IPv6 settings, over rtnetlink (RTM_GETNETCONF), so
 * it answers where /proc/sys is hidden (systemd's ProcSubset=pid). Throws when
 * `ip` cannot run or the kernel refuses.
 */
export async function netconf(dev: string, opts: readonly string[] = []): Promise<NetconfAnswer[]> {
  const r = await ip([...opts, '-j', 'netconf', 'show', 'dev', dev]);
  if (!r.ok) throw new Error(`ip netconf show dev ${dev}: ${r.err}`);
  return JSON.parse(r.out || '[]') as NetconfAnswer[];
}
