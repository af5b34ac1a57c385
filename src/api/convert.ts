// Between protobuf messages (as @grpc/proto-loader hands them over: camelCase
// fields, enums as names) and the desired-state model.
import type { BackendSpec, BackendState, OwnedService, Protocol, ServiceFlags, ServiceSpec } from '../control/model';

export interface PbBackend {
  address?: string;
  port?: number | null;
  weight?: number | null;
  state?: string;
}
export interface PbFlags {
  l4Dnat?: boolean;
  sourceHash?: boolean;
  conntrackBypass?: boolean;
  icmpEcho?: boolean | null;
}
export interface PbService {
  name?: string;
  vip?: string;
  port?: number;
  protocol?: string;
  flags?: PbFlags | null;
  backends?: PbBackend[];
  owner?: string;
}

const PROTOCOLS: Record<string, Protocol | undefined> = { PROTOCOL_TCP: 'tcp', PROTOCOL_UDP: 'udp' };
const STATES: Record<string, BackendState | undefined> = {
  BACKEND_STATE_UNSPECIFIED: 'active',
  BACKEND_STATE_ACTIVE: 'active',
  BACKEND_STATE_DRAINING: 'draining',
  BACKEND_STATE_DOWN: 'down',
};

/**
 * Unknown enum values stay as they came so validation names the field and the
 * value; everything else is shaped for the validator, which has the last word.
 */
export function backendFromPb(b: PbBackend | null | undefined): unknown {
  if (!b) return b;
  // Unset optional fields stay undefined so the validator applies its defaults.
  return { address: b.address ?? '', port: b.port ?? undefined, weight: b.weight ?? undefined, state: STATES[b.state ?? ''] ?? b.state };
}

export function serviceFromPb(s: PbService | null | undefined): unknown {
  if (!s) return s;
  const flags: ServiceFlags = {
    l4Dnat: !!s.flags?.l4Dnat,
    sourceHash: !!s.flags?.sourceHash,
    conntrackBypass: !!s.flags?.conntrackBypass,
    icmpEcho: s.flags?.icmpEcho ?? true,
  };
  return {
    name: s.name ?? '',
    vip: s.vip ?? '',
    port: s.port ?? 0,
    protocol: PROTOCOLS[s.protocol ?? ''] ?? (s.protocol === 'PROTOCOL_UNSPECIFIED' ? undefined : s.protocol),
    flags,
    backends: (s.backends ?? []).map(backendFromPb),
  };
}

function backendToPb(b: BackendSpec): PbBackend {
  return { address: b.address, port: b.port, weight: b.weight, state: `BACKEND_STATE_${b.state.toUpperCase()}` };
}

export function serviceToPb(s: OwnedService | ServiceSpec): PbService {
  return {
    name: s.name,
    vip: s.vip,
    port: s.port,
    protocol: `PROTOCOL_${s.protocol.toUpperCase()}`,
    flags: { ...s.flags },
    backends: s.backends.map(backendToPb),
    owner: 'owner' in s ? `OWNER_${s.owner.toUpperCase()}` : 'OWNER_UNSPECIFIED',
  };
}
