// Path MTU past the load balancer: a router between the node and a backend
// sends its "fragmentation needed" / "packet too big" to the outer source of
// the tunnel packet it could not forward. The datapath records the path MTU,
// relays the error to the client (from the VIP, the MTU less the outer
// header, quoting the client's packet), answers later packets over it
// itself, and drops the rest of what is addressed to the outer source prefix
// instead of handing it to a kernel that would route it back.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import * as P from '../harness/packets';
import {
  world, serviceSpec, decap, tsharkCheck, scratch, type World,
  VIP4, VIP6, CLIENT4, CLIENT6, LB_SRC4, LB_SRC6, OUTER_TTL, ROUTER_MAC, BACKEND_MAC,
} from '../harness/datapath';
import { needsRoot, sh } from '../harness/fixtures';

const TCP = L.IPPROTO_TCP;
const UDP = L.IPPROTO_UDP;
const ROUTER4 = '192.0.2.1';
const ROUTER6 = '2001:db8::1';

/** The client's neighbour entry on lb0, so the FIB can answer for it. */
function clientOnLb0(w: World): void {
  sh('ip', '-n', w.fib.ns, 'neigh', 'replace', CLIENT4, 'lladdr', P.CLIENT_MAC, 'dev', 'lb0', 'nud', 'permanent');
  sh('ip', '-n', w.fib.ns, '-6', 'neigh', 'replace', CLIENT6, 'lladdr', P.CLIENT_MAC, 'dev', 'lb0', 'nud', 'permanent');
}

function clientPacket(v6: boolean, client: string, size: number, proto = TCP, dport = 443): Buffer {
  const hdr = v6 ? 40 : 20;
  const payload = Buffer.alloc(size - hdr - (proto === TCP ? 20 : 8));
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  const l4 = proto === TCP ? P.tcp({ sport: 40000, dport, flags: P.TCP_ACK, payload }) : P.udp({ sport: 40000, dport, payload });
  return v6 ? P.ipv6({ src: client, dst: VIP6 }, l4) : P.ipv4({ src: client, dst: VIP4 }, l4);
}

/** The IP packet of an encapsulated frame, as a router would have received it. */
function tunnelPacket(frame: Buffer): Buffer {
  const ip = frame.subarray(14);
  return ip[0] >> 4 === 4 ? ip.subarray(0, ip.readUInt16BE(2)) : ip.subarray(0, 40 + ip.readUInt16BE(4));
}

/** A router's error about a tunnel packet: quoting as much as RFC 1812 / RFC 4443 let it. */
function routerError(tunnel: Buffer, o: { mtu?: number; type?: number; code?: number; cut?: number } = {}): Buffer {
  const v6 = tunnel[0] >> 4 === 6;
  const cut = o.cut ?? (v6 ? 1280 - 48 : 576 - 28);
  const quoted = tunnel.subarray(0, Math.min(cut, tunnel.length));
  const outerSrc = v6 ? L.addressText(tunnel.subarray(8, 24), 6) : L.addressText(tunnel.subarray(12, 16), 4);
  const e = P.icmpError({ v6, type: o.type ?? (v6 ? 2 : 3), code: o.code ?? (v6 ? 0 : 4), mtu: o.mtu, quoted });
  const ip = v6 ? P.ipv6({ src: ROUTER6, dst: outerSrc }, e) : P.ipv4({ src: ROUTER4, dst: outerSrc, df: false }, e);
  return P.ether(ip, { src: ROUTER_MAC, dst: P.LB_MAC });
}

function pmtuEntries(w: World): L.PathMtu[] {
  const out: L.PathMtu[] = [];
  for (const k of w.lb.maps.pmtu.keys()) out.push(L.decodePmtu(k, w.lb.maps.pmtu.lookup(k)!));
  return out;
}

interface Relay {
  what: string;
  v6: boolean;
  client: string;
  backend: string;
  mtu: number;
  verdict: number;
  reason: string;
  dstMac: string;
  srcMac: (w: World) => string;
}

