// The flow cache (xdp/flowcache.h): a per-CPU, direct-mapped copy of
// connection-table answers in front of the connection table. These tests make
// it observable: an answer forged into every CPU's slot is followed, for at
// most XDPLB_FLOW_CACHE_JIFFIES; flows sharing a slot stay correct; what it
// answers is checked like a connection-table entry.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { flowCacheSlot as slotOf, type Flow } from '../src/datapath/flowhash';
import * as P from '../harness/packets';
import { world, decap, LB_SRC4, LB_SRC6, OUTER_TTL, VIP4, VIP6, type World } from '../harness/datapath';
import { needsRoot, type Teardown } from '../harness/fixtures';
import { seededRandom } from '../harness/random';

const TCP = L.IPPROTO_TCP;
/** A flow hash no flow of these tests has: seen in the flow label only if read from the cache. */
const FORGED_HASH = 0x5a5a5;
const ENTRY = L.LAYOUT.xdplb_flow_cache_entry;

/** The slot's entry on every CPU. */
function entries(w: World, slot: number): Array<{ flow: Buffer; backendId: number; serviceId: number; filledJiffies: bigint }> {
  return (w.lb.maps.flowCache.lookupPerCpu(L.u32(slot)) ?? []).map((b) => ({
    flow: b.subarray(ENTRY.fields.flow.offset, ENTRY.fields.flow.offset + 40),
    backendId: b.readUInt32LE(ENTRY.fields.backend_id.offset),
    serviceId: b.readUInt32LE(ENTRY.fields.service_id.offset),
    filledJiffies: b.readBigUInt64LE(ENTRY.fields.filled_jiffies.offset),
  }));
}

function packet(f: Flow, flags = P.TCP_ACK): Buffer {
  const l4 = P.tcp({ sport: f.sport, dport: f.dport, flags });
  return P.ether(L.familyOf(f.src) === 6 ? P.ipv6({ src: f.src, dst: f.dst }, l4) : P.ipv4({ src: f.src, dst: f.dst }, l4));
}

function outerDst(frame: Buffer): string {
  const e = decap(frame);
  return e.outer4 ? e.outer4.dst : L.addressText(e.outer6!.dst, 6);
}

