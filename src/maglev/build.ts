// Many Maglev tables at once without holding the event loop: a table of M
// entries costs milliseconds (about 5 ms at M=65537 with 10 backends), so a
// restore of thousands of services or a change of M is built on worker
// threads while the daemon keeps answering reads. A few small tables are built
// in place: the round trip to a worker would cost more than it saves.
//
// A table is a function of its backend set alone, so services with the same
// set share one build; and tables are built a few chunks ahead of the one
// being installed and let go after their last use, so that a restore of
// 10,000 services at M=16381 never holds 10,000 tables (655 MB) at once.
import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { buildTable, type MaglevBackend } from './table';
import type { BuildReply, BuildRequest } from './worker';

/** Entries (tables × M) built in place at most: about 10 ms of work. */
export const INLINE_ENTRIES = 2 * 65537;
/** Backend sets per message to a worker. */
const CHUNK = 32;

interface Pooled {
  worker: Worker;
  waiting: Map<number, { resolve: (t: Uint32Array[]) => void; reject: (e: Error) => void }>;
}

const pool: Pooled[] = [];
const POOL_SIZE = Math.max(1, Math.min(4, availableParallelism()));
let seq = 0;
let turn = 0;

function spawn(): Pooled {
  const w = new Worker(path.join(__dirname, 'worker.js'));
  w.unref();
  const p: Pooled = { worker: w, waiting: new Map() };
  w.on('message', (r: BuildReply) => {
    const q = p.waiting.get(r.seq);
    p.waiting.delete(r.seq);
    // held open only while a build is due: an idle worker never keeps the process alive
    if (!p.waiting.size) w.unref();
    if (r.tables) q?.resolve(r.tables);
    else q?.reject(new RangeError(r.error));
  });
  w.on('error', (e) => {
    const at = pool.indexOf(p);
    if (at >= 0) pool.splice(at, 1);
    for (const q of p.waiting.values()) q.reject(e);
    p.waiting.clear();
  });
  return p;
}

/** Tables for `sets` on the next worker of the pool, in order. */
function onWorker(sets: MaglevBackend[][], m: number): Promise<Uint32Array[]> {
  if (pool.length < POOL_SIZE) pool.push(spawn());
  const p = pool[turn++ % pool.length];
  return new Promise((resolve, reject) => {
    const req: BuildRequest = { seq: ++seq, m, sets };
    p.waiting.set(req.seq, { resolve, reject });
    p.worker.ref();
    p.worker.postMessage(req);
  });
}

/** What makes two sets build the same table: their keys and weights (order does not matter). */
function setKey(set: readonly MaglevBackend[]): string {
  return set
    .map((b) => `${b.key} ${b.weight} ${b.id}`)
    .sort()
    .join(',');
}

/**
 * buildTable() of every set, each asked for by its position with get(), in
 * the order of the positions. Equal sets (same keys, weights and ids) are
 * built once; a table is let go after the last position that asks for it.
 * The caller must not change a table it gets: other positions may share it.
 */
export class TableStream {
  /** position -> index of its distinct set */
  private readonly of: Uint32Array;
  private readonly distinct: MaglevBackend[][] = [];
  /** distinct set -> last position that uses it */
  private readonly last: number[] = [];
  private readonly chunks: Array<Promise<Array<Uint32Array | undefined>> | undefined> = [];
  private readonly inline: boolean;
  private readonly ahead = 2 * POOL_SIZE;

  constructor(
    sets: readonly MaglevBackend[][],
    readonly m: number,
  ) {
    this.of = new Uint32Array(sets.length);
    const index = new Map<string, number>();
    sets.forEach((set, i) => {
      const k = setKey(set);
      let d = index.get(k);
      if (d === undefined) {
        d = this.distinct.length;
        index.set(k, d);
        this.distinct.push(set);
      }
      this.of[i] = d;
      this.last[d] = i;
    });
    this.inline = this.distinct.length * m <= INLINE_ENTRIES;
  }

  /** Distinct tables to build. */
  get size(): number {
    return this.distinct.length;
  }

  private chunk(c: number): Promise<Array<Uint32Array | undefined>> {
    let p = this.chunks[c];
    if (!p) {
      const sets = this.distinct.slice(c * CHUNK, (c + 1) * CHUNK);
      if (this.inline) {
        try {
          p = Promise.resolve(sets.map((set) => buildTable(set, this.m)));
        } catch (e) {
          p = Promise.reject(e as Error);
        }
      } else p = onWorker(sets, this.m);
      // a failure is reported by get(), not as an unhandled rejection of a chunk built ahead
      p.catch(() => undefined);
      this.chunks[c] = p;
    }
    return p;
  }

  async get(i: number): Promise<Uint32Array> {
    const d = this.of[i];
    const c = Math.floor(d / CHUNK);
    const chunks = Math.ceil(this.distinct.length / CHUNK);
    for (let a = c + 1; a <= c + this.ahead && a < chunks; a++) this.chunk(a);
    const tables = await this.chunk(c);
    const table = tables[d % CHUNK] as Uint32Array;
    if (this.last[d] === i) tables[d % CHUNK] = undefined;
    return table;
  }
}
