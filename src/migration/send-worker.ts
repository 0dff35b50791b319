/**
 * The migration source's data path, in its own thread so the main thread keeps serving vCPU exits and
 * QMP during a transfer. It owns the outgoing file descriptor (blocking), collects KVM's dirty log
 * (plus kiln's own dirty bitmap), skips zero pages, and sends guest pages straight from the memfd
 * mapping with writev: no copy of guest memory in JavaScript.
 *
 * Commands arrive one at a time by postMessage and each gets exactly one reply (see SendCommand).
 */
import { GuestMemory, WINDOW_SIZE } from "../memory/guest-memory.ts";
import { trace } from "../util/trace.ts";
import { Vm } from "../kvm/vm.ts";
import { open, munmap, O_WRONLY, O_CREAT, O_TRUNC, close as closeFdLibc } from "../../ffi/libc.ts";
import { connectTo, lseekRaw, pollFd, sendWithFd, SEEK_DATA, SEEK_HOLE, POLLIN, tuneStream } from "../../ffi/socket.ts";
import { IovecList, readExact, writeAll, writevAll, TransportError } from "./fdio.ts";
import { SCTL_CANCEL, type SendCommand, type SendReply, type SendStats, type SendTarget } from "./worker-protocol.ts";
import {
  LIMITS,
  PAGE_SIZE,
  RAM_HEAD_SIZE,
  Rec,
  RECORD_HEADER_SIZE,
  RUN_DATA,
  RUN_DESC_SIZE,
  RUN_ZERO,
  decodeRecordHeader,
  record,
  writeRecordHeader,
} from "./wire.ts";

declare const self: Worker;

class Cancelled extends Error {}

let mem: GuestMemory;
let vm: Vm;
let ctl: Int32Array;
let userDirty: Int32Array | null = null;
let fd = -1;
let maxBandwidth = 0;
/** Pages (memfd-offset order) dirtied since they were last sent. */
let pending: Int32Array;
/** KVM's per-slot bitmaps (u64 words). */
let kvmBitmaps: BigUint64Array[] = [];
let windows: Int32Array[] = [];

function checkCancel(): void {
  if (Atomics.load(ctl, SCTL_CANCEL) !== 0) throw new Cancelled("cancelled");
}

function pageIsZero(offset: number): boolean {
  const wi = Math.floor(offset / WINDOW_SIZE);
  let w = windows[wi];
  if (!w) {
    const v = mem.viewAtOffset(wi * WINDOW_SIZE, Math.min(WINDOW_SIZE, mem.size - wi * WINDOW_SIZE))!;
    w = new Int32Array(v.buffer, v.byteOffset, v.byteLength >> 2);
    windows[wi] = w;
  }
  const start = (offset - wi * WINDOW_SIZE) >> 2;
  for (let i = start, end = start + (PAGE_SIZE >> 2); i < end; i += 4) {
    if ((w[i]! | w[i + 1]! | w[i + 2]! | w[i + 3]!) !== 0) return false;
  }
  return true;
}

/** Batches runs into RAM records and writes them, honouring max-bandwidth. */
class RamWriter {
  private readonly head = new Uint8Array(RECORD_HEADER_SIZE + RAM_HEAD_SIZE + LIMITS.runsPerRecord * RUN_DESC_SIZE);
  private readonly hv = new DataView(this.head.buffer);
  private runs = 0;
  private dataPages = 0;
  private readonly iov = new IovecList();
  private runStartOff = -1;
  private runPages = 0;
  private runKind = RUN_DATA;
  private runGpa = 0;
  readonly stats: SendStats = { bytes: 0, normalPages: 0, zeroPages: 0, ms: 0 };
  private readonly t0 = performance.now();

  /** Add one page (memfd offset `off`, guest address `gpa`); zero pages become ZERO runs when `sendZero`. */
  page(off: number, gpa: number, sendZero: boolean): void {
    const zero = pageIsZero(off);
    if (zero) {
      this.stats.zeroPages++;
      if (!sendZero) {
        this.endRun();
        return;
      }
    }
    const kind = zero ? RUN_ZERO : RUN_DATA;
    if (this.runPages > 0 && (kind !== this.runKind || gpa !== this.runGpa + this.runPages * PAGE_SIZE)) this.endRun();
    if (this.runPages === 0) {
      this.runStartOff = off;
      this.runGpa = gpa;
      this.runKind = kind;
    }
    this.runPages++;
    if (kind === RUN_DATA) {
      this.stats.normalPages++;
      if (this.dataPages + this.runPages >= LIMITS.pagesPerRecord) this.endRun();
    }
  }

