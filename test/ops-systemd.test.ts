// The systemd unit and the daemon's side of it: the unit file passes
// `systemd-analyze verify`, its exposure score stays below 4.0, the daemon runs
// with nothing but the capabilities the unit grants, and it tells systemd what it
// is doing over $NOTIFY_SOCKET (READY=1 only once the API answers,
// RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { daemonFixture, MAIN, rpc } from '../harness/daemon';
import { needsRoot } from '../harness/fixtures';
import { logLine, notifyListener, spawnDaemon } from '../harness/systemd';
import { UNIT, unitCapabilities, unitCopy } from '../harness/systemd-unit';

const unitText = () => fs.readFileSync(UNIT, 'utf8');
const hasSystemdAnalyze = fs.existsSync('/usr/bin/systemd-analyze') || fs.existsSync('/bin/systemd-analyze');
const needsAnalyze = { skip: hasSystemdAnalyze ? false : 'systemd-analyze is not installed' };

/** The unit's values of `key` (every line, in order). */
function unitValues(key: string): string[] {
  return unitText()
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1).trim());
}

t.test('systemd-analyze verify accepts the unit', needsAnalyze, async (t) => {
  const copy = unitCopy(t);
  t.match(fs.readFileSync(copy, 'utf8'), `ExecStart=${process.execPath} ${MAIN} daemon`, 'ExecStart points at this checkout');
  for (const file of [copy, UNIT]) {
    const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' });
    t.equal(r.status, 0, `verify ${file === UNIT ? 'the unit as shipped' : 'the copy'} exits 0`);
    t.equal(r.stderr.trim(), '', 'and prints no warning');
  }
});

t.test('the unit is Type=notify, reloads with SIGHUP and keeps to its capability set', async (t) => {
  t.same(unitValues('Type'), ['notify']);
  t.same(unitValues('NotifyAccess'), ['main']);
  t.match(unitValues('ExecReload')[0], /kill -HUP \$MAINPID/);
  const bounding = unitValues('CapabilityBoundingSet')[0].split(/\s+/).sort();
  t.same(bounding, ['CAP_BPF', 'CAP_NET_ADMIN', 'CAP_PERFMON'], 'no CAP_SYS_ADMIN, no CAP_SYS_RESOURCE');
  t.same(unitValues('AmbientCapabilities')[0].split(/\s+/).sort(), bounding, 'ambient = bounding set');
  for (const key of ['NoNewPrivileges', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'ProtectKernelModules', 'ProtectControlGroups', 'RestrictSUIDSGID', 'LockPersonality'])
    t.same(unitValues(key), ['yes'], `${key}=yes`);
  t.same(unitValues('ProtectSystem'), ['strict']);
  t.same(unitValues('SystemCallArchitectures'), ['native']);
  t.ok(unitValues('RestrictAddressFamilies')[0].split(/\s+/).every((f) => ['AF_UNIX', 'AF_NETLINK', 'AF_INET', 'AF_INET6'].includes(f)));
});

t.test('exposure score below 4.0 (systemd-analyze security --offline)', needsAnalyze, async (t) => {
  const r = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', UNIT], { encoding: 'utf8' });
  const m = /Overall exposure level for xdplb\.service: ([0-9.]+)/.exec(r.stdout);
  t.ok(m, `exposure line found in:\n${r.stdout.slice(-400)}`);
  const score = Number(m?.[1]);
  t.comment(`exposure ${score}`);
  t.ok(score < 4.0, `exposure ${score} < 4.0`);
});

// ---------------------------------------------------------------------------
// The daemon under the unit's conditions

/** Capabilities named in the unit, as setpriv wants them: "-all,+bpf,+net_admin,...". */
function boundingSetArg(): string {
  return ['-all', ...unitCapabilities().map((c) => `+${c}`)].join(',');
}

const SERVICES = `
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
      - address: 198.51.100.12
`;

t.test('notify protocol: READY=1 once the API answers, RELOADING=1/READY=1 on SIGHUP, STOPPING=1 on SIGTERM', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  const n = await notifyListener(t, d);
  const proc = spawnDaemon(d, { env: { NOTIFY_SOCKET: n.address } });
  const exited = proc.exited;

  const ready = await n.next((m) => m.msg.split('\n').includes('READY=1'));
  t.ok(ready.apiListening, 'the API socket accepted a connection when READY=1 arrived');
  t.match(ready.msg, /STATUS=serving 1 service, 2 backends/, 'STATUS= says what it serves');
  t.equal(n.messages.indexOf(ready), 0, 'READY=1 is the first notification');
  const c = d.client();
  const [e, status] = await rpc<{ services: number }>(c, 'GetNodeStatus', {});
  t.error(e, 'the API answers right after READY=1');
  t.equal(status.services, 1);

  proc.kill('SIGHUP');
  const reloading = await n.next((m) => m.msg.split('\n').includes('RELOADING=1'));
  t.match(reloading.msg, /MONOTONIC_USEC=\d+/, 'RELOADING=1 carries MONOTONIC_USEC');
  await n.next((m) => m.msg.split('\n').includes('READY=1'));
  // the daemon logs before it sends READY=1, but its stdout and the listener's reach the test by separate pipes
  t.ok(await logLine(d, (l) => l.includes('configuration reloaded')), 'the reload happened between RELOADING=1 and READY=1');

  proc.kill('SIGTERM');
  await n.next((m) => m.msg.split('\n').includes('STOPPING=1'));
  t.equal(await exited, 0, 'exit code 0 after SIGTERM');
  t.same(
    n.messages.map((m) => m.msg.split('\n')[0]).filter((l) => !l.startsWith('STATUS=')),
    ['READY=1', 'RELOADING=1', 'READY=1', 'STOPPING=1'],
    'notifications in order, nothing else but STATUS= updates',
  );
});

t.test("the daemon needs no capability beyond the unit's bounding set", needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  const setpriv = ['--bounding-set', boundingSetArg(), '--inh-caps', '-all'];
  t.comment(`setpriv ${setpriv.join(' ')}`);
  for (const round of ['fresh start', 'restart adopting the pins']) {
    const proc = spawnDaemon(d, { setpriv });
    const exited = proc.exited;
    const deadline = Date.now() + 15000;
    while (!d.logs.some((l) => l.includes('"msg":"ready"'))) {
      if (proc.exitCode !== null || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    t.ok(d.logs.some((l) => l.includes('"msg":"ready"')), `${round}: ready\n${d.logs.join('\n')}`);
    const c = d.client();
    const [e1] = await rpc(c, 'CreateService', {
      service: { name: `api-${round.length}`, vip: '203.0.113.20', port: 443 + round.length, protocol: 'PROTOCOL_TCP', backends: [{ address: '198.51.100.21', port: 443 }] },
    });
    t.error(e1, `${round}: a service created through the API (maps and Maglev tables written)`);
    const [e2, status] = await rpc<{ attachments: Array<{ programId: number }> }>(c, 'GetNodeStatus', {});
    t.error(e2, `${round}: node status read`);
    t.ok(status.attachments[0]?.programId > 0, `${round}: program attached`);
    proc.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, 300));
    proc.kill('SIGTERM');
    t.equal(await exited, 0, `${round}: clean exit`);
    t.notOk(d.logs.some((l) => /EPERM|Operation not permitted/.test(l)), `${round}: no permission error logged`);
    d.logs = [];
  }
});
