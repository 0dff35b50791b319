/**
 * ACPI fixed hardware registers (ACPI spec §4.8) at ACPI_PM_BASE, one PioDevice spanning 12 ports:
 *
 *   +0  PM1a_STS  16-bit, write 1 to clear
 *   +2  PM1a_EN   16-bit
 *   +4  PM1a_CNT  16-bit (SCI_EN, BM_RLD, GBL_RLS, SLP_TYP, SLP_EN)
 *   +6  unused    reads 0xFF, writes ignored
 *   +8  PM_TMR    32-bit read-only, 3.579545 MHz (the FADT should set TMR_VAL_EXT)
 *
 * Any byte/word/dword access works as on hardware: reads assemble the bytes little-endian from one
 * snapshot of the registers, and writes touch only the bytes written (a byte write to STS+1 clears
 * status bits 8-15 only; SLP_EN acts only when the byte holding it is written).
 *
 * There is no SMI_CMD, so the machine is always in ACPI mode: SCI_EN reads 1 and cannot be cleared.
 * SLP_EN with SLP_TYP == ACPI_S5_SLP_TYP calls `onPowerOff`; any other sleep type is ignored and
 * reported through `onUnsupportedSleep` so the machine can log it.
 *
 * The PM timer is derived: value = (monotonic ns * 3.579545 MHz + offset) mod 2^32, counting from 0
 * at construction. Save records the current value and restore continues from it, so the guest never
 * sees the timer jump (time spent paused for migration is simply not counted). TMR_STS (timer MSB
 * toggled) is evaluated whenever the registers are accessed; no host timer fires for TMR_EN, which
 * guests do not rely on (Linux never enables it). `pressPowerButton()` raises PWRBTN_STS for an
 * ACPI shutdown request. The SCI line is level: (STS & EN) != 0, set only on changes.
 */
import type { AccessSize, IrqLine, PioDevice } from "../bus.ts";
import type { Persistent } from "../../persist/persist.ts";
import { ACPI_S5_SLP_TYP } from "../../arch/x86_64/layout.ts";
import { asRecord, checkVersion, readBits, readInt } from "./state.ts";

export const ACPI_PM_PORT_SPAN = 12;
export const PM1_STS_OFFSET = 0;
export const PM1_EN_OFFSET = 2;
export const PM1_CNT_OFFSET = 4;
export const PM_TMR_OFFSET = 8;

export const PM1_STS_TMR = 0x0001;
export const PM1_STS_BM = 0x0010;
export const PM1_STS_GBL = 0x0020;
export const PM1_STS_PWRBTN = 0x0100;
export const PM1_STS_SLPBTN = 0x0200;
export const PM1_STS_RTC = 0x0400;
export const PM1_STS_PCIEXP_WAKE = 0x4000;
export const PM1_STS_WAK = 0x8000;
const PM1_STS_MASK =
  PM1_STS_TMR | PM1_STS_BM | PM1_STS_GBL | PM1_STS_PWRBTN | PM1_STS_SLPBTN | PM1_STS_RTC | PM1_STS_PCIEXP_WAKE | PM1_STS_WAK;

export const PM1_EN_TMR = 0x0001;
export const PM1_EN_GBL = 0x0020;
export const PM1_EN_PWRBTN = 0x0100;
export const PM1_EN_SLPBTN = 0x0200;
export const PM1_EN_RTC = 0x0400;
export const PM1_EN_PCIEXP_WAKE_DIS = 0x4000;
const PM1_EN_MASK = PM1_EN_TMR | PM1_EN_GBL | PM1_EN_PWRBTN | PM1_EN_SLPBTN | PM1_EN_RTC | PM1_EN_PCIEXP_WAKE_DIS;
/** Status bits whose enable bit (same position) routes them to the SCI. */
const SCI_SOURCES = PM1_STS_TMR | PM1_STS_GBL | PM1_STS_PWRBTN | PM1_STS_SLPBTN | PM1_STS_RTC;

