// The load balancer's datapath as the daemon sees it: lb.bpf.o loaded with its
// maps pinned (or adopted from a previous run), attached to the configured
// interfaces, and programmed from the desired state by writing only what differs.
//
// Identity that must survive a restart lives in bpffs next to the program's own
// maps: service ids are the values of xdplb_services and xdplb_services4
// (xdplb_svc_by_id is derived from them), backend ownership is the
// daemon's own pinned map xdplb_be_owner, and every Maglev table is pinned as
// maglev/<service id> so a restarted daemon can diff against it.
//
// A freed backend id rests before it is handed out again: connection-table
// entries may name it for as long as they live (node conntrack lifetimes). The
// datapath already ignores an entry whose backend now belongs to another
// service (xdplb_backend.service_id); the rest keeps even the same service's
// old flows off a new backend. The end of the rest is kept in xdplb_be_owner,
// so a restart does not forget it.
//
// apply() is one transaction: every map write, pin and piece of bookkeeping it
// changes is logged with how to put it back, and the log is replayed newest
// first when any step fails (or when the caller rolls the change back because
// the state directory could not be written). Capacity is counted before the
// first write, so a change that cannot fit is refused without touching
// anything.
//
// Beside it: attach.ts (where the program is attached, and taking over from a
// previous daemon's), txn.ts (the undo log and gathered writes), ids.ts (the id
// pools) and report.ts (counters and status read from the maps).
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import * as bpf from './bpf';
import * as L from './layout';
import { Gathered, put, remove, UndoLog } from './txn';
import { IdPool, monotonicS } from './ids';
import { Attachments, PROG_PIN } from './attach';
import { readCounters, readStatus, reasonPackets, type DatapathMaps } from './report';
import { vipFilterBit } from './flowhash';
import { TableStream, diffTables, maglevKey, NO_BACKEND, type MaglevBackend } from '../maglev';
import type { DatapathChange, DatapathSink } from '../control/controller';
import { XdplbError } from '../control/errors';
import { backendKey, serviceKey, type BackendKey, type BackendSpec, type NodeSettings, type Protocol, type ServiceKey, type ServiceSpec } from '../control/model';
import { Address } from '../net/address';
import type { CountersSnapshot, NodeStatusSnapshot } from './snapshot';

const OWNER_MAP = 'xdplb_be_owner';
/**
 * xdplb_be_owner values: FREE for a free backend slot, RESTING | s for an id
 * freed that may be handed out from monotonic second s on, otherwise the
 * owning service's id + 1.
 */
const FREE = 0;
const RESTING = 0x80000000;


const PROTO: Record<Protocol, number> = { tcp: L.IPPROTO_TCP, udp: L.IPPROTO_UDP };
const PROTOCOL = Object.fromEntries(Object.entries(PROTO).map(([name, n]) => [n, name])) as Record<number, Protocol>;
const STATE: Record<BackendSpec['state'], number> = {
  active: L.BACKEND_ACTIVE,
  draining: L.BACKEND_DRAINING,
  down: L.BACKEND_DOWN,
};

function serviceFlags(s: ServiceSpec): number {
  return (s.flags.l4Dnat ? L.SVC_F_L4_DNAT : 0) | (s.flags.sourceHash ? L.SVC_F_SRC_HASH : 0) | (s.flags.conntrackBypass ? L.SVC_F_CT_BYPASS : 0);
}

/** Whether two specs of one tuple program the datapath alike (the name and health check do not reach it). */
function sameDatapathSpec(a: ServiceSpec, b: ServiceSpec): boolean {
  if (a === b) return true;
  const f = a.flags;
  const g = b.flags;
  if (f.l4Dnat !== g.l4Dnat || f.sourceHash !== g.sourceHash || f.conntrackBypass !== g.conntrackBypass || f.icmpEcho !== g.icmpEcho) return false;
  if (a.backends.length !== b.backends.length) return false;
  return a.backends.every((x, i) => {
    const y = b.backends[i];
    return x.address === y.address && x.port === y.port && x.weight === y.weight && x.state === y.state;
  });
}

/** The xdplb_svc_by_id entry of an installed service. */
function serviceDef(s: InstalledService): Buffer {
  return L.encodeServiceDef({ ...L.decodeServiceMapKey(s.mapKey), id: s.id, flags: s.flags });
}

interface InstalledService {
  id: number;
  key: ServiceKey;
  /** its key in xdplb_services or xdplb_services4 */
  mapKey: Buffer;
  vip: Address;
  flags: number;
  /** the spec its maps hold; absent for a service adopted from the pins until the first apply */
  spec?: ServiceSpec;
  backends: Map<BackendKey, number>;
  /** backend id -> encoded xdplb_backend as installed */
  backendValues: Map<number, string>;
  /**
   * absent until the first table is installed; the table itself is kept only
   * there (a change is diffed against what the kernel holds): a copy of every
   * table would cost 4·M bytes a service, 655 MB for 10,000 at M=16381
   */
  inner?: bpf.BpfMap;
}

