#!/usr/bin/env node
// The xdplb command line.
import { Command } from 'commander';
import { checkDatapath, formatCheck } from './check';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { version } = require('../../../package.json') as { version: string };

function fail(e: unknown): never {
  process.stderr.write(`xdplb: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}

export function buildCli(): Command {
  const program = new Command('xdplb')
    .description('XDP layer-4 load balancer: Maglev, IPIP/IP6IP6 direct server return, packet recorder')
    .version(version)
    .showHelpAfterError();

  program
    .command('check')
    .description('load and verify every datapath program on this kernel and run each on a test packet; attaches nothing')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExample:\n  xdplb check')
    .action((opts: { json?: boolean }) => {
      try {
        const rows = checkDatapath();
        process.stdout.write((opts.json ? JSON.stringify(rows, null, 2) : formatCheck(rows)) + '\n');
      } catch (e) {
        fail(e);
      }
    });
  return program;
}

if (require.main === module) {
  buildCli().parseAsync(process.argv).catch(fail);
}
