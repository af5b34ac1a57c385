// What xdplb announces over BGP, and when. A VIP is announced while the XDP
// program is attached and at least one service of the VIP has a serving
// backend (active, weight > 0, not held down by its health check), unless the
// node is drained; every other case is a withdrawal with its reason. BIRD
// (bird.ts) does the BGP; this module decides, applies, supervises BIRD,
// counts the VIPs' traffic during a drain, and reports.
//
// Loaded only when the configuration has a `bgp:` section (a dynamic import
// from the daemon).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { ServiceSpec } from '../control/model';
import { Bird, birdConfig, peerProtocol, type Announcement, type ProtocolState } from './bird';
import type { BgpSettings } from '../control/model';
import { peerFamily } from './config';

export interface VipPlan {
  vip: string;
  prefix: string;
  announced: boolean;
  /** why it is not announced */
  reason?: string;
  services: string[];
  communities: string[];
  med?: number;
}

export interface BgpPeerStatus {
  address: string;
  asn: number;
  state: string;
  info: string;
  since: string;
  established: boolean;
}

export interface BgpStatusSnapshot {
  asn: number;
  routerId: string;
  speakerRunning: boolean;
  speakerPid: number;
  speakerRestarts: number;
  attachedInterfaces: string[];
  peers: BgpPeerStatus[];
  vips: VipPlan[];
  drain: { drained: boolean; sinceSeconds: number; trafficStopped: boolean; quietSeconds: number; packetsSinceDrain: number };
}

/** What the API asks of the BGP module. */
export interface BgpControl {
  status(): Promise<BgpStatusSnapshot>;
  drain(): Promise<BgpStatusSnapshot>;
  undrain(): Promise<BgpStatusSnapshot>;
}

/**
 * The announcements for these services: pure. `services` carry their
 * effective backend states (health overrides applied).
 */
export function planVips(services: readonly ServiceSpec[], attached: readonly string[], drained: boolean, s: BgpSettings): VipPlan[] {
  const byVip = new Map<string, ServiceSpec[]>();
  for (const svc of services) byVip.set(svc.vip, [...(byVip.get(svc.vip) ?? []), svc]);
  const families = new Set(s.peers.map(peerFamily));
  return [...byVip].map(([vip, svcs]) => {
    const family = svcs[0].vipAddress.family;
    const attrs = s.vips.get(vip) ?? s.defaults;
    const plan: VipPlan = {
      vip,
      prefix: `${vip}/${family === 4 ? 32 : 128}`,
      announced: false,
      services: svcs.map((x) => x.name),
      communities: attrs.communities,
      ...(attrs.med === undefined ? {} : { med: attrs.med }),
    };
    const backends = svcs.flatMap((x) => x.backends);
    if (drained) plan.reason = 'the node is drained (xdplb node undrain announces again)';
    else if (!attached.length) plan.reason = 'the XDP program is not attached to any interface';
    else if (!families.has(family)) plan.reason = `no IPv${family} peer to announce it to`;
    else if (!backends.some((b) => b.state === 'active' && b.weight > 0)) {
      const count = (pred: (b: ServiceSpec['backends'][number]) => boolean) => backends.filter(pred).length;
      plan.reason = backends.length
        ? `no serving backend: ${count((b) => b.state === 'down')} down, ${count((b) => b.state === 'draining')} draining, ${count((b) => b.state === 'active' && b.weight === 0)} with weight 0`
        : 'no backends';
    } else plan.announced = true;
    return plan;
  });
}

export interface SpeakerDeps {
  settings: BgpSettings;
  /** BIRD's directory: configuration, control socket, pid file, log, drain mark */
  dir: string;
  log: Logger;
  /** every service with its effective backend states */
  services(): ServiceSpec[];
  /** interfaces the XDP program is attached to, as the kernel says now */
  attached(): string[];
  /** packets to the VIPs so far (all services, all CPUs) */
  vipPackets(): Promise<number>;
  registry: Registry;
}

