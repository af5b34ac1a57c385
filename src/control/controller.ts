// The controller owns the desired state: every service, who owns it, and the
// order in which changes happen. A change is one transaction: validated, written
// to the datapath, persisted (API-owned services), then made current — or, when
// any step fails, none of it is visible and the datapath is put back.
import type { Logger } from 'pino';
import type { BackendSpec, OwnedService, Owner, ServiceSpec } from './model';
import { ServiceStore } from './store';
import { XdplbError } from './errors';
import { canonicalAddress } from './validate';

/** Where the desired state goes: the datapath programmer implements this. */
export interface DatapathSink {
  /**
   * Makes the datapath hold exactly these services, writing only what differs.
   * Throws XdplbError RESOURCE_EXHAUSTED when a map is full, leaving the
   * datapath as it was.
   */
  apply(services: readonly ServiceSpec[]): void;
}

export type ServiceValidator = (input: unknown, field: string) => ServiceSpec;

export interface BackendRef {
  address: string;
  port: number;
}

function sameTuple(a: ServiceSpec, b: ServiceSpec): boolean {
  return a.vip === b.vip && a.port === b.port && a.protocol === b.protocol;
}

export class Controller {
  private services = new Map<string, OwnedService>();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly datapath: DatapathSink,
    private readonly store: ServiceStore,
    private readonly validate: ServiceValidator,
    private readonly log: Logger,
  ) {}

  list(): OwnedService[] {
    return [...this.services.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): OwnedService {
    const s = this.services.get(name);
    if (!s) throw XdplbError.notFound('service', name);
    return s;
  }

  /** Startup: the file's services and the state directory's, in one transaction. */
  restore(fileSpecs: readonly ServiceSpec[], apiSpecs: readonly ServiceSpec[]): Promise<void> {
    return this.transaction('restore', (next) => {
      next.clear();
      fileSpecs.forEach((spec, i) => this.insert(next, { ...spec, owner: 'file' }, `services[${i}]`));
      apiSpecs.forEach((spec, i) => this.insert(next, { ...this.validate(spec, `state.services[${i}]`), owner: 'api' }, `state.services[${i}]`));
    });
  }

  /**
   * Reload: the file's services replace every file-owned service,
   * API-owned services (from the state directory) are kept. All or nothing.
   */
  replaceOwned(owner: Owner, specs: readonly ServiceSpec[]): Promise<void> {
    return this.transaction(`replace ${owner} services`, (next) => {
      for (const [name, s] of next) if (s.owner === owner) next.delete(name);
      specs.forEach((spec, i) => this.insert(next, { ...spec, owner }, `services[${i}]`));
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

  addBackend(name: string, backend: unknown): Promise<OwnedService> {
    return this.mutate(name, (next, cur) => {
      // Validated as part of the whole service, which also refuses duplicates.
      this.replaceSpec(next, { ...cur, backends: [...cur.backends, backend as BackendSpec] });
    });
  }

  removeBackend(name: string, ref: BackendRef): Promise<OwnedService> {
    return this.mutate(name, (next, cur) => {
      const i = this.findBackend(cur, ref);
      this.replaceSpec(next, { ...cur, backends: cur.backends.filter((_, j) => j !== i) });
    });
  }

  drainBackend(name: string, ref: BackendRef): Promise<OwnedService> {
    return this.mutate(name, (next, cur) => {
      const i = this.findBackend(cur, ref);
      const backends = cur.backends.map((b, j) => (j === i ? { ...b, state: 'draining' as const } : b));
      this.replaceSpec(next, { ...cur, backends });
    });
  }

  private findBackend(s: ServiceSpec, ref: BackendRef): number {
    const address = canonicalAddress(ref?.address ?? '') ?? ref?.address;
    const i = s.backends.findIndex((b) => b.address === address && b.port === ref?.port);
    if (i < 0) throw XdplbError.notFound('backend', `${ref?.address} port ${ref?.port} in service ${s.name}`);
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

  private insert(next: Map<string, OwnedService>, s: OwnedService, field: string): void {
    if (next.has(s.name)) throw XdplbError.alreadyExists('service', s.name, `${field}.name`);
    for (const other of next.values())
      if (sameTuple(other, s))
        throw XdplbError.alreadyExists(
          'service',
          `${s.vip} port ${s.port} ${s.protocol} (already served by ${other.name})`,
          `${field}.vip`,
        );
    next.set(s.name, s);
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
      try {
        this.datapath.apply(specs);
      } catch (e) {
        // Put back exactly what was there: the datapath writes only differences.
        this.datapath.apply([...this.services.values()]);
        throw e;
      }
      try {
        await this.store.save(specs.filter((s) => s.owner === 'api').map(({ owner: _owner, ...spec }) => spec));
      } catch (e) {
        this.datapath.apply([...this.services.values()]);
        throw XdplbError.unavailable(`state directory ${this.store.dir}: ${(e as Error).message}`);
      }
      this.services = next;
      this.log.info({ change: what, services: next.size }, 'state changed');
      return result;
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }
}
