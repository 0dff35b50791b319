/**
 * What virtio devices need from guest memory: zero-copy views for the rings, host addresses for
 * preadv/pwritev/readv/writev straight into guest buffers, and dirty marking for every byte a device
 * writes (so live migration sees it). GuestMemory (src/memory/guest-memory.ts) provides all of it.
 */
export interface DmaMemory {
  /** True when [gpa, gpa+len) lies inside one RAM region. */
  contains(gpa: number, len: number): boolean;
  /** Zero-copy bytes, or undefined when the range straddles one of the mapping's 1 GiB windows. */
  view(gpa: number, len: number): Uint8Array | undefined;
  /** Copies, for the rare range that straddles a window. */
  read(gpa: number, len: number): Uint8Array;
  write(gpa: number, data: Uint8Array): void;
  /** Host virtual address of gpa; throws GuestMemoryError unless the range is RAM. */
  hostAddress(gpa: number, len: number): number;
  /** The device wrote [gpa, gpa+len): a no-op unless a migration is tracking dirty pages. */
  markDirty(gpa: number, len: number): void;
}

/** A fence: any locked instruction orders earlier stores before later loads on x86 (used by Dekker-style checks). */
const fenceWord = new Int32Array(new SharedArrayBuffer(4));
export function memoryFence(): void {
  Atomics.add(fenceWord, 0, 0);
}
