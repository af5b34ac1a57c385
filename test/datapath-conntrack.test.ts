// Connection-table integrity: what an entry of the connection table or of the
// flow cache may still decide. Each case runs for both families, once with the
// flow cache on (the cached answer decides) and once with it off (the
// connection table decides), and checks where the packet went and what the
// entry names afterwards.
import t, { type Test } from 'tap';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { flowCacheSlot, type Flow } from '../src/datapath/flowhash';
import * as P from '../harness/packets';
import { world, decap, LB_SRC4, LB_SRC6, OUTER_TTL, VIP4, VIP6, type World } from '../harness/datapath';
import { needsRoot, type Teardown } from '../harness/fixtures';

const TCP = L.IPPROTO_TCP;
const M = 7;
const only = (id: number) => new Uint32Array(M).fill(id);

function packet(f: Flow, flags: number): Buffer {
  const l4 = P.tcp({ sport: f.sport, dport: f.dport, flags });
  return P.ether(L.familyOf(f.src) === 6 ? P.ipv6({ src: f.src, dst: f.dst }, l4) : P.ipv4({ src: f.src, dst: f.dst }, l4));
}

function outerDst(frame: Buffer): string {
  const e = decap(frame);
  return e.outer4 ? e.outer4.dst : L.addressText(e.outer6!.dst, 6);
}

