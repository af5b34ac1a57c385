// The YAML configuration file: parse (keeping node positions), check the shape
// against the JSON Schema (schema.ts), map snake_case keys to the model's
// camelCase, then run the same semantic validation as the gRPC API
// (control/validate.ts). Any error is one XdplbError whose message names the
// file, line, column, field and reason:
//
//   config/edge.yaml:14:9: services[0].backends[1].weight: must be <= 65535, got 70000
//
// Shape errors and YAML syntax errors are INVALID_ARGUMENT; semantic errors keep
// their own code (ALREADY_EXISTS for duplicates, RESOURCE_EXHAUSTED for limits).
import * as fs from 'node:fs';
import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node, type Pair } from 'yaml';
import { XdplbError, type SourceLocation } from '../control/errors';
import type { Config } from '../control/model';
import {
  describeValue,
  HOST_PORT_DESCRIPTION,
  HOST_PORT_PATTERN,
  IFNAME_DESCRIPTION,
  IFNAME_PATTERN,
  NAME_DESCRIPTION,
  NAME_PATTERN,
  PATH_DESCRIPTION,
  PATH_PATTERN,
  reasons,
  validateConfig,
} from '../control/validate';
import { CONFIG_SCHEMA } from './schema';

type PathSegment = string | number;

const PATTERN_DESCRIPTIONS: Record<string, string> = {
  [NAME_PATTERN]: NAME_DESCRIPTION,
  [IFNAME_PATTERN]: IFNAME_DESCRIPTION,
  [HOST_PORT_PATTERN]: HOST_PORT_DESCRIPTION,
  [PATH_PATTERN]: PATH_DESCRIPTION,
};

let compiled: ValidateFunction | undefined;

/** The schema compiled once (ajv, draft-07, strict, all errors: the loader picks one). */
export function schemaValidator(): ValidateFunction {
  compiled ??= new Ajv({ allErrors: true, strict: true, verbose: true }).compile(CONFIG_SCHEMA);
  return compiled;
}

export function snakeCase(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export function camelCase(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** "services[0].backends[1].weight" → ['services', 0, 'backends', 1, 'weight'] */
export function parseField(field: string): PathSegment[] {
  const out: PathSegment[] = [];
  for (const m of field.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) out.push(m[2] !== undefined ? Number(m[2]) : m[1]);
  return out;
}

export function formatField(path: readonly PathSegment[]): string {
  return path.reduce<string>((f, s) => (typeof s === 'number' ? `${f}[${s}]` : f ? `${f}.${s}` : s), '');
}

/** The YAML node at `path` (or the pair's key node with `key`), or the deepest node on the way there. */
function nodeAt(doc: Document, path: readonly PathSegment[], key = false): Node | undefined {
  let node = doc.contents as Node | null;
  if (!node) return undefined;
  for (let i = 0; i < path.length; i++) {
    if (isAlias(node)) node = (node.resolve(doc) as Node | undefined) ?? node;
    const seg = path[i];
    let next: Node | undefined;
    if (isMap(node)) {
      const pair: Pair<unknown, unknown> | undefined = node.items.find((p: Pair<unknown, unknown>) => (isScalar(p.key) ? p.key.value : p.key) === seg);
      if (pair && key && i === path.length - 1 && isScalar(pair.key)) return pair.key;
      next = (pair?.value as Node | null | undefined) ?? (pair && isScalar(pair.key) ? pair.key : undefined);
    } else if (isSeq(node) && typeof seg === 'number') {
      next = node.items[seg] as Node | undefined;
    }
    if (!next) return node;
    node = next;
  }
  return node;
}

function locate(doc: Document, lc: LineCounter, file: string, path: readonly PathSegment[], key = false): SourceLocation {
  const node = nodeAt(doc, path, key);
  const offset = node?.range?.[0] ?? 0;
  const { line, col } = lc.linePos(offset);
  return { file, line, column: col };
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length][b.length];
}

function unknownKeyReason(key: string, allowed: string[]): string {
  const snake = snakeCase(key);
  const close = allowed.includes(snake)
    ? snake
    : allowed.map((k) => [k, editDistance(key, k)] as const).filter(([, n]) => n <= 2).sort((x, y) => x[1] - y[1])[0]?.[0];
  return `unknown key ${JSON.stringify(key)} (${close ? `did you mean ${close}?` : `expected one of ${allowed.join(', ')}`})`;
}

function pointerPath(data: unknown, pointer: string): PathSegment[] {
  const out: PathSegment[] = [];
  let cur = data;
  for (const raw of pointer.split('/').slice(1)) {
    const s = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    const seg = Array.isArray(cur) ? Number(s) : s;
    out.push(seg);
    cur = (cur as Record<PathSegment, unknown> | undefined)?.[seg];
  }
  return out;
}

interface ShapeError {
  path: PathSegment[];
  /** point at the key rather than the value */
  key: boolean;
  reason: string;
}

/** One ajv error in xdplb's words (the same phrasing as control/validate.ts). */
function shapeError(e: ErrorObject, data: unknown): ShapeError {
  const path = pointerPath(data, e.instancePath);
  const v = e.data;
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      return { path: [...path, p.missingProperty as string], key: false, reason: reasons.required() };
    case 'additionalProperties': {
      const allowed = Object.keys(((e.parentSchema as { properties?: object }).properties ?? {}) as object);
      const key = p.additionalProperty as string;
      return { path: [...path, key], key: true, reason: unknownKeyReason(key, allowed) };
    }
    case 'type':
      if (e.schemaPath.endsWith('/else/type')) // an outer source: the string form or the mapping form
        return { path, key: false, reason: `must be "address/prefix-length" or a mapping {address, prefix_length}, got ${describeValue(v)}` };
      return { path, key: false, reason: reasons.type(String(p.type), v) };
    case 'minimum':
      return { path, key: false, reason: reasons.min(p.limit as number, v) };
    case 'maximum':
      return { path, key: false, reason: reasons.max(p.limit as number, v) };
    case 'enum':
      return { path, key: false, reason: reasons.oneOf(p.allowedValues as unknown[], v) };
    case 'pattern': {
      const description = PATTERN_DESCRIPTIONS[p.pattern as string] ?? `an address or address/prefix-length`;
      return { path, key: false, reason: reasons.pattern(description, v) };
    }
    default:
      return { path, key: false, reason: e.message ?? e.keyword };
  }
}

