// `xdplb check`: proves this machine can run xdplb — the addon loads, every
// datapath object passes the verifier, and each program handles a test packet —
// without attaching anything or leaving anything behind.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as bpf from '../datapath/bpf';
import * as sys from '../sys/system';

export interface CheckedProgram {
  object: string;
  program: string;
  instructions: number;
  verifiedInstructions: number;
  jitedBytes: number;
  testVerdict: string;
}

/** A minimal Ethernet/IPv4/UDP frame from and to documentation addresses. */
function probeFrame(): Buffer {
  return Buffer.from(
    '02000000000102000000000208004500001c0001000040110000c0000201c0000202d43100350008' + '0000',
    'hex',
  );
}

// The tc egress program (the backend's reverse DNAT) returns TC_ACT_* codes.
const TC_VERDICT_NAMES: Readonly<Record<number, string>> = { [-1]: 'TC_ACT_UNSPEC', 0: 'TC_ACT_OK', 2: 'TC_ACT_SHOT' };

function verdictName(type: string, retval: number): string {
  const names = type === 'xdp' ? bpf.XDP_VERDICT_NAMES : TC_VERDICT_NAMES;
  return names[retval] ?? String(retval);
}

export function checkDatapath(objectDir = bpf.BPF_OBJECT_DIR): CheckedProgram[] {
  const objects = fs
    .readdirSync(objectDir)
    .filter((f) => f.endsWith('.bpf.o'))
    .sort();
  if (objects.length === 0) throw new Error(`no BPF objects in ${objectDir}: run scripts/bootstrap.sh`);
  const pinRoot = fs.mkdtempSync('/sys/fs/bpf/xdplb-check-');
  const out: CheckedProgram[] = [];
  try {
    for (const file of objects) {
      const obj = bpf.openObject(`${objectDir}/${file}`, { pinRoot });
      try {
        for (const name of obj.programs()) {
          const prog = obj.program(name);
          const info = prog.info();
          const r = prog.testRun(info.type === 'xdp' ? { data: probeFrame(), ctx: bpf.xdpContext(1) } : { data: probeFrame() });
          out.push({
            object: file,
            program: name,
            instructions: info.instructions,
            verifiedInstructions: info.verifiedInstructions,
            jitedBytes: info.jitedBytes,
            testVerdict: verdictName(info.type, r.retval),
          });
          prog.close();
        }
      } finally {
        obj.close();
      }
    }
  } finally {
    fs.rmSync(pinRoot, { recursive: true, force: true });
  }
  return out;
}

export function formatCheck(rows: CheckedProgram[]): string {
  const lines = [`kernel ${os.release()}, ${sys.possibleCpus()} possible CPUs`];
  for (const r of rows)
    lines.push(
      `${r.object.padEnd(22)} ${r.program.padEnd(22)} ${String(r.instructions).padStart(6)} insns  ` +
        `${String(r.verifiedInstructions).padStart(7)} verified  ${String(r.jitedBytes).padStart(6)} B jited  probe → ${r.testVerdict}`,
    );
  return lines.join('\n');
}
