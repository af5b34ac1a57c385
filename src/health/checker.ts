// Active health checks: every backend of every service with a health_check is
// probed on its own timer (spread over the interval so a thousand backends do
// not fire at once), with at most `maxConcurrent` probes in flight; a probe that
// would exceed it waits its turn. A backend that fails `fall` probes in a row is
// held down through the controller (one transaction: it leaves the Maglev table
// with minimal disruption); `rise` successes bring it back (state.ts, with flap
// damping). Every change of status is one log line and counted.
//
// The checker follows the controller: it re-reads the declared services every
// `resyncMs` (and on sync()), starts probing new backends, stops probing removed
// ones and releases what they held. Backends whose declared state is 'down' are
// not probed. A service whose every backend is down keeps its last table (see
// Controller.forDatapath); the checker logs it and reports it in allDown().
import type { Logger } from 'pino';
import type { BackendRef } from '../control/controller';
import type { HealthCheckSpec, OwnedService } from '../control/model';
import { probe as realProbe, type ProbeFn } from './probe';
import { DEFAULT_DAMPING, initialHealth, observe, type BackendHealth, type Damping, type HealthStatus } from './state';
import { hostPort } from '../net/address';

/** What the checker needs from the controller. */
export interface HealthControl {
  declared(): OwnedService[];
  setHealthDown(name: string, ref: BackendRef, down: boolean): Promise<void>;
}

export interface HealthEvents {
  /** every probe: its type, outcome and duration in seconds */
  probe?(type: HealthCheckSpec['type'], ok: boolean, seconds: number): void;
  /** every status change */
  transition?(service: string, backend: string, from: HealthStatus, to: HealthStatus): void;
}

export interface HealthCheckerOptions {
  /** probes in flight at once (default 256) */
  maxConcurrent?: number;
  damping?: Damping;
  /** how often the declared services are re-read (default 1000 ms) */
  resyncMs?: number;
  probe?: ProbeFn;
  events?: HealthEvents;
  now?: () => number;
}

export interface BackendHealthView {
  service: string;
  address: string;
  port: number;
  /** "address:port", "[v6]:port": the backend label of logs and metrics */
  backend: string;
  type: HealthCheckSpec['type'];
  status: HealthStatus;
  successes: number;
  failures: number;
  probes: number;
  /** seconds since the last status change */
  sinceSeconds: number;
  /** seconds the backend is still held down by flap damping */
  holdSeconds: number;
  lastError?: string;
}

interface Target {
  key: string;
  service: string;
  address: string;
  /** the backend's own port (its identity) */
  port: number;
  /** the port probed */
  probePort: number;
  check: HealthCheckSpec;
  label: string;
  health: BackendHealth;
  timer?: NodeJS.Timeout;
  inFlight: boolean;
  removed: boolean;
  /** the controller holds it down */
  held: boolean;
}


export class HealthChecker {
  private readonly targets = new Map<string, Target>();
  private readonly waiting: Array<() => void> = [];
  private active = 0;
  private resync?: NodeJS.Timeout;
  private stopped = true;
  private readonly maxConcurrent: number;
  private readonly damping: Damping;
  private readonly probe: ProbeFn;
  private readonly now: () => number;
  /** services whose every probed backend is down, as last logged */
  private readonly allDownLogged = new Set<string>();

  constructor(
    private readonly control: HealthControl,
    private readonly log: Logger,
    private readonly opts: HealthCheckerOptions = {},
  ) {
    this.maxConcurrent = opts.maxConcurrent ?? 256;
    this.damping = opts.damping ?? DEFAULT_DAMPING;
    this.probe = opts.probe ?? realProbe;
    this.now = opts.now ?? Date.now;
  }

  start(): void {
    this.stopped = false;
    this.sync();
    this.resync = setInterval(() => this.sync(), this.opts.resyncMs ?? 1000);
    this.resync.unref();
  }

  /** Stops probing; what is held down stays held (the daemon is stopping). */
  stop(): void {
    this.stopped = true;
    clearInterval(this.resync);
    for (const t of this.targets.values()) {
      clearTimeout(t.timer);
      t.removed = true;
    }
    this.targets.clear();
    this.waiting.length = 0;
  }

  /** Probes in flight and waiting for a slot (for benchmarks and tests). */
  load(): { active: number; waiting: number; targets: number } {
    return { active: this.active, waiting: this.waiting.length, targets: this.targets.size };
  }

