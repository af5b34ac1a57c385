// The Grafana dashboard (config/grafana-dashboard.json) cannot drift from the
// metrics: every metric its queries name is one the daemon exports, every query
// parses as PromQL (promtool check rules, with the dashboard's variables filled
// in), and the panels are well formed.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Metrics } from '../src/metrics/metrics';

const FILE = path.resolve(__dirname, '..', '..', 'config', 'grafana-dashboard.json');
const PROMTOOL = ['/usr/bin/promtool', '/usr/local/bin/promtool'].find((p) => fs.existsSync(p));

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: Array<{ expr: string; refId: string }>;
}

const dashboard = JSON.parse(fs.readFileSync(FILE, 'utf8')) as {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Array<{ name: string; query: { query: string } }> };
};
const queries = dashboard.panels.flatMap((p) => (p.targets ?? []).map((q) => ({ panel: p.title, expr: q.expr })));

t.test('every metric a dashboard query names is exported', async (t) => {
  const exported = new Set(new Metrics('test').registry.getMetricsAsArray().map((m) => m.name));
  const named = new Set<string>();
  for (const { expr } of [...queries, ...dashboard.templating.list.map((v) => ({ expr: v.query.query }))])
    for (const m of expr.replace(/"[^"]*"/g, '').matchAll(/\b((?:xdplb|process|nodejs)_[a-z0-9_]+)\b/g)) named.add(m[1].replace(/_(bucket|count|sum)$/, ''));
  t.ok(named.size >= 15, `${named.size} metrics used`);
  for (const name of named) t.ok(exported.has(name), `${name} is exported`);
  for (const name of [...exported].filter((n) => n.startsWith('xdplb_')))
    t.ok(named.has(name) || ['xdplb_maglev_table_size', 'xdplb_backend_weight', 'xdplb_health_probes_in_flight'].includes(name), `${name} is on the dashboard`);
});

t.test('panels are well formed', async (t) => {
  t.equal(dashboard.uid, 'xdplb');
  const ids = dashboard.panels.map((p) => p.id);
  t.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  for (const p of dashboard.panels) {
    t.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title}: fits the 24-column grid`);
    if (p.type === 'row') continue;
    t.equal(p.datasource?.uid, '${DS_PROMETHEUS}', `${p.title}: the imported data source`);
    t.ok(p.targets?.length, `${p.title}: has a query`);
  }
});

t.test('every query parses as PromQL (promtool check rules)', { skip: PROMTOOL ? false : 'promtool is not installed' }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xdplb-grafana-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fill = (e: string) => e.replace(/\$__rate_interval/g, '5m').replace(/\$(service|job)/g, '.*');
  const rules = ['groups:', '  - name: dashboard', '    rules:'];
  queries.forEach((q, i) => rules.push(`      - record: xdplb:dashboard:query${i}`, `        expr: ${JSON.stringify(fill(q.expr))}`));
  const file = path.join(dir, 'rules.yml');
  fs.writeFileSync(file, rules.join('\n') + '\n');
  const r = spawnSync(PROMTOOL as string, ['check', 'rules', file], { encoding: 'utf8' });
  t.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  t.match(r.stdout, new RegExp(`SUCCESS: ${queries.length} rules found`));
});
