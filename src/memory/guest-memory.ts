/**
 * Guest RAM: one memfd, mapped once MAP_SHARED, split into KVM memory slots around the MMIO hole.
 * A memfd (rather than anonymous memory) so that a later same-host upgrade can hand the very same pages
 * to another process over SCM_RIGHTS. The mapping's address is valid in every thread of the process, so
 * Workers attach to it from a plain-data descriptor.
 *
 * JavaScript views (toArrayBuffer) are limited to 4 GiB, so the mapping is seen through 1 GiB windows;
 * `view()` returns a zero-copy Uint8Array within one window, `read`/`write` copy across windows.
 */
import {
  ftruncate, madvise, memfdCreate, mmap, mremapTo, munmap, close, MADV_DONTDUMP, MADV_REMOVE, MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE,
  MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE, toArrayBuffer,
} from "../../ffi/libc.ts";
import { GuestMemoryError, type GuestMemoryAccess, type RamRegion } from "./types.ts";

export const WINDOW_SHIFT = 30;
export const WINDOW_SIZE = 1 << WINDOW_SHIFT;
const PAGE = 4096;
/** Page-middle-directory size: mappings moved at this alignment move whole page tables. */
const MOVE_ALIGN = 2 << 20;

export interface MemoryRegionDesc extends RamRegion {
  /** Offset of this region inside the memfd and the mapping. */
  offset: number;
  /** KVM memory slot number. */
  slot: number;
}

/** What a Worker needs to attach to the same mapping. */
export interface GuestMemoryDescriptor {
  fd: number;
  hostAddr: number;
  size: number;
  regions: MemoryRegionDesc[];
}

export class GuestMemory implements GuestMemoryAccess {
  private readonly windows: (Uint8Array | undefined)[] = [];
  private owner: boolean;

  private constructor(readonly desc: GuestMemoryDescriptor, owner: boolean) {
    this.owner = owner;
  }

