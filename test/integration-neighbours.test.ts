// Next-hop neighbours: the load balancer reaches its backends over two
// interfaces, through a gateway and on-link, over IPv4 and IPv6, and every
// neighbour entry of both families on both interfaces is flushed before the
// first packet. bpf_fib_lookup cannot resolve a neighbour; the daemon keeps
// kernel-managed entries for every backend's next hop, so every request
// succeeds (the first packets may wait for ARP/ND: a TCP retransmit).
//
//   lb0 ── router ── be1, be2, be3      be3: via the router on lb0 (gateway)
//   lb1 ── router (to-lb1)              be1: via the router on lb1 (gateway)
//                                       be2: on-link on lb1 (the router
//                                       answers for it: proxy ARP / NDP)
import t from 'tap';
import * as fs from 'node:fs';
import { parse, stringify } from 'yaml';
import { labFixture } from '../src/lab/fixture';
import { Decap } from '../src/lab/decap';
import { inNs, ipIn } from '../src/lab/topology';
import type { NextHopStatus } from '../src/net/neighbours';
import { needsRoot } from '../harness/fixtures';

const VIP4 = '203.0.113.10';
const VIP6 = '2001:db8:100::10';

t.test('every request succeeds with every neighbour flushed, both families, both interfaces, gateways and on-link', needsRoot, async (t) => {
  const f = await labFixture(t, { listens: [`tcp:${VIP4}:80`, `tcp:[${VIP6}]:80`] });
  const { plan } = f.lab;
  const lb = plan.ns.lb;
  const router = plan.ns.router;
  const [be1, be2] = plan.backends;

  // the second interface, lb1, and its routes
  ipIn(lb, 'link', 'add', 'lb1', 'type', 'veth', 'peer', 'name', 'to-lb1', 'netns', router);
  inNs(router, 'sysctl', '-qw', 'net.ipv4.conf.all.proxy_arp=1', 'net.ipv6.conf.all.proxy_ndp=1', 'net.ipv6.conf.default.accept_dad=0');
  ipIn(router, 'link', 'set', 'to-lb1', 'up');
  ipIn(router, 'addr', 'add', '192.0.2.97/27', 'dev', 'to-lb1');
  ipIn(router, 'addr', 'add', '2001:db8:3::1/64', 'dev', 'to-lb1', 'nodad');
  ipIn(router, '-6', 'neigh', 'add', 'proxy', be2.v6, 'dev', 'to-lb1');
  ipIn(lb, 'link', 'set', 'lb1', 'up');
  ipIn(lb, 'addr', 'add', '192.0.2.98/27', 'dev', 'lb1');
  ipIn(lb, 'addr', 'add', '2001:db8:3::2/64', 'dev', 'lb1', 'nodad');
  ipIn(lb, 'route', 'add', `${be1.v4}/32`, 'via', '192.0.2.97', 'dev', 'lb1');
  ipIn(lb, 'route', 'add', `${be1.v6}/128`, 'via', '2001:db8:3::1', 'dev', 'lb1');
  ipIn(lb, 'route', 'add', `${be2.v4}/32`, 'dev', 'lb1');
  ipIn(lb, 'route', 'add', `${be2.v6}/128`, 'dev', 'lb1');
  // A veth end receives its peer's XDP_REDIRECT frames only with an XDP program of its own.
  const pass = Decap.open();
  pass.attach('to-lb1', { ns: router, mode: 'native' });
  pass.close();
  // The daemon forwards out of lb1 only when lb1 is one of its interfaces.
  const cfg = parse(fs.readFileSync(f.lab.configPath, 'utf8')) as Record<string, unknown>;
  cfg.interfaces = [{ name: 'lb0', mode: 'native' }, { name: 'lb1', mode: 'native' }];
  fs.writeFileSync(f.lab.configPath, stringify(cfg));
  await f.lab.stopDaemon();
  await f.lab.startDaemon();

  f.cli('service', 'create', 'web4', '--vip', VIP4, '--port', '80', '--protocol', 'tcp', ...plan.backends.flatMap((b) => ['--backend', `${b.v4}:80`]));
  f.cli('service', 'create', 'web6', '--vip', VIP6, '--port', '80', '--protocol', 'tcp', ...plan.backends.flatMap((b) => ['--backend', `[${b.v6}]:80`]));

  // No packet has gone to a backend yet: nothing the datapath cached, every entry gone.
  ipIn(lb, 'neigh', 'flush', 'all', 'nud', 'all');
  const left = (JSON.parse(ipIn(lb, '-j', 'neigh', 'show')) as Array<{ dst: string; state: string[] }>).filter((n) => !n.state.includes('NOARP'));
  t.comment(`entries right after the flush: ${JSON.stringify(left)}`);

  // Up to two SYN retransmits (1 s, 3 s) fit in an attempt: only the first packets may wait.
  const results = await f.lab.requests({
    targets: [
      { proto: 'tcp', vip: VIP4, port: 80, count: 15, sources: plan.client.v4 },
      { proto: 'tcp', vip: VIP6, port: 80, count: 15, sources: plan.client.v6 },
    ],
    timeoutMs: 5000,
  });
  const failed = results.filter((r) => r.error);
  t.equal(results.length, 60, 'sixty requests');
  t.same(failed, [], 'every request succeeded');
  for (const b of plan.backends) {
    t.ok(results.some((r) => r.backend === b.name && r.vip === VIP4), `${b.name} answered over IPv4`);
    t.ok(results.some((r) => r.backend === b.name && r.vip === VIP6), `${b.name} answered over IPv6`);
  }

  const st = (await f.lab.nodeStatus()) as unknown as { nextHops: NextHopStatus[]; nextHopsResolved: number; nextHopsUnresolved: number };
  const hops = st.nextHops.map((n) => `${n.address}%${n.interface} ${n.resolved ? 'resolved' : 'unresolved'} ${n.backends}`).sort();
  t.same(
    hops,
    [
      `${be2.v6}%lb1 resolved 1`,
      `${be2.v4}%lb1 resolved 1`,
      '192.0.2.33%lb0 resolved 1',
      '192.0.2.97%lb1 resolved 1',
      '2001:db8:2::1%lb0 resolved 1',
      '2001:db8:3::1%lb1 resolved 1',
    ].sort(),
    'status: every next hop, gateway or on-link, on its interface, resolved',
  );
  t.equal(st.nextHopsResolved, 6, 'six resolved');
  t.equal(st.nextHopsUnresolved, 0, 'none unresolved');
  const status = f.cli('status');
  t.match(status, /next hops: 6 resolved, 0 unresolved/, 'xdplb status says so');
  const managed = JSON.parse(ipIn(lb, '-j', 'neigh', 'show')) as Array<{ dst: string; dev: string; managed?: null }>;
  t.equal(managed.filter((n) => 'managed' in n).length, 6, 'one kernel-managed entry per next hop');

  // A route change: be3's IPv4 route moves on-link to lb1, where nothing has
  // resolved it; the daemon follows the route, not the flush.
  const be3 = plan.backends[2];
  ipIn(lb, 'route', 'add', `${be3.v4}/32`, 'dev', 'lb1');
  // Until the daemon has resolved it, packets to the new next hop are dropped
  // (drop_fib_no_neigh): a SYN retransmit (1 s, 3 s) fits in an attempt.
  const onLb1 = (n: NextHopStatus) => n.address === be3.v4 && n.interface === 'lb1' && n.resolved;
  const moved = await f.lab.requests({ targets: [{ proto: 'tcp', vip: VIP4, port: 80, count: 30, sources: plan.client.v4 }], timeoutMs: 5000 });
  t.same(moved.filter((r) => r.error), [], 'every request succeeds after the route change');
  t.ok(moved.some((r) => r.backend === be3.name), `${be3.name} answered through its new next hop`);
  const after = (await f.lab.nodeStatus()) as unknown as { nextHops: NextHopStatus[] };
  t.ok(after.nextHops.some(onLb1), `${be3.v4} on lb1 is a resolved next hop`);

  // A backend removed: the daemon's entry for its on-link next hop goes with it.
  f.cli('service', 'delete', 'web4');
  f.cli('service', 'create', 'web4', '--vip', VIP4, '--port', '80', '--protocol', 'tcp', '--backend', `${be1.v4}:80`);
  let remaining: string[] = [];
  for (let i = 0; i < 50; i++) {
    remaining = (JSON.parse(ipIn(lb, '-j', 'neigh', 'show')) as Array<{ dst: string; managed?: null }>).filter((n) => 'managed' in n).map((n) => n.dst);
    if (!remaining.includes(be2.v4)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.notOk(remaining.includes(be2.v4), `the on-link entry for ${be2.v4} is removed once no backend needs it`);
});