for (const v6 of [false, true]) {
  const fam = v6 ? 'IPv6' : 'IPv4';
  const vip = v6 ? VIP6 : VIP4;
  const addr = (id: number) => (v6 ? `2001:db8:100::${id}` : `198.51.100.${id}`);
  const client = (i: number) => (v6 ? `2001:db8::${(0x100 + i).toString(16)}` : `192.0.2.${100 + (i % 100)}`);
  const setup = (t: Teardown) => {
    const w = world(t, { maglevM: 7 });
    w.lb.service({ vip, port: 80, proto: TCP, id: 1 });
    for (const id of [1, 2, 3]) w.lb.backend({ id, address: addr(id), service: 1 });
    w.lb.maglev(1, new Uint32Array(7).fill(1));
    return w;
  };

  t.test(`${fam}: a connection-table answer is cached in the flow's slot, used, and trusted only for a bounded time`, needsRoot, async (t) => {
    const w = setup(t);
    const f: Flow = { src: client(1), dst: vip, sport: 4321, dport: 80, proto: TCP };
    const slot = slotOf(f);
    const fills = () => L.sumU64(w.lb.maps.cacheStats.lookupPerCpu(L.u32(L.CACHE_STAT_FLOW_FILLS)));
    t.equal(outerDst(w.run(packet(f, P.TCP_SYN)).data), addr(1));
    t.equal(fills(), 1n, 'one fill counted');
    const filled = entries(w, slot).filter((e) => e.flow.equals(L.encodeFlowKey(f)));
    t.equal(filled.length, 1, 'one CPU cached the flow, in the slot TypeScript computes');
    t.same([filled[0].backendId, filled[0].serviceId], [1, 1], 'with the backend and service the connection table holds');

    // the flow's answer with backend 3, stamped as recently as the freshest
    // copy, on every CPU: the next packet must take it
    const forge = (backendId: number) => {
      const mine = entries(w, slot).filter((e) => e.flow.equals(L.encodeFlowKey(f)));
      const b = Buffer.alloc(ENTRY.size);
      L.encodeFlowKey(f).copy(b, ENTRY.fields.flow.offset);
      b.writeUInt32LE(backendId, ENTRY.fields.backend_id.offset);
      b.writeUInt32LE(1, ENTRY.fields.service_id.offset);
      b.writeBigUInt64LE(mine.reduce((m, e) => (e.filledJiffies > m ? e.filledJiffies : m), 0n), ENTRY.fields.filled_jiffies.offset);
      b.writeUInt32LE(FORGED_HASH, ENTRY.fields.hash.offset);
      b.writeUInt32LE(1, ENTRY.fields.hashed.offset);
      w.lb.maps.flowCache.updatePerCpu(L.u32(slot), b);
    };
    forge(3);
    const hit = decap(w.run(packet(f)).data);
    t.equal(hit.outer4?.dst ?? L.addressText(hit.outer6!.dst, 6), addr(3), 'an established packet follows the cache, not the connection table');
    t.equal(fills(), 1n, 'a hit is no fill');
    if (v6) t.equal(hit.outer6!.flowLabel, FORGED_HASH & 0xfffff, "and takes the flow hash from it: the outer flow label is the forged hash's");

    // checked like a connection-table entry: a backend that is down is not used
    w.lb.backend({ id: 3, address: addr(3), state: L.BACKEND_DOWN });
    t.equal(outerDst(w.run(packet(f)).data), addr(1), 'backend down: the table again');
    w.lb.backend({ id: 3, address: addr(3) });
    forge(3);
    t.equal(outerDst(w.run(packet(f)).data), addr(3));

    // 100 jiffies are at most 1 s (HZ >= 100)
    await new Promise((r) => setTimeout(r, 1100));
    t.equal(outerDst(w.run(packet(f)).data), addr(1), 'after its bound the connection table answers again');
    t.match(L.decodeCtEntry(w.lb.maps[L.conntrackKey(f).map].lookup(L.conntrackKey(f).key)!), { backendId: 1, serviceId: 1 }, 'which the cache never changed');
  });

  t.test(`${fam}: flows sharing a slot take turns in it and each keeps its own backend`, needsRoot, (t) => {
    const w = setup(t);
    const r = seededRandom(v6 ? 66 : 44);
    const bySlot = new Map<number, Flow>();
    let pair: [Flow, Flow] | undefined;
    for (let i = 0; !pair && i < 100000; i++) {
      const f: Flow = { src: client(i), dst: vip, sport: 1024 + Math.floor(r() * 60000), dport: 80, proto: TCP };
      const other = bySlot.get(slotOf(f));
      if (other && other.src !== f.src) pair = [other, f];
      else bySlot.set(slotOf(f), f);
    }
    t.ok(pair, 'two flows with one slot');
    const [a, b] = pair!;
    t.equal(outerDst(w.run(packet(a, P.TCP_SYN)).data), addr(1));
    t.equal(outerDst(w.run(packet(a)).data), addr(1), 'a: established (the ACK writes the connection-table entry)');
    w.lb.maglev(1, new Uint32Array(7).fill(2));
    t.equal(outerDst(w.run(packet(b, P.TCP_SYN)).data), addr(2), 'b: the new table');
    t.equal(outerDst(w.run(packet(b)).data), addr(2), 'b: established');
    for (let i = 0; i < 4; i++) {
      t.equal(outerDst(w.run(packet(a)).data), addr(1), 'a keeps backend 1');
      t.equal(outerDst(w.run(packet(b)).data), addr(2), 'b keeps backend 2');
    }
    const holders = entries(w, slotOf(a)).filter((e) => e.flow.equals(L.encodeFlowKey(a)) || e.flow.equals(L.encodeFlowKey(b)));
    t.ok(holders.length >= 1, 'the slot holds one of them');
    t.end();
  });
}

