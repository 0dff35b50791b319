/**
 * Typed C structs over byte buffers: every layout is declared once with named offsets, so no code outside
 * ffi/ needs to know where a field lives. Buffers are Uint8Arrays, so `ptr(buf.bytes)` hands them to C.
 */

export type FieldType = "u8" | "u16" | "u32" | "i32" | "u64" | "i64";

export interface FieldDef {
  readonly offset: number;
  readonly type: FieldType;
}

const WIDTH: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, i32: 4, u64: 8, i64: 8 };

export const u8 = (offset: number): FieldDef => ({ offset, type: "u8" });
export const u16 = (offset: number): FieldDef => ({ offset, type: "u16" });
export const u32 = (offset: number): FieldDef => ({ offset, type: "u32" });
export const i32 = (offset: number): FieldDef => ({ offset, type: "i32" });
export const u64 = (offset: number): FieldDef => ({ offset, type: "u64" });
export const i64 = (offset: number): FieldDef => ({ offset, type: "i64" });

/** A struct instance: its bytes plus typed accessors by field name. */
export class StructBuf<F extends Record<string, FieldDef>> {
  readonly view: DataView;
  constructor(
    readonly def: StructDef<F>,
    readonly bytes: Uint8Array,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Field value as a number; 64-bit fields must fit in 2^53 (addresses, sizes), else use getBig. */
  get(name: keyof F & string): number {
    const f = this.def.fields[name]!;
    const v = this.view;
    switch (f.type) {
      case "u8":
        return v.getUint8(f.offset);
      case "u16":
        return v.getUint16(f.offset, true);
      case "u32":
        return v.getUint32(f.offset, true);
      case "i32":
        return v.getInt32(f.offset, true);
      case "u64":
        return Number(v.getBigUint64(f.offset, true));
      case "i64":
        return Number(v.getBigInt64(f.offset, true));
    }
  }

  getBig(name: keyof F & string): bigint {
    const f = this.def.fields[name]!;
    if (f.type === "u64") return this.view.getBigUint64(f.offset, true);
    if (f.type === "i64") return this.view.getBigInt64(f.offset, true);
    return BigInt(this.get(name));
  }

  set(name: keyof F & string, value: number | bigint): this {
    const f = this.def.fields[name]!;
    const v = this.view;
    switch (f.type) {
      case "u8":
        v.setUint8(f.offset, Number(value));
        break;
      case "u16":
        v.setUint16(f.offset, Number(value), true);
        break;
      case "u32":
        v.setUint32(f.offset, Number(value) >>> 0, true);
        break;
      case "i32":
        v.setInt32(f.offset, Number(value), true);
        break;
      case "u64":
        v.setBigUint64(f.offset, BigInt.asUintN(64, BigInt(value)), true);
        break;
      case "i64":
        v.setBigInt64(f.offset, BigInt.asIntN(64, BigInt(value)), true);
        break;
    }
    return this;
  }

  /** A sub-struct view sharing these bytes (e.g. a kvm_segment inside kvm_sregs). */
  sub<G extends Record<string, FieldDef>>(def: StructDef<G>, offset: number): StructBuf<G> {
    return new StructBuf(def, this.bytes.subarray(offset, offset + def.size));
  }
}

export class StructDef<F extends Record<string, FieldDef>> {
  constructor(
    readonly name: string,
    readonly size: number,
    readonly fields: F,
  ) {
    for (const [k, f] of Object.entries(fields)) {
      if (f.offset < 0 || f.offset + WIDTH[f.type] > size) {
        throw new Error(`struct ${name}: field ${k} at ${f.offset} does not fit in ${size} bytes`);
      }
    }
  }

  /** A zeroed instance (optionally with trailing room for flexible array members). */
  alloc(extra = 0): StructBuf<F> {
    return new StructBuf(this, new Uint8Array(this.size + extra));
  }

  /** View existing bytes as this struct (no copy). */
  wrap(bytes: Uint8Array, offset = 0): StructBuf<F> {
    if (offset + this.size > bytes.byteLength) {
      throw new RangeError(`struct ${this.name}: ${bytes.byteLength - offset} bytes is too short (${this.size} needed)`);
    }
    return new StructBuf(this, bytes.subarray(offset, offset + this.size));
  }
}

export function struct<F extends Record<string, FieldDef>>(name: string, size: number, fields: F): StructDef<F> {
  return new StructDef(name, size, fields);
}
