// `xdplb lab test`: traffic from the client to every service of the lab, and
// what it proves. Every request's tuple is known, so the backend Maglev must
// pick is computed here (src/maglev buildTable + the datapath's flow hash) and
// compared with the backend that answered; the load balancer's counters say
// whether it ever saw reply traffic.
import { buildTable, maglevKey, NO_BACKEND } from '../maglev';
import { flowHash, maglevIndex } from '../datapath/flowhash';
import { IPPROTO_TCP, IPPROTO_UDP } from '../datapath/layout';
import { table } from '../client/output';
import type { CountersSnapshot } from '../datapath/snapshot';
import type { ApiService } from '../client/client';
import type { Lab } from './lab';
import type { RequestResult, RequestTarget } from './client';
import { recordVips, type LabRecording } from './record';
import { Address } from '../net/address';

export const protoOf = (s: ApiService): 'tcp' | 'udp' => (s.protocol.toLowerCase().endsWith('udp') ? 'udp' : 'tcp');
const isActive = (state: string) => state === 'BACKEND_STATE_ACTIVE' || state === 'active';

/** The Maglev table of a service as the daemon builds it (lb.ts tableFor): entries are backend addresses. */
export function serviceTable(s: ApiService, m: number): { table: Uint32Array; members: string[] } {
  const members = s.backends.filter((b) => isActive(b.state) && b.weight > 0);
  const t = buildTable(
    members.map((b, i) => ({ id: i, key: maglevKey(b.address, b.port), weight: b.weight })),
    m,
  );
  return { table: t, members: members.map((b) => b.address) };
}

/** Which backend address Maglev picks for each flow of a service (null: none). */
export function predictor(s: ApiService, m: number): (src: string, sport: number) => string | null {
  const { table: t, members } = serviceTable(s, m);
  const proto = protoOf(s) === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP;
  return (src, sport) => {
    const id = t[maglevIndex(flowHash({ src, dst: s.vip, sport, dport: s.port, proto }, !!s.flags.sourceHash), m)];
    return id === NO_BACKEND ? null : members[id];
  };
}

/** Share of the table entries per backend address. */
export function tableShares(s: ApiService, m: number): Map<string, number> {
  const { table: t, members } = serviceTable(s, m);
  const counts = new Map<string, number>();
  for (const id of t) if (id !== NO_BACKEND) counts.set(members[id], (counts.get(members[id]) ?? 0) + 1);
  return new Map([...counts].map(([a, n]) => [a, n / m]));
}

export interface BackendRow {
  address: string;
  name: string;
  state: string;
  requests: number;
  /** of those, flows Maglev assigns to this backend */
  predicted: number;
  share: number;
  tableShare: number;
}

export interface ServiceRow {
  name: string;
  vip: string;
  port: number;
  proto: 'tcp' | 'udp';
  family: 4 | 6;
  requests: number;
  answered: number;
  errors: number;
  /** answered by the backend Maglev predicts */
  agree: number;
  backends: BackendRow[];
}

export interface LabTestResult {
  services: ServiceRow[];
  total: number;
  answered: number;
  errors: Record<string, number>;
  /** ownTcp: TCP segments the load balancers' own kernels received (their BGP sessions) */
  lb: { forwarded: number; servicePackets: number; passNotVip: number; ownTcp: number; otherReasons: Record<string, number>; rxFrames: number; countedFrames: number };
  replies: { backendTx: Record<string, number>; clientRx: number; clientTx: number };
  /** several nodes: the client→VIP packets each node forwarded (in all, and per service), and the router's next hops per VIP */
  nodes?: Array<{ name: string; forwarded: number; services: Record<string, number> }>;
  routes?: Record<string, string[]>;
  checks: Array<{ ok: boolean; text: string }>;
  ok: boolean;
  /** the VIP traffic as the recorder captured it; absent when the daemon cannot record */
  recording?: LabRecording;
}

function delta(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(b)) if ((b[k] ?? 0) - (a[k] ?? 0)) out[k] = (b[k] ?? 0) - (a[k] ?? 0);
  return out;
}

const sumServices = (c: CountersSnapshot) => c.services.reduce((n, s) => n + s.traffic.packets, 0);

export interface LabTestOptions {
  /** requests per client address per service (default 100) */
  count?: number;
  concurrency?: number;
}

/** Every node's counters, and their sum (reasons added up, services side by side). */
async function nodeCounters(lab: Lab): Promise<{ sum: CountersSnapshot; each: CountersSnapshot[] }> {
  const each = await Promise.all(lab.plan.nodes.map((_, i) => lab.counters(i)));
  const reasons: Record<string, number> = {};
  for (const c of each) for (const [k, v] of Object.entries(c.reasons)) reasons[k] = (reasons[k] ?? 0) + v;
  return { sum: { ...each[0], reasons, services: each.flatMap((c) => c.services) }, each };
}

