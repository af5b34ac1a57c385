// Why the datapath gave a packet its verdict, read from the one table of
// reasons, xdp/reasons.def, from which the C side derives enum xdplb_reason
// and reason_verdict(): same order, names without the XDPLB_R_ prefix in
// snake_case. Index i is the key of the reason's counter in xdplb_reasons.
// test/datapath-reasons.test.ts checks this list against the compiled enum
// and verdicts.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../sys/paths';

export type Verdict = 'XDP_TX' | 'XDP_REDIRECT' | 'XDP_PASS' | 'XDP_DROP';

export interface ReasonInfo {
  name: string;
  verdict: Verdict;
  description: string;
}

const VERDICTS: readonly Verdict[] = ['XDP_TX', 'XDP_REDIRECT', 'XDP_PASS', 'XDP_DROP'];

/** xdp/ at the package root, beside build/bpf where the objects load from */
export const REASONS_DEF = path.join(PACKAGE_ROOT, 'xdp', 'reasons.def');

/** An X-macro table of reasons: its macro, the verdicts it may name, its file for errors. */
export interface ReasonTable<V extends string> {
  macro: string;
  verdicts: readonly V[];
  file: string;
}

/**
 * The entries of an X-macro list of reasons: `MACRO(NAME, VERDICT,
 * "description")`, C comments between them. Anything else is an error, so a
 * line this reader does not understand cannot silently drop a reason.
 */
export function parseReasons<V extends string>(text: string, table: ReasonTable<V>): Array<{ name: string; verdict: V; description: string }> {
  const entry = new RegExp(`^${table.macro}\\(([A-Z][A-Z0-9_]*), ([A-Z_]+), "([^"\\\\]*)"\\)$`);
  const out: Array<{ name: string; verdict: V; description: string }> = [];
  for (const line of text.replace(/\/\*[\s\S]*?\*\//g, '').split('\n')) {
    if (!line.trim()) continue;
    const m = entry.exec(line.trim());
    if (!m) throw new Error(`${table.file}: not an entry: ${line.trim()}`);
    if (!(table.verdicts as readonly string[]).includes(m[2])) throw new Error(`${table.file}: ${m[1]}: unknown verdict ${m[2]}`);
    out.push({ name: m[1].toLowerCase(), verdict: m[2] as V, description: m[3] });
  }
  return out;
}

/** The load balancer's table, xdp/reasons.def. */
export const LB_REASONS: ReasonTable<Verdict> = { macro: 'XDPLB_REASON', verdicts: VERDICTS, file: 'reasons.def' };

export const REASONS: readonly ReasonInfo[] = Object.freeze(parseReasons(fs.readFileSync(REASONS_DEF, 'utf8'), LB_REASONS));

/** Number of reasons: max_entries of xdplb_reasons (XDPLB_R_MAX). */
export const REASON_COUNT = REASONS.length;

export const REASON_NAMES: readonly string[] = REASONS.map((r) => r.name);

/** Reason name -> counter index. */
export const REASON: Readonly<Record<string, number>> = Object.freeze(
  Object.fromEntries(REASONS.map((r, i) => [r.name, i])),
);

export function reasonName(index: number): string {
  const r = REASONS[index];
  if (!r) throw new RangeError(`unknown datapath reason ${index}`);
  return r.name;
}
