// Recorder filters: the CLI text and the API message become the same filter;
// bad input is refused with one line naming the filter and the key; filters
// compile into a few masks and a hash of masked keys, and looking a packet up
// the way the datapath will (per mask: tuple AND mask, with the mask's index in
// the key) finds exactly the rules the plain reading of the filters finds.
// Pure: no root.
import t from 'tap';
import * as path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import { XdplbError } from '../src/control/errors';
import { encodeRecEntry, REC_MAX_MASKS } from '../src/datapath/layout';
import {
  compileFilters,
  decodeTuple,
  diffCompiled,
  entryKey,
  encodeTuple,
  filterFromMessage,
  formatFilter,
  matchCompiled,
  matches,
  parseFilter,
  ruleIdsOf,
  shapeOf,
  tupleOf,
  type Filter,
  type RuleFilters,
  type CompiledFilters,
  type Tuple,
} from '../src/recorder/filter';
import { seededRandom } from '../harness/random';

const ROOT = path.resolve(__dirname, '..', '..');

/** The error parseFilter throws for `text`, as code and message. */
function refusal(text: string): [string, string] {
  try {
    parseFilter(text);
  } catch (e) {
    if (e instanceof XdplbError) return [e.code, e.message];
    throw e;
  }
  throw new Error(`filter ${JSON.stringify(text)} was accepted`);
}

const v4 = (src: string, dst: string, sport: number, dport: number, proto = 6) => tupleOf({ src, dst, sport, dport, proto });

// ---- parsing ------------------------------------------------------------------------

t.test('a filter reads as its keys say, and prints back the same', async (t) => {
  const f = parseFilter('src=10.0.0.0/8 dst=192.0.2.10/32 sport=1234 dport=80 proto=tcp');
  t.equal(f.family, 4);
  t.same([...f.src!.bytes.subarray(0, 4)], [10, 0, 0, 0]);
  t.equal(f.src!.len, 8);
  t.equal(f.dst!.len, 32);
  t.equal(f.sport, 1234);
  t.equal(f.dport, 80);
  t.equal(f.proto, 6);
  t.equal(formatFilter(f), 'src=10.0.0.0/8 dst=192.0.2.10/32 sport=1234 dport=80 proto=tcp');

  const cases: Array<[string, string]> = [
    ['dst=192.0.2.10', 'dst=192.0.2.10/32'], // a bare address is a /32
    ['src=2001:DB8:0::1', 'src=2001:db8::1/128'], // ... or a /128, canonical text
    ['  src=2001:db8::/32   dport=443  ', 'src=2001:db8::/32 dport=443'],
    ['proto=any dport=53', 'dport=53'],
    ['proto=UDP', 'proto=udp'],
    ['proto=132', 'proto=132'],
    ['proto=icmpv6 dst=2001:db8:100::10', 'dst=2001:db8:100::10/128 proto=icmpv6'],
    ['sport=0 dport=65535', 'sport=0 dport=65535'],
    ['src=0.0.0.0/0', 'src=0.0.0.0/0'],
    ['src=::/0', 'src=::/0'],
    ['', ''],
  ];
  for (const [text, canonical] of cases) {
    const g = parseFilter(text);
    t.equal(formatFilter(g), canonical, JSON.stringify(text));
    t.same(parseFilter(formatFilter(g)), g, `${JSON.stringify(text)}: its text reads back the same`);
  }
  t.equal(parseFilter('src=0.0.0.0/0').family, 4, 'a /0 still names the family');
  t.equal(parseFilter('dport=53').family, undefined, 'no prefix: either family');
});

