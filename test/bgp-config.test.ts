// The bgp: section and what is announced, without root: the file's section is
// checked and normalised, refusals name the field, a VIP is announced only
// when attached, served and not drained (each reason said), BIRD's
// configuration carries the attributes and parses with BIRD's own checker, and
// nothing of src/bgp loads for a file without the section.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseConfig } from '../src/config';
import { birdConfig, parseProtocols } from '../src/bgp/bird';
import { planVips } from '../src/bgp/speaker';
import type { ServiceSpec } from '../src/control/model';
import { DEFAULT_FLAGS } from '../src/control/model';
import { Address } from '../src/net/address';

const SERVICES = `services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
`;

const BGP = `bgp:
  asn: 64512
  router_id: 192.0.2.2
  peers:
    - address: 192.0.2.1
      asn: 64513
    - address: 2001:DB8:1::1
      asn: 4200000000
      hold_time: 30
      password: "s3cret pass"
  communities: ["64512:100"]
  med: 5
  vips:
    - vip: 2001:DB8:300::10
      communities: ["64512:0200"]
`;

const config = (bgp: string) => parseConfig(`${SERVICES}${bgp}`, 'test.yaml');

function refusal(bgp: string): string {
  try {
    config(bgp);
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('accepted');
}

t.test('the bgp section is normalised: addresses canonical, defaults filled, per-VIP attributes over the section-wide ones', async (t) => {
  const b = config(BGP).bgp;
  if (!b) throw new Error('no bgp settings');
  t.same(b.peers, [
    { address: '192.0.2.1', asn: 64513, holdTime: 9 },
    { address: '2001:db8:1::1', asn: 4200000000, holdTime: 30, password: 's3cret pass' },
  ]);
  t.same(b.defaults, { communities: ['64512:100'], med: 5 });
  t.same([...b.vips], [['2001:db8:300::10', { communities: ['64512:200'], med: 5 }]], 'a VIP entry keeps the section MED it does not override');
  t.equal(b.drainQuiet, 5000);
  t.equal(b.restartTime, 120);
  t.equal(config('').bgp, undefined, 'no section: no BGP');
});

t.test("the README's bgp example is a valid section", async (t) => {
  const readme = fs.readFileSync(path.resolve(__dirname, '..', '..', 'README.md'), 'utf8');
  const example = /<!-- docs-test: bgp-config -->\n```yaml\n([^]*?)```/.exec(readme)?.[1];
  if (!example) throw new Error('README.md has no bgp-config block');
  const b = config(example).bgp;
  t.same(b?.vips.get('203.0.113.10'), { communities: ['64512:200'], med: 20 });
  t.equal(b?.peers[0].password, 'secret');
});

t.test('a bad bgp section is refused naming the field (file, line, column)', async (t) => {
  const cases: Array<[string, string, RegExp]> = [
    ['router_id: 192.0.2.2', 'router_id: 2001:db8::2', /test\.yaml:\d+:\d+: bgp\.router_id: .* is not an IPv4 address/],
    ['    - address: 192.0.2.1', '    - address: 192.0.2.300', /bgp\.peers\[0\]\.address: "192\.0\.2\.300" is not an IPv4 or IPv6 address/],
    ['    - address: 2001:DB8:1::1', '    - address: 192.0.2.1', /bgp\.peers\[1\]\.address: peer 192\.0\.2\.1 is also bgp\.peers\[0\]/],
    ['      hold_time: 30', '      hold_time: 2', /bgp\.peers\[1\]\.hold_time: must be >= 3, got 2/],
    ['      asn: 64513', '      asn: 0', /bgp\.peers\[0\]\.asn: must be >= 1, got 0/],
    ['      password: "s3cret pass"', '      password: "a\\"b"', /bgp\.peers\[1\]\.password: must be printable ASCII/],
    ['communities: ["64512:100"]', 'communities: ["64512"]', /bgp\.communities\[0\]: "64512" is not a community/],
    ['  med: 5', '  med: -1', /bgp\.med: must be >= 0, got -1/],
    ['      communities: ["64512:0200"]', '      communities: ["65536:1"]', /bgp\.vips\[0\]\.communities\[0\]: "65536:1" is not a community/],
    ['  asn: 64512', '  asn: 64512\n  hold_time: 9', /bgp\.hold_time: unknown key "hold_time"/],
  ];
  for (const [from, to, expect] of cases) {
    if (!BGP.includes(from)) throw new Error(`the base has no ${from}`);
    t.match(refusal(BGP.replace(from, to)), expect, to);
  }
  t.match(refusal('bgp:\n  asn: 64512\n  router_id: 192.0.2.2\n  peers: []\n'), /bgp\.peers: /, 'no peers');
  t.match(refusal('bgp:\n  asn: 64512\n  peers:\n    - address: 192.0.2.1\n      asn: 1\n'), /bgp\.router_id: is required/);
});

const svc = (name: string, vip: string, states: Array<'active' | 'draining' | 'down'>, weight = 1): ServiceSpec => {
  const vipAddress = Address.of(vip);
  const backend = (i: number) => Address.of(vipAddress.family === 6 ? `2001:db8:200::${i + 1}` : `198.51.100.${i + 1}`);
  return {
    name,
    vip,
    vipAddress,
    port: 80,
    protocol: 'tcp',
    flags: DEFAULT_FLAGS,
    backends: states.map((state, i) => ({ address: backend(i).text, ip: backend(i), port: 80, weight, state })),
  };
};

t.test('a VIP is announced only while attached, served by a backend of one of its services, and not drained', async (t) => {
  const b = config(BGP).bgp;
  if (!b) throw new Error('no bgp settings');
  const services = [
    svc('web', '203.0.113.10', ['down', 'draining']),
    svc('web-udp', '203.0.113.10', ['active']),
    svc('down', '203.0.113.20', ['down', 'draining', 'active'], 0),
    svc('empty', '203.0.113.30', []),
    svc('web6', '2001:db8:300::10', ['active']),
  ];
  const plan = (attached: string[], drained: boolean) => new Map(planVips(services, attached, drained, b).map((p) => [p.vip, p]));
  const up = plan(['lb0'], false);
  t.same(up.get('203.0.113.10'), { vip: '203.0.113.10', prefix: '203.0.113.10/32', announced: true, services: ['web', 'web-udp'], communities: ['64512:100'], med: 5 });
  t.same(up.get('2001:db8:300::10'), { vip: '2001:db8:300::10', prefix: '2001:db8:300::10/128', announced: true, services: ['web6'], communities: ['64512:200'], med: 5 });
  t.equal(up.get('203.0.113.20')?.reason, 'no serving backend: 1 down, 1 draining, 1 with weight 0');
  t.equal(up.get('203.0.113.30')?.reason, 'no backends');
  t.ok([...plan([], false).values()].every((p) => !p.announced && p.reason === 'the XDP program is not attached to any interface'), 'not attached: nothing');
  t.ok([...plan(['lb0'], true).values()].every((p) => !p.announced && /drained/.test(p.reason ?? '')), 'drained: nothing');
  const v4only = { ...b, peers: b.peers.filter((p) => !p.address.includes(':')) };
  t.equal(planVips(services, ['lb0'], false, v4only).find((p) => p.vip === '2001:db8:300::10')?.reason, 'no IPv6 peer to announce it to');
});

t.test("BIRD's configuration: the attributes in each session's export filter, graceful restart on, and BIRD's own parser accepts it", async (t) => {
  const b = config(BGP).bgp;
  if (!b) throw new Error('no bgp settings');
  const text = birdConfig(b, [
    { prefix: '203.0.113.10/32', communities: ['64512:100', '64512:7'], med: 5 },
    { prefix: '2001:db8:300::10/128', communities: [] },
  ]);
  t.match(text, /protocol static xdplb_vips4 \{\n {2}ipv4 \{ table xdplb4; \};\n {2}route 203\.0\.113\.10\/32 blackhole;\n\}/);
  t.match(text, /route 2001:db8:300::10\/128 blackhole;/);
  t.match(text, /protocol bgp peer_192_0_2_1 \{[^}]*neighbor 192\.0\.2\.1 as 64513;[^}]*hold time 9;[^}]*graceful restart on;/);
  t.match(text, /if net = 203\.0\.113\.10\/32 then \{ bgp_med = 5; bgp_community\.add\(\(64512,100\)\); bgp_community\.add\(\(64512,7\)\); \}/);
  t.match(text, /neighbor 2001:db8:1::1 as 4200000000;[^]*password "s3cret pass";[^]*ipv6 \{ table xdplb6;/);
  t.notMatch(text, /protocol kernel/, 'BIRD never writes the node\'s routes');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-bird-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const [name, conf] of [['full', text], ['empty', birdConfig(b, [])]]) {
    fs.writeFileSync(path.join(dir, name), conf);
    t.doesNotThrow(() => execFileSync('bird', ['-p', '-c', path.join(dir, name)], { stdio: 'pipe' }), `bird -p accepts the ${name} configuration`);
  }
});

