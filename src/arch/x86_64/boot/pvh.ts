/**
 * The Xen PVH boot ABI structures (xen/include/public/arch-x86/hvm/start_info.h): hvm_start_info,
 * the module list (kiln passes the initrd as module 0) and the memory map.
 */
import type { E820Entry } from "../layout.ts";
import { StructWriter } from "./bytes.ts";

export const XEN_HVM_START_MAGIC = 0x336ec578;
/** Version 1 has the memory map fields. */
export const HVM_START_INFO_VERSION = 1;

export const HVM_START_INFO = {
  MAGIC: 0, // u32
  VERSION: 4, // u32
  FLAGS: 8, // u32
  NR_MODULES: 12, // u32
  MODLIST_PADDR: 16, // u64
  CMDLINE_PADDR: 24, // u64
  RSDP_PADDR: 32, // u64
  MEMMAP_PADDR: 40, // u64
  MEMMAP_ENTRIES: 48, // u32
  RESERVED: 52, // u32
  SIZE: 56,
} as const;

export const HVM_MODLIST_ENTRY = { PADDR: 0, SIZE: 8, CMDLINE_PADDR: 16, RESERVED: 24, LENGTH: 32 } as const;

/** hvm_memmap_table_entry; its type codes are the e820 ones. */
export const HVM_MEMMAP_ENTRY = { ADDR: 0, SIZE: 8, TYPE: 16, RESERVED: 20, LENGTH: 24 } as const;

export interface StartInfoParams {
  modlistGpa: number;
  modules: { gpa: number; size: number }[];
  cmdlineGpa: number;
  rsdpGpa: number;
  memmapGpa: number;
  memmap: E820Entry[];
}

export function buildStartInfo(p: StartInfoParams): Uint8Array {
  const I = HVM_START_INFO;
  return new StructWriter(I.SIZE)
    .u32(I.MAGIC, XEN_HVM_START_MAGIC)
    .u32(I.VERSION, HVM_START_INFO_VERSION)
    .u32(I.FLAGS, 0)
    .u32(I.NR_MODULES, p.modules.length)
    .u64(I.MODLIST_PADDR, p.modules.length ? p.modlistGpa : 0)
    .u64(I.CMDLINE_PADDR, p.cmdlineGpa)
    .u64(I.RSDP_PADDR, p.rsdpGpa)
    .u64(I.MEMMAP_PADDR, p.memmapGpa)
    .u32(I.MEMMAP_ENTRIES, p.memmap.length).bytes;
}

export function buildModlist(modules: { gpa: number; size: number }[]): Uint8Array {
  const M = HVM_MODLIST_ENTRY;
  const w = new StructWriter(modules.length * M.LENGTH);
  modules.forEach((m, i) => w.u64(i * M.LENGTH + M.PADDR, m.gpa).u64(i * M.LENGTH + M.SIZE, m.size));
  return w.bytes;
}

export function buildMemmap(map: E820Entry[]): Uint8Array {
  const E = HVM_MEMMAP_ENTRY;
  const w = new StructWriter(map.length * E.LENGTH);
  map.forEach((e, i) => w.u64(i * E.LENGTH + E.ADDR, e.addr).u64(i * E.LENGTH + E.SIZE, e.size).u32(i * E.LENGTH + E.TYPE, e.type));
  return w.bytes;
}
