// Recorder file names never collide: one rule (fileSet) says which files a
// recording may write; a start whose files overlap a running recording's is
// refused and changes nothing, and --overwrite clears only the recording's own
// files. An empty name is the daemon's to make up, in the CLI as in the API.
// `xdplb record -w NAME` prints the summary the daemon sends when it stops, or
// where the files are when it goes away without one.
import t from 'tap';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { MAIN } from '../harness/daemon';
import { needsRoot } from '../harness/fixtures';
import { recorderRig, rpc, tsharkRows, until, VIP4, type RecorderRig } from '../harness/recorder';
import { fileSet, sharedFile, NO_ROTATION, type FileNaming } from '../src/recorder/sink-file';

interface Recording {
  id: string;
  name: string;
  state: string;
  stopReason: string;
  stats: { packetsWritten: number };
  files: Array<{ path: string; packets: number; deleted: boolean }>;
}

const ROTATING = { ...NO_ROTATION, maxPackets: 4 };

t.test('the file set of a name: its first file, and with rotation the numbered ones, nothing else', async (t) => {
  const named = (name: string, rotating: boolean) => fileSet('/r', { kind: 'name', name }, '.pcap', rotating ? ROTATING : NO_ROTATION);
  t.same([0, 1, 2].map((i) => named('t', true).nameOf(i)), ['t.pcap', 't.1.pcap', 't.2.pcap']);
  t.same([0, 1].map((i) => fileSet('/r', { kind: 'prefix', prefix: 'web', startSec: 17, id: 'ab12cd34' }, '.pcapng', ROTATING).nameOf(i)), ['web_17_ab12cd34_0.pcapng', 'web_17_ab12cd34_1.pcapng']);
  const owned = (s: ReturnType<typeof named>) => ['t.pcap', 't.1.pcap', 't.12.pcap', 't.0.pcap', 't.01.pcap', 't.1.1.pcap', 't.pcapng', 't.1.pcapng', 't.x.pcap', 'tt.pcap'].filter((f) => s.owns(f));
  t.same(owned(named('t', true)), ['t.pcap', 't.1.pcap', 't.12.pcap'], 'rotating: NAME.pcap and NAME.N.pcap (N as it writes them)');
  t.same(owned(named('t', false)), ['t.pcap'], 'one file: only NAME.pcap');
  t.equal(named('t', true).describe(), 't.pcap, t.1.pcap, t.2.pcap, …');
  t.equal(sharedFile(named('a', true), fileSet('/elsewhere', { kind: 'name', name: 'a' }, '.pcap', NO_ROTATION)), undefined, 'another directory shares nothing');
});

t.test('two sets share a file exactly when their written names meet (every pair of a vocabulary of names)', async (t) => {
  const namings: FileNaming[] = [
    ...['a', 'a.1', 'a.2', 'a.12', 'a.0', 'a.1.1', 'a_1', 'b', 'x_100_ab12cd34_0', 'x_100_ab12cd34_12', 'x_100_ab12cd34', 'x_100_ab12cd34_0.1'].map((name): FileNaming => ({ kind: 'name', name })),
    { kind: 'prefix', prefix: 'x', startSec: 100, id: 'ab12cd34' },
    { kind: 'prefix', prefix: 'x_100', startSec: 7, id: 'ab12cd34' },
  ];
  const sets = namings.flatMap((n) => ['.pcap', '.pcapng'].flatMap((ext) => [NO_ROTATION, ROTATING].map((rot) => fileSet('/r', n, ext, rot))));
  // what a set writes, as far as any vocabulary name could reach
  const written = (s: (typeof sets)[number]) => new Set(Array.from({ length: s.rotation.maxPackets ? 40 : 1 }, (_, i) => s.nameOf(i)));
  let checked = 0;
  let sharing = 0;
  for (const a of sets)
    for (const b of sets) {
      const wa = written(a);
      const common = [...written(b)].filter((f) => wa.has(f));
      const shared = sharedFile(a, b);
      if ((shared !== undefined) !== (common.length > 0) || (shared !== undefined && !common.includes(shared)))
        t.fail(`${a.describe()} / ${b.describe()}: sharedFile says ${shared}, the written names meet at ${common.join(' ') || 'nothing'}`);
      for (const f of common) if (!a.owns(f) || !b.owns(f)) t.fail(`${f} is written by ${a.describe()} and ${b.describe()} but not owned by both`);
      checked++;
      if (shared !== undefined) sharing++;
    }
  t.ok(sharing > 0 && sharing < checked, `${checked} pairs checked, ${sharing} share a file`);
});

