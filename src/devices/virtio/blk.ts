/**
 * virtio-blk (spec 5.2): read, write, flush, get-id, discard and write-zeroes on a raw image.
 *
 * Requests are served synchronously on the main thread as soon as a queue is kicked: the data moves
 * with one preadv/pwritev between the image and the guest's own buffers (no copy in kiln), then the
 * status byte and the used ring are written. So a paused device never has a request in flight; the
 * requests the driver queued meanwhile wait in the available ring, which migration carries along with
 * the ring indices, and are served on resume (on the destination, after a migration).
 */
import { IovecArray } from "../../../ffi/io.ts";
import type { RawImage } from "../../block/raw-image.ts";
import { bit, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, VIRTIO_ID_BLOCK } from "./constants.ts";
import { VirtioDevice } from "./device.ts";
import { chainIovecs, copyFromChain, copyToChain, markChainDirty } from "./chain-io.ts";
import { DescChain, MAX_CHAIN_SEGMENTS, VirtqueueError } from "./queue.ts";

/** Feature bits (spec 5.2.3). */
export const BlkF = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Request types and status values (spec 5.2.6). */
export const BlkT = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const BlkS = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** struct virtio_blk_config offsets. */
export const BlkCfg = {
  CAPACITY: 0,
  SIZE_MAX: 8,
  SEG_MAX: 12,
  BLK_SIZE: 20,
  PHYSICAL_BLOCK_EXP: 24,
  ALIGNMENT_OFFSET: 25,
  MIN_IO_SIZE: 26,
  OPT_IO_SIZE: 28,
  WRITEBACK: 32,
  NUM_QUEUES: 34,
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56,
  SIZE: 60,
} as const;

export const SECTOR = 512;
const HEADER_SIZE = 16;
/** virtio_blk_discard_write_zeroes: sector u64, num_sectors u32, flags u32 (bit 0 = unmap). */
const DWZ_SEG_SIZE = 16;
const DWZ_F_UNMAP = 1;
const MAX_DWZ_SECTORS = 0x40_0000; // 2 GiB per segment
const MAX_DWZ_SEGS = 32;
/** VIRTIO_BLK_ID_BYTES. */
export const BLK_ID_BYTES = 20;
/** Requests served before the used ring is published (and the driver maybe interrupted) mid-batch. */
const PUBLISH_EVERY = 64;

export interface BlkStats {
  reads: number;
  writes: number;
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
}

export interface VirtioBlkOptions {
  image: RawImage;
  readOnly: boolean;
  serial: string | null;
  numQueues: number;
  queueSize: number;
  /** -drive throttling.iops-total: requests per second across all queues; null for no limit. */
  iopsTotal?: number | null;
}

/**
 * A token bucket for throttling.iops-total: `rate` requests per second, bursts of up to a tenth of a
 * second's worth (at least one).
 */
export class IopsLimiter {
  private tokens: number;
  private last: number;
  private readonly burst: number;

  constructor(
    private readonly rate: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.burst = Math.max(1, rate / 10);
    this.tokens = this.burst;
    this.last = this.now();
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) * this.rate) / 1000);
    this.last = t;
  }

  /** Whether a request may start now (it does not take the token: see take()). */
  available(): boolean {
    this.refill();
    return this.tokens >= 1;
  }

  take(): void {
    this.tokens -= 1;
  }

  /** Milliseconds until the next request may start. */
  waitMs(): number {
    this.refill();
    return this.tokens >= 1 ? 0 : ((1 - this.tokens) * 1000) / this.rate;
  }
}

