// Maglev table generation time: median of several runs per (M, N), printed as
// a markdown table. Figures, not a pass/fail check.
//   npx tsc -p tsconfig.json && node dist/bench/maglev.js [runs]
import { buildTable, type MaglevBackend } from '../src/maglev';

const SIZES = [16381, 65537];
const COUNTS = [10, 100, 1000];
const RUNS = Number(process.argv[2] ?? 21);
const WARMUP = 3;

const WEIGHTINGS: [string, (i: number) => number][] = [
  ['equal weights', () => 1],
  ['weights 1,2,3', (i) => 1 + (i % 3)],
  ['weights 1..65535', (i) => 1 + ((i * 7919) % 65535)],
];

function backends(n: number, weight: (i: number) => number): MaglevBackend[] {
  return Array.from({ length: n }, (_, i) => ({
    id: i,
    key: `198.51.${100 + (i >> 8)}.${i & 255}:80`,
    weight: weight(i),
  }));
}

let sink = 0;

function medianMs(bs: MaglevBackend[], m: number): number {
  for (let r = 0; r < WARMUP; r++) sink ^= buildTable(bs, m)[0];
  const times: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const start = process.hrtime.bigint();
    const table = buildTable(bs, m);
    times.push(Number(process.hrtime.bigint() - start) / 1e6);
    sink ^= table[r % m];
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

const header = ['M', 'N', ...WEIGHTINGS.map(([label]) => `${label} (ms)`)];
const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---:').join('|')}|`];
for (const m of SIZES) {
  for (const n of COUNTS) {
    const cells = WEIGHTINGS.map(([, w]) => medianMs(backends(n, w), m).toFixed(2));
    lines.push(`| ${m} | ${n} | ${cells.join(' | ')} |`);
  }
}
console.log(`Maglev buildTable, median of ${RUNS} runs after ${WARMUP} warm-up (node ${process.version}, ${process.arch})\n`);
console.log(lines.join('\n'));
if (sink === 0.5) console.log(sink); // keeps the tables observable