const TICK_MS = 1000;
/** Time the withdrawals of a clean shutdown get to leave before the sessions close. */
const WITHDRAW_GRACE_MS = 500;

export class Speaker implements BgpControl {
  private readonly bird: Bird;
  private readonly log: Logger;
  private settings: BgpSettings;
  private readonly drainMark: string;
  private drained: boolean;
  private drainClock = { since: 0, packets: 0, startPackets: 0, movedAt: 0 };
  private applied?: string;
  private plans: VipPlan[] = [];
  private peers: BgpPeerStatus[] = [];
  private pid = 0;
  private restarts = 0;
  private attached: string[] = [];
  private queue: Promise<unknown> = Promise.resolve();
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private readonly updates: Counter<'change'>;
  private readonly restartCounter: Counter;

  constructor(private readonly deps: SpeakerDeps) {
    this.bird = new Bird(deps.dir);
    this.log = deps.log.child({ module: 'bgp' });
    this.settings = deps.settings;
    this.drainMark = path.join(deps.dir, 'drained');
    this.drained = fs.existsSync(this.drainMark);
    const registers = [deps.registry];
    this.updates = new Counter({ name: 'xdplb_bgp_updates_total', help: 'VIP announcements and withdrawals xdplb asked of its BGP speaker', labelNames: ['change'], registers });
    this.restartCounter = new Counter({ name: 'xdplb_bgp_speaker_restarts_total', help: 'Times the BGP speaker (BIRD) was found dead and started again', registers });
    const speaker = this;
    new Gauge({
      name: 'xdplb_bgp_peer_up',
      help: 'BGP session with the peer established (1) or not (0)',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const p of speaker.peers) this.set({ peer: p.address }, p.established ? 1 : 0);
      },
    });
    new Gauge({
      name: 'xdplb_bgp_vip_announced',
      help: 'VIP announced over BGP (1) or withdrawn (0)',
      labelNames: ['vip'],
      registers,
      collect() {
        this.reset();
        for (const v of speaker.plans) this.set({ vip: v.vip }, v.announced ? 1 : 0);
      },
    });
    new Gauge({
      name: 'xdplb_bgp_drained',
      help: 'The node is drained: every VIP withdrawn (1)',
      registers,
      collect() {
        this.set(speaker.drained ? 1 : 0);
      },
    });
  }

  /** Adopts the BIRD a previous daemon left running, or starts one; then announces what is due. */
  async start(): Promise<void> {
    this.attached = this.deps.attached();
    const text = this.render();
    const pid = this.bird.pid();
    if (pid) {
      await this.bird.configure(text);
      this.pid = pid;
      this.log.info({ pid, socket: this.bird.socketPath }, 'bgp speaker adopted: the running BIRD keeps its sessions');
    } else {
      this.pid = await this.bird.start(text);
      this.log.info({ pid: this.pid, socket: this.bird.socketPath }, 'bgp speaker started');
    }
    this.warnCapabilities();
    this.applied = text;
    this.logPlanChanges([]);
    if (this.drained) this.log.warn('the node is drained (from before the restart): no VIP is announced');
    await this.refreshPeers();
    this.timer = setInterval(() => void this.tick(), TICK_MS);
    this.timer.unref();
  }

  private warnCapabilities(): void {
    const excess = this.bird.excessCapabilities();
    if (excess.length) this.log.warn({ pid: this.pid, capabilities: excess }, 'BIRD runs with capabilities it does not need, inherited from the daemon: grant the daemon CAP_SETPCAP so it drops them (systemd/xdplb.service.d/bgp.conf)');
  }

  /** The services or their health changed. */
  changed(): void {
    void this.enqueue(() => this.apply()).catch((e: Error) => this.log.error({ error: e.message }, 'bgp announcement not applied'));
  }

  async reconfigure(settings: BgpSettings): Promise<void> {
    await this.enqueue(async () => {
      this.settings = settings;
      await this.apply();
    });
  }

  async status(): Promise<BgpStatusSnapshot> {
    await this.refreshPeers();
    const now = Date.now();
    return {
      asn: this.settings.asn,
      routerId: this.settings.routerId,
      speakerRunning: this.bird.pid() !== undefined,
      speakerPid: this.pid,
      speakerRestarts: this.restarts,
      attachedInterfaces: this.attached,
      peers: this.peers,
      vips: this.plans,
      drain: {
        drained: this.drained,
        sinceSeconds: this.drained && this.drainClock.since ? (now - this.drainClock.since) / 1000 : 0,
        trafficStopped: this.drained && this.drainClock.since > 0 && now - this.drainClock.movedAt >= this.settings.drainQuiet,
        quietSeconds: this.drained && this.drainClock.since ? (now - this.drainClock.movedAt) / 1000 : 0,
        packetsSinceDrain: this.drainClock.packets - this.drainClock.startPackets,
      },
    };
  }

  async drain(): Promise<BgpStatusSnapshot> {
    await this.enqueue(async () => {
      if (!this.drained) {
        fs.writeFileSync(this.drainMark, `${new Date().toISOString()}\n`);
        this.drained = true;
        this.log.info('node drained: withdrawing every VIP, forwarding goes on');
      }
      await this.startDrainClock();
      await this.apply();
    });
    return this.status();
  }

  async undrain(): Promise<BgpStatusSnapshot> {
    await this.enqueue(async () => {
      if (this.drained) {
        fs.rmSync(this.drainMark, { force: true });
        this.drained = false;
        this.drainClock.since = 0;
        this.log.info('node undrained: announcing the VIPs again');
      }
      await this.apply();
    });
    return this.status();
  }

  /**
   * Clean shutdown: every VIP withdrawn, then BIRD told to close its sessions
   * and exit, so routers stop sending here before the daemon is gone.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.enqueue(async () => {
      if (this.bird.pid() === undefined) return;
      try {
        await this.bird.configure(birdConfig(this.settings, []));
        this.log.info({ withdrawn: this.plans.filter((p) => p.announced).map((p) => p.prefix) }, 'bgp: every VIP withdrawn for shutdown');
        await new Promise((r) => setTimeout(r, WITHDRAW_GRACE_MS));
      } catch (e) {
        // Closing the sessions withdraws the routes all the same, only less gently.
        this.log.error({ error: (e as Error).message }, 'bgp: withdrawal before shutdown failed; closing the sessions');
      }
      await this.bird.stop();
      this.log.info('bgp speaker stopped');
    });
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Plans the VIPs (this.plans) and renders BIRD's configuration for them. */
  private render(): string {
    this.plans = planVips(this.deps.services(), this.attached, this.drained, this.settings);
    const announce: Announcement[] = this.plans
      .filter((p) => p.announced)
      .map((p) => ({ prefix: p.prefix, communities: p.communities, ...(p.med === undefined ? {} : { med: p.med }) }));
    return birdConfig(this.settings, announce);
  }

  /** One log line per VIP whose announcement changed (or, after a start, per VIP). */
  private logPlanChanges(before: VipPlan[]): void {
    const was = new Map(before.map((p) => [p.vip, p]));
    for (const p of this.plans) {
      const old = was.get(p.vip);
      was.delete(p.vip);
      if (old && old.announced === p.announced && old.reason === p.reason) continue;
      if (p.announced) {
        if (old) this.updates.inc({ change: 'announce' });
        this.log.info({ vip: p.vip, prefix: p.prefix, communities: p.communities, med: p.med }, 'VIP announced');
      } else {
        if (old?.announced) this.updates.inc({ change: 'withdraw' });
        this.log.info({ vip: p.vip, prefix: p.prefix, reason: p.reason }, old?.announced ? 'VIP withdrawn' : 'VIP not announced');
      }
    }
    for (const old of was.values()) {
      if (old.announced) this.updates.inc({ change: 'withdraw' });
      this.log.info({ vip: old.vip, prefix: old.prefix, reason: 'no service has this VIP any more' }, old.announced ? 'VIP withdrawn' : 'VIP gone');
    }
  }

  private async apply(): Promise<void> {
    if (this.stopped) return;
    const before = this.plans;
    const text = this.render();
    if (text !== this.applied) {
      try {
        await this.bird.configure(text);
      } catch (e) {
        this.plans = before;
        throw e;
      }
      this.applied = text;
    }
    this.logPlanChanges(before);
  }

  private async startDrainClock(): Promise<void> {
    if (this.drainClock.since) return;
    const packets = await this.deps.vipPackets();
    const now = Date.now();
    this.drainClock = { since: now, packets, startPackets: packets, movedAt: now };
  }

  /** Once a second: BIRD alive (started again when not), attachment and announcements, drain counters, peer states. */
  private async tick(): Promise<void> {
    try {
      await this.enqueue(async () => {
        if (this.stopped) return;
        if (this.bird.pid() === undefined) {
          this.restarts++;
          this.restartCounter.inc();
          this.log.warn({ restarts: this.restarts }, 'bgp speaker (BIRD) is gone: starting it again; routers keep the routes for the graceful restart time');
          this.attached = this.deps.attached();
          const before = this.plans;
          const text = this.render();
          this.pid = await this.bird.start(text);
          this.applied = text;
          this.logPlanChanges(before);
          this.log.info({ pid: this.pid }, 'bgp speaker started');
          this.warnCapabilities();
        }
        const attached = this.deps.attached();
        if (attached.join() !== this.attached.join()) {
          this.log.info({ interfaces: attached }, 'XDP attachment changed');
          this.attached = attached;
        }
        // Also retries an announcement BIRD refused or missed before.
        await this.apply();
        if (this.drained) {
          if (!this.drainClock.since) await this.startDrainClock();
          const packets = await this.deps.vipPackets();
          if (packets !== this.drainClock.packets) {
            this.drainClock.packets = packets;
            this.drainClock.movedAt = Date.now();
          }
        }
      });
      await this.refreshPeers();
    } catch (e) {
      this.log.error({ error: (e as Error).message }, 'bgp supervision step failed');
    }
  }

  private async refreshPeers(): Promise<void> {
    let states: ProtocolState[] = [];
    try {
      states = await this.bird.protocols();
    } catch {
      // BIRD is down: every peer shows as not established until it is back
    }
    const byName = new Map(states.map((p) => [p.name, p]));
    const next = this.settings.peers.map((p): BgpPeerStatus => {
      const st = byName.get(peerProtocol(p));
      const info = st?.info ?? 'speaker not running';
      return { address: p.address, asn: p.asn, state: st?.state ?? 'down', info, since: st?.since ?? '', established: info.startsWith('Established') };
    });
    const was = new Map(this.peers.map((p) => [p.address, p]));
    for (const p of next) {
      const old = was.get(p.address);
      if (!old || old.established !== p.established || old.state !== p.state)
        this.log[p.info.startsWith('Error') ? 'warn' : 'info']({ peer: p.address, asn: p.asn, state: p.state, info: p.info }, p.established ? 'bgp peer established' : 'bgp peer not established');
    }
    this.peers = next;
  }
}

/**
 * The daemon runs without a bgp: section, but a speaker an earlier daemon
 * started still runs: it would announce the VIPs for ever, so it is stopped.
 */
export async function retireSpeaker(dir: string, log: Logger): Promise<void> {
  const bird = new Bird(dir);
  const pid = bird.pid();
  if (pid === undefined) return;
  log.warn({ pid }, 'the configuration has no bgp: section: stopping the BGP speaker an earlier daemon left running');
  await bird.stop();
}

export async function startSpeaker(deps: SpeakerDeps): Promise<Speaker> {
  const s = new Speaker(deps);
  await s.start();
  return s;
}
