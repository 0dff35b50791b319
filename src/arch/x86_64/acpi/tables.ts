/**
 * ACPI table encoders (ACPI 6.5 chapter 5): RSDP, the common SDT header, XSDT/RSDT, FADT, FACS,
 * MADT and MCFG. Each returns finished bytes with the checksum set; addresses of other tables are
 * passed in, so the caller decides placement.
 */
import { StructWriter } from "../boot/bytes.ts";

export const OEM_ID = "KILN  ";
export const OEM_TABLE_ID = "KILNVM  ";
export const OEM_REVISION = 1;
export const CREATOR_ID = "KILN";
export const CREATOR_REVISION = 1;

/** Root System Description Pointer (5.2.5.3), revision 2. */
export const RSDP = {
  SIGNATURE: 0, // "RSD PTR "
  CHECKSUM: 8, // over the first 20 bytes (the ACPI 1.0 part)
  OEM_ID: 9,
  REVISION: 15,
  RSDT_ADDRESS: 16, // u32
  LENGTH: 20, // u32
  XSDT_ADDRESS: 24, // u64
  EXTENDED_CHECKSUM: 32, // over all 36 bytes
  V1_SIZE: 20,
  SIZE: 36,
  REVISION_2: 2,
} as const;

/** System Description Table header (5.2.6), 36 bytes, at the start of every table but RSDP and FACS. */
export const SDT_HEADER = {
  SIGNATURE: 0,
  LENGTH: 4, // u32: whole table
  REVISION: 8,
  CHECKSUM: 9, // whole table sums to 0
  OEM_ID: 10,
  OEM_TABLE_ID: 16,
  OEM_REVISION: 24,
  CREATOR_ID: 28,
  CREATOR_REVISION: 32,
  SIZE: 36,
} as const;

/** Generic Address Structure (5.2.3.2), 12 bytes. */
export const GAS = { SPACE_ID: 0, BIT_WIDTH: 1, BIT_OFFSET: 2, ACCESS_SIZE: 3, ADDRESS: 4, SIZE: 12 } as const;
export const GAS_SPACE = { SYSTEM_MEMORY: 0, SYSTEM_IO: 1 } as const;
/** GAS access sizes: 0 = undefined (legacy; the register width decides). */
export const GAS_ACCESS = { UNDEFINED: 0, BYTE: 1, WORD: 2, DWORD: 3, QWORD: 4 } as const;

/** Fixed ACPI Description Table (5.2.9), revision 6: 276 bytes. */
export const FADT = {
  FIRMWARE_CTRL: 36, // u32 FACS address
  DSDT: 40, // u32
  PREFERRED_PM_PROFILE: 45,
  SCI_INT: 46, // u16
  SMI_CMD: 48, // u32
  ACPI_ENABLE: 52,
  ACPI_DISABLE: 53,
  PM1A_EVT_BLK: 56, // u32
  PM1A_CNT_BLK: 64,
  PM_TMR_BLK: 76,
  GPE0_BLK: 80,
  PM1_EVT_LEN: 88,
  PM1_CNT_LEN: 89,
  PM2_CNT_LEN: 90,
  PM_TMR_LEN: 91,
  GPE0_BLK_LEN: 92,
  P_LVL2_LAT: 96, // u16
  P_LVL3_LAT: 98, // u16
  CENTURY: 108,
  IAPC_BOOT_ARCH: 109, // u16
  FLAGS: 112, // u32
  RESET_REG: 116, // GAS
  RESET_VALUE: 128,
  ARM_BOOT_ARCH: 129, // u16
  MINOR_VERSION: 131,
  X_FIRMWARE_CTRL: 132, // u64
  X_DSDT: 140, // u64
  X_PM1A_EVT_BLK: 148, // GAS
  X_PM1B_EVT_BLK: 160,
  X_PM1A_CNT_BLK: 172,
  X_PM1B_CNT_BLK: 184,
  X_PM2_CNT_BLK: 196,
  X_PM_TMR_BLK: 208,
  X_GPE0_BLK: 220,
  X_GPE1_BLK: 232,
  SLEEP_CONTROL_REG: 244,
  SLEEP_STATUS_REG: 256,
  HYPERVISOR_VENDOR_ID: 268, // u64
  SIZE: 276,
  REVISION: 6,
} as const;

/** FADT Flags (5.2.9, table 5.10). */
export const FADT_FLAGS = {
  WBINVD: 1 << 0,
  PROC_C1: 1 << 2,
  /** Set: no fixed-feature power button. Clear: PM1 PWRBTN_STS/EN drive a power button. */
  PWR_BUTTON: 1 << 4,
  /** Set: no fixed-feature sleep button. */
  SLP_BUTTON: 1 << 5,
  TMR_VAL_EXT: 1 << 8,
  RESET_REG_SUP: 1 << 10,
  HW_REDUCED_ACPI: 1 << 20,
} as const;

