/**
 * A split virtqueue (virtio 1.x, spec 2.7) as the device sees it: descriptor table, available ring
 * (driver → device) and used ring (device → driver), all in guest memory and read in place.
 *
 * Everything here runs on the main thread. The driver runs concurrently on vCPUs, so the order of
 * loads and stores matters: a chain is read only after avail.idx says it is there, used elements are
 * written before used.idx, and the "should I notify?" checks on both sides use a full fence.
 */
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DESC_SIZE,
  VIRTQ_MAX_SIZE,
  VIRTQ_USED_F_NO_NOTIFY,
} from "./constants.ts";
import { memoryFence, type DmaMemory } from "./memory.ts";

/** The driver broke the ring protocol: the device must stop using the queue (DEVICE_NEEDS_RESET). */
export class VirtqueueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VirtqueueError";
  }
}

/** Ring layout offsets (spec 2.7.6, 2.7.8). */
const AVAIL_FLAGS = 0;
const AVAIL_IDX = 2;
const AVAIL_RING = 4;
const USED_FLAGS = 0;
const USED_IDX = 2;
const USED_RING = 4;
const USED_ELEM_SIZE = 8;
/** Descriptor fields. */
const DESC_ADDR = 0;
const DESC_LEN = 8;
const DESC_FLAGS = 12;
const DESC_NEXT = 14;

/** Longest chain accepted (direct chains are bounded by the queue size, indirect tables by this). */
export const MAX_CHAIN_SEGMENTS = 4096;

/** One descriptor chain, flattened: device-readable segments first, then device-writable ones. */
export class DescChain {
  head = 0;
  count = 0;
  /** Index of the first device-writable segment (== count when there is none). */
  firstWritable = 0;
  readableBytes = 0;
  writableBytes = 0;
  readonly gpa = new Float64Array(MAX_CHAIN_SEGMENTS);
  readonly len = new Uint32Array(MAX_CHAIN_SEGMENTS);

  reset(head: number): void {
    this.head = head;
    this.count = 0;
    this.firstWritable = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
  }

  add(gpa: number, len: number, writable: boolean): void {
    if (this.count === MAX_CHAIN_SEGMENTS) throw new VirtqueueError(`descriptor chain ${this.head} has more than ${MAX_CHAIN_SEGMENTS} segments`);
    if (!writable && this.writableBytes > 0) throw new VirtqueueError(`descriptor chain ${this.head} has a device-readable segment after a device-writable one`);
    if (len === 0) return;
    this.gpa[this.count] = gpa;
    this.len[this.count] = len;
    this.count++;
    if (writable) this.writableBytes += len;
    else {
      this.readableBytes += len;
      this.firstWritable = this.count;
    }
  }
}

/** The state migration must carry for one queue. */
export interface QueueState {
  size: number;
  ready: boolean;
  desc: number;
  avail: number;
  used: number;
  lastAvail: number;
  usedIdx: number;
  signalledUsed: number;
  signalledValid: boolean;
}

export class Virtqueue {
  /** Queue size the driver chose (≤ maxSize, a power of 2 for split rings). */
  size: number;
  ready = false;
  descAddr = 0;
  availAddr = 0;
  usedAddr = 0;
  /** Next avail ring slot the device will read (free-running u16). */
  lastAvail = 0;
  /** Next used ring slot the device will write; published in used.idx by flushUsed(). */
  usedIdx = 0;
  /** used.idx when an interrupt was last considered (EVENT_IDX). */
  private signalledUsed = 0;
  private signalledValid = false;
  eventIdx = false;
  private desc: DataView | undefined;
  private avail: DataView | undefined;
  private used: DataView | undefined;
  private publishedUsed = 0;

  constructor(
    readonly index: number,
    readonly maxSize: number,
    private readonly mem: DmaMemory,
  ) {
    this.size = maxSize;
  }

  /** Back to the reset state (the driver sets it up again). */
  reset(): void {
    this.size = this.maxSize;
    this.ready = false;
    this.descAddr = this.availAddr = this.usedAddr = 0;
    this.lastAvail = this.usedIdx = this.publishedUsed = this.signalledUsed = 0;
    this.signalledValid = false;
    this.eventIdx = false;
    this.desc = this.avail = this.used = undefined;
  }

  get active(): boolean {
    return this.used !== undefined;
  }

  /**
   * Map the rings (when the driver enabled the queue and the device went DRIVER_OK). Throws
   * VirtqueueError when they are not in RAM or the size is not valid.
   */
  activate(eventIdx: boolean): void {
    const n = this.size;
    if (n === 0 || n > VIRTQ_MAX_SIZE || (n & (n - 1)) !== 0) throw new VirtqueueError(`queue ${this.index}: size ${n} is not a power of 2 up to ${VIRTQ_MAX_SIZE}`);
    this.eventIdx = eventIdx;
    this.desc = this.map("descriptor table", this.descAddr, n * VIRTQ_DESC_SIZE, 16);
    this.avail = this.map("available ring", this.availAddr, AVAIL_RING + 2 * n + 2, 2);
    this.used = this.map("used ring", this.usedAddr, USED_RING + USED_ELEM_SIZE * n + 2, 4);
    this.publishedUsed = this.usedIdx;
  }

