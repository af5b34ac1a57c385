// The YAML configuration file: the examples load, keys map from snake_case to the
// model, and every refusal points at the file, line and column of the culprit.
// Pure (reads files from config/ only), no root needed.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import Ajv from 'ajv';
import { parse as parseYaml } from 'yaml';
import { CONFIG_SCHEMA, loadConfigFile, loadConfigFileApart, parseConfig, schemaText } from '../src/config';
import { XdplbError, type ErrorCode } from '../src/control/errors';
import { DEFAULT_FLAGS, DEFAULT_NODE } from '../src/control/model';
import { Address } from '../src/net/address';

const ROOT = path.resolve(__dirname, '..', '..');
const CONFIG_DIR = path.join(ROOT, 'config');
const EXAMPLES = ['edge.yaml', 'lab.yaml'];

// ---- helpers ----------------------------------------------------------------

/** A small valid file; tests edit one line of it. */
const BASE = `interfaces:
  - name: lb0
maglev_size: 16381
outer_source:
  ipv4: 192.0.2.64/28
  ipv6: 2001:db8:300::/120
api:
  socket: /run/xdplb-test/xdplb.sock
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
      - address: 198.51.100.12
        weight: 2
  - name: web6
    vip: 2001:db8:100::10
    port: 80
    protocol: tcp
    backends:
      - address: 2001:db8:200::11
`;

/** BASE with line `n` (1-based) replaced by `text` (which may hold several lines). */
function edit(n: number, text: string, base = BASE): string {
  const lines = base.split('\n');
  lines[n - 1] = text;
  return lines.join('\n');
}

/** 1-based column of `needle` on line `n` of `text`. */
function col(text: string, n: number, needle: string): number {
  const c = text.split('\n')[n - 1].indexOf(needle);
  if (c < 0) throw new Error(`"${needle}" is not on line ${n}`);
  return c + 1;
}

function thrown(fn: () => unknown): XdplbError {
  try {
    fn();
  } catch (e) {
    if (e instanceof XdplbError) return e;
    throw e;
  }
  throw new Error('expected an XdplbError, nothing was thrown');
}

/** Asserts the exact one-line message, the code and the error's location fields. */
function refuses(t: tap.Test, text: string, code: ErrorCode, message: string, where: { line: number; column: number; field?: string }): void {
  const e = thrown(() => parseConfig(text, 'config/test.yaml'));
  t.equal(e.message, message);
  t.equal(e.code, code, code);
  t.match({ file: e.file, line: e.line, column: e.column, field: e.field }, { file: 'config/test.yaml', ...where });
}

// ---- the examples ----------------------------------------------------------------

t.test('both example files load and validate', async (t) => {
  for (const name of EXAMPLES) {
    const c = loadConfigFile(path.join(CONFIG_DIR, name));
    t.ok(c.services.length > 0, `${name}: has services`);
    t.ok(c.node.interfaces.length > 0, `${name}: has interfaces`);
  }
});

t.test('the edge example: two native interfaces, prefixes, all-ports, IPv6, DNAT, draining', async (t) => {
  const c = loadConfigFile(path.join(CONFIG_DIR, 'edge.yaml'));
  t.same(c.node.interfaces.map((i) => i.mode), ['native', 'native']);
  t.ok(c.node.outerSource.ipv4 && c.node.outerSource.ipv4.prefixLength < 32, 'an IPv4 outer source prefix');
  t.ok(c.node.outerSource.ipv6 && c.node.outerSource.ipv6.prefixLength < 128, 'an IPv6 outer source prefix');
  t.ok(c.services.some((s) => s.port === 0), 'an all-ports service');
  t.ok(c.services.some((s) => s.vip.includes(':')), 'an IPv6 service');
  t.ok(c.services.some((s) => s.flags.l4Dnat && s.backends.every((b) => b.port !== s.port)), 'a DNAT service');
  t.ok(c.services.some((s) => s.backends.some((b) => b.state === 'draining')), 'a draining backend');
  t.ok(c.node.api.tcp && c.node.api.tls, 'TCP API with mutual TLS');
});