  private endRun(): void {
    if (this.runPages === 0) return;
    const o = RECORD_HEADER_SIZE + RAM_HEAD_SIZE + this.runs * RUN_DESC_SIZE;
    this.hv.setBigUint64(o, BigInt(this.runGpa), true);
    this.hv.setUint32(o + 8, this.runPages, true);
    this.hv.setUint32(o + 12, this.runKind, true);
    this.runs++;
    if (this.runKind === RUN_DATA) {
      this.iov.addRaw(mem.hostAddr + this.runStartOff, this.runPages * PAGE_SIZE);
      this.dataPages += this.runPages;
    }
    this.runPages = 0;
    if (this.runs >= LIMITS.runsPerRecord || this.dataPages >= LIMITS.pagesPerRecord || this.iov.full) this.flush();
  }

  flush(): void {
    this.endRun();
    if (this.runs === 0) return;
    const tableLen = RAM_HEAD_SIZE + this.runs * RUN_DESC_SIZE;
    writeRecordHeader(this.hv, 0, Rec.RAM, tableLen + this.dataPages * PAGE_SIZE);
    this.hv.setUint32(RECORD_HEADER_SIZE, this.runs, true);
    this.hv.setUint32(RECORD_HEADER_SIZE + 4, 0, true);
    const list = new IovecList();
    list.addBuffer(this.head.subarray(0, RECORD_HEADER_SIZE + tableLen));
    const data = this.iov;
    for (let i = 0; i < data.count; i++) list.addRaw(Number(data.iov[i * 2]!), Number(data.iov[i * 2 + 1]!), false);
    writevAll(fd, list);
    this.stats.bytes += list.bytes;
    this.runs = 0;
    this.dataPages = 0;
    this.iov.reset();
    this.throttle();
    checkCancel();
  }

  private throttle(): void {
    if (maxBandwidth <= 0) return;
    const due = (this.stats.bytes / maxBandwidth) * 1000;
    const elapsed = performance.now() - this.t0;
    // Sleeping on the cancel word itself: a cancel that came before this wait must not be missed.
    if (due > elapsed) Atomics.wait(ctl, SCTL_CANCEL, 0, due - elapsed);
  }

  finish(): SendStats {
    this.flush();
    this.stats.ms = performance.now() - this.t0;
    return this.stats;
  }
}

/** Every page of RAM that holds data: the memfd's data extents (holes were never written and read as zero). */
function sendFull(): SendStats {
  const w = new RamWriter();
  for (const r of mem.regions) {
    let off = r.offset;
    const end = r.offset + r.size;
    while (off < end) {
      const d = lseekRaw(mem.fd, off, SEEK_DATA);
      if (d < 0 || d >= end) break;
      let h = lseekRaw(mem.fd, d, SEEK_HOLE);
      if (h < 0 || h > end) h = end;
      for (let p = d; p < h; p += PAGE_SIZE) w.page(p, r.gpa + (p - r.offset), false);
      off = h;
    }
    // Pages sent now need not be sent again unless dirtied after this point (the dirty log says so).
  }
  return w.finish();
}

function sync(): number {
  for (const r of mem.regions) {
    const bm = kvmBitmaps[r.slot]!;
    vm.getDirtyLog(r.slot, bm);
    // The same bitmap as 32-bit words (little-endian: low word first), so no BigInt per word.
    const words = new Int32Array(bm.buffer, bm.byteOffset, bm.length * 2);
    // Regions start at page offsets that are multiples of 64 pages (they are MiB-aligned).
    const base = r.offset / PAGE_SIZE / 32;
    for (let i = 0; i < words.length; i++) {
      const w = words[i]!;
      if (w !== 0) pending[base + i] = pending[base + i]! | w;
    }
  }
  if (userDirty) {
    for (let i = 0; i < userDirty.length; i++) {
      if (userDirty[i] !== 0) pending[i] = pending[i]! | Atomics.exchange(userDirty, i, 0);
    }
  }
  let n = 0;
  for (let i = 0; i < pending.length; i++) {
    let v = pending[i]!;
    while (v !== 0) {
      v &= v - 1;
      n++;
    }
  }
  return n;
}

