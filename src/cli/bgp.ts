// `xdplb bgp status`, `xdplb node drain` and `xdplb node undrain`: the BGP
// announcement of the VIPs, through the daemon's API (src/bgp in the daemon).
import { Command } from 'commander';
import { call, type Client } from '../client/client';
import { render, table, type OutputFormat } from '../client/output';
import type { BgpStatusSnapshot } from '../bgp/speaker';

type WithClient = (cmd: Command, fn: (client: Client, o: { output: OutputFormat }) => Promise<void>) => Promise<void>;

const POLL_MS = 500;

function statusText(s: BgpStatusSnapshot): string {
  const drain = s.drain.drained
    ? `drained ${Math.round(s.drain.sinceSeconds)} s ago; ${s.drain.packetsSinceDrain} packets to the VIPs since, ${s.drain.trafficStopped ? 'traffic stopped' : `last ${s.drain.quietSeconds.toFixed(1)} s ago`}`
    : 'not drained';
  return [
    `AS ${s.asn}, router id ${s.routerId}; speaker (BIRD) ${s.speakerRunning ? `running, pid ${s.speakerPid}` : 'not running'}, ${s.speakerRestarts} restarts`,
    `XDP attached to: ${s.attachedInterfaces.join(', ') || 'nothing'}; node ${drain}`,
    '',
    table(['PEER', 'ASN', 'STATE', 'INFO', 'SINCE'], s.peers.map((p) => [p.address, p.asn, p.state, p.info, p.since])),
    '',
    table(
      ['VIP', 'PREFIX', 'ANNOUNCED', 'COMMUNITIES', 'MED', 'SERVICES', 'WHY NOT'],
      s.vips.map((v) => [v.vip, v.prefix, v.announced ? 'yes' : 'no', v.communities.join(',') || '-', v.med ?? '-', v.services.join(','), v.reason || '']),
    ),
  ].join('\n');
}

export function bgpCommands(withClient: WithClient): Command[] {
  const bgp = new Command('bgp').description('BGP announcement of the VIPs (the configuration\'s bgp: section)');
  bgp
    .command('status')
    .description('peers and their state, announced prefixes, and why a VIP is not announced')
    .addHelpText('after', '\nExample:\n  xdplb bgp status -o json')
    .action((_f, cmd: Command) =>
      withClient(cmd, async (c, o) => {
        const s = await call<BgpStatusSnapshot>(c, 'GetBgpStatus', {});
        process.stdout.write(render(o.output, s, () => statusText(s)) + '\n');
      }),
    );

  const node = new Command('node').description('the node as a whole, towards the routers');
  node
    .command('drain')
    .description('withdraw every VIP over BGP, keep forwarding what still arrives, and wait until traffic has stopped')
    .option('--no-wait', 'return once the VIPs are withdrawn')
    .option('--timeout <seconds>', 'give up waiting (exit 1) after this long', '600')
    .addHelpText('after', '\nThe node stays drained, across daemon restarts too, until `xdplb node undrain`.\n\nExample:\n  xdplb node drain --timeout 120')
    .action((f: { wait: boolean; timeout: string }, cmd: Command) =>
      withClient(cmd, async (c, o) => {
        let s = await call<BgpStatusSnapshot>(c, 'DrainNode', {});
        const withdrawn = s.vips.map((v) => v.prefix);
        process.stderr.write(`drained: ${withdrawn.length} VIP prefixes withdrawn (${withdrawn.join(', ') || 'none'}); forwarding goes on\n`);
        const deadline = Date.now() + Number(f.timeout) * 1000;
        while (f.wait && !s.drain.trafficStopped) {
          if (Date.now() > deadline)
            throw new Error(`traffic has not stopped after ${f.timeout} s: ${s.drain.packetsSinceDrain} packets to the VIPs since the drain, the last ${s.drain.quietSeconds.toFixed(1)} s ago`);
          await new Promise((r) => setTimeout(r, POLL_MS));
          s = await call<BgpStatusSnapshot>(c, 'GetBgpStatus', {});
        }
        if (f.wait) process.stderr.write(`traffic stopped: no packets to the VIPs for ${s.drain.quietSeconds.toFixed(1)} s (${s.drain.packetsSinceDrain} packets since the drain)\n`);
        process.stdout.write(render(o.output, s, () => statusText(s)) + '\n');
      }),
    );
  node
    .command('undrain')
    .description('announce the VIPs again (each one that has a serving backend)')
    .action((_f, cmd: Command) =>
      withClient(cmd, async (c, o) => {
        const s = await call<BgpStatusSnapshot>(c, 'UndrainNode', {});
        process.stdout.write(render(o.output, s, () => statusText(s)) + '\n');
      }),
    );
  return [bgp, node];
}
