/**
 * MSI-X (PCI Local Bus 3.0, 6.8.2): the vector table and pending bit array a function exposes in one
 * of its BARs, and the capability's enable / function-mask bits.
 *
 * Delivery: every vector owns an eventfd bound to its own GSI by an irqfd, and the GSI's route carries
 * the vector's address/data. The device signals the eventfd and KVM injects the message; no ioctl per
 * interrupt. A masked vector is not signalled: its pending bit is set instead and the message goes out
 * when it is unmasked, as the specification requires.
 */
import { EventFd } from "../virtio/eventfd.ts";
import type { AccessSize } from "../bus.ts";
import type { GsiRouter, VmLink } from "./irq-routing.ts";

export const MSIX_ENTRY_SIZE = 16;
const ENTRY_ADDR_LO = 0;
const ENTRY_ADDR_HI = 1;
const ENTRY_DATA = 2;
const ENTRY_CTRL = 3;
const CTRL_MASKED = 1;

export interface MsixState {
  enabled: boolean;
  functionMask: boolean;
  /** 4 words per vector: address lo, address hi, data, vector control. */
  table: number[];
  pending: number[];
}

export class MsixTable {
  private readonly table: Uint32Array;
  private readonly pending: Uint8Array;
  enabled = false;
  functionMask = false;
  readonly gsis: number[] = [];
  readonly fds: EventFd[] = [];

  constructor(
    readonly size: number,
    private readonly router: GsiRouter,
  ) {
    this.table = new Uint32Array(size * 4);
    this.pending = new Uint8Array(size);
    for (let v = 0; v < size; v++) {
      this.gsis.push(router.allocate());
      this.fds.push(new EventFd());
    }
    this.reset();
  }

  /** Bind every vector's eventfd to its GSI on a (new) KVM VM. */
  attachVm(vm: VmLink): void {
    for (let v = 0; v < this.size; v++) vm.irqfd(this.fds[v]!.fd, this.gsis[v]!);
  }

  reset(): void {
    this.table.fill(0);
    for (let v = 0; v < this.size; v++) this.table[v * 4 + ENTRY_CTRL] = CTRL_MASKED;
    this.pending.fill(0);
    this.enabled = false;
    this.functionMask = false;
    for (const g of this.gsis) this.router.clearMsi(g);
  }

  private live(v: number): boolean {
    return this.enabled && !this.functionMask && (this.table[v * 4 + ENTRY_CTRL]! & CTRL_MASKED) === 0;
  }

  /** Make the vector's route match its table entry, and send what was pending while it was masked. */
  private refresh(v: number): void {
    if (!this.live(v)) return;
    const e = v * 4;
    this.router.setMsi(this.gsis[v]!, this.table[e + ENTRY_ADDR_LO]!, this.table[e + ENTRY_ADDR_HI]!, this.table[e + ENTRY_DATA]!);
    if (this.pending[v]) {
      this.pending[v] = 0;
      this.fds[v]!.signal();
    }
  }

  /** The capability's Message Control bits changed. */
  setControl(enabled: boolean, functionMask: boolean): void {
    if (enabled === this.enabled && functionMask === this.functionMask) return;
    this.enabled = enabled;
    this.functionMask = functionMask;
    for (let v = 0; v < this.size; v++) this.refresh(v);
  }

  /** Raise vector `v`: delivered now, or left pending while masked. False when MSI-X is off or `v` is out of range. */
  signal(v: number): boolean {
    if (!this.enabled || v >= this.size) return false;
    if (!this.live(v)) {
      this.pending[v] = 1;
      return true;
    }
    this.fds[v]!.signal();
    return true;
  }

  readTable(offset: number, size: AccessSize): number | bigint {
    if (size === 8) return BigInt(this.readTable(offset, 4)) | (BigInt(this.readTable(offset + 4, 4)) << 32n);
    const w = offset >>> 2;
    if (w >= this.table.length) return 0;
    const word = this.table[w]!;
    const shift = (offset & 3) * 8;
    return size === 4 ? word : (word >>> shift) & (size === 2 ? 0xffff : 0xff);
  }

  writeTable(offset: number, size: AccessSize, value: number | bigint): void {
    if (size === 8) {
      const b = BigInt(value);
      this.writeTable(offset, 4, Number(b & 0xffffffffn));
      this.writeTable(offset + 4, 4, Number(b >> 32n));
      return;
    }
    if (size !== 4 || offset & 3) return; // the specification requires dword (or qword) accesses
    const w = offset >>> 2;
    if (w >= this.table.length) return;
    const v = w >>> 2;
    const field = w & 3;
    const val = Number(value) >>> 0;
    this.table[w] = field === ENTRY_CTRL ? val & CTRL_MASKED : val;
    // Changing address/data of an unmasked vector is undefined for the guest; follow it anyway.
    this.refresh(v);
  }

  readPba(offset: number, size: AccessSize): number | bigint {
    let out = 0n;
    for (let i = 0; i < size * 8; i++) {
      const v = offset * 8 + i;
      if (v < this.size && this.pending[v]) out |= 1n << BigInt(i);
    }
    return size === 8 ? out : Number(out);
  }

  save(): MsixState {
    return { enabled: this.enabled, functionMask: this.functionMask, table: Array.from(this.table), pending: Array.from(this.pending) };
  }

  /** Check a saved state: a message naming the bad field, or null. */
  problem(s: unknown): string | null {
    const m = s as MsixState;
    if (!m || typeof m !== "object") return "msix is not an object";
    if (typeof m.enabled !== "boolean" || typeof m.functionMask !== "boolean") return "msix enable/mask must be booleans";
    if (!Array.isArray(m.table) || m.table.length !== this.size * 4 || !m.table.every((x) => Number.isInteger(x) && x >= 0 && x <= 0xffffffff)) {
      return `msix table must be ${this.size * 4} 32-bit words`;
    }
    if (!Array.isArray(m.pending) || m.pending.length !== this.size || !m.pending.every((x) => x === 0 || x === 1)) return `msix pending must be ${this.size} bits`;
    return null;
  }

  load(s: MsixState): void {
    this.table.set(s.table);
    this.pending.set(s.pending);
    this.enabled = s.enabled;
    this.functionMask = s.functionMask;
    for (let v = 0; v < this.size; v++) this.refresh(v);
  }

  close(): void {
    for (const f of this.fds) f.close();
  }
}
