// The Recorder API refuses what it cannot do with one clear error naming the
// field, and a refused call starts nothing: no recording listed, no file made,
// the recorder maps exactly as before. Limits (32 mask shapes, 64 recordings)
// hold; a Python gRPC client and server reflection see the service.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { daemonFixture, reflectedServices, rpc, type DaemonFixture } from '../harness/daemon';
import { needsRoot, sh } from '../harness/fixtures';
import { VIP4 } from '../harness/recorder';

const ROOT = path.resolve(__dirname, '..', '..');
const TCP80 = { destinationCidr: `${VIP4}/32`, destinationPort: 80, protocol: 'CAPTURE_PROTOCOL_TCP' };

interface Recording {
  id: string;
  state: string;
  ruleId: number;
  files: Array<{ path: string }>;
}

/** The recorder maps as the datapath sees them: mask count, every mask slot, every entry. */
function mapState(d: DaemonFixture): { nMasks: number; masks: string[]; entries: string[] } {
  const open = (k: keyof typeof L.REC_MAP_NAMES) => bpf.mapFromPin(path.join(d.bpffs, L.REC_MAP_NAMES[k]));
  const config = open('config');
  const masks = open('masks');
  const entries = open('entries');
  try {
    const dump = entries.dump();
    const rows: string[] = [];
    for (let i = 0; i < dump.count; i++)
      rows.push(`${dump.keys.subarray(i * L.REC_KEY.size, (i + 1) * L.REC_KEY.size).toString('hex')}=${dump.values.subarray(i * dump.valueBytes, (i + 1) * dump.valueBytes).toString('hex')}`);
    return {
      nMasks: L.decodeRecConfig(config.lookup(L.u32(0))!).nMasks,
      masks: Array.from({ length: L.REC_MAX_MASKS }, (_, i) => masks.lookup(L.u32(i))!.toString('hex')),
      entries: rows.sort(),
    };
  } finally {
    config.close();
    masks.close();
    entries.close();
  }
}

const list = async (c: grpc.Client) => (await rpc<{ recordings: Recording[] }>(c as never, 'ListRecordings', { includeStopped: true }))[1].recordings;

