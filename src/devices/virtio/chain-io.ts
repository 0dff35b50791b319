/**
 * Byte-stream views of a descriptor chain: its device-readable part and its device-writable part are
 * each one stream of bytes however the driver split them into descriptors (virtio 1.x has no fixed
 * framing). Devices turn ranges of a stream into host iovecs for zero-copy I/O, or copy the few
 * bytes they parse themselves (request headers, status bytes).
 */
import type { IovecArray } from "../../../ffi/io.ts";
import type { DmaMemory } from "./memory.ts";
import type { DescChain } from "./queue.ts";

function forRange(chain: DescChain, writable: boolean, from: number, len: number, fn: (gpa: number, n: number, done: number) => void): number {
  const first = writable ? chain.firstWritable : 0;
  const last = writable ? chain.count : chain.firstWritable;
  let skip = from;
  let done = 0;
  for (let i = first; i < last && done < len; i++) {
    const segLen = chain.len[i]!;
    if (skip >= segLen) {
      skip -= segLen;
      continue;
    }
    const n = Math.min(segLen - skip, len - done);
    fn(chain.gpa[i]! + skip, n, done);
    done += n;
    skip = 0;
  }
  return done;
}

/** Append host iovecs for [from, from+len) of the readable (or writable) stream; the bytes covered. */
export function chainIovecs(mem: DmaMemory, chain: DescChain, writable: boolean, from: number, len: number, out: IovecArray): number {
  return forRange(chain, writable, from, len, (gpa, n) => {
    if (!out.push(mem.hostAddress(gpa, n), n)) throw new RangeError("iovec array full");
  });
}

/** Copy [from, from+dst.length) of the readable stream into dst; the bytes copied. */
export function copyFromChain(mem: DmaMemory, chain: DescChain, from: number, dst: Uint8Array): number {
  return forRange(chain, false, from, dst.length, (gpa, n, done) => {
    dst.set(mem.view(gpa, n) ?? mem.read(gpa, n), done);
  });
}

/** Copy src into the writable stream at `from`, marking it dirty; the bytes copied. */
export function copyToChain(mem: DmaMemory, chain: DescChain, from: number, src: Uint8Array): number {
  return forRange(chain, true, from, src.length, (gpa, n, done) => {
    const v = mem.view(gpa, n);
    if (v) v.set(src.subarray(done, done + n));
    else mem.write(gpa, src.subarray(done, done + n));
    mem.markDirty(gpa, n);
  });
}

/** Mark [from, from+len) of the writable stream dirty (after a device wrote it through an iovec). */
export function markChainDirty(mem: DmaMemory, chain: DescChain, from: number, len: number): void {
  forRange(chain, true, from, len, (gpa, n) => mem.markDirty(gpa, n));
}