const forwardedOf = (c: CountersSnapshot) => (c.reasons.forward_tx ?? 0) + (c.reasons.forward_redirect ?? 0);

/**
 * Several nodes: a flow must reach the same backend whichever node the router
 * hashes it to. Each node's services, as its own API lists them, give the
 * same Maglev table, entry for entry, as the first node's.
 */
async function sameTables(lab: Lab, services: ApiService[], m: number): Promise<{ ok: boolean; text: string }> {
  const differ: string[] = [];
  for (let i = 1; i < lab.plan.nodes.length; i++) {
    const mine = (await lab.api<{ services: ApiService[] }>('ListServices', {}, i)).services;
    const mi = (await lab.nodeStatus(i)).maglevSize;
    for (const s of services) {
      const o = mine.find((x) => x.vip === s.vip && x.port === s.port && x.protocol === s.protocol);
      const a = serviceTable(s, m);
      const b = o && serviceTable(o, mi);
      const same = b !== undefined && mi === m && a.members.join() === b.members.join() && a.table.every((id, k) => id === b.table[k]);
      if (!same) differ.push(`${lab.plan.nodes[i].name}/${s.name}`);
    }
  }
  return {
    ok: differ.length === 0,
    text: differ.length ? `Maglev tables that differ from ${lab.plan.nodes[0].name}'s: ${differ.join(', ')}` : `every node builds the same Maglev table for all ${services.length} services (${lab.plan.nodes.length} nodes, ${m} entries): a flow gets the same backend on any node`,
  };
}

/** Sends the traffic, reads the counters around it, and judges. */
export async function labTest(lab: Lab, o: LabTestOptions = {}): Promise<LabTestResult> {
  const count = o.count ?? 100;
  const several = lab.plan.nodes.length > 1;
  await lab.syncRevNat();
  const { services } = await lab.api<{ services: ApiService[] }>('ListServices', {});
  const m = (await lab.nodeStatus()).maglevSize;
  const testable = services.filter((s) => s.port !== 0 && s.backends.length > 0);
  const targets: RequestTarget[] = testable.map((s) => ({
    proto: protoOf(s),
    vip: s.vip,
    port: s.port,
    count,
    sources: Address.of(s.vip).family === 6 ? lab.plan.client.v6 : lab.plan.client.v4,
  }));

  // one node's recorder sees only its share of the flows: several nodes go unrecorded
  const recording = several ? undefined : await recordVips(lab, [...new Set(testable.map((s) => s.vip))]);
  // Nested windows, as the checks compare them: the nodes' own TCP (their BGP
  // sessions, which the program passes as not for a VIP) around the program's
  // counters, around the interfaces' (whose frames the program counts).
  const tcpBefore = lab.nodesTcpIn();
  const before = await nodeCounters(lab);
  const linksBefore = lab.linkCounters();
  const results = await lab.requests({ targets, concurrency: o.concurrency ?? 16 });
  // let the last FINs and acks land before the counters are read again
  await new Promise((r) => setTimeout(r, 300));
  const linksAfter = lab.linkCounters();
  const after = await nodeCounters(lab);
  const ownTcp = lab.nodesTcpIn() - tcpBefore;
  const result = judge(lab, testable, m, results, before.sum, after.sum, linksBefore, linksAfter, ownTcp);
  if (several) {
    const packets = (c: CountersSnapshot, name: string) => c.services.find((x) => x.name === name)?.traffic.packets ?? 0;
    result.nodes = lab.plan.nodes.map((n, i) => ({
      name: n.name,
      forwarded: forwardedOf(after.each[i]) - forwardedOf(before.each[i]),
      services: Object.fromEntries(testable.map((s) => [s.name, packets(after.each[i], s.name) - packets(before.each[i], s.name)])),
    }));
    result.routes = Object.fromEntries(lab.vipRoutes([...new Set(testable.map((s) => s.vip))]));
    const n = lab.plan.nodes.length;
    const short = Object.entries(result.routes).filter(([, h]) => new Set(h).size !== n);
    result.checks.push({
      ok: short.length === 0,
      text: short.length ? `VIPs the router does not spread over all ${n} nodes: ${short.map(([v, h]) => `${v} (${h.join(' ') || 'no route'})`).join(', ')}` : `the router holds a ${n}-way ECMP route for each of the ${Object.keys(result.routes).length} VIPs`,
    });
    // Every service through every node: the client has two addresses per
    // family, so a router hashing on addresses alone would leave a node
    // without some service. As for idle backends, a node missed by a service
    // fails only where the hash could hardly have missed it by chance.
    const idle = result.nodes.flatMap((x) =>
      result.services.filter((s) => x.services[s.name] === 0).map((s) => ({ name: `${x.name}/${s.name}`, chance: (1 - 1 / n) ** s.requests })),
    );
    const missed = idle.filter((x) => x.chance < 1e-6).map((x) => x.name);
    result.checks.push({
      ok: missed.length === 0,
      text: `client→VIP packets per node: ${result.nodes.map((x) => `${x.name} ${x.forwarded}`).join(', ')}; ${missed.length ? `services that never reached a node: ${missed.join(', ')}` : idle.length ? `every service through every node, but for ${idle.map((x) => x.name).join(', ')}, by chance` : 'every service through every node'}`,
    });
    result.checks.push(await sameTables(lab, testable, m));
    result.ok = result.checks.every((x) => x.ok);
  }
  const recorded = await recording?.stop();
  if (recorded) result.recording = recorded;
  return result;
}