t.test('a router\'s frag needed / packet too big about a tunnel packet is recorded and relayed to the client, byte by byte', needsRoot, async (t) => {
  const cases: Relay[] = [
    { what: 'IPv4, client behind the ingress interface', v6: false, client: CLIENT4, backend: '198.51.100.10', mtu: 1400, verdict: bpf.XDP_TX, reason: 'pmtu_relay_tx', dstMac: P.CLIENT_MAC, srcMac: (w) => w.fib.lb0Mac },
    { what: 'IPv6, client behind the ingress interface', v6: true, client: CLIENT6, backend: '2001:db8:100::1', mtu: 1400, verdict: bpf.XDP_TX, reason: 'pmtu_relay_tx', dstMac: P.CLIENT_MAC, srcMac: (w) => w.fib.lb0Mac },
    { what: 'IPv4, client behind another interface', v6: false, client: '198.51.100.130', backend: '198.51.100.10', mtu: 1300, verdict: bpf.XDP_REDIRECT, reason: 'pmtu_relay_redirect', dstMac: BACKEND_MAC, srcMac: (w) => w.fib.lb1Mac },
    { what: 'IPv6, client behind another interface', v6: true, client: '2001:db8:200::5', backend: '2001:db8:100::1', mtu: 1300, verdict: bpf.XDP_REDIRECT, reason: 'pmtu_relay_redirect', dstMac: BACKEND_MAC, srcMac: (w) => w.fib.lb1Mac },
    { what: 'IPv4, an MTU below 552 counts as 552', v6: false, client: CLIENT4, backend: '198.51.100.10', mtu: 68, verdict: bpf.XDP_TX, reason: 'pmtu_relay_tx', dstMac: P.CLIENT_MAC, srcMac: (w) => w.fib.lb0Mac },
  ];
  const frames: Buffer[] = [];
  const expectMtu: number[] = [];
  for (const c of cases) {
    const w = world(t);
    clientOnLb0(w);
    const vip = c.v6 ? VIP6 : VIP4;
    const hdr = c.v6 ? 40 : 20;
    await w.apply([serviceSpec({ vip, port: 443, backends: [c.backend] })]);
    const inner = clientPacket(c.v6, c.client, 1450);
    const fwd = w.run(P.ether(inner));
    t.equal(fwd.retval, bpf.XDP_TX, `${c.what}: the client's packet goes to the backend`);
    const tunnel = tunnelPacket(fwd.data);
    const err = routerError(tunnel, { mtu: c.mtu });
    const r = w.run(err);
    t.equal(r.retval, c.verdict, `${c.what}: relayed`);
    t.equal(w.lb.reason(c.reason), 1n, `${c.reason} counted`);
    const pathMtu = Math.max(c.mtu, c.v6 ? L.PMTU_MIN6 : L.PMTU_MIN4);
    // the router quoted the outer header and what fitted of the inner packet
    const quotedInner = (c.v6 ? 1280 - 48 : 576 - 28) - hdr;
    const q = Math.min(quotedInner, c.v6 ? L.ICMP6_QUOTE_MAX : L.ICMP4_QUOTE_MAX);
    t.equal(r.data.length, 14 + hdr + 8 + q, 'Ethernet, IP, ICMP and the inner packet\'s quote: nothing else');
    t.equal(P.macText(r.data.subarray(0, 6)), c.dstMac, 'to the client\'s next hop');
    t.equal(P.macText(r.data.subarray(6, 12)), c.srcMac(w), 'from the egress interface');
    t.equal(r.data.readUInt16BE(12), c.v6 ? P.ETH_P_IPV6 : P.ETH_P_IP);
    const ip = r.data.subarray(14);
    if (c.v6) {
      const h = P.readIpv6(ip);
      t.equal(L.addressText(h.src, 6), vip, 'from the VIP');
      t.equal(L.addressText(h.dst, 6), c.client, 'to the client');
      t.equal(h.nextHeader, 58);
      t.equal(h.hopLimit, OUTER_TTL);
      t.equal(h.payloadLength, 8 + q);
      t.equal(ip[40], 2, 'packet too big');
      t.equal(ip[41], 0);
      t.equal(ip.readUInt32BE(44), pathMtu - 40, 'the path MTU less the outer header');
      t.equal(P.checksum(ip.subarray(40), P.pseudoSum(vip, c.client, 58, 8 + q)), 0, 'ICMPv6 checksum valid');
      t.same(ip.subarray(48), inner.subarray(0, q), 'quotes the client\'s packet');
    } else {
      const h = P.readIpv4(ip);
      t.equal(h.src, vip, 'from the VIP');
      t.equal(h.dst, c.client, 'to the client');
      t.equal(h.proto, 1);
      t.equal(h.ttl, OUTER_TTL);
      t.ok(h.checksumOk, 'IPv4 checksum valid');
      t.equal(h.totalLength, 28 + q);
      t.equal(ip[20], 3);
      t.equal(ip[21], 4, 'fragmentation needed');
      t.equal(ip.readUInt16BE(24), 0, 'unused');
      t.equal(ip.readUInt16BE(26), pathMtu - 20, 'the path MTU less the outer header');
      t.equal(P.checksum(ip.subarray(20)), 0, 'ICMP checksum valid');
      t.same(ip.subarray(28), inner.subarray(0, q), 'quotes the client\'s packet');
    }
    const now = process.hrtime.bigint();
    const entries = pmtuEntries(w);
    t.equal(entries.length, 1, 'one path MTU recorded');
    t.equal(entries[0].address, c.backend, 'for the backend');
    t.equal(entries[0].mtu, pathMtu, 'the reported MTU (the floor when below it)');
    const left = Number(entries[0].expiresNs - now) / 1e9;
    t.ok(left > L.PMTU_EXPIRES_S - 5 && left <= L.PMTU_EXPIRES_S + 1, `expires in ${L.PMTU_EXPIRES_S} s (${left.toFixed(1)})`);
    t.equal(w.lb.reason('forward_tx'), 1n, 'the error was not forwarded anywhere');
    frames.push(r.data);
    expectMtu.push(pathMtu - hdr);
  }
  const rows = tsharkCheck(t, scratch(t, 'relay.pcap'), frames, ['icmp.mtu', 'icmpv6.mtu'], { quotes: true });
  rows.forEach((row, i) => {
    t.equal(row.extra.join(''), String(expectMtu[i]), 'tshark: the MTU');
    t.same([...row.icmp, ...row.icmpv6], ['1'], 'tshark: checksum good');
  });
  t.end();
});

