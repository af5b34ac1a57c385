// The recordings of one daemon: each holds a datapath rule (a bit of the 64-bit
// rule mask), its filters, a cap length, one sink and its stop conditions.
// Starting or stopping one recompiles the filters of all running recordings and
// writes only the difference to the maps; a start that cannot be had (bad sink,
// too many shapes, 64 recordings running) changes nothing.
//
// Samples: the perf reader runs only while at least one recording holds a rule:
// without rules the program emits nothing, so an idle recorder costs no ring
// memory and no polling thread. It is started before a rule is written (no
// sample can find the ring without a reader) and closed after the last rule is
// gone and the rings are drained.
//
// Order: the kernel's rings are per CPU, so a batch holds each CPU's samples in
// order but not the CPUs interleaved. Samples wait in a reorder window until
// they are REORDER_MS old (the reader drains every ring every 50 ms), then go
// out sorted by time, so every file and stream has non-decreasing timestamps.
//
// Stopping on request (or time, or shutdown): the rule leaves the maps, then
// the recording still takes what the rings held — until the reader has handed
// over as many samples as the datapath counts emitted — so a stop after the
// traffic loses none of it.
//
// Losses: a full ring makes the kernel drop samples and report only how many,
// not which rules they matched; every recording running when the loss is
// reported counts it in lost_in_ring, so a loss is never hidden.
//
// Recordings do not survive a daemon restart (their files are closed and their
// streams end with the process): the daemon clears the maps at start.
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { XdplbError, isXdplbError } from '../control/errors';
import { compileFilters, MAX_RULES, type CompiledFilters, type Filter, type RuleFilters } from './filter';
import { KernelClock, PcapEncoder, packetComment, snaplenFor, type CaptureFormat } from './pcap';
import { recorderUnavailable, type RecorderDatapath, type Sample, type SampleBatch } from './datapath';
import { FileSink, fileSet, recordingDir, sharedFile, type FileNaming, type FileSet } from './sink-file';
import { StreamSink, type StreamTarget } from './sink-stream';
import type { RecordingFile, Sink } from './sink';
import type { FileSpec, RecordingSpec, StopConditions, StreamSpec } from './request';

export type RecordingState = 'running' | 'stopped' | 'failed';
export type StopReason = 'requested' | 'packets' | 'bytes' | 'duration' | 'client_gone' | 'shutdown' | 'error';

export interface RecordingStats {
  packetsWritten: number;
  bytesWritten: number;
  bytesCaptured: number;
  lostInRing: number;
  droppedSlowClient: number;
  droppedWriteError: number;
}

/** A recording as the API shows it. */
export interface RecordingView {
  id: string;
  name: string;
  state: RecordingState;
  stopReason?: StopReason;
  error?: string;
  filters: Filter[];
  capLength: number;
  stop: StopConditions;
  format: CaptureFormat;
  /** file recordings */
  file?: FileSpec;
  ruleId: number;
  startedAt: number;
  stoppedAt?: number;
  stats: RecordingStats;
  files: RecordingFile[];
}

export interface RecorderOptions {
  /** undefined: the loaded datapath has no recorder; every start is FAILED_PRECONDITION */
  datapath?: RecorderDatapath;
  /** node.recorderDir */
  dir: string;
  log: Logger;
  /** the address of a backend id, for pcapng comments */
  backendName?(id: number): string | undefined;
  /** stopped recordings kept for ListRecordings (default 16) */
  keepStopped?: number;
  /** a recording started or stopped */
  onChange?(): void;
}

/** How long samples wait to be put in time order across CPUs. */
export const REORDER_MS = 100;
/** The most a stop waits for the reader to hand over what the datapath emitted before the rule went. */
export const DRAIN_TIMEOUT_MS = 2000;
const TICK_MS = 25;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class Recording {
  state: RecordingState = 'running';
  /** its rule is out of the maps; samples still in the rings are being drained */
  stopping = false;
  /** its sink failed: what it refuses from now on is a write error, not a slow reader */
  writeFailed = false;
  stopReason?: StopReason;
  error?: string;
  stoppedAt?: number;
  readonly stats: RecordingStats = { packetsWritten: 0, bytesWritten: 0, bytesCaptured: 0, lostInRing: 0, droppedSlowClient: 0, droppedWriteError: 0 };
  readonly startedAt = Date.now();
  /** its bit in a sample's rule mask */
  readonly bit: bigint;
  timer?: NodeJS.Timeout;
  sink!: Sink;
  readonly done: Promise<void>;
  resolveDone!: () => void;

  constructor(
    readonly id: string,
    readonly ruleId: number,
    readonly spec: RecordingSpec,
    readonly encoder: PcapEncoder,
    readonly clock: KernelClock,
    /** samples older than this are not its own (a previous holder of the rule) */
    readonly startKtime: bigint,
    readonly file?: FileSpec,
  ) {
    this.done = new Promise((r) => (this.resolveDone = r));
    this.bit = 1n << BigInt(ruleId);
  }

  view(): RecordingView {
    return {
      id: this.id,
      name: this.spec.name,
      state: this.state,
      stopReason: this.stopReason,
      error: this.error,
      filters: this.spec.filters,
      capLength: this.spec.capLength,
      stop: this.spec.stop,
      format: this.spec.format,
      file: this.file,
      ruleId: this.ruleId,
      startedAt: this.startedAt,
      stoppedAt: this.stoppedAt,
      stats: { ...this.stats, bytesWritten: this.sink.bytesWritten },
      files: this.sink instanceof FileSink ? this.sink.list() : [],
    };
  }
}

