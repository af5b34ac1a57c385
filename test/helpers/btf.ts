// A BPF object's structs as bpftool reads its BTF: the suite's reader,
// independent of the addon's (BpfObject.btfStruct) that the daemon checks with.
import { execFileSync } from 'node:child_process';
import type { BtfStruct } from '../../src/datapath/codec';

interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: Array<{ name: string; type_id: number; bits_offset: number }>;
}

function sizeOf(types: Map<number, BtfType>, id: number): number {
  const ty = types.get(id);
  if (!ty) throw new Error(`BTF type ${id} missing`);
  switch (ty.kind) {
    case 'INT':
    case 'STRUCT':
    case 'UNION':
    case 'ENUM':
      return ty.size ?? 0;
    case 'TYPEDEF':
    case 'CONST':
    case 'VOLATILE':
      return sizeOf(types, ty.type_id ?? 0);
    case 'ARRAY':
      return (ty.nr_elems ?? 0) * sizeOf(types, ty.type_id ?? 0);
    case 'PTR':
      return 8;
    default:
      throw new Error(`no size for BTF kind ${ty.kind}`);
  }
}

/** Every named struct of the object's BTF, by name. */
export function btfStructs(objectPath: string): Map<string, BtfStruct> {
  const j = JSON.parse(execFileSync('bpftool', ['btf', 'dump', 'file', objectPath, 'format', 'raw', '-j'], { encoding: 'utf8' })) as { types: BtfType[] };
  const types = new Map(j.types.map((x) => [x.id, x]));
  const out = new Map<string, BtfStruct>();
  for (const s of j.types) {
    if (s.kind !== 'STRUCT' || !s.name) continue;
    out.set(s.name, { size: s.size ?? 0, members: (s.members ?? []).map((m) => ({ name: m.name, offset: m.bits_offset / 8, size: sizeOf(types, m.type_id) })) });
  }
  return out;
}
