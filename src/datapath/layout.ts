// The map ABI of xdp/lb.bpf.c in TypeScript: encoders and decoders for every
// key and value struct of xdp/layout.h, with explicit byte offsets, and the
// constants of xdp/consts.h that the daemon needs. LAYOUT (below) lists each
// struct's size and field offsets; test/datapath-layout.test.ts compares it with
// the BTF of the compiled object so the two cannot drift apart.
//
// Byte order follows the header: addresses and ports in network order,
// everything else little-endian (host order of the machines xdplb runs on).

import { isIP } from 'node:net';

// ---- consts.h ----
export const MAX_SERVICES = 65536;
export const MAX_BACKENDS = 262144;
export const CT_SIZE = 262144;
export const MAX_DEVICES = 256;
export const MAGLEV_DEFAULT_M = 16381;
export const MAGLEV_MAX_M = 131071;
export const NO_BACKEND = 0xffffffff;
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
export type Family = 4 | 6;

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

// ---- layout table: checked against BTF ----
export interface FieldLayout {
  offset: number;
  size: number;
}
export interface StructLayout {
  size: number;
  fields: Record<string, FieldLayout>;
}

export const LAYOUT: Readonly<Record<string, StructLayout>> = {
  xdplb_service_key: {
    size: 20,
    fields: { family: { offset: 0, size: 1 }, proto: { offset: 1, size: 1 }, port: { offset: 2, size: 2 }, vip: { offset: 4, size: 16 } },
  },
  xdplb_service4_key: {
    size: 8,
    fields: { vip: { offset: 0, size: 4 }, port: { offset: 4, size: 2 }, proto: { offset: 6, size: 1 }, pad: { offset: 7, size: 1 } },
  },
  xdplb_service: {
    size: 8,
    fields: { id: { offset: 0, size: 4 }, flags: { offset: 4, size: 4 } },
  },
  xdplb_service_def: {
    size: 28,
    fields: {
      vip: { offset: 0, size: 16 },
      port: { offset: 16, size: 2 },
      proto: { offset: 18, size: 1 },
      family: { offset: 19, size: 1 },
      svc: { offset: 20, size: 8 },
    },
  },
  xdplb_backend: {
    size: 24,
    fields: { addr: { offset: 0, size: 16 }, port: { offset: 16, size: 2 }, family: { offset: 18, size: 1 }, state: { offset: 19, size: 1 }, service_id: { offset: 20, size: 4 } },
  },
  xdplb_nexthop: {
    size: 56,
    fields: {
      addr: { offset: 0, size: 16 },
      dmac: { offset: 16, size: 6 },
      smac: { offset: 22, size: 6 },
      mtu: { offset: 28, size: 2 },
      family: { offset: 30, size: 1 },
      pad: { offset: 31, size: 1 },
      ifindex: { offset: 32, size: 4 },
      iif: { offset: 36, size: 4 },
      expires_ns: { offset: 40, size: 8 },
      checked_jiffies: { offset: 48, size: 8 },
    },
  },
  xdplb_revnat: {
    size: 4,
    fields: { port: { offset: 0, size: 2 }, pad: { offset: 2, size: 2 } },
  },
  xdplb_pmtu_key: {
    size: 20,
    fields: { addr: { offset: 0, size: 16 }, family: { offset: 16, size: 1 }, pad: { offset: 17, size: 3 } },
  },
  xdplb_pmtu: {
    size: 16,
    fields: { expires_ns: { offset: 0, size: 8 }, mtu: { offset: 8, size: 4 }, pad: { offset: 12, size: 4 } },
  },
  xdplb_config: {
    size: 48,
    fields: {
      src4: { offset: 0, size: 4 },
      src6: { offset: 4, size: 16 },
      src4_prefix_len: { offset: 20, size: 1 },
      src6_prefix_len: { offset: 21, size: 1 },
      ttl: { offset: 22, size: 1 },
      flags: { offset: 23, size: 1 },
      mtu: { offset: 24, size: 2 },
      nexthop_ttl_ms: { offset: 26, size: 2 },
      maglev_m: { offset: 28, size: 4 },
      ct_tcp_s: { offset: 32, size: 4 },
      ct_udp_s: { offset: 36, size: 4 },
      ct_closing_s: { offset: 40, size: 4 },
      pad: { offset: 44, size: 4 },
    },
  },
  xdplb_flow_key: {
    size: 40,
    fields: {
      src: { offset: 0, size: 16 },
      dst: { offset: 16, size: 16 },
      sport: { offset: 32, size: 2 },
      dport: { offset: 34, size: 2 },
      proto: { offset: 36, size: 1 },
      family: { offset: 37, size: 1 },
      pad: { offset: 38, size: 2 },
    },
  },
  xdplb_flow4_key: {
    size: 16,
    fields: {
      src: { offset: 0, size: 4 },
      dst: { offset: 4, size: 4 },
      sport: { offset: 8, size: 2 },
      dport: { offset: 10, size: 2 },
      proto: { offset: 12, size: 1 },
      pad: { offset: 13, size: 3 },
    },
  },
  xdplb_ct_entry: {
    size: 20,
    fields: {
      backend_id: { offset: 0, size: 4 },
      service_id: { offset: 4, size: 4 },
      expires_s: { offset: 8, size: 4 },
      checked_jiffies: { offset: 12, size: 4 },
      closing: { offset: 16, size: 1 },
      pad: { offset: 17, size: 3 },
    },
  },
  xdplb_flow_cache_entry: {
    size: 64,
    fields: {
      flow: { offset: 0, size: 40 },
      backend_id: { offset: 40, size: 4 },
      service_id: { offset: 44, size: 4 },
      filled_jiffies: { offset: 48, size: 8 },
      hash: { offset: 56, size: 4 },
      hashed: { offset: 60, size: 2 },
      pending: { offset: 62, size: 2 },
    },
  },
  xdplb_counter: {
    size: 16,
    fields: { packets: { offset: 0, size: 8 }, bytes: { offset: 8, size: 8 } },
  },
  xdplb_devmap_val: {
    size: 8,
    fields: { ifindex: { offset: 0, size: 4 }, prog_fd: { offset: 4, size: 4 } },
  },
  xdplb_rec_key: {
    size: 40,
    fields: {
      family: { offset: 0, size: 1 },
      proto: { offset: 1, size: 1 },
      sport: { offset: 2, size: 2 },
      dport: { offset: 4, size: 2 },
      mask: { offset: 6, size: 1 },
      pad: { offset: 7, size: 1 },
      src: { offset: 8, size: 16 },
      dst: { offset: 24, size: 16 },
    },
  },
  xdplb_rec_entry: {
    size: 16,
    fields: { rules: { offset: 0, size: 8 }, caplen: { offset: 8, size: 4 }, pad: { offset: 12, size: 4 } },
  },
  xdplb_rec_config: {
    size: 16,
    fields: { n_masks: { offset: 0, size: 4 }, gen: { offset: 4, size: 4 }, flags: { offset: 8, size: 4 }, pad: { offset: 12, size: 4 } },
  },
  xdplb_rec_memo: {
    size: 56,
    fields: { tuple: { offset: 0, size: 40 }, rules: { offset: 40, size: 8 }, caplen: { offset: 48, size: 4 }, gen: { offset: 52, size: 4 } },
  },
  xdplb_rec_meta: {
    size: 40,
    fields: {
      ts_ns: { offset: 0, size: 8 },
      rules: { offset: 8, size: 8 },
      orig_len: { offset: 16, size: 4 },
      cap_len: { offset: 20, size: 4 },
      ifindex: { offset: 24, size: 4 },
      backend_id: { offset: 28, size: 4 },
      point: { offset: 32, size: 1 },
      family: { offset: 33, size: 1 },
      pad: { offset: 34, size: 2 },
      pad2: { offset: 36, size: 4 },
    },
  },
};