t.test('bad requests: INVALID_ARGUMENT (or ALREADY_EXISTS) naming the field; nothing started, no file, maps unchanged', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  await d.start();
  const c = d.client('Recorder');
  const dir = path.join(d.dir, 'recordings');
  fs.mkdirSync(dir, { recursive: true });
  const outside = path.join(d.dir, 'outside.pcap');
  fs.writeFileSync(outside, 'not to be touched');
  fs.symlinkSync(outside, path.join(dir, 'link.pcap'));
  fs.writeFileSync(path.join(dir, 'taken.pcap'), 'an earlier capture');
  const before = mapState(d);
  t.equal(before.nMasks, 0, 'recorder off at start');
  t.same(before.entries, [], 'no entries at start');
  const filesBefore = fs.readdirSync(dir).sort();

  const start = (r: Record<string, unknown>) => ({ include: [TCP80], ...r });
  const cases: Array<[string, string, Record<string, unknown>, grpc.status, RegExp]> = [
    ['no filter', 'StartRecording', { include: [] }, grpc.status.INVALID_ARGUMENT, /^include: at least one filter/],
    ['not a prefix', 'StartRecording', start({ include: [TCP80, { sourceCidr: '10.0.0.300/8' }] }), grpc.status.INVALID_ARGUMENT, /^include\[1\]\.source_cidr: "10\.0\.0\.300\/8": not an IPv4\/IPv6 prefix/],
    ['host bits set', 'StartRecording', start({ include: [{ destinationCidr: '203.0.113.10/24' }] }), grpc.status.INVALID_ARGUMENT, /^include\[0\]\.destination_cidr: .*host bits set; write 203\.0\.113\.0\/24/],
    ['IPv6 host bits set', 'StartRecording', start({ include: [{ sourceCidr: '2001:db8::1/32' }] }), grpc.status.INVALID_ARGUMENT, /^include\[0\]\.source_cidr: .*host bits set; write 2001:db8::\/32/],
    ['families mixed', 'StartRecording', start({ include: [{ sourceCidr: '192.0.2.0/24', destinationCidr: '2001:db8::/32' }] }), grpc.status.INVALID_ARGUMENT, /^include\[0\]\.destination_cidr: .*one family/],
    ['port out of range', 'StartRecording', start({ include: [{ destinationPort: 70000 }] }), grpc.status.INVALID_ARGUMENT, /^include\[0\]\.destination_port: 70000 is not a port/],
    ['ports with ICMP', 'StartRecording', start({ include: [{ sourcePort: 7, protocol: 'CAPTURE_PROTOCOL_ICMP' }] }), grpc.status.INVALID_ARGUMENT, /^include\[0\]\.source_port: proto icmp has no ports/],
    ['cap length', 'StartRecording', start({ maxCaptureLength: 300000 }), grpc.status.INVALID_ARGUMENT, /^max_capture_length: /],
    ['name', 'StartRecording', start({ name: 'bad\nname' }), grpc.status.INVALID_ARGUMENT, /^name: /],
    ['duration', 'StartRecording', start({ stopCondition: { timeElapsed: { seconds: 1, nanos: -5 } } }), grpc.status.INVALID_ARGUMENT, /^stop_condition\.time_elapsed: /],
    ['prefix a path', 'StartRecording', start({ fileSink: { filePrefix: '../x' } }), grpc.status.INVALID_ARGUMENT, /^file_sink\.file_prefix: /],
    ['name leaving the directory', 'StartRecording', start({ fileSink: { fileName: '../x' } }), grpc.status.INVALID_ARGUMENT, /^file_sink\.file_name: "\.\.\/x" is a path/],
    ['absolute name', 'StartRecording', start({ fileSink: { fileName: '/etc/x' } }), grpc.status.INVALID_ARGUMENT, /^file_sink\.file_name: "\/etc\/x" is a path/],
    ['dot-dot name', 'StartRecording', start({ fileSink: { fileName: '..' } }), grpc.status.INVALID_ARGUMENT, /^file_sink\.file_name: "\.\." contains "\.\."/],
    ['a link in the directory', 'StartRecording', start({ fileSink: { fileName: 'link' } }), grpc.status.INVALID_ARGUMENT, /^file_sink\.file_name: link\.pcap in the recording directory is a symbolic link/],
    ['a link, even with overwrite', 'StartRecording', start({ fileSink: { fileName: 'link.pcap', overwrite: true } }), grpc.status.INVALID_ARGUMENT, /^file_sink\.file_name: link\.pcap .* symbolic link/],
    ['an existing file', 'StartRecording', start({ fileSink: { fileName: 'taken' } }), grpc.status.ALREADY_EXISTS, /^file_sink\.file_name: taken\.pcap exists/],
    ['format', 'StartRecording', start({ fileSink: { format: 7 } }), grpc.status.INVALID_ARGUMENT, /^file_sink\.format: /],
    ['rotation size', 'StartRecording', start({ fileSink: { rotation: { maxFileBytes: 10 } } }), grpc.status.INVALID_ARGUMENT, /^file_sink\.rotation\.max_file_bytes: /],
    ['stream buffer', 'Record', { include: [TCP80], maxBufferedBytes: 1 << 30 }, grpc.status.INVALID_ARGUMENT, /^max_buffered_bytes: /],
    ['stream filter', 'Record', { include: [{ sourceCidr: 'nonsense' }] }, grpc.status.INVALID_ARGUMENT, /^include\[0\]\.source_cidr: /],
    ['stop without id', 'StopRecording', { id: '' }, grpc.status.INVALID_ARGUMENT, /^id: is required/],
    ['stop an unknown id', 'StopRecording', { id: 'feedf00d' }, grpc.status.NOT_FOUND, /^id: recording "feedf00d" not found/],
  ];
  for (const [what, method, req, code, details] of cases) {
    let err: grpc.ServiceError | null;
    if (method === 'Record') {
      err = await new Promise<grpc.ServiceError | null>((resolve) => {
        const s = (c.Record as (r: unknown) => grpc.ClientReadableStream<unknown>)(req);
        s.on('data', () => resolve(null));
        s.on('error', (e: grpc.ServiceError) => resolve(e));
        s.on('end', () => resolve(null));
      });
    } else [err] = await rpc(c, method, req);
    t.equal(err?.code, code, `${what}: ${grpc.status[code]}`);
    t.match(err?.details ?? '', details, `${what}: ${err?.details}`);
  }
  const cliBadFilter = d.cli('record', '--filter', 'src=10.0.0.300/8', '-w', '-');
  t.equal(cliBadFilter.code, 1, 'the CLI refuses a bad filter');
  t.equal(cliBadFilter.stderr, 'xdplb: --filter[0]: filter "src=10.0.0.300/8": src: not an IPv4/IPv6 prefix\n', 'in one line naming the flag and the key');
  const cliPath = d.cli('record', '--filter', `dst=${VIP4}/32`, '-w', '../x');
  t.equal(cliPath.code, 1);
  t.match(cliPath.stderr, /^xdplb: INVALID_ARGUMENT: file_sink\.file_name: "\.\.\/x" is a path/, 'the daemon refuses a path for -w');
  t.same(await list(c), [], 'no recording, running or stopped');
  t.same(fs.readdirSync(dir).sort(), filesBefore, 'no file made');
  t.equal(fs.readFileSync(outside, 'utf8'), 'not to be touched', 'the link target is untouched');
  t.equal(fs.readFileSync(path.join(dir, 'taken.pcap'), 'utf8'), 'an earlier capture', 'the existing file is untouched');
  t.same(mapState(d), before, 'recorder maps unchanged');

  const [e, ok] = await rpc<Recording>(c, 'StartRecording', start({ fileSink: { fileName: 'taken', overwrite: true } }));
  t.error(e, 'overwrite replaces a plain file when asked');
  t.equal(ok.files[0].path, path.join(fs.realpathSync(dir), 'taken.pcap'));
  await rpc(c, 'StopRecording', { id: ok.id });
  t.equal(fs.readFileSync(path.join(dir, 'taken.pcap')).readUInt32LE(0), 0xa1b23c4d, 'now a PCAP file');
});

