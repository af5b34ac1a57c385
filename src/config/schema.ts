// The JSON Schema of the YAML configuration file: the one source of truth for its
// shape (keys, types, ranges, enums). config/xdplb.schema.json is generated from
// it for editors (`node dist/src/config/schema.js > config/xdplb.schema.json`);
// a test keeps the two equal.
//
// The schema checks the shape; src/control/validate.ts then checks the meaning
// (addresses, families, primes, duplicates), the same code the gRPC API runs.
// Limits and patterns come from validate.ts, so the two cannot disagree.
//
// Keys are snake_case (maglev_size, outer_source, prefix_length, ...); the loader
// maps them to the model's camelCase names.
import {
  ATTACH_MODES,
  DEFAULT_HEALTH_FALL,
  DEFAULT_HEALTH_PATH,
  DEFAULT_HEALTH_RISE,
  DEFAULT_HEALTH_STATUS,
  DURATION_DESCRIPTION,
  HEALTH_CHECK_TYPES,
  MAX_HEALTH_COUNT,
  BACKEND_STATES,
  HOST_PORT_DESCRIPTION,
  HOST_PORT_PATTERN,
  IFNAME_DESCRIPTION,
  IFNAME_PATTERN,
  LOG_LEVELS,
  MAX_BACKEND_WEIGHT,
  MAX_MAGLEV_SIZE,
  MAX_MTU,
  MAX_PORT,
  MAX_TTL,
  MIN_MAGLEV_SIZE,
  MIN_TTL,
  NAME_DESCRIPTION,
  NAME_PATTERN,
  PATH_DESCRIPTION,
  PATH_PATTERN,
  PROTOCOLS,
} from '../control/validate';
import { DEFAULT_FLAGS, DEFAULT_NODE } from '../control/model';

export type JsonSchema = { [key: string]: unknown };

const integer = (minimum: number, maximum: number, description: string, dflt?: number): JsonSchema => ({
  type: 'integer',
  minimum,
  maximum,
  description,
  ...(dflt === undefined ? {} : { default: dflt }),
});

const pattern = (p: string, description: string, dflt?: string): JsonSchema => ({
  type: 'string',
  pattern: p,
  description,
  ...(dflt === undefined ? {} : { default: dflt }),
});

const path = (description: string, dflt?: string) => pattern(PATH_PATTERN, `${description}: ${PATH_DESCRIPTION}`, dflt);

const object = (properties: Record<string, JsonSchema>, description: string, required: string[] = []): JsonSchema => ({
  type: 'object',
  description,
  additionalProperties: false,
  ...(required.length ? { required } : {}),
  properties,
});

const ipAddress = (description: string): JsonSchema => ({ type: 'string', description });

const outerSource = (bits: number, family: string, example: string): JsonSchema => ({
  description:
    `${family} outer source: "address" or "address/prefix-length" (e.g. "${example}"), or {address, prefix_length}. ` +
    `A prefix length n takes the top n bits from the address and the rest from the flow hash; /${bits} is one fixed address.`,
  if: { type: 'string' },
  then: { type: 'string', pattern: '^[^/\\s]+(/[0-9]{1,3})?$', description: 'address or address/prefix-length' },
  else: object(
    {
      address: ipAddress(`${family} address; host bits beyond prefix_length must be clear`),
      prefix_length: integer(0, bits, `0..${bits}; default ${bits} (a fixed address)`, bits),
    },
    `${family} outer source`,
    ['address'],
  ),
});

const flag = (description: string, dflt: boolean): JsonSchema => ({ type: 'boolean', description, default: dflt });

const backend = object(
  {
    address: ipAddress('backend address, same family as the VIP'),
    port: integer(1, MAX_PORT, "backend port (the DNAT target with l4_dnat); default: the service's port, required when that is 0"),
    weight: integer(0, MAX_BACKEND_WEIGHT, 'Maglev weight, relative to the other backends; 0 takes no new flows', 1),
    state: { enum: [...BACKEND_STATES], description: 'draining: keeps its established flows, takes no new ones (a SYN reusing an old 5-tuple is a new one); down: takes nothing, its established flows move to live backends, which reset them', default: 'active' },
  },
  'a backend: the service forwards to it in an IPIP/IP6IP6 tunnel, and it replies to the client directly',
  ['address'],
);

