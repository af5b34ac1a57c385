// The backend side of DSR (xdp/decap.bpf.c) under BPF_PROG_TEST_RUN: an IPIP or
// IP6IP6 packet addressed to the backend leaves as the inner packet, byte for
// byte, behind the same Ethernet header with the inner family's ethertype;
// everything else passes untouched; every verdict is counted under its reason;
// tshark decodes what comes out.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import { checkStruct } from '../src/datapath/codec';
import { DECAP_STRUCTS, decodeLocalKey, decodeRevNatKey, encodeLocalKey, encodeRevNatKey, encodeRevNatVal } from '../src/datapath/decap-layout';
import { Decap, DECAP_REASONS, type DecapReason } from '../src/lab/decap';
import { btfStructs } from '../harness/btf';
import * as P from '../harness/packets';
import { scratch, tsharkCheck } from '../harness/datapath';
import { needsRoot, pinDir, type Teardown } from '../harness/fixtures';

const OBJ = bpf.objectPath('decap');

const BE4 = '198.51.100.11';
const BE6 = '2001:db8:200::11';
const OTHER4 = '198.51.100.99';
const OTHER6 = '2001:db8:200::99';
const LB4 = '192.0.2.66';
const LB6 = '2001:db8:300::7';
const VIP4 = '203.0.113.10';
const VIP6 = '2001:db8:100::10';
const CLIENT4 = '192.0.2.10';
const CLIENT6 = '2001:db8:1::10';
const ROUTER_MAC = '02:00:00:00:01:01';
const BE_MAC = '02:00:00:00:0b:01';
const eth = { src: ROUTER_MAC, dst: BE_MAC };

function openDecap(t: Teardown, ...local: Array<string | 'any'>): Decap {
  const d = Decap.open(pinDir(t));
  t.teardown(() => d.close());
  d.addLocal(...local);
  return d;
}

function run(d: Decap, frame: Buffer): bpf.TestRunResult {
  return d.prog.testRun({ data: frame, dataSizeOut: frame.length + 256 });
}

/** Non-zero counters by name. */
function counted(d: Decap): Partial<Record<DecapReason, number>> {
  const out: Partial<Record<DecapReason, number>> = {};
  for (const [k, v] of Object.entries(d.counters())) if (v.packets) out[k as DecapReason] = Number(v.packets);
  return out;
}

const tcp4 = () => P.ipv4({ src: CLIENT4, dst: VIP4, tos: (0x2e << 2) | 1, ttl: 61, id: 0x4242 }, P.tcp({ sport: 40000, dport: 80, flags: P.TCP_SYN, options: Buffer.from('020405b4', 'hex') }));
const udp6 = () => P.ipv6({ src: CLIENT6, dst: VIP6, tclass: 0xb8, flowLabel: 0x12345, hopLimit: 60 }, P.udp({ sport: 5353, dport: 53, payload: Buffer.from('which backend are you?') }));
const ipip = (inner: Buffer, o: Partial<P.Ipv4Options> = {}) => P.ipv4({ src: LB4, dst: BE4, ttl: 64, id: 0x4242, ...o }, P.rawL4(4, inner));
const ip6ip6 = (inner: Buffer, o: Partial<P.Ipv6Options> = {}) => P.ipv6({ src: LB6, dst: BE6, flowLabel: 0xabcde, ...o }, P.rawL4(41, inner));

t.test('the reasons are decap_reasons.def, as the program counts them: as many as it has counters, each with the verdict its name says', needsRoot, (t) => {
  const d = Decap.open(pinDir(t));
  t.teardown(() => d.close());
  t.equal(d.reasonsMap.maxEntries, DECAP_REASONS.length, 'xdplb_decap_reasons has DECAP_R_MAX counters, one per entry');
  t.same(DECAP_REASONS.slice(0, 2).map((r) => r.name), ['decap_ipip', 'decap_ip6ip6']);
  for (const r of DECAP_REASONS) t.equal(r.verdict, r.name.startsWith('drop_') ? 'XDP_DROP' : r.name.startsWith('revnat_') ? 'TC_ACT_OK' : 'XDP_PASS', `${r.name}: ${r.verdict}`);
  t.end();
});

