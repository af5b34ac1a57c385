// ICMP: errors about VIP flows follow the flow to its backend; echo requests
// to a VIP are answered when the VIP allows it; packets that would not fit the
// egress MTU once encapsulated get a "fragmentation needed" / "packet too big"
// back, which tshark decodes with the right MTU and quote.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { flowHash, type Flow } from '../src/datapath/flowhash';
import { buildTable } from '../src/maglev';
import * as P from '../harness/packets';
import {
  world, rawOneBackend, decap, tsharkCheck, scratch, type World,
  VIP4, VIP6, CLIENT4, CLIENT6, OUTER_TTL, ROUTER_MAC, PMTU_ROUTE_MTU,
} from '../harness/datapath';
import { needsRoot } from '../harness/fixtures';

const TCP = L.IPPROTO_TCP;
const UDP = L.IPPROTO_UDP;

function outerDst(frame: Buffer): string {
  const e = decap(frame);
  return e.outer4 ? e.outer4.dst : L.addressText(e.outer6!.dst, 6);
}

/** The backend's DSR reply of a flow, VIP -> client, as a router would quote it. */
function reply(f: Flow, cut = 8): Buffer {
  const v6 = L.familyOf(f.src) === 6;
  const l4 = f.proto === TCP ? P.tcp({ sport: f.dport, dport: f.sport, flags: P.TCP_ACK, payload: Buffer.alloc(200, 1) }) : P.udp({ sport: f.dport, dport: f.sport, payload: Buffer.alloc(200, 1) });
  const ip = v6 ? P.ipv6({ src: f.dst, dst: f.src }, l4) : P.ipv4({ src: f.dst, dst: f.src }, l4);
  return ip.subarray(0, (v6 ? 40 : 20) + cut);
}

function flowPacket(f: Flow): Buffer {
  const l4 = f.proto === TCP ? P.tcp({ sport: f.sport, dport: f.dport }) : P.udp({ sport: f.sport, dport: f.dport, payload: Buffer.from('hi') });
  return P.ether(L.familyOf(f.src) === 6 ? P.ipv6({ src: f.src, dst: f.dst }, l4) : P.ipv4({ src: f.src, dst: f.dst }, l4));
}

function fourBackends(w: World, v6: boolean, id: number, vip: string, proto: number): Map<number, string> {
  const addr = new Map<number, string>();
  const backends = [1, 2, 3, 4].map((n) => {
    const bid = id * 10 + n;
    const a = v6 ? `2001:db8:100::${bid.toString(16)}` : `198.51.100.${bid}`;
    addr.set(bid, a);
    w.lb.backend({ id: bid, address: a });
    return { id: bid, key: a, weight: 1 };
  });
  w.lb.service({ vip, port: 0, proto, id });
  w.lb.maglev(id, buildTable(backends, 251));
  return addr;
}

t.test('ICMP errors quoting a VIP flow are encapsulated to the backend of that flow, unchanged', needsRoot, (t) => {
  const w = world(t, { maglevM: 251 });
  const a4 = fourBackends(w, false, 1, VIP4, TCP);
  const a4u = fourBackends(w, false, 2, VIP4, UDP);
  const a6 = fourBackends(w, true, 3, VIP6, TCP);
  const out: Buffer[] = [];
  let n = 0;
  for (let i = 0; i < 24; i++) {
    const v6 = i % 3 === 2;
    const proto = i % 3 === 1 ? UDP : TCP;
    const f: Flow = v6
      ? { src: `2001:db8::${(0x100 + i).toString(16)}`, dst: VIP6, sport: 20000 + i * 13, dport: 443, proto }
      : { src: `192.0.2.${100 + i}`, dst: VIP4, sport: 20000 + i * 13, dport: 443, proto };
    // the flow first, so it is in the connection table
    const fr = w.run(flowPacket(f));
    t.equal(fr.retval, bpf.XDP_TX);
    const backend = outerDst(fr.data);
    const addrs = v6 ? a6 : proto === UDP ? a4u : a4;
    t.ok([...addrs.values()].includes(backend));
    const errors = v6
      ? [
          P.icmpError({ v6: true, type: 2, code: 0, mtu: 1280, quoted: reply(f, 1232 - 40) }),
          P.icmpError({ v6: true, type: 1, code: 4, quoted: reply(f) }),
          P.icmpError({ v6: true, type: 3, code: 0, quoted: reply(f, 4) }),
        ]
      : [
          P.icmpError({ type: 3, code: 4, mtu: 1300, quoted: reply(f) }),
          P.icmpError({ type: 3, code: 3, quoted: reply(f, 100) }),
          P.icmpError({ type: 11, code: 0, quoted: reply(f, 4) }),
        ];
    for (const e of errors) {
      const ip = v6 ? P.ipv6({ src: '2001:db8::1', dst: VIP6 }, e) : P.ipv4({ src: '192.0.2.1', dst: VIP4, df: false }, e);
      const r = w.run(P.ether(ip, { src: ROUTER_MAC }));
      t.equal(r.retval, bpf.XDP_TX, 'forwarded');
      t.equal(outerDst(r.data), backend, 'to the backend that has the flow');
      t.same(decap(r.data).inner, ip, 'the ICMP packet travels unchanged');
      out.push(r.data);
      n++;
    }
  }
  t.equal(w.lb.reason('forward_tx'), BigInt(24 + n));
  const rows = tsharkCheck(t, scratch(t, 'icmp-err.pcap'), out, [], { quotes: true });
  t.ok(rows.every((r) => r.icmp.length + r.icmpv6.length > 0), 'tshark sees ICMP inside every tunnel');
  t.end();
});

