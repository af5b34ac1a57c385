// Service and backend ids: a pool each, with freed ids resting before reuse.
import { XdplbError } from '../control/errors';
import type { UndoLog } from './txn';

/** CLOCK_MONOTONIC seconds: the clock of the datapath's connection-table expiries (bpffs pins do not outlive a boot, nor does it). */
export const monotonicS = (): number => Number(process.hrtime.bigint() / 1_000_000_000n);

/**
 * Ids 0..n-1, handed out in turn from after the last one. A freed id may rest
 * until a given second: it is handed out only when no other is free, the one
 * whose rest ends first (at capacity an id is better reused than refused: an
 * entry naming it counts only for the service that freed it, see
 * xdp/maglev.h entry_holds()).
 */
export class IdPool {
  private readonly used: Uint8Array;
  private next = 0;
  private inUse = 0;
  /** id -> monotonic second from which it may be handed out */
  private readonly resting = new Map<number, number>();
  constructor(readonly size: number) {
    this.used = new Uint8Array(size);
  }
  /** Ids not in use: free or resting. */
  get available(): number {
    return this.size - this.inUse;
  }
  take(id: number): void {
    if (!this.used[id]) this.inUse++;
    this.used[id] = 1;
  }
  rest(id: number, untilS: number): void {
    this.resting.set(id, untilS);
  }
  alloc(what: string, tx: UndoLog): number {
    const now = monotonicS();
    for (let n = 0; n < this.size; n++) {
      const id = (this.next + n) % this.size;
      if (this.used[id]) continue;
      const until = this.resting.get(id);
      if (until !== undefined && until > now) continue;
      return this.hand(id, tx);
    }
    let first: number | undefined;
    let end = 0;
    for (const [id, until] of this.resting)
      if (first === undefined || until < end || (until === end && id < first)) {
        first = id;
        end = until;
      }
    if (first !== undefined) return this.hand(first, tx);
    throw XdplbError.exhausted(`no free ${what} slot (capacity ${this.size})`);
  }
  private hand(id: number, tx: UndoLog): number {
    this.keep(id, tx);
    this.take(id);
    this.resting.delete(id);
    this.next = (id + 1) % this.size;
    return id;
  }
  free(id: number, restUntilS: number | undefined, tx: UndoLog): void {
    this.keep(id, tx);
    if (this.used[id]) this.inUse--;
    this.used[id] = 0;
    if (restUntilS !== undefined) this.resting.set(id, restUntilS);
  }
  /** Logs how to put the id (and the cursor) back as they are now. */
  private keep(id: number, tx: UndoLog): void {
    const used = this.used[id];
    const until = this.resting.get(id);
    const next = this.next;
    tx.note(() => {
      this.inUse += used - this.used[id];
      this.used[id] = used;
      if (until === undefined) this.resting.delete(id);
      else this.resting.set(id, until);
      this.next = next;
    });
  }
}
