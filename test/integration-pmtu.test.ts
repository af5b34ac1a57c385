// Path MTU through the load balancer: its route towards the backends has MTU
// 1400, so a full-sized client segment (1500 bytes) cannot fit once the outer
// header is added. The load balancer answers ICMP fragmentation needed (IPv4)
// or packet too big (IPv6) with the usable MTU; the client's kernel caches it,
// TCP shrinks its segments, and a real 1 MB upload to the VIP completes.
import t from 'tap';
import { labFixture } from '../src/lab/fixture';
import { ipIn, inNs } from '../src/lab/topology';
import { needsRoot } from '../harness/fixtures';

const VIP4 = '203.0.113.10';
const VIP6 = '2001:db8:100::10';
const ROUTE_MTU = 1400;

function nstat(ns: string, names: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of inNs(ns, 'nstat', '-az', ...names).split('\n')) {
    const m = /^(\S+)\s+(\d+)/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

t.test('PMTU: ICMP frag-needed / packet-too-big from the load balancer, then a 1 MB upload completes', needsRoot, async (t) => {
  const t0 = Date.now();
  const f = await labFixture(t, { listens: [`tcp:${VIP4}:80`, `tcp:[${VIP6}]:80`] });
  f.cli('service', 'create', 'web4', '--vip', VIP4, '--port', '80', '--backend', '198.51.100.11:80', '--backend', '198.51.100.12:80');
  f.cli('service', 'create', 'web6', '--vip', VIP6, '--port', '80', '--backend', '[2001:db8:200::11]:80', '--backend', '[2001:db8:200::12]:80');
  const { lab } = f;
  // the load balancer's egress towards the backends: 1400 bytes
  ipIn(lab.plan.ns.lb, 'route', 'replace', 'default', 'via', lab.plan.lb.router4, 'dev', lab.plan.lb.if, 'mtu', 'lock', String(ROUTE_MTU));
  ipIn(lab.plan.ns.lb, '-6', 'route', 'replace', 'default', 'via', lab.plan.lb.router6, 'dev', lab.plan.lb.if, 'mtu', 'lock', String(ROUTE_MTU));
  const icmpBefore = nstat(lab.plan.ns.client, ['IcmpInDestUnreachs', 'Icmp6InPktTooBigs']);
  const before = await lab.counters();

  for (const [vip, src, outer, counter] of [
    [VIP4, lab.plan.client.v4[0], 20, 'IcmpInDestUnreachs'],
    [VIP6, lab.plan.client.v6[0], 40, 'Icmp6InPktTooBigs'],
  ] as const) {
    const family = vip.includes(':') ? 'IPv6' : 'IPv4';
    const r = await lab.upload({ vip, port: 80, src, bytes: 1 << 20, timeoutMs: 30000 });
    t.ok(r.ok, `${family}: 1 MB uploaded to the VIP and acknowledged by ${r.backend} with the right SHA-256 in ${r.ms} ms${r.error ? ` (error ${r.error})` : ''}`);
    t.equal(r.bytes, 1 << 20, `${family}: the backend received every byte`);
    const route = ipIn(lab.plan.ns.client, ...(family === 'IPv6' ? ['-6'] : []), 'route', 'get', vip, 'from', src);
    const mtu = /mtu (\d+)/.exec(route)?.[1];
    t.equal(Number(mtu), ROUTE_MTU - outer, `${family}: the client cached path MTU ${ROUTE_MTU - outer} for the VIP (${route.trim().split('\n')[0]})`);
    const icmp = nstat(lab.plan.ns.client, [counter]);
    t.ok((icmp[counter] ?? 0) > (icmpBefore[counter] ?? 0), `${family}: the client received ${counter}: ${(icmp[counter] ?? 0) - (icmpBefore[counter] ?? 0)}`);
  }
  const after = await lab.counters();
  const pmtu = (after.reasons.pmtu_reply ?? 0) - (before.reasons.pmtu_reply ?? 0);
  t.ok(pmtu >= 2, `the load balancer sent ${pmtu} ICMP errors (pmtu_reply)`);
  t.equal((after.reasons.drop_frag_needed_no_df ?? 0) - (before.reasons.drop_frag_needed_no_df ?? 0), 0, 'no packet without DF had to be dropped');
  const fwd = (after.reasons.forward_tx ?? 0) - (before.reasons.forward_tx ?? 0);
  t.ok(fwd > 2 * ((1 << 20) / ROUTE_MTU), `and forwarded the rest (${fwd} packets)`);
  t.comment(`PMTU test: ${Date.now() - t0} ms`);
});

t.test('path MTU past the load balancer: the router\'s errors reach the clients, 1 MB uploads complete (IPv4, IPv6, DNAT), nothing loops', needsRoot, async (t) => {
  const PATH_MTU = 1400;
  const f = await labFixture(t, { listens: [`tcp:${VIP4}:80`, `tcp:[${VIP6}]:80`, `tcp:${VIP4}:8080`], settings: { mtu: 0 } });
  f.cli('service', 'create', 'web4', '--vip', VIP4, '--port', '80', '--backend', '198.51.100.11:80', '--backend', '198.51.100.12:80');
  f.cli('service', 'create', 'web6', '--vip', VIP6, '--port', '80', '--backend', '[2001:db8:200::11]:80', '--backend', '[2001:db8:200::12]:80');
  f.cli('service', 'create', 'dnat4', '--vip', VIP4, '--port', '8000', '--dnat', '--backend', '198.51.100.11:8080', '--backend', '198.51.100.12:8080');
  const { lab } = f;
  await lab.syncRevNat();
  // one hop past the load balancer, the router's links to the backends take 1400 bytes
  for (const b of lab.plan.backends) {
    ipIn(lab.plan.ns.router, 'link', 'set', b.routerIf, 'mtu', String(PATH_MTU));
    ipIn(b.ns, 'link', 'set', 'eth0', 'mtu', String(PATH_MTU));
  }
  const fwdNames = ['IpForwDatagrams', 'Ip6OutForwDatagrams'];
  const lbFwdBefore = nstat(lab.plan.ns.lb, fwdNames);
  const before = await lab.counters();

  // DNAT first: the client keeps a learnt MTU per destination (the VIP), and
  // only the relayed error can teach it there
  for (const [what, vip, port, src, outer] of [
    ['IPv4 DNAT', VIP4, 8000, lab.plan.client.v4[1], 20],
    ['IPv4', VIP4, 80, lab.plan.client.v4[0], 20],
    ['IPv6', VIP6, 80, lab.plan.client.v6[0], 40],
  ] as const) {
    const r = await lab.upload({ vip, port, src, bytes: 1 << 20, timeoutMs: 30000 });
    t.ok(r.ok, `${what}: 1 MB uploaded and acknowledged by ${r.backend} with the right SHA-256 in ${r.ms} ms${r.error ? ` (error ${r.error})` : ''}`);
    t.equal(r.bytes, 1 << 20, `${what}: the backend received every byte`);
    const route = ipIn(lab.plan.ns.client, ...(outer === 40 ? ['-6'] : []), 'route', 'get', vip, 'from', src);
    t.equal(Number(/mtu (\d+)/.exec(route)?.[1]), PATH_MTU - outer, `${what}: the client learnt path MTU ${PATH_MTU - outer} (${route.trim().split('\n')[0]})`);
  }
  const after = await lab.counters();
  const d = (r: string) => (after.reasons[r] ?? 0) - (before.reasons[r] ?? 0);
  t.ok(d('pmtu_relay_tx') >= 2, `the router's errors were relayed to the clients (pmtu_relay_tx ${d('pmtu_relay_tx')})`);
  t.equal(d('pmtu_reply'), 0, 'every client, the DNAT one too (its quotes carry the service port again), learnt the MTU from a relayed error');
  for (const r of ['pass_icmp_quote', 'pass_not_vip', 'drop_outer_source', 'drop_relay_no_route', 'drop_tunnel_icmp', 'drop_frag_needed_no_df']) t.equal(d(r), 0, `${r}: none`);
  const lbFwd = nstat(lab.plan.ns.lb, fwdNames);
  for (const n of fwdNames) t.equal((lbFwd[n] ?? 0) - (lbFwdBefore[n] ?? 0), 0, `${n} on the load balancer: its kernel sent nothing back out, so no ICMP frame crossed it twice`);
  const status = JSON.parse(f.cli('status', '-o', 'json')) as { pathMtus: Array<{ backend: string; mtu: number }> };
  t.ok(status.pathMtus.length >= 2 && status.pathMtus.every((p) => p.mtu === PATH_MTU), `xdplb status lists the path MTUs: ${status.pathMtus.map((p) => `${p.backend} ${p.mtu}`).join(', ')}`);
});
