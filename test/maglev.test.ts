// Maglev table generation: the properties the datapath and the fleet rely on.
// Pure functions, no root needed.
import t from 'tap';
import {
  buildTable,
  diffTables,
  isPrime,
  validate,
  type MaglevBackend,
  NO_BACKEND,
  DEFAULT_M,
  MAX_M,
} from '../src/maglev';
import { SEED_OFFSET, SEED_SKIP } from '../src/maglev/table';
import { murmur3, murmur3String } from '../src/maglev/hash';
import { seededRandom } from '../harness/random';

// ---- helpers ----------------------------------------------------------------

function backends(n: number, weight: (i: number) => number = () => 1): MaglevBackend[] {
  return Array.from({ length: n }, (_, i) => ({
    id: 1000 + i,
    key: `198.51.${100 + (i >> 8)}.${i & 255}:80`,
    weight: weight(i),
  }));
}

function nextPrime(n: number): number {
  while (!isPrime(n)) n++;
  return n;
}

/** Entries per backend id. */
function counts(table: Uint32Array): Map<number, number> {
  const c = new Map<number, number>();
  for (const id of table) c.set(id, (c.get(id) ?? 0) + 1);
  return c;
}

/** Deterministic shuffle, so a failure can be replayed. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const rand = seededRandom(seed);
  const a = items.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** FNV-1a over the table's entries: a fingerprint to pin the fleet contract. */
function fingerprint(table: Uint32Array): string {
  let h = 0x811c9dc5;
  for (const v of table) {
    for (let s = 0; s < 32; s += 8) {
      h ^= (v >>> s) & 0xff;
      h = Math.imul(h, 0x01000193);
    }
  }
  return (h >>> 0).toString(16).padStart(8, '0');
}

/**
 * Pseudocode listing 1 of the paper, written as plainly as possible (a full
 * permutation matrix, round robin): the reference the fast path must equal
 * when all weights are the same.
 */
function paperTable(bs: readonly MaglevBackend[], m: number): Uint32Array {
  const sorted = bs.slice().sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const n = sorted.length;
  const permutation = sorted.map((b) => {
    const offset = murmur3String(b.key, SEED_OFFSET) % m;
    const skip = (murmur3String(b.key, SEED_SKIP) % (m - 1)) + 1;
    return Array.from({ length: m }, (_, j) => (offset + j * skip) % m);
  });
  const next = new Array<number>(n).fill(0);
  const entry = new Array<number>(m).fill(-1);
  let filled = 0;
  for (;;) {
    for (let i = 0; i < n; i++) {
      let c = permutation[i][next[i]];
      while (entry[c] >= 0) {
        next[i]++;
        c = permutation[i][next[i]];
      }
      entry[c] = sorted[i].id;
      next[i]++;
      if (++filled === m) return Uint32Array.from(entry);
    }
  }
}

/** Largest |entries − weight share| over the backends, in entries. */
function worstImbalance(bs: readonly MaglevBackend[], table: Uint32Array): number {
  const c = counts(table);
  const total = bs.reduce((s, b) => s + b.weight, 0);
  let worst = 0;
  for (const b of bs) worst = Math.max(worst, Math.abs((c.get(b.id) ?? 0) - (table.length * b.weight) / total));
  return worst;
}

// ---- hashing and determinism ------------------------------------------------

t.test('the key hash is MurmurHash3 x86_32 of the UTF-8 key (reference vectors)', (t) => {
  t.equal(murmur3String('', 0), 0);
  t.equal(murmur3String('', 1), 0x514e28b7);
  t.equal(murmur3String('hello', 0), 0x248bfa47);
  t.equal(murmur3String('Hello, world!', 1234), 0xfaf6cdb3);
  t.equal(murmur3String('The quick brown fox jumps over the lazy dog', 0), 0x2e4ff723);
  t.equal(murmur3String('caf\u00e9', 7), murmur3(Uint8Array.of(0x63, 0x61, 0x66, 0xc3, 0xa9), 7), 'hashes UTF-8 bytes');
  t.end();
});

