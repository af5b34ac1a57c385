// `xdplb record`: packet captures through the daemon's Recorder service.
//
//   -w -     a live stream (Record): the capture file's bytes to stdout, so
//            `xdplb record ... -w - | tshark -r -` and `| wireshark -k -i -` work
//   -w NAME  a file recording (StartRecording) in the daemon's recording
//            directory: NAME.pcap (a plain name only; never a path); the full
//            path is printed, and the command waits until the recording stops
//            (WatchRecording), also when the daemon stops: it ends recordings
//            first and sends their summary
//   -w ''    the same with the name left to the daemon, as an empty file_name
//            is in the API: xdplb_<start>_<id>_0.pcap
//
// Ctrl-C stops the recording through StopRecording, so the file or the stream
// ends after a whole packet and the daemon's final statistics are printed (on
// stderr with -w -, where stdout is the capture). A second Ctrl-C gives up
// waiting.
import { Command, Option } from 'commander';
import * as grpc from '@grpc/grpc-js';
import { call, connect, describe, type Client, type ConnectOptions } from '../client/client';
import { render, table, type OutputFormat } from '../client/output';
import { filterToMessage, parseFilter } from '../recorder/filter';

interface GlobalOpts extends ConnectOptions {
  output: OutputFormat;
}

interface RecordFlags {
  filter: string[];
  write?: string;
  caplen: string;
  count?: string;
  bytes?: string;
  duration?: string;
  format: 'pcap' | 'pcapng';
  name?: string;
  overwrite?: boolean;
  rotateBytes?: string;
  rotatePackets?: string;
  rotateDuration?: string;
  maxFiles?: string;
  detach?: boolean;
}

interface PbRecording {
  id: string;
  name: string;
  state: string;
  stopReason: string;
  error: string;
  ruleId: number;
  include: Array<Record<string, unknown>>;
  maxCaptureLength: number;
  startedAt?: { seconds: number; nanos: number } | null;
  stats: { packetsWritten: number; bytesWritten: number; bytesCaptured: number; lostInRing: number; droppedSlowClient: number; droppedWriteError: number };
  files: Array<{ path: string; packets: number; sizeBytes: number; closed: boolean; deleted: boolean }>;
}

