// Typed layer over the native addon's BPF half (src/native): every BPF object,
// map, program, link and perf ring goes through here. The addon's system calls
// that are not BPF (netns, sd_notify, flock) are src/sys/system.ts.
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../sys/paths';
import { native } from '../sys/addon';
import type { BtfStruct, MapInfo, NativeLink, NativeMap, NativeObject, NativePerfReader, NativeProgram, ProgramInfo, TestRunOptions, TestRunResult } from '../sys/addon';
import { checkLayout, type StructCodec } from './codec';

export type { MapInfo, ProgramInfo, TestRunOptions, TestRunResult };
export const BPF_OBJECT_DIR = path.join(PACKAGE_ROOT, 'build', 'bpf');
export const BPF_TEST_OBJECT_DIR = path.join(PACKAGE_ROOT, 'build', 'bpf-test');

/** Path of a compiled BPF object built from xdp/NAME.bpf.c. */
export function objectPath(name: string): string {
  return path.join(BPF_OBJECT_DIR, `${name}.bpf.o`);
}

/** Path of a test-only BPF object built from test/bpf/NAME.bpf.c. */
export function testObjectPath(name: string): string {
  return path.join(BPF_TEST_OBJECT_DIR, `${name}.bpf.o`);
}

/** Error thrown by every native operation: errno name, errno, operation, object. */
export interface BpfError extends Error {
  code: string;
  errno: number;
  op: string;
  target: string;
  /** libbpf's warnings around the failure (verifier log, pin mismatch) */
  log?: string;
}

export function isBpfError(e: unknown, code?: string): e is BpfError {
  return e instanceof Error && typeof (e as BpfError).op === 'string' && (code === undefined || (e as BpfError).code === code);
}


export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;
/** map_flags for an inner map template whose replacements may differ in max_entries */
export const BPF_F_INNER_MAP = 0x1000;
/** LRU hash: one LRU list per CPU instead of a common one */
export const BPF_F_NO_COMMON_LRU = 0x2;

/** A live BPF map. Keys and values are raw bytes; src/datapath/layout encodes them. */
export class BpfMap {
  readonly name: string;
  readonly type: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly perCpu: boolean;
  readonly id: number;
  private readonly valueBytes: number;

  constructor(private readonly handle: NativeMap) {
    const i = handle.info();
    this.name = i.name;
    this.type = i.type;
    this.keySize = i.keySize;
    this.valueSize = i.valueSize;
    this.maxEntries = i.maxEntries;
    this.perCpu = i.perCpu;
    this.id = i.id;
    this.valueBytes = i.valueBytes;
  }

  get fd(): number {
    return this.handle.fd();
  }

  /** Slot size of one CPU's value in a per-CPU map. */
  get perCpuSlot(): number {
    return Math.ceil(this.valueSize / 8) * 8;
  }

  lookup(key: Buffer): Buffer | null {
    return this.handle.lookup(key);
  }

  /**
   * lookup() of packed keys in one call into the addon: the values packed
   * (whole, for a per-CPU map), and one byte per key, 0 where it is absent.
   */
  lookupPacked(keys: Buffer): { values: Buffer; found: Buffer } {
    return this.handle.lookupPacked(keys);
  }

  /** Per-CPU maps: one value per possible CPU. */
  lookupPerCpu(key: Buffer): Buffer[] | null {
    const all = this.handle.lookup(key);
    return all ? this.splitPerCpu(all) : null;
  }

  /** lookupMany() of a per-CPU map: one Buffer per possible CPU for each key. */
  async lookupManyPerCpu(keys: readonly Buffer[]): Promise<Buffer[][]> {
    return (await this.lookupMany(keys)).map((all) => this.splitPerCpu(all));
  }

  private splitPerCpu(all: Buffer): Buffer[] {
    const slot = this.perCpuSlot;
    const out: Buffer[] = [];
    for (let off = 0; off < all.length; off += slot) out.push(all.subarray(off, off + this.valueSize));
    return out;
  }

  update(key: Buffer, value: Buffer, flags = BPF_ANY): void {
    this.handle.update(key, value, flags);
  }

  /** Writes the same value to every CPU's slot of a per-CPU map. */
  updatePerCpu(key: Buffer, value: Buffer, flags = BPF_ANY): void {
    this.handle.update(key, this.spread(value), flags);
  }

  delete(key: Buffer): boolean {
    return this.handle.delete(key);
  }

