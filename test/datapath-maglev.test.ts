// Backend choice: the flow hash and the Maglev table predict the backend bit
// for bit; the connection table keeps established flows where they are when
// the table changes; down backends are never chosen.
import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { flowHash, outerSource, vipFilterBit, type Flow } from '../src/datapath/flowhash';
import { buildTable, DEFAULT_M, MAX_M, NO_BACKEND, type MaglevBackend } from '../src/maglev';
import { Address } from '../src/net/address';
import * as P from '../harness/packets';
import { world, decap, VIP4, VIP6, type World } from '../harness/datapath';
import { DEFAULT_NODE, type NodeSettings } from '../src/control/model';
import { validateService } from '../src/control/validate';
import { LbDatapath } from '../src/datapath/lb';
import { needsRoot, pinDir, type Teardown } from '../harness/fixtures';

const TCP = L.IPPROTO_TCP;
const UDP = L.IPPROTO_UDP;

// A small deterministic generator (xorshift32), so a failure can be replayed.
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

const DOC4 = ['192.0.2', '198.51.100', '203.0.113'];

function randomFlow(r: () => number, v6: boolean, vip: string, dport?: number): Flow {
  const src = v6
    ? `2001:db8:${(r() & 0xffff).toString(16)}:${(r() & 0xffff).toString(16)}::${(r() & 0xffff).toString(16)}:${(r() & 0xffff).toString(16)}`
    : `${DOC4[r() % 3]}.${r() & 0xff}`;
  return { src, dst: vip, sport: 1024 + (r() % 64000), dport: dport ?? 1 + (r() % 65535), proto: r() & 1 ? TCP : UDP };
}

function packet(f: Flow, flags = P.TCP_SYN): Buffer {
  const l4 = f.proto === TCP ? P.tcp({ sport: f.sport, dport: f.dport, flags }) : P.udp({ sport: f.sport, dport: f.dport, payload: Buffer.from('x') });
  return P.ether(L.familyOf(f.src) === 6 ? P.ipv6({ src: f.src, dst: f.dst }, l4) : P.ipv4({ src: f.src, dst: f.dst }, l4));
}

function outerDst(frame: Buffer): string {
  const e = decap(frame);
  return e.outer4 ? e.outer4.dst : L.addressText(e.outer6!.dst, 6);
}

function outerSrc(frame: Buffer): string {
  const e = decap(frame);
  return e.outer4 ? e.outer4.src : L.addressText(e.outer6!.src, 6);
}

interface Pool {
  backends: MaglevBackend[];
  address: Map<number, string>;
}

/** Backends 1..n at 198.51.100.<id> or 2001:db8:100::<id>, installed in the backends map. */
function pool(w: World, v6: boolean, ids: number[], weights?: number[]): Pool {
  const address = new Map<number, string>();
  const backends = ids.map((id, i) => {
    const a = v6 ? `2001:db8:100::${id.toString(16)}` : `198.51.100.${id}`;
    address.set(id, a);
    w.lb.backend({ id, address: a });
    return { id, key: `${a}:80`, weight: weights?.[i] ?? 1 };
  });
  return { backends, address };
}

