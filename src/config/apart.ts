// A large configuration file parsed on a worker thread: the YAML document of
// 10,000 services takes about 400 MB of heap while it is built, which a
// daemon's own heap would keep long after; a worker's is given back when the
// worker ends. Small files are parsed in place (a worker costs more than it saves).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { XdplbError, type ErrorCode } from '../control/errors';
import type { Config } from '../control/model';
import { validateService } from '../control/validate';
import { loadConfigFile } from './load';

/** Files up to this size are parsed in place. */
const IN_PLACE_BYTES = 256 * 1024;

export type ApartReply = { config: Config } | { error: { xdplb: boolean; code?: ErrorCode; reason?: string; field?: string; file?: string; line?: number; column?: number; message: string } };

/** loadConfigFile(), on a worker thread when the file is large. */
export async function loadConfigFileApart(file: string): Promise<Config> {
  let size = 0;
  try {
    size = fs.statSync(file).size;
  } catch {
    // loadConfigFile names what is wrong with a file it cannot read
  }
  if (size <= IN_PLACE_BYTES) return loadConfigFile(file);
  const reply = await new Promise<ApartReply>((resolve, reject) => {
    const w = new Worker(path.join(__dirname, 'apart-worker.js'), { workerData: file });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`configuration parser exited with ${code}`)));
  });
  // A thread boundary clones data, not classes: the specs' parsed addresses come back from their text.
  if ('config' in reply) return { node: reply.config.node, services: reply.config.services.map((s, i) => validateService(s, `services[${i}]`)) };
  const e = reply.error;
  if (!e.xdplb) throw new Error(e.message);
  const location = e.file !== undefined && e.line !== undefined && e.column !== undefined ? { file: e.file, line: e.line, column: e.column } : undefined;
  throw new XdplbError(e.code as ErrorCode, e.reason as string, { field: e.field, location });
}