export class VirtioBlk extends VirtioDevice {
  readonly type = VIRTIO_ID_BLOCK;
  readonly kind = "virtio-blk";
  readonly features: bigint;
  readonly queueSizes: number[];
  readonly config = new Uint8Array(BlkCfg.SIZE);
  readonly stats: BlkStats = { reads: 0, writes: 0, flushes: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };
  readonly image: RawImage;
  private readonly serial: Uint8Array;
  private readonly sectors: number;
  private readonly chain = new DescChain();
  private readonly iov = new IovecArray(MAX_CHAIN_SEGMENTS);
  private readonly header = new Uint8Array(HEADER_SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly status = new Uint8Array(1);
  private readonly limiter: IopsLimiter | null;
  private retry: ReturnType<typeof setTimeout> | undefined;

  constructor(o: VirtioBlkOptions) {
    super();
    this.limiter = o.iopsTotal ? new IopsLimiter(o.iopsTotal) : null;
    this.image = o.image;
    this.sectors = Math.floor(o.image.size / SECTOR);
    this.queueSizes = Array.from({ length: o.numQueues }, () => o.queueSize);
    this.serial = new TextEncoder().encode(o.serial ?? "").subarray(0, BLK_ID_BYTES);
    let f = bit(F_VERSION_1) | bit(F_RING_EVENT_IDX) | bit(F_RING_INDIRECT_DESC);
    f |= bit(BlkF.SEG_MAX) | bit(BlkF.BLK_SIZE) | bit(BlkF.FLUSH) | bit(BlkF.TOPOLOGY);
    if (o.readOnly) f |= bit(BlkF.RO);
    else f |= bit(BlkF.DISCARD) | bit(BlkF.WRITE_ZEROES);
    if (o.numQueues > 1) f |= bit(BlkF.MQ);
    this.features = f;

    const c = new DataView(this.config.buffer);
    c.setBigUint64(BlkCfg.CAPACITY, BigInt(this.sectors), true);
    c.setUint32(BlkCfg.SEG_MAX, Math.max(1, Math.min(o.queueSize - 2, MAX_CHAIN_SEGMENTS - 2)), true);
    // 512-byte logical blocks always (what guests' filesystems expect); with O_DIRECT the physical
    // block is the file's alignment, so guests align their I/O and skip kiln's bounce buffer.
    c.setUint32(BlkCfg.BLK_SIZE, SECTOR, true);
    const phys = Math.max(SECTOR, o.image.offsetAlign);
    this.config[BlkCfg.PHYSICAL_BLOCK_EXP] = Math.log2(phys / SECTOR);
    c.setUint16(BlkCfg.MIN_IO_SIZE, phys / SECTOR, true);
    c.setUint16(BlkCfg.NUM_QUEUES, o.numQueues, true);
    c.setUint32(BlkCfg.MAX_DISCARD_SECTORS, MAX_DWZ_SECTORS, true);
    c.setUint32(BlkCfg.MAX_DISCARD_SEG, MAX_DWZ_SEGS, true);
    c.setUint32(BlkCfg.DISCARD_SECTOR_ALIGNMENT, phys / SECTOR, true);
    c.setUint32(BlkCfg.MAX_WRITE_ZEROES_SECTORS, MAX_DWZ_SECTORS, true);
    c.setUint32(BlkCfg.MAX_WRITE_ZEROES_SEG, MAX_DWZ_SEGS, true);
    this.config[BlkCfg.WRITE_ZEROES_MAY_UNMAP] = 1;
  }

  activate(_features: bigint): void {}

  deactivate(): void {
    this.cancelRetry();
  }

  kick(qi: number): void {
    const host = this.host;
    const q = host.queues[qi]!;
    const chain = this.chain;
    const limiter = this.limiter;
    for (;;) {
      q.setNotify(false);
      let n = 0;
      // Over the iops limit, requests wait in the available ring (the guest sees a slow disk) and a
      // timer comes back for them; nothing is dropped.
      while ((limiter === null || limiter.available()) && q.pop(chain)) {
        limiter?.take();
        q.pushUsed(chain.head, this.serve(chain));
        if (++n % PUBLISH_EVERY === 0) host.usedBuffers(q);
      }
      host.usedBuffers(q);
      if (limiter !== null && !limiter.available()) {
        q.setNotify(true);
        this.retryLater(qi, limiter.waitMs());
        return;
      }
      // Buffers that arrived after the last look but before notifications were back on: go again.
      if (!q.setNotify(true)) return;
    }
  }

  private retryLater(qi: number, ms: number): void {
    if (this.retry !== undefined) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      // A paused device touches nothing; resumeIo() looks at every queue again.
      if (!this.host.paused && this.host.queues[qi]?.active) this.kick(qi);
    }, Math.max(1, Math.ceil(ms)));
    this.retry.unref();
  }

  private cancelRetry(): void {
    if (this.retry !== undefined) clearTimeout(this.retry);
    this.retry = undefined;
  }



  /** Serve one request; returns the bytes written into the chain (used length). */
  private serve(chain: DescChain): number {
    const mem = this.host.mem;
    if (chain.readableBytes < HEADER_SIZE || chain.writableBytes < 1) {
      throw new VirtqueueError(`virtio-blk request ${chain.head}: ${chain.readableBytes} header bytes and ${chain.writableBytes} writable bytes (need ≥ ${HEADER_SIZE} and ≥ 1)`);
    }
    copyFromChain(mem, chain, 0, this.header);
    const type = this.headerView.getUint32(0, true);
    const sector = Number(this.headerView.getBigUint64(8, true));
    const statusAt = chain.writableBytes - 1;
    let written = 0; // data bytes written into the chain
    let status: number;
    switch (type) {
      case BlkT.IN:
        ({ status, written } = this.read(chain, sector, statusAt));
        break;
      case BlkT.OUT:
        status = this.write(chain, sector);
        break;
      case BlkT.FLUSH:
        this.stats.flushes++;
        status = this.image.flush() < 0 ? BlkS.IOERR : BlkS.OK;
        break;
      case BlkT.GET_ID: {
        const id = new Uint8Array(Math.min(BLK_ID_BYTES, statusAt));
        id.set(this.serial.subarray(0, id.length));
        written = copyToChain(mem, chain, 0, id);
        status = BlkS.OK;
        break;
      }
      case BlkT.DISCARD:
      case BlkT.WRITE_ZEROES:
        status = this.discardOrZero(chain, type === BlkT.WRITE_ZEROES);
        break;
      default:
        status = BlkS.UNSUPP;
    }
    if (status === BlkS.IOERR) this.stats.errors++;
    this.status[0] = status;
    copyToChain(mem, chain, statusAt, this.status);
    return written + 1;
  }

  /** True when [sector, sector + bytes/512) lies on the disk and bytes is whole sectors. */
  private inBounds(sector: number, bytes: number): boolean {
    return bytes % SECTOR === 0 && Number.isSafeInteger(sector) && sector + bytes / SECTOR <= this.sectors;
  }

  private read(chain: DescChain, sector: number, len: number): { status: number; written: number } {
    if (!this.inBounds(sector, len)) return { status: BlkS.IOERR, written: 0 };
    const iov = this.iov;
    iov.clear();
    chainIovecs(this.host.mem, chain, true, 0, len, iov);
    const r = len === 0 ? 0 : this.image.readv(iov, sector * SECTOR);
    if (r < 0) return { status: BlkS.IOERR, written: 0 };
    markChainDirty(this.host.mem, chain, 0, r);
    this.stats.reads++;
    this.stats.bytesRead += r;
    return { status: r === len ? BlkS.OK : BlkS.IOERR, written: r };
  }

  private write(chain: DescChain, sector: number): number {
    const len = chain.readableBytes - HEADER_SIZE;
    // A read-only drive never passes a write to its file (which is open O_RDONLY anyway).
    if (this.image.opts.readOnly || !this.inBounds(sector, len)) return BlkS.IOERR;
    const iov = this.iov;
    iov.clear();
    chainIovecs(this.host.mem, chain, false, HEADER_SIZE, len, iov);
    const r = len === 0 ? 0 : this.image.writev(iov, sector * SECTOR);
    if (r !== len) return BlkS.IOERR;
    this.stats.writes++;
    this.stats.bytesWritten += r;
    return BlkS.OK;
  }

  private discardOrZero(chain: DescChain, zero: boolean): number {
    if (this.image.opts.readOnly) return BlkS.IOERR;
    const len = chain.readableBytes - HEADER_SIZE;
    if (len === 0 || len % DWZ_SEG_SIZE !== 0 || len / DWZ_SEG_SIZE > MAX_DWZ_SEGS) return BlkS.UNSUPP;
    const segs = new Uint8Array(len);
    copyFromChain(this.host.mem, chain, HEADER_SIZE, segs);
    const v = new DataView(segs.buffer);
    for (let o = 0; o < len; o += DWZ_SEG_SIZE) {
      const sector = Number(v.getBigUint64(o, true));
      const count = v.getUint32(o + 8, true);
      const flags = v.getUint32(o + 12, true);
      if (flags & ~DWZ_F_UNMAP || (!zero && flags & DWZ_F_UNMAP) || count > MAX_DWZ_SECTORS) return BlkS.UNSUPP;
      if (!this.inBounds(sector, count * SECTOR)) return BlkS.IOERR;
      if (zero) {
        if (this.image.writeZeroes(sector * SECTOR, count * SECTOR, (flags & DWZ_F_UNMAP) !== 0) < 0) return BlkS.IOERR;
      } else {
        // Discard is a hint: a filesystem that cannot punch holes just keeps the data.
        this.image.discard(sector * SECTOR, count * SECTOR);
      }
    }
    return BlkS.OK;
  }

  override saveState(): Record<string, unknown> {
    return { stats: { ...this.stats } };
  }

  override loadState(s: Record<string, unknown>): void {
    const st = s.stats as Partial<BlkStats> | undefined;
    if (st && typeof st === "object") {
      for (const k of Object.keys(this.stats) as (keyof BlkStats)[]) {
        const v = st[k];
        if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) this.stats[k] = v;
      }
    }
  }

  override close(): void {
    this.cancelRetry();
    this.image.close();
  }
}