for (const v6 of [false, true]) {
  for (const cache of [true, false]) {
    const name = `${v6 ? 'IPv6' : 'IPv4'}, flow cache ${cache ? 'on' : 'off'}`;
    const vip = v6 ? VIP6 : VIP4;
    const addr = (id: number) => (v6 ? `2001:db8:100::${id}` : `198.51.100.${id}`);
    const f: Flow = { src: v6 ? '2001:db8::77' : '192.0.2.77', dst: vip, sport: 40000, dport: 80, proto: TCP };
    const setup = (t: Teardown): World => {
      const w = world(t, { maglevM: M, config: { src4: LB_SRC4, src6: LB_SRC6, ttl: OUTER_TTL, flags: cache ? 0 : L.CFG_F_NO_FLOW_CACHE } });
      w.lb.service({ vip, port: 80, proto: TCP, id: 1 });
      for (const id of [1, 2, 3]) w.lb.backend({ id, address: addr(id), service: 1 });
      w.lb.maglev(1, only(1));
      return w;
    };
    const go = (t: Test, w: World, flags: number) => {
      const r = w.run(packet(f, flags));
      t.ok(r.retval === bpf.XDP_TX || r.retval === bpf.XDP_REDIRECT, 'forwarded');
      return outerDst(r.data);
    };
    const entry = (w: World) => L.decodeCtEntry(w.lb.maps[L.conntrackKey(f).map].lookup(L.conntrackKey(f).key)!);
    const stored = (w: World, g: Flow) => w.lb.maps[L.conntrackKey(g).map].lookup(L.conntrackKey(g).key) !== null;
    const at = (t: Test, w: World, g: Flow, flags: number) => {
      const r = w.run(packet(g, flags));
      t.ok(r.retval === bpf.XDP_TX || r.retval === bpf.XDP_REDIRECT, 'forwarded');
      return outerDst(r.data);
    };

    if (cache) {
      t.test(`${name}: a SYN's placement stays out of the connection table, pending in its CPU's flow-cache slot; the handshake's ACK writes the entry with the SYN's backend though the table changed`, needsRoot, (t) => {
        const w = setup(t);
        t.equal(go(t, w, P.TCP_SYN), addr(1), 'SYN: Maglev, backend 1');
        t.notOk(stored(w, f), 'no connection-table entry: a SYN flood cannot evict live connections');
        const slot = () => (w.lb.maps.flowCache.lookupPerCpu(L.u32(flowCacheSlot(f))) ?? []).filter((b) => b.subarray(0, 40).equals(L.encodeFlowKey(f)));
        const E = L.LAYOUT.xdplb_flow_cache_entry.fields;
        t.same(slot().map((b) => [b.readUInt32LE(E.backend_id.offset), b.readUInt16LE(E.pending.offset)]), [[1, 1]], "one CPU's slot holds the placement, pending");
        w.lb.maglev(1, only(2));
        t.equal(go(t, w, P.TCP_SYN), addr(1), 'a retransmitted SYN on that CPU: the pending backend, not the new table');
        t.notOk(stored(w, f), 'still no entry');
        t.equal(go(t, w, P.TCP_ACK), addr(1), "the handshake's ACK: the pending backend");
        t.match(entry(w), { backendId: 1, serviceId: 1, closing: false }, 'and it wrote the entry');
        t.same(slot().map((b) => b.readUInt16LE(E.pending.offset)), [0], 'the slot now caches the entry, pending no more');
        w.lb.flushFlowCache();
        t.equal(go(t, w, P.TCP_ACK), addr(1), 'from any CPU (every slot emptied) the shared connection table keeps the flow on backend 1');
        t.end();
      });

      t.test(`${name}: a pending placement lost (the ACK on another CPU, or another flow's SYN in the slot) leaves the flow to Maglev: the same backend unless the table changed in between`, needsRoot, (t) => {
        const w = setup(t);
        t.equal(go(t, w, P.TCP_SYN), addr(1));
        w.lb.flushFlowCache();
        t.equal(go(t, w, P.TCP_ACK), addr(1), 'same table: Maglev gives the same backend');
        t.match(entry(w), { backendId: 1 }, 'the ACK wrote the entry');

        const g: Flow = { ...f, sport: 40001 };
        t.equal(at(t, w, g, P.TCP_SYN), addr(1));
        w.lb.maglev(1, only(2));
        w.lb.flushFlowCache();
        t.equal(at(t, w, g, P.TCP_ACK), addr(2), 'table changed between SYN and ACK: the new table decides');
        t.equal(go(t, w, P.TCP_ACK), addr(1), 'a flow with an entry keeps its backend across the change');
        t.end();
      });
    } else {
      t.test(`${name}: with the flow cache off a SYN writes the connection-table entry`, needsRoot, (t) => {
        const w = setup(t);
        t.equal(go(t, w, P.TCP_SYN), addr(1));
        t.match(entry(w), { backendId: 1, serviceId: 1 });
        t.end();
      });
    }

    t.test(`${name}: a SYN follows an entry only to an active backend; to a draining one it takes Maglev's choice and rewrites the entry`, needsRoot, (t) => {
      const w = setup(t);
      t.equal(go(t, w, P.TCP_SYN), addr(1), 'first SYN: Maglev, backend 1');
      w.lb.maglev(1, only(2));
      t.equal(go(t, w, P.TCP_SYN), addr(1), 'a retransmitted SYN reaches the backend of the first, though the table changed');
      t.equal(go(t, w, P.TCP_ACK), addr(1), 'the established flow too');

      w.lb.backend({ id: 1, address: addr(1), state: L.BACKEND_DRAINING });
      t.equal(go(t, w, P.TCP_ACK | P.TCP_PSH), addr(1), 'draining: the established flow stays');
      t.equal(go(t, w, P.TCP_SYN), addr(2), 'a new connection on the same 5-tuple: not the draining backend, the table');
      t.match(entry(w), { backendId: 2, serviceId: 1 }, 'and the entry names the new backend');
      t.equal(go(t, w, P.TCP_ACK), addr(2), 'the new connection stays there');
      t.equal(go(t, w, P.TCP_SYN), addr(2), 'its retransmitted SYN as well');
      w.lb.maglev(1, only(3));
      t.equal(go(t, w, P.TCP_SYN | P.TCP_ACK), addr(2), 'SYN+ACK is no new connection: it follows the entry');
      t.end();
    });

    t.test(`${name}: state down moves established flows to a live backend and rewrites the entry`, needsRoot, (t) => {
      const w = setup(t);
      t.equal(go(t, w, P.TCP_SYN), addr(1));
      t.equal(go(t, w, P.TCP_ACK), addr(1));
      // the daemon takes a down backend out of the table and marks it down
      w.lb.maglev(1, only(2));
      w.lb.backend({ id: 1, address: addr(1), state: L.BACKEND_DOWN });
      t.equal(go(t, w, P.TCP_ACK), addr(2), 'the established flow moves to the table’s backend');
      t.match(entry(w), { backendId: 2, serviceId: 1 }, 'the entry names it');
      w.lb.backend({ id: 1, address: addr(1) });
      t.equal(go(t, w, P.TCP_ACK), addr(2), 'and stays there when the old backend comes back');
      t.end();
    });

    t.test(`${name}: a backend id handed to another service does not take the old service's flows`, needsRoot, (t) => {
      const w = setup(t);
      w.lb.service({ vip: v6 ? '2001:db8:ffff::9' : '203.0.113.9', port: 443, proto: TCP, id: 2 });
      t.equal(go(t, w, P.TCP_SYN), addr(1));
      t.equal(go(t, w, P.TCP_ACK), addr(1));
      // backend 1 leaves service 1; its id goes to a backend of service 2
      w.lb.maglev(1, only(2));
      w.lb.backend({ id: 1, address: addr(91), service: 2 });
      w.lb.maglev(2, only(1));
      t.equal(go(t, w, P.TCP_ACK), addr(2), "the flow goes to its own service's table, not to the other service's backend");
      t.match(entry(w), { backendId: 2, serviceId: 1 }, 'the entry is rewritten');
      t.end();
    });
  }
}