t.test('an ICMP error follows the flow with connection-table bypass too (same hash as the flow)', needsRoot, (t) => {
  const w = world(t, { maglevM: 251 });
  w.lb.service({ vip: VIP4, port: 53, proto: UDP, id: 1, flags: L.SVC_F_CT_BYPASS });
  const backends = [1, 2, 3, 4, 5].map((id) => {
    w.lb.backend({ id, address: `198.51.100.${id}` });
    return { id, key: String(id), weight: 1 };
  });
  const table = buildTable(backends, 251);
  w.lb.maglev(1, table);
  for (let i = 0; i < 30; i++) {
    const f: Flow = { src: `198.51.100.${150 + i}`, dst: VIP4, sport: 3000 + i, dport: 53, proto: UDP };
    const e = P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 1, quoted: reply(f) }));
    const r = w.run(P.ether(e));
    t.equal(outerDst(r.data), `198.51.100.${table[flowHash(f) % 251]}`, 'the backend of the quoted flow');
  }
  t.equal([...w.lb.maps.conntrack4.keys()].length + [...w.lb.maps.conntrack.keys()].length, 0, 'ICMP errors make no connection-table entries');
  t.end();
});

t.test('ICMP errors that do not quote a VIP flow go to the kernel', needsRoot, (t) => {
  const w = world(t);
  rawOneBackend(w, { vip: VIP4, port: 80, proto: TCP, id: 1 }, { id: 1, address: '198.51.100.1' });
  const f: Flow = { src: CLIENT4, dst: VIP4, sport: 1111, dport: 80, proto: TCP };
  const cases: Array<[Buffer, string]> = [
    [P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 1, quoted: reply({ ...f, dport: 81 }) })), 'pass_not_vip'],
    [P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 1, quoted: reply({ ...f, proto: UDP }) })), 'pass_not_vip'],
    [P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 1, quoted: reply(f, 3) })), 'pass_icmp_quote'],
    [P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 1, quoted: P.ipv4({ src: VIP4, dst: CLIENT4 }, P.echoRequest({ id: 1, seq: 1 })) })), 'pass_icmp_quote'],
    [P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 1, quoted: Buffer.from(reply(f)).fill(0x65, 0, 1) })), 'pass_icmp_quote'],
    [P.ipv4({ src: '192.0.2.1', dst: '192.0.2.2' }, P.icmpError({ type: 3, code: 4, quoted: reply(f) })), 'pass_icmp_quote'],
    [P.ipv6({ src: '2001:db8::1', dst: '2001:db8::2' }, P.icmpError({ v6: true, type: 2, code: 0, mtu: 1280, quoted: reply({ src: CLIENT6, dst: VIP6, sport: 1, dport: 2, proto: TCP }) })), 'pass_icmp_quote'],
    [P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmp({ type: 5, code: 1 })), 'pass_icmp_other'],
    [P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmp({ type: 0, code: 0 })), 'pass_icmp_other'],
    [P.ipv6({ src: '2001:db8::1', dst: VIP6 }, P.icmp({ v6: true, type: 135, code: 0, body: Buffer.alloc(16) })), 'pass_icmp_other'],
    [P.ipv6({ src: '2001:db8::1', dst: VIP6 }, P.icmpError({ v6: true, type: 2, code: 0, mtu: 1280, quoted: reply({ src: CLIENT6, dst: VIP6, sport: 1, dport: 2, proto: TCP }) })), 'pass_not_vip'],
  ];
  for (const [ip, reason] of cases) {
    const before = w.lb.reason(reason);
    const frame = P.ether(ip);
    const r = w.run(frame);
    t.equal(r.retval, bpf.XDP_PASS, reason);
    t.same(r.data, frame, 'unchanged');
    t.equal(w.lb.reason(reason) - before, 1n, `${reason} counted`);
  }
  t.end();
});