function nodeConfig(node: NodeSettings): L.NodeConfig {
  return {
    src4: node.outerSource.ipv4?.address ?? '',
    src4PrefixLen: node.outerSource.ipv4?.prefixLength ?? 0,
    src6: node.outerSource.ipv6?.address ?? '',
    src6PrefixLen: node.outerSource.ipv6?.prefixLength ?? 0,
    ttl: node.ttl,
    flags: node.flowCache ? 0 : L.CFG_F_NO_FLOW_CACHE,
    mtu: node.mtu,
    nexthopTtlMs: 0,
    ctTcpS: node.conntrack.tcpTimeout,
    ctUdpS: node.conntrack.udpTimeout,
    ctClosingS: node.conntrack.closingTimeout,
  };
}

/** Keys 0..m-1 as an array map takes them (u32, host order), built once per M. */
let indexKeys: Buffer | undefined;
function keysUpTo(m: number): Buffer {
  if (indexKeys?.length !== 4 * m) indexKeys = Buffer.from(Uint32Array.from({ length: m }, (_, i) => i).buffer);
  return indexKeys;
}

/** Fills of new tables in flight at most: each holds a copy of its table. */
const FILLS_AHEAD = 8;

/**
 * New tables as inner maps for swapTables(), each filled on the thread pool
 * (about 1.5 ms of kernel work at M=16381) while the next one is prepared.
 */
class Staged {
  private readonly swaps: Array<[InstalledService, bpf.BpfMap]> = [];
  private readonly fills: Array<Promise<number>> = [];

  constructor(private readonly tx: UndoLog) {}

  /** `table` is copied: the caller may reuse it. */
  async add(s: InstalledService, table: Uint32Array): Promise<void> {
    const inner = bpf.createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: table.length, flags: L.MAGLEV_INNER_FLAGS, name: `xdplb_mg${s.id}` });
    this.tx.note(() => inner.close());
    this.swaps.push([s, inner]);
    if (this.fills.length >= FILLS_AHEAD) await this.fills.shift();
    const fill = inner.batchUpdatePackedAsync(keysUpTo(table.length), Buffer.from(table.buffer, table.byteOffset, table.byteLength), table.length);
    // awaited in turn: a failure is reported there, not as an unhandled rejection meanwhile
    fill.catch(() => undefined);
    this.fills.push(fill);
  }

  /** Every table filled: ready to be swapped in. */
  async filled(): Promise<Array<[InstalledService, bpf.BpfMap]>> {
    await Promise.all(this.fills);
    return this.swaps;
  }
}

/** A service whose maps must change, as planned before the first write. */
interface Planned {
  key: ServiceKey;
  spec: ServiceSpec;
  /** absent: a new service */
  s?: InstalledService;
  /** the table's members: the table built from `set` holds indices into this */
  members: BackendKey[];
  set: MaglevBackend[];
  /** how many of the ids this service frees its new backends take at once (at capacity) */
  reuse: number;
}

interface Plan {
  changed: Planned[];
  /** equal to what is installed, as another object: only the bookkeeping follows */
  same: Array<[InstalledService, ServiceSpec]>;
  removed: InstalledService[];
}

/** What a table's members are: the backends that take new flows, by key. */
function tableMembers(spec: ServiceSpec): { members: BackendKey[]; set: MaglevBackend[] } {
  // In key order, so that every service with the same backends (in any order) asks for the same table of indices.
  const live = spec.backends
    .filter((b) => b.state === 'active' && b.weight > 0)
    .map((b) => ({ b, key: maglevKey(b.address, b.port) }))
    .sort((x, y) => (x.key < y.key ? -1 : x.key > y.key ? 1 : 0));
  return {
    members: live.map(({ b }) => backendKey(b.address, b.port)),
    set: live.map(({ b, key }, i) => ({ id: i, key, weight: b.weight })),
  };
}

/** A table of member indices (shared: left as it is) turned into one of backend ids in `out`. */
function toIds(table: Uint32Array, members: BackendKey[], s: InstalledService, out: Uint32Array): Uint32Array {
  const ids = members.map((k) => s.backends.get(k) as number);
  for (let j = 0; j < table.length; j++) out[j] = table[j] === NO_BACKEND ? NO_BACKEND : ids[table[j]];
  return out;
}

/** The table a service's inner map holds, read back from the kernel. */
function readTable(inner: bpf.BpfMap): Uint32Array {
  const { values, count } = inner.dump();
  // an array map dumps every index in order; a Buffer from a pool may sit at an unaligned offset
  const bytes = values.byteOffset % 4 ? Buffer.from(values) : values;
  return new Uint32Array(bytes.buffer, bytes.byteOffset, count);
}

export class LbDatapath implements DatapathSink {
  private readonly maps: DatapathMaps;
  private readonly owner: bpf.BpfMap;
  private readonly installed = new Map<ServiceKey, InstalledService>();
  private readonly serviceIds: IdPool;
  private readonly backendIds: IdPool;
  /** xdplb_vip_filter as written */
  private readonly vipFilter = new BigUint64Array(L.VIP_FILTER_WORDS);
  /** installed services per VIP filter bit: a bit is set while its count is not 0 */
  private readonly vipCount = new Uint32Array(L.VIP_FILTER_WORDS * 64);
  /** VIP entries (ICMP echo) as installed: key hex -> flags */
  private readonly vipEntries = new Map<string, number>();
  /** xdplb_revnat as written, by VIP: key hex -> service port; undefined until read from the pinned map */
  private revNat?: Map<string, Map<string, number>>;
  /** until the first apply: VIP entries and reverse NAT are swept whole (a previous daemon may have left any) */
  private sweep = true;
  private readonly attachments: Attachments;
  /** apply() and reconfigure(), one at a time: a change holds it until committed or rolled back */
  private tail: Promise<void> = Promise.resolve();