t.test('flow cache off (node config): never read, never written; flows still keep their backends', needsRoot, (t) => {
  const w = world(t, { maglevM: 7 });
  w.lb.service({ vip: VIP4, port: 80, proto: TCP, id: 1 });
  for (const id of [1, 2, 3]) w.lb.backend({ id, address: `198.51.100.${id}`, service: 1 });
  w.lb.maglev(1, new Uint32Array(7).fill(1));
  const f: Flow = { src: '192.0.2.9', dst: VIP4, sport: 999, dport: 80, proto: TCP };
  const fills = () => L.sumU64(w.lb.maps.cacheStats.lookupPerCpu(L.u32(L.CACHE_STAT_FLOW_FILLS)));
  // on: the first packet fills the slot, stamped with the current jiffies
  t.equal(outerDst(w.run(packet(f, P.TCP_SYN)).data), '198.51.100.1');
  t.equal(outerDst(w.run(packet(f)).data), '198.51.100.1', 'the ACK writes the connection-table entry');
  const filled = entries(w, slotOf(f)).find((e) => e.flow.equals(L.encodeFlowKey(f)));
  t.ok(filled, 'cache on: the flow was cached');
  // off, at run time; the same entry, fresh, with backend 3, on every CPU
  w.lb.config({ src4: LB_SRC4, src6: LB_SRC6, ttl: OUTER_TTL, flags: L.CFG_F_NO_FLOW_CACHE });
  const forged = Buffer.alloc(ENTRY.size);
  L.encodeFlowKey(f).copy(forged, ENTRY.fields.flow.offset);
  forged.writeUInt32LE(3, ENTRY.fields.backend_id.offset);
  forged.writeUInt32LE(1, ENTRY.fields.service_id.offset);
  forged.writeBigUInt64LE(filled!.filledJiffies, ENTRY.fields.filled_jiffies.offset);
  w.lb.maps.flowCache.updatePerCpu(L.u32(slotOf(f)), forged);
  const before = fills();
  w.lb.maglev(1, new Uint32Array(7).fill(2));
  t.equal(outerDst(w.run(packet(f)).data), '198.51.100.1', 'off: the forged entry is not read; the connection table answers');
  const g: Flow = { ...f, sport: 1000 };
  t.equal(outerDst(w.run(packet(g, P.TCP_SYN)).data), '198.51.100.2', 'a new flow: Maglev');
  t.equal(outerDst(w.run(packet(g)).data), '198.51.100.2', 'and its next packet: the connection table');
  t.equal(fills(), before, 'nothing written into the cache');
  t.ok(entries(w, slotOf(g)).every((e) => !e.flow.equals(L.encodeFlowKey(g))), "the new flow's slot does not hold it");
  t.end();
});

t.test('a cached answer is not used for another service of the same flow tuple', needsRoot, (t) => {
  // the exact-port service replaces the all-ports one: the cached answer names
  // the old service, which no longer serves the flow
  const w = world(t, { maglevM: 7 });
  w.lb.service({ vip: VIP4, port: 0, proto: TCP, id: 2 });
  w.lb.backend({ id: 1, address: '198.51.100.1' });
  w.lb.backend({ id: 2, address: '198.51.100.2' });
  w.lb.maglev(1, new Uint32Array(7).fill(1));
  w.lb.maglev(2, new Uint32Array(7).fill(2));
  const f: Flow = { src: '192.0.2.7', dst: VIP4, sport: 777, dport: 80, proto: TCP };
  t.equal(outerDst(w.run(packet(f, P.TCP_SYN)).data), '198.51.100.2');
  t.equal(outerDst(w.run(packet(f)).data), '198.51.100.2', 'cached');
  w.lb.service({ vip: VIP4, port: 80, proto: TCP, id: 1 });
  const r = w.run(packet(f));
  t.equal(r.retval, bpf.XDP_TX);
  t.equal(outerDst(r.data), '198.51.100.1', 'the new service, at once');
  t.end();
});
