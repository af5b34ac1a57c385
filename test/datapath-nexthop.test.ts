// The next-hop cache (xdp/fib.h): each CPU looks a backend's route, MACs and
// MTU up in the FIB once and reuses them until the bound; a neighbour, route or
// MTU change reaches the datapath within that bound; a failed lookup is never
// kept; a reused backend slot or another ingress interface is looked up afresh;
// two backends sharing a cache slot both stay right.
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import * as L from '../src/datapath/layout';
import * as P from '../harness/packets';
import { world, rawOneBackend, serviceSpec, idsOf, decap, VIP4, VIP6, CLIENT4, CLIENT6, ROUTER_MAC, BACKEND_MAC, type World } from '../harness/datapath';
import { needsRoot, sh } from '../harness/fixtures';

const TCP = L.IPPROTO_TCP;
const NEW_ROUTER_MAC = '02:00:00:00:01:99';
/** The bound of most tests here: short, so they wait little. */
const SHORT_TTL_MS = 50;
/** Longer than SHORT_TTL_MS by more than the coarse clock's tick (a jiffy, at most 10 ms). */
const AFTER_SHORT_TTL_MS = SHORT_TTL_MS + 30;

const frame4 = (sport: number, payload = 0) => P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport, dport: 80, payload: Buffer.alloc(payload) })));
const frame6 = (sport: number) => P.ether(P.ipv6({ src: CLIENT6, dst: VIP6 }, P.tcp({ sport, dport: 80 })));

function refreshes(w: World): bigint {
  return L.sumU64(w.lb.maps.cacheStats.lookupPerCpu(L.u32(L.CACHE_STAT_NEXTHOP_LOOKUPS)));
}

function entries(w: World, id: number): L.Nexthop[] {
  return (w.lb.maps.nexthops.lookupPerCpu(L.u32(id)) ?? []).map((b) => L.decodeNexthop(b)).filter((n) => n.address !== '');
}

const ipNs = (w: World, ...args: string[]) => sh('ip', '-n', w.fib.ns, ...args);

t.test('the next hop is looked up once per CPU and bound, not per packet', needsRoot, async (t) => {
  const w = world(t, { config: { nexthopTtlMs: 60_000 } });
  const web4 = serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.10'] });
  const web6 = serviceSpec({ vip: VIP6, port: 80, backends: ['2001:db8:100::10'] });
  await w.apply([web4, web6]);
  const rs = w.runAll(Array.from({ length: 100 }, (_, i) => (i % 2 ? frame6(1000 + i) : frame4(1000 + i))));
  t.ok(rs.every((r) => r.retval === bpf.XDP_TX && decap(r.data).dstMac === ROUTER_MAC), '100 packets forwarded to the router');
  const cpus = w.lb.maps.nexthops.lookupPerCpu(L.u32(0))?.length ?? 0;
  const n = refreshes(w);
  t.ok(n >= 2n && n <= BigInt(2 * cpus), `${n} lookups for 100 packets to 2 backends on ${cpus} CPUs`);
  const e4 = entries(w, idsOf(w, web4).backends[0]);
  const e6 = entries(w, idsOf(w, web6).backends[0]);
  t.equal(BigInt(e4.length + e6.length), n, 'one entry per lookup, on the CPUs that looked up');
  for (const e of [...e4, ...e6]) {
    t.equal(e.dmac, ROUTER_MAC, 'next hop: the router');
    t.equal(e.smac, w.fib.lb0Mac, 'source: lb0');
    t.equal(e.ifindex, w.fib.lb0, 'egress: lb0');
    t.equal(e.iif, w.fib.lb0, 'resolved for packets from lb0');
    t.equal(e.mtu, 1500, 'route MTU: the device MTU (no route MTU)');
  }
  t.ok(e4.every((e) => e.address === '198.51.100.10') && e6.every((e) => e.address === '2001:db8:100::10'), 'each for its backend address');
});

