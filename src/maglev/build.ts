// Many Maglev tables at once without holding the event loop: a table of M
// entries costs milliseconds (about 5 ms at M=65537 with 10 backends), so a
// restore of thousands of services or a change of M is built on a worker
// thread while the daemon keeps answering reads. A few small tables are built
// in place: the round trip to the worker would cost more than it saves.
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { buildTable, type MaglevBackend } from './table';
import type { BuildReply, BuildRequest } from './worker';

/** Entries (tables × M) built in place at most: about 10 ms of work. */
export const INLINE_ENTRIES = 2 * 65537;

let worker: Worker | undefined;
let seq = 0;
const waiting = new Map<number, { resolve: (t: Uint32Array[]) => void; reject: (e: Error) => void }>();

function theWorker(): Worker {
  if (worker) return worker;
  const w = new Worker(path.join(__dirname, 'worker.js'));
  w.unref();
  w.on('message', (r: BuildReply) => {
    const p = waiting.get(r.seq);
    waiting.delete(r.seq);
    // held open only while a build is due: an idle worker never keeps the process alive
    if (!waiting.size) w.unref();
    if (r.tables) p?.resolve(r.tables);
    else p?.reject(new RangeError(r.error));
  });
  w.on('error', (e) => {
    worker = undefined;
    for (const p of waiting.values()) p.reject(e);
    waiting.clear();
  });
  worker = w;
  return w;
}

/** buildTable() of every set, in order; on a worker thread when they are many entries. */
export function buildTables(sets: MaglevBackend[][], m: number): Promise<Uint32Array[]> {
  if (sets.length * m <= INLINE_ENTRIES) {
    try {
      return Promise.resolve(sets.map((set) => buildTable(set, m)));
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }
  return new Promise((resolve, reject) => {
    const req: BuildRequest = { seq: ++seq, m, sets };
    waiting.set(req.seq, { resolve, reject });
    const w = theWorker();
    w.ref();
    w.postMessage(req);
  });
}
