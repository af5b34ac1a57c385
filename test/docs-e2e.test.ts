// The documentation as a user follows it: the shell blocks marked
// `<!-- docs-test: NAME -->` in README.md, docs/backend-setup.md and
// docs/virtual-networks.md, run as written (only the interface names and, for
// the second backend, its own addresses replaced) in namespaces this test
// makes, then curl from a client namespace to python's http.server on two
// backends, over IPv4 and IPv6. A docs change that breaks the setup fails here.
// The second test runs the README's tshark filters on real recordings.
import t from 'tap';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../src/sys/paths';
import { DECAP_PIN_ROOT } from '../src/cli/decap';
import { needsRoot, netns, pinDir, sh, veth, type Teardown } from '../harness/fixtures';
import { recorderRig, rpc, tsharkRows, VIP4 } from '../harness/recorder';

const ROOT = PACKAGE_ROOT;
const MAIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

type Blocks = Map<string, Array<{ lang: string; text: string }>>;

/** The blocks marked `<!-- docs-test: NAME -->` of a Markdown file, by name, in order. */
export function docsBlocks(file: string): Blocks {
  const out: Blocks = new Map();
  const md = fs.readFileSync(path.join(ROOT, file), 'utf8');
  for (const m of md.matchAll(/<!-- docs-test: ([\w-]+) -->\n```(\w+)\n([\s\S]*?)```/g)) {
    out.set(m[1], [...(out.get(m[1]) ?? []), { lang: m[2], text: m[3] }]);
  }
  return out;
}

function block(blocks: Blocks, name: string, lang = 'sh'): string {
  const b = blocks.get(name)?.filter((x) => x.lang === lang) ?? [];
  if (b.length === 0) throw new Error(`no "${name}" ${lang} block marked docs-test`);
  return b.map((x) => x.text).join('\n');
}

const replaceAll = (text: string, subs: ReadonlyArray<[string | RegExp, string]>) => subs.reduce((s, [from, to]) => s.replace(typeof from === 'string' ? new RegExp(`\\b${from.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\b`, 'g') : from, to), text);

/** `xdplb` on PATH, as an installed package puts it there. */
function binDir(t: Teardown): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplbt-docs-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'xdplb'), `#!/bin/sh\nexec ${process.execPath} ${MAIN} "$@"\n`, { mode: 0o755 });
  return dir;
}

/** A documented block in a namespace's root shell (nsenter: bpffs stays visible), stopping at the first failing command. */
function runIn(ns: string, bin: string, script: string, what: string): string {
  const r = spawnSync('nsenter', [`--net=/var/run/netns/${ns}`, 'sh', '-ec', script], { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } });
  if (r.status !== 0) throw new Error(`${what} failed (exit ${r.status}):\n${script}\n${r.stderr}`);
  return r.stdout;
}

function ipBatch(ns: string, lines: string[]): void {
  execFileSync('ip', ['-n', ns, '-batch', '-'], { input: lines.join('\n') + '\n', stdio: ['pipe', 'pipe', 'pipe'] });
}

function background(t: Teardown, argv: string[], log: string): ChildProcess {
  const fd = fs.openSync(log, 'a');
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 5000).unref();
      }),
  );
  return child;
}