  /** Allocate RAM for `regions` (gpa-sorted) in a fresh memfd. */
  static create(regions: RamRegion[], name = "kiln-guest-ram"): GuestMemory {
    const size = regions.reduce((n, r) => n + r.size, 0);
    const fd = memfdCreate(name);
    try {
      ftruncate(fd, size);
      // NORESERVE: the guest touches its RAM lazily; don't charge all of it to overcommit up front.
      const hostAddr = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0, "mmap(guest RAM)");
      let offset = 0;
      const descs = regions.map((r, slot) => {
        const d = { gpa: r.gpa, size: r.size, offset, slot };
        offset += r.size;
        return d;
      });
      return new GuestMemory({ fd, hostAddr, size, regions: descs }, true);
    } catch (e) {
      close(fd);
      throw e;
    }
  }

  /** Attach to a mapping made by another thread of this process (no new mapping, no ownership). */
  static attach(desc: GuestMemoryDescriptor): GuestMemory {
    return new GuestMemory(desc, false);
  }

  get regions(): readonly MemoryRegionDesc[] {
    return this.desc.regions;
  }

  get size(): number {
    return this.desc.size;
  }

  get hostAddr(): number {
    return this.desc.hostAddr;
  }

  get fd(): number {
    return this.desc.fd;
  }

  /** The region holding [gpa, gpa+len), or undefined. */
  regionOf(gpa: number, len: number): MemoryRegionDesc | undefined {
    for (const r of this.desc.regions) {
      if (gpa >= r.gpa && len >= 0 && gpa + len <= r.gpa + r.size) return r;
    }
    return undefined;
  }

  contains(gpa: number, len: number): boolean {
    return Number.isSafeInteger(gpa) && Number.isSafeInteger(len) && this.regionOf(gpa, len) !== undefined;
  }

  /** Offset of guest-physical `gpa` in the mapping; throws unless [gpa, gpa+len) is RAM. */
  offsetOf(gpa: number, len: number, what = "access"): number {
    const r = this.regionOf(gpa, len);
    if (!r || !Number.isSafeInteger(gpa)) throw new GuestMemoryError(gpa, len, what);
    return r.offset + (gpa - r.gpa);
  }

  /** Host virtual address of guest-physical `gpa` (for FFI calls such as readv/writev into guest RAM). */
  hostAddress(gpa: number, len: number): number {
    return this.desc.hostAddr + this.offsetOf(gpa, len);
  }

  private window(i: number): Uint8Array {
    let w = this.windows[i];
    if (!w) {
      const start = i * WINDOW_SIZE;
      const len = Math.min(WINDOW_SIZE, this.desc.size - start);
      w = new Uint8Array(toArrayBuffer((this.desc.hostAddr + start) as never, 0, len));
      this.windows[i] = w;
    }
    return w;
  }

  /** Zero-copy bytes of the mapping at `offset` (memfd offset), within a single window. */
  viewAtOffset(offset: number, len: number): Uint8Array | undefined {
    const wi = Math.floor(offset / WINDOW_SIZE);
    const start = offset - wi * WINDOW_SIZE;
    if (start + len > WINDOW_SIZE) return undefined;
    return this.window(wi).subarray(start, start + len);
  }

  /** Zero-copy view of guest RAM; undefined when the range straddles a 1 GiB window (use read/write then). */
  view(gpa: number, len: number): Uint8Array | undefined {
    return this.viewAtOffset(this.offsetOf(gpa, len), len);
  }

  write(gpa: number, data: Uint8Array): void {
    let off = this.offsetOf(gpa, data.byteLength, "write");
    let done = 0;
    while (done < data.byteLength) {
      const wi = Math.floor(off / WINDOW_SIZE);
      const start = off - wi * WINDOW_SIZE;
      const n = Math.min(data.byteLength - done, WINDOW_SIZE - start);
      this.window(wi).set(data.subarray(done, done + n), start);
      done += n;
      off += n;
    }
  }

  read(gpa: number, len: number): Uint8Array {
    let off = this.offsetOf(gpa, len, "read");
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const wi = Math.floor(off / WINDOW_SIZE);
      const start = off - wi * WINDOW_SIZE;
      const n = Math.min(len - done, WINDOW_SIZE - start);
      out.set(this.window(wi).subarray(start, start + n), done);
      done += n;
      off += n;
    }
    return out;
  }

  /**
   * Pages written by kiln itself (device models), which KVM's dirty log does not see. While tracking is
   * on, `markDirty` sets their bits here (one bit per page of the mapping, in memfd-offset order) and the
   * migration sender collects and clears them with Atomics, from its own thread.
   */
  userDirty: Int32Array | undefined;

  startDirtyTracking(): SharedArrayBuffer {
    const words = Math.ceil(this.desc.size / PAGE / 32);
    const sab = new SharedArrayBuffer(words * 4);
    this.userDirty = new Int32Array(sab);
    return sab;
  }

  stopDirtyTracking(): void {
    this.userDirty = undefined;
  }

  /** Note that kiln wrote guest RAM at [gpa, gpa+len) (a no-op unless a migration tracks dirty pages). */
  markDirty(gpa: number, len: number): void {
    const bits = this.userDirty;
    if (!bits || len <= 0) return;
    const off = this.offsetOf(gpa, len);
    for (let p = Math.floor(off / PAGE), end = Math.floor((off + len - 1) / PAGE); p <= end; p++) {
      Atomics.or(bits, p >>> 5, 1 << (p & 31));
    }
  }

  /**
   * Map another memfd's pages over this RAM, at the same address (so every view, pointer and KVM
   * memory slot stays valid): how a same-host migration takes over the source's memory without
   * copying it. The old memfd is closed; this object owns `fd` from now on.
   */
  adopt(fd: number): void {
    mmap(this.desc.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE | MAP_FIXED, fd, 0, "mmap(adopted guest RAM)", this.desc.hostAddr);
    // A new mapping starts without the old one's advice.
    if (this.dontDump) madvise(this.desc.hostAddr, this.desc.size, MADV_DONTDUMP);
    const old = this.desc.fd;
    this.desc.fd = fd;
    close(old);
  }

  private dontDump = false;

  /** Keep guest RAM out of core dumps of the kiln process (it can be large and may be sensitive). */
  excludeFromCoreDumps(): void {
    this.dontDump = true;
    madvise(this.desc.hostAddr, this.desc.size, MADV_DONTDUMP);
  }

  /** Another thread adopted `fd` for this same mapping (see adopt()): record it here too. */
  adoptedElsewhere(fd: number): void {
    this.desc.fd = fd;
  }

  /**
   * Put fresh, empty memory under this RAM (same address), letting go of the pages another process
   * took over: after a same-host migration the source must never touch them again.
   *
   * Unmapping pages this process has touched costs about a microsecond each here (hundreds of MiB: tens
   * of milliseconds), so the old mapping is only moved out of the way (mremap moves its page tables
   * whole) and returned: the caller unmaps it later, from any thread. Until then nothing can reach it.
   */
  detach(name = "kiln-guest-ram"): { addr: number; len: number } {
    const size = this.desc.size;
    // An aligned hole to move into, so the kernel can move page tables rather than entries.
    const len = size + MOVE_ALIGN;
    const hole = mmap(len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, "mmap(reserve)");
    mremapTo(this.desc.hostAddr, size, Math.ceil(hole / MOVE_ALIGN) * MOVE_ALIGN);
    const fd = memfdCreate(name);
    ftruncate(fd, size);
    this.adopt(fd);
    return { addr: hole, len };
  }

  /** Give all of RAM back to the host: afterwards every page reads as zero (a power cycle's RAM). */
  discard(): void {
    if (madvise(this.desc.hostAddr, this.desc.size, MADV_REMOVE) < 0) {
      // Not expected for a memfd mapping; fall back to zeroing what the guest touched.
      for (let off = 0; off < this.desc.size; off += WINDOW_SIZE) this.viewAtOffset(off, Math.min(WINDOW_SIZE, this.desc.size - off))!.fill(0);
    }
  }

  /** Unmap and close. Only the creating thread may do this, and only once no view is in use. */
  destroy(): void {
    if (!this.owner) return;
    this.owner = false;
    this.windows.length = 0;
    munmap(this.desc.hostAddr, this.desc.size);
    close(this.desc.fd);
  }
}