const list = async (rig: RecorderRig) => (await rpc<{ recordings: Recording[] }>(rig.recorder, 'ListRecordings', { includeStopped: true }))[1].recordings;
const filter = `dst=${VIP4}/32`;

/** Sends n frames to the VIP and waits until `id` has written both capture points of each. */
async function traffic(rig: RecorderRig, ids: string[], n: number, from: number): Promise<void> {
  const before = new Map((await list(rig)).map((r) => [r.id, r.stats.packetsWritten]));
  rig.send(Array.from({ length: n }, (_, i) => rig.frame({ src: `192.0.2.${100 + ((from + i) % 100)}`, dst: VIP4, sport: 40000 + from + i, payload: 40 })));
  await until(async () => (await list(rig)).filter((r) => ids.includes(r.id)).every((r) => r.stats.packetsWritten === before.get(r.id)! + 2 * n), 10000, `${n} packets in ${ids.join(', ')}`);
}

/** The daemon's recorder_dir, as the paths it reports spell it. */
function recordingDir(rig: RecorderRig): string {
  const dir = path.join(rig.d.dir, 'recordings');
  fs.mkdirSync(dir, { recursive: true });
  return fs.realpathSync(dir);
}

const frames = (file: string) => tsharkRows(file, ['frame.number']).length;

t.test('xdplb record -w t --overwrite never touches t.1.pcap while recording t.1 writes it', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const dir = recordingDir(rig);
  fs.writeFileSync(path.join(dir, 't.pcap'), 'an earlier capture');
  const [err, t1] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { fileName: 't.1' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  t.error(err);
  await traffic(rig, [t1.id], 3, 0);

  const rotating = rig.d.cli('record', '--filter', filter, '-w', 't', '--overwrite', '--rotate-packets', '5', '--detach');
  t.equal(rotating.code, 1, 'a rotating t would write t.1.pcap: refused');
  t.equal(
    rotating.stderr,
    `xdplb: FAILED_PRECONDITION: file_sink.file_name: t.pcap, t.1.pcap, t.2.pcap, … and the files of running recording ${t1.id} (t.1.pcap) would share t.1.pcap; stop it first or choose another name\n`,
    'one line naming the field, the shared file and the other recording',
  );
  t.equal(fs.readFileSync(path.join(dir, 't.pcap'), 'utf8'), 'an earlier capture', 'the refused start removed nothing');
  t.same((await list(rig)).map((r) => r.id), [t1.id], 'and started nothing');

  const single = rig.d.cli('record', '--filter', filter, '-w', 't', '--overwrite', '--detach');
  t.equal(single.code, 0, `a t that writes t.pcap only may replace it: ${single.stderr}`);
  const tId = /^recording (\w+): /.exec(single.stdout)![1];
  t.ok(fs.existsSync(path.join(dir, 't.1.pcap')), 't.1.pcap is still there');
  await traffic(rig, [t1.id, tId], 4, 10);
  const [, t1Final] = await rpc<Recording>(rig.recorder, 'StopRecording', { id: t1.id });
  const [, tFinal] = await rpc<Recording>(rig.recorder, 'StopRecording', { id: tId });
  t.same(t1Final.files.map((f) => f.path), [path.join(dir, 't.1.pcap')]);
  t.equal(frames(path.join(dir, 't.1.pcap')), 14, 'tshark reads all of t.1: 7 packets at both points');
  t.same(tFinal.files.map((f) => f.path), [path.join(dir, 't.pcap')]);
  t.equal(frames(path.join(dir, 't.pcap')), 8, 'and t, replaced, holds its own 4 at both points');
});