t.test('every struct of decap.bpf.o is declared in decap-layout.ts, and each declaration matches its BTF', (t) => {
  const btf = btfStructs(OBJ);
  t.same([...btf.keys()].filter((n) => n.startsWith('xdplb_')).sort(), DECAP_STRUCTS.map((c) => c.name).sort(), 'the same set of structs');
  for (const c of DECAP_STRUCTS) t.same(checkStruct(c, btf.get(c.name), OBJ), [], `struct ${c.name}`);
  t.same(encodeLocalKey(BE4), Buffer.concat([Buffer.from([4, 0, 0, 0]), Buffer.from([198, 51, 100, 11]), Buffer.alloc(12)]));
  t.same(encodeLocalKey('any'), Buffer.alloc(20), 'the wildcard: all zero');
  t.equal(decodeLocalKey(encodeLocalKey(BE6)), BE6);
  t.equal(decodeLocalKey(encodeLocalKey('any')), 'any');
  const k = encodeRevNatKey({ vip: VIP4, proto: 17, backendPort: 5353 });
  t.same(k, Buffer.concat([Buffer.from([4, 17, 0x14, 0xe9]), Buffer.from([203, 0, 113, 10]), Buffer.alloc(12)]));
  t.same(decodeRevNatKey(k), { vip: VIP4, proto: 17, backendPort: 5353 });
  t.same(encodeRevNatVal(80), Buffer.from([0, 80, 0, 0]));
  t.end();
});

t.test('IPIP to the backend: outer IPv4 stripped, Ethernet kept, inner packet byte for byte', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  const inner = tcp4();
  const frame = P.ether(ipip(inner), eth);
  const r = run(d, frame);
  t.equal(r.retval, bpf.XDP_PASS, 'XDP_PASS to the local stack');
  t.equal(r.data.length, 14 + inner.length, 'exactly Ethernet + inner packet');
  t.equal(P.macText(r.data.subarray(0, 6)), BE_MAC, 'destination MAC kept');
  t.equal(P.macText(r.data.subarray(6, 12)), ROUTER_MAC, 'source MAC kept');
  t.equal(r.data.readUInt16BE(12), P.ETH_P_IP, 'ethertype IPv4');
  t.same(r.data.subarray(14), inner, 'inner IPv4 packet byte-identical (TTL, TOS, id, checksums)');
  t.same(counted(d), { decap_ipip: 1 });
  t.equal(d.counters().decap_ipip.bytes, BigInt(frame.length), 'bytes as received');
  const rows = tsharkCheck(t, scratch(t, 'ipip.pcap'), [r.data], ['ip.src', 'ip.dst', 'ip.proto', 'tcp.dstport']);
  t.same(rows[0].extra, [CLIENT4, VIP4, '6', '80'], 'tshark: one IPv4 header, client to VIP, TCP');
  t.end();
});

t.test('IP6IP6 to the backend: outer IPv6 stripped, inner IPv6 byte for byte', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  const inner = udp6();
  const r = run(d, P.ether(ip6ip6(inner), eth));
  t.equal(r.retval, bpf.XDP_PASS);
  t.equal(r.data.readUInt16BE(12), P.ETH_P_IPV6, 'ethertype IPv6');
  t.same(r.data.subarray(0, 12), P.ether(Buffer.alloc(0), eth).subarray(0, 12), 'MACs kept');
  t.same(r.data.subarray(14), inner, 'inner IPv6 packet byte-identical (traffic class, flow label, hop limit)');
  t.same(counted(d), { decap_ip6ip6: 1 });
  const rows = tsharkCheck(t, scratch(t, 'ip6ip6.pcap'), [r.data], ['ipv6.src', 'ipv6.dst', 'udp.dstport']);
  t.same(rows[0].extra, [CLIENT6, VIP6, '53']);
  t.end();
});

