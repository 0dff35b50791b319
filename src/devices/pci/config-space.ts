/**
 * A PCI type-0 configuration space (256 bytes) with per-bit write masks, so that read-only identity
 * registers, BAR sizing (writing all ones reads back the size mask) and capability fields all follow
 * from one rule: a write changes only the bits its mask allows. The owner gets a callback after each
 * write to react (remap a BAR, enable MSI-X) and may intercept ranges (a capability's data window).
 */
import type { AccessSize } from "../bus.ts";
import type { PciFunction } from "./host.ts";

/** Standard header offsets (PCI Local Bus 3.0, 6.1). */
export const PciCfg = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION: 0x08,
  CLASS_PROG: 0x09,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  CAPABILITIES: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;

export const CMD_IO = 1 << 0;
export const CMD_MEMORY = 1 << 1;
export const CMD_BUS_MASTER = 1 << 2;
export const CMD_INTX_DISABLE = 1 << 10;
export const STATUS_INTERRUPT = 1 << 3;
export const STATUS_CAP_LIST = 1 << 4;
export const HEADER_MULTIFUNCTION = 0x80;

export const PCI_CAP_ID_MSIX = 0x11;
export const PCI_CAP_ID_VNDR = 0x09;

export const BAR_MEM_64 = 0b100;

export const CONFIG_SPACE_SIZE = 256;

export class PciConfigSpace implements PciFunction {
  readonly bytes = new Uint8Array(CONFIG_SPACE_SIZE);
  readonly wmask = new Uint8Array(CONFIG_SPACE_SIZE);
  readonly view = new DataView(this.bytes.buffer);
  private nextCap = 0x40;
  private lastCap = -1;

  /** Called after every write with the dword-aligned register that changed. */
  onWrite: (reg: number) => void = () => {};
  /** Reads/writes inside [start, end) go to the owner instead (e.g. virtio's PCI-configuration-access data). */
  intercept: { start: number; end: number; read(reg: number, size: AccessSize): number; write(reg: number, size: AccessSize, value: number): void } | undefined;

  constructor(id: { vendor: number; device: number; classCode: number; revision: number; subsystemVendor: number; subsystem: number; multifunction: boolean }) {
    const v = this.view;
    v.setUint16(PciCfg.VENDOR_ID, id.vendor, true);
    v.setUint16(PciCfg.DEVICE_ID, id.device, true);
    v.setUint32(PciCfg.REVISION, ((id.classCode << 8) | id.revision) >>> 0, true);
    this.bytes[PciCfg.HEADER_TYPE] = id.multifunction ? HEADER_MULTIFUNCTION : 0;
    v.setUint16(PciCfg.SUBSYSTEM_VENDOR_ID, id.subsystemVendor, true);
    v.setUint16(PciCfg.SUBSYSTEM_ID, id.subsystem, true);
    this.setMask16(PciCfg.COMMAND, CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE);
    this.wmask[PciCfg.INTERRUPT_LINE] = 0xff;
  }

  setMask16(reg: number, mask: number): void {
    this.wmask[reg] = mask & 0xff;
    this.wmask[reg + 1] = (mask >> 8) & 0xff;
  }

  setMask32(reg: number, mask: number): void {
    for (let i = 0; i < 4; i++) this.wmask[reg + i] = (mask >>> (8 * i)) & 0xff;
  }

  /** A 64-bit memory BAR at `index` (and index+1) of `size` bytes (a power of two ≥ 16), preset to `addr`. */
  addBar64(index: number, size: number, addr: number): void {
    const reg = PciCfg.BAR0 + 4 * index;
    this.setMask32(reg, ~(size - 1) & ~0xf);
    this.setMask32(reg + 4, size > 0x1_0000_0000 ? ~(size / 0x1_0000_0000 - 1) : 0xffffffff);
    this.view.setUint32(reg, ((addr % 0x1_0000_0000) | BAR_MEM_64) >>> 0, true);
    this.view.setUint32(reg + 4, Math.floor(addr / 0x1_0000_0000), true);
  }

  /** The address a 64-bit BAR decodes (flags stripped). */
  bar64(index: number): number {
    const reg = PciCfg.BAR0 + 4 * index;
    const lo = (this.view.getUint32(reg, true) & ~0xf) >>> 0;
    return lo + this.view.getUint32(reg + 4, true) * 0x1_0000_0000;
  }

  /** Append a capability of `len` bytes with id `capId`; returns its offset. */
  addCapability(capId: number, len: number): number {
    const off = this.nextCap;
    if (off + len > CONFIG_SPACE_SIZE) throw new RangeError("PCI capabilities do not fit in 256 bytes");
    this.bytes[off] = capId;
    if (this.lastCap < 0) {
      this.bytes[PciCfg.CAPABILITIES] = off;
      this.view.setUint16(PciCfg.STATUS, this.view.getUint16(PciCfg.STATUS, true) | STATUS_CAP_LIST, true);
    } else {
      this.bytes[this.lastCap + 1] = off;
    }
    this.lastCap = off;
    this.nextCap = (off + len + 3) & ~3;
    return off;
  }

  get command(): number {
    return this.view.getUint16(PciCfg.COMMAND, true);
  }

  configRead(reg: number, size: AccessSize): number {
    if (reg + size > CONFIG_SPACE_SIZE) return reg >= CONFIG_SPACE_SIZE ? 0 : 0xffffffff >>> (32 - 8 * size);
    const ic = this.intercept;
    if (ic && reg >= ic.start && reg < ic.end) return ic.read(reg, size);
    const v = this.view;
    return size === 1 ? this.bytes[reg]! : size === 2 ? v.getUint16(reg, true) : v.getUint32(reg, true);
  }

  configWrite(reg: number, size: AccessSize, value: number): void {
    if (reg + size > CONFIG_SPACE_SIZE) return;
    const ic = this.intercept;
    if (ic && reg >= ic.start && reg < ic.end) {
      ic.write(reg, size, value);
      return;
    }
    for (let i = 0; i < size; i++) {
      const m = this.wmask[reg + i]!;
      if (m === 0) continue;
      const b = (value >>> (8 * i)) & 0xff;
      this.bytes[reg + i] = (this.bytes[reg + i]! & ~m) | (b & m);
    }
    this.onWrite(reg & ~3);
  }

  /** Check bytes from a saved state against this function's read-only bits; a message or null. */
  problem(saved: unknown): string | null {
    if (!Array.isArray(saved) || saved.length !== CONFIG_SPACE_SIZE || !saved.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) {
      return `config space must be ${CONFIG_SPACE_SIZE} bytes`;
    }
    for (let i = 0; i < CONFIG_SPACE_SIZE; i++) {
      if (i === PciCfg.STATUS || i === PciCfg.STATUS + 1) continue; // its interrupt bit follows the device
      const ro = ~this.wmask[i]! & 0xff;
      if (((saved[i] as number) & ro) !== (this.bytes[i]! & ro)) return `config space byte 0x${i.toString(16)} differs in read-only bits (a different device?)`;
    }
    return null;
  }
}
