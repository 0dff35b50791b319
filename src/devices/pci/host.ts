/**
 * PCI configuration access on q35: the legacy 0xCF8 (address) / 0xCFC (data) ports, and the root bus
 * with its host bridge at 00:00.0. The reset control register shares the port range (byte 0xCF9), so
 * this device owns 0xCF8..0xCFF on both machines and hands that byte to it.
 */
import type { AccessSize, PioDevice } from "../bus.ts";
import { PersistError, type Persistent } from "../../persist/persist.ts";

/** A PCI function's configuration space. */
export interface PciFunction {
  configRead(reg: number, size: AccessSize): number;
  configWrite(reg: number, size: AccessSize, value: number): void;
}

const CONFIG_ENABLE = 0x8000_0000;

/** A plain 256-byte type-0 configuration space with read-only identity registers. */
export class SimpleConfigSpace implements PciFunction {
  protected readonly cfg = new Uint8Array(256);
  protected readonly view = new DataView(this.cfg.buffer);

  constructor(vendor: number, device: number, classCode: number, revision = 0) {
    this.view.setUint16(0x00, vendor, true);
    this.view.setUint16(0x02, device, true);
    this.view.setUint32(0x08, ((classCode << 8) | revision) >>> 0, true);
    this.view.setUint8(0x0e, 0); // header type 0, single function
  }

  configRead(reg: number, size: AccessSize): number {
    if (reg + size > 256) return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    return size === 1 ? this.cfg[reg]! : size === 2 ? this.view.getUint16(reg, true) : this.view.getUint32(reg, true);
  }

  /** Only the command register (0x04) is writable on a host bridge; identity registers stay as they are. */
  configWrite(reg: number, size: AccessSize, value: number): void {
    if (reg === 0x04 && size >= 2) this.view.setUint16(0x04, value & 0xffff, true);
  }
}

/** Intel Q35 MCH host bridge identity, as QEMU's q35 presents it so guests recognise the chipset. */
export const Q35_HOST_BRIDGE = { vendor: 0x8086, device: 0x29c0, classCode: 0x060000 };

export class PciRoot {
  private readonly functions = new Map<number, PciFunction>();

  attach(devfn: number, fn: PciFunction): void {
    if (this.functions.has(devfn)) throw new Error(`PCI address ${(devfn >> 3).toString(16)}.${devfn & 7} is already in use`);
    this.functions.set(devfn, fn);
  }

  get(devfn: number): PciFunction | undefined {
    return this.functions.get(devfn);
  }

  read(bus: number, devfn: number, reg: number, size: AccessSize): number {
    const fn = bus === 0 ? this.functions.get(devfn) : undefined;
    // No device: all ones, which is how a guest's bus scan learns the slot is empty.
    if (!fn) return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    return fn.configRead(reg, size);
  }

  write(bus: number, devfn: number, reg: number, size: AccessSize, value: number): void {
    const fn = bus === 0 ? this.functions.get(devfn) : undefined;
    fn?.configWrite(reg, size, value);
  }
}

/** The byte-wide reset control register the port range hands on (see reset-control.ts). */
export interface ResetRegister {
  read(): number;
  write(value: number): void;
}

export class PciConfigPorts implements PioDevice, Persistent<{ address: number }> {
  readonly persistName = "pci-config@0xcf8";
  readonly persistVersion = 1;
  private address = 0;

  /** `root` is undefined on machines without PCI (microvm): then only the reset register answers. */
  constructor(
    private readonly root: PciRoot | undefined,
    private readonly resetRegister: ResetRegister,
  ) {}

  pioRead(offset: number, size: AccessSize): number {
    if (offset === 1 && size === 1) return this.resetRegister.read();
    if (!this.root) return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    if (offset === 0 && size === 4) return this.address >>> 0;
    if (offset >= 4) {
      if (!(this.address & CONFIG_ENABLE)) return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
      const { bus, devfn, reg } = this.decode(offset - 4);
      return this.root.read(bus, devfn, reg, size);
    }
    return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
  }

  pioWrite(offset: number, size: AccessSize, value: number): void {
    if (offset === 1 && size === 1) {
      this.resetRegister.write(value);
      return;
    }
    if (!this.root) return;
    if (offset === 0 && size === 4) {
      this.address = value >>> 0;
      return;
    }
    if (offset >= 4 && this.address & CONFIG_ENABLE) {
      const { bus, devfn, reg } = this.decode(offset - 4);
      this.root.write(bus, devfn, reg, size, value);
    }
  }

  private decode(byteOffset: number): { bus: number; devfn: number; reg: number } {
    const a = this.address;
    return { bus: (a >>> 16) & 0xff, devfn: (a >>> 8) & 0xff, reg: (a & 0xfc) + byteOffset };
  }

  save(): { address: number } {
    return { address: this.address };
  }

  restore(s: { address: number }, version: number): void {
    if (version !== this.persistVersion) throw new PersistError(this.persistName, `unsupported version ${version}`);
    if (typeof s?.address !== "number" || !Number.isInteger(s.address) || s.address < 0 || s.address > 0xffffffff) {
      throw new PersistError(this.persistName, "address must be a 32-bit unsigned integer");
    }
    this.address = s.address;
  }

  reset(): void {
    this.address = 0;
  }
}
