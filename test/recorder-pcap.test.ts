// The recorder's capture files: our PCAP and pcapng bytes, field by field for
// known input, then whole files and streams of real frames read back by tshark
// (and capinfos) — lengths, nanosecond timestamps, capture points as
// interfaces, rule/backend comments. And the kernel clock conversion.
// Pure: no root, no network.
import t from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  CAPTURE_INTERFACES,
  EPB_FLAG_INBOUND,
  EPB_FLAG_OUTBOUND,
  KernelClock,
  PcapEncoder,
  packetComment,
  pcapHeader,
  pcapngInterface,
  pcapngOptions,
  pcapngPacket,
  pcapngSectionHeader,
  pcapRecord,
  snaplenFor,
  type CapturedPacket,
  type ClockSources,
} from '../src/recorder/pcap';
import { ether, ipv4, ipv6, rawL4, tcp, udp, TCP_ACK, TCP_PSH } from '../harness/packets';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-pcap-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

const hasCapinfos = spawnSync('capinfos', ['-h']).status === 0;

// ---- a small independent reader of what we wrote ----------------------------------

interface Block {
  type: number;
  body: Buffer;
}

/** Walks pcapng blocks, checking lengths (multiple of 4, trailing = leading) on the way. */
function pcapngBlocks(tt: tap.Test, file: Buffer): Block[] {
  const blocks: Block[] = [];
  let off = 0;
  while (off < file.length) {
    const type = file.readUInt32LE(off);
    const len = file.readUInt32LE(off + 4);
    tt.equal(len % 4, 0, `block at ${off}: length ${len} is a multiple of 4`);
    tt.ok(len >= 12 && off + len <= file.length, `block at ${off}: length ${len} inside the file`);
    tt.equal(file.readUInt32LE(off + len - 4), len, `block at ${off}: trailing length = leading length`);
    blocks.push({ type, body: file.subarray(off + 8, off + len - 4) });
    off += len;
  }
  tt.equal(off, file.length, 'blocks end exactly at the end');
  return blocks;
}

/** Options from `off` in a block body: code -> values; checks padding and opt_endofopt. */
function readOptions(tt: tap.Test, body: Buffer, off: number): Map<number, Buffer[]> {
  const opts = new Map<number, Buffer[]>();
  for (;;) {
    const code = body.readUInt16LE(off);
    const len = body.readUInt16LE(off + 2);
    if (code === 0) {
      tt.equal(len, 0, 'opt_endofopt has length 0');
      tt.equal(off + 4, body.length, 'opt_endofopt ends the block body');
      return opts;
    }
    const padded = (len + 3) & ~3;
    tt.ok(body.subarray(off + 4 + len, off + 4 + padded).every((x) => x === 0), `option ${code}: zero padding to 32 bits`);
    opts.set(code, [...(opts.get(code) ?? []), body.subarray(off + 4, off + 4 + len)]);
    off += 4 + padded;
  }
}

// ---- frames -------------------------------------------------------------------------

const SYN = ether(ipv4({ src: '192.0.2.1', dst: '203.0.113.10' }, tcp({ sport: 40000, dport: 80 })));
const BIG = ether(
  ipv4(
    { src: '192.0.2.2', dst: '203.0.113.10' },
    tcp({ sport: 40001, dport: 80, flags: TCP_ACK | TCP_PSH, payload: Buffer.alloc(1000, 0x61) }),
  ),
);
const V6 = ether(ipv6({ src: '2001:db8::1', dst: '2001:db8:100::10' }, udp({ sport: 5353, dport: 53, payload: Buffer.from('hello') })));
/** The SYN as the outbound point sees it: inside IPIP to the backend. */
const SYN_OUT = ether(ipv4({ src: '192.0.2.64', dst: '198.51.100.11' }, rawL4(4, SYN.subarray(14))), {
  src: '02:00:00:00:00:02',
  dst: '02:00:00:00:00:0b',
});