async function waitFor(cond: () => boolean, what: string, child?: ChildProcess, log?: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (cond()) return;
    if (child && child.exitCode !== null) throw new Error(`${what}: the process exited${log ? `:\n${fs.readFileSync(log, 'utf8').slice(-2000)}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what}: not after 20 s`);
}

t.test('an edge node and two backends set up only from the docs serve curl over IPv4 and IPv6', needsRoot, async (t) => {
  const readme = docsBlocks('README.md');
  const backendDoc = docsBlocks('docs/backend-setup.md');
  const virtual = docsBlocks('docs/virtual-networks.md');
  const bin = binDir(t);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplbt-docs-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));

  // The network around the node, which the docs take as given: a router
  // between a client, the load balancer and a bridge with the backends, and
  // the routes a network would have (VIPs and outer_source to the node).
  const [client, router, lb, be1, be2] = [netns(t), netns(t), netns(t), netns(t), netns(t)];
  const tag = `${process.pid % 100000}`;
  const ifs = { client: `dc${tag}`, lb: `dl${tag}`, routerLb: `dr${tag}`, be1: `db${tag}a`, be2: `db${tag}b` };
  t.teardown(() => {
    for (const i of [ifs.routerLb, ifs.be1, ifs.be2]) fs.rmSync(path.join(DECAP_PIN_ROOT, i), { recursive: true, force: true });
    // the docs' default pin root, once empty: no other decapsulator's pins are in it
    try {
      fs.rmdirSync(DECAP_PIN_ROOT);
    } catch {
      // another decapsulator's pins are there, or it is gone already
    }
  });
  veth(client, router, ifs.client, 'to-client');
  veth(lb, router, ifs.lb, ifs.routerLb);
  veth(be1, router, ifs.be1, 'to-be1');
  veth(be2, router, ifs.be2, 'to-be2');
  sh('ip', 'netns', 'exec', router, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1');
  ipBatch(router, [
    'link add br0 type bridge',
    'link set to-be1 master br0',
    'link set to-be2 master br0',
    'link set br0 up',
    'addr add 192.0.2.129/26 dev to-client',
    'addr add 2001:db8:1::1/64 dev to-client nodad',
    `addr add 192.0.2.65/26 dev ${ifs.routerLb}`,
    `addr add 2001:db8:2::1/64 dev ${ifs.routerLb} nodad`,
    'addr add 198.51.100.1/24 dev br0',
    'addr add 2001:db8:200::1/64 dev br0 nodad',
    'route add 203.0.113.0/24 via 192.0.2.66',
    'route add 192.0.2.0/26 via 192.0.2.66',
    'route add 2001:db8:100::/48 via 2001:db8:2::2',
    'route add 2001:db8:ffff::/112 via 2001:db8:2::2',
  ]);
  ipBatch(client, [`addr add 192.0.2.130/26 dev ${ifs.client}`, `addr add 2001:db8:1::2/64 dev ${ifs.client} nodad`, 'route add default via 192.0.2.129', 'route add default via 2001:db8:1::1']);
  ipBatch(lb, [`addr add 192.0.2.66/26 dev ${ifs.lb}`, `addr add 2001:db8:2::2/64 dev ${ifs.lb} nodad`, 'route add default via 192.0.2.65', 'route add default via 2001:db8:2::1']);
  // No neighbour entry is made for the router here: the daemon resolves
  // its next hops itself (README, "Next-hop neighbours"), as on a fresh node.
  for (const [ns, own4, own6, dev] of [[be1, '198.51.100.11', '2001:db8:200::11', ifs.be1], [be2, '198.51.100.12', '2001:db8:200::12', ifs.be2]]) {
    ipBatch(ns, [`addr add ${own4}/24 dev ${dev}`, `addr add ${own6}/64 dev ${dev} nodad`, 'route add default via 198.51.100.1', 'route add default via 2001:db8:200::1']);
  }

  // Backends: docs/backend-setup.md, the interface and (for the second) its own addresses replaced.
  const backendScript = block(backendDoc, 'backend');
  t.match(backendScript, /xdplb decap attach eth0/, 'the backend setup attaches the decapsulator with the CLI');
  runIn(be1, bin, replaceAll(backendScript, [['eth0', ifs.be1]]), 'backend-setup.md on be1');
  runIn(be2, bin, replaceAll(backendScript, [['eth0', ifs.be2], ['198.51.100.11', '198.51.100.12'], ['2001:db8:200::11', '2001:db8:200::12']]), 'backend-setup.md on be2');
  // Virtual networks: the router's end of the node's veth, and the client.
  runIn(router, bin, replaceAll(block(virtual, 'veth-peer'), [['veth-lb', ifs.routerLb]]), 'virtual-networks.md on the router');
  runIn(client, bin, replaceAll(block(virtual, 'client'), [['eth0', ifs.client]]), 'virtual-networks.md on the client');
  // The node: README's commands, then its configuration with this test's own paths.
  runIn(lb, bin, block(readme, 'node'), 'README node setup');
  const bpffs = pinDir(t);
  const config = [
    replaceAll(block(readme, 'node-config', 'yaml'), [['eth0', ifs.lb]]),
    `bpffs: ${bpffs}`,
    `state_dir: ${path.join(work, 'state')}`,
    `recorder_dir: ${path.join(work, 'recordings')}`,
    'api:',
    `  socket: ${path.join(work, 'xdplb.sock')}`,
  ].join('\n');
  fs.writeFileSync(path.join(work, 'xdplb.yaml'), config);
  const daemonLog = path.join(work, 'daemon.log');
  const daemon = background(t, ['nsenter', `--net=/var/run/netns/${lb}`, process.execPath, MAIN, 'daemon', '--config', path.join(work, 'xdplb.yaml'), '--detach-on-exit=true'], daemonLog);
  await waitFor(() => fs.existsSync(daemonLog) && fs.readFileSync(daemonLog, 'utf8').includes('"msg":"ready"'), 'the daemon ready', daemon, daemonLog);

  // Real servers on the backends, answering with their name.
  for (const [ns, name] of [[be1, 'be1'], [be2, 'be2']]) {
    const dir = path.join(work, name);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'index.html'), `${name}\n`);
    const log = path.join(work, `${name}.log`);
    const server = background(t, ['ip', 'netns', 'exec', ns, 'python3', '-m', 'http.server', '80', '--bind', '::', '--directory', dir], log);
    await waitFor(() => sh('ip', 'netns', 'exec', ns, 'ss', '-Hltn', 'sport = :80').trim() !== '', `http.server on ${name}`, server, log);
  }

  for (const [family, url, firstPort] of [['IPv4', 'http://203.0.113.10/', 41000], ['IPv6', 'http://[2001:db8:100::10]/', 42000]] as const) {
    const answers: string[] = [];
    for (let i = 0; i < 16; i++) {
      const r = spawnSync('ip', ['netns', 'exec', client, 'curl', '-sS', '--max-time', '5', '--local-port', String(firstPort + i), url], { encoding: 'utf8' });
      answers.push(r.status === 0 ? r.stdout.trim() : `curl exit ${r.status}: ${r.stderr.trim()}`);
    }
    t.ok(answers.every((a) => a === 'be1' || a === 'be2'), `${family}: curl got every page from a backend (${answers.join(' ')})`);
    t.ok(answers.includes('be1') && answers.includes('be2'), `${family}: both backends served`);
  }
  for (const [ns, dev] of [[be1, ifs.be1], [be2, ifs.be2]]) {
    const st = JSON.parse(runIn(ns, bin, 'xdplb -o json decap status', 'decap status')) as Array<{ interface: string; attached: boolean; decapsulated: number }>;
    const mine = st.find((s) => s.interface === dev);
    t.ok(mine?.attached && mine.decapsulated > 0, `${dev}: the decapsulator attached by the docs' command stripped ${mine?.decapsulated} outer headers`);
  }
});