t.test('the outer headers may carry options and extension headers; a VLAN tag stays', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  const in4 = tcp4();
  const in6 = udp6();
  const cases: Array<[string, Buffer, Buffer]> = [
    ['IPv4 outer with options (IHL 7)', P.ether(ipip(in4, { options: Buffer.from('9404000001010100', 'hex') }), eth), P.ether(in4, eth)],
    ['IPv6 outer with a destination options header (tunnel encapsulation limit)', P.ether(ip6ip6(in6, { ext: [{ type: 60, body: Buffer.from('040104010300', 'hex') }] }), eth), P.ether(in6, eth)],
    ['IPv6 outer with hop-by-hop and destination options', P.ether(ip6ip6(in6, { ext: [{ type: 0 }, { type: 60 }] }), eth), P.ether(in6, eth)],
    ['VLAN 42, IPIP', P.ether(ipip(in4), { ...eth, vlans: [42] }), P.ether(in4, { ...eth, vlans: [42] })],
    ['VLAN 42, IP6IP6', P.ether(ip6ip6(in6), { ...eth, vlans: [42] }), P.ether(in6, { ...eth, vlans: [42] })],
  ];
  for (const [what, frame, want] of cases) {
    const r = run(d, frame);
    t.equal(r.retval, bpf.XDP_PASS, `${what}: XDP_PASS`);
    t.same(r.data, want, `${what}: the inner frame exactly`);
  }
  t.same(counted(d), { decap_ipip: 2, decap_ip6ip6: 3 });
  t.end();
});

t.test('Ethernet padding after a short outer packet stays; the stack trims it by the inner length', needsRoot, (t) => {
  const d = openDecap(t, BE4);
  const inner = P.ipv4({ src: CLIENT4, dst: VIP4 }, P.udp({ sport: 1, dport: 53, payload: Buffer.alloc(0) }));
  const frame = Buffer.concat([P.ether(ipip(inner), eth), Buffer.alloc(10, 0xee)]);
  const r = run(d, frame);
  t.equal(r.retval, bpf.XDP_PASS);
  t.same(r.data.subarray(14, 14 + inner.length), inner);
  t.same(r.data.subarray(14 + inner.length), Buffer.alloc(10, 0xee), 'padding kept as it was');
  t.end();
});

t.test('tunnel packets to other addresses pass untouched, unless the wildcard entry is there', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  const frames = [P.ether(ipip(tcp4(), { dst: OTHER4 }), eth), P.ether(ip6ip6(udp6(), { dst: OTHER6 }), eth)];
  for (const f of frames) {
    const r = run(d, f);
    t.equal(r.retval, bpf.XDP_PASS);
    t.same(r.data, f, 'untouched');
  }
  t.same(counted(d), { pass_not_local: 2 });
  d.addLocal('any');
  t.same(run(d, frames[0]).data.subarray(14), tcp4(), 'wildcard: IPIP to any address decapsulated');
  t.same(run(d, frames[1]).data.subarray(14), udp6(), 'wildcard: IP6IP6 to any address decapsulated');
  t.ok(d.removeLocal('any'));
  t.same(run(d, frames[0]).data, frames[0], 'wildcard removed: untouched again');
  t.same(counted(d), { pass_not_local: 3, decap_ipip: 1, decap_ip6ip6: 1 });
  t.end();
});

t.test('everything that is not IPIP/IP6IP6 passes untouched and is counted', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  const cases: Array<[string, Buffer, DecapReason]> = [
    ['TCP to the backend', P.ether(P.ipv4({ src: CLIENT4, dst: BE4 }, P.tcp({ sport: 1, dport: 22 })), eth), 'pass_not_tunnel'],
    ['UDP over IPv6 to the backend', P.ether(P.ipv6({ src: CLIENT6, dst: BE6 }, P.udp({ sport: 1, dport: 53, payload: Buffer.from('x') })), eth), 'pass_not_tunnel'],
    ['ICMPv6 neighbour solicitation', P.ether(P.ipv6({ src: CLIENT6, dst: 'ff02::1:ff00:11', hopLimit: 255 }, P.icmp({ type: 135, v6: true, body: Buffer.alloc(20) })), eth), 'pass_not_tunnel'],
    ['6in4 (IPv4 protocol 41)', P.ether(P.ipv4({ src: LB4, dst: BE4 }, P.rawL4(41, udp6())), eth), 'pass_not_tunnel'],
    ['4in6 (IPv6 next header 4)', P.ether(P.ipv6({ src: LB6, dst: BE6 }, P.rawL4(4, tcp4())), eth), 'pass_not_tunnel'],
    ['ARP', P.arp('198.51.100.1', BE4), 'pass_not_ip'],
    ['QinQ', P.ether(ipip(tcp4()), { ...eth, vlans: [1, 2] }), 'pass_vlan_stacked'],
  ];
  for (const [what, frame, reason] of cases) {
    const before = d.counters()[reason].packets;
    const r = run(d, frame);
    t.equal(r.retval, bpf.XDP_PASS, `${what}: XDP_PASS`);
    t.same(r.data, frame, `${what}: untouched`);
    t.equal(d.counters()[reason].packets, before + 1n, `${what}: counted as ${reason}`);
  }
  t.end();
});