/** Seconds of CLOCK_MONOTONIC, the clock of struct xdplb_ct_entry.expires_s (libuv's hrtime reads it too). */
const monoS = () => Number(process.hrtime.bigint() / 1_000_000_000n);

for (const v6 of [false, true]) {
  const name = v6 ? 'IPv6' : 'IPv4';
  const vip = v6 ? VIP6 : VIP4;
  const addr = (id: number) => (v6 ? `2001:db8:100::${id}` : `198.51.100.${id}`);
  const flow = (proto: number, sport = 40000): Flow => ({ src: v6 ? '2001:db8::78' : '192.0.2.78', dst: vip, sport, dport: 80, proto });
  const frame = (f: Flow, flags = P.TCP_ACK) => {
    const l4 = f.proto === TCP ? P.tcp({ sport: f.sport, dport: f.dport, flags }) : P.udp({ sport: f.sport, dport: f.dport, payload: Buffer.from('q') });
    return P.ether(v6 ? P.ipv6({ src: f.src, dst: f.dst }, l4) : P.ipv4({ src: f.src, dst: f.dst }, l4));
  };
  const setup = (t: Teardown, config: Partial<L.NodeConfig> = {}): World => {
    const w = world(t, { maglevM: M, config: { src4: LB_SRC4, src6: LB_SRC6, ttl: OUTER_TTL, ...config } });
    w.lb.service({ vip, port: 80, proto: TCP, id: 1 });
    w.lb.service({ vip, port: 80, proto: L.IPPROTO_UDP, id: 2 });
    for (const id of [1, 2]) w.lb.backend({ id, address: addr(id), service: 1 });
    w.lb.backend({ id: 3, address: addr(3), service: 2 });
    w.lb.maglev(1, only(1));
    w.lb.maglev(2, only(3));
    return w;
  };
  const ctKey = (f: Flow) => L.conntrackKey(f);
  const entry = (w: World, f: Flow) => L.decodeCtEntry(w.lb.maps[ctKey(f).map].lookup(ctKey(f).key)!);
  const forge = (w: World, f: Flow, e: Parameters<typeof L.encodeCtEntry>[0]) => {
    w.lb.maps[ctKey(f).map].update(ctKey(f).key, L.encodeCtEntry(e));
    w.lb.flushFlowCache();
  };
  const to = (t: Test, w: World, f: Flow, flags?: number) => {
    const r = w.run(frame(f, flags));
    t.ok(r.retval === bpf.XDP_TX || r.retval === bpf.XDP_REDIRECT, 'forwarded');
    return outerDst(r.data);
  };
  /** expires_s lies within the clock around the packet that stamped it; the
   * datapath's clock (bpf_ktime_get_coarse_ns) may trail by a tick, so a
   * second boundary crossed meanwhile gives one second of slack below */
  const expiresIn = (t: Test, w: World, f: Flow, lifetime: number, before: number, what: string) =>
    t.ok(entry(w, f).expiresS >= before - 1 + lifetime && entry(w, f).expiresS <= monoS() + lifetime, `${what}: expires ${lifetime} s from now`);

  t.test(`${name}: an expired entry is absent: Maglev places the flow and the entry is written afresh; a live one is followed and its expiry moves`, needsRoot, (t) => {
    const w = setup(t);
    const f = flow(TCP);
    forge(w, f, { backendId: 2, serviceId: 1, expiresS: monoS() - 1 });
    let before = monoS();
    t.equal(to(t, w, f), addr(1), 'expired: the table, not the entry');
    t.match(entry(w, f), { backendId: 1, serviceId: 1, closing: false }, 'the entry names the table’s backend');
    expiresIn(t, w, f, L.CT_TCP_S, before, 'TCP default');

    forge(w, f, { backendId: 2, serviceId: 1, expiresS: monoS() + 30 });
    before = monoS();
    t.equal(to(t, w, f), addr(2), 'live: the entry');
    expiresIn(t, w, f, L.CT_TCP_S, before, 'refreshed by the packet');

    const u = flow(L.IPPROTO_UDP);
    before = monoS();
    t.equal(to(t, w, u), addr(3));
    expiresIn(t, w, u, L.CT_UDP_S, before, 'UDP default');
    t.end();
  });

  t.test(`${name}: lifetimes from the node config`, needsRoot, (t) => {
    const w = setup(t, { ctTcpS: 600, ctUdpS: 30, ctClosingS: 7 });
    const f = flow(TCP);
    const u = flow(L.IPPROTO_UDP);
    const before = monoS();
    to(t, w, f, P.TCP_SYN);
    to(t, w, f);
    to(t, w, u);
    expiresIn(t, w, f, 600, before, 'TCP');
    expiresIn(t, w, u, 30, before, 'UDP');
    to(t, w, f, P.TCP_FIN | P.TCP_ACK);
    expiresIn(t, w, f, 7, before, 'after a FIN');
    t.end();
  });

  for (const cache of [true, false]) {
    t.test(`${name}, flow cache ${cache ? 'on' : 'off'}: FIN and RST shorten the entry to the closing lifetime; a SYN on the 5-tuple opens it again`, needsRoot, (t) => {
      const w = setup(t, { flags: cache ? 0 : L.CFG_F_NO_FLOW_CACHE });
      for (const [i, close] of [P.TCP_FIN | P.TCP_ACK, P.TCP_RST, P.TCP_RST | P.TCP_ACK].entries()) {
        const f = flow(TCP, 41000 + i);
        let before = monoS();
        t.equal(to(t, w, f, P.TCP_SYN), addr(1));
        t.equal(to(t, w, f), addr(1), 'established, maybe from the flow cache');
        expiresIn(t, w, f, L.CT_TCP_S, before, 'open');
        before = monoS();
        t.equal(to(t, w, f, close), addr(1), 'the closing segment reaches the backend');
        t.match(entry(w, f), { backendId: 1, closing: true }, 'closing');
        expiresIn(t, w, f, L.CT_CLOSING_S, before, 'closing');
        // expired by now: the next segment is placed again (the table moved meanwhile)
        w.lb.maglev(1, only(2));
        forge(w, f, { ...entry(w, f), expiresS: monoS() - 1, checkedJiffies: 0 });
        // the entry is stamped here; the SYN below, within the refresh bound, keeps that stamp
        before = monoS();
        t.equal(to(t, w, f), addr(2), 'after the closing lifetime the flow is new');
        w.lb.maglev(1, only(1));
        t.equal(to(t, w, f, P.TCP_SYN), addr(2), 'a SYN to the active backend of the entry follows it');
        t.match(entry(w, f), { backendId: 2, closing: false }, 'and opens the entry again');
        expiresIn(t, w, f, L.CT_TCP_S, before, 'open again');
      }
      t.end();
    });
  }
}
