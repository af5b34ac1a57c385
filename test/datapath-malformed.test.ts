// What the datapath does not balance goes to the kernel unchanged, counted by
// reason: non-IP, stacked VLANs, truncation at every byte of every header,
// bad IP headers, fragments, too many IPv6 extension headers. Then 100,000+
// random and mutated packets: only documented verdicts, every pass unchanged,
// every forwarded frame well formed.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';
import { REASONS } from '../src/datapath/reasons';
import * as P from '../harness/packets';
import { world, decap, ipPacket, scratch, VIP4, VIP6, CLIENT4, CLIENT6, type World } from '../harness/datapath';
import { needsRoot } from '../harness/fixtures';

const TCP = L.IPPROTO_TCP;
const UDP = L.IPPROTO_UDP;

function setup(t: Parameters<typeof world>[0]): World {
  const w = world(t, { maglevM: 61 });
  w.lb.service({ vip: VIP4, port: 0, proto: TCP, id: 1 });
  w.lb.service({ vip: VIP4, port: 0, proto: UDP, id: 2 });
  w.lb.service({ vip: VIP6, port: 0, proto: TCP, id: 3 });
  w.lb.service({ vip: VIP6, port: 0, proto: UDP, id: 4, flags: L.SVC_F_L4_DNAT });
  w.lb.vipEntry(VIP4, true);
  w.lb.vipEntry(VIP6, true);
  w.lb.backend({ id: 1, address: '198.51.100.10' });
  w.lb.backend({ id: 2, address: '198.51.100.70' }); // route MTU 1400
  w.lb.backend({ id: 3, address: '198.51.100.131' }); // behind lb1
  w.lb.backend({ id: 4, address: '2001:db8:100::10' });
  w.lb.backend({ id: 5, address: '2001:db8:164::10' }); // route MTU 1400
  w.lb.backend({ id: 6, address: '2001:db8:200::3', port: 9999 }); // behind lb1
  const table = (ids: number[]) => Uint32Array.from({ length: 61 }, (_, i) => ids[i % ids.length]);
  w.lb.maglev(1, table([1, 2, 3]));
  w.lb.maglev(2, table([1, 2, 3]));
  w.lb.maglev(3, table([4, 5, 6]));
  w.lb.maglev(4, table([4, 5, 6]));
  return w;
}

/** The assertions expectPass needs (tap's Test has them). */
interface Checks {
  fail(message: string): unknown;
  equal(found: unknown, wanted: unknown, message: string): unknown;
}

/** Runs frames, checks each verdict and that passed frames are unchanged; returns reason deltas. */
function expectPass(t: Checks, w: World, cases: Array<[Buffer, string, string]>): void {
  const before = w.lb.reasons();
  const want: Record<string, bigint> = {};
  const results = w.runAll(cases.map((c) => c[0]));
  let wrong = 0;
  results.forEach((r, i) => {
    const [frame, reason, what] = cases[i];
    want[reason] = (want[reason] ?? 0n) + 1n;
    if (r.retval !== bpf.XDP_PASS || !r.data.equals(frame)) {
      wrong++;
      if (wrong < 5) t.fail(`${what}: verdict ${r.retval}, ${r.data.equals(frame) ? 'unchanged' : 'changed'}`);
    }
  });
  // one at a time when the totals disagree, to name the frame
  const after0 = w.lb.reasons();
  const totalsAgree = REASONS.every((x) => after0[x.name] - before[x.name] === (want[x.name] ?? 0n));
  if (!totalsAgree) {
    for (const [frame, reason, what] of cases) {
      const b = w.lb.reason(reason);
      w.runAll([frame]);
      if (w.lb.reason(reason) === b) t.fail(`${what}: not counted as ${reason}`);
    }
  }
  t.equal(wrong, 0, `${cases.length} frames: XDP_PASS, unchanged`);
  for (const r of REASONS) t.equal(after0[r.name] - before[r.name], want[r.name] ?? 0n, `${r.name}: ${want[r.name] ?? 0n}`);
}