for (const v6 of [false, true]) {
  const fam = v6 ? 'IPv6' : 'IPv4';
  t.test(`${fam}: for 10,000 random flows the backend and outer source are the TypeScript prediction`, needsRoot, (t) => {
    const src4 = '192.0.2.0';
    const src6 = '2001:db8:0:5::';
    const w = world(t, { config: { src4, src4PrefixLen: 24, src6, src6PrefixLen: 96 } });
    const vip = v6 ? VIP6 : VIP4;
    const M = DEFAULT_M;
    w.lb.service({ vip, port: 0, proto: TCP, id: 1 });
    w.lb.service({ vip, port: 0, proto: UDP, id: 2 });
    const p = pool(w, v6, [1, 2, 3, 4, 5, 6, 7], [1, 1, 2, 1, 3, 1, 1]);
    const table = buildTable(p.backends, M);
    w.lb.maglev(1, table);
    w.lb.maglev(2, table);
    const r = rng(v6 ? 66 : 44);
    const flows = Array.from({ length: 10000 }, () => randomFlow(r, v6, vip));
    const first = w.runAll(flows.map((f) => packet(f)));
    const again = w.runAll(flows.map((f) => packet(f, P.TCP_ACK)));
    let wrong = 0;
    let wrongSrc = 0;
    let unstable = 0;
    const perBackend = new Map<string, number>();
    flows.forEach((f, i) => {
      const h = flowHash(f);
      const want = p.address.get(table[h % M])!;
      const got = first[i].retval === bpf.XDP_TX ? outerDst(first[i].data) : `verdict ${first[i].retval}`;
      if (got !== want) wrong++;
      if (first[i].retval === bpf.XDP_TX && outerSrc(first[i].data) !== outerSource(v6 ? src6 : src4, v6 ? 96 : 24, h)) wrongSrc++;
      if (again[i].retval !== first[i].retval || outerDst(again[i].data) !== got || outerSrc(again[i].data) !== outerSrc(first[i].data)) unstable++;
      perBackend.set(got, (perBackend.get(got) ?? 0) + 1);
    });
    t.equal(wrong, 0, 'every backend as predicted by flowHash and the Maglev table');
    t.equal(wrongSrc, 0, 'every outer source as predicted');
    t.equal(unstable, 0, 'the same flow, the same backend and outer source, packet after packet');
    t.equal(perBackend.size, 7, 'all backends used');
    // weights show: backend 5 (weight 3) gets about three times backend 1's flows
    const share = (id: number) => perBackend.get(p.address.get(id)!) ?? 0;
    t.ok(share(5) > 2 * share(1), `weight 3 vs 1: ${share(5)} vs ${share(1)} flows`);
    t.end();
  });
}

t.test('a flow keeps its backend after the backend set changes; new flows follow the new table', needsRoot, (t) => {
  const w = world(t, { maglevM: 251 });
  w.lb.service({ vip: VIP4, port: 80, proto: TCP, id: 1 });
  const p = pool(w, false, [1, 2, 3, 4, 5, 6]);
  const before = buildTable(p.backends.slice(0, 5), 251);
  w.lb.maglev(1, before);
  const r = rng(7);
  const flows = Array.from({ length: 400 }, () => randomFlow(r, false, VIP4, 80)).map((f) => ({ ...f, proto: TCP }));
  const chosen = w.runAll(flows.map((f) => packet(f))).map((x) => outerDst(x.data));
  t.same(chosen, flows.map((f) => p.address.get(before[flowHash(f) % 251])), 'first packets: the table');
  // the handshakes' ACKs: a SYN's placement is only pending (flowcache.h), the ACK writes the entry
  t.same(w.runAll(flows.map((f) => packet(f, P.TCP_ACK))).map((x) => outerDst(x.data)), chosen, 'established');
  // backend 3 leaves the table (still up: it is being drained), backend 6 joins
  const after = buildTable([...p.backends.slice(0, 2), ...p.backends.slice(3, 6)], 251);
  w.lb.maglev(1, after);
  const moved = flows.filter((f) => after[flowHash(f) % 251] !== before[flowHash(f) % 251]).length;
  t.ok(moved > 50, `${moved} of 400 flows map elsewhere in the new table`);
  const later = w.runAll(flows.map((f) => packet(f, P.TCP_ACK))).map((x) => outerDst(x.data));
  t.same(later, chosen, 'every established flow stays on its backend');
  const fresh = Array.from({ length: 300 }, () => randomFlow(r, false, VIP4, 80)).map((f) => ({ ...f, proto: TCP }));
  const freshGot = w.runAll(fresh.map((f) => packet(f))).map((x) => outerDst(x.data));
  t.same(freshGot, fresh.map((f) => p.address.get(after[flowHash(f) % 251])), 'new flows follow the new table');
  t.notOk(freshGot.includes(p.address.get(3)!), 'no new flow to the backend that left');
  t.end();
});