const T0 = 1_700_000_000_000_000_000n;
const SNAPLEN = 128;

/** in/out copies of a SYN, a long segment cut to the snaplen, an IPv6 datagram. */
const PACKETS: CapturedPacket[] = [
  { tsNs: T0 + 1n, data: SYN, point: 'in', comment: packetComment({ id: 3, name: 'web' }) },
  { tsNs: T0 + 2_500n, data: SYN_OUT, point: 'out', comment: packetComment({ id: 3, name: 'web' }, '198.51.100.11') },
  { tsNs: T0 + 123_456_789n, data: BIG, point: 'in', comment: packetComment({ id: 3, name: 'web' }) },
  { tsNs: T0 + 1_000_000_000n + 999_999_999n, data: V6, point: 'in', comment: packetComment({ id: 63 }) },
];

const epoch = (ns: bigint) => `${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, '0')}`;

function encode(format: 'pcap' | 'pcapng', packets = PACKETS): Buffer {
  const enc = new PcapEncoder({ format, snaplen: SNAPLEN });
  return Buffer.concat([enc.header(), ...packets.map((p) => enc.packet(p))]);
}

const FIELDS = ['frame.len', 'frame.cap_len', 'frame.time_epoch', 'ip.src', 'ipv6.src', 'frame.comment', 'frame.interface_name', 'frame.packet_flags_direction'];

