// One daemon per node: a second daemon on the same configuration refuses to
// start, with one line naming the pid of the daemon that holds the lock, and
// touches nothing of the first one: its API, program, maps and a running
// recording carry on. The lock dies with its holder, SIGKILL included.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import * as net from 'node:net';
import { daemonFixture } from '../harness/daemon';
import { needsRoot } from '../harness/fixtures';
import { recorderRig, rpc, until, VIP4 } from '../harness/recorder';

interface Recording {
  id: string;
  stats: { packetsWritten: number };
}

t.test('a second daemon on the same config exits non-zero and leaves the first one serving', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const { d } = rig;
  const firstPid = d.proc!.pid!;
  const lb = d.client();
  const [e0, before] = await rpc<{ attachments: Array<{ programId: number }> }>(lb, 'GetNodeStatus', {});
  t.error(e0);
  const [eRec, rec] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { fileName: 'during' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  t.error(eRec);
  const frames = (sport: number, n: number) => Array.from({ length: n }, (_, i) => rig.frame({ src: '192.0.2.100', dst: VIP4, sport: sport + i, payload: 32 }));
  const written = async () => (await rpc<{ recordings: Recording[] }>(rig.recorder, 'ListRecordings', {}))[1].recordings.find((r) => r.id === rec.id)!.stats.packetsWritten;
  rig.send(frames(41000, 5));
  await until(async () => (await written()) === 10, 10000, 'the first 5 packets, in and out');

  const second = await runBounded(d.daemonArgv());
  t.not(second.code, 0, 'the second daemon exits non-zero');
  const lines = second.output.trim().split('\n');
  t.equal(lines.length, 1, `one line: ${second.output}`);
  t.match(lines[0], new RegExp(`^xdplb: another xdplb daemon \\(pid ${firstPid}\\) holds ${d.stateDir}/daemon\\.lock`), 'it names the holder');

  t.ok(fs.statSync(d.socket).isSocket(), 'the API socket is still there');
  const [e1, after] = await rpc<{ attachments: Array<{ programId: number }> }>(lb, 'GetNodeStatus', {});
  t.error(e1, 'the first daemon still answers its API');
  t.equal(after.attachments[0].programId, before.attachments[0].programId, 'the attached program was not replaced');
  rig.send(frames(42000, 5));
  await until(async () => (await written()) === 20, 10000, 'the running recording keeps receiving packets');
  t.equal(await written(), 20, 'every packet of both rounds recorded, none lost to a recorder reset');

  await d.signal('SIGKILL');
  await d.start();
  const [e2] = await rpc(d.client(), 'GetNodeStatus', {});
  t.error(e2, 'after a SIGKILL a new daemon starts and serves');
  t.equal(fs.readFileSync(path.join(d.stateDir, 'daemon.lock'), 'utf8').trim(), String(d.proc!.pid), 'the lock file names the new holder');
});

t.test('a daemon leaves an API socket alone while something listens on it', needsRoot, async (t) => {
  const d = await daemonFixture(t);
  fs.mkdirSync(path.dirname(d.socket), { recursive: true });
  // the daemon's probe connects and hangs up at once: a reset, not a failure
  const server = net.createServer((c) => c.on('error', () => {}).end('still here\n'));
  await new Promise<void>((resolve) => server.listen(d.socket, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const r = await runBounded(d.daemonArgv());
  t.not(r.code, 0, 'the daemon exits non-zero');
  t.match(r.output, new RegExp(`xdplb: api\\.socket: ${d.socket}: another process listens on this socket`), r.output);
  const answer = await new Promise<string>((resolve, reject) => {
    const c = net.connect(d.socket);
    let got = '';
    c.on('data', (b) => (got += b.toString()));
    c.on('end', () => resolve(got));
    c.on('error', reject);
  });
  t.equal(answer, 'still here\n', 'the listener keeps its socket');
});

/** Runs a daemon to its exit; one that is still running after 20 s is killed (and has failed). */
function runBounded(argv: string[]): Promise<{ code: number; output: string }> {
  const proc = spawn('nsenter', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (b: Buffer) => (output += b.toString()));
  proc.stderr.on('data', (b: Buffer) => (output += b.toString()));
  const timer = setTimeout(() => proc.kill('SIGKILL'), 20000);
  return new Promise((resolve) =>
    proc.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, output });
    }),
  );
}