t.test('truncated and malformed input passes untouched and is counted', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  const good4 = P.ether(ipip(tcp4()), eth);
  const good6 = P.ether(ip6ip6(udp6()), eth);
  const badInnerVersion = Buffer.from(tcp4());
  badInnerVersion[0] = 0x65;
  const cases: Array<[string, Buffer, DecapReason]> = [
    // (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header)
    ['Ethernet only', good4.subarray(0, 14), 'pass_truncated'],
    ['half an outer IPv4 header', good4.subarray(0, 24), 'pass_truncated'],
    ['outer IPv4 whole, inner cut (total length says more)', good4.subarray(0, 14 + 20 + 10), 'pass_truncated'],
    ['IPIP frame one byte short', good4.subarray(0, good4.length - 1), 'pass_truncated'],
    ['half an outer IPv6 header', good6.subarray(0, 14 + 30), 'pass_truncated'],
    ['IP6IP6 frame one byte short', good6.subarray(0, good6.length - 1), 'pass_truncated'],
    ['VLAN tag cut', P.ether(ipip(tcp4()), { ...eth, vlans: [7] }).subarray(0, 16), 'pass_truncated'],
    ['outer IPv4 checksum wrong', P.ether(ipip(tcp4(), { badChecksum: true }), eth), 'pass_bad_outer'],
    ['outer IPv4 IHL 4', P.ether(ipip(tcp4(), { ihl: 4 }), eth), 'pass_bad_outer'],
    ['outer IPv4 total length below its header', P.ether(ipip(tcp4(), { totalLength: 12 }), eth), 'pass_bad_outer'],
    ['outer IPv6 jumbogram (payload length 0)', P.ether(ip6ip6(udp6(), { payloadLength: 0 }), eth), 'pass_bad_outer'],
    ['outer IPv4 first fragment', P.ether(ipip(tcp4(), { df: false, mf: true }), eth), 'pass_fragment'],
    ['outer IPv4 later fragment', P.ether(ipip(tcp4(), { df: false, fragOffset: 100 }), eth), 'pass_fragment'],
    ['outer IPv6 fragment header', P.ether(ip6ip6(udp6(), { ext: [{ type: 44 }] }), eth), 'pass_fragment'],
    ['IPIP holding an IPv6 packet', P.ether(ipip(badInnerVersion), eth), 'pass_bad_inner'],
    ['IP6IP6 holding an IPv4 packet', P.ether(ip6ip6(tcp4()), eth), 'pass_bad_inner'],
    ['IPIP holding 10 bytes', P.ether(ipip(Buffer.alloc(10, 0x45)), eth), 'pass_bad_inner'],
    ['IP6IP6 holding 20 bytes', P.ether(ip6ip6(Buffer.alloc(20, 0x60)), eth), 'pass_bad_inner'],
  ];
  for (const [what, frame, reason] of cases) {
    const before = d.counters()[reason];
    const r = run(d, frame);
    t.equal(r.retval, bpf.XDP_PASS, `${what}: XDP_PASS`);
    t.same(r.data, frame, `${what}: untouched`);
    const after = d.counters()[reason];
    t.equal(after.packets, before.packets + 1n, `${what}: counted as ${reason}`);
    t.equal(after.bytes, before.bytes + BigInt(frame.length), `${what}: its bytes counted`);
  }
  t.equal(d.counters().decap_ipip.packets + d.counters().decap_ip6ip6.packets, 0n, 'nothing decapsulated');
  t.end();
});

