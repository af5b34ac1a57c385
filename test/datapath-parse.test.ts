// The IPv4 TCP fast parse path (parse_fast_v4_tcp in xdp/parse.h) fills
// struct packet exactly as the general path does, or declines and writes
// nothing: both run on the same random frames (test/bpf/parse_test.bpf.c),
// and their structs are compared field by field, the fields read through
// the object's BTF. Frames the fast path takes are also checked against
// their own bytes, so both paths cannot be wrong alike.
import t from 'tap';
import * as bpf from '../src/datapath/bpf';
import { Btf, type BtfField } from '../harness/btf';
import { needsRoot, pinDir } from '../harness/fixtures';
import * as P from '../harness/packets';
import { seededRandom } from '../harness/random';

const OBJ = bpf.testObjectPath('parse_test');
const XDPLB_CONTINUE = -1;
const FRAMES = 3000;
const SEED = 0x70617273;

interface Made {
  frame: Buffer;
  /** what the frame is, for a failure message */
  what: string;
}

/** A random frame around the fast path's edges: mostly IPv4 TCP, with and without options, VLAN tags, padding, broken lengths, cut short. */
function randomFrame(rnd: () => number): Made {
  const int = (n: number) => Math.floor(rnd() * n);
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  const chance = (p: number) => rnd() < p;
  const v4 = () => `${['192.0.2', '198.51.100', '203.0.113'][int(3)]}.${int(256)}`;
  const v6 = () => `2001:db8:${int(0x10000).toString(16)}::${int(0x10000).toString(16)}`;
  const kind = int(20);
  const tags = chance(0.15) ? (chance(0.2) ? [1 + int(4094), 1 + int(4094)] : [1 + int(4094)]) : [];
  const what: string[] = [];
  let ip: Buffer;
  if (kind < 15) {
    const l4 = P.tcp({ sport: int(0x10000), dport: int(0x10000), seq: int(2 ** 32), ack: int(2 ** 32), flags: int(256), options: chance(0.3) ? bytes(1 + int(40)) : undefined, payload: bytes(chance(0.5) ? int(64) : 0) });
    ip = P.ipv4({ src: v4(), dst: v4(), ttl: int(256), tos: int(256), id: int(0x10000), df: chance(0.7), mf: chance(0.05), fragOffset: chance(0.05) ? int(0x2000) : 0, options: chance(0.2) ? bytes(1 + int(40)) : undefined }, l4);
    what.push('ipv4 tcp');
  } else if (kind < 17) {
    ip = P.ipv4({ src: v4(), dst: v4(), tos: int(256), df: chance(0.5) }, chance(0.5) ? P.udp({ sport: int(0x10000), dport: int(0x10000), payload: bytes(int(32)) }) : P.echoRequest({ id: int(0x10000), seq: int(0x10000) }));
    what.push('ipv4 udp/icmp');
  } else {
    ip = P.ipv6({ src: v6(), dst: v6(), tclass: int(256), flowLabel: int(0x100000) }, P.tcp({ sport: int(0x10000), dport: int(0x10000), flags: int(256) }));
    what.push('ipv6 tcp');
  }
  let frame = P.ether(ip, { vlans: tags });
  const l3 = 14 + 4 * tags.length;
  if (tags.length) what.push(`${tags.length} vlan`);
  if (kind < 17) {
    const l4 = l3 + (frame[l3] & 0x0f) * 4;
    if (chance(0.08)) {
      frame.writeUInt16BE(int(frame.length - l3 + 24), l3 + 2);
      what.push('total length changed');
    }
    if (kind < 15 && chance(0.08) && l4 + 13 <= frame.length) {
      frame[l4 + 12] = (int(16) << 4) | (frame[l4 + 12] & 0x0f);
      what.push('doff changed');
    }
    if (chance(0.03)) {
      frame[l3] = int(256);
      what.push('version/ihl changed');
    }
  }
  if (chance(0.1)) {
    frame = Buffer.concat([frame, bytes(1 + int(30))]);
    what.push('padding');
  }
  if (chance(0.08)) {
    frame = frame.subarray(0, 14 + int(frame.length - 13));
    what.push('cut');
  }
  return { frame, what: what.join(', ') };
}

