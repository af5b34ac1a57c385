// The Recorder API's requests (proto/xdplb/v1/recorder.proto, as
// @grpc/proto-loader gives them: camelCase, enums as names, longs as numbers)
// checked and turned into recording specs. Every refusal is an INVALID_ARGUMENT
// naming the field; nothing here touches the datapath or the disk.
import { XdplbError } from '../control/errors';
import { filterFromMessage, type Filter, type FilterMessage } from './filter';
import { MAX_SNAPLEN, type CaptureFormat } from './pcap';
import { checkFileName, PREFIX_PATTERN, type FileRotation } from './sink-file';

export interface StopConditions {
  /** 0: no condition */
  packets: number;
  bytes: number;
  durationMs: number;
}

export interface RecordingSpec {
  name: string;
  filters: Filter[];
  /** 0: whole frames */
  capLength: number;
  stop: StopConditions;
  format: CaptureFormat;
}

export interface FileSpec {
  prefix: string;
  /** a plain name instead of generated names (sink-file.ts) */
  fileName?: string;
  overwrite: boolean;
  rotation: FileRotation;
}

export interface StreamSpec {
  /** bytes held for a slow caller before packets are dropped */
  maxBuffered: number;
}

export interface PbDuration {
  seconds?: number | string;
  nanos?: number;
}

interface PbStop {
  bytesCapturedCount?: number | string;
  packetsCapturedCount?: number | string;
  timeElapsed?: PbDuration | null;
}

interface PbRotation {
  maxFileBytes?: number | string;
  maxFilePackets?: number | string;
  maxFileDuration?: PbDuration | null;
  maxFiles?: number;
}

export interface PbFileSink {
  filePrefix?: string;
  format?: string | number;
  rotation?: PbRotation | null;
  fileName?: string;
  overwrite?: boolean;
}

export interface PbStartRecording {
  fileSink?: PbFileSink | null;
  include?: FilterMessage[];
  maxCaptureLength?: number;
  stopCondition?: PbStop | null;
  name?: string;
}

export interface PbRecord {
  include?: FilterMessage[];
  maxCaptureLength?: number;
  stopCondition?: PbStop | null;
  format?: string | number;
  name?: string;
  maxBufferedBytes?: number;
}

export const DEFAULT_PREFIX = 'xdplb';
export const DEFAULT_STREAM_BUFFER = 4 * 1024 * 1024;
/** The most a caller may ask the daemon to hold for its stream. */
export const MAX_STREAM_BUFFER = 256 * 1024 * 1024;
const NAME_PATTERN = /^[\x20-\x7e]{0,63}$/;

function count(v: number | string | undefined, field: string): number {
  const n = Number(v ?? 0);
  if (!Number.isSafeInteger(n) || n < 0) throw XdplbError.invalid(field, `${v} is not a count`);
  return n;
}

export function durationMs(d: PbDuration | null | undefined, field: string): number {
  if (!d) return 0;
  const s = Number(d.seconds ?? 0);
  const ns = d.nanos ?? 0;
  if (!Number.isSafeInteger(s) || s < 0 || !Number.isInteger(ns) || ns < 0 || ns > 999_999_999)
    throw XdplbError.invalid(field, `${s} s ${ns} ns is not a duration of 0 or more`);
  return s * 1000 + Math.ceil(ns / 1e6);
}

function format(v: string | number | undefined, field: string): CaptureFormat {
  if (v === undefined || v === 'CAPTURE_FORMAT_UNSPECIFIED' || v === 'CAPTURE_FORMAT_PCAP' || v === 0 || v === 1) return 'pcap';
  if (v === 'CAPTURE_FORMAT_PCAPNG' || v === 2) return 'pcapng';
  throw XdplbError.invalid(field, `${JSON.stringify(v)} is not a CaptureFormat`);
}

function common(r: { include?: FilterMessage[]; maxCaptureLength?: number; stopCondition?: PbStop | null; name?: string }, fmt: CaptureFormat): RecordingSpec {
  const include = r.include ?? [];
  if (include.length === 0) throw XdplbError.invalid('include', 'at least one filter is required (a filter with no fields matches every packet)');
  const filters = include.map((m, i) => filterFromMessage(m, `include[${i}]`));
  const cap = r.maxCaptureLength ?? 0;
  if (!Number.isInteger(cap) || cap < 0 || cap > MAX_SNAPLEN) throw XdplbError.invalid('max_capture_length', `must be 0 (whole frames) or 1..${MAX_SNAPLEN}, got ${cap}`);
  const name = r.name ?? '';
  if (!NAME_PATTERN.test(name)) throw XdplbError.invalid('name', `must be at most 63 printable ASCII characters, got ${JSON.stringify(name)}`);
  const s = r.stopCondition ?? {};
  const stop: StopConditions = {
    packets: count(s.packetsCapturedCount, 'stop_condition.packets_captured_count'),
    bytes: count(s.bytesCapturedCount, 'stop_condition.bytes_captured_count'),
    durationMs: durationMs(s.timeElapsed, 'stop_condition.time_elapsed'),
  };
  return { name, filters, capLength: cap, stop, format: fmt };
}

/** StartRecordingRequest -> the recording and its files. */
export function startRequest(r: PbStartRecording): { spec: RecordingSpec; file: FileSpec } {
  const fs = r.fileSink ?? {};
  const prefix = fs.filePrefix || DEFAULT_PREFIX;
  if (!PREFIX_PATTERN.test(prefix)) throw XdplbError.invalid('file_sink.file_prefix', `${JSON.stringify(prefix)} must match ${PREFIX_PATTERN.source} (a prefix, not a path)`);
  // The one rule for an empty name (recorder.proto's FileSink; the CLI's -w ''
  // sends it as is): the daemon makes the names up from the prefix.
  let fileName: string | undefined;
  if (fs.fileName) {
    const why = checkFileName(fs.fileName);
    if (why) throw XdplbError.invalid('file_sink.file_name', why);
    fileName = fs.fileName;
  }
  const fmt = format(fs.format, 'file_sink.format');
  if (fileName) fileName = fileName.replace(fmt === 'pcap' ? /\.pcap$/ : /\.pcapng$/, '');
  const rot = fs.rotation ?? {};
  const rotation: FileRotation = {
    maxBytes: count(rot.maxFileBytes, 'file_sink.rotation.max_file_bytes'),
    maxPackets: count(rot.maxFilePackets, 'file_sink.rotation.max_file_packets'),
    maxDurationMs: durationMs(rot.maxFileDuration, 'file_sink.rotation.max_file_duration'),
    maxFiles: count(rot.maxFiles, 'file_sink.rotation.max_files'),
  };
  if (rotation.maxBytes && rotation.maxBytes < 1024) throw XdplbError.invalid('file_sink.rotation.max_file_bytes', `must be 0 (no limit) or at least 1024, got ${rotation.maxBytes}`);
  return { spec: common(r, fmt), file: { prefix, fileName, overwrite: !!fs.overwrite, rotation } };
}

/** RecordRequest -> the recording and its stream. */
export function recordRequest(r: PbRecord): { spec: RecordingSpec; stream: StreamSpec } {
  const fmt = format(r.format, 'format');
  const max = r.maxBufferedBytes ?? 0;
  if (!Number.isInteger(max) || max < 0 || max > MAX_STREAM_BUFFER) throw XdplbError.invalid('max_buffered_bytes', `must be 0 (default ${DEFAULT_STREAM_BUFFER}) or up to ${MAX_STREAM_BUFFER}, got ${max}`);
  return { spec: common(r, fmt), stream: { maxBuffered: max || DEFAULT_STREAM_BUFFER } };
}
