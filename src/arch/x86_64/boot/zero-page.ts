/**
 * The Linux zero page (struct boot_params, arch/x86/include/uapi/asm/bootparam.h) for the 64-bit
 * boot protocol: the setup header copied from the bzImage, plus the fields a boot loader fills in.
 */
import type { E820Entry } from "../layout.ts";
import { StructWriter } from "./bytes.ts";
import { BOOT_FLAG_MAGIC, HDRS_MAGIC, LOADER_TYPE_UNDEFINED, LOADFLAGS, SETUP_HEADER } from "./bzimage.ts";

export const BOOT_PARAMS = {
  SIZE: 0x1000,
  ACPI_RSDP_ADDR: 0x070, // u64 (protocol 2.14+)
  EXT_RAMDISK_IMAGE: 0x0c0, // u32: bits 32..63 of ramdisk_image
  EXT_RAMDISK_SIZE: 0x0c4,
  EXT_CMD_LINE_PTR: 0x0c8,
  E820_ENTRIES: 0x1e8, // u8
  /** Nonzero tells the kernel the loader did not zero boot_params; left 0. */
  SENTINEL: 0x1ef,
  HDR: SETUP_HEADER.SETUP_SECTS, // 0x1f1
  E820_TABLE: 0x2d0,
  E820_MAX_ENTRIES: 128,
} as const;

/** struct boot_e820_entry: addr u64, size u64, type u32 (packed, 20 bytes). */
export const E820_ENTRY = { ADDR: 0, SIZE: 8, TYPE: 16, LENGTH: 20 } as const;

/**
 * End of the real-mode heap, as an offset from the real-mode segment, minus 0x200 (boot.rst).
 * kiln never runs the real-mode setup code, but CAN_USE_HEAP + heap_end_ptr is what the protocol
 * asks of a loader, and this is the conventional full-segment value.
 */
export const HEAP_END_PTR = 0xfe00;

export interface ZeroPageParams {
  /** Setup header bytes from the bzImage (file offset 0x1f1 onward); absent for an ELF vmlinux. */
  header?: Uint8Array;
  cmdline: { gpa: number; length: number };
  initrd?: { gpa: number; size: number };
  e820: E820Entry[];
  /** Written to acpi_rsdp_addr when set. */
  rsdpGpa?: number;
}

export function buildZeroPage(p: ZeroPageParams): Uint8Array {
  const H = SETUP_HEADER;
  const w = new StructWriter(BOOT_PARAMS.SIZE);
  if (p.header) {
    w.set(BOOT_PARAMS.HDR, p.header);
    w.u8(H.LOADFLAGS, p.header[H.LOADFLAGS - H.SETUP_SECTS]! | LOADFLAGS.CAN_USE_HEAP);
    w.u16(H.HEAP_END_PTR, HEAP_END_PTR);
  } else {
    // An ELF vmlinux carries no setup header; give the kernel the fields it checks.
    w.u16(H.BOOT_FLAG, BOOT_FLAG_MAGIC);
    w.set(H.HEADER, new TextEncoder().encode(HDRS_MAGIC));
    w.u32(H.CMDLINE_SIZE, p.cmdline.length);
  }
  w.u8(H.TYPE_OF_LOADER, LOADER_TYPE_UNDEFINED);
  w.u32(H.CMD_LINE_PTR, low32(p.cmdline.gpa));
  w.u32(BOOT_PARAMS.EXT_CMD_LINE_PTR, high32(p.cmdline.gpa));
  if (p.initrd) {
    w.u32(H.RAMDISK_IMAGE, low32(p.initrd.gpa));
    w.u32(BOOT_PARAMS.EXT_RAMDISK_IMAGE, high32(p.initrd.gpa));
    w.u32(H.RAMDISK_SIZE, low32(p.initrd.size));
    w.u32(BOOT_PARAMS.EXT_RAMDISK_SIZE, high32(p.initrd.size));
  }
  if (p.rsdpGpa) w.u64(BOOT_PARAMS.ACPI_RSDP_ADDR, p.rsdpGpa);

  if (p.e820.length > BOOT_PARAMS.E820_MAX_ENTRIES) {
    throw new RangeError(`e820 map has ${p.e820.length} entries; the zero page holds ${BOOT_PARAMS.E820_MAX_ENTRIES}`);
  }
  w.u8(BOOT_PARAMS.E820_ENTRIES, p.e820.length);
  p.e820.forEach((e, i) => {
    const off = BOOT_PARAMS.E820_TABLE + i * E820_ENTRY.LENGTH;
    w.u64(off + E820_ENTRY.ADDR, e.addr).u64(off + E820_ENTRY.SIZE, e.size).u32(off + E820_ENTRY.TYPE, e.type);
  });
  return w.bytes;
}

function low32(n: number): number {
  return n % 0x1_0000_0000;
}

function high32(n: number): number {
  return Math.floor(n / 0x1_0000_0000);
}