const duration = (description: string, dflt: string): JsonSchema => ({
  type: 'string',
  description: `${description}: ${DURATION_DESCRIPTION}`,
  default: dflt,
});

const healthCheck = object(
  {
    type: { enum: [...HEALTH_CHECK_TYPES], description: 'tcp: connect; http/https: GET with an expected status; udp: request and reply' },
    port: integer(1, MAX_PORT, "probe port; default: the backend's port"),
    path: { type: 'string', description: 'http/https: request path', default: DEFAULT_HEALTH_PATH },
    expect_status: integer(100, 599, 'http/https: the status of a healthy backend', DEFAULT_HEALTH_STATUS),
    send: { type: 'string', description: 'tcp: written after connecting; udp: the request datagram' },
    expect: { type: 'string', description: 'tcp/udp: text the reply must contain (udp without it: any reply)' },
    interval: duration('time between probes of one backend', '1s'),
    timeout: duration('time a probe may take, at most the interval', '500ms'),
    rise: integer(1, MAX_HEALTH_COUNT, 'successes in a row that bring a down backend back', DEFAULT_HEALTH_RISE),
    fall: integer(1, MAX_HEALTH_COUNT, 'failures in a row that take a backend down', DEFAULT_HEALTH_FALL),
  },
  "active health check of every backend, from the load balancer's namespace to the backend's address",
  ['type'],
);

const service = object(
  {
    name: pattern(NAME_PATTERN, `unique service name: ${NAME_DESCRIPTION}`),
    vip: ipAddress('virtual IP address, IPv4 or IPv6, unicast'),
    port: integer(0, MAX_PORT, 'VIP port 1..65535, or 0 for every port of the VIP'),
    protocol: { enum: [...PROTOCOLS], description: 'tcp or udp' },
    flags: object(
      {
        l4_dnat: flag("rewrite the destination port to the backend's port", DEFAULT_FLAGS.l4Dnat),
        source_hash: flag('hash on the client address only, so a client sticks to one backend', DEFAULT_FLAGS.sourceHash),
        conntrack_bypass: flag('skip the connection table: every packet follows the Maglev table', DEFAULT_FLAGS.conntrackBypass),
        icmp_echo: flag('answer ICMP echo requests to the VIP', DEFAULT_FLAGS.icmpEcho),
      },
      'service flags',
    ),
    backends: { type: 'array', description: 'backends, unique by (address, port)', items: backend },
    health_check: healthCheck,
  },
  'a service: (vip, port, protocol) load-balanced over backends with Maglev',
  ['name', 'vip', 'port', 'protocol'],
);

const asn = (description: string): JsonSchema => integer(1, 4294967295, `${description}: an AS number (4 bytes)`);
const communities: JsonSchema = { type: 'array', description: 'standard communities "asn:value"', items: { type: 'string' } };
const med = integer(0, 4294967295, 'MULTI_EXIT_DISC');

// BGP announcement of the VIPs (src/bgp): checked by meaning in src/bgp/config.ts.
const bgp = object(
  {
    asn: asn('local AS'),
    router_id: ipAddress('BGP identifier: an IPv4 address'),
    peers: {
      type: 'array',
      minItems: 1,
      description: 'BGP neighbours; IPv4 VIPs go to IPv4 peers, IPv6 VIPs to IPv6 peers',
      items: object(
        {
          address: ipAddress('neighbour address'),
          asn: asn('neighbour AS'),
          hold_time: integer(3, 65535, 'hold time in seconds (keepalive: a third)', 9),
          password: { type: 'string', description: 'TCP MD5 signature password (RFC 2385)' },
        },
        'a BGP neighbour',
        ['address', 'asn'],
      ),
    },
    communities,
    med,
    vips: {
      type: 'array',
      description: 'attributes of single VIPs, in place of the section-wide communities and med',
      items: object({ vip: ipAddress('the VIP'), communities, med }, "one VIP's path attributes", ['vip']),
    },
    drain_quiet: duration('`xdplb node drain` reports traffic stopped once the VIPs\' counters stood still this long', '5s'),
    restart_time: integer(1, 4095, 'graceful restart: seconds routers keep the routes while the speaker restarts', 120),
  },
  'announce each VIP over BGP while the datapath is attached and the VIP has a serving backend; absent: no BGP',
  ['asn', 'router_id', 'peers'],
);

