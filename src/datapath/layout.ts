// The map ABI of xdp/lb.bpf.c in TypeScript: every key and value struct of
// xdp/layout.h declared once as a struct codec (codec.ts), from which sizes,
// offsets, encoders and decoders derive; the encoders and decoders below shape
// them for the daemon. The declarations are checked against the BTF of the
// compiled object when the daemon loads it (STRUCTS) and in
// test/datapath-layout.test.ts; the constants of xdp/consts.h that the daemon
// needs are checked against the header there too.
//
// Byte order follows the header: addresses and ports in network order,
// everything else little-endian (host order of the machines xdplb runs on).

import { Address, type Family } from '../net/address';
import { array, bytes, struct, type StructCodec } from './codec';

// ---- consts.h ----
export const MAX_SERVICES = 65536;
export const MAX_BACKENDS = 262144;
export const CT_SIZE = 262144;
export const MAX_DEVICES = 256;
export const FLOW_HASH_SEED = 0x7864706c;
export const NEXTHOP_TTL_MS = 1000;
export const NEXTHOP_SLOTS = 16384;
export const FLOW_CACHE_SLOTS = 8192;
export const FLOW_CACHE_JIFFIES = 100;
/** connection-table lifetimes when the node config gives none (seconds), and the least the daemon sets */
export const CT_TCP_S = 3600;
export const CT_UDP_S = 120;
export const CT_CLOSING_S = 10;
export const CT_MIN_S = 5;
export const CT_REFRESH_JIFFIES = 100;
export const VIP_FILTER_WORDS = 1024;
export const IPV6_EXT_MAX = 6;
export const ICMP4_QUOTE_MAX = 576 - 20 - 8;
export const ICMP6_QUOTE_MAX = 1280 - 40 - 8;
export const DEFAULT_TTL = 64;
export const PMTU_EXPIRES_S = 600;
export const PMTU_MIN4 = 552;
export const PMTU_MIN6 = 1280;
export const PMTU_SLOTS = 16384;

export const FAMILY_V4 = 4;
export const FAMILY_V6 = 6;
export type { Family };

export const SVC_F_L4_DNAT = 1 << 0;
export const SVC_F_SRC_HASH = 1 << 1;
export const SVC_F_CT_BYPASS = 1 << 2;
export const SVC_F_ICMP_ECHO = 1 << 3;

/** struct xdplb_config.flags */
export const CFG_F_NO_FLOW_CACHE = 1 << 0;

export const BACKEND_NONE = 0;
export const BACKEND_ACTIVE = 1;
export const BACKEND_DRAINING = 2;
export const BACKEND_DOWN = 3;

/** Where the recorder hooks sit: struct xdplb_rec_meta.point. */
export const CAPTURE_IN = 1;
export const CAPTURE_OUT = 2;

// the recorder
export const REC_MAX_MASKS = 32;
export const REC_MAX_ENTRIES = 131072;
export const REC_MAX_RULES = 64;
/** the recorder's filter (xdplb_rec_filter): 2^REC_FILTER_WORDS_LOG words of 64 bits */
export const REC_FILTER_WORDS_LOG = 14;
export const REC_FILTER_WORDS = 16384;
/** the recorder's memo (xdplb_rec_memo): per-CPU slots */
export const REC_MEMO_SLOTS_LOG = 10;
export const REC_MEMO_SLOTS = 1024;
/** struct xdplb_rec_config.flags */
export const REC_F_NO_MEMO = 1 << 0;
/** xdplb_rec_stats indices */
export const REC_STAT_SAMPLES = 0;
export const REC_STAT_OUTPUT_FAILED = 1;
export const REC_STAT_MAX = 2;

/** xdplb_cache_stats indices */
export const CACHE_STAT_NEXTHOP_LOOKUPS = 0;
export const CACHE_STAT_FLOW_FILLS = 1;
export const CACHE_STAT_MAX = 2;

export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMPV6 = 58;