t.test('bad filters are refused with one line naming the filter and the key', async (t) => {
  const cases: Array<[string, string]> = [
    ['src=10.0.0.300/8', 'filter "src=10.0.0.300/8": src: not an IPv4/IPv6 prefix'],
    ['dst=10.0.0.0/33', 'filter "dst=10.0.0.0/33": dst: prefix length 33 > 32'],
    ['src=2001:db8::/129', 'filter "src=2001:db8::/129": src: prefix length 129 > 128'],
    ['src=10.0.0.0/x', 'filter "src=10.0.0.0/x": src: not an IPv4/IPv6 prefix'],
    ['src=10.0.0.0/', 'filter "src=10.0.0.0/": src: not an IPv4/IPv6 prefix'],
    ['src=10.0.0.0/-1', 'filter "src=10.0.0.0/-1": src: not an IPv4/IPv6 prefix'],
    ['src=', 'filter "src=": src: not an IPv4/IPv6 prefix'],
    ['src=example.com', 'filter "src=example.com": src: not an IPv4/IPv6 prefix'],
    ['src=fe80::1%eth0', 'filter "src=fe80::1%eth0": src: not an IPv4/IPv6 prefix'],
    ['src=::ffff:10.0.0.1', 'filter "src=::ffff:10.0.0.1": src: not an IPv4/IPv6 prefix'],
    ['src=10.1.2.3/8', 'filter "src=10.1.2.3/8": src: 10.1.2.3/8 has host bits set; write 10.0.0.0/8'],
    ['dst=2001:db8::1/32', 'filter "dst=2001:db8::1/32": dst: 2001:db8::1/32 has host bits set; write 2001:db8::/32'],
    ['sport=65536', 'filter "sport=65536": sport: not a port number (0..65535)'],
    ['dport=-1', 'filter "dport=-1": dport: not a port number (0..65535)'],
    ['dport=http', 'filter "dport=http": dport: not a port number (0..65535)'],
    ['dport=80.5', 'filter "dport=80.5": dport: not a port number (0..65535)'],
    ['dport=', 'filter "dport=": dport: not a port number (0..65535)'],
    ['proto=sctpx', 'filter "proto=sctpx": proto: not a protocol (tcp, udp, icmp, icmpv6, any or 0..255)'],
    ['proto=256', 'filter "proto=256": proto: not a protocol (tcp, udp, icmp, icmpv6, any or 0..255)'],
    ['port=80', 'filter "port=80": port: unknown key (keys: src, dst, sport, dport, proto)'],
    ['dport=80 host=10.0.0.1', 'filter "dport=80 host=10.0.0.1": host: unknown key (keys: src, dst, sport, dport, proto)'],
    ['tcp', 'filter "tcp": tcp: not key=value (keys: src, dst, sport, dport, proto)'],
    ['=80', 'filter "=80": =80: not key=value (keys: src, dst, sport, dport, proto)'],
    ['dport=80 dport=443', 'filter "dport=80 dport=443": dport: given twice'],
    ['src=10.0.0.0/8 dst=2001:db8::/32', 'filter "src=10.0.0.0/8 dst=2001:db8::/32": dst: an IPv6 prefix with an IPv4 src; both must be of one family'],
    ['src=2001:db8::/32 dst=192.0.2.10', 'filter "src=2001:db8::/32 dst=192.0.2.10": dst: an IPv4 prefix with an IPv6 src; both must be of one family'],
    ['proto=icmp dport=80', 'filter "proto=icmp dport=80": dport: proto icmp has no ports'],
    ['sport=1 proto=47', 'filter "sport=1 proto=47": sport: proto 47 has no ports'],
    ['proto=icmp dst=2001:db8::1', 'filter "proto=icmp dst=2001:db8::1": proto icmp with IPv6 prefixes; use icmpv6'],
    ['proto=icmpv6 src=10.0.0.0/8', 'filter "proto=icmpv6 src=10.0.0.0/8": proto icmpv6 with IPv4 prefixes; use icmp'],
  ];
  for (const [text, message] of cases) t.same(refusal(text), ['INVALID_ARGUMENT', message], JSON.stringify(text));
  t.throws(() => parseFilter('dport=x', 'filters[2]'), { message: 'filters[2]: filter "dport=x": dport: not a port number (0..65535)', field: 'filters[2]' }, 'the caller can place it');
});

t.test('the API message reads as the same filter as the CLI text', async (t) => {
  // through the real .proto, as a client would send it
  const pkg = protoLoader.loadSync('xdplb/v1/recorder.proto', {
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [path.join(ROOT, 'proto')],
  });
  const rpc = (pkg['xdplb.v1.Recorder'] as protoLoader.ServiceDefinition).StartRecording;
  const wire = (include: object[]) => (rpc.requestDeserialize(rpc.requestSerialize({ include })) as { include: object[] }).include;
  const pairs: Array<[object, string]> = [
    [
      { sourceCidr: '10.0.0.0/8', destinationCidr: '192.0.2.10/32', sourcePort: 1234, destinationPort: 80, protocol: 'CAPTURE_PROTOCOL_TCP' },
      'src=10.0.0.0/8 dst=192.0.2.10/32 sport=1234 dport=80 proto=tcp',
    ],
    [{ destinationCidr: '2001:db8:100::10', protocol: 'CAPTURE_PROTOCOL_UDP' }, 'dst=2001:db8:100::10 proto=udp'],
    [{ destinationPort: 53 }, 'dport=53'],
    [{ sourcePort: 0 }, 'sport=0'], // an explicit 0 is port 0, unlike Hubble
    [{ protocol: 132 }, 'proto=132'], // an open enum: any protocol number
    [{ protocol: 'CAPTURE_PROTOCOL_ICMPV6' }, 'proto=icmpv6'],
    [{}, ''],
  ];
  const decoded = wire(pairs.map(([m]) => m));
  pairs.forEach(([m, text], i) => t.same(filterFromMessage(decoded[i], `include[${i}]`), parseFilter(text), `${JSON.stringify(m)} = ${JSON.stringify(text)}`));
  t.same(filterFromMessage({ source_cidr: '10.0.0.0/8', destination_port: 80, protocol: 6 }), parseFilter('src=10.0.0.0/8 dport=80 proto=tcp'), 'snake_case too');

  const bad: Array<[object, string]> = [
    [{ sourceCidr: '10.0.0.300/8' }, 'include[1].source_cidr: "10.0.0.300/8": not an IPv4/IPv6 prefix'],
    [{ destinationPort: 70000 }, 'include[1].destination_port: 70000 is not a port number (0..65535)'],
    [{ protocol: 'CAPTURE_PROTOCOL_SCTP' }, 'include[1].protocol: "CAPTURE_PROTOCOL_SCTP" is not a CaptureProtocol'],
    [{ protocol: 300 }, 'include[1].protocol: 300 is not an IP protocol number (0..255)'],
    [{ sourceCidr: '10.0.0.0/8', destinationCidr: '2001:db8::/32' }, 'include[1].destination_cidr: an IPv6 prefix with an IPv4 source_cidr; both must be of one family'],
    [{ protocol: 'CAPTURE_PROTOCOL_ICMP', destinationPort: 80 }, 'include[1].destination_port: proto icmp has no ports'],
  ];
  for (const [m, message] of bad) {
    t.throws(() => filterFromMessage(m, 'include[1]'), { code: 'INVALID_ARGUMENT', message }, message);
  }
});

