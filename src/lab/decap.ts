// The backend side of DSR as user space sees it: xdp/decap.bpf.c loaded with
// its maps pinned in a directory of its own, the backend's addresses written to
// xdplb_decap_local, attached to an interface (in a network namespace when
// asked), and its per-CPU reason counters read back.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as bpf from '../datapath/bpf';
import * as sys from '../sys/system';
import { DECAP_STRUCTS, encodeDecapConfig, encodeLocalKey, encodeRevNatKey, encodeRevNatVal } from '../datapath/decap-layout';
import { IPPROTO_TCP, IPPROTO_UDP, sumCounters, u32, type Counter } from '../datapath/layout';
import { parseReasons } from '../datapath/reasons';
import { PACKAGE_ROOT } from '../sys/paths';

export const DECAP_OBJECT = 'decap';
export const DECAP_PROGRAM = 'xdplb_decap';
export const DECAP_LOCAL_MAP = 'xdplb_decap_local';
export const DECAP_REASONS_MAP = 'xdplb_decap_reasons';
export const DECAP_CONFIG_MAP = 'xdplb_decap_config';
/** xdplb_decap_config flags */
export const DECAP_CFG_F_SINK = 1;
export const REVNAT_MAP = 'xdplb_decap_revnat';
export const REVNAT_PROGRAM = 'xdplb_revnat';
/** Pin names of the programs next to the maps */
export const DECAP_PROG_PIN = 'prog_xdplb_decap';
export const REVNAT_PROG_PIN = 'prog_xdplb_revnat';

/**
 * Why the decapsulator gave a packet its verdict: xdp/decap_reasons.def, the
 * table enum xdplb_decap_reason is made from (same order, names without
 * DECAP_R_ in snake_case). test/decap.test.ts checks it against the BTF.
 */
export const DECAP_REASONS = Object.freeze(
  parseReasons(fs.readFileSync(path.join(PACKAGE_ROOT, 'xdp', 'decap_reasons.def'), 'utf8'), {
    macro: 'DECAP_REASON',
    verdicts: ['XDP_PASS', 'XDP_DROP', 'TC_ACT_OK'] as const,
    file: 'decap_reasons.def',
  }),
);

export type DecapReason = string;
export const DECAP_REASON: Readonly<Record<DecapReason, number>> = Object.freeze(Object.fromEntries(DECAP_REASONS.map((r, i) => [r.name, i])));

/** One reverse-DNAT rule: replies from vip:backendPort leave as vip:servicePort. */
export interface RevNat {
  vip: string;
  proto: 'tcp' | 'udp';
  backendPort: number;
  servicePort: number;
}

/** decap.bpf.o loaded (maps pinned under pinRoot when given). */
export class Decap {
  readonly prog: bpf.BpfProgram;
  readonly local: bpf.BpfMap;
  readonly reasonsMap: bpf.BpfMap;
  readonly revnatProg: bpf.BpfProgram;
  readonly revnat: bpf.BpfMap;
  readonly config: bpf.BpfMap;

  private constructor(private readonly obj: bpf.BpfObject) {
    this.prog = obj.program(DECAP_PROGRAM);
    this.local = obj.map(DECAP_LOCAL_MAP);
    this.reasonsMap = obj.map(DECAP_REASONS_MAP);
    this.revnatProg = obj.program(REVNAT_PROGRAM);
    this.revnat = obj.map(REVNAT_MAP);
    this.config = obj.map(DECAP_CONFIG_MAP);
  }

  /**
   * Sink mode (benchmarks only): every frame is dropped after its verdict,
   * a decapsulated one after its outer header is stripped.
   */
  setSink(on: boolean): void {
    this.config.update(u32(0), encodeDecapConfig(on ? DECAP_CFG_F_SINK : 0));
  }

  static open(pinRoot?: string, objectFile = bpf.objectPath(DECAP_OBJECT)): Decap {
    if (pinRoot) fs.mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    return new Decap(bpf.openObject(objectFile, { pinRoot, layout: DECAP_STRUCTS }));
  }

  /** Tunnel packets to these addresses are decapsulated ('any': all of them). */
  addLocal(...addresses: Array<string | 'any'>): void {
    for (const a of addresses) this.local.update(encodeLocalKey(a), u32(1));
  }

  removeLocal(address: string | 'any'): boolean {
    return this.local.delete(encodeLocalKey(address));
  }

  counters(): Record<DecapReason, Counter> {
    return readCounters(this.reasonsMap);
  }

