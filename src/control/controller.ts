// The controller owns the desired state: every service, who owns it, and the
// order in which changes happen. A change is one transaction: validated, written
// to the datapath, persisted (API-owned services), then made current — or, when
// any step fails, none of it is visible and the datapath is put back.
import type { Logger } from 'pino';
import { backendKey, serviceKey, type BackendKey, type BackendSpec, type OwnedService, type Owner, type ServiceKey, type ServiceSpec, type StoredService } from './model';
import { ServiceStore } from './store';
import { XdplbError } from './errors';
import { validateBackend, validateBackendRef } from './validate';

/** A change the datapath holds, until it is made final or put back exactly. */
export interface DatapathChange {
  commit(): void;
  rollback(): void;
}

/** Where the desired state goes: the datapath programmer implements this. */
export interface DatapathSink {
  /**
   * Makes the datapath hold exactly these services, writing only what differs.
   * Rejects (XdplbError RESOURCE_EXHAUSTED when a map is full) leaving the
   * datapath exactly as it was; no other change starts until the one it
   * resolves with is committed or rolled back.
   */
  apply(services: readonly ServiceSpec[]): Promise<DatapathChange>;
}

export type ServiceValidator = (input: unknown, field: string) => ServiceSpec;

export interface BackendRef {
  address: string;
  port: number;
}

/** Services by tuple, for inserting many: a scan per insert is quadratic (7 s for 10,000 services). */
function byTuple(services: Map<string, OwnedService>): Map<ServiceKey, OwnedService> {
  return new Map([...services.values()].map((s) => [serviceKey(s), s]));
}