  /** Follows the declared services: new backends are probed, removed ones released. */
  sync(): void {
    if (this.stopped) return;
    const wanted = new Map<string, Omit<Target, 'health' | 'inFlight' | 'removed' | 'held' | 'timer'>>();
    for (const s of this.control.declared()) {
      const check = s.healthCheck;
      if (!check) continue;
      const checkKey = JSON.stringify(check);
      for (const b of s.backends) {
        if (b.state === 'down') continue;
        const key = `${s.name}|${b.address}|${b.port}|${checkKey}`;
        wanted.set(key, { key, service: s.name, address: b.address, port: b.port, probePort: check.port ?? b.port, check, label: hostPort(b.address, b.port) });
      }
    }
    for (const [key, t] of this.targets) {
      if (wanted.has(key)) continue;
      this.targets.delete(key);
      clearTimeout(t.timer);
      t.removed = true;
      // A backend still declared but no longer checked (or checked differently) is released.
      if (t.held) this.hold(t, false);
    }
    const now = this.now();
    for (const [key, w] of wanted) {
      if (this.targets.has(key)) continue;
      const t: Target = { ...w, health: initialHealth(now), inFlight: false, removed: false, held: false };
      this.targets.set(key, t);
      // Spread the first probes over one interval.
      this.schedule(t, Math.floor(Math.random() * t.check.interval));
    }
  }

  snapshot(): BackendHealthView[] {
    const now = this.now();
    return [...this.targets.values()].map((t) => ({
      service: t.service,
      address: t.address,
      port: t.port,
      backend: t.label,
      type: t.check.type,
      status: t.health.status,
      successes: t.health.successes,
      failures: t.health.failures,
      probes: t.health.probes,
      sinceSeconds: (now - t.health.since) / 1000,
      holdSeconds: Math.max(0, t.health.holdUntil - now) / 1000,
      ...(t.health.lastError ? { lastError: t.health.lastError } : {}),
    }));
  }

  /** Services whose every probed backend is down (their last table stays in place). */
  allDown(): string[] {
    const by = new Map<string, boolean>();
    for (const t of this.targets.values()) by.set(t.service, (by.get(t.service) ?? true) && t.health.status === 'down');
    return [...by].filter(([, down]) => down).map(([s]) => s);
  }

  private schedule(t: Target, delayMs: number): void {
    if (t.removed || this.stopped) return;
    t.timer = setTimeout(() => void this.run(t), Math.max(0, delayMs));
    t.timer.unref();
  }

  private async slot(): Promise<void> {
    if (this.active < this.maxConcurrent) {
      this.active++;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next(); // the slot passes on
    else this.active--;
  }

  private async run(t: Target): Promise<void> {
    if (t.removed || t.inFlight) return;
    t.inFlight = true;
    const due = this.now();
    let ok = false;
    let error: string | undefined;
    await this.slot();
    const started = process.hrtime.bigint();
    try {
      if (!t.removed) ({ ok, error } = await this.probe(t.address, t.probePort, t.check));
    } catch (e) {
      error = (e as Error).message;
    } finally {
      this.release();
      t.inFlight = false;
    }
    if (t.removed) return;
    this.opts.events?.probe?.(t.check.type, ok, Number(process.hrtime.bigint() - started) / 1e9);
    this.record(t, ok, error);
    this.schedule(t, due + t.check.interval - this.now());
  }

  private record(t: Target, ok: boolean, error: string | undefined): void {
    const { next, transition } = observe(t.health, ok, this.now(), t.check, this.damping, error);
    t.health = next;
    if (!transition) return;
    const fields = { service: t.service, backend: t.label, check: t.check.type, from: transition.from };
    if (transition.to === 'down') {
      const holdS = Math.max(0, next.holdUntil - this.now()) / 1000;
      this.log.warn({ ...fields, failures: next.failures, error, ...(holdS ? { holdDownSeconds: holdS } : {}) }, 'backend down');
      this.hold(t, true);
    } else if (transition.from === 'down') {
      this.log.info({ ...fields, successes: next.successes }, 'backend up');
      this.hold(t, false);
    } else {
      this.log.debug({ ...fields }, 'backend healthy');
    }
    this.opts.events?.transition?.(t.service, t.label, transition.from, transition.to);
    this.checkAllDown(t.service);
  }

  private hold(t: Target, down: boolean): void {
    t.held = down;
    this.control.setHealthDown(t.service, { address: t.address, port: t.port }, down).catch((e: Error) => {
      // Gone meanwhile (removed, renamed): the next sync drops the target.
      this.log.debug({ service: t.service, backend: t.label, error: e.message }, 'health change not applied');
    });
  }

  private checkAllDown(service: string): void {
    const down = this.allDown().includes(service);
    if (down && !this.allDownLogged.has(service)) {
      this.allDownLogged.add(service);
      this.log.error({ service }, 'every backend of the service is down; its last Maglev table stays in place');
    } else if (!down && this.allDownLogged.delete(service)) {
      this.log.info({ service }, 'the service has a healthy backend again');
    }
  }
}
