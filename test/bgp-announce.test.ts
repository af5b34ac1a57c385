// BGP announcement, checked at a real router: BIRD in the peer namespace peers
// with the speaker the daemon runs in the load balancer's namespace (IPv4 and
// IPv6 sessions over the lb0/peer0 veth), and the test reads the router's own
// routing table (birdc show route all) after every step.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { daemonFixture, MAIN, PEER_MAC, peerSender } from '../harness/daemon';
import { bgpStatus, BGP_PEERS, reapSpeaker, router, sleep, type BgpStatus, type Route, type Router } from '../harness/bird-router';
import { needsRoot, sh } from '../harness/fixtures';
import { ether, ipv4, tcp, TCP_ACK } from '../harness/packets';

const SERVICES = `
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
      - address: 198.51.100.12
  - name: web6
    vip: 2001:db8:300::10
    port: 80
    protocol: tcp
    backends:
      - address: 2001:db8:200::11
  - name: checked
    vip: 203.0.113.20
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.21
    health_check:
      type: tcp
      interval: 200ms
      timeout: 100ms
      fall: 2
  - name: resting
    vip: 203.0.113.30
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.31
        state: draining
`;

const BGP = `
bgp:
${BGP_PEERS}
  communities: ["64512:100"]
  vips:
    - vip: 203.0.113.10
      communities: ["64512:200", "64512:201"]
      med: 20
  drain_quiet: 1s
metrics: 127.0.0.1:9464
`;

/** A process that runs (a zombie waiting for whoever adopted it does not). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Where a timeout looks for its explanation: the router's sessions, the daemon's log. */
let explain = () => '';

