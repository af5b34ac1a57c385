// Semantic validation of the desired state, shared by the configuration file, the
// gRPC API and the state directory. Pure: input in, a normalised copy out, or an
// XdplbError naming the field.
//
// Every validator takes `unknown` (whatever a client or a file handed over),
// ignores keys it does not know (the config file's JSON Schema rejects those
// itself), and returns fresh objects that share nothing with the input.
//
// Normalisation and defaults:
//   * addresses are returned parsed (src/net/address.ts) beside their canonical
//     text, so "2001:DB8:0::1" and "2001:db8::1" are one backend;
//   * flags default to DEFAULT_FLAGS (model.ts), each one separately;
//   * a backend's weight defaults to 1 (all backends equal), its state to 'active',
//     its port to the service's port (required when the service port is 0);
//   * node settings default to DEFAULT_NODE (model.ts); an interface's mode
//     defaults to 'native'; an outer source's prefix length to the full length.
//
// Choices worth knowing:
//   * IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are refused everywhere: the
//     datapath would send them as IPv6; write the IPv4 address. Zone indexes
//     ("fe80::1%eth0") are refused too.
//   * VIPs, backends and fixed outer sources must be unicast: not the unspecified
//     address, not multicast, not 255.255.255.255.
//   * An outer source prefix must have its host bits clear (as `ip route` wants):
//     "192.0.2.70/28" is refused, write 192.0.2.64/28 or 192.0.2.70/32.
//   * mtu is 0 (take it from the route/device) or 576..65535. IPv6 needs a link
//     MTU of at least 1280 (RFC 8200); that is not enforced here because the
//     setting covers both families.
//   * Duplicates (services by name or by (vip, port, protocol), backends by
//     (address, port), interfaces by name) are ALREADY_EXISTS naming both entries;
//     more than MAX_BACKENDS_PER_SERVICE backends is RESOURCE_EXHAUSTED.
import { isIP } from 'node:net';
import { Address, familyBits, familyName } from '../net/address';
import { isPrime, MAX_M, MAX_WEIGHT } from '../maglev';
import { quote, XdplbError } from './errors';
import {
  backendKey,
  DEFAULT_FLAGS,
  DEFAULT_NODE,
  serviceKey,
  type BackendKey,
  type ApiSettings,
  type AttachMode,
  type BackendSpec,
  type BackendState,
  type Config,
  type ConntrackSettings,
  type Family,
  type HealthCheckSpec,
  type HealthCheckType,
  type InterfaceSpec,
  type LogLevel,
  type NodeSettings,
  type OuterSource,
  type Protocol,
  type ServiceFlags,
  type ServiceKey,
  type ServiceSpec,
  type TlsFiles,
} from './model';

/** At most this many backends in one service (RESOURCE_EXHAUSTED beyond). */
export const MAX_BACKENDS_PER_SERVICE = 4096;
export const MIN_MAGLEV_SIZE = 2;
export const MAX_MAGLEV_SIZE = MAX_M;
export const MAX_BACKEND_WEIGHT = MAX_WEIGHT;
export const DEFAULT_BACKEND_WEIGHT = 1;
export const DEFAULT_BACKEND_STATE: BackendState = 'active';
export const DEFAULT_ATTACH_MODE: AttachMode = 'native';
export const MAX_PORT = 65535;
export const MIN_MTU = 576;
export const MAX_MTU = 65535;
/** Not enforced (see the header): the IPv6 minimum link MTU. */
export const MIN_MTU_IPV6 = 1280;
export const MIN_TTL = 1;
export const MAX_TTL = 255;
/** IFNAMSIZ - 1 */
export const MAX_IFNAME_BYTES = 15;
/** sizeof(sockaddr_un.sun_path) - 1 */
export const MAX_SOCKET_PATH_BYTES = 107;

export const PROTOCOLS: readonly Protocol[] = ['tcp', 'udp'];
export const BACKEND_STATES: readonly BackendState[] = ['active', 'draining', 'down'];
export const ATTACH_MODES: readonly AttachMode[] = ['native', 'generic'];
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'];