/** Key and value struct of each map (u32/u64: plain integers, u32 keys are indexes). */
export const MAP_LAYOUT: Readonly<Record<string, { key: string; value: string }>> = {
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

const F = (s: string, f: string): number => LAYOUT[s].fields[f].offset;

// ---- addresses ----

/** Address family of an IP address in text form; throws on anything else. */
export function familyOf(address: string): Family {
  const v = isIP(address);
  if (v === 4 || v === 6) return v;
  throw new RangeError(`not an IP address: ${JSON.stringify(address)}`);
}

function v4Bytes(text: string): Buffer {
  const parts = text.split('.');
  if (parts.length !== 4) throw new RangeError(`not an IPv4 address: ${text}`);
  return Buffer.from(parts.map((p) => Number(p)));
}

/** 4 bytes (IPv4) or 16 bytes (IPv6), network order. */
export function addressBytes(address: string): Buffer {
  if (familyOf(address) === 4) return v4Bytes(address);
  let text = address;
  const v4Tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.', lastColon)) {
    // embedded IPv4, e.g. ::ffff:192.0.2.1
    const b = v4Bytes(text.slice(lastColon + 1));
    v4Tail.push((b[0] << 8) | b[1], (b[2] << 8) | b[3]);
    text = text.slice(0, lastColon + 1);
    if (!text.endsWith('::')) text = text.slice(0, -1);
  }
  const words = (part: string): number[] => (part ? part.split(':').map((h) => parseInt(h, 16)) : []);
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const hw = words(head);
  const tw = [...(tail === undefined ? [] : words(tail)), ...v4Tail];
  const all = tail === undefined ? [...hw, ...v4Tail] : [...hw, ...new Array<number>(8 - hw.length - tw.length).fill(0), ...tw];
  const out = Buffer.alloc(16);
  all.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  return out;
}