t.test('birdc show protocols is read by column, the info column whole', async (t) => {
  const out = [
    'BIRD 2.0.12 ready.',
    'Name       Proto      Table      State  Since         Info',
    'device1    Device     ---        up     2026-12-06 02:14:05  ',
    'peer_192_0_2_1 BGP    ---        up     2026-12-06 02:14:09  Established   ',
    'peer_2001_db8_1__1 BGP ---       start  2026-12-06 02:14:05  Active        Socket: Connection refused',
  ].join('\n');
  t.same(parseProtocols(out), [
    { name: 'device1', state: 'up', since: '2026-12-06 02:14:05', info: '' },
    { name: 'peer_192_0_2_1', state: 'up', since: '2026-12-06 02:14:09', info: 'Established' },
    { name: 'peer_2001_db8_1__1', state: 'start', since: '2026-12-06 02:14:05', info: 'Active        Socket: Connection refused' },
  ]);
});

t.test('without a bgp section nothing of src/bgp is loaded', async (t) => {
  const root = path.resolve(__dirname, '..');
  const probe = (yaml: string) =>
    execFileSync(process.execPath, ['-e', `
      require(${JSON.stringify(path.join(root, 'src', 'config'))}).parseConfig(${JSON.stringify(yaml)}, 'x.yaml');
      require(${JSON.stringify(path.join(root, 'src', 'daemon', 'daemon'))});
      process.stdout.write(Object.keys(require.cache).filter((k) => k.includes('/src/bgp/')).join(','));
    `], { encoding: 'utf8' });
  t.equal(probe(SERVICES), '', 'configuration and daemon modules loaded, src/bgp not');
  t.match(probe(`${SERVICES}${BGP}`), /src\/bgp\/config\.js/, 'with the section, its validation loads');
});
