// The map ABI of xdp/decap.bpf.c (the backend side of DSR), its structs of
// xdp/decap_layout.h declared once (codec.ts) and checked against the BTF of
// build/bpf/decap.bpf.o when an object is loaded (DECAP_STRUCTS) and in
// test/decap.test.ts.
import { struct, bytes, type StructCodec } from './codec';
import { addressBytes, addressText, familyOf, type Family } from './layout';

export const DECAP_ADDR = struct('xdplb_decap_addr', { family: 'u8', pad: bytes(3), addr: bytes(16) });
export const DECAP_COUNTER = struct('xdplb_decap_counter', { packets: 'u64', bytes: 'u64' });
export const REVNAT_KEY = struct('xdplb_revnat_key', { family: 'u8', proto: 'u8', port: 'be16', addr: bytes(16) });
export const REVNAT_VAL = struct('xdplb_revnat_val', { port: 'be16', pad: 'u16' });
export const DECAP_CONFIG = struct('xdplb_decap_config', { flags: 'u32' });

export const DECAP_STRUCTS: ReadonlyArray<StructCodec<unknown>> = [DECAP_ADDR, DECAP_COUNTER, REVNAT_KEY, REVNAT_VAL, DECAP_CONFIG];

/** Family byte of the xdplb_decap_local wildcard (DECAP_FAMILY_ANY). */
const FAMILY_ANY = 0;

/** The wildcard's text, 'any', or an address of a decap key's family byte and 16 address bytes. */
function keyAddress(family: number, addr: Uint8Array): string {
  return family === FAMILY_ANY ? 'any' : addressText(Buffer.from(addr), family as Family);
}

/** xdplb_decap_local key; `'any'` is the wildcard (family 0, address zero). */
export function encodeLocalKey(address: string | 'any'): Buffer {
  if (address === 'any') return DECAP_ADDR.encode({ family: FAMILY_ANY });
  return DECAP_ADDR.encode({ family: familyOf(address), addr: addressBytes(address) });
}

export function decodeLocalKey(b: Buffer): string {
  const k = DECAP_ADDR.decode(b);
  return keyAddress(k.family, k.addr);
}

/** A reply's source as the backend sends it: the VIP and the backend port. */
export interface RevNatKey {
  vip: string;
  proto: number;
  backendPort: number;
}

export function encodeRevNatKey(k: RevNatKey): Buffer {
  return REVNAT_KEY.encode({ family: familyOf(k.vip), proto: k.proto, port: k.backendPort, addr: addressBytes(k.vip) });
}

export function decodeRevNatKey(b: Buffer): RevNatKey {
  const k = REVNAT_KEY.decode(b);
  return { vip: keyAddress(k.family, k.addr), proto: k.proto, backendPort: k.port };
}

/** xdplb_decap_revnat value: the service port a reply leaves from. */
export function encodeRevNatVal(servicePort: number): Buffer {
  return REVNAT_VAL.encode({ port: servicePort });
}

export function decodeRevNatVal(b: Buffer): number {
  return REVNAT_VAL.decode(b).port;
}

export function encodeDecapConfig(flags: number): Buffer {
  return DECAP_CONFIG.encode({ flags });
}
