/**
 * The port-I/O and MMIO buses: where forwarded vCPU exits find their device model. Unclaimed ports read
 * as all ones and swallow writes, as on a PC; the first such access per address is reported once.
 */
import type { AccessSize, MmioDevice, PioDevice } from "./bus.ts";
import type { ExitHandler } from "../vmm/exit-server.ts";

export class BusConflictError extends Error {
  constructor(what: string) {
    super(what);
    this.name = "BusConflictError";
  }
}

interface PioEntry {
  base: number;
  len: number;
  dev: PioDevice;
  name: string;
}

interface MmioEntry {
  base: number;
  len: number;
  dev: MmioDevice;
  name: string;
}

const ONES = [0, 0xff, 0xffff, 0, 0xffffffff];

export class Buses implements ExitHandler {
  private readonly pioMap = new Int16Array(0x10000).fill(-1);
  private readonly pioDevs: PioEntry[] = [];
  private readonly mmioDevs: MmioEntry[] = [];
  private readonly warned = new Set<string>();

  constructor(private readonly onUnclaimed: (what: string) => void = () => {}) {}

  registerPio(base: number, len: number, dev: PioDevice, name: string): void {
    for (let p = base; p < base + len; p++) {
      const owner = this.pioMap[p]!;
      if (owner >= 0) throw new BusConflictError(`I/O port 0x${p.toString(16)} of ${name} is already used by ${this.pioDevs[owner]!.name}`);
    }
    const idx = this.pioDevs.push({ base, len, dev, name }) - 1;
    this.pioMap.fill(idx, base, base + len);
  }

  registerMmio(base: number, len: number, dev: MmioDevice, name: string): void {
    for (const e of this.mmioDevs) {
      if (base < e.base + e.len && e.base < base + len) {
        throw new BusConflictError(`MMIO range 0x${base.toString(16)}+0x${len.toString(16)} of ${name} overlaps ${e.name}`);
      }
    }
    this.mmioDevs.push({ base, len, dev, name });
  }

  unregisterMmio(dev: MmioDevice): void {
    const i = this.mmioDevs.findIndex((e) => e.dev === dev);
    if (i >= 0) this.mmioDevs.splice(i, 1);
  }

  pioRead(port: number, size: AccessSize): number {
    const idx = this.pioMap[port]!;
    if (idx < 0) {
      this.unclaimed(`read of unclaimed I/O port 0x${port.toString(16)}`);
      return ONES[size] ?? 0xffffffff;
    }
    const e = this.pioDevs[idx]!;
    return e.dev.pioRead(port - e.base, size);
  }

  pioWrite(port: number, size: AccessSize, value: number): void {
    const idx = this.pioMap[port]!;
    if (idx < 0) {
      this.unclaimed(`write of unclaimed I/O port 0x${port.toString(16)}`);
      return;
    }
    const e = this.pioDevs[idx]!;
    e.dev.pioWrite(port - e.base, size, value);
  }

  private findMmio(addr: number): MmioEntry | undefined {
    for (const e of this.mmioDevs) if (addr >= e.base && addr < e.base + e.len) return e;
    return undefined;
  }

  // ---- ExitHandler: byte buffers from the vCPU protocol ----

  pio(write: boolean, port: number, size: number, count: number, data: Uint8Array): void {
    if (size === 1 && count === 1) {
      // The common case (UART, CMOS, i8042): no DataView needed.
      if (write) this.pioWrite(port, 1, data[0]!);
      else data[0] = this.pioRead(port, 1);
      return;
    }
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const sz = size as AccessSize;
    for (let i = 0; i < count; i++) {
      const off = i * size;
      if (write) {
        const v = size === 1 ? data[off]! : size === 2 ? dv.getUint16(off, true) : dv.getUint32(off, true);
        this.pioWrite(port, sz, v);
      } else {
        const v = this.pioRead(port, sz);
        if (size === 1) data[off] = v;
        else if (size === 2) dv.setUint16(off, v, true);
        else dv.setUint32(off, v >>> 0, true);
      }
    }
  }

  mmio(write: boolean, addr: number, size: number, data: Uint8Array): void {
    const e = this.findMmio(addr);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const sz = size as AccessSize;
    if (!e) {
      this.unclaimed(`${write ? "write" : "read"} of unclaimed MMIO address 0x${addr.toString(16)}`);
      if (!write) data.fill(0xff, 0, size);
      return;
    }
    if (write) {
      const v = size === 8 ? dv.getBigUint64(0, true) : size === 4 ? dv.getUint32(0, true) : size === 2 ? dv.getUint16(0, true) : data[0]!;
      e.dev.mmioWrite(addr - e.base, sz, v);
    } else {
      const v = e.dev.mmioRead(addr - e.base, sz);
      if (size === 8) dv.setBigUint64(0, BigInt.asUintN(64, BigInt(v)), true);
      else if (size === 4) dv.setUint32(0, Number(v) >>> 0, true);
      else if (size === 2) dv.setUint16(0, Number(v), true);
      else data[0] = Number(v);
    }
  }

  private unclaimed(what: string): void {
    if (this.warned.has(what)) return;
    this.warned.add(what);
    this.onUnclaimed(what);
  }
}
