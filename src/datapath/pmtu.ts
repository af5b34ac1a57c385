// The path MTUs routers past the node reported (xdplb_pmtu, written by
// xdp/pmtu.h): read for `xdplb status`, and aged. The datapath already
// ignores an entry past its expiry (fib.h); deleting it here keeps the map
// to what is in force, as the kernel drops a learnt PMTU after
// net.ipv4.route.mtu_expires.
import type * as bpf from './bpf';
import * as L from './layout';

export interface PathMtuStatus {
  /** the backend the path leads to */
  backend: string;
  /** largest outer packet the path takes */
  mtu: number;
  expiresInSeconds: number;
}

/** The entries in force, by backend; expired ones are deleted. nowNs: CLOCK_MONOTONIC, the datapath's clock. */
export function agePathMtus(map: bpf.BpfMap, nowNs: bigint = process.hrtime.bigint()): PathMtuStatus[] {
  const out: PathMtuStatus[] = [];
  for (const k of [...map.keys()]) {
    const v = map.lookup(k);
    if (!v) continue;
    const e = L.decodePmtu(k, v);
    if (e.expiresNs <= nowNs) {
      map.delete(k);
      continue;
    }
    out.push({ backend: e.address, mtu: e.mtu, expiresInSeconds: Number(e.expiresNs - nowNs) / 1e9 });
  }
  return out.sort((a, b) => a.backend.localeCompare(b.backend));
}
