// Prometheus metrics of the daemon (prom-client, one registry of its own).
//
// Datapath counters are read at scrape time, once per scrape (collect
// callbacks over one snapshot), never per packet: the per-CPU counters of
// every service, backend and reason are summed by the datapath programmer.
// Control-plane events (table rebuilds, API calls, probes, health changes)
// are counted as they happen.
//
// Names follow Prometheus conventions: xdplb_ prefix, _total for counters,
// base units (seconds, bytes). A backend is labelled "address:port" ("[v6]:port").
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { CountersSnapshot, NodeStatusSnapshot } from '../datapath/snapshot';
import type { BackendState, OwnedService } from '../control/model';
import { REASONS } from '../datapath/reasons';
import type { BackendHealthView } from '../health/checker';
import { hostPort } from '../net/address';
import type { HealthStatus } from '../health/state';

/** Where scrape-time values come from (the daemon wires the datapath and controller in). */
export interface MetricsSources {
  /** datapath counters of every service */
  counters(): CountersSnapshot | Promise<CountersSnapshot>;
  /** map fill and attachments */
  status(): NodeStatusSnapshot | Promise<NodeStatusSnapshot>;
  /** services with their effective backend states */
  services(): OwnedService[];
  /** health-checked backends */
  health?(): BackendHealthView[];
  /** services whose every checked backend is down */
  allDown?(): string[];
  /** probes in flight and waiting */
  probeLoad?(): { active: number; waiting: number };
  /** packet recorder totals since the daemon started (absent: zeros) */
  recorder?(): RecorderTotals;
}

export interface RecorderTotals {
  /** recordings running */
  active: number;
  /** packets written to recordings (files and streams) */
  packets: number;
  /** samples the kernel lost because a per-CPU ring was full */
  lost: number;
}

interface Snapshot {
  recorder: RecorderTotals;
  counters: CountersSnapshot;
  status: NodeStatusSnapshot;
  services: OwnedService[];
  health: BackendHealthView[];
  allDown: Set<string>;
}

const BACKEND_STATES: readonly BackendState[] = ['active', 'draining', 'down'];
const HEALTH_STATUSES: readonly HealthStatus[] = ['unknown', 'up', 'down'];

export class Metrics {
  readonly registry = new Registry();
  private sources?: MetricsSources;
  private snap?: Snapshot;

  private readonly rebuilds: Counter<'result'>;
  private readonly rebuildSeconds: Histogram;
  private readonly apiRequests: Counter<'method' | 'code'>;
  private readonly apiSeconds: Histogram<'method'>;
  private readonly probes: Counter<'type' | 'result'>;
  private readonly probeSeconds: Histogram<'type'>;
  private readonly transitions: Counter<'service' | 'backend' | 'to'>;

