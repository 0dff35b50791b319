/**
 * The guest-physical memory map of kiln's x86-64 machines (microvm and q35 share it).
 *
 *   0x0000_0000  real-mode IVT/BDA (left zero)
 *   0x0000_0500  GDT for the 64-bit Linux boot protocol
 *   0x0000_6000  PVH hvm_start_info, then its module list and memory map
 *   0x0000_7000  Linux zero page (boot_params)
 *   0x0000_9000  identity page tables for the 64-bit Linux boot protocol (PML4, PDPT, 4 PDs)
 *   0x0002_0000  kernel command line
 *   0x0009_fc00  EBDA .. 1 MiB: reserved (ACPI tables live at 0xe0000)
 *   0x0010_0000  kernel image (or wherever a PVH ELF's program headers say)
 *   ...          initrd, placed page-aligned at the top of low RAM
 *   0xc000_0000  MMIO hole up to 4 GiB: PCI window, virtio-mmio, ECAM, IOAPIC, LAPIC
 *   0x1_0000_0000 RAM above 4 GiB, when the guest has more than fits below the hole
 */
import type { RamRegion } from "../../memory/types.ts";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const PAGE_SIZE = 4096;

export const BOOT_GDT_START = 0x500;
export const BOOT_IDT_START = 0x520;
export const PVH_INFO_START = 0x6000;
export const PVH_MODLIST_START = 0x6040;
export const PVH_MEMMAP_START = 0x6100;
export const PVH_MEMMAP_MAX_ENTRIES = 128;
export const ZERO_PAGE_START = 0x7000;
export const BOOT_STACK_POINTER = 0x8ff0;
export const PML4_START = 0x9000;
export const PDPTE_START = 0xa000;
export const PDE_START = 0xb000; // four pages: 0xb000..0xefff, identity-map 4 GiB with 2 MiB pages
export const CMDLINE_START = 0x20000;
export const CMDLINE_MAX_SIZE = 0x10000;
export const EBDA_START = 0x9fc00;
export const ACPI_START = 0xe0000; // RSDP first, tables after it, all below 1 MiB
export const ACPI_END = 0x100000;
export const HIGH_MEMORY_START = 0x100000; // 1 MiB: where kernels load
export const KERNEL_DEFAULT_LOAD = 0x100000;

/** Start of the 32-bit MMIO hole; RAM below 4 GiB stops here. */
export const MMIO_HOLE_START = 0xc000_0000;
export const FOUR_GIB = 0x1_0000_0000;

/** PCI 32-bit MMIO window (q35 BARs). */
export const PCI_MMIO32_START = 0xc000_0000;
export const PCI_MMIO32_SIZE = 0x1000_0000;
/** virtio-mmio device slots (microvm): one 4 KiB window each, IRQs from VIRTIO_MMIO_IRQ_BASE. */
export const VIRTIO_MMIO_START = 0xd000_0000;
export const VIRTIO_MMIO_SLOT_SIZE = 0x1000;
export const VIRTIO_MMIO_IRQ_BASE = 16;
/** PCIe ECAM (q35): 256 buses x 1 MiB. */
export const PCIE_ECAM_START = 0xe000_0000;
export const PCIE_ECAM_SIZE = 0x1000_0000;
export const IOAPIC_START = 0xfec0_0000;
export const LAPIC_START = 0xfee0_0000;
/** Pages KVM needs on Intel hosts (KVM_SET_TSS_ADDR takes 3 pages, the identity map one), as QEMU places them. */
export const KVM_IDENTITY_MAP_START = 0xfeff_c000;
export const KVM_TSS_START = 0xfffb_d000;

/** Legacy I/O ports and IRQs. */
export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const I8042_DATA_PORT = 0x60;
export const I8042_CMD_PORT = 0x64;
export const I8042_IRQ = 1;
export const RTC_PORT = 0x70;
export const RTC_IRQ = 8;
export const POST_PORT = 0x80;
/** ACPI fixed-hardware registers (FADT points here): PM1a event (4 bytes), PM1a control (2), PM timer (4). */
export const ACPI_PM_BASE = 0x600;
export const ACPI_PM1A_EVT = ACPI_PM_BASE;
export const ACPI_PM1A_CNT = ACPI_PM_BASE + 4;
export const ACPI_PM_TMR = ACPI_PM_BASE + 8;
export const ACPI_SCI_IRQ = 9;
/** SLP_TYP value kiln's DSDT gives \_S5: a write of SLP_EN with it powers the machine off. */
export const ACPI_S5_SLP_TYP = 5;
/** Reset control register (FADT RESET_REG); writing 0x06 or 0x0e resets the machine. */
export const RESET_CONTROL_PORT = 0xcf9;
export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_CONFIG_DATA_PORT = 0xcfc;

/**
 * Split `memSize` bytes of RAM around the MMIO hole: everything up to MMIO_HOLE_START below 4 GiB,
 * the rest from 4 GiB. Sizes are page multiples.
 */
export function ramRegions(memSize: number): RamRegion[] {
  if (memSize <= 0 || memSize % PAGE_SIZE !== 0) {
    throw new RangeError(`memory size ${memSize} is not a positive multiple of ${PAGE_SIZE}`);
  }
  const low = Math.min(memSize, MMIO_HOLE_START);
  const regions: RamRegion[] = [{ gpa: 0, size: low }];
  if (memSize > low) regions.push({ gpa: FOUR_GIB, size: memSize - low });
  return regions;
}

/** The e820 / PVH memory map type codes. */
export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** The map every boot path hands the guest: RAM minus the EBDA..1 MiB hole, plus reserved ECAM on q35. */
export function e820Map(memSize: number, machine: "microvm" | "q35"): E820Entry[] {
  const [low, high] = ramRegions(memSize);
  const map: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: HIGH_MEMORY_START - EBDA_START, type: E820_RESERVED },
  ];
  if (low!.size > HIGH_MEMORY_START) {
    map.push({ addr: HIGH_MEMORY_START, size: low!.size - HIGH_MEMORY_START, type: E820_RAM });
  }
  if (machine === "q35") map.push({ addr: PCIE_ECAM_START, size: PCIE_ECAM_SIZE, type: E820_RESERVED });
  if (high) map.push({ addr: high.gpa, size: high.size, type: E820_RAM });
  return map;
}
