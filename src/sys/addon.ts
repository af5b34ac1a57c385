// The native addon (src/native, built by cmake-js into build/Release): its
// one loader and the shapes of what it returns. Nothing else requires the
// binary; src/datapath/bpf.ts is its BPF face, src/sys/system.ts the rest.
import * as path from 'node:path';
import { PACKAGE_ROOT } from './paths';

export interface MapInfo {
  name: string;
  id: number;
  /** libbpf's name for the type: 'hash', 'array', 'percpu_array', 'lru_percpu_hash', ... */
  type: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  /** bytes of a whole value as the syscall sees it (per-CPU: slot × possible CPUs) */
  valueBytes: number;
  perCpu: boolean;
}

export interface ProgramInfo {
  name: string;
  id: number;
  type: string;
  xlatedBytes: number;
  jitedBytes: number;
  /** instructions after verification and rewriting (xlated / 8) */
  instructions: number;
  /** instructions the verifier processed (its complexity measure) */
  verifiedInstructions: number;
}

export interface TestRunOptions {
  data: Buffer;
  /** struct xdp_md: see xdpContext() */
  ctx?: Buffer;
  repeat?: number;
  /** BPF_F_TEST_XDP_LIVE_FRAMES sends the frames for real */
  flags?: number;
  /** live frames: frames per batch (kernel default 64) */
  batchSize?: number;
  /** room for the output packet; defaults to data.length + 512 */
  dataSizeOut?: number;
}

export interface TestRunResult {
  retval: number;
  data: Buffer;
  /** mean nanoseconds per run, as the kernel measured it */
  duration: number;
}

export interface NativeMap {
  info(): MapInfo;
  lookup(key: Buffer): Buffer | null;
  update(key: Buffer, value: Buffer, flags: number): void;
  delete(key: Buffer): boolean;
  nextKey(key: Buffer | null): Buffer | null;
  updateBatch(keys: Buffer, values: Buffer, count: number, flags: number): number;
  updateBatchAsync(keys: Buffer, values: Buffer, count: number): Promise<number>;
  deleteBatch(keys: Buffer, count: number): number;
  dump(): { keys: Buffer; values: Buffer; count: number };
  count(): Promise<number>;
  lookupMany(keys: Buffer): Promise<Buffer>;
  lookupPacked(keys: Buffer): { values: Buffer; found: Buffer };
  pin(path: string): void;
  fd(): number;
  close(): void;
}
export interface NativeProgram {
  info(): ProgramInfo;
  testRun(o: TestRunOptions): TestRunResult;
  testRunAsync(o: TestRunOptions): Promise<TestRunResult>;
  pin(path: string): void;
  fd(): number;
  close(): void;
}
export interface NativeLink {
  update(progFd: number, oldFd: number): void;
  pin(path: string): void;
  detach(): void;
  info(): { id: number; progId: number; ifindex: number };
  close(): void;
}
/** A struct as a BPF object's BTF describes it (BpfObject.btfStruct). */
export interface BtfStruct {
  size: number;
  members: ReadonlyArray<{ name: string; offset: number; size: number }>;
}

export interface NativeObject {
  programs(): string[];
  maps(): string[];
  map(name: string): NativeMap;
  program(name: string): NativeProgram;
  btfStruct(name: string): BtfStruct | null;
  close(): void;
}
export interface NativePerfReader {
  close(): void;
  /** the batch handed over last is done with: the reader thread may queue the next */
  ack(): void;
  stats(): { received: number; lost: number; pollErrors: number };
}
export interface Native {
  Object: new (path: string, pinRoot: string | null, maxEntries: Record<string, number>, mapFlags: Record<string, number>) => NativeObject;
  PerfReader: new (
    mapFd: number,
    pageCount: number,
    onBatch: (buf: Buffer, count: number, lost: number, records: number) => void,
    format?: number,
  ) => NativePerfReader;
  mapFromPin(path: string): NativeMap;
  createMap(type: string, keySize: number, valueSize: number, maxEntries: number, flags: number, name: string, innerFd?: number): NativeMap;
  programFromPin(path: string): NativeProgram;
  programFromId(id: number): NativeProgram;
  attachXdp(ifindex: number, progFd: number, flags: number, oldFd: number): void;
  detachXdp(ifindex: number, flags: number, oldFd: number): void;
  queryXdp(ifindex: number): { progId: number; drvProgId: number; skbProgId: number; hwProgId: number; attachMode: number };
  linkXdp(progFd: number, ifindex: number, flags: number): NativeLink;
  linkFromPin(path: string): NativeLink;
  netnsEnter(path: string): number;
  netnsRestore(fd: number): void;
  ifIndex(name: string): number;
  possibleCpus(): number;
  sdNotify(state: string): boolean;
  flockExclusive(fd: number): boolean;
  XDP_FLAGS: { UPDATE_IF_NOEXIST: number; SKB_MODE: number; DRV_MODE: number; REPLACE: number };
  XDP_ATTACHED: { NONE: number; DRV: number; SKB: number; HW: number; MULTI: number };
}

let nativeModule: Native | undefined;
export function native(): Native {
  if (!nativeModule) {
    const file = path.join(PACKAGE_ROOT, 'build', 'Release', 'xdplb_native.node');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    nativeModule = require(file) as Native;
  }
  return nativeModule;
}
