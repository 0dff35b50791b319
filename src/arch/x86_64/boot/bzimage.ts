/**
 * The bzImage setup header (Linux Documentation/arch/x86/boot.rst). Offsets are the same in the
 * kernel file and in the zero page (boot_params), which embeds the header at 0x1f1.
 */
import { CheckedReader } from "./bytes.ts";

export const SETUP_HEADER = {
  SETUP_SECTS: 0x1f1, // u8: size of the real-mode setup in 512-byte sectors (0 means 4)
  ROOT_FLAGS: 0x1f2,
  SYSSIZE: 0x1f4,
  VID_MODE: 0x1fa, // u16
  BOOT_FLAG: 0x1fe, // u16: 0xaa55
  JUMP: 0x200, // u16: a short jmp; its second byte tells where the header ends
  HEADER: 0x202, // "HdrS"
  VERSION: 0x206, // u16: boot protocol version, 0x020f = 2.15
  TYPE_OF_LOADER: 0x210, // u8
  LOADFLAGS: 0x211, // u8
  CODE32_START: 0x214,
  RAMDISK_IMAGE: 0x218, // u32
  RAMDISK_SIZE: 0x21c, // u32
  HEAP_END_PTR: 0x224, // u16
  CMD_LINE_PTR: 0x228, // u32
  INITRD_ADDR_MAX: 0x22c, // u32: highest address the initrd may occupy (inclusive)
  KERNEL_ALIGNMENT: 0x230, // u32 (2.05+)
  RELOCATABLE_KERNEL: 0x234, // u8 (2.05+)
  MIN_ALIGNMENT: 0x235, // u8 (2.10+)
  XLOADFLAGS: 0x236, // u16 (2.12+)
  CMDLINE_SIZE: 0x238, // u32 (2.06+): max command line length without the NUL
  HARDWARE_SUBARCH: 0x23c,
  PAYLOAD_OFFSET: 0x248,
  PAYLOAD_LENGTH: 0x24c,
  SETUP_DATA: 0x250, // u64
  PREF_ADDRESS: 0x258, // u64 (2.10+)
  INIT_SIZE: 0x260, // u32 (2.10+): memory the kernel needs from its runtime start address
  HANDOVER_OFFSET: 0x264,
  KERNEL_INFO_OFFSET: 0x268, // (2.15+)
  /** boot_params reserves 0x1f1..0x290 for the header; nothing past that is header. */
  LIMIT: 0x290,
} as const;

export const HDRS_MAGIC = "HdrS";
export const BOOT_FLAG_MAGIC = 0xaa55;
export const SECTOR_SIZE = 512;
export const DEFAULT_SETUP_SECTS = 4;

/** loadflags bits. */
export const LOADFLAGS = { LOADED_HIGH: 0x01, KASLR_FLAG: 0x02, QUIET_FLAG: 0x20, KEEP_SEGMENTS: 0x40, CAN_USE_HEAP: 0x80 } as const;
/** xloadflags bits. */
export const XLF = { KERNEL_64: 0x01, CAN_BE_LOADED_ABOVE_4G: 0x02, EFI_HANDOVER_32: 0x04, EFI_HANDOVER_64: 0x08, EFI_KEXEC: 0x10 } as const;

/** type_of_loader: 0xff = "undefined / other", what VMMs that are not a registered boot loader use. */
export const LOADER_TYPE_UNDEFINED = 0xff;
/** The 64-bit entry point is 0x200 bytes into the protected-mode kernel. */
export const ENTRY_64_OFFSET = 0x200;

export const PROTOCOL = {
  /** kiln's minimum: cmdline_size, relocatable kernels. */
  MIN: 0x0206,
  /** pref_address and init_size exist. */
  PREF_ADDRESS: 0x020a,
  /** xloadflags exists (and with it XLF_KERNEL_64). */
  XLOADFLAGS: 0x020c,
  /** boot_params.acpi_rsdp_addr is honoured. */
  ACPI_RSDP: 0x020e,
} as const;