  deactivate(): void {
    this.desc = this.avail = this.used = undefined;
  }

  private map(what: string, gpa: number, len: number, align: number): DataView {
    if (gpa % align !== 0) throw new VirtqueueError(`queue ${this.index}: ${what} at 0x${gpa.toString(16)} is not ${align}-byte aligned`);
    const v = this.mem.contains(gpa, len) ? this.mem.view(gpa, len) : undefined;
    if (!v) throw new VirtqueueError(`queue ${this.index}: ${what} at 0x${gpa.toString(16)} (+${len}) is not in guest RAM`);
    return new DataView(v.buffer, v.byteOffset, v.byteLength);
  }

  /** avail.idx as the driver last published it. */
  availIdx(): number {
    return this.avail!.getUint16(AVAIL_IDX, true);
  }

  hasAvail(): boolean {
    return this.avail !== undefined && this.availIdx() !== this.lastAvail;
  }

  /** Number of chains the driver has made available and the device has not taken yet. */
  pending(): number {
    return this.avail === undefined ? 0 : (this.availIdx() - this.lastAvail) & 0xffff;
  }

  /** Take the next available chain into `chain`; false when there is none. */
  pop(chain: DescChain): boolean {
    const avail = this.avail;
    if (!avail) return false;
    const idx = avail.getUint16(AVAIL_IDX, true);
    if (idx === this.lastAvail) return false;
    if (((idx - this.lastAvail) & 0xffff) > this.size) {
      throw new VirtqueueError(`queue ${this.index}: avail.idx ${idx} is more than ${this.size} ahead of ${this.lastAvail}`);
    }
    const head = avail.getUint16(AVAIL_RING + 2 * (this.lastAvail % this.size), true);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    this.readChain(head, chain);
    return true;
  }

  /** Give back the chain pop() just returned (the device could not use it yet, e.g. no frame to receive). */
  unpop(): void {
    this.lastAvail = (this.lastAvail - 1) & 0xffff;
  }

  private readChain(head: number, chain: DescChain): void {
    const n = this.size;
    if (head >= n) throw new VirtqueueError(`queue ${this.index}: descriptor index ${head} is out of range (size ${n})`);
    chain.reset(head);
    let table = this.desc!;
    let tableSize = n;
    let i = head;
    let steps = 0;
    let indirect = false;
    for (;;) {
      if (++steps > MAX_CHAIN_SEGMENTS) throw new VirtqueueError(`queue ${this.index}: descriptor chain ${head} loops`);
      const off = i * VIRTQ_DESC_SIZE;
      const addr = table.getUint32(off + DESC_ADDR, true) + table.getUint32(off + DESC_ADDR + 4, true) * 0x1_0000_0000;
      const len = table.getUint32(off + DESC_LEN, true);
      const flags = table.getUint16(off + DESC_FLAGS, true);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (indirect) throw new VirtqueueError(`queue ${this.index}: nested indirect descriptor in chain ${head}`);
        if (len === 0 || len % VIRTQ_DESC_SIZE !== 0) throw new VirtqueueError(`queue ${this.index}: indirect table of ${len} bytes in chain ${head}`);
        const v = this.mem.contains(addr, len) ? this.mem.view(addr, len) : undefined;
        if (!v) throw new VirtqueueError(`queue ${this.index}: indirect table at 0x${addr.toString(16)} is not in guest RAM`);
        table = new DataView(v.buffer, v.byteOffset, v.byteLength);
        tableSize = len / VIRTQ_DESC_SIZE;
        indirect = true;
        i = 0;
        steps = 0;
        continue;
      }
      if (len > 0 && !this.mem.contains(addr, len)) {
        throw new VirtqueueError(`queue ${this.index}: buffer 0x${addr.toString(16)} (+${len}) in chain ${head} is not in guest RAM`);
      }
      chain.add(addr, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (!(flags & VIRTQ_DESC_F_NEXT)) return;
      i = table.getUint16(off + DESC_NEXT, true);
      if (i >= tableSize) throw new VirtqueueError(`queue ${this.index}: next index ${i} is out of range in chain ${head}`);
    }
  }