// ---- the key layout ----------------------------------------------------------------

t.test('a tuple encodes as the datapath key: 40 bytes, ports and addresses in network order', async (t) => {
  const tu = { ...v4('192.0.2.1', '203.0.113.10', 40000, 80), mask: 5 };
  const b = encodeTuple(tu);
  t.equal(b.length, 40);
  t.equal(b[0], 4, 'family at 0');
  t.equal(b[1], 6, 'proto at 1');
  t.equal(b.readUInt16BE(2), 40000, 'sport at 2, big-endian');
  t.equal(b.readUInt16BE(4), 80, 'dport at 4, big-endian');
  t.equal(b[6], 5, 'mask index at 6');
  t.equal(b[7], 0, 'pad at 7');
  t.same([...b.subarray(8, 24)], [192, 0, 2, 1, ...Array(12).fill(0)], 'src at 8, IPv4 in its first 4 bytes');
  t.same([...b.subarray(24, 40)], [203, 0, 113, 10, ...Array(12).fill(0)], 'dst at 24');
  t.equal(b.toString('hex'), '0406' + '9c40' + '0050' + '05' + '00' + 'c0000201' + '00'.repeat(12) + 'cb00710a' + '00'.repeat(12));
  t.same(decodeTuple(b), tu, 'decodes back');
  const six = encodeTuple(tupleOf({ src: '2001:db8::1', dst: '2001:db8:100::10', sport: 1, dport: 443, proto: 17 }));
  t.equal(six.subarray(8, 24).toString('hex'), '20010db8000000000000000000000001');
  t.equal(six.subarray(24, 40).toString('hex'), '20010db8010000000000000000000010');
});

// ---- compilation -------------------------------------------------------------------

t.test('filters of one shape share a mask; masks keep exactly the bits the shape names', async (t) => {
  const c = compileFilters(
    [
      'dst=203.0.113.10 dport=80 proto=tcp',
      'dst=203.0.113.11 dport=443 proto=tcp',
      'dst=203.0.113.12 dport=80 proto=udp', // same shape: proto is exact in all three
      'src=10.0.0.0/8',
      'src=10.128.0.0/9', // another prefix length: another mask
      'src=2001:db8::/32', // another family: another mask
      'dport=53 proto=udp', // no prefix: either family
    ].map((x) => parseFilter(x)),
  );
  t.equal(c.masks.length, 5);
  t.same(c.masks.map((m) => [m.family, m.srcLen, m.dstLen, m.sport, m.dport, m.proto]), [
    [4, 0, 32, false, true, true],
    [4, 8, 0, false, false, false],
    [4, 9, 0, false, false, false],
    [6, 32, 0, false, false, false],
    [0, 0, 0, false, true, true],
  ]);
  t.equal(encodeTuple(c.masks[0].bits).toString('hex'), 'ffff' + '0000' + 'ffff' + '0000' + '00'.repeat(16) + 'ffffffff' + '00'.repeat(12), 'mask 0');
  t.equal(encodeTuple(c.masks[2].bits).subarray(8, 12).toString('hex'), 'ff800000', 'a /9 keeps 9 bits');
  t.equal(encodeTuple(c.masks[3].bits).subarray(0, 24).toString('hex'), 'ff00' + '0000' + '0000' + '0000' + 'ffffffff' + '00'.repeat(12), 'an IPv6 /32');
  t.equal(encodeTuple(c.masks[4].bits).subarray(0, 8).toString('hex'), '00ff0000ffff0000', 'either family: the family byte is not kept');
  t.equal(c.entries.length, 7);
  t.same(c.entries.map((e) => e.maskIndex), [0, 0, 0, 1, 2, 3, 4]);
  t.same(c.entries.map((e) => e.key.mask ?? 0), [0, 0, 0, 1, 2, 3, 4], 'each key carries its mask index');
});