t.test('a name among a running recording\'s rotation names is refused at start, either way round, and changes nothing', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const dir = recordingDir(rig);
  const [err, a] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { fileName: 'a', rotation: { maxFilePackets: 4 } }, include: [{ destinationCidr: `${VIP4}/32` }], name: 'rotating a' });
  t.error(err);
  await traffic(rig, [a.id], 5, 0);
  const [, b2] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { fileName: 'b.2' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  const [, gen] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { filePrefix: 'x', rotation: { maxFilePackets: 4 } }, include: [{ destinationCidr: `${VIP4}/32` }] });
  const genFirst = path.basename(gen.files[0].path);
  const filesBefore = fs.readdirSync(dir).sort();
  const running = (await list(rig)).map((r) => r.id);

  const cli = rig.d.cli('record', '--filter', filter, '-w', 'a.2', '--detach');
  t.equal(cli.code, 1, 'xdplb record -w a.2 while a rotates: refused');
  t.equal(cli.stderr, `xdplb: FAILED_PRECONDITION: file_sink.file_name: a.2.pcap and the files of running recording ${a.id} ("rotating a") (a.pcap, a.1.pcap, a.2.pcap, …) would share a.2.pcap; stop it first or choose another name\n`);
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['a.12 while a rotates', { fileName: 'a.12' }, new RegExp(`would share a\\.12\\.pcap; .*`)],
    ['a rotating while a runs', { fileName: 'a', overwrite: true, rotation: { maxFilePackets: 9 } }, /would share a\.pcap;/],
    ['a rotating b while b.2 records', { fileName: 'b', rotation: { maxFileBytes: 4096 } }, new RegExp(`running recording ${b2.id} \\(b\\.2\\.pcap\\) would share b\\.2\\.pcap;`)],
    ['b.2 again, pcap', { fileName: 'b.2.pcap', overwrite: true }, /would share b\.2\.pcap;/],
    ['a name spelling a generated file', { fileName: genFirst.replace(/\.pcap$/, '') }, new RegExp(`running recording ${gen.id} \\(.*\\) would share ${genFirst.replace(/\./g, '\\.')};`)],
  ];
  for (const [what, fileSink, message] of cases) {
    const [e] = await rpc(rig.recorder, 'StartRecording', { fileSink, include: [{ destinationCidr: `${VIP4}/32` }] });
    t.equal(e?.code, grpc.status.FAILED_PRECONDITION, `${what}: FAILED_PRECONDITION`);
    t.match(e?.details ?? '', /^file_sink\.file_name: /, `${what}: names the field`);
    t.match(e?.details ?? '', message, `${what}: ${e?.details}`);
  }
  t.same((await list(rig)).map((r) => r.id), running, 'nothing started');
  t.same(fs.readdirSync(dir).sort(), filesBefore, 'no file made or removed');

  const [okErr, b] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { fileName: 'b' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  t.error(okErr, 'b writing b.pcap only may run beside b.2');
  const [pcapngErr, a2ng] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { fileName: 'a.2', format: 'CAPTURE_FORMAT_PCAPNG' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  t.error(pcapngErr, 'a.2.pcapng is not among a\'s .pcap files');

  await traffic(rig, [a.id, b.id, b2.id, a2ng.id], 5, 20);
  const [, aFinal] = await rpc<Recording>(rig.recorder, 'StopRecording', { id: a.id });
  t.same(aFinal.files.map((f) => path.basename(f.path)), ['a.pcap', 'a.1.pcap', 'a.2.pcap', 'a.3.pcap', 'a.4.pcap']);
  t.same(aFinal.files.map((f) => frames(f.path)), [4, 4, 4, 4, 4], 'tshark reads a\'s 20 packets, 4 a file: nothing broke it');
  for (const r of [b, b2, a2ng]) {
    const [, final] = await rpc<Recording>(rig.recorder, 'StopRecording', { id: r.id });
    t.equal(frames(final.files[0].path), 10, `${path.basename(final.files[0].path)}: its 10 packets`);
  }
});

