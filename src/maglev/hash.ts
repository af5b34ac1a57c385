// MurmurHash3 x86_32 (Austin Appleby, public domain) over the UTF-8 bytes of a
// string. Maglev derives each backend's permutation from two of these hashes of
// its key, so the function must give the same value on every node and in every
// other implementation that wants to reproduce a table: it is the reference
// algorithm, bit for bit, with no platform or locale dependence.

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** MurmurHash3 x86_32 of `data` with `seed`; an unsigned 32-bit integer. */
export function murmur3(data: Uint8Array, seed: number): number {
  const len = data.length;
  const blocks = len & ~3;
  let h = seed >>> 0;
  for (let i = 0; i < blocks; i += 4) {
    let k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = len & 3;
  if (tail > 0) {
    let k = 0;
    if (tail === 3) k ^= data[blocks + 2] << 16;
    if (tail >= 2) k ^= data[blocks + 1] << 8;
    k ^= data[blocks];
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
  }
  return fmix32(h ^ len);
}

/** MurmurHash3 x86_32 of the UTF-8 encoding of `text`. */
export function murmur3String(text: string, seed: number): number {
  return murmur3(Buffer.from(text, 'utf8'), seed);
}
