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
// Order: the kernel's rings are per CPU; the reader thread decodes each batch
// and sorts it by time, but a later batch may still hold older samples (a ring
// drained after a batch was full). Batches wait in a reorder window until their
// samples are REORDER_MS old (the reader drains every ring every 50 ms), then
// their samples go out merged by time, so every file and stream has
// non-decreasing timestamps. The event loop reads samples in place from the
// batches: no object, no BigInt per sample.
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
import * as L from '../datapath/layout';
import type { Logger } from 'pino';
import { XdplbError, isXdplbError } from '../control/errors';
import { compileFilters, type CompiledFilters, type Filter, type RuleFilters } from './filter';
import { KernelClock, PcapEncoder, packetComment, snaplenFor, type CaptureFormat } from './pcap';
import { recorderUnavailable, sampleSpan, SAMPLE, SAMPLE_HEADER_LEN, type RecorderDatapath, type SampleBatch } from './datapath';
import { FileSink, fileSet, recordingDir, sharedFile, type FileNaming, type FileSet } from './sink-file';
import { StreamSink, type StreamTarget } from './sink-stream';
import type { RecordingFile, Sink } from './sink';
import type { FileSpec, RecordingSpec, StopConditions, StreamSpec } from './request';
import { NO_BACKEND } from '../maglev';

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
const NS_PER_S = 1_000_000_000;
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
  /** its bit in a sample's rule mask: which 32-bit half, and the bit in it */
  readonly ruleWord: number;
  readonly ruleBit: number;
  /** startKtime split as the samples' times are */
  readonly startSec: number;
  readonly startNsec: number;
  /** clock.offsetNs as whole seconds and the ns (0..1e9) beyond them */
  readonly wallSec: number;
  readonly wallNsec: number;
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
    this.ruleWord = ruleId >>> 5;
    this.ruleBit = (1 << (ruleId & 31)) >>> 0;
    [this.startSec, this.startNsec] = splitNs(startKtime);
    [this.wallSec, this.wallNsec] = splitNs(clock.offsetNs);
  }

  /** Whether the sample at `off` of `b` is its own: it carries its rule and is not older than the recording. */
  owns(b: Buffer, off: number, sec: number, nsec: number): boolean {
    const word = b.readUInt32LE(off + (this.ruleWord ? SAMPLE.rulesHi : SAMPLE.rulesLo));
    if ((word & this.ruleBit) === 0 || this.state !== 'running') return false;
    return sec > this.startSec || (sec === this.startSec && nsec >= this.startNsec);
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
  /** batches in arrival order, each with the offset and time of its next sample */
  private pending: PendingBatch[] = [];
  /** release() is running; releaseAll: it hands out every pending sample */
  private releasing = false;
  private releaseAll = false;
  /** the datapath's emitted-samples count when the reader started, and the records the reader has handed over since */
  private emittedBase = 0;
  private seen = 0;
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
    if (this.byRule.size >= L.REC_MAX_RULES)
      throw XdplbError.exhausted(`${L.REC_MAX_RULES} recordings hold every datapath rule (the rule mask is ${L.REC_MAX_RULES} bits); stop one first`, 'recordings');
    // Round robin: a rule just given up is the last to be handed out again, so
    // late samples of its old holder are unlikely even before the time check.
    for (let n = 0; n < L.REC_MAX_RULES; n++) {
      const r = (this.nextRule + n) % L.REC_MAX_RULES;
      if (!this.byRule.has(r)) {
        this.nextRule = (r + 1) % L.REC_MAX_RULES;
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
    if (b.count) this.pending.push(new PendingBatch(b.bytes, b.count));
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

  /** Hands out the samples older than the reorder window (all of them with `all`), merged by time across batches. */
  private release(all: boolean): void {
    // A sample can stop a recording, and the last one to stop closes the
    // reader, which asks for everything: the loop already running takes that.
    if (this.releasing) {
      this.releaseAll ||= all;
      return;
    }
    if (this.pending.length === 0) return;
    this.releasing = true;
    this.releaseAll = all;
    try {
      const [cutSec, cutNsec] = splitNs(KernelClock.nowNs() - BigInt(REORDER_MS) * 1_000_000n);
      for (;;) {
        let next: PendingBatch | undefined;
        for (const p of this.pending) if (!next || p.sec < next.sec || (p.sec === next.sec && p.nsec < next.nsec)) next = p;
        if (!next || (!this.releaseAll && (next.sec > cutSec || (next.sec === cutSec && next.nsec > cutNsec)))) break;
        this.dispatch(next.bytes, next.off, next.sec, next.nsec);
        if (!next.advance()) this.pending.splice(this.pending.indexOf(next), 1);
      }
    } finally {
      this.releasing = false;
    }
  }

  private dispatch(b: Buffer, off: number, sec: number, nsec: number): void {
    for (const rec of this.byRule.values()) if (rec.owns(b, off, sec, nsec)) this.take(rec, b, off, sec, nsec);
  }

  private take(rec: Recording, b: Buffer, off: number, sec: number, nsec: number): void {
    const capLen = b.readUInt32LE(off + SAMPLE.capLen);
    const point = b[off + SAMPLE.point] === L.CAPTURE_IN ? 'in' : 'out';
    let comment: string | undefined;
    if (rec.spec.format === 'pcapng') {
      const backendId = b.readUInt32LE(off + SAMPLE.backendId);
      comment = packetComment({ id: rec.ruleId, name: rec.spec.name || undefined }, backendId === NO_BACKEND ? undefined : this.o.backendName?.(backendId));
    }
    let wallNsec = nsec + rec.wallNsec;
    let wallSec = sec + rec.wallSec;
    if (wallNsec >= NS_PER_S) {
      wallNsec -= NS_PER_S;
      wallSec++;
    }
    const origLen = Math.max(b.readUInt32LE(off + SAMPLE.origLen), capLen);
    const record = rec.encoder.packetFrom(wallSec, wallNsec, b, off + SAMPLE_HEADER_LEN, capLen, origLen, point, comment);
    if (!rec.sink.write(record)) {
      if (rec.writeFailed) rec.stats.droppedWriteError++;
      else rec.stats.droppedSlowClient++;
      return;
    }
    rec.stats.packetsWritten++;
    rec.stats.bytesCaptured += Math.min(capLen, rec.encoder.snaplen);
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

/** Seconds and nanoseconds (0..1e9) of a time in ns; floor division, so a negative time has a negative second. */
function splitNs(ns: bigint): [number, number] {
  const sub = ((ns % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n;
  return [Number((ns - sub) / 1_000_000_000n), Number(sub)];
}

/** A batch in the reorder window: the offset and time of its next sample. */
class PendingBatch {
  off = 0;
  sec: number;
  nsec: number;
  constructor(
    readonly bytes: Buffer,
    private left: number,
  ) {
    this.sec = bytes.readUInt32LE(SAMPLE.sec);
    this.nsec = bytes.readUInt32LE(SAMPLE.nsec);
  }

  /** Moves to the next sample; false once there is none. */
  advance(): boolean {
    if (--this.left === 0) return false;
    this.off += sampleSpan(this.bytes.readUInt32LE(this.off + SAMPLE.capLen));
    this.sec = this.bytes.readUInt32LE(this.off + SAMPLE.sec);
    this.nsec = this.bytes.readUInt32LE(this.off + SAMPLE.nsec);
    return true;
  }
}