t.test('the lab example: lb0, the lab VIPs and backends, everything under /run/xdplb-lab', async (t) => {
  const c = loadConfigFile(path.join(CONFIG_DIR, 'lab.yaml'));
  t.same(c.node.interfaces, [{ name: 'lb0', mode: 'native' }]);
  t.same(
    c.services.map((s) => [s.vip, s.port, s.protocol, s.backends.map((b) => b.address)]),
    [
      ['203.0.113.10', 80, 'tcp', ['198.51.100.11', '198.51.100.12', '198.51.100.13']],
      ['203.0.113.10', 53, 'udp', ['198.51.100.11', '198.51.100.12', '198.51.100.13']],
      ['2001:db8:100::10', 80, 'tcp', ['2001:db8:200::11', '2001:db8:200::12', '2001:db8:200::13']],
    ],
  );
  t.equal(c.node.api.socket, '/run/xdplb-lab/xdplb.sock');
  t.equal(c.node.bpffs, '/sys/fs/bpf/xdplb-lab');
  t.equal(c.node.stateDir, '/run/xdplb-lab/state');
  t.equal(c.node.recorderDir, '/run/xdplb-lab/recordings');
  t.same(c.node.outerSource, {
    ipv4: { address: '192.0.2.64', prefixLength: 28 },
    ipv6: { address: '2001:db8:300::', prefixLength: 120 },
  });
});

// ---- the published schema ----------------------------------------------------------

t.test('config/xdplb.schema.json is generated from the TypeScript schema and has not drifted', async (t) => {
  const published = fs.readFileSync(path.join(CONFIG_DIR, 'xdplb.schema.json'), 'utf8');
  t.equal(published, schemaText(), 'regenerate with: node dist/src/config/schema.js > config/xdplb.schema.json');
  t.same(JSON.parse(published), CONFIG_SCHEMA);
});

t.test('the published schema alone (plain ajv, no loader) accepts the examples and refuses a bad file', async (t) => {
  const schema = JSON.parse(fs.readFileSync(path.join(CONFIG_DIR, 'xdplb.schema.json'), 'utf8')) as object;
  const validate = new Ajv({ allErrors: true }).compile(schema);
  for (const name of EXAMPLES) {
    const data: unknown = parseYaml(fs.readFileSync(path.join(CONFIG_DIR, name), 'utf8'));
    t.ok(validate(data), `${name}: ${JSON.stringify(validate.errors)}`);
  }
  t.notOk(validate(parseYaml(edit(3, 'maglevSize: 16381'))), 'a camelCase key is unknown');
  t.notOk(validate(parseYaml(edit(17, '        weight: 70000'))), 'a weight out of range');
  t.ok(validate(parseYaml(BASE)));
});

// ---- mapping to the model --------------------------------------------------------------

