/**
 * What boot loaders, table builders and device models need from guest memory.
 * The real implementation (src/memory/guest-memory.ts) is a memfd mapping; tests use
 * an ArrayBuffer-backed one. Addresses are guest-physical and plain numbers (< 2^53).
 */
export interface GuestMemoryAccess {
  /** Copy `data` into guest memory at `gpa`. Throws GuestMemoryError unless the whole range is RAM. */
  write(gpa: number, data: Uint8Array): void;
  /** Copy `len` bytes out of guest memory at `gpa`. Throws GuestMemoryError unless the whole range is RAM. */
  read(gpa: number, len: number): Uint8Array;
  /** True when [gpa, gpa+len) lies entirely inside one RAM region. */
  contains(gpa: number, len: number): boolean;
}

/** A contiguous range of guest RAM. */
export interface RamRegion {
  gpa: number;
  size: number;
}

export class GuestMemoryError extends Error {
  constructor(
    readonly gpa: number,
    readonly len: number,
    what = "access",
  ) {
    super(`guest memory ${what} at 0x${gpa.toString(16)} (+${len} bytes) is outside guest RAM`);
    this.name = "GuestMemoryError";
  }
}
