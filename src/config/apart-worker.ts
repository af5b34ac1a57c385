// The worker of loadConfigFileApart(): parses one file, answers once.
import { parentPort, workerData } from 'node:worker_threads';
import { XdplbError } from '../control/errors';
import { loadConfigFile } from './load';
import type { ApartReply } from './apart';

let reply: ApartReply;
try {
  reply = { config: loadConfigFile(workerData as string) };
} catch (e) {
  const x = e instanceof XdplbError ? e : undefined;
  reply = { error: { xdplb: !!x, code: x?.code, reason: x?.reason, field: x?.field, file: x?.file, line: x?.line, column: x?.column, message: (e as Error).message } };
}
parentPort?.postMessage(reply);