/** Map names in the object (also their pin names under the bpffs directory). */
export const MAP_NAMES = {
  /** IPv6 VIPs (struct xdplb_service_key) */
  services: 'xdplb_services',
  /** IPv4 VIPs (struct xdplb_service4_key) */
  services4: 'xdplb_services4',
  /** service id -> the service (struct xdplb_service_def), for connection-table hits */
  servicesById: 'xdplb_svc_by_id',
  /** word -> 64 bits: a bit per VIP address hash (vipFilterBit) */
  vipFilter: 'xdplb_vip_filter',
  backends: 'xdplb_backends',
  nexthops: 'xdplb_nexthops',
  /** CACHE_STAT_* -> per-CPU count of cache fills */
  cacheStats: 'xdplb_cache_stats',
  /** (VIP, protocol, backend port) as struct xdplb_service_key -> service port of an L4 DNAT service (struct xdplb_revnat) */
  revnat: 'xdplb_revnat',
  /** backend (struct xdplb_pmtu_key) -> path MTU a router past the node reported (struct xdplb_pmtu) */
  pmtu: 'xdplb_pmtu',
  maglev: 'xdplb_maglev',
  config: 'xdplb_config',
  /** IPv6 flows (struct xdplb_flow_key) */
  conntrack: 'xdplb_conntrack',
  /** IPv4 flows (struct xdplb_flow4_key) */
  conntrack4: 'xdplb_conntrack4',
  serviceStats: 'xdplb_svc_stats',
  backendStats: 'xdplb_be_stats',
  reasons: 'xdplb_reasons',
  devmap: 'xdplb_devmap',
  /** per CPU, not pinned: connection-table answers as each CPU last used them */
  flowCache: 'xdplb_flow_cache',
} as const;

/**
 * The recorder's maps (pinned by name like the others), apart from MAP_NAMES:
 * the daemon opens them only when it records.
 */
export const REC_MAP_NAMES = {
  masks: 'xdplb_rec_masks',
  entries: 'xdplb_rec_entries',
  config: 'xdplb_rec_config',
  /** word -> 64 bits: a bit per entry key hash (filter.ts recFilterBit) */
  filter: 'xdplb_rec_filter',
  /** per CPU, a tuple's last match (not pinned) */
  memo: 'xdplb_rec_memo',
  ring: 'xdplb_rec_ring',
  stats: 'xdplb_rec_stats',
} as const;

/** The XDP program of lb.bpf.c. */
export const PROGRAM_NAME = 'xdplb_main';

/** Flags the daemon's Maglev inner maps must carry (BPF_F_INNER_MAP). */
export const MAGLEV_INNER_FLAGS = 0x1000;

// ---- the structs of xdp/layout.h, each declared once (codec.ts) ----

