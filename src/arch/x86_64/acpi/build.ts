/**
 * Build kiln's ACPI tables into guest memory at [ACPI_START, ACPI_END): the RSDP first (the BIOS
 * scan area 0xe0000..0xfffff, so kernels that ignore the boot-protocol pointer still find it), then
 * FACS, DSDT, FADT, MADT, MCFG (q35), XSDT and RSDT.
 *
 * The FADT describes a full (not hardware-reduced) PC: fixed PM1a event/control registers and a PM
 * timer at ACPI_PM_BASE, SCI on IRQ 9, a reset register at 0xcf9, and a fixed power button (PM1
 * PWRBTN_STS/EN), which is how `system_powerdown` reaches the guest.
 */
import type { GuestMemoryAccess } from "../../../memory/types.ts";
import {
  ACPI_END,
  ACPI_PM1A_CNT,
  ACPI_PM1A_EVT,
  ACPI_PM_TMR,
  ACPI_SCI_IRQ,
  ACPI_START,
  IOAPIC_START,
  LAPIC_START,
  RESET_CONTROL_PORT,
} from "../layout.ts";
import { buildDsdtAml } from "./dsdt.ts";
import {
  buildDsdtTable,
  buildFacs,
  buildFadt,
  buildMadt,
  buildMcfg,
  buildRsdp,
  buildRsdt,
  buildXsdt,
  FACS,
  IAPC_BOOT_ARCH,
  MPS_INTI,
  RSDP,
} from "./tables.ts";

export interface VirtioMmioSlot {
  base: number;
  size: number;
  /** A GSI on the IOAPIC (kiln numbers them from VIRTIO_MMIO_IRQ_BASE = 16). */
  irq: number;
  /**
   * How the guest programs the IOAPIC pin. "edge" (default) matches injecting each interrupt as a
   * pulse (KVM irqfd, or KVM_IRQ_LINE 1 then 0), as Firecracker does; "level" matches holding the
   * line up until the driver acknowledges InterruptStatus, as QEMU's microvm does. The DSDT and the
   * device model must agree, or interrupts get lost.
   */
  trigger?: "edge" | "level";
}

export interface AcpiConfig {
  machine: "microvm" | "q35";
  /** APIC ids 0..cpus-1. */
  cpus: number;
  /** DSDT LNRO0005 entries (microvm; may be empty). */
  virtioMmio: VirtioMmioSlot[];
  /** The PCIe root complex (q35 only, required there). */
  pciRoot?: {
    ecamBase: number;
    ecamSize: number;
    busStart: number;
    busEnd: number;
    mmio32: { base: number; size: number };
    /** Optional 64-bit BAR window above 4 GiB. */
    mmio64?: { base: number; size: number };
  };
  /**
   * Whether the PM timer device counts 32 bits (sets FADT TMR_VAL_EXT). Default false: a 24-bit
   * counter, as QEMU's. Claiming 32 bits for a 24-bit counter makes Linux's clocksource jump.
   */
  pmTimer32bit?: boolean;
}

export class AcpiError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AcpiError";
  }
}

/** GSIs the single IOAPIC serves (KVM's in-kernel IOAPIC has 24 pins). */
export const IOAPIC_PINS = 24;
/** xAPIC ids are 8 bits and 0xff is broadcast; the IOAPIC takes id `cpus`. */
export const MAX_CPUS = 254;
export const MAX_VIRTIO_MMIO_DEVICES = 256;
const TABLE_ALIGN = 16;
/** Value written to the reset register (0xcf9) to reset: "hard reset" (bit 1) with "reset CPU" (bit 2). */
export const RESET_VALUE = 0x06;

/**
 * ISA IRQ 0 (PIT) -> GSI 2: kiln wires the PIT to IOAPIC pin 2, as QEMU does. IRQ 9 (SCI) is
 * level-triggered, active high.
 */
export const INTERRUPT_OVERRIDES = [
  { source: 0, gsi: 2, flags: MPS_INTI.CONFORMS },
  { source: ACPI_SCI_IRQ, gsi: ACPI_SCI_IRQ, flags: MPS_INTI.ACTIVE_HIGH | MPS_INTI.LEVEL },
] as const;