async function until(what: string, cond: () => boolean, timeoutMs = 20000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}\n${explain()}`);
    await sleep(100);
  }
}

/**
 * Runs `fn` while sampling the router every 50 ms: whether `prefix` is in its
 * table, and whether its session `session` is down.
 */
async function watchRoute(rt: Router, prefix: string, session: string, fn: () => Promise<void>): Promise<{ samples: number; missing: number; sessionDown: number }> {
  let samples = 0;
  let missing = 0;
  let sessionDown = 0;
  let on = true;
  const sampler = (async () => {
    while (on) {
      samples++;
      if (!rt.routes().has(prefix)) missing++;
      if (!new RegExp(`^${session}\\s.*Established`, 'm').test(rt.protocols())) sessionDown++;
      await sleep(50);
    }
  })();
  try {
    await fn();
  } finally {
    on = false;
    await sampler;
  }
  return { samples, missing, sessionDown };
}

t.test('the router holds exactly the VIPs that are attached and served, through drains, restarts and shutdown', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES, extraYaml: BGP });
  reapSpeaker(t, d);
  const rt = await router(t, d);
  explain = () => `${rt.protocols()}\n${d.logs.join('\n')}`;
  await d.start();
  const has = (p: string) => rt.routes().has(p);

  await until('both VIPs with serving backends reach the router', () => has('203.0.113.10/32') && has('2001:db8:300::10/128'));
  const web = rt.routes().get('203.0.113.10/32') as Route;
  t.ok(web.attributes.includes('BGP.med: 20'), `the VIP's own MED (${web.attributes.join('; ')})`);
  t.ok(web.attributes.some((a) => a === 'BGP.community: (64512,200) (64512,201)'), "the VIP's own communities");
  t.ok(web.attributes.includes('BGP.next_hop: 192.0.2.2'), 'next hop: the node');
  const web6 = rt.routes().get('2001:db8:300::10/128') as Route;
  t.ok(web6.attributes.includes('BGP.community: (64512,100)'), `IPv6: the section's communities (${web6.attributes.join('; ')})`);
  t.notOk(web6.attributes.some((a) => a.startsWith('BGP.med')), 'IPv6: no MED configured, none sent');
  t.ok(bgpStatus(d).peers.every((p) => p.established), 'both sessions established (IPv4 with a TCP MD5 password)');
  const metrics = () => sh('ip', 'netns', 'exec', d.topo.lbNs, 'curl', '-sf', 'http://127.0.0.1:9464/metrics');
  t.match(metrics(), /^xdplb_bgp_peer_up\{peer="192\.0\.2\.1"\} 1$/m, 'metrics: the peer is up');
  t.match(metrics(), /^xdplb_bgp_vip_announced\{vip="203\.0\.113\.10"\} 1$/m, 'metrics: the VIP is announced');
  t.match(metrics(), /^xdplb_bgp_vip_announced\{vip="203\.0\.113\.30"\} 0$/m, 'metrics: the resting VIP is not');
  const lint = spawnSync('promtool', ['check', 'metrics'], { input: metrics().split('\n').filter((l) => /^(# (HELP|TYPE) )?xdplb_bgp_/.test(l)).join('\n') + '\n', encoding: 'utf8' });
  t.equal(lint.status, 0, `promtool check metrics on the bgp metrics: ${lint.stdout}${lint.stderr}`.trim());

  // A reload applies new attributes without touching the sessions.
  d.writeConfig({ servicesYaml: SERVICES, extraYaml: BGP.replace('med: 20', 'med: 30') });
  d.proc?.kill('SIGHUP');
  await until('the reloaded MED reaches the router', () => rt.routes().get('203.0.113.10/32')?.attributes.includes('BGP.med: 30') ?? false);
  t.match(rt.protocols(), /^node4\s.*Established/m, 'the session stayed up through the reload');

  await until('the health-checked VIP is withdrawn once its only backend fails its probes', () => !has('203.0.113.20/32'));
  t.notOk(has('203.0.113.30/32'), 'a VIP whose only backend is draining is never announced');
  const reasons = new Map(bgpStatus(d).vips.map((v) => [v.vip, v.reason]));
  t.match(reasons.get('203.0.113.20'), /no serving backend: 1 down/, 'bgp status says why the checked VIP is withdrawn');
  t.match(reasons.get('203.0.113.30'), /no serving backend: 0 down, 1 draining/, 'and why the resting one is not announced');
  const table = d.cli('bgp', 'status').stdout;
  t.match(table, /^192\.0\.2\.1\s+64513\s+up\s+Established/m, 'bgp status as a table: the peer');
  t.match(table, /^203\.0\.113\.10\s+203\.0\.113\.10\/32\s+yes\s+64512:200,64512:201\s+30\s+web\s*$/m, 'an announced VIP');
  t.match(table, /^203\.0\.113\.30\s+203\.0\.113\.30\/32\s+no\s+64512:100\s+-\s+resting\s+no serving backend/m, 'a VIP not announced, and why');

  // An API-owned service: announced with its backend, withdrawn when that backend is drained.
  const created = d.cli('service', 'create', 'api', '--vip', '203.0.113.40', '--port', '80', '--backend', '198.51.100.41:80');
  t.equal(created.code, 0, `service create ${created.stderr}`);
  await until('a new service with a backend is announced', () => has('203.0.113.40/32'));
  t.equal(d.cli('backend', 'drain', 'api', '198.51.100.41:80').code, 0);
  await until('draining the last backend withdraws the VIP', () => !has('203.0.113.40/32'));
  t.ok(has('203.0.113.10/32'), 'the other VIPs stay');

  // Planned drain under traffic: every VIP withdrawn at once, forwarding goes
  // on, and the command returns only after the traffic has stopped.
  const peer = peerSender(t, d);
  const frame = ether(ipv4({ src: '192.0.2.100', dst: '203.0.113.10' }, tcp({ sport: 40000, dport: 80, flags: TCP_ACK, payload: Buffer.alloc(32) })), { dst: peer.lbMac, src: PEER_MAC });
  const drainStart = Date.now();
  const logged = d.logs.length;
  const drain = spawn(process.execPath, [MAIN, '--socket', d.socket, '-o', 'json', 'node', 'drain', '--timeout', '30'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let drainOut = '';
  let drainErr = '';
  drain.stdout.on('data', (b: Buffer) => (drainOut += b.toString()));
  drain.stderr.on('data', (b: Buffer) => (drainErr += b.toString()));
  let exitAt = 0;
  const drainExit = new Promise<number>((resolve) =>
    drain.once('exit', (c) => {
      exitAt = Date.now();
      resolve(c ?? -1);
    }),
  );
  await until('the daemon has the drain', () => d.logs.slice(logged).some((l) => l.includes('node drained')));
  let sent = 0;
  for (let i = 0; i < 25; i++) {
    sent += peer.send([frame], 10);
    await sleep(100);
  }
  const sentUntil = Date.now();
  t.equal(await drainExit, 0, `node drain exits 0 (${drainErr.trim()})`);
  t.ok(exitAt - sentUntil >= 1000, `node drain returned ${exitAt - sentUntil} ms after the last packet, not while packets arrived (drain_quiet: 1s)`);
  t.ok(exitAt - drainStart >= 3500, `${exitAt - drainStart} ms after it began`);
  const drained = JSON.parse(drainOut) as BgpStatus;
  t.ok(drained.drain.trafficStopped, 'it reports traffic stopped');
  t.equal(drained.drain.packetsSinceDrain, sent, 'and counted every packet forwarded while drained');
  t.match(drainErr, /traffic stopped/);
  t.notOk(has('203.0.113.10/32') || has('2001:db8:300::10/128'), 'every VIP withdrawn at the router');
  t.ok(bgpStatus(d).vips.every((v) => !v.announced && /drained/.test(v.reason)), 'bgp status: every VIP held back by the drain');
  t.match(metrics(), /^xdplb_bgp_drained 1$/m, 'metrics: drained');
  t.match(metrics(), /^xdplb_bgp_updates_total\{change="withdraw"\} [1-9]/m, 'metrics: the withdrawals are counted');
  t.equal(d.cli('node', 'undrain').code, 0);
  await until('undrain announces again', () => has('203.0.113.10/32') && has('2001:db8:300::10/128'));
  t.notOk(has('203.0.113.20/32'), 'undrain announces only what is served');

  // SIGKILL and restart of the daemon: the speaker outlives it, the next daemon adopts it.
  const pid = bgpStatus(d).speakerPid;
  const killed = await watchRoute(rt, '203.0.113.10/32', 'node4', async () => {
    await d.signal('SIGKILL');
    await sleep(2000);
    await d.start();
    await sleep(1500);
  });
  t.ok(killed.samples > 40, `${killed.samples} samples at the router across the kill and restart`);
  t.equal(killed.missing, 0, 'the route never left the router');
  t.equal(killed.sessionDown, 0, 'nor did the session go down');
  t.equal(bgpStatus(d).speakerPid, pid, 'the restarted daemon adopted the running speaker');
  t.ok(d.logs.some((l) => l.includes('bgp speaker adopted')), 'and logged it');

  // The speaker itself dies: graceful restart keeps the routes while the daemon starts it again.
  const crashed = await watchRoute(rt, '2001:db8:300::10/128', 'node6', async () => {
    process.kill(pid, 'SIGKILL');
    await sleep(1000);
    await until('the router has the session back', () => /^node6\s.*Established/m.test(rt.protocols()));
  });
  t.ok(crashed.sessionDown > 0, `the router saw the session go down (${crashed.sessionDown} of ${crashed.samples} samples)`);
  t.equal(crashed.missing, 0, "graceful restart: the router kept the route through the speaker's restart");
  t.match(rt.protocols('node6'), /Neighbor capabilities[^]*AF preserved:\s+ipv6/, 'the new speaker told the router it kept forwarding (restart recovery), so it did not flush on reconnect');
  const after = bgpStatus(d);
  t.equal(after.speakerRestarts, 1, 'the daemon started the speaker again');
  t.not(after.speakerPid, pid, 'a new speaker runs');
  t.ok(after.peers.every((p) => p.established), 'with both sessions established');
  await until('the new speaker announces again', () => has('203.0.113.10/32') && has('2001:db8:300::10/128'));

  // Someone detaches the XDP program: nothing would forward the VIPs' packets, so none is announced.
  sh('ip', '-n', d.topo.lbNs, 'link', 'set', 'dev', 'lb0', 'xdp', 'off');
  await until('a detached datapath withdraws every VIP', () => !has('203.0.113.10/32') && !has('2001:db8:300::10/128'));
  t.ok(bgpStatus(d).vips.every((v) => /not attached/.test(v.reason)), 'bgp status: the XDP program is not attached');
  await d.signal('SIGKILL');
  await d.start();
  await until('the next daemon attaches again, and the VIPs return', () => has('203.0.113.10/32') && has('2001:db8:300::10/128'));

  // The bgp: section removed while the daemon was down: the speaker it left is stopped, its routes go.
  const leftPid = bgpStatus(d).speakerPid;
  await d.signal('SIGKILL');
  d.writeConfig({ servicesYaml: SERVICES, extraYaml: 'metrics: 127.0.0.1:9464' });
  await d.start();
  await until('a daemon without bgp: retires the speaker left running', () => !running(leftPid));
  await until('and the router loses the VIPs', () => !has('203.0.113.10/32') && !has('2001:db8:300::10/128'));
  await d.signal('SIGKILL');
  d.writeConfig({ servicesYaml: SERVICES, extraYaml: BGP });
  await d.start();
  await until('with the section back, the VIPs return', () => has('203.0.113.10/32') && has('2001:db8:300::10/128'));

  // Clean shutdown: withdrawn first, speaker stopped.
  const newPid = bgpStatus(d).speakerPid;
  t.equal(await d.signal('SIGTERM'), 0, 'SIGTERM: the daemon exits 0');
  t.notOk(has('203.0.113.10/32') || has('2001:db8:300::10/128'), 'every VIP withdrawn at the router by the time the daemon is gone');
  t.notOk(running(newPid), 'the speaker stopped with it');
  t.ok(d.logs.some((l) => l.includes('every VIP withdrawn for shutdown')), 'the withdrawal is logged');
});

t.test('a bad bgp section is refused, naming the field, and nothing starts', needsRoot, async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['bgp:\n  asn: 64512\n  router_id: 2001:db8::2\n  peers:\n    - address: 192.0.2.1\n      asn: 64513', /bgp\.router_id: "2001:db8::2" is not an IPv4 address/],
    ['bgp:\n  asn: 64512\n  router_id: 192.0.2.2\n  peers:\n    - address: 192.0.2.1\n      asn: 64513\n      hold_time: 2', /bgp\.peers\[0\]\.hold_time: must be >= 3, got 2/],
    ['bgp:\n  asn: 64512\n  router_id: 192.0.2.2\n  peers:\n    - address: 192.0.2.1\n      asn: 64513\n  vips:\n    - vip: 203.0.113.10\n      communities: ["64512:70000"]', /bgp\.vips\[0\]\.communities\[0\]: "64512:70000" is not a community/],
  ];
  for (const [yaml, expect] of cases) {
    const d = await daemonFixture(t, { servicesYaml: SERVICES, extraYaml: yaml });
    reapSpeaker(t, d);
    const r = await d.runToExit();
    t.not(r.code, 0, 'the daemon exits non-zero');
    t.match(r.output, expect, `the error names the field: ${r.output.trim().split('\n').pop()}`);
    t.notOk(fs.existsSync(path.join(d.stateDir, 'bgp', 'bird.pid')), 'no speaker was started');
  }
});
