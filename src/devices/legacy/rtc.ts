/**
 * MC146818 CMOS real-time clock at 0x70 (index, bit 7 = NMI disable) / 0x71 (data), 128 bytes of
 * CMOS RAM, register offsets after the MC146818A/DS12887 datasheets.
 *
 * Clock model: while the clock runs, guest time = host UTC clock (`now()`) + `offsetMs`, and the
 * time registers (0x00-0x09 and the century byte 0x32) are computed from it at every read, in BCD
 * or binary and 12/24-hour form per register B. The clock stops while register B's SET bit is set or
 * the register A divider is held in reset (DV = 11x); the time registers then freeze as plain
 * storage the guest writes. When the clock restarts, the written time becomes the new `offsetMs`:
 * keeping the sub-second phase if only SET was held (the divider kept counting), or with the first
 * update due 500 ms later if the divider was released from reset, as the datasheet specifies.
 * Out-of-range dates written by the guest are normalised the way a JavaScript Date normalises them.
 * The day-of-week register is derived from the date and does not survive a restart as written.
 * Writes to a time register while the clock runs take effect at once (phase kept).
 *
 * UIP (register A bit 7) is computed from the clock: it reads 1 during the last UIP_LEAD_MS of each
 * guest second, as real hardware sets it shortly before the update (244 us there; 1 ms here because
 * the default host clock has millisecond resolution). Registers never read half-updated, because
 * each read computes the time afresh; UIP is for guests that poll it (Linux's mc146818 helpers).
 *
 * Interrupts (IRQ 8, optional): register C's PF (periodic), AF (alarm) and UF (update-ended) flags are
 * computed lazily from the clocks whenever the guest looks, IRQF = PF&PIE | AF&AIE | UF&UIE drives
 * the line, and reading C clears them. With an `irq`, a host timer is armed for the next due event
 * (never shorter than MIN_TIMER_MS, so fast periodic rates are coalesced) while an interrupt is enabled
 * and the line is low; call `dispose()` to cancel it. Timers are unref'd and injectable for tests.
 */
import type { AccessSize, IrqLine, PioDevice } from "../bus.ts";
import type { Persistent } from "../../persist/persist.ts";
import { PersistError } from "../../persist/persist.ts";
import { MMIO_HOLE_START } from "../../arch/x86_64/layout.ts";
import { asRecord, checkVersion, readBool, readByteArray, readFinite, readInt } from "./state.ts";

/** Port offsets from RTC_PORT (0x70). */
export const RTC_INDEX_OFFSET = 0;
export const RTC_DATA_OFFSET = 1;
export const RTC_PORT_SPAN = 2;
export const RTC_NMI_DISABLE = 0x80;
const RTC_INDEX_MASK = 0x7f;

export const CMOS_SIZE = 128;
export const RTC_SECONDS = 0x00;
export const RTC_SECONDS_ALARM = 0x01;
export const RTC_MINUTES = 0x02;
export const RTC_MINUTES_ALARM = 0x03;
export const RTC_HOURS = 0x04;
export const RTC_HOURS_ALARM = 0x05;
export const RTC_DAY_OF_WEEK = 0x06;
export const RTC_DAY_OF_MONTH = 0x07;
export const RTC_MONTH = 0x08;
export const RTC_YEAR = 0x09;
export const RTC_REG_A = 0x0a;
export const RTC_REG_B = 0x0b;
export const RTC_REG_C = 0x0c;
export const RTC_REG_D = 0x0d;
/** Century byte (the FADT CENTURY field should name it). */
export const RTC_CENTURY = 0x32;
const TIME_REGISTERS: readonly number[] = [
  RTC_SECONDS,
  RTC_MINUTES,
  RTC_HOURS,
  RTC_DAY_OF_WEEK,
  RTC_DAY_OF_MONTH,
  RTC_MONTH,
  RTC_YEAR,
  RTC_CENTURY,
];

