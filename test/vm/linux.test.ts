/**
 * Debian's cloud kernel under kiln. On this PVM host Linux's CPL0 code is emulated instruction by
 * instruction and it stops in early boot (see ../shared/notes/host-kvm.md), so these tests check what a
 * kernel prints before that: the banner, the command line kiln passed and the e820 map kiln built.
 */
import { test, expect, describe } from "bun:test";
import { kiln } from "../lib/kiln.ts";
import { linuxGuest } from "../lib/linux-guest.ts";

const CMDLINE = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=1 kiln.test=marker";

describe("Linux", () => {
  test("vmlinux boots through its PVH note: banner, command line and kiln's e820 map", async () => {
    const { vmlinux } = await linuxGuest();
    const k = kiln(["-machine", "microvm", "-m", "512", "-smp", "2", "-kernel", vmlinux, "-append", CMDLINE, "-serial", "stdio"]);
    try {
      const banner = await k.waitFor(/Linux version (\S+)/, 60_000);
      expect(banner[1]).toMatch(/cloud-amd64/);
      expect((await k.waitFor(/Command line: (.*)$/, 60_000))[1]).toBe(CMDLINE);
      // kiln's map for 512 MiB: RAM below the EBDA, the reserved EBDA..1 MiB hole, RAM up to 512 MiB.
      await k.waitFor(/BIOS-e820: \[mem 0x0000000000000000-0x000000000009fbff\] usable/, 60_000);
      await k.waitFor(/BIOS-e820: \[mem 0x000000000009fc00-0x00000000000fffff\] reserved/, 60_000);
      await k.waitFor(/BIOS-e820: \[mem 0x0000000000100000-0x000000001fffffff\] usable/, 60_000);
      // It found kiln's ACPI tables through the RSDP in hvm_start_info.
      await k.waitFor(/ACPI: RSDP 0x00000000000E0000 .*KILN/, 60_000);
    } finally {
      k.kill();
      await k.exited;
    }
  }, 90_000);

  test("vmlinux with 5 GiB sees RAM above 4 GiB in the e820 map", async () => {
    const { vmlinux } = await linuxGuest();
    const k = kiln(["-m", "5G", "-kernel", vmlinux, "-append", CMDLINE, "-serial", "stdio"]);
    try {
      await k.waitFor(/BIOS-e820: \[mem 0x0000000000100000-0x00000000bfffffff\] usable/, 60_000);
      await k.waitFor(/BIOS-e820: \[mem 0x0000000100000000-0x000000017fffffff\] usable/, 60_000);
    } finally {
      k.kill();
      await k.exited;
    }
  }, 90_000);

  // The bzImage decompressor runs at CPL0, which this host emulates: ~1.5-2 minutes to the banner.
  test("bzImage boots through the 64-bit boot protocol (slow on this host)", async () => {
    const { vmlinuz, initramfs } = await linuxGuest();
    const k = kiln(["-m", "512", "-kernel", vmlinuz, "-initrd", initramfs, "-append", CMDLINE, "-serial", "stdio"]);
    try {
      const banner = await k.waitFor(/Linux version (\S+)/, 280_000);
      expect(banner[1]).toMatch(/cloud-amd64/);
      expect((await k.waitFor(/Command line: (.*)$/, 30_000))[1]).toBe(CMDLINE);
    } finally {
      k.kill();
      await k.exited;
    }
  }, 300_000);
});
