// `xdplb lab up | test | down | status`: the namespace lab from the command line.
import { Command } from 'commander';
import { table } from '../client/output';
import { Lab, LAB_CONFIG, LAB_RUN_DIR, type LabStatus } from './lab';
import { LAB_PREFIX, MAX_NODES } from './topology';
import { formatTestReport, labTest } from './check';

interface LabFlags {
  config: string;
  prefix: string;
  runDir: string;
}

function lab(cmd: Command, nodes?: number): Lab {
  const f = cmd.optsWithGlobals() as LabFlags;
  return new Lab({ configPath: f.config, prefix: f.prefix, runDir: f.runDir, nodes, log: (l) => process.stdout.write(`${l}\n`) });
}

function fail(e: unknown): never {
  process.stderr.write(`xdplb lab: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}

export function nextSteps(l: Lab): string {
  const st = l.state();
  const sock = st?.socket ?? '/run/xdplb-lab/xdplb.sock';
  const x = 'node dist/src/cli/main.js';
  return [
    'The lab stays up. Try:',
    `  ${x} service list --socket ${sock}`,
    `  ${x} stats --socket ${sock}`,
    `  ${x} status --socket ${sock}`,
    `  ${x} record --socket ${sock} --filter 'dst=203.0.113.10/32' --count 20 -w - | tshark -r -   # 10 packets, in and out`,
    `  ip netns exec ${l.plan.ns.client} bash -c 'exec 3<>/dev/tcp/203.0.113.10/80; echo WHO >&3; head -1 <&3'   # which backend answers`,
    `  ${x} lab test      # again: the same table`,
    `  ${x} lab status    # namespaces, daemon, servers, decapsulators`,
    `  ${x} lab down      # remove everything`,
    l.plan.nodes.length > 1 ? `Daemon logs: ${l.plan.nodes.map((_, i) => l.nodeDaemonLog(i)).join(' ')}; the router: birdc -s ${l.routerSocket} show route` : `Daemon log: ${st?.runDir ?? LAB_RUN_DIR}/daemon.log`,
  ].join('\n');
}

function formatStatus(s: LabStatus): string {
  if (!s.up && s.namespaces.length === 0) return 'no lab (run: xdplb lab up)';
  const d = s.daemon;
  if (s.nodes.length > 1) return formatNodes(s);
  const lines = [
    `namespaces: ${s.namespaces.join(' ') || 'none'}`,
    s.router ? `router: pass-through XDP ${s.router.xdpProgId ? `id ${s.router.xdpProgId}` : 'missing'} on the load balancer's link; received ${s.router.fromLb} tunnel packets and ${s.router.otherFromLb} other frames from it` : 'router: none',
    `daemon: ${daemonLine(d)}`,
    '',
    backendTable(s),
  ];
  return lines.join('\n');
}

function daemonLine(d: LabStatus['daemon']): string {
  return `${d.pid === null ? 'not running' : `pid ${d.pid}`}${d.api ? `, API up: ${d.services} services, ${d.backends} backends, program ${d.programId} on ${d.attachments?.join(', ')}` : d.error ? `, API: ${d.error}` : ''}`;
}

const backendTable = (s: LabStatus) =>
  table(
    ['BACKEND', 'ADDRESSES', 'NAMESPACE', 'SERVER', 'DECAP', 'DECAPSULATED', 'PASSED'],
    s.backends.map((b) => [b.name, `${b.v4} ${b.v6}`, b.namespace ? 'yes' : 'no', b.serverPid === null ? 'down' : `pid ${b.serverPid}`, b.decap, b.decapped, b.passed]),
  );

/** Several nodes: one row per node, and the router's route for each VIP. */
function formatNodes(s: LabStatus): string {
  const names = new Map(s.nodes.map((n, i) => [`to-${n.name}`, i]));
  return [
    `namespaces: ${s.namespaces.join(' ') || 'none'}`,
    `router: BIRD ${s.routerBird ? `pid ${s.routerBird}` : 'not running'}; ECMP routes: ${Object.entries(s.routes ?? {}).map(([v, h]) => `${v} over ${h.length} (${h.map((x) => s.nodes[names.get(x) ?? -1]?.name ?? x).join(' ')})`).join(', ') || 'none'}`,
    '',
    table(
      ['NODE', 'ADDRESSES', 'NAMESPACE', 'DAEMON', 'ROUTER XDP', 'TUNNEL PACKETS'],
      s.nodes.map((n) => [n.name, `${n.v4} ${n.v6}`, n.namespace ? 'yes' : 'no', daemonLine(n.daemon), n.router.xdpProgId ? `id ${n.router.xdpProgId}` : 'missing', n.router.fromLb]),
    ),
    '',
    backendTable(s),
  ].join('\n');
}

export function labCommand(): Command {
  const cmd = new Command('lab')
    .description('a namespace lab running xdplb end to end with real DSR traffic: client, router, load balancer, three backends')
    .option('--config <file>', 'the daemon configuration of the lab', LAB_CONFIG)
    .option('--prefix <prefix>', 'namespace name prefix', LAB_PREFIX)
    .option('--run-dir <dir>', 'pid files, logs and state of the lab', LAB_RUN_DIR)
    .addHelpText('after', '\nExample:\n  xdplb lab up && xdplb lab test\n  xdplb lab down');

  cmd
    .command('up')
    .description('build the namespaces, attach the backends\' decapsulator, start their servers and the daemon (removes leftovers first)')
    .option('--nodes <n>', `load-balancer nodes, each with its own daemon announcing the VIPs over BGP to a BIRD router that spreads flows over them by ECMP (1..${MAX_NODES})`, '1')
    .action(async (o: { nodes: string }, c: Command) => {
      const n = Number(o.nodes);
      if (!Number.isInteger(n) || n < 1 || n > MAX_NODES) fail(new Error(`--nodes: an integer in 1..${MAX_NODES}`));
      const l = lab(c, n);
      try {
        const st = await l.up();
        process.stdout.write(`lab up: API ${st.socket}, daemon log ${l.daemonLog}\n`);
      } catch (e) {
        fail(e);
      }
    });

  cmd
    .command('test')
    .description('short TCP connections and UDP datagrams from the client to every service, IPv4 and IPv6; a table per backend')
    .option('--count <n>', 'requests per client address and service', '100')
    .option('--json', 'print the result as JSON')
    .action(async (o: { count: string; json?: boolean }, c: Command) => {
      const l = lab(c);
      try {
        const n = Number(o.count);
        if (!Number.isInteger(n) || n < 1 || n > 10000) throw new Error('--count: an integer in 1..10000');
        const r = await labTest(l, { count: n });
        process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatTestReport(r)}\n\n${nextSteps(l)}\n`);
        if (!r.ok) process.exit(1);
      } catch (e) {
        fail(e);
      }
    });

  cmd
    .command('status')
    .description('what the lab has: namespaces, daemon, servers, decapsulators and their counters')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }, c: Command) => {
      try {
        const s = await lab(c).status();
        process.stdout.write(o.json ? `${JSON.stringify(s, null, 2)}\n` : `${formatStatus(s)}\n`);
      } catch (e) {
        fail(e);
      }
    });

  cmd
    .command('down')
    .description('stop the daemon and servers, remove the namespaces, pins and run directory (safe to run twice)')
    .action(async (_o, c: Command) => {
      try {
        const done = await lab(c).down({ quiet: true });
        process.stdout.write(done.length ? `${done.join('\n')}\n` : 'nothing to remove\n');
      } catch (e) {
        fail(e);
      }
    });
  return cmd;
}