/** What the fast path must make of a frame it takes, from the frame's own bytes. */
function expected(frame: Buffer): Record<string, bigint> {
  const ip = frame.subarray(14);
  const th = ip.subarray(20);
  // a field's bytes as read() reads them from the struct (little-endian)
  const asRead = (b: Buffer) => BigInt(`0x${Buffer.from(b).reverse().toString('hex')}`);
  return {
    'flow.src': asRead(Buffer.concat([ip.subarray(12, 16), Buffer.alloc(12)])),
    'flow.dst': asRead(Buffer.concat([ip.subarray(16, 20), Buffer.alloc(12)])),
    'flow.sport': asRead(th.subarray(0, 2)),
    'flow.dport': asRead(th.subarray(2, 4)),
    'flow.proto': 6n,
    'flow.family': 4n,
    l3_off: 14n,
    l4_off: 34n,
    ip_len: BigInt(ip.readUInt16BE(2)),
    ip_id: asRead(ip.subarray(4, 6)),
    l2_len: 14n,
    kind: 0n,
    l4_proto: 6n,
    tos: BigInt(ip[1]),
    df: BigInt((ip.readUInt16BE(6) >> 14) & 1),
    tcp_flags: BigInt(th[13]),
  };
}

function read(b: Buffer, base: number, f: BtfField): bigint {
  return BigInt(`0x${Buffer.from(b.subarray(base + f.offset, base + f.offset + f.size)).reverse().toString('hex')}`);
}

t.test('the IPv4 TCP fast path fills struct packet as the general path does, or writes nothing', needsRoot, (t) => {
  const btf = new Btf(OBJ);
  const result = Object.fromEntries(btf.fields('parse_result').map((f) => [f.name, f]));
  const fields = btf.fields('packet');
  const fastBase = result['fast_pkt.flow.src'].offset;
  const generalBase = result['general_pkt.flow.src'].offset;
  const obj = bpf.openObject(OBJ, { pinRoot: pinDir(t) });
  t.teardown(() => obj.close());
  const prog = obj.program('parse_both');
  const map = obj.map('parse_results');
  const zero = Buffer.alloc(4);
  const rnd = seededRandom(SEED);
  const problems: string[] = [];
  let taken = 0;
  let declinedParsed = 0;
  let rejected = 0;
  for (let i = 0; i < FRAMES && problems.length < 10; i++) {
    const { frame, what } = randomFrame(rnd);
    const where = `frame ${i} (seed ${SEED}; ${what}) ${frame.toString('hex')}`;
    const retval = prog.testRun({ data: frame }).retval;
    if (retval !== bpf.XDP_PASS) problems.push(`${where}: the test program returned ${retval}`);
    const v = map.lookup(zero)!;
    const fast = v.readInt32LE(result.fast.offset);
    const general = v.readInt32LE(result.general.offset);
    if (fast === 1) {
      taken++;
      if (general !== XDPLB_CONTINUE) problems.push(`${where}: fast path took it, general path says reason ${general}`);
      const want = expected(frame);
      for (const f of fields) {
        const a = read(v, fastBase, f);
        const g = read(v, generalBase, f);
        if (a !== g) problems.push(`${where}: ${f.name} fast ${a} general ${g}`);
        if (f.name in want && a !== want[f.name]) problems.push(`${where}: ${f.name} fast ${a}, the frame says ${want[f.name]}`);
      }
    } else {
      if (fast !== 0) problems.push(`${where}: fast path returned ${fast}`);
      if (general === XDPLB_CONTINUE) declinedParsed++;
      else rejected++;
      for (const f of fields) {
        const a = read(v, fastBase, f);
        if (a !== (f.name === 'frame_len' ? BigInt(frame.length) : 0n)) problems.push(`${where}: the declining fast path wrote ${f.name} = ${a}`);
      }
    }
  }
  t.same(problems, [], 'no frame where the paths differ');
  t.ok(taken > FRAMES / 3, `the fast path took ${taken} of ${FRAMES} frames`);
  t.ok(declinedParsed > FRAMES / 10, `it declined ${declinedParsed} frames the general path parsed`);
  t.ok(rejected > FRAMES / 20, `and ${rejected} frames the general path refused`);
  t.end();
});
