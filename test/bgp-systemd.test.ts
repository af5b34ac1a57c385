// BGP under the hardened unit, without systemd as PID 1: the daemon runs with
// the capabilities systemd/xdplb.service grants (read from the file, with and
// without the drop-in systemd/xdplb.service.d/bgp.conf), /proc as ProcSubset=pid
// mounts it, and BIRD, its child, keeps what the daemon leaves it of those. A BIRD router in the
// peer namespace says whether the VIPs arrive.
// Not emulated: KillMode=process (whether systemd kills BIRD with a crashed
// daemon is up to PID 1; bgp-announce shows BIRD outliving a SIGKILLed daemon),
// SystemCallFilter=, RestrictAddressFamilies= (BIRD uses unix, netlink, inet and
// inet6 sockets, all allowed) and the mount sandbox (BIRD's files are all under
// state_dir, the unit's StateDirectory).
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bgpStatus, BGP_PEERS, reapSpeaker, router, sleep, type Router } from '../harness/bird-router';
import { daemonFixture, type DaemonFixture } from '../harness/daemon';
import { needsRoot } from '../harness/fixtures';
import { logged, logLine, spawnDaemon } from '../harness/systemd';
import { BGP_DROP_IN, unitCapabilities, unitCopy } from '../harness/systemd-unit';

const SERVICES = `
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
  - name: web6
    vip: 2001:db8:300::10
    port: 80
    protocol: tcp
    backends:
      - address: 2001:db8:200::11
`;

const WARN_CAPS = 'BIRD runs with capabilities it does not need, inherited from the daemon: grant the daemon CAP_SETPCAP so it drops them (systemd/xdplb.service.d/bgp.conf)';

const VIPS = ['203.0.113.10/32', '2001:db8:300::10/128'];

/** The fixture's daemon with a bgp: section, a router in the peer namespace, both reaped at teardown. */
async function bgpDaemon(t: Test): Promise<{ d: DaemonFixture; rt: Router }> {
  const d = await daemonFixture(t, { servicesYaml: SERVICES, extraYaml: `bgp:\n${BGP_PEERS}` });
  reapSpeaker(t, d);
  return { d, rt: await router(t, d) };
}

/** The daemon as the unit starts it: these capabilities and no other, /proc as ProcSubset=pid leaves it. */
function spawnUnderUnit(d: DaemonFixture, caps: string[]) {
  return spawnDaemon(d, { setpriv: ['--bounding-set', ['-all', ...caps.map((c) => `+${c}`)].join(','), '--inh-caps', '-all'], procSubsetPid: true });
}

/** The capability names in a /proc/PID/status mask: 0x400 -> ['net_bind_service']. */
function capNames(pid: number, field: 'CapBnd' | 'CapEff'): string[] {
  const hex = new RegExp(`^${field}:\\s*([0-9a-f]+)$`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1];
  const bits = BigInt(`0x${hex}`);
  const NAMES: Record<number, string> = { 8: 'setpcap', 10: 'net_bind_service', 12: 'net_admin', 38: 'perfmon', 39: 'bpf' };
  const names: string[] = [];
  for (let i = 0; i < 64; i++) if (bits & (1n << BigInt(i))) names.push(NAMES[i] ?? `cap${i}`);
  return names.sort();
}

async function until(what: string, cond: () => boolean, explain: () => string, ms = 20000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}\n${explain()}`);
    await sleep(100);
  }
}

const needsAnalyze = { skip: fs.existsSync('/usr/bin/systemd-analyze') || fs.existsSync('/bin/systemd-analyze') ? false : 'systemd-analyze is not installed' };

t.test('systemd reads the drop-in as this test does: verify prints nothing, and security --offline finds the same capabilities granted', needsAnalyze, async (t) => {
  const unit = unitCopy(t, [BGP_DROP_IN]);
  const verify = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8' });
  t.equal(verify.status, 0, 'verify exits 0');
  t.equal(verify.stderr.trim(), '', 'and prints no warning (an unknown key in the drop-in would be one)');

  const security = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', unit], { encoding: 'utf8' }).stdout;
  // "✗ CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW) ...": a capability of the pattern is granted
  const checks = [...security.matchAll(/^([✓✗]) CapabilityBoundingSet=~(\S+)/gm)].map((m) => ({ granted: m[1] === '✗', pattern: new RegExp(`^${m[2].replace(/\*/g, '.*')}$`) }));
  t.ok(checks.length > 10, `${checks.length} capability checks in systemd's report`);
  const caps = unitCapabilities([BGP_DROP_IN]).map((c) => `CAP_${c.toUpperCase()}`);
  for (const c of checks) t.equal(caps.some((cap) => c.pattern.test(cap)), c.granted, `${c.pattern.source}: ${c.granted ? 'granted' : 'not granted'} by systemd, and as the test reads the files`);
  t.ok(checks.some((c) => c.granted && c.pattern.test('CAP_NET_BIND_SERVICE')), 'systemd adds CAP_NET_BIND_SERVICE to the unit\'s set');
});