/** IAPC_BOOT_ARCH flags (5.2.9.3). */
export const IAPC_BOOT_ARCH = {
  LEGACY_DEVICES: 1 << 0,
  I8042: 1 << 1,
  VGA_NOT_PRESENT: 1 << 2,
  MSI_NOT_SUPPORTED: 1 << 3,
  PCIE_ASPM_CONTROLS: 1 << 4,
  CMOS_RTC_NOT_PRESENT: 1 << 5,
} as const;

/** P_LVL2_LAT > 100 and P_LVL3_LAT > 1000 mean "C2/C3 not supported". */
export const C2_NOT_SUPPORTED = 101;
export const C3_NOT_SUPPORTED = 1001;

/** Firmware ACPI Control Structure (5.2.10): no SDT header, no checksum, 64-byte aligned. */
export const FACS = {
  SIGNATURE: 0,
  LENGTH: 4,
  HARDWARE_SIGNATURE: 8,
  FIRMWARE_WAKING_VECTOR: 12,
  GLOBAL_LOCK: 16,
  FLAGS: 20,
  X_FIRMWARE_WAKING_VECTOR: 24,
  VERSION: 32,
  SIZE: 64,
  ALIGN: 64,
  VERSION_2: 2,
} as const;

/** Multiple APIC Description Table (5.2.12). */
export const MADT = {
  LOCAL_APIC_ADDRESS: 36, // u32
  FLAGS: 40, // u32
  ENTRIES: 44,
  REVISION: 3,
  PCAT_COMPAT: 1 << 0,
} as const;

export const MADT_ENTRY = {
  LOCAL_APIC: { TYPE: 0, LENGTH: 8, PROCESSOR_UID: 2, APIC_ID: 3, FLAGS: 4 },
  IO_APIC: { TYPE: 1, LENGTH: 12, ID: 2, ADDRESS: 4, GSI_BASE: 8 },
  INTERRUPT_OVERRIDE: { TYPE: 2, LENGTH: 10, BUS: 2, SOURCE: 3, GSI: 4, FLAGS: 8 },
  LOCAL_APIC_NMI: { TYPE: 4, LENGTH: 6, PROCESSOR_UID: 2, FLAGS: 3, LINT: 5 },
} as const;
export const LOCAL_APIC_ENABLED = 1 << 0;
/** MPS INTI flags (5.2.12.5): polarity in bits 1..0, trigger mode in bits 3..2; 0 = "conforms to the bus". */
export const MPS_INTI = {
  CONFORMS: 0,
  ACTIVE_HIGH: 0b01,
  ACTIVE_LOW: 0b11,
  EDGE: 0b01 << 2,
  LEVEL: 0b11 << 2,
} as const;
/** Processor UID meaning "all processors" in a Local APIC NMI entry. */
export const ALL_PROCESSORS = 0xff;
export const ISA_BUS = 0;

/** PCI Express memory-mapped configuration table (PCI Firmware spec 4.1.2). */
export const MCFG = {
  RESERVED: 36, // 8 bytes
  ALLOCATIONS: 44,
  ALLOCATION: { BASE: 0, SEGMENT: 8, START_BUS: 10, END_BUS: 11, SIZE: 16 },
  REVISION: 1,
} as const;

export const XSDT_REVISION = 1;
export const RSDT_REVISION = 1;

// ---------------------------------------------------------------------------------------------

/** A table under construction: the boot code's little-endian struct writer plus fixed-width ASCII fields. */
class TableWriter extends StructWriter {
  ascii(off: number, s: string, len: number): this {
    if (s.length !== len) throw new RangeError(`"${s}" must be exactly ${len} characters`);
    for (let i = 0; i < len; i++) this.bytes[off + i] = s.charCodeAt(i);
    return this;
  }
}

/** The byte that makes `bytes[start..end)` sum to zero when stored at `at` (which must hold 0). */
export function checksum(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let sum = 0;
  for (let i = start; i < end; i++) sum = (sum + bytes[i]!) & 0xff;
  return (0x100 - sum) & 0xff;
}

/** A table with its SDT header filled in and checksummed; `body` starts at offset 36. */
export function sdt(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const w = new TableWriter(SDT_HEADER.SIZE + body.length);
  w.ascii(SDT_HEADER.SIGNATURE, signature, 4)
    .u32(SDT_HEADER.LENGTH, w.bytes.length)
    .u8(SDT_HEADER.REVISION, revision)
    .ascii(SDT_HEADER.OEM_ID, OEM_ID, 6)
    .ascii(SDT_HEADER.OEM_TABLE_ID, OEM_TABLE_ID, 8)
    .u32(SDT_HEADER.OEM_REVISION, OEM_REVISION)
    .ascii(SDT_HEADER.CREATOR_ID, CREATOR_ID, 4)
    .u32(SDT_HEADER.CREATOR_REVISION, CREATOR_REVISION)
    .set(SDT_HEADER.SIZE, body);
  w.u8(SDT_HEADER.CHECKSUM, checksum(w.bytes));
  return w.bytes;
}

