// Guest RAM (src/memory/guest-memory.ts): the memfd mapping every layer writes through, with the
// MMIO hole, 1 GiB windows past JavaScript's 4 GiB view limit, kiln's own dirty bits, and the
// same-host hand-over (detach) that must leave the other process's pages alone.
import { afterEach, expect, test } from "bun:test";
import { toArrayBuffer } from "bun:ffi";
import { GuestMemory, WINDOW_SIZE } from "../../src/memory/guest-memory.ts";
import { GuestMemoryError } from "../../src/memory/types.ts";
import { ramRegions, MMIO_HOLE_START } from "../../src/arch/x86_64/layout.ts";
import { close, dup, mmap, munmap, MAP_SHARED, PROT_READ, PROT_WRITE } from "../../ffi/libc.ts";

const FOUR_GIB = 2 ** 32;
const MIB = 1 << 20;
const live: GuestMemory[] = [];
function make(size: number): GuestMemory {
  const m = GuestMemory.create(ramRegions(size), "kiln-test-ram");
  live.push(m);
  return m;
}
afterEach(() => {
  for (const m of live.splice(0)) m.destroy();
});

test("a 6 GiB guest: RAM below the MMIO hole and above 4 GiB, nothing in the hole", () => {
  const m = make(6 * 1024 * MIB);
  expect(m.regions.map((r) => [r.gpa, r.size])).toEqual([
    [0, MMIO_HOLE_START],
    [FOUR_GIB, 6 * 1024 * MIB - MMIO_HOLE_START],
  ]);
  // Above 4 GiB: the second region starts right after the first in the memfd.
  const high = FOUR_GIB + 5 * 1024 * MIB - MMIO_HOLE_START - 8;
  m.write(high, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
  expect([...m.read(high, 8)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  expect(m.hostAddress(FOUR_GIB, 1) - m.hostAddr).toBe(MMIO_HOLE_START);
  // The hole and beyond the end are not RAM.
  expect(m.contains(MMIO_HOLE_START, 1)).toBe(false);
  expect(m.contains(MMIO_HOLE_START - 4, 8)).toBe(false);
  expect(() => m.read(MMIO_HOLE_START, 4)).toThrow(GuestMemoryError);
  expect(() => m.write(FOUR_GIB + m.size, new Uint8Array(1))).toThrow(/outside guest RAM/);
});

test("reads and writes cross 1 GiB windows; view() refuses to straddle one", () => {
  const m = make(2 * 1024 * MIB);
  const data = new Uint8Array([9, 8, 7, 6, 5, 4]);
  m.write(WINDOW_SIZE - 3, data);
  expect([...m.read(WINDOW_SIZE - 3, 6)]).toEqual([...data]);
  expect(m.view(WINDOW_SIZE - 3, 6)).toBeUndefined();
  expect([...m.view(WINDOW_SIZE, 3)!]).toEqual([6, 5, 4]);
});

test("markDirty sets kiln's dirty bits only while tracking, one per page", () => {
  const m = make(64 * MIB);
  m.markDirty(0x5000, 16); // not tracking: nothing to record
  const bits = new Int32Array(m.startDirtyTracking());
  m.markDirty(0x5ff0, 0x20); // straddles pages 5 and 6
  m.markDirty(40 * 4096, 1);
  expect(bits[0]).toBe((1 << 5) | (1 << 6));
  expect(bits[1]).toBe(1 << (40 - 32));
  m.stopDirtyTracking();
  m.markDirty(0, 1);
  expect(bits[0]).toBe((1 << 5) | (1 << 6));
});

test("discard gives RAM back: everything reads as zero afterwards", () => {
  const m = make(64 * MIB);
  m.write(0x1000, new Uint8Array([0xaa, 0xbb]));
  m.discard();
  expect([...m.read(0x1000, 2)]).toEqual([0, 0]);
});

test("detach: fresh RAM at the same address; the other owner of the pages keeps them untouched", () => {
  const m = make(64 * MIB);
  const view = m.view(0x2000, 4)!; // a view taken before stays valid (same address)
  view.set([1, 2, 3, 4]);
  // The "destination": another mapping of the same memfd, as a process that received it would have.
  const fd = dup(m.fd);
  const size = m.size;
  const other = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0, "mmap(other)");
  try {
    const hostBefore = m.hostAddr;
    const moved = m.detach();
    expect(m.hostAddr).toBe(hostBefore);
    expect([...view]).toEqual([0, 0, 0, 0]);
    view[0] = 0x55; // this side's writes no longer reach the other's pages
    const theirs = new Uint8Array(toArrayBuffer(other as never, 0, size));
    expect([...theirs.subarray(0x2000, 0x2004)]).toEqual([1, 2, 3, 4]);
    // The old mapping was moved aside, not unmapped: the caller does that when convenient.
    expect(moved.len).toBeGreaterThanOrEqual(size);
    munmap(moved.addr, moved.len);
    expect([...theirs.subarray(0x2000, 0x2004)]).toEqual([1, 2, 3, 4]);
  } finally {
    munmap(other, size);
    close(fd);
  }
});
