// The map ABI cannot drift: the struct declarations of src/datapath/layout.ts
// against the BTF of build/bpf/lb.bpf.o (read by bpftool here, and by the
// addon when the daemon loads the object), reasons.ts and the constants
// against the text of xdp/consts.h.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import { PACKAGE_ROOT } from '../src/sys/paths';
import * as L from '../src/datapath/layout';
import { REASON_COUNT } from '../src/datapath/reasons';
import { flowHash, outerSource } from '../src/datapath/flowhash';
import { checkStruct, LayoutMismatchError, struct } from '../src/datapath/codec';
import { DEFAULT_M, MAX_M, NO_BACKEND } from '../src/maglev';
import { decodeTuple, encodeTuple, tupleOf } from '../src/recorder/filter';
import { btfStructs } from '../harness/btf';
import { openLb } from '../harness/datapath';
import { needsRoot, pinDir } from '../harness/fixtures';

const OBJ = bpf.objectPath('lb');
const CONSTS = fs.readFileSync(path.join(PACKAGE_ROOT, 'xdp', 'consts.h'), 'utf8');

/** #define NAME value (numbers and simple expressions of numbers) from consts.h. */
function define(name: string): number {
  const m = new RegExp(`^#define\\s+${name}\\s+([^/\\n]+)`, 'm').exec(CONSTS);
  if (!m) throw new Error(`${name} not in consts.h`);
  const expr = m[1].trim().replace(/(\d+)U\b/g, '$1').replace(/(0x[0-9a-fA-F]+)U\b/g, '$1');
  if (!/^[\d\sx a-fA-F()+\-*<]+$/.test(expr)) throw new Error(`${name}: cannot evaluate ${expr}`);
  return Number(Function(`"use strict"; return (${expr});`)()) >>> 0;
}

t.test('every struct of lb.bpf.o is declared in layout.ts, and each declaration matches its BTF: size, fields, offsets, widths', (t) => {
  const btf = btfStructs(OBJ);
  const ours = [...btf.keys()].filter((n) => n.startsWith('xdplb_') && n !== 'xdplb_maglev_inner');
  t.same(ours.sort(), Object.keys(L.LAYOUT).sort(), 'the same set of structs');
  for (const c of L.STRUCTS) t.same(checkStruct(c, btf.get(c.name), OBJ), [], `struct ${c.name}`);
  t.end();
});

t.test('the daemon\'s reader of BTF (the addon) sees every struct as bpftool does', needsRoot, (t) => {
  const lb = openLb(t);
  const btf = btfStructs(OBJ);
  for (const c of L.STRUCTS) t.same(lb.obj.btfStruct(c.name), btf.get(c.name), `struct ${c.name}`);
  t.equal(lb.obj.btfStruct('xdplb_no_such_struct'), undefined);
  t.end();
});