t.test('identical masked keys of several rules merge into one entry with every rule id', async (t) => {
  const rules: RuleFilters[] = [
    { ruleId: 0, filters: [parseFilter('dst=203.0.113.10 dport=80 proto=tcp')] },
    { ruleId: 5, filters: [parseFilter('dst=203.0.113.10 dport=80 proto=tcp'), parseFilter('dst=203.0.113.10 dport=80 proto=tcp')] },
    { ruleId: 63, filters: [parseFilter('dst=203.0.113.10/32 dport=80 proto=6')] },
    { ruleId: 2, filters: [parseFilter('dst=203.0.113.10 dport=443 proto=tcp')] },
  ];
  const c = compileFilters(rules);
  t.equal(c.masks.length, 1);
  t.equal(c.entries.length, 2);
  t.same(c.entries[0].ruleIds, [0, 5, 63]);
  t.equal(c.entries[0].ruleMask, (1n << 0n) | (1n << 5n) | (1n << 63n), 'the u64 value: bit per rule');
  t.same(ruleIdsOf(c.entries[0].ruleMask), [0, 5, 63]);
  t.equal(encodeRecEntry({ rules: c.entries[0].ruleMask, caplen: 0 }).subarray(0, 8).toString('hex'), '2100000000000080', 'the map value\'s rules: a little-endian u64');
  t.same(c.entries[1].ruleIds, [2]);
  t.equal(matchCompiled(c, v4('192.0.2.1', '203.0.113.10', 40000, 80)), c.entries[0].ruleMask);
  t.equal(matchCompiled(c, v4('192.0.2.1', '203.0.113.10', 40000, 443)), 1n << 2n);
  t.equal(matchCompiled(c, v4('192.0.2.1', '203.0.113.10', 40000, 81)), 0n);
  t.throws(() => compileFilters([{ ruleId: 64, filters: [] }]), { code: 'INVALID_ARGUMENT', message: 'rule: rule id must be in 0..63, got 64' });
  t.same(compileFilters([]), { masks: [], maskSlots: 0, entries: [] });
  t.equal(matchCompiled(compileFilters([]), v4('192.0.2.1', '203.0.113.10', 1, 2)), 0n, 'no filters match nothing');
});

t.test('overlapping prefixes: a packet gets every rule whose filter covers it, and no other', async (t) => {
  const c = compileFilters([
    { ruleId: 1, filters: [parseFilter('src=10.0.0.0/8')] },
    { ruleId: 2, filters: [parseFilter('src=10.0.0.0/16')] }, // same key bytes as rule 1's under its own mask
    { ruleId: 3, filters: [parseFilter('src=10.1.0.0/16 dport=80')] },
    { ruleId: 4, filters: [parseFilter('src=10.1.2.3 dport=80 proto=tcp')] },
  ]);
  const rules = (src: string, dport: number) => ruleIdsOf(matchCompiled(c, v4(src, '203.0.113.10', 40000, dport)));
  t.same(rules('10.0.5.1', 80), [1, 2], '10.0.5.1 is in 10.0.0.0/8 and 10.0.0.0/16');
  t.same(rules('10.5.0.1', 80), [1], '10.5.0.1 only in the /8: the mask index keeps the /16 entry 10.0.0.0 apart');
  t.same(rules('10.1.2.3', 80), [1, 3, 4]);
  t.same(rules('10.1.2.3', 443), [1]);
  t.same(rules('10.1.2.4', 80), [1, 3]);
  t.same(rules('11.0.0.1', 80), []);
});

t.test('wildcards: no keys at all, ports only, either family', async (t) => {
  const c = compileFilters([
    { ruleId: 0, filters: [parseFilter('')] },
    { ruleId: 1, filters: [parseFilter('dport=53 proto=udp')] },
    { ruleId: 2, filters: [parseFilter('src=0.0.0.0/0')] },
    { ruleId: 3, filters: [parseFilter('dst=::/0 sport=0')] },
  ]);
  const dns4 = v4('192.0.2.1', '203.0.113.10', 5353, 53, 17);
  const dns6 = tupleOf({ src: '2001:db8::1', dst: '2001:db8:100::10', sport: 0, dport: 53, proto: 17 });
  const ping4 = v4('192.0.2.1', '203.0.113.10', 0, 0, 1);
  t.same(ruleIdsOf(matchCompiled(c, dns4)), [0, 1, 2]);
  t.same(ruleIdsOf(matchCompiled(c, dns6)), [0, 1, 3]);
  t.same(ruleIdsOf(matchCompiled(c, ping4)), [0, 2]);
});

