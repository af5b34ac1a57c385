// One change's writes as a transaction: every map write logged with how to
// put it back (replayed newest first on failure), and writes of many services
// gathered into one batch per map.
import type * as bpf from './bpf';

/**
 * One transaction's undo log: how to put back every map entry, pin and piece
 * of bookkeeping it changed, replayed newest first. What the change replaced
 * and must let go (old Maglev tables) is let go only at commit.
 */
export class UndoLog {
  private readonly undo: Array<() => void> = [];
  private readonly atCommit: Array<() => void> = [];

  /**
   * A map or bpffs write. Its undo is logged before it runs: a failed batch
   * may have written part of itself, and putting back what was not changed
   * is harmless.
   */
  write(write: () => void, undo: () => void): void {
    this.undo.push(undo);
    write();
  }

  /** A change of bookkeeping in memory. */
  note(undo: () => void): void {
    this.undo.push(undo);
  }

  onCommit(fn: () => void): void {
    this.atCommit.push(fn);
  }

  commit(): void {
    for (const fn of this.atCommit) fn();
  }

  /** Every step undone, even past one that fails; the failures are returned. */
  rollback(): Error[] {
    const errors: Error[] = [];
    for (let u = this.undo.pop(); u; u = this.undo.pop()) {
      try {
        u();
      } catch (e) {
        errors.push(e as Error);
      }
    }
    return errors;
  }
}

/** Writes entries; their old values (or absence) are logged to be put back. */
export function put(tx: UndoLog, map: bpf.BpfMap, keys: Buffer[], values: Buffer[]): void {
  if (keys.length) putPacked(tx, map, Buffer.concat(keys), Buffer.concat(values), keys.length);
}

/** put() of packed keys and values: thousands of entries as two Buffers, not thousands. */
export function putPacked(tx: UndoLog, map: bpf.BpfMap, keys: Buffer, values: Buffer, count: number): void {
  const old = map.lookupPacked(keys);
  tx.write(() => map.batchUpdatePacked(keys, values, count), () => restore(map, keys, old));
}

export function remove(tx: UndoLog, map: bpf.BpfMap, keys: Buffer[]): void {
  if (!keys.length) return;
  const packed = Buffer.concat(keys);
  const old = map.lookupPacked(packed);
  tx.write(() => map.batchDelete(keys), () => restore(map, packed, old));
}

/** Per-CPU counters of new ids start at zero on every CPU. */
export function zeroCounters(tx: UndoLog, map: bpf.BpfMap, ids: number[]): void {
  if (!ids.length) return;
  const keys = Buffer.from(Uint32Array.from(ids).buffer);
  const old = map.lookupPacked(keys);
  tx.write(() => map.batchUpdatePacked(keys, Buffer.alloc(old.values.length), ids.length), () => restore(map, keys, old));
}

/**
 * Writes of many services gathered into one put() per map: a batch is one
 * syscall and its old values one call into the addon, where a put() per
 * service cost 100,000 lookups and 30,000 syscalls for 10,000 services.
 */
export class Gathered {
  /** per map, one Buffer of keys and one of values per put(): a Buffer per entry would be 300,000 objects on the heap */
  private readonly puts = new Map<bpf.BpfMap, { keys: Buffer[]; values: Buffer[]; count: number }>();
  private readonly zeroes = new Map<bpf.BpfMap, number[]>();

  put(map: bpf.BpfMap, keys: Buffer[], values: Buffer[]): void {
    if (!keys.length) return;
    const p = this.puts.get(map) ?? { keys: [], values: [], count: 0 };
    this.puts.set(map, p);
    p.keys.push(Buffer.concat(keys));
    p.values.push(Buffer.concat(values));
    p.count += keys.length;
  }

  zeroCounters(map: bpf.BpfMap, ids: number[]): void {
    const z = this.zeroes.get(map) ?? [];
    this.zeroes.set(map, z);
    z.push(...ids);
  }

  flush(tx: UndoLog): void {
    for (const [map, ids] of this.zeroes) zeroCounters(tx, map, ids);
    for (const [map, p] of this.puts) putPacked(tx, map, Buffer.concat(p.keys), Buffer.concat(p.values), p.count);
  }
}

/** Entries put back as lookupPacked() found them: each value, or no entry. */
function restore(map: bpf.BpfMap, keys: Buffer, old: { values: Buffer; found: Buffer }): void {
  const n = old.found.length;
  const size = old.values.length / Math.max(1, n);
  for (let i = 0; i < n; i++) {
    const k = keys.subarray((i * keys.length) / n, ((i + 1) * keys.length) / n);
    if (old.found[i]) map.update(k, old.values.subarray(i * size, (i + 1) * size));
    else map.delete(k);
  }
}