/** A service name: an RFC 1123 label (the JSON Schema uses the same pattern). */
export const NAME_PATTERN = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$';
export const NAME_DESCRIPTION =
  'an RFC 1123 label (lowercase letters, digits and "-", at most 63, starting and ending with a letter or digit)';
/** A Linux interface name, as the kernel's dev_valid_name() accepts it. */
export const IFNAME_PATTERN = '^(?!\\.\\.?$)[^/:\\s]{1,15}$';
export const IFNAME_DESCRIPTION = 'a Linux interface name (1 to 15 bytes, not "." or "..", no "/", ":" or whitespace)';
export const HOST_PORT_PATTERN = '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$';
export const HOST_PORT_DESCRIPTION = 'host:port (an IPv4 address, [IPv6 address] or host name, and a port 1..65535)';
export const PATH_PATTERN = '^/';
export const PATH_DESCRIPTION = 'an absolute path';

const NAME_RE = new RegExp(NAME_PATTERN, 'u');
const IFNAME_RE = new RegExp(IFNAME_PATTERN, 'u');
const HOST_PORT_RE = new RegExp(HOST_PORT_PATTERN, 'u');
const HOSTNAME_RE = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

// ---------------------------------------------------------------------------
// Reasons, phrased once so the config loader's schema errors read the same.

const NOUNS: Record<string, string> = {
  string: 'a string',
  integer: 'an integer',
  number: 'a number',
  boolean: 'true or false',
  object: 'a mapping',
  array: 'a list',
  null: 'null',
};

/** How a value is shown in a message: strings quoted (and cut short), containers by kind. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (typeof v === 'string') return quote(v);
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return String(v);
}

export const reasons = {
  type: (type: string, v: unknown) => `must be ${NOUNS[type] ?? type}, got ${describeValue(v)}`,
  min: (min: number, v: unknown) => `must be >= ${min}, got ${describeValue(v)}`,
  max: (max: number, v: unknown) => `must be <= ${max}, got ${describeValue(v)}`,
  oneOf: (values: readonly unknown[], v: unknown) => `must be one of ${values.join(', ')}, got ${describeValue(v)}`,
  pattern: (description: string, v: unknown) => `${describeValue(v)} is not ${description}`,
  required: () => 'is required',
};

function sub(field: string, key: string | number): string {
  if (typeof key === 'number') return `${field}[${key}]`;
  return field ? `${field}.${key}` : key;
}

function record(v: unknown, field: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw XdplbError.invalid(field, reasons.type('object', v));
  return v as Record<string, unknown>;
}

function list(v: unknown, field: string): unknown[] {
  if (!Array.isArray(v)) throw XdplbError.invalid(field, reasons.type('array', v));
  return v;
}

function string(v: unknown, field: string): string {
  if (typeof v !== 'string') throw XdplbError.invalid(field, reasons.type('string', v));
  return v;
}

function boolean(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') throw XdplbError.invalid(field, reasons.type('boolean', v));
  return v;
}

function integer(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw XdplbError.invalid(field, reasons.type('integer', v));
  if (v < min) throw XdplbError.invalid(field, reasons.min(min, v));
  if (v > max) throw XdplbError.invalid(field, reasons.max(max, v));
  return v;
}

function oneOf<T extends string>(v: unknown, field: string, values: readonly T[]): T {
  if (!values.includes(v as T)) throw XdplbError.invalid(field, reasons.oneOf(values, v));
  return v as T;
}

function required(o: Record<string, unknown>, key: string, field: string): unknown {
  const v = o[key];
  if (v === undefined) throw XdplbError.invalid(sub(field, key), reasons.required());
  return v;
}

function optional<T>(o: Record<string, unknown>, key: string, dflt: T, read: (v: unknown) => T): T {
  return o[key] === undefined ? dflt : read(o[key]);
}

function absolutePath(v: unknown, field: string): string {
  const s = string(v, field);
  if (!s.startsWith('/') || s.includes('\0')) throw XdplbError.invalid(field, reasons.pattern(PATH_DESCRIPTION, s));
  return s;
}

function hostPort(v: unknown, field: string): string {
  const s = string(v, field);
  const bad = () => XdplbError.invalid(field, reasons.pattern(HOST_PORT_DESCRIPTION, s));
  if (!HOST_PORT_RE.test(s)) throw bad();
  const colon = s.lastIndexOf(':');
  const host = s.slice(0, colon);
  const port = Number(s.slice(colon + 1));
  if (port < 1 || port > MAX_PORT) throw bad();
  if (host.startsWith('[')) {
    if (isIP(host.slice(1, -1)) !== 6) throw bad();
  } else if (/^[0-9.]+$/.test(host)) {
    if (isIP(host) !== 4) throw bad();
  } else if (!HOSTNAME_RE.test(host)) throw bad();
  return s;
}

// ---------------------------------------------------------------------------
// Addresses

/** A string parsed as an address, refused with the value as the input spelled it. */
function address(v: unknown, field: string): Address {
  const s = string(v, field);
  const a = Address.parse(s);
  if (typeof a === 'string') throw XdplbError.invalid(field, `${quote(s)} ${a}`);
  return a;
}