export class Controller {
  private services = new Map<string, OwnedService>();
  private readonly storedSpecs = new WeakMap<OwnedService, StoredService>();
  /** list()'s order, kept until the services change */
  private sorted?: OwnedService[];
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly datapath: DatapathSink,
    private readonly store: ServiceStore,
    private readonly validate: ServiceValidator,
    private readonly log: Logger,
  ) {}

  /** Every service as it is in force: a backend held down by its health check shows 'down'. */
  list(): OwnedService[] {
    return this.declared().map((s) => this.withHealth(s));
  }

  get(name: string): OwnedService {
    const s = this.services.get(name);
    if (!s) throw XdplbError.notFound('service', name);
    return this.withHealth(s);
  }

  /** Startup: the file's services and the state directory's, in one transaction. */
  restore(fileSpecs: readonly ServiceSpec[], apiSpecs: readonly StoredService[]): Promise<void> {
    return this.transaction('restore', (next) => {
      next.clear();
      const tuples = byTuple(next);
      fileSpecs.forEach((spec, i) => this.insert(next, { ...spec, owner: 'file' }, `services[${i}]`, tuples));
      apiSpecs.forEach((spec, i) => this.insert(next, { ...this.validate(spec, `state.services[${i}]`), owner: 'api' }, `state.services[${i}]`, tuples));
    });
  }

  /**
   * Reload: the file's services replace every file-owned service,
   * API-owned services (from the state directory) are kept. All or nothing.
   */
  replaceOwned(owner: Owner, specs: readonly ServiceSpec[]): Promise<void> {
    return this.transaction(`replace ${owner} services`, (next) => {
      for (const [name, s] of next) if (s.owner === owner) next.delete(name);
      const tuples = byTuple(next);
      specs.forEach((spec, i) => this.insert(next, { ...spec, owner }, `services[${i}]`, tuples));
    });
  }

  create(input: unknown): Promise<OwnedService> {
    const spec = this.validate(input, 'service');
    return this.transaction(`create service ${spec.name}`, (next) => {
      if (next.has(spec.name)) throw XdplbError.alreadyExists('service', spec.name);
      this.insert(next, { ...spec, owner: 'api' }, 'service');
      return next.get(spec.name) as OwnedService;
    });
  }

  update(input: unknown): Promise<OwnedService> {
    const spec = this.validate(input, 'service');
    return this.mutate(spec.name, (next) => {
      next.delete(spec.name);
      this.insert(next, { ...spec, owner: 'api' }, 'service');
    });
  }

  delete(name: string): Promise<void> {
    return this.transaction(`delete service ${name}`, (next) => {
      this.writable(next, name);
      next.delete(name);
    });
  }

  setBackends(name: string, backends: unknown): Promise<OwnedService> {
    return this.mutate(name, (next, cur) => this.replaceSpec(next, { ...cur, backends: backends as BackendSpec[] }));
  }

  addBackend(name: string, input: unknown): Promise<OwnedService> {
    return this.mutate(name, (next, cur) => {
      // Checked alone first, so errors name the request's field ("backend.address"), not the service's list.
      const backend = validateBackend(input, cur.vipAddress.family, cur.port, 'backend');
      if (cur.backends.some((b) => b.address === backend.address && b.port === backend.port))
        throw XdplbError.duplicate('backend', `backend ${backend.address} port ${backend.port} is already in service ${cur.name}`);
      try {
        this.replaceSpec(next, { ...cur, backends: [...cur.backends, backend] });
      } catch (e) {
        throw e instanceof XdplbError ? e.renamed('service.backends', 'backend') : e;
      }
    });
  }

  removeBackend(name: string, input: unknown): Promise<OwnedService> {
    const ref = validateBackendRef(input, 'backend');
    return this.mutate(name, (next, cur) => {
      const i = this.findBackend(cur, ref);
      this.replaceSpec(next, { ...cur, backends: cur.backends.filter((_, j) => j !== i) });
    });
  }

  drainBackend(name: string, input: unknown): Promise<OwnedService> {
    const ref = validateBackendRef(input, 'backend');
    return this.mutate(name, (next, cur) => {
      const i = this.findBackend(cur, ref);
      const backends = cur.backends.map((b, j) => (j === i ? { ...b, state: 'draining' as const } : b));
      this.replaceSpec(next, { ...cur, backends });
    });
  }

  /** `ref` as validateBackendRef returns it: the address in canonical text. */
  private findBackend(s: ServiceSpec, ref: BackendRef): number {
    const i = s.backends.findIndex((b) => b.address === ref.address && b.port === ref.port);
    if (i < 0) throw XdplbError.notFound('backend', `${ref.address} port ${ref.port} in service ${s.name}`);
    return i;
  }

  private writable(next: Map<string, OwnedService>, name: string): OwnedService {
    const cur = next.get(name);
    if (!cur) throw XdplbError.notFound('service', name);
    if (cur.owner === 'file')
      throw XdplbError.failedPrecondition(`service ${name} is declared in the configuration file; change it there`);
    return cur;
  }

  private replaceSpec(next: Map<string, OwnedService>, input: ServiceSpec): void {
    const spec = this.validate(input, 'service');
    next.delete(spec.name);
    this.insert(next, { ...spec, owner: 'api' }, 'service');
  }

  /** `tuples`: byTuple(next), kept up to date here, when many are inserted. */
  private insert(next: Map<string, OwnedService>, s: OwnedService, field: string, tuples?: Map<ServiceKey, OwnedService>): void {
    if (next.has(s.name)) throw XdplbError.alreadyExists('service', s.name, `${field}.name`);
    const tuple = serviceKey(s);
    const other = tuples ? tuples.get(tuple) : [...next.values()].find((o) => serviceKey(o) === tuple);
    if (other)
      throw XdplbError.alreadyExists(
        'service',
        `${s.vip} port ${s.port} ${s.protocol} (already served by ${other.name})`,
        `${field}.vip`,
      );
    next.set(s.name, s);
    tuples?.set(tuple, s);
  }

  private mutate(name: string, fn: (next: Map<string, OwnedService>, cur: OwnedService) => void): Promise<OwnedService> {
    return this.transaction(`change service ${name}`, (next) => {
      fn(next, this.writable(next, name));
      return next.get(name) as OwnedService;
    });
  }

  /**
   * Runs one change at a time, in arrival order, on a copy of the state; the copy
   * becomes current only after the datapath holds it and the API-owned part is
   * on disk.
   */
  private transaction<T>(what: string, fn: (next: Map<string, OwnedService>) => T): Promise<T> {
    const run = async (): Promise<T> => {
      const next = new Map(this.services);
      const result = fn(next);
      const specs = [...next.values()];
      const planned = this.forDatapath(specs);
      const change = await this.datapath.apply(planned.specs);
      try {
        await this.store.save(specs.filter((s) => s.owner === 'api').map((s) => this.stored(s)));
      } catch (e) {
        change.rollback();
        throw XdplbError.unavailable(`state directory ${this.store.dir}: ${(e as Error).message}`);
      }
      change.commit();
      this.services = next;
      this.sorted = undefined;
      this.lastServing = planned.lastServing;
      this.pruneHealth();
      this.log.info({ change: what, services: next.size }, 'state changed');
      return result;
    };
    return this.enqueue(run);
  }

  /** The spec as the state directory keeps it, one object per service object: the store writes only those that changed. */
  private stored(s: OwnedService): StoredService {
    let spec = this.storedSpecs.get(s);
    if (!spec) {
      const { owner: _owner, vipAddress: _vipAddress, ...rest } = s;
      spec = { ...rest, backends: rest.backends.map(({ ip: _ip, ...b }) => b) };
      this.storedSpecs.set(s, spec);
    }
    return spec;
  }

  private enqueue<T>(run: () => Promise<T>): Promise<T> {
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  // ---------------------------------------------------------------------------
  // Health overrides (src/health)
  //
  // A backend whose health check fails is held 'down' here, beside the spec,
  // never in it: the spec (file or API) keeps its own state and is what the state
  // directory stores; list()/get() and the datapath see the effective state.
  // File-owned services are read-only through the API, yet health applies to
  // them too. Overrides live in memory only: a restarted daemon probes afresh.
  //
  // A service whose every active backend is held down keeps its last Maglev
  // table: the datapath goes on forwarding to the backends it last forwarded to
  // (failing open, as a blackhole helps nobody), while list() reports all of them
  // down. A held-down backend that is also draining in its spec shows 'down'.

  /** service name -> its backends held down by health checks */
  private healthDown = new Map<string, Set<BackendKey>>();
  /** service name -> backends its last applied table forwarded to */
  private lastServing = new Map<string, Set<BackendKey>>();

  /** Every service as declared (file or API), without health overrides. */
  declared(): OwnedService[] {
    this.sorted ??= [...this.services.values()].sort((a, b) => a.name.localeCompare(b.name));
    return [...this.sorted];
  }

  /** Whether a backend is held down by its health check. */
  healthHeld(name: string, ref: BackendRef): boolean {
    return this.healthDown.get(name)?.has(backendKey(ref.address, ref.port)) ?? false;
  }

  /**
   * Holds a backend down (or releases it) and writes the datapath; one change at
   * a time with every other transaction. NOT_FOUND when the service or backend
   * is gone (the health checker drops it then).
   */
  setHealthDown(name: string, ref: BackendRef, down: boolean): Promise<void> {
    return this.enqueue(async () => {
      const s = this.services.get(name);
      if (!s) throw XdplbError.notFound('service', name);
      this.findBackend(s, ref);
      const key = backendKey(ref.address, ref.port);
      if (this.healthHeld(name, ref) === down) return;
      const before = this.healthDown;
      const held = new Set(before.get(name));
      if (down) held.add(key);
      else held.delete(key);
      this.healthDown = new Map(before);
      if (held.size) this.healthDown.set(name, held);
      else this.healthDown.delete(name);
      try {
        const planned = this.forDatapath([...this.services.values()]);
        (await this.datapath.apply(planned.specs)).commit();
        this.lastServing = planned.lastServing;
      } catch (e) {
        this.healthDown = before;
        throw e;
      }
      this.log.info({ change: `health ${down ? 'down' : 'up'}`, service: name, backend: `${ref.address} port ${ref.port}` }, 'state changed');
    });
  }

  private withHealth<S extends ServiceSpec>(s: S): S {
    const held = this.healthDown.get(s.name);
    if (!held?.size) return s;
    return { ...s, backends: s.backends.map((b) => (held.has(backendKey(b.address, b.port)) && b.state !== 'down' ? { ...b, state: 'down' as const } : b)) };
  }

  /**
   * What the datapath gets: the effective states, except that a service with
   * every active backend held down keeps its last table; and what each table
   * will serve, to become lastServing once the change is made (a service
   * without health overrides has no entry: its table serves what it declares).
   */
  private forDatapath(specs: readonly OwnedService[]): { specs: OwnedService[]; lastServing: Map<string, Set<BackendKey>> } {
    const lastServing = new Map<string, Set<BackendKey>>();
    const serving = (x: ServiceSpec) => new Set(x.backends.filter((b) => b.state === 'active' && b.weight > 0).map((b) => backendKey(b.address, b.port)));
    const out = specs.map((spec) => {
      const s = this.withHealth(spec);
      if (s === spec) return s;
      const now = serving(s);
      const declared = serving(spec);
      if (now.size || !declared.size) {
        lastServing.set(s.name, now);
        return s;
      }
      const last = [...(this.lastServing.get(s.name) ?? declared)].filter((k) => declared.has(k));
      const keep = last.length ? new Set(last) : declared;
      lastServing.set(s.name, keep);
      return { ...s, backends: s.backends.map((b, i) => (keep.has(backendKey(b.address, b.port)) ? spec.backends[i] : b)) };
    });
    return { specs: out, lastServing };
  }

  /** Overrides of services and backends that no longer exist. */
  private pruneHealth(): void {
    for (const name of [...this.lastServing.keys()]) if (!this.services.has(name)) this.lastServing.delete(name);
    for (const [name, held] of this.healthDown) {
      const s = this.services.get(name);
      const present = new Set(s?.backends.map((b) => backendKey(b.address, b.port)));
      const kept = new Set([...held].filter((k) => present.has(k)));
      if (kept.size === held.size) continue;
      if (kept.size) this.healthDown.set(name, kept);
      else this.healthDown.delete(name);
    }
  }
}
