// What every handler of the API shares: errors as gRPC statuses of bounded
// length, and unary calls wrapped so every outcome is answered and logged.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { XdplbError, type ErrorCode } from '../control/errors';

const STATUS: Record<ErrorCode, grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  INTERNAL: grpc.status.INTERNAL,
};

/**
 * grpc-message travels percent-encoded (a non-ASCII byte takes three) in at most
 * 8 KB of metadata; a longer message turns the status into RESOURCE_EXHAUSTED at
 * the client. Values are quoted short (quote()); this bounds whatever else a
 * message repeats.
 */
const MAX_DETAILS_BYTES = 1536;

function bounded(message: string): string {
  const total = Buffer.byteLength(message);
  if (total <= MAX_DETAILS_BYTES) return message;
  let kept = '';
  let bytes = 0;
  for (const ch of message) {
    bytes += Buffer.byteLength(ch);
    if (bytes > MAX_DETAILS_BYTES) break;
    kept += ch;
  }
  return `${kept}… (${total} bytes)`;
}

export function toServiceError(e: unknown): Partial<grpc.ServiceError> {
  if (e instanceof XdplbError) return { code: STATUS[e.code] ?? grpc.status.INTERNAL, details: bounded(e.message) };
  return { code: grpc.status.INTERNAL, details: bounded(e instanceof Error ? e.message : String(e)) };
}

type Unary<Req, Res> = (req: Req) => Res | Promise<Res>;

/** Wraps a handler so every outcome is a response or a gRPC status, and is logged. */
export function unary<Req, Res>(log: Logger, method: string, fn: Unary<Req, Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const started = process.hrtime.bigint();
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (res) => {
          log.debug({ method, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'api call');
          callback(null, res);
        },
        (e: unknown) => {
          const err = toServiceError(e);
          log.info({ method, code: grpc.status[err.code ?? grpc.status.INTERNAL], error: err.details }, 'api call refused');
          callback(err as grpc.ServiceError);
        },
      );
  };
}