t.test('after a report, client packets over the path MTU get the load balancer\'s own reply; a lower report wins, a higher one does not', needsRoot, async (t) => {
  for (const v6 of [false, true]) {
    // next hops looked up again after 1 ms, so the test sees the fold at once
    const w = world(t, { config: { nexthopTtlMs: 1 } });
    clientOnLb0(w);
    const backend = v6 ? '2001:db8:100::1' : '198.51.100.10';
    const hdr = v6 ? 40 : 20;
    await w.apply([serviceSpec({ vip: v6 ? VIP6 : VIP4, port: 443, backends: [backend] })]);
    const client = v6 ? CLIENT6 : CLIENT4;
    const fwd = w.run(P.ether(clientPacket(v6, client, 1450)));
    t.equal(fwd.retval, bpf.XDP_TX, 'fits the route MTU 1500 before any report');
    t.equal(w.run(routerError(tunnelPacket(fwd.data), { mtu: 1400 })).retval, bpf.XDP_TX);
    t.equal(w.run(routerError(tunnelPacket(fwd.data), { mtu: 1450 })).retval, bpf.XDP_TX);
    t.equal(pmtuEntries(w)[0].mtu, 1400, 'a higher report does not raise it');
    await new Promise((res) => setTimeout(res, 30));
    const big = w.run(P.ether(clientPacket(v6, client, 1400 - hdr + 1)));
    t.equal(big.retval, bpf.XDP_TX);
    t.equal(w.lb.reason('pmtu_reply'), 1n, 'one byte over the path MTU once encapsulated: the LB\'s own reply');
    const ip = big.data.subarray(14);
    t.equal(v6 ? ip.readUInt32BE(44) : ip.readUInt16BE(26), 1400 - hdr, 'with the path MTU less the outer header');
    const fits = w.run(P.ether(clientPacket(v6, client, 1400 - hdr)));
    t.equal(fits.retval, bpf.XDP_TX);
    t.equal(w.lb.reason('forward_tx'), 2n, 'exactly the path MTU once encapsulated: forwarded');
    t.equal(decap(fits.data).inner.length, 1400 - hdr);
    w.run(routerError(tunnelPacket(fits.data), { mtu: 1350 }));
    t.equal(pmtuEntries(w)[0].mtu, 1350, 'a lower report wins');
  }
  t.end();
});