t.test('not IP, stacked VLANs, other transports, other destinations: passed and counted', needsRoot, (t) => {
  const w = setup(t);
  const tcp4 = P.ipv4({ src: CLIENT4, dst: VIP4 }, P.tcp({ sport: 1, dport: 80 }));
  const lldp = P.ether(Buffer.alloc(46, 1), { dst: '01:80:c2:00:00:0e', type: 0x88cc });
  expectPass(t, w, [
    [P.arp('192.0.2.100', VIP4), 'pass_not_ip', 'ARP'],
    [lldp, 'pass_not_ip', 'LLDP'],
    [P.ether(Buffer.alloc(50, 7), { type: 0x1234 }), 'pass_not_ip', 'unknown ethertype'],
    [P.ether(P.arp('192.0.2.100', VIP4).subarray(14), { type: P.ETH_P_ARP, vlans: [5] }), 'pass_not_ip', 'ARP in a VLAN'],
    [P.ether(tcp4, { vlans: [5, 6] }), 'pass_vlan_stacked', 'two 802.1Q tags'],
    [P.ether(tcp4, { vlans: [5, 6], tpid: 0x88a8 }), 'pass_vlan_stacked', 'QinQ 802.1ad tags'],
    [P.ether(P.ipv4({ src: CLIENT4, dst: '198.51.100.1' }, P.tcp({ sport: 1, dport: 80 }))), 'pass_not_vip', 'IPv4 to another address'],
    [P.ether(P.ipv4({ src: CLIENT4, dst: '198.51.100.1' }, P.tcp({ sport: 1, dport: 80 })), { vlans: [9] }), 'pass_not_vip', 'VLAN, another address'],
    [P.ether(P.ipv6({ src: CLIENT6, dst: '2001:db8::77' }, P.udp({ sport: 1, dport: 80 }))), 'pass_not_vip', 'IPv6 to another address'],
    [P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.rawL4(47, Buffer.alloc(24)))), 'pass_l4_unsupported', 'GRE to a VIP'],
    [P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.rawL4(50, Buffer.alloc(24)))), 'pass_l4_unsupported', 'ESP to a VIP'],
    [P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.rawL4(58, Buffer.alloc(8)))), 'pass_l4_unsupported', 'ICMPv6 in IPv4'],
    [P.ether(P.ipv6({ src: CLIENT6, dst: VIP6 }, P.rawL4(1, Buffer.alloc(8)))), 'pass_l4_unsupported', 'ICMP in IPv6'],
    [P.ether(P.ipv6({ src: CLIENT6, dst: VIP6 }, P.rawL4(59, Buffer.alloc(8)))), 'pass_l4_unsupported', 'IPv6 no next header'],
    [P.ether(P.ipv6({ src: CLIENT6, dst: VIP6 }, P.rawL4(132, Buffer.alloc(16)))), 'pass_l4_unsupported', 'SCTP'],
  ]);
  t.end();
});

/** Headers of the base packets, for the truncation sweeps: [frame, end of headers]. */
function bases(): Array<[string, Buffer, number]> {
  const rr = Buffer.from([7, 7, 4, 0, 0, 0, 0, 0]);
  const list: Array<[string, Buffer]> = [
    ['IPv4 TCP with options', P.ether(P.ipv4({ src: CLIENT4, dst: VIP4, options: rr }, P.tcp({ sport: 1, dport: 80, payload: Buffer.alloc(4) })))],
    ['IPv4 UDP in a VLAN', P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.udp({ sport: 1, dport: 80, payload: Buffer.alloc(4) })), { vlans: [3] })],
    ['IPv4 echo', P.ether(P.ipv4({ src: CLIENT4, dst: VIP4 }, P.echoRequest({ id: 1, seq: 1, payload: Buffer.alloc(4) })))],
    ['IPv4 ICMP error', P.ether(P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 4, mtu: 1000, quoted: P.ipv4({ src: VIP4, dst: CLIENT4 }, P.tcp({ sport: 80, dport: 1 })).subarray(0, 28) })))],
    ['IPv6 TCP with extension headers', P.ether(P.ipv6({ src: CLIENT6, dst: VIP6, ext: [{ type: 0 }, { type: 43 }, { type: 51 }, { type: 60 }] }, P.tcp({ sport: 1, dport: 80, payload: Buffer.alloc(4) })))],
    ['IPv6 UDP', P.ether(P.ipv6({ src: CLIENT6, dst: VIP6 }, P.udp({ sport: 1, dport: 80, payload: Buffer.alloc(4) })))],
    ['IPv6 ICMP error', P.ether(P.ipv6({ src: '2001:db8::1', dst: VIP6 }, P.icmpError({ v6: true, type: 2, code: 0, mtu: 1280, quoted: P.ipv6({ src: VIP6, dst: CLIENT6 }, P.udp({ sport: 80, dport: 1 })).subarray(0, 48) })))],
  ];
  return list.map(([n, f]) => [n, f, f.length - 4]);
}