export const SERVICE_KEY = struct('xdplb_service_key', { family: 'u8', proto: 'u8', port: 'be16', vip: bytes(16) });
export const SERVICE4_KEY = struct('xdplb_service4_key', { vip: bytes(4), port: 'be16', proto: 'u8', pad: 'u8' });
export const SERVICE = struct('xdplb_service', { id: 'u32', flags: 'u32' });
export const SERVICE_DEF = struct('xdplb_service_def', { vip: bytes(16), port: 'be16', proto: 'u8', family: 'u8', svc: SERVICE });
export const BACKEND = struct('xdplb_backend', { addr: bytes(16), port: 'be16', family: 'u8', state: 'u8', service_id: 'u32' });
export const NEXTHOP = struct('xdplb_nexthop', {
  addr: bytes(16),
  dmac: bytes(6),
  smac: bytes(6),
  mtu: 'u16',
  family: 'u8',
  pad: 'u8',
  ifindex: 'u32',
  iif: 'u32',
  expires_ns: 'u64',
  checked_jiffies: 'u64',
});
export const REVNAT = struct('xdplb_revnat', { port: 'be16', pad: 'u16' });
export const PMTU_KEY = struct('xdplb_pmtu_key', { addr: bytes(16), family: 'u8', pad: bytes(3) });
export const PMTU = struct('xdplb_pmtu', { expires_ns: 'u64', mtu: 'u32', pad: 'u32' });
export const CONFIG = struct('xdplb_config', {
  src4: bytes(4),
  src6: bytes(16),
  src4_prefix_len: 'u8',
  src6_prefix_len: 'u8',
  ttl: 'u8',
  flags: 'u8',
  mtu: 'u16',
  nexthop_ttl_ms: 'u16',
  pad: 'u32',
  ct_tcp_s: 'u32',
  ct_udp_s: 'u32',
  ct_closing_s: 'u32',
  pad2: 'u32',
});
export const FLOW_KEY = struct('xdplb_flow_key', { src: bytes(16), dst: bytes(16), sport: 'be16', dport: 'be16', proto: 'u8', family: 'u8', pad: 'u16' });
export const FLOW4_KEY = struct('xdplb_flow4_key', { src: bytes(4), dst: bytes(4), sport: 'be16', dport: 'be16', proto: 'u8', pad: bytes(3) });
export const CT_ENTRY = struct('xdplb_ct_entry', { backend_id: 'u32', service_id: 'u32', expires_s: 'u32', checked_jiffies: 'u32', closing: 'u8', pad: bytes(3) });
export const FLOW_CACHE_ENTRY = struct('xdplb_flow_cache_entry', {
  flow: FLOW_KEY,
  backend_id: 'u32',
  service_id: 'u32',
  filled_jiffies: 'u64',
  hash: 'u32',
  hashed: 'u16',
  pending: 'u16',
});
export const COUNTER = struct('xdplb_counter', { packets: 'u64', bytes: 'u64' });
export const DEVMAP_VAL = struct('xdplb_devmap_val', { ifindex: 'u32', prog_fd: 's32' });
export const REC_KEY = struct('xdplb_rec_key', { family: 'u8', proto: 'u8', sport: 'be16', dport: 'be16', mask: 'u8', pad: 'u8', src: bytes(16), dst: bytes(16) });
export const REC_ENTRY = struct('xdplb_rec_entry', { rules: 'u64', caplen: 'u32', pad: 'u32' });
export const REC_CONFIG = struct('xdplb_rec_config', { n_masks: 'u32', gen: 'u32', flags: 'u32', pad: 'u32' });
export const REC_MEMO = struct('xdplb_rec_memo', { tuple: array('u64', 5), rules: 'u64', caplen: 'u32', gen: 'u32' });
export const REC_META = struct('xdplb_rec_meta', {
  ts_ns: 'u64',
  rules: 'u64',
  orig_len: 'u32',
  cap_len: 'u32',
  ifindex: 'u32',
  backend_id: 'u32',
  point: 'u8',
  family: 'u8',
  pad: 'u16',
  pad2: 'u32',
});

/** Every struct of xdp/layout.h by its C name: what the daemon checks lb.bpf.o against at load. */
export const LAYOUT = {
  xdplb_service_key: SERVICE_KEY,
  xdplb_service4_key: SERVICE4_KEY,
  xdplb_service: SERVICE,
  xdplb_service_def: SERVICE_DEF,
  xdplb_backend: BACKEND,
  xdplb_nexthop: NEXTHOP,
  xdplb_revnat: REVNAT,
  xdplb_pmtu_key: PMTU_KEY,
  xdplb_pmtu: PMTU,
  xdplb_config: CONFIG,
  xdplb_flow_key: FLOW_KEY,
  xdplb_flow4_key: FLOW4_KEY,
  xdplb_ct_entry: CT_ENTRY,
  xdplb_flow_cache_entry: FLOW_CACHE_ENTRY,
  xdplb_counter: COUNTER,
  xdplb_devmap_val: DEVMAP_VAL,
  xdplb_rec_key: REC_KEY,
  xdplb_rec_entry: REC_ENTRY,
  xdplb_rec_config: REC_CONFIG,
  xdplb_rec_memo: REC_MEMO,
  xdplb_rec_meta: REC_META,
} as const;
export const STRUCTS: ReadonlyArray<StructCodec<unknown>> = Object.values(LAYOUT);