export const RTC_REG_A_UIP = 0x80;
export const RTC_REG_A_DV_MASK = 0x70;
export const RTC_REG_A_DV_32KHZ = 0x20; // normal operation with a 32.768 kHz crystal
export const RTC_REG_A_DV_RESET = 0x70; // divider chain held in reset (0x60 too)
export const RTC_REG_A_RS_MASK = 0x0f;
export const RTC_REG_A_DEFAULT = RTC_REG_A_DV_32KHZ | 0x06; // 1024 Hz periodic rate

export const RTC_REG_B_SET = 0x80;
export const RTC_REG_B_PIE = 0x40;
export const RTC_REG_B_AIE = 0x20;
export const RTC_REG_B_UIE = 0x10;
export const RTC_REG_B_SQWE = 0x08;
export const RTC_REG_B_DM_BINARY = 0x04;
export const RTC_REG_B_24H = 0x02;
export const RTC_REG_B_DSE = 0x01;
export const RTC_REG_B_DEFAULT = RTC_REG_B_24H; // 24-hour, BCD, no interrupts

export const RTC_REG_C_IRQF = 0x80;
export const RTC_REG_C_PF = 0x40;
export const RTC_REG_C_AF = 0x20;
export const RTC_REG_C_UF = 0x10;
const RTC_REG_C_FLAGS = RTC_REG_C_PF | RTC_REG_C_AF | RTC_REG_C_UF;

export const RTC_REG_D_VRT = 0x80; // battery good

/**
 * Memory-size bytes PC firmware reads from CMOS (the IBM AT layout plus the extensions SeaBIOS and
 * QEMU use). Linux ignores them (it takes e820 from the boot protocol); they are filled for firmware.
 */
export const CMOS_BASE_MEM_LO = 0x15; // conventional memory in KiB (640)
export const CMOS_BASE_MEM_HI = 0x16;
export const CMOS_EXT_MEM_LO = 0x17; // KiB above 1 MiB, capped at 0xFFFF
export const CMOS_EXT_MEM_HI = 0x18;
export const CMOS_EXT_MEM2_LO = 0x30; // copy of 0x17/0x18 (what the POST actually found)
export const CMOS_EXT_MEM2_HI = 0x31;
export const CMOS_MEM_ABOVE_16M_LO = 0x34; // 64 KiB units between 16 MiB and the 4 GiB hole
export const CMOS_MEM_ABOVE_16M_HI = 0x35;
export const CMOS_MEM_ABOVE_4G_LO = 0x5b; // 64 KiB units above 4 GiB, 24 bits
export const CMOS_MEM_ABOVE_4G_MID = 0x5c;
export const CMOS_MEM_ABOVE_4G_HI = 0x5d;
const BASE_MEMORY_KIB = 640;
const MIB = 1024 * 1024;

/** 12-hour mode: PM flag in the hours registers. */
export const RTC_HOUR_PM = 0x80;
/** Alarm register values 0xC0-0xFF match any value ("don't care"). */
export const RTC_ALARM_DONT_CARE = 0xc0;

/** Alarm register -> the time register it is compared with. */
const ALARM_PAIRS: readonly (readonly [number, number])[] = [
  [RTC_SECONDS_ALARM, RTC_SECONDS],
  [RTC_MINUTES_ALARM, RTC_MINUTES],
  [RTC_HOURS_ALARM, RTC_HOURS],
];

export const UIP_LEAD_MS = 1;
export const MIN_TIMER_MS = 1;
const SECONDS_PER_DAY = 86_400;
/** Guest clock offsets beyond this (about 31 700 years) are rejected on restore. */
const MAX_OFFSET_MS = 1e15;