t.test('an expired path MTU no longer counts', needsRoot, async (t) => {
  const w = world(t, { config: { nexthopTtlMs: 1 } });
  await w.apply([serviceSpec({ vip: VIP4, port: 443, backends: ['198.51.100.10'] })]);
  w.lb.maps.pmtu.update(L.encodePmtuKey('198.51.100.10'), L.encodePmtu({ mtu: 1000, expiresNs: process.hrtime.bigint() + 10_000_000_000n }));
  t.equal(w.run(P.ether(clientPacket(false, CLIENT4, 1000))).retval, bpf.XDP_TX);
  t.equal(w.lb.reason('pmtu_reply'), 1n, 'a live entry lowers the MTU');
  w.lb.maps.pmtu.update(L.encodePmtuKey('198.51.100.10'), L.encodePmtu({ mtu: 1000, expiresNs: process.hrtime.bigint() - 1n }));
  await new Promise((res) => setTimeout(res, 30));
  t.equal(w.run(P.ether(clientPacket(false, CLIENT4, 1000))).retval, bpf.XDP_TX);
  t.equal(w.lb.reason('forward_tx'), 1n, 'an expired one does not');
});

t.test('other ICMP errors about tunnel packets are dropped and counted; the path MTU is recorded even when the client cannot be reached', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([
    serviceSpec({ vip: VIP4, port: 443, backends: ['198.51.100.10'] }),
    serviceSpec({ vip: VIP6, port: 443, backends: ['2001:db8:100::1'] }),
  ]);
  const t4 = tunnelPacket(w.run(P.ether(clientPacket(false, CLIENT4, 1450))).data);
  const t6 = tunnelPacket(w.run(P.ether(clientPacket(true, CLIENT6, 1450))).data);
  const cases: Array<[string, Buffer, string]> = [
    ['host unreachable', routerError(t4, { type: 3, code: 1 }), 'drop_tunnel_icmp'],
    ['time exceeded', routerError(t4, { type: 11, code: 0 }), 'drop_tunnel_icmp'],
    ['ICMPv6 destination unreachable', routerError(t6, { type: 1, code: 3 }), 'drop_tunnel_icmp'],
    ['ICMPv6 time exceeded', routerError(t6, { type: 3, code: 0 }), 'drop_tunnel_icmp'],
    ['IPv4: inner IP header and 7 bytes quoted', routerError(t4, { mtu: 1400, cut: 20 + 20 + 7 }), 'drop_tunnel_icmp'],
    ['IPv6: inner IP header and 7 bytes quoted', routerError(t6, { mtu: 1400, cut: 40 + 40 + 7 }), 'drop_tunnel_icmp'],
    ['IPv4: client has no neighbour entry', routerError(t4, { mtu: 1400 }), 'drop_relay_no_route'],
    ['IPv6: client has no neighbour entry', routerError(t6, { mtu: 1400 }), 'drop_relay_no_route'],
  ];
  for (const [what, frame, reason] of cases) {
    const before = w.lb.reason(reason);
    const r = w.run(frame);
    t.equal(r.retval, bpf.XDP_DROP, what);
    t.equal(w.lb.reason(reason) - before, 1n, `${what}: ${reason}`);
  }
  t.same(pmtuEntries(w).map((e) => `${e.address} ${e.mtu}`).sort(), ['198.51.100.10 1400', '2001:db8:100::1 1400'], 'recorded once the error names the inner flow');
});

