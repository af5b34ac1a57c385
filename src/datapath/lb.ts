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
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import * as bpf from './bpf';
import * as L from './layout';
import { vipFilterWords } from './flowhash';
import { REASON, REASONS } from './reasons';
import { agePathMtus } from './pmtu';
import { routeWarnings, type RouteCheck } from './routes';
import { netconf } from '../net/iproute';
import { buildTable, diffTables, NO_BACKEND } from '../maglev';
import type { DatapathSink } from '../control/controller';
import { XdplbError } from '../control/errors';
import type { BackendSpec, NodeSettings, ServiceSpec } from '../control/model';
import type { CountersSnapshot, NodeStatusSnapshot } from '../api/server';

const PROG_PIN = 'prog_xdplb_main';
const OWNER_MAP = 'xdplb_be_owner';
const ATTACHED_FILE = 'attached.json';
/**
 * xdplb_be_owner values: FREE for a free backend slot, RESTING | s for an id
 * freed that may be handed out from monotonic second s on, otherwise the
 * owning service's id + 1.
 */
const FREE = 0;
const RESTING = 0x80000000;

/** CLOCK_MONOTONIC seconds: the clock of the datapath's connection-table expiries (bpffs pins do not outlive a boot, nor does it). */
const monotonicS = (): number => Number(process.hrtime.bigint() / 1_000_000_000n);

const PROTO: Record<string, number> = { tcp: L.IPPROTO_TCP, udp: L.IPPROTO_UDP };
const STATE: Record<BackendSpec['state'], number> = {
  active: L.BACKEND_ACTIVE,
  draining: L.BACKEND_DRAINING,
  down: L.BACKEND_DOWN,
};

function serviceFlags(s: ServiceSpec): number {
  return (s.flags.l4Dnat ? L.SVC_F_L4_DNAT : 0) | (s.flags.sourceHash ? L.SVC_F_SRC_HASH : 0) | (s.flags.conntrackBypass ? L.SVC_F_CT_BYPASS : 0);
}

function tupleKey(s: { vip: string; port: number; protocol: string }): string {
  return L.serviceMapKey({ vip: s.vip, port: s.port, proto: PROTO[s.protocol] }).toString('hex');
}

const backendKey = (address: string, port: number) => `${address}|${port}`;

/** The xdplb_svc_by_id entry of an installed service. */
function serviceDef(s: InstalledService): Buffer {
  return L.encodeServiceDef({ ...L.decodeServiceMapKey(Buffer.from(s.keyHex, 'hex')), id: s.id, flags: s.flags });
}

interface InstalledService {
  id: number;
  keyHex: string;
  flags: number;
  /** backend key -> id */
  backends: Map<string, number>;
  /** backend id -> encoded xdplb_backend as installed */
  backendValues: Map<number, string>;
  table: Uint32Array;
  /** absent until the first table is installed */
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
    maglevM: node.maglevSize,
    ctTcpS: node.conntrack.tcpTimeout,
    ctUdpS: node.conntrack.udpTimeout,
    ctClosingS: node.conntrack.closingTimeout,
  };
}

/**
 * Ids 0..n-1, handed out in turn from after the last one. A freed id may rest
 * until a given second: it is handed out only when no other is free, the one
 * whose rest ends first (at capacity an id is better reused than refused).
 */
class IdPool {
  private readonly used: Uint8Array;
  private next = 0;
  /** id -> monotonic second from which it may be handed out */
  private readonly resting = new Map<number, number>();
  constructor(readonly size: number) {
    this.used = new Uint8Array(size);
  }
  take(id: number): void {
    this.used[id] = 1;
  }
  rest(id: number, untilS: number): void {
    this.resting.set(id, untilS);
  }
  alloc(what: string): number {
    const now = monotonicS();
    for (let n = 0; n < this.size; n++) {
      const id = (this.next + n) % this.size;
      if (this.used[id]) continue;
      const until = this.resting.get(id);
      if (until !== undefined && until > now) continue;
      return this.hand(id);
    }
    let first: number | undefined;
    for (const [id, until] of this.resting) if (first === undefined || until < (this.resting.get(first) as number)) first = id;
    if (first !== undefined) return this.hand(first);
    throw XdplbError.exhausted(`no free ${what} slot (capacity ${this.size})`);
  }
  private hand(id: number): number {
    this.used[id] = 1;
    this.resting.delete(id);
    this.next = (id + 1) % this.size;
    return id;
  }
  free(id: number, restUntilS?: number): void {
    this.used[id] = 0;
    if (restUntilS !== undefined) this.resting.set(id, restUntilS);
  }
}

