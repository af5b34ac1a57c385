// What `xdplb status` says about path MTU and routes: the path MTUs in force
// (expired ones deleted, as the kernel forgets a learnt PMTU), and a warning
// for every outer source prefix or VIP the kernel would forward, asked of the
// kernel itself (`ip -j route get`) in a namespace the test builds.
import t from 'tap';
import * as L from '../src/datapath/layout';
import { agePathMtus } from '../src/datapath/pmtu';
import { routeWarnings } from '../src/datapath/routes';
import { openLb } from '../harness/datapath';
import { needsRoot, netns, veth, sh } from '../harness/fixtures';

t.test('path MTUs in force are listed by backend; expired ones are deleted', needsRoot, (t) => {
  const lb = openLb(t);
  const now = process.hrtime.bigint();
  lb.maps.pmtu.update(L.encodePmtuKey('198.51.100.10'), L.encodePmtu({ mtu: 1400, expiresNs: now + 300_000_000_000n }));
  lb.maps.pmtu.update(L.encodePmtuKey('2001:db8:100::1'), L.encodePmtu({ mtu: 1280, expiresNs: now + 10_000_000_000n }));
  lb.maps.pmtu.update(L.encodePmtuKey('198.51.100.11'), L.encodePmtu({ mtu: 1300, expiresNs: now - 1n }));
  const got = agePathMtus(lb.maps.pmtu, now);
  t.same(got.map((p) => [p.backend, p.mtu, Math.round(p.expiresInSeconds)]), [
    ['198.51.100.10', 1400, 300],
    ['2001:db8:100::1', 1280, 10],
  ]);
  t.equal(lb.maps.pmtu.lookup(L.encodePmtuKey('198.51.100.11')), null, 'the expired entry is gone from the map');
  t.end();
});

t.test('a warning for each outer source or VIP the kernel would forward, none for local, unreachable and blackhole ones', needsRoot, async (t) => {
  const ns = netns(t);
  const peer = netns(t);
  veth(ns, peer, 'up0', 'up1');
  const ip = (...a: string[]) => sh('ip', '-n', ns, ...a);
  ip('link', 'set', 'up0', 'up');
  ip('addr', 'add', '192.0.2.2/24', 'dev', 'up0');
  ip('route', 'add', 'default', 'via', '192.0.2.1');
  ip('addr', 'add', '203.0.113.10/32', 'dev', 'lo');
  ip('route', 'add', 'unreachable', '198.51.100.192/26');
  ip('-6', 'route', 'add', 'blackhole', '2001:db8:5::/64');
  ip('route', 'add', 'prohibit', '198.51.100.128/26');
  const get = ['-n', ns];
  const ok = await routeWarnings(
    [
      { what: 'outer source', prefix: '198.51.100.192/26', address: '198.51.100.192' },
      { what: 'outer source', prefix: '2001:db8:5::/64', address: '2001:db8:5::' },
      { what: 'outer source', prefix: '192.0.2.2', address: '192.0.2.2' },
      { what: 'VIP', prefix: '198.51.100.130', address: '198.51.100.130' },
      { what: 'VIP', prefix: '203.0.113.10', address: '203.0.113.10' },
      { what: 'VIP', prefix: '2001:db8:f00::10', address: '2001:db8:f00::10' },
    ],
    get,
  );
  t.same(ok, [], 'unreachable, blackhole, prohibit, the node\'s own addresses, and no route at all (IPv6 here) are safe');
  const bad = await routeWarnings(
    [
      { what: 'outer source', prefix: '198.51.100.64/26', address: '198.51.100.64' },
      { what: 'VIP', prefix: '203.0.113.11', address: '203.0.113.11' },
    ],
    get,
  );
  t.equal(bad.length, 2);
  t.match(bad[0], /^outer source 198\.51\.100\.64\/26: the kernel forwards 198\.51\.100\.64 \(via 192\.0\.2\.1 dev up0\).*ip route add unreachable 198\.51\.100\.64\/26/);
  t.match(bad[1], /^VIP 203\.0\.113\.11: the kernel forwards/);
  t.end();
});
