// The one error catalog of xdplb. Every refusal the control plane makes — from the
// configuration file, the gRPC API or the state directory — is an XdplbError with a
// code named after the gRPC status it becomes (the API layer maps code → status by
// name) and, when one field is to blame, that field's path in the input:
//
//   services[2].backends[0].address: "10.0.0.300" is not an IPv4 or IPv6 address
//   config/edge.yaml:14:9: services[0].backends[1].weight: must be <= 65535, got 70000
//
// A message is always one line: "[file:line:column: ][field: ]reason". A value
// the input gave is shown with quote(), which cuts it short: a message repeating
// a 100 KB value would not fit a gRPC status (8 KB of metadata), and the client
// would get RESOURCE_EXHAUSTED instead of the error.

export const ERROR_CODES = [
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'FAILED_PRECONDITION',
  'RESOURCE_EXHAUSTED',
  'INTERNAL',
  'UNAVAILABLE',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** Characters of a quoted value shown before it is cut. */
export const QUOTE_MAX = 64;

/** A string from the input as a message shows it: JSON-quoted, cut after QUOTE_MAX characters with its length. */
export function quote(value: string): string {
  const chars = Array.from(value);
  if (chars.length <= QUOTE_MAX) return JSON.stringify(value);
  return `${JSON.stringify(`${chars.slice(0, QUOTE_MAX).join('')}…`)} (${chars.length} characters)`;
}

/** Where in a file the error is: 1-based line and column. */
export interface SourceLocation {
  file: string;
  line: number;
  column: number;
}

export interface XdplbErrorOptions {
  field?: string;
  location?: SourceLocation;
  cause?: unknown;
}

export class XdplbError extends Error {
  override readonly name = 'XdplbError';
  readonly code: ErrorCode;
  /** path of the offending field in the input, e.g. "services[0].backends[1].weight" */
  readonly field?: string;
  /** the message without location and field */
  readonly reason: string;
  readonly file?: string;
  readonly line?: number;
  readonly column?: number;

  constructor(code: ErrorCode, reason: string, options: XdplbErrorOptions = {}) {
    const { field, location } = options;
    const where = location ? `${location.file}:${location.line}:${location.column}: ` : '';
    super(`${where}${field ? `${field}: ` : ''}${reason}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = reason;
    if (field) this.field = field;
    if (location) {
      this.file = location.file;
      this.line = location.line;
      this.column = location.column;
    }
  }

  /** The same error, placed in a file (and, optionally, renamed to the file's spelling of the field). */
  at(location: SourceLocation, field: string | undefined = this.field): XdplbError {
    return new XdplbError(this.code, this.reason, { field, location, cause: this.cause });
  }

  /**
   * The same error with the field path `from` (or a path under it) renamed to
   * `to`: a check made on a whole service, reported in the request's own terms.
   */
  renamed(from: string, to: string): XdplbError {
    const f = this.field;
    if (f === undefined || !(f === from || f.startsWith(`${from}.`) || f.startsWith(`${from}[`))) return this;
    const location = this.file === undefined ? undefined : ({ file: this.file, line: this.line, column: this.column } as SourceLocation);
    return new XdplbError(this.code, this.reason, { field: to + f.slice(from.length), location, cause: this.cause });
  }

  /** The input is wrong: `field` names what, `reason` says why (and shows the value). */
  static invalid(field: string, reason: string): XdplbError {
    return new XdplbError('INVALID_ARGUMENT', reason, { field });
  }

  /** `what` called `name` does not exist: "service web not found". */
  static notFound(what: string, name: string, field?: string): XdplbError {
    return new XdplbError('NOT_FOUND', `${what} ${name} not found`, { field });
  }

  /** `what` called `name` exists already: "service web already exists". */
  static alreadyExists(what: string, name: string, field?: string): XdplbError {
    return new XdplbError('ALREADY_EXISTS', `${what} ${name} already exists`, { field });
  }

  /** Two entries of one input collide; `reason` names both. */
  static duplicate(field: string, reason: string): XdplbError {
    return new XdplbError('ALREADY_EXISTS', reason, { field });
  }

  /** The request is well-formed but the system is not in a state to accept it. */
  static failedPrecondition(reason: string, field?: string): XdplbError {
    return new XdplbError('FAILED_PRECONDITION', reason, { field });
  }

  /** A limit is reached: a per-service limit, a full map. */
  static exhausted(reason: string, field?: string): XdplbError {
    return new XdplbError('RESOURCE_EXHAUSTED', reason, { field });
  }

  /** Something the request depends on is (perhaps transiently) not available. */
  static unavailable(reason: string, cause?: unknown): XdplbError {
    return new XdplbError('UNAVAILABLE', reason, { cause });
  }

  /** A bug or an unexpected failure below us. */
  static internal(reason: string, cause?: unknown): XdplbError {
    return new XdplbError('INTERNAL', reason, { cause });
  }
}

export function isXdplbError(e: unknown, code?: ErrorCode): e is XdplbError {
  return e instanceof XdplbError && (code === undefined || e.code === code);
}
