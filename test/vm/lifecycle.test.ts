/**
 * How a guest's life ends, and what kiln's exit status says about it: power off, reset (reboot in
 * place, or exit with -no-reboot), triple fault (registers dumped), and signals.
 */
import { test, expect } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { bootGuest, guestArgs, stop } from "../lib/guest-vm.ts";
import { kiln, scratchDir } from "../lib/kiln.ts";

test("guest power-off through ACPI S5 ends kiln with status 0", async () => {
  for (const machine of ["microvm", "q35"] as const) {
    const k = await bootGuest({ machine, append: "runfor=50 then=poweroff" });
    expect(await k.exitCode()).toBe(0);
    expect(k.lines).toContain("ACTION poweroff");
    expect(k.lines.some((l) => l.startsWith("ACTION-FAILED"))).toBe(false);
  }
});

test("a keyboard-controller reset (reboot=k style) reboots the guest in place", async () => {
  const k = await bootGuest({ smp: 2, append: "runfor=50 then=reset" });
  try {
    // The guest boots, resets, and boots again from scratch: a second banner and READY.
    await k.waitFor(/^ACTION reset/);
    const first = k.lines.length;
    await k.waitFor(/^KILN-GUEST v1/, 10_000, first);
    await k.waitFor(/^READY cpus=2/, 10_000, first);
  } finally {
    await stop(k);
  }
});

test("-no-reboot: a guest reset (i8042 or 0xcf9) ends kiln with status 3", async () => {
  for (const action of ["reset", "cf9"]) {
    const k = await bootGuest({ machine: "q35", append: `runfor=20 then=${action}`, extra: ["-no-reboot"] });
    expect(await k.exitCode()).toBe(3);
    expect(k.lines).toContain(`ACTION ${action}`);
    expect(k.lines.filter((l) => l.startsWith("KILN-GUEST")).length).toBe(1);
  }
});

test("a triple fault ends kiln with status 4 and dumps the vCPU's registers", async () => {
  const k = await bootGuest({ append: "runfor=20 then=triplefault" });
  expect(await k.exitCode()).toBe(4);
  expect(k.stderr).toContain("triple-faulted");
  expect(k.stderr).toMatch(/RIP=0x[0-9a-f]{16}/);
  expect(k.stderr).toMatch(/CR0=0x[0-9a-f]+ CR2=/);
  expect(k.stderr).toMatch(/IDT=0x[0-9a-f]+ limit=0x0000/); // the guest loaded an empty IDT
});

test("SIGTERM and SIGINT end kiln with 128+signal after a clean stop; the pidfile goes with it", async () => {
  const { dir, cleanup } = scratchDir();
  try {
    for (const [sig, code] of [["SIGTERM", 143], ["SIGINT", 130]] as const) {
      const pidfile = join(dir, `kiln-${sig}.pid`);
      const k = await bootGuest({ append: "hb=50", extra: ["-pidfile", pidfile] });
      await k.waitFor(/^READY/);
      expect(readFileSync(pidfile, "utf8").trim()).toBe(String(k.proc.pid));
      k.kill(sig);
      expect(await k.exitCode()).toBe(code);
      expect(existsSync(pidfile)).toBe(false);
    }
  } finally {
    cleanup();
  }
});

test("a second kiln with the same pidfile is refused", async () => {
  const { dir, cleanup } = scratchDir();
  const pidfile = join(dir, "vm.pid");
  const a = await bootGuest({ append: "hb=50", extra: ["-pidfile", pidfile] });
  try {
    await a.waitFor(/^READY/);
    const b = await bootGuest({ extra: ["-pidfile", pidfile] });
    expect(await b.exitCode()).toBe(1);
    expect(b.stderr).toContain("-pidfile");
    expect(b.stderr).toContain("in use");
    expect(readFileSync(pidfile, "utf8").trim()).toBe(String(a.proc.pid));
  } finally {
    await stop(a);
    cleanup();
  }
});

test("-daemonize: the parent returns once the VM runs; a startup failure is reported by the parent", async () => {
  const { dir, cleanup } = scratchDir();
  const pidfile = join(dir, "d.pid");
  const log = join(dir, "console.log");
  try {
    const args = (await guestArgs({ append: "hb=20" })).map((a) => (a === "stdio" ? `file,path=${log}` : a));
    const parent = kiln([...args, "-daemonize", "-pidfile", pidfile]);
    expect(await parent.exitCode()).toBe(0);
    const pid = Number(readFileSync(pidfile, "utf8").trim());
    expect(pid).not.toBe(parent.proc.pid);
    // The daemon keeps the guest running after its parent is gone.
    const hbCount = () => readFileSync(log, "utf8").split("\n").filter((l) => l.startsWith("HB ")).length;
    const before = hbCount();
    for (let i = 0; hbCount() < before + 3 && i < 500; i++) await Bun.sleep(10);
    expect(hbCount()).toBeGreaterThanOrEqual(before + 3);
    process.kill(pid, "SIGTERM");
    for (let i = 0; existsSync(pidfile) && i < 500; i++) await Bun.sleep(10);
    expect(existsSync(pidfile)).toBe(false);

    const bad = kiln(["-daemonize", "-m", "256", "-kernel", join(dir, "nope.elf"), "-serial", "none"]);
    expect(await bad.exitCode()).toBe(1);
    expect(bad.stderr).toContain("nope.elf");
  } finally {
    cleanup();
  }
});
