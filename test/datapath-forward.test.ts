// Forwarding: a packet to a VIP leaves encapsulated (IPIP / IP6IP6) towards its
// backend, with the outer header right field by field, the inner packet
// untouched (or only its port and checksum, with L4 DNAT), the next hop from
// the FIB, and an independent decoder (tshark) agreeing.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import * as sys from '../src/sys/system';
import * as L from '../src/datapath/layout';
import { flowHash, outerSource } from '../src/datapath/flowhash';
import * as P from '../harness/packets';
import {
  world, rawOneBackend, serviceSpec, idsOf, decap, ipPacket, tsharkCheck, scratch,
  VIP4, VIP6, CLIENT4, CLIENT6, LB_SRC4, LB_SRC6, OUTER_TTL, ROUTER_MAC, BACKEND_MAC,
} from '../harness/datapath';
import { needsRoot, sh } from '../harness/fixtures';

const TCP = L.IPPROTO_TCP;
const UDP = L.IPPROTO_UDP;

t.test('an IPv4 TCP SYN to a VIP leaves IPIP-encapsulated to its backend, inner packet byte for byte', needsRoot, async (t) => {
  const w = world(t);
  const web = serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.10'] });
  await w.apply([web]);
  const ids = idsOf(w, web);
  const inner = P.ipv4({ src: CLIENT4, dst: VIP4, tos: 0x2e << 2 | 1, ttl: 61, id: 0x4242 }, P.tcp({ sport: 40000, dport: 80, flags: P.TCP_SYN, options: Buffer.from('020405b40402080a0000000100000000', 'hex') }));
  const frame = P.ether(inner);
  const r = w.run(frame);
  t.equal(r.retval, bpf.XDP_TX, 'XDP_TX: the backend is reached through the ingress interface');
  const e = decap(r.data);
  t.equal(e.dstMac, ROUTER_MAC, 'destination MAC: the next hop from the FIB');
  t.equal(e.srcMac, w.fib.lb0Mac, 'source MAC: the egress interface');
  t.equal(e.ethertype, P.ETH_P_IP);
  const o = e.outer4!;
  t.equal(o.version, 4);
  t.equal(o.ihl, 5);
  t.equal(o.tos, 0x2e << 2 | 1, 'DSCP and ECN copied from the inner header');
  t.equal(o.totalLength, inner.length + 20);
  t.equal(o.id, 0x4242, 'identification copied');
  t.equal(o.df, true, 'DF copied from the inner header');
  t.equal(o.fragOffset, 0);
  t.equal(o.ttl, OUTER_TTL, 'TTL from the node config');
  t.equal(o.proto, 4, 'protocol 4: IP in IP');
  t.ok(o.checksumOk, 'outer header checksum valid');
  t.equal(o.src, LB_SRC4, 'outer source: the node address');
  t.equal(o.dst, '198.51.100.10', 'outer destination: the backend');
  t.same(e.inner, inner, 'inner packet byte-identical');
  t.equal(r.data.length, 14 + 20 + inner.length, 'nothing else in the frame');
  t.equal(w.lb.reason('forward_tx'), 1n);
  t.same(w.lb.serviceStats(ids.service), { packets: 1n, bytes: BigInt(frame.length) }, 'service counter: packets and bytes as received');
  t.same(w.lb.backendStats(ids.backends[0]), { packets: 1n, bytes: BigInt(frame.length) }, 'backend counter');
  const rows = tsharkCheck(t, scratch(t, 'syn.pcap'), [r.data], ['ip.src', 'ip.dst', 'ip.proto', 'tcp.flags.syn', 'tcp.dstport']);
  t.same(rows[0].ip, ['1', '1'], 'tshark: outer and inner IPv4 checksums good');
  t.same(rows[0].tcp, ['1'], 'tshark: TCP checksum good');
  t.same(rows[0].extra, [`${LB_SRC4},${CLIENT4}`, `198.51.100.10,${VIP4}`, '4,6', '1', '80']);
});