export const PM1_CNT_SCI_EN = 0x0001;
export const PM1_CNT_BM_RLD = 0x0002;
export const PM1_CNT_GBL_RLS = 0x0004; // write-only
export const PM1_CNT_SLP_TYP_SHIFT = 10;
export const PM1_CNT_SLP_TYP_MASK = 0x7 << PM1_CNT_SLP_TYP_SHIFT;
export const PM1_CNT_SLP_EN = 0x2000; // write-only
/** PM1_CNT bits that hold state (SCI_EN is hardwired to 1, GBL_RLS and SLP_EN are write-only). */
const PM1_CNT_STORED = PM1_CNT_BM_RLD | PM1_CNT_SLP_TYP_MASK;

export const PM_TIMER_HZ = 3_579_545n;
const NS_PER_S = 1_000_000_000n;
const TIMER_MASK = 0xffff_ffffn;
const TIMER_MSB_SHIFT = 31n; // TMR_STS fires on a carry out of bit 31 with TMR_VAL_EXT

export interface AcpiPmOptions {
  /** SLP_EN with the S5 sleep type. */
  onPowerOff: () => void;
  /** SCI (IRQ 9). */
  sciIrq?: IrqLine;
  /** Any other sleep type: ignored, reported here for logging. */
  onUnsupportedSleep?: (slpTyp: number) => void;
  /** Monotonic clock in ns; defaults to process.hrtime.bigint. */
  now?: () => bigint;
  persistName?: string;
}

export interface AcpiPmState {
  sts: number;
  en: number;
  /** PM1_CNT stored bits (BM_RLD, SLP_TYP). */
  cnt: number;
  /** PM timer value at save time. */
  timer: number;
}

export class AcpiPm implements PioDevice, Persistent<AcpiPmState> {
  readonly persistName: string;
  readonly persistVersion = 1;

  private readonly onPowerOff: () => void;
  private readonly onUnsupportedSleep: ((slpTyp: number) => void) | undefined;
  private readonly sciIrq: IrqLine | undefined;
  private readonly now: () => bigint;

  private sts = 0;
  private en = 0;
  private cnt = 0;
  /** Added to ticks-since-clock-origin to give the (unwrapped) timer value. */
  private tickOffset: bigint;
  private lastMsbEpoch: bigint;
  private sciLevel = false;

  constructor(opts: AcpiPmOptions) {
    this.onPowerOff = opts.onPowerOff;
    this.onUnsupportedSleep = opts.onUnsupportedSleep;
    this.sciIrq = opts.sciIrq;
    this.now = opts.now ?? (() => process.hrtime.bigint());
    this.persistName = opts.persistName ?? "acpi-pm@0x600";
    this.tickOffset = -this.ticks();
    this.lastMsbEpoch = 0n;
  }

  /** Request an orderly shutdown the way a power button does (the guest's ACPI driver handles it). */
  pressPowerButton(): void {
    this.sts |= PM1_STS_PWRBTN;
    this.updateSci();
  }

  /** Machine reset: status, enables and control back to 0. The timer keeps counting. */
  reset(): void {
    this.sts = 0;
    this.en = 0;
    this.cnt = 0;
    this.updateSci();
  }

  /** Current PM timer value (what a 32-bit read of PM_TMR returns). */
  timerValue(): number {
    return Number(this.unwrappedTimer() & TIMER_MASK);
  }

  private ticks(): bigint {
    return (this.now() * PM_TIMER_HZ) / NS_PER_S;
  }

  private unwrappedTimer(): bigint {
    return this.ticks() + this.tickOffset;
  }

  /** TMR_STS: set when the timer's MSB has toggled since we last looked. */
  private refreshTimerStatus(): void {
    const epoch = this.unwrappedTimer() >> TIMER_MSB_SHIFT;
    if (epoch !== this.lastMsbEpoch) {
      this.lastMsbEpoch = epoch;
      this.sts |= PM1_STS_TMR;
    }
  }