export class Recorder {
  private readonly recordings = new Map<string, Recording>();
  /** rule id -> the recording that holds it (running or draining) */
  private readonly byRule = new Map<number, Recording>();
  private stopped: Recording[] = [];
  private compiled?: CompiledFilters;
  private nextRule = 0;
  private stopReader?: () => void;
  private tick?: NodeJS.Timeout;
  private pending: Sample[] = [];
  /** the datapath's emitted-samples count when the reader started, and the records the reader has handed over since */
  private emittedBase = 0;
  private seen = 0;
  /** samples arrived since pending was last sorted */
  private unsorted = false;
  private dir: string;
  private totalPackets = 0;
  private totalLost = 0;
  private closed = false;

  constructor(private readonly o: RecorderOptions) {
    this.dir = o.dir;
  }

  /** The recording directory for recordings started from now on (a reload may change it). */
  setDir(dir: string): void {
    this.dir = dir;
  }

  private allocRule(): number {
    if (this.byRule.size >= MAX_RULES)
      throw XdplbError.exhausted(`${MAX_RULES} recordings hold every datapath rule (the rule mask is ${MAX_RULES} bits); stop one first`, 'recordings');
    // Round robin: a rule just given up is the last to be handed out again, so
    // late samples of its old holder are unlikely even before the time check.
    for (let n = 0; n < MAX_RULES; n++) {
      const r = (this.nextRule + n) % MAX_RULES;
      if (!this.byRule.has(r)) {
        this.nextRule = (r + 1) % MAX_RULES;
        return r;
      }
    }
    throw XdplbError.internal('no free rule');
  }

  private newId(): string {
    for (;;) {
      const id = randomBytes(4).toString('hex');
      if (!this.recordings.has(id) && !this.stopped.some((r) => r.id === id)) return id;
    }
  }

  /** The filters of every recording holding a rule, plus `extra`, compiled against what the maps hold. */
  private compile(extra?: { ruleId: number; filters: readonly Filter[] }): CompiledFilters {
    const rules: RuleFilters[] = [...this.byRule.values()].filter((r) => !r.stopping).map((r) => ({ ruleId: r.ruleId, filters: r.spec.filters }));
    if (extra) rules.push(extra);
    try {
      return compileFilters(rules, { previous: this.compiled });
    } catch (e) {
      if (isXdplbError(e, 'RESOURCE_EXHAUSTED'))
        throw new XdplbError('RESOURCE_EXHAUSTED', `${e.reason} (counting the filters of the ${rules.length - 1} running recordings)`, { field: 'include' });
      throw e;
    }
  }

  private capOf = (rule: number): number => this.byRule.get(rule)?.spec.capLength ?? 0;

  private apply(next: CompiledFilters): void {
    const dp = this.o.datapath!;
    try {
      dp.apply(next, this.capOf);
    } catch (e) {
      // Put back what was there: a half-written set would match wrong rules.
      try {
        dp.apply(this.compiled ?? compileFilters([]), this.capOf);
      } catch (e2) {
        this.o.log.error({ error: (e2 as Error).message }, 'recorder maps could not be restored');
      }
      throw XdplbError.internal(`recorder maps: ${(e as Error).message}`, e);
    }
    this.compiled = next;
  }

  /**
   * Starts a recording into files; returns it RUNNING. Its files may not
   * overlap those a running recording may still write (fileSet in
   * sink-file.ts): FAILED_PRECONDITION naming that recording.
   */
  startFile(spec: RecordingSpec, file: FileSpec): RecordingView {
    const rec = this.begin(spec, file, (encoder, id, onError) => {
      const naming: FileNaming = file.fileName ? { kind: 'name', name: file.fileName } : { kind: 'prefix', prefix: file.prefix, startSec: Math.floor(Date.now() / 1000), id };
      const files = fileSet(recordingDir(this.dir), naming, encoder.extension, file.rotation);
      this.refuseOverlap(files, file.fileName ? 'file_sink.file_name' : 'file_sink.file_prefix');
      return FileSink.open({ files, overwrite: file.overwrite, header: encoder.header(), onError });
    });
    return rec.view();
  }