/** The 16-byte map field of an address (IPv4 in the first 4 bytes). */
export function address16(address: string): Buffer {
  const b = Buffer.alloc(16);
  addressBytes(address).copy(b);
  return b;
}

/** Text form of an address field: 4 or 16 bytes used according to family. */
export function addressText(bytes: Buffer, family: Family): string {
  if (family === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push(bytes.readUInt16BE(i * 2));
  // RFC 5952: the longest run (>= 2) of zero words becomes '::'
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

function familyByte(f: number): Family {
  if (f !== 4 && f !== 6) throw new RangeError(`bad family byte ${f}`);
  return f;
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
  const b = Buffer.alloc(LAYOUT.xdplb_service_key.size);
  b.writeUInt8(familyOf(k.vip), F('xdplb_service_key', 'family'));
  b.writeUInt8(k.proto, F('xdplb_service_key', 'proto'));
  b.writeUInt16BE(k.port, F('xdplb_service_key', 'port'));
  address16(k.vip).copy(b, F('xdplb_service_key', 'vip'));
  return b;
}

export function decodeServiceKey(b: Buffer): ServiceKey {
  const family = familyByte(b.readUInt8(F('xdplb_service_key', 'family')));
  return {
    vip: addressText(b.subarray(F('xdplb_service_key', 'vip')), family),
    port: b.readUInt16BE(F('xdplb_service_key', 'port')),
    proto: b.readUInt8(F('xdplb_service_key', 'proto')),
  };
}

// ---- struct xdplb_service4_key ----
export function encodeService4Key(k: ServiceKey): Buffer {
  if (familyOf(k.vip) !== 4) throw new RangeError(`not an IPv4 VIP: ${k.vip}`);
  const b = Buffer.alloc(LAYOUT.xdplb_service4_key.size);
  addressBytes(k.vip).copy(b, F('xdplb_service4_key', 'vip'));
  b.writeUInt16BE(k.port, F('xdplb_service4_key', 'port'));
  b.writeUInt8(k.proto, F('xdplb_service4_key', 'proto'));
  return b;
}

export function decodeService4Key(b: Buffer): ServiceKey {
  return {
    vip: addressText(b.subarray(F('xdplb_service4_key', 'vip')), 4),
    port: b.readUInt16BE(F('xdplb_service4_key', 'port')),
    proto: b.readUInt8(F('xdplb_service4_key', 'proto')),
  };
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
  return key.length === LAYOUT.xdplb_service4_key.size ? 'services4' : 'services';
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
  const b = Buffer.alloc(LAYOUT.xdplb_service.size);
  b.writeUInt32LE(s.id, F('xdplb_service', 'id'));
  b.writeUInt32LE(s.flags >>> 0, F('xdplb_service', 'flags'));
  return b;
}

export function decodeService(b: Buffer): Service {
  return { id: b.readUInt32LE(F('xdplb_service', 'id')), flags: b.readUInt32LE(F('xdplb_service', 'flags')) };
}

// ---- struct xdplb_service_def ----
/**
 * A service by id: its key and its service-map value. `undefined` encodes the
 * empty slot (family 0), which a connection-table entry never matches.
 */
export function encodeServiceDef(d: (ServiceKey & Service) | undefined): Buffer {
  const b = Buffer.alloc(LAYOUT.xdplb_service_def.size);
  if (!d) return b;
  address16(d.vip).copy(b, F('xdplb_service_def', 'vip'));
  b.writeUInt16BE(d.port, F('xdplb_service_def', 'port'));
  b.writeUInt8(d.proto, F('xdplb_service_def', 'proto'));
  b.writeUInt8(familyOf(d.vip), F('xdplb_service_def', 'family'));
  encodeService(d).copy(b, F('xdplb_service_def', 'svc'));
  return b;
}

export function decodeServiceDef(b: Buffer): (ServiceKey & Service) | undefined {
  const family = b.readUInt8(F('xdplb_service_def', 'family'));
  if (!family) return undefined;
  return {
    vip: addressText(b.subarray(F('xdplb_service_def', 'vip')), familyByte(family)),
    port: b.readUInt16BE(F('xdplb_service_def', 'port')),
    proto: b.readUInt8(F('xdplb_service_def', 'proto')),
    ...decodeService(b.subarray(F('xdplb_service_def', 'svc'))),
  };
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
  const b = Buffer.alloc(LAYOUT.xdplb_backend.size);
  if (be.address) {
    address16(be.address).copy(b, F('xdplb_backend', 'addr'));
    b.writeUInt8(familyOf(be.address), F('xdplb_backend', 'family'));
  }
  b.writeUInt16BE(be.port, F('xdplb_backend', 'port'));
  b.writeUInt8(be.state, F('xdplb_backend', 'state'));
  b.writeUInt32LE(be.serviceId, F('xdplb_backend', 'service_id'));
  return b;
}

export function decodeBackend(b: Buffer): Backend {
  const f = b.readUInt8(F('xdplb_backend', 'family'));
  return {
    address: f ? addressText(b.subarray(F('xdplb_backend', 'addr')), familyByte(f)) : '',
    port: b.readUInt16BE(F('xdplb_backend', 'port')),
    state: b.readUInt8(F('xdplb_backend', 'state')),
    serviceId: b.readUInt32LE(F('xdplb_backend', 'service_id')),
  };
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

const macText = (b: Buffer): string => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');

export function decodeNexthop(b: Buffer): Nexthop {
  const f = b.readUInt8(F('xdplb_nexthop', 'family'));
  const mac = (field: string) => macText(b.subarray(F('xdplb_nexthop', field), F('xdplb_nexthop', field) + 6));
  return {
    address: f ? addressText(b.subarray(F('xdplb_nexthop', 'addr')), familyByte(f)) : '',
    dmac: mac('dmac'),
    smac: mac('smac'),
    mtu: b.readUInt16LE(F('xdplb_nexthop', 'mtu')),
    ifindex: b.readUInt32LE(F('xdplb_nexthop', 'ifindex')),
    iif: b.readUInt32LE(F('xdplb_nexthop', 'iif')),
    expiresNs: b.readBigUInt64LE(F('xdplb_nexthop', 'expires_ns')),
    checkedJiffies: b.readBigUInt64LE(F('xdplb_nexthop', 'checked_jiffies')),
  };
}

// ---- xdplb_revnat: struct xdplb_service_key (port: the backend's) -> struct xdplb_revnat ----
export function encodeRevNatKey(k: { vip: string; proto: number; backendPort: number }): Buffer {
  return encodeServiceKey({ vip: k.vip, proto: k.proto, port: k.backendPort });
}

export function encodeRevNat(servicePort: number): Buffer {
  const b = Buffer.alloc(LAYOUT.xdplb_revnat.size);
  b.writeUInt16BE(servicePort, F('xdplb_revnat', 'port'));
  return b;
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
  const b = Buffer.alloc(LAYOUT.xdplb_pmtu_key.size);
  const f = familyOf(address);
  addressBytes(address).copy(b, F('xdplb_pmtu_key', 'addr'));
  b.writeUInt8(f, F('xdplb_pmtu_key', 'family'));
  return b;
}

export function encodePmtu(v: { mtu: number; expiresNs: bigint }): Buffer {
  const b = Buffer.alloc(LAYOUT.xdplb_pmtu.size);
  b.writeBigUInt64LE(v.expiresNs, F('xdplb_pmtu', 'expires_ns'));
  b.writeUInt32LE(v.mtu, F('xdplb_pmtu', 'mtu'));
  return b;
}

export function decodePmtu(key: Buffer, value: Buffer): PathMtu {
  return {
    address: addressText(key.subarray(F('xdplb_pmtu_key', 'addr')), familyByte(key.readUInt8(F('xdplb_pmtu_key', 'family')))),
    mtu: value.readUInt32LE(F('xdplb_pmtu', 'mtu')),
    expiresNs: value.readBigUInt64LE(F('xdplb_pmtu', 'expires_ns')),
  };
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
  /** 0 = MAGLEV_DEFAULT_M */
  maglevM: number;
  /** connection-table lifetimes in seconds: idle TCP, idle UDP, after FIN/RST; 0 = CT_TCP_S, CT_UDP_S, CT_CLOSING_S */
  ctTcpS: number;
  ctUdpS: number;
  ctClosingS: number;
}

export function encodeConfig(c: NodeConfig): Buffer {
  const b = Buffer.alloc(LAYOUT.xdplb_config.size);
  if (c.src4) {
    if (familyOf(c.src4) !== 4) throw new RangeError(`src4 is not IPv4: ${c.src4}`);
    addressBytes(c.src4).copy(b, F('xdplb_config', 'src4'));
  }
  if (c.src6) {
    if (familyOf(c.src6) !== 6) throw new RangeError(`src6 is not IPv6: ${c.src6}`);
    addressBytes(c.src6).copy(b, F('xdplb_config', 'src6'));
  }
  b.writeUInt8(c.src4PrefixLen, F('xdplb_config', 'src4_prefix_len'));
  b.writeUInt8(c.src6PrefixLen, F('xdplb_config', 'src6_prefix_len'));
  b.writeUInt8(c.ttl, F('xdplb_config', 'ttl'));
  b.writeUInt8(c.flags, F('xdplb_config', 'flags'));
  b.writeUInt16LE(c.mtu, F('xdplb_config', 'mtu'));
  b.writeUInt16LE(c.nexthopTtlMs, F('xdplb_config', 'nexthop_ttl_ms'));
  b.writeUInt32LE(c.maglevM, F('xdplb_config', 'maglev_m'));
  b.writeUInt32LE(c.ctTcpS, F('xdplb_config', 'ct_tcp_s'));
  b.writeUInt32LE(c.ctUdpS, F('xdplb_config', 'ct_udp_s'));
  b.writeUInt32LE(c.ctClosingS, F('xdplb_config', 'ct_closing_s'));
  return b;
}

export function decodeConfig(b: Buffer): NodeConfig {
  const s4 = b.subarray(F('xdplb_config', 'src4'), F('xdplb_config', 'src4') + 4);
  const s6 = b.subarray(F('xdplb_config', 'src6'), F('xdplb_config', 'src6') + 16);
  return {
    src4: s4.every((x) => x === 0) ? '' : addressText(s4, 4),
    src4PrefixLen: b.readUInt8(F('xdplb_config', 'src4_prefix_len')),
    src6: s6.every((x) => x === 0) ? '' : addressText(s6, 6),
    src6PrefixLen: b.readUInt8(F('xdplb_config', 'src6_prefix_len')),
    ttl: b.readUInt8(F('xdplb_config', 'ttl')),
    flags: b.readUInt8(F('xdplb_config', 'flags')),
    mtu: b.readUInt16LE(F('xdplb_config', 'mtu')),
    nexthopTtlMs: b.readUInt16LE(F('xdplb_config', 'nexthop_ttl_ms')),
    maglevM: b.readUInt32LE(F('xdplb_config', 'maglev_m')),
    ctTcpS: b.readUInt32LE(F('xdplb_config', 'ct_tcp_s')),
    ctUdpS: b.readUInt32LE(F('xdplb_config', 'ct_udp_s')),
    ctClosingS: b.readUInt32LE(F('xdplb_config', 'ct_closing_s')),
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
  const b = Buffer.alloc(LAYOUT.xdplb_flow_key.size);
  address16(k.src).copy(b, F('xdplb_flow_key', 'src'));
  address16(k.dst).copy(b, F('xdplb_flow_key', 'dst'));
  b.writeUInt16BE(k.sport, F('xdplb_flow_key', 'sport'));
  b.writeUInt16BE(k.dport, F('xdplb_flow_key', 'dport'));
  b.writeUInt8(k.proto, F('xdplb_flow_key', 'proto'));
  b.writeUInt8(family, F('xdplb_flow_key', 'family'));
  return b;
}

export function decodeFlowKey(b: Buffer): FlowKey {
  const family = familyByte(b.readUInt8(F('xdplb_flow_key', 'family')));
  return {
    src: addressText(b.subarray(F('xdplb_flow_key', 'src')), family),
    dst: addressText(b.subarray(F('xdplb_flow_key', 'dst')), family),
    sport: b.readUInt16BE(F('xdplb_flow_key', 'sport')),
    dport: b.readUInt16BE(F('xdplb_flow_key', 'dport')),
    proto: b.readUInt8(F('xdplb_flow_key', 'proto')),
  };
}

// ---- struct xdplb_flow4_key ----
export function encodeFlow4Key(k: FlowKey): Buffer {
  if (familyOf(k.src) !== 4 || familyOf(k.dst) !== 4) throw new RangeError(`not an IPv4 flow: ${k.src} -> ${k.dst}`);
  const b = Buffer.alloc(LAYOUT.xdplb_flow4_key.size);
  addressBytes(k.src).copy(b, F('xdplb_flow4_key', 'src'));
  addressBytes(k.dst).copy(b, F('xdplb_flow4_key', 'dst'));
  b.writeUInt16BE(k.sport, F('xdplb_flow4_key', 'sport'));
  b.writeUInt16BE(k.dport, F('xdplb_flow4_key', 'dport'));
  b.writeUInt8(k.proto, F('xdplb_flow4_key', 'proto'));
  return b;
}

export function decodeFlow4Key(b: Buffer): FlowKey {
  return {
    src: addressText(b.subarray(F('xdplb_flow4_key', 'src')), 4),
    dst: addressText(b.subarray(F('xdplb_flow4_key', 'dst')), 4),
    sport: b.readUInt16BE(F('xdplb_flow4_key', 'sport')),
    dport: b.readUInt16BE(F('xdplb_flow4_key', 'dport')),
    proto: b.readUInt8(F('xdplb_flow4_key', 'proto')),
  };
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
  const b = Buffer.alloc(LAYOUT.xdplb_ct_entry.size);
  b.writeUInt32LE(e.backendId >>> 0, F('xdplb_ct_entry', 'backend_id'));
  b.writeUInt32LE(e.serviceId >>> 0, F('xdplb_ct_entry', 'service_id'));
  b.writeUInt32LE((e.expiresS ?? 0) >>> 0, F('xdplb_ct_entry', 'expires_s'));
  b.writeUInt32LE((e.checkedJiffies ?? 0) >>> 0, F('xdplb_ct_entry', 'checked_jiffies'));
  b.writeUInt8(e.closing ? 1 : 0, F('xdplb_ct_entry', 'closing'));
  return b;
}

export function decodeCtEntry(b: Buffer): CtEntry {
  return {
    backendId: b.readUInt32LE(F('xdplb_ct_entry', 'backend_id')),
    serviceId: b.readUInt32LE(F('xdplb_ct_entry', 'service_id')),
    expiresS: b.readUInt32LE(F('xdplb_ct_entry', 'expires_s')),
    checkedJiffies: b.readUInt32LE(F('xdplb_ct_entry', 'checked_jiffies')),
    closing: b.readUInt8(F('xdplb_ct_entry', 'closing')) !== 0,
  };
}

// ---- struct xdplb_counter ----
export interface Counter {
  packets: bigint;
  bytes: bigint;
}

export function encodeCounter(c: Counter): Buffer {
  const b = Buffer.alloc(LAYOUT.xdplb_counter.size);
  b.writeBigUInt64LE(c.packets, F('xdplb_counter', 'packets'));
  b.writeBigUInt64LE(c.bytes, F('xdplb_counter', 'bytes'));
  return b;
}

export function decodeCounter(b: Buffer): Counter {
  return { packets: b.readBigUInt64LE(F('xdplb_counter', 'packets')), bytes: b.readBigUInt64LE(F('xdplb_counter', 'bytes')) };
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
  const b = Buffer.alloc(LAYOUT.xdplb_devmap_val.size);
  b.writeUInt32LE(v.ifindex, F('xdplb_devmap_val', 'ifindex'));
  b.writeInt32LE(v.progFd, F('xdplb_devmap_val', 'prog_fd'));
  return b;
}

export function decodeDevmapVal(b: Buffer): DevmapVal {
  return { ifindex: b.readUInt32LE(F('xdplb_devmap_val', 'ifindex')), progFd: b.readInt32LE(F('xdplb_devmap_val', 'prog_fd')) };
}

// ---- Maglev tables ----

/** Inner map value bytes of a Maglev table: one u32 backend id per entry. */
export function encodeMaglevTable(table: Uint32Array): Buffer[] {
  return Array.from(table, (id) => u32(id));
}

// ---- the recorder: struct xdplb_rec_key, _entry, _config, _meta ----

export const REC_KEY_LEN = LAYOUT.xdplb_rec_key.size;
export const REC_ENTRY_LEN = LAYOUT.xdplb_rec_entry.size;
export const REC_META_LEN = LAYOUT.xdplb_rec_meta.size;

/** A recorder key (an entry's masked tuple) or a mask, field by field. */
export interface RecKey {
  /** FAMILY_V4/V6; in a mask 0xff or 0 */
  family: number;
  proto: number;
  sport: number;
  dport: number;
  /** the mask slot that made this key; 0 in a mask */
  mask: number;
  /** 16 bytes each, IPv4 in the first 4 */
  src: Uint8Array;
  dst: Uint8Array;
}

/** The same bytes as src/recorder/filter.ts encodeTuple() (the test holds them equal). */
export function encodeRecKey(k: RecKey): Buffer {
  const b = Buffer.alloc(REC_KEY_LEN);
  b.writeUInt8(k.family, F('xdplb_rec_key', 'family'));
  b.writeUInt8(k.proto, F('xdplb_rec_key', 'proto'));
  b.writeUInt16BE(k.sport, F('xdplb_rec_key', 'sport'));
  b.writeUInt16BE(k.dport, F('xdplb_rec_key', 'dport'));
  b.writeUInt8(k.mask, F('xdplb_rec_key', 'mask'));
  b.set(k.src.subarray(0, 16), F('xdplb_rec_key', 'src'));
  b.set(k.dst.subarray(0, 16), F('xdplb_rec_key', 'dst'));
  return b;
}

export function decodeRecKey(b: Buffer): RecKey {
  const src = F('xdplb_rec_key', 'src');
  const dst = F('xdplb_rec_key', 'dst');
  return {
    family: b.readUInt8(F('xdplb_rec_key', 'family')),
    proto: b.readUInt8(F('xdplb_rec_key', 'proto')),
    sport: b.readUInt16BE(F('xdplb_rec_key', 'sport')),
    dport: b.readUInt16BE(F('xdplb_rec_key', 'dport')),
    mask: b.readUInt8(F('xdplb_rec_key', 'mask')),
    src: new Uint8Array(b.subarray(src, src + 16)),
    dst: new Uint8Array(b.subarray(dst, dst + 16)),
  };
}

export interface RecEntry {
  /** bit r = rule r */
  rules: bigint;
  /** bytes to copy: the largest cap length of its rules; 0 = the whole frame */
  caplen: number;
}

export function encodeRecEntry(e: RecEntry): Buffer {
  const b = Buffer.alloc(REC_ENTRY_LEN);
  b.writeBigUInt64LE(BigInt.asUintN(64, e.rules), F('xdplb_rec_entry', 'rules'));
  b.writeUInt32LE(e.caplen >>> 0, F('xdplb_rec_entry', 'caplen'));
  return b;
}

export function decodeRecEntry(b: Buffer): RecEntry {
  return { rules: b.readBigUInt64LE(F('xdplb_rec_entry', 'rules')), caplen: b.readUInt32LE(F('xdplb_rec_entry', 'caplen')) };
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
  const b = Buffer.alloc(LAYOUT.xdplb_rec_config.size);
  b.writeUInt32LE(c.nMasks, F('xdplb_rec_config', 'n_masks'));
  b.writeUInt32LE((c.gen ?? 0) >>> 0, F('xdplb_rec_config', 'gen'));
  b.writeUInt32LE((c.flags ?? 0) >>> 0, F('xdplb_rec_config', 'flags'));
  return b;
}

export function decodeRecConfig(b: Buffer): Required<RecConfig> {
  return {
    nMasks: b.readUInt32LE(F('xdplb_rec_config', 'n_masks')),
    gen: b.readUInt32LE(F('xdplb_rec_config', 'gen')),
    flags: b.readUInt32LE(F('xdplb_rec_config', 'flags')),
  };
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
  if (b.length < REC_META_LEN) throw new RangeError(`a recorder sample starts with ${REC_META_LEN} header bytes, got ${b.length}`);
  return {
    tsNs: b.readBigUInt64LE(F('xdplb_rec_meta', 'ts_ns')),
    rules: b.readBigUInt64LE(F('xdplb_rec_meta', 'rules')),
    origLen: b.readUInt32LE(F('xdplb_rec_meta', 'orig_len')),
    capLen: b.readUInt32LE(F('xdplb_rec_meta', 'cap_len')),
    ifindex: b.readUInt32LE(F('xdplb_rec_meta', 'ifindex')),
    backendId: b.readUInt32LE(F('xdplb_rec_meta', 'backend_id')),
    point: b.readUInt8(F('xdplb_rec_meta', 'point')),
    family: b.readUInt8(F('xdplb_rec_meta', 'family')),
  };
}

/** The datapath writes these; tests and tools make them to feed readers. */
export function encodeRecMeta(m: RecMeta): Buffer {
  const b = Buffer.alloc(REC_META_LEN);
  b.writeBigUInt64LE(m.tsNs, F('xdplb_rec_meta', 'ts_ns'));
  b.writeBigUInt64LE(BigInt.asUintN(64, m.rules), F('xdplb_rec_meta', 'rules'));
  b.writeUInt32LE(m.origLen, F('xdplb_rec_meta', 'orig_len'));
  b.writeUInt32LE(m.capLen, F('xdplb_rec_meta', 'cap_len'));
  b.writeUInt32LE(m.ifindex, F('xdplb_rec_meta', 'ifindex'));
  b.writeUInt32LE(m.backendId >>> 0, F('xdplb_rec_meta', 'backend_id'));
  b.writeUInt8(m.point, F('xdplb_rec_meta', 'point'));
  b.writeUInt8(m.family, F('xdplb_rec_meta', 'family'));
  return b;
}

/** Sum of a per-CPU __u64 counter (xdplb_rec_stats). */
export function sumU64(perCpu: readonly Buffer[] | null): bigint {
  let sum = 0n;
  for (const b of perCpu ?? []) sum += b.readBigUInt64LE(0);
  return sum;
}
