import { describe, expect, test } from "bun:test";
import type { IrqLine } from "../../src/devices/bus.ts";
import { PersistError } from "../../src/persist/persist.ts";
import {
  CmosRtc,
  RTC_CENTURY,
  RTC_DATA_OFFSET,
  RTC_DAY_OF_MONTH,
  RTC_DAY_OF_WEEK,
  RTC_HOURS,
  RTC_HOURS_ALARM,
  RTC_INDEX_OFFSET,
  RTC_MINUTES,
  RTC_MINUTES_ALARM,
  RTC_MONTH,
  RTC_REG_A,
  RTC_REG_B,
  RTC_REG_C,
  RTC_REG_D,
  RTC_SECONDS,
  RTC_SECONDS_ALARM,
  RTC_YEAR,
  type RtcState,
  type RtcTimers,
} from "../../src/devices/legacy/rtc.ts";

class FakeIrq implements IrqLine {
  calls: boolean[] = [];
  level = false;
  set(level: boolean): void {
    this.calls.push(level);
    this.level = level;
  }
}

/** Manual timers: `advance` moves the clock and fires what became due, in order. */
class FakeClock implements RtcTimers {
  t: number;
  private pending: { at: number; cb: () => void; id: number }[] = [];
  private nextId = 1;
  constructor(t: number) {
    this.t = t;
  }
  now = (): number => this.t;
  setTimeout(cb: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.pending.push({ at: this.t + ms, cb, id });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.pending = this.pending.filter((p) => p.id !== handle);
  }
  get armed(): number {
    return this.pending.length;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      this.pending.sort((a, b) => a.at - b.at);
      const next = this.pending[0];
      if (!next || next.at > end) break;
      this.pending.shift();
      this.t = Math.max(this.t, next.at);
      next.cb();
    }
    this.t = end;
  }
}

const REG_A_UIP = 0x80;
const REG_A_DV_RESET = 0x70;
const REG_B_SET = 0x80;
const REG_B_PIE = 0x40;
const REG_B_AIE = 0x20;
const REG_B_UIE = 0x10;
const REG_B_DM_BINARY = 0x04;
const REG_B_24H = 0x02;

// Thursday 29 February 2024, 23:59:58.250 UTC.
const T0 = Date.UTC(2024, 1, 29, 23, 59, 58, 250);

function make(t = T0, withIrq = false) {
  const clock = new FakeClock(t);
  const irq = new FakeIrq();
  const rtc = new CmosRtc({ now: clock.now, timers: clock, irq: withIrq ? irq : undefined });
  const read = (i: number) => {
    rtc.pioWrite(RTC_INDEX_OFFSET, 1, i);
    return rtc.pioRead(RTC_DATA_OFFSET, 1);
  };
  const write = (i: number, v: number) => {
    rtc.pioWrite(RTC_INDEX_OFFSET, 1, i);
    rtc.pioWrite(RTC_DATA_OFFSET, 1, v);
  };
  /** What Linux's mc146818_get_time reads, after waiting for UIP to clear. */
  const time = () => {
    while (read(RTC_REG_A) & REG_A_UIP) clock.t += 0.1;
    return [RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY].map(
      read,
    );
  };
  /** mc146818_set_time: SET + divider reset, write BCD fields, restore B then A. */
  const setTime = (fields: { sec: number; min: number; hour: number; day: number; mon: number; year: number; century: number }) => {
    const saveB = read(RTC_REG_B);
    write(RTC_REG_B, saveB | REG_B_SET);
    const saveA = read(RTC_REG_A);
    write(RTC_REG_A, saveA | REG_A_DV_RESET);
    write(RTC_YEAR, fields.year);
    write(RTC_MONTH, fields.mon);
    write(RTC_DAY_OF_MONTH, fields.day);
    write(RTC_HOURS, fields.hour);
    write(RTC_MINUTES, fields.min);
    write(RTC_SECONDS, fields.sec);
    write(RTC_CENTURY, fields.century);
    write(RTC_REG_B, saveB);
    write(RTC_REG_A, saveA);
  };
  return { rtc, clock, irq, read, write, time, setTime };
}