t.test('IPv4 TCP data and UDP (with and without checksum) are forwarded the same way', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([
    serviceSpec({ vip: VIP4, port: 0, backends: ['198.51.100.11'] }),
    serviceSpec({ vip: VIP4, port: 53, protocol: 'udp', backends: ['198.51.100.12'] }),
  ]);
  const pkts = [
    P.ipv4({ src: CLIENT4, dst: VIP4, df: false }, P.tcp({ sport: 40001, dport: 443, flags: P.TCP_ACK | P.TCP_PSH, seq: 99, ack: 7, payload: Buffer.alloc(1000, 0x61) })),
    P.ipv4({ src: CLIENT4, dst: VIP4 }, P.udp({ sport: 5353, dport: 53, payload: Buffer.from('a dns query, more or less') })),
    P.ipv4({ src: CLIENT4, dst: VIP4 }, P.udp({ sport: 5354, dport: 53, payload: Buffer.from('no checksum'), noChecksum: true })),
  ];
  const out: Buffer[] = [];
  pkts.forEach((inner, i) => {
    const r = w.run(P.ether(inner));
    t.equal(r.retval, bpf.XDP_TX, `packet ${i}: XDP_TX`);
    const e = decap(r.data);
    t.equal(e.outer4!.dst, i === 0 ? '198.51.100.11' : '198.51.100.12', `packet ${i}: its service's backend`);
    t.equal(e.outer4!.df, i !== 0, `packet ${i}: DF as in the inner header`);
    t.ok(e.outer4!.checksumOk);
    t.same(e.inner, inner, `packet ${i}: inner unchanged`);
    out.push(r.data);
  });
  const rows = tsharkCheck(t, scratch(t, 'v4.pcap'), out, ['udp.checksum']);
  t.same(rows[0].tcp, ['1']);
  t.same(rows[1].udp, ['1']);
  t.equal(rows[2].extra[0], '0x0000', 'a zero UDP checksum stays zero');
});

t.test('IPv6 TCP and UDP to a VIP leave IP6IP6-encapsulated, flow label from the flow hash', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([
    serviceSpec({ vip: VIP6, port: 80, backends: ['2001:db8:100::10'] }),
    serviceSpec({ vip: VIP6, port: 53, protocol: 'udp', backends: ['2001:db8:200::1'] }),
  ]);
  const tcpPkt = P.ipv6({ src: CLIENT6, dst: VIP6, tclass: 0xb9, flowLabel: 0x12345, hopLimit: 50 }, P.tcp({ sport: 41000, dport: 80 }));
  const r = w.run(P.ether(tcpPkt));
  t.equal(r.retval, bpf.XDP_TX);
  const e = decap(r.data);
  t.equal(e.dstMac, ROUTER_MAC);
  t.equal(e.ethertype, P.ETH_P_IPV6);
  const o = e.outer6!;
  t.equal(o.version, 6);
  t.equal(o.tclass, 0xb9, 'traffic class (DSCP and ECN) copied');
  t.equal(o.flowLabel, flowHash({ src: CLIENT6, dst: VIP6, sport: 41000, dport: 80, proto: TCP }) & 0xfffff, 'flow label: low 20 bits of the flow hash');
  t.equal(o.payloadLength, tcpPkt.length);
  t.equal(o.nextHeader, 41, 'next header 41: IPv6 in IPv6');
  t.equal(o.hopLimit, OUTER_TTL);
  t.equal(L.addressText(o.src, 6), LB_SRC6);
  t.equal(L.addressText(o.dst, 6), '2001:db8:100::10');
  t.same(e.inner, tcpPkt, 'inner byte-identical');

  const udpPkt = P.ipv6({ src: CLIENT6, dst: VIP6 }, P.udp({ sport: 41001, dport: 53, payload: Buffer.from('query') }));
  const r2 = w.run(P.ether(udpPkt));
  t.equal(r2.retval, bpf.XDP_REDIRECT, 'backend behind lb1: XDP_REDIRECT');
  const e2 = decap(r2.data);
  t.equal(e2.dstMac, BACKEND_MAC, 'neighbour MAC of the backend');
  t.equal(e2.srcMac, w.fib.lb1Mac, 'source MAC of lb1');
  t.equal(L.addressText(e2.outer6!.dst, 6), '2001:db8:200::1');
  t.same(e2.inner, udpPkt);
  t.equal(w.lb.reason('forward_tx'), 1n);
  t.equal(w.lb.reason('forward_redirect'), 1n);
  const rows = tsharkCheck(t, scratch(t, 'v6.pcap'), [r.data, r2.data], ['ipv6.nxt', 'ipv6.dst']);
  t.same(rows[0].tcp, ['1']);
  t.same(rows[1].udp, ['1']);
  t.equal(rows[0].extra[0], '41,6');
  t.equal(rows[1].extra[1], `2001:db8:200::1,${VIP6}`);
});