/** The first shape error of `data` (YAML-shaped, snake_case) against the schema, or undefined. */
export function checkShape(data: unknown): ShapeError | undefined {
  const validate = schemaValidator();
  if (validate(data)) return undefined;
  // The first error, except that an unknown key explains a missing one beside it
  // ("adress:" for "address:"), and "if" only repeats its branch's error.
  const errors = (validate.errors ?? []).filter((x) => x.keyword !== 'if');
  let e = errors[0] ?? (validate.errors as ErrorObject[])[0];
  if (e.keyword === 'required')
    e = errors.find((x) => x.keyword === 'additionalProperties' && x.instancePath === e.instancePath) ?? e;
  return shapeError(e, data);
}

function camelKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(camelKeys);
  if (typeof v === 'object' && v !== null)
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [camelCase(k), camelKeys(x)]));
  return v;
}

/** The file's top level (snake_case, shape-checked) as the model's { node, services }. */
function toModelInput(data: Record<string, unknown>): unknown {
  const { services, ...node } = camelKeys(data) as Record<string, unknown>;
  return { node, services };
}

/**
 * yaml reports a missing closing quote where the file ends (a quoted scalar may
 * span lines); point at the quote that was opened instead: the first line before
 * the end with an odd number of that quote character outside comments.
 */
function unclosedQuote(text: string, end: number, message: string): { line: number; col: number } | undefined {
  const q = message.includes("'quote") ? "'" : message.includes('"quote') ? '"' : undefined;
  if (!q) return undefined;
  const lines = text.slice(0, end).split('\n');
  for (let i = 0; i < lines.length; i++) {
    let open = -1;
    for (let j = 0; j < lines[i].length; j++) {
      const c = lines[i][j];
      if (open < 0 && c === '#' && (j === 0 || /\s/.test(lines[i][j - 1]))) break;
      if (c === '\\' && q === '"' && open >= 0) j++;
      else if (c === q) open = open < 0 ? j : -1;
    }
    if (open >= 0) return { line: i + 1, col: open + 1 };
  }
  return undefined;
}

/** Parses and validates a configuration; `fileName` is used in error messages only. */
export function parseConfig(text: string, fileName: string): Config {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const syntax = doc.errors[0];
  if (syntax) {
    const opened = syntax.code === 'MISSING_CHAR' ? unclosedQuote(text, syntax.pos[0], syntax.message) : undefined;
    const { line, col } = opened ?? lc.linePos(syntax.pos[0]);
    const reason = `YAML: ${syntax.message}${opened ? ' (opened here)' : ''}`;
    throw new XdplbError('INVALID_ARGUMENT', reason, { location: { file: fileName, line, column: col } });
  }
  if (doc.contents === null)
    throw new XdplbError('INVALID_ARGUMENT', 'the file is empty; expected a mapping of settings and services', {
      location: { file: fileName, line: 1, column: 1 },
    });
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new XdplbError('INVALID_ARGUMENT', `YAML: ${(e as Error).message}`, { location: { file: fileName, line: 1, column: 1 } });
  }

  const shape = checkShape(data);
  if (shape)
    throw new XdplbError('INVALID_ARGUMENT', shape.reason, {
      field: formatField(shape.path) || undefined,
      location: locate(doc, lc, fileName, shape.path, shape.key),
    });

  try {
    const { bgp, ...rest } = data as Record<string, unknown>;
    const config = validateConfig(toModelInput(rest));
    // The BGP module loads only for a file that configures it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    if (bgp !== undefined) config.bgp = (require('../bgp/config') as typeof import('../bgp/config')).validateBgp(camelKeys(bgp));
    return config;
  } catch (e) {
    if (!(e instanceof XdplbError) || !e.field) throw e;
    const path = parseField(e.field).map((s) => (typeof s === 'string' ? snakeCase(s) : s));
    throw e.at(locate(doc, lc, fileName, path), formatField(path));
  }
}

/** Reads and validates the configuration file at `path`. */
export function loadConfigFile(path: string): Config {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') throw XdplbError.notFound('configuration file', path);
    throw XdplbError.failedPrecondition(`configuration file ${path}: ${err.message}`);
  }
  return parseConfig(text, path);
}
