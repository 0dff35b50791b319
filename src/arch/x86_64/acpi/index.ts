/** x86-64 ACPI tables: RSDP, XSDT/RSDT, FADT, FACS, MADT, MCFG and an AML-built DSDT. */
export { AcpiError, buildAcpiTables, type AcpiConfig, type VirtioMmioSlot } from "./build.ts";
export { buildDsdtAml } from "./dsdt.ts";
