// Prometheus metrics: the exposition passes `promtool check metrics`, every
// datapath reason has a series (also at zero), and after real frames through a
// daemon in its namespace the service, backend and reason counters scraped over
// HTTP agree with what was sent.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { REASONS } from '../src/datapath/reasons';
import type { CountersSnapshot, NodeStatusSnapshot } from '../src/datapath/snapshot';
import type { OwnedService } from '../src/control/model';
import { validateService } from '../src/control/validate';
import { Metrics } from '../src/metrics/metrics';
import { daemonFixture, PEER_MAC, peerSender, rpc } from '../harness/daemon';
import { needsRoot, sh } from '../harness/fixtures';
import { ether, ipv4, tcp, TCP_ACK } from '../harness/packets';

const PROMTOOL = ['/usr/bin/promtool', '/usr/local/bin/promtool'].find((p) => fs.existsSync(p));
const needsPromtool = { skip: PROMTOOL ? false : 'promtool (Debian package prometheus) is not installed' };

function promtool(text: string): { code: number; output: string } {
  const r = spawnSync(PROMTOOL as string, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { code: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

/** Parses the exposition text: `name{labels}` -> value. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

const value = (s: Map<string, number>, series: string) => s.get(series);

// ---------------------------------------------------------------------------
// Without a datapath: fixed sources

const SERVICES: OwnedService[] = [
  {
    ...validateService({
      name: 'web',
      vip: '203.0.113.10',
      port: 80,
      protocol: 'tcp',
      backends: [
        { address: '198.51.100.11', port: 80, weight: 1, state: 'active' },
        { address: '198.51.100.12', port: 80, weight: 2, state: 'down' },
      ],
    }),
    owner: 'file',
  },
  {
    ...validateService({
      name: 'dns6',
      vip: '2001:db8::53',
      port: 53,
      protocol: 'udp',
      backends: [{ address: '2001:db8:200::1', port: 53, weight: 1, state: 'draining' }],
    }),
    owner: 'api',
  },
];

const COUNTERS: CountersSnapshot = {
  timestamp: 0,
  services: [
    {
      name: 'web',
      traffic: { packets: 30, bytes: 3000 },
      backends: [
        { address: '198.51.100.11', port: 80, traffic: { packets: 20, bytes: 2000 } },
        { address: '198.51.100.12', port: 80, traffic: { packets: 10, bytes: 1000 } },
      ],
    },
    { name: 'dns6', traffic: { packets: 0, bytes: 0 }, backends: [{ address: '2001:db8:200::1', port: 53, traffic: { packets: 0, bytes: 0 } }] },
  ],
  verdicts: { XDP_TX: 30, XDP_PASS: 4 },
  reasons: { forward_tx: 30, pass_not_ip: 4 },
  nexthopLookups: 2,
  flowCacheFills: 3,
};

const STATUS: NodeStatusSnapshot = {
  version: '0.1.0',
  attachments: [{ interface: 'lb0', ifindex: 2, mode: 'native', programId: 7 }],
  programId: 7,
  programInstructions: 1000,
  maglevSize: 1021,
  maps: [
    { name: 'xdplb_conntrack', entries: 12, capacity: 1048576 },
    { name: 'xdplb_services', entries: 3, capacity: 4096 },
  ],
  services: 2,
  backends: 3,
  bpffs: '/sys/fs/bpf/xdplb',
  uptimeSeconds: 1,
  pathMtus: [],
  routeWarnings: [],
};

t.test('exposition from fixed sources: every series, right values, promtool clean', async (t) => {
  const m = new Metrics('9.9.9');
  m.bind({
    counters: () => COUNTERS,
    status: () => STATUS,
    services: () => SERVICES,
    health: () => [
      { service: 'web', address: '198.51.100.11', port: 80, backend: '198.51.100.11:80', type: 'tcp', status: 'up', successes: 2, failures: 0, probes: 5, sinceSeconds: 1, holdSeconds: 0 },
      { service: 'web', address: '198.51.100.12', port: 80, backend: '198.51.100.12:80', type: 'tcp', status: 'down', successes: 0, failures: 3, probes: 5, sinceSeconds: 1, holdSeconds: 0 },
    ],
    allDown: () => [],
    probeLoad: () => ({ active: 1, waiting: 0 }),
    recorder: () => ({ active: 1, packets: 42, lost: 3 }),
  });
  m.observeRebuild(0.002, true);
  m.observeRebuild(0, false);
  m.observeApi('ListServices', 'OK', 0.0004);
  m.observeApi('CreateService', 'INVALID_ARGUMENT');
  m.observeProbe('tcp', true, 0.001);
  m.observeProbe('tcp', false, 0.5);
  m.observeTransition('web', '198.51.100.12:80', 'down');
  const text = await m.text();
  const s = samples(text);

  t.equal(value(s, 'xdplb_build_info{version="9.9.9",nodejs_version="' + process.versions.node + '"}'), 1);
  t.equal(value(s, 'xdplb_service_packets_total{service="web"}'), 30);
  t.equal(value(s, 'xdplb_service_bytes_total{service="web"}'), 3000);
  t.equal(value(s, 'xdplb_service_packets_total{service="dns6"}'), 0, 'a service without traffic has its zero');
  t.equal(value(s, 'xdplb_backend_packets_total{service="web",backend="198.51.100.12:80"}'), 10);
  t.equal(value(s, 'xdplb_backend_bytes_total{service="dns6",backend="[2001:db8:200::1]:53"}'), 0, 'IPv6 backends in brackets');
  for (const r of REASONS) t.ok(s.has(`xdplb_packets_total{verdict="${r.verdict}",reason="${r.name}"}`), `reason ${r.name} has a series`);
  t.equal(value(s, 'xdplb_packets_total{verdict="XDP_TX",reason="forward_tx"}'), 30);
  t.equal(value(s, 'xdplb_nexthop_lookups_total'), 2);
  t.equal(value(s, 'xdplb_flow_cache_fills_total'), 3);
  t.equal(value(s, 'xdplb_packets_total{verdict="XDP_DROP",reason="drop_no_backend"}'), 0);
  t.equal(value(s, 'xdplb_map_entries{map="xdplb_conntrack"}'), 12);
  t.equal(value(s, 'xdplb_map_capacity{map="xdplb_conntrack"}'), 1048576);
  t.equal(value(s, 'xdplb_attached_interfaces'), 1);
  t.equal(value(s, 'xdplb_backend_state{service="web",backend="198.51.100.12:80",state="down"}'), 1);
  t.equal(value(s, 'xdplb_backend_state{service="web",backend="198.51.100.12:80",state="active"}'), 0);
  t.equal(value(s, 'xdplb_backend_state{service="dns6",backend="[2001:db8:200::1]:53",state="draining"}'), 1);
  t.equal(value(s, 'xdplb_backend_weight{service="web",backend="198.51.100.12:80"}'), 2);
  t.equal(value(s, 'xdplb_backend_health{service="web",backend="198.51.100.11:80",status="up"}'), 1);
  t.equal(value(s, 'xdplb_backend_health{service="web",backend="198.51.100.12:80",status="down"}'), 1);
  t.equal(value(s, 'xdplb_service_all_backends_down{service="web"}'), 0);
  t.equal(value(s, 'xdplb_health_transitions_total{service="web",backend="198.51.100.12:80",to="down"}'), 1);
  t.equal(value(s, 'xdplb_health_probes_total{type="tcp",result="failure"}'), 1);
  t.equal(value(s, 'xdplb_health_probe_duration_seconds_count{type="tcp"}'), 2);
  t.equal(value(s, 'xdplb_health_probes_in_flight'), 1);
  t.equal(value(s, 'xdplb_recorder_active'), 1);
  t.equal(value(s, 'xdplb_recorder_packets_total'), 42);
  t.equal(value(s, 'xdplb_recorder_lost_total'), 3);
  t.equal(value(s, 'xdplb_maglev_rebuilds_total{result="ok"}'), 1);
  t.equal(value(s, 'xdplb_maglev_rebuilds_total{result="failed"}'), 1);
  t.equal(value(s, 'xdplb_maglev_rebuild_duration_seconds_count'), 1);
  t.equal(value(s, 'xdplb_api_requests_total{method="ListServices",code="OK"}'), 1);
  t.equal(value(s, 'xdplb_api_requests_total{method="CreateService",code="INVALID_ARGUMENT"}'), 1);
  t.equal(value(s, 'xdplb_api_request_duration_seconds_count{method="ListServices"}'), 1);
  t.ok([...s.keys()].some((k) => k.startsWith('process_cpu_seconds_total')), 'process metrics too');

  if (PROMTOOL) {
    const r = promtool(text);
    t.equal(r.code, 0, `promtool check metrics: ${r.output || 'clean'}`);
    t.equal(r.output.trim(), '', 'no lint finding');
  }
});

t.test('promtool is there (the bootstrap installs Debian\'s prometheus)', needsPromtool, async (t) => {
  const bad = promtool('# TYPE xdplb_things counter\nxdplb_things 1\n');
  t.not(bad.code, 0, 'and it does catch a counter without _total');
});

// ---------------------------------------------------------------------------
// A real daemon with traffic

const DAEMON_SERVICES = `
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    backends:
      - address: 198.51.100.11
      - address: 198.51.100.12
      - address: 198.51.100.13
`;

t.test('scraped over HTTP in the daemon namespace after real frames: counters agree, promtool clean', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: DAEMON_SERVICES, extraYaml: 'metrics: 127.0.0.1:9464' });
  await d.start();
  const { lbNs } = d.topo;
  const scrape = () => sh('ip', 'netns', 'exec', lbNs, 'curl', '-sS', '--fail', '--max-time', '5', 'http://127.0.0.1:9464/metrics');

  const before = samples(scrape());
  // The kernel's own IPv6 router solicitations and the like may already have
  // passed through lb0: every reason has a series, the forwarding ones are still 0.
  for (const r of REASONS) t.not(value(before, `xdplb_packets_total{verdict="${r.verdict}",reason="${r.name}"}`), undefined, `${r.name}: a series before any traffic`);
  for (const r of REASONS.filter((x) => x.name.startsWith('forward_'))) t.equal(value(before, `xdplb_packets_total{verdict="${r.verdict}",reason="${r.name}"}`), 0, `${r.name}: 0 before any traffic`);
  t.equal(value(before, 'xdplb_service_packets_total{service="web"}'), 0);

  // Frames from the peer into lb0: 12 flows × 10 packets to the VIP, 5 to another address.
  const peer = peerSender(t, d);
  const frame = (dst: string, i: number) =>
    ether(ipv4({ src: `192.0.2.${100 + i}`, dst }, tcp({ sport: 40000 + i, dport: 80, flags: TCP_ACK, payload: Buffer.alloc(32, i) })), { dst: peer.lbMac, src: PEER_MAC });
  let vipBytes = 0;
  for (let i = 0; i < 12; i++) {
    const data = frame('203.0.113.10', i);
    peer.send([data], 10);
    vipBytes += 10 * data.length;
  }
  peer.send([frame('203.0.113.99', 0)], 5);
  await new Promise((r) => setTimeout(r, 100));

  // A few API calls, one of them refused.
  const c = d.client();
  await rpc(c, 'ListServices', {});
  await rpc(c, 'GetService', { name: 'nope' });

  const text = scrape();
  const s = samples(text);
  t.equal(value(s, 'xdplb_service_packets_total{service="web"}'), 120, '120 packets for the service');
  t.equal(value(s, 'xdplb_service_bytes_total{service="web"}'), vipBytes, 'and their bytes');
  const perBackend = ['198.51.100.11:80', '198.51.100.12:80', '198.51.100.13:80'].map((b) => value(s, `xdplb_backend_packets_total{service="web",backend="${b}"}`) ?? NaN);
  t.equal(perBackend.reduce((a, b) => a + b, 0), 120, `backends add up (${perBackend.join(' + ')})`);
  t.ok(perBackend.filter((n) => n > 0).length >= 2, 'spread over backends');
  const forwarded = (value(s, 'xdplb_packets_total{verdict="XDP_TX",reason="forward_tx"}') ?? 0) + (value(s, 'xdplb_packets_total{verdict="XDP_REDIRECT",reason="forward_redirect"}') ?? 0);
  t.equal(forwarded, 120, 'forward reasons count them');
  const lookups = value(s, 'xdplb_nexthop_lookups_total') ?? 0;
  t.ok(lookups >= 1 && lookups < 120 / 4, `${lookups} next-hop lookups for 120 packets to 3 backends: cached, not one per packet`);
  const fills = value(s, 'xdplb_flow_cache_fills_total') ?? 0;
  t.ok(fills >= 12 && fills < 120, `${fills} flow-cache fills for 120 packets of 12 flows: at least one per flow, not one per packet`);
  t.ok((value(s, 'xdplb_packets_total{verdict="XDP_PASS",reason="pass_not_vip"}') ?? 0) >= 5, 'the 5 packets to another address passed as not_vip');
  t.ok((value(s, 'xdplb_map_entries{map="xdplb_conntrack"}') ?? 0) >= 12, 'connection table fill: the 12 flows');
  t.ok((value(s, 'xdplb_map_capacity{map="xdplb_conntrack"}') ?? 0) > 0);
  t.ok((value(s, 'xdplb_maglev_rebuilds_total{result="ok"}') ?? 0) >= 1, 'the startup table build counted');
  t.equal(value(s, 'xdplb_api_requests_total{method="ListServices",code="OK"}'), 1, 'API call counted');
  t.equal(value(s, 'xdplb_api_requests_total{method="GetService",code="NOT_FOUND"}'), 1, 'refused call counted with its code');
  t.equal(value(s, 'xdplb_backend_state{service="web",backend="198.51.100.11:80",state="active"}'), 1);
  t.equal(value(s, 'xdplb_attached_interfaces'), 1);

  if (PROMTOOL) {
    const r = promtool(text);
    t.equal(r.code, 0, `promtool check metrics on the scraped text: ${r.output || 'clean'}`);
  }
  const notFound = spawnSync('ip', ['netns', 'exec', lbNs, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:9464/'], { encoding: 'utf8' });
  t.equal(notFound.stdout, '404', 'only /metrics');
});

t.test('metrics are off unless configured', needsRoot, async (t) => {
  const d = await daemonFixture(t, { servicesYaml: DAEMON_SERVICES });
  await d.start();
  const r = spawnSync('ip', ['netns', 'exec', d.topo.lbNs, 'curl', '-s', '--max-time', '2', 'http://127.0.0.1:9464/metrics'], { encoding: 'utf8' });
  t.not(r.status, 0, 'nothing listens on 9464');
  t.notOk(d.logs.some((l) => l.includes('metrics endpoint listening')), 'no metrics endpoint logged');
});
