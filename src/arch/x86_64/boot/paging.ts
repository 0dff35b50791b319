/**
 * Identity page tables for the 64-bit Linux boot protocol: one PML4 entry -> one PDPT with four
 * entries -> four page directories of 2 MiB pages, mapping guest-physical 0..4 GiB 1:1. That covers
 * everything the protocol needs mapped (kernel, zero page, command line, initrd: all in low RAM).
 */
import { GiB, PAGE_SIZE, PDE_START, PDPTE_START, PML4_START } from "../layout.ts";
import { StructWriter } from "./bytes.ts";

export const PTE = { PRESENT: 1 << 0, WRITABLE: 1 << 1, PAGE_SIZE: 1 << 7 } as const;
export const ENTRIES_PER_TABLE = 512;
export const LARGE_PAGE_SIZE = 2 * 1024 * 1024;
export const IDENTITY_MAP_SIZE = 4 * GiB;
export const PAGE_DIRECTORIES = IDENTITY_MAP_SIZE / GiB;

export interface PageTableWrite {
  gpa: number;
  bytes: Uint8Array;
}

/** The three levels, each with the guest-physical address it belongs at. */
export function buildIdentityPageTables(): PageTableWrite[] {
  const pml4 = new StructWriter(PAGE_SIZE).u64(0, PDPTE_START | PTE.PRESENT | PTE.WRITABLE);
  const pdpt = new StructWriter(PAGE_SIZE);
  const pds = new StructWriter(PAGE_DIRECTORIES * PAGE_SIZE);
  for (let d = 0; d < PAGE_DIRECTORIES; d++) {
    pdpt.u64(d * 8, (PDE_START + d * PAGE_SIZE) | PTE.PRESENT | PTE.WRITABLE);
    for (let e = 0; e < ENTRIES_PER_TABLE; e++) {
      const index = d * ENTRIES_PER_TABLE + e;
      // Addresses reach 4 GiB, past 32-bit bitwise ops: build the entry as a bigint.
      pds.u64(index * 8, (BigInt(index) * BigInt(LARGE_PAGE_SIZE)) | BigInt(PTE.PRESENT | PTE.WRITABLE | PTE.PAGE_SIZE));
    }
  }
  return [
    { gpa: PML4_START, bytes: pml4.bytes },
    { gpa: PDPTE_START, bytes: pdpt.bytes },
    { gpa: PDE_START, bytes: pds.bytes },
  ];
}