t.test('the same backends give the same table whatever their order of insertion', (t) => {
  for (const [n, weight] of [
    [3, () => 1],
    [50, () => 1],
    [50, (i: number) => 1 + (i % 7)],
    [500, (i: number) => (i % 5) * 100],
  ] as [number, (i: number) => number][]) {
    const bs = backends(n, weight);
    const reference = buildTable(bs, DEFAULT_M);
    for (let seed = 1; seed <= 5; seed++) {
      t.same(buildTable(shuffled(bs, seed), DEFAULT_M), reference, `N=${n}, shuffle ${seed}`);
    }
    t.same(buildTable(bs.slice().reverse(), DEFAULT_M), reference, `N=${n}, reversed`);
  }
  t.end();
});

// The fleet contract, pinned: if a change to src/maglev alters these, nodes
// running different versions would disagree on where flows go.
const PINNED_SMALL = [9, 8, 7, 9, 9, 7, 9, 9, 9, 8, 7, 9, 8];
const PINNED_EQUAL = '0dc1f007';
const PINNED_WEIGHTED = '640372af';

t.test('every node of a fleet builds the same table: the output is pinned', (t) => {
  const small = buildTable(
    [
      { id: 7, key: '198.51.100.1:80', weight: 1 },
      { id: 8, key: '198.51.100.2:80', weight: 1 },
      { id: 9, key: '198.51.100.3:80', weight: 2 },
    ],
    13,
  );
  t.same([...small], PINNED_SMALL, 'M=13, weights 1,1,2');
  t.equal(fingerprint(buildTable(backends(100), DEFAULT_M)), PINNED_EQUAL, 'M=16381, 100 equal weights');
  t.equal(
    fingerprint(buildTable(backends(100, (i) => 1 + (i % 3)), 65537)),
    PINNED_WEIGHTED,
    'M=65537, 100 backends weighted 1,2,3',
  );
  t.end();
});

t.test('with equal weights the table is the paper\'s round-robin table', (t) => {
  for (const [n, m] of [
    [1, 13],
    [3, 13],
    [13, 13],
    [10, 1009],
    [37, 4099],
    [100, 16381],
  ]) {
    t.same(buildTable(backends(n), m), paperTable(backends(n), m), `N=${n}, M=${m}`);
    t.same(buildTable(backends(n, () => 500), m), paperTable(backends(n), m), `N=${n}, M=${m}, all weights 500`);
  }
  t.end();
});

// ---- balance ----------------------------------------------------------------

t.test('each backend gets its weight share of the entries, within 2% of M/N', (t) => {
  const cases: [string, number, (i: number) => number][] = [
    ['equal', 3, () => 1],
    ['equal', 10, () => 1],
    ['equal', 100, () => 1],
    ['weights 1,2,3', 3, (i) => i + 1],
    ['weights 1,2,3', 10, (i) => 1 + (i % 3)],
    ['weights 1,2,3', 100, (i) => 1 + (i % 3)],
    ['weights 1..10', 100, (i) => 1 + (i % 10)],
    ['one of 65535, the rest 1', 10, (i) => (i === 0 ? 65535 : 1)],
    ['weights 1..65535 spread', 100, (i) => 1 + ((i * 7919) % 65535)],
  ];
  for (const [label, n, weight] of cases) {
    const bs = backends(n, weight);
    for (const m of [nextPrime(100 * n), DEFAULT_M, 65537]) {
      const table = buildTable(bs, m);
      const worst = worstImbalance(bs, table);
      const bound = (0.02 * m) / n;
      t.ok(worst <= bound, `N=${n} ${label}, M=${m}: worst ${worst.toFixed(2)} entries ≤ ${bound.toFixed(2)}`);
      t.ok(worst < 1, `N=${n} ${label}, M=${m}: and within one entry of the exact share`);
      t.equal(counts(table).get(NO_BACKEND), undefined, 'no entry is left empty');
    }
  }
  t.end();
});

// ---- minimal disruption -----------------------------------------------------

/**
 * Removes backends one at a time (up to 10, spread over the key order) and
 * returns the worst and mean fraction of the *other* backends' entries that
 * moved; checks on the way that the removed backend keeps no entry.
 */