t.test('connection-table bypass: every packet follows the current table, no entries are made', needsRoot, (t) => {
  const w = world(t, { maglevM: 251 });
  w.lb.service({ vip: VIP6, port: 443, proto: TCP, id: 1, flags: L.SVC_F_CT_BYPASS });
  const p = pool(w, true, [1, 2, 3, 4]);
  const before = buildTable(p.backends.slice(0, 3), 251);
  const after = buildTable(p.backends.slice(1, 4), 251);
  w.lb.maglev(1, before);
  const r = rng(9);
  const flows = Array.from({ length: 300 }, () => ({ ...randomFlow(r, true, VIP6, 443), proto: TCP }));
  const got1 = w.runAll(flows.map((f) => packet(f))).map((x) => outerDst(x.data));
  t.same(got1, flows.map((f) => p.address.get(before[flowHash(f) % 251])));
  w.lb.maglev(1, after);
  const got2 = w.runAll(flows.map((f) => packet(f, P.TCP_ACK))).map((x) => outerDst(x.data));
  t.same(got2, flows.map((f) => p.address.get(after[flowHash(f) % 251])), 'established flows follow the table too');
  t.equal([...w.lb.maps.conntrack.keys()].length, 0, 'the connection table stays empty');
  t.end();
});

t.test('down, draining and deleted backends: never chosen for new flows; only draining keeps its flows', needsRoot, (t) => {
  const w = world(t, { maglevM: 13 });
  w.lb.service({ vip: VIP4, port: 80, proto: TCP, id: 1 });
  w.lb.backend({ id: 1, address: '198.51.100.1' });
  w.lb.backend({ id: 2, address: '198.51.100.2' });
  w.lb.backend({ id: 3, address: '198.51.100.3' });
  const only = (id: number) => new Uint32Array(13).fill(id);
  const flow = (sport: number): Flow => ({ src: '192.0.2.77', dst: VIP4, sport, dport: 80, proto: TCP });
  w.lb.maglev(1, only(1));
  t.equal(outerDst(w.run(packet(flow(1))).data), '198.51.100.1', 'flow 1 on backend 1');
  t.equal(outerDst(w.run(packet(flow(2))).data), '198.51.100.1', 'flow 2 on backend 1');

  // backend 1 goes down, the table still names it (the daemon has not caught up)
  w.lb.backend({ id: 1, address: '198.51.100.1', state: L.BACKEND_DOWN });
  const r = w.run(packet(flow(1), P.TCP_ACK));
  t.equal(r.retval, bpf.XDP_DROP, 'connection table names a down backend, the table too: dropped');
  t.equal(w.lb.reason('drop_no_backend'), 1n);
  // the daemon rebuilds the table: established flows fall back to Maglev
  w.lb.maglev(1, only(2));
  t.equal(outerDst(w.run(packet(flow(1), P.TCP_ACK)).data), '198.51.100.2', 'flow 1 falls back to the table: backend 2');
  const ct = L.decodeCtEntry(w.lb.maps.conntrack4.lookup(L.encodeFlow4Key(flow(1)))!);
  t.match(ct, { backendId: 2, serviceId: 1 }, 'and its connection-table entry now names backend 2');

  // draining: established flows stay, new flows are not sent there
  w.lb.backend({ id: 2, address: '198.51.100.2', state: L.BACKEND_DRAINING });
  t.equal(outerDst(w.run(packet(flow(1), P.TCP_ACK)).data), '198.51.100.2', 'established flow stays on the draining backend');
  t.equal(w.run(packet(flow(3))).retval, bpf.XDP_DROP, 'a new flow whose table entry is draining: dropped');
  w.lb.maglev(1, only(3));
  t.equal(outerDst(w.run(packet(flow(3))).data), '198.51.100.3', 'after the rebuild the new flow goes to backend 3');
  t.equal(outerDst(w.run(packet(flow(1), P.TCP_ACK)).data), '198.51.100.2', 'and the established one still to backend 2');

  // deleted: the slot is emptied; its flows fall back to the table
  w.lb.deleteBackend(2);
  t.equal(outerDst(w.run(packet(flow(1), P.TCP_ACK)).data), '198.51.100.3', 'flow of a deleted backend goes to the table');
  t.equal(w.lb.reason('drop_no_backend'), 2n);
  t.end();
});