t.test('exact outer source: only ICMP errors about tunnel packets are taken, the node\'s own traffic reaches its kernel', needsRoot, async (t) => {
  const w = world(t);
  await w.apply([serviceSpec({ vip: VIP4, port: 443, backends: ['198.51.100.10'] })]);
  const other = P.ipv4({ src: '192.0.2.77', dst: LB_SRC4 }, P.rawL4(4, Buffer.alloc(0)));
  const cases: Array<[string, Buffer, string]> = [
    ['SSH to the node', P.ether(P.ipv4({ src: ROUTER4, dst: LB_SRC4 }, P.tcp({ sport: 50000, dport: 22, flags: P.TCP_SYN }))), 'pass_not_vip'],
    ['BGP over IPv6 to the node', P.ether(P.ipv6({ src: ROUTER6, dst: LB_SRC6 }, P.tcp({ sport: 50000, dport: 179, flags: P.TCP_SYN }))), 'pass_not_vip'],
    ['echo request to the node', P.ether(P.ipv4({ src: ROUTER4, dst: LB_SRC4 }, P.echoRequest({ id: 1, seq: 1 }))), 'pass_not_vip'],
    ['an error about the node\'s own UDP', P.ether(P.ipv4({ src: ROUTER4, dst: LB_SRC4 }, P.icmpError({ type: 3, code: 3, quoted: P.ipv4({ src: LB_SRC4, dst: ROUTER4 }, P.udp({ sport: 1, dport: 2 })) }))), 'pass_not_vip'],
    ['an error about another host\'s IPIP packet', P.ether(P.ipv4({ src: ROUTER4, dst: '192.0.2.77' }, P.icmpError({ type: 3, code: 4, mtu: 1400, quoted: Buffer.concat([other.subarray(0, 20), clientPacket(false, CLIENT4, 100)]) }))), 'pass_icmp_quote'],
  ];
  for (const [what, frame, reason] of cases) {
    const before = w.lb.reason(reason);
    const r = w.run(frame);
    t.equal(r.retval, bpf.XDP_PASS, `${what}: to the kernel`);
    t.same(r.data, frame, 'unchanged');
    t.equal(w.lb.reason(reason) - before, 1n, `${what}: ${reason}`);
  }
  t.equal(w.lb.reason('drop_outer_source'), 0n);
});

t.test('outer source prefix: everything but ICMP errors about tunnel packets is dropped and counted, never handed to the kernel', needsRoot, async (t) => {
  const w = world(t, { config: { src4: '198.51.100.192', src4PrefixLen: 26, src6: '2001:db8:5::', src6PrefixLen: 64 } });
  clientOnLb0(w);
  await w.apply([
    serviceSpec({ vip: VIP4, port: 443, backends: ['198.51.100.10'] }),
    serviceSpec({ vip: VIP6, port: 443, backends: ['2001:db8:100::1'] }),
  ]);
  const t4 = tunnelPacket(w.run(P.ether(clientPacket(false, CLIENT4, 1450))).data);
  const t6 = tunnelPacket(w.run(P.ether(clientPacket(true, CLIENT6, 1450))).data);
  t.equal(w.run(routerError(t4, { mtu: 1400 })).retval, bpf.XDP_TX, 'IPv4 error to a prefix address: relayed');
  t.equal(w.run(routerError(t6, { mtu: 1400 })).retval, bpf.XDP_TX, 'IPv6 error to a prefix address: relayed');
  t.equal(w.lb.reason('pmtu_relay_tx'), 2n);
  const drops: Array<[string, Buffer]> = [
    ['TCP to the IPv4 prefix', P.ipv4({ src: ROUTER4, dst: '198.51.100.200' }, P.tcp({ sport: 1, dport: 22, flags: P.TCP_SYN }))],
    ['UDP to the IPv6 prefix', P.ipv6({ src: ROUTER6, dst: '2001:db8:5::abcd:1' }, P.udp({ sport: 1, dport: 53 }))],
    ['echo request to the prefix', P.ipv4({ src: ROUTER4, dst: '198.51.100.255' }, P.echoRequest({ id: 1, seq: 1 }))],
    ['echo reply to the prefix', P.ipv4({ src: ROUTER4, dst: '198.51.100.193' }, P.icmp({ type: 0, code: 0 }))],
    ['an error quoting a UDP packet from the prefix', P.ipv4({ src: ROUTER4, dst: '198.51.100.193' }, P.icmpError({ type: 3, code: 3, quoted: P.ipv4({ src: '198.51.100.193', dst: ROUTER4 }, P.udp({ sport: 1, dport: 2 })) }))],
    ['GRE to the IPv6 prefix', P.ipv6({ src: ROUTER6, dst: '2001:db8:5::1' }, P.rawL4(47, Buffer.alloc(8)))],
  ];
  for (const [what, ip] of drops) {
    const before = w.lb.reason('drop_outer_source');
    t.equal(w.run(P.ether(ip)).retval, bpf.XDP_DROP, what);
    t.equal(w.lb.reason('drop_outer_source') - before, 1n, `${what}: drop_outer_source`);
  }
  const outside = P.ether(P.ipv4({ src: ROUTER4, dst: '198.51.100.191' }, P.tcp({ sport: 1, dport: 22, flags: P.TCP_SYN })));
  t.equal(w.run(outside).retval, bpf.XDP_PASS, 'the address just below the prefix: to the kernel');
});