  private refuseOverlap(files: FileSet, field: string): void {
    for (const other of this.recordings.values()) {
      if (!(other.sink instanceof FileSink)) continue;
      const shared = sharedFile(files, other.sink.fileSet);
      if (shared === undefined) continue;
      const who = `recording ${other.id}${other.spec.name ? ` (${JSON.stringify(other.spec.name)})` : ''}`;
      throw XdplbError.failedPrecondition(
        `${files.describe()} and the files of running ${who} (${other.sink.fileSet.describe()}) would share ${shared}; stop it first or choose another name`,
        field,
      );
    }
  }

  /**
   * Starts a recording into a live stream. `target` gets the capture file's
   * bytes; its end() is called once the recording has stopped, when get(id)
   * gives the final view.
   */
  startStream(spec: RecordingSpec, stream: StreamSpec, target: StreamTarget): RecordingView {
    const rec = this.begin(spec, undefined, (encoder) => new StreamSink(target, encoder.header(), stream.maxBuffered));
    return rec.view();
  }

  private begin(spec: RecordingSpec, file: FileSpec | undefined, makeSink: (e: PcapEncoder, id: string, onError: (e: Error) => void) => Sink): Recording {
    if (this.closed) throw XdplbError.unavailable('the daemon is stopping');
    if (!this.o.datapath) throw recorderUnavailable();
    const ruleId = this.allocRule();
    const next = this.compile({ ruleId, filters: spec.filters });
    const encoder = new PcapEncoder({ format: spec.format, snaplen: snaplenFor(spec.capLength) });
    const id = this.newId();
    const clock = KernelClock.calibrate();
    const rec = new Recording(id, ruleId, spec, encoder, clock, KernelClock.nowNs(), file);
    rec.sink = makeSink(encoder, id, (e) => {
      rec.writeFailed = true;
      void this.finish(rec, 'error', e.message);
    });
    this.byRule.set(ruleId, rec);
    try {
      this.ensureReader();
      this.apply(next);
    } catch (e) {
      this.byRule.delete(ruleId);
      this.releaseReader();
      void rec.sink.discard();
      throw e;
    }
    this.recordings.set(id, rec);
    this.o.onChange?.();
    if (spec.stop.durationMs) rec.timer = setTimeout(() => void this.finish(rec, 'duration'), spec.stop.durationMs);
    this.o.log.info({ recording: id, rule: ruleId, name: spec.name, filters: spec.filters.length, sink: file ? 'file' : 'stream', masks: next.maskSlots, entries: next.entries.length }, 'recording started');
    return rec;
  }

  private ensureReader(): void {
    if (this.stopReader) return;
    this.emittedBase = this.o.datapath!.stats().emitted;
    this.seen = 0;
    this.stopReader = this.o.datapath!.read((b) => this.onBatch(b));
    this.tick = setInterval(() => this.release(false), TICK_MS);
    this.tick.unref();
  }

  /** The reader closes once no recording holds a rule. */
  private releaseReader(): void {
    if (this.byRule.size > 0 || !this.stopReader) return;
    this.stopReader();
    this.stopReader = undefined;
    clearInterval(this.tick);
    this.release(true);
  }

  private onBatch(b: SampleBatch): void {
    this.seen += b.records;
    if (b.lost) {
      this.totalLost += b.lost;
      for (const r of this.byRule.values()) r.stats.lostInRing += b.lost;
    }
    for (const s of b.samples) this.pending.push(s);
    if (b.samples.length) this.unsorted = true;
    this.release(false);
  }

  /**
   * Waits (at most DRAIN_TIMEOUT_MS) until the reader has handed over every
   * sample the datapath has emitted since it started — the kernel counts them
   * — and then until they have left the reorder window.
   */
  private async drain(): Promise<void> {
    const target = this.o.datapath!.stats().emitted - this.emittedBase;
    const deadline = Date.now() + DRAIN_TIMEOUT_MS;
    while (this.seen < target && Date.now() < deadline) await sleep(TICK_MS);
    await sleep(REORDER_MS + 2 * TICK_MS);
  }