describe("time registers", () => {
  test("BCD, 24-hour by default, from the host UTC clock", () => {
    const { time, read } = make();
    expect(read(RTC_REG_B)).toBe(REG_B_24H);
    expect(read(RTC_REG_D)).toBe(0x80);
    expect(read(RTC_REG_A) & 0x7f).toBe(0x26);
    // sec, min, hour, weekday (Thursday = 5), day, month, year, century
    expect(time()).toEqual([0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]);
  });

  test("consistent across a roll-over when the guest honours UIP", () => {
    const d = make(Date.UTC(2024, 11, 31, 23, 59, 59, 999.5));
    expect(d.read(RTC_REG_A) & REG_A_UIP).toBe(REG_A_UIP);
    expect(d.time()).toEqual([0x00, 0x00, 0x00, 0x04, 0x01, 0x01, 0x25, 0x20]);
    d.clock.t = Date.UTC(2025, 0, 1, 0, 0, 0, 500);
    expect(d.read(RTC_REG_A) & REG_A_UIP).toBe(0);
  });

  test("binary and 12-hour modes", () => {
    const d = make();
    d.write(RTC_REG_B, REG_B_DM_BINARY); // binary, 12-hour
    expect(d.time()).toEqual([58, 59, 11 | 0x80, 5, 29, 2, 24, 20]);
    d.clock.t = Date.UTC(2024, 1, 29, 0, 30, 0);
    expect(d.read(RTC_HOURS)).toBe(12); // 12 AM
    d.write(RTC_REG_B, 0); // BCD 12-hour
    d.clock.t = Date.UTC(2024, 1, 29, 12, 30, 0);
    expect(d.read(RTC_HOURS)).toBe(0x12 | 0x80); // 12 PM
  });

  test("index register: NMI-disable bit, write-only, plain CMOS RAM", () => {
    const { rtc, read, write } = make();
    rtc.pioWrite(RTC_INDEX_OFFSET, 1, 0x80 | 0x40);
    expect(rtc.nmiDisabled).toBe(true);
    rtc.pioWrite(RTC_DATA_OFFSET, 1, 0x5a);
    expect(read(0x40)).toBe(0x5a);
    expect(rtc.nmiDisabled).toBe(false);
    expect(rtc.pioRead(RTC_INDEX_OFFSET, 1)).toBe(0xff);
    write(RTC_REG_D, 0);
    expect(read(RTC_REG_D)).toBe(0x80);
  });

  test("memory-size bytes for firmware", () => {
    const rtc = new CmosRtc({ memSize: 5 * 1024 * 1024 * 1024, now: () => T0 });
    const read = (i: number) => {
      rtc.pioWrite(RTC_INDEX_OFFSET, 1, i);
      return rtc.pioRead(RTC_DATA_OFFSET, 1);
    };
    expect(read(0x15) | (read(0x16) << 8)).toBe(640);
    expect(read(0x17) | (read(0x18) << 8)).toBe(0xffff);
    expect(read(0x34) | (read(0x35) << 8)).toBe((3 * 1024 - 16) * 16); // 3 GiB below the hole
    expect(read(0x5b) | (read(0x5c) << 8) | (read(0x5d) << 16)).toBe(2 * 1024 * 16); // 2 GiB above 4 GiB
  });
});

