// The folders are the architecture: no import cycles, and no module imports a
// folder of its own layer or above (scripts/import-graph.js declares the layers).
import t from 'tap';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../src/sys/paths';

interface Report {
  files: number;
  cycles: string[][];
  upward: string[];
}
interface ImportGraph {
  report(edges?: Map<string, string[]>): Report;
  graph(): Map<string, string[]>;
}
// eslint-disable-next-line @typescript-eslint/no-require-imports
const ig = require(path.join(PACKAGE_ROOT, 'scripts', 'import-graph.js')) as ImportGraph;

t.test('the sources have no import cycle and nothing imports upward', (t) => {
  const r = ig.report();
  t.ok(r.files > 100, `${r.files} files read`);
  t.same(r.cycles, [], 'no cycles');
  t.same(r.upward, [], 'no upward imports');
  t.end();
});

t.test('the checker finds a cycle and an upward import', (t) => {
  const edges = ig.graph();
  const add = (from: string, to: string) => edges.set(from, [...(edges.get(from) ?? []), to]);
  t.ok(edges.has('src/datapath/snapshot.ts') && edges.has('src/api/server.ts'), 'the files of the example exist');
  add('src/datapath/snapshot.ts', 'src/api/server.ts');
  const r = ig.report(edges);
  t.ok(r.upward.includes('src/datapath/snapshot.ts -> src/api/server.ts'), 'datapath -> api is upward');
  t.ok(r.cycles.some((c) => c.includes('src/datapath/snapshot.ts') && c.includes('src/api/server.ts')), 'and closes a cycle with the API server, which reads the snapshots');
  t.end();
});