t.test('snake_case keys map to the model; omitted ones take the defaults', async (t) => {
  const text = `interfaces:
  - name: eth0
    mode: generic
maglev_size: 251
outer_source:
  ipv4: {address: 192.0.2.0, prefix_length: 24}
  ipv6: 2001:DB8:300:0::1
ttl: 32
mtu: 1500
flow_cache: false
conntrack: {tcp_timeout: 7200s, closing_timeout: 30000ms}
bpffs: /sys/fs/bpf/t
state_dir: /var/lib/t
recorder_dir: /var/lib/t/rec
log_level: warn
metrics: "[::1]:9469"
api:
  socket: /run/t.sock
  tcp: 192.0.2.1:50051
  tls: {cert: /etc/t/c.pem, key: /etc/t/k.pem, ca: /etc/t/ca.pem}
services:
  - name: s
    vip: 2001:DB8:100::0:10
    port: 443
    protocol: udp
    flags: {l4_dnat: true, source_hash: true, conntrack_bypass: true, icmp_echo: false}
    backends:
      - {address: 2001:db8:200:0:0:0:0:11, port: 8443, weight: 3, state: down}
`;
  t.same(parseConfig(text, 'x.yaml'), {
    node: {
      interfaces: [{ name: 'eth0', mode: 'generic' }],
      maglevSize: 251,
      outerSource: { ipv4: { address: '192.0.2.0', prefixLength: 24 }, ipv6: { address: '2001:db8:300::1', prefixLength: 128 } },
      ttl: 32,
      mtu: 1500,
      flowCache: false,
      conntrack: { tcpTimeout: 7200, udpTimeout: 120, closingTimeout: 30 },
      bpffs: '/sys/fs/bpf/t',
      api: { socket: '/run/t.sock', tcp: '192.0.2.1:50051', tls: { cert: '/etc/t/c.pem', key: '/etc/t/k.pem', ca: '/etc/t/ca.pem' } },
      stateDir: '/var/lib/t',
      recorderDir: '/var/lib/t/rec',
      logLevel: 'warn',
      metrics: '[::1]:9469',
    },
    services: [
      {
        name: 's',
        vip: '2001:db8:100::10',
        vipAddress: Address.of('2001:db8:100::10'),
        port: 443,
        protocol: 'udp',
        flags: { l4Dnat: true, sourceHash: true, conntrackBypass: true, icmpEcho: false },
        backends: [{ address: '2001:db8:200::11', ip: Address.of('2001:db8:200::11'), port: 8443, weight: 3, state: 'down' }],
      },
    ],
  });
  const minimal = parseConfig('services: []\n', 'x.yaml');
  t.same(minimal, { node: DEFAULT_NODE, services: [] });
  const s = parseConfig(BASE, 'x.yaml').services[0];
  t.same(s.flags, DEFAULT_FLAGS);
  t.same(s.backends[0], { address: '198.51.100.11', ip: Address.of('198.51.100.11'), port: 80, weight: 1, state: 'active' });
});

t.test('YAML anchors and aliases are followed', async (t) => {
  const text = `services:
  - name: a
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends: &pool
      - address: 198.51.100.11
  - name: b
    vip: 203.0.113.10
    port: 443
    protocol: tcp
    backends: *pool
`;
  t.same(parseConfig(text, 'x.yaml').services[1].backends, [{ address: '198.51.100.11', ip: Address.of('198.51.100.11'), port: 443, weight: 1, state: 'active' }]);
});

// ---- errors: file:line:column, field, reason -------------------------------------------

t.test('a nested backend field out of range', async (t) => {
  const text = edit(17, '        weight: 70000');
  refuses(t, text, 'INVALID_ARGUMENT', `config/test.yaml:17:${col(text, 17, '70000')}: services[0].backends[1].weight: must be <= 65535, got 70000`, {
    line: 17,
    column: 17,
    field: 'services[0].backends[1].weight',
  });
});

t.test('an unknown key, named and pointed at', async (t) => {
  const text = edit(16, '      - address: 198.51.100.12\n        wieght: 2', BASE.replace('        weight: 2\n', ''));
  refuses(t, text, 'INVALID_ARGUMENT', 'config/test.yaml:17:9: services[0].backends[1].wieght: unknown key "wieght" (did you mean weight?)', {
    line: 17,
    column: 9,
    field: 'services[0].backends[1].wieght',
  });
  const camel = edit(3, 'maglevSize: 16381');
  refuses(t, camel, 'INVALID_ARGUMENT', 'config/test.yaml:3:1: maglevSize: unknown key "maglevSize" (did you mean maglev_size?)', { line: 3, column: 1 });
  const far = edit(13, '    protocol: tcp\n    color: blue');
  refuses(
    t,
    far,
    'INVALID_ARGUMENT',
    'config/test.yaml:14:5: services[0].color: unknown key "color" (expected one of name, vip, port, protocol, flags, backends, health_check)',
    { line: 14, column: 5 },
  );
  const missingToo = edit(5, '  ipv4: {adress: 192.0.2.64}');
  refuses(
    t,
    missingToo,
    'INVALID_ARGUMENT',
    `config/test.yaml:5:${col(missingToo, 5, 'adress')}: outer_source.ipv4.adress: unknown key "adress" (did you mean address?)`,
    { line: 5, column: col(missingToo, 5, 'adress') },
  );
});