t.test('L4 DNAT: the inner destination port becomes the backend port, checksum updated', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([
    serviceSpec({ vip: VIP4, port: 80, backends: [{ address: '198.51.100.10', port: 8080 }], flags: { l4Dnat: true } }),
    serviceSpec({ vip: VIP4, port: 53, protocol: 'udp', backends: [{ address: '198.51.100.11', port: 5353 }], flags: { l4Dnat: true } }),
    serviceSpec({ vip: VIP6, port: 80, backends: [{ address: '2001:db8:100::10', port: 8443 }], flags: { l4Dnat: true } }),
    serviceSpec({ vip: VIP6, port: 53, protocol: 'udp', backends: [{ address: '2001:db8:100::11', port: 1053 }], flags: { l4Dnat: true } }),
  ]);
  const cases: Array<[Buffer, number]> = [
    [P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: 40000, dport: 80, payload: Buffer.from('GET / HTTP/1.0\r\n\r\n') })), 8080],
    [P.ipv4({ src: CLIENT4, dst: VIP4 }, P.udp({ sport: 40000, dport: 53, payload: Buffer.from('q') })), 5353],
    [P.ipv4({ src: CLIENT4, dst: VIP4 }, P.udp({ sport: 40001, dport: 53, payload: Buffer.from('q'), noChecksum: true })), 5353],
    [P.ipv6({ src: CLIENT6, dst: VIP6 }, P.tcp({ sport: 40000, dport: 80 })), 8443],
    [P.ipv6({ src: CLIENT6, dst: VIP6 }, P.udp({ sport: 40000, dport: 53, payload: Buffer.from('q6') })), 1053],
  ];
  const out: Buffer[] = [];
  for (const [inner, port] of cases) {
    const r = w.run(P.ether(inner));
    t.equal(r.retval, bpf.XDP_TX);
    const got = decap(r.data).inner;
    const v4 = inner[0] >> 4 === 4;
    const l4 = v4 ? (inner[0] & 0xf) * 4 : 40;
    const proto = v4 ? inner[9] : inner[6];
    t.equal(got.readUInt16BE(l4 + 2), port, `destination port ${port}`);
    const csumOff = l4 + (proto === TCP ? 16 : 6);
    // everything but the port and the checksum is as it was
    const a = Buffer.from(got);
    const b = Buffer.from(inner);
    for (const x of [a, b]) x.fill(0, l4 + 2, l4 + 4).fill(0, csumOff, csumOff + 2);
    t.same(a, b, 'only the port and the checksum changed');
    if (v4 && proto === UDP && inner.readUInt16BE(csumOff) === 0) {
      t.equal(got.readUInt16BE(csumOff), 0, 'a zero IPv4 UDP checksum stays zero');
    } else {
      const src = v4 ? L.addressText(inner.subarray(12), 4) : L.addressText(inner.subarray(8), 6);
      const dst = v4 ? L.addressText(inner.subarray(16), 4) : L.addressText(inner.subarray(24), 6);
      const seg = got.subarray(l4);
      t.equal(P.checksum(seg, P.pseudoSum(src, dst, proto, seg.length)), 0, 'L4 checksum valid after the rewrite');
    }
    out.push(r.data);
  }
  const rows = tsharkCheck(t, scratch(t, 'dnat.pcap'), out, ['tcp.dstport', 'udp.dstport']);
  t.same(rows.map((r) => r.extra.join('')), ['8080', '5353', '5353', '8443', '1053']);
});

