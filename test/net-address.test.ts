// IP addresses parsed once (src/net/address.ts): canonical text, the byte
// forms, families, what is refused and why, and the network of a prefix.
// Pure: no root.
import t from 'tap';
import { Address } from '../src/net/address';

t.test('canonical text: IPv6 compressed lowercase (RFC 5952), IPv4 as written', async (t) => {
  const cases: Array<[string, string]> = [
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // longest run first; ties to the first
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // one zero group is not compressed
    ['2001:db8::0:0:1', '2001:db8::1'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['1:0:0:0:0:0:0:0', '1::'],
    ['::', '::'],
    ['FE80::ABCD', 'fe80::abcd'],
    ['2001:db8::192.0.2.1', '2001:db8::c000:201'],
    ['203.0.113.10', '203.0.113.10'],
  ];
  for (const [input, want] of cases) t.equal(Address.of(input).text, want, input);
});

t.test('refused, with a reason that follows the value', async (t) => {
  const cases: Array<[string, string]> = [
    ['10.0.0.300', 'is not an IPv4 or IPv6 address'],
    ['010.0.0.1', 'is not an IPv4 or IPv6 address'],
    ['203.0.113.10/32', 'is not an IPv4 or IPv6 address'],
    ['fe80::1%eth0', 'has a zone index; write the address without it'],
    ['::ffff:203.0.113.1', 'is an IPv4-mapped IPv6 address; write the IPv4 address 203.0.113.1'],
  ];
  for (const [input, want] of cases) t.equal(Address.parse(input), want, input);
  t.throws(() => Address.of('not-an-ip'), new RangeError('"not-an-ip" is not an IPv4 or IPv6 address'));
});

t.test('bytes: 4 or 16 in network order, and back to the same address', async (t) => {
  const v4 = Address.of('192.0.2.255');
  t.equal(v4.family, 4);
  t.equal(v4.bits, 32);
  t.equal(v4.bytes.toString('hex'), 'c00002ff');
  const v6 = Address.of('2001:db8::c000:201');
  t.equal(v6.family, 6);
  t.equal(v6.bits, 128);
  t.equal(v6.bytes.toString('hex'), '20010db80000000000000000c0000201');
  t.equal(Address.of('2001:db8::192.0.2.1').bytes.toString('hex'), '20010db80000000000000000c0000201', 'embedded IPv4 in the last 4 bytes');
  for (const a of ['2001:db8::1', '::', '2001:db8:1:2:3:4:5:6', 'fe80::1:2', '2001:db8::', '2001:0:0:1::1', '192.0.2.255', '0.0.0.0']) {
    const back = Address.fromBytes(Address.of(a).bytes);
    t.equal(back.text, a, a);
    t.ok(back.equals(Address.of(a)), `${a} equals itself from bytes`);
  }
  t.notOk(Address.of('192.0.2.1').equals(Address.of('192.0.2.2')));
  t.throws(() => Address.fromBytes(new Uint8Array(5)), RangeError);
  t.equal(JSON.stringify({ a: Address.of('2001:DB8::1') }), '{"a":"2001:db8::1"}', 'JSON holds the canonical text');
});

t.test('unicast: not unspecified, multicast or broadcast', async (t) => {
  const cases: Array<[string, string | undefined]> = [
    ['203.0.113.10', undefined],
    ['2001:db8::1', undefined],
    ['0.0.0.0', 'is the unspecified address'],
    ['::', 'is the unspecified address'],
    ['224.0.0.1', 'is a multicast address'],
    ['239.255.255.250', 'is a multicast address'],
    ['ff02::1', 'is a multicast address'],
    ['255.255.255.255', 'is the broadcast address'],
  ];
  for (const [input, want] of cases) t.equal(Address.of(input).notUnicast(), want, input);
});

t.test('prefixes: host bits and the network of an address', async (t) => {
  const a = Address.of('192.0.2.70');
  t.ok(a.hostBitsClear(32));
  t.notOk(a.hostBitsClear(28), '192.0.2.70/28 has host bits');
  t.equal(a.network(28).text, '192.0.2.64');
  t.ok(a.network(28).hostBitsClear(28));
  t.equal(a.network(0).text, '0.0.0.0');
  const b = Address.of('2001:db8:300::1:5');
  t.notOk(b.hostBitsClear(112));
  t.equal(b.network(112).text, '2001:db8:300::1:0');
  t.equal(b.network(127).text, '2001:db8:300::1:4', 'a length not on a byte boundary');
  t.ok(Address.of('2001:db8::').hostBitsClear(32));
});
