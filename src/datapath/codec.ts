// Struct codecs: a C struct of a BPF map key or value declared once, field by
// field in the header's order, from which its size, each field's offset, the
// encoder and the decoder all derive. checkStruct() compares a declaration with
// the struct of the same name in a BPF object's BTF: the suite runs it on every
// declared struct, and the daemon on the objects it loads, refusing to start on
// a mismatch (as Cilium's agent does with its alignchecker).
//
// Integers are little-endian (host order of the machines xdplb runs on) except
// be16, a port in network order. The headers have no implicit padding (every
// hole is a named field), so a declaration whose field would sit off its
// natural alignment, or whose size is not a multiple of its alignment, is
// refused when declared: it cannot describe such a header.
import type { BtfStruct } from '../sys/addon';

export type IntType = 'u8' | 'u16' | 'be16' | 'u32' | 's32' | 'u64';
/** A field: an integer, bytes (an address, a MAC, a pad array), an array of integers, or a nested struct. */
export type FieldType = IntType | { bytes: number } | { array: IntType; length: number } | StructCodec<Record<string, unknown>>;

type IntValue<T extends IntType> = T extends 'u64' ? bigint : number;
export type ValueOf<T> = T extends IntType
  ? IntValue<T>
  : T extends { bytes: number }
    ? Uint8Array
    : T extends { array: infer E extends IntType }
      ? Array<IntValue<E>>
      : T extends StructCodec<infer R>
        ? R
        : never;
export type Fields = Readonly<Record<string, FieldType>>;
export type ValuesOf<F extends Fields> = { [K in keyof F]: ValueOf<F[K]> };

export interface FieldLayout {
  offset: number;
  /** bytes: the width of an integer, the length of bytes and arrays, the size of a nested struct */
  size: number;
}

export interface StructCodec<V> {
  /** the C struct's name (without `struct`) */
  readonly name: string;
  readonly size: number;
  readonly align: number;
  /** in declaration order */
  readonly fields: Readonly<Record<keyof V & string, FieldLayout>>;
  /** The struct's bytes; a field left out is zero (pads). Written into `into` at `at` when given. */
  encode(v: Partial<V>, into?: Buffer, at?: number): Buffer;
  decode(b: Buffer, at?: number): V;
}

export const bytes = (n: number): { bytes: number } => ({ bytes: n });
export const array = (of: IntType, length: number): { array: IntType; length: number } => ({ array: of, length });

const INT_SIZE: Readonly<Record<IntType, number>> = { u8: 1, u16: 2, be16: 2, u32: 4, s32: 4, u64: 8 };

function isInt(t: FieldType): t is IntType {
  return typeof t === 'string';
}

function sizeAlign(t: FieldType): [number, number] {
  if (isInt(t)) return [INT_SIZE[t], INT_SIZE[t]];
  if ('bytes' in t) return [t.bytes, 1];
  if ('array' in t) return [INT_SIZE[t.array] * t.length, INT_SIZE[t.array]];
  return [t.size, t.align];
}

function writeInt(b: Buffer, t: IntType, off: number, v: number | bigint): void {
  switch (t) {
    case 'u8':
      b.writeUInt8(v as number, off);
      return;
    case 'u16':
      b.writeUInt16LE(v as number, off);
      return;
    case 'be16':
      b.writeUInt16BE(v as number, off);
      return;
    case 'u32':
      b.writeUInt32LE((v as number) >>> 0, off);
      return;
    case 's32':
      b.writeInt32LE(v as number, off);
      return;
    case 'u64':
      b.writeBigUInt64LE(BigInt.asUintN(64, v as bigint), off);
  }
}

function readInt(b: Buffer, t: IntType, off: number): number | bigint {
  switch (t) {
    case 'u8':
      return b.readUInt8(off);
    case 'u16':
      return b.readUInt16LE(off);
    case 'be16':
      return b.readUInt16BE(off);
    case 'u32':
      return b.readUInt32LE(off);
    case 's32':
      return b.readInt32LE(off);
    case 'u64':
      return b.readBigUInt64LE(off);
  }
}