function unicastAddress(v: unknown, field: string): Address {
  const a = address(v, field);
  const why = a.notUnicast();
  if (why) throw XdplbError.invalid(field, `${quote(v as string)} ${why}`);
  return a;
}

// ---------------------------------------------------------------------------
// Services

function validateFlags(v: unknown, field: string): ServiceFlags {
  const o = record(v, field);
  const flag = (key: keyof ServiceFlags) => optional(o, key, DEFAULT_FLAGS[key], (x) => boolean(x, sub(field, key)));
  return { l4Dnat: flag('l4Dnat'), sourceHash: flag('sourceHash'), conntrackBypass: flag('conntrackBypass'), icmpEcho: flag('icmpEcho') };
}

/**
 * One backend of a service whose VIP has `family` and whose port is `servicePort`.
 * Defaults: port = servicePort (required when that is 0), weight 1, state 'active'.
 */
export function validateBackend(input: unknown, family: Family, servicePort: number, field: string): BackendSpec {
  const o = record(input, field);
  const addrField = sub(field, 'address');
  const a = unicastAddress(required(o, 'address', field), addrField);
  if (a.family !== family)
    throw XdplbError.invalid(addrField, `${quote(o.address as string)} is ${familyName(a.family)} but the service's VIP is ${familyName(family)}`);
  const port =
    o.port === undefined && servicePort !== 0
      ? servicePort
      : integer(o.port === undefined ? required(o, 'port', field) : o.port, sub(field, 'port'), 1, MAX_PORT);
  return {
    address: a.text,
    ip: a,
    port,
    weight: optional(o, 'weight', DEFAULT_BACKEND_WEIGHT, (x) => integer(x, sub(field, 'weight'), 0, MAX_BACKEND_WEIGHT)),
    state: optional(o, 'state', DEFAULT_BACKEND_STATE, (x) => oneOf(x, sub(field, 'state'), BACKEND_STATES)),
  };
}

/** A service's name, or a request's reference to a service by name: required, and a name a service can have. */
export function validateServiceName(v: unknown, field: string): string {
  const name = string(v, field);
  if (name === '') throw XdplbError.invalid(field, reasons.required());
  if (!NAME_RE.test(name)) throw XdplbError.invalid(field, reasons.pattern(NAME_DESCRIPTION, name));
  return name;
}

/** A backend named by address and port (RemoveBackend, DrainBackend), the address in canonical text. */
export function validateBackendRef(input: unknown, field: string): { address: string; port: number } {
  const o = record(input, field);
  const a = address(required(o, 'address', field), sub(field, 'address'));
  return { address: a.text, port: integer(required(o, 'port', field), sub(field, 'port'), 1, MAX_PORT) };
}

/**
 * One service, from the config file ("services[2]"), the API ("service") or the
 * state directory. Returns the normalised spec (see the header for defaults).
 */