  /** Hands out the samples older than the reorder window (all of them with `all`), in time order. */
  private release(all: boolean): void {
    if (this.pending.length === 0) return;
    if (this.unsorted) this.pending.sort((a, b) => a.order - b.order);
    this.unsorted = false;
    const cutoff = KernelClock.nowNs() - BigInt(REORDER_MS) * 1_000_000n;
    let n = 0;
    while (n < this.pending.length && (all || this.pending[n].tsNs <= cutoff)) n++;
    if (n === 0) return;
    const ready = this.pending.slice(0, n);
    this.pending = this.pending.slice(n);
    for (const s of ready) this.dispatch(s);
  }

  private dispatch(s: Sample): void {
    for (const rec of this.byRule.values()) if (s.rules & rec.bit && rec.state === 'running' && s.tsNs >= rec.startKtime) this.take(rec, s);
  }

  private take(rec: Recording, s: Sample): void {
    const comment = rec.spec.format === 'pcapng' ? packetComment({ id: rec.ruleId, name: rec.spec.name || undefined }, s.backendId === undefined ? undefined : this.o.backendName?.(s.backendId)) : undefined;
    const record = rec.encoder.packet({ tsNs: rec.clock.toWallNs(s.tsNs), data: s.data, origLen: Math.max(s.origLen, s.data.length), point: s.point, comment });
    if (!rec.sink.write(record)) {
      if (rec.writeFailed) rec.stats.droppedWriteError++;
      else rec.stats.droppedSlowClient++;
      return;
    }
    rec.stats.packetsWritten++;
    rec.stats.bytesCaptured += Math.min(s.data.length, rec.encoder.snaplen);
    this.totalPackets++;
    const stop = rec.spec.stop;
    if (stop.packets && rec.stats.packetsWritten >= stop.packets) void this.finish(rec, 'packets');
    else if (stop.bytes && rec.stats.bytesCaptured >= stop.bytes) void this.finish(rec, 'bytes');
  }

  /**
   * Stops a recording: its rule leaves the maps at once; unless it stopped on a
   * count (it has what it wanted) or its caller is gone, the samples already in
   * the rings are drained into it first. Then its sink closes.
   */
  private async finish(rec: Recording, reason: StopReason, error?: string): Promise<void> {
    if (rec.state !== 'running' || rec.stopping) return rec.done;
    rec.stopping = true;
    clearTimeout(rec.timer);
    try {
      this.apply(this.compile());
    } catch (e) {
      this.o.log.error({ recording: rec.id, error: (e as Error).message }, 'recording rule not removed from the maps');
    }
    if (reason === 'requested' || reason === 'duration' || reason === 'shutdown') await this.drain();
    rec.state = reason === 'error' ? 'failed' : 'stopped';
    rec.stopReason = reason;
    if (error) rec.error = error;
    rec.stoppedAt = Date.now();
    this.byRule.delete(rec.ruleId);
    this.releaseReader();
    await rec.sink.close();
    this.recordings.delete(rec.id);
    this.stopped.push(rec);
    this.stopped = this.stopped.slice(-(this.o.keepStopped ?? 16));
    this.o.log.info({ recording: rec.id, reason, error, ...rec.view().stats }, 'recording stopped');
    this.o.onChange?.();
    rec.resolveDone();
  }

  private find(id: string): Recording {
    const rec = this.recordings.get(id) ?? this.stopped.find((r) => r.id === id);
    if (!rec) throw XdplbError.notFound('recording', JSON.stringify(id), 'id');
    return rec;
  }

  /** Stops a recording and returns its final view; a stopped one is returned as it is. */
  async stop(id: string, reason: StopReason = 'requested'): Promise<RecordingView> {
    const rec = this.find(id);
    await this.finish(rec, reason);
    await rec.done;
    return rec.view();
  }

  /** Its final view, once it has stopped (at once for a stopped one). */
  async whenStopped(id: string): Promise<RecordingView> {
    const rec = this.find(id);
    await rec.done;
    return rec.view();
  }

  get(id: string): RecordingView {
    return this.find(id).view();
  }

  /** Running first, then (with includeStopped) the stopped ones kept; each group by start time. */
  list(includeStopped = false): RecordingView[] {
    const byStart = (a: Recording, b: Recording) => a.startedAt - b.startedAt;
    const out = [...this.recordings.values()].sort(byStart);
    if (includeStopped) out.push(...[...this.stopped].sort(byStart));
    return out.map((r) => r.view());
  }

  /** For the metrics. */
  totals(): { active: number; packets: number; lost: number } {
    return { active: this.recordings.size, packets: this.totalPackets, lost: this.totalLost };
  }

  /** Daemon shutdown: every recording stops (its files complete, its stream ended). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.recordings.values()].map((r) => this.finish(r, 'shutdown')));
    await Promise.all([...this.recordings.values()].map((r) => r.done));
  }
}