/** 33 filters of 33 distinct shapes: destination prefixes /0 .. /32. */
function distinctShapes(n: number, from = 0): Array<Record<string, unknown>> {
  return Array.from({ length: n }, (_, i) => {
    const len = from + i;
    const addr = len === 0 ? 0 : (0xcb007100 >>> (32 - len)) << (32 - len); // 203.0.113.0 cut to len
    const a = addr >>> 0;
    return { destinationCidr: `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}/${len}` };
  });
}

t.test('limits: 32 mask shapes and 64 recordings; past either RESOURCE_EXHAUSTED and nothing changes', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  await d.start();
  const c = d.client('Recorder');

  const [e33] = await rpc(c, 'StartRecording', { include: distinctShapes(33) });
  t.equal(e33?.code, grpc.status.RESOURCE_EXHAUSTED, '33 shapes in one recording');
  t.match(e33?.details, /^include: too many distinct filter shapes: 33 > 32/);

  const [e20, twenty] = await rpc<Recording>(c, 'StartRecording', { include: distinctShapes(20) });
  t.error(e20, '20 shapes fit');
  const withTwenty = mapState(d);
  t.equal(withTwenty.nMasks, 20, '20 masks in use');
  t.equal(withTwenty.entries.length, 20);
  const [e13] = await rpc(c, 'StartRecording', { include: distinctShapes(13, 20) });
  t.equal(e13?.code, grpc.status.RESOURCE_EXHAUSTED, '13 more shapes next to a running recording with 20');
  t.match(e13?.details, /^include: too many distinct filter shapes: 33 > 32 \(counting the filters of the 1 running recordings\)/);
  t.same((await list(c)).map((r) => r.id), [twenty.id], 'only the first recording');
  t.same(mapState(d), withTwenty, 'maps as they were');
  const [e12] = await rpc(c, 'StartRecording', { include: distinctShapes(12, 20) });
  t.error(e12, '12 more shapes: exactly 32');
  t.equal(mapState(d).nMasks, 32);
  for (const r of await list(c)) await rpc(c, 'StopRecording', { id: r.id });

  const started: Recording[] = [];
  for (let i = 0; i < 64; i++) {
    const [e, r] = await rpc<Recording>(c, 'StartRecording', { include: [{ ...TCP80, sourcePort: 1000 + i }], fileSink: { filePrefix: 'many' } });
    if (e) t.fail(`recording ${i}: ${e.details}`);
    else started.push(r);
  }
  t.equal(started.length, 64, '64 recordings run at once');
  t.same(new Set(started.map((r) => r.ruleId)).size, 64, 'each with its own rule');
  const full = mapState(d);
  t.equal(full.entries.length, 64, 'one entry per recording (one shape, one mask)');
  t.equal(full.nMasks, 1);
  const [e65] = await rpc(c, 'StartRecording', { include: [TCP80] });
  t.equal(e65?.code, grpc.status.RESOURCE_EXHAUSTED, 'the 65th');
  t.match(e65?.details, /^recordings: 64 recordings hold every datapath rule/);
  t.equal((await list(c)).filter((r) => r.state === 'RECORDING_STATE_RUNNING').length, 64, 'still 64');
  t.same(mapState(d), full, 'maps unchanged');
  await Promise.all(started.map((r) => rpc(c, 'StopRecording', { id: r.id })));
  const after = mapState(d);
  t.equal(after.nMasks, 0, 'all stopped: recorder off');
  t.same(after.entries, [], 'no entries left');
});