export function formatProtocol(version: number): string {
  return `${version >> 8}.${(version & 0xff).toString().padStart(2, "0")}`;
}

export interface BzImageHeader {
  version: number;
  /** Where the protected-mode kernel starts in the file, and its size. */
  pmOffset: number;
  pmSize: number;
  /** File bytes 0x1f1 .. end of header, to copy into the zero page. */
  header: Uint8Array;
  loadflags: number;
  xloadflags: number;
  relocatable: boolean;
  kernelAlignment: number;
  prefAddress: number;
  initSize: number;
  cmdlineSize: number;
  initrdAddrMax: number;
}

export function isBzImage(data: Uint8Array): boolean {
  if (data.length < SETUP_HEADER.HEADER + 4) return false;
  return String.fromCharCode(...data.subarray(SETUP_HEADER.HEADER, SETUP_HEADER.HEADER + 4)) === HDRS_MAGIC;
}

/** Parse and validate the setup header of a bzImage for the 64-bit boot protocol. */
export function parseBzImage(data: Uint8Array, fail: (problem: string) => never): BzImageHeader {
  const r = new CheckedReader(data, fail);
  const H = SETUP_HEADER;
  const version = r.u16(H.VERSION, "boot protocol version");
  if (version < PROTOCOL.MIN) {
    fail(`bzImage boot protocol ${formatProtocol(version)} is too old; kiln needs ${formatProtocol(PROTOCOL.MIN)} or later (Linux 2.6.22+)`);
  }
  const bootFlag = r.u16(H.BOOT_FLAG, "boot_flag");
  if (bootFlag !== BOOT_FLAG_MAGIC) fail(`bzImage boot_flag is 0x${bootFlag.toString(16)}, expected 0xaa55`);
  const loadflags = r.u8(H.LOADFLAGS, "loadflags");
  if (!(loadflags & LOADFLAGS.LOADED_HIGH)) fail("this is a zImage (loaded below 1 MiB), not a bzImage; kiln boots only bzImages");
  const xloadflags = version >= PROTOCOL.XLOADFLAGS ? r.u16(H.XLOADFLAGS, "xloadflags") : 0;
  if (!(xloadflags & XLF.KERNEL_64)) {
    fail(
      `bzImage (boot protocol ${formatProtocol(version)}) has no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags); ` +
        "kiln boots bzImages through the 64-bit boot protocol only. Is this a 32-bit kernel?",
    );
  }

  // The header ends at 0x202 + the jump's displacement byte (boot.rst, "64-bit boot protocol").
  const headerEnd = Math.min(H.HEADER + r.u8(H.JUMP + 1, "setup header jump"), H.LIMIT);
  const header = r.slice(H.SETUP_SECTS, headerEnd - H.SETUP_SECTS, "setup header");

  const setupSects = r.u8(H.SETUP_SECTS, "setup_sects") || DEFAULT_SETUP_SECTS;
  const pmOffset = (setupSects + 1) * SECTOR_SIZE;
  if (pmOffset >= data.length) {
    fail(`truncated bzImage: the setup code takes ${setupSects + 1} sectors (${pmOffset} bytes) but the file has only ${data.length} bytes`);
  }
  const hasPref = version >= PROTOCOL.PREF_ADDRESS;
  return {
    version,
    pmOffset,
    pmSize: data.length - pmOffset,
    header,
    loadflags,
    xloadflags,
    relocatable: r.u8(H.RELOCATABLE_KERNEL, "relocatable_kernel") !== 0,
    kernelAlignment: r.u32(H.KERNEL_ALIGNMENT, "kernel_alignment"),
    prefAddress: hasPref ? r.u64(H.PREF_ADDRESS, "pref_address") : 0,
    initSize: hasPref ? r.u32(H.INIT_SIZE, "init_size") : 0,
    cmdlineSize: r.u32(H.CMDLINE_SIZE, "cmdline_size"),
    initrdAddrMax: r.u32(H.INITRD_ADDR_MAX, "initrd_addr_max"),
  };
}