export function validateService(input: unknown, field = 'service'): ServiceSpec {
  const o = record(input, field);
  const name = validateServiceName(required(o, 'name', field), sub(field, 'name'));
  const vip = unicastAddress(required(o, 'vip', field), sub(field, 'vip'));
  const port = integer(required(o, 'port', field), sub(field, 'port'), 0, MAX_PORT);
  const protocol = oneOf(required(o, 'protocol', field), sub(field, 'protocol'), PROTOCOLS);
  const flags = optional(o, 'flags', { ...DEFAULT_FLAGS }, (x) => validateFlags(x, sub(field, 'flags')));
  const bField = sub(field, 'backends');
  const raw = optional(o, 'backends', [], (x) => list(x, bField));
  if (raw.length > MAX_BACKENDS_PER_SERVICE)
    throw XdplbError.exhausted(`${raw.length} backends; a service has at most ${MAX_BACKENDS_PER_SERVICE}`, bField);
  const seen = new Map<BackendKey, number>();
  const backends = raw.map((b, i) => {
    const spec = validateBackend(b, vip.family, port, sub(bField, i));
    const key = backendKey(spec.address, spec.port);
    const first = seen.get(key);
    if (first !== undefined) throw XdplbError.duplicate(sub(bField, i), `backend ${spec.address} port ${spec.port} is also backends[${first}]`);
    seen.set(key, i);
    return spec;
  });
  const spec: ServiceSpec = { name, vip: vip.text, vipAddress: vip, port, protocol, flags, backends };
  if (o.healthCheck !== undefined) spec.healthCheck = validateHealthCheck(o.healthCheck, sub(field, 'healthCheck'));
  return spec;
}

// ---------------------------------------------------------------------------
// Health checks (src/health)
//
// Durations are "1s", "500ms" (config file) or integer milliseconds (the state
// directory stores the normalised spec). timeout must not exceed interval, so
// one backend never has two probes in flight.

export const HEALTH_CHECK_TYPES: readonly HealthCheckType[] = ['tcp', 'http', 'https', 'udp'];
export const DEFAULT_HEALTH_INTERVAL_MS = 1000;
export const DEFAULT_HEALTH_TIMEOUT_MS = 500;
export const DEFAULT_HEALTH_RISE = 2;
export const DEFAULT_HEALTH_FALL = 3;
export const DEFAULT_HEALTH_PATH = '/';
export const DEFAULT_HEALTH_STATUS = 200;
export const MIN_HEALTH_INTERVAL_MS = 100;
export const MAX_HEALTH_INTERVAL_MS = 3_600_000;
export const MIN_HEALTH_TIMEOUT_MS = 10;
export const MAX_HEALTH_COUNT = 100;
/** bytes of send/expect/path */
export const MAX_HEALTH_TEXT = 1024;
export const DURATION_DESCRIPTION = 'a duration: milliseconds with "ms" or seconds with "s" (e.g. "500ms", "1s", "1.5s")';

/** "1s", "1.5s", "500ms", or an integer of milliseconds -> milliseconds. */
export function parseDuration(v: unknown, field: string, min: number, max: number): number {
  let ms: number;
  if (typeof v === 'number' && Number.isInteger(v)) ms = v;
  else if (typeof v === 'string') {
    const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s)$/.exec(v.trim());
    if (!m) throw XdplbError.invalid(field, reasons.pattern(DURATION_DESCRIPTION, v));
    ms = m[2] === 's' ? Number(m[1]) * 1000 : Number(m[1]);
    if (!Number.isInteger(ms)) throw XdplbError.invalid(field, `${describeValue(v)} is not a whole number of milliseconds`);
  } else throw XdplbError.invalid(field, reasons.pattern(DURATION_DESCRIPTION, v));
  if (ms < min) throw XdplbError.invalid(field, `must be at least ${min} ms, got ${describeValue(v)}`);
  if (ms > max) throw XdplbError.invalid(field, `must be at most ${max} ms, got ${describeValue(v)}`);
  return ms;
}

function text(v: unknown, field: string): string {
  const s = string(v, field);
  if (Buffer.byteLength(s) > MAX_HEALTH_TEXT) throw XdplbError.invalid(field, `is ${Buffer.byteLength(s)} bytes long; at most ${MAX_HEALTH_TEXT}`);
  return s;
}

