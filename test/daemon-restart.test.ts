// Restarts never stop forwarding: real frames stream into the load balancer's
// interface (live-frames test runs on the peer veth) while the daemon is killed
// with SIGKILL and started again. Every frame is forwarded, and every flow stays
// on its backend.
import t from 'tap';
import * as path from 'node:path';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { REASON } from '../src/datapath/reasons';
import { daemonFixture, PEER_MAC, peerSender, rpc } from '../harness/daemon';
import { needsRoot } from '../harness/fixtures';
import { ether, ipv4, tcp, TCP_ACK } from '../harness/packets';

const SERVICES = `
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
      - address: 198.51.100.12
      - address: 198.51.100.13
`;
const FLOWS = 24;
const PER_FLOW = 50;

t.test('SIGKILL and restart of the daemon under traffic: zero loss, flows keep their backends', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: SERVICES });
  await d.start();
  const peer = peerSender(t, d);
  const frames = Array.from({ length: FLOWS }, (_, i) =>
    ether(ipv4({ src: `192.0.2.${100 + i}`, dst: '203.0.113.10' }, tcp({ sport: 40000 + i, dport: 80, flags: TCP_ACK, payload: Buffer.alloc(64, i) })), {
      dst: peer.lbMac,
      src: PEER_MAC,
    }),
  );
  let sent = 0;
  /** One round: every flow's frame PER_FLOW times, sent for real out of peer0 into lb0. */
  const round = () => (sent += peer.send(frames, PER_FLOW));

  const pinned = (name: string) => {
    const m = bpf.mapFromPin(path.join(d.bpffs, name));
    t.teardown(() => m.close());
    return m;
  };
  const reasons = pinned(L.MAP_NAMES.reasons);
  const beStats = pinned(L.MAP_NAMES.backendStats);
  const conntrack = pinned(L.MAP_NAMES.conntrack4); // IPv4 flows
  const reason = (name: string) => L.sumCounters(reasons.lookupPerCpu(L.u32(REASON[name]))).packets;
  const perBackend = () => [0, 1, 2, 3, 4, 5].map((id) => L.sumCounters(beStats.lookupPerCpu(L.u32(id))).packets);
  const flowBackends = () =>
    frames.map((_, i) => {
      const key = L.encodeFlow4Key({ src: `192.0.2.${100 + i}`, dst: '203.0.113.10', sport: 40000 + i, dport: 80, proto: L.IPPROTO_TCP });
      const v = conntrack.lookup(key);
      return v ? L.decodeCtEntry(v).backendId : -1;
    });

  // Let the flows settle on their backends, then measure one round's spread.
  const wait = () => new Promise((r) => setTimeout(r, 20));
  round();
  await wait();
  const owners = flowBackends();
  t.notOk(owners.includes(-1), 'every flow has a connection-table entry');
  t.ok(new Set(owners).size >= 2, `flows spread over backends ${[...new Set(owners)].join(',')}`);
  const beBefore = perBackend();
  round();
  await wait();
  const oneRound = perBackend().map((v, i) => v - beBefore[i]);

  const fwdStart = reason('forward_tx');
  const sentStart = sent;
  await d.signal('SIGKILL');
  let rounds = 0;
  round();
  rounds++;
  const starting = d.start();
  let started = false;
  starting.then(
    () => (started = true),
    () => (started = true),
  );
  while (!started) {
    round();
    rounds++;
    await new Promise((r) => setImmediate(r));
  }
  await starting;
  for (let i = 0; i < 3; i++) {
    round();
    rounds++;
  }
  await wait();
  const forwarded = reason('forward_tx') - fwdStart;
  t.ok(rounds >= 5, `${rounds} rounds (${sent - sentStart} frames) sent across the kill and restart`);
  t.equal(forwarded, BigInt(sent - sentStart), 'every frame sent was forwarded');
  for (const r of ['pass_not_vip', 'drop_no_backend', 'pass_fib_miss', 'drop_fib_no_neigh', 'pass_no_egress_dev', 'pass_fib_fwd_disabled'])
    t.equal(reason(r), 0n, `nothing counted as ${r}`);
  t.same(flowBackends(), owners, 'every flow kept its backend');
  const beMid = perBackend();
  round();
  await wait();
  t.same(perBackend().map((v, i) => v - beMid[i]), oneRound, 'the new daemon forwards each flow to the same backend as before');

  // The API reports the same counters the maps hold.
  const [err, counters] = await rpc<{ services: Array<{ name: string; traffic: { packets: number }; backends: Array<{ traffic: { packets: number } }> }>; reasons: Record<string, number>; verdicts: Record<string, number> }>(
    d.client(),
    'GetCounters',
    {},
  );
  t.error(err);
  const web = counters.services[0];
  t.equal(web.name, 'web');
  t.equal(web.traffic.packets, sent, 'service packets = frames sent');
  t.equal(web.backends.reduce((n, b) => n + b.traffic.packets, 0), sent, 'backend packets add up');
  t.equal(counters.reasons.forward_tx, sent);
  t.equal(counters.verdicts.XDP_TX, sent);
});
