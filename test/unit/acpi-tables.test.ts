import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AcpiError, buildAcpiTables, buildDsdtAml, type AcpiConfig } from "../../src/arch/x86_64/acpi/index.ts";
import {
  ACPI_END,
  ACPI_PM1A_CNT,
  ACPI_PM1A_EVT,
  ACPI_PM_TMR,
  ACPI_S5_SLP_TYP,
  ACPI_START,
  IOAPIC_START,
  LAPIC_START,
  MiB,
  PCI_MMIO32_SIZE,
  PCI_MMIO32_START,
  PCIE_ECAM_SIZE,
  PCIE_ECAM_START,
  VIRTIO_MMIO_IRQ_BASE,
  VIRTIO_MMIO_SLOT_SIZE,
  VIRTIO_MMIO_START,
} from "../../src/arch/x86_64/layout.ts";
import { ArrayMemory } from "../lib/array-memory.ts";

// ---------------------------------------------------------------------------------------------
// A small independent ACPI table parser: RSDP -> XSDT/RSDT -> each table, checking as it goes.

interface Table {
  gpa: number;
  signature: string;
  length: number;
  revision: number;
  bytes: Uint8Array;
  view: DataView;
}

const sum8 = (b: Uint8Array) => b.reduce((s, x) => (s + x) & 0xff, 0);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

function readTable(mem: ArrayMemory, gpa: number): Table {
  expect(gpa).toBeGreaterThanOrEqual(ACPI_START);
  const length = mem.u32(gpa + 4);
  expect(gpa + length).toBeLessThanOrEqual(ACPI_END);
  const bytes = mem.read(gpa, length);
  expect(sum8(bytes)).toBe(0);
  expect(text(bytes.subarray(10, 16))).toBe("KILN  ");
  return { gpa, signature: text(bytes.subarray(0, 4)), length, revision: bytes[8]!, bytes, view: new DataView(bytes.buffer) };
}

function parseAcpi(mem: ArrayMemory, rsdpGpa: number) {
  const rsdp = mem.read(rsdpGpa, 36);
  expect(text(rsdp.subarray(0, 8))).toBe("RSD PTR ");
  expect(rsdpGpa % 16).toBe(0);
  expect(sum8(rsdp.subarray(0, 20))).toBe(0);
  expect(sum8(rsdp)).toBe(0);
  expect(rsdp[15]).toBe(2);
  expect(text(rsdp.subarray(9, 15))).toBe("KILN  ");
  const rv = new DataView(rsdp.buffer);
  expect(rv.getUint32(20, true)).toBe(36);

  const xsdt = readTable(mem, Number(rv.getBigUint64(24, true)));
  expect(xsdt.signature).toBe("XSDT");
  const entries: number[] = [];
  for (let off = 36; off < xsdt.length; off += 8) entries.push(Number(xsdt.view.getBigUint64(off, true)));

  const rsdt = readTable(mem, rv.getUint32(16, true));
  expect(rsdt.signature).toBe("RSDT");
  const rsdtEntries: number[] = [];
  for (let off = 36; off < rsdt.length; off += 4) rsdtEntries.push(rsdt.view.getUint32(off, true));
  expect(rsdtEntries).toEqual(entries);

  const tables = new Map<string, Table>();
  for (const gpa of entries) {
    const t = readTable(mem, gpa);
    expect(tables.has(t.signature)).toBe(false);
    tables.set(t.signature, t);
  }
  const fadt = tables.get("FACP")!;
  const dsdt = readTable(mem, fadt.view.getUint32(40, true));
  expect(dsdt.signature).toBe("DSDT");
  expect(Number(fadt.view.getBigUint64(140, true))).toBe(dsdt.gpa);
  tables.set("DSDT", dsdt);
  return { xsdt, rsdt, tables };
}

