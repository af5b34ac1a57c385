// xdplb.v1.Recorder (proto/xdplb/v1/recorder.proto) over the daemon's Recorder:
// requests checked by src/recorder/request.ts, recordings shown as the proto's
// Recording, and Record's live capture streamed as RecordChunk messages.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { XdplbError } from '../control/errors';
import { filterToMessage } from '../recorder/filter';
import { recordRequest, startRequest, type PbRecord, type PbStartRecording } from '../recorder/request';
import type { Recorder, RecordingView } from '../recorder/recordings';
import type { StreamTarget } from '../recorder/sink-stream';
import { toServiceError, unary } from './grpc';

export const RECORDER_SERVICE_NAME = 'xdplb.v1.Recorder';

const FORMATS = { pcap: 'CAPTURE_FORMAT_PCAP', pcapng: 'CAPTURE_FORMAT_PCAPNG' } as const;
/** How often a live stream carries the running statistics. */
const STATS_EVERY_MS = 1000;

const duration = (ms: number) => (ms ? { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } : null);
const timestamp = (ms: number | undefined) => (ms === undefined ? null : { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });

export function recordingToPb(v: RecordingView) {
  return {
    id: v.id,
    name: v.name,
    state: `RECORDING_STATE_${v.state.toUpperCase()}`,
    stopReason: v.stopReason ? `STOP_REASON_${v.stopReason.toUpperCase()}` : 'STOP_REASON_UNSPECIFIED',
    error: v.error ?? '',
    include: v.filters.map(filterToMessage),
    maxCaptureLength: v.capLength,
    stopCondition: { bytesCapturedCount: v.stop.bytes, packetsCapturedCount: v.stop.packets, timeElapsed: duration(v.stop.durationMs) },
    fileSink: v.file
      ? {
          filePrefix: v.file.prefix,
          format: FORMATS[v.format],
          rotation: {
            maxFileBytes: v.file.rotation.maxBytes,
            maxFilePackets: v.file.rotation.maxPackets,
            maxFileDuration: duration(v.file.rotation.maxDurationMs),
            maxFiles: v.file.rotation.maxFiles,
          },
          fileName: v.file.fileName ?? '',
          overwrite: v.file.overwrite,
        }
      : null,
    streamFormat: v.file ? 'CAPTURE_FORMAT_UNSPECIFIED' : FORMATS[v.format],
    ruleId: v.ruleId,
    startedAt: timestamp(v.startedAt),
    stoppedAt: timestamp(v.stoppedAt),
    stats: v.stats,
    files: v.files,
  };
}

interface Chunk {
  data: Buffer;
  recording?: ReturnType<typeof recordingToPb>;
}

/** A server stream's call refused before its first message: the status, logged as unary calls are. */
function refuse(call: grpc.ServerWritableStream<unknown, unknown>, log: Logger, method: string, e: unknown): void {
  const err = toServiceError(e);
  log.info({ method, code: grpc.status[err.code ?? grpc.status.INTERNAL], error: err.details }, 'api call refused');
  call.emit('error', err);
}

/** WatchRecording: the recording now, its statistics from time to time, its final summary, the end. */
function watch(recorder: Recorder, log: Logger) {
  return (call: grpc.ServerWritableStream<{ id: string }, ReturnType<typeof recordingToPb>>) => {
    const id = call.request.id;
    let now: RecordingView;
    try {
      if (!id) throw XdplbError.invalid('id', 'is required');
      now = recorder.get(id);
    } catch (e) {
      refuse(call, log, 'WatchRecording', e);
      return;
    }
    call.write(recordingToPb(now));
    const timer = setInterval(() => {
      if (call.writableLength === 0) call.write(recordingToPb(recorder.get(id)));
    }, STATS_EVERY_MS);
    call.on('cancelled', () => clearInterval(timer));
    void recorder.whenStopped(id).then((final) => {
      clearInterval(timer);
      if (call.cancelled) return;
      if (now.state === 'running') call.write(recordingToPb(final));
      call.end();
    });
  };
}

/** Record: the capture file's bytes as chunks, the recording on the first, from time to time, and on the last. */
function record(recorder: Recorder, log: Logger) {
  return (call: grpc.ServerWritableStream<PbRecord, Chunk>) => {
    let id: string | undefined;
    let first = true;
    let ended = false;
    let timer: NodeJS.Timeout | undefined;
    const view = () => recordingToPb(recorder.get(id!));
    const target: StreamTarget = {
      send(data, done) {
        if (ended) return done();
        const chunk: Chunk = { data };
        if (first) chunk.recording = view();
        first = false;
        call.write(chunk, () => done());
      },
      end() {
        if (ended) return;
        ended = true;
        clearInterval(timer);
        if (!call.cancelled) call.write({ data: Buffer.alloc(0), recording: view() });
        call.end();
      },
    };
    try {
      const { spec, stream } = recordRequest(call.request);
      id = recorder.startStream(spec, stream, target).id;
    } catch (e) {
      ended = true;
      refuse(call, log, 'Record', e);
      return;
    }
    timer = setInterval(() => {
      if (!ended && !first && call.writableLength === 0) call.write({ data: Buffer.alloc(0), recording: view() });
    }, STATS_EVERY_MS);
    const gone = () => {
      if (!ended) recorder.stop(id!, 'client_gone').catch((e: Error) => log.warn({ recording: id, error: e.message }, 'recording of a gone caller not stopped'));
    };
    call.on('cancelled', gone);
    call.on('error', gone);
  };
}

export function recorderHandlers(recorder: Recorder, log: Logger): grpc.UntypedServiceImplementation {
  return {
    StartRecording: unary(log, 'StartRecording', (r: PbStartRecording) => {
      const { spec, file } = startRequest(r);
      return recordingToPb(recorder.startFile(spec, file));
    }),
    StopRecording: unary(log, 'StopRecording', async (r: { id: string }) => {
      if (!r.id) throw XdplbError.invalid('id', 'is required');
      return recordingToPb(await recorder.stop(r.id));
    }),
    ListRecordings: unary(log, 'ListRecordings', (r: { includeStopped: boolean }) => ({
      recordings: recorder.list(r.includeStopped).map(recordingToPb),
    })),
    Record: record(recorder, log),
    WatchRecording: watch(recorder, log),
  };
}
