// Teardown for benchmarks: the test fixtures' cleanup contract outside tap, run
// in reverse order of registration, every step attempted even when one fails.
import type { Teardown } from '../test/helpers/fixtures';

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