  private constructor(
    private node: NodeSettings,
    private readonly obj: bpf.BpfObject,
    readonly program: bpf.BpfProgram,
    private readonly log: Logger,
  ) {
    const m = {} as DatapathMaps;
    for (const [k, name] of Object.entries(L.MAP_NAMES)) m[k as keyof typeof L.MAP_NAMES] = obj.map(name);
    this.maps = m;
    this.serviceIds = new IdPool(m.servicesById.maxEntries);
    this.backendIds = new IdPool(m.backends.maxEntries);
    this.owner = LbDatapath.ownerMap(node.bpffs, m.backends.maxEntries);
    fs.mkdirSync(path.join(node.bpffs, 'maglev'), { recursive: true });
    this.attachments = new Attachments({ program, devmap: m.devmap, bpffs: node.bpffs, stateDir: node.stateDir, log });
  }

  /**
   * Loads lb.bpf.o, reusing the maps pinned under node.bpffs, adopts the state a
   * previous daemon left there, attaches (atomically replacing our previous
   * program) and writes the node settings. `backends` shrinks the maps
   * indexed by backend id (tests fill them).
   */
  static open(node: NodeSettings, log: Logger, opts: { objectFile?: string; backends?: number } = {}): LbDatapath {
    fs.mkdirSync(node.bpffs, { recursive: true, mode: 0o700 });
    const maxEntries = opts.backends ? { [L.MAP_NAMES.backends]: opts.backends, [L.MAP_NAMES.backendStats]: opts.backends } : undefined;
    const obj = bpf.openObject(opts.objectFile ?? bpf.objectPath('lb'), { pinRoot: node.bpffs, maxEntries, layout: L.STRUCTS });
    const dp = new LbDatapath(node, obj, obj.program(L.PROGRAM_NAME), log);
    dp.adopt();
    dp.writeConfig();
    dp.attachments.attachAll(node.interfaces);
    return dp;
  }

