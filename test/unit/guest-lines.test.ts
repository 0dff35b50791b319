/**
 * The parsers for the test guest's output lines (test/lib/guest-lines.ts), checked against lines the guest
 * really printed (QEMU microvm + KVM), plus a build of the guest itself (scripts/build-guest.sh) and a look at
 * the ELF's PVH note.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { buildGuest } from "../lib/guest-build.ts";
import {
  collectHeartbeats,
  fnv1a64,
  GuestLineReader,
  parseAcpi,
  parseAction,
  parseActionFailed,
  parseBad,
  parseBanner,
  parseBoot,
  parseCpuFailed,
  parseCpuUp,
  parseDirtier,
  parseDirty,
  parseEcho,
  parseExc,
  parseHeartbeat,
  parseLine,
  parseMem,
  parseModule,
  parseNmi,
  parseNote,
  parsePass,
  parseReady,
  parseTimer,
  parseTsc,
} from "../lib/guest-lines.ts";

/** Output of `-machine microvm -m 5G -smp 2 -initrd <5000 bytes> -append "acpi memmap initrd hb=300 dirty=8M passlog=500 echo"`. */
const transcript = `KILN-GUEST v1 cpus=2 mem=5119 cmdline="acpi memmap initrd hb=300 dirty=8M passlog=500 echo"
TSC khz=2596120 src=kvmclock
TIMER mode=tsc-deadline vector=0xf0
ACPI rsdp=0xf34d0 src=pvh xsdt=0xeff8f rsdt=0x0 madt=0xeff35 fadt=0xefe29 dsdt=0xefd00
ACPI lapic=0xfee00000 cpus=2 pm1a_cnt=0x0 pm1b_cnt=0x0 pm_tmr=0x0
ACPI sleep_ctl=0xfea00200 s5=5 hwreduced=1
MEM addr=0x0 size=0x9fc00 type=1
MEM addr=0x9fc00 size=0x400 type=2
MEM addr=0xd0000 size=0x20000 type=4
MEM addr=0xf0000 size=0x10000 type=2
MEM addr=0xfeffc000 size=0x4000 type=2
MEM addr=0x100000 size=0xbff00000 type=1
MEM addr=0x100000000 size=0x80000000 type=1
MODULE 0 addr=0xbfffe000 size=5000 fnv1a64=0x901b833a5a85fa89
CPU 0 up apic=0
CPU 1 up apic=1
DIRTIER pages=2048 seed=0x3f8e49d3057
DIRTY cpu=0 start=0x2db000 end=0x6db000 pages=1024
DIRTY cpu=1 start=0x6db000 end=0xadb000 pages=1024
BOOT entry_tsc=4367437200335 ready_tsc=4367537087863 us=38475
READY cpus=2
PASS cpu=0 n=500 bad=0 pages=1024
PASS cpu=1 n=500 bad=0 pages=1024
HB n=1 tsc=4368316012419 c=1201,1187
ECHO hi there
`;

