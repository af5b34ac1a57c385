// Maglev lookup-table population (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016, section 3.4), with weights.
//
// The table has a prime number of entries M; the datapath picks entry
// `flowHash % M` and sends the flow to the backend id stored there.
//
// Fleet contract — every node given the same backends builds the same table:
//   * backends with weight 0 take no entries; the others are ordered by `key`,
//     comparing UTF-16 code units (never locale-dependent);
//   * each backend's preference list is the permutation
//       offset = murmur3(key, SEED_OFFSET) % M
//       skip   = murmur3(key, SEED_SKIP) % (M - 1) + 1
//       permutation[j] = (offset + j * skip) % M
//     with murmur3 = MurmurHash3 x86_32 of the key's UTF-8 bytes;
//   * backends take turns claiming the next free entry of their permutation.
//
// Weights: backend i gets exactly its share of the table, M·wᵢ/W rounded by the
// largest-remainder method (ties to the earlier key), so no backend is more than
// one entry away from its weight share. The turns are interleaved in proportion
// to weight: backend i's k-th turn falls at virtual time (k + ½)/wᵢ, and turns
// are taken in order of that time (ties to the earlier key) until the backend
// has its share. With equal weights this is exactly the paper's round robin, and
// the table is the paper's table.

import { murmur3String } from './hash';

/** Entry value of a table in which no backend can take traffic. */
export const NO_BACKEND = 0xffffffff;
/** Default table size: a prime, ≥ 100 entries per backend for up to 163 backends. */
/** A backend's key in the Maglev permutation hash: the daemon and anything that predicts its tables must build it alike. */
export const maglevKey = (address: string, port: number): string => `${address}:${port}`;

export const DEFAULT_M = 16381;
/** Largest table size accepted (a prime, 2^17 − 1). */
export const MAX_M = 131071;
/** Largest backend weight. */
export const MAX_WEIGHT = 65535;

/** Seeds of the two key hashes that give a backend's permutation. */
export const SEED_OFFSET = 0;
export const SEED_SKIP = 0x9e3779b9;

export interface MaglevBackend {
  /** datapath backend id (u32), stored in the table; NO_BACKEND is reserved */
  id: number;
  /** stable identity of the backend, e.g. "198.51.100.1:80"; unique within a table */
  key: string;
  /** 0..65535; 0 takes no entries (draining) */
  weight: number;
}

/** True when `n` is a prime integer. */
export function isPrime(n: number): boolean {
  if (!Number.isSafeInteger(n) || n < 2) return false;
  if (n % 2 === 0) return n === 2;
  if (n % 3 === 0) return n === 3;
  for (let d = 5; d * d <= n; d += 6) {
    if (n % d === 0 || n % (d + 2) === 0) return false;
  }
  return true;
}

/** Throws a RangeError naming the first thing wrong with `backends` or `m`. */
export function validate(backends: readonly MaglevBackend[], m: number): void {
  if (!Number.isInteger(m) || m < 2 || m > MAX_M) {
    throw new RangeError(`maglev table size ${m}: must be a prime integer in 2..${MAX_M}`);
  }
  if (!isPrime(m)) throw new RangeError(`maglev table size ${m}: not a prime`);
  const keys = new Set<string>();
  backends.forEach((b, i) => {
    if (!Number.isInteger(b.id) || b.id < 0 || b.id >= NO_BACKEND) {
      throw new RangeError(`backends[${i}].id ${b.id}: must be an integer in 0..${NO_BACKEND - 1}`);
    }
    if (!Number.isInteger(b.weight) || b.weight < 0 || b.weight > MAX_WEIGHT) {
      throw new RangeError(`backends[${i}].weight ${b.weight}: must be an integer in 0..${MAX_WEIGHT}`);
    }
    if (typeof b.key !== 'string' || b.key.length === 0) {
      throw new RangeError(`backends[${i}].key: must be a non-empty string`);
    }
    if (keys.has(b.key)) throw new RangeError(`backends[${i}].key ${JSON.stringify(b.key)}: duplicate`);
    keys.add(b.key);
  });
}

/** Code-unit order: the same on every node whatever its locale. */
function byKey(a: MaglevBackend, b: MaglevBackend): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

/**
 * Entries per backend: M·wᵢ/W by the largest-remainder method, ties to the lower
 * index. The products stay below 2^53, so the arithmetic is exact.
 */
