// The desired-state model of xdplb: what a service and a node are, independent
// of where the state came from (YAML file, gRPC API, state directory) and of how
// the datapath stores it.

import { DEFAULT_M } from '../maglev/table';
import type { Address } from '../net/address';

export type { Family } from '../net/address';
export type Protocol = 'tcp' | 'udp';
export type BackendState = 'active' | 'draining' | 'down';
export type AttachMode = 'native' | 'generic';

export interface BackendSpec {
  /** IPv4 or IPv6 address, same family as the service's VIP, in canonical text form */
  address: string;
  /** `address` parsed */
  ip: Address;
  /** destination port at the backend; used when the service has L4 DNAT on, otherwise informative */
  port: number;
  /** 0..65535; 0 receives no new flows (like draining) */
  weight: number;
  state: BackendState;
}

export interface ServiceFlags {
  /** rewrite the inner destination port to the backend's port */
  l4Dnat: boolean;
  /** hash on the client address only (no source port): a client sticks to one backend */
  sourceHash: boolean;
  /** skip the connection table: every packet follows the Maglev table */
  conntrackBypass: boolean;
  /** answer ICMP echo requests to the VIP from the load balancer */
  icmpEcho: boolean;
}

export interface ServiceSpec {
  /** unique name, an RFC 1123 label: lowercase letters, digits and '-', at most 63 */
  name: string;
  /** canonical text */
  vip: string;
  /** `vip` parsed */
  vipAddress: Address;
  /** 1..65535, or 0 for every port of the VIP */
  port: number;
  protocol: Protocol;
  flags: ServiceFlags;
  backends: BackendSpec[];
  /** active health check of every backend; absent: none (backends are as their state says) */
  healthCheck?: HealthCheckSpec;
}

/** A service as the state directory stores it: text only, without the parsed addresses. */
export type StoredService = Omit<ServiceSpec, 'vipAddress' | 'backends'> & { backends: Array<Omit<BackendSpec, 'ip'>> };

// ---------------------------------------------------------------------------
// Health checks (src/health)

export type HealthCheckType = 'tcp' | 'http' | 'https' | 'udp';

/**
 * How each backend of a service is probed, from the daemon's own network
 * namespace, to the backend's address directly. A backend failing `fall`
 * probes in a row is held down; `rise` successes in a row bring it back.
 */
export interface HealthCheckSpec {
  type: HealthCheckType;
  /** probe port; absent: the backend's port */
  port?: number;
  /** http/https: request path (default '/') */
  path?: string;
  /** http/https: the status a healthy backend answers (default 200) */
  expectStatus?: number;
  /** tcp: written after connecting; udp: the request datagram (default empty) */
  send?: string;
  /** tcp/udp: text the reply must contain; udp without it: any reply */
  expect?: string;
  /** milliseconds between probes of one backend */
  interval: number;
  /** milliseconds a probe may take */
  timeout: number;
  rise: number;
  fall: number;
}

export type Owner = 'file' | 'api';

export interface OwnedService extends ServiceSpec {
  owner: Owner;
}

export interface InterfaceSpec {
  name: string;
  mode: AttachMode;
}

/** An outer source: an address, or a prefix whose host bits come from the flow hash. */
export interface OuterSource {
  address: string;
  prefixLength: number;
}

export interface TlsFiles {
  cert: string;
  key: string;
  /** CA that client certificates must chain to (mutual TLS) */
  ca: string;
}