  *keys(): Generator<Buffer> {
    let k = this.handle.nextKey(null);
    while (k) {
      yield k;
      k = this.handle.nextKey(k);
    }
  }

  /**
   * Many keys looked up on a worker thread; the values in key order, each
   * whole (every CPU's slot of a per-CPU map), zero for a key not there.
   */
  async lookupMany(keys: readonly Buffer[]): Promise<Buffer[]> {
    if (keys.length === 0) return [];
    const all = await this.handle.lookupMany(Buffer.concat(keys));
    const size = all.length / keys.length;
    return keys.map((_, i) => all.subarray(i * size, (i + 1) * size));
  }

  /** The number of entries, counted on a worker thread (the event loop keeps turning). */
  count(): Promise<number> {
    return this.handle.count();
  }

  /**
   * Every element, read in batches of thousands per syscall. Values of per-CPU
   * maps come whole (every CPU's slot).
   */
  dump(): { keys: Buffer; values: Buffer; count: number; valueBytes: number } {
    return { ...this.handle.dump(), valueBytes: this.valueBytes };
  }

  /** One syscall for many elements. Returns how many were written. */
  batchUpdate(keys: readonly Buffer[], values: readonly Buffer[], flags = BPF_ANY): number {
    if (keys.length !== values.length) throw new RangeError(`${this.name}: ${keys.length} keys but ${values.length} values`);
    if (keys.length === 0) return 0;
    return this.handle.updateBatch(Buffer.concat(keys), Buffer.concat(values), keys.length, flags);
  }

  /** Batch update from packed arrays: `count` keys back to back, and as many values. */
  batchUpdatePacked(keys: Buffer, values: Buffer, count: number, flags = BPF_ANY): number {
    if (count === 0) return 0;
    return this.handle.updateBatch(keys, values, count, flags);
  }

  /** batchUpdatePacked() on the thread pool (the buffers are copied at the call). */
  batchUpdatePackedAsync(keys: Buffer, values: Buffer, count: number): Promise<number> {
    if (count === 0) return Promise.resolve(0);
    return this.handle.updateBatchAsync(keys, values, count);
  }

  batchDelete(keys: readonly Buffer[]): number {
    if (keys.length === 0) return 0;
    return this.handle.deleteBatch(Buffer.concat(keys), keys.length);
  }

  pin(path: string): void {
    this.handle.pin(path);
  }

  close(): void {
    this.handle.close();
  }

  private spread(value: Buffer): Buffer {
    if (!this.perCpu) return value;
    const slot = this.perCpuSlot;
    const out = Buffer.alloc(this.valueBytes);
    for (let off = 0; off < out.length; off += slot) value.copy(out, off, 0, this.valueSize);
    return out;
  }
}

export const BPF_F_TEST_XDP_LIVE_FRAMES = 2;
export const XDP_ABORTED = 0;
export const XDP_DROP = 1;
export const XDP_PASS = 2;
export const XDP_TX = 3;
export const XDP_REDIRECT = 4;
export const XDP_VERDICT_NAMES = ['XDP_ABORTED', 'XDP_DROP', 'XDP_PASS', 'XDP_TX', 'XDP_REDIRECT'] as const;

/**
 * struct xdp_md for test runs: the ingress interface and receive queue. data_end
 * is filled in by testRun, since the kernel requires it to equal the frame size.
 */
export function xdpContext(ingressIfindex: number, rxQueue = 0): Buffer {
  const ctx = Buffer.alloc(24);
  ctx.writeUInt32LE(ingressIfindex, 12);
  ctx.writeUInt32LE(rxQueue, 16);
  return ctx;
}

/** What the kernel demands of a test run's arguments, filled in for the caller. */
function withDataEnd(opts: TestRunOptions): TestRunOptions {
  // Live frames leave the machine: there is no output buffer to copy into.
  const live = ((opts.flags ?? 0) & BPF_F_TEST_XDP_LIVE_FRAMES) !== 0;
  const out = live ? { ...opts, dataSizeOut: 0 } : opts;
  if (!opts.ctx || opts.ctx.length < 8) return out;
  const ctx = Buffer.from(opts.ctx);
  ctx.writeUInt32LE(opts.data.length, 4);
  return { ...out, ctx };
}

