/**
 * Little-endian byte helpers for the boot loaders: a bounds-checked reader over an untrusted file
 * (every read names what it was reading, so a truncated kernel gives a clear error rather than a
 * RangeError from a DataView), and a writer for building structures destined for guest memory.
 */

/** Reads little-endian fields from untrusted bytes; out-of-bounds reads call `fail`, which must throw. */
export class CheckedReader {
  private readonly view: DataView;

  constructor(
    readonly bytes: Uint8Array,
    private readonly fail: (problem: string) => never,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get length(): number {
    return this.bytes.length;
  }

  /** True when [off, off+len) lies inside the data. */
  has(off: number, len: number): boolean {
    return Number.isSafeInteger(off) && Number.isSafeInteger(len) && off >= 0 && len >= 0 && off + len <= this.bytes.length;
  }

  require(off: number, len: number, what: string): void {
    if (!this.has(off, len)) {
      this.fail(`truncated: ${what} (offset 0x${off.toString(16)}, ${len} bytes) lies beyond the end of the ${this.bytes.length}-byte file`);
    }
  }

  u8(off: number, what: string): number {
    this.require(off, 1, what);
    return this.view.getUint8(off);
  }

  u16(off: number, what: string): number {
    this.require(off, 2, what);
    return this.view.getUint16(off, true);
  }

  u32(off: number, what: string): number {
    this.require(off, 4, what);
    return this.view.getUint32(off, true);
  }

  /** A u64 that must be an exact JS number (< 2^53), e.g. a physical address or size. */
  u64(off: number, what: string): number {
    const v = this.u64big(off, what);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${what} is 0x${v.toString(16)}, too large to be a guest address or size`);
    return Number(v);
  }

  /** A u64 that may use all 64 bits (ELF virtual addresses such as 0xffffffff81000000). */
  u64big(off: number, what: string): bigint {
    this.require(off, 8, what);
    return this.view.getBigUint64(off, true);
  }

  slice(off: number, len: number, what: string): Uint8Array {
    this.require(off, len, what);
    return this.bytes.subarray(off, off + len);
  }

  ascii(off: number, len: number, what: string): string {
    return String.fromCharCode(...this.slice(off, len, what));
  }
}

/** A zero-filled little-endian structure under construction. */
export class StructWriter {
  readonly bytes: Uint8Array;
  private readonly view: DataView;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }

  u8(off: number, v: number): this {
    this.view.setUint8(off, v);
    return this;
  }
  u16(off: number, v: number): this {
    this.view.setUint16(off, v, true);
    return this;
  }
  u32(off: number, v: number): this {
    this.view.setUint32(off, v >>> 0, true);
    return this;
  }
  u64(off: number, v: number | bigint): this {
    this.view.setBigUint64(off, BigInt(v), true);
    return this;
  }
  set(off: number, data: Uint8Array): this {
    this.bytes.set(data, off);
    return this;
  }
}

export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

export function alignDown(n: number, align: number): number {
  return Math.floor(n / align) * align;
}
