// The daemon as systemd runs it, where systemd is not PID 1: a notify socket
// the test owns (then removes, or never makes), the unit's capabilities less
// one, /proc mounted as ProcSubset=pid leaves it. Notifications never decide
// anything: a reload still reloads and a stop still closes its recordings.
// STATUS= follows the state; a missing capability is named with its reason
// before anything is touched; forwarding is checked over netlink; the first
// start says it found no pinned state.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { daemonFixture, PEER_MAC, peerSender, rpc, type DaemonFixture } from '../harness/daemon';
import { needsRoot, sh } from '../harness/fixtures';
import { ether, ipv4, tcp, TCP_ACK } from '../harness/packets';
import { tsharkRows, until, VIP4 } from '../harness/recorder';
import { fields, logged, logLine, notifyListener, PROC_SUBSET_PID, spawnDaemon, type Notification } from '../harness/systemd';
import { unitCapabilities } from '../harness/systemd-unit';

const SERVICES = `
  - name: web
    vip: ${VIP4}
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
      - address: 198.51.100.12
`;

const NOT_DELIVERED = 'systemd notification not delivered; the daemon carries on and logs this failure again only after a notification got through';

/** SIGHUP, then the reload's log line; the daemon must still be running after it. */
async function reload(t: Test, d: DaemonFixture, nth: number): Promise<void> {
  d.proc!.kill('SIGHUP');
  await until(() => logged(d, 'configuration reloaded').length >= nth || d.proc!.exitCode !== null, 15000, `reload ${nth}`);
  t.equal(d.proc!.exitCode, null, `reload ${nth}: the daemon is still running`);
  t.equal(logged(d, 'configuration reloaded').length, nth, `reload ${nth} done`);
}