/** A loaded BPF program. */
export class BpfProgram {
  readonly name: string;
  constructor(private readonly handle: NativeProgram) {
    this.name = handle.info().name;
  }
  get fd(): number {
    return this.handle.fd();
  }
  info(): ProgramInfo {
    return this.handle.info();
  }
  get id(): number {
    return this.handle.info().id;
  }
  /** BPF_PROG_TEST_RUN on the calling thread. */
  testRun(opts: TestRunOptions): TestRunResult {
    return this.handle.testRun(withDataEnd(opts));
  }
  /** BPF_PROG_TEST_RUN on the libuv pool: for long runs (live frames, benchmarks). */
  testRunAsync(opts: TestRunOptions): Promise<TestRunResult> {
    return this.handle.testRunAsync(withDataEnd(opts));
  }
  pin(path: string): void {
    this.handle.pin(path);
  }
  close(): void {
    this.handle.close();
  }
}

export interface OpenOptions {
  /** bpffs directory where maps marked LIBBPF_PIN_BY_NAME are pinned, or reused when already there */
  pinRoot?: string;
  /** max_entries overrides applied before load, by map name */
  maxEntries?: Record<string, number>;
  /** map_flags overrides applied before load, by map name (benchmarks compare map kinds with them) */
  mapFlags?: Record<string, number>;
  /**
   * The structs the caller encodes and decodes: each is checked against the
   * object's BTF once loaded, and a LayoutMismatchError (naming the struct, the
   * field and both values) closes the object before any map is written.
   */
  layout?: ReadonlyArray<StructCodec<unknown>>;
}

/** A BPF ELF object, opened and loaded. Handles taken from it outlive it. */
export class BpfObject {
  private constructor(
    readonly path: string,
    private readonly handle: NativeObject,
  ) {}

  static open(file: string, opts: OpenOptions = {}): BpfObject {
    const N = native();
    const obj = new BpfObject(file, new N.Object(file, opts.pinRoot ?? null, opts.maxEntries ?? {}, opts.mapFlags ?? {}));
    try {
      if (opts.layout) checkLayout(opts.layout, (name) => obj.btfStruct(name), file);
    } catch (e) {
      obj.close();
      throw e;
    }
    return obj;
  }

  programs(): string[] {
    return this.handle.programs();
  }
  maps(): string[] {
    return this.handle.maps();
  }
  map(name: string): BpfMap {
    return new BpfMap(this.handle.map(name));
  }
  program(name: string): BpfProgram {
    return new BpfProgram(this.handle.program(name));
  }
  /** `struct name` as the object's BTF lays it out, or undefined. */
  btfStruct(name: string): BtfStruct | undefined {
    return this.handle.btfStruct(name) ?? undefined;
  }
  close(): void {
    this.handle.close();
  }
}

export function openObject(file: string, opts: OpenOptions = {}): BpfObject {
  return BpfObject.open(file, opts);
}

export function mapFromPin(pinPath: string): BpfMap {
  return new BpfMap(native().mapFromPin(pinPath));
}

export function programFromPin(pinPath: string): BpfProgram {
  return new BpfProgram(native().programFromPin(pinPath));
}

export function programFromId(id: number): BpfProgram {
  return new BpfProgram(native().programFromId(id));
}

export interface CreateMapOptions {
  type: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags?: number;
  name?: string;
  /** for map-in-map outer maps: a template inner map */
  innerMap?: BpfMap;
}

export function createMap(o: CreateMapOptions): BpfMap {
  return new BpfMap(
    native().createMap(o.type, o.keySize, o.valueSize, o.maxEntries, o.flags ?? 0, o.name ?? '', o.innerMap?.fd),
  );
}

export type XdpMode = 'native' | 'generic';

function modeFlags(mode: XdpMode): number {
  const F = native().XDP_FLAGS;
  return mode === 'native' ? F.DRV_MODE : F.SKB_MODE;
}

export interface AttachOptions {
  mode: XdpMode;
  /** atomic replacement: succeeds only if this program is the one attached now */
  replace?: BpfProgram;
  /** fail with EBUSY instead of replacing whatever is attached */
  exclusive?: boolean;
}

/** Netlink XDP attachment: stays attached when the process exits. */
export function attachXdp(ifindex: number, prog: BpfProgram, o: AttachOptions): void {
  const N = native();
  let flags = modeFlags(o.mode);
  if (o.exclusive && !o.replace) flags |= N.XDP_FLAGS.UPDATE_IF_NOEXIST;
  N.attachXdp(ifindex, prog.fd, flags, o.replace ? o.replace.fd : -1);
}

export function detachXdp(ifindex: number, mode: XdpMode, expected?: BpfProgram): void {
  native().detachXdp(ifindex, modeFlags(mode), expected ? expected.fd : -1);
}