function fail(e: unknown): never {
  process.stderr.write(`xdplb: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}

/** "30s", "500ms", "5m", "1h", or a number of seconds -> google.protobuf.Duration */
export function parseDuration(text: string, flag: string): { seconds: number; nanos: number } {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text);
  if (!m) throw new Error(`${flag} ${text}: expected a duration such as 500ms, 30s, 5m or 1h`);
  const ms = Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h']);
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

function parseCount(text: string | undefined, flag: string): number {
  if (text === undefined) return 0;
  if (!/^\d+$/.test(text)) throw new Error(`${flag} ${text}: expected a whole number`);
  return Number(text);
}

const short = (e: string, prefix: string) => e.replace(prefix, '').toLowerCase();

function recordingsTable(rs: PbRecording[]): string {
  return table(
    ['ID', 'NAME', 'STATE', 'RULE', 'FILTERS', 'PACKETS', 'BYTES', 'LOST', 'DROPPED', 'SINK'],
    rs.map((r) => [
      r.id,
      r.name || '-',
      r.state === 'RECORDING_STATE_RUNNING' ? 'running' : `${short(r.state, 'RECORDING_STATE_')} (${short(r.stopReason, 'STOP_REASON_')})`,
      r.ruleId,
      r.include.length,
      r.stats.packetsWritten,
      r.stats.bytesWritten,
      r.stats.lostInRing,
      r.stats.droppedSlowClient + r.stats.droppedWriteError,
      r.files.length ? r.files.filter((f) => !f.deleted).map((f) => f.path).join(' ') : 'stream',
    ]),
  );
}

function summary(r: PbRecording): string {
  const s = r.stats;
  const lines = [
    `recording ${r.id} ${short(r.state, 'RECORDING_STATE_')} (${short(r.stopReason, 'STOP_REASON_')})${r.error ? `: ${r.error}` : ''}: ${s.packetsWritten} packets, ${s.bytesWritten} bytes written; ${s.lostInRing} lost in the ring, ${s.droppedSlowClient} dropped (slow reader), ${s.droppedWriteError} not written (write error)`,
  ];
  for (const f of r.files) lines.push(`  ${f.path}  ${f.packets} packets, ${f.sizeBytes} bytes${f.deleted ? ' (deleted by rotation)' : ''}`);
  if (r.stopReason === 'STOP_REASON_SHUTDOWN') lines.push(`the daemon stopped and ended the recording first: ${r.files.length ? 'its files are' : 'the stream is'} complete`);
  const last = r.files.filter((f) => !f.deleted).at(-1);
  if (last) lines.push(`open it: wireshark ${last.path}   or   tshark -r ${last.path}`);
  return lines.join('\n');
}

function request(f: RecordFlags) {
  if (f.filter.length === 0) throw new Error("--filter is required, e.g. --filter 'dst=203.0.113.10/32 dport=80 proto=tcp' (--filter '' records every packet)");
  const include = f.filter.map((text, i) => filterToMessage(parseFilter(text, `--filter[${i}]`)));
  const caplen = parseCount(f.caplen, '--caplen');
  const timeElapsed = f.duration ? parseDuration(f.duration, '--duration') : null;
  return {
    include,
    maxCaptureLength: caplen,
    stopCondition: { packetsCapturedCount: parseCount(f.count, '--count'), bytesCapturedCount: parseCount(f.bytes, '--bytes'), timeElapsed },
    name: f.name ?? '',
  };
}

const FORMAT = { pcap: 'CAPTURE_FORMAT_PCAP', pcapng: 'CAPTURE_FORMAT_PCAPNG' };

/** Ctrl-C: the first stops the recording (and waits for its end), the second gives up. */
function onInterrupt(first: () => void, second: () => void): () => void {
  let n = 0;
  const handler = () => (++n === 1 ? first() : second());
  process.on('SIGINT', handler);
  return () => process.off('SIGINT', handler);
}

async function liveStream(f: RecordFlags, o: GlobalOpts): Promise<void> {
  const req = { ...request(f), format: FORMAT[f.format] };
  const client = connect(o, 'Recorder');
  const stream = (client.Record as (r: unknown) => grpc.ClientReadableStream<{ data: Buffer; recording?: PbRecording | null }>)(req);
  let last: PbRecording | undefined;
  let stdoutGone = false;
  const stop = () => {
    if (!last) return stream.cancel();
    call(client, 'StopRecording', { id: last.id }).catch(() => stream.cancel());
  };
  const off = onInterrupt(stop, () => stream.cancel());
  process.stdout.on('error', () => {
    // the reader (tshark, wireshark) went away: nothing left to record for
    stdoutGone = true;
    stream.cancel();
  });
  try {
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (chunk: { data: Buffer; recording?: PbRecording | null }) => {
        if (chunk.recording) last = chunk.recording;
        if (chunk.data.length && !stdoutGone && !process.stdout.write(chunk.data)) {
          stream.pause();
          process.stdout.once('drain', () => stream.resume());
        }
      });
      stream.on('end', resolve);
      stream.on('error', (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? resolve() : reject(new Error(describe(e)))));
    });
  } finally {
    off();
    client.close();
  }
  if (last) process.stderr.write(`${summary(last)}\n`);
}

async function fileRecording(f: RecordFlags, o: GlobalOpts, name: string): Promise<void> {
  const rotation = {
    maxFileBytes: parseCount(f.rotateBytes, '--rotate-bytes'),
    maxFilePackets: parseCount(f.rotatePackets, '--rotate-packets'),
    maxFileDuration: f.rotateDuration ? parseDuration(f.rotateDuration, '--rotate-duration') : null,
    maxFiles: parseCount(f.maxFiles, '--max-files'),
  };
  const req = { ...request(f), fileSink: { fileName: name, format: FORMAT[f.format], overwrite: !!f.overwrite, rotation } };
  const client = connect(o, 'Recorder');
  try {
    const started = await call<PbRecording>(client, 'StartRecording', req);
    const path = started.files[0]?.path;
    if (o.output !== 'table') process.stdout.write(render(o.output, started, () => '') + '\n');
    else process.stdout.write(`recording ${started.id}: ${path}${f.detach ? `\nstop it with: xdplb record stop ${started.id}` : '  (Ctrl-C stops it)'}\n`);
    if (f.detach) return;
    const final = await waitForStop(client, started);
    if (o.output === 'table') process.stdout.write(`${summary(final)}\n`);
    else process.stdout.write(render(o.output, final, () => '') + '\n');
  } finally {
    client.close();
  }
}

/**
 * Follows the recording (WatchRecording) until it stops by itself, Ctrl-C
 * stops it, or the daemon stops, which ends it first and sends its summary.
 * A daemon gone without one is an error that says where the files are.
 */
async function waitForStop(client: Client, started: PbRecording): Promise<PbRecording> {
  const { id } = started;
  const watch = (client.WatchRecording as (r: unknown) => grpc.ClientReadableStream<PbRecording>)({ id });
  let last = started;
  let settle: { resolve(r: PbRecording): void; reject(e: Error): void } | undefined;
  const done = new Promise<PbRecording>((resolve, reject) => (settle = { resolve, reject }));
  const off = onInterrupt(
    () => call<PbRecording>(client, 'StopRecording', { id }).then(settle!.resolve, settle!.reject),
    () => settle!.reject(new Error(`stopped waiting; recording ${id} may still be running (xdplb record list)`)),
  );
  watch.on('data', (r: PbRecording) => {
    last = r;
    if (r.state !== 'RECORDING_STATE_RUNNING') settle!.resolve(r);
  });
  watch.on('end', () => settle!.resolve(last));
  watch.on('error', (e: grpc.ServiceError) => {
    const files = last.files.filter((f) => !f.deleted).map((f) => f.path);
    settle!.reject(new Error(`lost the daemon before recording ${id} ended (${e.details || grpc.status[e.code]}); the daemon stopped or went away. Its files so far: ${files.join(' ') || 'none'}`));
  });
  try {
    const final = await done;
    if (final.state === 'RECORDING_STATE_RUNNING') throw new Error(`the daemon ended the watch of recording ${id} while it still runs (xdplb record list)`);
    return final;
  } finally {
    off();
    watch.cancel();
  }
}

function withRecorder(cmd: Command, fn: (client: Client, o: GlobalOpts) => Promise<void>): Promise<void> {
  const o = cmd.optsWithGlobals() as GlobalOpts;
  const client = connect(o, 'Recorder');
  return fn(client, o).then(
    () => client.close(),
    (e) => {
      client.close();
      fail(e);
    },
  );
}

const WRITE_HELP = '"-w -" streams PCAP to stdout; "-w NAME" records into NAME.pcap in the daemon\'s recording directory; "-w \'\'" (an empty name) lets the daemon name the file: xdplb_<start unix time>_<recording id>_0.pcap';

const EXAMPLES = `
The filter is matched on the client -> VIP tuple, at both capture points: "in"
(the frame as received) and "out" (as sent, inside its IPIP/IP6IP6 header).
Keys: src=PREFIX dst=PREFIX sport=N dport=N proto=tcp|udp|icmp|icmpv6|any|N; a
missing key matches anything.

Examples:
  # live into Wireshark / tshark (the stream is a PCAP file on stdout)
  xdplb record --filter 'dst=203.0.113.10/32 dport=80 proto=tcp' -w - | wireshark -k -i -
  xdplb record --filter 'src=10.0.0.0/8' --caplen 128 --count 100 -w - | tshark -r -
  # into the daemon's recording directory, pcapng (capture points as interfaces)
  xdplb record --filter 'dst=2001:db8::10/128' --format pcapng --duration 30s -w web
  xdplb record list
  xdplb record stop 3fa2c1d0`;

export function recordCommand(): Command {
  const cmd = new Command('record')
    .description('capture the packets that match filters, at the load balancer, into a PCAP/pcapng file or a live stream')
    .option('--filter <text>', "filter, e.g. 'src=10.0.0.0/8 dst=192.0.2.10/32 dport=80 proto=tcp' (repeatable)", (v: string, prev: string[]) => [...prev, v], [])
    .option('-w, --write <NAME|->', WRITE_HELP)
    .option('--caplen <bytes>', 'bytes of each frame to keep (0: whole frames)', '0')
    .option('--count <packets>', 'stop after this many packets (a packet seen at both points counts twice)')
    .option('--bytes <bytes>', 'stop after this many captured bytes')
    .option('--duration <time>', 'stop after this long: 500ms, 30s, 5m, 1h')
    .addOption(new Option('--format <format>', 'capture format').choices(['pcap', 'pcapng']).default('pcap'))
    .option('--name <label>', 'a label shown in the list and in pcapng comments')
    .option('--overwrite', 'files: replace NAME.pcap (and NAME.N.pcap) if they exist')
    .option('--rotate-bytes <bytes>', 'files: start NAME.1.pcap, NAME.2.pcap ... before a file grows past this')
    .option('--rotate-packets <packets>', 'files: start a new file after this many packets')
    .option('--rotate-duration <time>', 'files: start a new file when one is this old')
    .option('--max-files <n>', 'files: keep only the newest n files')
    .option('--detach', 'files: start the recording and return (stop it with xdplb record stop ID)')
    .addHelpText('after', EXAMPLES)
    .action(async (f: RecordFlags, c: Command) => {
      const o = c.optsWithGlobals() as GlobalOpts;
      try {
        if (f.write === undefined) throw new Error(`-w is required: ${WRITE_HELP}`);
        if (f.write === '-') {
          if (f.detach) throw new Error('--detach needs a file (-w NAME): a stream lives as long as this command');
          if (process.stdout.isTTY) throw new Error('-w - writes a binary capture: pipe it (| tshark -r -, | wireshark -k -i -) or give a file name');
          await liveStream(f, o);
        } else await fileRecording(f, o, f.write);
      } catch (e) {
        fail(e);
      }
    });

  cmd
    .command('list')
    .description('running recordings with their counters (--all: also the stopped ones the daemon remembers)')
    .option('--all', 'include stopped recordings')
    .addHelpText('after', '\nExample:\n  xdplb record list --all -o json')
    .action((f: { all?: boolean }, c: Command) =>
      withRecorder(c, async (client, o) => {
        const r = await call<{ recordings: PbRecording[] }>(client, 'ListRecordings', { includeStopped: !!f.all });
        process.stdout.write(render(o.output, r.recordings, () => recordingsTable(r.recordings)) + '\n');
      }),
    );

  cmd
    .command('stop <id>')
    .description('stop a recording (a file recording, or another command\'s live stream) and print its final summary')
    .addHelpText('after', '\nExample:\n  xdplb record stop 3fa2c1d0')
    .action((id: string, _f, c: Command) =>
      withRecorder(c, async (client, o) => {
        const r = await call<PbRecording>(client, 'StopRecording', { id });
        process.stdout.write(render(o.output, r, () => summary(r)) + '\n');
      }),
    );
  return cmd;
}