export class LbDatapath implements DatapathSink {
  private readonly maps: Record<keyof typeof L.MAP_NAMES, bpf.BpfMap>;
  private readonly owner: bpf.BpfMap;
  private readonly installed = new Map<string, InstalledService>();
  private readonly serviceIds = new IdPool(L.MAX_SERVICES);
  private readonly backendIds = new IdPool(L.MAX_BACKENDS);
  /** xdplb_vip_filter as written */
  private vipFilter: BigUint64Array = new BigUint64Array(L.VIP_FILTER_WORDS);
  /** VIP entries (ICMP echo) as installed: key hex -> flags */
  private readonly vipEntries = new Map<string, number>();
  /** xdplb_revnat as written: key hex -> service port; undefined until read from the pinned map */
  private revNat?: Map<string, number>;
  private attached = new Map<string, { ifindex: number; mode: bpf.XdpMode }>();

  private constructor(
    private node: NodeSettings,
    private readonly obj: bpf.BpfObject,
    readonly program: bpf.BpfProgram,
    private readonly log: Logger,
  ) {
    const m = {} as Record<keyof typeof L.MAP_NAMES, bpf.BpfMap>;
    for (const [k, name] of Object.entries(L.MAP_NAMES)) m[k as keyof typeof L.MAP_NAMES] = obj.map(name);
    this.maps = m;
    this.owner = LbDatapath.ownerMap(node.bpffs);
    fs.mkdirSync(path.join(node.bpffs, 'maglev'), { recursive: true });
  }

  /**
   * Loads lb.bpf.o, reusing the maps pinned under node.bpffs, adopts the state a
   * previous daemon left there, attaches (atomically replacing our previous
   * program) and writes the node settings.
   */
  static open(node: NodeSettings, log: Logger, objectFile = bpf.objectPath('lb')): LbDatapath {
    fs.mkdirSync(node.bpffs, { recursive: true, mode: 0o700 });
    const obj = bpf.openObject(objectFile, { pinRoot: node.bpffs });
    const dp = new LbDatapath(node, obj, obj.program(L.PROGRAM_NAME), log);
    dp.adopt();
    dp.writeConfig();
    dp.attachAll();
    return dp;
  }