t.test('source-address hashing: all flows of a client reach the same backend', needsRoot, (t) => {
  const w = world(t, { maglevM: 1021 });
  w.lb.service({ vip: VIP4, port: 0, proto: UDP, id: 1, flags: L.SVC_F_SRC_HASH | L.SVC_F_CT_BYPASS });
  const p = pool(w, false, [1, 2, 3, 4, 5, 6, 7, 8]);
  const table = buildTable(p.backends, 1021);
  w.lb.maglev(1, table);
  const clients = ['192.0.2.10', '192.0.2.11', '198.51.100.200', '203.0.113.99'];
  const seen = new Set<string>();
  for (const c of clients) {
    const flows = Array.from({ length: 40 }, (_, i): Flow => ({ src: c, dst: VIP4, sport: 10000 + i * 7, dport: 1 + i * 101, proto: UDP }));
    const got = new Set(w.runAll(flows.map((f) => packet(f))).map((x) => outerDst(x.data)));
    t.equal(got.size, 1, `${c}: one backend for 40 flows`);
    t.same([...got], [p.address.get(table[flowHash(flows[0], true) % 1021])], `${c}: the predicted backend`);
    seen.add([...got][0]);
  }
  t.ok(seen.size > 1, 'different clients spread');
  t.end();
});

t.test('the exact-port service wins over the all-ports service; anything else is not a VIP', needsRoot, (t) => {
  const w = world(t, { maglevM: 7 });
  w.lb.service({ vip: VIP4, port: 80, proto: TCP, id: 1 });
  w.lb.service({ vip: VIP4, port: 0, proto: TCP, id: 2 });
  w.lb.backend({ id: 1, address: '198.51.100.1' });
  w.lb.backend({ id: 2, address: '198.51.100.2' });
  w.lb.maglev(1, new Uint32Array(7).fill(1));
  w.lb.maglev(2, new Uint32Array(7).fill(2));
  const f = (dport: number, proto = TCP, dst = VIP4): Flow => ({ src: '192.0.2.5', dst, sport: 5555, dport, proto });
  t.equal(outerDst(w.run(packet(f(80))).data), '198.51.100.1', 'port 80: its own service');
  t.equal(outerDst(w.run(packet(f(81))).data), '198.51.100.2', 'port 81: the all-ports service');
  t.equal(outerDst(w.run(packet(f(65535))).data), '198.51.100.2');
  for (const [frame, what] of [
    [packet(f(80, UDP)), 'UDP to a TCP-only VIP'],
    [packet(f(80, TCP, '203.0.113.11')), 'another address'],
    [packet({ ...f(80), src: '2001:db8::5', dst: VIP6 }), 'IPv6 without services'],
  ] as const) {
    const r = w.run(frame);
    t.equal(r.retval, bpf.XDP_PASS, `${what}: XDP_PASS`);
    t.same(r.data, frame, 'unchanged');
  }
  t.equal(w.lb.reason('pass_not_vip'), 3n);
  t.end();
});

t.test('the VIP filter: a destination whose bit is clear is no VIP, the bit TypeScript computes', needsRoot, (t) => {
  const w = world(t, { maglevM: 7 });
  for (const [vip, id] of [[VIP4, 1], [VIP6, 2]] as const) {
    w.lb.service({ vip, port: 80, proto: TCP, id });
    w.lb.backend({ id, address: vip === VIP4 ? '198.51.100.1' : '2001:db8:100::1' });
    w.lb.maglev(id, new Uint32Array(7).fill(id));
    const f = (sport: number): Flow => ({ src: vip === VIP4 ? '192.0.2.5' : '2001:db8::5', dst: vip, sport, dport: 80, proto: TCP });
    t.equal(w.run(packet(f(1))).retval, bpf.XDP_TX, `${vip}: forwarded`);
    w.lb.vipFilterBit(vip, false);
    const before = w.lb.reason('pass_not_vip');
    const frame = packet(f(2));
    const r = w.run(frame);
    t.equal(r.retval, bpf.XDP_PASS, `${vip}: bit ${vipFilterBit(Address.of(vip))} clear: passed`);
    t.same(r.data, frame, 'unchanged');
    t.equal(w.lb.reason('pass_not_vip'), before + 1n, 'as not for a VIP');
    w.lb.vipFilterBit(vip, true);
    t.equal(w.run(packet(f(3))).retval, bpf.XDP_TX, `${vip}: bit set again: forwarded`);
  }
  t.end();
});

