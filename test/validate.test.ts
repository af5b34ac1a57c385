// Semantic validation shared by the config file and the gRPC API: every rule
// refuses with the exact field named, and what passes comes out normalised.
// Pure functions, no root needed.
import t from 'tap';
import { ERROR_CODES, QUOTE_MAX, XdplbError, isXdplbError, quote, type ErrorCode } from '../src/control/errors';
import { DEFAULT_FLAGS, DEFAULT_NODE } from '../src/control/model';
import { Address } from '../src/net/address';
import {
  MAX_BACKENDS_PER_SERVICE,
  validateBackend,
  validateBackendRef,
  validateConfig,
  validateNode,
  validateOuterSource,
  validateService,
} from '../src/control/validate';

// ---- helpers ----------------------------------------------------------------

function svc(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name: 'web',
    vip: '203.0.113.10',
    port: 80,
    protocol: 'tcp',
    backends: [{ address: '198.51.100.11' }, { address: '198.51.100.12' }],
    ...over,
  };
}

function svc6(over: Record<string, unknown> = {}): Record<string, unknown> {
  return svc({ name: 'web6', vip: '2001:db8:100::10', backends: [{ address: '2001:db8:200::11' }], ...over });
}

/** Asserts that `fn` throws an XdplbError with this code and exactly this message. */
function refuses(t: tap.Test, fn: () => unknown, code: ErrorCode, message: string, what = message): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  if (!(thrown instanceof XdplbError)) {
    t.fail(`${what}: expected an XdplbError, got ${thrown === undefined ? 'no error' : String(thrown)}`);
    return;
  }
  t.equal(thrown.message, message, what);
  t.equal(thrown.code, code, `${what} (${code})`);
}

// ---- the error catalog --------------------------------------------------------

t.test('errors: one line naming the field, a code named after the gRPC status', async (t) => {
  t.same([...ERROR_CODES].sort(), [
    'ALREADY_EXISTS',
    'FAILED_PRECONDITION',
    'INTERNAL',
    'INVALID_ARGUMENT',
    'NOT_FOUND',
    'RESOURCE_EXHAUSTED',
    'UNAVAILABLE',
  ]);
  const e = XdplbError.invalid('services[2].backends[0].address', '"10.0.0.300" is not an IPv4 or IPv6 address');
  t.ok(e instanceof Error && e instanceof XdplbError && isXdplbError(e, 'INVALID_ARGUMENT'));
  t.equal(e.name, 'XdplbError');
  t.equal(e.message, 'services[2].backends[0].address: "10.0.0.300" is not an IPv4 or IPv6 address');
  t.equal(e.field, 'services[2].backends[0].address');
  t.equal(e.reason, '"10.0.0.300" is not an IPv4 or IPv6 address');

  const placed = e.at({ file: 'config/edge.yaml', line: 14, column: 9 });
  t.equal(placed.message, 'config/edge.yaml:14:9: services[2].backends[0].address: "10.0.0.300" is not an IPv4 or IPv6 address');
  t.match(placed, { code: 'INVALID_ARGUMENT', file: 'config/edge.yaml', line: 14, column: 9, field: 'services[2].backends[0].address' });

  const cases: Array<[XdplbError, ErrorCode, string]> = [
    [XdplbError.notFound('service', 'web'), 'NOT_FOUND', 'service web not found'],
    [XdplbError.alreadyExists('service', 'web', 'service.name'), 'ALREADY_EXISTS', 'service.name: service web already exists'],
    [XdplbError.duplicate('services[1].name', 'x'), 'ALREADY_EXISTS', 'services[1].name: x'],
    [XdplbError.failedPrecondition('declared in the file'), 'FAILED_PRECONDITION', 'declared in the file'],
    [XdplbError.exhausted('map full', 'service'), 'RESOURCE_EXHAUSTED', 'service: map full'],
    [XdplbError.unavailable('state directory'), 'UNAVAILABLE', 'state directory'],
    [XdplbError.internal('bug'), 'INTERNAL', 'bug'],
  ];
  for (const [err, code, message] of cases) {
    t.equal(err.code, code);
    t.equal(err.message, message);
  }
  t.equal(XdplbError.internal('x', new Error('below')).cause instanceof Error, true, 'keeps the cause');
  t.notOk(isXdplbError(new Error('x')));
});