  private static ownerMap(dir: string): bpf.BpfMap {
    const pin = path.join(dir, OWNER_MAP);
    if (fs.existsSync(pin)) return bpf.mapFromPin(pin);
    const m = bpf.createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: L.MAX_BACKENDS, name: OWNER_MAP });
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
      const dump = inner.dump();
      const table = new Uint32Array(inner.maxEntries).fill(NO_BACKEND);
      for (let i = 0; i < dump.count; i++) table[dump.keys.readUInt32LE(i * 4)] = dump.values.readUInt32LE(i * 4);
      const s: InstalledService = { id: v.id, keyHex: key.toString('hex'), flags: v.flags, backends: new Map(), backendValues: new Map(), table, inner };
      byService.set(v.id, s);
      this.installed.set(s.keyHex, s);
      this.serviceIds.take(v.id);
    }
    this.writeServicesById();
    const filter = this.maps.vipFilter.dump();
    for (let i = 0; i < filter.count; i++) this.vipFilter[filter.keys.readUInt32LE(i * 4)] = filter.values.readBigUInt64LE(i * 8);
    this.writeVipFilter();
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
   * The VIP filter for the installed services, only the words that differ.
   * A set bit too many costs a lookup; a bit missing would pass a VIP's
   * traffic to the kernel, so bits are set before services appear and
   * cleared only after they are gone.
   */
  private writeVipFilter(): void {
    const words = vipFilterWords([...this.installed.values()].map((s) => L.decodeServiceMapKey(Buffer.from(s.keyHex, 'hex')).vip));
    const changed = [...words.keys()].filter((i) => words[i] !== this.vipFilter[i]);
    this.maps.vipFilter.batchUpdate(
      changed.map((i) => L.u32(i)),
      changed.map((i) => L.u64(words[i])),
    );
    this.vipFilter = words;
  }

  private writeConfig(): void {
    this.maps.config.update(L.u32(0), L.encodeConfig(nodeConfig(this.node)));
  }

  private readAttached(): Record<string, { mode: bpf.XdpMode }> {
    try {
      return JSON.parse(fs.readFileSync(path.join(this.node.stateDir, ATTACHED_FILE), 'utf8')) as Record<string, { mode: bpf.XdpMode }>;
    } catch {
      return {};
    }
  }

  private writeAttached(): void {
    fs.mkdirSync(this.node.stateDir, { recursive: true, mode: 0o700 });
    const tmp = path.join(this.node.stateDir, `${ATTACHED_FILE}.tmp`);
    fs.writeFileSync(tmp, JSON.stringify(Object.fromEntries([...this.attached].map(([k, v]) => [k, { mode: v.mode }]))));
    fs.renameSync(tmp, path.join(this.node.stateDir, ATTACHED_FILE));
  }

  /**
   * Attaches to every configured interface. Where our previous program is
   * attached it is replaced atomically (XDP_FLAGS_REPLACE), so no packet finds
   * the interface without a program; anything else attached is left alone and
   * reported.
   */
  private attachAll(): void {
    const pin = path.join(this.node.bpffs, PROG_PIN);
    const previous = fs.existsSync(pin) ? bpf.programFromPin(pin) : undefined;
    const wanted = new Map(this.node.interfaces.map((i) => [i.name, i.mode]));
    const before = this.readAttached();
    try {
      // The devmap is the new program's own: fill it before the program can run.
      for (const name of wanted.keys()) {
        const ifindex = this.ifindex(name);
        this.maps.devmap.update(L.u32(ifindex), L.encodeDevmapVal({ ifindex, progFd: 0 }));
      }
      for (const [name, mode] of wanted) {
        const ifindex = this.ifindex(name);
        const q = bpf.queryXdp(ifindex);
        if (q.progId && previous && q.progId === previous.id) {
          bpf.attachXdp(ifindex, this.program, { mode: q.mode === 'generic' || q.mode === 'native' ? q.mode : mode, replace: previous });
          if (q.mode !== mode) {
            bpf.detachXdp(ifindex, q.mode as bpf.XdpMode, this.program);
            bpf.attachXdp(ifindex, this.program, { mode, exclusive: true });
          }
        } else if (q.progId) {
          throw XdplbError.failedPrecondition(`interface ${name} already has another XDP program (id ${q.progId}); detach it first`);
        } else {
          bpf.attachXdp(ifindex, this.program, { mode, exclusive: true });
        }
        this.attached.set(name, { ifindex, mode });
        this.log.info({ interface: name, ifindex, mode, programId: this.program.id }, 'datapath attached');
        this.warnForwarding(name);
      }
      for (const [name, { mode }] of Object.entries(before)) {
        if (wanted.has(name)) continue;
        this.detachOne(name, mode, previous);
      }
      if (previous) fs.unlinkSync(pin);
      this.program.pin(pin);
      this.writeAttached();
    } finally {
      previous?.close();
    }
  }

  /**
   * bpf_fib_lookup answers only where the kernel itself would forward: without
   * forwarding on the receiving interface (both families check the device's
   * own setting) every packet to a VIP is passed (pass_fib_fwd_disabled).
   * Asked over rtnetlink: the unit's ProcSubset=pid hides /proc/sys.
   */
  private warnForwarding(name: string): void {
    netconf(name).then(
      (confs) => {
        const off = confs.filter((c) => c.forwarding === false).map((c) => `net.${c.family === 'inet6' ? 'ipv6' : 'ipv4'}.conf.${name}.forwarding`);
        if (off.length)
          this.log.warn({ interface: name, sysctls: off }, 'forwarding is off: the datapath passes VIP traffic to the kernel until it is on (sysctl -w ...=1)');
        else this.log.debug({ interface: name }, 'forwarding is on');
      },
      (e: Error) => this.log.warn({ interface: name, error: e.message }, 'forwarding could not be checked: if it is off, the datapath passes VIP traffic to the kernel'),
    );
  }

  private detachOne(name: string, mode: bpf.XdpMode, expected?: bpf.BpfProgram): void {
    try {
      const ifindex = this.ifindex(name);
      bpf.detachXdp(ifindex, mode, expected ?? this.program);
      this.maps.devmap.delete(L.u32(ifindex));
      this.log.info({ interface: name }, 'datapath detached');
    } catch (e) {
      this.log.warn({ interface: name, error: (e as Error).message }, 'detach failed');
    }
    this.attached.delete(name);
  }

  private ifindex(name: string): number {
    try {
      return bpf.ifIndex(name);
    } catch {
      throw XdplbError.failedPrecondition(`interface ${name} does not exist`);
    }
  }

  /** Node settings changed on reload: attachments and the config map. */
  reconfigure(node: NodeSettings): void {
    const mChanged = node.maglevSize !== this.node.maglevSize;
    const removed = [...this.attached.keys()].filter((n) => !node.interfaces.some((i) => i.name === n));
    this.node = node;
    for (const name of removed) this.detachOne(name, this.attached.get(name)?.mode ?? 'native');
    for (const i of node.interfaces) {
      const cur = this.attached.get(i.name);
      if (cur && cur.mode === i.mode) continue;
      if (cur) this.detachOne(i.name, cur.mode);
      const ifindex = this.ifindex(i.name);
      bpf.attachXdp(ifindex, this.program, { mode: i.mode, exclusive: true });
      this.maps.devmap.update(L.u32(ifindex), L.encodeDevmapVal({ ifindex, progFd: 0 }));
      this.attached.set(i.name, { ifindex, mode: i.mode });
      this.log.info({ interface: i.name, ifindex, mode: i.mode }, 'datapath attached');
    }
    this.writeAttached();
    if (!mChanged) {
      this.writeConfig();
      return;
    }
    // A new M: growing, tables first (a new M must never index past a table);
    // shrinking, M first. Every entry stays a valid backend throughout.
    const grow = node.maglevSize > L.decodeConfig(this.maps.config.lookup(L.u32(0)) ?? Buffer.alloc(L.LAYOUT.xdplb_config.size)).maglevM;
    if (!grow) this.writeConfig();
    this.swapTables([...this.installed.values()].map((s) => [s, this.tableFor(s, this.currentSpecs.get(s.keyHex))]));
    if (grow) this.writeConfig();
  }

  private currentSpecs = new Map<string, ServiceSpec>();

  private tableFor(s: InstalledService, spec: ServiceSpec | undefined): Uint32Array {
    const members = (spec?.backends ?? [])
      .filter((b) => b.state === 'active' && b.weight > 0)
      .map((b) => ({ id: s.backends.get(backendKey(b.address, b.port)) as number, key: `${b.address}:${b.port}`, weight: b.weight }));
    return buildTable(members, this.node.maglevSize);
  }

  private newInner(id: number, table: Uint32Array): bpf.BpfMap {
    const inner = bpf.createMap({ type: 'array', keySize: 4, valueSize: 4, maxEntries: table.length, flags: L.MAGLEV_INNER_FLAGS, name: `xdplb_mg${id}` });
    const keys = new Uint32Array(table.length);
    for (let i = 0; i < keys.length; i++) keys[i] = i;
    // u32 keys and values in host order, as the kernel reads them
    inner.batchUpdatePacked(Buffer.from(keys.buffer), Buffer.from(table.buffer, table.byteOffset, table.byteLength), table.length);
    return inner;
  }

  /**
   * Whole new tables, swapped in with one batched write to the outer map: each
   * map-in-map write waits for an RCU grace period, once per syscall, so a
   * thousand tables cost one wait, not a thousand.
   */
  private swapTables(swaps: ReadonlyArray<[InstalledService, Uint32Array]>): void {
    if (!swaps.length) return;
    const inners = swaps.map(([s, table]) => this.newInner(s.id, table));
    try {
      this.maps.maglev.batchUpdate(
        swaps.map(([s]) => L.u32(s.id)),
        inners.map((m) => L.u32(m.fd)),
      );
    } catch (e) {
      for (const m of inners) m.close();
      throw e;
    }
    swaps.forEach(([s, table], i) => {
      const pin = this.innerPin(s.id);
      fs.rmSync(pin, { force: true });
      inners[i].pin(pin);
      s.inner?.close();
      s.inner = inners[i];
      s.table = table;
    });
  }

  /** Only the entries that differ, written in one batch. */
  private diffTable(s: InstalledService, table: Uint32Array): void {
    const { indices, values } = diffTables(s.table, table);
    if (indices.length) s.inner?.batchUpdatePacked(Buffer.from(indices.buffer, indices.byteOffset, indices.byteLength), Buffer.from(values.buffer, values.byteOffset, values.byteLength), indices.length);
    s.table = table;
  }

  /**
   * Makes the maps hold exactly `services`. Order keeps every packet on a valid
   * path: backends are written before tables point at them, tables before the
   * services that use them; a removed service disappears from the service map
   * before its table and backends are released.
   */
  apply(services: readonly ServiceSpec[]): void {
    const wanted = new Map(services.map((s) => [tupleKey(s), s]));
    const needBackends = [...wanted.values()].reduce((n, s) => n + s.backends.length, 0);
    if (wanted.size > L.MAX_SERVICES) throw XdplbError.exhausted(`${wanted.size} services exceed the datapath capacity ${L.MAX_SERVICES}`);
    if (needBackends > L.MAX_BACKENDS) throw XdplbError.exhausted(`${needBackends} backends exceed the datapath capacity ${L.MAX_BACKENDS}`);

    for (const spec of wanted.values())
      if (spec.backends.length > this.node.maglevSize)
        throw XdplbError.exhausted(`service ${spec.name} has ${spec.backends.length} backends, more than the Maglev table size ${this.node.maglevSize}`);

    const swaps: Array<[InstalledService, Uint32Array]> = [];
    const serviceKeys: Buffer[] = [];
    const serviceValues: Buffer[] = [];
    const defIds: Buffer[] = [];
    const defValues: Buffer[] = [];
    for (const [keyHex, spec] of wanted) {
      let s = this.installed.get(keyHex);
      if (!s) {
        const id = this.serviceIds.alloc('service');
        this.maps.serviceStats.updatePerCpu(L.u32(id), Buffer.alloc(16));
        s = { id, keyHex, flags: -1, backends: new Map(), backendValues: new Map(), table: new Uint32Array(0) };
        this.installed.set(keyHex, s);
      }
      this.writeBackends(s, spec);
      const table = this.tableFor(s, spec);
      if (!s.inner || s.table.length !== table.length) swaps.push([s, table]);
      else this.diffTable(s, table);
      const flags = serviceFlags(spec);
      if (flags !== s.flags) {
        s.flags = flags;
        serviceKeys.push(Buffer.from(keyHex, 'hex'));
        serviceValues.push(L.encodeService({ id: s.id, flags }));
        defIds.push(L.u32(s.id));
        defValues.push(serviceDef(s));
      }
      this.currentSpecs.set(keyHex, spec);
    }
    this.swapTables(swaps);
    // By id and the VIP filter before the service maps: a flow-cache entry
    // names a new service only after the service map has led a packet to it,
    // and no packet reaches the service map past a clear filter bit.
    this.maps.servicesById.batchUpdate(defIds, defValues);
    this.writeVipFilter();
    // Services only once their tables are in place.
    for (const map of ['services4', 'services'] as const) {
      const i = serviceKeys.flatMap((k, j) => (L.serviceMapOf(k) === map ? [j] : []));
      this.maps[map].batchUpdate(i.map((j) => serviceKeys[j]), i.map((j) => serviceValues[j]));
    }
    for (const [keyHex, spec] of wanted) this.releaseBackends(this.installed.get(keyHex) as InstalledService, spec);

    const removed = [...this.installed].filter(([keyHex]) => !wanted.has(keyHex)).map(([, s]) => s);
    if (removed.length) {
      // Unreachable first (service map), then the table, then its backends.
      const keys = removed.map((s) => Buffer.from(s.keyHex, 'hex'));
      for (const map of ['services4', 'services'] as const) this.maps[map].batchDelete(keys.filter((k) => L.serviceMapOf(k) === map));
      this.maps.servicesById.batchUpdate(
        removed.map((s) => L.u32(s.id)),
        removed.map(() => L.encodeServiceDef(undefined)),
      );
      // The kernel has no batched delete for map-in-map: one syscall (and one
      // RCU wait) per removed table.
      for (const s of removed) this.maps.maglev.delete(L.u32(s.id));
      for (const s of removed) {
        fs.rmSync(this.innerPin(s.id), { force: true });
        s.inner?.close();
        this.releaseBackends(s, undefined);
        this.serviceIds.free(s.id);
        this.installed.delete(s.keyHex);
        this.currentSpecs.delete(s.keyHex);
      }
      this.writeVipFilter();
    }
    this.writeVipEntries(services);
    this.writeRevNat(services);
  }

  /**
   * (VIP, protocol, backend port) -> service port for every L4 DNAT service,
   * so that relayed ICMP errors quote what the client sent (xdp/pmtu.h). Two
   * services sending a VIP's port to the same backend port: the first wins.
   */
  private writeRevNat(services: readonly ServiceSpec[]): void {
    if (!this.revNat) {
      this.revNat = new Map();
      for (const k of this.maps.revnat.keys()) this.revNat.set(k.toString('hex'), this.maps.revnat.lookup(k)?.readUInt16BE(0) ?? 0);
    }
    const wanted = new Map<string, number>();
    for (const s of services) {
      if (!s.flags.l4Dnat || s.port === 0) continue;
      for (const b of s.backends) {
        if (b.port === s.port) continue;
        const k = L.encodeRevNatKey({ vip: s.vip, proto: PROTO[s.protocol], backendPort: b.port }).toString('hex');
        if (!wanted.has(k)) wanted.set(k, s.port);
      }
    }
    for (const [k, port] of wanted) {
      if (this.revNat.get(k) === port) continue;
      this.maps.revnat.update(Buffer.from(k, 'hex'), L.encodeRevNat(port));
      this.revNat.set(k, port);
    }
    for (const k of [...this.revNat.keys()]) {
      if (wanted.has(k)) continue;
      this.maps.revnat.delete(Buffer.from(k, 'hex'));
      this.revNat.delete(k);
    }
  }

  /** New backends get ids; changed ones (port, state) are rewritten in place. */
  private writeBackends(s: InstalledService, spec: ServiceSpec): void {
    for (const b of spec.backends) {
      const k = backendKey(b.address, b.port);
      let id = s.backends.get(k);
      if (id === undefined) {
        id = this.backendIds.alloc('backend');
        s.backends.set(k, id);
        this.maps.backendStats.updatePerCpu(L.u32(id), Buffer.alloc(16));
        this.owner.update(L.u32(id), L.u32(s.id + 1));
      }
      const value = L.encodeBackend({ address: b.address, port: b.port, state: STATE[b.state], serviceId: s.id });
      if (s.backendValues.get(id) !== value.toString('hex')) {
        this.maps.backends.update(L.u32(id), value);
        s.backendValues.set(id, value.toString('hex'));
      }
    }
  }

  /**
   * Backends no longer in the spec: cleared only after no table points at them,
   * their ids resting for as long as a connection-table entry naming them may live.
   */
  private releaseBackends(s: InstalledService, spec: ServiceSpec | undefined): void {
    const keep = new Set((spec?.backends ?? []).map((b) => backendKey(b.address, b.port)));
    const ct = this.node.conntrack;
    // + 1: the datapath stamps entries in whole seconds of a coarse clock
    const until = monotonicS() + Math.max(ct.tcpTimeout, ct.udpTimeout, ct.closingTimeout) + 1;
    for (const [k, id] of s.backends) {
      if (keep.has(k)) continue;
      this.maps.backends.update(L.u32(id), L.encodeBackend({ address: '', port: 0, state: L.BACKEND_NONE, serviceId: 0 }));
      this.owner.update(L.u32(id), L.u32(RESTING | until));
      this.backendIds.free(id, until);
      s.backends.delete(k);
      s.backendValues.delete(id);
    }
  }

  /** One ICMP entry per VIP: echo answered when any service of the VIP allows it. */
  private writeVipEntries(services: readonly ServiceSpec[]): void {
    const wanted = new Map<string, number>();
    for (const s of services) {
      const k = L.vipEntryKey(s.vip).toString('hex');
      wanted.set(k, (wanted.get(k) ?? 0) | (s.flags.icmpEcho ? L.SVC_F_ICMP_ECHO : 0));
    }
    for (const [k, flags] of wanted) {
      if (this.vipEntries.get(k) === flags) continue;
      const key = Buffer.from(k, 'hex');
      this.maps[L.serviceMapOf(key)].update(key, L.encodeService({ id: 0, flags }));
      this.vipEntries.set(k, flags);
    }
    for (const k of [...this.vipEntries.keys()]) {
      if (wanted.has(k)) continue;
      const key = Buffer.from(k, 'hex');
      this.maps[L.serviceMapOf(key)].delete(key);
      this.vipEntries.delete(k);
    }
  }

  /** The datapath ids of a service and its backends (tests and counters). */
  ids(spec: ServiceSpec): { service: number; backends: Map<string, number> } | undefined {
    const s = this.installed.get(tupleKey(spec));
    return s && { service: s.id, backends: new Map(s.backends) };
  }

  /**
   * The counters of the given services (or of `only`) and of every reason.
   * The per-CPU values are read on a worker thread: at 10,000 services with 10
   * backends each that is 110,000 lookups, which the event loop must not wait for.
   */
  async counters(services: readonly ServiceSpec[], only?: string): Promise<CountersSnapshot> {
    const picked = services.flatMap((spec) => {
      const s = only && spec.name !== only ? undefined : this.installed.get(tupleKey(spec));
      return s ? [{ spec, id: s.id, backendIds: spec.backends.map((b) => s.backends.get(backendKey(b.address, b.port))) }] : [];
    });
    const backendIds = picked.flatMap((p) => p.backendIds.filter((id): id is number => id !== undefined));
    const [svcValues, beValues, reasonValues, cacheStats] = await Promise.all([
      this.maps.serviceStats.lookupManyPerCpu(picked.map((p) => L.u32(p.id))),
      this.maps.backendStats.lookupManyPerCpu(backendIds.map((id) => L.u32(id))),
      this.maps.reasons.lookupManyPerCpu(REASONS.map((_, i) => L.u32(i))),
      this.maps.cacheStats.lookupManyPerCpu([L.u32(L.CACHE_STAT_NEXTHOP_LOOKUPS), L.u32(L.CACHE_STAT_FLOW_FILLS)]),
    ]);
    const traffic = (perCpu: Buffer[] | undefined) => {
      const c = L.sumCounters(perCpu ?? null);
      return { packets: Number(c.packets), bytes: Number(c.bytes) };
    };
    const byBackend = new Map(backendIds.map((id, i) => [id, beValues[i]]));
    const out: CountersSnapshot = { timestamp: Date.now() / 1000, services: [], verdicts: {}, reasons: {}, nexthopLookups: Number(L.sumU64(cacheStats[0])), flowCacheFills: Number(L.sumU64(cacheStats[1])) };
    picked.forEach((p, i) =>
      out.services.push({
        name: p.spec.name,
        traffic: traffic(svcValues[i]),
        backends: p.spec.backends.map((b, j) => {
          const id = p.backendIds[j];
          return { address: b.address, port: b.port, traffic: traffic(id === undefined ? undefined : byBackend.get(id)) };
        }),
      }),
    );
    REASONS.forEach((r, i) => {
      const c = traffic(reasonValues[i]);
      out.reasons[r.name] = c.packets;
      out.verdicts[r.verdict] = (out.verdicts[r.verdict] ?? 0) + c.packets;
    });
    return out;
  }

  /** Packets counted under one reason, summed over CPUs: one lookup, cheap enough to poll. */
  reasonPackets(name: string): number {
    return Number(L.sumCounters(this.maps.reasons.lookupPerCpu(L.u32(REASON[name]))).packets);
  }

  async status(services: readonly ServiceSpec[], uptimeSeconds: number): Promise<NodeStatusSnapshot> {
    const info = this.program.info();
    const attachments = [...this.attached].map(([name, a]) => {
      const q = bpf.queryXdp(a.ifindex);
      return { interface: name, ifindex: a.ifindex, mode: q.mode, programId: q.progId };
    });
    // the connection table: IPv6 flows in xdplb_conntrack, IPv4 in xdplb_conntrack4
    const [ct6, ct4] = await Promise.all([this.maps.conntrack.count(), this.maps.conntrack4.count()]);
    const backends = services.reduce((n, s) => n + s.backends.length, 0);
    return {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      version: (require('../../../package.json') as { version: string }).version,
      attachments,
      programId: info.id,
      programInstructions: info.instructions,
      maglevSize: this.node.maglevSize,
      maps: [
        { name: L.MAP_NAMES.services, entries: this.installed.size + this.vipEntries.size, capacity: this.maps.services.maxEntries },
        { name: L.MAP_NAMES.backends, entries: backends, capacity: this.maps.backends.maxEntries },
        { name: L.MAP_NAMES.maglev, entries: this.installed.size, capacity: this.maps.maglev.maxEntries },
        { name: L.MAP_NAMES.conntrack, entries: ct6 + ct4, capacity: this.maps.conntrack.maxEntries + this.maps.conntrack4.maxEntries },
      ],
      services: services.length,
      backends,
      bpffs: this.node.bpffs,
      uptimeSeconds,
      pathMtus: agePathMtus(this.maps.pmtu),
      routeWarnings: await routeWarnings(this.routeChecks(services)),
    };
  }

  /** The addresses whose packets the kernel must not forward: outer sources and VIPs. */
  private routeChecks(services: readonly ServiceSpec[]): RouteCheck[] {
    const checks: RouteCheck[] = [];
    for (const o of [this.node.outerSource.ipv4, this.node.outerSource.ipv6]) {
      if (o) checks.push({ what: 'outer source', prefix: o.prefixLength ? `${o.address}/${o.prefixLength}` : o.address, address: o.address });
    }
    for (const vip of new Set(services.map((s) => s.vip))) checks.push({ what: 'VIP', prefix: vip, address: vip });
    return checks;
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
    for (const [name, a] of [...this.attached]) this.detachOne(name, a.mode);
    this.writeAttached();
    this.close();
    fs.rmSync(this.node.bpffs, { recursive: true, force: true });
    fs.rmSync(path.join(this.node.stateDir, ATTACHED_FILE), { force: true });
  }
}