/** Key and value struct of each map (u32/u64: plain integers, u32 keys are indexes). */
export const MAP_LAYOUT: Readonly<Record<string, { key: keyof typeof LAYOUT | 'u32' | 'u64'; value: keyof typeof LAYOUT | 'u32' | 'u64' }>> = {
  xdplb_services: { key: 'xdplb_service_key', value: 'xdplb_service' },
  xdplb_services4: { key: 'xdplb_service4_key', value: 'xdplb_service' },
  xdplb_svc_by_id: { key: 'u32', value: 'xdplb_service_def' },
  xdplb_vip_filter: { key: 'u32', value: 'u64' },
  xdplb_backends: { key: 'u32', value: 'xdplb_backend' },
  xdplb_nexthops: { key: 'u32', value: 'xdplb_nexthop' },
  xdplb_cache_stats: { key: 'u32', value: 'u64' },
  xdplb_pmtu: { key: 'xdplb_pmtu_key', value: 'xdplb_pmtu' },
  xdplb_revnat: { key: 'xdplb_service_key', value: 'xdplb_revnat' },
  xdplb_config: { key: 'u32', value: 'xdplb_config' },
  xdplb_conntrack: { key: 'xdplb_flow_key', value: 'xdplb_ct_entry' },
  xdplb_conntrack4: { key: 'xdplb_flow4_key', value: 'xdplb_ct_entry' },
  xdplb_flow_cache: { key: 'u32', value: 'xdplb_flow_cache_entry' },
  xdplb_svc_stats: { key: 'u32', value: 'xdplb_counter' },
  xdplb_be_stats: { key: 'u32', value: 'xdplb_counter' },
  xdplb_reasons: { key: 'u32', value: 'xdplb_counter' },
  xdplb_devmap: { key: 'u32', value: 'xdplb_devmap_val' },
  xdplb_rec_masks: { key: 'u32', value: 'xdplb_rec_key' },
  xdplb_rec_entries: { key: 'xdplb_rec_key', value: 'xdplb_rec_entry' },
  xdplb_rec_config: { key: 'u32', value: 'xdplb_rec_config' },
  xdplb_rec_filter: { key: 'u32', value: 'u64' },
  xdplb_rec_memo: { key: 'u32', value: 'xdplb_rec_memo' },
  xdplb_rec_ring: { key: 'u32', value: 'u32' },
  xdplb_rec_stats: { key: 'u32', value: 'u64' },
};

// ---- addresses ----
// Parsing, bytes and canonical text are src/net/address.ts's; these give the
// encoders and decoders an address field's forms from a spec's text.

/** Address family of an IP address in text form; throws on anything else. */
export function familyOf(address: string): Family {
  return Address.of(address).family;
}

/** 4 bytes (IPv4) or 16 bytes (IPv6), network order (a copy). */
export function addressBytes(address: string): Buffer {
  return Buffer.from(Address.of(address).bytes);
}

/** The 16-byte map field of an address (IPv4 in the first 4 bytes). */
export function address16(address: string): Buffer {
  const b = Buffer.alloc(16);
  Address.of(address).bytes.copy(b);
  return b;
}

/** Text form of an address field: 4 or 16 bytes used according to family. */
export function addressText(bytes: Buffer, family: Family): string {
  return Address.fromBytes(bytes.subarray(0, family === 4 ? 4 : 16)).text;
}

function familyByte(f: number): Family {
  if (f !== 4 && f !== 6) throw new RangeError(`bad family byte ${f}`);
  return f;
}

/** An address field's family byte, or '' for a zero family (an empty slot). */
function addressOrEmpty(addr: Buffer, family: number): string {
  return family ? addressText(addr, familyByte(family)) : '';
}

// ---- u32 keys ----
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

export function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

// ---- struct xdplb_service_key ----
export interface ServiceKey {
  vip: string;
  /** 0 = every port of the VIP */
  port: number;
  proto: number;
}

export function encodeServiceKey(k: ServiceKey): Buffer {
  return SERVICE_KEY.encode({ family: familyOf(k.vip), proto: k.proto, port: k.port, vip: addressBytes(k.vip) });
}

export function decodeServiceKey(b: Buffer): ServiceKey {
  const k = SERVICE_KEY.decode(b);
  return { vip: addressText(k.vip as Buffer, familyByte(k.family)), port: k.port, proto: k.proto };
}

