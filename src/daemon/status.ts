// The one-line STATUS= that `systemctl status xdplb` shows, kept current: what
// is served, which backends are out, what is being recorded. A change asks for
// an update; updates go out at most once per interval, always with the state
// at the moment they are sent, and only when the line differs from the last one
// sent, so a burst of API calls costs one message and one read of the state.
import type { ServiceSpec } from '../control/model';

export interface StatusFacts {
  services: readonly ServiceSpec[];
  /** recordings running */
  recordings: number;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

export function statusLine(f: StatusFacts): string {
  const backends = f.services.flatMap((s) => s.backends);
  const down = backends.filter((b) => b.state === 'down').length;
  const draining = backends.filter((b) => b.state === 'draining').length;
  return `serving ${plural(f.services.length, 'service')}, ${plural(backends.length, 'backend')} (${down} down, ${draining} draining); ${plural(f.recordings, 'recording')}`;
}

export interface StatusReporterOptions {
  facts(): StatusFacts;
  send(line: string): void;
  /** the shortest time between two updates (default 1 s) */
  minIntervalMs?: number;
}

export class StatusReporter {
  private last = '';
  private lastAt = 0;
  private timer?: NodeJS.Timeout;
  /** updates wait for READY=1: before it systemd shows nothing but "activating" */
  private live = false;
  private stopped = false;

  constructor(private readonly o: StatusReporterOptions) {}

  /** The line now, taken as sent (it goes out with READY=1); updates follow from now on. */
  ready(): string {
    this.live = true;
    this.last = statusLine(this.o.facts());
    this.lastAt = Date.now();
    return this.last;
  }

  /** Something the line shows may have changed. */
  changed(): void {
    if (!this.live || this.stopped || this.timer) return;
    const wait = this.lastAt + (this.o.minIntervalMs ?? 1000) - Date.now();
    if (wait <= 0) this.flush();
    else this.timer = setTimeout(() => this.flush(), wait).unref();
  }

  /** No update after this (STOPPING=1 is the last word). */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private flush(): void {
    this.timer = undefined;
    if (this.stopped) return;
    const line = statusLine(this.o.facts());
    if (line === this.last) return;
    this.last = line;
    this.lastAt = Date.now();
    this.o.send(line);
  }
}