export function buildAcpiTables(mem: GuestMemoryAccess, cfg: AcpiConfig): { rsdpGpa: number; end: number } {
  validate(cfg);

  // Allocate sequentially; the RSDP must be 16-byte aligned in the scan area, so it goes first.
  let next = ACPI_START;
  const writes: { gpa: number; bytes: Uint8Array }[] = [];
  const place = (bytes: Uint8Array, align = TABLE_ALIGN): number => {
    const gpa = Math.ceil(next / align) * align;
    if (gpa + bytes.length > ACPI_END) {
      throw new AcpiError(
        `ACPI tables do not fit in 0x${ACPI_START.toString(16)}..0x${ACPI_END.toString(16)} ` +
          `(needed 0x${(gpa + bytes.length - ACPI_START).toString(16)} bytes); too many devices?`,
      );
    }
    writes.push({ gpa, bytes });
    next = gpa + bytes.length;
    return gpa;
  };
  const rsdpSlot = place(new Uint8Array(RSDP.SIZE));

  const facs = place(buildFacs(), FACS.ALIGN);
  const dsdt = place(buildDsdtTable(buildDsdtAml(cfg)));
  const iapcBootArch =
    IAPC_BOOT_ARCH.I8042 | IAPC_BOOT_ARCH.VGA_NOT_PRESENT | (cfg.machine === "q35" ? IAPC_BOOT_ARCH.LEGACY_DEVICES : 0);
  const tables = [
    place(
      buildFadt({
        facsGpa: facs,
        dsdtGpa: dsdt,
        sciIrq: ACPI_SCI_IRQ,
        pm1aEvt: ACPI_PM1A_EVT,
        pm1aCnt: ACPI_PM1A_CNT,
        pmTmr: ACPI_PM_TMR,
        pmTimer32bit: cfg.pmTimer32bit ?? false,
        resetPort: RESET_CONTROL_PORT,
        resetValue: RESET_VALUE,
        iapcBootArch,
      }),
    ),
    place(
      buildMadt({
        cpus: cfg.cpus,
        localApicGpa: LAPIC_START,
        ioApicId: cfg.cpus,
        ioApicGpa: IOAPIC_START,
        overrides: [...INTERRUPT_OVERRIDES],
      }),
    ),
  ];
  if (cfg.pciRoot) {
    const p = cfg.pciRoot;
    tables.push(place(buildMcfg([{ base: p.ecamBase, segment: 0, startBus: p.busStart, endBus: p.busEnd }])));
  }
  const xsdt = place(buildXsdt(tables));
  const rsdt = place(buildRsdt(tables));
  writes[0]!.bytes = buildRsdp(xsdt, rsdt);

  for (const w of writes) mem.write(w.gpa, w.bytes);
  return { rsdpGpa: rsdpSlot, end: next };
}

function validate(cfg: AcpiConfig): void {
  if (!Number.isInteger(cfg.cpus) || cfg.cpus < 1 || cfg.cpus > MAX_CPUS) {
    throw new AcpiError(`cpus must be an integer from 1 to ${MAX_CPUS}, not ${cfg.cpus}`);
  }
  if (cfg.virtioMmio.length > MAX_VIRTIO_MMIO_DEVICES) {
    throw new AcpiError(`${cfg.virtioMmio.length} virtio-mmio devices; the DSDT names at most ${MAX_VIRTIO_MMIO_DEVICES}`);
  }
  cfg.virtioMmio.forEach((v, i) => {
    const what = `virtio-mmio device ${i} (0x${v.base.toString(16)}, IRQ ${v.irq})`;
    if (!Number.isInteger(v.base) || !Number.isInteger(v.size) || v.base < 0 || v.size <= 0 || v.base + v.size > 0x1_0000_0000) {
      throw new AcpiError(`${what}: its MMIO window must lie below 4 GiB with a positive size`);
    }
    if (!Number.isInteger(v.irq) || v.irq < 0 || v.irq >= IOAPIC_PINS) {
      throw new AcpiError(`${what}: IRQ must be an IOAPIC pin 0..${IOAPIC_PINS - 1}`);
    }
  });
  if (cfg.machine === "q35" && !cfg.pciRoot) throw new AcpiError("a q35 machine needs pciRoot (ECAM and PCI windows) for its ACPI tables");
  if (cfg.machine === "microvm" && cfg.pciRoot) throw new AcpiError("a microvm machine has no PCI root; pciRoot is for q35");
  const p = cfg.pciRoot;
  if (p) {
    if (!(Number.isInteger(p.busStart) && Number.isInteger(p.busEnd) && 0 <= p.busStart && p.busStart <= p.busEnd && p.busEnd <= 255)) {
      throw new AcpiError(`PCI bus range ${p.busStart}..${p.busEnd} must satisfy 0 <= start <= end <= 255`);
    }
    const BUS_ECAM_SIZE = 1 << 20;
    if (p.ecamSize < (p.busEnd + 1) * BUS_ECAM_SIZE) {
      throw new AcpiError(`ECAM window of 0x${p.ecamSize.toString(16)} bytes does not cover buses up to ${p.busEnd} (1 MiB per bus)`);
    }
    if (p.mmio32.size <= 0 || p.mmio32.base + p.mmio32.size > 0x1_0000_0000) {
      throw new AcpiError("the PCI 32-bit MMIO window must lie below 4 GiB with a positive size");
    }
  }
}
