#!/usr/bin/env node
// The xdplb command line: the daemon itself, a gRPC client of it for
// everything else, and the backend's decapsulator (local, no daemon).
import { Command, Option } from 'commander';
import { checkDatapath, formatCheck } from './check';
import { call, connect, type Client, type ConnectOptions } from '../client/client';
import { parseBackendArg, parseBackendRef, parsePort, parseProtocol } from './args';
import { OUTPUT_FORMATS, render, table, type OutputFormat } from '../client/output';
import { DEFAULT_NODE } from '../control/model';
import { labCommand } from '../lab/command';
import { recordCommand } from './record';
import { decapCommand } from './decap';
import { bgpCommands } from './bgp';
import { hostPort } from '../net/address';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { version } = require('../../../package.json') as { version: string };

function fail(e: unknown): never {
  process.stderr.write(`xdplb: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}

interface GlobalOpts extends ConnectOptions {
  output: OutputFormat;
}

interface PbBackend {
  address: string;
  port: number;
  weight: number;
  state: string;
}
interface PbService {
  name: string;
  vip: string;
  port: number;
  protocol: string;
  flags: Record<string, boolean>;
  backends: PbBackend[];
  owner: string;
}

const short = (enumName: string) => enumName.replace(/^(PROTOCOL|BACKEND_STATE|OWNER)_/, '').toLowerCase();
const portText = (p: number) => (p === 0 ? 'all' : String(p));

// proto-loader's `oneofs` option adds a virtual field per proto3 `optional`
// (`_icmpEcho: 'icmpEcho'`): keep only the real, boolean flags.
function realFlags(flags: Record<string, unknown> | undefined): Record<string, boolean> {
  return Object.fromEntries(Object.entries(flags ?? {}).filter(([k, v]) => !k.startsWith('_') && typeof v === 'boolean')) as Record<string, boolean>;
}

function serviceTable(services: PbService[]): string {
  return table(
    ['NAME', 'VIP', 'PORT', 'PROTO', 'FLAGS', 'BACKENDS', 'OWNER'],
    services.map((s) => [
      s.name,
      s.vip,
      portText(s.port),
      short(s.protocol),
      Object.entries(realFlags(s.flags))
        .filter(([, v]) => v)
        .map(([k]) => k)
        .join(',') || '-',
      s.backends.map((b) => `${hostPort(b.address, b.port)} w=${b.weight}${b.state === 'BACKEND_STATE_ACTIVE' ? '' : ` ${short(b.state)}`}`).join('; ') || '-',
      short(s.owner),
    ]),
  );
}

function plainService(s: PbService) {
  return {
    ...s,
    flags: realFlags(s.flags),
    protocol: short(s.protocol),
    owner: short(s.owner),
    backends: s.backends.map((b) => ({ ...b, state: short(b.state) })),
  };
}

function withClient<T>(cmd: Command, fn: (client: Client, o: GlobalOpts) => Promise<T>): Promise<void> {
  const o = cmd.optsWithGlobals() as GlobalOpts;
  let client: Client;
  try {
    client = connect(o);
  } catch (e) {
    fail(e);
  }
  return fn(client, o)
    .then(() => client.close())
    .catch((e) => {
      client.close();
      fail(e);
    });
}

function printServices(o: GlobalOpts, services: PbService[]): void {
  const plain = services.map(plainService);
  process.stdout.write(render(o.output, plain.length === 1 ? plain[0] : plain, () => serviceTable(services)) + '\n');
}

function collect(value: string, prev: string[]): string[] {
  return [...prev, value];
}

function serviceFromFlags(name: string, f: Record<string, unknown>) {
  return {
    name,
    vip: f.vip,
    port: parsePort(String(f.port ?? 'all'), '--port'),
    protocol: parseProtocol(String(f.protocol ?? 'tcp')),
    flags: { l4Dnat: !!f.dnat, sourceHash: !!f.sourceHash, conntrackBypass: !!f.conntrackBypass, icmpEcho: f.echo !== false },
    backends: (f.backend as string[]).map((b) => parseBackendArg(b)),
  };
}

function addServiceFlags(cmd: Command): Command {
  return cmd
    .requiredOption('--vip <address>', 'virtual IP (IPv4 or IPv6)')
    .option('--port <port>', 'port, or "all" for every port of the VIP', 'all')
    .option('--protocol <tcp|udp>', 'transport protocol', 'tcp')
    .option('--backend <addr[:port][,weight=N][,state=S]>', 'a backend (repeatable)', collect, [])
    .option('--dnat', 'rewrite the destination port to the backend port (L4 DNAT)')
    .option('--source-hash', 'hash on the client address only, so a client sticks to one backend')
    .option('--conntrack-bypass', 'skip the connection table; every packet follows the Maglev table')
    .option('--no-echo', 'do not answer ICMP echo to the VIP');
}

export function buildCli(): Command {
  const program = new Command('xdplb')
    .description('XDP layer-4 load balancer: Maglev, IPIP/IP6IP6 direct server return, packet recorder')
    .version(version)
    .showHelpAfterError()
    .option('--socket <path>', 'daemon API unix socket', DEFAULT_NODE.api.socket)
    .option('--address <host:port>', 'daemon API over TCP (mutual TLS)')
    .option('--tls-cert <file>', 'client certificate for --address')
    .option('--tls-key <file>', 'client key for --address')
    .option('--tls-ca <file>', 'CA of the daemon certificate for --address')
    .addOption(new Option('-o, --output <format>', 'output format').choices(OUTPUT_FORMATS).default('table'));

  program
    .command('check')
    .description('load and verify every datapath program on this kernel and run each on a test packet; attaches nothing')
    .addHelpText('after', '\nExample:\n  xdplb check -o json')
    .action((_o, cmd: Command) => {
      try {
        const rows = checkDatapath();
        const o = cmd.optsWithGlobals() as GlobalOpts;
        process.stdout.write(render(o.output, rows, () => formatCheck(rows)) + '\n');
      } catch (e) {
        fail(e);
      }
    });

  program
    .command('daemon')
    .description('run the load balancer daemon: attach the datapath, apply the config, serve the API')
    .requiredOption('-c, --config <file>', 'YAML configuration file')
    .option('--detach-on-exit <bool>', 'on exit, detach the program and remove the pins (clean uninstall)', 'false')
    .addHelpText('after', '\nExample:\n  xdplb daemon --config /etc/xdplb/xdplb.yaml\n  xdplb daemon --config /etc/xdplb/xdplb.yaml --detach-on-exit=true   # stop forwarding and remove everything')
    .action(async (o: { config: string; detachOnExit: string }) => {
      if (!['true', 'false'].includes(o.detachOnExit)) fail('--detach-on-exit: expected true or false');
      const { runDaemon } = await import('../daemon/daemon');
      await runDaemon({ configPath: o.config, detachOnExit: o.detachOnExit === 'true' }).catch(fail);
    });

  const service = program.command('service').description('create, inspect, change and delete services');
  addServiceFlags(service.command('create <name>').description('create a service (owned by the API, persisted by the daemon)'))
    .addHelpText('after', '\nExample:\n  xdplb service create web --vip 203.0.113.10 --port 80 --protocol tcp \\\n    --backend 198.51.100.11:80 --backend 198.51.100.12:80,weight=2')
    .action((name: string, f: Record<string, unknown>, cmd: Command) =>
      withClient(cmd, async (c, o) => printServices(o, [await call<PbService>(c, 'CreateService', { service: serviceFromFlags(name, f) })])),
    );
  addServiceFlags(service.command('update <name>').description('replace the whole spec of an API-owned service'))
    .addHelpText('after', '\nExample:\n  xdplb service update web --vip 203.0.113.10 --port 80 --backend 198.51.100.11:80')
    .action((name: string, f: Record<string, unknown>, cmd: Command) =>
      withClient(cmd, async (c, o) => printServices(o, [await call<PbService>(c, 'UpdateService', { service: serviceFromFlags(name, f) })])),
    );
  service
    .command('get <name>')
    .description('show one service')
    .addHelpText('after', '\nExample:\n  xdplb service get web -o yaml')
    .action((name: string, _f, cmd: Command) =>
      withClient(cmd, async (c, o) => printServices(o, [await call<PbService>(c, 'GetService', { name })])),
    );
  service
    .command('list')
    .description('list every service')
    .addHelpText('after', '\nExample:\n  xdplb service list --socket /run/xdplb-lab/xdplb.sock')
    .action((_f, cmd: Command) =>
      withClient(cmd, async (c, o) => {
        const r = await call<{ services: PbService[] }>(c, 'ListServices', {});
        const plain = r.services.map(plainService);
        process.stdout.write(render(o.output, plain, () => serviceTable(r.services)) + '\n');
      }),
    );
  service
    .command('delete <name>')
    .description('delete an API-owned service')
    .addHelpText('after', '\nExample:\n  xdplb service delete web')
    .action((name: string, _f, cmd: Command) => withClient(cmd, async (c) => void (await call(c, 'DeleteService', { name }))));

  const backend = program.command('backend').description('add, remove and drain the backends of a service');
  backend
    .command('add <service> <backend>')
    .description('add a backend: ADDRESS[:PORT][,weight=N][,state=S]')
    .addHelpText('after', '\nExample:\n  xdplb backend add web 198.51.100.13:80,weight=3')
    .action((svc: string, b: string, _f, cmd: Command) =>
      withClient(cmd, async (c, o) => printServices(o, [await call<PbService>(c, 'AddBackend', { service: svc, backend: parseBackendArg(b, 'backend') })])),
    );
  backend
    .command('remove <service> <backend>')
    .description('remove a backend: ADDRESS:PORT; its flows move to the others')
    .addHelpText('after', '\nExample:\n  xdplb backend remove web 198.51.100.13:80')
    .action((svc: string, b: string, _f, cmd: Command) =>
      withClient(cmd, async (c, o) => printServices(o, [await call<PbService>(c, 'RemoveBackend', { service: svc, backend: parseBackendRef(b) })])),
    );
  backend
    .command('drain <service> <backend>')
    .description('drain a backend: established flows stay, new flows go elsewhere')
    .addHelpText('after', '\nExample:\n  xdplb backend drain web 198.51.100.13:80')
    .action((svc: string, b: string, _f, cmd: Command) =>
      withClient(cmd, async (c, o) => printServices(o, [await call<PbService>(c, 'DrainBackend', { service: svc, backend: parseBackendRef(b) })])),
    );

  program
    .command('status')
    .description('where the datapath is attached, program, map fill levels, version')
    .addHelpText('after', '\nExample:\n  xdplb status -o json')
    .action((_f, cmd: Command) =>
      withClient(cmd, async (c, o) => {
        const s = await call<
          Record<string, unknown> & {
            attachments: Array<Record<string, unknown>>;
            maps: Array<Record<string, number | string>>;
            nextHops?: Array<Record<string, unknown>>;
            pathMtus?: Array<{ backend: string; mtu: number; expiresInSeconds: number }>;
            routeWarnings?: string[];
          }
        >(c, 'GetNodeStatus', {});
        process.stdout.write(
          render(o.output, s, () =>
            [
              `version ${s.version}, program id ${s.programId} (${s.programInstructions} insns), maglev M=${s.maglevSize}, bpffs ${s.bpffs}, up ${Math.round(Number(s.uptimeSeconds))} s`,
              `${s.services} services, ${s.backends} backends`,
              '',
              table(['INTERFACE', 'IFINDEX', 'MODE', 'PROGRAM'], s.attachments.map((a) => [String(a.interface), String(a.ifindex), String(a.mode), String(a.programId)])),
              '',
              table(['MAP', 'ENTRIES', 'CAPACITY'], s.maps.map((m) => [String(m.name), String(m.entries), String(m.capacity)])),
              '',
              `next hops: ${s.nextHopsResolved ?? 0} resolved, ${s.nextHopsUnresolved ?? 0} unresolved`,
              table(['NEXT HOP', 'INTERFACE', 'STATE', 'BACKENDS'], (s.nextHops ?? []).map((n) => [String(n.address), String(n.interface || '-'), `${n.resolved ? 'resolved' : 'unresolved'} (${String(n.state)})`, String(n.backends)])),
              ...(s.pathMtus?.length
                ? ['', table(['BACKEND', 'PATH MTU', 'EXPIRES IN'], s.pathMtus.map((p) => [p.backend, String(p.mtu), `${Math.round(Number(p.expiresInSeconds))} s`]))]
                : []),
              ...(s.routeWarnings ?? []).map((w) => `warning: ${w}`),
            ].join('\n'),
          ) + '\n',
        );
      }),
    );

  program
    .command('stats')
    .description('packets and bytes per service and backend, verdicts and pass/drop reasons')
    .option('--service <name>', 'only this service')
    .option('--watch [ms]', 'stream counters every interval (default 1000 ms) until Ctrl-C')
    .addHelpText('after', '\nExample:\n  xdplb stats\n  xdplb stats --service web --watch 2000')
    .action((f: { service?: string; watch?: string | boolean }, cmd: Command) =>
      withClient(cmd, async (c, o) => {
        const print = (s: Counters) => process.stdout.write(render(o.output, s, () => countersTable(s)) + '\n');
        if (!f.watch) return print(await call<Counters>(c, 'GetCounters', { service: f.service ?? '' }));
        const intervalMs = typeof f.watch === 'string' ? Number(f.watch) : 1000;
        const stream = (c.WatchCounters as (r: unknown) => NodeJS.EventEmitter & { cancel(): void })({ service: f.service ?? '', intervalMs });
        process.once('SIGINT', () => stream.cancel());
        await new Promise<void>((resolve, reject) => {
          stream.on('data', print);
          stream.on('end', resolve);
          stream.on('error', (e: { code?: number; details?: string }) => (e.code === 1 ? resolve() : reject(new Error(e.details ?? String(e)))));
        });
      }),
    );

  // packet captures (src/cli/record.ts)
  program.addCommand(recordCommand());
  program.addCommand(decapCommand());
  for (const c of bgpCommands(withClient)) program.addCommand(c);

  // the namespace lab (src/lab)
  program.addCommand(labCommand());
  return program;
}

interface Counters {
  timestamp: number;
  services: Array<{ name: string; traffic: { packets: number; bytes: number }; backends: Array<{ address: string; port: number; traffic: { packets: number; bytes: number } }> }>;
  verdicts: Record<string, number>;
  reasons: Record<string, number>;
  nexthopLookups: number | string;
  flowCacheFills: number | string;
}

function countersTable(s: Counters): string {
  const rows: Array<Array<string | number>> = [];
  for (const svc of s.services) {
    rows.push([svc.name, '', svc.traffic.packets, svc.traffic.bytes]);
    for (const b of svc.backends) rows.push(['', hostPort(b.address, b.port), b.traffic.packets, b.traffic.bytes]);
  }
  const nonzero = (m: Record<string, number>) => Object.entries(m).filter(([, v]) => v > 0);
  return [
    table(['SERVICE', 'BACKEND', 'PACKETS', 'BYTES'], rows),
    '',
    table(['VERDICT', 'PACKETS'], nonzero(s.verdicts)),
    '',
    table(['REASON', 'PACKETS'], nonzero(s.reasons)),
    '',
    `next-hop lookups (FIB, to refresh the per-backend cache): ${s.nexthopLookups}`,
    `flow-cache fills (packets that missed the per-CPU flow cache): ${s.flowCacheFills}`,
  ].join('\n');
}

if (require.main === module) {
  buildCli().parseAsync(process.argv).catch(fail);
}