function tsharkRows(args: string[], input?: Buffer): string[][] {
  const a = [...args, '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=f'];
  for (const f of FIELDS) a.push('-e', f);
  const r = spawnSync('tshark', a, { input, encoding: 'buffer', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`tshark ${a.join(' ')} failed: ${r.stderr.toString()}`);
  return r.stdout
    .toString('utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.split('|'));
}

// ---- classic PCAP, byte by byte ------------------------------------------------------

t.test('the PCAP file header: nanosecond magic, version 2.4, snaplen, Ethernet', async (t) => {
  const h = pcapHeader(128);
  t.equal(h.length, 24);
  t.same([...h.subarray(0, 4)], [0x4d, 0x3c, 0xb2, 0xa1], 'magic a1b23c4d little-endian');
  t.equal(h.readUInt16LE(4), 2, 'major');
  t.equal(h.readUInt16LE(6), 4, 'minor');
  t.equal(h.readUInt32LE(8), 0, 'reserved 1');
  t.equal(h.readUInt32LE(12), 0, 'reserved 2');
  t.equal(h.readUInt32LE(16), 128, 'snaplen');
  t.equal(h.readUInt32LE(20), 1, 'LINKTYPE_ETHERNET');
  t.equal(h.toString('hex'), '4d3cb2a1' + '02000400' + '00000000' + '00000000' + '80000000' + '01000000');
  t.throws(() => pcapHeader(0), /snaplen/);
  t.throws(() => pcapHeader(262145), /snaplen/);
  t.throws(() => pcapHeader(1.5), /snaplen/);
});

t.test('a PCAP record: seconds, nanoseconds, captured and original length, the bytes', async (t) => {
  const data = Buffer.from('00112233445566', 'hex');
  const r = pcapRecord(1_700_000_000_123_456_789n, data, 60);
  t.equal(r.length, 16 + 7, 'no padding in classic PCAP');
  t.equal(r.readUInt32LE(0), 1_700_000_000, 'seconds');
  t.equal(r.readUInt32LE(4), 123_456_789, 'nanoseconds');
  t.equal(r.readUInt32LE(8), 7, 'captured length');
  t.equal(r.readUInt32LE(12), 60, 'original length');
  t.equal(r.subarray(16).toString('hex'), '00112233445566');
  t.equal(r.toString('hex'), '00f15365' + '15cd5b07' + '07000000' + '3c000000' + '00112233445566');
  t.equal(pcapRecord(0n, data).readUInt32LE(12), 7, 'original length defaults to the captured length');
  t.equal(pcapRecord(4_294_967_295_999_999_999n, data).readUInt32LE(0), 0xffffffff, 'the last second PCAP holds');
  t.throws(() => pcapRecord(4_294_967_296_000_000_000n, data), /2106/, 'past 2106');
  t.throws(() => pcapRecord(-1n, data), /epoch/);
  t.throws(() => pcapRecord(0n, data, 6), /original length/, 'original shorter than captured');
});

// ---- pcapng, block by block ----------------------------------------------------------

t.test('the pcapng section header block', async (t) => {
  const b = pcapngSectionHeader();
  const [shb] = pcapngBlocks(t, b);
  t.equal(shb.type, 0x0a0d0d0a);
  t.equal(b.length, 12 + 16 + 12 + 4, 'type, length, fixed part, shb_userappl "xdplb" padded to 8, endofopt, length');
  t.equal(shb.body.readUInt32LE(0), 0x1a2b3c4d, 'byte-order magic');
  t.equal(shb.body.readUInt16LE(4), 1, 'major 1');
  t.equal(shb.body.readUInt16LE(6), 0, 'minor 0');
  t.equal(shb.body.readBigInt64LE(8), -1n, 'section length unspecified');
  const opts = readOptions(t, shb.body, 16);
  t.equal(opts.get(4)?.[0].toString(), 'xdplb', 'shb_userappl');
});

t.test('an interface description block per capture point: name, tsresol 9, snaplen', async (t) => {
  for (const point of ['in', 'out'] as const) {
    const b = pcapngInterface({ name: CAPTURE_INTERFACES[point].name, snaplen: 128 });
    const [idb] = pcapngBlocks(t, b);
    t.equal(idb.type, 1);
    t.equal(idb.body.readUInt16LE(0), 1, 'link type Ethernet');
    t.equal(idb.body.readUInt16LE(2), 0, 'reserved');
    t.equal(idb.body.readUInt32LE(4), 128, 'snaplen');
    const opts = readOptions(t, idb.body, 8);
    t.equal(opts.get(2)?.[0].toString(), `xdplb-${point}`, 'if_name');
    t.same([...(opts.get(9)?.[0] ?? [])], [9], 'if_tsresol = 9: nanoseconds');
    // "xdplb-in" is 8 bytes (no padding), "xdplb-out" 9 (3 bytes of padding)
    t.equal(b.length, 12 + 8 + (4 + (point === 'in' ? 8 : 12)) + (4 + 4) + 4);
  }
});

t.test('an enhanced packet block: interface, 64-bit ns timestamp, lengths, padded data, comment, direction', async (t) => {
  const data = Buffer.alloc(61, 0xab); // 61: 3 bytes of padding
  const ts = 1_700_000_000_123_456_789n;
  const b = pcapngPacket({ interfaceId: 1, tsNs: ts, data, origLen: 1514, flags: EPB_FLAG_OUTBOUND, comment: 'rule 3 web; backend 198.51.100.11' });
  const [epb] = pcapngBlocks(t, b);
  t.equal(epb.type, 6);
  t.equal(epb.body.readUInt32LE(0), 1, 'interface id');
  t.equal((BigInt(epb.body.readUInt32LE(4)) << 32n) | BigInt(epb.body.readUInt32LE(8)), ts, 'timestamp high/low in ns');
  t.equal(epb.body.readUInt32LE(12), 61, 'captured length');
  t.equal(epb.body.readUInt32LE(16), 1514, 'original length');
  t.ok(epb.body.subarray(20, 81).equals(data), 'data');
  t.same([...epb.body.subarray(81, 84)], [0, 0, 0], 'data padded to 32 bits with zeros');
  const opts = readOptions(t, epb.body, 84);
  t.equal(opts.get(2)?.[0].readUInt32LE(0), EPB_FLAG_OUTBOUND, 'epb_flags: outbound');
  t.equal(opts.get(1)?.[0].toString(), 'rule 3 web; backend 198.51.100.11', 'opt_comment');
  t.equal(b.length, 12 + 20 + 64 + (4 + 4) + (4 + 36) + 4);
  // no options at all: no opt_endofopt either
  const bare = pcapngPacket({ interfaceId: 0, tsNs: 0n, data: Buffer.alloc(4) });
  t.equal(bare.length, 12 + 20 + 4, 'a packet block without options');
  t.equal(pcapngOptions([]).length, 0);
});

t.test('the encoder cuts to the snaplen, keeps the original length, maps points to interfaces', async (t) => {
  const pcap = new PcapEncoder({ format: 'pcap', snaplen: SNAPLEN });
  const r = pcap.packet({ tsNs: T0, data: BIG, point: 'in' });
  t.equal(r.readUInt32LE(8), SNAPLEN, 'captured = snaplen');
  t.equal(r.readUInt32LE(12), BIG.length, 'original = the frame');
  t.equal(r.length, 16 + SNAPLEN);
  t.equal(pcap.extension, '.pcap');

  const ng = new PcapEncoder({ format: 'pcapng', snaplen: SNAPLEN });
  const blocks = pcapngBlocks(t, ng.header());
  t.same(blocks.map((b) => b.type), [0x0a0d0d0a, 1, 1], 'section, then interfaces in and out');
  const out = pcapngBlocks(t, ng.packet({ tsNs: T0, data: SYN_OUT, point: 'out' }))[0];
  t.equal(out.body.readUInt32LE(0), CAPTURE_INTERFACES.out.id, 'out: interface 1');
  const inn = pcapngBlocks(t, ng.packet({ tsNs: T0, data: SYN, point: 'in' }))[0];
  t.equal(inn.body.readUInt32LE(0), CAPTURE_INTERFACES.in.id, 'in: interface 0');
  t.equal(readOptions(t, inn.body, 20 + ((SYN.length + 3) & ~3)).get(2)?.[0].readUInt32LE(0), EPB_FLAG_INBOUND);
  t.equal(ng.extension, '.pcapng');

  t.throws(() => new PcapEncoder({ format: 'pcapx' as 'pcap', snaplen: 100 }), /format/);
  t.throws(() => pcap.packet({ tsNs: T0, data: SYN, origLen: 10, point: 'in' }), /original length/);
  t.throws(() => ng.packet({ tsNs: T0, data: SYN, point: 'sideways' as 'in' }), /capture point/);
  t.equal(packetComment({ id: 3, name: 'web' }, '198.51.100.11'), 'rule 3 web; backend 198.51.100.11');
  t.equal(packetComment({ id: 7 }), 'rule 7');
  t.equal(snaplenFor(0), 262144, 'cap length 0: whole frames, the largest snaplen');
  t.equal(snaplenFor(128), 128);
  t.throws(() => snaplenFor(-1), /snaplen/);

  // a comment that is longer in UTF-8 bytes than in characters
  const wide = pcapngBlocks(t, ng.packet({ tsNs: T0, data: SYN, point: 'in', comment: 'rule 1 wéb→' }))[0];
  const opts = readOptions(t, wide.body, 20 + ((SYN.length + 3) & ~3));
  t.equal(opts.get(1)?.[0].toString('utf8'), 'rule 1 wéb→', 'UTF-8 comment, length in bytes');
});

// ---- read back by tshark and capinfos ------------------------------------------------

t.test('tshark reads our PCAP file: lengths, nanosecond times, addresses', async (t) => {
  const file = path.join(tmp, 'four.pcap');
  fs.writeFileSync(file, encode('pcap'));
  const rows = tsharkRows(['-r', file]);
  t.equal(rows.length, PACKETS.length, 'every packet');
  PACKETS.forEach((p, i) => {
    const [len, capLen, time, ipSrc, ip6Src, comment, iface] = rows[i];
    t.equal(Number(len), p.data.length, `#${i} frame.len`);
    t.equal(Number(capLen), Math.min(SNAPLEN, p.data.length), `#${i} frame.cap_len`);
    t.equal(time, epoch(p.tsNs), `#${i} frame.time_epoch to the nanosecond`);
    t.equal(ipSrc || ip6Src, ['192.0.2.1', '192.0.2.64', '192.0.2.2', '2001:db8::1'][i], `#${i} source address`);
    t.equal(comment, '', `#${i} PCAP has no comments`);
    t.equal(iface, '', `#${i} PCAP has no interfaces`);
  });
  t.equal(Number(rows[2][0]), 1054, 'the long segment: 1054 bytes on the wire');
  t.equal(Number(rows[2][1]), 128, '... 128 captured');
});

t.test('tshark reads our pcapng file: interfaces per capture point, comments, direction', async (t) => {
  const file = path.join(tmp, 'four.pcapng');
  fs.writeFileSync(file, encode('pcapng'));
  const rows = tsharkRows(['-r', file]);
  t.equal(rows.length, PACKETS.length, 'every packet');
  PACKETS.forEach((p, i) => {
    const [len, capLen, time, ipSrc, ip6Src, comment, iface, direction] = rows[i];
    t.equal(Number(len), p.data.length, `#${i} frame.len`);
    t.equal(Number(capLen), Math.min(SNAPLEN, p.data.length), `#${i} frame.cap_len`);
    t.equal(time, epoch(p.tsNs), `#${i} frame.time_epoch to the nanosecond`);
    t.equal(ipSrc || ip6Src, ['192.0.2.1', '192.0.2.64', '192.0.2.2', '2001:db8::1'][i], `#${i} source address`);
    t.equal(comment, p.comment, `#${i} frame.comment names rule and backend`);
    t.equal(iface, `xdplb-${p.point}`, `#${i} frame.interface_name`);
    t.equal(Number(direction), p.point === 'in' ? 1 : 2, `#${i} direction`);
  });
  // the outbound copy decodes as IPIP around the original SYN
  const inner = execFileSync('tshark', ['-r', file, '-Y', 'frame.number == 2', '-T', 'fields', '-e', 'ip.src', '-e', 'ip.dst', '-e', 'tcp.dstport', '-E', 'occurrence=a', '-E', 'aggregator=,'], {
    encoding: 'utf8',
  }).trim();
  t.equal(inner, '192.0.2.64,192.0.2.1\t198.51.100.11,203.0.113.10\t80', 'outer and inner headers');
});

t.test('capinfos agrees: formats, encapsulation, nanosecond precision, counts, snaplen, interfaces', { skip: !hasCapinfos && 'capinfos not installed' }, async (t) => {
  for (const format of ['pcap', 'pcapng'] as const) {
    const file = path.join(tmp, `caps.${format}`);
    fs.writeFileSync(file, encode(format));
    const out = execFileSync('capinfos', ['-M', file], { encoding: 'utf8' });
    const field = (name: string) => new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(out)?.[1].trim();
    t.equal(field('File type'), format === 'pcap' ? 'nsecpcap' : 'pcapng', `${format}: file type`);
    t.equal(field('File encapsulation'), 'ether', `${format}: Ethernet`);
    t.equal(field('File timestamp precision'), 'nanoseconds (9)', `${format}: nanoseconds`);
    t.equal(field('Number of packets'), '4', `${format}: packet count`);
    t.equal(field('Packet size limit'), format === 'pcap' ? 'file hdr: 128 bytes' : 'file hdr: (not set)', `${format}: snaplen in the file header`);
    t.match(out, /Packet size limit:\s+inferred: 128 bytes/, `${format}: no record longer than the snaplen`);
    t.equal(field('Data size'), `${PACKETS.reduce((s, p) => s + p.data.length, 0)} bytes`, `${format}: data size (original lengths)`);
    t.equal(field('File size'), `${encode(format).length} bytes`, `${format}: file size`);
    t.equal(field('Strict time order'), 'True', `${format}: time order`);
    if (format === 'pcapng') {
      t.equal(field('Capture application'), 'xdplb', 'shb_userappl');
      t.match(out, /Number of interfaces in file: 2/, 'two interfaces');
      const ifaces = [...out.matchAll(/Name = (\S+)[\s\S]*?Capture length = (\d+)[\s\S]*?Time precision = ([^\n]+)[\s\S]*?Number of packets = (\d+)/g)].map((m) => m.slice(1));
      t.same(ifaces, [
        ['xdplb-in', '128', 'nanoseconds (9)', '3'],
        ['xdplb-out', '128', 'nanoseconds (9)', '1'],
      ], 'per interface: name, snaplen, precision, packets');
    }
  }
});

/**
 * Feeds chunks to `tshark -r -` through a real pipe (Node's own stdio pipes are
 * sockets, which tshark refuses), one at a time; resolves with tshark's rows.
 * `waitFirst`: after the first two chunks (header + one packet), wait until
 * tshark has printed that packet before sending the rest — the stream is live.
 */
function tsharkStream(chunks: Buffer[], waitFirst: boolean): Promise<{ rows: string[][]; liveMs?: number }> {
  const args = ['-l', '-r', '-', '-T', 'fields', '-E', 'separator=|', '-E', 'occurrence=f'];
  for (const f of FIELDS) args.push('-e', f);
  const child = spawn('sh', ['-c', 'cat | exec tshark "$@"', 'sh', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let liveMs: number | undefined;
  const sent = Date.now();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`tshark stream timed out; stderr: ${err}`));
    }, 20_000);
    let rest = chunks;
    const sendRest = () => {
      for (const c of rest) child.stdin.write(c);
      child.stdin.end();
      rest = [];
    };
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      if (waitFirst && liveMs === undefined && out.includes('\n')) {
        liveMs = Date.now() - sent;
        sendRest();
      }
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`tshark exited ${code}: ${err}`));
      resolve({ rows: out.split('\n').filter((l) => l.length > 0).map((l) => l.split('|')), liveMs });
    });
    if (waitFirst) {
      child.stdin.write(chunks[0]);
      child.stdin.write(chunks[1]);
      rest = chunks.slice(2);
    } else sendRest();
  });
}