  /**
   * Attaches to `ifname` (netlink: stays when this process exits), inside the
   * network namespace `ns` when given: the ifindex is looked up, and the
   * attachment made, on the calling thread inside it.
   */
  attach(ifname: string, o: { ns?: string; mode?: bpf.XdpMode } = {}): number {
    const go = () => {
      const ifindex = sys.ifIndex(ifname);
      bpf.attachXdp(ifindex, this.prog, { mode: o.mode ?? 'native' });
      return ifindex;
    };
    return o.ns ? sys.withNetns(o.ns, go) : go();
  }

  /** Pins both programs beside the maps (status and tc find them by path). */
  pinPrograms(pinRoot: string): void {
    for (const [prog, name] of [[this.prog, DECAP_PROG_PIN], [this.revnatProg, REVNAT_PROG_PIN]] as const) {
      const p = path.join(pinRoot, name);
      fs.rmSync(p, { force: true });
      prog.pin(p);
    }
  }

  close(): void {
    this.local.close();
    this.reasonsMap.close();
    this.revnat.close();
    this.revnatProg.close();
    this.config.close();
    this.prog.close();
    this.obj.close();
  }
}

function readCounters(m: bpf.BpfMap): Record<DecapReason, Counter> {
  const out = {} as Record<DecapReason, Counter>;
  DECAP_REASONS.forEach((r, i) => (out[r.name] = sumCounters(m.lookupPerCpu(u32(i)))));
  return out;
}

/** The counters of a decapsulator pinned under pinRoot (null when there is none). */
export function pinnedDecapCounters(pinRoot: string): Record<DecapReason, Counter> | null {
  const pin = path.join(pinRoot, DECAP_REASONS_MAP);
  if (!fs.existsSync(pin)) return null;
  const m = bpf.mapFromPin(pin);
  try {
    return readCounters(m);
  } finally {
    m.close();
  }
}

/**
 * The reverse-DNAT rules of a decapsulator pinned under pinRoot become exactly
 * `rules`. Returns how many entries were written and removed.
 */
export function syncPinnedRevNat(pinRoot: string, rules: readonly RevNat[]): { written: number; removed: number } {
  const m = bpf.mapFromPin(path.join(pinRoot, REVNAT_MAP));
  try {
    const want = new Map(rules.map((r) => [encodeRevNatKey({ ...r, proto: r.proto === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP }).toString('hex'), encodeRevNatVal(r.servicePort)]));
    let removed = 0;
    for (const k of [...m.keys()]) if (!want.has(k.toString('hex')) && m.delete(k)) removed++;
    let written = 0;
    for (const [k, v] of want) {
      const cur = m.lookup(Buffer.from(k, 'hex'));
      if (cur && cur.equals(v)) continue;
      m.update(Buffer.from(k, 'hex'), v);
      written++;
    }
    return { written, removed };
  } finally {
    m.close();
  }
}

/**
 * Attaches the pinned xdplb_revnat program to `ifname`'s egress with tc (clsact
 * qdisc, direct action), in namespace `ns` when given: nsenter, unlike
 * `ip netns exec`, keeps bpffs visible.
 */
export function attachRevNatIn(ns: string | undefined, ifname: string, pinRoot: string): void {
  const argv = ns ? ['nsenter', `--net=/var/run/netns/${ns}`, 'tc'] : ['tc'];
  const run = (...args: string[]) => execFileSync(argv[0], [...argv.slice(1), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    run('qdisc', 'add', 'dev', ifname, 'clsact');
  } catch {
    // already there
  }
  try {
    run('filter', 'replace', 'dev', ifname, 'egress', 'pref', '1', 'handle', '1', 'bpf', 'direct-action', 'object-pinned', path.join(pinRoot, REVNAT_PROG_PIN));
  } catch (e) {
    throw new Error(`tc egress on ${ifname}${ns ? ` in ${ns}` : ''}: ${String((e as { stderr?: Buffer }).stderr ?? e).trim()}`);
  }
}

/** Detaches whatever XDP program is on `ifname` in `ns` (no error when none, or gone). */
export function detachIn(ns: string, ifname: string): void {
  try {
    sys.withNetns(ns, () => {
      const ifindex = sys.ifIndex(ifname);
      const q = bpf.queryXdp(ifindex);
      if (q.progId && (q.mode === 'native' || q.mode === 'generic')) bpf.detachXdp(ifindex, q.mode);
    });
  } catch {
    // namespace or interface gone: nothing attached any more
  }
}