export function validateHealthCheck(input: unknown, field: string): HealthCheckSpec {
  const o = record(input, field);
  const type = oneOf(required(o, 'type', field), sub(field, 'type'), HEALTH_CHECK_TYPES);
  const http = type === 'http' || type === 'https';
  const only = (key: string, types: string) => {
    if (o[key] !== undefined) throw XdplbError.invalid(sub(field, key), `applies to ${types} checks only, not ${type}`);
  };
  const interval = optional(o, 'interval', DEFAULT_HEALTH_INTERVAL_MS, (x) =>
    parseDuration(x, sub(field, 'interval'), MIN_HEALTH_INTERVAL_MS, MAX_HEALTH_INTERVAL_MS),
  );
  const timeout = optional(o, 'timeout', Math.min(DEFAULT_HEALTH_TIMEOUT_MS, interval), (x) => {
    const ms = parseDuration(x, sub(field, 'timeout'), MIN_HEALTH_TIMEOUT_MS, MAX_HEALTH_INTERVAL_MS);
    if (ms > interval) throw XdplbError.invalid(sub(field, 'timeout'), `${describeValue(x)} is longer than the interval (${interval} ms)`);
    return ms;
  });
  const count = (key: string, dflt: number) => optional(o, key, dflt, (x) => integer(x, sub(field, key), 1, MAX_HEALTH_COUNT));
  const spec: HealthCheckSpec = { type, interval, timeout, rise: count('rise', DEFAULT_HEALTH_RISE), fall: count('fall', DEFAULT_HEALTH_FALL) };
  if (o.port !== undefined) spec.port = integer(o.port, sub(field, 'port'), 1, MAX_PORT);
  if (http) {
    only('send', 'tcp and udp');
    only('expect', 'tcp and udp');
    const path = optional(o, 'path', DEFAULT_HEALTH_PATH, (x) => text(x, sub(field, 'path')));
    if (!/^\/[\x21-\x7e]*$/.test(path))
      throw XdplbError.invalid(sub(field, 'path'), `${describeValue(path)} is not a request path (starts with "/", printable ASCII, no spaces)`);
    spec.path = path;
    spec.expectStatus = optional(o, 'expectStatus', DEFAULT_HEALTH_STATUS, (x) => integer(x, sub(field, 'expectStatus'), 100, 599));
  } else {
    only('path', 'http and https');
    only('expectStatus', 'http and https');
    if (o.send !== undefined) spec.send = text(o.send, sub(field, 'send'));
    if (o.expect !== undefined) spec.expect = text(o.expect, sub(field, 'expect'));
  }
  return spec;
}

// ---------------------------------------------------------------------------
// Node settings

function validateInterface(v: unknown, field: string): InterfaceSpec {
  const o = record(v, field);
  const nField = sub(field, 'name');
  const name = string(required(o, 'name', field), nField);
  if (!IFNAME_RE.test(name) || Buffer.byteLength(name) > MAX_IFNAME_BYTES)
    throw XdplbError.invalid(nField, reasons.pattern(IFNAME_DESCRIPTION, name));
  return { name, mode: optional(o, 'mode', DEFAULT_ATTACH_MODE, (x) => oneOf(x, sub(field, 'mode'), ATTACH_MODES)) };
}

/**
 * An outer source of `family`: "address", "address/prefix-length", or
 * { address, prefixLength? }. A prefix length n takes the top n bits from the
 * address and the rest from the flow hash; the full length is one fixed address.
 */
export function validateOuterSource(v: unknown, family: Family, field: string): OuterSource {
  const bits = familyBits(family);
  let addrText: unknown;
  let addrField: string;
  let prefixLength: number;
  if (typeof v === 'string') {
    const [a, p, ...rest] = v.split('/');
    if (rest.length || (p !== undefined && !/^[0-9]{1,3}$/.test(p)))
      throw XdplbError.invalid(field, `${quote(v)} is not an address or address/prefix-length`);
    addrText = a;
    addrField = field;
    prefixLength = p === undefined ? bits : Number(p);
  } else {
    const o = record(v, field);
    addrText = required(o, 'address', field);
    addrField = sub(field, 'address');
    prefixLength = optional(o, 'prefixLength', bits, (x) => integer(x, sub(field, 'prefixLength'), 0, bits));
  }
  const a = address(addrText, addrField);
  if (a.family !== family) throw XdplbError.invalid(addrField, `${quote(addrText as string)} is not an ${familyName(family)} address`);
  if (prefixLength > bits) throw XdplbError.invalid(field, `prefix length must be <= ${bits}, got ${prefixLength}`);
  if (prefixLength === bits) {
    const why = a.notUnicast();
    if (why) throw XdplbError.invalid(addrField, `${quote(addrText as string)} ${why}`);
  } else if (!a.hostBitsClear(prefixLength)) {
    throw XdplbError.invalid(
      field,
      `${a.text}/${prefixLength} has host bits set; write ${a.network(prefixLength).text}/${prefixLength}, or ${a.text}/${bits} for one fixed address`,
    );
  }
  return { address: a.text, prefixLength };
}

