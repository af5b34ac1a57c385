// `xdplb decap attach | detach | status` as a backend's root shell runs it:
// two interfaces in one namespace get decapsulators that share no map; running
// attach again leaves the same maps with the new lists; bad arguments exit 1
// with a message naming the argument and change nothing.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as bpf from '../src/datapath/bpf';
import { PACKAGE_ROOT } from '../src/sys/paths';
import { DECAP_LOCAL_MAP, REVNAT_MAP } from '../src/lab/decap';
import { needsRoot, netns, pinDir, sh, veth } from '../harness/fixtures';

const CLI = path.join(PACKAGE_ROOT, 'dist', 'src', 'cli', 'main.js');

function xdplb(ns: string, ...args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('nsenter', [`--net=/var/run/netns/${ns}`, process.execPath, CLI, ...args], { encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function mapId(pin: string): number {
  const m = bpf.mapFromPin(pin);
  try {
    return m.id;
  } finally {
    m.close();
  }
}

function xdpProg(ns: string, dev: string): number {
  const j = JSON.parse(sh('ip', '-n', ns, '-j', '-d', 'link', 'show', 'dev', dev)) as Array<{ xdp?: { prog?: { id: number } } }>;
  return j[0].xdp?.prog?.id ?? 0;
}

t.test('two decapsulators in one namespace, re-runs, bad arguments', needsRoot, async (t) => {
  const ns = netns(t);
  veth(ns, ns, 'be0', 'be1');
  const root = pinDir(t);
  const P = ['--pin-root', root];
  const status = () => JSON.parse(xdplb(ns, '-o', 'json', 'decap', 'status', ...P).stdout) as Array<{ interface: string; attached: boolean; progId: number; addresses: string[]; dnat: string[] }>;

  t.match(xdplb(ns, 'decap', 'attach', '--help').stdout, /not a call to the xdplb daemon/, '--help says it runs locally, not through the daemon');

  let r = xdplb(ns, 'decap', 'attach', 'be0', '--local', '198.51.100.11', '--local', '2001:db8:200::11', '--dnat', 'tcp/203.0.113.10:80=8080', ...P);
  t.equal(r.status, 0, `attach be0: ${r.stderr}`);
  r = xdplb(ns, 'decap', 'attach', 'be1', '--local', '198.51.100.12', ...P);
  t.equal(r.status, 0, `attach be1: ${r.stderr}`);

  const local0 = mapId(path.join(root, 'be0', DECAP_LOCAL_MAP));
  const local1 = mapId(path.join(root, 'be1', DECAP_LOCAL_MAP));
  t.not(local0, local1, 'each interface has its own address map');
  t.not(mapId(path.join(root, 'be0', REVNAT_MAP)), mapId(path.join(root, 'be1', REVNAT_MAP)), 'and its own reverse-DNAT map');
  let st = status();
  t.same(
    st.map((s) => [s.interface, s.attached, s.addresses, s.dnat]),
    [
      ['be0', true, ['198.51.100.11', '2001:db8:200::11'], ['tcp/203.0.113.10:80=8080']],
      ['be1', true, ['198.51.100.12'], []],
    ],
    'status: both attached, each with only its own addresses and DNAT ports',
  );
  t.equal(xdpProg(ns, 'be0'), st[0].progId, 'be0 runs the program pinned for be0');
  t.equal(xdpProg(ns, 'be1'), st[1].progId, 'be1 runs the program pinned for be1');
  t.match(sh('ip', 'netns', 'exec', ns, 'tc', 'filter', 'show', 'dev', 'be0', 'egress'), /xdplb_revnat/, 'be0 has the reverse-DNAT filter on egress');

  r = xdplb(ns, 'decap', 'attach', 'be0', '--local', '198.51.100.11', '--local', '2001:db8:200::11', '--dnat', 'tcp/203.0.113.10:80=8080', ...P);
  t.equal(r.status, 0, `the same attach again succeeds: ${r.stderr}`);
  t.equal(mapId(path.join(root, 'be0', DECAP_LOCAL_MAP)), local0, 'and keeps the same maps');
  const again = status();
  t.same(again.map((s) => [s.interface, s.attached, s.addresses, s.dnat]), st.map((s) => [s.interface, s.attached, s.addresses, s.dnat]), 'and the same state');
  t.equal(xdpProg(ns, 'be0'), again[0].progId, 'be0 still runs its pinned program');

  r = xdplb(ns, 'decap', 'attach', 'be1', '--local', '198.51.100.13', ...P);
  t.equal(r.status, 0, 'attach with another address list');
  t.same(status()[1].addresses, ['198.51.100.13'], 'replaces the list instead of adding to it');
  st = status();

  const bad: Array<[string[], RegExp]> = [
    [['be0', '--local', '198.51.100'], /--local 198\.51\.100: expected an IPv4 or IPv6 address/],
    [['be0', '--local', '198.51.100.11', '--dnat', 'tcp/203.0.113.10:80'], /--dnat tcp\/203\.0\.113\.10:80: expected PROTO\/VIP:SERVICE_PORT=BACKEND_PORT/],
    [['be0', '--local', '198.51.100.11', '--dnat', 'sctp/203.0.113.10:80=8080'], /--dnat sctp/],
    [['be0', '--local', '198.51.100.11', '--dnat', 'tcp/[203.0.113.10]:80=8080'], /"203\.0\.113\.10" is not an IPv6 address/],
    [['be0', '--local', '198.51.100.11', '--dnat', 'tcp/203.0.113.10:80=70000'], /backend port 70000 is not in 1\.\.65535/],
    [['be0'], /--local: at least one/],
    [['be0', '--local', '198.51.100.11', '--pass-through'], /--pass-through decapsulates nothing/],
    [['nosuch0', '--local', '198.51.100.11'], /interface "nosuch0": no such interface/],
    [['../be0', '--local', '198.51.100.11'], /interface "\.\.\/be0": not an interface name/],
    [['be0', '--local', '198.51.100.11', '--mode', 'offload'], /--mode/],
  ];
  for (const [args, msg] of bad) {
    r = xdplb(ns, 'decap', 'attach', ...args, ...P);
    t.equal(r.status, 1, `attach ${args.join(' ')}: exit 1`);
    t.match(r.stderr, msg, `attach ${args.join(' ')}: says which argument is wrong`);
  }
  const settled = (l: typeof st) => l.map((x) => [x.interface, x.attached, x.progId, x.addresses, x.dnat]);
  t.same(settled(status()), settled(st), 'none of them changed anything (the counters move with the veths\' own IPv6 traffic)');
  t.notOk(fs.existsSync(path.join(root, 'nosuch0')), 'nor pinned anything for an interface that does not exist');

  // Any program that is not the one pinned for the interface counts as
  // someone else's: be0's decapsulator stands in for it on a third interface.
  sh('ip', '-n', ns, 'link', 'add', 'other0', 'type', 'veth', 'peer', 'name', 'other1');
  sh('nsenter', `--net=/var/run/netns/${ns}`, 'ip', 'link', 'set', 'dev', 'other0', 'xdpgeneric', 'pinned', path.join(root, 'be0', 'prog_xdplb_decap'));
  r = xdplb(ns, 'decap', 'attach', 'other0', '--local', '198.51.100.11', '--mode', 'generic', ...P);
  t.equal(r.status, 1, 'attach over a program that is not this decapsulator: exit 1');
  t.match(r.stderr, new RegExp(`interface "other0": XDP program id ${st[0].progId} is attached`), 'naming the interface and the program');
  t.equal(xdpProg(ns, 'other0'), st[0].progId, 'that program stays attached');
  t.notOk(fs.existsSync(path.join(root, 'other0')), 'and nothing was pinned for other0');

  r = xdplb(ns, 'decap', 'detach', 'be0', ...P);
  t.equal(r.status, 0, 'detach be0');
  t.equal(xdpProg(ns, 'be0'), 0, 'be0 runs no XDP program any more');
  t.notMatch(sh('ip', 'netns', 'exec', ns, 'tc', 'filter', 'show', 'dev', 'be0', 'egress'), /xdplb_revnat/, 'nor the reverse-DNAT filter');
  t.notOk(fs.existsSync(path.join(root, 'be0')), 'its pins are gone');
  t.same(status().map((s) => [s.interface, s.attached, s.addresses]), [['be1', true, ['198.51.100.13']]], 'be1 is untouched');
  r = xdplb(ns, 'decap', 'detach', 'be0', ...P);
  t.equal(r.status, 0, 'detach again: nothing to do, no error');
  t.match(r.stdout, /no decapsulator for be0/);
});
