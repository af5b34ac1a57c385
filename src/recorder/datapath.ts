// The recorder's side of the datapath: its six pinned maps, programmed from
// compiled filters, and the perf ring drained into batches of decoded samples.
//
// Maps (xdp/maps.h, pinned by name under node.bpffs with the load balancer's):
//   xdplb_rec_masks    ARRAY 32 x struct xdplb_rec_key       the mask of each slot
//   xdplb_rec_entries  HASH key xdplb_rec_key -> xdplb_rec_entry { rules, caplen }
//   xdplb_rec_config   ARRAY 1 x { n_masks, gen, flags }     0 masks = recorder off
//   xdplb_rec_filter   ARRAY 16384 x u64                      a bit per entry key hash
//   xdplb_rec_ring     PERF_EVENT_ARRAY                       one ring per CPU
//   xdplb_rec_stats    PERCPU_ARRAY [0] samples, [1] output failures
//
// Writes follow diffCompiled's order (entries that go, masks, n_masks, entries
// that come), so a packet never matches a rule it matches under neither the old
// nor the new set; an entry whose cap length changed is rewritten with the
// upserts. The filter's bits for the new set are added before its entries come
// and the old set's other bits removed after its entries went: an entry never
// sits behind a clear bit, where the datapath would not look it up. The last
// write of every change moves xdplb_rec_config.gen on, so the datapath drops
// the matches it memoized (per CPU, xdplb_rec_memo, not pinned) under the
// maps before it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as bpf from '../datapath/bpf';
import * as L from '../datapath/layout';
import { XdplbError } from '../control/errors';
import { diffCompiled, entryKey, recFilterWords, type CompiledFilters } from './filter';
import type { CapturePoint } from './pcap';
import { NO_BACKEND } from '../maglev';

const POINTS: Record<number, CapturePoint> = { [L.CAPTURE_IN]: 'in', [L.CAPTURE_OUT]: 'out' };

/** One captured frame as the datapath sent it: the readable form of a batch's sample, for tests and tools. */
export interface Sample {
  /** bpf_ktime_get_ns(): CLOCK_MONOTONIC */
  tsNs: bigint;
  /** bit r set: the frame matched rule r */
  rules: bigint;
  origLen: number;
  point: CapturePoint;
  ifindex: number;
  /** backend chosen (outbound point), undefined at the inbound point */
  backendId?: number;
  family: number;
  /** the CPU whose ring held it */
  cpu?: number;
  /** cap_len bytes of the frame */
  data: Buffer;
}

/**
 * Samples as the native reader thread hands them over (the recorder format of
 * src/native/perf_reader.cc): in time order within the batch, each a
 * SAMPLE_HEADER_LEN header (offsets in SAMPLE) and its frame, padded to 8
 * bytes. Times are split into seconds and nanoseconds so that the event loop
 * orders and stamps samples with plain numbers.
 */
export interface SampleBatch {
  bytes: Buffer;
  /** samples in bytes */
  count: number;
  /** records the reader handed over (samples, and any it could not decode) */
  records: number;
  /** samples the kernel could not store in a ring since the previous batch */
  lost: number;
}

export const SAMPLE_HEADER_LEN = 40;
export const SAMPLE = { sec: 0, nsec: 4, rulesLo: 8, rulesHi: 12, origLen: 16, capLen: 20, ifindex: 24, backendId: 28, point: 32, family: 33, cpu: 36 } as const;

/** The bytes from one sample's header to the next one's. */
export const sampleSpan = (capLen: number): number => SAMPLE_HEADER_LEN + ((capLen + 7) & ~7);

const NS_PER_S = 1_000_000_000n;