function disruption(bs: readonly MaglevBackend[], m: number): { worst: number; mean: number; removals: number } {
  const before = buildTable(bs, m);
  const removals = Math.min(bs.length, 10);
  let worst = 0;
  let sum = 0;
  for (let r = 0; r < removals; r++) {
    const gone = bs[Math.floor((r * bs.length) / removals)].id;
    const after = buildTable(
      bs.filter((b) => b.id !== gone),
      m,
    );
    let others = 0;
    let moved = 0;
    for (let j = 0; j < m; j++) {
      if (after[j] === gone) throw new Error(`removed backend ${gone} still has entry ${j}`);
      if (before[j] === gone) continue;
      others++;
      if (after[j] !== before[j]) moved++;
    }
    worst = Math.max(worst, moved / others);
    sum += moved / others;
  }
  return { worst, mean: sum / removals, removals };
}

const pct = (f: number): string => `${(f * 100).toFixed(2)}%`;

t.test('removing one of N backends moves at most 2% of the other backends\' entries', (t) => {
  for (const [n, m] of [
    [10, 65537],
    [100, 65537],
    [1000, 65537],
    [1000, 100003],
  ]) {
    for (const [label, weight] of [
      ['equal weights', () => 1],
      ['weights 1,2,3', (i: number) => 1 + (i % 3)],
    ] as [string, (i: number) => number][]) {
      const d = disruption(backends(n, weight), m);
      t.comment(
        `disruption M=${m} N=${n} ${label}: other backends' entries moved, ` +
          `worst ${pct(d.worst)}, mean ${pct(d.mean)} over ${d.removals} removals`,
      );
      t.ok(d.worst <= 0.02, `M=${m}, N=${n}, ${label}: worst ${pct(d.worst)} ≤ 2%`);
    }
  }
  t.end();
});

t.test('a table of about 100 entries per backend moves more entries on removal, under 5%', (t) => {
  // Maglev trades table size for disruption: at M ≈ 100·N a removal moves
  // about 2-3% of the other entries; M = 65537 moves well under 1%.
  for (const n of [10, 100]) {
    const m = nextPrime(100 * n);
    const d = disruption(backends(n), m);
    t.comment(`disruption M=${m} N=${n} equal weights: worst ${pct(d.worst)}, mean ${pct(d.mean)} over ${d.removals} removals`);
    t.ok(d.worst < 0.05, `M=${m}, N=${n}: worst ${pct(d.worst)} < 5%`);
  }
  t.end();
});

t.test('changing one backend\'s weight moves at most 2% of the entries between the others', (t) => {
  const m = 65537;
  for (const n of [10, 100, 1000]) {
    for (const to of [200, 50, 101]) {
      const bs = backends(n, () => 100);
      const changed = bs[n >> 1];
      const before = buildTable(bs, m);
      const after = buildTable(
        bs.map((b) => (b === changed ? { ...b, weight: to } : b)),
        m,
      );
      let others = 0;
      let moved = 0;
      for (let j = 0; j < m; j++) {
        if (before[j] === changed.id || after[j] === changed.id) continue;
        others++;
        if (after[j] !== before[j]) moved++;
      }
      t.ok(moved / others <= 0.02, `M=${m}, N=${n}, weight 100 → ${to}: ${pct(moved / others)} moved`);
    }
  }
  t.end();
});

// ---- weights 0 --------------------------------------------------------------

t.test('a draining backend (weight 0) gets no entries, as if it were absent', (t) => {
  const bs = backends(10);
  bs[3].weight = 0;
  const table = buildTable(bs, DEFAULT_M);
  t.notOk(table.includes(bs[3].id), 'no entry for the drained backend');
  t.same(table, buildTable(bs.filter((_, i) => i !== 3), DEFAULT_M), 'same table as without it');
  t.equal(counts(table).size, 9, 'the other nine share the table');
  t.end();
});

t.test('with no backend of weight above 0 every entry is NO_BACKEND', (t) => {
  t.equal(NO_BACKEND, 0xffffffff);
  for (const bs of [[], backends(5, () => 0)]) {
    const table = buildTable(bs, 13);
    t.equal(table.length, 13);
    t.ok(table.every((v) => v === NO_BACKEND), `${bs.length} backends`);
  }
  t.end();
});

// ---- validation -------------------------------------------------------------