t.test('outer source from a prefix: host bits from the flow hash, one source per flow', needsRoot, async (t) => {
  const w = world(t, { config: { src4: '192.0.2.0', src4PrefixLen: 26, src6: '2001:db8:0:1::', src6PrefixLen: 64 } });
  await w.apply([
    serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.10'] }),
    serviceSpec({ vip: VIP6, port: 80, backends: ['2001:db8:100::10'] }),
  ]);
  const seen4 = new Set<string>();
  const seen6 = new Set<string>();
  for (let i = 0; i < 64; i++) {
    const sport = 30000 + i;
    const f4 = { src: CLIENT4, dst: VIP4, sport, dport: 80, proto: TCP };
    const o4 = decap(w.run(P.ether(P.ipv4(f4, P.tcp(f4)))).data).outer4!;
    t.equal(o4.src, outerSource('192.0.2.0', 26, flowHash(f4)), `IPv4 flow ${sport}: source as predicted`);
    t.ok(o4.checksumOk);
    seen4.add(o4.src);
    const again = decap(w.run(P.ether(P.ipv4(f4, P.tcp({ ...f4, flags: P.TCP_ACK })))).data).outer4!;
    t.equal(again.src, o4.src, 'the same flow keeps its source');
    const f6 = { src: CLIENT6, dst: VIP6, sport, dport: 80, proto: TCP };
    const o6 = decap(w.run(P.ether(P.ipv6(f6, P.tcp(f6)))).data).outer6!;
    const s6 = L.addressText(o6.src, 6);
    t.equal(s6, outerSource('2001:db8:0:1::', 64, flowHash(f6)), `IPv6 flow ${sport}: source as predicted`);
    t.ok(s6.startsWith('2001:db8:0:1:'), 'inside the prefix');
    seen6.add(s6);
  }
  t.ok(seen4.size > 32, `64 flows spread over ${seen4.size} of 64 IPv4 sources`);
  t.ok(seen6.size > 60, `64 flows spread over ${seen6.size} IPv6 sources`);
});

t.test('a backend behind another interface is reached with XDP_REDIRECT; missing from the devmap: passed', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.130'] })]);
  const frame = P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: 1234, dport: 80 })));
  const r = w.run(frame);
  t.equal(r.retval, bpf.XDP_REDIRECT);
  const e = decap(r.data);
  t.equal(e.dstMac, BACKEND_MAC);
  t.equal(e.srcMac, w.fib.lb1Mac);
  t.equal(e.outer4!.dst, '198.51.100.130');
  sys.withNetns(w.fib.ns, () => w.lb.maps.devmap.delete(L.u32(w.fib.lb1)));
  const r2 = w.run(frame);
  t.equal(r2.retval, bpf.XDP_PASS, 'egress interface not in the devmap: XDP_PASS');
  t.same(r2.data, frame, 'the packet reaches the kernel unchanged');
  t.equal(w.lb.reason('pass_no_egress_dev'), 1n);
});