t.test('YAML syntax errors carry file:line:column', async (t) => {
  const nested = edit(11, '    vip: 203.0.113.10: x');
  refuses(t, nested, 'INVALID_ARGUMENT', 'config/test.yaml:11:10: YAML: Nested mappings are not allowed in compact mappings', {
    line: 11,
    column: 10,
  });
  const unclosed = edit(11, '    vip: "203.0.113.10');
  refuses(t, unclosed, 'INVALID_ARGUMENT', 'config/test.yaml:11:10: YAML: Missing closing "quote (opened here)', { line: 11, column: 10 });
  const single = edit(10, "  - name: 'web # the \"web\" service");
  refuses(t, single, 'INVALID_ARGUMENT', "config/test.yaml:10:11: YAML: Missing closing 'quote (opened here)", { line: 10, column: 11 });
  const item = edit(17, '       weight: 2');
  refuses(t, item, 'INVALID_ARGUMENT', 'config/test.yaml:17:1: YAML: Sequence item without - indicator', { line: 17, column: 1 });

  refuses(t, edit(3, 'maglev_size: 16381\nmaglev_size: 251'), 'INVALID_ARGUMENT', 'config/test.yaml:4:1: YAML: Map keys must be unique', {
    line: 4,
    column: 1,
  });

  const tab = edit(12, '\tport: 80');
  const te = thrown(() => parseConfig(tab, 'config/test.yaml'));
  t.match(te.message, /^config\/test\.yaml:12:\d+: YAML: /, 'a tab in the indentation');

  const flow = edit(17, '        weight: [1');
  t.match(thrown(() => parseConfig(flow, 'config/test.yaml')).message, /^config\/test\.yaml:\d+:\d+: YAML: /);
});

t.test('wrong types, enums and patterns', async (t) => {
  const port = edit(12, '    port: "80"');
  refuses(t, port, 'INVALID_ARGUMENT', 'config/test.yaml:12:11: services[0].port: must be an integer, got "80"', { line: 12, column: 11 });
  const list = BASE.replace('    backends:\n      - address: 198.51.100.11\n      - address: 198.51.100.12\n        weight: 2', '    backends: 198.51.100.11');
  refuses(t, list, 'INVALID_ARGUMENT', 'config/test.yaml:14:15: services[0].backends: must be a list, got "198.51.100.11"', { line: 14, column: 15 });
  const proto = edit(21, '    protocol: sctp');
  refuses(t, proto, 'INVALID_ARGUMENT', 'config/test.yaml:21:15: services[1].protocol: must be one of tcp, udp, got "sctp"', { line: 21, column: 15 });
  const name = edit(10, '  - name: Web_1');
  refuses(
    t,
    name,
    'INVALID_ARGUMENT',
    'config/test.yaml:10:11: services[0].name: "Web_1" is not an RFC 1123 label (lowercase letters, digits and "-", at most 63, starting and ending with a letter or digit)',
    { line: 10, column: 11 },
  );
  const ifname = edit(2, '  - name: a-very-long-interface0');
  refuses(
    t,
    ifname,
    'INVALID_ARGUMENT',
    'config/test.yaml:2:11: interfaces[0].name: "a-very-long-interface0" is not a Linux interface name (1 to 15 bytes, not "." or "..", no "/", ":" or whitespace)',
    { line: 2, column: 11 },
  );
  const os4 = edit(5, '  ipv4: 5');
  refuses(t, os4, 'INVALID_ARGUMENT', 'config/test.yaml:5:9: outer_source.ipv4: must be "address/prefix-length" or a mapping {address, prefix_length}, got 5', { line: 5, column: 9 });
  const relative = edit(8, '  socket: xdplb.sock');
  refuses(t, relative, 'INVALID_ARGUMENT', 'config/test.yaml:8:11: api.socket: "xdplb.sock" is not an absolute path', { line: 8, column: 11 });
  const nul = edit(7, 'api:');
  refuses(t, nul.replace('  socket: /run/xdplb-test/xdplb.sock\n', ''), 'INVALID_ARGUMENT', 'config/test.yaml:7:5: api: must be a mapping, got null', { line: 7, column: 5 });
});

