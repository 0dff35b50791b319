/**
 * virtio core, the virtio-mmio transport, virtio-blk and virtio-net, driven the way a guest driver
 * would: rings built in (real, memfd-backed) guest memory, registers written through the transport.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { DescChain, Virtqueue, VirtqueueError } from "../../src/devices/virtio/queue.ts";
import { VirtioMmioTransport, MmioReg, MMIO_MAGIC } from "../../src/devices/virtio/mmio.ts";
import { VirtioBlk, BlkT, BlkS, BlkF, SECTOR } from "../../src/devices/virtio/blk.ts";
import { VirtioNet, type NetBackend, RX_QUEUE, TX_QUEUE } from "../../src/devices/virtio/net.ts";
import { RawImage } from "../../src/block/raw-image.ts";
import { memcpyRaw, IovecArray } from "../../ffi/io.ts";
import { readFd } from "../../ffi/libc.ts";
import { PersistError } from "../../src/persist/persist.ts";
import type { IrqRoute } from "../../src/kvm/vm.ts";
import type { VmLink } from "../../src/devices/pci/irq-routing.ts";
import { STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_ID_BLOCK, VIRTIO_ID_NET } from "../../src/devices/virtio/constants.ts";

const MiB = 1 << 20;
let mem: GuestMemory;
let dir: string;
beforeAll(() => {
  mem = GuestMemory.create([{ gpa: 0, size: 16 * MiB }]);
  dir = mkdtempSync(join(tmpdir(), "kiln-virtio-"));
});
afterAll(() => {
  mem.destroy();
  rmSync(dir, { recursive: true, force: true });
});

const DESC_F_NEXT = 1;
const DESC_F_WRITE = 2;
const DESC_F_INDIRECT = 4;

/** A driver-side split ring in guest memory (what Linux's virtio_ring does, minus everything else). */
class DriverRing {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  private nextDesc = 0;
  private availIdx = 0;
  lastUsed = 0;
  constructor(
    readonly m: GuestMemory,
    base: number,
    readonly size: number,
  ) {
    this.desc = base;
    this.avail = base + 16 * size;
    this.used = base + 0x1000 * Math.ceil((16 * size + 6 + 2 * size) / 0x1000);
    m.view(base, this.used + 8 * size + 6 - base)!.fill(0);
  }
  private dv(gpa: number, len: number): DataView {
    const v = this.m.view(gpa, len)!;
    return new DataView(v.buffer, v.byteOffset, len);
  }
  writeDesc(table: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const d = this.dv(table + 16 * i, 16);
    d.setBigUint64(0, BigInt(addr), true);
    d.setUint32(8, len, true);
    d.setUint16(12, flags, true);
    d.setUint16(14, next, true);
  }
  /** Add a chain of buffers; returns its head. */
  add(bufs: { gpa: number; len: number; write?: boolean }[]): number {
    const head = this.nextDesc;
    bufs.forEach((b, k) => {
      const i = (head + k) % this.size;
      const last = k === bufs.length - 1;
      this.writeDesc(this.desc, i, b.gpa, b.len, (b.write ? DESC_F_WRITE : 0) | (last ? 0 : DESC_F_NEXT), (i + 1) % this.size);
    });
    this.nextDesc = (head + bufs.length) % this.size;
    this.publish(head);
    return head;
  }
  publish(head: number): void {
    this.dv(this.avail + 4 + 2 * (this.availIdx % this.size), 2).setUint16(0, head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.dv(this.avail + 2, 2).setUint16(0, this.availIdx, true);
  }
  /** A chain whose head is one indirect descriptor pointing at a table at `table`. */
  addIndirect(table: number, bufs: { gpa: number; len: number; write?: boolean }[]): number {
    bufs.forEach((b, k) => this.writeDesc(table, k, b.gpa, b.len, (b.write ? DESC_F_WRITE : 0) | (k < bufs.length - 1 ? DESC_F_NEXT : 0), k + 1));
    const head = this.nextDesc;
    this.writeDesc(this.desc, head, table, 16 * bufs.length, DESC_F_INDIRECT, 0);
    this.nextDesc = (head + 1) % this.size;
    this.publish(head);
    return head;
  }
  usedIdx(): number {
    return this.dv(this.used + 2, 2).getUint16(0, true);
  }
  takeUsed(): { id: number; len: number }[] {
    const out = [];
    const end = this.usedIdx();
    while (this.lastUsed !== end) {
      const e = this.dv(this.used + 4 + 8 * (this.lastUsed % this.size), 8);
      out.push({ id: e.getUint32(0, true), len: e.getUint32(4, true) });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
  setAvailFlags(f: number): void {
    this.dv(this.avail, 2).setUint16(0, f, true);
  }
  setUsedEvent(v: number): void {
    this.dv(this.avail + 4 + 2 * this.size, 2).setUint16(0, v, true);
  }
  availEvent(): number {
    return this.dv(this.used + 4 + 8 * this.size, 2).getUint16(0, true);
  }
}

class FakeVm implements VmLink {
  ioeventfds: { fd: number; addr: number; len: number; datamatch?: number; deassign?: boolean }[] = [];
  irqfds: { fd: number; gsi: number }[] = [];
  lines: [number, boolean][] = [];
  routing: IrqRoute[] = [];
  ioeventfd(fd: number, addr: number, len: number, o: { datamatch?: number; deassign?: boolean } = {}): void {
    this.ioeventfds.push({ fd, addr, len, ...o });
  }
  irqfd(fd: number, gsi: number): void {
    this.irqfds.push({ fd, gsi });
  }
  irqLine(gsi: number, level: boolean): void {
    this.lines.push([gsi, level]);
  }
  setGsiRouting(routes: IrqRoute[]): void {
    this.routing = routes;
  }
}

/** How many times an eventfd was signalled since the last look (non-blocking read). */
function drainEventfd(fd: number): number {
  const b = new BigUint64Array(1);
  try {
    readFd(fd, new Uint8Array(b.buffer));
    return Number(b[0]);
  } catch {
    return 0;
  }
}

const noLog = () => {};

describe("Virtqueue", () => {
  test("pops direct and indirect chains, readable segments first", () => {
    const r = new DriverRing(mem, 0x100000, 8);
    const q = new Virtqueue(0, 8, mem);
    Object.assign(q, { size: 8, descAddr: r.desc, availAddr: r.avail, usedAddr: r.used, ready: true });
    q.activate(false);
    const c = new DescChain();
    expect(q.pop(c)).toBe(false);
    r.add([{ gpa: 0x200000, len: 16 }, { gpa: 0x201000, len: 512, write: true }, { gpa: 0x202000, len: 1, write: true }]);
    r.addIndirect(0x110000, [{ gpa: 0x203000, len: 100 }, { gpa: 0x204000, len: 200, write: true }]);
    expect(q.pending()).toBe(2);
    expect(q.pop(c)).toBe(true);
    expect([c.head, c.count, c.firstWritable, c.readableBytes, c.writableBytes]).toEqual([0, 3, 1, 16, 513]);
    expect(q.pop(c)).toBe(true);
    expect([c.head, c.count, c.readableBytes, c.writableBytes, c.gpa[1]]).toEqual([3, 2, 100, 200, 0x204000]);
    q.pushUsed(0, 513);
    q.pushUsed(3, 200);
    expect(r.usedIdx()).toBe(0); // not published yet
    expect(q.flushUsed()).toBe(true);
    expect(r.takeUsed()).toEqual([
      { id: 0, len: 513 },
      { id: 3, len: 200 },
    ]);
  });

  test("refuses broken chains: loops, out-of-RAM buffers, readable after writable", () => {
    const mk = () => {
      const r = new DriverRing(mem, 0x120000, 4);
      const q = new Virtqueue(0, 4, mem);
      Object.assign(q, { size: 4, descAddr: r.desc, availAddr: r.avail, usedAddr: r.used });
      q.activate(false);
      return { r, q };
    };
    const c = new DescChain();
    let { r, q } = mk();
    r.writeDesc(r.desc, 0, 0x200000, 8, DESC_F_NEXT, 1);
    r.writeDesc(r.desc, 1, 0x200000, 8, DESC_F_NEXT, 0);
    r.publish(0);
    expect(() => q.pop(c)).toThrow(VirtqueueError);
    ({ r, q } = mk());
    r.add([{ gpa: 32 * MiB, len: 8 }]);
    expect(() => q.pop(c)).toThrow(/not in guest RAM/);
    ({ r, q } = mk());
    r.add([{ gpa: 0x200000, len: 8, write: true }, { gpa: 0x201000, len: 8 }]);
    expect(() => q.pop(c)).toThrow(/readable segment after a device-writable/);
    ({ r, q } = mk());
    expect(() => Object.assign(q, { usedAddr: 15 * MiB + 0xffff0 }).activate(false)).toThrow(/used ring/);
  });

  test("interrupt suppression: NO_INTERRUPT flag, and used_event with EVENT_IDX", () => {
    const r = new DriverRing(mem, 0x130000, 8);
    const q = new Virtqueue(0, 8, mem);
    Object.assign(q, { descAddr: r.desc, availAddr: r.avail, usedAddr: r.used });
    q.activate(false);
    q.pushUsed(0, 1);
    q.flushUsed();
    expect(q.needsInterrupt()).toBe(true);
    r.setAvailFlags(1);
    expect(q.needsInterrupt()).toBe(false);

    const r2 = new DriverRing(mem, 0x140000, 8);
    const e = new Virtqueue(0, 8, mem);
    Object.assign(e, { descAddr: r2.desc, availAddr: r2.avail, usedAddr: r2.used });
    e.activate(true);
    r2.setUsedEvent(2); // interrupt when used idx passes 2
    e.pushUsed(0, 1);
    e.flushUsed();
    expect(e.needsInterrupt()).toBe(true); // the first one always
    e.pushUsed(1, 1);
    e.flushUsed();
    expect(e.needsInterrupt()).toBe(false); // idx 2: has not passed used_event yet
    e.pushUsed(2, 1);
    e.flushUsed();
    expect(e.needsInterrupt()).toBe(true); // idx 3 passed 2
  });

  test("setNotify: avail_event with EVENT_IDX, NO_NOTIFY otherwise; reports buffers that raced in", () => {
    const r = new DriverRing(mem, 0x150000, 8);
    const q = new Virtqueue(0, 8, mem);
    Object.assign(q, { descAddr: r.desc, availAddr: r.avail, usedAddr: r.used });
    q.activate(true);
    const c = new DescChain();
    r.add([{ gpa: 0x200000, len: 8 }]);
    expect(q.pop(c)).toBe(true);
    expect(q.setNotify(true)).toBe(false);
    expect(r.availEvent()).toBe(1);
    r.add([{ gpa: 0x200000, len: 8 }]);
    expect(q.setNotify(true)).toBe(true); // one arrived: the caller must look again
  });

  test("the used ring written by the device is marked dirty for migration", () => {
    const m = GuestMemory.create([{ gpa: 0, size: 4 * MiB }]);
    try {
      const r = new DriverRing(m, 0x10000, 8);
      const q = new Virtqueue(0, 8, m);
      Object.assign(q, { descAddr: r.desc, availAddr: r.avail, usedAddr: r.used });
      q.activate(false);
      m.startDirtyTracking();
      q.pushUsed(0, 1);
      q.flushUsed();
      const page = r.used / 4096;
      expect((m.userDirty![page >>> 5]! >>> (page & 31)) & 1).toBe(1);
      expect(m.userDirty!.reduce((n, w) => n + (w !== 0 ? 1 : 0), 0)).toBe(1);
    } finally {
      m.destroy();
    }
  });
});

/** A virtio-mmio transport and a guest-side view of its registers. */
function mmioDriver(t: VirtioMmioTransport) {
  const rd = (off: number) => t.mmioRead(off, 4);
  const wr = (off: number, v: number) => t.mmioWrite(off, 4, v);
  return {
    rd,
    wr,
    /** The spec's initialization sequence up to DRIVER_OK, with one ring per queue. */
    init(features: bigint, rings: DriverRing[]): number {
      wr(MmioReg.STATUS, 0);
      wr(MmioReg.STATUS, STATUS_ACKNOWLEDGE);
      wr(MmioReg.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
      wr(MmioReg.DRIVER_FEATURES_SEL, 0);
      wr(MmioReg.DRIVER_FEATURES, Number(features & 0xffffffffn));
      wr(MmioReg.DRIVER_FEATURES_SEL, 1);
      wr(MmioReg.DRIVER_FEATURES, Number(features >> 32n));
      wr(MmioReg.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
      rings.forEach((r, i) => {
        wr(MmioReg.QUEUE_SEL, i);
        wr(MmioReg.QUEUE_NUM, r.size);
        wr(MmioReg.QUEUE_DESC_LOW, r.desc);
        wr(MmioReg.QUEUE_DRIVER_LOW, r.avail);
        wr(MmioReg.QUEUE_DEVICE_LOW, r.used);
        wr(MmioReg.QUEUE_READY, 1);
      });
      wr(MmioReg.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
      return rd(MmioReg.STATUS);
    },
  };
}

function blkImage(name: string, bytes: number, o: { readOnly?: boolean; direct?: boolean } = {}): { path: string; image: RawImage } {
  const path = join(dir, name);
  const data = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) data[i] = (i * 31 + 7) & 0xff;
  writeFileSync(path, data);
  const image = RawImage.open({ path, readOnly: o.readOnly ?? false, direct: o.direct ?? false, lock: true, what: `-drive id=${name}`, log: noLog });
  return { path, image };
}

const V1 = 1n << 32n;
const EVENT_IDX = 1n << 29n;

describe("RawImage", () => {
  test("errors name the drive; a second writer is refused; a read-only image refuses writes", () => {
    expect(() => RawImage.open({ path: join(dir, "missing.img"), readOnly: false, direct: false, lock: true, what: "-drive id=x", log: noLog })).toThrow(
      `-drive id=x: file=${join(dir, "missing.img")}: no such file`,
    );
    const { path, image } = blkImage("locked.img", 8192);
    try {
      expect(() => RawImage.open({ path, readOnly: false, direct: false, lock: true, what: "-drive id=y", log: noLog })).toThrow(/in use by another process/);
      // Without taking the lock (a migration destination before it runs) it opens; locking then fails.
      const late = RawImage.open({ path, readOnly: true, direct: false, lock: false, what: "-drive id=z", log: noLog });
      expect(() => late.lock()).toThrow(/in use/);
      image.unlock();
      late.lock();
      expect(late.isLocked).toBe(true);
      const iov = new IovecArray(1);
      iov.push(mem.hostAddress(0x700000, 512), 512);
      expect(late.writev(iov, 0)).toBe(-30); // EROFS
      late.close();
    } finally {
      image.close();
    }
  });

  test("more segments than one preadv takes (IOV_MAX) are split", () => {
    const { path, image } = blkImage("many.img", 1500 * 512);
    try {
      const iov = new IovecArray(1500);
      for (let i = 0; i < 1500; i++) iov.push(mem.hostAddress(0x800000 + i * 1024, 512), 512); // every other 512 bytes
      expect(image.readv(iov, 0)).toBe(1500 * 512);
      const f = readFileSync(path);
      expect(Buffer.from(mem.view(0x800000 + 1499 * 1024, 512)!).equals(f.subarray(1499 * 512))).toBe(true);
    } finally {
      image.close();
    }
  });
});

describe("virtio-mmio transport", () => {
  test("identity registers, feature negotiation, DRIVER_OK, reset", () => {
    const { image } = blkImage("ident.img", 64 * 1024);
    const t = new VirtioMmioTransport(new VirtioBlk({ image, readOnly: false, serial: null, numQueues: 1, queueSize: 64 }), mem, noLog, 0xd0000000, 16);
    try {
      const d = mmioDriver(t);
      expect(d.rd(MmioReg.MAGIC)).toBe(MMIO_MAGIC);
      expect(d.rd(MmioReg.VERSION)).toBe(2);
      expect(d.rd(MmioReg.DEVICE_ID)).toBe(VIRTIO_ID_BLOCK);
      d.wr(MmioReg.DEVICE_FEATURES_SEL, 1);
      expect(d.rd(MmioReg.DEVICE_FEATURES) & 1).toBe(1); // VERSION_1
      d.wr(MmioReg.QUEUE_SEL, 0);
      expect(d.rd(MmioReg.QUEUE_NUM_MAX)).toBe(64);
      d.wr(MmioReg.QUEUE_SEL, 1);
      expect(d.rd(MmioReg.QUEUE_NUM_MAX)).toBe(0);
      // capacity in the configuration space, read as two 32-bit halves
      expect(t.mmioRead(MmioReg.CONFIG, 4)).toBe(128);
      expect(t.mmioRead(MmioReg.CONFIG + 4, 4)).toBe(0);

      // A legacy driver (no VERSION_1) does not get FEATURES_OK.
      d.wr(MmioReg.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
      d.wr(MmioReg.DRIVER_FEATURES_SEL, 0);
      d.wr(MmioReg.DRIVER_FEATURES, 0);
      d.wr(MmioReg.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
      expect(d.rd(MmioReg.STATUS) & STATUS_FEATURES_OK).toBe(0);
      // Nor does one asking for a feature the device does not offer (GUEST_ANNOUNCE-like bit 21).
      d.wr(MmioReg.STATUS, 0);
      const r = new DriverRing(mem, 0x160000, 64);
      expect(d.init(V1 | (1n << 21n), [r]) & STATUS_FEATURES_OK).toBe(0);
      const st = d.init(V1 | EVENT_IDX, [r]);
      expect(st).toBe(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
      expect(t.queues[0]!.active).toBe(true);
      d.wr(MmioReg.STATUS, 0);
      expect(d.rd(MmioReg.STATUS)).toBe(0);
      expect(t.queues[0]!.active).toBe(false);
      expect(t.driverFeatures).toBe(0n);
    } finally {
      t.close();
    }
  });

  test("attachVm registers one ioeventfd per queue (QueueNotify, matched on the index) and the irqfd", () => {
    const { image } = blkImage("att.img", 4096);
    const t = new VirtioMmioTransport(new VirtioBlk({ image, readOnly: false, serial: null, numQueues: 2, queueSize: 8 }), mem, noLog, 0xd0001000, 17);
    try {
      const vm = new FakeVm();
      t.attachVm(vm);
      expect(vm.irqfds).toEqual([{ fd: t.irqFd.fd, gsi: 17 }]);
      expect(vm.ioeventfds.map((e) => [e.addr, e.len, e.datamatch])).toEqual([
        [0xd0001050, 4, 0],
        [0xd0001050, 4, 1],
      ]);
    } finally {
      t.close();
    }
  });

  test("a driver that points a ring outside RAM gets DEVICE_NEEDS_RESET, not a crash", () => {
    const { image } = blkImage("bad.img", 4096);
    const t = new VirtioMmioTransport(new VirtioBlk({ image, readOnly: false, serial: null, numQueues: 1, queueSize: 8 }), mem, noLog, 0xd0000000, 16);
    try {
      const d = mmioDriver(t);
      const r = new DriverRing(mem, 0x170000, 8);
      Object.assign(r, { used: 64 * MiB });
      expect(d.init(V1, [r]) & STATUS_DEVICE_NEEDS_RESET).toBe(STATUS_DEVICE_NEEDS_RESET);
      expect(d.rd(MmioReg.INTERRUPT_STATUS) & 2).toBe(2); // a configuration-change interrupt says so
    } finally {
      t.close();
    }
  });
});

/** Lay out a virtio-blk request at `at`: header, data, status. Returns the chain's buffers. */
function blkRequest(at: number, type: number, sector: number, dataLen: number, dataWritable: boolean) {
  const h = new DataView(mem.view(at, 16)!.buffer, mem.view(at, 16)!.byteOffset, 16);
  h.setUint32(0, type, true);
  h.setUint32(4, 0, true);
  h.setBigUint64(8, BigInt(sector), true);
  mem.view(at + 0x1000, 1)![0] = 0xee;
  const bufs: { gpa: number; len: number; write?: boolean }[] = [{ gpa: at, len: 16 }];
  if (dataLen) bufs.push({ gpa: at + 0x2000, len: dataLen, write: dataWritable });
  bufs.push({ gpa: at + 0x1000, len: 1, write: true });
  return { bufs, status: () => mem.view(at + 0x1000, 1)![0], data: () => mem.view(at + 0x2000, dataLen)! };
}

describe("virtio-blk", () => {
  function setup(name: string, o: { readOnly?: boolean; direct?: boolean; serial?: string } = {}) {
    const { path, image } = blkImage(name, 256 * 1024, o);
    const blk = new VirtioBlk({ image, readOnly: o.readOnly ?? false, serial: o.serial ?? null, numQueues: 1, queueSize: 16 });
    const t = new VirtioMmioTransport(blk, mem, noLog, 0xd0000000, 16);
    t.resume(); // a running machine
    const r = new DriverRing(mem, 0x180000, 16);
    expect(mmioDriver(t).init(V1 | EVENT_IDX | (1n << BigInt(BlkF.FLUSH)), [r]) & STATUS_DRIVER_OK).toBe(STATUS_DRIVER_OK);
    const run = (req: ReturnType<typeof blkRequest>) => {
      r.add(req.bufs);
      t.kick(0);
      return r.takeUsed();
    };
    return { path, blk, t, r, run };
  }

  test("read, write, flush and get-id go straight between the image and guest buffers", () => {
    const { path, t, run, blk } = setup("rw.img", { serial: "kiln-disk-1" });
    try {
      const rd = blkRequest(0x300000, BlkT.IN, 3, 1024, true);
      expect(run(rd)).toEqual([{ id: 0, len: 1025 }]);
      expect(rd.status()).toBe(BlkS.OK);
      const file = readFileSync(path);
      expect(Buffer.from(rd.data()).equals(file.subarray(3 * SECTOR, 5 * SECTOR))).toBe(true);

      const wr = blkRequest(0x310000, BlkT.OUT, 10, 512, false);
      wr.data().fill(0x5a);
      expect(run(wr)[0]!.len).toBe(1);
      expect(wr.status()).toBe(BlkS.OK);
      const fl = blkRequest(0x320000, BlkT.FLUSH, 0, 0, false);
      run(fl);
      expect(fl.status()).toBe(BlkS.OK);
      expect(readFileSync(path).subarray(10 * SECTOR, 11 * SECTOR).every((b) => b === 0x5a)).toBe(true);

      const id = blkRequest(0x330000, BlkT.GET_ID, 0, 20, true);
      run(id);
      expect(id.status()).toBe(BlkS.OK);
      expect(Buffer.from(id.data()).toString("latin1")).toBe("kiln-disk-1\0\0\0\0\0\0\0\0\0");
      expect(blk.stats.reads).toBe(1);
      expect(blk.stats.writes).toBe(1);
    } finally {
      t.close();
    }
  });

  test("beyond the disk, or a partial sector: IOERR; unknown request: UNSUPP", () => {
    const { t, run } = setup("bounds.img");
    try {
      const past = blkRequest(0x300000, BlkT.IN, 511, 1024, true);
      run(past);
      expect(past.status()).toBe(BlkS.IOERR);
      const partial = blkRequest(0x310000, BlkT.OUT, 0, 100, false);
      run(partial);
      expect(partial.status()).toBe(BlkS.IOERR);
      const odd = blkRequest(0x320000, 99, 0, 0, false);
      run(odd);
      expect(odd.status()).toBe(BlkS.UNSUPP);
    } finally {
      t.close();
    }
  });

  test("a read-only drive answers writes with IOERR and its file never changes", () => {
    const { path, t, run, blk } = setup("ro.img", { readOnly: true });
    try {
      expect(blk.features & (1n << BigInt(BlkF.RO))).not.toBe(0n);
      const before = readFileSync(path);
      const wr = blkRequest(0x300000, BlkT.OUT, 0, 4096, false);
      wr.data().fill(0x11);
      run(wr);
      expect(wr.status()).toBe(BlkS.IOERR);
      const wz = blkRequest(0x310000, BlkT.WRITE_ZEROES, 0, 16, false);
      run(wz);
      expect(wz.status()).toBe(BlkS.IOERR);
      expect(readFileSync(path).equals(before)).toBe(true);
    } finally {
      t.close();
    }
  });

  test("write-zeroes and discard", () => {
    const { path, t, run } = setup("wz.img");
    try {
      const wz = blkRequest(0x300000, BlkT.WRITE_ZEROES, 0, 16, false);
      const seg = new DataView(wz.data().buffer, wz.data().byteOffset, 16);
      seg.setBigUint64(0, 4n, true);
      seg.setUint32(8, 8, true); // sectors 4..11
      seg.setUint32(12, 0, true);
      run(wz);
      expect(wz.status()).toBe(BlkS.OK);
      const f = readFileSync(path);
      expect(f.subarray(4 * SECTOR, 12 * SECTOR).every((b) => b === 0)).toBe(true);
      expect(f[12 * SECTOR]).not.toBe(0);
      const dc = blkRequest(0x310000, BlkT.DISCARD, 0, 16, false);
      const s2 = new DataView(dc.data().buffer, dc.data().byteOffset, 16);
      s2.setBigUint64(0, 64n, true);
      s2.setUint32(8, 8, true);
      s2.setUint32(12, 0, true); // flags: discard takes no unmap bit
      run(dc);
      expect(dc.status()).toBe(BlkS.OK);
    } finally {
      t.close();
    }
  });

  test("direct=on: misaligned guest buffers go through the bounce buffer, aligned ones straight", () => {
    const { path, t, run, blk } = setup("direct.img", { direct: true });
    try {
      expect(blk.image.direct).toBe(true); // /tmp is not tmpfs here
      const base = 0x340000;
      // Data at an odd address and 512-byte granularity: not O_DIRECT-able as is.
      const wr = blkRequest(base, BlkT.OUT, 1, 512, false);
      wr.bufs[1]!.gpa += 3;
      mem.view(wr.bufs[1]!.gpa, 512)!.fill(0x77);
      run(wr);
      expect(wr.status()).toBe(BlkS.OK);
      const f = readFileSync(path);
      expect(f.subarray(SECTOR, 2 * SECTOR).every((b) => b === 0x77)).toBe(true);
      expect(f[0]).toBe(7); // the neighbours survived the read-modify-write
      expect(f[2 * SECTOR]).toBe((2 * SECTOR * 31 + 7) & 0xff);
      const rd = blkRequest(base + 0x10000, BlkT.IN, 0, 4096, true);
      run(rd);
      expect(rd.status()).toBe(BlkS.OK);
      expect(Buffer.from(rd.data()).equals(f.subarray(0, 4096))).toBe(true);
    } finally {
      t.close();
    }
  });

  test("state survives save and restore into a fresh device; a bad state is refused", () => {
    const a = setup("mig-a.img");
    const { image } = blkImage("mig-b.img", 256 * 1024);
    const b = new VirtioMmioTransport(new VirtioBlk({ image, readOnly: false, serial: null, numQueues: 1, queueSize: 16 }), mem, noLog, 0xd0000000, 16);
    try {
      const r1 = blkRequest(0x300000, BlkT.IN, 0, 512, true);
      a.run(r1);
      // Queued while "paused": must be served by the destination after restore.
      a.t.quiesce("finish-migrate");
      const r2 = blkRequest(0x310000, BlkT.IN, 1, 512, true);
      a.r.add(r2.bufs);
      a.t.kick(0);
      expect(r2.status()).toBe(0xee);
      const saved = JSON.parse(JSON.stringify(a.t.save()));
      expect(() => b.restore({ ...saved, core: { ...saved.core, driverFeatures: "ffffffffffff" } }, 1)).toThrow(PersistError);
      expect(() => b.restore({ ...saved, core: { ...saved.core, queues: [{ ...saved.core.queues[0], size: 12 }] } }, 1)).toThrow(/power of 2/);
      expect(() => b.restore(saved, 2)).toThrow(/version/);
      b.restore(saved, 1);
      b.resume();
      expect(r2.status()).toBe(BlkS.OK);
      expect(a.r.takeUsed()).toEqual([{ id: 3, len: 513 }]);
    } finally {
      a.t.close();
      b.close();
    }
  });
});

/** A tap stand-in: frames queued for the guest, frames the guest sent. */
class FakeTap implements NetBackend {
  readonly ifname = "fake0";
  toGuest: Uint8Array[] = [];
  fromGuest: Uint8Array[] = [];
  private cb: () => void = () => {};
  readv(iov: Uint8Array, count: number): number {
    const f = this.toGuest.shift();
    if (!f) return -11;
    const v = new IovecArray(count);
    v.bytes.set(iov.subarray(0, count * 16));
    v.count = count;
    let off = 0;
    for (let i = 0; i < count && off < f.length; i++) {
      const n = Math.min(v.len(i), f.length - off);
      memcpyRaw(v.addr(i), IovecArray.addressOf(f.subarray(off)), n);
      off += n;
    }
    return f.length;
  }
  writev(iov: Uint8Array, count: number): number {
    const v = new IovecArray(count);
    v.bytes.set(iov.subarray(0, count * 16));
    v.count = count;
    let total = 0;
    for (let i = 0; i < count; i++) total += v.len(i);
    const out = new Uint8Array(total);
    let off = 0;
    for (let i = 0; i < count; i++) {
      memcpyRaw(IovecArray.addressOf(out.subarray(off)), v.addr(i), v.len(i));
      off += v.len(i);
    }
    this.fromGuest.push(out);
    return total;
  }
  onReadable(cb: () => void): void {
    this.cb = cb;
  }
  signalling = true;
  setSignals(on: boolean): void {
    this.signalling = on;
  }
  /** A frame (12-byte header + payload) arrives on the tap (and signals, unless the device turned that off). */
  deliver(frame: Uint8Array): void {
    this.toGuest.push(frame);
    if (this.signalling) this.cb();
  }
  close(): void {}
}

describe("virtio-net", () => {
  function setup() {
    const tap = new FakeTap();
    const net = new VirtioNet({ tap, mac: "52:54:00:12:34:56", queueSize: 8 });
    const t = new VirtioMmioTransport(net, mem, noLog, 0xd0000000, 16);
    t.resume();
    const rx = new DriverRing(mem, 0x400000, 8);
    const tx = new DriverRing(mem, 0x410000, 8);
    expect(mmioDriver(t).init(V1 | EVENT_IDX | (1n << 5n) | (1n << 16n), [rx, tx]) & STATUS_DRIVER_OK).toBe(STATUS_DRIVER_OK);
    return { tap, net, t, rx, tx };
  }
  const frame = (len: number, fill: number) => {
    const f = new Uint8Array(12 + len);
    f.fill(fill, 12);
    f[10] = 0x99; // num_buffers as the tap leaves it: the device must set 1
    return f;
  };

  test("MAC and link status in the configuration space", () => {
    const { t, net } = setup();
    try {
      expect(net.type).toBe(VIRTIO_ID_NET);
      expect([0, 1, 2, 3, 4, 5].map((i) => t.mmioRead(MmioReg.CONFIG + i, 1))).toEqual([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
      expect(t.mmioRead(MmioReg.CONFIG + 6, 2)).toBe(1);
    } finally {
      t.close();
    }
  });

  test("receive: frames land in the guest's buffers with num_buffers = 1; oversized ones are dropped and counted", () => {
    const { tap, net, t, rx } = setup();
    try {
      // No buffers yet: the device turned the tap's signals off (frames wait in the tap).
      expect(tap.signalling).toBe(false);
      tap.deliver(frame(100, 0xab));
      expect(rx.usedIdx()).toBe(0);
      rx.add([{ gpa: 0x500000, len: 1536, write: true }]);
      rx.add([{ gpa: 0x501000, len: 100, write: true }]); // too small for the next frame
      rx.add([{ gpa: 0x502000, len: 1536, write: true }]);
      t.kick(RX_QUEUE);
      expect(rx.takeUsed()).toEqual([{ id: 0, len: 112 }]);
      expect(tap.signalling).toBe(true);
      const got = mem.view(0x500000, 112)!;
      expect(got[10]).toBe(1);
      expect(got[11]).toBe(0);
      expect(got.subarray(12).every((b) => b === 0xab)).toBe(true);
      tap.deliver(frame(1000, 0xcd));
      // The 100-byte buffer stays available; the frame that does not fit it is dropped and counted.
      expect(net.stats.rxDroppedTooBig).toBe(1);
      expect(rx.takeUsed()).toEqual([]);
      tap.deliver(frame(60, 0xef));
      expect(rx.takeUsed()).toEqual([{ id: 1, len: 72 }]);
      expect(net.stats.rxFrames).toBe(2);
    } finally {
      t.close();
    }
  });

  test("transmit: each chain goes to the tap as one frame, header included", () => {
    const { tap, net, t, tx } = setup();
    try {
      mem.view(0x600000, 12)!.fill(0);
      mem.view(0x600100, 60)!.fill(0x42);
      tx.add([{ gpa: 0x600000, len: 12 }, { gpa: 0x600100, len: 60 }]);
      t.kick(TX_QUEUE);
      expect(tx.takeUsed()).toEqual([{ id: 0, len: 0 }]);
      expect(tap.fromGuest.length).toBe(1);
      expect(tap.fromGuest[0]!.length).toBe(72);
      expect(tap.fromGuest[0]!.subarray(12).every((b) => b === 0x42)).toBe(true);
      expect(net.stats.txFrames).toBe(1);
    } finally {
      t.close();
    }
  });

  test("paused: nothing moves; resume delivers what waited; a restore announces the MAC", async () => {
    const { tap, net, t, rx } = setup();
    try {
      rx.add([{ gpa: 0x500000, len: 1536, write: true }]);
      t.quiesce("paused");
      tap.deliver(frame(100, 1));
      expect(rx.usedIdx()).toBe(0);
      const saved = JSON.parse(JSON.stringify(t.save()));
      t.restore(saved, 1);
      t.resume();
      expect(rx.takeUsed()).toEqual([{ id: 0, len: 112 }]);
      // RARP announcements follow on timers (0, 50, 150, ... ms).
      for (let i = 0; i < 100 && net.stats.announcements < 2; i++) await Bun.sleep(5);
      const rarp = tap.fromGuest.find((f) => f[12 + 12] === 0x80 && f[12 + 13] === 0x35);
      expect(rarp).toBeDefined();
      expect(Array.from(rarp!.subarray(12 + 6, 12 + 12))).toEqual([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
      expect(Array.from(rarp!.subarray(12, 12 + 6))).toEqual([255, 255, 255, 255, 255, 255]);
      expect(net.stats.announcements).toBeGreaterThanOrEqual(2);
    } finally {
      t.close();
    }
  });
});

test("the irqfd is signalled when the driver wants an interrupt, and InterruptStatus says why", () => {
  const { image } = blkImage("irq.img", 8192);
  const t = new VirtioMmioTransport(new VirtioBlk({ image, readOnly: false, serial: null, numQueues: 1, queueSize: 8 }), mem, noLog, 0xd0000000, 16);
  try {
    t.resume();
    const r = new DriverRing(mem, 0x190000, 8);
    mmioDriver(t).init(V1, [r]);
    drainEventfd(t.irqFd.fd);
    r.add(blkRequest(0x300000, BlkT.IN, 0, 512, true).bufs);
    t.kick(0);
    expect(drainEventfd(t.irqFd.fd)).toBe(1);
    expect(t.mmioRead(MmioReg.INTERRUPT_STATUS, 4)).toBe(1);
    t.mmioWrite(MmioReg.INTERRUPT_ACK, 4, 1);
    expect(t.mmioRead(MmioReg.INTERRUPT_STATUS, 4)).toBe(0);
    r.setAvailFlags(1); // NO_INTERRUPT
    r.add(blkRequest(0x310000, BlkT.IN, 0, 512, true).bufs);
    t.kick(0);
    expect(drainEventfd(t.irqFd.fd)).toBe(0);
  } finally {
    t.close();
  }
});
