// What one operation of the kinds xdp/lb.bpf.c uses costs here: map lookups by
// map type and key size, and the helpers on its path (bench/bpf/bench_ops.bpf.c).
// It explains where the datapath's time goes: array lookups are inlined by the
// verifier, hash-map lookups and most helpers are kernel calls.
//   node dist/bench/ops.js [rounds] [repeat]   (root; after scripts/bootstrap.sh)
import * as fs from 'node:fs';
import * as bpf from '../src/datapath/bpf';
import * as L from '../src/datapath/layout';

const ROUNDS = Number(process.argv[2] ?? 7);
const REPEAT = Number(process.argv[3] ?? 200_000);
/** BENCH_OPS_N in bench_ops.bpf.c */
const N = 8;

const OPS: Array<[program: string, label: string]> = [
  ['op_array', 'array lookup (xdplb_backends, xdplb_svc_by_id, ...)'],
  ['op_percpu_array', 'per-CPU array lookup (counters, next hops, flow cache)'],
  ['op_hash_service4', 'hash lookup, 8-byte key (xdplb_services4)'],
  ['op_hash_service6', 'hash lookup, 20-byte key (xdplb_services)'],
  ['op_lru_flow4', 'LRU hash lookup, 16-byte key (xdplb_conntrack4)'],
  ['op_lru_flow6', 'LRU hash lookup, 40-byte key (xdplb_conntrack)'],
  ['op_adjust_head', 'bpf_xdp_adjust_head()'],
  ['op_jiffies64', 'bpf_jiffies64()'],
  ['op_ktime_coarse', 'bpf_ktime_get_coarse_ns()'],
];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

function main(): void {
  const obj = bpf.openObject(bpf.testObjectPath('bench_ops'));
  try {
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    for (const [map, keySize] of [
      ['ops_array', 4],
      ['ops_hash_service4', L.LAYOUT.xdplb_service4_key.size],
      ['ops_hash_service6', L.LAYOUT.xdplb_service_key.size],
      ['ops_lru_flow4', L.LAYOUT.xdplb_flow4_key.size],
      ['ops_lru_flow6', L.LAYOUT.xdplb_flow_key.size],
    ] as const)
      obj.map(map).update(Buffer.alloc(keySize), one);
    obj.map('ops_percpu_array').updatePerCpu(L.u32(0), one);

    const frame = Buffer.alloc(128);
    const run = (name: string) => {
      const r = obj.program(name).testRun({ data: frame, repeat: REPEAT });
      if (r.retval !== bpf.XDP_TX) throw new Error(`${name}: verdict ${r.retval}, expected XDP_TX`);
      return r.duration;
    };
    const times = new Map<string, number[]>();
    for (let round = 0; round <= ROUNDS; round++) {
      for (const name of ['op_none', ...OPS.map(([p]) => p)]) {
        const ns = run(name);
        if (round > 0) times.set(name, [...(times.get(name) ?? []), ns]); // round 0 warms up
      }
    }
    const base = median(times.get('op_none')!);
    const lines = ['| operation | ns each |', '|---|---:|'];
    for (const [name, label] of OPS) lines.push(`| ${label} | ${((median(times.get(name)!) - base) / N).toFixed(1)} |`);
    const release = fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
    console.log(`Operation costs, BPF_PROG_TEST_RUN (kernel ${release}, node ${process.version}; median of ${ROUNDS} rounds of repeat=${REPEAT}, ${N} operations per iteration, the loop alone ${base} ns per iteration)\n`);
    console.log(lines.join('\n'));
  } finally {
    obj.close();
  }
}

main();
