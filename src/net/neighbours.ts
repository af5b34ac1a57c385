// Next-hop neighbours. bpf_fib_lookup never resolves a neighbour itself: with
// no ARP/ND entry for a backend's next hop it answers NO_NEIGH, the packet is dropped
// (drop_fib_no_neigh: passed, it would meet the VIP's unreachable route and
// the client's connect would fail) and, on a link nothing else talks through,
// nothing ever resolves it. So the daemon keeps one kernel-managed entry
// (NTF_MANAGED, kernel >= 5.16: the kernel resolves it and keeps it resolved)
// for every backend's next hop, as `ip route get` names it: the gateway, or the
// backend itself when it is on-link.
//
// When it re-evaluates: at start, after every change of the services, on every
// route change and neighbour deletion (`ip monitor route neigh`, so a flush or
// a new route is followed at once, not at the next poll), at once when the
// datapath's drop_fib_no_neigh counter moves (checked every second: one
// per-CPU lookup), and every 30 s as a net under all of these. A permanent
// entry an operator made stays as it is; a learned entry for a next hop becomes
// managed (the kernel then keeps it); a managed entry for a next hop it needs
// is adopted (a previous daemon made it). Only entries the daemon made or
// adopted are removed, once no backend needs them any more. All work is spawned `ip`
// processes (async); the event loop never waits for them. `ip` runs in the
// daemon's own network namespace, which is the datapath's.
import { spawn } from 'node:child_process';
import type { Logger } from 'pino';
import { ip, routeGet } from './iproute';

export interface NextHopStatus {
  /** the neighbour: a gateway, or the backend itself when on-link */
  address: string;
  interface: string;
  /** resolved: the kernel holds a link-layer address for it */
  resolved: boolean;
  /** the kernel's neighbour state (REACHABLE, STALE, INCOMPLETE, FAILED, ...), or why there is none */
  state: string;
  /** backends reached through it */
  backends: number;
}

export interface NeighbourOptions {
  log: Logger;
  /** addresses of every configured backend (both families) */
  backends(): string[];
  /** the datapath's drop_fib_no_neigh count, summed over CPUs */
  noNeighCount(): number;
  counterPollMs?: number;
  recheckMs?: number;
}

/** The states in which the kernel has a link-layer address to send to. */
const RESOLVED = new Set(['REACHABLE', 'STALE', 'DELAY', 'PROBE', 'PERMANENT', 'NOARP']);

interface NeighEntry {
  dst: string;
  dev: string;
  state?: string[];
  managed?: unknown;
}

const key = (address: string, dev: string) => `${address}%${dev}`;

/** Each backend's next hop: its route's gateway, or itself when on-link; undefined without a route. */
async function routeNextHops(backends: string[]): Promise<Map<string, { address: string; dev: string } | undefined>> {
  const out = new Map<string, { address: string; dev: string } | undefined>();
  for (const [b, a] of await routeGet(backends)) out.set(b, a?.dev && a.type !== 'local' ? { address: a.gateway ?? b, dev: a.dev } : undefined);
  return out;
}

export class NeighbourKeeper {
  private readonly created = new Set<string>();
  private wanted: Array<{ address: string; dev: string; backends: number }> = [];
  /** the backend addresses the last evaluation started from */
  private evaluated = new Set<string>();
  private unrouted: NextHopStatus[] = [];
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private lastNoNeigh = -1;
  private readonly timers: NodeJS.Timeout[] = [];
  private monitor: ReturnType<typeof spawn> | undefined;

  constructor(private readonly o: NeighbourOptions) {}

  start(): void {
    this.timers.push(
      setInterval(() => this.watchCounter(), this.o.counterPollMs ?? 1000).unref(),
      setInterval(() => this.sync(), this.o.recheckMs ?? 30000).unref(),
    );
    this.startMonitor();
    this.sync();
  }

  /**
   * The services changed: next hops are re-evaluated only when the set of
   * backend addresses did (a change elsewhere in 10,000 services must not cost
   * a route lookup of every backend).
   */
  servicesChanged(): Promise<void> {
    const now = new Set(this.o.backends());
    if (now.size === this.evaluated.size && [...now].every((a) => this.evaluated.has(a))) return Promise.resolve();
    return this.sync();
  }