t.test('an ICMP error too big for the tunnel is dropped, never answered with another error', needsRoot, (t) => {
  const w = world(t);
  rawOneBackend(w, { vip: VIP4, port: 80, proto: TCP, id: 1 }, { id: 1, address: '198.51.100.70' });
  const big = P.ipv4({ src: VIP4, dst: CLIENT4 }, P.tcp({ sport: 80, dport: 1111, payload: Buffer.alloc(1400) }));
  const e = P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 11, code: 0, quoted: big }));
  t.ok(e.length + 20 > PMTU_ROUTE_MTU);
  const r = w.run(P.ether(e));
  t.equal(r.retval, bpf.XDP_DROP);
  t.equal(w.lb.reason('drop_too_big_icmp'), 1n);
  t.equal(w.lb.reason('pmtu_reply'), 0n);
  t.end();
});

t.test('echo requests to a VIP are answered by the load balancer when the VIP allows it', needsRoot, (t) => {
  const w = world(t);
  w.lb.vipEntry(VIP4, true);
  w.lb.vipEntry(VIP6, true);
  const payload = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz-odd');
  const req4 = P.ipv4({ src: CLIENT4, dst: VIP4, ttl: 55, tos: 0x10 }, P.echoRequest({ id: 0x777, seq: 3, payload }));
  const req6 = P.ipv6({ src: CLIENT6, dst: VIP6, hopLimit: 55 }, P.echoRequest({ id: 0x777, seq: 3, payload, v6: true }));
  const out: Buffer[] = [];
  for (const [req, vlans] of [[req4, []], [req6, []], [req4, [42]]] as const) {
    const frame = P.ether(req, { vlans: [...vlans] });
    const r = w.run(frame);
    t.equal(r.retval, bpf.XDP_TX, 'answered with XDP_TX');
    t.equal(r.data.length, frame.length, 'same size');
    t.equal(P.macText(r.data.subarray(0, 6)), P.CLIENT_MAC, 'to the client MAC');
    t.equal(P.macText(r.data.subarray(6, 12)), P.LB_MAC, 'from the MAC it was sent to');
    const l2 = 14 + vlans.length * 4;
    if (vlans.length) t.equal(r.data.readUInt16BE(14), 42, 'VLAN tag kept');
    const ip = r.data.subarray(l2);
    if (req === req4) {
      const h = P.readIpv4(ip);
      t.equal(h.src, VIP4);
      t.equal(h.dst, CLIENT4);
      t.equal(h.ttl, OUTER_TTL, 'TTL from the node config');
      t.ok(h.checksumOk, 'IPv4 checksum valid');
      t.equal(ip[20], 0, 'type 0: echo reply');
      t.equal(P.checksum(ip.subarray(20)), 0, 'ICMP checksum valid');
      t.same(ip.subarray(24), req.subarray(24), 'identifier, sequence and payload echoed');
    } else {
      const h = P.readIpv6(ip);
      t.equal(L.addressText(h.src, 6), VIP6);
      t.equal(L.addressText(h.dst, 6), CLIENT6);
      t.equal(h.hopLimit, OUTER_TTL);
      t.equal(ip[40], 129, 'type 129: echo reply');
      t.equal(P.checksum(ip.subarray(40), P.pseudoSum(VIP6, CLIENT6, 58, ip.length - 40)), 0, 'ICMPv6 checksum valid');
      t.same(ip.subarray(44), req.subarray(44));
    }
    out.push(r.data);
  }
  t.equal(w.lb.reason('icmp_echo_reply'), 3n);
  const rows = tsharkCheck(t, scratch(t, 'echo.pcap'), out, ['icmp.type', 'icmpv6.type']);
  t.same(rows.map((r) => r.extra.join('')), ['0', '129', '0']);

  w.lb.vipEntry(VIP4, false);
  const r = w.run(P.ether(req4));
  t.equal(r.retval, bpf.XDP_PASS, 'echo off: to the kernel');
  t.equal(w.lb.reason('pass_icmp_echo_off'), 1n);
  const other = P.ether(P.ipv4({ src: CLIENT4, dst: '203.0.113.99' }, P.echoRequest({ id: 1, seq: 1 })));
  t.equal(w.run(other).retval, bpf.XDP_PASS, 'not a VIP: to the kernel');
  t.equal(w.lb.reason('pass_not_vip'), 1n);
  t.end();
});