t.test('a neighbour, route or MTU change takes effect within the bound', needsRoot, async (t) => {
  const w = world(t, { config: { nexthopTtlMs: SHORT_TTL_MS } });
  await w.apply([
    serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.10'] }),
    serviceSpec({ vip: VIP6, port: 80, backends: ['2001:db8:100::10'] }),
  ]);
  t.equal(decap(w.run(frame4(1)).data).dstMac, ROUTER_MAC, 'IPv4: the router');
  t.equal(decap(w.run(frame6(1)).data).dstMac, ROUTER_MAC, 'IPv6: the router');

  ipNs(w, 'neigh', 'replace', '192.0.2.1', 'lladdr', NEW_ROUTER_MAC, 'dev', 'lb0', 'nud', 'permanent');
  ipNs(w, '-6', 'neigh', 'replace', '2001:db8::1', 'lladdr', NEW_ROUTER_MAC, 'dev', 'lb0', 'nud', 'permanent');
  await sleep(AFTER_SHORT_TTL_MS);
  t.equal(decap(w.run(frame4(2)).data).dstMac, NEW_ROUTER_MAC, 'IPv4: the router\'s new MAC');
  t.equal(decap(w.run(frame6(2)).data).dstMac, NEW_ROUTER_MAC, 'IPv6: the router\'s new MAC');

  // the backends move behind lb1: redirected, to lb1's neighbour
  ipNs(w, 'route', 'replace', '198.51.100.0/26', 'via', '198.51.100.129', 'dev', 'lb1');
  ipNs(w, '-6', 'route', 'replace', '2001:db8:100::/64', 'via', '2001:db8:200::1', 'dev', 'lb1');
  await sleep(AFTER_SHORT_TTL_MS);
  for (const [what, f] of [['IPv4', frame4(3)], ['IPv6', frame6(3)]] as const) {
    const r = w.run(f);
    t.equal(r.retval, bpf.XDP_REDIRECT, `${what}: redirected to the new egress interface`);
    const e = decap(r.data);
    t.equal(e.dstMac, BACKEND_MAC, `${what}: the new next hop`);
    t.equal(e.srcMac, w.fib.lb1Mac, `${what}: from lb1`);
  }

  // a lower route MTU: a packet that fitted gets the ICMP error with the new MTU
  ipNs(w, 'route', 'replace', '198.51.100.0/26', 'via', '192.0.2.1', 'dev', 'lb0', 'mtu', 'lock', '1300');
  const big = frame4(4, 1300 - 20 - 20 - 20 + 1);
  await sleep(AFTER_SHORT_TTL_MS);
  const r = w.run(big);
  t.equal(r.retval, bpf.XDP_TX);
  t.equal(w.lb.reason('pmtu_reply'), 1n, 'too big for the new route MTU: ICMP fragmentation needed');
  t.equal(r.data.readUInt16BE(14 + 20 + 6), 1300 - 20, 'next-hop MTU: the new route MTU minus the outer header');
  t.equal(decap(w.run(frame4(5, 1300 - 60)).data).outer4?.totalLength, 1300, 'a packet that fits exactly is forwarded');

  // no route: passed on every packet, and forwarded again as soon as the route is back
  ipNs(w, 'route', 'del', '198.51.100.0/26');
  await sleep(AFTER_SHORT_TTL_MS);
  const before = refreshes(w);
  for (let i = 0; i < 3; i++) {
    const f = frame4(6 + i);
    const miss = w.run(f);
    t.equal(miss.retval, bpf.XDP_PASS, 'no route: to the kernel');
    t.same(miss.data, f, 'unchanged');
  }
  t.equal(w.lb.reason('pass_fib_miss'), 3n, 'every packet counted as a FIB miss');
  t.equal(refreshes(w), before, 'nothing stored');
  ipNs(w, 'route', 'add', '198.51.100.0/26', 'via', '192.0.2.1', 'dev', 'lb0');
  t.equal(w.run(frame4(9)).retval, bpf.XDP_TX, 'route back: forwarded at once (a failure is not cached)');
});