t.test('VIP traffic and ICMP errors about VIP flows are untouched by the outer source handling', needsRoot, async (t) => {
  const w = world(t, { config: { src4: '198.51.100.192', src4PrefixLen: 26 } });
  await w.apply([serviceSpec({ vip: VIP4, port: 53, protocol: 'udp', backends: ['198.51.100.10'] })]);
  const r = w.run(P.ether(clientPacket(false, CLIENT4, 200, UDP, 53)));
  t.equal(r.retval, bpf.XDP_TX);
  t.equal(decap(r.data).outer4!.src.startsWith('198.51.100.'), true);
  t.equal(w.lb.reason('drop_outer_source') + w.lb.reason('drop_tunnel_icmp'), 0n);
});

t.test('L4 DNAT: the relayed error quotes the client\'s packet as sent, service port and L4 checksum restored', needsRoot, async (t) => {
  const frames: Buffer[] = [];
  for (const [v6, proto, cut] of [[false, TCP, undefined], [true, TCP, undefined], [false, UDP, undefined], [true, UDP, undefined], [false, TCP, 20 + 20 + 8]] as const) {
    const w = world(t);
    clientOnLb0(w);
    const vip = v6 ? VIP6 : VIP4;
    const client = v6 ? CLIENT6 : CLIENT4;
    const hdr = v6 ? 40 : 20;
    const protocol = proto === TCP ? 'tcp' : 'udp';
    await w.apply([serviceSpec({ vip, port: 8000, protocol, backends: [{ address: v6 ? '2001:db8:100::1' : '198.51.100.10', port: 8080 }], flags: { l4Dnat: true } })]);
    const inner = clientPacket(v6, client, 1450, proto, 8000);
    const fwd = w.run(P.ether(inner));
    t.equal(fwd.retval, bpf.XDP_TX);
    const sent = decap(fwd.data).inner;
    t.equal(sent.readUInt16BE(hdr + 2), 8080, 'the backend got its own port');
    const r = w.run(routerError(tunnelPacket(fwd.data), { mtu: 1400, cut }));
    t.equal(r.retval, bpf.XDP_TX, `${v6 ? 'IPv6' : 'IPv4'} ${proto === TCP ? 'TCP' : 'UDP'}${cut ? ', 8 bytes of TCP quoted' : ''}: relayed`);
    const ip = r.data.subarray(14);
    const quote = ip.subarray(hdr + 8);
    const q = cut ? cut - 20 : Math.min((v6 ? 1280 - 48 : 576 - 28) - hdr, v6 ? L.ICMP6_QUOTE_MAX : L.ICMP4_QUOTE_MAX);
    t.equal(quote.length, q);
    t.same(quote, inner.subarray(0, q), 'the quote is the client\'s packet byte for byte: port 8000 and its checksum');
    t.equal(P.checksum(ip.subarray(hdr), v6 ? P.pseudoSum(vip, client, 58, ip.length - hdr) : 0), 0, 'ICMP checksum valid over the restored quote');
    frames.push(r.data);
  }
  const rows = tsharkCheck(t, scratch(t, 'dnat-relay.pcap'), frames, ['tcp.dstport', 'udp.dstport'], { quotes: true });
  t.same(rows.map((r) => r.extra.join('')), ['8000', '8000', '8000', '8000', '8000'], 'tshark: the quoted packets go to the service port');
  t.end();
});