// ---- struct xdplb_service4_key ----
export function encodeService4Key(k: ServiceKey): Buffer {
  if (familyOf(k.vip) !== 4) throw new RangeError(`not an IPv4 VIP: ${k.vip}`);
  return SERVICE4_KEY.encode({ vip: addressBytes(k.vip), port: k.port, proto: k.proto });
}

export function decodeService4Key(b: Buffer): ServiceKey {
  const k = SERVICE4_KEY.decode(b);
  return { vip: addressText(k.vip as Buffer, 4), port: k.port, proto: k.proto };
}

/**
 * A service's key in the service map of its VIP's family: xdplb_services4
 * (8 bytes) for IPv4, xdplb_services (20 bytes) for IPv6. The length says
 * which map a key belongs to (serviceMapOf).
 */
export function serviceMapKey(k: ServiceKey): Buffer {
  return familyOf(k.vip) === 4 ? encodeService4Key(k) : encodeServiceKey(k);
}

/** The service map a serviceMapKey() key belongs to. */
export function serviceMapOf(key: Buffer): 'services' | 'services4' {
  return key.length === SERVICE4_KEY.size ? 'services4' : 'services';
}

/** Decodes a key of either service map. */
export function decodeServiceMapKey(key: Buffer): ServiceKey {
  return serviceMapOf(key) === 'services4' ? decodeService4Key(key) : decodeServiceKey(key);
}

/** Key (serviceMapKey) of the VIP entry that says whether the VIP answers ICMP echo. */
export function vipEntryKey(vip: string): Buffer {
  return serviceMapKey({ vip, port: 0, proto: familyOf(vip) === 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6 });
}

// ---- struct xdplb_service ----
export interface Service {
  id: number;
  flags: number;
}

export function encodeService(s: Service): Buffer {
  return SERVICE.encode(s);
}

export function decodeService(b: Buffer): Service {
  return SERVICE.decode(b);
}

// ---- struct xdplb_service_def ----
/**
 * A service by id: its key and its service-map value. `undefined` encodes the
 * empty slot (family 0), which a connection-table entry never matches.
 */
export function encodeServiceDef(d: (ServiceKey & Service) | undefined): Buffer {
  if (!d) return SERVICE_DEF.encode({});
  return SERVICE_DEF.encode({ vip: addressBytes(d.vip), port: d.port, proto: d.proto, family: familyOf(d.vip), svc: { id: d.id, flags: d.flags } });
}

export function decodeServiceDef(b: Buffer): (ServiceKey & Service) | undefined {
  const d = SERVICE_DEF.decode(b);
  if (!d.family) return undefined;
  return { vip: addressText(d.vip as Buffer, familyByte(d.family)), port: d.port, proto: d.proto, ...d.svc };
}

// ---- struct xdplb_backend ----
export interface Backend {
  /** '' for an empty slot */
  address: string;
  port: number;
  /** BACKEND_* */
  state: number;
  /** the owning service's id: connection-table and flow-cache entries of other services ignore the backend */
  serviceId: number;
}

export function encodeBackend(be: Backend): Buffer {
  const addr = be.address ? { addr: addressBytes(be.address), family: familyOf(be.address) } : {};
  return BACKEND.encode({ ...addr, port: be.port, state: be.state, service_id: be.serviceId });
}

export function decodeBackend(b: Buffer): Backend {
  const be = BACKEND.decode(b);
  return { address: addressOrEmpty(be.addr as Buffer, be.family), port: be.port, state: be.state, serviceId: be.service_id };
}

// ---- struct xdplb_nexthop (written by the datapath only; read by tests and tools) ----
export interface Nexthop {
  /** '' for an entry never resolved */
  address: string;
  dmac: string;
  smac: string;
  mtu: number;
  ifindex: number;
  iif: number;
  /** CLOCK_MONOTONIC_COARSE ns from which the datapath looks it up again */
  expiresNs: bigint;
  checkedJiffies: bigint;
}

const macText = (b: Uint8Array): string => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');

