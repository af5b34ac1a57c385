// Why the datapath gave a packet its verdict, read from the one table of
// reasons, xdp/reasons.def, from which the C side derives enum xdplb_reason
// and reason_verdict(): same order, names without the XDPLB_R_ prefix in
// snake_case. Index i is the key of the reason's counter in xdplb_reasons.
// test/datapath-reasons.test.ts checks this list against the compiled enum
// and verdicts.
import * as fs from 'node:fs';
import * as path from 'node:path';

export type Verdict = 'XDP_TX' | 'XDP_REDIRECT' | 'XDP_PASS' | 'XDP_DROP';

export interface ReasonInfo {
  name: string;
  verdict: Verdict;
  description: string;
}

const VERDICTS: readonly string[] = ['XDP_TX', 'XDP_REDIRECT', 'XDP_PASS', 'XDP_DROP'] satisfies Verdict[];

/** dist/src/datapath -> xdp/ at the package root, beside build/bpf where the objects load from */
export const REASONS_DEF = path.resolve(__dirname, '..', '..', '..', 'xdp', 'reasons.def');

/**
 * The entries of an X-macro list of reasons: `XDPLB_REASON(NAME, VERDICT,
 * "description")`, C comments between them. Anything else is an error, so a
 * line this reader does not understand cannot silently drop a reason.
 */
export function parseReasons(text: string): ReasonInfo[] {
  const entry = /^XDPLB_REASON\(([A-Z][A-Z0-9_]*), (XDP_[A-Z]+), "([^"\\]*)"\)$/;
  const out: ReasonInfo[] = [];
  for (const line of text.replace(/\/\*[\s\S]*?\*\//g, '').split('\n')) {
    if (!line.trim()) continue;
    const m = entry.exec(line.trim());
    if (!m) throw new Error(`reasons.def: not an entry: ${line.trim()}`);
    if (!VERDICTS.includes(m[2])) throw new Error(`reasons.def: ${m[1]}: unknown verdict ${m[2]}`);
    out.push({ name: m[1].toLowerCase(), verdict: m[2] as Verdict, description: m[3] });
  }
  return out;
}

export const REASONS: readonly ReasonInfo[] = Object.freeze(parseReasons(fs.readFileSync(REASONS_DEF, 'utf8')));

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