t.test('IPv6 prefixes at and off byte boundaries', async (t) => {
  const lens = [1, 7, 31, 32, 48, 63, 64, 65, 96, 127, 128];
  const rules = lens.map((len, i) => {
    const base = tupleOf({ src: '2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff', dst: '::1', proto: 6 }).src;
    const f: Filter = { family: 6, src: { family: 6, len, bytes: maskPrefix(base, len) } };
    return { ruleId: i, filters: [f] };
  });
  const c = compileFilters(rules);
  t.equal(c.masks.length, lens.length, 'one mask per prefix length');
  const at = (addr: string) => ruleIdsOf(matchCompiled(c, tupleOf({ src: addr, dst: '::1', sport: 1, dport: 2, proto: 6 })));
  t.same(at('2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'), lens.map((_, i) => i), 'the address itself: every prefix');
  t.same(at('2001:db8:aaaa:bbbb:cccc:dddd:eeee:fffe'), lens.map((_, i) => i).slice(0, -1), 'last bit flipped: all but the /128');
  t.same(at('2001:db8:aaaa:bbbb:4ccc::'), [0, 1, 2, 3, 4, 5, 6], 'bit 65 flipped: up to the /64');
  t.same(at('2001:db8:aaaa:bbbb:8ccc::'), [0, 1, 2, 3, 4, 5, 6, 7], 'bit 65 kept, the rest differ: up to the /65');
  t.same(at('6001::'), [0], 'only the first bit in common (0x20 vs 0x60)');
  t.same(at('a001::'), [], 'not even the first bit');
});

function maskPrefix(b: Uint8Array, len: number): Uint8Array {
  return b.map((x, i) => x & ((0xff00 >> Math.max(0, Math.min(8, len - 8 * i))) & 0xff));
}

t.test('more distinct shapes than masks is refused with the count', async (t) => {
  const shapes = (n: number) => Array.from({ length: n }, (_, i) => parseFilter(`src=0.0.0.0/${i % 33} ${i < 33 ? 'dport' : 'sport'}=80`));
  t.equal(compileFilters(shapes(32)).masks.length, 32, '32 shapes fit');
  t.throws(() => compileFilters(shapes(33)), { code: 'RESOURCE_EXHAUSTED', message: 'filters: too many distinct filter shapes: 33 > 32' });
  t.throws(() => compileFilters(shapes(40)), { message: 'filters: too many distinct filter shapes: 40 > 32' }, 'the count is the whole input');
  t.throws(() => compileFilters(shapes(9), { maxMasks: 8 }), { message: /too many distinct filter shapes: 9 > 8/ });
  t.equal(REC_MAX_MASKS, 32);
  t.throws(() => compileFilters([parseFilter('dport=1'), parseFilter('dport=2'), parseFilter('dport=3')], { maxEntries: 2 }), {
    code: 'RESOURCE_EXHAUSTED',
    message: 'filters: too many filter entries: more than 2',
  });
});

/** The datapath's recorder maps, simulated: a mask array, a count, a hash. */
class Maps {
  masks: Buffer[] = Array.from({ length: REC_MAX_MASKS }, () => Buffer.alloc(40));
  count = 0;
  entries = new Map<string, bigint>();
  lookup(p: Tuple): bigint {
    const tuple = encodeTuple(p);
    let rules = 0n;
    for (let i = 0; i < this.count; i++) {
      const key = Buffer.from(tuple.map((x, j) => x & this.masks[i][j]));
      key[6] = i;
      rules |= this.entries.get(key.toString('hex')) ?? 0n;
    }
    return rules;
  }
  /** Applies a diff step by step, calling `check` after each step. */
  apply(tt: tap.Test, prev: CompiledFilters | undefined, next: CompiledFilters, check: (step: string) => void): void {
    const d = diffCompiled(prev, next);
    tt.ok(d.deleteEntries.every((k) => this.entries.delete(k.toString('hex'))), 'every entry deleted was there');
    check('after deletes');
    for (const m of d.masks) this.masks[m.index] = m.mask;
    check('after masks');
    this.count = d.maskSlots;
    check('after the count');
    for (const u of d.upsertEntries) this.entries.set(u.key.toString('hex'), u.ruleMask);
    check('after upserts');
  }
}