const microvm = (cpus = 1, devices = 2): AcpiConfig => ({
  machine: "microvm",
  cpus,
  virtioMmio: Array.from({ length: devices }, (_, i) => ({
    base: VIRTIO_MMIO_START + i * VIRTIO_MMIO_SLOT_SIZE,
    size: VIRTIO_MMIO_SLOT_SIZE,
    irq: VIRTIO_MMIO_IRQ_BASE + i,
  })),
});

const q35 = (cpus = 4): AcpiConfig => ({
  machine: "q35",
  cpus,
  virtioMmio: [],
  pciRoot: {
    ecamBase: PCIE_ECAM_START,
    ecamSize: PCIE_ECAM_SIZE,
    busStart: 0,
    busEnd: 255,
    mmio32: { base: PCI_MMIO32_START, size: PCI_MMIO32_SIZE },
  },
});

function build(cfg: AcpiConfig) {
  const mem = new ArrayMemory(16 * MiB);
  const result = buildAcpiTables(mem, cfg);
  return { mem, result, ...parseAcpi(mem, result.rsdpGpa) };
}

// ---------------------------------------------------------------------------------------------

describe("table structure", () => {
  test("microvm: RSDP at ACPI_START, FACP + APIC, checksums, no MCFG", () => {
    const { result, tables } = build(microvm());
    expect(result.rsdpGpa).toBe(ACPI_START);
    expect([...tables.keys()].sort()).toEqual(["APIC", "DSDT", "FACP"]);
    expect(result.end).toBeGreaterThan(ACPI_START);
    expect(result.end).toBeLessThanOrEqual(ACPI_END);
  });

  test("q35 adds an MCFG", () => {
    const { tables } = build(q35());
    expect([...tables.keys()].sort()).toEqual(["APIC", "DSDT", "FACP", "MCFG"]);
    const mcfg = tables.get("MCFG")!;
    expect(mcfg.length).toBe(44 + 16);
    expect(Number(mcfg.view.getBigUint64(44, true))).toBe(PCIE_ECAM_START);
    expect(mcfg.view.getUint16(52, true)).toBe(0); // segment
    expect(mcfg.bytes[54]).toBe(0);
    expect(mcfg.bytes[55]).toBe(255);
  });

  test("writes nothing outside [ACPI_START, end)", () => {
    const mem = new ArrayMemory(2 * MiB);
    const { end } = buildAcpiTables(mem, q35());
    const all = mem.read(0, 2 * MiB);
    expect(all.subarray(0, ACPI_START).every((b) => b === 0)).toBe(true);
    expect(all.subarray(end).every((b) => b === 0)).toBe(true);
  });
});

describe("FADT", () => {
  const fadtOf = (cfg: AcpiConfig) => build(cfg).tables.get("FACP")!;

  test("fixed hardware, SCI, reset register", () => {
    const f = fadtOf(microvm());
    const v = f.view;
    expect(f.length).toBe(276);
    expect(f.revision).toBe(6);
    expect(v.getUint16(46, true)).toBe(9); // SCI_INT
    expect(v.getUint32(48, true)).toBe(0); // SMI_CMD: always in ACPI mode
    expect(v.getUint32(56, true)).toBe(ACPI_PM1A_EVT);
    expect(v.getUint32(64, true)).toBe(ACPI_PM1A_CNT);
    expect(v.getUint32(76, true)).toBe(ACPI_PM_TMR);
    expect([f.bytes[88], f.bytes[89], f.bytes[91]]).toEqual([4, 2, 4]);
    const flags = v.getUint32(112, true);
    expect(flags & (1 << 10)).toBeTruthy(); // RESET_REG_SUP
    expect(flags & (1 << 20)).toBe(0); // not HW_REDUCED
    expect(flags & (1 << 4)).toBe(0); // fixed power button present
    expect(flags & (1 << 8)).toBe(0); // 24-bit PM timer by default
    // RESET_REG: system I/O, 8 bits at 0xcf9, value 6
    expect([f.bytes[116], f.bytes[117], f.bytes[118], f.bytes[119]]).toEqual([1, 8, 0, 1]);
    expect(Number(v.getBigUint64(120, true))).toBe(0xcf9);
    expect(f.bytes[128]).toBe(6);
    // X_ blocks as system-I/O GAS
    for (const [off, addr, bits] of [
      [148, ACPI_PM1A_EVT, 32],
      [172, ACPI_PM1A_CNT, 16],
      [208, ACPI_PM_TMR, 32],
    ] as const) {
      expect(f.bytes[off]).toBe(1);
      expect(f.bytes[off + 1]).toBe(bits);
      expect(Number(v.getBigUint64(off + 4, true))).toBe(addr);
    }
  });

  test("FACS", () => {
    const { mem, tables } = build(microvm());
    const f = tables.get("FACP")!;
    const facs = f.view.getUint32(36, true);
    expect(Number(f.view.getBigUint64(132, true))).toBe(facs);
    expect(facs % 64).toBe(0);
    expect(text(mem.read(facs, 4))).toBe("FACS");
    expect(mem.u32(facs + 4)).toBe(64);
  });

  test("IAPC_BOOT_ARCH: 8042 and no VGA; legacy devices on q35 only", () => {
    expect(fadtOf(microvm()).view.getUint16(109, true)).toBe(0b110);
    expect(fadtOf(q35()).view.getUint16(109, true)).toBe(0b111);
  });

  test("TMR_VAL_EXT follows pmTimer32bit", () => {
    expect(fadtOf({ ...microvm(), pmTimer32bit: true }).view.getUint32(112, true) & (1 << 8)).toBeTruthy();
  });
});