describe("setting the time", () => {
  test("SET freezes; Linux's set sequence gives a guest offset; first update 500 ms after release", () => {
    const d = make();
    d.write(RTC_REG_B, REG_B_24H | REG_B_SET);
    const frozen = d.time();
    d.clock.t += 5000;
    expect(d.time()).toEqual(frozen); // no updates while SET
    expect(d.read(RTC_REG_A) & REG_A_UIP).toBe(0);
    d.write(RTC_REG_B, REG_B_24H);
    d.setTime({ sec: 0x56, min: 0x34, hour: 0x12, day: 0x15, mon: 0x06, year: 0x30, century: 0x20 });
    const release = d.clock.t;
    expect(d.time()).toEqual([0x56, 0x34, 0x12, 0x07, 0x15, 0x06, 0x30, 0x20]); // Saturday
    d.clock.t = release + 499;
    expect(d.read(RTC_SECONDS)).toBe(0x56);
    d.clock.t = release + 500;
    expect(d.read(RTC_SECONDS)).toBe(0x57);
    d.clock.t = release + 10_500;
    expect(d.time()).toEqual([0x07, 0x35, 0x12, 0x07, 0x15, 0x06, 0x30, 0x20]);
    expect(d.rtc.guestTimeMs()).toBe(Date.UTC(2030, 5, 15, 12, 35, 7, 0));
  });

  test("SET alone keeps the sub-second phase", () => {
    const d = make(); // host at .250
    d.write(RTC_REG_B, REG_B_24H | REG_B_SET);
    d.write(RTC_MINUTES, 0x00);
    d.write(RTC_REG_B, REG_B_24H);
    expect(d.rtc.guestTimeMs() % 1000).toBe(250);
    expect(d.read(RTC_MINUTES)).toBe(0x00);
  });

  test("a write while running applies at once", () => {
    const d = make();
    d.write(RTC_YEAR, 0x99);
    // 29 Feb 2099 does not exist: normalised to Sunday 1 March.
    expect(d.time()).toEqual([0x58, 0x59, 0x23, 0x01, 0x01, 0x03, 0x99, 0x20]);
  });

  test("guest offset survives save -> JSON -> restore", () => {
    const a = make();
    a.setTime({ sec: 0x00, min: 0x00, hour: 0x08, day: 0x01, mon: 0x01, year: 0x01, century: 0x20 });
    a.clock.t += 3000;
    const before = a.time();
    const state = JSON.parse(JSON.stringify(a.rtc.save())) as RtcState;
    const b = make(a.clock.t);
    b.rtc.restore(state, 1);
    expect(b.time()).toEqual(before);
    // The guest clock keeps following the host clock at its offset.
    a.clock.t += 60_000;
    b.clock.t += 60_000;
    expect(b.time()).toEqual(a.time());
    expect(b.time()).toEqual([0x03, 0x01, 0x08, 0x02, 0x01, 0x01, 0x01, 0x20]);
    expect(b.read(0x40)).toBe(a.read(0x40));
  });

  test("a clock stopped by SET stays stopped across save/restore", () => {
    const a = make();
    a.write(RTC_REG_B, REG_B_24H | REG_B_SET);
    a.write(RTC_HOURS, 0x07);
    const b = make(T0 + 100_000);
    b.rtc.restore(a.rtc.save(), 1);
    expect(b.read(RTC_HOURS)).toBe(0x07);
    expect(b.read(RTC_SECONDS)).toBe(0x58);
    b.write(RTC_REG_B, REG_B_24H);
    b.clock.t += 1000;
    expect(b.read(RTC_SECONDS)).toBe(0x59);
  });
});