export const CONFIG_SCHEMA: JsonSchema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'xdplb configuration',
  ...object(
    {
      interfaces: {
        type: 'array',
        description: 'interfaces the XDP program is attached to',
        items: object(
          {
            name: pattern(IFNAME_PATTERN, IFNAME_DESCRIPTION),
            mode: { enum: [...ATTACH_MODES], description: 'XDP attach mode', default: 'native' },
          },
          'an interface',
          ['name'],
        ),
      },
      maglev_size: integer(MIN_MAGLEV_SIZE, MAX_MAGLEV_SIZE, 'Maglev table size: a prime', DEFAULT_NODE.maglevSize),
      outer_source: object(
        { ipv4: outerSource(32, 'IPv4', '192.0.2.64/28'), ipv6: outerSource(128, 'IPv6', '2001:db8:300::/120') },
        "source addresses of the outer (tunnel) header; absent: the egress interface's address",
      ),
      ttl: integer(MIN_TTL, MAX_TTL, 'TTL / hop limit of the outer header', DEFAULT_NODE.ttl),
      mtu: integer(0, MAX_MTU, 'egress MTU: 0 (from the route/device) or 576..65535; IPv6 needs 1280', DEFAULT_NODE.mtu),
      flow_cache: flag('per-CPU flow cache in front of the connection table: faster established flows while each CPU carries up to a few thousand active ones; off for many more (BENCHMARKS.md)', DEFAULT_NODE.flowCache),
      conntrack: object(
        {
          tcp_timeout: duration('idle lifetime of a TCP connection-table entry, whole seconds from 5s to a week', `${DEFAULT_NODE.conntrack.tcpTimeout}s`),
          udp_timeout: duration('idle lifetime of a UDP connection-table entry', `${DEFAULT_NODE.conntrack.udpTimeout}s`),
          closing_timeout: duration('lifetime of a TCP entry after a FIN or RST', `${DEFAULT_NODE.conntrack.closingTimeout}s`),
        },
        'connection-table lifetimes: an expired entry is absent, and Maglev places the flow again',
      ),
      bpffs: path('bpffs directory where maps and links are pinned', DEFAULT_NODE.bpffs),
      api: object(
        {
          socket: path('unix socket of the gRPC API (mode 0600)', DEFAULT_NODE.api.socket),
          tcp: pattern(HOST_PORT_PATTERN, `TCP listen address, ${HOST_PORT_DESCRIPTION}; only with tls`),
          tls: object(
            { cert: path('server certificate (PEM)'), key: path('server private key (PEM)'), ca: path('CA for client certificates (PEM)') },
            'mutual TLS for api.tcp',
            ['cert', 'key', 'ca'],
          ),
        },
        'gRPC API',
      ),
      state_dir: path('state directory (services created through the API)', DEFAULT_NODE.stateDir),
      recorder_dir: path('directory for recordings', DEFAULT_NODE.recorderDir),
      log_level: { enum: [...LOG_LEVELS], description: 'log level', default: DEFAULT_NODE.logLevel },
      metrics: pattern(HOST_PORT_PATTERN, `Prometheus listen address, ${HOST_PORT_DESCRIPTION}; absent: metrics off`),
      services: { type: 'array', description: 'services', items: service },
      bgp,
    },
    'Node settings and services of the xdplb XDP load balancer (keys in snake_case).',
  ),
};

/** The published schema file's text. */
export function schemaText(): string {
  return `${JSON.stringify(CONFIG_SCHEMA, null, 2)}\n`;
}

if (require.main === module) process.stdout.write(schemaText());