export function decodeNexthop(b: Buffer): Nexthop {
  const n = NEXTHOP.decode(b);
  return {
    address: addressOrEmpty(n.addr as Buffer, n.family),
    dmac: macText(n.dmac),
    smac: macText(n.smac),
    mtu: n.mtu,
    ifindex: n.ifindex,
    iif: n.iif,
    expiresNs: n.expires_ns,
    checkedJiffies: n.checked_jiffies,
  };
}

// ---- xdplb_revnat: struct xdplb_service_key (port: the backend's) -> struct xdplb_revnat ----
export function encodeRevNatKey(k: { vip: string; proto: number; backendPort: number }): Buffer {
  return encodeServiceKey({ vip: k.vip, proto: k.proto, port: k.backendPort });
}

export function encodeRevNat(servicePort: number): Buffer {
  return REVNAT.encode({ port: servicePort });
}

// ---- struct xdplb_pmtu_key / struct xdplb_pmtu (written by the datapath; the daemon reads and expires them) ----
export interface PathMtu {
  /** the backend the path leads to */
  address: string;
  /** largest outer packet the path takes */
  mtu: number;
  /** CLOCK_MONOTONIC ns from which it no longer counts */
  expiresNs: bigint;
}

export function encodePmtuKey(address: string): Buffer {
  return PMTU_KEY.encode({ addr: addressBytes(address), family: familyOf(address) });
}

export function encodePmtu(v: { mtu: number; expiresNs: bigint }): Buffer {
  return PMTU.encode({ expires_ns: v.expiresNs, mtu: v.mtu });
}

export function decodePmtu(key: Buffer, value: Buffer): PathMtu {
  const k = PMTU_KEY.decode(key);
  const v = PMTU.decode(value);
  return { address: addressText(k.addr as Buffer, familyByte(k.family)), mtu: v.mtu, expiresNs: v.expires_ns };
}

// ---- struct xdplb_config ----
export interface NodeConfig {
  /** outer IPv4 source; '' = none (IPv4 services are dropped) */
  src4: string;
  /** 32 (or 0): exactly src4; 1..31: host bits from the flow hash */
  src4PrefixLen: number;
  src6: string;
  /** 128 (or 0): exactly src6; less: last min(32, 128 - len) bits from the flow hash */
  src6PrefixLen: number;
  /** 0 = 64 */
  ttl: number;
  flags: number;
  /** 0 = the FIB's MTU only */
  mtu: number;
  /** next-hop cache bound in ms; 0 = NEXTHOP_TTL_MS */
  nexthopTtlMs: number;
  /** connection-table lifetimes in seconds: idle TCP, idle UDP, after FIN/RST; 0 = CT_TCP_S, CT_UDP_S, CT_CLOSING_S */
  ctTcpS: number;
  ctUdpS: number;
  ctClosingS: number;
}

export function encodeConfig(c: NodeConfig): Buffer {
  if (c.src4 && familyOf(c.src4) !== 4) throw new RangeError(`src4 is not IPv4: ${c.src4}`);
  if (c.src6 && familyOf(c.src6) !== 6) throw new RangeError(`src6 is not IPv6: ${c.src6}`);
  return CONFIG.encode({
    ...(c.src4 ? { src4: addressBytes(c.src4) } : {}),
    ...(c.src6 ? { src6: addressBytes(c.src6) } : {}),
    src4_prefix_len: c.src4PrefixLen,
    src6_prefix_len: c.src6PrefixLen,
    ttl: c.ttl,
    flags: c.flags,
    mtu: c.mtu,
    nexthop_ttl_ms: c.nexthopTtlMs,
    ct_tcp_s: c.ctTcpS,
    ct_udp_s: c.ctUdpS,
    ct_closing_s: c.ctClosingS,
  });
}

export function decodeConfig(b: Buffer): NodeConfig {
  const c = CONFIG.decode(b);
  const zero = (a: Uint8Array) => a.every((x) => x === 0);
  return {
    src4: zero(c.src4) ? '' : addressText(c.src4 as Buffer, 4),
    src4PrefixLen: c.src4_prefix_len,
    src6: zero(c.src6) ? '' : addressText(c.src6 as Buffer, 6),
    src6PrefixLen: c.src6_prefix_len,
    ttl: c.ttl,
    flags: c.flags,
    mtu: c.mtu,
    nexthopTtlMs: c.nexthop_ttl_ms,
    ctTcpS: c.ct_tcp_s,
    ctUdpS: c.ct_udp_s,
    ctClosingS: c.ct_closing_s,
  };
}