  pioRead(offset: number, size: AccessSize): number {
    this.refreshTimerStatus();
    this.updateSci();
    const regs = [
      this.sts & 0xff,
      this.sts >> 8,
      this.en & 0xff,
      this.en >> 8,
      (this.cnt | PM1_CNT_SCI_EN) & 0xff,
      this.cnt >> 8,
      0xff,
      0xff,
    ];
    const timer = this.timerValue();
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const off = offset + i;
      let byte = 0xff;
      if (off >= 0 && off < PM_TMR_OFFSET) byte = regs[off]!;
      else if (off >= PM_TMR_OFFSET && off < ACPI_PM_PORT_SPAN) byte = (timer >>> ((off - PM_TMR_OFFSET) * 8)) & 0xff;
      v = v * 256 + byte; // not <<, which would go negative for a dword with bit 31 set
    }
    return v;
  }

  pioWrite(offset: number, size: AccessSize, value: number): void {
    this.refreshTimerStatus();
    // Split the access into (value, mask) per 16-bit register.
    let stsVal = 0;
    let stsMask = 0;
    let enVal = 0;
    let enMask = 0;
    let cntVal = 0;
    let cntMask = 0;
    for (let i = 0; i < size; i++) {
      const off = offset + i;
      const byte = (value >>> (8 * i)) & 0xff;
      const shift = (off & 1) * 8;
      if (off === PM1_STS_OFFSET || off === PM1_STS_OFFSET + 1) {
        stsVal |= byte << shift;
        stsMask |= 0xff << shift;
      } else if (off === PM1_EN_OFFSET || off === PM1_EN_OFFSET + 1) {
        enVal |= byte << shift;
        enMask |= 0xff << shift;
      } else if (off === PM1_CNT_OFFSET || off === PM1_CNT_OFFSET + 1) {
        cntVal |= byte << shift;
        cntMask |= 0xff << shift;
      }
      // PM_TMR and the unused ports ignore writes.
    }
    this.sts &= ~(stsVal & stsMask);
    this.en = (this.en & ~enMask) | (enVal & enMask & PM1_EN_MASK);
    if (cntMask !== 0) this.writeCnt(cntVal, cntMask);
    this.updateSci();
  }

  private writeCnt(val: number, mask: number): void {
    const storedMask = mask & PM1_CNT_STORED;
    this.cnt = (this.cnt & ~storedMask) | (val & storedMask);
    if (mask & val & PM1_CNT_SLP_EN) {
      const slpTyp = (this.cnt & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT;
      if (slpTyp === ACPI_S5_SLP_TYP) this.onPowerOff();
      else this.onUnsupportedSleep?.(slpTyp);
    }
  }

  private updateSci(force = false): void {
    const level = (this.sts & this.en & SCI_SOURCES) !== 0;
    if (this.sciIrq && (level !== this.sciLevel || force)) {
      this.sciLevel = level;
      this.sciIrq.set(level);
    }
  }

  save(): AcpiPmState {
    // Latch a pending TMR_STS so it is not lost with the derived timer (and signal it, if enabled).
    this.refreshTimerStatus();
    this.updateSci();
    return { sts: this.sts, en: this.en, cnt: this.cnt, timer: this.timerValue() };
  }

  restore(state: AcpiPmState, version: number): void {
    const c = this.persistName;
    checkVersion(c, version, this.persistVersion);
    const s = asRecord(c, state);
    const sts = readBits(c, s, "sts", PM1_STS_MASK);
    const en = readBits(c, s, "en", PM1_EN_MASK);
    const cnt = readBits(c, s, "cnt", PM1_CNT_STORED);
    const timer = readInt(c, s, "timer", 0, 0xffff_ffff);

    this.sts = sts;
    this.en = en;
    this.cnt = cnt;
    this.tickOffset = BigInt(timer) - this.ticks();
    this.lastMsbEpoch = this.unwrappedTimer() >> TIMER_MSB_SHIFT;
    this.updateSci(true);
  }
}