t.test('recompiling keeps the slots of surviving shapes, and the diff moves the maps safely', async (t) => {
  const rand = seededRandom(7);
  const A: RuleFilters = { ruleId: 1, filters: ['src=10.0.0.0/8', 'dst=203.0.113.10 sport=80 proto=tcp'].map((x) => parseFilter(x)) };
  const B: RuleFilters = { ruleId: 2, filters: ['dst=203.0.113.0/24', 'dst=203.0.113.10 dport=443 proto=tcp', 'src=2001:db8::/32'].map((x) => parseFilter(x)) };
  const C: RuleFilters = { ruleId: 3, filters: ['dport=53 proto=udp', 'src=10.0.0.0/8', 'src=192.0.2.0/25'].map((x) => parseFilter(x)) };
  const c1 = compileFilters([A, B]);
  const slot = (c: CompiledFilters, text: string) => {
    const sh = shapeOf(parseFilter(text));
    return c.masks.find((m) => m.family === sh.family && m.srcLen === sh.srcLen && m.dstLen === sh.dstLen && m.sport === sh.sport && m.dport === sh.dport && m.proto === sh.proto)?.index;
  };
  t.same(c1.masks.map((m) => m.index), [0, 1, 2, 3, 4]);
  const c2 = compileFilters([B, C], { previous: c1 });
  for (const text of ['dst=203.0.113.0/24', 'dst=203.0.113.10 dport=443 proto=tcp', 'src=2001:db8::/32', 'src=10.0.0.0/8'])
    t.equal(slot(c2, text), slot(c1, text), `${text}: its shape keeps its slot`);
  t.equal(slot(c2, 'dst=203.0.113.10 sport=80 proto=tcp'), undefined, "A's own shape is gone");
  t.equal(slot(c2, 'dport=53 proto=udp'), 5, 'a new shape does not take the slot just freed');
  t.equal(slot(c2, 'src=192.0.2.0/25'), 6);
  t.equal(c2.maskSlots, 7);
  const d = diffCompiled(c1, c2);
  t.same(d.masks.map((m) => m.index), [1, 5, 6], 'only the slots that change are written');
  t.ok(d.masks[0].mask.equals(Buffer.alloc(40)), 'a slot out of use gets a zero mask');
  t.same(d.deleteEntries.map((k) => k[6]), [1], "A's sport=80 entry goes");
  t.same(d.upsertEntries.map((u) => [u.key[6], ruleIdsOf(u.ruleMask)]).sort((a, b) => (a[0] as number) - (b[0] as number)), [[0, [3]], [5, [3]], [6, [3]]], "A's src/8 entry passes to rule 3; C's new shapes add one entry each");
  t.same(diffCompiled(c2, c2), { deleteEntries: [], masks: [], maskSlots: 7, upsertEntries: [] }, 'no change, no writes');

  // walk the maps through c1 -> c2 -> c3 -> c1 -> empty, checking every intermediate state
  const c3 = compileFilters([C, { ruleId: 9, filters: Array.from({ length: 12 }, (_, i) => parseFilter(`src=0.0.0.0/${i + 1} dport=${i}`)) }], { previous: c2 });
  const c4 = compileFilters([A, B], { previous: c3 });
  const c5 = compileFilters([], { previous: c4 });
  const packets = Array.from({ length: 3000 }, () => {
    const v6 = rand() < 0.3;
    const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
    return v6
      ? tupleOf({ src: pick(['2001:db8::1', '2001:db9::1']), dst: '2001:db8:100::10', sport: pick([1, 53]), dport: pick([53, 80, 443]), proto: pick([6, 17]) })
      : tupleOf({ src: pick(['10.1.1.1', '192.0.2.5', '192.0.2.200', '128.0.0.1', '1.2.3.4']), dst: pick(['203.0.113.10', '203.0.113.99', '198.51.100.1']), sport: pick([0, 1, 2, 3, 40000]), dport: pick([0, 3, 7, 11, 53, 80, 443]), proto: pick([6, 17]) });
  });
  const maps = new Maps();
  let prev: CompiledFilters | undefined;
  let bad = 0;
  for (const next of [c1, c2, c3, c4, c5]) {
    maps.apply(t, prev, next, (step) => {
      for (const p of packets) {
        const got = maps.lookup(p);
        const allowed = (prev ? matchCompiled(prev, p) : 0n) | matchCompiled(next, p);
        const kept = (prev ? matchCompiled(prev, p) : 0n) & matchCompiled(next, p);
        if ((got & ~allowed) !== 0n || (got & kept) !== kept) {
          if (++bad <= 3) t.fail(`${step}: ${ruleIdsOf(got)} outside prev/next for ${encodeTuple(p).toString('hex')}`);
        }
      }
    });
    for (const p of packets) if (maps.lookup(p) !== matchCompiled(next, p)) bad++;
    t.equal(maps.entries.size, next.entries.length, 'as many entries as compiled');
    t.same([...maps.entries.keys()].sort(), next.entries.map((e) => entryKey(e).toString('hex')).sort(), 'exactly the compiled keys');
    prev = next;
  }
  t.equal(bad, 0, 'in every intermediate state a packet matches only rules of prev or next, and keeps the rules of both');
  t.equal(maps.count, 0, 'empty at the end');
});