t.test('no route or forwarding off: the packet goes to the kernel unchanged; no neighbour: dropped; each reason counted', needsRoot, async (t) => {
  const w = world(t);
  const unroutable = [
    serviceSpec({ vip: VIP4, port: 1, backends: ['203.0.113.250'] }),
    serviceSpec({ vip: VIP4, port: 2, backends: ['198.51.100.140'] }),
    serviceSpec({ vip: VIP6, port: 1, backends: ['2001:db8:dead::1'] }),
    serviceSpec({ vip: VIP6, port: 2, backends: ['2001:db8:200::ff'] }),
  ];
  await w.apply(unroutable);
  const f = (v6: boolean, dport: number) =>
    P.ether(v6 ? P.ipv6({ src: CLIENT6, dst: VIP6 }, P.tcp({ sport: 999, dport })) : P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: 999, dport })));
  for (const [v6, port, reason] of [[false, 1, 'pass_fib_miss'], [false, 2, 'drop_fib_no_neigh'], [true, 1, 'pass_fib_miss'], [true, 2, 'drop_fib_no_neigh']] as const) {
    const before = w.lb.reason(reason);
    const frame = f(v6, port);
    const r = w.run(frame);
    // no neighbour: dropped, so the client retransmits while the daemon resolves it
    const drop = reason === 'drop_fib_no_neigh';
    t.equal(r.retval, drop ? bpf.XDP_DROP : bpf.XDP_PASS, `${v6 ? 'IPv6' : 'IPv4'} ${reason}: ${drop ? 'XDP_DROP' : 'XDP_PASS'}`);
    if (!drop) t.same(r.data, frame, 'unchanged');
    t.equal(w.lb.reason(reason) - before, 1n, `${reason} counted`);
  }
  const routed = serviceSpec({ vip: VIP4, port: 3, backends: ['198.51.100.10'] });
  await w.apply([...unroutable, routed]);
  sh('ip', 'netns', 'exec', w.fib.ns, 'sysctl', '-qw', 'net.ipv4.conf.lb0.forwarding=0');
  const r = w.run(f(false, 3));
  t.equal(r.retval, bpf.XDP_PASS);
  t.equal(w.lb.reason('pass_fib_fwd_disabled'), 1n, 'forwarding disabled on the ingress interface');
  t.equal(w.lb.serviceStats(idsOf(w, unroutable[0]).service).packets + w.lb.serviceStats(idsOf(w, routed).service).packets, 0n, 'nothing counted as forwarded');
});

t.test('a VLAN-tagged packet is balanced; the encapsulated frame leaves untagged', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([
    serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.10'] }),
    serviceSpec({ vip: VIP6, port: 80, backends: ['2001:db8:100::10'] }),
  ]);
  const in4 = P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: 5, dport: 80 }));
  const in6 = P.ipv6({ src: CLIENT6, dst: VIP6 }, P.tcp({ sport: 5, dport: 80 }));
  const out: Buffer[] = [];
  for (const inner of [in4, in6]) {
    const r = w.run(P.ether(inner, { vlans: [100] }));
    t.equal(r.retval, bpf.XDP_TX);
    const e = decap(r.data);
    t.ok(e.ethertype === P.ETH_P_IP || e.ethertype === P.ETH_P_IPV6, 'no tag on the outer frame');
    t.same(e.inner, inner, 'inner unchanged');
    out.push(r.data);
  }
  tsharkCheck(t, scratch(t, 'vlan.pcap'), out);
});

t.test('IPv4 options and IPv6 extension headers are balanced normally and carried unchanged', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([
    serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.10'] }),
    serviceSpec({ vip: VIP6, port: 80, backends: ['2001:db8:100::10'] }),
  ]);
  // record route (7), 39 bytes + EOL: the longest options there are
  const rr = Buffer.alloc(40);
  rr[0] = 7;
  rr[1] = 39;
  rr[2] = 4;
  const inners = [
    P.ipv4({ src: CLIENT4, dst: VIP4, options: rr }, P.tcp({ sport: 6, dport: 80 })),
    P.ipv4({ src: CLIENT4, dst: VIP4, options: Buffer.from([0x94, 4, 0, 0]) }, P.tcp({ sport: 7, dport: 80 })), // router alert
    P.ipv6({ src: CLIENT6, dst: VIP6, ext: [{ type: 0 }, { type: 60 }] }, P.tcp({ sport: 6, dport: 80 })),
    P.ipv6({ src: CLIENT6, dst: VIP6, ext: [{ type: 0 }, { type: 43, body: Buffer.from([0, 0, 0, 0, 0, 0]) }, { type: 51 }, { type: 60, body: Buffer.alloc(30) }] }, P.tcp({ sport: 7, dport: 80 })),
    P.ipv6({ src: CLIENT6, dst: VIP6, ext: new Array(L.IPV6_EXT_MAX).fill({ type: 60 }) }, P.tcp({ sport: 8, dport: 80 })),
  ];
  const out: Buffer[] = [];
  for (const inner of inners) {
    const r = w.run(P.ether(inner));
    t.equal(r.retval, bpf.XDP_TX);
    t.same(decap(r.data).inner, inner, 'inner packet carried unchanged');
    out.push(r.data);
  }
  const rows = tsharkCheck(t, scratch(t, 'opts.pcap'), out, ['tcp.srcport']);
  t.same(rows.map((r) => r.tcp), [['1'], ['1'], ['1'], ['1'], ['1']]);
});

