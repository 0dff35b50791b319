import { describe, expect, test } from "bun:test";
import type { IrqLine } from "../../src/devices/bus.ts";
import { PersistError } from "../../src/persist/persist.ts";
import { ACPI_S5_SLP_TYP } from "../../src/arch/x86_64/layout.ts";
import {
  AcpiPm,
  PM1_CNT_OFFSET,
  PM1_EN_OFFSET,
  PM1_STS_OFFSET,
  PM_TMR_OFFSET,
  type AcpiPmState,
} from "../../src/devices/legacy/acpi-pm.ts";

class FakeIrq implements IrqLine {
  calls: boolean[] = [];
  level = false;
  set(level: boolean): void {
    this.calls.push(level);
    this.level = level;
  }
}

const PM_TIMER_HZ = 3_579_545;
const SLP_EN = 1 << 13;
const SLP_TYP_SHIFT = 10;
const SCI_EN = 1;
const PWRBTN = 0x100;
const TMR_STS = 0x1;

function make(startNs = 5_000_000_000n) {
  let ns = startNs;
  const sci = new FakeIrq();
  let powerOffs = 0;
  const ignored: number[] = [];
  const pm = new AcpiPm({
    onPowerOff: () => powerOffs++,
    onUnsupportedSleep: (t) => ignored.push(t),
    sciIrq: sci,
    now: () => ns,
  });
  return {
    pm,
    sci,
    ignored,
    powerOffs: () => powerOffs,
    advance: (dns: bigint) => {
      ns += dns;
    },
    tmr: () => pm.pioRead(PM_TMR_OFFSET, 4),
  };
}

describe("PM timer", () => {
  test("counts at 3.579545 MHz from an injected monotonic clock", () => {
    const d = make();
    expect(d.tmr()).toBe(0);
    d.advance(1_000_000_000n);
    expect(d.tmr()).toBe(PM_TIMER_HZ);
    d.advance(1_000_000n); // 1 ms = 3579.545 ticks
    expect(d.tmr()).toBe(PM_TIMER_HZ + 3579);
    let prev = d.tmr();
    for (let i = 0; i < 1000; i++) {
      d.advance(279n); // about one tick
      const v = d.tmr();
      expect(v).toBeGreaterThanOrEqual(prev);
      expect(v - prev).toBeLessThanOrEqual(1);
      prev = v;
    }
    // 1000 * 279 ns = 279 us -> 998.69 ticks
    expect(prev - (PM_TIMER_HZ + 3579)).toBeGreaterThanOrEqual(998);
  });

  test("32 bits wide (TMR_VAL_EXT), unsigned, wrapping; byte and word reads assemble it", () => {
    const d = make(0n);
    // 0x80000000 ticks in ns, rounded up.
    const halfNs = (0x8000_0000n * 1_000_000_000n + 3_579_544n) / 3_579_545n;
    d.advance(halfNs);
    const v = d.tmr();
    expect(v).toBeGreaterThanOrEqual(0x8000_0000);
    expect(v).toBeLessThan(0x8000_0010);
    const bytes = [0, 1, 2, 3].map((i) => d.pm.pioRead(PM_TMR_OFFSET + i, 1));
    expect((bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16)) + bytes[3]! * 0x1000000).toBe(v);
    expect(d.pm.pioRead(PM_TMR_OFFSET + 2, 2)).toBe(v >>> 16);
    // TMR_STS latched when bit 31 toggled.
    expect(d.pm.pioRead(PM1_STS_OFFSET, 2) & TMR_STS).toBe(TMR_STS);
    d.pm.pioWrite(PM1_STS_OFFSET, 2, TMR_STS);
    expect(d.pm.pioRead(PM1_STS_OFFSET, 2) & TMR_STS).toBe(0);
    d.advance(halfNs);
    expect(d.tmr()).toBeLessThan(0x10); // wrapped
    d.pm.pioWrite(PM_TMR_OFFSET, 4, 0x1234); // read-only
    expect(d.tmr()).toBeLessThan(0x10);
  });

  test("continues from the saved value on restore (no jump across migration)", () => {
    const a = make(7_000_000_000n);
    a.advance(2_000_000_000n);
    const state = JSON.parse(JSON.stringify(a.pm.save())) as AcpiPmState;
    const b = make(123_456_789_000n); // another host, another monotonic origin
    b.pm.restore(state, 1);
    expect(b.tmr()).toBe(2 * PM_TIMER_HZ);
    b.advance(1_000_000_000n);
    expect(b.tmr()).toBe(3 * PM_TIMER_HZ);
  });
});

