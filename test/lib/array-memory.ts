/**
 * An ArrayBuffer-backed GuestMemoryAccess for unit tests. It has the same RAM layout as a real
 * guest (`ramRegions(memSize)`): low RAM up to the MMIO hole, the rest from 4 GiB, so accesses to
 * the hole fail the way they would against real guest memory.
 */
import { ramRegions } from "../../src/arch/x86_64/layout.ts";
import { GuestMemoryError, type GuestMemoryAccess, type RamRegion } from "../../src/memory/types.ts";

interface BackedRegion extends RamRegion {
  bytes: Uint8Array;
}

export class ArrayMemory implements GuestMemoryAccess {
  readonly regions: readonly BackedRegion[];

  constructor(readonly memSize: number) {
    this.regions = ramRegions(memSize).map((r) => ({ ...r, bytes: new Uint8Array(r.size) }));
  }

  private find(gpa: number, len: number): BackedRegion | undefined {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0) return undefined;
    return this.regions.find((r) => gpa >= r.gpa && gpa + len <= r.gpa + r.size);
  }

  contains(gpa: number, len: number): boolean {
    return this.find(gpa, len) !== undefined;
  }

  write(gpa: number, data: Uint8Array): void {
    const r = this.find(gpa, data.length);
    if (!r) throw new GuestMemoryError(gpa, data.length, "write");
    r.bytes.set(data, gpa - r.gpa);
  }

  read(gpa: number, len: number): Uint8Array {
    const r = this.find(gpa, len);
    if (!r) throw new GuestMemoryError(gpa, len, "read");
    return r.bytes.slice(gpa - r.gpa, gpa - r.gpa + len);
  }

  /** A DataView over [gpa, gpa+len) for reading structured fields in tests (little-endian helpers). */
  view(gpa: number, len: number): DataView {
    const b = this.read(gpa, len);
    return new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  u8(gpa: number): number {
    return this.view(gpa, 1).getUint8(0);
  }
  u16(gpa: number): number {
    return this.view(gpa, 2).getUint16(0, true);
  }
  u32(gpa: number): number {
    return this.view(gpa, 4).getUint32(0, true);
  }
  /** A u64 as a number; throws when it is not exactly representable. */
  u64(gpa: number): number {
    const v = this.view(gpa, 8).getBigUint64(0, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`u64 at 0x${gpa.toString(16)} too large`);
    return Number(v);
  }
  /** NUL-terminated ASCII string starting at gpa (at most `max` bytes). */
  cstring(gpa: number, max = 4096): string {
    const b = this.read(gpa, max);
    const end = b.indexOf(0);
    return new TextDecoder().decode(b.subarray(0, end < 0 ? b.length : end));
  }
}