function nearestPrimes(n: number): string {
  let lo = Math.min(n, MAX_MAGLEV_SIZE);
  while (lo >= MIN_MAGLEV_SIZE && !isPrime(lo)) lo--;
  let hi = Math.max(n, MIN_MAGLEV_SIZE);
  while (hi <= MAX_MAGLEV_SIZE && !isPrime(hi)) hi++;
  return [lo >= MIN_MAGLEV_SIZE ? lo : undefined, hi <= MAX_MAGLEV_SIZE ? hi : undefined].filter((x) => x !== undefined).join(' or ');
}

function validateApi(v: unknown, field: string): ApiSettings {
  const o = record(v, field);
  const socket = optional(o, 'socket', DEFAULT_NODE.api.socket, (x) => absolutePath(x, sub(field, 'socket')));
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH_BYTES)
    throw XdplbError.invalid(sub(field, 'socket'), `is ${Buffer.byteLength(socket)} bytes long; a unix socket path has at most ${MAX_SOCKET_PATH_BYTES}`);
  const api: ApiSettings = { socket };
  let tls: TlsFiles | undefined;
  if (o.tls !== undefined) {
    const tField = sub(field, 'tls');
    const t = record(o.tls, tField);
    const file = (key: keyof TlsFiles) => absolutePath(required(t, key, tField), sub(tField, key));
    tls = { cert: file('cert'), key: file('key'), ca: file('ca') };
  }
  if (o.tcp !== undefined) {
    api.tcp = hostPort(o.tcp, sub(field, 'tcp'));
    if (!tls) throw XdplbError.invalid(sub(field, 'tcp'), `requires ${sub(field, 'tls')} (mutual TLS)`);
  }
  if (tls) api.tls = tls;
  return api;
}

/** Connection-table lifetimes: whole seconds, from CT_MIN_S (the datapath trusts an entry that long between clock reads) to a week. */
export const MIN_CT_TIMEOUT_S = 5;
export const MAX_CT_TIMEOUT_S = 7 * 86400;

function validateConntrack(input: unknown, field: string): ConntrackSettings {
  const o = record(input, field);
  const lifetime = (key: keyof ConntrackSettings) =>
    optional(o, key, DEFAULT_NODE.conntrack[key], (x) => {
      const ms = parseDuration(x, sub(field, key), MIN_CT_TIMEOUT_S * 1000, MAX_CT_TIMEOUT_S * 1000);
      if (ms % 1000) throw XdplbError.invalid(sub(field, key), `must be whole seconds, got ${describeValue(x)}`);
      return ms / 1000;
    });
  return { tcpTimeout: lifetime('tcpTimeout'), udpTimeout: lifetime('udpTimeout'), closingTimeout: lifetime('closingTimeout') };
}

/**
 * The node settings; `field` prefixes field names ('' in the config file, where
 * they are top-level keys). Absent settings take DEFAULT_NODE's values.
 */