describe("PM1 control: sleep", () => {
  test("SLP_EN with SLP_TYP = S5 powers off; other types are ignored and reported", () => {
    const d = make();
    expect(d.pm.pioRead(PM1_CNT_OFFSET, 2)).toBe(SCI_EN);
    // SLP_TYP alone: nothing yet.
    d.pm.pioWrite(PM1_CNT_OFFSET, 2, ACPI_S5_SLP_TYP << SLP_TYP_SHIFT);
    expect(d.powerOffs()).toBe(0);
    expect(d.pm.pioRead(PM1_CNT_OFFSET, 2)).toBe((ACPI_S5_SLP_TYP << SLP_TYP_SHIFT) | SCI_EN);
    // S3 (type 1 in a typical DSDT) with SLP_EN: ignored.
    d.pm.pioWrite(PM1_CNT_OFFSET, 2, (1 << SLP_TYP_SHIFT) | SLP_EN);
    expect(d.powerOffs()).toBe(0);
    expect(d.ignored).toEqual([1]);
    expect(d.pm.pioRead(PM1_CNT_OFFSET, 2) & SLP_EN).toBe(0); // write-only
    // S5 with SLP_EN, as Linux's acpi_hw_legacy_sleep writes it.
    d.pm.pioWrite(PM1_CNT_OFFSET, 2, (ACPI_S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN | SCI_EN);
    expect(d.powerOffs()).toBe(1);
    expect(d.ignored).toEqual([1]);
  });

  test("a byte write of the high PM1_CNT byte is enough", () => {
    const d = make();
    d.pm.pioWrite(PM1_CNT_OFFSET + 1, 1, ((ACPI_S5_SLP_TYP << SLP_TYP_SHIFT) | SLP_EN) >> 8);
    expect(d.powerOffs()).toBe(1);
    // A low-byte write does not touch SLP_TYP/SLP_EN.
    d.pm.pioWrite(PM1_CNT_OFFSET, 1, 0xff);
    expect(d.powerOffs()).toBe(1);
    expect(d.pm.pioRead(PM1_CNT_OFFSET, 2)).toBe((ACPI_S5_SLP_TYP << SLP_TYP_SHIFT) | 0x2 | SCI_EN);
  });
});

describe("PM1 event block", () => {
  test("status write-1-to-clear, enables, SCI level", () => {
    const d = make();
    d.pm.pressPowerButton();
    expect(d.sci.calls).toEqual([]); // not enabled
    expect(d.pm.pioRead(PM1_STS_OFFSET, 2) & PWRBTN).toBe(PWRBTN);
    d.pm.pioWrite(PM1_EN_OFFSET, 2, PWRBTN);
    expect(d.sci.calls).toEqual([true]);
    expect(d.pm.pioRead(PM1_EN_OFFSET, 2)).toBe(PWRBTN);
    // Writing 0 to the status clears nothing; a byte write to the low byte leaves bit 8 alone.
    d.pm.pioWrite(PM1_STS_OFFSET, 2, 0);
    d.pm.pioWrite(PM1_STS_OFFSET, 1, 0xff);
    expect(d.sci.level).toBe(true);
    d.pm.pioWrite(PM1_STS_OFFSET + 1, 1, PWRBTN >> 8);
    expect(d.sci.calls).toEqual([true, false]);
    // A dword write at +0 covers status and enable together.
    d.pm.pressPowerButton();
    expect(d.sci.level).toBe(true);
    d.pm.pioWrite(PM1_STS_OFFSET, 4, PWRBTN | (0 << 16));
    expect(d.sci.level).toBe(false);
    expect(d.pm.pioRead(PM1_STS_OFFSET, 4)).toBe(0);
  });

  test("save/restore of status and enables; bad state rejected", () => {
    const a = make();
    a.pm.pioWrite(PM1_EN_OFFSET, 2, PWRBTN);
    a.pm.pressPowerButton();
    const b = make();
    b.pm.restore(a.pm.save(), 1);
    expect(b.sci.calls).toEqual([true]);
    expect(b.pm.pioRead(PM1_STS_OFFSET, 4)).toBe(a.pm.pioRead(PM1_STS_OFFSET, 4));

    const good = a.pm.save();
    const bad: [string, unknown][] = [
      ["sts", { ...good, sts: 0x10000 }],
      ["sts", { ...good, sts: 0x0002 }],
      ["en", { ...good, en: 0x8000 }],
      ["cnt", { ...good, cnt: SLP_EN }],
      ["cnt", { ...good, cnt: SCI_EN }],
      ["timer", { ...good, timer: 2 ** 32 }],
      ["timer", { ...good, timer: "0" }],
    ];
    const c = make();
    for (const [field, state] of bad) {
      expect(() => c.pm.restore(state as AcpiPmState, 1)).toThrow(PersistError);
      expect(() => c.pm.restore(state as AcpiPmState, 1)).toThrow(field);
    }
    expect(() => c.pm.restore(good, 9)).toThrow(/version/);
    expect(c.sci.calls).toEqual([]);
  });
});

test("unused ports 6-7 read as all ones", () => {
  const d = make();
  expect(d.pm.pioRead(6, 2)).toBe(0xffff);
  expect(d.pm.pioRead(PM1_CNT_OFFSET, 4)).toBe(0xffff0000 + SCI_EN);
});