describe("interrupt flags", () => {
  test("UF and PF flags are set whatever the enables, read-to-clear, no IRQ unless enabled", () => {
    const d = make(T0, true);
    expect(d.read(RTC_REG_C)).toBe(0);
    d.clock.t += 0.5;
    expect(d.read(RTC_REG_C)).toBe(0); // less than one 1024 Hz period
    d.clock.t += 800;
    expect(d.read(RTC_REG_C)).toBe(0x40 | 0x10); // default rate select: 1024 Hz periodic flag
    expect(d.read(RTC_REG_C)).toBe(0);
    d.write(RTC_REG_A, 0x20); // rate select 0: no periodic flag
    d.clock.t += 1000; // crosses midnight, which the all-zero alarm registers match
    expect(d.read(RTC_REG_C)).toBe(0x10 | 0x20);
    d.clock.t += 1000;
    expect(d.read(RTC_REG_C)).toBe(0x10);
    expect(d.irq.calls).toEqual([]);
    expect(d.clock.armed).toBe(0);
  });

  test("update-ended interrupt via the host timer", () => {
    const d = make(T0, true);
    d.write(RTC_REG_A, 0x20); // no periodic flag in the way
    d.write(RTC_REG_B, REG_B_24H | REG_B_UIE);
    expect(d.clock.armed).toBe(1);
    d.clock.advance(749);
    expect(d.irq.level).toBe(false);
    d.clock.advance(1);
    expect(d.irq.level).toBe(true);
    expect(d.clock.armed).toBe(0); // nothing to do until the guest acknowledges
    expect(d.read(RTC_REG_C)).toBe(0x80 | 0x10);
    expect(d.irq.calls).toEqual([true, false]);
    d.clock.advance(1000);
    expect(d.irq.calls).toEqual([true, false, true]);
    d.rtc.dispose();
  });

  test("alarm interrupt at the programmed time", () => {
    const d = make(T0, true); // 23:59:58.250
    d.write(RTC_REG_A, 0x20);
    d.write(RTC_SECONDS_ALARM, 0x05);
    d.write(RTC_MINUTES_ALARM, 0x00);
    d.write(RTC_HOURS_ALARM, 0xc0); // any hour
    d.write(RTC_REG_B, REG_B_24H | REG_B_AIE);
    d.clock.advance(6_000); // 00:00:04.250
    expect(d.irq.level).toBe(false);
    d.clock.advance(1_000); // 00:00:05.250
    expect(d.irq.level).toBe(true);
    expect(d.read(RTC_REG_C)).toBe(0x80 | 0x20 | 0x10);
    expect(d.irq.level).toBe(false);
    d.rtc.dispose();
    expect(d.clock.armed).toBe(0);
  });

  test("periodic interrupt (coalesced to the minimum timer interval)", () => {
    const d = make(T0, true);
    d.write(RTC_REG_A, 0x20 | 0x0f); // 2 Hz
    d.write(RTC_REG_B, REG_B_24H | REG_B_PIE);
    d.clock.advance(249);
    expect(d.irq.level).toBe(false);
    d.clock.advance(1);
    expect(d.irq.level).toBe(true);
    expect(d.read(RTC_REG_C) & 0xc0).toBe(0xc0);
    d.clock.advance(500);
    expect(d.irq.level).toBe(true);
    d.rtc.reset(); // machine reset clears enables and flags
    expect(d.irq.level).toBe(false);
    expect(d.read(RTC_REG_B)).toBe(REG_B_24H);
    expect(d.clock.armed).toBe(0);
  });
});

test("restore rejects bad state", () => {
  const good = make().rtc.save();
  const d = make();
  const bad: [string, unknown][] = [
    ["cmos", { ...good, cmos: good.cmos.slice(1) }],
    ["cmos", { ...good, cmos: good.cmos.map((v, i) => (i === RTC_REG_A ? v | 0x80 : v)) }],
    ["cmos", { ...good, cmos: good.cmos.map((v, i) => (i === RTC_REG_C ? 0x80 : v)) }],
    ["cmos", { ...good, cmos: good.cmos.map((v, i) => (i === 5 ? 256 : v)) }],
    ["index", { ...good, index: 0x80 }],
    ["nmiDisabled", { ...good, nmiDisabled: 0 }],
    ["offsetMs", { ...good, offsetMs: Number.NaN }],
    ["offsetMs", { ...good, offsetMs: 1e300 }],
  ];
  for (const [field, state] of bad) {
    expect(() => d.rtc.restore(state as RtcState, 1)).toThrow(PersistError);
    expect(() => d.rtc.restore(state as RtcState, 1)).toThrow(field);
  }
  expect(() => d.rtc.restore(good, 2)).toThrow(/version/);
  expect(d.time()).toEqual([0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]);
});
