// What the datapath reports of itself: its counters and its status, as the
// API, the metrics and the lab read them.
import type { NextHopStatus } from '../net/neighbours';

export interface Traffic {
  packets: number;
  bytes: number;
}

export interface CountersSnapshot {
  timestamp: number;
  services: Array<{ name: string; traffic: Traffic; backends: Array<{ address: string; port: number; traffic: Traffic }> }>;
  verdicts: Record<string, number>;
  reasons: Record<string, number>;
  nexthopLookups: number;
  flowCacheFills: number;
}

export interface NodeStatusSnapshot {
  version: string;
  attachments: Array<{ interface: string; ifindex: number; mode: string; programId: number }>;
  programId: number;
  programInstructions: number;
  maglevSize: number;
  maps: Array<{ name: string; entries: number; capacity: number }>;
  services: number;
  backends: number;
  bpffs: string;
  uptimeSeconds: number;
  /** every backend's next hop and whether the kernel has resolved it (the daemon's neighbour keeper) */
  nextHops?: NextHopStatus[];
  nextHopsResolved?: number;
  nextHopsUnresolved?: number;
  /** path MTUs routers past the node reported, in force (src/datapath/pmtu.ts) */
  pathMtus: Array<{ backend: string; mtu: number; expiresInSeconds: number }>;
  /** routes missing for the outer sources and VIPs (src/datapath/routes.ts) */
  routeWarnings: string[];
}