// ---- scale and agreement -----------------------------------------------------------


t.test('100,000 filters in 64 rules and 4 shapes compile to 4 masks; every one is found', async (t) => {
  const filters: RuleFilters[] = Array.from({ length: 64 }, (_, r) => ({ ruleId: r, filters: [] as Filter[] }));
  const samples: Array<[Tuple, number]> = [];
  for (let i = 0; i < 100_000; i++) {
    const shape = i % 4;
    const a = (i >> 2) & 0xff;
    const b = (i >> 10) & 0xff;
    const text = [
      `src=10.${b}.${a}.0/24 dst=203.0.113.10 dport=80 proto=tcp`,
      `dst=198.51.${b}.${a} dport=${1024 + (i % 5000)}`,
      `src=2001:db8:${b.toString(16)}:${a.toString(16)}::/64 dst=2001:db8:100::${(i % 5000).toString(16)} proto=udp`,
      `src=192.0.2.${a}/32 sport=${i % 65536}`,
    ][shape];
    const f = parseFilter(text);
    filters[i % 64].filters = [...filters[i % 64].filters, f];
    if (i % 997 === 0) {
      const packet: Tuple = [
        () => v4(`10.${b}.${a}.77`, '203.0.113.10', 40000, 80),
        () => v4('192.0.2.9', `198.51.${b}.${a}`, 5000, 1024 + (i % 5000), 17),
        () => tupleOf({ src: `2001:db8:${b.toString(16)}:${a.toString(16)}::42`, dst: `2001:db8:100::${(i % 5000).toString(16)}`, sport: 1, dport: 2, proto: 17 }),
        () => v4(`192.0.2.${a}`, '203.0.113.99', i % 65536, 443),
      ][shape]();
      samples.push([packet, i % 64]);
    }
  }
  const start = process.hrtime.bigint();
  const c = compileFilters(filters);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  t.equal(c.masks.length, 4, '4 masks');
  t.ok(c.entries.length > 50_000 && c.entries.length <= 100_000, `${c.entries.length} entries (duplicates merged)`);
  t.equal(c.entries.reduce((n, e) => n + e.ruleIds.length, 0) >= c.entries.length, true);
  for (const [p, rule] of samples) t.ok(matchCompiled(c, p) & (1n << BigInt(rule)), `rule ${rule} found for a packet inside one of its filters`);
  t.equal(matchCompiled(c, v4('172.16.0.1', '172.16.0.2', 1, 1)), 0n, 'a packet outside every filter matches nothing');
  const lookStart = process.hrtime.bigint();
  for (let i = 0; i < 10_000; i++) matchCompiled(c, samples[i % samples.length][0]);
  const lookUs = Number(process.hrtime.bigint() - lookStart) / 1e3 / 10_000;
  t.comment(`compiled 100,000 filters (64 rules) into ${c.masks.length} masks and ${c.entries.length} entries in ${ms.toFixed(0)} ms; reference lookup ${lookUs.toFixed(2)} µs/packet`);
});

/** A random filter set: a few shapes (so masks are shared), values from small pools (so filters overlap and packets hit them). */
function randomRules(rand: () => number): RuleFilters[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const v4Nets = ['10.0.0.0', '10.1.0.0', '10.1.2.0', '192.0.2.0', '192.0.2.128', '203.0.113.10'];
  const v6Nets = ['2001:db8::', '2001:db8:1::', '2001:db8:1:2::', '2001:db8:100::10', '2001:db8:100::11'];
  const v4Lens = [0, 1, 7, 8, 9, 16, 24, 25, 31, 32];
  const v6Lens = [0, 1, 32, 47, 48, 64, 65, 127, 128];
  const ports = [53, 80, 443, 8080, 0];
  const protos = [6, 17, 1, 58, 132];
  const nShapes = 1 + Math.floor(rand() * 12);
  const shapes = Array.from({ length: nShapes }, () => {
    const fam = pick([4, 6, 0] as const);
    const lens = fam === 6 ? v6Lens : v4Lens;
    return {
      fam,
      srcLen: fam && rand() < 0.7 ? pick(lens) : -1,
      dstLen: fam && rand() < 0.7 ? pick(lens) : -1,
      sport: rand() < 0.3,
      dport: rand() < 0.5,
      proto: rand() < 0.5,
    };
  });
  const nRules = 1 + Math.floor(rand() * 8);
  const ids = new Set<number>();
  while (ids.size < nRules) ids.add(Math.floor(rand() * 64));
  return [...ids].map((ruleId) => ({
    ruleId,
    filters: Array.from({ length: 1 + Math.floor(rand() * 30) }, () => {
      const s = pick(shapes);
      const parts: string[] = [];
      const nets = s.fam === 6 ? v6Nets : v4Nets;
      if (s.srcLen >= 0) parts.push(`src=${maskedText(pick(nets), s.srcLen)}`);
      if (s.dstLen >= 0) parts.push(`dst=${maskedText(pick(nets), s.dstLen)}`);
      // a family named only by the shape: a /0
      if (s.fam && s.srcLen < 0 && s.dstLen < 0) parts.push(`src=${s.fam === 4 ? '0.0.0.0/0' : '::/0'}`);
      const proto = s.proto ? pick(s.sport || s.dport ? [6, 17] : protos.filter((p) => !(p === 1 && s.fam === 6) && !(p === 58 && s.fam === 4))) : undefined;
      if (s.sport) parts.push(`sport=${pick(ports)}`);
      if (s.dport) parts.push(`dport=${pick(ports)}`);
      if (proto !== undefined) parts.push(`proto=${proto}`);
      return parseFilter(parts.join(' '));
    }),
  }));
}

