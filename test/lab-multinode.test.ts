// `xdplb lab up --nodes 3`: three load-balancer nodes, each its own daemon and
// BGP speaker, behind a BIRD router that holds one 3-way ECMP route per VIP.
// Real client traffic is answered in full, spread over all three nodes (by
// each daemon's own counters), and answered by the backend Maglev predicts
// whichever node carried it; a node whose table differs is caught; down after
// a node's crash leaves nothing.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse, stringify } from 'yaml';
import { Lab, type LabStatus } from '../src/lab/lab';
import { labCliFixture } from '../src/lab/fixture';
import { namespacesWithPrefix } from '../src/lab/topology';
import type { LabTestResult } from '../src/lab/check';
import type { ApiService } from '../src/client/client';
import { needsRoot } from '../harness/fixtures';

function alive(pid: number): boolean {
  try {
    return !/\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

const sh = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

t.test('xdplb lab up --nodes 3: ECMP over three nodes, same backend on each', needsRoot, async (t) => {
  const { paths: p, config, xdplb } = await labCliFixture(t);

  t.match(xdplb('up', '--nodes', '3'), /router: 2 VIPs routed over lb1, lb2, lb3/, 'lab up --nodes 3 waits for the routes');
  t.same(namespacesWithPrefix(p.prefix).sort(), ['be1', 'be2', 'be3', 'client', 'lb1', 'lb2', 'lb3', 'router'].map((n) => p.prefix + n), 'eight namespaces');
  // found again from lab.json, as every command after up does
  const lab = new Lab({ prefix: p.prefix, runDir: p.runDir, configPath: config });
  t.equal(lab.plan.nodes.length, 3, 'a Lab without --nodes finds three nodes in lab.json');

  const router = `${p.prefix}router`;
  for (const [vip, six] of [['203.0.113.10', false], ['2001:db8:100::10', true]] as const) {
    const routes = JSON.parse(sh('ip', '-n', router, '-j', six ? '-6' : '-4', 'route', 'show', 'exact', `${vip}/${six ? 128 : 32}`)) as Array<{ protocol: string; nexthops?: Array<{ gateway: string; dev: string }> }>;
    t.equal(routes.length, 1, `${vip}: one route in the router's kernel`);
    t.equal(routes[0].protocol, 'bird', `${vip}: installed by BIRD`);
    t.same(
      (routes[0].nexthops ?? []).map((h) => `${h.dev} ${h.gateway}`).sort(),
      lab.plan.nodes.map((n) => `${n.routerIf} ${six ? n.v6 : n.v4}`),
      `${vip}: a 3-way multipath route, one next hop per node`,
    );
  }
  for (const fam of ['ipv4', 'ipv6'])
    t.equal(sh('ip', 'netns', 'exec', router, 'sysctl', '-n', `net.${fam}.fib_multipath_hash_policy`).trim(), '1', `${fam}: ECMP hashes on L4`);
  const sessions = sh('birdc', '-s', lab.routerSocket, 'show', 'protocols').split('\n').filter((l) => /^lb\d_v[46]\s/.test(l));
  t.equal(sessions.length, 6, 'the router has a session per node and family');
  t.ok(sessions.every((l) => /Established/.test(l)), 'all established');

  const r = JSON.parse(xdplb('test', '--json', '--count', '50')) as LabTestResult;
  t.ok(r.ok, `lab test passes: ${r.checks.filter((c) => !c.ok).map((c) => c.text).join('; ')}`);
  t.equal(r.answered, r.total, `every one of ${r.total} requests answered`);
  t.ok(r.services.every((s) => s.agree === s.answered), 'every answer from the backend Maglev predicts for the tuple');
  t.equal(r.nodes?.length, 3, 'per-node counts');
  t.ok(r.nodes?.every((n) => n.forwarded > 0), `every node forwarded client traffic: ${r.nodes?.map((n) => `${n.name} ${n.forwarded}`).join(', ')}`);
  t.equal((r.nodes ?? []).reduce((a, n) => a + n.forwarded, 0), r.lb.forwarded, 'the nodes\' counts add up to the total');
  t.ok(r.checks.some((c) => c.ok && /3-way ECMP route for each of the 2 VIPs/.test(c.text)), 'the route check');
  t.ok(r.checks.some((c) => c.ok && /every node builds the same Maglev table/.test(c.text)), 'the same-table check');
  t.ok(r.nodes?.every((n) => r.services.every((s) => n.services[s.name] > 0)), 'every service through every node: the router hashes on ports too');
  t.notOk(r.recording, 'several nodes: no recording of one node\'s share');

  const st = JSON.parse(xdplb('status', '--json')) as LabStatus;
  t.same(st.nodes.map((n) => n.name), ['lb1', 'lb2', 'lb3'], 'status: the nodes');
  t.ok(st.nodes.every((n) => n.daemon.api && n.daemon.services === 3 && n.router.xdpProgId > 0), 'status: each daemon answers with 3 services; the router\'s pass-through on each link');
  t.same(st.routes?.['203.0.113.10'], ['to-lb1', 'to-lb2', 'to-lb3'], 'status: the VIP\'s route');
  t.match(xdplb('status'), /ECMP routes: 203\.0\.113\.10 over 3 \(lb1 lb2 lb3\)/, 'status as text');

  // Configuration drift: lb2 reloads a file where `web` lost be3. Its flows to
  // `web` go elsewhere, and the test says which node and service.
  const lb2 = lab.nodeState(1);
  const cfg = parse(fs.readFileSync(lb2.configPath, 'utf8')) as { services: Array<{ name: string; backends: Array<{ address: string }> }> };
  const web = cfg.services.find((s) => s.name === 'web');
  if (web) web.backends = web.backends.filter((b) => b.address !== '198.51.100.13');
  fs.writeFileSync(lb2.configPath, stringify(cfg));
  process.kill(st.nodes[1].daemon.pid as number, 'SIGHUP');
  const webBackends = async () => (await lab.api<{ services: ApiService[] }>('ListServices', {}, 1)).services.find((s) => s.name === 'web')?.backends.length;
  for (let i = 0; i < 100 && (await webBackends()) !== 2; i++) await new Promise((r) => setTimeout(r, 50));
  t.equal(await webBackends(), 2, 'lb2 reloaded: web has two backends there');
  let bad: LabTestResult | undefined;
  try {
    xdplb('test', '--json', '--count', '20');
  } catch (e) {
    bad = JSON.parse((e as { stdout: string }).stdout) as LabTestResult;
  }
  t.ok(bad && !bad.ok, 'lab test fails when one node\'s table differs');
  t.ok(bad?.checks.some((c) => !c.ok && /differ from lb1's: lb2\/web$/.test(c.text)), 'and names the node and service');

  // a node crashes (its speaker BIRD lives on, by design): down still removes everything
  const pids = [
    ...st.nodes.map((n) => n.daemon.pid as number),
    st.routerBird as number,
    ...st.backends.map((b) => b.serverPid as number),
    ...[0, 1, 2].map((i) => Number(fs.readFileSync(path.join(p.runDir, `lb${i + 1}`, 'state', 'bgp', 'bird.pid'), 'utf8'))),
  ];
  t.ok(pids.every((pid) => Number.isInteger(pid) && alive(pid)), `${pids.length} processes: daemons, router, servers, speakers`);
  process.kill(st.nodes[0].daemon.pid as number, 'SIGKILL');
  const down = xdplb('down');
  t.match(down, /daemon lb2 stopped/, 'down stops the daemons');
  t.match(down, /router BIRD stopped/, 'and the router');
  t.same(namespacesWithPrefix(p.prefix), [], 'no namespace left');
  t.ok(pids.every((pid) => !alive(pid)), 'no process left');
  t.notOk(fs.existsSync(p.runDir), 'no run directory left');
  t.same(fs.readdirSync('/sys/fs/bpf').filter((d) => d.startsWith(p.id)), [], 'no pins left');
  t.equal(xdplb('down').trim(), 'nothing to remove', 'down again: nothing to do');
});