t.test('truncated at every byte offset of every header: passed unchanged as truncated', needsRoot, (t) => {
  const w = setup(t);
  const cases: Array<[Buffer, string, string]> = [];
  for (const [name, frame] of bases()) {
    // sanity: the whole frame is balanced or answered
    const whole = w.run(frame).retval;
    t.ok(whole === bpf.XDP_TX || whole === bpf.XDP_REDIRECT, `${name}: whole frame handled (${whole})`);
    for (let cut = 14; cut < frame.length; cut++) cases.push([frame.subarray(0, cut), 'pass_truncated', `${name} cut at ${cut}`]);
  }
  expectPass(t, w, cases);
  t.end();
});

t.test('truncated inside the transport header with consistent IP lengths: passed as truncated', needsRoot, (t) => {
  const w = setup(t);
  const cases: Array<[Buffer, string, string]> = [];
  const mk = (v6: boolean, l4: P.L4, cut: number) => {
    const ip = v6 ? P.ipv6({ src: CLIENT6, dst: VIP6 }, l4) : P.ipv4({ src: CLIENT4, dst: VIP4 }, l4);
    const hl = v6 ? 40 : 20;
    const c = Buffer.from(ip.subarray(0, hl + cut));
    if (v6) c.writeUInt16BE(cut, 4);
    else {
      c.writeUInt16BE(hl + cut, 2);
      c.writeUInt16BE(0, 10);
      c.writeUInt16BE(P.checksum(c.subarray(0, 20)), 10);
    }
    return P.ether(c);
  };
  for (const v6 of [false, true]) {
    // (IPv6 with payload length 0 is a jumbogram: a bad header, not a truncated one)
    const why = (cut: number) => (v6 && cut === 0 ? 'pass_bad_ip_header' : 'pass_truncated');
    for (let cut = 0; cut < 20; cut++) cases.push([mk(v6, P.tcp({ sport: 1, dport: 2 }), cut), why(cut), `TCP ${cut} bytes`]);
    for (let cut = 0; cut < 8; cut++) cases.push([mk(v6, P.udp({ sport: 1, dport: 2 }), cut), why(cut), `UDP ${cut} bytes`]);
    for (let cut = 0; cut < 8; cut++) cases.push([mk(v6, P.echoRequest({ id: 1, seq: 1, v6 }), cut), why(cut), `ICMP ${cut} bytes`]);
  }
  // padding does not count as transport header: IPv4 length says 20 + 4, the frame is 60 bytes
  const padded = Buffer.concat([mk(false, P.tcp({ sport: 1, dport: 2 }), 4), Buffer.alloc(22)]);
  cases.push([padded, 'pass_truncated', 'TCP header in Ethernet padding']);
  // quoted packets cut before their ports
  for (let q = 0; q < 24; q++) {
    const quoted = P.ipv4({ src: VIP4, dst: CLIENT4 }, P.tcp({ sport: 80, dport: 1 })).subarray(0, q);
    cases.push([P.ether(P.ipv4({ src: '192.0.2.1', dst: VIP4 }, P.icmpError({ type: 3, code: 1, quoted }))), 'pass_icmp_quote', `quote of ${q} bytes`]);
  }
  for (let q = 0; q < 44; q++) {
    const quoted = P.ipv6({ src: VIP6, dst: CLIENT6 }, P.tcp({ sport: 80, dport: 1 })).subarray(0, q);
    cases.push([P.ether(P.ipv6({ src: '2001:db8::1', dst: VIP6 }, P.icmpError({ v6: true, type: 1, code: 1, quoted }))), 'pass_icmp_quote', `IPv6 quote of ${q} bytes`]);
  }
  expectPass(t, w, cases);
  t.end();
});