t.test('Ethernet padding after a short IP packet is not carried into the tunnel', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([serviceSpec({ vip: VIP4, port: 53, protocol: 'udp', backends: ['198.51.100.10'] })]);
  const inner = P.ipv4({ src: CLIENT4, dst: VIP4 }, P.udp({ sport: 1, dport: 53, payload: Buffer.from('x') }));
  const frame = Buffer.concat([P.ether(inner), Buffer.alloc(60 - 14 - inner.length, 0xee)]);
  t.equal(frame.length, 60, 'a minimum-size frame');
  const r = w.run(frame);
  t.equal(r.retval, bpf.XDP_TX);
  t.equal(r.data.length, 14 + 20 + inner.length, 'padding trimmed');
  t.same(decap(r.data).inner, inner);
  t.same(ipPacket(frame), inner);
});

t.test('per service and per backend counters add up packets and bytes', needsRoot, async (t) => {
  const w = world(t, { maglevM: 13 });
  const web = serviceSpec({ vip: VIP4, port: 80, backends: ['198.51.100.20', '198.51.100.21'] });
  await w.apply([web]);
  const ids = idsOf(w, web);
  let bytes = 0n;
  for (let i = 0; i < 50; i++) {
    const frame = P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: 2000 + i, dport: 80, payload: Buffer.alloc(i) })));
    bytes += BigInt(frame.length);
    t.equal(w.run(frame).retval, bpf.XDP_TX);
  }
  const s = w.lb.serviceStats(ids.service);
  const a = w.lb.backendStats(ids.backends[0]);
  const b = w.lb.backendStats(ids.backends[1]);
  t.same(s, { packets: 50n, bytes }, 'service: every packet, bytes as received');
  t.equal(a.packets + b.packets, 50n, 'backends share the packets');
  t.equal(a.bytes + b.bytes, bytes);
  t.ok(a.packets > 0n && b.packets > 0n, 'both backends got flows');
  t.equal(w.lb.reason('forward_tx'), 50n);
});

t.test('no outer source for the family, or a backend of the other family: dropped and counted', needsRoot, async (t) => {
  const w = world(t, { config: { src4: LB_SRC4, src6: '' } });
  await w.apply([serviceSpec({ vip: VIP6, port: 80, backends: ['2001:db8:100::10'] })]);
  // raw: validation refuses a backend of the other family, the daemon never writes one
  rawOneBackend(w, { vip: VIP4, port: 80, proto: TCP, id: 2 }, { id: 2, address: '2001:db8:100::11' });
  const r6 = w.run(P.ether(P.ipv6({ src: CLIENT6, dst: VIP6 }, P.tcp({ sport: 1, dport: 80 }))));
  t.equal(r6.retval, bpf.XDP_DROP);
  t.equal(w.lb.reason('drop_no_outer_source'), 1n);
  const r4 = w.run(P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: 1, dport: 80 }))));
  t.equal(r4.retval, bpf.XDP_DROP);
  t.equal(w.lb.reason('drop_family_mismatch'), 1n, 'IPv4 VIP, IPv6 backend: refused');
});