describe("MADT", () => {
  const entriesOf = (cpus: number) => {
    const madt = build(microvm(cpus)).tables.get("APIC")!;
    expect(madt.view.getUint32(36, true)).toBe(LAPIC_START);
    expect(madt.view.getUint32(40, true)).toBe(1); // PCAT_COMPAT
    const out: { type: number; bytes: Uint8Array; view: DataView }[] = [];
    for (let off = 44; off < madt.length; ) {
      const len = madt.bytes[off + 1]!;
      expect(len).toBeGreaterThan(0);
      const bytes = madt.bytes.slice(off, off + len);
      out.push({ type: bytes[0]!, bytes, view: new DataView(bytes.buffer) });
      off += len;
    }
    return out;
  };

  test.each([1, 4])("%d CPUs", (cpus) => {
    const e = entriesOf(cpus);
    const lapics = e.filter((x) => x.type === 0);
    expect(lapics.map((x) => [x.bytes[2], x.bytes[3], x.view.getUint32(4, true)])).toEqual(
      Array.from({ length: cpus }, (_, i) => [i, i, 1]),
    );
    const ioapics = e.filter((x) => x.type === 1);
    expect(ioapics.length).toBe(1);
    expect(ioapics[0]!.bytes[2]).toBe(cpus);
    expect(ioapics[0]!.view.getUint32(4, true)).toBe(IOAPIC_START);
    expect(ioapics[0]!.view.getUint32(8, true)).toBe(0);
    const isos = e.filter((x) => x.type === 2).map((x) => ({ bus: x.bytes[2], src: x.bytes[3], gsi: x.view.getUint32(4, true), flags: x.view.getUint16(8, true) }));
    expect(isos).toEqual([
      { bus: 0, src: 0, gsi: 2, flags: 0 },
      { bus: 0, src: 9, gsi: 9, flags: 0x000d },
    ]);
    const nmis = e.filter((x) => x.type === 4);
    expect(nmis.length).toBe(1);
    expect([nmis[0]!.bytes[2], nmis[0]!.bytes[5]]).toEqual([0xff, 1]);
  });
});