t.test('no table, an empty entry: dropped and counted as no backend; a small table is indexed by its own size', needsRoot, (t) => {
  const w = world(t, { maglevM: 13 });
  w.lb.service({ vip: VIP4, port: 1, proto: TCP, id: 1 });
  w.lb.service({ vip: VIP4, port: 2, proto: TCP, id: 2 });
  w.lb.service({ vip: VIP4, port: 3, proto: TCP, id: 3 });
  w.lb.backend({ id: 1, address: '198.51.100.1' });
  w.lb.backend({ id: 2, address: '198.51.100.2' });
  w.lb.maglev(2, new Uint32Array(13).fill(NO_BACKEND));
  w.lb.maglev(3, Uint32Array.of(1, 2));
  const f = (dport: number, sport: number): Flow => ({ src: '192.0.2.5', dst: VIP4, sport, dport, proto: TCP });
  t.equal(w.run(packet(f(1, 1))).retval, bpf.XDP_DROP, 'no table');
  t.equal(w.run(packet(f(2, 1))).retval, bpf.XDP_DROP, 'NO_BACKEND entry');
  const flows = Array.from({ length: 40 }, (_, s) => f(3, s + 1));
  const got = w.runAll(flows.map((fl) => packet(fl))).map((r) => (r.retval === bpf.XDP_TX ? outerDst(r.data) : `verdict ${r.retval}`));
  t.same(got, flows.map((fl) => `198.51.100.${1 + (flowHash(fl) % 2)}`), 'a 2-entry table: entry hash % 2');
  t.equal(new Set(got).size, 2, 'both entries used');
  t.equal(w.lb.reason('drop_no_backend'), 2n);
  t.end();
});

t.test('Maglev tables of any size up to 131071 entries (BPF_F_INNER_MAP), indexed by their own size', needsRoot, (t) => {
  const M = MAX_M;
  const w = world(t, { maglevM: M });
  w.lb.service({ vip: VIP6, port: 0, proto: UDP, id: 4000 });
  const p = pool(w, true, [11, 12, 13, 14, 15]);
  const table = buildTable(p.backends, M);
  w.lb.maglev(4000, table);
  const r = rng(3);
  const flows = Array.from({ length: 2000 }, () => ({ ...randomFlow(r, true, VIP6), proto: UDP }));
  const got = w.runAll(flows.map((f) => packet(f))).map((x) => outerDst(x.data));
  t.same(got, flows.map((f) => p.address.get(table[flowHash(f) % M])));
  t.end();
});

// M is each table's own size: there is no node-wide M a packet could read
// apart from the table it indexes, so no order of writes between the two.
t.test('each table is indexed by its own size: one service switches M while another keeps its own, both as predicted', needsRoot, (t) => {
  const w = world(t);
  const services = [
    { port: 80, id: 1, m: 13 },
    { port: 81, id: 2, m: 251 },
  ];
  const p = pool(w, false, [1, 2, 3, 4, 5]);
  for (const s of services) w.lb.service({ vip: VIP4, port: s.port, proto: TCP, id: s.id, flags: L.SVC_F_CT_BYPASS });
  const r = rng(11);
  const flows = services.map((s) => Array.from({ length: 300 }, () => ({ ...randomFlow(r, false, VIP4, s.port), proto: TCP })));
  const check = (what: string) => {
    services.forEach((s, i) => {
      const table = buildTable(p.backends, s.m);
      const got = w.runAll(flows[i].map((f) => packet(f, P.TCP_ACK))).map((x) => (x.retval === bpf.XDP_TX ? outerDst(x.data) : `verdict ${x.retval}`));
      t.same(got, flows[i].map((f) => p.address.get(table[flowHash(f) % s.m])), `${what}: service ${s.id} by its table of ${s.m}`);
    });
  };
  for (const s of services) w.lb.maglev(s.id, buildTable(p.backends, s.m));
  check('two sizes side by side');
  services[0].m = 1021;
  w.lb.maglev(1, buildTable(p.backends, 1021));
  check('service 1 grown to 1021, service 2 still at 251');
  services[1].m = 7;
  w.lb.maglev(2, buildTable(p.backends, 7));
  check('service 2 shrunk to 7, service 1 at 1021');
  t.equal(w.lb.reason('drop_no_backend'), 0n, 'no packet indexed past its table');
  t.end();
});