describe("single-line parsers", () => {
  test("banner", () => {
    expect(parseBanner('KILN-GUEST v1 cpus=2 mem=511 cmdline="memmap hb=20 dirty=64M"')).toEqual({
      version: 1,
      cpus: 2,
      memMiB: 511,
      cmdline: "memmap hb=20 dirty=64M",
    });
    expect(parseBanner('KILN-GUEST v1 cpus=1 mem=31 cmdline=""')?.cmdline).toBe("");
    expect(parseBanner('KILN-GUEST v1 cpus=1 mem=31 cmdline="a "quoted" b"')?.cmdline).toBe('a "quoted" b');
    expect(parseBanner("KILN-GUEST v1 cpus=1 mem=31")).toBeNull();
  });

  test("TSC and TIMER", () => {
    expect(parseTsc("TSC khz=2596120 src=kvmclock")).toEqual({ khz: 2596120, src: "kvmclock" });
    expect(parseTsc("TSC khz=x src=kvm")).toBeNull();
    expect(parseTimer("TIMER mode=tsc-deadline vector=0xf0")).toEqual({ mode: "tsc-deadline", vector: 0xf0 });
    expect(parseTimer("TIMER mode=oneshot khz=986797 src=oneshot-calibrated vector=0xf0")).toEqual({
      mode: "oneshot",
      khz: 986797,
      src: "oneshot-calibrated",
      vector: 0xf0,
    });
    expect(parseTimer("TIMER mode=periodic vector=0xf0")).toBeNull();
  });

  test("NOTE and ACPI", () => {
    expect(parseNote("NOTE no memmap in start_info: RAM from cmos")).toEqual({
      text: "no memmap in start_info: RAM from cmos",
    });
    expect(parseAcpi("ACPI sleep_ctl=0xfea00200 s5=5 hwreduced=1")).toEqual({
      fields: { sleep_ctl: "0xfea00200", s5: "5", hwreduced: "1" },
    });
    expect(parseAcpi("ACPI")).toBeNull();
  });

  test("MEM", () => {
    expect(parseMem("MEM addr=0x100000000 size=0x80000000 type=1")).toEqual({
      addr: 0x1_0000_0000,
      size: 0x8000_0000,
      type: 1,
    });
    expect(parseMem("MEM addr=0xfd00000000 size=0x300000000 type=2")?.addr).toBe(0xfd_0000_0000);
    expect(parseMem("MEM addr=100000 size=0x8 type=1")).toBeNull();
  });

  test("MODULE", () => {
    expect(parseModule("MODULE 0 addr=0x1fd23000 size=3000001 fnv1a64=0x18d6309d0ac63d68")).toEqual({
      index: 0,
      addr: 0x1fd23000,
      size: 3000001,
      fnv1a64: 0x18d6309d0ac63d68n,
    });
    expect(parseModule("MODULE 0 addr=0x1 size=1 fnv1a64=0x123")).toBeNull(); // always 16 hex digits
  });

  test("CPU up / failed", () => {
    expect(parseCpuUp("CPU 11 up apic=11")).toEqual({ cpu: 11, apic: 11 });
    expect(parseCpuUp("CPU 1 failed apic=1")).toBeNull();
    expect(parseCpuFailed("CPU 1 failed apic=4")).toEqual({ cpu: 1, apic: 4 });
  });

  test("DIRTIER and DIRTY", () => {
    expect(parseDirtier("DIRTIER pages=1309989 seed=0x30798fed1bd")).toEqual({
      pages: 1309989,
      seed: 0x30798fed1bdn,
    });
    expect(parseDirty("DIRTY cpu=1 start=0x100000000 end=0x180000000 pages=524288")).toEqual({
      cpu: 1,
      start: 0x1_0000_0000,
      end: 0x1_8000_0000,
      pages: 524288,
    });
    expect(parseDirty("DIRTIER pages=1 seed=0x1")).toBeNull();
  });

  test("BOOT and READY", () => {
    expect(parseBoot("BOOT entry_tsc=4065071427832 ready_tsc=4065094338980 us=8825")).toEqual({
      entryTsc: 4065071427832n,
      readyTsc: 4065094338980n,
      us: 8825,
    });
    expect(parseReady("READY cpus=2")).toEqual({ cpus: 2 });
    expect(parseReady("READY cpus=2\r")).toEqual({ cpus: 2 });
    expect(parseReady("READY cpus=2\n")).toEqual({ cpus: 2 });
    expect(parseReady("READY")).toBeNull();
    expect(parseReady("xREADY cpus=2")).toBeNull();
  });

  test("PASS and BAD", () => {
    expect(parsePass("PASS cpu=1 n=2 bad=7 pages=1024")).toEqual({ cpu: 1, n: 2, bad: 7, pages: 1024 });
    expect(parsePass("PASS cpu=1 n=2 bad=7")).toBeNull();
    expect(parseBad("BAD cpu=1 addr=0x6e22f0 want=0x789f0b5884254fb1 got=0x0")).toEqual({
      cpu: 1,
      addr: 0x6e22f0,
      want: 0x789f0b5884254fb1n,
      got: 0n,
    });
  });

  test("HB and HB+", () => {
    expect(parseHeartbeat("HB n=1 tsc=2867217121248 c=14,14")).toEqual({
      n: 1,
      tsc: 2867217121248n,
      from: 0,
      counters: [14, 14],
    });
    expect(parseHeartbeat("HB n=7 tsc=1 c=5")?.counters).toEqual([5]);
    expect(parseHeartbeat("HB+ n=2 from=11 c=100542")).toEqual({ n: 2, tsc: null, from: 11, counters: [100542] });
    expect(parseHeartbeat("HB n=1 tsc=1 c=")).toBeNull();
    expect(parseHeartbeat("HB n=1 tsc=1 c=1,,2")).toBeNull();
  });

  test("ACTION, ACTION-FAILED, ECHO", () => {
    expect(parseAction("ACTION poweroff")).toEqual({ action: "poweroff" });
    expect(parseAction("ACTION-FAILED reset")).toBeNull();
    expect(parseActionFailed("ACTION-FAILED reset")).toEqual({ action: "reset" });
    expect(parseEcho("ECHO hello world")).toEqual({ text: "hello world" });
    expect(parseEcho("ECHO  two  spaces ")).toEqual({ text: " two  spaces " });
  });

  test("EXC and NMI", () => {
    expect(parseExc("EXC vec=14 err=0x6 rip=0x107b53 cr2=0x20000000000 cpu=1")).toEqual({
      vector: 14,
      error: 6n,
      rip: 0x107b53n,
      cr2: 0x20000000000n,
      cpu: 1,
    });
    expect(parseExc("EXC vec=13 err=0x0 rip=0xffffffffffffffff cr2=0x0 cpu=0")?.rip).toBe(0xffffffffffffffffn);
    expect(parseNmi("NMI cpu=0 rip=0x1234")).toEqual({ cpu: 0, rip: 0x1234n });
  });

  test("values beyond 2^53 that must be numbers are rejected loudly", () => {
    expect(() => parseMem("MEM addr=0x20000000000000 size=0x1 type=1")).toThrow(RangeError);
  });
});

