// The recorder with real frames through the load balancer: file recordings in
// PCAP and pcapng, a live stream through the CLI into tshark, stop conditions
// and Ctrl-C — every file and stream read back by tshark and checked against
// what was sent.
import t from 'tap';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { MAIN } from '../harness/daemon';
import { needsRoot } from '../harness/fixtures';
import { recorderRig, rpc, tsharkRows, until, VIP4, VIP6 } from '../harness/recorder';

interface Recording {
  id: string;
  state: string;
  stopReason: string;
  ruleId: number;
  stats: { packetsWritten: number; bytesWritten: number; bytesCaptured: number; lostInRing: number; droppedSlowClient: number; droppedWriteError: number };
  files: Array<{ path: string; packets: number; sizeBytes: number; closed: boolean }>;
}

const N = 12;

t.test('file recordings: both capture points of every matching packet, PCAP and pcapng, read by tshark', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const [e1, v4] = await rpc<Recording>(rig.recorder, 'StartRecording', {
    fileSink: { fileName: 'v4', format: 'CAPTURE_FORMAT_PCAP' },
    include: [{ sourceCidr: '192.0.2.0/24', destinationCidr: `${VIP4}/32`, destinationPort: 80, protocol: 'CAPTURE_PROTOCOL_TCP' }],
    name: 'web4',
  });
  t.error(e1);
  const [e2, v6] = await rpc<Recording>(rig.recorder, 'StartRecording', {
    fileSink: { fileName: 'v6', format: 'CAPTURE_FORMAT_PCAPNG' },
    include: [{ destinationCidr: `${VIP6}/128`, protocol: 'CAPTURE_PROTOCOL_TCP' }],
    maxCaptureLength: 128,
    name: 'web6',
  });
  t.error(e2);
  // Overlapping the first: every packet to the IPv4 VIP, any port, any client.
  const [e3, all4] = await rpc<Recording>(rig.recorder, 'StartRecording', { fileSink: { fileName: 'all4' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  t.error(e3);
  t.equal(v4.state, 'RECORDING_STATE_RUNNING');
  t.match(v4.files[0].path, /\/v4\.pcap$/);
  t.match(v6.files[0].path, /\/v6\.pcapng$/);

  const sent4 = Array.from({ length: N }, (_, i) => rig.frame({ src: `192.0.2.${100 + i}`, dst: VIP4, sport: 40000 + i, payload: 10 + 37 * i }));
  const sent6 = Array.from({ length: N }, (_, i) => rig.frame({ src: `2001:db8::${100 + i}`, dst: VIP6, sport: 41000 + i, payload: 100 + 11 * i }));
  // Not matched: another client prefix to the same service, another port of the VIP.
  const other = [rig.frame({ src: '203.0.113.200', dst: VIP4, sport: 42000, payload: 20 }), rig.frame({ src: '192.0.2.100', dst: VIP4, sport: 42001, dport: 81, payload: 20 })];
  const before = Date.now();
  rig.send([...sent4, ...other, ...sent6]);
  const after = Date.now();
  await new Promise((r) => setTimeout(r, 300));

  const [, s4] = await rpc<Recording>(rig.recorder, 'StopRecording', { id: v4.id });
  const [, s6] = await rpc<Recording>(rig.recorder, 'StopRecording', { id: v6.id });
  const [, sAll] = await rpc<Recording>(rig.recorder, 'StopRecording', { id: all4.id });
  // The overlapping recording has every packet the first has, and the two others: the
  // other client's (forwarded: in and out) and the one to port 81 (no service: passed,
  // so only its inbound copy).
  const allRows = tsharkRows(sAll.files[0].path, ['tcp.srcport', 'ip.proto']);
  t.equal(sAll.stats.packetsWritten, 2 * N + 3, 'a packet matching two recordings went to both');
  t.equal(allRows.filter((r) => r[0] === '42000').length, 2, 'the other client: in and out');
  t.same(allRows.filter((r) => r[0] === '42001').map((r) => r[1]), ['6'], 'port 81, not a service: inbound only');
  for (const s of [s4, s6]) {
    t.equal(s.state, 'RECORDING_STATE_STOPPED');
    t.equal(s.stopReason, 'STOP_REASON_REQUESTED');
    t.equal(s.stats.packetsWritten, 2 * N, `${s.id}: an inbound and an outbound copy of each of the ${N} packets`);
    t.equal(s.stats.lostInRing, 0, 'nothing lost in the ring');
    t.equal(s.files.length, 1);
    t.ok(s.files[0].closed, 'file closed');
    t.equal(s.files[0].packets, 2 * N);
    t.equal(s.files[0].sizeBytes, fs.statSync(s.files[0].path).size, 'the summary has the file size');
  }

  // PCAP: inbound as sent; outbound inside IPIP, to a backend, around the very same packet.
  const rows = tsharkRows(s4.files[0].path, ['frame.time_epoch', 'frame.len', 'frame.cap_len', 'ip.proto', 'ip.src', 'ip.dst', 'tcp.srcport']);
  t.equal(rows.length, 2 * N, 'tshark reads every packet');
  const times = rows.map((r) => Number(r[0]));
  t.ok(times.every((x, i) => i === 0 || x >= times[i - 1]), 'timestamps never decrease');
  t.ok(times.every((x) => x * 1000 >= before - 1000 && x * 1000 <= after + 1000), `timestamps within a second of the wall clock (${times[0]} .. ${times.at(-1)}, sent ${before / 1000} .. ${after / 1000})`);
  for (let i = 0; i < N; i++) {
    const sport = String(40000 + i);
    const inb = rows.filter((r) => r[6] === sport && r[3] === '6');
    const out = rows.filter((r) => r[6] === sport && r[3] === '4,6');
    t.equal(inb.length, 1, `packet ${i}: one inbound copy`);
    t.equal(out.length, 1, `packet ${i}: one outbound copy, IPIP around TCP`);
    if (inb.length !== 1 || out.length !== 1) continue;
    t.same([inb[0][1], inb[0][2]], [String(sent4[i].length), String(sent4[i].length)], `packet ${i}: inbound original and captured length ${sent4[i].length}`);
    t.same([out[0][1], out[0][2]], [String(sent4[i].length + 20), String(sent4[i].length + 20)], 'outbound: 20 bytes more (the outer IPv4 header)');
    t.equal(inb[0][5], VIP4);
    t.match(out[0][5], new RegExp(`^198\\.51\\.100\\.1[12],${VIP4.replace(/\./g, '\\.')}$`), 'outer destination a backend, inner the VIP');
    t.match(out[0][4], new RegExp(`^192\\.0\\.2\\.\\d+,192\\.0\\.2\\.${100 + i}$`), 'inner source the client');
  }
  t.notOk(rows.some((r) => r[4].includes('203.0.113.200') || r[6] === '42001'), 'the non-matching flows are absent');

  // pcapng: capture points as interfaces, comments with rule and backend, cap length 128.
  const rows6 = tsharkRows(s6.files[0].path, ['frame.interface_name', 'frame.len', 'frame.cap_len', 'ipv6.nxt', 'ipv6.dst', 'frame.comment', 'tcp.srcport']);
  t.equal(rows6.length, 2 * N);
  for (let i = 0; i < N; i++) {
    const sport = String(41000 + i);
    const inb = rows6.filter((r) => r[6] === sport && r[0] === 'xdplb-in');
    const out = rows6.filter((r) => r[6] === sport && r[0] === 'xdplb-out');
    t.equal(inb.length, 1, `packet ${i}: one copy on xdplb-in`);
    t.equal(out.length, 1, `packet ${i}: one copy on xdplb-out`);
    if (inb.length !== 1 || out.length !== 1) continue;
    t.same([inb[0][1], inb[0][2]], [String(sent6[i].length), '128'], `packet ${i}: original length ${sent6[i].length}, 128 captured`);
    t.same([out[0][1], out[0][2]], [String(sent6[i].length + 40), '128'], 'outbound: 40 bytes more (the outer IPv6 header), 128 captured');
    t.equal(out[0][3], '41,6', 'outbound: IP6IP6 around TCP');
    t.match(out[0][4], new RegExp(`^2001:db8:200::1[12],${VIP6}$`), 'outer destination a backend, inner the VIP');
    t.equal(inb[0][5], `rule ${v6.ruleId} web6`, 'inbound comment: the rule');
    t.match(out[0][5], new RegExp(`^rule ${v6.ruleId} web6; backend \\[?2001:db8:200::1[12]\\]?`), 'outbound comment: the rule and the backend');
  }
});

t.test('a live stream through the CLI into tshark; Ctrl-C ends it with a valid capture', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  // A shell pipeline, as an operator types it: tshark refuses to read a socket
  // (what Node's own pipes are) as "-", and reads a real pipe.
  const q = (s: string) => `'${s}'`;
  const errFile = `${rig.d.dir}/record.err`;
  const pipeline = [
    [process.execPath, MAIN, '--socket', rig.d.socket, 'record', '--filter', `dst=${VIP4}/32 dport=80 proto=tcp`, '--caplen', '64', '-w', '-'].map(q).join(' '),
    `2>${q(errFile)}`,
    '|',
    ['tshark', '-r', '-', '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=a', '-E', 'aggregator=,', '-e', 'frame.len', '-e', 'frame.cap_len', '-e', 'ip.proto', '-e', 'tcp.srcport'].map(q).join(' '),
  ].join(' ');
  const shell = spawn('sh', ['-c', pipeline], { stdio: ['ignore', 'pipe', 'pipe'] });
  const cliPid = async () => {
    let pid: number | undefined;
    await until(() => {
      const children = fs.readFileSync(`/proc/${shell.pid}/task/${shell.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
      // the node process itself: before its exec a forked child of the shell
      // still shows the shell's command line, which names main.js too
      pid = children.find((c) => {
        const argv = fs.readFileSync(`/proc/${c}/cmdline`, 'utf8').split('\0');
        return argv[0] === process.execPath && argv.some((a) => a.endsWith('main.js'));
      });
      return pid !== undefined;
    }, 5000, 'the CLI process');
    return pid!;
  };
  t.teardown(() => void shell.kill('SIGKILL'));
  let out = '';
  let tsharkErr = '';
  shell.stdout.on('data', (d: Buffer) => (out += d.toString()));
  shell.stderr.on('data', (d: Buffer) => (tsharkErr += d.toString()));
  const exited = new Promise<number | null>((r) => shell.once('exit', (c) => r(c)));
  const cli = await cliPid();

  await until(async () => (await rpc<{ recordings: Recording[] }>(rig.recorder, 'ListRecordings', {}))[1].recordings.length === 1, 10000, 'the stream recording');
  const sent = Array.from({ length: N }, (_, i) => rig.frame({ src: `192.0.2.${100 + i}`, dst: VIP4, sport: 43000 + i, payload: 100 }));
  rig.send([...sent, rig.frame({ src: '192.0.2.100', dst: VIP4, sport: 43999, dport: 81, payload: 10 })]);
  await new Promise((r) => setTimeout(r, 300));
  process.kill(cli, 'SIGINT');
  t.equal(await exited, 0, `the pipeline ends when Ctrl-C stops the CLI; tshark read the whole stream without error ${tsharkErr}`);
  const stderr = fs.readFileSync(errFile, 'utf8');
  const rows = out.split('\n').filter(Boolean).map((l) => l.split('|'));
  t.equal(rows.length, 2 * N, `tshark decoded ${rows.length} packets: both points of each of ${N}`);
  t.equal(rows.filter((r) => r[2] === '6').length, N, 'inbound copies');
  t.equal(rows.filter((r) => r[2] === '4,6').length, N, 'outbound copies: IPIP');
  t.ok(rows.every((r) => r[1] === '64'), 'every frame cut to the cap length 64');
  t.ok(rows.filter((r) => r[2] === '6').every((r) => r[0] === String(sent[0].length)), 'inbound original length kept');
  t.notOk(rows.some((r) => r[3] === '43999'), 'the packet to another port is absent');
  t.match(stderr, /stopped \(requested\): 24 packets/, 'the final summary on stderr');
  const [, list] = await rpc<{ recordings: Recording[] }>(rig.recorder, 'ListRecordings', { includeStopped: true });
  t.equal(list.recordings.length, 1);
  t.equal(list.recordings[0].stopReason, 'STOP_REASON_REQUESTED');
  t.equal(list.recordings[0].stats.droppedSlowClient, 0, 'nothing dropped for the reader');
});

t.test('a packet-count stop condition ends a recording by itself with a valid file; xdplb record stop on a stopped one shows its summary', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const [err, r] = await rpc<Recording>(rig.recorder, 'StartRecording', {
    fileSink: { filePrefix: 'count' },
    include: [{ destinationCidr: `${VIP4}/32` }],
    stopCondition: { packetsCapturedCount: 7 },
  });
  t.error(err);
  t.match(r.files[0].path, new RegExp(`/count_\\d+_${r.id}_0\\.pcap$`), 'generated name: prefix, start time, id, sequence');
  rig.send(Array.from({ length: N }, (_, i) => rig.frame({ src: `192.0.2.${100 + i}`, dst: VIP4, sport: 44000 + i, payload: 50 })));
  let final: Recording | undefined;
  await until(async () => {
    final = (await rpc<{ recordings: Recording[] }>(rig.recorder, 'ListRecordings', { includeStopped: true }))[1].recordings.find((x) => x.id === r.id);
    return final?.state === 'RECORDING_STATE_STOPPED';
  }, 5000, 'the recording to stop');
  t.equal(final!.stopReason, 'STOP_REASON_PACKETS');
  t.equal(final!.stats.packetsWritten, 7);
  t.equal(tsharkRows(final!.files[0].path, ['frame.number']).length, 7, 'tshark reads exactly 7 packets');
  const stop = rig.d.cli('record', 'stop', r.id);
  t.equal(stop.code, 0, stop.stderr);
  t.match(stop.stdout, new RegExp(`recording ${r.id} stopped \\(packets\\): 7 packets`), 'the summary of the stopped recording');
  const unknown = rig.d.cli('record', 'stop', 'feedf00d');
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /^xdplb: NOT_FOUND: id: recording "feedf00d" not found\n$/, 'one line naming what is wrong');
});

t.test('Ctrl-C on `xdplb record -w NAME` stops the file recording and prints its summary', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  const cli = spawn(process.execPath, [MAIN, '--socket', rig.d.socket, 'record', '--filter', `src=2001:db8::/64 dst=${VIP6}/128`, '--format', 'pcapng', '-w', 'ctrlc'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => cli.kill('SIGKILL'));
  let stdout = '';
  cli.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const exit = new Promise<number | null>((r) => cli.once('exit', (c) => r(c)));
  await until(() => stdout.includes('ctrlc.pcapng'), 10000, 'the CLI to print the path');
  const path = /recording \w+: (\S+)/.exec(stdout)![1];
  t.ok(path.startsWith(rig.d.dir), `the file is in the recording directory: ${path}`);
  rig.send(Array.from({ length: 5 }, (_, i) => rig.frame({ src: `2001:db8::${200 + i}`, dst: VIP6, sport: 45000 + i, payload: 30 })));
  await new Promise((r) => setTimeout(r, 300));
  const listed = rig.d.cli('record', 'list');
  t.equal(listed.code, 0, listed.stderr);
  t.match(listed.stdout, /^ID\s+NAME\s+STATE\s+RULE\s+FILTERS\s+PACKETS\s+BYTES\s+LOST\s+DROPPED\s+SINK\n\w{8}\s+-\s+running\s+\d+\s+1\s+10\s+\d+\s+0\s+0\s+\S+ctrlc\.pcapng/, 'xdplb record list: the recording, its counters and its file');
  const json = JSON.parse(rig.d.cli('record', 'list', '-o', 'json').stdout) as Array<{ id: string; include: Array<{ sourceCidr: string }> }>;
  t.equal(json[0].include[0].sourceCidr, '2001:db8::/64', 'JSON: the normalized filter');
  cli.kill('SIGINT');
  t.equal(await exit, 0);
  t.match(stdout, /stopped \(requested\): 10 packets/);
  t.match(stdout, /wireshark \S+ctrlc\.pcapng/, 'how to open it');
  t.equal(tsharkRows(path, ['frame.number']).length, 10, 'tshark reads the 10 packets');
});

t.test('a slow stream reader: whole packets are dropped and counted past its buffer, and what it gets is a valid capture', needsRoot, async (t) => {
  const rig = await recorderRig(t);
  type Chunk = { data: Buffer; recording?: Recording | null };
  const stream = (rig.recorder.Record as (r: unknown) => import('@grpc/grpc-js').ClientReadableStream<Chunk>)({ include: [{ destinationCidr: `${VIP4}/32` }], maxBufferedBytes: 65536 });
  const chunks: Buffer[] = [];
  let last: Recording | undefined;
  const ended = new Promise<void>((resolve, reject) => {
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  await new Promise<void>((resolve) =>
    stream.once('data', (c: Chunk) => {
      chunks.push(c.data);
      last = c.recording ?? undefined;
      resolve();
    }),
  );
  // Stop reading: the HTTP/2 window and the socket buffers fill, then the daemon's 64 KiB.
  stream.pause();
  const sent = 3000;
  rig.send(Array.from({ length: sent }, (_, i) => rig.frame({ src: `192.0.2.${100 + (i % 100)}`, dst: VIP4, sport: 30000 + i, payload: 400 })));
  await new Promise((r) => setTimeout(r, 500));
  const [, mid] = await rpc<Recording>(rig.recorder, 'ListRecordings', {});
  const running = (mid as unknown as { recordings: Recording[] }).recordings[0];
  t.ok(running.stats.droppedSlowClient > 0, `${running.stats.droppedSlowClient} packets dropped while the reader did not read`);
  stream.on('data', (c: Chunk) => {
    chunks.push(c.data);
    if (c.recording) last = c.recording;
  });
  stream.resume();
  await rpc(rig.recorder, 'StopRecording', { id: last!.id });
  await ended;
  t.equal(last!.state, 'RECORDING_STATE_STOPPED', 'the last chunk has the final statistics');
  t.equal(last!.stats.packetsWritten + last!.stats.droppedSlowClient, 2 * sent, 'every packet written or counted as dropped');
  t.equal(last!.stats.lostInRing, 0);
  const file = `${rig.d.dir}/slow.pcap`;
  fs.writeFileSync(file, Buffer.concat(chunks));
  t.equal(tsharkRows(file, ['frame.number']).length, last!.stats.packetsWritten, 'tshark reads exactly the packets written: no packet cut');
});