t.test('the daemon changes M by swapping each table for one of the new size, growing or shrinking; the config map holds no M', needsRoot, async (t) => {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-m-'));
  t.teardown(() => fs.rmSync(stateDir, { recursive: true, force: true }));
  const bpffs = path.join(pinDir(t), 'lb');
  const node: NodeSettings = { ...DEFAULT_NODE, interfaces: [], maglevSize: 251, bpffs, stateDir };
  const dp = LbDatapath.open(node, pino({ level: 'silent' }));
  t.teardown(() => dp.uninstall());
  const specs = [1, 2].map((i) => validateService({ name: `s${i}`, vip: `203.0.113.${i}`, port: 80, protocol: 'tcp', backends: [{ address: `198.51.100.${i}` }, { address: `198.51.100.${10 + i}` }] }));
  (await dp.apply(specs)).commit();
  const config = dp['maps'].config.lookup(L.u32(0))!;
  const tables = () =>
    specs.map((spec) => {
      const ids = dp.ids(spec)!;
      const inner = bpf.mapFromPin(path.join(bpffs, 'maglev', String(ids.service)));
      const size = inner.maxEntries;
      const { values, count } = inner.dump();
      const entries = new Set(Array.from({ length: count }, (_, i) => values.readUInt32LE(i * 4)));
      inner.close();
      return { size, valid: [...entries].every((id) => [...ids.backends.values()].includes(id)) };
    });
  t.same(tables(), [{ size: 251, valid: true }, { size: 251, valid: true }]);
  for (const m of [1021, 13]) {
    await dp.reconfigure({ ...node, maglevSize: m });
    t.same(tables(), [{ size: m, valid: true }, { size: m, valid: true }], `M ${m}: every table of that size, naming its own backends`);
    t.same(dp['maps'].config.lookup(L.u32(0)), config, 'the config map unchanged');
  }
});

t.test('a connection-table entry of another service (a reused id) is ignored', needsRoot, (t) => {
  const w = world(t, { maglevM: 7 });
  w.lb.service({ vip: VIP4, port: 80, proto: TCP, id: 1 });
  w.lb.backend({ id: 1, address: '198.51.100.1' });
  w.lb.backend({ id: 2, address: '198.51.100.2', service: 1 });
  w.lb.maglev(1, new Uint32Array(7).fill(1));
  const f: Flow = { src: '192.0.2.5', dst: VIP4, sport: 999, dport: 80, proto: TCP };
  w.lb.maps.conntrack4.update(L.encodeFlow4Key(f), L.encodeCtEntry({ backendId: 2, serviceId: 77 }));
  t.equal(outerDst(w.run(packet(f)).data), '198.51.100.1', 'the table, not the stale entry');
  t.match(L.decodeCtEntry(w.lb.maps.conntrack4.lookup(L.encodeFlow4Key(f))!), { backendId: 1, serviceId: 1 }, 'entry replaced');
  w.lb.maps.conntrack4.update(L.encodeFlow4Key(f), L.encodeCtEntry({ backendId: 2, serviceId: 1, expiresS: 0xffffffff }));
  w.lb.flushFlowCache(); // the flow cache would answer for up to its bound (datapath-flowcache)
  t.equal(outerDst(w.run(packet(f)).data), '198.51.100.2', 'an entry of this service is followed');
  t.end();
});