export interface RtcTimers {
  setTimeout(cb: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const defaultTimers: RtcTimers = {
  setTimeout(cb, ms) {
    const t = setTimeout(cb, ms);
    t.unref(); // the RTC must never keep the process alive
    return t;
  },
  clearTimeout(handle) {
    clearTimeout(handle as ReturnType<typeof setTimeout>);
  },
};

export interface RtcOptions {
  /** IRQ 8; without it the interrupt flags still work but no timer is armed. */
  irq?: IrqLine;
  /** Host UTC clock in ms since the Unix epoch (fractions allowed); defaults to Date.now. */
  now?: () => number;
  timers?: RtcTimers;
  /** Initial guest offset from host UTC, e.g. for a guest that keeps its RTC in local time. */
  offsetMs?: number;
  /** Guest RAM in bytes: fills the CMOS memory-size bytes firmware reads. Omitted: left zero. */
  memSize?: number;
  persistName?: string;
}

export interface RtcState {
  /** CMOS RAM; the time registers are meaningful only while the clock is stopped. */
  cmos: number[];
  index: number;
  nmiDisabled: boolean;
  /** Guest time minus host UTC time, in ms (meaningful while the clock runs). */
  offsetMs: number;
}

function mod(a: number, n: number): number {
  return ((a % n) + n) % n;
}

/** Periodic interrupt period for rate-select `rs` with the 32.768 kHz time base (0 = off). */
function periodMs(rs: number): number {
  if (rs === 1) return 1000 / 256; // RS 1 and 2 repeat rates 8 and 9 (datasheet table)
  if (rs === 2) return 1000 / 128;
  return (1000 * (1 << (rs - 1))) / 32768;
}

export class CmosRtc implements PioDevice, Persistent<RtcState> {
  readonly persistName: string;
  readonly persistVersion = 1;

  private readonly irq: IrqLine | undefined;
  private readonly now: () => number;
  private readonly timers: RtcTimers;

  private cmos = new Uint8Array(CMOS_SIZE);
  private index = 0;
  private nmiOff = false;
  private offsetMs: number;

  private lastTickHostMs: number;
  private lastTickGuestMs: number;
  private timer: unknown = null;
  private irqLevel = false;

  constructor(opts: RtcOptions = {}) {
    this.irq = opts.irq;
    this.now = opts.now ?? Date.now;
    this.timers = opts.timers ?? defaultTimers;
    this.persistName = opts.persistName ?? "rtc@0x70";
    this.offsetMs = opts.offsetMs ?? 0;
    this.cmos[RTC_REG_A] = RTC_REG_A_DEFAULT;
    this.cmos[RTC_REG_B] = RTC_REG_B_DEFAULT;
    this.cmos[RTC_REG_D] = RTC_REG_D_VRT;
    if (opts.memSize !== undefined) this.fillMemorySize(opts.memSize);
    this.lastTickHostMs = this.now();
    this.lastTickGuestMs = this.lastTickHostMs + this.offsetMs;
  }

  private fillMemorySize(memSize: number): void {
    const below4g = Math.min(memSize, MMIO_HOLE_START);
    const above4g = memSize - below4g;
    const put16 = (lo: number, v: number) => {
      this.cmos[lo] = v & 0xff;
      this.cmos[lo + 1] = (v >> 8) & 0xff;
    };
    put16(CMOS_BASE_MEM_LO, BASE_MEMORY_KIB);
    const extKib = Math.min(Math.max(below4g / 1024 - 1024, 0), 0xffff);
    put16(CMOS_EXT_MEM_LO, extKib);
    put16(CMOS_EXT_MEM2_LO, extKib);
    put16(CMOS_MEM_ABOVE_16M_LO, Math.min(Math.max(Math.floor((below4g - 16 * MIB) / 65536), 0), 0xffff));
    const high = Math.min(Math.floor(above4g / 65536), 0xff_ffff);
    this.cmos[CMOS_MEM_ABOVE_4G_LO] = high & 0xff;
    this.cmos[CMOS_MEM_ABOVE_4G_MID] = (high >> 8) & 0xff;
    this.cmos[CMOS_MEM_ABOVE_4G_HI] = (high >> 16) & 0xff;
  }

  /** NMI-disable bit last written to port 0x70 (informational: KVM delivers NMIs regardless). */
  get nmiDisabled(): boolean {
    return this.nmiOff;
  }

  /** Current guest time in ms since the epoch, or the frozen register time while stopped. */
  guestTimeMs(): number {
    return this.clockRunning() ? this.now() + this.offsetMs : this.registersToMs((i) => this.cmos[i]!);
  }

  /** Cancel the interrupt timer. */
  dispose(): void {
    this.cancelTimer();
  }

  /** Machine reset (the chip's RESET pin): interrupt enables and flags cleared; time and RAM kept. */
  reset(): void {
    this.tick();
    this.cmos[RTC_REG_B] &= ~(RTC_REG_B_PIE | RTC_REG_B_AIE | RTC_REG_B_UIE | RTC_REG_B_SQWE);
    this.cmos[RTC_REG_C] = 0;
    this.updateIrq();
    this.reschedule();
  }

  pioRead(offset: number, _size: AccessSize): number {
    if (offset === RTC_DATA_OFFSET) return this.readData(this.index);
    return 0xff; // the index register is write-only
  }

  pioWrite(offset: number, _size: AccessSize, value: number): void {
    const v = value & 0xff;
    if (offset === RTC_INDEX_OFFSET) {
      this.index = v & RTC_INDEX_MASK;
      this.nmiOff = (v & RTC_NMI_DISABLE) !== 0;
    } else if (offset === RTC_DATA_OFFSET) {
      this.writeData(this.index, v);
    }
  }

  // ---- register access ----

  private get regB(): number {
    return this.cmos[RTC_REG_B]!;
  }

  private dividerRunning(): boolean {
    return (this.cmos[RTC_REG_A]! & RTC_REG_A_DV_MASK) <= RTC_REG_A_DV_32KHZ;
  }

  private clockRunning(): boolean {
    return !(this.regB & RTC_REG_B_SET) && this.dividerRunning();
  }

  private readData(i: number): number {
    switch (i) {
      case RTC_REG_A: {
        let v = this.cmos[RTC_REG_A]!;
        if (this.clockRunning() && mod(this.now() + this.offsetMs, 1000) >= 1000 - UIP_LEAD_MS) v |= RTC_REG_A_UIP;
        return v;
      }
      case RTC_REG_C: {
        this.tick();
        const v = this.cmos[RTC_REG_C]! | (this.irqf() ? RTC_REG_C_IRQF : 0);
        this.cmos[RTC_REG_C] = 0; // read-to-clear
        this.updateIrq();
        this.reschedule();
        return v;
      }
      case RTC_REG_D:
        return RTC_REG_D_VRT;
    }
    if (TIME_REGISTERS.includes(i) && this.clockRunning()) return this.timeRegister(i, this.now() + this.offsetMs);
    return this.cmos[i]!;
  }

  private writeData(i: number, v: number): void {
    switch (i) {
      case RTC_REG_A:
        // UIP is read-only.
        this.changeControl(RTC_REG_A, v & ~RTC_REG_A_UIP);
        return;
      case RTC_REG_B:
        // Setting SET clears UIE (datasheet): no update-ended interrupts while the time is being set.
        this.changeControl(RTC_REG_B, v & RTC_REG_B_SET ? v & ~RTC_REG_B_UIE : v);
        return;
      case RTC_REG_C:
      case RTC_REG_D:
        return; // read-only
    }
    if (TIME_REGISTERS.includes(i) && this.clockRunning()) {
      this.setRunningTimeRegister(i, v);
      return;
    }
    this.cmos[i] = v;
  }

  /** A write to register A or B: start or stop the clock as SET and the divider dictate. */
  private changeControl(reg: number, v: number): void {
    this.tick();
    const wasRunning = this.clockRunning();
    const dividerWasRunning = this.dividerRunning();
    // Freeze the registers in the format in force before the write: the chip never converts them.
    if (wasRunning) this.snapshotTime();
    this.cmos[reg] = v;
    if (!wasRunning && this.clockRunning()) {
      const host = this.now();
      const epochMs = this.registersToMs((i) => this.cmos[i]!);
      // Divider released from reset: first update 500 ms later. SET only: the divider kept its phase.
      const phase = dividerWasRunning ? mod(host + this.offsetMs, 1000) : 500;
      if (Number.isFinite(epochMs)) this.offsetMs = epochMs + phase - host;
      this.lastTickHostMs = host;
      this.lastTickGuestMs = host + this.offsetMs;
    }
    this.updateIrq();
    this.reschedule();
  }

  private setRunningTimeRegister(i: number, v: number): void {
    this.tick();
    const host = this.now();
    const guest = host + this.offsetMs;
    const epochMs = this.registersToMs((r) => (r === i ? v : this.timeRegister(r, guest)));
    if (Number.isFinite(epochMs)) this.offsetMs = epochMs + mod(guest, 1000) - host;
    this.lastTickGuestMs = host + this.offsetMs;
    this.reschedule();
  }

  private snapshotTime(): void {
    const guest = this.now() + this.offsetMs;
    for (const r of TIME_REGISTERS) this.cmos[r] = this.timeRegister(r, guest);
  }

  private encode(v: number): number {
    if (this.regB & RTC_REG_B_DM_BINARY) return v & 0xff;
    const d = mod(v, 100);
    return ((d / 10) << 4) | d % 10;
  }

  private decode(v: number): number {
    return this.regB & RTC_REG_B_DM_BINARY ? v : (v >> 4) * 10 + (v & 0x0f);
  }

  private timeRegister(i: number, ms: number): number {
    return this.timeRegisterOf(i, new Date(ms));
  }

  private timeRegisterOf(i: number, d: Date): number {
    switch (i) {
      case RTC_SECONDS:
        return this.encode(d.getUTCSeconds());
      case RTC_MINUTES:
        return this.encode(d.getUTCMinutes());
      case RTC_HOURS: {
        const h = d.getUTCHours();
        if (this.regB & RTC_REG_B_24H) return this.encode(h);
        return this.encode(h % 12 === 0 ? 12 : h % 12) | (h >= 12 ? RTC_HOUR_PM : 0);
      }
      case RTC_DAY_OF_WEEK:
        return this.encode(d.getUTCDay() + 1); // 1 = Sunday
      case RTC_DAY_OF_MONTH:
        return this.encode(d.getUTCDate());
      case RTC_MONTH:
        return this.encode(d.getUTCMonth() + 1);
      case RTC_YEAR:
        return this.encode(mod(d.getUTCFullYear(), 100));
      case RTC_CENTURY:
        return this.encode(Math.floor(d.getUTCFullYear() / 100));
      default:
        return this.cmos[i]!;
    }
  }

  /** Decode time registers (as `reg` returns them) into ms since the epoch. */
  private registersToMs(reg: (i: number) => number): number {
    const rawHour = reg(RTC_HOURS);
    let hour: number;
    if (this.regB & RTC_REG_B_24H) {
      hour = this.decode(rawHour);
    } else {
      hour = (this.decode(rawHour & ~RTC_HOUR_PM) % 12) + (rawHour & RTC_HOUR_PM ? 12 : 0);
    }
    const year = this.decode(reg(RTC_CENTURY)) * 100 + this.decode(reg(RTC_YEAR));
    // Date.UTC would read years 0-99 as 19xx; setUTCFullYear does not.
    const d = new Date(0);
    d.setUTCFullYear(year, this.decode(reg(RTC_MONTH)) - 1, this.decode(reg(RTC_DAY_OF_MONTH)));
    d.setUTCHours(hour, this.decode(reg(RTC_MINUTES)), this.decode(reg(RTC_SECONDS)), 0);
    return d.getTime();
  }

  // ---- interrupt flags ----

  private irqf(): boolean {
    const c = this.cmos[RTC_REG_C]!;
    const b = this.regB;
    return (
      (c & RTC_REG_C_PF && b & RTC_REG_B_PIE) !== 0 ||
      (c & RTC_REG_C_AF && b & RTC_REG_B_AIE) !== 0 ||
      (c & RTC_REG_C_UF && b & RTC_REG_B_UIE) !== 0
    );
  }

  private alarmMatches(guestMs: number): boolean {
    const d = new Date(guestMs);
    for (const [alarm, time] of ALARM_PAIRS) {
      const a = this.cmos[alarm]!;
      if (a < RTC_ALARM_DONT_CARE && a !== this.timeRegisterOf(time, d)) return false;
    }
    return true;
  }

  /** Set the flags for every periodic tick and update cycle since the last look (flags ignore the enables). */
  private tick(): void {
    const host = this.now();
    const guest = host + this.offsetMs;
    let flags = 0;
    const rs = this.cmos[RTC_REG_A]! & RTC_REG_A_RS_MASK;
    if (rs !== 0 && this.dividerRunning()) {
      const p = periodMs(rs);
      if (Math.floor(host / p) > Math.floor(this.lastTickHostMs / p)) flags |= RTC_REG_C_PF;
    }
    if (this.clockRunning()) {
      const lastSec = Math.floor(this.lastTickGuestMs / 1000);
      const nowSec = Math.floor(guest / 1000);
      if (nowSec > lastSec) {
        flags |= RTC_REG_C_UF;
        // The alarm repeats at most daily, so a day of seconds is enough to look at.
        for (let s = Math.max(lastSec + 1, nowSec - SECONDS_PER_DAY + 1); s <= nowSec; s++) {
          if (this.alarmMatches(s * 1000)) {
            flags |= RTC_REG_C_AF;
            break;
          }
        }
      }
    }
    this.lastTickHostMs = host;
    this.lastTickGuestMs = guest;
    this.cmos[RTC_REG_C] |= flags;
  }

  private updateIrq(force = false): void {
    const level = this.irqf();
    if (this.irq && (level !== this.irqLevel || force)) {
      this.irqLevel = level;
      this.irq.set(level);
    }
  }

  private cancelTimer(): void {
    if (this.timer !== null) {
      this.timers.clearTimeout(this.timer);
      this.timer = null;
    }
  }

  /** Arm the host timer for the next event that could raise the line (none while it is already up). */
  private reschedule(): void {
    this.cancelTimer();
    if (!this.irq || this.irqf()) return;
    const b = this.regB;
    const host = this.now();
    let delay = Infinity;
    if (b & (RTC_REG_B_UIE | RTC_REG_B_AIE) && this.clockRunning()) {
      delay = 1000 - mod(host + this.offsetMs, 1000);
    }
    const rs = this.cmos[RTC_REG_A]! & RTC_REG_A_RS_MASK;
    if (b & RTC_REG_B_PIE && rs !== 0 && this.dividerRunning()) {
      const p = periodMs(rs);
      delay = Math.min(delay, p - mod(host, p));
    }
    if (delay === Infinity) return;
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      this.tick();
      this.updateIrq();
      this.reschedule();
    }, Math.max(MIN_TIMER_MS, delay));
  }