t.test('errors: a long value is shown cut short, with its length', async (t) => {
  t.equal(quote('web'), '"web"');
  t.equal(quote('a'.repeat(QUOTE_MAX)), JSON.stringify('a'.repeat(QUOTE_MAX)), 'up to QUOTE_MAX characters in full');
  t.equal(quote('a'.repeat(100 * 1024)), `"${'a'.repeat(QUOTE_MAX)}…" (102400 characters)`);
  t.equal(quote('😀'.repeat(QUOTE_MAX + 1)), `"${'😀'.repeat(QUOTE_MAX)}…" (${QUOTE_MAX + 1} characters)`, 'never half a character');
  const big = `10.0.0.${'9'.repeat(50_000)}`;
  refuses(t, () => validateService(svc({ vip: big }), 'service'), 'INVALID_ARGUMENT', `service.vip: "${big.slice(0, QUOTE_MAX)}…" (${big.length} characters) is not an IPv4 or IPv6 address`);
  refuses(t, () => validateService(svc({ name: big }), 'service'), 'INVALID_ARGUMENT', `service.name: "${big.slice(0, QUOTE_MAX)}…" (${big.length} characters) is not an RFC 1123 label (lowercase letters, digits and "-", at most 63, starting and ending with a letter or digit)`);
  refuses(t, () => validateService(svc({ protocol: big }), 'service'), 'INVALID_ARGUMENT', `service.protocol: must be one of tcp, udp, got "${big.slice(0, QUOTE_MAX)}…" (${big.length} characters)`);
});

t.test("errors: renamed puts a field path in the request's own terms", async (t) => {
  const e = XdplbError.invalid('service.backends[2].address', 'bad');
  t.equal(e.renamed('service.backends', 'backends').message, 'backends[2].address: bad');
  t.equal(XdplbError.exhausted('too many', 'service.backends').renamed('service.backends', 'backend').message, 'backend: too many');
  t.equal(e.renamed('service.backend', 'x'), e, 'a path that only starts with the same letters is kept');
  t.equal(e.renamed('service.name', 'name'), e);
  const placed = e.at({ file: 'f.yaml', line: 3, column: 5 }).renamed('service', 'services[0]');
  t.equal(placed.message, 'f.yaml:3:5: services[0].backends[2].address: bad', 'keeps the location');
});

t.test('a backend reference: an address in canonical text and a port 1..65535', async (t) => {
  t.same(validateBackendRef({ address: '2001:DB8::0:1', port: 80 }, 'backend'), { address: '2001:db8::1', port: 80 });
  refuses(t, () => validateBackendRef({ address: '198.51.100.300', port: 80 }, 'backend'), 'INVALID_ARGUMENT', 'backend.address: "198.51.100.300" is not an IPv4 or IPv6 address');
  refuses(t, () => validateBackendRef({ address: '198.51.100.3', port: 0 }, 'backend'), 'INVALID_ARGUMENT', 'backend.port: must be >= 1, got 0');
  refuses(t, () => validateBackendRef({ address: '198.51.100.3' }, 'backend'), 'INVALID_ARGUMENT', 'backend.port: is required');
  refuses(t, () => validateBackendRef(null, 'backend'), 'INVALID_ARGUMENT', 'backend: must be a mapping, got null');
});

// ---- services -----------------------------------------------------------------

t.test('a service comes out with defaults filled in and nothing shared with the input', async (t) => {
  const input = svc({ owner: 'api', extra: 1 });
  const s = validateService(input, 'service');
  t.same(s, {
    name: 'web',
    vip: '203.0.113.10',
    vipAddress: Address.of('203.0.113.10'),
    port: 80,
    protocol: 'tcp',
    flags: DEFAULT_FLAGS,
    backends: [
      { address: '198.51.100.11', ip: Address.of('198.51.100.11'), port: 80, weight: 1, state: 'active' },
      { address: '198.51.100.12', ip: Address.of('198.51.100.12'), port: 80, weight: 1, state: 'active' },
    ],
  });
  t.notOk('owner' in s, 'unknown keys (owner) are dropped, not refused');
  t.not(s.flags, DEFAULT_FLAGS, 'flags are a fresh object');
  t.not(s.backends, input.backends);
  t.same(validateService(svc({ flags: { l4Dnat: true } })).flags, { ...DEFAULT_FLAGS, l4Dnat: true }, 'each flag defaults separately');
  t.same(validateService(svc({ backends: undefined })).backends, [], 'backends default to none');
  t.same(
    validateService(svc({ backends: [{ address: '198.51.100.11', port: 8080, weight: 0, state: 'draining' }] })).backends,
    [{ address: '198.51.100.11', ip: Address.of('198.51.100.11'), port: 8080, weight: 0, state: 'draining' }],
    'explicit backend fields are kept',
  );
});