describe("DSDT", () => {
  const find = (hay: Uint8Array, needle: number[]) => {
    outer: for (let i = 0; i + needle.length <= hay.length; i++) {
      for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
      return i;
    }
    return -1;
  };
  const ascii = (s: string) => Array.from(new TextEncoder().encode(s));
  const countOf = (hay: Uint8Array, needle: number[]) => {
    let n = 0;
    for (let from = 0, at: number; (at = find(hay.subarray(from), needle)) >= 0; from += at + 1) n++;
    return n;
  };

  test("\\_S5_ carries ACPI_S5_SLP_TYP", () => {
    const dsdt = build(microvm()).tables.get("DSDT")!;
    expect(dsdt.revision).toBe(2);
    const at = find(dsdt.bytes, [0x08, ...ascii("_S5_"), 0x12]);
    expect(at).toBeGreaterThan(0);
    expect(Array.from(dsdt.bytes.subarray(at + 7, at + 13))).toEqual([0x04, 0x0a, ACPI_S5_SLP_TYP, 0x0a, ACPI_S5_SLP_TYP, 0x00]);
  });

  test("one LNRO0005 device per virtio-mmio slot", () => {
    const aml = buildDsdtAml(microvm(1, 3));
    const hid = [0x0d, ...ascii("LNRO0005"), 0];
    expect(countOf(aml, hid)).toBe(3);
    for (const name of ["VR00", "VR01", "VR02"]) expect(find(aml, ascii(name))).toBeGreaterThan(0);
    // Slot 2's window and GSI
    expect(find(aml, [0x86, 0x09, 0x00, 0x01, ...le32(VIRTIO_MMIO_START + 2 * VIRTIO_MMIO_SLOT_SIZE), ...le32(VIRTIO_MMIO_SLOT_SIZE)])).toBeGreaterThan(0);
    expect(find(aml, [0x89, 0x06, 0x00, 0x03, 0x01, ...le32(VIRTIO_MMIO_IRQ_BASE + 2)])).toBeGreaterThan(0);
    expect(find(buildDsdtAml(microvm(1, 0)), hid)).toBe(-1);
  });

  test("level-triggered virtio interrupts on request", () => {
    const cfg = microvm(1, 1);
    cfg.virtioMmio[0]!.trigger = "level";
    expect(find(buildDsdtAml(cfg), [0x89, 0x06, 0x00, 0x01, 0x01, ...le32(VIRTIO_MMIO_IRQ_BASE)])).toBeGreaterThan(0);
  });

  test("legacy devices", () => {
    const aml = buildDsdtAml(microvm());
    expect(find(aml, [0x0c, 0x41, 0xd0, 0x05, 0x01])).toBeGreaterThan(0); // PNP0501
    expect(find(aml, [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00])).toBeGreaterThan(0); // COM1 0x3f8/8, IRQ 4
    expect(find(aml, [0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x22, 0x00, 0x01])).toBeGreaterThan(0); // RTC 0x70/2, IRQ 8
    expect(find(aml, [0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01, 0x22, 0x02, 0x00])).toBeGreaterThan(0); // i8042 0x64, IRQ 1
  });

  test("q35 has the PCI0 host bridge, microvm does not", () => {
    const q = buildDsdtAml(q35());
    expect(find(q, ascii("PCI0"))).toBeGreaterThan(0);
    expect(find(q, [0x0c, 0x41, 0xd0, 0x0a, 0x08])).toBeGreaterThan(0); // PNP0A08
    expect(find(q, [0x0c, 0x41, 0xd0, 0x0a, 0x03])).toBeGreaterThan(0); // PNP0A03
    expect(find(q, [0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0xff, 0, 0, 0, 0x00, 0x01])).toBeGreaterThan(0); // buses 0..255
    expect(find(buildDsdtAml(microvm()), ascii("PCI0"))).toBe(-1);
  });
});

function le32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}