t.test('isPrime says which table sizes are prime', (t) => {
  for (const p of [2, 3, 5, 13, 251, 16381, 65537, 100003, 131071]) t.ok(isPrime(p), `${p} is prime`);
  for (const c of [-7, 0, 1, 4, 9, 15, 25, 65536, 65535, 131072, 16383, 2.5, NaN, Infinity]) {
    t.notOk(isPrime(c), `${c} is not prime`);
  }
  t.equal(DEFAULT_M, 16381);
  t.equal(MAX_M, 131071);
  t.ok(isPrime(DEFAULT_M) && isPrime(MAX_M));
  t.end();
});

t.test('an invalid table size or backend is a RangeError that names it', (t) => {
  const ok = backends(3);
  t.throws(() => buildTable(ok, 16384), new RangeError('maglev table size 16384: not a prime'));
  t.throws(() => buildTable(ok, 1), { name: 'RangeError', message: /table size 1: must be a prime integer in 2\.\.131071/ });
  t.throws(() => buildTable(ok, 13.5), { name: 'RangeError', message: /table size 13\.5/ });
  t.throws(() => buildTable(ok, 262139), { name: 'RangeError', message: /table size 262139: must be .* 2\.\.131071/ });
  t.equal(new Set(buildTable(backends(14), 13)).size, 13, 'more backends than entries: one entry each for 13 of them (capacity is the callers\' check)');
  t.doesNotThrow(() => buildTable(backends(13), 13), 'M equal to N is allowed');
  const bad = (patch: Partial<MaglevBackend>): MaglevBackend[] => [ok[0], { ...ok[1], ...patch }, ok[2]];
  t.throws(() => buildTable(bad({ weight: 65536 }), 13), { name: 'RangeError', message: /^backends\[1\]\.weight 65536: must be an integer in 0\.\.65535/ });
  t.throws(() => buildTable(bad({ weight: -1 }), 13), { name: 'RangeError', message: /^backends\[1\]\.weight -1/ });
  t.throws(() => buildTable(bad({ weight: 1.5 }), 13), { name: 'RangeError', message: /^backends\[1\]\.weight 1\.5/ });
  t.throws(() => buildTable(bad({ id: NO_BACKEND }), 13), { name: 'RangeError', message: /^backends\[1\]\.id 4294967295: must be an integer in 0\.\.4294967294/ });
  t.throws(() => buildTable(bad({ id: -1 }), 13), { name: 'RangeError', message: /^backends\[1\]\.id -1/ });
  t.throws(() => buildTable(bad({ key: '' }), 13), { name: 'RangeError', message: 'backends[1].key: must be a non-empty string' });
  t.throws(() => buildTable(bad({ key: ok[0].key }), 13), { name: 'RangeError', message: `backends[1].key "${ok[0].key}": duplicate` });
  t.doesNotThrow(() => validate(ok, DEFAULT_M), 'validate alone accepts a good set');
  t.end();
});

// ---- diff -------------------------------------------------------------------

t.test('diffTables lists only the changed entries, and applying it gives the new table', (t) => {
  const bs = backends(20);
  const old = buildTable(bs, DEFAULT_M);
  const next = buildTable(bs.slice(1), DEFAULT_M);
  const { indices, values } = diffTables(old, next);
  t.type(indices, Uint32Array);
  t.type(values, Uint32Array);
  t.equal(indices.length, values.length);
  let changed = 0;
  for (let j = 0; j < old.length; j++) if (old[j] !== next[j]) changed++;
  t.equal(indices.length, changed, 'one element per changed entry');
  t.ok(indices.every((v, k) => k === 0 || v > indices[k - 1]), 'indices increase');
  const applied = old.slice();
  indices.forEach((j, k) => (applied[j] = values[k]));
  t.same(applied, next);

  const none = diffTables(old, old.slice());
  t.equal(none.indices.length, 0, 'identical tables: nothing to write');
  t.equal(none.values.length, 0);

  const fromEmpty = diffTables(buildTable([], DEFAULT_M), old);
  t.equal(fromEmpty.indices.length, DEFAULT_M, 'from an empty table every entry is written');

  t.throws(() => diffTables(old, buildTable(bs.slice(0, 3), 13)), { name: 'RangeError', message: 'maglev tables differ in size: 16381 and 13' });
  t.end();
});