t.test('bad IP headers: IHL below 5, wrong version, lengths that lie', needsRoot, (t) => {
  const w = setup(t);
  const l4 = P.tcp({ sport: 1, dport: 80, payload: Buffer.alloc(40) });
  const v4 = (o: Partial<P.Ipv4Options>) => P.ether(P.ipv4({ src: CLIENT4, dst: VIP4, ...o }, l4), { type: P.ETH_P_IP });
  const v6 = (o: Partial<P.Ipv6Options>) => P.ether(P.ipv6({ src: CLIENT6, dst: VIP6, ...o }, l4), { type: P.ETH_P_IPV6 });
  const len4 = 20 + 60;
  const cases: Array<[Buffer, string, string]> = [];
  for (let ihl = 0; ihl < 5; ihl++) cases.push([v4({ ihl }), 'pass_bad_ip_header', `IHL ${ihl}`]);
  cases.push([P.ether(P.ipv4({ src: CLIENT4, dst: VIP4, ihl: 15, totalLength: 40 }, P.udp({ sport: 1, dport: 2, payload: Buffer.alloc(40) }))), 'pass_bad_ip_header', 'IHL 15: header longer than the total length']);
  cases.push([P.ether(P.ipv4({ src: CLIENT4, dst: VIP4, ihl: 15 }, P.udp({ sport: 1, dport: 2 }))).subarray(0, 14 + 40), 'pass_truncated', 'IHL 15: header longer than the frame']);
  for (const version of [0, 1, 5, 6, 15]) cases.push([v4({ version }), 'pass_bad_ip_header', `version ${version} under ethertype IPv4`]);
  for (const version of [0, 4, 7, 15]) cases.push([v6({ version }), 'pass_bad_ip_header', `version ${version} under ethertype IPv6`]);
  cases.push([v4({ totalLength: len4 + 1 }), 'pass_truncated', 'total length one past the frame']);
  cases.push([v4({ totalLength: 0xffff }), 'pass_truncated', 'total length 65535']);
  cases.push([v4({ totalLength: 19 }), 'pass_bad_ip_header', 'total length below the header']);
  cases.push([v4({ totalLength: 0 }), 'pass_bad_ip_header', 'total length 0']);
  cases.push([v4({ totalLength: 30 }), 'pass_truncated', 'total length ends inside TCP']);
  cases.push([v6({ payloadLength: 61 }), 'pass_truncated', 'payload length one past the frame']);
  cases.push([v6({ payloadLength: 0 }), 'pass_bad_ip_header', 'payload length 0 (jumbogram)']);
  cases.push([v6({ payloadLength: 10 }), 'pass_truncated', 'payload length ends inside TCP']);
  expectPass(t, w, cases);
  // a header checksum the datapath does not check: balanced (the backend's stack judges it)
  const bad = w.run(v4({ badChecksum: true })).retval;
  t.ok(bad === bpf.XDP_TX || bad === bpf.XDP_REDIRECT, 'a bad IPv4 header checksum is not checked here: balanced');
  t.end();
});