t.test('Record: the first chunk is the capture header with the running recording; a caller that goes away stops it', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  await d.start();
  const c = d.client('Recorder');
  const stream = (c.Record as (r: unknown) => grpc.ClientReadableStream<{ data: Buffer; recording?: Recording | null }>)({ include: [TCP80], format: 'CAPTURE_FORMAT_PCAPNG', name: 'gone' });
  const first = await new Promise<{ data: Buffer; recording?: Recording | null }>((resolve, reject) => {
    stream.once('data', resolve);
    stream.once('error', reject);
  });
  stream.on('error', () => undefined);
  t.equal(first.data.readUInt32LE(0), 0x0a0d0d0a, 'a pcapng section header first');
  t.equal(first.recording?.state, 'RECORDING_STATE_RUNNING');
  const id = first.recording!.id;
  t.equal((await list(c)).find((r) => r.id === id)?.state, 'RECORDING_STATE_RUNNING', 'listed while the caller reads');
  stream.cancel();
  let gone: Recording | undefined;
  for (let i = 0; i < 50 && gone?.state !== 'RECORDING_STATE_STOPPED'; i++) {
    await new Promise((r) => setTimeout(r, 100));
    gone = (await list(c)).find((r) => r.id === id);
  }
  t.equal(gone?.state, 'RECORDING_STATE_STOPPED');
  t.equal((gone as unknown as { stopReason: string }).stopReason, 'STOP_REASON_CLIENT_GONE');
  t.equal(mapState(d).nMasks, 0, 'its rule is gone from the maps');
});

t.test('a restarted daemon clears what the previous one left in the recorder maps', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  await d.start();
  const c = d.client('Recorder');
  const [e] = await rpc(c, 'StartRecording', { include: [TCP80, { sourceCidr: '2001:db8::/32' }] });
  t.error(e);
  t.equal(mapState(d).nMasks, 2);
  await d.signal('SIGKILL');
  await d.start();
  const st = mapState(d);
  t.equal(st.nMasks, 0, 'recorder off');
  t.same(st.entries, [], 'entries gone');
  t.same(await list(d.client('Recorder')), [], 'recordings do not survive a restart');
});

t.test('Python grpcio starts, lists and stops a recording; reflection lists the Recorder service', needsRoot, async (t) => {
  const stubs = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplbt-py-'));
  t.teardown(() => fs.rmSync(stubs, { recursive: true, force: true }));
  sh('protoc', `-I${ROOT}/proto`, '-I/usr/include', `--python_out=${stubs}`, `--grpc_python_out=${stubs}`, '--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin', 'xdplb/v1/recorder.proto');
  const d = await daemonFixture(t);
  await d.start();
  const out = JSON.parse(sh('/usr/bin/python3', path.join(ROOT, 'test', 'interop', 'python_recorder.py'), stubs, d.socket)) as {
    list: Array<{ name: string; state: string; include: unknown[]; caplen: number; stop_packets: number; files: string[]; started: boolean }>;
    stopped: { same_id: boolean; state: string; reason: string; closed: boolean[] };
    missing: string;
  };
  t.equal(out.list.length, 1);
  t.match(out.list[0], { name: 'py', state: 'RECORDING_STATE_RUNNING', caplen: 128, stop_packets: 1000, started: true });
  t.same(out.list[0].include, [['192.0.2.0/24', `${VIP4}/32`, false, 80, 'CAPTURE_PROTOCOL_TCP']], 'the filter as given, source port unset');
  t.match(out.list[0].files[0], /\/py_\d+_[0-9a-f]{8}_0\.pcapng$/);
  t.same(out.stopped, { same_id: true, state: 'RECORDING_STATE_STOPPED', reason: 'STOP_REASON_REQUESTED', closed: [true] });
  t.equal(out.missing, 'NOT_FOUND');

  const names = await reflectedServices(t, d.socket);
  t.ok(names.includes('xdplb.v1.Recorder'), `reflection lists ${names.join(', ')}`);
});