  /** Put a used element (chain `head`, `len` bytes written into it); visible once flushUsed() runs. */
  pushUsed(head: number, len: number): void {
    const used = this.used!;
    const off = USED_RING + USED_ELEM_SIZE * (this.usedIdx % this.size);
    used.setUint32(off, head, true);
    used.setUint32(off + 4, len, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
  }

  /** Publish used elements pushed since the last flush in used.idx; true when there were any. */
  flushUsed(): boolean {
    if (this.usedIdx === this.publishedUsed) return false;
    const used = this.used!;
    // Elements first (already stored above), then the index: x86 keeps stores in order.
    used.setUint16(USED_IDX, this.usedIdx, true);
    const n = this.size;
    const from = this.publishedUsed % n;
    const count = (this.usedIdx - this.publishedUsed) & 0xffff;
    this.publishedUsed = this.usedIdx;
    // Dirty: the index, and the elements written (they may wrap around the ring).
    this.mem.markDirty(this.usedAddr, USED_RING);
    if (from + count <= n) this.mem.markDirty(this.usedAddr + USED_RING + USED_ELEM_SIZE * from, USED_ELEM_SIZE * count);
    else this.mem.markDirty(this.usedAddr + USED_RING, USED_ELEM_SIZE * n);
    return true;
  }

  /**
   * After flushUsed(): does the driver want an interrupt for what was published since the last one?
   * (used_event with EVENT_IDX, else the avail ring's NO_INTERRUPT flag; spec 2.7.10.)
   */
  needsInterrupt(): boolean {
    const avail = this.avail;
    if (!avail) return false;
    memoryFence(); // used.idx stored before used_event / flags are read
    if (!this.eventIdx) return (avail.getUint16(AVAIL_FLAGS, true) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    const newIdx = this.usedIdx;
    const old = this.signalledUsed;
    const valid = this.signalledValid;
    this.signalledUsed = newIdx;
    this.signalledValid = true;
    if (!valid) return true;
    const usedEvent = avail.getUint16(AVAIL_RING + 2 * this.size, true);
    // vring_need_event: did new_idx step past used_event since old?
    return ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - old) & 0xffff);
  }

  /**
   * Tell the driver whether to notify (kick) for new buffers. With EVENT_IDX this writes avail_event;
   * without, the used ring's NO_NOTIFY flag. Returns true when, after enabling, buffers are already
   * waiting (the caller must process them: the driver may have looked before the write landed).
   */
  setNotify(enable: boolean): boolean {
    const used = this.used;
    if (!used) return false;
    if (this.eventIdx) {
      if (!enable) return false; // avail_event stays where it was: the driver kicks at most once more
      used.setUint16(USED_RING + USED_ELEM_SIZE * this.size, this.lastAvail, true);
      this.mem.markDirty(this.usedAddr + USED_RING + USED_ELEM_SIZE * this.size, 2);
    } else {
      used.setUint16(USED_FLAGS, enable ? 0 : VIRTQ_USED_F_NO_NOTIFY, true);
      this.mem.markDirty(this.usedAddr, 2);
      if (!enable) return false;
    }
    memoryFence(); // the store above before the avail.idx load below (the driver does the mirror image)
    return this.hasAvail();
  }

  save(): QueueState {
    return {
      size: this.size,
      ready: this.ready,
      desc: this.descAddr,
      avail: this.availAddr,
      used: this.usedAddr,
      lastAvail: this.lastAvail,
      usedIdx: this.usedIdx,
      signalledUsed: this.signalledUsed,
      signalledValid: this.signalledValid,
    };
  }

  /** Load validated state; the rings are mapped again by activate() when the device is live. */
  load(s: QueueState): void {
    this.size = s.size;
    this.ready = s.ready;
    this.descAddr = s.desc;
    this.availAddr = s.avail;
    this.usedAddr = s.used;
    this.lastAvail = s.lastAvail;
    this.usedIdx = s.usedIdx;
    this.publishedUsed = s.usedIdx;
    this.signalledUsed = s.signalledUsed;
    this.signalledValid = s.signalledValid;
    this.desc = this.avail = this.used = undefined;
  }
}

/** Check a QueueState from an untrusted stream; returns a message naming the bad field, or null. */
export function queueStateProblem(s: unknown, maxSize: number): string | null {
  const q = s as QueueState;
  if (!q || typeof q !== "object") return "not an object";
  const u = (v: unknown, max: number) => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
  if (!u(q.size, maxSize) || (q.size & (q.size - 1)) !== 0) return `size ${String(q.size)} is not a power of 2 up to ${maxSize}`;
  if (typeof q.ready !== "boolean") return "ready must be a boolean";
  for (const k of ["desc", "avail", "used"] as const) if (!u(q[k], Number.MAX_SAFE_INTEGER)) return `${k} must be a guest address`;
  for (const k of ["lastAvail", "usedIdx", "signalledUsed"] as const) if (!u(q[k], 0xffff)) return `${k} must be a 16-bit index`;
  if (typeof q.signalledValid !== "boolean") return "signalledValid must be a boolean";
  return null;
}