t.test('transport headers that lie: TCP data offset below 5 or past the IP payload, UDP length below 8 or past it', needsRoot, (t) => {
  const w = setup(t);
  const cases: Array<[Buffer, string, string]> = [];
  // the frame of an l4 header, with byte `at` of the transport header set by `edit`
  const mk = (v6: boolean, l4: P.L4, edit: (l4hdr: Buffer) => void, vlan = false) => {
    const f = P.ether(v6 ? P.ipv6({ src: CLIENT6, dst: VIP6 }, l4) : P.ipv4({ src: CLIENT4, dst: VIP4 }, l4), { vlans: vlan ? [7] : [] });
    edit(f.subarray((vlan ? 18 : 14) + (v6 ? 40 : 20)));
    return f;
  };
  const doff = (n: number) => (h: Buffer) => (h[12] = (n << 4) | (h[12] & 0x0f));
  const udpLen = (n: number) => (h: Buffer) => h.writeUInt16BE(n, 4);
  for (const v6 of [false, true]) {
    for (const vlan of [false, true]) {
      const fam = `${v6 ? 'IPv6' : 'IPv4'}${vlan ? ', VLAN' : ''}`;
      for (let n = 0; n < 5; n++) cases.push([mk(v6, P.tcp({ sport: 1, dport: 80, payload: Buffer.alloc(40) }), doff(n), vlan), 'pass_bad_l4_header', `${fam}: TCP data offset ${n}`]);
      cases.push([mk(v6, P.tcp({ sport: 1, dport: 80, payload: Buffer.alloc(8) }), doff(8), vlan), 'pass_bad_l4_header', `${fam}: TCP header of 32 bytes in 28`]);
      cases.push([mk(v6, P.tcp({ sport: 1, dport: 80 }), doff(15), vlan), 'pass_bad_l4_header', `${fam}: TCP data offset 15, no payload`]);
      for (const n of [0, 1, 7]) cases.push([mk(v6, P.udp({ sport: 1, dport: 80, payload: Buffer.alloc(10) }), udpLen(n), vlan), 'pass_bad_l4_header', `${fam}: UDP length ${n}`]);
      cases.push([mk(v6, P.udp({ sport: 1, dport: 80, payload: Buffer.alloc(10) }), udpLen(19), vlan), 'pass_bad_l4_header', `${fam}: UDP length one past the IP payload`]);
      cases.push([mk(v6, P.udp({ sport: 1, dport: 80, payload: Buffer.alloc(10) }), udpLen(0xffff), vlan), 'pass_bad_l4_header', `${fam}: UDP length 65535`]);
    }
  }
  // a TCP header whose options would lie in Ethernet padding: IPv4 length 20 + 20, the frame 60 bytes
  cases.push([Buffer.concat([mk(false, P.tcp({ sport: 1, dport: 80 }), doff(6)), Buffer.alloc(6)]), 'pass_bad_l4_header', 'TCP options in Ethernet padding']);
  expectPass(t, w, cases);

  // the limits themselves are fine: a data offset that ends at the IP payload's
  // end, a UDP length shorter than the payload (trailing bytes), both forwarded
  // with the inner packet as it came
  const fine = [
    mk(false, P.tcp({ sport: 1, dport: 80, payload: Buffer.alloc(4) }), doff(6)),
    mk(true, P.tcp({ sport: 1, dport: 80, payload: Buffer.alloc(4) }), doff(6), true),
    mk(false, P.udp({ sport: 1, dport: 80, payload: Buffer.alloc(10) }), udpLen(8)),
    mk(false, P.udp({ sport: 1, dport: 80, payload: Buffer.alloc(10) }), udpLen(12), true),
  ];
  for (const [i, f] of fine.entries()) {
    const r = w.run(f);
    t.ok(r.retval === bpf.XDP_TX || r.retval === bpf.XDP_REDIRECT, `limit case ${i}: forwarded`);
    t.same(decap(r.data).inner, ipPacket(f), `limit case ${i}: the inner packet as it came`);
  }
  t.end();
});