t.test('the notify socket removed under a running daemon: SIGHUP reloads, SIGTERM closes the recording and exits 0, one warning', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  const n = await notifyListener(t, d);
  const proc = spawnDaemon(d, { env: { NOTIFY_SOCKET: n.address } });
  await n.next((m) => fields(m).READY === '1');

  const rec = d.client('Recorder');
  const [e, recording] = await rpc<{ id: string; files: Array<{ path: string }> }>(rec, 'StartRecording', { fileSink: { fileName: 'gone' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  t.error(e, 'recording started');
  const file = recording.files[0].path;
  const peer = peerSender(t, d);
  const frames = Array.from({ length: 5 }, (_, i) => ether(ipv4({ src: '192.0.2.100', dst: VIP4 }, tcp({ sport: 41000 + i, dport: 80, flags: TCP_ACK, payload: Buffer.alloc(32) })), { dst: peer.lbMac, src: PEER_MAC }));
  peer.send(frames);
  await n.next((m) => /; 1 recording$/.test(fields(m).STATUS ?? ''));

  n.close();
  fs.unlinkSync(n.address);
  await reload(t, d, 1);
  await reload(t, d, 2);
  const [eStatus] = await rpc(d.client(), 'GetNodeStatus', {});
  t.error(eStatus, 'the API answers after both reloads');
  const warnings = logged(d, NOT_DELIVERED);
  t.equal(warnings.length, 1, 'four failed notifications, one warning');
  t.match(warnings[0], { level: 'warn', socket: n.address, notification: 'RELOADING=1', error: /ENOENT/ }, 'it names the socket, the message and the errno');

  t.equal(await proc.stop(), 0, 'SIGTERM: exit 0');
  t.match(logged(d, 'recording stopped'), [{ recording: recording.id, reason: 'shutdown' }], 'the recording was stopped by the shutdown');
  const rows = tsharkRows(file, ['ip.dst', 'tcp.srcport']);
  t.same(rows.filter((r) => r[0] === VIP4).map((r) => r[1]).sort(), ['41000', '41001', '41002', '41003', '41004'], 'tshark reads every recorded frame from the closed file');
  t.equal(logged(d, NOT_DELIVERED).length, 1, 'STOPPING=1 failing with the same errno adds no warning');
});

t.test('a notify socket that never existed, or one out of reach: the daemon starts, reloads and stops cleanly', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  // An abstract name belongs to a network namespace: one bound in the test's is out of the daemon's reach.
  const unreachable = await notifyListener(t, d, { abstract: 'test' });
  for (const [what, socket, errno] of [
    ['never existed', path.join(d.dir, 'no-such.sock'), /ENOENT/],
    ['abstract, in another network namespace', unreachable.address, /ECONNREFUSED/],
  ] as const) {
    await t.test(what, async (t) => {
      d.logs = [];
      const proc = spawnDaemon(d, { env: { NOTIFY_SOCKET: socket } });
      await logLine(d, (l) => l.includes('"msg":"ready"'));
      await reload(t, d, 1);
      t.equal(await proc.stop(), 0, 'SIGTERM: exit 0');
      const warnings = logged(d, NOT_DELIVERED);
      t.equal(warnings.length, 1, 'READY=1, RELOADING=1, READY=1, STOPPING=1 failed: one warning');
      t.match(warnings[0], { socket, notification: 'READY=1', error: errno });
      t.ok(logged(d, 'stopped; the datapath stays attached and keeps forwarding').length, 'the stop ran to its end');
    });
  }
  t.same(unreachable.messages, [], 'nothing reached the socket in the other namespace');
});

/** STATUS= of a notification, or undefined. */
const status = (m: Notification) => fields(m).STATUS;

t.test('STATUS= follows services, backends down (by the API or a health check) and draining, recordings; a burst is rate-limited; nothing after STOPPING=1', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  const n = await notifyListener(t, d, { abstract: 'daemon' });
  const proc = spawnDaemon(d, { env: { NOTIFY_SOCKET: n.address } });
  const ready = await n.next((m) => fields(m).READY === '1');
  t.equal(status(ready), 'serving 1 service, 2 backends (0 down, 0 draining); 0 recordings', 'READY=1 carries the first STATUS= (abstract socket)');

  const lb = d.client();
  const api = (backends: Array<Record<string, unknown>>) => ({ service: { name: 'api', vip: '203.0.113.20', port: 443, protocol: 'PROTOCOL_TCP', backends: backends.map((b) => ({ port: 443, ...b })) } });
  const next = (line: string) => n.next((m) => status(m) === line);
  t.error((await rpc(lb, 'CreateService', api([{ address: '198.51.100.21' }, { address: '198.51.100.22' }])))[0]);
  await next('serving 2 services, 4 backends (0 down, 0 draining); 0 recordings');
  t.error((await rpc(lb, 'UpdateService', api([{ address: '198.51.100.21', state: 'BACKEND_STATE_DOWN' }, { address: '198.51.100.22', state: 'BACKEND_STATE_DRAINING' }])))[0]);
  await next('serving 2 services, 4 backends (1 down, 1 draining); 0 recordings');

  const rec = d.client('Recorder');
  const [e, recording] = await rpc<{ id: string }>(rec, 'StartRecording', { fileSink: { fileName: 'status' }, include: [{ destinationCidr: `${VIP4}/32` }] });
  t.error(e);
  await next('serving 2 services, 4 backends (1 down, 1 draining); 1 recording');
  t.error((await rpc(rec, 'StopRecording', { id: recording.id }))[0]);
  await next('serving 2 services, 4 backends (1 down, 1 draining); 0 recordings');

  // A service added by a reload whose backends answer no health probe: nothing listens behind peer0.
  d.writeConfig({
    servicesYaml: `${SERVICES}
  - name: checked
    vip: 203.0.113.40
    port: 80
    protocol: tcp
    health_check: { type: tcp, interval: 300ms, timeout: 100ms, fall: 2, rise: 2 }
    backends:
      - address: 198.51.100.41
      - address: 198.51.100.42
`,
  });
  proc.kill('SIGHUP');
  await next('serving 3 services, 6 backends (3 down, 1 draining); 0 recordings');
  t.pass('backends down by health check are counted');

  const before = n.messages.length;
  const BURST = 15;
  for (let i = 0; i < BURST; i++)
    t.error((await rpc(lb, 'CreateService', { service: { name: `b${i}`, vip: '203.0.113.30', port: 1000 + i, protocol: 'PROTOCOL_TCP', backends: [{ address: '198.51.100.31', port: 443 }] } }))[0]);
  await next(`serving ${3 + BURST} services, ${6 + BURST} backends (3 down, 1 draining); 0 recordings`);
  const burst = n.messages.slice(before).filter((m) => status(m) !== undefined).length;
  t.ok(burst < BURST, `${BURST} changes in a burst, ${burst} STATUS= updates`);

  t.equal(await proc.stop(), 0);
  await n.flush();
  t.equal(n.messages.findIndex((m) => fields(m).STOPPING === '1'), n.messages.length - 1, 'STOPPING=1 is the last message');
});