export function judge(
  lab: Lab,
  services: ApiService[],
  m: number,
  results: RequestResult[],
  before: CountersSnapshot,
  after: CountersSnapshot,
  linksBefore: ReturnType<Lab['linkCounters']>,
  linksAfter: ReturnType<Lab['linkCounters']>,
  ownTcp = 0,
): LabTestResult {
  const rows: ServiceRow[] = [];
  const errors: Record<string, number> = {};
  for (const s of services) {
    const proto = protoOf(s);
    const mine = results.filter((r) => r.vip === s.vip && r.port === s.port && r.proto === proto);
    const predict = predictor(s, m);
    const shares = tableShares(s, m);
    const answered = mine.filter((r) => r.backend !== null);
    const byName = new Map<string, number>();
    const agreeByName = new Map<string, number>();
    let agree = 0;
    for (const r of mine) {
      if (r.error) {
        const k = `${s.name}: ${r.error}`;
        errors[k] = (errors[k] ?? 0) + 1;
        continue;
      }
      byName.set(r.backend as string, (byName.get(r.backend as string) ?? 0) + 1);
      const want = predict(r.src, r.sport);
      if (want !== null && lab.backendName(want) === r.backend) {
        agree++;
        agreeByName.set(r.backend, (agreeByName.get(r.backend) ?? 0) + 1);
      }
    }
    rows.push({
      name: s.name,
      vip: s.vip,
      port: s.port,
      proto,
      family: Address.of(s.vip).family,
      requests: mine.length,
      answered: answered.length,
      errors: mine.length - answered.length,
      agree,
      backends: s.backends.map((b) => {
        const name = lab.backendName(b.address) ?? b.address;
        const n = byName.get(name) ?? 0;
        return { address: b.address, name, state: b.state.replace(/^BACKEND_STATE_/, '').toLowerCase(), requests: n, predicted: agreeByName.get(name) ?? 0, share: answered.length ? n / answered.length : 0, tableShare: shares.get(b.address) ?? 0 };
      }),
    });
  }
  const reasons = delta(before.reasons, after.reasons);
  const forwarded = (reasons.forward_tx ?? 0) + (reasons.forward_redirect ?? 0);
  const otherReasons = Object.fromEntries(Object.entries(reasons).filter(([k]) => k !== 'forward_tx' && k !== 'forward_redirect'));
  const backendTx: Record<string, number> = {};
  for (const k of Object.keys(linksAfter.backendTx)) backendTx[k] = linksAfter.backendTx[k] - (linksBefore.backendTx[k] ?? 0);
  const total = results.length;
  const answered = results.filter((r) => r.backend !== null).length;
  const result: LabTestResult = {
    services: rows,
    total,
    answered,
    errors,
    lb: {
      forwarded,
      servicePackets: sumServices(after) - sumServices(before),
      passNotVip: reasons.pass_not_vip ?? 0,
      ownTcp,
      otherReasons,
      rxFrames: linksAfter.lbRx - linksBefore.lbRx,
      countedFrames: Object.values(reasons).reduce((a, b) => a + b, 0),
    },
    replies: { backendTx, clientRx: linksAfter.clientRx - linksBefore.clientRx, clientTx: linksAfter.clientTx - linksBefore.clientTx },
    checks: [],
    ok: false,
  };
  const c = result.checks;
  c.push({ ok: total > 0 && answered === total, text: `${answered} of ${total} requests answered, ${total - answered} errors` });
  // A backend with table share s gets none of n answered requests with chance
  // (1 - s)^n: an idle backend is a failure only where that chance is below
  // one in a million (a few requests, as in `lab test --count 5`, prove nothing).
  const idle = rows.flatMap((r) => r.backends.filter((b) => b.state === 'active' && b.requests === 0).map((b) => ({ name: `${r.name}/${b.name}`, chance: (1 - b.tableShare) ** r.answered })));
  const unserved = idle.filter((b) => b.chance < 1e-6).map((b) => b.name);
  const unlucky = idle.filter((b) => b.chance >= 1e-6).map((b) => `${b.name} (${(100 * b.chance).toFixed(1)}% likely)`);
  c.push({
    ok: unserved.length === 0,
    text: unserved.length
      ? `active backends that answered nothing: ${unserved.join(', ')}`
      : unlucky.length
        ? `every active backend answered that enough requests were sent to: none for ${unlucky.join(', ')}, by chance`
        : 'every service was served by every active backend',
  });
  const agree = rows.reduce((n, r) => n + r.agree, 0);
  c.push({ ok: agree === answered, text: `${agree} of ${answered} answers came from the backend Maglev predicts for the flow's tuple` });
  // Not for a VIP: replies would be counted there, and so are the segments of
  // a node's own BGP sessions, which its kernel counts as received.
  const strays = result.lb.passNotVip - result.lb.ownTcp;
  c.push({
    ok: strays <= 0 && forwarded === result.lb.servicePackets && forwarded > 0,
    text: `load balancer: ${forwarded} client→VIP packets forwarded (= per-service counters ${result.lb.servicePackets}), ${result.lb.passNotVip} packets not for a VIP (replies would be counted there)${result.lb.ownTcp ? `, of which up to ${result.lb.ownTcp} TCP segments to the node itself (BGP)` : ''}`,
  });
  const sent = Object.values(backendTx).reduce((a, b) => a + b, 0);
  c.push({
    ok: sent >= answered && result.lb.rxFrames - result.lb.countedFrames <= 0 + Math.max(2, Math.ceil(result.lb.rxFrames * 0.01)),
    text: `replies direct: backends sent ${sent} packets, the client received ${result.replies.clientRx}; the load balancer received ${result.lb.rxFrames} frames in all (its program counted ${result.lb.countedFrames})`,
  });
  result.ok = c.every((x) => x.ok);
  return result;
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

export function formatTestReport(r: LabTestResult): string {
  const rows: string[][] = [];
  for (const s of r.services) {
    const vip = s.family === 6 ? `[${s.vip}]:${s.port}` : `${s.vip}:${s.port}`;
    s.backends.forEach((b, i) => {
      rows.push([
        i === 0 ? s.name : '',
        i === 0 ? `${vip} ${s.proto}` : '',
        `${b.name} ${b.address}${b.state === 'active' ? '' : ` (${b.state})`}`,
        String(b.requests),
        pct(b.share),
        pct(b.tableShare),
        `${b.predicted}/${b.requests}`,
        '',
      ]);
    });
    rows.push(['', '', 'all', `${s.answered}/${s.requests}`, '', '', `${s.agree}/${s.answered}`, String(s.errors)]);
  }
  const lines = [
    table(['SERVICE', 'VIP', 'BACKEND', 'ANSWERED', 'SHARE', 'MAGLEV', 'AS PREDICTED', 'ERRORS'], rows),
    '',
    'SHARE: of the answers; MAGLEV: of the Maglev table; AS PREDICTED: answers from the backend that',
    'Maglev picks for the request\'s own tuple (src/maglev buildTable + the datapath\'s flow hash).',
    '',
  ];
  const other = Object.entries(r.lb.otherReasons).map(([k, v]) => `${k} ${v}`).join(', ');
  lines.push(`load balancer${r.nodes ? `s (${r.nodes.length})` : ''}: forwarded ${r.lb.forwarded} client→VIP packets; other frames: ${other || 'none'}`);
  lines.push(`replies: backends sent ${Object.entries(r.replies.backendTx).map(([k, v]) => `${k} ${v}`).join(', ')} packets straight to the client (client received ${r.replies.clientRx})`);
  if (Object.keys(r.errors).length) lines.push(`errors: ${Object.entries(r.errors).map(([k, v]) => `${k} ×${v}`).join('; ')}`);
  lines.push('');
  for (const c of r.checks) lines.push(`${c.ok ? 'ok  ' : 'FAIL'}  ${c.text}`);
  if (r.recording) {
    lines.push('');
    lines.push(`recorded: ${r.recording.packets} packets to the VIPs, as received and as sent (${r.recording.lostInRing} lost), in ${r.recording.path}`);
    lines.push(`open it: ${r.recording.open}`);
  }
  return lines.join('\n');
}
