// The health of one backend as its probes tell it: a pure state machine, so
// rise/fall counting and flap damping are tested without a clock or a socket.
//
//   unknown ── fall failures in a row ──▶ down ── rise successes in a row ──▶ up
//      └────── rise successes in a row ──▶ up ── fall failures in a row ──▶ down
//
// 'unknown' (not probed enough yet) serves like 'up': a daemon that starts does
// not take traffic away from anyone before its probes have spoken.
//
// Flap damping: a backend that goes down again within `windowMs` of an earlier
// fall is held down for a while even when its probes succeed: baseHoldMs for
// its second fall in the window, doubling for every further one, at most
// maxHoldMs. A first fall holds nothing, so an ordinary restart of a backend
// costs only rise × interval.

export type HealthStatus = 'unknown' | 'up' | 'down';

export interface BackendHealth {
  status: HealthStatus;
  /** probes in a row that succeeded / failed */
  successes: number;
  failures: number;
  /** times (ms) the backend went down, within the damping window */
  downs: number[];
  /** the backend does not return before this time (ms) */
  holdUntil: number;
  /** time (ms) of the last status change */
  since: number;
  lastError?: string;
  probes: number;
}

export interface Damping {
  windowMs: number;
  baseHoldMs: number;
  maxHoldMs: number;
}

export const DEFAULT_DAMPING: Damping = { windowMs: 300_000, baseHoldMs: 10_000, maxHoldMs: 300_000 };

export function initialHealth(now: number): BackendHealth {
  return { status: 'unknown', successes: 0, failures: 0, downs: [], holdUntil: 0, since: now, probes: 0 };
}

/** How long a backend is held down after its n-th fall within the damping window. */
export function holdDownMs(fallsInWindow: number, d: Damping = DEFAULT_DAMPING): number {
  if (fallsInWindow <= 1) return 0;
  return Math.min(d.baseHoldMs * 2 ** (fallsInWindow - 2), d.maxHoldMs);
}

export interface Observation {
  next: BackendHealth;
  /** set when the status changed */
  transition?: { from: HealthStatus; to: HealthStatus };
}

/** One probe's outcome applied to `h`. */
export function observe(
  h: BackendHealth,
  ok: boolean,
  now: number,
  rules: { rise: number; fall: number },
  damping: Damping = DEFAULT_DAMPING,
  error?: string,
): Observation {
  const next: BackendHealth = {
    ...h,
    successes: ok ? h.successes + 1 : 0,
    failures: ok ? 0 : h.failures + 1,
    probes: h.probes + 1,
    lastError: ok ? h.lastError : error,
  };
  if (ok && h.status !== 'up' && next.successes >= rules.rise && now >= h.holdUntil) {
    next.status = 'up';
    next.since = now;
    return { next, transition: { from: h.status, to: 'up' } };
  }
  if (!ok && h.status !== 'down' && next.failures >= rules.fall) {
    next.downs = [...h.downs.filter((t) => now - t < damping.windowMs), now];
    next.holdUntil = now + holdDownMs(next.downs.length, damping);
    next.status = 'down';
    next.since = now;
    return { next, transition: { from: h.status, to: 'down' } };
  }
  return { next };
}