export interface ApiSettings {
  /** unix socket path (mode 0600) */
  socket: string;
  /** host:port for TCP; only with tls */
  tcp?: string;
  tls?: TlsFiles;
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

export interface NodeSettings {
  interfaces: InterfaceSpec[];
  /** prime, at most MAX_M (src/maglev/table.ts) */
  maglevSize: number;
  outerSource: { ipv4?: OuterSource; ipv6?: OuterSource };
  /** TTL / hop limit of the outer header */
  ttl: number;
  /** egress MTU override (0: from the route/device) */
  mtu: number;
  /** the datapath's per-CPU flow cache in front of the connection table */
  flowCache: boolean;
  /** connection-table lifetimes */
  conntrack: ConntrackSettings;
  bpffs: string;
  api: ApiSettings;
  stateDir: string;
  recorderDir: string;
  logLevel: LogLevel;
  /** Prometheus listen address host:port; absent: metrics off */
  metrics?: string;
}

/**
 * How long a connection-table entry outlives its flow's last packet, in whole
 * seconds. After it the flow is new again: Maglev places its next packet.
 */
export interface ConntrackSettings {
  /** idle TCP connection */
  tcpTimeout: number;
  /** idle UDP flow */
  udpTimeout: number;
  /** after a FIN or RST: a drained backend's closed connections end, and their 5-tuples are free, this soon */
  closingTimeout: number;
}

export interface BgpPeer {
  /** canonical text; its family is the family of the VIPs announced to it */
  address: string;
  asn: number;
  /** seconds; the keepalive is a third of it */
  holdTime: number;
  /** TCP MD5 signature (RFC 2385) */
  password?: string;
}

/** Path attributes of one VIP's announcement. */
export interface BgpVipAttributes {
  /** "asn:value" standard communities (RFC 1997) */
  communities: string[];
  med?: number;
}

/** The `bgp:` section, checked and normalised by src/bgp/config.ts. */
export interface BgpSettings {
  asn: number;
  /** an IPv4 address, as BGP identifiers are */
  routerId: string;
  peers: BgpPeer[];
  /** attributes of every VIP without an entry in `vips` */
  defaults: BgpVipAttributes;
  /** canonical VIP address -> its attributes */
  vips: Map<string, BgpVipAttributes>;
  /** milliseconds the VIPs' counters must stand still before a drain reports traffic stopped */
  drainQuiet: number;
  /** seconds routers keep the routes of a restarting speaker (BGP graceful restart) */
  restartTime: number;
}

/** One named address pool of the `kubernetes:` section. */
export interface KubernetesPool {
  name: string;
  /** CIDRs ("198.51.100.0/28") and ranges ("2001:db8::10-2001:db8::1f"), either family, as checked by src/k8s/config.ts */
  addresses: string[];
}

/** The `kubernetes:` section, checked and normalised by src/k8s/config.ts. */
export interface KubernetesSettings {
  /** a kubeconfig file; absent: the in-cluster service account */
  kubeconfig?: string;
  /** Services of type LoadBalancer with this spec.loadBalancerClass are ours (default xdplb.io/l4lb) */
  loadBalancerClass: string;
  /** also take LoadBalancer Services that name no class */
  takeClassless: boolean;
  pools: KubernetesPool[];
  /** the Lease that elects the one node that allocates and writes status */
  lease: { namespace: string; name: string };
  /** this node's name in the Lease (default: the host name) */
  identity: string;
}

/** What `xdplb k8s status` shows: the module's own account of itself. */
export interface KubernetesStatus {
  /** "connected", or why not ("connecting", "unreachable: <error>") */
  connection: string;
  /** unix milliseconds of the last complete list of every watched resource; 0: none yet */
  lastSync: number;
  /** this node holds the Lease: it allocates and writes status */
  leader: boolean;
  watchRestarts: number;
  services: Array<{
    /** namespace/name */
    service: string;
    vips: string[];
    /** the xdplb services programmed for it */
    programmed: string[];
    /** why it is not (fully) served: pool exhausted, unsupported, ... */
    problem?: string;
  }>;
  pools: Array<{ name: string; size: number; used: number }>;
}

export interface Config {
  node: NodeSettings;
  services: ServiceSpec[];
  /** VIP announcement over BGP (src/bgp); absent: none */
  bgp?: BgpSettings;
  /** LoadBalancer Services and EndpointSlices of a cluster (src/k8s); absent: none */
  kubernetes?: KubernetesSettings;
}

export const DEFAULT_FLAGS: ServiceFlags = { l4Dnat: false, sourceHash: false, conntrackBypass: false, icmpEcho: true };

export const DEFAULT_NODE: NodeSettings = {
  interfaces: [],
  maglevSize: DEFAULT_M,
  outerSource: {},
  ttl: 64,
  mtu: 0,
  flowCache: true,
  conntrack: { tcpTimeout: 3600, udpTimeout: 120, closingTimeout: 10 },
  bpffs: '/sys/fs/bpf/xdplb',
  api: { socket: '/run/xdplb/xdplb.sock' },
  stateDir: '/var/lib/xdplb',
  recorderDir: '/var/lib/xdplb/recordings',
  logLevel: 'info',
};

/** What tells services apart wherever they are keyed: (VIP, port, protocol). */
export type ServiceKey = string & { readonly __brand: 'ServiceKey' };
/** What tells a service's backends apart wherever they are keyed: (address, port). */
export type BackendKey = string & { readonly __brand: 'BackendKey' };

export const serviceKey = (s: Pick<ServiceSpec, 'vip' | 'port' | 'protocol'>): ServiceKey => `${s.vip}|${s.port}|${s.protocol}` as ServiceKey;

/** `address` in canonical text. */
export const backendKey = (address: string, port: number): BackendKey => `${address}|${port}` as BackendKey;