/** Build a table whose fields are written at absolute offsets (header included) by `fill`. */
function fixedTable(signature: string, revision: number, size: number, fill: (w: TableWriter) => void): Uint8Array {
  const w = new TableWriter(size);
  fill(w);
  return sdt(signature, revision, w.bytes.subarray(SDT_HEADER.SIZE));
}

export function buildRsdp(xsdtGpa: number, rsdtGpa: number): Uint8Array {
  const w = new TableWriter(RSDP.SIZE)
    .ascii(RSDP.SIGNATURE, "RSD PTR ", 8)
    .ascii(RSDP.OEM_ID, OEM_ID, 6)
    .u8(RSDP.REVISION, RSDP.REVISION_2)
    .u32(RSDP.RSDT_ADDRESS, rsdtGpa)
    .u32(RSDP.LENGTH, RSDP.SIZE)
    .u64(RSDP.XSDT_ADDRESS, xsdtGpa);
  w.u8(RSDP.CHECKSUM, checksum(w.bytes, 0, RSDP.V1_SIZE));
  w.u8(RSDP.EXTENDED_CHECKSUM, checksum(w.bytes));
  return w.bytes;
}

export function buildXsdt(tables: number[]): Uint8Array {
  const body = new TableWriter(tables.length * 8);
  tables.forEach((gpa, i) => body.u64(i * 8, gpa));
  return sdt("XSDT", XSDT_REVISION, body.bytes);
}

export function buildRsdt(tables: number[]): Uint8Array {
  const body = new TableWriter(tables.length * 4);
  tables.forEach((gpa, i) => {
    if (gpa > 0xffff_ffff) throw new RangeError(`table at 0x${gpa.toString(16)} is out of the RSDT's 32-bit reach`);
    body.u32(i * 4, gpa);
  });
  return sdt("RSDT", RSDT_REVISION, body.bytes);
}

export function buildFacs(): Uint8Array {
  return new TableWriter(FACS.SIZE).ascii(FACS.SIGNATURE, "FACS", 4).u32(FACS.LENGTH, FACS.SIZE).u8(FACS.VERSION, FACS.VERSION_2).bytes;
}

export interface Gas {
  space: number;
  bitWidth: number;
  bitOffset?: number;
  accessSize: number;
  address: number;
}

function writeGas(w: TableWriter, off: number, g: Gas): void {
  w.u8(off + GAS.SPACE_ID, g.space)
    .u8(off + GAS.BIT_WIDTH, g.bitWidth)
    .u8(off + GAS.BIT_OFFSET, g.bitOffset ?? 0)
    .u8(off + GAS.ACCESS_SIZE, g.accessSize)
    .u64(off + GAS.ADDRESS, g.address);
}

export interface FadtParams {
  facsGpa: number;
  dsdtGpa: number;
  sciIrq: number;
  pm1aEvt: number;
  pm1aCnt: number;
  pmTmr: number;
  pmTimer32bit: boolean;
  resetPort: number;
  resetValue: number;
  iapcBootArch: number;
}

/** PM1 event block: status + enable, 2 bytes each. PM1 control: 2 bytes. PM timer: 4 bytes. */
export const PM1_EVT_LEN = 4;
export const PM1_CNT_LEN = 2;
export const PM_TMR_LEN = 4;