t.test('IPv4 fragments, IPv6 fragment headers and over-long extension header chains are passed', needsRoot, (t) => {
  const w = setup(t);
  const l4 = P.udp({ sport: 1, dport: 80, payload: Buffer.alloc(32) });
  const f4 = (mf: boolean, fragOffset: number) => P.ether(P.ipv4({ src: CLIENT4, dst: VIP4, df: false, mf, fragOffset }, l4));
  const f6 = (ext: P.Ipv6Ext[]) => P.ether(P.ipv6({ src: CLIENT6, dst: VIP6, ext }, l4));
  const dst = { type: 60 };
  expectPass(t, w, [
    [f4(true, 0), 'pass_ipv4_fragment', 'first fragment'],
    [f4(true, 185), 'pass_ipv4_fragment', 'middle fragment'],
    [f4(false, 185), 'pass_ipv4_fragment', 'last fragment'],
    [f4(false, 1), 'pass_ipv4_fragment', 'offset 8'],
    [f6([{ type: 44 }]), 'pass_ipv6_fragment', 'fragment header'],
    [f6([{ type: 0 }, { type: 44 }]), 'pass_ipv6_fragment', 'fragment header after hop-by-hop'],
    [f6([...new Array<P.Ipv6Ext>(L.IPV6_EXT_MAX).fill(dst), { type: 44 }]), 'pass_ipv6_fragment', 'fragment header right after the last walked one'],
    [f6(new Array<P.Ipv6Ext>(L.IPV6_EXT_MAX + 1).fill(dst)), 'pass_ipv6_ext_limit', `${L.IPV6_EXT_MAX + 1} extension headers`],
    [f6(new Array<P.Ipv6Ext>(12).fill({ type: 0 })), 'pass_ipv6_ext_limit', '12 hop-by-hop headers'],
  ]);
  const most = w.run(f6(new Array<P.Ipv6Ext>(L.IPV6_EXT_MAX).fill(dst))).retval;
  t.ok(most === bpf.XDP_TX || most === bpf.XDP_REDIRECT, `${L.IPV6_EXT_MAX} extension headers: balanced`);
  t.end();
});

// ---- fuzzing ----

/** Bytes that differ between two buffers of the same length. */
function differingBytes(a: Buffer, b: Buffer): number {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) n++;
  return n;
}

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

const PROTOS = [1, 6, 17, 58, 0, 43, 44, 47, 50, 51, 59, 60, 255];

function basePacket(r: () => number): Buffer {
  const v6 = !!(r() & 1);
  const vip = r() % 8 === 0 ? (v6 ? '2001:db8::99' : '198.51.100.99') : v6 ? VIP6 : VIP4;
  const src = v6 ? `2001:db8::${(r() & 0xffff).toString(16)}` : `192.0.2.${r() & 0xff}`;
  const big = r() % 10 === 0;
  const payload = Buffer.alloc(big ? 1300 + (r() % 200) : r() % 64, r() & 0xff);
  let l4: P.L4;
  switch (r() % 6) {
    case 0:
    case 1:
      l4 = P.tcp({ sport: r() & 0xffff, dport: r() & 0xffff, flags: r() & 0x3f, payload });
      break;
    case 2:
    case 3:
      l4 = P.udp({ sport: r() & 0xffff, dport: r() & 0xffff, payload, noChecksum: !v6 && !(r() & 3) });
      break;
    case 4:
      l4 = P.echoRequest({ id: r() & 0xffff, seq: r() & 0xffff, payload, v6 });
      break;
    default: {
      const quoted = v6
        ? P.ipv6({ src: vip, dst: src }, P.tcp({ sport: r() & 0xffff, dport: r() & 0xffff })).subarray(0, 40 + (r() % 30))
        : P.ipv4({ src: vip, dst: src }, P.udp({ sport: r() & 0xffff, dport: r() & 0xffff })).subarray(0, 20 + (r() % 30));
      l4 = P.icmpError({ v6, type: v6 ? [1, 2, 3][r() % 3] : [3, 11][r() % 2], code: r() % 5, quoted, mtu: 1280 });
    }
  }
  const ext: P.Ipv6Ext[] = v6 && r() % 4 === 0 ? Array.from({ length: 1 + (r() % 7) }, () => ({ type: [0, 43, 60, 51][r() % 4] })) : [];
  const options = !v6 && r() % 4 === 0 ? Buffer.alloc(4 * (1 + (r() % 10)), 1) : undefined;
  const ip = v6 ? P.ipv6({ src, dst: vip, ext, tclass: r() & 0xff }, l4) : P.ipv4({ src, dst: vip, options, df: !!(r() & 3), tos: r() & 0xff }, l4);
  return P.ether(ip, { vlans: r() % 6 === 0 ? [r() & 0xfff] : [] });
}