function maskedText(net: string, len: number): string {
  const t = tupleOf({ src: net, dst: net, proto: 0 });
  const bytes = maskPrefix(t.src, len);
  const f: Filter = { family: t.family as 4 | 6, src: { family: t.family as 4 | 6, bytes, len } };
  return formatFilter(f).slice(4);
}

/** A random packet: half of them made from a random filter (so they match it), half from the pools. */
function randomPacket(rand: () => number, rules: RuleFilters[]): Tuple {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const addrs4 = ['10.0.0.1', '10.1.2.3', '10.1.2.200', '10.200.0.1', '192.0.2.1', '192.0.2.129', '203.0.113.10', '203.0.113.11', '128.0.0.1'];
  const addrs6 = ['2001:db8::1', '2001:db8:1::1', '2001:db8:1:2::5', '2001:db8:100::10', '2001:db8:100::11', '2001:db9::1', '8000::1'];
  const fam = rand() < 0.5 ? 4 : 6;
  const addrs = fam === 4 ? addrs4 : addrs6;
  const p = tupleOf({ src: pick(addrs), dst: pick(addrs), sport: pick([53, 80, 443, 8080, 0, 40000]), dport: pick([53, 80, 443, 8080, 0, 40000]), proto: pick([6, 17, 1, 58, 132]) });
  if (rand() < 0.5) {
    const all = rules.flatMap((r) => r.filters);
    const f = pick(all);
    if (f.family && f.family !== p.family) {
      const other = fam === 4 ? addrs6 : addrs4;
      Object.assign(p, tupleOf({ src: pick(other), dst: pick(other), sport: p.sport, dport: p.dport, proto: p.proto }));
    }
    // random bits inside the filter's prefixes
    const inside = (pre: Filter['src'], addr: Uint8Array) => {
      if (!pre) return;
      const width = pre.family === 4 ? 4 : 16;
      for (let i = 0; i < width; i++) {
        const keep = (0xff00 >> Math.max(0, Math.min(8, pre.len - 8 * i))) & 0xff;
        addr[i] = (pre.bytes[i] & keep) | (Math.floor(rand() * 256) & ~keep & 0xff);
      }
    };
    inside(f.src, p.src);
    inside(f.dst, p.dst);
    if (f.sport !== undefined) p.sport = f.sport;
    if (f.dport !== undefined) p.dport = f.dport;
    if (f.proto !== undefined) p.proto = f.proto;
  }
  return p;
}

t.test('the masked lookup agrees with the plain reading: 10,000 random packets x 20 random filter sets', async (t) => {
  const rand = seededRandom(0x5eed);
  let packets = 0;
  let matched = 0;
  let multi = 0;
  let disagreements = 0;
  let maskTotal = 0;
  for (let set = 0; set < 20; set++) {
    const rules = randomRules(rand);
    const c = compileFilters(rules);
    maskTotal += c.masks.length;
    for (let i = 0; i < 10_000; i++) {
      const p = randomPacket(rand, rules);
      let naive = 0n;
      for (const r of rules) if (r.filters.some((f) => matches(f, p))) naive |= 1n << BigInt(r.ruleId);
      const got = matchCompiled(c, p);
      packets++;
      if (naive) matched++;
      if (ruleIdsOf(naive).length > 1) multi++;
      if (got !== naive) {
        disagreements++;
        if (disagreements <= 5) t.fail(`set ${set} packet ${i}: compiled ${ruleIdsOf(got)} vs plain ${ruleIdsOf(naive)}: ${encodeTuple(p).toString('hex')}`);
      }
    }
  }
  t.equal(disagreements, 0, `no disagreement in ${packets} packets`);
  t.ok(matched > packets / 5, `a real share of the packets match something (${matched})`);
  t.ok(multi > packets / 100, `some match several rules (${multi})`);
  t.comment(`${packets} packets, ${matched} matched, ${multi} matched several rules; ${(maskTotal / 20).toFixed(1)} masks per set on average`);
});