describe("whole transcripts", () => {
  test("parseLine recognises every line the guest printed", () => {
    const lines = transcript.trimEnd().split("\n");
    const kinds = lines.map((l) => parseLine(l)?.kind);
    expect(kinds).toEqual([
      "banner",
      "tsc",
      "timer",
      "acpi",
      "acpi",
      "acpi",
      "mem",
      "mem",
      "mem",
      "mem",
      "mem",
      "mem",
      "mem",
      "module",
      "cpu-up",
      "cpu-up",
      "dirtier",
      "dirty",
      "dirty",
      "boot",
      "ready",
      "pass",
      "pass",
      "heartbeat",
      "echo",
    ]);
    expect(parseLine("SeaBIOS (version 1.16.2-debian-1.16.2-1)")).toBeNull();
    const ready = parseLine("READY cpus=2");
    expect(ready?.kind === "ready" && ready.cpus).toBe(2);
  });

  test("GuestLineReader splits chunks at any byte", () => {
    const bytes = new TextEncoder().encode(transcript.replaceAll("\n", "\r\n"));
    for (const step of [1, 7, 4096]) {
      const reader = new GuestLineReader();
      const got: string[] = [];
      for (let i = 0; i < bytes.length; i += step) got.push(...reader.push(bytes.subarray(i, i + step)));
      expect(got).toEqual(transcript.trimEnd().split("\n"));
      expect(reader.rest()).toBe("");
    }
    const reader = new GuestLineReader();
    expect(reader.push("READY cp")).toEqual([]);
    expect(reader.push("us=1\nHB")).toEqual(["READY cpus=1"]);
    expect(reader.rest()).toBe("HB");
  });

  test("collectHeartbeats joins HB+ continuations", () => {
    const hbs = collectHeartbeats([
      "HB n=1 tsc=100 c=1,2,3",
      "HB+ n=1 from=3 c=4,5",
      "PASS cpu=0 n=1 bad=0 pages=1",
      "HB+ n=1 from=5 c=6",
      "HB n=2 tsc=200 c=7,8,9",
      "HB+ n=9 from=3 c=10", // belongs to no HB line we saw
    ]);
    expect(hbs).toEqual([
      { n: 1, tsc: 100n, from: 0, counters: [1, 2, 3, 4, 5, 6] },
      { n: 2, tsc: 200n, from: 0, counters: [7, 8, 9] },
    ]);
  });
});

describe("fnv1a64", () => {
  function reference(bytes: Uint8Array): bigint {
    let h = 0xcbf29ce484222325n;
    for (const b of bytes) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
    return h;
  }

  test("known vectors", () => {
    expect(fnv1a64(new Uint8Array())).toBe(0xcbf29ce484222325n);
    expect(fnv1a64(new TextEncoder().encode("a"))).toBe(0xaf63dc4c8601ec8cn);
    expect(fnv1a64(new TextEncoder().encode("foobar"))).toBe(0x85944171f73967e8n);
  });

  test("matches a BigInt reference on random data", () => {
    const bytes = new Uint8Array(4096);
    crypto.getRandomValues(bytes);
    expect(fnv1a64(bytes)).toBe(reference(bytes));
  });
});

describe("the guest ELF", () => {
  test("builds, and carries a PVH entry note and a load segment at 1 MiB", async () => {
    const path = await buildGuest();
    const elf = readFileSync(path);
    const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
    expect(elf.subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    expect(elf[4]).toBe(2); // ELFCLASS64
    const phoff = Number(dv.getBigUint64(0x20, true));
    const phentsize = dv.getUint16(0x36, true);
    const phnum = dv.getUint16(0x38, true);
    let entry: number | undefined;
    let loadAt: number | undefined;
    for (let i = 0; i < phnum; i++) {
      const ph = phoff + i * phentsize;
      const type = dv.getUint32(ph, true);
      const offset = Number(dv.getBigUint64(ph + 8, true));
      const paddr = Number(dv.getBigUint64(ph + 24, true));
      const filesz = Number(dv.getBigUint64(ph + 32, true));
      const memsz = Number(dv.getBigUint64(ph + 40, true));
      if (type === 1) {
        loadAt = paddr;
        expect(memsz).toBeGreaterThanOrEqual(filesz);
      }
      if (type === 4) {
        for (let p = offset; p < offset + filesz; ) {
          const namesz = dv.getUint32(p, true);
          const descsz = dv.getUint32(p + 4, true);
          const ntype = dv.getUint32(p + 8, true);
          const name = elf.subarray(p + 12, p + 12 + namesz).toString("latin1");
          const desc = p + 12 + ((namesz + 3) & ~3);
          if (name === "Xen\0" && ntype === 18) entry = dv.getUint32(desc, true);
          p = desc + ((descsz + 3) & ~3);
        }
      }
    }
    expect(loadAt).toBe(0x100000);
    expect(entry).toBeGreaterThan(0x100000);
    expect(entry).toBeLessThan(0x200000);
  });
});