function mutate(r: () => number, f: Buffer): Buffer {
  let b = Buffer.from(f);
  const n = r() % 4;
  for (let i = 0; i < n; i++) {
    switch (r() % 9) {
      case 0: // flip a bit in the headers
        b[r() % Math.min(b.length, 120)] ^= 1 << (r() % 8);
        break;
      case 1: // any byte, any value
        b[r() % b.length] = r() & 0xff;
        break;
      case 2: // cut
        b = b.subarray(0, 14 + (r() % Math.max(1, b.length - 14)));
        break;
      case 3: // pad
        b = Buffer.concat([b, Buffer.alloc(r() % 64, r() & 0xff)]);
        break;
      case 4: // ethertype
        b.writeUInt16BE([0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, r() & 0xffff][r() % 6], 12);
        break;
      case 5: // IPv4 IHL / version byte, or IPv6 version
        if (b.length > 14) b[14] = r() & 0xff;
        break;
      case 6: // IPv4 total length / IPv6 payload length
        if (b.length > 19) b.writeUInt16BE(r() % 3 ? r() & 0x7ff : r() & 0xffff, b.readUInt16BE(12) === 0x86dd ? 18 : 16);
        break;
      case 7: // IPv4 fragment field / protocol, IPv6 next header
        if (b.length > 24) {
          if (b.readUInt16BE(12) === 0x86dd) b[20] = PROTOS[r() % PROTOS.length];
          else if (r() & 1) b.writeUInt16BE(r() & 0xffff, 20);
          else b[23] = PROTOS[r() % PROTOS.length];
        }
        break;
      default: // an IPv6 extension header length
        if (b.length > 56 && b.readUInt16BE(12) === 0x86dd) b[55] = r() & 0xff;
    }
  }
  return b;
}

