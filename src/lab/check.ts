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
  lb: { forwarded: number; servicePackets: number; passNotVip: number; otherReasons: Record<string, number>; rxFrames: number; countedFrames: number };
  replies: { backendTx: Record<string, number>; clientRx: number; clientTx: number };
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

/** Sends the traffic, reads the counters around it, and judges. */
export async function labTest(lab: Lab, o: LabTestOptions = {}): Promise<LabTestResult> {
  const count = o.count ?? 100;
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

  const recording = await recordVips(lab, [...new Set(testable.map((s) => s.vip))]);
  const before = await lab.counters();
  const linksBefore = lab.linkCounters();
  const results = await lab.requests({ targets, concurrency: o.concurrency ?? 16 });
  // let the last FINs and acks land before the counters are read again
  await new Promise((r) => setTimeout(r, 300));
  const after = await lab.counters();
  const linksAfter = lab.linkCounters();
  const result = judge(lab, testable, m, results, before, after, linksBefore, linksAfter);
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
  c.push({
    ok: result.lb.passNotVip === 0 && forwarded === result.lb.servicePackets && forwarded > 0,
    text: `load balancer: ${forwarded} client→VIP packets forwarded (= per-service counters ${result.lb.servicePackets}), ${result.lb.passNotVip} packets not for a VIP (replies would be counted there)`,
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
  lines.push(`load balancer: forwarded ${r.lb.forwarded} client→VIP packets; other frames: ${other || 'none'}`);
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