t.test('ECN (RFC 6040): outer CE reaches an ECT inner packet; over Not-ECT it is dropped', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  const in4 = P.ipv4({ src: CLIENT4, dst: VIP4, tos: (0x2e << 2) | 2 }, P.tcp({ sport: 40000, dport: 80 }));
  const r4 = run(d, P.ether(ipip(in4, { tos: (0x2e << 2) | 3 }), eth));
  t.equal(r4.retval, bpf.XDP_PASS);
  const out4 = r4.data.subarray(14);
  t.equal(out4[1], (0x2e << 2) | 3, 'IPv4: inner ECN now CE, DSCP kept');
  t.equal(P.checksum(out4.subarray(0, 20)), 0, 'IPv4 header checksum still right');
  t.same(Buffer.concat([out4.subarray(0, 1), out4.subarray(2, 10), out4.subarray(12)]), Buffer.concat([in4.subarray(0, 1), in4.subarray(2, 10), in4.subarray(12)]), 'nothing else changed');

  const in6 = P.ipv6({ src: CLIENT6, dst: VIP6, tclass: 0xb9, flowLabel: 0x12345 }, P.udp({ sport: 1, dport: 53, payload: Buffer.from('x') }));
  const r6 = run(d, P.ether(ip6ip6(in6, { tclass: 0x03 }), eth));
  const out6 = r6.data.subarray(14);
  t.equal((out6.readUInt32BE(0) >>> 20) & 0xff, 0xbb, 'IPv6: traffic class 0xb9 becomes 0xbb (CE)');
  t.equal(out6.readUInt32BE(0) & 0xfffff, 0x12345, 'flow label kept');
  t.same(out6.subarray(4), in6.subarray(4), 'the rest unchanged');

  const ectOuterOnly = P.ether(ipip(in4, { tos: 1 }), eth);
  t.same(run(d, ectOuterOnly).data.subarray(14), in4, 'outer ECT(1): inner left as it is');

  const notEct = P.ipv4({ src: CLIENT4, dst: VIP4, tos: 0 }, P.tcp({ sport: 40001, dport: 80 }));
  t.equal(run(d, P.ether(ipip(notEct, { tos: 3 }), eth)).retval, bpf.XDP_DROP, 'outer CE over Not-ECT: XDP_DROP');
  t.same(counted(d), { decap_ipip: 2, decap_ip6ip6: 1, drop_ecn_ce_not_ect: 1 });
  t.end();
});

t.test('many flows: every packet decapsulated, counters per CPU add up', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  const frames: Buffer[] = [];
  for (let i = 0; i < 50; i++) {
    frames.push(P.ether(ipip(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: 30000 + i, dport: 80, payload: Buffer.alloc(i * 20, i) }))), eth));
    frames.push(P.ether(ip6ip6(P.ipv6({ src: CLIENT6, dst: VIP6 }, P.tcp({ sport: 30000 + i, dport: 80, payload: Buffer.alloc(i * 20, i) }))), eth));
  }
  const out = frames.map((f) => run(d, f));
  t.ok(out.every((r) => r.retval === bpf.XDP_PASS), 'all XDP_PASS');
  t.ok(out.every((r, i) => r.data.length === frames[i].length - (i % 2 ? 40 : 20)), 'each lost exactly its outer header');
  const c = d.counters();
  t.same([c.decap_ipip.packets, c.decap_ip6ip6.packets], [50n, 50n]);
  tsharkCheck(t, scratch(t, 'many.pcap'), out.map((r) => r.data));
  t.end();
});