describe("configuration errors", () => {
  test.each([
    ["no CPUs", { ...microvm(), cpus: 0 }, /cpus must be/],
    ["too many CPUs", { ...microvm(), cpus: 255 }, /cpus must be/],
    ["IRQ beyond the IOAPIC", { ...microvm(), virtioMmio: [{ base: VIRTIO_MMIO_START, size: 0x1000, irq: 24 }] }, /IOAPIC pin/],
    ["window above 4 GiB", { ...microvm(), virtioMmio: [{ base: 0xffff_f000, size: 0x2000, irq: 16 }] }, /below 4 GiB/],
    ["q35 without a PCI root", { ...q35(), pciRoot: undefined }, /needs pciRoot/],
    ["microvm with a PCI root", { ...q35(), machine: "microvm" as const }, /no PCI root/],
    ["bus range backwards", { ...q35(), pciRoot: { ...q35().pciRoot!, busStart: 5, busEnd: 4 } }, /bus range/],
    ["ECAM too small", { ...q35(), pciRoot: { ...q35().pciRoot!, ecamSize: 16 * MiB } }, /ECAM window/],
  ] as [string, AcpiConfig, RegExp][])("%s", (_, cfg, message) => {
    const mem = new ArrayMemory(2 * MiB);
    expect(() => buildAcpiTables(mem, cfg)).toThrow(AcpiError);
    expect(() => buildAcpiTables(mem, cfg)).toThrow(message);
    expect(mem.read(ACPI_START, 64).every((b) => b === 0)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// ACPICA's own tools, when installed (apt-get install acpica-tools).

const iasl = Bun.which("iasl");
const acpiexec = Bun.which("acpiexec");

function withDump<T>(cfg: AcpiConfig, fn: (dir: string, tables: Map<string, string>) => T): T {
  const { tables } = build(cfg);
  const dir = mkdtempSync(join(tmpdir(), "kiln-acpi-"));
  try {
    const files = new Map<string, string>();
    for (const [sig, t] of tables) {
      const f = join(dir, `${sig.toLowerCase()}.dat`);
      writeFileSync(f, t.bytes);
      files.set(sig, f);
    }
    return fn(dir, files);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe.skipIf(!iasl)("iasl", () => {
  test.each([
    ["microvm", microvm(2, 2)],
    ["q35", q35(4)],
  ] as [string, AcpiConfig][])("%s tables disassemble, and the DSDT recompiles, without errors", (_, cfg) => {
    withDump(cfg, (dir, files) => {
      for (const [sig, f] of files) {
        const d = Bun.spawnSync([iasl!, "-d", f], { cwd: dir });
        const out = d.stdout.toString() + d.stderr.toString();
        expect(d.exitCode, `${sig}: ${out}`).toBe(0);
        expect(out).not.toMatch(/error|invalid|mismatch/i);
      }
      const dsl = readFileSync(files.get("DSDT")!.replace(/\.dat$/, ".dsl"), "utf8");
      expect(dsl).toContain('Name (_S5, Package (0x04)');
      if (cfg.machine === "microvm") {
        expect(dsl).toContain('Name (_HID, "LNRO0005")');
        expect(dsl).toContain("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive");
      } else {
        expect(dsl).toContain('EisaId ("PNP0A08")');
        expect(dsl).toContain("WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode");
      }
      const c = Bun.spawnSync([iasl!, "-p", join(dir, "recompiled"), files.get("DSDT")!.replace(/\.dat$/, ".dsl")], { cwd: dir });
      const out = c.stdout.toString() + c.stderr.toString();
      expect(out).toMatch(/0 Errors, 0 Warnings/);
    });
  });
});

describe.skipIf(!acpiexec)("acpiexec", () => {
  test("ACPICA loads the DSDT and evaluates its objects", () => {
    withDump(q35(2), (dir, files) => {
      const r = Bun.spawnSync([acpiexec!, "-b", "Evaluate \\_S5; Evaluate \\_SB.PCI0._CRS; Evaluate \\_SB.COM1._CRS", files.get("DSDT")!], {
        cwd: dir,
      });
      const out = r.stdout.toString() + r.stderr.toString();
      expect(out).toContain("Evaluation of \\_S5 returned object");
      expect(out).toContain("Evaluation of \\_SB.PCI0._CRS returned object");
      expect(out).toContain("Evaluation of \\_SB.COM1._CRS returned object");
      expect(out).not.toContain("failed with status");
    });
  });
});