t.test('an object whose layout differs from a declaration is refused at load, naming the struct, the field and both values', needsRoot, (t) => {
  // the revnat value with its fields swapped; the service value's flags 2 bytes wide
  const wrong = [struct('xdplb_revnat', { pad: 'u16', port: 'be16' }), struct('xdplb_service', { id: 'u32', flags: 'u16', pad: 'u16' })];
  const structs = L.STRUCTS.map((c) => wrong.find((w) => w.name === c.name) ?? c);
  const err = (() => {
    try {
      bpf.openObject(OBJ, { pinRoot: pinDir(t), layout: structs }).close();
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  t.type(err, LayoutMismatchError);
  const message = (err as Error | undefined)?.message ?? '';
  t.match(message, `struct xdplb_revnat.pad: offset 0 in TypeScript, 2 in ${OBJ}`);
  t.match(message, `struct xdplb_revnat.port: offset 2 in TypeScript, 0 in ${OBJ}`);
  t.match(message, `struct xdplb_service.flags: width 2 in TypeScript, 4 in ${OBJ}`);
  t.match(message, `struct xdplb_service.pad: declared in TypeScript (offset 6), absent from ${OBJ}`);
  t.equal((err as LayoutMismatchError).mismatches.length, 4, 'nothing else differs');
  const lb = bpf.openObject(OBJ, { pinRoot: pinDir(t), layout: L.STRUCTS });
  t.ok(lb, 'the declarations as they are load');
  lb.close();
  t.end();
});

t.test('a declaration cannot describe implicit padding: a misaligned field or size is refused', (t) => {
  t.throws(() => struct('x', { a: 'u8', b: 'u32' }), new RangeError('struct x.b: offset 1 is not a multiple of its alignment 4'));
  t.throws(() => struct('x', { a: 'u64', b: 'u32' }), new RangeError('struct x: size 12 is not a multiple of its alignment 8'));
  const nested = struct('outer', { inner: L.COUNTER, n: 'u32', pad: 'u32' });
  t.same(nested.fields, { inner: { offset: 0, size: 16 }, n: { offset: 16, size: 4 }, pad: { offset: 20, size: 4 } });
  t.same(nested.decode(nested.encode({ inner: { packets: 1n, bytes: 2n }, n: 3 })), { inner: { packets: 1n, bytes: 2n }, n: 3, pad: 0 });
  t.end();
});

t.test('constants in layout.ts equal the #defines of consts.h', (t) => {
  const pairs: Array<[string, number]> = [
    ['XDPLB_MAX_SERVICES', L.MAX_SERVICES],
    ['XDPLB_MAX_BACKENDS', L.MAX_BACKENDS],
    ['XDPLB_CT_SIZE', L.CT_SIZE],
    ['XDPLB_MAX_DEVICES', L.MAX_DEVICES],
    ['XDPLB_MAGLEV_DEFAULT_M', DEFAULT_M],
    ['XDPLB_MAGLEV_MAX_M', MAX_M],
    ['XDPLB_NO_BACKEND', NO_BACKEND],
    ['XDPLB_FLOW_HASH_SEED', L.FLOW_HASH_SEED],
    ['XDPLB_NEXTHOP_TTL_MS', L.NEXTHOP_TTL_MS],
    ['XDPLB_NEXTHOP_SLOTS', L.NEXTHOP_SLOTS],
    ['XDPLB_FLOW_CACHE_SLOTS', L.FLOW_CACHE_SLOTS],
    ['XDPLB_FLOW_CACHE_JIFFIES', L.FLOW_CACHE_JIFFIES],
    ['XDPLB_CT_TCP_S', L.CT_TCP_S],
    ['XDPLB_CT_UDP_S', L.CT_UDP_S],
    ['XDPLB_CT_CLOSING_S', L.CT_CLOSING_S],
    ['XDPLB_CT_MIN_S', L.CT_MIN_S],
    ['XDPLB_CT_REFRESH_JIFFIES', L.CT_REFRESH_JIFFIES],
    ['XDPLB_VIP_FILTER_WORDS', L.VIP_FILTER_WORDS],
    ['XDPLB_CACHE_STAT_NEXTHOP_LOOKUPS', L.CACHE_STAT_NEXTHOP_LOOKUPS],
    ['XDPLB_CACHE_STAT_FLOW_FILLS', L.CACHE_STAT_FLOW_FILLS],
    ['XDPLB_CACHE_STAT_MAX', L.CACHE_STAT_MAX],
    ['XDPLB_IPV6_EXT_MAX', L.IPV6_EXT_MAX],
    ['XDPLB_ICMP4_QUOTE_MAX', L.ICMP4_QUOTE_MAX],
    ['XDPLB_ICMP6_QUOTE_MAX', L.ICMP6_QUOTE_MAX],
    ['XDPLB_DEFAULT_TTL', L.DEFAULT_TTL],
    ['XDPLB_PMTU_EXPIRES_S', L.PMTU_EXPIRES_S],
    ['XDPLB_PMTU_MIN4', L.PMTU_MIN4],
    ['XDPLB_PMTU_MIN6', L.PMTU_MIN6],
    ['XDPLB_PMTU_SLOTS', L.PMTU_SLOTS],
    ['XDPLB_FAMILY_V4', L.FAMILY_V4],
    ['XDPLB_FAMILY_V6', L.FAMILY_V6],
    ['XDPLB_SVC_F_L4_DNAT', L.SVC_F_L4_DNAT],
    ['XDPLB_SVC_F_SRC_HASH', L.SVC_F_SRC_HASH],
    ['XDPLB_SVC_F_CT_BYPASS', L.SVC_F_CT_BYPASS],
    ['XDPLB_SVC_F_ICMP_ECHO', L.SVC_F_ICMP_ECHO],
    ['XDPLB_CFG_F_NO_FLOW_CACHE', L.CFG_F_NO_FLOW_CACHE],
    ['XDPLB_BACKEND_NONE', L.BACKEND_NONE],
    ['XDPLB_BACKEND_ACTIVE', L.BACKEND_ACTIVE],
    ['XDPLB_BACKEND_DRAINING', L.BACKEND_DRAINING],
    ['XDPLB_BACKEND_DOWN', L.BACKEND_DOWN],
    ['XDPLB_CAPTURE_IN', L.CAPTURE_IN],
    ['XDPLB_CAPTURE_OUT', L.CAPTURE_OUT],
    ['XDPLB_REC_MAX_MASKS', L.REC_MAX_MASKS],
    ['XDPLB_REC_MAX_ENTRIES', L.REC_MAX_ENTRIES],
    ['XDPLB_REC_MAX_RULES', L.REC_MAX_RULES],
    ['XDPLB_REC_FILTER_WORDS_LOG', L.REC_FILTER_WORDS_LOG],
    ['XDPLB_REC_FILTER_WORDS', L.REC_FILTER_WORDS],
    ['XDPLB_REC_MEMO_SLOTS_LOG', L.REC_MEMO_SLOTS_LOG],
    ['XDPLB_REC_MEMO_SLOTS', L.REC_MEMO_SLOTS],
    ['XDPLB_REC_F_NO_MEMO', L.REC_F_NO_MEMO],
    ['XDPLB_REC_STAT_SAMPLES', L.REC_STAT_SAMPLES],
    ['XDPLB_REC_STAT_OUTPUT_FAILED', L.REC_STAT_OUTPUT_FAILED],
    ['XDPLB_REC_STAT_MAX', L.REC_STAT_MAX],
  ];
  for (const [name, value] of pairs) t.equal(define(name), value >>> 0, name);
  t.end();
});

t.test('the loaded maps have the names, types, key/value sizes and capacities layout.ts expects', needsRoot, (t) => {
  const lb = openLb(t);
  const all = [...Object.values(L.MAP_NAMES), ...Object.values(L.REC_MAP_NAMES)];
  t.same(lb.obj.maps().filter((n) => n.startsWith('xdplb_')).sort(), [...all].sort());
  t.same(Object.keys(L.MAP_LAYOUT).sort(), all.filter((n) => n !== L.MAP_NAMES.maglev).sort(), 'MAP_LAYOUT names every map but the Maglev outer map (its values are map fds)');
  const size = (s: keyof typeof L.LAYOUT | 'u32' | 'u64') => (s === 'u32' ? 4 : s === 'u64' ? 8 : L.LAYOUT[s].size);
  for (const [name, kv] of Object.entries(L.MAP_LAYOUT)) {
    const m = lb.obj.map(name);
    t.equal(m.keySize, size(kv.key), `${name}: key size`);
    t.equal(m.valueSize, size(kv.value), `${name}: value size`);
    m.close();
  }
  const expect: Record<string, [string, number]> = {
    xdplb_services: ['hash', L.MAX_SERVICES],
    xdplb_services4: ['hash', L.MAX_SERVICES],
    xdplb_svc_by_id: ['array', L.MAX_SERVICES],
    xdplb_vip_filter: ['array', L.VIP_FILTER_WORDS],
    xdplb_backends: ['array', L.MAX_BACKENDS],
    xdplb_nexthops: ['percpu_array', L.NEXTHOP_SLOTS],
    xdplb_cache_stats: ['percpu_array', L.CACHE_STAT_MAX],
    xdplb_pmtu: ['lru_hash', L.PMTU_SLOTS],
    xdplb_revnat: ['hash', L.MAX_SERVICES],
    xdplb_maglev: ['array_of_maps', L.MAX_SERVICES],
    xdplb_config: ['array', 1],
    xdplb_conntrack: ['lru_hash', L.CT_SIZE],
    xdplb_conntrack4: ['lru_hash', L.CT_SIZE],
    xdplb_flow_cache: ['percpu_array', L.FLOW_CACHE_SLOTS],
    xdplb_svc_stats: ['percpu_array', L.MAX_SERVICES],
    xdplb_be_stats: ['percpu_array', L.MAX_BACKENDS],
    xdplb_reasons: ['percpu_array', REASON_COUNT],
    xdplb_devmap: ['devmap_hash', L.MAX_DEVICES],
    xdplb_rec_masks: ['array', L.REC_MAX_MASKS],
    xdplb_rec_entries: ['hash', L.REC_MAX_ENTRIES],
    xdplb_rec_config: ['array', 1],
    xdplb_rec_filter: ['array', L.REC_FILTER_WORDS],
    xdplb_rec_memo: ['percpu_array', L.REC_MEMO_SLOTS],
    xdplb_rec_ring: ['perf_event_array', sys.possibleCpus()],
    xdplb_rec_stats: ['percpu_array', L.REC_STAT_MAX],
  };
  for (const [name, [type, max]] of Object.entries(expect)) {
    const m = lb.obj.map(name);
    t.equal(m.type, type, `${name}: type`);
    t.equal(m.maxEntries, max, `${name}: max entries`);
    m.close();
  }
  // every map but the devmap, the flow cache and the recorder's memo (derived
  // state; see maps.h) is pinned by name under the pin root, so a restarted
  // daemon finds it
  const unpinned: string[] = [L.MAP_NAMES.devmap, L.MAP_NAMES.flowCache, L.REC_MAP_NAMES.memo];
  for (const name of all) {
    const pinned = !unpinned.includes(name);
    t.equal(fs.existsSync(path.join(lb.pinRoot, name)), pinned, `${name} pinned: ${pinned}`);
  }
  t.end();
});

t.test('the program loads and reports its size', needsRoot, (t) => {
  const lb = openLb(t);
  const i = lb.prog.info();
  t.equal(i.type, 'xdp');
  t.ok(i.instructions > 100, `${i.instructions} instructions, ${i.verifiedInstructions} verified, ${i.jitedBytes} bytes JITed`);
  t.ok(i.verifiedInstructions < 1_000_000, 'well within the verifier limit');
  t.end();
});

t.test('encoders write the documented bytes and decoders read them back', (t) => {
  const k = L.encodeServiceKey({ vip: '203.0.113.10', port: 443, proto: 6 });
  t.equal(k.toString('hex'), '040601bb' + 'cb00710a' + '00'.repeat(12));
  t.same(L.decodeServiceKey(k), { vip: '203.0.113.10', port: 443, proto: 6 });
  const k6 = L.encodeServiceKey({ vip: '2001:db8::10', port: 0, proto: 17 });
  t.equal(k6.toString('hex'), '06110000' + '20010db8000000000000000000000010');
  t.same(L.decodeServiceKey(k6), { vip: '2001:db8::10', port: 0, proto: 17 });
  t.equal(L.vipEntryKey('2001:db8::10').toString('hex'), '063a0000' + '20010db8000000000000000000000010');
  const k4 = L.encodeService4Key({ vip: '203.0.113.10', port: 443, proto: 6 });
  t.equal(k4.toString('hex'), 'cb00710a' + '01bb' + '06' + '00', 'IPv4 service key');
  t.same(L.decodeService4Key(k4), { vip: '203.0.113.10', port: 443, proto: 6 });
  t.same(L.serviceMapKey({ vip: '203.0.113.10', port: 443, proto: 6 }), k4, 'IPv4 VIPs: the 8-byte key');
  t.same(L.serviceMapKey({ vip: '2001:db8::10', port: 0, proto: 17 }), k6, 'IPv6 VIPs: the 20-byte key');
  t.equal(L.serviceMapOf(k4), 'services4');
  t.equal(L.serviceMapOf(k6), 'services');
  t.same(L.decodeServiceMapKey(k4), { vip: '203.0.113.10', port: 443, proto: 6 });
  t.same(L.decodeServiceMapKey(k6), { vip: '2001:db8::10', port: 0, proto: 17 });
  t.equal(L.vipEntryKey('203.0.113.10').toString('hex'), 'cb00710a' + '0000' + '01' + '00', 'IPv4 VIP entry');
  t.throws(() => L.encodeService4Key({ vip: '2001:db8::10', port: 0, proto: 17 }), RangeError, 'no IPv6 VIP in the IPv4 key');

  t.equal(L.encodeService({ id: 7, flags: L.SVC_F_L4_DNAT | L.SVC_F_ICMP_ECHO }).toString('hex'), '07000000' + '09000000');
  const be = L.encodeBackend({ address: '198.51.100.7', port: 8080, state: L.BACKEND_DRAINING, serviceId: 0x10203 });
  t.equal(be.toString('hex'), 'c6336407' + '00'.repeat(12) + '1f90' + '04' + '02' + '03020100');
  t.same(L.decodeBackend(be), { address: '198.51.100.7', port: 8080, state: L.BACKEND_DRAINING, serviceId: 0x10203 });
  t.same(L.decodeBackend(L.encodeBackend({ address: '', port: 0, state: L.BACKEND_NONE, serviceId: 0 })), { address: '', port: 0, state: 0, serviceId: 0 });

  const cfg: L.NodeConfig = { src4: '192.0.2.2', src4PrefixLen: 24, src6: '2001:db8::2', src6PrefixLen: 64, ttl: 60, flags: 0, mtu: 1450, nexthopTtlMs: 250, ctTcpS: 7200, ctUdpS: 60, ctClosingS: 15 };
  const c = L.encodeConfig(cfg);
  t.equal(c.length, 48);
  t.equal(c.subarray(0, 4).toString('hex'), 'c0000202');
  t.equal(c[20], 24);
  t.equal(c.readUInt16LE(24), 1450);
  t.equal(c.readUInt16LE(26), 250);
  t.equal(c.readUInt32LE(28), 0, 'padding: M is each Maglev table\'s own size');
  t.same([c.readUInt32LE(32), c.readUInt32LE(36), c.readUInt32LE(40), c.readUInt32LE(44)], [7200, 60, 15, 0], 'connection-table lifetimes, then padding');
  t.same(L.decodeConfig(c), cfg);

  const fk: L.FlowKey = { src: '2001:db8::1', dst: '2001:db8::10', sport: 1, dport: 2, proto: 17 };
  const f = L.encodeFlowKey(fk);
  t.equal(f.subarray(32).toString('hex'), '00010002' + '11' + '06' + '0000');
  t.same(L.decodeFlowKey(f), fk);
  const fk4: L.FlowKey = { src: '192.0.2.1', dst: '203.0.113.10', sport: 40000, dport: 80, proto: 6 };
  const f4 = L.encodeFlow4Key(fk4);
  t.equal(f4.toString('hex'), 'c0000201' + 'cb00710a' + '9c40' + '0050' + '06' + '000000', 'IPv4 flow key');
  t.same(L.decodeFlow4Key(f4), fk4);
  t.same(L.conntrackKey(fk4), { map: 'conntrack4', key: f4 }, 'IPv4 flows: xdplb_conntrack4');
  t.same(L.conntrackKey(fk), { map: 'conntrack', key: f }, 'IPv6 flows: xdplb_conntrack');
  t.throws(() => L.encodeFlow4Key(fk), RangeError, 'no IPv6 flow in the IPv4 key');
  const ce = L.encodeCtEntry({ backendId: 3, serviceId: 9, expiresS: 0x01020304, checkedJiffies: 0xfffffffe, closing: true });
  t.equal(ce.toString('hex'), '03000000' + '09000000' + '04030201' + 'feffffff' + '01' + '000000');
  t.same(L.decodeCtEntry(ce), { backendId: 3, serviceId: 9, expiresS: 0x01020304, checkedJiffies: 0xfffffffe, closing: true });
  t.same(L.decodeCounter(L.encodeCounter({ packets: 5n, bytes: 1n << 40n })), { packets: 5n, bytes: 1n << 40n });
  const nh = Buffer.from('c6336407' + '00'.repeat(12) + '020000000101' + '0a0000000002' + '7805' + '04' + '00' + '03000000' + '02000000' + '0094357700000000' + '2a00000001000000', 'hex');
  t.same(L.decodeNexthop(nh), { address: '198.51.100.7', dmac: '02:00:00:00:01:01', smac: '0a:00:00:00:00:02', mtu: 1400, ifindex: 3, iif: 2, expiresNs: 2_000_000_000n, checkedJiffies: 0x10000002an });
  t.equal(L.decodeNexthop(Buffer.alloc(56)).address, '', 'never resolved');
  t.same(L.decodeDevmapVal(L.encodeDevmapVal({ ifindex: 4, progFd: 0 })), { ifindex: 4, progFd: 0 });
  t.throws(() => L.encodeFlowKey({ ...fk, dst: '192.0.2.1' }), RangeError, 'a flow cannot mix families');
  t.end();
});

t.test('recorder encoders: keys (filter.ts encodeTuple), entries, config, sample headers', (t) => {
  for (const tuple of [
    { ...tupleOf({ src: '192.0.2.100', dst: '203.0.113.10', sport: 40000, dport: 80, proto: 6 }), mask: 3 },
    { ...tupleOf({ src: '2001:db8::100', dst: '2001:db8:f00::10', sport: 1, dport: 65535, proto: 17 }), mask: 31 },
  ])
    t.same(decodeTuple(encodeTuple(tuple)), tuple, `IPv${tuple.family} key round trip`);
  t.equal(
    encodeTuple({ ...tupleOf({ src: '192.0.2.1', dst: '203.0.113.10', sport: 0x1234, dport: 80, proto: 17 }), mask: 5 }).toString('hex'),
    '04' + '11' + '1234' + '0050' + '05' + '00' + 'c0000201' + '00'.repeat(12) + 'cb00710a' + '00'.repeat(12),
  );

  const e = L.encodeRecEntry({ rules: (1n << 63n) | 5n, caplen: 128 });
  t.equal(e.toString('hex'), '0500000000000080' + '80000000' + '00000000');
  t.same(L.decodeRecEntry(e), { rules: (1n << 63n) | 5n, caplen: 128 });

  t.equal(L.encodeRecConfig({ nMasks: 32 }).toString('hex'), '20000000' + '00000000' + '00000000' + '00000000');
  t.equal(L.encodeRecConfig({ nMasks: 1, gen: 0x01020304, flags: L.REC_F_NO_MEMO }).toString('hex'), '01000000' + '04030201' + '01000000' + '00000000');
  t.same(L.decodeRecConfig(L.encodeRecConfig({ nMasks: 7, gen: 9 })), { nMasks: 7, gen: 9, flags: 0 });
  t.throws(() => L.encodeRecConfig({ nMasks: 33 }), RangeError, 'no more masks than slots');

  const meta: L.RecMeta = { tsNs: 123456789012n, rules: 6n, origLen: 1514, capLen: 64, ifindex: 9, backendId: NO_BACKEND, point: L.CAPTURE_IN, family: 6 };
  const mb = L.encodeRecMeta(meta);
  t.equal(mb.length, 40);
  t.equal(mb.subarray(16, 40).toString('hex'), 'ea050000' + '40000000' + '09000000' + 'ffffffff' + '01' + '06' + '0000' + '00000000');
  t.same(L.decodeRecMeta(Buffer.concat([mb, Buffer.alloc(64)])), meta, 'frame bytes after the header are not the header');
  t.throws(() => L.decodeRecMeta(mb.subarray(0, 39)), RangeError);
  t.end();
});

t.test('addresses round-trip through the 16-byte map form in canonical text', (t) => {
  for (const a of ['2001:db8::1', '::', '2001:db8:1:2:3:4:5:6', 'fe80::1:2', '2001:db8::', '2001:0:0:1::1', '192.0.2.255']) {
    const fam = L.familyOf(a);
    t.equal(L.addressText(L.address16(a), fam), a, a);
  }
  t.throws(() => L.familyOf('not-an-ip'), RangeError);
  t.end();
});

t.test('flow hash: deterministic, source-only ignores ports, outer source keeps the prefix', (t) => {
  const f = { src: '192.0.2.100', dst: '203.0.113.10', sport: 40000, dport: 80, proto: 6 };
  t.equal(flowHash(f), flowHash({ ...f }), 'same flow, same hash');
  t.not(flowHash(f), flowHash({ ...f, sport: 40001 }), 'ports matter');
  t.equal(flowHash(f, true), flowHash({ ...f, sport: 1, dport: 2 }, true), 'source-only hashing ignores ports');
  t.not(flowHash(f, true), flowHash({ ...f, src: '192.0.2.101' }, true));
  t.equal(outerSource('192.0.2.2', 32, 0xffffffff), '192.0.2.2');
  t.equal(outerSource('192.0.2.2', 0, 0xffffffff), '192.0.2.2');
  t.equal(outerSource('198.51.100.0', 24, 0x12345678), '198.51.100.120');
  t.equal(outerSource('2001:db8:ff::', 64, 0xdeadbeef), '2001:db8:ff::dead:beef', 'IPv6: at most the last 32 bits');
  t.equal(outerSource('2001:db8:ff::', 120, 0xdeadbeef), '2001:db8:ff::ef');
  t.end();
});
