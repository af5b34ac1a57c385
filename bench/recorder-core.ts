// The recorder's pure core: filter compilation time by number of filters and of
// shapes (masks), the TypeScript reference lookup per packet, and PCAP/pcapng
// encoding rates. Figures, not a pass/fail check; medians of several runs.
//   npx tsc -p tsconfig.json && node dist/bench/recorder-core.js [runs]
import { compileFilters, matchCompiled, parseFilter, tupleOf, type Filter, type RuleFilters } from '../src/recorder/filter';
import { PcapEncoder } from '../src/recorder/pcap';

const RUNS = Number(process.argv[2] ?? 7);

function median(f: () => void): number {
  f(); // warm-up
  const times: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const start = process.hrtime.bigint();
    f();
    times.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

/** n filters of `shapes` distinct shapes (dst prefix lengths 1..shapes), spread over 64 rules. */
function filters(n: number, shapes: number): RuleFilters[] {
  const rules: Filter[][] = Array.from({ length: 64 }, () => []);
  for (let i = 0; i < n; i++) {
    const len = 32 - (i % shapes);
    const addr = (0x0a000000 + i * 256) >>> 0; // 10.0.0.0 + i*256, host bits of any /len >= 24 clear
    const host = ((addr >>> (32 - len)) << (32 - len)) >>> 0;
    const text = `dst=${host >>> 24}.${(host >>> 16) & 255}.${(host >>> 8) & 255}.${host & 255}/${len} dport=${80 + (i % 1000)} proto=tcp`;
    rules[i % 64].push(parseFilter(text));
  }
  return rules.map((fs, ruleId) => ({ ruleId, filters: fs }));
}

const rows: string[][] = [['filters', 'shapes', 'masks', 'entries', 'compile (ms)', 'reference lookup (µs/packet)']];
for (const n of [1_000, 10_000, 100_000]) {
  for (const shapes of [1, 8, 32]) {
    const input = filters(n, shapes);
    let c = compileFilters(input);
    const ms = median(() => (c = compileFilters(input)));
    const packet = tupleOf({ src: '192.0.2.1', dst: '10.0.3.7', sport: 40000, dport: 83, proto: 6 });
    const LOOKUPS = 20_000;
    const lookMs = median(() => {
      for (let i = 0; i < LOOKUPS; i++) matchCompiled(c, packet);
    });
    rows.push([String(n), String(shapes), String(c.masks.length), String(c.entries.length), ms.toFixed(1), ((lookMs * 1000) / LOOKUPS).toFixed(2)]);
  }
}

const enc = [['format', 'frame bytes', 'snaplen', 'packets/s', 'MB/s out']];
for (const format of ['pcap', 'pcapng'] as const) {
  for (const [size, snaplen] of [
    [64, 262144],
    [1514, 262144],
    [1514, 128],
  ] as const) {
    const e = new PcapEncoder({ format, snaplen });
    const frame = Buffer.alloc(size, 0x5a);
    const N = 200_000;
    let bytes = 0;
    const ms = median(() => {
      bytes = 0;
      for (let i = 0; i < N; i++)
        bytes += e.packet({ tsNs: 1_700_000_000_000_000_000n + BigInt(i), data: frame, point: i & 1 ? 'out' : 'in', comment: 'rule 3 web; backend 198.51.100.11' }).length;
    });
    enc.push([format, String(size), String(snaplen), ((N / ms) * 1000).toFixed(0), (bytes / ms / 1000).toFixed(0)]);
  }
}

const table = (r: string[][]) => [`| ${r[0].join(' | ')} |`, `|${r[0].map(() => ' --- ').join('|')}|`, ...r.slice(1).map((x) => `| ${x.join(' | ')} |`)].join('\n');
console.log(`Recorder core, median of ${RUNS} runs, node ${process.version}\n`);
console.log(table(rows));
console.log();
console.log(table(enc));
