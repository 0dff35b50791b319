/**
 * PCI Express enhanced configuration access (ECAM, the MCFG table's window): 4 KiB of configuration
 * space per function, at base + (bus << 20 | device << 15 | function << 12 | register). The same
 * functions as the 0xCF8/0xCFC ports, reached through MMIO (and with registers up to 4095).
 */
import type { AccessSize, MmioDevice } from "../bus.ts";
import type { PciRoot } from "./host.ts";

export class PciEcam implements MmioDevice {
  constructor(private readonly root: PciRoot) {}

  mmioRead(offset: number, size: AccessSize): number | bigint {
    if (size === 8) return BigInt(this.read(offset, 4)) | (BigInt(this.read(offset + 4, 4)) << 32n);
    return this.read(offset, size);
  }

  mmioWrite(offset: number, size: AccessSize, value: number | bigint): void {
    if (size === 8) {
      const v = BigInt(value);
      this.write(offset, 4, Number(v & 0xffffffffn));
      this.write(offset + 4, 4, Number(v >> 32n));
      return;
    }
    this.write(offset, size, Number(value));
  }

  private read(offset: number, size: AccessSize): number {
    const { bus, devfn, reg } = decode(offset);
    // Accesses must not cross a register's natural alignment (PCIe 7.2.2); such reads return all ones.
    if (reg % size !== 0) return size === 4 ? 0xffffffff : (1 << (size * 8)) - 1;
    return this.root.read(bus, devfn, reg, size);
  }

  private write(offset: number, size: AccessSize, value: number): void {
    const { bus, devfn, reg } = decode(offset);
    if (reg % size !== 0) return;
    this.root.write(bus, devfn, reg, size, value >>> 0);
  }
}

function decode(offset: number): { bus: number; devfn: number; reg: number } {
  return { bus: Math.floor(offset / (1 << 20)) & 0xff, devfn: (offset >>> 12) & 0xff, reg: offset & 0xfff };
}