export interface XdpAttachment {
  progId: number;
  mode: XdpMode | 'offload' | 'multi' | 'none';
}

export function queryXdp(ifindex: number): XdpAttachment {
  const N = native();
  const q = N.queryXdp(ifindex);
  const A = N.XDP_ATTACHED;
  const mode =
    q.attachMode === A.DRV ? 'native' : q.attachMode === A.SKB ? 'generic' : q.attachMode === A.HW ? 'offload' : q.attachMode === A.MULTI ? 'multi' : 'none';
  return { progId: q.progId || q.drvProgId || q.skbProgId, mode };
}

/** bpf_link XDP attachment: lives while the link fd or its pin lives. */
export class XdpLink {
  constructor(private readonly handle: NativeLink) {}
  static create(prog: BpfProgram, ifindex: number, mode: XdpMode): XdpLink {
    return new XdpLink(native().linkXdp(prog.fd, ifindex, modeFlags(mode)));
  }
  static fromPin(pinPath: string): XdpLink {
    return new XdpLink(native().linkFromPin(pinPath));
  }
  /** Atomic program replacement; with `expected`, only if that program is current. */
  update(prog: BpfProgram, expected?: BpfProgram): void {
    this.handle.update(prog.fd, expected ? expected.fd : -1);
  }
  info(): { id: number; progId: number; ifindex: number } {
    return this.handle.info();
  }
  pin(pinPath: string): void {
    this.handle.pin(pinPath);
  }
  detach(): void {
    this.handle.detach();
  }
  close(): void {
    this.handle.close();
  }
}

export interface PerfRecord {
  cpu: number;
  data: Buffer;
}

export interface PerfBatch {
  records: PerfRecord[];
  /** samples the kernel could not store since the previous batch */
  lost: number;
}

/** Record formats of the native reader (perf_reader.cc). */
const PERF_FORMAT_RAW = 0;
const PERF_FORMAT_RECORDER = 1;

function openPerfReader(map: BpfMap, pageCount: number, format: number, onBatch: (buf: Buffer, count: number, lost: number, records: number) => void): NativePerfReader {
  const handle: NativePerfReader = new (native().PerfReader)(
    map.fd,
    pageCount,
    (buf, count, lost, records) => {
      // Acknowledged on the next turn of the event loop, so that timers and
      // I/O run between any two batches however fast the rings fill.
      setImmediate(() => handle.ack());
      onBatch(buf, count, lost, records);
    },
    format,
  );
  return handle;
}

/**
 * Drains a perf event array on a native thread; `onBatch` runs on the event loop
 * once per batch. Never keeps the process alive by itself.
 */
export class PerfReader {
  private readonly handle: NativePerfReader;
  constructor(map: BpfMap, onBatch: (b: PerfBatch) => void, pageCount = 64) {
    this.handle = openPerfReader(map, pageCount, PERF_FORMAT_RAW, (buf, count, lost) => {
      const records: PerfRecord[] = new Array(count);
      let off = 0;
      for (let i = 0; i < count; i++) {
        const cpu = buf.readUInt32LE(off);
        const len = buf.readUInt32LE(off + 4);
        records[i] = { cpu, data: buf.subarray(off + 8, off + 8 + len) };
        off += 8 + ((len + 7) & ~7);
      }
      onBatch({ records, lost });
    });
  }
  stats(): { received: number; lost: number; pollErrors: number } {
    return this.handle.stats();
  }
  close(): void {
    this.handle.close();
  }
}

/** Recorder samples as the reader thread decoded them (src/recorder/datapath.ts reads `bytes`). */
export interface RecorderSampleBatch {
  /** `count` samples in time order, in the recorder format of perf_reader.cc */
  bytes: Buffer;
  count: number;
  /** ring records taken, including any that were no sample */
  records: number;
  /** samples the kernel could not store since the previous batch */
  lost: number;
}

/** A PerfReader over the recorder's ring whose thread decodes and orders the samples. */
export class RecorderSampleReader {
  private readonly handle: NativePerfReader;
  constructor(map: BpfMap, onBatch: (b: RecorderSampleBatch) => void, pageCount = 64) {
    this.handle = openPerfReader(map, pageCount, PERF_FORMAT_RECORDER, (bytes, count, lost, records) => onBatch({ bytes, count, records, lost }));
  }
  stats(): { received: number; lost: number; pollErrors: number } {
    return this.handle.stats();
  }
  close(): void {
    this.handle.close();
  }
}