function sendPending(): SendStats {
  const w = new RamWriter();
  for (const r of mem.regions) {
    const first = r.offset / PAGE_SIZE;
    const last = first + r.size / PAGE_SIZE;
    for (let wi = first >>> 5; wi <= (last - 1) >>> 5; wi++) {
      let v = pending[wi]!;
      if (v === 0) continue;
      pending[wi] = 0;
      while (v !== 0) {
        const b = 31 - Math.clz32(v & -v);
        v &= v - 1;
        const p = wi * 32 + b;
        if (p < first || p >= last) continue;
        w.page(p * PAGE_SIZE, r.gpa + (p - first) * PAGE_SIZE, true);
      }
    }
  }
  return w.finish();
}

function openTarget(t: SendTarget): number {
  switch (t.kind) {
    case "socket":
      try {
        const s = connectTo(t.addr, () => Atomics.load(ctl, SCTL_CANCEL) !== 0);
        tuneStream(s, 4 << 20);
        return s;
      } catch (e) {
        const m = (e as Error).message.replace(/^connect\([^)]*\): \w+ \((.*)\)$/, "$1");
        throw new TransportError(`Failed to connect to '${t.display}': ${m}`);
      }
    case "file":
      try {
        return open(t.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600);
      } catch (e) {
        throw new TransportError(`Failed to open '${t.path}': ${(e as Error).message}`);
      }
    case "fd":
      return t.fd;
  }
}

function awaitResponse(timeoutMs: number): { rtype: number; text: string } {
  const r = pollFd(fd, POLLIN, timeoutMs);
  if (r === 0) throw new TransportError(`the destination did not answer within ${timeoutMs} ms`);
  if (r < 0) throw new TransportError("waiting for the destination failed");
  const head = readExact(fd, RECORD_HEADER_SIZE, "return path", true);
  if (!head) throw new TransportError("the destination closed the connection");
  const { type, length } = decodeRecordHeader(head);
  if (length > LIMITS.errorBytes) throw new TransportError(`the destination sent an oversized answer (${length} bytes)`);
  const body = readExact(fd, length, "return path")!;
  return { rtype: type, text: new TextDecoder().decode(body) };
}

function handle(msg: SendCommand): SendReply {
  switch (msg.type) {
    case "init":
      mem = GuestMemory.attach(msg.memory);
      vm = new Vm(msg.vmFd);
      ctl = new Int32Array(msg.ctl);
      userDirty = msg.userDirty ? new Int32Array(msg.userDirty) : null;
      maxBandwidth = msg.maxBandwidth;
      pending = new Int32Array(Math.ceil(mem.size / PAGE_SIZE / 32) + 2);
      kvmBitmaps = [];
      for (const r of mem.regions) kvmBitmaps[r.slot] = new BigUint64Array(Math.ceil(r.size / PAGE_SIZE / 64));
      return { type: "ok" };
    case "open":
      fd = openTarget(msg.target);
      return { type: "opened", fd };
    case "write":
      writeAll(fd, msg.bytes);
      return { type: "ok" };
    case "sync":
      return { type: "synced", dirtyPages: sync() };
    case "send":
      return { type: "sent", stats: msg.full ? sendFull() : sendPending() };
    case "await": {
      const r = awaitResponse(msg.timeoutMs);
      if (msg.commitOn !== undefined && r.rtype === msg.commitOn) {
        trace("src.loaded");
        writeAll(fd, record(Rec.COMMIT));
      }
      return { type: "response", ...r };
    }
    case "bandwidth":
      maxBandwidth = msg.bytesPerSec;
      return { type: "ok" };
    case "send-memfd": {
      const payload = new Uint8Array(8);
      new DataView(payload.buffer).setBigUint64(0, BigInt(mem.size), true);
      sendWithFd(fd, record(Rec.MEMFD, payload), mem.fd);
      return { type: "ok" };
    }
    case "unmap":
      munmap(msg.addr, msg.len);
      return { type: "ok" };
    case "close":
      if (fd >= 0) closeFdLibc(fd);
      fd = -1;
      return { type: "ok" };
  }
}

self.onmessage = (ev: MessageEvent<SendCommand>) => {
  let reply: SendReply;
  try {
    reply = handle(ev.data);
  } catch (e) {
    const cancelled = e instanceof Cancelled || Atomics.load(ctl, SCTL_CANCEL) !== 0;
    reply = { type: "error", message: (e as Error).message, cancelled };
  }
  self.postMessage(reply);
};