t.test('without one of the capabilities the unit grants, the daemon names it and why, and touches nothing', needsRoot, async (t) => {
  const caps = unitCapabilities();
  t.same([...caps].sort(), ['bpf', 'net_admin', 'perfmon'], 'the unit grants three capabilities');
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  const reasons: Record<string, RegExp> = { bpf: /bpf\(\): loading lb\.bpf\.o/, net_admin: /XDP programs .* rtnetlink/, perfmon: /pointer leaks allowed/ };
  for (const cap of caps) {
    d.logs = [];
    const others = caps.filter((c) => c !== cap);
    const proc = spawnDaemon(d, { setpriv: ['--bounding-set', ['-all', ...others.map((c) => `+${c}`)].join(','), '--inh-caps', '-all'] });
    t.equal(await proc.exited, 1, `without CAP_${cap.toUpperCase()}: exit 1`);
    t.equal(d.logs.length, 1, `one line: ${d.logs.join('\n')}`);
    t.match(d.logs[0], new RegExp(`^xdplb: missing capability CAP_${cap.toUpperCase()} \\(`), 'it names the capability');
    t.match(d.logs[0], reasons[cap], 'and what it is needed for');
    t.match(d.logs[0], /grant CAP_BPF CAP_NET_ADMIN CAP_PERFMON/, 'and what to grant');
    t.same(fs.readdirSync(d.bpffs), [], 'nothing pinned');
    t.notOk(fs.existsSync(d.stateDir), 'no state directory made');
  }
  d.logs = [];
  const proc = spawnDaemon(d, { setpriv: ['--bounding-set', '-all,+sys_admin,+net_admin', '--inh-caps', '-all'] });
  await logLine(d, (l) => l.includes('"msg":"ready"'));
  t.pass('CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as the kernel lets it');
  t.equal(await proc.stop(), 0);
});

t.test('under ProcSubset=pid: forwarding off is still reported (netlink), and a second daemon still refuses to start', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  const inNs = (...argv: string[]) => spawnSync('nsenter', [`--net=/var/run/netns/${d.topo.lbNs}`, ...argv], { encoding: 'utf8' });
  t.equal(inNs(...PROC_SUBSET_PID, 'test', '-e', '/proc/sys/net').status, 1, 'the mount hides /proc/sys');
  t.equal(inNs(...PROC_SUBSET_PID, 'test', '-e', '/proc/self/status').status, 0, 'and keeps /proc/self');
  sh('ip', 'netns', 'exec', d.topo.lbNs, 'sysctl', '-qw', 'net.ipv4.conf.lb0.forwarding=0', 'net.ipv6.conf.lb0.forwarding=0');

  const first = spawnDaemon(d, { procSubsetPid: true });
  await logLine(d, (l) => l.includes('"msg":"ready"'));
  const warning = JSON.parse(await logLine(d, (l) => l.includes('forwarding is off'))) as { interface: string; sysctls: string[] };
  t.equal(warning.interface, 'lb0');
  t.same(warning.sysctls, ['net.ipv4.conf.lb0.forwarding', 'net.ipv6.conf.lb0.forwarding'], 'it names both sysctls of lb0');
  t.notOk(d.logs.some((l) => l.includes('forwarding could not be checked')));

  const second = inNs(...PROC_SUBSET_PID, ...d.daemonArgv().slice(1));
  t.equal(second.status, 1, 'a second daemon exits 1');
  t.match(second.stderr, /^xdplb: another xdplb daemon \(pid unknown\) holds .*daemon\.lock: one daemon per node/, 'with the lock message, the holder unnamed (/proc/locks is hidden)');
  t.equal(await first.stop(), 0);

  sh('ip', 'netns', 'exec', d.topo.lbNs, 'sysctl', '-qw', 'net.ipv4.conf.lb0.forwarding=1', 'net.ipv6.conf.lb0.forwarding=1');
  d.logs = [];
  const again = spawnDaemon(d, { procSubsetPid: true });
  const checked = JSON.parse(await logLine(d, (l) => l.includes('"msg":"forwarding is on"'))) as { interface: string };
  t.equal(checked.interface, 'lb0', 'forwarding on: checked, no warning');
  t.notOk(d.logs.some((l) => l.includes('forwarding is off')));
  await logLine(d, (l) => l.includes('"msg":"ready"'));
  t.equal(await again.stop(), 0);
});

t.test('a fresh start says there was no pinned state; a restart says what it adopted', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  await d.start();
  t.same(logged(d, 'no pinned datapath state: starting with a fresh datapath').length, 1, 'fresh start: no pinned state');
  t.same(logged(d, 'adopted pinned datapath state'), [], 'fresh start: nothing adopted');
  t.equal(await d.signal('SIGTERM'), 0);
  await d.start();
  t.match(logged(d, 'adopted pinned datapath state'), [{ services: 1, backends: 2 }], 'restart: one service and its two backends adopted');
  t.same(logged(d, 'no pinned datapath state: starting with a fresh datapath'), [], 'restart: not fresh');
});