t.test('a stream (header, then records as they come) through tshark -r - on stdin, live', async (t) => {
  for (const format of ['pcap', 'pcapng'] as const) {
    const enc = new PcapEncoder({ format, snaplen: SNAPLEN });
    const chunks = [enc.header()];
    for (let i = 0; i < 200; i++) {
      const p = PACKETS[i % PACKETS.length];
      chunks.push(enc.packet({ ...p, tsNs: T0 + BigInt(i) * 1_000_003n }));
    }
    const { rows, liveMs } = await tsharkStream(chunks, true);
    t.equal(rows.length, 200, `${format}: 200 packets from stdin`);
    t.ok(liveMs !== undefined, `${format}: the first packet was decoded before the rest was sent (${liveMs} ms)`);
    t.equal(rows[0][2], epoch(T0), `${format}: the first time to the ns`);
    t.equal(rows[199][2], epoch(T0 + 199n * 1_000_003n), `${format}: the last time to the ns`);
    t.equal(rows[6][1], '128', `${format}: the cut packet in the stream`);
    t.equal(rows[6][0], '1054', `${format}: ... with its original length`);
    if (format === 'pcapng') t.equal(rows[5][6], 'xdplb-out', 'pcapng: interfaces in the stream');
  }
});

t.test('a file cut between two records (Ctrl-C) is still valid', async (t) => {
  const enc = new PcapEncoder({ format: 'pcapng', snaplen: SNAPLEN });
  const file = path.join(tmp, 'cut.pcapng');
  fs.writeFileSync(file, Buffer.concat([enc.header(), enc.packet(PACKETS[0]), enc.packet(PACKETS[1])]));
  t.equal(tsharkRows(['-r', file]).length, 2);
});