// ---- struct xdplb_flow_key ----
export interface FlowKey {
  /** client */
  src: string;
  /** VIP */
  dst: string;
  sport: number;
  dport: number;
  proto: number;
}

export function encodeFlowKey(k: FlowKey): Buffer {
  const family = familyOf(k.src);
  if (familyOf(k.dst) !== family) throw new RangeError(`flow mixes families: ${k.src} -> ${k.dst}`);
  return FLOW_KEY.encode({ src: addressBytes(k.src), dst: addressBytes(k.dst), sport: k.sport, dport: k.dport, proto: k.proto, family });
}

export function decodeFlowKey(b: Buffer): FlowKey {
  const k = FLOW_KEY.decode(b);
  const family = familyByte(k.family);
  return { src: addressText(k.src as Buffer, family), dst: addressText(k.dst as Buffer, family), sport: k.sport, dport: k.dport, proto: k.proto };
}

// ---- struct xdplb_flow4_key ----
export function encodeFlow4Key(k: FlowKey): Buffer {
  if (familyOf(k.src) !== 4 || familyOf(k.dst) !== 4) throw new RangeError(`not an IPv4 flow: ${k.src} -> ${k.dst}`);
  return FLOW4_KEY.encode({ src: addressBytes(k.src), dst: addressBytes(k.dst), sport: k.sport, dport: k.dport, proto: k.proto });
}

export function decodeFlow4Key(b: Buffer): FlowKey {
  const k = FLOW4_KEY.decode(b);
  return { src: addressText(k.src as Buffer, 4), dst: addressText(k.dst as Buffer, 4), sport: k.sport, dport: k.dport, proto: k.proto };
}

/** The connection table of a flow's family and its key there. */
export function conntrackKey(k: FlowKey): { map: 'conntrack' | 'conntrack4'; key: Buffer } {
  return familyOf(k.src) === 4 ? { map: 'conntrack4', key: encodeFlow4Key(k) } : { map: 'conntrack', key: encodeFlowKey(k) };
}

// ---- struct xdplb_ct_entry ----
export interface CtEntry {
  backendId: number;
  serviceId: number;
  /** monotonic seconds (CLOCK_MONOTONIC) from which the entry counts as absent */
  expiresS: number;
  /** low 32 bits of the jiffies when expiresS was last set */
  checkedJiffies: number;
  /** a FIN or RST was seen: the closing lifetime applies */
  closing: boolean;
}

/** An entry as the datapath writes it; unset age fields are 0 (an entry that has expired). */
export function encodeCtEntry(e: Pick<CtEntry, 'backendId' | 'serviceId'> & Partial<CtEntry>): Buffer {
  return CT_ENTRY.encode({
    backend_id: e.backendId,
    service_id: e.serviceId,
    expires_s: e.expiresS ?? 0,
    checked_jiffies: e.checkedJiffies ?? 0,
    closing: e.closing ? 1 : 0,
  });
}

export function decodeCtEntry(b: Buffer): CtEntry {
  const e = CT_ENTRY.decode(b);
  return { backendId: e.backend_id, serviceId: e.service_id, expiresS: e.expires_s, checkedJiffies: e.checked_jiffies, closing: e.closing !== 0 };
}

// ---- struct xdplb_counter ----
export interface Counter {
  packets: bigint;
  bytes: bigint;
}

export function encodeCounter(c: Counter): Buffer {
  return COUNTER.encode(c);
}

export function decodeCounter(b: Buffer): Counter {
  return COUNTER.decode(b);
}

/** Sum of a per-CPU counter (BpfMap.lookupPerCpu). */
export function sumCounters(perCpu: readonly Buffer[] | null): Counter {
  const sum: Counter = { packets: 0n, bytes: 0n };
  for (const b of perCpu ?? []) {
    const c = decodeCounter(b);
    sum.packets += c.packets;
    sum.bytes += c.bytes;
  }
  return sum;
}

