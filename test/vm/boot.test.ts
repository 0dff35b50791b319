/**
 * The test guest under kiln on both machines: it boots through PVH, every vCPU runs its own loop, and
 * RAM (also above 4 GiB) holds what the guest wrote. Each test checks what the guest itself reported.
 */
import { test, expect, describe } from "bun:test";
import { bootGuest, heartbeats, stop, waitHeartbeat, waitPasses, passes } from "../lib/guest-vm.ts";
import { parseDirty, parseMem, parseReady, parseCpuUp } from "../lib/guest-lines.ts";

describe.each(["microvm", "q35"] as const)("%s", (machine) => {
  test("-smp 1, 512 MiB: boots to READY and its heartbeat advances", async () => {
    const k = await bootGuest({ machine, mem: "512M", smp: 1, append: "memmap hb=20" });
    try {
      const ready = parseReady((await k.waitFor(/^READY/)).input!)!;
      expect(ready.cpus).toBe(1);
      // The memory map kiln gave the guest covers the 512 MiB it was asked for.
      const ram = k.lines.map(parseMem).filter((m) => m && m.type === 1).reduce((n, m) => n + m!.size, 0);
      expect(ram).toBe(512 * 1024 * 1024 - 0x60400);
      const a = await waitHeartbeat(k, 2);
      const b = await waitHeartbeat(k, a.n + 3);
      expect(b.tsc! > a.tsc!).toBe(true);
      expect(b.counters[0]!).toBeGreaterThan(a.counters[0]!);
    } finally {
      await stop(k);
    }
  });

  test("-smp 2: both vCPUs come up and keep making progress", async () => {
    const k = await bootGuest({ machine, mem: "256M", smp: 2, append: "hb=20" });
    try {
      await k.waitFor(/^READY cpus=2/);
      const ups = k.lines.map(parseCpuUp).filter((c) => c !== null);
      expect(ups.map((c) => c!.cpu).sort()).toEqual([0, 1]);
      expect(new Set(ups.map((c) => c!.apic)).size).toBe(2);
      const a = await waitHeartbeat(k, 2);
      const b = await waitHeartbeat(k, a.n + 5);
      expect(a.counters.length).toBe(2);
      for (const cpu of [0, 1]) expect(b.counters[cpu]!).toBeGreaterThan(a.counters[cpu]!);
    } finally {
      await stop(k);
    }
  });
});

test("-smp 2 with the dirtier: every page holds what the guest wrote, pass after pass", async () => {
  const k = await bootGuest({ mem: "512M", smp: 2, append: "dirty=128M" });
  try {
    await waitPasses(k, 2, 5);
    const ps = passes(k);
    expect(ps.length).toBeGreaterThanOrEqual(10);
    expect(ps.every((p) => p.bad === 0)).toBe(true);
    expect(k.lines.some((l) => l.startsWith("BAD"))).toBe(false);
  } finally {
    await stop(k);
  }
});

test("5 GiB: the dirtier verifies RAM above 4 GiB", async () => {
  const k = await bootGuest({ mem: "5G", smp: 2, append: "dirty=all" });
  try {
    await k.waitFor(/^READY/);
    const ranges = k.lines.map(parseDirty).filter((d) => d !== null);
    const high = ranges.filter((r) => r!.end > 0x1_0000_0000);
    expect(high.length).toBeGreaterThan(0);
    expect(Math.max(...ranges.map((r) => r!.end))).toBe(0x1_8000_0000); // 3 GiB below the hole, 2 GiB from 4 GiB
    // Two full passes: the second verifies every page the first wrote, including those above 4 GiB.
    await waitPasses(k, 2, 2, 60_000);
    expect(passes(k).every((p) => p.bad === 0)).toBe(true);
  } finally {
    await stop(k);
  }
}, 90_000);

test("heartbeat TSC stamps are monotonic and spaced as asked", async () => {
  const k = await bootGuest({ append: "hb=10" });
  try {
    await waitHeartbeat(k, 20);
    const hb = heartbeats(k).filter((h) => h.tsc !== null);
    for (let i = 1; i < hb.length; i++) expect(hb[i]!.tsc! > hb[i - 1]!.tsc!).toBe(true);
  } finally {
    await stop(k);
  }
});
