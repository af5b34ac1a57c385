// `xdplb lab` from the command line, with config/lab.yaml's own services (only
// its paths made private to the test): up brings everything up, test shows
// every VIP served by every backend with zero errors, status sees it all, up
// again replaces it cleanly, and down removes every namespace, process, pin and
// file, and says so; down a second time has nothing to do.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { Lab, type LabStatus } from '../src/lab/lab';
import { labCliFixture } from '../src/lab/fixture';
import { namespacesWithPrefix } from '../src/lab/topology';
import type { LabTestResult } from '../src/lab/check';
import { needsRoot } from '../harness/fixtures';

function alive(pid: number): boolean {
  try {
    return !/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

t.test('xdplb lab up | test | status | down, with config/lab.yaml', needsRoot, async (t) => {
  const { paths: p, config, xdplb } = await labCliFixture(t);
  const lab = new Lab({ prefix: p.prefix, runDir: p.runDir, configPath: config });

  let t0 = Date.now();
  const up = xdplb('up');
  t.match(up, /lab up: API /, `lab up (${Date.now() - t0} ms)`);
  t.same(namespacesWithPrefix(p.prefix).sort(), ['be1', 'be2', 'be3', 'client', 'lb', 'router'].map((n) => p.prefix + n), 'six namespaces');

  t0 = Date.now();
  const r = JSON.parse(xdplb('test', '--json', '--count', '25')) as LabTestResult;
  t.ok(r.ok, `lab test passes (${Date.now() - t0} ms)`);
  t.same(r.services.map((s) => s.name).sort(), ['dns', 'web', 'web6'], 'every service of lab.yaml tested');
  for (const s of r.services) {
    t.equal(s.errors, 0, `${s.name}: zero errors`);
    t.ok(s.backends.every((b) => b.requests > 0), `${s.name}: served by every backend`);
  }
  t.ok(r.recording, 'the lab test recorded the VIP traffic');
  if (r.recording) {
    t.ok(fs.existsSync(r.recording.path), `the recording is a file: ${r.recording.path}`);
    const frames = execFileSync('tshark', ['-r', r.recording.path, '-T', 'fields', '-e', 'frame.interface_name'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n');
    t.equal(frames.length, r.recording.packets, `tshark reads its ${r.recording.packets} packets`);
    t.equal(r.recording.lostInRing, 0, 'none lost');
    t.equal(frames.filter((f) => f === 'xdplb-out').length, r.lb.forwarded, 'an outbound copy of every packet the load balancer forwarded');
    t.equal(frames.filter((f) => f === 'xdplb-in').length, r.lb.forwarded, 'and an inbound one');
  }
  const table = xdplb('test', '--count', '5');
  t.match(table, /recorded: \d+ packets to the VIPs.*\nopen it: wireshark \S+lab-test\.pcapng/, 'the table says where the recording is and how to open it');
  t.match(table, /SERVICE\s+VIP\s+BACKEND\s+ANSWERED\s+SHARE\s+MAGLEV/, 'the table');
  t.match(table, /service list --socket/, 'and what to try next');

  const st = JSON.parse(xdplb('status', '--json')) as LabStatus;
  t.ok(st.daemon.api && st.daemon.services === 3, 'status: the daemon answers with 3 services');
  t.equal(st.backends.length, 3);
  t.ok(st.backends.every((b) => b.serverPid !== null && b.decap.startsWith('native')), 'status: every backend has its server and its decapsulator');
  const pids = [st.daemon.pid as number, ...st.backends.map((b) => b.serverPid as number)];

  // up on top of a running lab: the old one goes first
  xdplb('up');
  t.ok(pids.every((pid) => !alive(pid)), 'a second up stopped the first lab\'s processes');
  const st2 = JSON.parse(xdplb('status', '--json')) as LabStatus;
  const pids2 = [st2.daemon.pid as number, ...st2.backends.map((b) => b.serverPid as number)];
  t.ok(st2.daemon.api, 'and its own daemon answers');

  const down = xdplb('down');
  t.match(down, /daemon stopped/, 'down stops the daemon');
  t.match(down, /namespaces removed/, 'removes the namespaces');
  t.match(down, /pins removed/, 'the pins');
  t.same(namespacesWithPrefix(p.prefix), [], 'no namespace left');
  t.ok(pids2.every((pid) => !alive(pid)), 'no process left');
  t.notOk(fs.existsSync(p.runDir), 'no run directory left');
  t.notOk(fs.existsSync(p.bpffs), 'no daemon pins left');
  t.notOk(fs.existsSync(lab.decapPins), 'no decapsulator pins left');
  t.equal(xdplb('down').trim(), 'nothing to remove', 'down again: nothing to do');
  t.match(xdplb('status'), /no lab/, 'status: no lab');
});