t.test('100,000 random and mutated packets: documented verdicts only, passes unchanged, forwarded frames well formed', needsRoot, (t) => {
  const w = setup(t);
  const r = rng(20240601);
  const N = 100000;
  const frames: Buffer[] = [];
  for (let i = 0; i < N; i++) {
    const base = basePacket(r);
    frames.push(i % 10 === 0 ? base : mutate(r, base));
  }
  const before = w.lb.reasons();
  const verdicts = new Map<number, number>();
  const forwarded: Array<{ input: Buffer; output: Buffer }> = [];
  const made: Array<{ input: Buffer; output: Buffer }> = [];
  let passChanged = 0;
  let badOuter = 0;
  let innerChanged = 0;
  const BATCH = 5000;
  for (let off = 0; off < N; off += BATCH) {
    const res = w.runAll(frames.slice(off, off + BATCH));
    res.forEach((x, j) => {
      const input = frames[off + j];
      verdicts.set(x.retval, (verdicts.get(x.retval) ?? 0) + 1);
      if (x.retval === bpf.XDP_PASS && !x.data.equals(input)) passChanged++;
      if (x.retval !== bpf.XDP_TX && x.retval !== bpf.XDP_REDIRECT) return;
      const e = decap(x.data);
      const encapsulated = (e.outer4 && e.outer4.proto === 4) || (e.outer6 && e.outer6.nextHeader === 41);
      if (!encapsulated) {
        made.push({ input, output: x.data });
        return;
      }
      forwarded.push({ input, output: x.data });
      if (e.outer4 && (!e.outer4.checksumOk || e.outer4.totalLength !== x.data.length - 14 || e.outer4.src !== '192.0.2.2')) badOuter++;
      if (e.outer6 && (e.outer6.payloadLength !== x.data.length - 54 || L.addressText(e.outer6.src, 6) !== '2001:db8::2')) badOuter++;
      // the inner packet is the received IP packet, padding cut (service 4 has DNAT: to
      // the backend with port 9999 the UDP port and checksum change, nothing else)
      let off2 = 12;
      while (input.readUInt16BE(off2) === 0x8100 || input.readUInt16BE(off2) === 0x88a8) off2 += 4;
      const ip = input.subarray(off2 + 2, off2 + 2 + e.inner.length);
      const dnat = e.outer6 && L.addressText(e.outer6.dst, 6) === '2001:db8:200::3';
      if (!ip.equals(e.inner) && !(dnat && ip.length === e.inner.length && differingBytes(ip, e.inner) <= 4)) innerChanged++;
    });
  }
  const after = w.lb.reasons();
  t.same([...verdicts.keys()].filter((v) => ![bpf.XDP_PASS, bpf.XDP_TX, bpf.XDP_REDIRECT, bpf.XDP_DROP].includes(v)), [], 'no XDP_ABORTED, nothing undocumented');
  const byVerdict: Record<string, bigint> = {};
  let total = 0n;
  for (const x of REASONS) {
    const d = after[x.name] - before[x.name];
    byVerdict[x.verdict] = (byVerdict[x.verdict] ?? 0n) + d;
    total += d;
  }
  t.equal(total, BigInt(N), 'every packet counted under exactly one reason');
  for (const [v, name] of [[bpf.XDP_PASS, 'XDP_PASS'], [bpf.XDP_TX, 'XDP_TX'], [bpf.XDP_REDIRECT, 'XDP_REDIRECT'], [bpf.XDP_DROP, 'XDP_DROP']] as const) {
    t.equal(byVerdict[name] ?? 0n, BigInt(verdicts.get(v) ?? 0), `${name}: ${verdicts.get(v) ?? 0} packets, the reasons implying it agree`);
  }
  t.equal(passChanged, 0, 'every passed packet reaches the kernel unchanged');
  t.equal(badOuter, 0, `${forwarded.length} forwarded: every outer header valid`);
  t.equal(innerChanged, 0, 'every inner packet is the packet received');
  t.ok(forwarded.length > 10000, `${forwarded.length} forwarded, ${made.length} answered by the LB`);
  const counts = Object.fromEntries(REASONS.map((x) => [x.name, Number(after[x.name] - before[x.name])]).filter(([, n]) => n));
  t.ok(Object.keys(counts).length >= 15, `reasons seen: ${JSON.stringify(counts)}`);

  // tshark, both ways: whatever tshark finds wrong in a frame the LB sent, it
  // finds wrong in the frame the LB received (the client's bytes, carried as
  // they were): the LB adds no error of its own. LB-made ICMP errors quote a
  // cut TCP/UDP header whose checksum cannot verify: transport checksums are
  // not validated for those (IP and ICMP checksums are).
  const cols = ['_ws.malformed', '_ws.expert.severity', 'ip.checksum.status', 'icmp.checksum.status', 'icmpv6.checksum.status', 'frame.protocols'];
  const isBad = (row: string[]) => row[0] !== '' || row[1].split(',').some((x) => Number(x) >= 0x800000);
  let added = 0;
  let outerBad = 0;
  const examples: Buffer[] = [];
  for (const [set, name, checkL4] of [[forwarded, 'forwarded', true], [made, 'made', false]] as const) {
    const outRows = P.tsharkFields(scratch(t, `${name}-out.pcap`), set.map((x) => x.output), cols, checkL4);
    const inRows = P.tsharkFields(scratch(t, `${name}-in.pcap`), set.map((x) => x.input), cols, checkL4);
    t.equal(outRows.length, set.length, `tshark decoded every ${name} frame`);
    outRows.forEach((row, i) => {
      if (isBad(row) && !isBad(inRows[i])) {
        added++;
        if (examples.length < 3) examples.push(set[i].output);
      }
      if (set === forwarded) {
        const ipip = row[5].startsWith('eth:ethertype:ip:ip');
        const ip6ip6 = row[5].startsWith('eth:ethertype:ipv6:ipv6');
        if (!(ipip || ip6ip6) || (ipip && row[2].split(',')[0] !== '1')) {
          outerBad++;
          if (outerBad < 3) t.fail(`forwarded frame ${i + 1}: ${row.join(' | ')}`);
        }
      }
    });
  }
  t.equal(outerBad, 0, 'tshark: forwarded frames are Ethernet + IPIP (outer checksum good) or IP6IP6');
  t.equal(added, 0, added ? `tshark finds errors the input did not have:\n${P.tsharkVerbose(scratch(t, 'ex.pcap'), examples)}` : 'tshark: no error the LB added');
  t.end();
});
