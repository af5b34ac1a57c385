// The recorder's maps in lb.bpf.o, programmed straight from filter.ts's
// compileFilters() output (as the daemon does, without the daemon), and a
// perf-ring reader that collects the samples; for datapath tests and the
// recorder benchmark.
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { encodeTuple, entryKey, recFilterWords, type CompiledFilters } from '../src/recorder/filter';
import type { Teardown } from './fixtures';

export interface Sample {
  meta: L.RecMeta;
  /** the capLen frame bytes after the header */
  data: Buffer;
  cpu: number;
}

/** The entry's cap length: the largest of its rules', where 0 (whole frame) beats any. */
export function entryCaplen(ruleIds: readonly number[], caplenOf: (rule: number) => number): number {
  let want = -1;
  for (const r of ruleIds) {
    const c = caplenOf(r);
    if (c === 0) return 0;
    want = Math.max(want, c);
  }
  return Math.max(want, 0);
}

export class RecorderMaps {
  readonly masks: bpf.BpfMap;
  readonly entries: bpf.BpfMap;
  readonly config: bpf.BpfMap;
  readonly filter: bpf.BpfMap;
  readonly ring: bpf.BpfMap;
  readonly stats: bpf.BpfMap;

  constructor(obj: bpf.BpfObject) {
    this.masks = obj.map(L.REC_MAP_NAMES.masks);
    this.entries = obj.map(L.REC_MAP_NAMES.entries);
    this.config = obj.map(L.REC_MAP_NAMES.config);
    this.filter = obj.map(L.REC_MAP_NAMES.filter);
    this.ring = obj.map(L.REC_MAP_NAMES.ring);
    this.stats = obj.map(L.REC_MAP_NAMES.stats);
  }

  /**
   * Replaces whatever is programmed by `c`: every slot below maskSlots gets its
   * mask (a zero mask when unused), every entry its rules and cap length and
   * its bit in the filter. caplenOf: a rule's cap length, 0 = whole frame.
   */
  program(c: CompiledFilters, caplenOf: (rule: number) => number = () => 0): void {
    this.off();
    this.clearEntries();
    const zero = Buffer.alloc(L.REC_KEY.size);
    for (let i = 0; i < c.maskSlots; i++) {
      const m = c.masks.find((x) => x.index === i);
      this.masks.update(L.u32(i), m ? encodeTuple(m.bits) : zero);
    }
    const keys: Buffer[] = [];
    const values: Buffer[] = [];
    for (const e of c.entries) {
      keys.push(entryKey(e));
      values.push(L.encodeRecEntry({ rules: e.ruleMask, caplen: entryCaplen(e.ruleIds, caplenOf) }));
    }
    this.setFilter(recFilterWords(c));
    for (let i = 0; i < keys.length; i += 10_000) this.entries.batchUpdate(keys.slice(i, i + 10_000), values.slice(i, i + 10_000));
    this.nextGen();
    this.setConfig({ nMasks: c.maskSlots });
  }

  /** Changes fields of xdplb_rec_config, the others kept. */
  setConfig(change: Partial<L.RecConfig>): void {
    const c = L.decodeRecConfig(this.config.lookup(L.u32(0))!);
    this.config.update(L.u32(0), L.encodeRecConfig({ ...c, ...change }));
  }

  /** The config's gen moved on: the datapath's memos of the maps before are not used. */
  nextGen(): void {
    this.setConfig({ gen: (L.decodeRecConfig(this.config.lookup(L.u32(0))!).gen + 1) >>> 0 });
  }

  /** Writes every word of xdplb_rec_filter. */
  setFilter(words: BigUint64Array): void {
    this.filter.batchUpdate(
      Array.from(words, (_, i) => L.u32(i)),
      Array.from(words, (w) => L.u64(w)),
    );
    this.nextGen();
  }

  /** Sets or clears bits of one word of xdplb_rec_filter. */
  filterBits(word: number, bits: bigint, on: boolean): void {
    const key = L.u32(word);
    const was = this.filter.lookup(key)!.readBigUInt64LE(0);
    this.filter.update(key, L.u64(on ? was | bits : was & ~bits));
    this.nextGen();
  }

  /** n_masks = 0: the recorder is off (entries and gen stay). */
  off(): void {
    this.setConfig({ nMasks: 0 });
  }

  clearEntries(): void {
    const d = this.entries.dump();
    const keys: Buffer[] = [];
    for (let i = 0; i < d.count; i++) keys.push(d.keys.subarray(i * L.REC_KEY.size, (i + 1) * L.REC_KEY.size));
    for (let i = 0; i < keys.length; i += 10_000) this.entries.batchDelete(keys.slice(i, i + 10_000));
  }

  /** Samples written and output failures, summed over CPUs. */
  counts(): { samples: bigint; outputFailed: bigint } {
    return {
      samples: L.sumU64(this.stats.lookupPerCpu(L.u32(L.REC_STAT_SAMPLES))),
      outputFailed: L.sumU64(this.stats.lookupPerCpu(L.u32(L.REC_STAT_OUTPUT_FAILED))),
    };
  }

  close(): void {
    for (const m of [this.masks, this.entries, this.config, this.filter, this.ring, this.stats]) m.close();
  }
}

export function recorderMaps(t: Teardown, obj: bpf.BpfObject): RecorderMaps {
  const r = new RecorderMaps(obj);
  t.teardown(() => r.close());
  return r;
}

/** Collects every sample of the ring; `lost` counts what the rings could not hold. */
export class SampleCollector {
  readonly samples: Sample[] = [];
  lost = 0;
  private readonly reader: bpf.PerfReader;

  constructor(ring: bpf.BpfMap, pageCount = 64) {
    this.reader = new bpf.PerfReader(
      ring,
      (b) => {
        this.lost += b.lost;
        for (const r of b.records) {
          const meta = L.decodeRecMeta(r.data);
          this.samples.push({ meta, data: Buffer.from(r.data.subarray(L.REC_META.size, L.REC_META.size + meta.capLen)), cpu: r.cpu });
        }
      },
      pageCount,
    );
  }

  /**
   * Waits until `n` samples (or losses) have arrived, or `ms` have passed, then
   * `settleMs` more for any extra; returns every sample collected and forgets them.
   */
  async next(n: number, ms = 5000, settleMs = 50): Promise<Sample[]> {
    const until = Date.now() + ms;
    while (this.samples.length + this.lost < n && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, settleMs));
    return this.samples.splice(0, this.samples.length);
  }

  close(): void {
    this.reader.close();
  }
}

export function collector(t: Teardown, ring: bpf.BpfMap, pageCount?: number): SampleCollector {
  const c = new SampleCollector(ring, pageCount);
  t.teardown(() => c.close());
  return c;
}