  // ---- persistence ----

  save(): RtcState {
    return {
      cmos: Array.from(this.cmos),
      index: this.index,
      nmiDisabled: this.nmiOff,
      offsetMs: this.offsetMs,
    };
  }

  restore(state: RtcState, version: number): void {
    const c = this.persistName;
    checkVersion(c, version, this.persistVersion);
    const s = asRecord(c, state);
    const cmos = readByteArray(c, s, "cmos", CMOS_SIZE, CMOS_SIZE);
    if (cmos[RTC_REG_A]! & RTC_REG_A_UIP) throw new PersistError(c, `field "cmos"[${RTC_REG_A}]: UIP is not state`);
    if (cmos[RTC_REG_C]! & ~RTC_REG_C_FLAGS) {
      throw new PersistError(c, `field "cmos"[${RTC_REG_C}]: only PF/AF/UF are stored`);
    }
    const index = readInt(c, s, "index", 0, RTC_INDEX_MASK);
    const nmiDisabled = readBool(c, s, "nmiDisabled");
    const offsetMs = readFinite(c, s, "offsetMs", MAX_OFFSET_MS);

    this.cmos = new Uint8Array(cmos);
    this.cmos[RTC_REG_D] = RTC_REG_D_VRT;
    this.index = index;
    this.nmiOff = nmiDisabled;
    this.offsetMs = offsetMs;
    // Flags restart from now: the time the guest was paused raises no interrupt.
    this.lastTickHostMs = this.now();
    this.lastTickGuestMs = this.lastTickHostMs + this.offsetMs;
    this.updateIrq(true);
    this.reschedule();
  }
}