t.test('addresses come out canonical: IPv6 compressed lowercase (RFC 5952)', async (t) => {
  const s = validateService(
    svc({ vip: '2001:DB8:100:0:0:0:0:10', backends: [{ address: '2001:0db8:0200:0000:0000:0000:0000:0011' }] }),
  );
  t.equal(s.vip, '2001:db8:100::10');
  t.equal(s.backends[0].address, '2001:db8:200::11');
  t.equal(s.vipAddress.text, s.vip, 'the VIP kept parsed beside its text');
  t.equal(s.backends[0].ip.text, s.backends[0].address, 'each backend address too');
});

t.test('service name: an RFC 1123 label of at most 63 characters', async (t) => {
  const label = 'an RFC 1123 label (lowercase letters, digits and "-", at most 63, starting and ending with a letter or digit)';
  refuses(t, () => validateService(svc({ name: undefined }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].name: is required');
  refuses(t, () => validateService(svc({ name: 7 }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].name: must be a string, got 7');
  refuses(t, () => validateService(svc({ name: '' }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].name: is required');
  for (const bad of ['Web', 'web_1', '-web', 'web-', 'a'.repeat(64), 'wéb'])
    refuses(t, () => validateService(svc({ name: bad }), 'services[2]'), 'INVALID_ARGUMENT', `services[2].name: ${JSON.stringify(bad)} is not ${label}`);
  for (const good of ['a', '7', 'web-1', 'a'.repeat(63), '0day']) t.equal(validateService(svc({ name: good })).name, good);
});

t.test('vip: an IPv4 or IPv6 unicast address', async (t) => {
  const f = 'services[2].vip';
  const cases: Array<[unknown, string]> = [
    ['10.0.0.300', '"10.0.0.300" is not an IPv4 or IPv6 address'],
    ['203.0.113', '"203.0.113" is not an IPv4 or IPv6 address'],
    ['203.0.113.10/32', '"203.0.113.10/32" is not an IPv4 or IPv6 address'],
    ['web.example', '"web.example" is not an IPv4 or IPv6 address'],
    [' 203.0.113.10', '" 203.0.113.10" is not an IPv4 or IPv6 address'],
    ['0.0.0.0', '"0.0.0.0" is the unspecified address'],
    ['::', '"::" is the unspecified address'],
    ['224.0.0.1', '"224.0.0.1" is a multicast address'],
    ['239.255.255.250', '"239.255.255.250" is a multicast address'],
    ['ff02::1', '"ff02::1" is a multicast address'],
    ['255.255.255.255', '"255.255.255.255" is the broadcast address'],
    ['::ffff:203.0.113.10', '"::ffff:203.0.113.10" is an IPv4-mapped IPv6 address; write the IPv4 address 203.0.113.10'],
    ['fe80::1%eth0', '"fe80::1%eth0" has a zone index; write the address without it'],
    [167772161, 'must be a string, got 167772161'],
  ];
  for (const [vip, reason] of cases)
    refuses(t, () => validateService(svc({ vip }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: ${reason}`);
  refuses(t, () => validateService(svc({ vip: undefined }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: is required`);
});

t.test('port: 0..65535, 0 meaning every port', async (t) => {
  const f = 'services[2].port';
  refuses(t, () => validateService(svc({ port: -1 }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be >= 0, got -1`);
  refuses(t, () => validateService(svc({ port: 65536 }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be <= 65535, got 65536`);
  refuses(t, () => validateService(svc({ port: 80.5 }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be an integer, got 80.5`);
  refuses(t, () => validateService(svc({ port: '80' }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be an integer, got "80"`);
  refuses(t, () => validateService(svc({ port: undefined }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: is required`);
  const all = validateService(svc({ port: 0, backends: [{ address: '198.51.100.11', port: 443 }] }));
  t.equal(all.port, 0, 'port 0 is every port');
  t.equal(validateService(svc({ port: 65535 })).port, 65535);
});

t.test('protocol: tcp or udp', async (t) => {
  refuses(t, () => validateService(svc({ protocol: 'sctp' }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].protocol: must be one of tcp, udp, got "sctp"');
  refuses(t, () => validateService(svc({ protocol: 'TCP' }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].protocol: must be one of tcp, udp, got "TCP"');
  refuses(t, () => validateService(svc({ protocol: undefined }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].protocol: is required');
  t.equal(validateService(svc({ protocol: 'udp' })).protocol, 'udp');
});

t.test('flags: booleans, each defaulting separately', async (t) => {
  refuses(t, () => validateService(svc({ flags: { sourceHash: 'yes' } }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].flags.sourceHash: must be true or false, got "yes"');
  refuses(t, () => validateService(svc({ flags: [] }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].flags: must be a mapping, got a list');
  t.same(
    validateService(svc({ flags: { l4Dnat: true, sourceHash: true, conntrackBypass: true, icmpEcho: false } })).flags,
    { l4Dnat: true, sourceHash: true, conntrackBypass: true, icmpEcho: false },
  );
});

t.test('a service and its backends must be mappings and lists', async (t) => {
  refuses(t, () => validateService(null, 'service'), 'INVALID_ARGUMENT', 'service: must be a mapping, got null');
  refuses(t, () => validateService('web', 'service'), 'INVALID_ARGUMENT', 'service: must be a mapping, got "web"');
  refuses(t, () => validateService(svc({ backends: {} }), 'service'), 'INVALID_ARGUMENT', 'service.backends: must be a list, got a mapping');
  refuses(t, () => validateService(svc({ backends: [null] }), 'service'), 'INVALID_ARGUMENT', 'service.backends[0]: must be a mapping, got null');
});

t.test('backend address: same family as the VIP, unicast', async (t) => {
  const f = 'services[2].backends[0].address';
  refuses(t, () => validateService(svc({ backends: [{ address: '10.0.0.300' }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: "10.0.0.300" is not an IPv4 or IPv6 address`);
  refuses(t, () => validateService(svc({ backends: [{ address: '2001:db8:200::11' }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: "2001:db8:200::11" is IPv6 but the service's VIP is IPv4`);
  refuses(t, () => validateService(svc6({ backends: [{ address: '198.51.100.11' }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: "198.51.100.11" is IPv4 but the service's VIP is IPv6`);
  refuses(t, () => validateService(svc({ backends: [{ address: '224.0.0.5' }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: "224.0.0.5" is a multicast address`);
  refuses(t, () => validateService(svc({ backends: [{ address: '0.0.0.0' }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: "0.0.0.0" is the unspecified address`);
  refuses(t, () => validateService(svc({ backends: [{ port: 80 }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: is required`);
  refuses(t, () => validateService(svc({ backends: [{ address: '::ffff:198.51.100.11' }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: "::ffff:198.51.100.11" is an IPv4-mapped IPv6 address; write the IPv4 address 198.51.100.11`);
});

t.test('backend port: 1..65535, defaulting to the service port, required for an all-ports service', async (t) => {
  const f = 'services[2].backends[0].port';
  refuses(t, () => validateService(svc({ backends: [{ address: '198.51.100.11', port: 0 }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be >= 1, got 0`);
  refuses(t, () => validateService(svc({ backends: [{ address: '198.51.100.11', port: 65536 }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be <= 65535, got 65536`);
  refuses(t, () => validateService(svc({ port: 0, backends: [{ address: '198.51.100.11' }] }), 'services[2]'), 'INVALID_ARGUMENT', `${f}: is required`);
  t.equal(validateService(svc({ port: 53 })).backends[0].port, 53, 'defaults to the service port');
  t.equal(validateBackend({ address: '198.51.100.11' }, 4, 443, 'backend').port, 443, 'validateBackend alone, too');
});

t.test('backend weight: an integer 0..65535, default 1', async (t) => {
  const f = 'services[2].backends[1].weight';
  const b = (weight: unknown) => svc({ backends: [{ address: '198.51.100.11' }, { address: '198.51.100.12', weight }] });
  refuses(t, () => validateService(b(65536), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be <= 65535, got 65536`);
  refuses(t, () => validateService(b(-1), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be >= 0, got -1`);
  refuses(t, () => validateService(b(1.5), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be an integer, got 1.5`);
  refuses(t, () => validateService(b(null), 'services[2]'), 'INVALID_ARGUMENT', `${f}: must be an integer, got null`);
  t.equal(validateService(b(0)).backends[1].weight, 0);
  t.equal(validateService(b(65535)).backends[1].weight, 65535);
  t.equal(validateService(b(undefined)).backends[1].weight, 1);
});

t.test('backend state: active, draining or down, default active', async (t) => {
  refuses(t, () => validateService(svc({ backends: [{ address: '198.51.100.11', state: 'up' }] }), 'services[2]'), 'INVALID_ARGUMENT', 'services[2].backends[0].state: must be one of active, draining, down, got "up"');
  for (const state of ['active', 'draining', 'down'])
    t.equal(validateService(svc({ backends: [{ address: '198.51.100.11', state }] })).backends[0].state, state);
});

t.test('backends are unique by (address, port), compared in canonical form', async (t) => {
  refuses(
    t,
    () => validateService(svc({ backends: [{ address: '198.51.100.11' }, { address: '198.51.100.12' }, { address: '198.51.100.11', port: 80 }] }), 'services[2]'),
    'ALREADY_EXISTS',
    'services[2].backends[2]: backend 198.51.100.11 port 80 is also backends[0]',
  );
  refuses(
    t,
    () => validateService(svc6({ backends: [{ address: '2001:db8:200::11' }, { address: '2001:DB8:200:0::11' }] }), 'services[2]'),
    'ALREADY_EXISTS',
    'services[2].backends[1]: backend 2001:db8:200::11 port 80 is also backends[0]',
  );
  const twoPorts = validateService(svc({ backends: [{ address: '198.51.100.11', port: 80 }, { address: '198.51.100.11', port: 8080 }] }));
  t.equal(twoPorts.backends.length, 2, 'one address on two ports is two backends');
});

t.test(`at most ${MAX_BACKENDS_PER_SERVICE} backends per service (RESOURCE_EXHAUSTED beyond)`, async (t) => {
  t.equal(MAX_BACKENDS_PER_SERVICE, 4096);
  const many = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ address: `2001:db8:200::${(i + 1).toString(16)}` }));
  t.equal(validateService(svc6({ backends: many(4096) })).backends.length, 4096, '4096 is fine');
  refuses(t, () => validateService(svc6({ backends: many(4097) }), 'services[2]'), 'RESOURCE_EXHAUSTED', 'services[2].backends: 4097 backends; a service has at most 4096');
});

// ---- node settings ------------------------------------------------------------

t.test('node settings default to DEFAULT_NODE', async (t) => {
  const n = validateNode({});
  t.same(n, DEFAULT_NODE);
  t.not(n.api, DEFAULT_NODE.api, 'a fresh copy');
  t.same(validateNode(undefined), DEFAULT_NODE, 'absent settings are all defaults');
  t.same(validateNode({ interfaces: [{ name: 'eth0' }] }).interfaces, [{ name: 'eth0', mode: 'native' }], 'mode defaults to native');
  refuses(t, () => validateNode([], ''), 'INVALID_ARGUMENT', 'node: must be a mapping, got a list');
});

t.test('maglevSize: a prime in 2..131071', async (t) => {
  refuses(t, () => validateNode({ maglevSize: 16384 }), 'INVALID_ARGUMENT', 'maglevSize: must be a prime number, got 16384 (nearest primes: 16381 or 16411)');
  refuses(t, () => validateNode({ maglevSize: 1 }), 'INVALID_ARGUMENT', 'maglevSize: must be >= 2, got 1');
  refuses(t, () => validateNode({ maglevSize: 131072 }), 'INVALID_ARGUMENT', 'maglevSize: must be <= 131071, got 131072');
  refuses(t, () => validateNode({ maglevSize: 131070 }), 'INVALID_ARGUMENT', 'maglevSize: must be a prime number, got 131070 (nearest primes: 131063 or 131071)');
  refuses(t, () => validateNode({ maglevSize: '16381' }), 'INVALID_ARGUMENT', 'maglevSize: must be an integer, got "16381"');
  for (const m of [2, 3, 251, 16381, 65521, 131071]) t.equal(validateNode({ maglevSize: m }).maglevSize, m);
});

t.test('ttl: 1..255; mtu: 0 or 576..65535', async (t) => {
  refuses(t, () => validateNode({ ttl: 0 }), 'INVALID_ARGUMENT', 'ttl: must be >= 1, got 0');
  refuses(t, () => validateNode({ ttl: 256 }), 'INVALID_ARGUMENT', 'ttl: must be <= 255, got 256');
  t.equal(validateNode({ ttl: 1 }).ttl, 1);
  t.equal(validateNode({ ttl: 255 }).ttl, 255);
  refuses(t, () => validateNode({ mtu: 575 }), 'INVALID_ARGUMENT', 'mtu: must be 0 (from the route) or >= 576, got 575');
  refuses(t, () => validateNode({ mtu: 1 }), 'INVALID_ARGUMENT', 'mtu: must be 0 (from the route) or >= 576, got 1');
  refuses(t, () => validateNode({ mtu: 65536 }), 'INVALID_ARGUMENT', 'mtu: must be <= 65535, got 65536');
  refuses(t, () => validateNode({ mtu: -1 }), 'INVALID_ARGUMENT', 'mtu: must be >= 0, got -1');
  for (const m of [0, 576, 1280, 1500, 9000, 65535]) t.equal(validateNode({ mtu: m }).mtu, m);
});

t.test('interfaces: Linux interface names, native or generic, unique', async (t) => {
  const ifname = 'a Linux interface name (1 to 15 bytes, not "." or "..", no "/", ":" or whitespace)';
  for (const bad of ['', 'a'.repeat(16), 'eth/0', 'eth 0', 'eth0\t', 'eth0:1', '.', '..', 'ééééééééé'])
    refuses(t, () => validateNode({ interfaces: [{ name: 'eth0' }, { name: bad }] }), 'INVALID_ARGUMENT', `interfaces[1].name: ${JSON.stringify(bad)} is not ${ifname}`);
  for (const good of ['eth0', 'a'.repeat(15), 'enp65s0f0', 'lb0', 'veth-lb.10', '...'])
    t.equal(validateNode({ interfaces: [{ name: good }] }).interfaces[0].name, good);
  refuses(t, () => validateNode({ interfaces: [{ name: 'eth0', mode: 'offload' }] }), 'INVALID_ARGUMENT', 'interfaces[0].mode: must be one of native, generic, got "offload"');
  refuses(t, () => validateNode({ interfaces: [{ mode: 'native' }] }), 'INVALID_ARGUMENT', 'interfaces[0].name: is required');
  refuses(t, () => validateNode({ interfaces: [{ name: 'eth0' }, { name: 'eth1' }, { name: 'eth0', mode: 'generic' }] }), 'ALREADY_EXISTS', 'interfaces[2].name: interface eth0 is also interfaces[0]');
  refuses(t, () => validateNode({ interfaces: 'eth0' }), 'INVALID_ARGUMENT', 'interfaces: must be a list, got "eth0"');
  t.same(validateNode({ interfaces: [{ name: 'eth0', mode: 'generic' }, { name: 'eth1' }] }).interfaces, [
    { name: 'eth0', mode: 'generic' },
    { name: 'eth1', mode: 'native' },
  ]);
});

t.test('outerSource: an address or prefix of the right family, host bits clear', async (t) => {
  const os = (ipv4?: unknown, ipv6?: unknown) => validateNode({ outerSource: { ipv4, ipv6 } }).outerSource;
  t.same(os('192.0.2.64/28'), { ipv4: { address: '192.0.2.64', prefixLength: 28 } }, 'prefix text');
  t.same(os('192.0.2.1'), { ipv4: { address: '192.0.2.1', prefixLength: 32 } }, 'an address alone is fixed');
  t.same(os({ address: '192.0.2.0', prefixLength: 24 }), { ipv4: { address: '192.0.2.0', prefixLength: 24 } }, 'model form');
  t.same(os({ address: '192.0.2.9' }), { ipv4: { address: '192.0.2.9', prefixLength: 32 } }, 'prefixLength defaults to the full length');
  t.same(os('0.0.0.0/0'), { ipv4: { address: '0.0.0.0', prefixLength: 0 } }, 'prefix length 0: every bit from the hash');
  t.same(os(undefined, '2001:DB8:300:0::/120'), { ipv6: { address: '2001:db8:300::', prefixLength: 120 } }, 'IPv6 canonical');
  t.same(os(undefined, { address: '2001:db8:300::1', prefixLength: 128 }), { ipv6: { address: '2001:db8:300::1', prefixLength: 128 } });

  refuses(t, () => os('2001:db8:300::/120'), 'INVALID_ARGUMENT', 'outerSource.ipv4: "2001:db8:300::" is not an IPv4 address');
  refuses(t, () => os(undefined, '192.0.2.64/28'), 'INVALID_ARGUMENT', 'outerSource.ipv6: "192.0.2.64" is not an IPv6 address');
  refuses(t, () => os(undefined, { address: '192.0.2.64' }), 'INVALID_ARGUMENT', 'outerSource.ipv6.address: "192.0.2.64" is not an IPv6 address');
  refuses(t, () => os('192.0.2.64/33'), 'INVALID_ARGUMENT', 'outerSource.ipv4: prefix length must be <= 32, got 33');
  refuses(t, () => os({ address: '192.0.2.64', prefixLength: 33 }), 'INVALID_ARGUMENT', 'outerSource.ipv4.prefixLength: must be <= 32, got 33');
  refuses(t, () => os(undefined, { address: '2001:db8::', prefixLength: 129 }), 'INVALID_ARGUMENT', 'outerSource.ipv6.prefixLength: must be <= 128, got 129');
  refuses(t, () => os({ address: '192.0.2.64', prefixLength: -1 }), 'INVALID_ARGUMENT', 'outerSource.ipv4.prefixLength: must be >= 0, got -1');
  refuses(t, () => os('192.0.2.70/28'), 'INVALID_ARGUMENT', 'outerSource.ipv4: 192.0.2.70/28 has host bits set; write 192.0.2.64/28, or 192.0.2.70/32 for one fixed address');
  refuses(t, () => os(undefined, '2001:db8:300::1:5/112'), 'INVALID_ARGUMENT', 'outerSource.ipv6: 2001:db8:300::1:5/112 has host bits set; write 2001:db8:300::1:0/112, or 2001:db8:300::1:5/128 for one fixed address');
  refuses(t, () => os('192.0.2.64/x'), 'INVALID_ARGUMENT', 'outerSource.ipv4: "192.0.2.64/x" is not an address or address/prefix-length');
  refuses(t, () => os('192.0.2.64/28/1'), 'INVALID_ARGUMENT', 'outerSource.ipv4: "192.0.2.64/28/1" is not an address or address/prefix-length');
  refuses(t, () => os('0.0.0.0/32'), 'INVALID_ARGUMENT', 'outerSource.ipv4: "0.0.0.0" is the unspecified address');
  refuses(t, () => os(undefined, 'ff02::1'), 'INVALID_ARGUMENT', 'outerSource.ipv6: "ff02::1" is a multicast address');
  refuses(t, () => os(5), 'INVALID_ARGUMENT', 'outerSource.ipv4: must be a mapping, got 5');
  t.same(validateOuterSource('198.51.100.0/24', 4, 'x'), { address: '198.51.100.0', prefixLength: 24 }, 'exported alone');
});

t.test('api: an absolute socket path, TCP only with mutual TLS', async (t) => {
  const tls = { cert: '/etc/xdplb/server.crt', key: '/etc/xdplb/server.key', ca: '/etc/xdplb/ca.crt' };
  refuses(t, () => validateNode({ api: { tcp: '0.0.0.0:50051' } }), 'INVALID_ARGUMENT', 'api.tcp: requires api.tls (mutual TLS)');
  t.same(validateNode({ api: { tcp: '0.0.0.0:50051', tls } }).api, { socket: DEFAULT_NODE.api.socket, tcp: '0.0.0.0:50051', tls });
  t.same(validateNode({ api: { socket: '/run/x.sock' } }).api, { socket: '/run/x.sock' });
  refuses(t, () => validateNode({ api: { socket: 'xdplb.sock' } }), 'INVALID_ARGUMENT', 'api.socket: "xdplb.sock" is not an absolute path');
  refuses(t, () => validateNode({ api: { socket: `/run/${'s'.repeat(103)}` } }), 'INVALID_ARGUMENT', 'api.socket: is 108 bytes long; a unix socket path has at most 107');
  t.equal(validateNode({ api: { socket: `/run/${'s'.repeat(102)}` } }).api.socket.length, 107, '107 bytes fit');
  refuses(t, () => validateNode({ api: { tcp: '0.0.0.0:50051', tls: { cert: tls.cert, key: tls.key } } }), 'INVALID_ARGUMENT', 'api.tls.ca: is required');
  refuses(t, () => validateNode({ api: { tcp: '0.0.0.0:50051', tls: { ...tls, key: 'server.key' } } }), 'INVALID_ARGUMENT', 'api.tls.key: "server.key" is not an absolute path');
  const hp = 'host:port (an IPv4 address, [IPv6 address] or host name, and a port 1..65535)';
  for (const bad of ['localhost', ':50051', '0.0.0.0:70000', '0.0.0.0:0', '::1:50051', '[::1]', '1.2.3.300:80', '[1.2.3.4]:80', 'a_b:80'])
    refuses(t, () => validateNode({ api: { tcp: bad, tls } }), 'INVALID_ARGUMENT', `api.tcp: ${JSON.stringify(bad)} is not ${hp}`);
  for (const good of ['[::1]:50051', '[2001:db8::10]:443', 'lb1.example.net:50051', '192.0.2.1:1', 'localhost:65535'])
    t.equal(validateNode({ api: { tcp: good, tls } }).api.tcp, good);
});

t.test('paths are absolute; log level and metrics address are checked', async (t) => {
  for (const key of ['bpffs', 'stateDir', 'recorderDir']) {
    refuses(t, () => validateNode({ [key]: 'relative/dir' }), 'INVALID_ARGUMENT', `${key}: "relative/dir" is not an absolute path`);
    t.equal((validateNode({ [key]: '/srv/x' }) as unknown as Record<string, string>)[key], '/srv/x');
  }
  refuses(t, () => validateNode({ logLevel: 'verbose' }), 'INVALID_ARGUMENT', 'logLevel: must be one of fatal, error, warn, info, debug, trace, got "verbose"');
  t.equal(validateNode({ logLevel: 'trace' }).logLevel, 'trace');
  refuses(t, () => validateNode({ metrics: '9469' }), 'INVALID_ARGUMENT', 'metrics: "9469" is not host:port (an IPv4 address, [IPv6 address] or host name, and a port 1..65535)');
  t.equal(validateNode({ metrics: '127.0.0.1:9469' }).metrics, '127.0.0.1:9469');
  t.notOk('metrics' in validateNode({}), 'metrics off by default');
  refuses(t, () => validateNode({ ttl: 0 }, 'node'), 'INVALID_ARGUMENT', 'node.ttl: must be >= 1, got 0', 'a prefix is honoured');
});

// ---- a whole configuration -----------------------------------------------------

t.test('a configuration: service names unique, naming both', async (t) => {
  refuses(
    t,
    () => validateConfig({ services: [svc(), svc({ name: 'dns', port: 53, protocol: 'udp' }), svc({ vip: '203.0.113.11' })] }),
    'ALREADY_EXISTS',
    'services[2].name: service name web is also the name of services[0]',
  );
});

t.test('a configuration: (vip, port, protocol) unique, naming both services', async (t) => {
  refuses(
    t,
    () => validateConfig({ services: [svc(), svc({ name: 'web2' })] }),
    'ALREADY_EXISTS',
    'services[1].vip: services[1] (web2) and services[0] (web) both serve 203.0.113.10 port 80 tcp',
  );
  refuses(
    t,
    () => validateConfig({ services: [svc6({ name: 'a' }), svc6({ name: 'b', vip: '2001:DB8:100:0::10' })] }),
    'ALREADY_EXISTS',
    'services[1].vip: services[1] (b) and services[0] (a) both serve 2001:db8:100::10 port 80 tcp',
    'VIPs compared in canonical form',
  );
  const ok = validateConfig({
    services: [
      svc(),
      svc({ name: 'web-udp', protocol: 'udp' }),
      svc({ name: 'web-8080', port: 8080 }),
      svc({ name: 'all', port: 0, backends: [{ address: '198.51.100.11', port: 1 }] }),
    ],
  });
  t.equal(ok.services.length, 4, 'another protocol, another port, or every port on the same VIP is another service');
});

t.test('a configuration: a service cannot have more backends than the Maglev table has entries', async (t) => {
  const backends = Array.from({ length: 12 }, (_, i) => ({ address: `198.51.100.${i + 1}` }));
  refuses(
    t,
    () => validateConfig({ node: { maglevSize: 11 }, services: [svc({ backends })] }),
    'RESOURCE_EXHAUSTED',
    'services[0].backends: 12 backends do not fit a Maglev table of 11 entries',
  );
  t.equal(validateConfig({ node: { maglevSize: 13 }, services: [svc({ backends })] }).services[0].backends.length, 12);
});

t.test('a configuration: node errors are named without a prefix, services by index', async (t) => {
  refuses(t, () => validateConfig({ node: { api: { tcp: '[::]:50051' } } }), 'INVALID_ARGUMENT', 'api.tcp: requires api.tls (mutual TLS)');
  refuses(t, () => validateConfig({ services: [svc(), svc({ name: 'b', backends: [{ address: '10.0.0.300' }] })] }), 'INVALID_ARGUMENT', 'services[1].backends[0].address: "10.0.0.300" is not an IPv4 or IPv6 address');
  refuses(t, () => validateConfig({ services: {} }), 'INVALID_ARGUMENT', 'services: must be a list, got a mapping');
  refuses(t, () => validateConfig(null), 'INVALID_ARGUMENT', 'configuration: must be a mapping, got null');
  const c = validateConfig({});
  t.same(c, { node: DEFAULT_NODE, services: [] }, 'an empty configuration is the defaults and no services');
});