  /** Re-evaluates every next hop; calls during a run coalesce into one more run. */
  sync(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = this.evaluate()
      .catch((e: Error) => this.o.log.warn({ error: e.message }, 'next hops not evaluated'))
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          void this.sync();
        }
      });
    return this.running;
  }

  /** Every next hop with the kernel's state of its entry now. */
  async snapshot(): Promise<NextHopStatus[]> {
    // status must answer even when `ip` cannot: every state then reads "unknown"
    const now = this.wanted.length ? await this.neighbours().catch(() => undefined) : new Map<string, NeighEntry>();
    return [
      ...this.wanted.map((w) => {
        const state = now ? (now.get(key(w.address, w.dev))?.state ?? []) : ['unknown'];
        return { address: w.address, interface: w.dev, resolved: state.some((x) => RESOLVED.has(x)), state: state.join(',') || 'none', backends: w.backends };
      }),
      ...this.unrouted.map((u) => ({ ...u })),
    ];
  }

  /** Stops watching; the entries stay, so forwarding does not wait for the next daemon. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.monitor?.kill();
    await this.running;
  }

  private watchCounter(): void {
    let n: number;
    try {
      n = this.o.noNeighCount();
    } catch {
      return;
    }
    if (n !== this.lastNoNeigh) {
      this.lastNoNeigh = n;
      void this.sync();
    }
  }

  private startMonitor(): void {
    if (this.stopped) return;
    const m = spawn('ip', ['monitor', 'label', 'route', 'neigh'], { stdio: ['ignore', 'pipe', 'ignore'] });
    this.monitor = m;
    let pending = '';
    m.stdout!.on('data', (b: Buffer) => {
      const lines = (pending + b.toString()).split('\n');
      pending = lines.pop() ?? '';
      // Neighbour updates of entries being resolved would wake us for nothing
      // (and our own replaces would wake us again); a deletion is what matters.
      if (lines.some((l) => l.startsWith('[ROUTE]') || (l.startsWith('[NEIGH]') && l.includes('Deleted')))) void this.sync();
    });
    let failed = false;
    m.once('error', (e) => {
      failed = true;
      this.o.log.warn({ error: e.message }, 'ip monitor not started; next hops follow the counter and the periodic check');
    });
    m.once('close', () => {
      if (!this.stopped && !failed) setTimeout(() => this.startMonitor(), 1000).unref();
    });
  }

  private async evaluate(): Promise<void> {
    const backends = [...new Set(this.o.backends())];
    this.evaluated = new Set(backends);
    const routes = await routeNextHops(backends);
    const wanted = new Map<string, { address: string; dev: string; backends: number }>();
    const unrouted: NextHopStatus[] = [];
    for (const [backend, nh] of routes) {
      if (!nh) {
        unrouted.push({ address: backend, interface: '', resolved: false, state: 'no route', backends: 1 });
        continue;
      }
      const k = key(nh.address, nh.dev);
      const w = wanted.get(k);
      if (w) w.backends++;
      else wanted.set(k, { ...nh, backends: 1 });
    }
    const existing = await this.neighbours();
    const replaces: string[] = [];
    for (const [k, w] of wanted) {
      const e = existing.get(k);
      // A static entry an operator keeps stays theirs; a managed one for a next
      // hop we need is adopted (a previous daemon made it).
      if (e && !this.created.has(k) && e.managed === undefined && (e.state?.includes('PERMANENT') || e.state?.includes('NOARP'))) continue;
      if (!e || e.managed === undefined || e.state?.includes('FAILED')) replaces.push(`neigh replace ${w.address} dev ${w.dev} managed`);
      this.created.add(k);
    }
    const deletes: string[] = [];
    for (const k of [...this.created]) {
      if (wanted.has(k)) continue;
      this.created.delete(k);
      const e = existing.get(k);
      if (e && e.managed !== undefined) deletes.push(`neigh del ${e.dst} dev ${e.dev}`);
    }
    if (replaces.length || deletes.length) {
      const r = await ip(['-force', '-batch', '-'], [...replaces, ...deletes].join('\n') + '\n');
      if (!r.ok) this.o.log.warn({ error: r.err }, 'next-hop neighbours not all written');
      if (replaces.length) this.o.log.info({ nextHops: replaces.length }, 'next-hop neighbours handed to the kernel to resolve');
      if (deletes.length) this.o.log.info({ nextHops: deletes.length }, 'next-hop neighbours no backend needs were removed');
    }
    this.wanted = [...wanted.values()];
    this.unrouted = unrouted;
  }

  private async neighbours(): Promise<Map<string, NeighEntry>> {
    const r = await ip(['-j', 'neigh', 'show']);
    if (!r.ok) throw new Error(`ip neigh show: ${r.err}`);
    return new Map((JSON.parse(r.out || '[]') as NeighEntry[]).map((e) => [key(e.dst, e.dev), e]));
  }
}
