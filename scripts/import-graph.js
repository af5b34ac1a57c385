#!/usr/bin/env node
// The import graph of src/, bench/ and test/ as TypeScript itself reads it
// (ts.preProcessFile: type-only imports count, since they couple modules as
// much as value imports do), checked against the layers the folders stand for.
//
//   node scripts/import-graph.js            folder edges, cycles, upward imports
//   node scripts/import-graph.js --json     the same as JSON (test/layers.test.ts)
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const ts = require('typescript');

const ROOT = path.resolve(__dirname, '..');

// Lowest first. A module may import its own folder and any folder of a lower
// rank; never one of the same rank or above. bench/ and test/ sit on top and
// share harness/ (which imports only src/).
const LAYERS = [
  ['src/sys', 'src/net', 'src/maglev'],
  ['src/control'],
  ['src/bgp', 'src/k8s'],
  ['src/config', 'src/datapath', 'src/health'],
  ['src/recorder', 'src/metrics'],
  ['src/api'],
  ['src/client'],
  ['src/daemon'],
  ['src/lab'],
  ['src/cli'],
  ['harness'],
  ['bench', 'test'],
];

function* walk(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* walk(p);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) yield p;
  }
}

function resolve(from, spec) {
  if (!spec.startsWith('.')) return null;
  const base = path.resolve(path.dirname(from), spec);
  for (const c of [base + '.ts', path.join(base, 'index.ts')]) if (fs.existsSync(c)) return path.relative(ROOT, c);
  return null;
}

function folderOf(file) {
  let best = '';
  for (const rank of LAYERS) for (const f of rank) if ((file === f || file.startsWith(f + '/')) && f.length > best.length) best = f;
  return best || path.dirname(file);
}

function rankOf(folder) {
  const i = LAYERS.findIndex((r) => r.includes(folder));
  return i < 0 ? Infinity : i;
}

function graph() {
  const edges = new Map();
  for (const top of ['src', 'harness', 'bench', 'test']) {
    if (!fs.existsSync(path.join(ROOT, top))) continue;
    for (const abs of walk(path.join(ROOT, top))) {
      const file = path.relative(ROOT, abs);
      const info = ts.preProcessFile(fs.readFileSync(abs, 'utf8'), true, true);
      const to = new Set();
      for (const i of info.importedFiles) {
        const r = resolve(abs, i.fileName);
        if (r) to.add(r);
      }
      edges.set(file, [...to].sort());
    }
  }
  return edges;
}

// Tarjan's strongly connected components: every component of more than one
// file is an import cycle.
function cycles(edges) {
  let index = 0;
  const idx = new Map(), low = new Map(), on = new Set(), stack = [], out = [];
  const visit = (v) => {
    idx.set(v, index); low.set(v, index); index++;
    stack.push(v); on.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!idx.has(w)) { visit(w); low.set(v, Math.min(low.get(v), low.get(w))); }
      else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const c = [];
      let w;
      do { w = stack.pop(); on.delete(w); c.push(w); } while (w !== v);
      if (c.length > 1) out.push(c.sort());
    }
  };
  for (const v of [...edges.keys()].sort()) if (!idx.has(v)) visit(v);
  return out;
}

function report(edges = graph()) {
  const folders = new Map();
  const upward = [];
  for (const [from, tos] of edges) {
    const ff = folderOf(from);
    for (const to of tos) {
      const tf = folderOf(to);
      if (ff === tf) continue;
      const key = `${ff} -> ${tf}`;
      folders.set(key, (folders.get(key) ?? 0) + 1);
      if (rankOf(tf) >= rankOf(ff)) upward.push(`${from} -> ${to}`);
    }
  }
  return {
    files: edges.size,
    edges: [...edges.values()].reduce((n, t) => n + t.length, 0),
    folderEdges: [...folders].sort().map(([k, n]) => `${k} (${n})`),
    cycles: cycles(edges),
    upward: upward.sort(),
  };
}

if (require.main === module) {
  const r = report();
  if (process.argv.includes('--json')) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
  else {
    console.log(`${r.files} files, ${r.edges} imports`);
    console.log('\nfolder -> folder (imports):');
    for (const e of r.folderEdges) console.log(`  ${e}`);
    console.log(`\ncycles: ${r.cycles.length}`);
    for (const c of r.cycles) console.log(`  ${c.join(' <-> ')}`);
    console.log(`\nimports of a folder of the same or a higher layer: ${r.upward.length}`);
    for (const u of r.upward) console.log(`  ${u}`);
  }
  process.exitCode = r.cycles.length || r.upward.length ? 1 : 0;
}

module.exports = { report, graph, LAYERS };