export function validateNode(input: unknown, field = ''): NodeSettings {
  const o = input === undefined ? {} : record(input, field || 'node');
  const f = (key: string) => sub(field, key);

  const ifField = f('interfaces');
  const seen = new Map<string, number>();
  const interfaces = optional(o, 'interfaces', [], (x) => list(x, ifField)).map((v, i) => {
    const spec = validateInterface(v, sub(ifField, i));
    const first = seen.get(spec.name);
    if (first !== undefined)
      throw XdplbError.duplicate(sub(sub(ifField, i), 'name'), `interface ${spec.name} is also interfaces[${first}]`);
    seen.set(spec.name, i);
    return spec;
  });

  const maglevSize = optional(o, 'maglevSize', DEFAULT_NODE.maglevSize, (x) => {
    const m = integer(x, f('maglevSize'), MIN_MAGLEV_SIZE, MAX_MAGLEV_SIZE);
    if (!isPrime(m)) throw XdplbError.invalid(f('maglevSize'), `must be a prime number, got ${m} (nearest primes: ${nearestPrimes(m)})`);
    return m;
  });

  const osField = f('outerSource');
  const os = optional(o, 'outerSource', {}, (x) => record(x, osField));
  const outerSource: NodeSettings['outerSource'] = {};
  if (os.ipv4 !== undefined) outerSource.ipv4 = validateOuterSource(os.ipv4, 4, sub(osField, 'ipv4'));
  if (os.ipv6 !== undefined) outerSource.ipv6 = validateOuterSource(os.ipv6, 6, sub(osField, 'ipv6'));

  const mtu = optional(o, 'mtu', DEFAULT_NODE.mtu, (x) => {
    const m = integer(x, f('mtu'), 0, MAX_MTU);
    if (m !== 0 && m < MIN_MTU) throw XdplbError.invalid(f('mtu'), `must be 0 (from the route) or >= ${MIN_MTU}, got ${m}`);
    return m;
  });

  const node: NodeSettings = {
    interfaces,
    maglevSize,
    outerSource,
    ttl: optional(o, 'ttl', DEFAULT_NODE.ttl, (x) => integer(x, f('ttl'), MIN_TTL, MAX_TTL)),
    mtu,
    flowCache: optional(o, 'flowCache', DEFAULT_NODE.flowCache, (x) => boolean(x, f('flowCache'))),
    conntrack: optional(o, 'conntrack', { ...DEFAULT_NODE.conntrack }, (x) => validateConntrack(x, f('conntrack'))),
    bpffs: optional(o, 'bpffs', DEFAULT_NODE.bpffs, (x) => absolutePath(x, f('bpffs'))),
    api: optional(o, 'api', { ...DEFAULT_NODE.api }, (x) => validateApi(x, f('api'))),
    stateDir: optional(o, 'stateDir', DEFAULT_NODE.stateDir, (x) => absolutePath(x, f('stateDir'))),
    recorderDir: optional(o, 'recorderDir', DEFAULT_NODE.recorderDir, (x) => absolutePath(x, f('recorderDir'))),
    logLevel: optional(o, 'logLevel', DEFAULT_NODE.logLevel, (x) => oneOf(x, f('logLevel'), LOG_LEVELS)),
  };
  if (o.metrics !== undefined) node.metrics = hostPort(o.metrics, f('metrics'));
  return node;
}

// ---------------------------------------------------------------------------
// A whole configuration

/**
 * A configuration: { node, services }. Node fields are named without a prefix
 * ("maglevSize", "api.tcp"), services as "services[i]". On top of each service's
 * own rules: names unique, (vip, port, protocol) unique, and no service with more
 * backends than the Maglev table has entries.
 */
export function validateConfig(input: unknown): Config {
  const o = record(input, 'configuration');
  const node = validateNode(o.node, '');
  const raw = optional(o, 'services', [], (x) => list(x, 'services'));
  const byName = new Map<string, number>();
  const byTuple = new Map<ServiceKey, number>();
  const names: string[] = [];
  const services = raw.map((v, i) => {
    const field = sub('services', i);
    const s = validateService(v, field);
    const sameName = byName.get(s.name);
    if (sameName !== undefined)
      throw XdplbError.duplicate(sub(field, 'name'), `service name ${s.name} is also the name of services[${sameName}]`);
    const tuple = serviceKey(s);
    const sameTuple = byTuple.get(tuple);
    if (sameTuple !== undefined)
      throw XdplbError.duplicate(
        sub(field, 'vip'),
        `services[${i}] (${s.name}) and services[${sameTuple}] (${names[sameTuple]}) both serve ${s.vip} port ${s.port} ${s.protocol}`,
      );
    if (s.backends.length > node.maglevSize)
      throw XdplbError.exhausted(
        `${s.backends.length} backends do not fit a Maglev table of ${node.maglevSize} entries`,
        sub(field, 'backends'),
      );
    byName.set(s.name, i);
    byTuple.set(tuple, i);
    names.push(s.name);
    return s;
  });
  return { node, services };
}
