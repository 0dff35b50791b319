/**
 * Reset Control Register at 0xCF9 (Intel PCH RST_CNT; the FADT RESET_REG points here).
 *
 * 0xCF9 is a byte register inside the dword at PCI_CONFIG_ADDRESS_PORT (0xCF8), so the PCI host
 * bridge owning 0xCF8-0xCFF should forward size-1 accesses at 0xCF9 to `read()` / `write()`. The
 * object is also a one-port PioDevice (offset 0, byte accesses only) for machines without a PCI host
 * bridge, e.g. microvm.
 *
 * Writing a value with RST_CPU (bit 2) set asks for a reset (0x06 hard, 0x0E full and 0x04 soft all
 * do; kiln does not distinguish them). Reads return the last value written with RST_CPU clear.
 */
import type { AccessSize, PioDevice } from "../bus.ts";
import type { Persistent } from "../../persist/persist.ts";
import { asRecord, checkVersion, readBits } from "./state.ts";

export const RST_CNT_SYS_RST = 0x02; // hard (system) rather than soft (CPU-only) reset
export const RST_CNT_RST_CPU = 0x04; // 0 -> 1 triggers the reset
export const RST_CNT_FULL_RST = 0x08; // power-cycle style reset
/** Offset of 0xCF9 within the PCI config-address dword at 0xCF8. */
export const RESET_CONTROL_OFFSET_IN_CF8 = 1;

export interface ResetControlOptions {
  onReset: () => void;
  persistName?: string;
}

export interface ResetControlState {
  value: number;
}

export class ResetControl implements PioDevice, Persistent<ResetControlState> {
  readonly persistName: string;
  readonly persistVersion = 1;
  private readonly onReset: () => void;
  private value = 0;

  constructor(opts: ResetControlOptions) {
    this.onReset = opts.onReset;
    this.persistName = opts.persistName ?? "reset-control@0xcf9";
  }

  /** A byte read of 0xCF9. */
  read(): number {
    return this.value;
  }

  /** A byte write of 0xCF9. */
  write(value: number): void {
    const v = value & 0xff;
    this.value = v & ~RST_CNT_RST_CPU; // RST_CPU is self-clearing
    if (v & RST_CNT_RST_CPU) this.onReset();
  }

  /** Machine reset: the register returns to 0. */
  reset(): void {
    this.value = 0;
  }

  pioRead(offset: number, size: AccessSize): number {
    return offset === 0 && size === 1 ? this.read() : 0xff;
  }

  pioWrite(offset: number, size: AccessSize, value: number): void {
    if (offset === 0 && size === 1) this.write(value);
  }

  save(): ResetControlState {
    return { value: this.value };
  }

  restore(state: ResetControlState, version: number): void {
    checkVersion(this.persistName, version, this.persistVersion);
    const s = asRecord(this.persistName, state);
    this.value = readBits(this.persistName, s, "value", 0xff & ~RST_CNT_RST_CPU);
  }
}