// ---- the kernel clock ----------------------------------------------------------------

/** A fake CLOCK_MONOTONIC / wall clock pair: wall = mono + OFFSET, each read advances time by `step` ns, some reads by a lot. */
function fakeClocks(offsetNs: bigint, steps: (n: number) => bigint): ClockSources & { reads: number } {
  let now = 5_000_000_000n;
  const c = {
    reads: 0,
    monotonicNs: () => {
      now += steps(c.reads++);
      return now;
    },
    wallMs: () => {
      now += steps(c.reads++);
      return Number((now + offsetNs) / 1_000_000n);
    },
  };
  return c;
}

t.test('the kernel clock keeps the offset measured in the tightest bracket', async (t) => {
  const OFFSET = 1_700_000_000_000_000_000n + 123_456n;
  // most reads take 50 ns; now and then (1 in 1000, seeded) one is preempted
  // for 30 µs: about a third of the time goes to preemptions, so a third of
  // the millisecond edges fall into one and give a wide bracket
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const clocks = fakeClocks(OFFSET, () => (rand() < 0.001 ? 30_000n : 50n));
  const singles = Array.from({ length: 12 }, () => KernelClock.calibrate({ clocks, samples: 1 }));
  t.ok(singles.some((s) => s.errorNs > 10_000n), `some single samples are wide (${singles.map((s) => s.errorNs).join(', ')} ns)`);
  for (const s of singles) {
    const e = s.offsetNs - OFFSET;
    t.ok(e >= -s.errorNs && e <= s.errorNs, `a bracket bounds its own error (${e} within ±${s.errorNs} ns)`);
  }
  const k = KernelClock.calibrate({ clocks, samples: 8 });
  const err = k.offsetNs - OFFSET;
  t.ok(err >= -k.errorNs && err <= k.errorNs, `offset within its error bound (off by ${err} ns, bound ${k.errorNs} ns)`);
  t.ok(k.errorNs <= 150n, `the tight bracket wins: ±${k.errorNs} ns`);
  t.equal(k.toWallNs(1_000n), 1_000n + k.offsetNs);

  // a wall clock that never ticks: the plain reading, ±1 ms
  let mono = 0n;
  const frozen = KernelClock.calibrate({ clocks: { monotonicNs: () => (mono += 1_000n), wallMs: () => 1_700_000_000_000 }, samples: 2 });
  t.ok(frozen.errorNs >= 500_000n, 'a frozen wall clock is reported as ±0.5 ms or worse');
  t.throws(() => KernelClock.calibrate({ samples: 0 }), /samples/);
});

t.test('on this machine: CLOCK_MONOTONIC to wall time, both sources', async (t) => {
  const started = process.hrtime.bigint();
  const k = KernelClock.calibrate();
  const calibMs = Number(process.hrtime.bigint() - started) / 1e6;
  const p = KernelClock.calibrate({ source: 'performance' });
  const wallNow = BigInt(Date.now()) * 1_000_000n;
  const converted = k.toWallNs(process.hrtime.bigint());
  const diffMs = Number(converted - wallNow) / 1e6;
  t.ok(Math.abs(diffMs) < 2, `converted now is within 2 ms of Date.now() (${diffMs.toFixed(3)} ms)`);
  t.ok(k.errorNs < 1_000_000n, `date-edge bracket ±${k.errorNs} ns`);
  const agreeUs = Number(k.offsetNs - p.offsetNs) / 1e3;
  t.ok(Math.abs(agreeUs) < 2000, `date-edge and performance offsets agree within 2 ms (${agreeUs.toFixed(1)} µs)`);
  t.comment(`calibration: ${calibMs.toFixed(2)} ms; date-edge ±${k.errorNs} ns; performance ±${p.errorNs} ns; the two differ by ${agreeUs.toFixed(1)} µs`);
});