export function buildFadt(p: FadtParams): Uint8Array {
  const F = FADT;
  const io = (address: number, bytes: number, accessSize: number = GAS_ACCESS.UNDEFINED): Gas => ({
    space: GAS_SPACE.SYSTEM_IO,
    bitWidth: bytes * 8,
    accessSize,
    address,
  });
  return fixedTable("FACP", F.REVISION, F.SIZE, (w) => {
    // Both the 32-bit and X_ forms point at the same FACS/DSDT, which ACPICA accepts.
    w.u32(F.FIRMWARE_CTRL, p.facsGpa).u32(F.DSDT, p.dsdtGpa);
    w.u8(F.PREFERRED_PM_PROFILE, 0); // unspecified
    w.u16(F.SCI_INT, p.sciIrq);
    // SMI_CMD = 0: no SMM handshake; the machine is always in ACPI mode (PM1 SCI_EN reads 1).
    w.u32(F.SMI_CMD, 0).u8(F.ACPI_ENABLE, 0).u8(F.ACPI_DISABLE, 0);
    w.u32(F.PM1A_EVT_BLK, p.pm1aEvt).u32(F.PM1A_CNT_BLK, p.pm1aCnt).u32(F.PM_TMR_BLK, p.pmTmr);
    w.u8(F.PM1_EVT_LEN, PM1_EVT_LEN).u8(F.PM1_CNT_LEN, PM1_CNT_LEN).u8(F.PM_TMR_LEN, PM_TMR_LEN);
    w.u16(F.P_LVL2_LAT, C2_NOT_SUPPORTED).u16(F.P_LVL3_LAT, C3_NOT_SUPPORTED);
    w.u16(F.IAPC_BOOT_ARCH, p.iapcBootArch);
    w.u32(
      F.FLAGS,
      FADT_FLAGS.WBINVD | FADT_FLAGS.PROC_C1 | FADT_FLAGS.SLP_BUTTON | FADT_FLAGS.RESET_REG_SUP | (p.pmTimer32bit ? FADT_FLAGS.TMR_VAL_EXT : 0),
    );
    writeGas(w, F.RESET_REG, io(p.resetPort, 1, GAS_ACCESS.BYTE));
    w.u8(F.RESET_VALUE, p.resetValue);
    w.u64(F.X_FIRMWARE_CTRL, p.facsGpa).u64(F.X_DSDT, p.dsdtGpa);
    writeGas(w, F.X_PM1A_EVT_BLK, io(p.pm1aEvt, PM1_EVT_LEN));
    writeGas(w, F.X_PM1A_CNT_BLK, io(p.pm1aCnt, PM1_CNT_LEN));
    writeGas(w, F.X_PM_TMR_BLK, io(p.pmTmr, PM_TMR_LEN));
  });
}

export interface MadtParams {
  cpus: number;
  localApicGpa: number;
  ioApicId: number;
  ioApicGpa: number;
  overrides: { source: number; gsi: number; flags: number }[];
}

export function buildMadt(p: MadtParams): Uint8Array {
  const E = MADT_ENTRY;
  const size =
    MADT.ENTRIES + p.cpus * E.LOCAL_APIC.LENGTH + E.IO_APIC.LENGTH + p.overrides.length * E.INTERRUPT_OVERRIDE.LENGTH + E.LOCAL_APIC_NMI.LENGTH;
  return fixedTable("APIC", MADT.REVISION, size, (w) => {
    w.u32(MADT.LOCAL_APIC_ADDRESS, p.localApicGpa).u32(MADT.FLAGS, MADT.PCAT_COMPAT);
    let off: number = MADT.ENTRIES;
    for (let cpu = 0; cpu < p.cpus; cpu++) {
      const L = E.LOCAL_APIC;
      w.u8(off, L.TYPE).u8(off + 1, L.LENGTH).u8(off + L.PROCESSOR_UID, cpu).u8(off + L.APIC_ID, cpu).u32(off + L.FLAGS, LOCAL_APIC_ENABLED);
      off += L.LENGTH;
    }
    const I = E.IO_APIC;
    w.u8(off, I.TYPE).u8(off + 1, I.LENGTH).u8(off + I.ID, p.ioApicId).u32(off + I.ADDRESS, p.ioApicGpa).u32(off + I.GSI_BASE, 0);
    off += I.LENGTH;
    for (const o of p.overrides) {
      const S = E.INTERRUPT_OVERRIDE;
      w.u8(off, S.TYPE).u8(off + 1, S.LENGTH).u8(off + S.BUS, ISA_BUS).u8(off + S.SOURCE, o.source).u32(off + S.GSI, o.gsi).u16(off + S.FLAGS, o.flags);
      off += S.LENGTH;
    }
    // NMI arrives on every CPU's LINT1, as on PC hardware.
    const N = E.LOCAL_APIC_NMI;
    w.u8(off, N.TYPE).u8(off + 1, N.LENGTH).u8(off + N.PROCESSOR_UID, ALL_PROCESSORS).u16(off + N.FLAGS, MPS_INTI.CONFORMS).u8(off + N.LINT, 1);
  });
}

export interface McfgAllocation {
  base: number;
  segment: number;
  startBus: number;
  endBus: number;
}

export function buildMcfg(allocations: McfgAllocation[]): Uint8Array {
  const A = MCFG.ALLOCATION;
  return fixedTable("MCFG", MCFG.REVISION, MCFG.ALLOCATIONS + allocations.length * A.SIZE, (w) => {
    allocations.forEach((a, i) => {
      const off = MCFG.ALLOCATIONS + i * A.SIZE;
      w.u64(off + A.BASE, a.base).u16(off + A.SEGMENT, a.segment).u8(off + A.START_BUS, a.startBus).u8(off + A.END_BUS, a.endBus);
    });
  });
}

/** The DSDT: the SDT header around the AML. Revision 2 gives 64-bit AML integers. */
export const DSDT_REVISION = 2;
export function buildDsdtTable(aml: Uint8Array): Uint8Array {
  return sdt("DSDT", DSDT_REVISION, aml);
}
