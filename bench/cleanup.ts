// Teardown for benchmarks: the test fixtures' cleanup contract outside tap, run
// in reverse order of registration, every step attempted even when one fails.
import type { Teardown } from '../harness/fixtures';

/**
 * Ctrl-C or SIGTERM during a benchmark: `stopping` turns true, and the
 * benchmark finishes its current `unit` and cleans up instead of dying with
 * its namespaces and pins left behind.
 */
export function stopOnSignal(unit: string): { readonly stopping: boolean } {
  const state = { stopping: false };
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => {
      state.stopping = true;
      process.stderr.write(`${sig}: cleaning up after the current ${unit}\n`);
    });
  return state;
}

export class Cleanup implements Teardown {
  private fns: Array<() => void | Promise<void>> = [];
  teardown(fn: () => void | Promise<void>): void {
    this.fns.push(fn);
  }
  async run(): Promise<void> {
    const fns = this.fns.reverse();
    this.fns = [];
    for (const fn of fns) {
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`cleanup: ${(e as Error).message}\n`);
      }
    }
  }
}