t.test('a missing required key points at its mapping', async (t) => {
  const text = BASE.replace('    protocol: tcp\n    backends:\n      - address: 198.51.100.11', '    backends:\n      - address: 198.51.100.11');
  refuses(t, text, 'INVALID_ARGUMENT', 'config/test.yaml:10:5: services[0].protocol: is required', { line: 10, column: 5 });
});

t.test('semantic errors are placed too, with the file\'s snake_case field names', async (t) => {
  const badIp = edit(15, '      - address: 10.0.0.300');
  refuses(t, badIp, 'INVALID_ARGUMENT', 'config/test.yaml:15:18: services[0].backends[0].address: "10.0.0.300" is not an IPv4 or IPv6 address', {
    line: 15,
    column: 18,
  });
  const family = edit(23, '      - address: 198.51.100.11');
  refuses(t, family, 'INVALID_ARGUMENT', 'config/test.yaml:23:18: services[1].backends[0].address: "198.51.100.11" is IPv4 but the service\'s VIP is IPv6', {
    line: 23,
    column: 18,
  });
  const prime = edit(3, 'maglev_size: 16384');
  refuses(t, prime, 'INVALID_ARGUMENT', 'config/test.yaml:3:14: maglev_size: must be a prime number, got 16384 (nearest primes: 16381 or 16411)', {
    line: 3,
    column: 14,
    field: 'maglev_size',
  });
  const hostBits = edit(6, '  ipv6: 2001:db8:300::7/120');
  refuses(
    t,
    hostBits,
    'INVALID_ARGUMENT',
    'config/test.yaml:6:9: outer_source.ipv6: 2001:db8:300::7/120 has host bits set; write 2001:db8:300::/120, or 2001:db8:300::7/128 for one fixed address',
    { line: 6, column: 9 },
  );
  const ttl = edit(3, 'maglev_size: 16381\nttl: 0');
  refuses(t, ttl, 'INVALID_ARGUMENT', 'config/test.yaml:4:6: ttl: must be >= 1, got 0', { line: 4, column: 6 });
  const flowCache = edit(3, 'maglev_size: 16381\nflow_cache: sometimes');
  refuses(t, flowCache, 'INVALID_ARGUMENT', 'config/test.yaml:4:13: flow_cache: must be true or false, got "sometimes"', { line: 4, column: 13 });
  const short = edit(3, 'maglev_size: 16381\nconntrack:\n  udp_timeout: 1s');
  refuses(t, short, 'INVALID_ARGUMENT', 'config/test.yaml:5:16: conntrack.udp_timeout: must be at least 5000 ms, got "1s"', { line: 5, column: 16, field: 'conntrack.udp_timeout' });
  const fraction = edit(3, 'maglev_size: 16381\nconntrack:\n  closing_timeout: 10.5s');
  refuses(t, fraction, 'INVALID_ARGUMENT', 'config/test.yaml:5:20: conntrack.closing_timeout: must be whole seconds, got "10.5s"', { line: 5, column: 20 });
  const long = edit(3, 'maglev_size: 16381\nconntrack:\n  tcp_timeout: 604801s');
  refuses(t, long, 'INVALID_ARGUMENT', 'config/test.yaml:5:16: conntrack.tcp_timeout: must be at most 604800000 ms, got "604801s"', { line: 5, column: 16 });
  const prefix = edit(5, '  ipv4: {address: 192.0.2.64, prefix_length: 33}');
  refuses(t, prefix, 'INVALID_ARGUMENT', 'config/test.yaml:5:46: outer_source.ipv4.prefix_length: must be <= 32, got 33', { line: 5, column: 46 });
  const tcp = edit(8, '  socket: /run/xdplb-test/xdplb.sock\n  tcp: 0.0.0.0:50051');
  refuses(t, tcp, 'INVALID_ARGUMENT', 'config/test.yaml:9:8: api.tcp: requires api.tls (mutual TLS)', { line: 9, column: 8, field: 'api.tcp' });
  const allPorts = edit(12, '    port: 0');
  refuses(t, allPorts, 'INVALID_ARGUMENT', 'config/test.yaml:15:9: services[0].backends[0].port: is required', { line: 15, column: 9 });
});