t.test('reverse DNAT (tc egress): replies from VIP:backend port leave from the service port, checksum right', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  d.revnat.update(encodeRevNatKey({ vip: VIP4, proto: 6, backendPort: 8080 }), encodeRevNatVal(80));
  d.revnat.update(encodeRevNatKey({ vip: VIP6, proto: 17, backendPort: 5353 }), encodeRevNatVal(53));
  d.revnat.update(encodeRevNatKey({ vip: VIP4, proto: 17, backendPort: 5353 }), encodeRevNatVal(53));
  const runTc = (frame: Buffer) => d.revnatProg.testRun({ data: frame, dataSizeOut: frame.length + 64 });
  const cases: Array<[string, Buffer, number, number]> = [
    ['IPv4 TCP SYN-ACK', P.ipv4({ src: VIP4, dst: CLIENT4 }, P.tcp({ sport: 8080, dport: 40000, flags: P.TCP_SYN | P.TCP_ACK, payload: Buffer.from('x') })), 80, 20],
    ['IPv6 UDP answer', P.ipv6({ src: VIP6, dst: CLIENT6 }, P.udp({ sport: 5353, dport: 40001, payload: Buffer.from('be1') })), 53, 40],
    ['IPv4 UDP answer', P.ipv4({ src: VIP4, dst: CLIENT4 }, P.udp({ sport: 5353, dport: 40002, payload: Buffer.from('be1') })), 53, 20],
  ];
  for (const [what, ip, port, l4] of cases) {
    const r = runTc(P.ether(ip, { src: BE_MAC, dst: ROUTER_MAC }));
    t.equal(r.retval, 0, `${what}: TC_ACT_OK`);
    const out = r.data.subarray(14);
    t.equal(out.readUInt16BE(l4), port, `${what}: source port ${port}`);
    const v6 = ip[0] >> 4 === 6;
    const seg = out.subarray(l4);
    t.equal(P.checksum(seg, P.pseudoSum(v6 ? VIP6 : VIP4, v6 ? CLIENT6 : CLIENT4, ip[v6 ? 6 : 9], seg.length)), 0, `${what}: L4 checksum valid`);
    const a = Buffer.from(out);
    a.writeUInt16BE(ip.readUInt16BE(l4), l4);
    a.writeUInt16BE(ip.readUInt16BE(l4 + (ip[v6 ? 6 : 9] === 6 ? 16 : 6)), l4 + (ip[v6 ? 6 : 9] === 6 ? 16 : 6));
    t.same(a, ip, `${what}: nothing else changed`);
  }
  const untouched = [
    P.ipv4({ src: VIP4, dst: CLIENT4 }, P.tcp({ sport: 80, dport: 40000, flags: P.TCP_ACK })),
    P.ipv4({ src: BE4, dst: CLIENT4 }, P.tcp({ sport: 8080, dport: 40000, flags: P.TCP_ACK })),
    P.ipv4({ src: VIP4, dst: CLIENT4 }, P.udp({ sport: 8080, dport: 40000, payload: Buffer.from('x') })),
    P.ipv4({ src: VIP4, dst: CLIENT4 }, P.udp({ sport: 5353, dport: 1, payload: Buffer.from('no checksum'), noChecksum: true })),
  ];
  const r0 = runTc(P.ether(untouched[0], { src: BE_MAC }));
  t.same(r0.data.subarray(14), untouched[0], 'the service port itself: untouched');
  t.same(runTc(P.ether(untouched[1], { src: BE_MAC })).data.subarray(14), untouched[1], 'from the backend\'s own address: untouched');
  t.same(runTc(P.ether(untouched[2], { src: BE_MAC })).data.subarray(14), untouched[2], 'another protocol on that port: untouched');
  const z = runTc(P.ether(untouched[3], { src: BE_MAC })).data.subarray(14);
  t.equal(z.readUInt16BE(20), 53, 'IPv4 UDP without checksum: port rewritten');
  t.equal(z.readUInt16BE(26), 0, 'and still without checksum');
  t.same(runTc(P.arp(BE4, '198.51.100.1')).data, P.arp(BE4, '198.51.100.1'), 'ARP: untouched');
  t.equal(d.counters().revnat_port.packets, 4n, 'rewritten replies counted');
  t.end();
});

t.test('sink mode (benchmarks): every frame dropped after its verdict, a tunnel packet after the strip', needsRoot, (t) => {
  const d = openDecap(t, BE4, BE6);
  d.setSink(true);
  const frames = [P.ether(ipip(tcp4()), eth), P.ether(ip6ip6(udp6()), eth), P.ether(tcp4(), eth), P.arp(BE4, '198.51.100.1')];
  for (const f of frames) t.equal(run(d, f).retval, bpf.XDP_DROP, 'XDP_DROP');
  t.same(counted(d), { decap_ipip: 1, decap_ip6ip6: 1, pass_not_tunnel: 1, pass_not_ip: 1 }, 'each under its own reason');
  d.setSink(false);
  t.equal(run(d, frames[0]).retval, bpf.XDP_PASS, 'sink mode off: passed again');
  t.end();
});
