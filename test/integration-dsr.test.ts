// Real traffic through real DSR: a client namespace talks TCP and UDP to the
// VIPs over IPv4 and IPv6; the load balancer's XDP program sends every packet
// inside IPIP/IP6IP6 to a backend, whose XDP decapsulator hands it to a server
// bound to the VIP; the server answers the client directly. With L4 DNAT the
// servers listen only on the backend port, so every answer proves the rewrite.
import t from 'tap';
import { labFixture } from '../src/lab/fixture';
import { labTest, formatTestReport } from '../src/lab/check';
import { needsRoot } from '../harness/fixtures';

const VIP4 = '203.0.113.10';
const VIP6 = '2001:db8:100::10';
const BE4 = ['198.51.100.11', '198.51.100.12', '198.51.100.13'];
const BE6 = ['2001:db8:200::11', '2001:db8:200::12', '2001:db8:200::13'];
const v6 = (a: string) => `[${a}]`;

t.test('TCP and UDP over IPv4 and IPv6, with and without L4 DNAT, answered directly by every backend', needsRoot, async (t) => {
  const t0 = Date.now();
  const f = await labFixture(t, {
    listens: [
      `tcp:${VIP4}:80`, `udp:${VIP4}:53`, `tcp:${v6(VIP6)}:80`, `udp:${v6(VIP6)}:53`,
      // DNAT targets only: nothing listens on the services' own ports 8000/5300
      `tcp:${VIP4}:8080`, `udp:${VIP4}:5353`, `tcp:${v6(VIP6)}:8080`, `udp:${v6(VIP6)}:5353`,
    ],
  });
  t.comment(`lab up in ${Date.now() - t0} ms`);
  const create = (name: string, vip: string, port: number, proto: string, bes: string[], bePort: number, dnat: boolean) =>
    f.cli('service', 'create', name, '--vip', vip, '--port', String(port), '--protocol', proto, ...(dnat ? ['--dnat'] : []), ...bes.flatMap((b) => ['--backend', `${b.includes(':') ? v6(b) : b}:${bePort}`]));
  create('tcp4', VIP4, 80, 'tcp', BE4, 80, false);
  create('udp4', VIP4, 53, 'udp', BE4, 53, false);
  create('tcp6', VIP6, 80, 'tcp', BE6, 80, false);
  create('udp6', VIP6, 53, 'udp', BE6, 53, false);
  create('tcp4-dnat', VIP4, 8000, 'tcp', BE4, 8080, true);
  create('udp4-dnat', VIP4, 5300, 'udp', BE4, 5353, true);
  create('tcp6-dnat', VIP6, 8000, 'tcp', BE6, 8080, true);
  create('udp6-dnat', VIP6, 5300, 'udp', BE6, 5353, true);

  const r = await labTest(f.lab, { count: 30 });
  t.comment(formatTestReport(r));
  t.equal(r.services.length, 8, 'eight services tested');
  for (const s of r.services) {
    t.equal(s.errors, 0, `${s.name}: no errors`);
    t.equal(s.answered, 60, `${s.name}: 60 of 60 answered`);
    t.ok(s.backends.every((b) => b.requests > 0), `${s.name}: every backend answered (${s.backends.map((b) => `${b.name} ${b.requests}`).join(', ')})`);
    t.equal(s.agree, s.answered, `${s.name}: every answer from the backend Maglev picks for the tuple`);
  }
  for (const c of r.checks) t.ok(c.ok, c.text);
  t.equal(r.lb.passNotVip, 0, 'the load balancer never saw a reply');

  const st = await f.lab.status();
  for (const b of st.backends) t.ok(b.decapped > 0, `${b.name}: its decapsulator stripped ${b.decapped} outer headers`);
  t.ok(st.router && st.router.fromLb >= r.lb.forwarded, `the router received the ${r.lb.forwarded} encapsulated packets the load balancer sent (${st.router?.fromLb})`);
  t.comment(`whole test ${Date.now() - t0} ms`);
});
