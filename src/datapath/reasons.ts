// Why the datapath gave a packet its verdict: the mirror of `enum xdplb_reason`
// in xdp/consts.h (same order, same names without the XDPLB_R_ prefix, in
// snake_case). Index i is the key of the reason's counter in xdplb_reasons.
// test/datapath-layout.test.ts checks this list against the header.

export type Verdict = 'XDP_TX' | 'XDP_REDIRECT' | 'XDP_PASS' | 'XDP_DROP';

export interface ReasonInfo {
  name: string;
  verdict: Verdict;
  description: string;
}

export const REASONS: readonly ReasonInfo[] = [
  { name: 'forward_tx', verdict: 'XDP_TX', description: 'encapsulated to a backend, out of the ingress interface' },
  { name: 'forward_redirect', verdict: 'XDP_REDIRECT', description: 'encapsulated to a backend, out of another interface' },
  { name: 'icmp_echo_reply', verdict: 'XDP_TX', description: 'echo request to a VIP answered by the load balancer' },
  { name: 'pmtu_reply', verdict: 'XDP_TX', description: 'too big once encapsulated: ICMP fragmentation needed / packet too big sent to the client' },
  { name: 'pass_not_ip', verdict: 'XDP_PASS', description: 'ARP or another non-IP ethertype' },
  { name: 'pass_vlan_stacked', verdict: 'XDP_PASS', description: 'more than one VLAN tag' },
  { name: 'pass_truncated', verdict: 'XDP_PASS', description: 'frame ends before its headers or its IP length say' },
  { name: 'pass_bad_ip_header', verdict: 'XDP_PASS', description: 'wrong IP version, IHL below 5, length below the header, IPv6 jumbogram' },
  { name: 'pass_ipv4_fragment', verdict: 'XDP_PASS', description: 'IPv4 fragment (first or later)' },
  { name: 'pass_ipv6_fragment', verdict: 'XDP_PASS', description: 'IPv6 fragment header' },
  { name: 'pass_ipv6_ext_limit', verdict: 'XDP_PASS', description: 'more IPv6 extension headers than the datapath walks' },
  { name: 'pass_l4_unsupported', verdict: 'XDP_PASS', description: 'transport other than TCP, UDP, ICMP, ICMPv6' },
  { name: 'pass_not_vip', verdict: 'XDP_PASS', description: 'no service for this VIP, port and protocol' },
  { name: 'pass_icmp_other', verdict: 'XDP_PASS', description: 'ICMP type the load balancer does not handle' },
  { name: 'pass_icmp_echo_off', verdict: 'XDP_PASS', description: 'echo request to a VIP that does not answer echo' },
  { name: 'pass_icmp_quote', verdict: 'XDP_PASS', description: 'ICMP error that does not quote a TCP/UDP packet sent from the address it is addressed to' },
  { name: 'pass_fib_miss', verdict: 'XDP_PASS', description: 'no route to the backend' },
  { name: 'drop_fib_no_neigh', verdict: 'XDP_DROP', description: 'no neighbour entry for the next hop to the backend: dropped (the client retransmits) while the daemon resolves it' },
  { name: 'pass_fib_fwd_disabled', verdict: 'XDP_PASS', description: 'IP forwarding disabled on the ingress interface' },
  { name: 'pass_no_egress_dev', verdict: 'XDP_PASS', description: 'egress interface missing from the devmap' },
  { name: 'drop_no_backend', verdict: 'XDP_DROP', description: 'no Maglev table, empty entry, or backend not active' },
  { name: 'drop_family_mismatch', verdict: 'XDP_DROP', description: 'backend address family differs from the VIP' },
  { name: 'drop_no_outer_source', verdict: 'XDP_DROP', description: 'no outer source address configured for the family' },
  { name: 'drop_frag_needed_no_df', verdict: 'XDP_DROP', description: 'IPv4 without DF too big once encapsulated (XDP cannot fragment)' },
  { name: 'drop_too_big_icmp', verdict: 'XDP_DROP', description: 'ICMP error too big once encapsulated (no error about an error)' },
  { name: 'drop_adjust_failed', verdict: 'XDP_DROP', description: 'the kernel refused to grow or shrink the frame' },
  { name: 'pmtu_relay_tx', verdict: 'XDP_TX', description: 'a router\'s fragmentation needed / packet too big about a tunnel packet: path MTU recorded, relayed to the client' },
  { name: 'pmtu_relay_redirect', verdict: 'XDP_REDIRECT', description: 'the same, the client behind another interface' },
  { name: 'drop_outer_source', verdict: 'XDP_DROP', description: 'addressed to the outer source prefix and not an ICMP error about a tunnel packet' },
  { name: 'drop_tunnel_icmp', verdict: 'XDP_DROP', description: 'ICMP error about a tunnel packet other than fragmentation needed / packet too big, or quoting too little of it' },
  { name: 'drop_relay_no_route', verdict: 'XDP_DROP', description: 'path MTU recorded, but no route, neighbour or egress device towards the client' },
  { name: 'pass_bad_l4_header', verdict: 'XDP_PASS', description: 'TCP data offset below 5 or past the IP payload, or UDP length below 8 or past it' },
];

/** Number of reasons: max_entries of xdplb_reasons (XDPLB_R_MAX). */
export const REASON_COUNT = REASONS.length;

export const REASON_NAMES: readonly string[] = REASONS.map((r) => r.name);

/** Reason name -> counter index. */
export const REASON: Readonly<Record<string, number>> = Object.freeze(
  Object.fromEntries(REASONS.map((r, i) => [r.name, i])),
);

export function reasonName(index: number): string {
  const r = REASONS[index];
  if (!r) throw new RangeError(`unknown datapath reason ${index}`);
  return r.name;
}