/** A batch as the reader thread makes it, sorted by time as it sorts (ties keep their order): for tests and benchmarks. */
export function encodeSampleBatch(samples: readonly Sample[], lost = 0, records = samples.length): SampleBatch {
  const sorted = samples
    .map((s, i) => ({ s, i }))
    .sort((a, b) => (a.s.tsNs < b.s.tsNs ? -1 : a.s.tsNs > b.s.tsNs ? 1 : a.i - b.i))
    .map((x) => x.s);
  const bytes = Buffer.alloc(sorted.reduce((n, s) => n + sampleSpan(s.data.length), 0));
  let off = 0;
  for (const s of sorted) {
    bytes.writeUInt32LE(Number(s.tsNs / NS_PER_S), off + SAMPLE.sec);
    bytes.writeUInt32LE(Number(s.tsNs % NS_PER_S), off + SAMPLE.nsec);
    bytes.writeBigUInt64LE(BigInt.asUintN(64, s.rules), off + SAMPLE.rulesLo);
    bytes.writeUInt32LE(s.origLen, off + SAMPLE.origLen);
    bytes.writeUInt32LE(s.data.length, off + SAMPLE.capLen);
    bytes.writeUInt32LE(s.ifindex, off + SAMPLE.ifindex);
    bytes.writeUInt32LE(s.backendId ?? NO_BACKEND, off + SAMPLE.backendId);
    bytes.writeUInt8(s.point === 'in' ? L.CAPTURE_IN : L.CAPTURE_OUT, off + SAMPLE.point);
    bytes.writeUInt8(s.family, off + SAMPLE.family);
    bytes.writeUInt32LE(s.cpu ?? 0, off + SAMPLE.cpu);
    s.data.copy(bytes, off + SAMPLE_HEADER_LEN);
    off += sampleSpan(s.data.length);
  }
  return { bytes, count: sorted.length, records, lost };
}

/** The samples of a batch in its order (copies of their frames). */
export function decodeSampleBatch(b: SampleBatch): Sample[] {
  const out: Sample[] = [];
  let off = 0;
  for (let i = 0; i < b.count; i++) {
    const capLen = b.bytes.readUInt32LE(off + SAMPLE.capLen);
    const backendId = b.bytes.readUInt32LE(off + SAMPLE.backendId);
    out.push({
      tsNs: BigInt(b.bytes.readUInt32LE(off + SAMPLE.sec)) * NS_PER_S + BigInt(b.bytes.readUInt32LE(off + SAMPLE.nsec)),
      rules: b.bytes.readBigUInt64LE(off + SAMPLE.rulesLo),
      origLen: b.bytes.readUInt32LE(off + SAMPLE.origLen),
      point: POINTS[b.bytes.readUInt8(off + SAMPLE.point)],
      ifindex: b.bytes.readUInt32LE(off + SAMPLE.ifindex),
      backendId: backendId === NO_BACKEND ? undefined : backendId,
      family: b.bytes.readUInt8(off + SAMPLE.family),
      cpu: b.bytes.readUInt32LE(off + SAMPLE.cpu),
      data: Buffer.from(b.bytes.subarray(off + SAMPLE_HEADER_LEN, off + SAMPLE_HEADER_LEN + capLen)),
    });
    off += sampleSpan(capLen);
  }
  return out;
}

/** What the recorder needs of the datapath; RecorderMaps is the real one, tests pass fakes. */
export interface RecorderDatapath {
  /** Makes the maps hold `next`; `capOf(rule)` is each rule's cap length (0 = whole frames). */
  apply(next: CompiledFilters, capOf: (rule: number) => number): void;
  /** Starts draining the ring; the returned function stops it. */
  read(onBatch: (b: SampleBatch) => void): () => void;
  /** Samples emitted and perf output failures, summed over CPUs. */
  stats(): { emitted: number; outputFailures: number };
}

const u32 = L.u32;
/**
 * Pages of each CPU's ring (4 MiB): the datapath copies a burst at line rate
 * into one CPU's ring far faster than any reader drains it, so the ring, not
 * the reader's pace, decides how large a burst is captured whole.
 */
export const RING_PAGES = 1024;
const MAP_KEYS = ['masks', 'entries', 'config', 'filter', 'ring', 'stats'] as const;
type MapKey = (typeof MAP_KEYS)[number];

export class RecorderMaps implements RecorderDatapath {
  private current?: CompiledFilters;
  /** entry key (latin1) -> encoded value as written */
  private values = new Map<string, string>();
  /** xdplb_rec_filter as written */
  private readonly filterWords = new BigUint64Array(L.REC_FILTER_WORDS);
  /** xdplb_rec_config.gen as written */
  private gen = 0;

  private constructor(private readonly maps: Record<MapKey, bpf.BpfMap>) {}

