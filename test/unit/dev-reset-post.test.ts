import { describe, expect, test } from "bun:test";
import { PersistError } from "../../src/persist/persist.ts";
import { ResetControl, type ResetControlState } from "../../src/devices/legacy/reset-control.ts";
import { PostPort } from "../../src/devices/legacy/post.ts";

describe("reset control (0xCF9)", () => {
  test("bit 2 resets; reads return the last value without bit 2", () => {
    let resets = 0;
    const rc = new ResetControl({ onReset: () => resets++ });
    expect(rc.read()).toBe(0);
    rc.write(0x02); // select hard reset, no trigger
    expect(resets).toBe(0);
    expect(rc.read()).toBe(0x02);
    rc.write(0x06); // FADT RESET_VALUE
    expect(resets).toBe(1);
    expect(rc.read()).toBe(0x02);
    rc.write(0x0e);
    expect(resets).toBe(2);
    expect(rc.read()).toBe(0x0a);
    rc.write(0x04);
    expect(resets).toBe(3);
    expect(rc.read()).toBe(0x00);
  });

  test("as a one-port PioDevice: byte accesses only", () => {
    let resets = 0;
    const rc = new ResetControl({ onReset: () => resets++ });
    rc.pioWrite(0, 2, 0x0606);
    rc.pioWrite(0, 4, 0x06);
    expect(resets).toBe(0);
    rc.pioWrite(0, 1, 0x06);
    expect(resets).toBe(1);
    expect(rc.pioRead(0, 1)).toBe(0x02);
    expect(rc.pioRead(0, 2)).toBe(0xff);
  });

  test("persistence", () => {
    const a = new ResetControl({ onReset: () => {} });
    a.write(0x0a);
    const b = new ResetControl({ onReset: () => {} });
    b.restore(JSON.parse(JSON.stringify(a.save())) as ResetControlState, 1);
    expect(b.read()).toBe(0x0a);
    expect(() => b.restore({ value: 0x04 }, 1)).toThrow(PersistError);
    expect(() => b.restore({ value: 0x100 }, 1)).toThrow("value");
    expect(() => b.restore({ value: 0 }, 2)).toThrow(/version/);
    expect(b.read()).toBe(0x0a);
  });
});

test("POST port 0x80: reads 0, remembers the last code", () => {
  const p = new PostPort();
  expect(p.lastCode).toBeNull();
  expect(p.pioRead(0, 1)).toBe(0);
  p.pioWrite(0, 1, 0x55);
  p.pioWrite(0, 1, 0x1aa);
  expect(p.lastCode).toBe(0xaa);
  expect(p.writes).toBe(2);
});