t.test("-w '' lets the daemon name the file, as an empty file_name does in the API", needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const dir = recordingDir(rig);
  const cli = rig.d.cli('record', '--filter', filter, '-w', '', '--detach');
  t.equal(cli.code, 0, cli.stderr);
  const [, id, file] = /^recording (\w+): (\S+)\n/.exec(cli.stdout) ?? [];
  t.match(file, new RegExp(`^${dir}/xdplb_\\d+_${id}_0\\.pcap$`), 'xdplb_<start>_<id>_0.pcap in the recording directory');
  const [err, api] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { fileName: '' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  t.error(err);
  t.match(api.files[0].path, new RegExp(`^${dir}/xdplb_\\d+_${api.id}_0\\.pcap$`), 'the API names it the same way');
  await traffic(rig, [id, api.id], 3, 0);
  const stop = rig.d.cli('record', 'stop', id);
  t.equal(stop.code, 0, stop.stderr);
  t.equal(frames(file), 6, 'tshark reads its 3 packets at both points');

  const missing = rig.d.cli('record', '--filter', filter);
  t.equal(missing.code, 1, 'no -w at all is still an error');
  t.match(missing.stderr, /^xdplb: -w is required: .*"-w ''" \(an empty name\) lets the daemon name the file/, 'which says what -w \'\' does');
  t.match(rig.d.cli('record', '--help').stdout.replace(/\s+/g, ' '), /"-w ''" \(an empty name\) lets the daemon name the file: xdplb_<start unix time>_<recording id>_0\.pcap/, '--help says it too');
});

t.test('the daemon stops: xdplb record -w NAME prints the final summary it sent and exits 0; -w - ends its stream with one', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const run = (...args: string[]) => {
    const p = spawn(process.execPath, [MAIN, '--socket', rig.d.socket, 'record', '--filter', filter, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => void p.kill('SIGKILL'));
    const out = { stdout: [] as Buffer[], stderr: '', code: new Promise<number | null>((r) => p.once('exit', (c) => r(c))) };
    p.stdout.on('data', (d: Buffer) => out.stdout.push(d));
    p.stderr.on('data', (d: Buffer) => (out.stderr += d.toString()));
    return out;
  };
  const file = run('-w', 'shut');
  const live = run('-w', '-');
  await until(async () => (await list(rig)).length === 2, 10000, 'both recordings');
  const ids = (await list(rig)).map((r) => r.id);
  await traffic(rig, ids, 6, 0);
  t.equal(await rig.d.signal('SIGTERM'), 0, 'the daemon stops cleanly');

  t.equal(await file.code, 0, `-w NAME exits 0: ${file.stderr}`);
  const stdout = Buffer.concat(file.stdout).toString();
  const path0 = /^recording \w+: (\S+)/.exec(stdout)![1];
  t.match(stdout, /recording \w+ stopped \(shutdown\): 12 packets, \d+ bytes written/, 'the final summary the daemon sent');
  t.match(stdout, new RegExp(`  ${path0}  12 packets`), 'with its file');
  t.match(stdout, /the daemon stopped and ended the recording first: its files are complete/);
  t.equal(frames(path0), 12, 'tshark reads the 12 packets in the file');

  t.equal(await live.code, 0, `-w - exits 0: ${live.stderr}`);
  t.match(live.stderr, /stopped \(shutdown\): 12 packets/, 'the stream\'s summary on stderr');
  const captured = path.join(rig.d.dir, 'live.pcap');
  fs.writeFileSync(captured, Buffer.concat(live.stdout));
  t.equal(frames(captured), 12, 'tshark reads the 12 packets of the stream');
});

t.test('the daemon goes away without a summary: xdplb record -w NAME says so and where the file is', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const p = spawn(process.execPath, [MAIN, '--socket', rig.d.socket, 'record', '--filter', filter, '-w', 'killed'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => void p.kill('SIGKILL'));
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = new Promise<number | null>((r) => p.once('exit', (c) => r(c)));
  await until(() => stdout.includes('killed.pcap'), 10000, 'the CLI to print the path');
  const file = /^recording \w+: (\S+)/.exec(stdout)![1];
  await rig.d.signal('SIGKILL');
  t.equal(await code, 1, 'not a clean end: exit 1');
  t.match(stderr, new RegExp(`^xdplb: lost the daemon before recording \\w+ ended \\(.*\\); the daemon stopped or went away\\. Its files so far: ${file}\\n$`), stderr);
  t.ok(fs.existsSync(file), 'the file it names is there');
});