  constructor(version: string, opts: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    const snap = () => this.snap;

    new Gauge({
      name: 'xdplb_build_info',
      help: 'Build of the running daemon (always 1)',
      labelNames: ['version', 'nodejs_version'],
      registers,
    }).set({ version, nodejs_version: process.versions.node }, 1);

    // --- datapath, read at scrape time ------------------------------------
    new Counter({
      name: 'xdplb_service_packets_total',
      help: 'Packets the datapath forwarded for a service',
      labelNames: ['service'],
      registers,
      collect() {
        this.reset();
        for (const s of snap()?.counters.services ?? []) this.inc({ service: s.name }, s.traffic.packets);
      },
    });
    new Counter({
      name: 'xdplb_service_bytes_total',
      help: 'Bytes (of the packets as received) the datapath forwarded for a service',
      labelNames: ['service'],
      registers,
      collect() {
        this.reset();
        for (const s of snap()?.counters.services ?? []) this.inc({ service: s.name }, s.traffic.bytes);
      },
    });
    new Counter({
      name: 'xdplb_backend_packets_total',
      help: 'Packets the datapath sent to a backend',
      labelNames: ['service', 'backend'],
      registers,
      collect() {
        this.reset();
        for (const s of snap()?.counters.services ?? [])
          for (const b of s.backends) this.inc({ service: s.name, backend: hostPort(b.address, b.port) }, b.traffic.packets);
      },
    });
    new Counter({
      name: 'xdplb_backend_bytes_total',
      help: 'Bytes (of the packets as received) the datapath sent to a backend',
      labelNames: ['service', 'backend'],
      registers,
      collect() {
        this.reset();
        for (const s of snap()?.counters.services ?? [])
          for (const b of s.backends) this.inc({ service: s.name, backend: hostPort(b.address, b.port) }, b.traffic.bytes);
      },
    });
    new Counter({
      name: 'xdplb_packets_total',
      help: 'Packets by datapath verdict and reason (every reason, also at zero)',
      labelNames: ['verdict', 'reason'],
      registers,
      collect() {
        this.reset();
        const reasons = snap()?.counters.reasons;
        if (!reasons) return;
        for (const r of REASONS) this.inc({ verdict: r.verdict, reason: r.name }, reasons[r.name] ?? 0);
      },
    });
    new Counter({
      name: 'xdplb_nexthop_lookups_total',
      help: 'Successful FIB lookups stored in the per-backend, per-CPU next-hop cache (about one per backend, CPU and second while traffic flows; failures are pass_fib_* reasons)',
      registers,
      collect() {
        this.reset();
        this.inc(snap()?.counters.nexthopLookups ?? 0);
      },
    });
    new Counter({
      name: 'xdplb_flow_cache_fills_total',
      help: 'Flow-cache entries written: packets that missed the per-CPU flow cache and were answered by the connection table or placed anew (against forwarded packets: the miss rate)',
      registers,
      collect() {
        this.reset();
        this.inc(snap()?.counters.flowCacheFills ?? 0);
      },
    });
    new Gauge({
      name: 'xdplb_map_entries',
      help: 'Entries in a datapath map (xdplb_conntrack: the connection table fill, IPv4 flows of xdplb_conntrack4 included)',
      labelNames: ['map'],
      registers,
      collect() {
        this.reset();
        for (const m of snap()?.status.maps ?? []) this.set({ map: m.name }, m.entries);
      },
    });
    new Gauge({
      name: 'xdplb_map_capacity',
      help: 'Maximum entries of a datapath map',
      labelNames: ['map'],
      registers,
      collect() {
        this.reset();
        for (const m of snap()?.status.maps ?? []) this.set({ map: m.name }, m.capacity);
      },
    });
    new Gauge({
      name: 'xdplb_nexthops',
      help: "Backends' next hops (gateway, or the backend when on-link) by neighbour state: resolved (the kernel holds a link-layer address) or unresolved (packets to them are dropped as drop_fib_no_neigh until it resolves them)",
      labelNames: ['state'],
      registers,
      collect() {
        const s = snap();
        if (!s) return;
        this.set({ state: 'resolved' }, s.status.nextHopsResolved ?? 0);
        this.set({ state: 'unresolved' }, s.status.nextHopsUnresolved ?? 0);
      },
    });
    new Gauge({
      name: 'xdplb_attached_interfaces',
      help: 'Interfaces the XDP program is attached to',
      registers,
      collect() {
        const s = snap();
        if (s) this.set(s.status.attachments.filter((a) => a.programId > 0).length);
      },
    });
    new Gauge({
      name: 'xdplb_maglev_table_size',
      help: 'Entries of every Maglev table (M, a prime)',
      registers,
      collect() {
        const s = snap();
        if (s) this.set(s.status.maglevSize);
      },
    });

    // --- desired and effective state --------------------------------------
    new Gauge({
      name: 'xdplb_backend_state',
      help: 'Effective state of a backend (1 for its state, 0 for the others); health checks can hold a backend down',
      labelNames: ['service', 'backend', 'state'],
      registers,
      collect() {
        this.reset();
        for (const s of snap()?.services ?? [])
          for (const b of s.backends)
            for (const state of BACKEND_STATES) this.set({ service: s.name, backend: hostPort(b.address, b.port), state }, b.state === state ? 1 : 0);
      },
    });
    new Gauge({
      name: 'xdplb_backend_weight',
      help: 'Maglev weight of a backend',
      labelNames: ['service', 'backend'],
      registers,
      collect() {
        this.reset();
        for (const s of snap()?.services ?? []) for (const b of s.backends) this.set({ service: s.name, backend: hostPort(b.address, b.port) }, b.weight);
      },
    });

    // --- health checks ------------------------------------------------------
    new Gauge({
      name: 'xdplb_backend_health',
      help: 'Health-check status of a backend (1 for its status, 0 for the others): unknown until probed enough, up, down',
      labelNames: ['service', 'backend', 'status'],
      registers,
      collect() {
        this.reset();
        for (const h of snap()?.health ?? [])
          for (const status of HEALTH_STATUSES) this.set({ service: h.service, backend: h.backend, status }, h.status === status ? 1 : 0);
      },
    });
    new Gauge({
      name: 'xdplb_service_all_backends_down',
      help: 'The health checks of every backend of the service fail (1); the service keeps its last Maglev table',
      labelNames: ['service'],
      registers,
      collect() {
        this.reset();
        const s = snap();
        if (!s) return;
        for (const svc of new Set(s.health.map((h) => h.service))) this.set({ service: svc }, s.allDown.has(svc) ? 1 : 0);
      },
    });
    this.transitions = new Counter({
      name: 'xdplb_health_transitions_total',
      help: 'Health status changes of a backend, by the status it changed to',
      labelNames: ['service', 'backend', 'to'],
      registers,
    });
    this.probes = new Counter({
      name: 'xdplb_health_probes_total',
      help: 'Health probes sent, by check type and result',
      labelNames: ['type', 'result'],
      registers,
    });
    this.probeSeconds = new Histogram({
      name: 'xdplb_health_probe_duration_seconds',
      help: 'Time a health probe took (failures by timeout included)',
      labelNames: ['type'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    const sourcesRef = () => this.sources;
    new Gauge({
      name: 'xdplb_health_probes_in_flight',
      help: 'Health probes in flight',
      registers,
      collect() {
        const l = sourcesRef()?.probeLoad?.();
        this.set(l?.active ?? 0);
      },
    });
    new Gauge({
      name: 'xdplb_health_probes_waiting',
      help: 'Health probes waiting for a slot (concurrency bound reached)',
      registers,
      collect() {
        const l = sourcesRef()?.probeLoad?.();
        this.set(l?.waiting ?? 0);
      },
    });

    // --- packet recorder ----------------------------------------------------
    new Gauge({
      name: 'xdplb_recorder_active',
      help: 'Recordings running',
      registers,
      collect() {
        this.set(snap()?.recorder.active ?? 0);
      },
    });
    new Counter({
      name: 'xdplb_recorder_packets_total',
      help: 'Packets the recorder wrote to recordings',
      registers,
      collect() {
        this.reset();
        this.inc(snap()?.recorder.packets ?? 0);
      },
    });
    new Counter({
      name: 'xdplb_recorder_lost_total',
      help: 'Samples lost because a per-CPU ring was full',
      registers,
      collect() {
        this.reset();
        this.inc(snap()?.recorder.lost ?? 0);
      },
    });

    // --- control plane ------------------------------------------------------
    this.rebuilds = new Counter({
      name: 'xdplb_maglev_rebuilds_total',
      help: 'Datapath updates (Maglev tables rebuilt and diffed, backends and services written), by result',
      labelNames: ['result'],
      registers,
    });
    this.rebuilds.inc({ result: 'ok' }, 0);
    this.rebuilds.inc({ result: 'failed' }, 0);
    this.rebuildSeconds = new Histogram({
      name: 'xdplb_maglev_rebuild_duration_seconds',
      help: 'Time one datapath update took (Maglev tables and map writes)',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.apiRequests = new Counter({
      name: 'xdplb_api_requests_total',
      help: 'gRPC API unary calls, by method and status code',
      labelNames: ['method', 'code'],
      registers,
    });
    this.apiSeconds = new Histogram({
      name: 'xdplb_api_request_duration_seconds',
      help: 'Time a successful gRPC API unary call took',
      labelNames: ['method'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });

    if (opts.processMetrics ?? true) {
      collectDefaultMetrics({ register: this.registry });
      // Gauges named _total break the conventions (promtool check metrics says so).
      for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'])
        this.registry.removeSingleMetric(name);
    }
  }

  bind(sources: MetricsSources): void {
    this.sources = sources;
  }

  observeRebuild(seconds: number, ok: boolean): void {
    this.rebuilds.inc({ result: ok ? 'ok' : 'failed' });
    if (ok) this.rebuildSeconds.observe(seconds);
  }

  /** seconds: absent for refused calls (the log line carries no duration) */
  observeApi(method: string, code: string, seconds?: number): void {
    this.apiRequests.inc({ method, code });
    if (seconds !== undefined) this.apiSeconds.observe({ method }, seconds);
  }

  observeProbe(type: string, ok: boolean, seconds: number): void {
    this.probes.inc({ type, result: ok ? 'success' : 'failure' });
    this.probeSeconds.observe({ type }, seconds);
  }

  observeTransition(service: string, backend: string, to: HealthStatus): void {
    this.transitions.inc({ service, backend, to });
  }

  private scraping: Promise<unknown> = Promise.resolve();

  /** The exposition text: one snapshot of the sources, then every metric (one scrape at a time). */
  text(): Promise<string> {
    const run = async () => {
      const src = this.sources;
      this.snap = src && {
        counters: await src.counters(),
        status: await src.status(),
        services: src.services(),
        health: src.health?.() ?? [],
        allDown: new Set(src.allDown?.() ?? []),
        recorder: src.recorder?.() ?? { active: 0, packets: 0, lost: 0 },
      };
      try {
        return await this.registry.metrics();
      } finally {
        this.snap = undefined;
      }
    };
    const p = this.scraping.then(run, run);
    this.scraping = p.catch(() => undefined);
    return p;
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