function shares(weights: Uint32Array, m: number): Uint32Array {
  const n = weights.length;
  let total = 0;
  for (let i = 0; i < n; i++) total += weights[i];
  const quota = new Uint32Array(n);
  const remainder = new Float64Array(n);
  let given = 0;
  for (let i = 0; i < n; i++) {
    const p = m * weights[i];
    let q = Math.floor(p / total);
    let r = p - q * total;
    if (r < 0) (q -= 1), (r += total);
    else if (r >= total) (q += 1), (r -= total);
    quota[i] = q;
    remainder[i] = r;
    given += q;
  }
  const left = m - given; // < n
  if (left > 0) {
    const order = Array.from({ length: n }, (_, i) => i);
    order.sort((a, b) => remainder[b] - remainder[a] || a - b);
    for (let j = 0; j < left; j++) quota[order[j]]++;
  }
  return quota;
}

/**
 * The Maglev table of size `m` for `backends`: entry j holds the id of the
 * backend that flows hashing to j go to. The order of `backends` does not
 * matter. When no backend has a weight above 0, every entry is NO_BACKEND;
 * with more backends than entries, some take none (whether that is acceptable
 * is the callers' check: validation and the datapath's capacity). Throws a
 * RangeError for an invalid size or backend (see validate).
 */
export function buildTable(backends: readonly MaglevBackend[], m: number): Uint32Array {
  validate(backends, m);
  const table = new Uint32Array(m).fill(NO_BACKEND);
  const active = backends.filter((b) => b.weight > 0).sort(byKey);
  const n = active.length;
  if (n === 0) return table;

  const ids = new Uint32Array(n);
  const weights = new Uint32Array(n);
  const pos = new Uint32Array(n); // next candidate entry of each permutation
  const skip = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const b = active[i];
    ids[i] = b.id;
    weights[i] = b.weight;
    pos[i] = murmur3String(b.key, SEED_OFFSET) % m;
    skip[i] = (murmur3String(b.key, SEED_SKIP) % (m - 1)) + 1;
  }
  const quota = shares(weights, m);

  // Turns in order of virtual time (2k+1)/(2w), k = turns taken: a binary
  // min-heap of backend indices. Times are compared by cross-multiplication
  // (exact: below 2^35), ties to the lower index.
  const taken = new Uint32Array(n);
  const heap = new Uint32Array(n);
  let size = 0;
  for (let i = 0; i < n; i++) if (quota[i] > 0) heap[size++] = i;
  const before = (a: number, b: number): boolean => {
    const x = (2 * taken[a] + 1) * weights[b];
    const y = (2 * taken[b] + 1) * weights[a];
    return x < y || (x === y && a < b);
  };
  const siftDown = (at: number): void => {
    const item = heap[at];
    for (;;) {
      let child = 2 * at + 1;
      if (child >= size) break;
      if (child + 1 < size && before(heap[child + 1], heap[child])) child++;
      if (!before(heap[child], item)) break;
      heap[at] = heap[child];
      at = child;
    }
    heap[at] = item;
  };
  for (let at = (size >> 1) - 1; at >= 0; at--) siftDown(at);

  for (let filled = 0; filled < m; filled++) {
    const i = heap[0];
    const step = skip[i];
    let c = pos[i];
    while (table[c] !== NO_BACKEND) {
      c += step;
      if (c >= m) c -= m;
    }
    table[c] = ids[i];
    c += step;
    pos[i] = c >= m ? c - m : c;
    if (++taken[i] === quota[i]) heap[0] = heap[--size];
    if (size > 0) siftDown(0);
  }
  return table;
}

/**
 * The entries where `next` differs from `old`, in increasing index order, with
 * their new values: what to write to the datapath map to turn `old` into `next`.
 */
export function diffTables(old: Uint32Array, next: Uint32Array): { indices: Uint32Array; values: Uint32Array } {
  if (old.length !== next.length) {
    throw new RangeError(`maglev tables differ in size: ${old.length} and ${next.length}`);
  }
  let count = 0;
  for (let j = 0; j < old.length; j++) if (old[j] !== next[j]) count++;
  const indices = new Uint32Array(count);
  const values = new Uint32Array(count);
  for (let j = 0, k = 0; k < count; j++) {
    if (old[j] !== next[j]) {
      indices[k] = j;
      values[k++] = next[j];
    }
  }
  return { indices, values };
}