  private static ownerMap(dir: string, size: number): bpf.BpfMap {
    const pin = path.join(dir, OWNER_MAP);
    if (fs.existsSync(pin)) return bpf.mapFromPin(pin);
    const m = bpf.createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: size, name: OWNER_MAP });
    m.pin(pin);
    return m;
  }

  private innerPin(id: number): string {
    return path.join(this.node.bpffs, 'maglev', String(id));
  }

  /** Rebuilds the bookkeeping from what the maps hold after a restart. */
  private adopt(): void {
    const byService = new Map<number, InstalledService>();
    const keys = [...this.maps.services4.keys(), ...this.maps.services.keys()];
    for (const key of keys) {
      const value = this.maps[L.serviceMapOf(key)].lookup(key);
      if (!value) continue;
      const k = L.decodeServiceMapKey(key);
      const v = L.decodeService(value);
      if (k.proto === L.IPPROTO_ICMP || k.proto === L.IPPROTO_ICMPV6) {
        this.vipEntries.set(key.toString('hex'), v.flags);
        continue;
      }
      const pin = this.innerPin(v.id);
      if (!fs.existsSync(pin)) {
        // A service without its table cannot be diffed; forget it so the next
        // apply installs it afresh (a new table, swapped in atomically).
        this.log.warn({ service: k, id: v.id }, 'adopted service has no pinned Maglev table');
        continue;
      }
      const inner = bpf.mapFromPin(pin);
      const vip = Address.of(k.vip);
      const s: InstalledService = {
        id: v.id,
        key: serviceKey({ vip: vip.text, port: k.port, protocol: PROTOCOL[k.proto] }),
        mapKey: key,
        vip,
        flags: v.flags,
        backends: new Map(),
        backendValues: new Map(),
        inner,
      };
      byService.set(v.id, s);
      this.installed.set(s.key, s);
      this.serviceIds.take(v.id);
    }
    this.writeServicesById();
    // A table no service names (a daemon that failed between two writes left
    // one): its id is free, and the next service to take it swaps in its own.
    for (const f of fs.readdirSync(path.join(this.node.bpffs, 'maglev')))
      if (!byService.has(Number(f))) {
        this.log.warn({ pin: this.innerPin(Number(f)) }, 'removed a Maglev table no service uses');
        fs.rmSync(path.join(this.node.bpffs, 'maglev', f), { force: true });
      }
    const filter = this.maps.vipFilter.dump();
    for (let i = 0; i < filter.count; i++) this.vipFilter[filter.keys.readUInt32LE(i * 4)] = filter.values.readBigUInt64LE(i * 8);
    const tx = new UndoLog();
    this.countVips([...this.installed.values()], 1, tx, true);
    tx.commit();
    const owners = this.owner.dump();
    for (let i = 0; i < owners.count; i++) {
      const id = owners.keys.readUInt32LE(i * 4);
      const o = owners.values.readUInt32LE(i * 4);
      if (o === FREE) continue;
      if (o & RESTING) {
        const until = o & ~RESTING;
        if (until > monotonicS()) this.backendIds.rest(id, until);
        else this.owner.update(L.u32(id), L.u32(FREE));
        continue;
      }
      const s = byService.get(o - 1);
      const raw = this.maps.backends.lookup(L.u32(id));
      if (!s || !raw) {
        this.owner.update(L.u32(id), L.u32(FREE));
        continue;
      }
      const b = L.decodeBackend(raw);
      s.backends.set(backendKey(b.address, b.port), id);
      s.backendValues.set(id, raw.toString('hex'));
      this.backendIds.take(id);
    }
    const backends = [...byService.values()].reduce((n, s) => n + s.backends.size, 0);
    // The program's pin is written last by a daemon that attached: without it
    // and without services, nothing was adopted.
    if (!this.installed.size && !fs.existsSync(path.join(this.node.bpffs, PROG_PIN))) this.log.info({ bpffs: this.node.bpffs }, 'no pinned datapath state: starting with a fresh datapath');
    else this.log.info({ services: this.installed.size, backends }, 'adopted pinned datapath state');
  }

  /**
   * The whole of xdplb_svc_by_id from the installed services: derived state,
   * rewritten after a restart so a crash between two writes, or pins from a
   * daemon that predates the map, leave no entry behind. A live service's
   * entry is rewritten with the bytes it already has.
   */
  private writeServicesById(): void {
    const n = this.maps.servicesById.maxEntries;
    const size = L.LAYOUT.xdplb_service_def.size;
    const keys = Buffer.alloc(4 * n);
    const values = Buffer.alloc(size * n);
    for (let i = 0; i < n; i++) keys.writeUInt32LE(i, 4 * i);
    for (const s of this.installed.values()) serviceDef(s).copy(values, size * s.id);
    this.maps.servicesById.batchUpdatePacked(keys, values, n);
  }

  /**
   * Services counted in (or out of) the VIP filter, and the words whose bits
   * that changes written (`all`: every word, after a restart). A set bit too
   * many costs a lookup; a bit missing would pass a VIP's traffic to the
   * kernel, so bits are set before services appear and cleared only after
   * they are gone.
   */
  private countVips(list: readonly InstalledService[], delta: 1 | -1, tx: UndoLog, all = false): void {
    const words = new Set<number>();
    for (const s of list) {
      const bit = vipFilterBit(s.vip);
      this.vipCount[bit] += delta;
      words.add(bit >>> 6);
    }
    tx.note(() => {
      for (const s of list) this.vipCount[vipFilterBit(s.vip)] -= delta;
    });
    const changed: number[] = [];
    const values: bigint[] = [];
    for (const w of all ? this.vipFilter.keys() : words) {
      let v = 0n;
      for (let b = 0; b < 64; b++) if (this.vipCount[w * 64 + b]) v |= 1n << BigInt(b);
      if (v === this.vipFilter[w]) continue;
      changed.push(w);
      values.push(v);
    }
    if (!changed.length) return;
    put(
      tx,
      this.maps.vipFilter,
      changed.map((w) => L.u32(w)),
      values.map((v) => L.u64(v)),
    );
    const before = changed.map((w) => this.vipFilter[w]);
    changed.forEach((w, i) => (this.vipFilter[w] = values[i]));
    tx.note(() => changed.forEach((w, i) => (this.vipFilter[w] = before[i])));
  }

  private writeConfig(tx?: UndoLog): void {
    if (tx) put(tx, this.maps.config, [L.u32(0)], [L.encodeConfig(nodeConfig(this.node))]);
    else this.maps.config.update(L.u32(0), L.encodeConfig(nodeConfig(this.node)));
  }

  /** One change at a time: resolves with the release of the turn. */
  private async turn(): Promise<() => void> {
    const before = this.tail;
    let release!: () => void;
    this.tail = new Promise((r) => (release = r));
    await before;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      release();
    };
  }

  private undo(tx: UndoLog): void {
    const errors = tx.rollback();
    if (errors.length) this.log.error({ errors: errors.map((e) => e.message) }, 'rollback incomplete: the datapath may differ from the state before the change');
  }

  /**
   * Node settings changed on reload: attachments and the config map. A new M
   * rebuilds every table, on a worker thread when they are many.
   */
  async reconfigure(node: NodeSettings): Promise<void> {
    const release = await this.turn();
    try {
      await this.reconfigureNow(node);
    } finally {
      release();
    }
  }

  private async reconfigureNow(node: NodeSettings): Promise<void> {
    const previous = this.node;
    const mChanged = node.maglevSize !== previous.maglevSize;
    this.node = node;
    this.attachments.reconcile(node.interfaces);
    if (!mChanged) {
      this.writeConfig();
      return;
    }
    // A service adopted from the pins and not yet applied keeps its table
    // until the first apply, which swaps in one of the new size.
    const services = [...this.installed.values()].filter((s): s is InstalledService & { spec: ServiceSpec } => s.spec !== undefined);
    const plans = services.map((s) => tableMembers(s.spec));
    // Each table is indexed by its own size (xdp/maglev.h), so a service
    // switches to the new M with its own table swap, whichever way M moves.
    const tx = new UndoLog();
    try {
      const tables = new TableStream(
        plans.map((p) => p.set),
        node.maglevSize,
      );
      const scratch = new Uint32Array(node.maglevSize);
      const staged = new Staged(tx);
      for (let i = 0; i < services.length; i++) await staged.add(services[i], toIds(await tables.get(i), plans[i].members, services[i], scratch));
      const swaps = await staged.filled();
      this.writeConfig(tx);
      for (const s of services) this.keep(s, tx);
      this.swapTables(swaps, tx);
    } catch (e) {
      this.undo(tx);
      // the config map is as it was: so are the settings it was written from
      this.node = previous;
      throw e;
    }
    tx.commit();
  }

  /**
   * Whole new tables, staged as inner maps, swapped in with one batched write
   * to the outer map: each map-in-map write waits for an RCU grace period,
   * once per syscall, so a thousand tables cost one wait, not a thousand. The
   * tables they replace are closed at commit, kept open until then to be
   * swapped back.
   */
  private swapTables(swaps: ReadonlyArray<[InstalledService, bpf.BpfMap]>, tx: UndoLog): void {
    if (!swaps.length) return;
    const inners = swaps.map(([, inner]) => inner);
    const old = swaps.map(([s]) => s.inner);
    const ids = swaps.map(([s]) => L.u32(s.id));
    tx.write(
      () => this.maps.maglev.batchUpdate(ids, inners.map((m) => L.u32(m.fd))),
      () => ids.forEach((k, i) => (old[i] ? this.maps.maglev.update(k, L.u32((old[i] as bpf.BpfMap).fd)) : this.maps.maglev.delete(k))),
    );
    swaps.forEach(([s], i) => {
      const pin = this.innerPin(s.id);
      tx.write(
        () => {
          fs.rmSync(pin, { force: true });
          inners[i].pin(pin);
        },
        () => {
          fs.rmSync(pin, { force: true });
          old[i]?.pin(pin);
        },
      );
      s.inner = inners[i];
      const replaced = old[i];
      if (replaced) tx.onCommit(() => replaced.close());
    });
  }

  /** Only the entries that differ from what the kernel holds, written in one batch. */
  private diffTable(s: InstalledService, table: Uint32Array, tx: UndoLog): void {
    const inner = s.inner as bpf.BpfMap;
    const old = readTable(inner);
    const { indices, values } = diffTables(old, table);
    if (indices.length) {
      const before = new Uint32Array(indices.length);
      indices.forEach((j, i) => (before[i] = old[j]));
      const packed = (a: Uint32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
      tx.write(
        () => inner.batchUpdatePacked(packed(indices), packed(values), indices.length),
        () => inner.batchUpdatePacked(packed(indices), packed(before), indices.length),
      );
    }
  }

  /** Logs how to put a service's bookkeeping back as it is now. */
  private keep(s: InstalledService, tx: UndoLog): void {
    const saved = { ...s, backends: new Map(s.backends), backendValues: new Map(s.backendValues) };
    tx.note(() => Object.assign(s, saved));
  }

  /**
   * Makes the maps hold exactly `services`, writing only what differs: a
   * service whose spec did not change costs no table and no write. Order
   * keeps every packet on a valid path: backends are written before tables
   * point at them, tables before the services that use them; a removed service
   * disappears from the service map before its table and backends are
   * released. Resolves with the change, to be committed or rolled back; until
   * then no other change starts. Rejects (RESOURCE_EXHAUSTED when it cannot
   * fit) with the datapath exactly as it was.
   */
  async apply(services: readonly ServiceSpec[]): Promise<DatapathChange> {
    const release = await this.turn();
    let tx: UndoLog | undefined;
    try {
      const plan = this.plan(services);
      const tables = new TableStream(
        plan.changed.map((c) => c.set),
        this.node.maglevSize,
      );
      tx = new UndoLog();
      await this.write(plan, tables, services, tx);
    } catch (e) {
      if (tx) this.undo(tx);
      release();
      throw bpf.isBpfError(e, 'E2BIG') || bpf.isBpfError(e, 'ENOSPC') ? XdplbError.exhausted(`${(e as Error).message}: the map is full`) : e;
    }
    const done = tx;
    return {
      commit: () => {
        done.commit();
        this.sweep = false;
        release();
      },
      rollback: () => {
        this.undo(done);
        release();
      },
    };
  }

  /**
   * What must change, and whether it fits, before anything is written. A new
   * backend takes a free or resting id; at capacity it may take an id its own
   * service frees in the same change (replacing a backend at full capacity):
   * the connection-table entries naming that id are then its service's old
   * flows, which reach the new backend of the same service, as they would
   * through the Maglev table once their backend is gone. An id another
   * service frees is not reused before the next change: that service's table
   * still points at it until the end of this one.
   */
  private plan(services: readonly ServiceSpec[]): Plan {
    const wanted = new Map<ServiceKey, ServiceSpec>();
    for (const spec of services) wanted.set(serviceKey(spec), spec);
    if (wanted.size > this.serviceIds.size) throw XdplbError.exhausted(`${wanted.size} services exceed the datapath capacity ${this.serviceIds.size}`);
    const plan: Plan = { changed: [], same: [], removed: [] };
    for (const [key, spec] of wanted) {
      const s = this.installed.get(key);
      if (s?.spec && sameDatapathSpec(s.spec, spec)) {
        if (s.spec !== spec) plan.same.push([s, spec]);
        continue;
      }
      if (spec.backends.length > this.node.maglevSize)
        throw XdplbError.exhausted(`service ${spec.name} has ${spec.backends.length} backends, more than the Maglev table size ${this.node.maglevSize}`);
      plan.changed.push({ key, spec, s, ...tableMembers(spec), reuse: 0 });
    }
    for (const s of this.installed.values()) if (!wanted.has(s.key)) plan.removed.push(s);

    const added = plan.changed.filter((c) => !c.s).length;
    if (added > this.serviceIds.available)
      throw XdplbError.exhausted(`no free service id: this change adds ${added} services and ${this.serviceIds.available} of ${this.serviceIds.size} ids are free`);
    const counts = plan.changed.map((c) => {
      const keys = new Set(c.spec.backends.map((b) => backendKey(b.address, b.port)));
      const have = c.s?.backends ?? new Map<BackendKey, number>();
      let need = 0;
      for (const k of keys) if (!have.has(k)) need++;
      let freed = 0;
      for (const k of have.keys()) if (!keys.has(k)) freed++;
      return { need, freed };
    });
    const need = counts.reduce((n, c) => n + c.need, 0);
    let short = need - this.backendIds.available;
    for (let i = 0; i < plan.changed.length && short > 0; i++) {
      plan.changed[i].reuse = Math.min(counts[i].need, counts[i].freed, short);
      short -= plan.changed[i].reuse;
    }
    if (short > 0) {
      const own = counts.reduce((n, c) => n + Math.min(c.need, c.freed), 0);
      const freedByRemoved = plan.removed.reduce((n, s) => n + s.backends.size, 0);
      throw XdplbError.exhausted(
        `no free backend id: this change adds ${need} backends; ${this.backendIds.available} of ${this.backendIds.size} ids are free or resting` +
          (own ? `, and ${own} freed by the same services are reused` : '') +
          (freedByRemoved ? `; the ${freedByRemoved} ids of removed services can be handed out from the next change on` : ''),
      );
    }
    return plan;
  }

  private async write(plan: Plan, tables: TableStream, services: readonly ServiceSpec[], tx: UndoLog): Promise<void> {
    const staged = new Staged(tx);
    const scratch = new Uint32Array(this.node.maglevSize);
    const serviceKeys: Buffer[] = [];
    const serviceValues: Buffer[] = [];
    const defIds: Buffer[] = [];
    const defValues: Buffer[] = [];
    const added: InstalledService[] = [];
    // Backends first: a diffed table points at its new ones at once. But a
    // backend leaving service (draining, down) only once no table sends new
    // flows to it: the datapath drops a new flow its table sends to one.
    const gathered = new Gathered();
    const leaving = new Gathered();
    const targets = plan.changed.map((c) => {
      let s = c.s;
      if (s) this.keep(s, tx);
      else {
        s = this.addService(c.key, c.spec, tx, gathered);
        added.push(s);
      }
      this.writeBackends(s, c, tx, gathered, leaving);
      return s;
    });
    gathered.flush(tx);
    for (let i = 0; i < plan.changed.length; i++) {
      const c = plan.changed[i];
      const s = targets[i];
      const table = toIds(await tables.get(i), c.members, s, scratch);
      if (!s.inner || s.inner.maxEntries !== table.length) await staged.add(s, table);
      else this.diffTable(s, table, tx);
      const flags = serviceFlags(c.spec);
      if (flags !== s.flags) {
        s.flags = flags;
        serviceKeys.push(s.mapKey);
        serviceValues.push(L.encodeService({ id: s.id, flags }));
        defIds.push(L.u32(s.id));
        defValues.push(serviceDef(s));
      }
      s.spec = c.spec;
    }
    for (const [s, spec] of plan.same) {
      const before = s.spec;
      s.spec = spec;
      tx.note(() => (s.spec = before));
    }
    this.swapTables(await staged.filled(), tx);
    leaving.flush(tx);
    // By id and the VIP filter before the service maps: a flow-cache entry
    // names a new service only after the service map has led a packet to it,
    // and no packet reaches the service map past a clear filter bit.
    put(tx, this.maps.servicesById, defIds, defValues);
    this.countVips(added, 1, tx);
    // Services only once their tables are in place.
    for (const map of ['services4', 'services'] as const) {
      const i = serviceKeys.flatMap((k, j) => (L.serviceMapOf(k) === map ? [j] : []));
      put(
        tx,
        this.maps[map],
        i.map((j) => serviceKeys[j]),
        i.map((j) => serviceValues[j]),
      );
    }
    for (const c of plan.changed) this.releaseBackends(this.installed.get(c.key) as InstalledService, c.spec, tx);

    const removed = plan.removed;
    if (removed.length) {
      // Unreachable first (service map), then the table, then its backends.
      const keys = removed.map((s) => s.mapKey);
      for (const map of ['services4', 'services'] as const)
        remove(
          tx,
          this.maps[map],
          keys.filter((k) => L.serviceMapOf(k) === map),
        );
      put(
        tx,
        this.maps.servicesById,
        removed.map((s) => L.u32(s.id)),
        removed.map(() => L.encodeServiceDef(undefined)),
      );
      // The kernel has no batched delete for map-in-map: one syscall (and one
      // RCU wait) per removed table.
      for (const s of removed) {
        const inner = s.inner;
        tx.write(
          () => this.maps.maglev.delete(L.u32(s.id)),
          () => inner && this.maps.maglev.update(L.u32(s.id), L.u32(inner.fd)),
        );
      }
      for (const s of removed) {
        const pin = this.innerPin(s.id);
        const inner = s.inner;
        tx.write(
          () => fs.rmSync(pin, { force: true }),
          () => {
            fs.rmSync(pin, { force: true });
            inner?.pin(pin);
          },
        );
        if (inner) tx.onCommit(() => inner.close());
        this.keep(s, tx);
        this.releaseBackends(s, undefined, tx);
        this.serviceIds.free(s.id, undefined, tx);
        this.installed.delete(s.key);
        tx.note(() => this.installed.set(s.key, s));
      }
      this.countVips(removed, -1, tx);
    }
    // VIPs as the specs spell them: `services` is filtered by that text
    const vips = this.sweep ? undefined : new Set([...plan.changed.map((c) => c.spec.vip), ...removed.map((s) => s.vip.text)]);
    const touched = vips ? services.filter((s) => vips.has(s.vip)) : services;
    this.writeVipEntries(touched, vips, tx);
    this.writeRevNat(touched, vips, tx);
  }

  private addService(key: ServiceKey, spec: ServiceSpec, tx: UndoLog, gathered: Gathered): InstalledService {
    const id = this.serviceIds.alloc('service', tx);
    gathered.zeroCounters(this.maps.serviceStats, [id]);
    const mapKey = L.serviceMapKey({ vip: spec.vip, port: spec.port, proto: PROTO[spec.protocol] });
    const s: InstalledService = { id, key, mapKey, vip: spec.vipAddress, flags: -1, backends: new Map(), backendValues: new Map() };
    this.installed.set(key, s);
    tx.note(() => this.installed.delete(key));
    return s;
  }

  /**
   * (VIP, protocol, backend port) -> service port for every L4 DNAT service,
   * so that relayed ICMP errors quote what the client sent (xdp/pmtu.h). Two
   * services sending a VIP's port to the same backend port: the first wins.
   * Only the VIPs in `vips` are rewritten (all of them when undefined), from
   * `services`: every service of those VIPs.
   */
  private writeRevNat(services: readonly ServiceSpec[], vips: Set<string> | undefined, tx: UndoLog): void {
    if (!this.revNat) {
      this.revNat = new Map();
      for (const k of this.maps.revnat.keys()) {
        const vip = L.decodeServiceKey(k).vip;
        const entries = this.revNat.get(vip) ?? new Map<string, number>();
        entries.set(k.toString('hex'), this.maps.revnat.lookup(k)?.readUInt16BE(0) ?? 0);
        this.revNat.set(vip, entries);
      }
    }
    const revNat = this.revNat;
    const wanted = new Map<string, Map<string, number>>();
    for (const v of vips ?? revNat.keys()) wanted.set(v, new Map());
    for (const s of services) {
      const entries = wanted.get(s.vip) ?? new Map<string, number>();
      wanted.set(s.vip, entries);
      if (!s.flags.l4Dnat || s.port === 0) continue;
      for (const b of s.backends) {
        if (b.port === s.port) continue;
        const k = L.encodeRevNatKey({ vip: s.vip, proto: PROTO[s.protocol], backendPort: b.port }).toString('hex');
        if (!entries.has(k)) entries.set(k, s.port);
      }
    }
    const keys: Buffer[] = [];
    const values: Buffer[] = [];
    const gone: Buffer[] = [];
    for (const [vip, entries] of wanted) {
      const now = revNat.get(vip);
      for (const [k, port] of entries) if (now?.get(k) !== port) keys.push(Buffer.from(k, 'hex')), values.push(L.encodeRevNat(port));
      for (const k of now?.keys() ?? []) if (!entries.has(k)) gone.push(Buffer.from(k, 'hex'));
      if (entries.size === (now?.size ?? 0) && [...entries].every(([k, p]) => now?.get(k) === p)) continue;
      tx.note(() => (now ? revNat.set(vip, now) : revNat.delete(vip)));
      if (entries.size) revNat.set(vip, entries);
      else revNat.delete(vip);
    }
    put(tx, this.maps.revnat, keys, values);
    remove(tx, this.maps.revnat, gone);
  }

  /**
   * New backends get ids (at capacity, `c.reuse` of them the ids of the
   * service's own removed backends); changed ones (port, state) are
   * rewritten in place, in `leaving` those that leave service.
   */
  private writeBackends(s: InstalledService, c: Planned, tx: UndoLog, gathered: Gathered, leaving: Gathered): void {
    const keep = new Set(c.spec.backends.map((b) => backendKey(b.address, b.port)));
    const freed = [...s.backends].filter(([k]) => !keep.has(k)).slice(0, c.reuse);
    const fresh: number[] = [];
    const taken: number[] = [];
    const keys: Buffer[] = [];
    const values: Buffer[] = [];
    const leavingKeys: Buffer[] = [];
    const leavingValues: Buffer[] = [];
    for (const b of c.spec.backends) {
      const k = backendKey(b.address, b.port);
      let id = s.backends.get(k);
      const installed = id !== undefined;
      if (id === undefined) {
        const reused = freed.shift();
        if (reused) {
          s.backends.delete(reused[0]);
          s.backendValues.delete(reused[1]);
          id = reused[1];
        } else {
          id = this.backendIds.alloc('backend', tx);
          taken.push(id);
        }
        s.backends.set(k, id);
        fresh.push(id);
      }
      const value = L.encodeBackend({ address: b.address, port: b.port, state: STATE[b.state], serviceId: s.id });
      if (s.backendValues.get(id) !== value.toString('hex')) {
        const out = installed && b.state !== 'active';
        (out ? leavingKeys : keys).push(L.u32(id));
        (out ? leavingValues : values).push(value);
        s.backendValues.set(id, value.toString('hex'));
      }
    }
    gathered.zeroCounters(this.maps.backendStats, fresh);
    gathered.put(
      this.owner,
      taken.map((id) => L.u32(id)),
      taken.map(() => L.u32(s.id + 1)),
    );
    gathered.put(this.maps.backends, keys, values);
    leaving.put(this.maps.backends, leavingKeys, leavingValues);
  }

  /**
   * Backends no longer in the spec: cleared only after no table points at them,
   * their ids resting for as long as a connection-table entry naming them may live.
   */
  private releaseBackends(s: InstalledService, spec: ServiceSpec | undefined, tx: UndoLog): void {
    const keep = new Set((spec?.backends ?? []).map((b) => backendKey(b.address, b.port)));
    const ct = this.node.conntrack;
    // + 1: the datapath stamps entries in whole seconds of a coarse clock
    const until = monotonicS() + Math.max(ct.tcpTimeout, ct.udpTimeout, ct.closingTimeout) + 1;
    const ids = [...s.backends].filter(([k]) => !keep.has(k)).map(([k, id]) => {
      s.backends.delete(k);
      s.backendValues.delete(id);
      this.backendIds.free(id, until, tx);
      return L.u32(id);
    });
    put(
      tx,
      this.maps.backends,
      ids,
      ids.map(() => L.encodeBackend({ address: '', port: 0, state: L.BACKEND_NONE, serviceId: 0 })),
    );
    put(
      tx,
      this.owner,
      ids,
      ids.map(() => L.u32(RESTING | until)),
    );
  }

  /**
   * One ICMP entry per VIP: echo answered when any service of the VIP allows
   * it. Only the VIPs in `vips` (all when undefined), from `services`.
   */
  private writeVipEntries(services: readonly ServiceSpec[], vips: Set<string> | undefined, tx: UndoLog): void {
    const wanted = new Map<string, number>();
    for (const v of vips ?? []) wanted.set(L.vipEntryKey(v).toString('hex'), -1);
    for (const s of services) {
      const k = L.vipEntryKey(s.vip).toString('hex');
      wanted.set(k, Math.max(0, wanted.get(k) ?? 0) | (s.flags.icmpEcho ? L.SVC_F_ICMP_ECHO : 0));
    }
    if (!vips) for (const k of this.vipEntries.keys()) if (!wanted.has(k)) wanted.set(k, -1);
    for (const [k, flags] of wanted) {
      const before = this.vipEntries.get(k);
      if (before === flags || (before === undefined && flags < 0)) continue;
      const key = Buffer.from(k, 'hex');
      const map = this.maps[L.serviceMapOf(key)];
      if (flags < 0) {
        remove(tx, map, [key]);
        this.vipEntries.delete(k);
      } else {
        put(tx, map, [key], [L.encodeService({ id: 0, flags })]);
        this.vipEntries.set(k, flags);
      }
      tx.note(() => (before === undefined ? this.vipEntries.delete(k) : this.vipEntries.set(k, before)));
    }
  }

  /** The datapath ids of a service and its backends (tests and counters). */
  ids(spec: ServiceSpec): { service: number; backends: Map<BackendKey, number> } | undefined {
    const s = this.installed.get(serviceKey(spec));
    return s && { service: s.id, backends: new Map(s.backends) };
  }

  /**
   * The counters of the given services (or of `only`) and of every reason.
   * The per-CPU values are read on a worker thread: at 10,000 services with 10
   * backends each that is 110,000 lookups, which the event loop must not wait for.
   */
  async counters(services: readonly ServiceSpec[], only?: string): Promise<CountersSnapshot> {
    return readCounters(this.maps, this.installed, services, only);
  }

  /** Packets counted under one reason, summed over CPUs: one lookup, cheap enough to poll. */
  reasonPackets(name: string): number {
    return reasonPackets(this.maps.reasons, name);
  }

  async status(services: readonly ServiceSpec[], uptimeSeconds: number): Promise<NodeStatusSnapshot> {
    return readStatus(
      { maps: this.maps, program: this.program, node: this.node, attachments: this.attachments.list(), installed: this.installed.size, vipEntries: this.vipEntries.size },
      services,
      uptimeSeconds,
    );
  }

  /** Interfaces this program is attached to, as the kernel says now (BGP announces only while there is one). */
  attachedInterfaces(): string[] {
    return this.attachments.attachedNow();
  }

  /** Daemon exit: handles closed; the program stays attached, the pins stay. */
  close(): void {
    for (const s of this.installed.values()) s.inner?.close();
    for (const m of Object.values(this.maps)) m.close();
    this.owner.close();
    this.program.close();
    this.obj.close();
  }

  /** Clean uninstall: detach from every interface and remove every pin. */
  uninstall(): void {
    this.attachments.detachAll();
    this.close();
    fs.rmSync(this.node.bpffs, { recursive: true, force: true });
  }
}