t.test("the README's tshark filters select each capture point of a real recording", needsRoot, async (t) => {
  const shBlock = block(docsBlocks('README.md'), 'tshark');
  const lines = shBlock.split('\n').filter((l) => l.startsWith('tshark '));
  t.equal(lines.length, 3, 'three commands: pcapng in, pcapng out, PCAP in');
  const rig = await recorderRig(t);
  const N = 6;
  const started = [];
  for (const [file, format] of [['web', 'CAPTURE_FORMAT_PCAPNG'], ['web', 'CAPTURE_FORMAT_PCAP']]) {
    const [e, rec] = await rpc<{ id: string }>(rig.recorder, 'StartRecording', { fileSink: { fileName: file, format }, include: [{ destinationCidr: `${VIP4}/32` }] });
    t.error(e);
    started.push(rec.id);
  }
  rig.send(Array.from({ length: N }, (_, i) => rig.frame({ src: `192.0.2.${100 + i}`, dst: VIP4, sport: 40000 + i, payload: 20 })));
  await new Promise((r) => setTimeout(r, 300));
  const files: string[] = [];
  for (const id of started) {
    const [e, s] = await rpc<{ files: Array<{ path: string }> }>(rig.recorder, 'StopRecording', { id });
    t.error(e);
    files.push(s.files[0].path);
  }
  const [pcapng, pcap] = files;
  t.equal(tsharkRows(pcapng, ['frame.number']).length, 2 * N, `the pcapng file holds ${2 * N} packets: an inbound and an outbound copy of each`);
  const flagged = spawnSync('tshark', ['-r', pcapng, '-Y', 'tcp.analysis.retransmission || tcp.analysis.duplicate_ack', '-T', 'fields', '-e', 'frame.interface_name'], { encoding: 'utf8' });
  t.same(flagged.stdout.split('\n').filter((l) => l !== ''), Array(N).fill('xdplb-out'), 'unfiltered, Wireshark takes each outbound copy for a retransmission, as the README warns');
  const protos = (line: string): string[] => {
    const cmd = line.replace(/#.*$/, '').replace(/\bweb\.pcap(ng)?\b/, (m) => (m.endsWith('ng') ? pcapng : pcap));
    const r = spawnSync('sh', ['-c', `${cmd} -T fields -e ip.proto -E occurrence=a -E aggregator=,`], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
    return r.stdout.split('\n').filter((l) => l !== '');
  };
  t.same(protos(lines[0]), Array(N).fill('6'), `${lines[0]}: the ${N} packets as received, plain TCP`);
  t.same(protos(lines[1]), Array(N).fill('4,6'), `${lines[1]}: the ${N} packets as sent, TCP inside IPIP`);
  t.same(protos(lines[2]), Array(N).fill('6'), `${lines[2]}: the ${N} received packets of the PCAP file`);
});
