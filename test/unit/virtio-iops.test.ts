/** The token bucket behind -drive throttling.iops-total (a fake clock, no KVM). */
import { test, expect } from "bun:test";
import { IopsLimiter } from "../../src/devices/virtio/blk.ts";

test("a burst of a tenth of a second, then the rate", () => {
  let now = 0;
  const l = new IopsLimiter(100, () => now);
  let n = 0;
  while (l.available()) {
    l.take();
    n++;
  }
  expect(n).toBe(10);
  expect(l.waitMs()).toBeCloseTo(10, 5);
  now += 10;
  expect(l.available()).toBe(true);
  l.take();
  expect(l.available()).toBe(false);
  // Idle time refills only up to the burst.
  now += 10_000;
  n = 0;
  while (l.available()) {
    l.take();
    n++;
  }
  expect(n).toBe(10);
});

test("a low rate still allows one request at a time", () => {
  let now = 0;
  const l = new IopsLimiter(2, () => now);
  expect(l.available()).toBe(true);
  l.take();
  expect(l.available()).toBe(false);
  expect(l.waitMs()).toBeCloseTo(500, 5);
  now += 500;
  expect(l.available()).toBe(true);
});