t.test('duplicates keep their code and point at the second one', async (t) => {
  const sameName = edit(18, '  - name: web');
  refuses(t, sameName, 'ALREADY_EXISTS', 'config/test.yaml:18:11: services[1].name: service name web is also the name of services[0]', {
    line: 18,
    column: 11,
  });
  const sameTuple = edit(19, '    vip: 203.0.113.10').replace('      - address: 2001:db8:200::11', '      - address: 198.51.100.21');
  refuses(
    t,
    sameTuple,
    'ALREADY_EXISTS',
    'config/test.yaml:19:10: services[1].vip: services[1] (web6) and services[0] (web) both serve 203.0.113.10 port 80 tcp',
    { line: 19, column: 10 },
  );
  const sameBackend = edit(16, '      - address: 198.51.100.11');
  refuses(t, sameBackend, 'ALREADY_EXISTS', 'config/test.yaml:16:9: services[0].backends[1]: backend 198.51.100.11 port 80 is also backends[0]', {
    line: 16,
    column: 9,
  });
  const sameIf = edit(2, '  - name: lb0\n  - name: lb0');
  refuses(t, sameIf, 'ALREADY_EXISTS', 'config/test.yaml:3:11: interfaces[1].name: interface lb0 is also interfaces[0]', { line: 3, column: 11 });
});

t.test('too many backends is RESOURCE_EXHAUSTED, placed at the list', async (t) => {
  const many = Array.from({ length: 4097 }, (_, i) => `      - address: 2001:db8:200::${(i + 1).toString(16)}`).join('\n');
  const text = edit(23, many);
  refuses(t, text, 'RESOURCE_EXHAUSTED', 'config/test.yaml:23:7: services[1].backends: 4097 backends; a service has at most 4096', { line: 23, column: 7 });
});

t.test('an empty file, a non-mapping file, a missing file', async (t) => {
  refuses(t, '', 'INVALID_ARGUMENT', 'config/test.yaml:1:1: the file is empty; expected a mapping of settings and services', { line: 1, column: 1 });
  refuses(t, '# only a comment\n', 'INVALID_ARGUMENT', 'config/test.yaml:1:1: the file is empty; expected a mapping of settings and services', { line: 1, column: 1 });
  refuses(t, '- a\n- b\n', 'INVALID_ARGUMENT', 'config/test.yaml:1:1: must be a mapping, got a list', { line: 1, column: 1 });
  const missing = path.join(os.tmpdir(), `xdplb-no-such-${process.pid}.yaml`);
  const e = thrown(() => loadConfigFile(missing));
  t.equal(e.code, 'NOT_FOUND');
  t.equal(e.message, `configuration file ${missing} not found`);
});

t.test('loadConfigFile names the file as given', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-config-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'bad.yaml');
  fs.writeFileSync(file, edit(17, '        weight: 70000'));
  const e = thrown(() => loadConfigFile(file));
  t.equal(e.message, `${file}:17:17: services[0].backends[1].weight: must be <= 65535, got 70000`);
});

t.test('a large file, parsed on a worker thread, comes back with its addresses parsed', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-apart-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'big.yaml');
  const services = Array.from({ length: 3000 }, (_, i) => `  - {name: s${i}, vip: 2001:DB8:100::${i.toString(16)}, port: 80, protocol: tcp, backends: [{address: 2001:db8:200::1}]}\n`);
  fs.writeFileSync(file, `services:\n${services.join('')}`);
  t.ok(fs.statSync(file).size > 256 * 1024, 'large enough for the worker');
  const c = await loadConfigFileApart(file);
  t.equal(c.services.length, 3000);
  t.ok(c.services[10].vipAddress instanceof Address, 'an Address, not a structured clone of one');
  t.ok(c.services[10].vipAddress.equals(Address.of('2001:db8:100::a')));
  t.ok(c.services[10].backends[0].ip instanceof Address);
});