t.test('with the bgp drop-in: BIRD runs with CAP_NET_BIND_SERVICE alone, binds port 179, and the router gets the VIPs', needsRoot, async (t) => {
  const caps = unitCapabilities([BGP_DROP_IN]);
  t.ok(caps.includes('net_bind_service') && caps.includes('setpcap') && unitCapabilities().every((c) => caps.includes(c)), `the drop-in adds CAP_NET_BIND_SERVICE and CAP_SETPCAP to the unit's set: ${caps.join(' ')}`);
  const { d, rt } = await bgpDaemon(t);
  const proc = spawnUnderUnit(d, caps);
  await logLine(d, (l) => l.includes('"msg":"ready"'));
  const explain = () => `${rt.protocols()}\n${d.logs.join('\n')}`;
  await until('both VIPs reach the router', () => VIPS.every((p) => rt.routes().has(p)), explain);
  const st = bgpStatus(d);
  t.ok(st.peers.every((p) => p.established), `both sessions established: ${st.peers.map((p) => p.info).join('; ')}`);
  // nsenter, unshare, sh and setpriv each exec the next: the pid is the daemon's
  t.same(capNames(proc.pid!, 'CapBnd'), [...caps].sort(), "the daemon's bounding set is the unit's, with the drop-in");
  t.same(capNames(st.speakerPid, 'CapEff'), ['net_bind_service'], 'BIRD runs with CAP_NET_BIND_SERVICE alone (TCP MD5 on the IPv4 session included)');
  t.same(capNames(st.speakerPid, 'CapBnd'), ['net_bind_service'], 'and cannot regain another');
  t.same(logged(d, WARN_CAPS), [], 'no warning about capabilities');
  t.equal(st.speakerRestarts, 0, 'the daemon sees BIRD alive under ProcSubset=pid, ProtectProc=invisible: no restarts');
  t.same(fs.readdirSync(path.join(d.stateDir, 'bgp')).sort(), ['bird.conf', 'bird.ctl', 'bird.log', 'bird.pid'], "BIRD's files are in state_dir (the unit's StateDirectory)");

  t.equal(await proc.stop(), 0, 'SIGTERM: exit 0');
  t.notOk(VIPS.some((p) => rt.routes().has(p)), 'every VIP withdrawn by the time the daemon is gone');
});

t.test('without the drop-in: BIRD cannot listen on port 179, and the daemon says so and what to install, in its log and in bgp status', needsRoot, async (t) => {
  const { d, rt } = await bgpDaemon(t);
  const proc = spawnUnderUnit(d, unitCapabilities());
  await logLine(d, (l) => l.includes('"msg":"ready"'));
  const peers = await logLine(d, (l) => l.includes('"msg":"bgp peer not established"') && l.includes('192.0.2.1'));
  const cause = /^Error: No listening socket: BIRD cannot bind TCP port 179 without CAP_NET_BIND_SERVICE, .* install systemd\/xdplb\.service\.d\/bgp\.conf .*; see .*bird\.log$/;
  t.match(JSON.parse(peers), { level: 'warn', state: 'down', info: cause }, 'the log names the capability and the drop-in, at warn');
  const st = bgpStatus(d);
  for (const p of st.peers) t.match(p, { established: false, state: 'down', info: cause }, `bgp status: ${p.address} down, and why`);
  t.match(d.cli('bgp', 'status').stdout, /^192\.0\.2\.1\s+64513\s+down\s+Error: No listening socket: BIRD cannot bind TCP port 179 without CAP_NET_BIND_SERVICE/m, 'the table says it too');
  t.match(logged(d, WARN_CAPS), [{ level: 'warn', capabilities: ['CAP_NET_ADMIN', 'CAP_PERFMON', 'CAP_BPF'] }], "without CAP_SETPCAP BIRD keeps the daemon's capabilities, and the daemon warns, naming them");
  t.equal(st.speakerRestarts, 0, 'BIRD itself runs (its pid visible under ProcSubset=pid): nothing to restart');
  await sleep(3000);
  t.notOk(/Established/.test(rt.protocols()), `the router never established a session (${rt.protocols().trim().split('\n').slice(-2).join('; ')})`);
  t.equal(rt.routes().size, 0, 'and has no route');
  t.equal(await proc.stop(), 0, 'SIGTERM: exit 0');
});