  /**
   * The recorder maps pinned under `bpffs`, or undefined when the loaded
   * program has none (an object built without the recorder).
   */
  static open(bpffs: string): RecorderMaps | undefined {
    const pins = MAP_KEYS.map((k) => path.join(bpffs, L.REC_MAP_NAMES[k]));
    if (!pins.every((p) => fs.existsSync(p))) return undefined;
    const maps = {} as Record<MapKey, bpf.BpfMap>;
    MAP_KEYS.forEach((k, i) => (maps[k] = bpf.mapFromPin(pins[i])));
    return new RecorderMaps(maps);
  }

  /**
   * Recordings do not survive a daemon restart (their sinks were files and
   * streams of the old process), so whatever a previous daemon left in the maps
   * is cleared: the recorder off first, then its entries and masks.
   */
  reset(): void {
    const was = this.maps.config.lookup(u32(0));
    this.gen = ((was ? L.decodeRecConfig(was).gen : 0) + 1) >>> 0;
    this.maps.config.update(u32(0), L.encodeRecConfig({ nMasks: 0, gen: this.gen }));
    const keys = [...this.maps.entries.keys()];
    if (keys.length) this.maps.entries.batchDelete(keys);
    const zero = Buffer.alloc(L.REC_KEY.size);
    for (let i = 0; i < this.maps.masks.maxEntries; i++) this.maps.masks.update(u32(i), zero);
    const words = this.maps.filter.dump();
    for (let i = 0; i < words.count; i++) this.filterWords[words.keys.readUInt32LE(i * 4)] = words.values.readBigUInt64LE(i * 8);
    this.writeFilter(new BigUint64Array(L.REC_FILTER_WORDS));
    this.current = undefined;
    this.values.clear();
  }

  /** Writes the words of xdplb_rec_filter that differ from `want`. */
  private writeFilter(want: BigUint64Array): void {
    const keys: Buffer[] = [];
    const values: Buffer[] = [];
    for (let w = 0; w < want.length; w++) {
      if (want[w] === this.filterWords[w]) continue;
      keys.push(u32(w));
      values.push(L.u64(want[w]));
      this.filterWords[w] = want[w];
    }
    if (keys.length) this.maps.filter.batchUpdate(keys, values);
  }

  apply(next: CompiledFilters, capOf: (rule: number) => number): void {
    const d = diffCompiled(this.current, next);
    if (d.deleteEntries.length) this.maps.entries.batchDelete(d.deleteEntries);
    for (const k of d.deleteEntries) this.values.delete(k.toString('latin1'));
    for (const m of d.masks) this.maps.masks.update(u32(m.index), m.mask);
    this.maps.config.update(u32(0), L.encodeRecConfig({ nMasks: d.maskSlots, gen: this.gen }));
    const want = recFilterWords(next);
    this.writeFilter(want.map((w, i) => w | this.filterWords[i]));

    const keys: Buffer[] = [];
    const values: Buffer[] = [];
    for (const e of next.entries) {
      const key = entryKey(e);
      const caplen = e.ruleIds.some((r) => capOf(r) === 0) ? 0 : Math.max(...e.ruleIds.map(capOf));
      const value = L.encodeRecEntry({ rules: e.ruleMask, caplen });
      const k = key.toString('latin1');
      const v = value.toString('latin1');
      if (this.values.get(k) === v) continue;
      keys.push(key);
      values.push(value);
      this.values.set(k, v);
    }
    if (keys.length) this.maps.entries.batchUpdate(keys, values);
    this.writeFilter(want);
    this.gen = (this.gen + 1) >>> 0;
    this.maps.config.update(u32(0), L.encodeRecConfig({ nMasks: d.maskSlots, gen: this.gen }));
    this.current = next;
  }

  read(onBatch: (b: SampleBatch) => void): () => void {
    const reader = new bpf.RecorderSampleReader(this.maps.ring, onBatch, RING_PAGES);
    return () => reader.close();
  }

  stats(): { emitted: number; outputFailures: number } {
    const sum = (i: number) => Number(L.sumU64(this.maps.stats.lookupPerCpu(u32(i))));
    return { emitted: sum(L.REC_STAT_SAMPLES), outputFailures: sum(L.REC_STAT_OUTPUT_FAILED) };
  }

  close(): void {
    for (const m of Object.values(this.maps)) m.close();
  }
}

/** FAILED_PRECONDITION for a daemon whose datapath has no recorder maps. */
export function recorderUnavailable(): XdplbError {
  return XdplbError.failedPrecondition('the recorder is not available: the loaded datapath has no xdplb_rec_* maps');
}