// Established flows find their service through the connection table (by id,
// in xdplb_svc_by_id), not through the service lookup: each case below is one
// way an entry's service can stop serving the flow.
for (const v6 of [false, true]) {
  const fam = v6 ? 'IPv6' : 'IPv4';
  const vip = v6 ? VIP6 : VIP4;
  const other = v6 ? '2001:db8:ffff::12' : '203.0.113.12';
  const addr = (id: number) => (v6 ? `2001:db8:100::${id}` : `198.51.100.${id}`);
  const ctOf = (w: World, f: Flow) => {
    const { map, key } = L.conntrackKey({ src: f.src, dst: f.dst, sport: f.sport, dport: f.dport, proto: f.proto });
    const v = w.lb.maps[map].lookup(key);
    return v && L.decodeCtEntry(v);
  };
  const setup = (t: Teardown) => {
    const w = world(t, { maglevM: 7 });
    for (const id of [1, 2, 3]) {
      w.lb.backend({ id, address: addr(id) });
      w.lb.maglev(id, new Uint32Array(7).fill(id));
    }
    return w;
  };
  const flow = (dport: number, dst = vip): Flow => ({ src: v6 ? '2001:db8::5' : '192.0.2.5', dst, sport: 4242, dport, proto: TCP });

  t.test(`${fam}: a connection-table entry counts only while its service still serves the flow`, needsRoot, (t) => {
    t.test('an exact-port service added next to the all-ports one takes the flow over', (t) => {
      const w = setup(t);
      w.lb.service({ vip, port: 0, proto: TCP, id: 2 });
      const f = flow(80);
      t.equal(outerDst(w.run(packet(f)).data), addr(2), 'first packet: the all-ports service');
      t.equal(outerDst(w.run(packet(f, P.TCP_ACK)).data), addr(2), 'established: the ACK writes the entry');
      t.match(ctOf(w, f), { backendId: 2, serviceId: 2 });
      w.lb.service({ vip, port: 80, proto: TCP, id: 1 });
      t.equal(outerDst(w.run(packet(f, P.TCP_ACK)).data), addr(1), 'port 80 has its own service now');
      t.match(ctOf(w, f), { backendId: 1, serviceId: 1 }, 'entry replaced');
      const g = flow(81);
      w.run(packet(g));
      t.equal(outerDst(w.run(packet(g, P.TCP_ACK)).data), addr(2), 'another port stays with the all-ports service');
      t.end();
    });
    t.test('a removed service forwards nothing, whatever the table holds', (t) => {
      const w = setup(t);
      w.lb.service({ vip, port: 80, proto: TCP, id: 1 });
      const f = flow(80);
      const syn = packet(f);
      t.equal(outerDst(w.run(syn).data), addr(1));
      t.equal(outerDst(w.run(packet(f, P.TCP_ACK)).data), addr(1), 'established');
      w.lb.deleteService({ vip, port: 80, proto: TCP });
      t.ok(ctOf(w, f), 'the entry is still there');
      const r = w.run(packet(f, P.TCP_ACK));
      t.equal(r.retval, bpf.XDP_PASS, 'passed to the kernel');
      t.equal(w.lb.reason('pass_not_vip'), 1n, 'as not for a VIP');
      t.end();
    });
    t.test('an id reused by a service of another VIP does not carry old flows', (t) => {
      const w = setup(t);
      w.lb.service({ vip, port: 80, proto: TCP, id: 3 });
      const f = flow(80);
      t.equal(outerDst(w.run(packet(f)).data), addr(3));
      w.lb.deleteService({ vip, port: 80, proto: TCP });
      w.lb.service({ vip: other, port: 80, proto: TCP, id: 3 });
      t.equal(w.run(packet(f, P.TCP_ACK)).retval, bpf.XDP_PASS, 'the old VIP is no VIP any more');
      const g = flow(80, other);
      t.equal(outerDst(w.run(packet(g)).data), addr(3), 'the new VIP is served');
      t.end();
    });
    t.test('the same id for another port or protocol of the VIP does not carry old flows', (t) => {
      const w = setup(t);
      w.lb.service({ vip, port: 80, proto: TCP, id: 3 });
      w.lb.service({ vip, port: 0, proto: TCP, id: 1 });
      const f = flow(80);
      t.equal(outerDst(w.run(packet(f)).data), addr(3));
      w.lb.deleteService({ vip, port: 80, proto: TCP });
      w.lb.service({ vip, port: 80, proto: UDP, id: 3 });
      t.equal(outerDst(w.run(packet(f, P.TCP_ACK)).data), addr(1), 'TCP port 80: the all-ports service now');
      t.end();
    });
    t.test('a service switched to connection-table bypass follows its table', (t) => {
      const w = setup(t);
      w.lb.service({ vip, port: 80, proto: TCP, id: 1 });
      const f = flow(80);
      t.equal(outerDst(w.run(packet(f)).data), addr(1));
      w.lb.maglev(1, new Uint32Array(7).fill(2));
      t.equal(outerDst(w.run(packet(f, P.TCP_ACK)).data), addr(1), 'with the connection table: its entry');
      w.lb.service({ vip, port: 80, proto: TCP, id: 1, flags: L.SVC_F_CT_BYPASS });
      t.equal(outerDst(w.run(packet(f, P.TCP_ACK)).data), addr(2), 'bypass: the table');
      t.end();
    });
    t.end();
  });
}
