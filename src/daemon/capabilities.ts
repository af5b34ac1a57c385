// The capabilities the daemon cannot work without, checked before it touches
// anything: without one, the kernel answers loading lb.bpf.o with a bare EPERM
// or EACCES that names neither the capability nor the reason. The unit grants
// exactly these (systemd/xdplb.service, where each was found by starting the
// daemon without it). /proc/self/status stays readable under the unit's
// ProcSubset=pid.
import * as fs from 'node:fs';
import type { Logger } from 'pino';
import { XdplbError } from '../control/errors';
import { effectiveCapabilities } from '../sys/capabilities';

const CAP_SYS_ADMIN = 21;

interface Needed {
  name: string;
  bit: number;
  why: string;
  /** the kernel takes CAP_SYS_ADMIN instead (bpf_capable(), perfmon_capable()) */
  sysAdminWill: boolean;
}

export const NEEDED: readonly Needed[] = [
  { name: 'CAP_BPF', bit: 39, why: 'bpf(): loading lb.bpf.o, creating, pinning and opening its maps', sysAdminWill: true },
  { name: 'CAP_NET_ADMIN', bit: 12, why: 'XDP programs and their devmap, attaching them through rtnetlink', sysAdminWill: false },
  {
    name: 'CAP_PERFMON',
    bit: 38,
    why: 'the verifier accepts lb.bpf.o only with pointer leaks allowed (frame length = data_end - data), and the recorder reads perf event rings',
    sysAdminWill: true,
  },
];

export function missingCapabilities(effective: bigint): Needed[] {
  const has = (bit: number) => (effective >> BigInt(bit)) & 1n;
  return NEEDED.filter((c) => !has(c.bit) && !(c.sysAdminWill && has(CAP_SYS_ADMIN)));
}

/** Throws one line naming every missing capability and what it is for; a set it cannot read is logged and let through. */
export function checkCapabilities(log: Logger, status?: string): void {
  let effective: bigint;
  try {
    effective = effectiveCapabilities(status ?? fs.readFileSync('/proc/self/status', 'utf8'));
  } catch (e) {
    log.warn({ error: (e as Error).message }, 'capabilities not checked: /proc/self/status unreadable');
    return;
  }
  const missing = missingCapabilities(effective);
  if (!missing.length) return;
  throw XdplbError.failedPrecondition(
    `missing capabilit${missing.length === 1 ? 'y' : 'ies'} ${missing.map((c) => `${c.name} (${c.why})`).join(', ')}; ` +
      `run as root or grant ${NEEDED.map((c) => c.name).join(' ')} (systemd: AmbientCapabilities=)`,
  );
}
