/**
 * kiln's DSDT: the \_S5 sleep object (for ACPI power-off), the legacy PC devices, the virtio-mmio
 * devices (Linux finds them only through `_HID "LNRO0005"` devices), and on q35 the PCIe host bridge.
 */
import {
  ACPI_S5_SLP_TYP,
  COM1_IRQ,
  COM1_PORT,
  I8042_CMD_PORT,
  I8042_DATA_PORT,
  I8042_IRQ,
  PCI_CONFIG_ADDRESS_PORT,
  RTC_IRQ,
  RTC_PORT,
} from "../layout.ts";
import * as aml from "./aml.ts";
import type { AcpiConfig } from "./build.ts";

/** I/O ports routed to the PCI root: everything but the config mechanism at 0xcf8..0xcff. */
const PCI_IO_BELOW_CONFIG = { min: 0x0000, max: PCI_CONFIG_ADDRESS_PORT - 1 } as const;
const PCI_IO_ABOVE_CONFIG = { min: 0x0d00, max: 0xffff } as const;
const PCI_CONFIG_PORTS = 8;

export const VIRTIO_MMIO_HID = "LNRO0005";

/** "VR00".."VRFF": the ACPI device name of virtio-mmio slot `index`. */
export function virtioDeviceName(index: number): string {
  return `VR${index.toString(16).toUpperCase().padStart(2, "0")}`;
}

export function buildDsdtAml(cfg: AcpiConfig): Uint8Array {
  // \_S5: SLP_TYPa, SLP_TYPb, two reserved. The PM1a control device powers off on SLP_EN with this type.
  const s5 = aml.name("_S5_", aml.pkg(aml.integer(ACPI_S5_SLP_TYP), aml.integer(ACPI_S5_SLP_TYP), aml.integer(0), aml.integer(0)));

  const devices: Uint8Array[] = [
    aml.device(
      "COM1",
      aml.name("_HID", aml.eisaId("PNP0501")),
      aml.name("_UID", aml.integer(1)),
      aml.name("_CRS", aml.resourceTemplate(aml.io(COM1_PORT, COM1_PORT, 0, 8), aml.irqNoFlags(COM1_IRQ))),
    ),
    aml.device(
      "RTC",
      aml.name("_HID", aml.eisaId("PNP0B00")),
      aml.name("_CRS", aml.resourceTemplate(aml.io(RTC_PORT, RTC_PORT, 1, 2), aml.irqNoFlags(RTC_IRQ))),
    ),
    aml.device(
      "KBD",
      aml.name("_HID", aml.eisaId("PNP0303")),
      aml.name(
        "_CRS",
        aml.resourceTemplate(aml.io(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1), aml.io(I8042_CMD_PORT, I8042_CMD_PORT, 1, 1), aml.irqNoFlags(I8042_IRQ)),
      ),
    ),
  ];

  cfg.virtioMmio.forEach((v, i) => {
    devices.push(
      aml.device(
        virtioDeviceName(i),
        aml.name("_HID", aml.string(VIRTIO_MMIO_HID)),
        aml.name("_UID", aml.integer(i)),
        aml.name("_CCA", aml.integer(1)), // cache-coherent DMA
        aml.name(
          "_CRS",
          aml.resourceTemplate(
            aml.memory32Fixed(v.base, v.size),
            aml.extendedInterrupt({ consumer: true, edge: (v.trigger ?? "edge") === "edge", activeLow: false, shared: false }, v.irq),
          ),
        ),
      ),
    );
  });

  if (cfg.pciRoot) {
    const p = cfg.pciRoot;
    const crs = [
      aml.wordBusNumber(p.busStart, p.busEnd),
      aml.io(PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_ADDRESS_PORT, 1, PCI_CONFIG_PORTS),
      aml.wordIo(PCI_IO_BELOW_CONFIG.min, PCI_IO_BELOW_CONFIG.max),
      aml.wordIo(PCI_IO_ABOVE_CONFIG.min, PCI_IO_ABOVE_CONFIG.max),
      aml.dwordMemory({ cacheable: false, readWrite: true }, p.mmio32.base, p.mmio32.base + p.mmio32.size - 1),
    ];
    if (p.mmio64) crs.push(aml.qwordMemory({ cacheable: false, readWrite: true }, p.mmio64.base, BigInt(p.mmio64.base) + BigInt(p.mmio64.size) - 1n));
    devices.push(
      aml.device(
        "PCI0",
        aml.name("_HID", aml.eisaId("PNP0A08")), // PCI Express root bridge
        aml.name("_CID", aml.eisaId("PNP0A03")), // ... compatible with a PCI root bridge
        aml.name("_SEG", aml.integer(0)),
        aml.name("_BBN", aml.integer(p.busStart)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.resourceTemplate(...crs)),
      ),
      // Motherboard resources: Linux checks that the ECAM window from the MCFG is reserved here.
      aml.device(
        "MRES",
        aml.name("_HID", aml.eisaId("PNP0C02")),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.resourceTemplate(ecamResource(p.ecamBase, p.ecamSize))),
      ),
    );
  }

  return aml.concat(s5, aml.scope("\\_SB", ...devices));
}

function ecamResource(base: number, size: number): Uint8Array {
  if (base + size <= 0x1_0000_0000) return aml.memory32Fixed(base, size);
  return aml.qwordMemory({ cacheable: false, readWrite: true }, base, BigInt(base) + BigInt(size) - 1n, true);
}
