// The Maglev builder's worker thread: tables for a batch of backend sets, sent
// back as transferred buffers (no copy).
import { parentPort } from 'node:worker_threads';
import { buildTable, type MaglevBackend } from './table';

export interface BuildRequest {
  seq: number;
  m: number;
  sets: MaglevBackend[][];
}

export interface BuildReply {
  seq: number;
  tables?: Uint32Array[];
  error?: string;
}

parentPort?.on('message', (req: BuildRequest) => {
  let reply: BuildReply;
  try {
    reply = { seq: req.seq, tables: req.sets.map((set) => buildTable(set, req.m)) };
  } catch (e) {
    reply = { seq: req.seq, error: (e as Error).message };
  }
  parentPort?.postMessage(reply, (reply.tables ?? []).map((t) => t.buffer as ArrayBuffer));
});
