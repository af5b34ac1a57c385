// The BTF of a compiled object as bpftool reads it: structs as the codecs
// declare them, struct fields flattened to byte ranges, enum members. The
// suite's reader, independent of the addon's (BpfObject.btfStruct) that the
// daemon checks with; for tests that read values the way the C compiler laid
// them out instead of restating offsets.
import { execFileSync } from 'node:child_process';
import type { BtfStruct } from '../src/sys/addon';

interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: Array<{ name: string; type_id: number; bits_offset: number }>;
  values?: Array<{ name: string; val: number }>;
}

/** A struct member of a scalar or array type, at its byte offset. */
export interface BtfField {
  /** dotted path for members of nested structs: flow.src */
  name: string;
  offset: number;
  size: number;
}

export class Btf {
  private readonly types: Map<number, BtfType>;

  constructor(objPath: string) {
    const j = JSON.parse(execFileSync('bpftool', ['btf', 'dump', 'file', objPath, 'format', 'raw', '-j'], { encoding: 'utf8' })) as { types: BtfType[] };
    this.types = new Map(j.types.map((x) => [x.id, x]));
  }

  private named(kind: string, name: string): BtfType {
    for (const ty of this.types.values()) if (ty.kind === kind && ty.name === name) return ty;
    throw new Error(`no ${kind} ${name} in BTF`);
  }

  private resolve(id: number): BtfType {
    const ty = this.types.get(id);
    if (!ty) throw new Error(`BTF type ${id} missing`);
    return ['TYPEDEF', 'CONST', 'VOLATILE'].includes(ty.kind) ? this.resolve(ty.type_id ?? 0) : ty;
  }

  private sizeOf(id: number): number {
    const ty = this.resolve(id);
    if (ty.kind === 'ARRAY') return (ty.nr_elems ?? 0) * this.sizeOf(ty.type_id ?? 0);
    return ty.kind === 'PTR' ? 8 : (ty.size ?? 0);
  }

  /** Every named struct, its direct members as byte ranges (what checkStruct compares). */
  structs(): Map<string, BtfStruct> {
    const out = new Map<string, BtfStruct>();
    for (const s of this.types.values()) {
      if (s.kind !== 'STRUCT' || !s.name) continue;
      out.set(s.name, { size: s.size ?? 0, members: (s.members ?? []).map((m) => ({ name: m.name, offset: m.bits_offset / 8, size: this.sizeOf(m.type_id) })) });
    }
    return out;
  }

  /** Byte size of struct `name`. */
  structSize(name: string): number {
    return this.named('STRUCT', name).size ?? 0;
  }

  /** Every leaf field of struct `name`, nested structs flattened, in order. */
  fields(name: string): BtfField[] {
    const walk = (ty: BtfType, prefix: string, base: number): BtfField[] =>
      (ty.members ?? []).flatMap((m) => {
        const mt = this.resolve(m.type_id);
        const offset = base + m.bits_offset / 8;
        const name = prefix + m.name;
        return mt.kind === 'STRUCT' ? walk(mt, `${name}.`, offset) : [{ name, offset, size: this.sizeOf(m.type_id) }];
      });
    return walk(this.named('STRUCT', name), '', 0);
  }

  /** The members of enum `name` with their values, in declaration order. */
  enumMembers(name: string): Array<{ name: string; value: number }> {
    return (this.named('ENUM', name).values ?? []).map((v) => ({ name: v.name, value: v.val }));
  }
}

/** Every named struct of the object's BTF, by name. */
export function btfStructs(objectPath: string): Map<string, BtfStruct> {
  return new Btf(objectPath).structs();
}