/** Declares `struct name` with these fields in this order. */
export function struct<F extends Fields>(name: string, fields: F): StructCodec<ValuesOf<F>> {
  const list: Array<{ name: string; type: FieldType; offset: number; size: number }> = [];
  const layout: Record<string, FieldLayout> = {};
  let offset = 0;
  let align = 1;
  for (const [field, type] of Object.entries(fields)) {
    const [size, a] = sizeAlign(type);
    if (offset % a) throw new RangeError(`struct ${name}.${field}: offset ${offset} is not a multiple of its alignment ${a}`);
    list.push({ name: field, type, offset, size });
    layout[field] = { offset, size };
    offset += size;
    align = Math.max(align, a);
  }
  if (offset % align) throw new RangeError(`struct ${name}: size ${offset} is not a multiple of its alignment ${align}`);
  const size = offset;

  const codec: StructCodec<ValuesOf<F>> = {
    name,
    size,
    align,
    fields: layout as StructCodec<ValuesOf<F>>['fields'],
    encode(v, into, at = 0) {
      const b = into ?? Buffer.alloc(size);
      if (into) b.fill(0, at, at + size);
      const values = v as Record<string, unknown>;
      for (const f of list) {
        const x = values[f.name];
        if (x === undefined) continue;
        const t = f.type;
        const off = at + f.offset;
        if (isInt(t)) writeInt(b, t, off, x as number | bigint);
        else if ('bytes' in t) {
          const src = x as Uint8Array;
          if (src.length > t.bytes) throw new RangeError(`struct ${name}.${f.name}: ${src.length} bytes do not fit ${t.bytes}`);
          b.set(src, off);
        } else if ('array' in t) (x as Array<number | bigint>).forEach((e, i) => writeInt(b, t.array, off + i * INT_SIZE[t.array], e));
        else t.encode(x as Record<string, unknown>, b, off);
      }
      return b;
    },
    decode(b, at = 0) {
      if (b.length < at + size) throw new RangeError(`struct ${name} is ${size} bytes, got ${b.length - at}`);
      const out: Record<string, unknown> = {};
      for (const f of list) {
        const t = f.type;
        const off = at + f.offset;
        if (isInt(t)) out[f.name] = readInt(b, t, off);
        else if ('bytes' in t) out[f.name] = b.subarray(off, off + t.bytes);
        else if ('array' in t) out[f.name] = Array.from({ length: t.length }, (_, i) => readInt(b, t.array, off + i * INT_SIZE[t.array]));
        else out[f.name] = t.decode(b, off);
      }
      return out as ValuesOf<F>;
    },
  };
  return codec;
}

// ---- the check against BTF ----

/**
 * What differs between a declaration and the object's struct, one line each
 * naming the struct, the field and both values; empty when they agree.
 */
export function checkStruct(codec: StructCodec<unknown>, btf: BtfStruct | undefined, object: string): string[] {
  const s = `struct ${codec.name}`;
  if (!btf) return [`${s}: declared in TypeScript, absent from the BTF of ${object}`];
  const out: string[] = [];
  if (btf.size !== codec.size) out.push(`${s}: size ${codec.size} in TypeScript, ${btf.size} in ${object}`);
  const declared = Object.entries(codec.fields as Record<string, FieldLayout>);
  const names = new Set(declared.map(([n]) => n));
  for (const m of btf.members) if (!names.has(m.name)) out.push(`${s}.${m.name}: in ${object} (offset ${m.offset}), not declared in TypeScript`);
  for (const [name, f] of declared) {
    const m = btf.members.find((x) => x.name === name);
    if (!m) out.push(`${s}.${name}: declared in TypeScript (offset ${f.offset}), absent from ${object}`);
    else {
      if (m.offset !== f.offset) out.push(`${s}.${name}: offset ${f.offset} in TypeScript, ${m.offset} in ${object}`);
      if (m.size !== f.size) out.push(`${s}.${name}: width ${f.size} in TypeScript, ${m.size} in ${object}`);
    }
  }
  return out;
}

/** The error of an object whose structs are not as declared. */
export class LayoutMismatchError extends Error {
  constructor(
    readonly object: string,
    readonly mismatches: readonly string[],
  ) {
    super(`the map layout of ${object} is not the one this daemon was built for: ${mismatches.join('; ')}`);
    this.name = 'LayoutMismatchError';
  }
}

/** Throws a LayoutMismatchError listing every difference of `codecs` against the object's BTF. */
export function checkLayout(codecs: ReadonlyArray<StructCodec<unknown>>, btfStruct: (name: string) => BtfStruct | undefined, object: string): void {
  const mismatches = codecs.flatMap((c) => checkStruct(c, btfStruct(c.name), object));
  if (mismatches.length) throw new LayoutMismatchError(object, mismatches);
}