interface PmtuCase {
  what: string;
  v6: boolean;
  backend: string;
  size: number;
  mtu: number;
  vlans?: number[];
  configMtu?: number;
}

t.test('too big once encapsulated: ICMP fragmentation needed / packet too big with the usable MTU', needsRoot, (t) => {
  const cases: PmtuCase[] = [
    { what: 'IPv4 DF, route MTU 1400', v6: false, backend: '198.51.100.70', size: 1400, mtu: PMTU_ROUTE_MTU },
    { what: 'IPv4 DF, VLAN tag', v6: false, backend: '198.51.100.70', size: 1390, mtu: PMTU_ROUTE_MTU, vlans: [7] },
    { what: 'IPv4 DF, config MTU 1300', v6: false, backend: '198.51.100.10', size: 1290, mtu: 1300, configMtu: 1300 },
    { what: 'IPv4 DF, small packet, config MTU 100', v6: false, backend: '198.51.100.10', size: 101, mtu: 100, configMtu: 100 },
    { what: 'IPv6, route MTU 1400', v6: true, backend: '2001:db8:164::1', size: 1400, mtu: PMTU_ROUTE_MTU },
    { what: 'IPv6, device MTU 1500', v6: true, backend: '2001:db8:100::1', size: 1480, mtu: 1500 },
    { what: 'IPv6, VLAN tag, config MTU 1350', v6: true, backend: '2001:db8:100::1', size: 1350, mtu: 1350, configMtu: 1350, vlans: [4094] },
  ];
  const frames: Buffer[] = [];
  const expect: Array<{ mtu: number; quoteLen: number; v6: boolean }> = [];
  for (const c of cases) {
    const w = world(t, { config: c.configMtu ? { mtu: c.configMtu } : {} });
    const vip = c.v6 ? VIP6 : VIP4;
    const client = c.v6 ? CLIENT6 : CLIENT4;
    rawOneBackend(w, { vip, port: 443, proto: TCP, id: 1 }, { id: 1, address: c.backend });
    const hdr = c.v6 ? 40 : 20;
    const payload = Buffer.alloc(c.size - hdr - 20);
    for (let i = 0; i < payload.length; i++) payload[i] = i & 0xff;
    const l4 = P.tcp({ sport: 50000, dport: 443, flags: P.TCP_ACK, payload });
    const inner = c.v6 ? P.ipv6({ src: client, dst: vip }, l4) : P.ipv4({ src: client, dst: vip }, l4);
    t.equal(inner.length, c.size);
    const frame = P.ether(inner, { vlans: c.vlans });
    const r = w.run(frame);
    t.equal(r.retval, bpf.XDP_TX, `${c.what}: sent back with XDP_TX`);
    t.equal(w.lb.reason('pmtu_reply'), 1n, 'counted');
    t.equal(w.lb.serviceStats(1).packets, 0n, 'not counted as forwarded');
    const l2 = 14 + (c.vlans?.length ?? 0) * 4;
    t.equal(P.macText(r.data.subarray(0, 6)), P.CLIENT_MAC, 'to the client MAC');
    t.equal(P.macText(r.data.subarray(6, 12)), P.LB_MAC);
    if (c.vlans) t.equal(r.data.readUInt16BE(14) & 0xfff, c.vlans[0], 'VLAN tag kept');
    const ip = r.data.subarray(l2);
    const quoteMax = c.v6 ? L.ICMP6_QUOTE_MAX : L.ICMP4_QUOTE_MAX;
    const q = Math.min(inner.length, quoteMax);
    if (c.v6) {
      const h = P.readIpv6(ip);
      t.equal(h.nextHeader, 58);
      t.equal(L.addressText(h.src, 6), vip, 'from the VIP');
      t.equal(L.addressText(h.dst, 6), client, 'to the client');
      t.equal(h.payloadLength, 8 + q);
      t.ok(40 + 8 + q <= 1280, 'fits the IPv6 minimum MTU');
      t.equal(ip[40], 2, 'type 2: packet too big');
      t.equal(ip[41], 0);
      t.equal(ip.readUInt32BE(44), c.mtu - 40, 'MTU: egress MTU minus the outer header');
      t.equal(P.checksum(ip.subarray(40, 48 + q), P.pseudoSum(vip, client, 58, 8 + q)), 0, 'ICMPv6 checksum valid');
      t.same(ip.subarray(48, 48 + q), inner.subarray(0, q), 'quotes the original packet');
    } else {
      const h = P.readIpv4(ip);
      t.equal(h.proto, 1);
      t.equal(h.src, vip);
      t.equal(h.dst, client);
      t.equal(h.ttl, OUTER_TTL);
      t.ok(h.checksumOk);
      t.equal(h.totalLength, 28 + q);
      t.equal(ip[20], 3, 'type 3');
      t.equal(ip[21], 4, 'code 4: fragmentation needed');
      t.equal(ip.readUInt16BE(26), c.mtu - 20, 'next-hop MTU: egress MTU minus the outer header');
      t.equal(P.checksum(ip.subarray(20, 28 + q)), 0, 'ICMP checksum valid');
      t.same(ip.subarray(28, 28 + q), inner.subarray(0, q), 'quotes the IP header and the start of the payload');
      t.ok(q >= 28, 'at least the IP header and 8 bytes');
    }
    t.equal(r.data.length, l2 + (c.v6 ? 48 : 28) + q, 'nothing after the quote');
    frames.push(r.data);
    expect.push({ mtu: c.mtu - (c.v6 ? 40 : 20), quoteLen: q, v6: c.v6 });
  }
  const rows = tsharkCheck(t, scratch(t, 'pmtu.pcap'), frames, ['icmp.type', 'icmp.code', 'icmp.mtu', 'icmpv6.type', 'icmpv6.mtu', 'ip.src', 'ipv6.src'], { quotes: true });
  rows.forEach((r, i) => {
    const [type4, code4, mtu4, type6, mtu6, ipsrc, ip6src] = r.extra;
    if (expect[i].v6) {
      t.equal(type6, '2', 'tshark: ICMPv6 packet too big');
      t.equal(mtu6, String(expect[i].mtu), 'tshark: MTU');
      t.same(r.icmpv6, ['1'], 'tshark: ICMPv6 checksum good');
      t.equal(ip6src, `${VIP6},${CLIENT6}`, 'tshark: the quoted packet is the client\'s');
    } else {
      t.equal(type4, '3');
      t.equal(code4, '4');
      t.equal(mtu4, String(expect[i].mtu), 'tshark: next-hop MTU');
      t.same(r.icmp, ['1'], 'tshark: ICMP checksum good');
      t.equal(ipsrc, `${VIP4},${CLIENT4}`, 'tshark: the quoted packet is the client\'s');
    }
  });
  t.end();
});