t.test('with the default bound (1 s) a packet uses its CPU\'s cached next hop or looks it up, and sees the change after the bound', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.10'] })]);
  t.equal(decap(w.run(frame4(1)).data).dstMac, ROUTER_MAC);
  ipNs(w, 'neigh', 'replace', '192.0.2.1', 'lladdr', NEW_ROUTER_MAC, 'dev', 'lb0', 'nud', 'permanent');
  // right after the change every entry is one resolved before it
  const before = refreshes(w);
  const mac = decap(w.run(frame4(2)).data).dstMac;
  if (refreshes(w) > before) t.equal(mac, NEW_ROUTER_MAC, 'looked up (this CPU had no entry): the new MAC');
  else t.equal(mac, ROUTER_MAC, 'cached: the old MAC, within the bound');
  await sleep(L.NEXTHOP_TTL_MS + 30);
  const rs = w.runAll(Array.from({ length: 10 }, (_, i) => frame4(100 + i)));
  t.ok(rs.every((r) => decap(r.data).dstMac === NEW_ROUTER_MAC), 'after the bound every packet has the new MAC');
});

t.test('a backend slot rewritten with another address, or a packet from another interface, is looked up afresh', needsRoot, (t) => {
  const w = world(t, { config: { nexthopTtlMs: 60_000 } });
  rawOneBackend(w, { vip: VIP4, port: 80, proto: TCP, id: 1 }, { id: 1, address: '198.51.100.10' });
  t.equal(w.run(frame4(1)).retval, bpf.XDP_TX, 'behind the router on lb0');
  w.lb.backend({ id: 1, address: '198.51.100.130' });
  const r = w.run(frame4(2));
  t.equal(r.retval, bpf.XDP_REDIRECT, 'the slot\'s new address is behind lb1');
  t.equal(decap(r.data).dstMac, BACKEND_MAC);
  t.equal(decap(r.data).outer4?.dst, '198.51.100.130');

  // forwarding is checked on the ingress interface: an entry resolved for
  // packets from lb0 does not forward packets from lb1
  w.lb.backend({ id: 1, address: '198.51.100.10' });
  t.equal(w.run(frame4(3)).retval, bpf.XDP_TX);
  sh('ip', 'netns', 'exec', w.fib.ns, 'sysctl', '-qw', 'net.ipv4.conf.lb1.forwarding=0');
  const f = frame4(4);
  const r2 = sys.withNetns(w.fib.ns, () => w.lb.run(f, w.fib.lb1));
  t.equal(r2.retval, bpf.XDP_PASS, 'from lb1, forwarding off there: to the kernel');
  t.same(r2.data, f);
  t.equal(w.lb.reason('pass_fib_fwd_disabled'), 1n);
  t.equal(w.run(frame4(5)).retval, bpf.XDP_TX, 'from lb0 still forwarded');
  t.end();
});

t.test('two backends in one cache slot (ids NEXTHOP_SLOTS apart) each get their own next hop', needsRoot, (t) => {
  const w = world(t, { config: { nexthopTtlMs: 60_000 } });
  const far = 1 + L.NEXTHOP_SLOTS;
  rawOneBackend(w, { vip: VIP4, port: 80, proto: TCP, id: 1 }, { id: 1, address: '198.51.100.10' });
  rawOneBackend(w, { vip: VIP4, port: 81, proto: TCP, id: 2 }, { id: far, address: '198.51.100.130' });
  const to81 = (sport: number) => P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport, dport: 81 })));
  for (let i = 0; i < 4; i++) {
    const a = w.run(frame4(10 + i));
    t.equal(a.retval, bpf.XDP_TX, `backend ${1}: behind the router on lb0 (${i})`);
    t.equal(decap(a.data).dstMac, ROUTER_MAC);
    const b = w.run(to81(10 + i));
    t.equal(b.retval, bpf.XDP_REDIRECT, `backend ${far}: behind lb1 (${i})`);
    t.equal(decap(b.data).dstMac, BACKEND_MAC);
    t.equal(decap(b.data).outer4?.dst, '198.51.100.130');
  }
  t.end();
});