// ---- struct xdplb_devmap_val ----
export interface DevmapVal {
  ifindex: number;
  /** 0 = no devmap program */
  progFd: number;
}

export function encodeDevmapVal(v: DevmapVal): Buffer {
  return DEVMAP_VAL.encode({ ifindex: v.ifindex, prog_fd: v.progFd });
}

export function decodeDevmapVal(b: Buffer): DevmapVal {
  const v = DEVMAP_VAL.decode(b);
  return { ifindex: v.ifindex, progFd: v.prog_fd };
}

// ---- Maglev tables ----

/** Inner map value bytes of a Maglev table: one u32 backend id per entry. */
export function encodeMaglevTable(table: Uint32Array): Buffer[] {
  return Array.from(table, (id) => u32(id));
}

// ---- the recorder: struct xdplb_rec_entry, _config, _meta (keys: filter.ts encodeTuple) ----

export interface RecEntry {
  /** bit r = rule r */
  rules: bigint;
  /** bytes to copy: the largest cap length of its rules; 0 = the whole frame */
  caplen: number;
}

export function encodeRecEntry(e: RecEntry): Buffer {
  return REC_ENTRY.encode({ rules: e.rules, caplen: e.caplen });
}

export function decodeRecEntry(b: Buffer): RecEntry {
  const e = REC_ENTRY.decode(b);
  return { rules: e.rules, caplen: e.caplen };
}

export interface RecConfig {
  /** mask slots in use; 0 = recorder off */
  nMasks: number;
  /** changed after every change of the other recorder maps: older memos are not used (default 0) */
  gen?: number;
  /** REC_F_* (default 0) */
  flags?: number;
}

export function encodeRecConfig(c: RecConfig): Buffer {
  if (!Number.isInteger(c.nMasks) || c.nMasks < 0 || c.nMasks > REC_MAX_MASKS) throw new RangeError(`n_masks ${c.nMasks} not in 0..${REC_MAX_MASKS}`);
  return REC_CONFIG.encode({ n_masks: c.nMasks, gen: c.gen ?? 0, flags: c.flags ?? 0 });
}

export function decodeRecConfig(b: Buffer): Required<RecConfig> {
  const c = REC_CONFIG.decode(b);
  return { nMasks: c.n_masks, gen: c.gen, flags: c.flags };
}

/** The header of a recorder sample; capLen frame bytes follow it. */
export interface RecMeta {
  /** bpf_ktime_get_ns(): CLOCK_MONOTONIC */
  tsNs: bigint;
  rules: bigint;
  /** frame length at the capture point */
  origLen: number;
  capLen: number;
  /** ingress interface */
  ifindex: number;
  /** the backend chosen (CAPTURE_OUT); NO_BACKEND at CAPTURE_IN */
  backendId: number;
  /** CAPTURE_IN / CAPTURE_OUT */
  point: number;
  family: number;
}

export function decodeRecMeta(b: Buffer): RecMeta {
  if (b.length < REC_META.size) throw new RangeError(`a recorder sample starts with ${REC_META.size} header bytes, got ${b.length}`);
  const m = REC_META.decode(b);
  return { tsNs: m.ts_ns, rules: m.rules, origLen: m.orig_len, capLen: m.cap_len, ifindex: m.ifindex, backendId: m.backend_id, point: m.point, family: m.family };
}

/** The datapath writes these; tests and tools make them to feed readers. */
export function encodeRecMeta(m: RecMeta): Buffer {
  return REC_META.encode({
    ts_ns: m.tsNs,
    rules: m.rules,
    orig_len: m.origLen,
    cap_len: m.capLen,
    ifindex: m.ifindex,
    backend_id: m.backendId,
    point: m.point,
    family: m.family,
  });
}

/** Sum of a per-CPU __u64 counter (xdplb_rec_stats). */
export function sumU64(perCpu: readonly Buffer[] | null): bigint {
  let sum = 0n;
  for (const b of perCpu ?? []) sum += b.readBigUInt64LE(0);
  return sum;
}