t.test('what fits is forwarded; IPv4 without DF that does not fit is dropped and counted', needsRoot, (t) => {
  const w = world(t);
  rawOneBackend(w, { vip: VIP4, port: 443, proto: TCP, id: 1 }, { id: 1, address: '198.51.100.70' });
  rawOneBackend(w, { vip: VIP6, port: 443, proto: TCP, id: 2 }, { id: 2, address: '2001:db8:164::1' });
  const mk = (v6: boolean, size: number, df = true) => {
    const l4 = P.tcp({ sport: 50000, dport: 443, flags: P.TCP_ACK, payload: Buffer.alloc(size - (v6 ? 60 : 40)) });
    return P.ether(v6 ? P.ipv6({ src: CLIENT6, dst: VIP6 }, l4) : P.ipv4({ src: CLIENT4, dst: VIP4, df }, l4));
  };
  t.equal(w.run(mk(false, PMTU_ROUTE_MTU - 20)).retval, bpf.XDP_TX, 'IPv4: exactly the MTU once encapsulated: forwarded');
  t.equal(w.run(mk(true, PMTU_ROUTE_MTU - 40)).retval, bpf.XDP_TX, 'IPv6: exactly the MTU once encapsulated: forwarded');
  const frame = mk(false, PMTU_ROUTE_MTU - 19, false);
  const r = w.run(frame);
  t.equal(r.retval, bpf.XDP_DROP, 'IPv4 without DF, one byte too many: dropped (XDP cannot fragment)');
  t.equal(w.lb.reason('drop_frag_needed_no_df'), 1n);
  t.equal(w.lb.reason('pmtu_reply'), 0n);
  t.end();
});
