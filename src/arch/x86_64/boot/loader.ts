/**
 * Load a Linux kernel (and initrd) into guest memory and lay out everything the chosen entry
 * protocol needs:
 *
 *   ELF with a Xen PHYS32_ENTRY note  -> PVH (32-bit protected mode, ebx = hvm_start_info)
 *   bzImage ("HdrS" at 0x202)         -> Linux 64-bit boot protocol at load address + 0x200
 *   64-bit ELF without the note       -> Linux 64-bit boot protocol at e_entry's physical address
 *
 * Everything is validated and planned first and written afterwards, so a bad kernel, command line
 * or initrd leaves guest memory untouched.
 */
import {
  BOOT_GDT_START,
  BOOT_IDT_START,
  CMDLINE_MAX_SIZE,
  CMDLINE_START,
  e820Map,
  HIGH_MEMORY_START,
  KERNEL_DEFAULT_LOAD,
  PAGE_SIZE,
  PVH_INFO_START,
  PVH_MEMMAP_MAX_ENTRIES,
  PVH_MEMMAP_START,
  PVH_MODLIST_START,
  ramRegions,
  ZERO_PAGE_START,
} from "../layout.ts";
import type { GuestMemoryAccess } from "../../../memory/types.ts";
import { alignDown, alignUp } from "./bytes.ts";
import { ENTRY_64_OFFSET, formatProtocol, isBzImage, parseBzImage, PROTOCOL, SETUP_HEADER, type BzImageHeader } from "./bzimage.ts";
import { encodeGdt, IDT_LIMIT, linux64Segments, pvhSegments } from "./cpu-state.ts";
import { isElf, parseElf, type ElfImage } from "./elf.ts";
import { BootConfigError, formatSize, hex, KernelFormatError } from "./errors.ts";
import { buildIdentityPageTables } from "./paging.ts";
import { buildMemmap, buildModlist, buildStartInfo } from "./pvh.ts";
import { buildZeroPage } from "./zero-page.ts";

export interface BootSpec {
  kernel: Uint8Array;
  /** Only for error messages. */
  kernelPath: string;
  cmdline: string;
  initrd?: Uint8Array;
  initrdPath?: string;
  memSize: number;
  machine: "microvm" | "q35";
  /** Where buildAcpiTables wrote the RSDP; 0 for a guest without ACPI. */
  rsdpGpa: number;
}

export type BootEntry =
  /** 32-bit protected mode, ebx = startInfo. */
  | { protocol: "pvh"; entry: number; startInfo: number; kernelEnd: number }
  /** 64-bit mode, rsi = bootParams. */
  | { protocol: "linux64"; entry: number; bootParams: number; kernelEnd: number };

/** A planned write into guest memory: bytes, or a run of zeroes (a segment's bss). */
type Write = { gpa: number; bytes: Uint8Array } | { gpa: number; zeroes: number };

const ZERO_CHUNK = 1024 * 1024;
const KERNEL_EXPECTED = 'expected an ELF vmlinux (with a Xen PVH entry note, or 64-bit) or a bzImage ("HdrS" at offset 0x202)';

export function loadKernel(mem: GuestMemoryAccess, spec: BootSpec): BootEntry {
  const lowEnd = lowRamEnd(spec.memSize);
  const fail = (problem: string): never => {
    throw new KernelFormatError(spec.kernelPath, problem);
  };
  const k = spec.kernel;
  if (k.length === 0) fail(`the file is empty (0 bytes); ${KERNEL_EXPECTED}`);

  if (isElf(k)) {
    const elf = parseElf(k, fail);
    if (elf.pvhEntry !== undefined) return loadPvh(mem, spec, elf, elf.pvhEntry, lowEnd, fail);
    if (elf.elfClass === 64) return loadElf64(mem, spec, elf, lowEnd, fail);
    fail("32-bit ELF kernel without a PVH entry note (Xen ELF note 18, XEN_ELFNOTE_PHYS32_ENTRY); kiln boots 32-bit ELF kernels only through PVH");
  }
  if (isBzImage(k)) return loadBzImage(mem, spec, parseBzImage(k, fail), lowEnd, fail);
  if (k.length < SETUP_HEADER.HEADER + 4 && k[0] === 0x4d && k[1] === 0x5a) {
    // "MZ": the PE header every EFI-stub bzImage starts with.
    fail(`truncated bzImage: the file has ${k.length} bytes, too few for the setup header at 0x1f1..0x206`);
  }
  const head = Array.from(k.subarray(0, 4), (b) => b.toString(16).padStart(2, "0")).join(" ");
  return fail(`not a kernel image kiln can boot (the file starts with ${head}); ${KERNEL_EXPECTED}`);
}

/** End of RAM below the MMIO hole: everything kiln boots lives there. */
function lowRamEnd(memSize: number): number {
  let low: number;
  try {
    low = ramRegions(memSize)[0]!.size;
  } catch {
    throw new BootConfigError(`guest memory size ${memSize} is not a positive multiple of ${PAGE_SIZE} bytes`);
  }
  if (low <= HIGH_MEMORY_START) {
    throw new BootConfigError(`guest RAM of ${formatSize(memSize)} is too small: kernels load at 1 MiB, so the guest needs more than that`);
  }
  return low;
}

// ---------------------------------------------------------------------------------------------
// Pieces shared by the protocols

/** The NUL-terminated command line, checked against kiln's buffer and the kernel's own limit. */
function encodeCmdline(cmdline: string, kernelLimit?: { size: number; version: number }): Uint8Array {
  if (cmdline.includes("\0")) throw new BootConfigError("the kernel command line contains a NUL character");
  const text = new TextEncoder().encode(cmdline);
  if (text.length + 1 > CMDLINE_MAX_SIZE) {
    throw new BootConfigError(`the kernel command line is ${text.length} bytes; kiln's command line buffer holds at most ${CMDLINE_MAX_SIZE - 1}`);
  }
  if (kernelLimit && text.length > kernelLimit.size) {
    throw new BootConfigError(
      `the kernel command line is ${text.length} bytes; this kernel accepts at most ${kernelLimit.size} ` +
        `(cmdline_size in its boot protocol ${formatProtocol(kernelLimit.version)} header)`,
    );
  }
  const out = new Uint8Array(text.length + 1);
  out.set(text);
  return out;
}

/**
 * Put the initrd page-aligned as high as possible below `maxEnd` (the end of low RAM, or the
 * kernel's initrd_addr_max + 1), above the kernel. Linux finds it through boot_params / the PVH
 * module list wherever it is; high placement keeps it away from the kernel's decompression area.
 */
function placeInitrd(spec: BootSpec, maxEnd: number, kernelEnd: number): { gpa: number; size: number } | undefined {
  const initrd = spec.initrd;
  if (!initrd) return undefined;
  const name = spec.initrdPath ?? "(initrd)";
  if (initrd.length === 0) throw new BootConfigError(`initrd ${name} is empty`);
  const floor = alignUp(kernelEnd, PAGE_SIZE);
  const gpa = alignDown(maxEnd - initrd.length, PAGE_SIZE);
  if (gpa < floor) {
    throw new BootConfigError(
      `initrd ${name} (${formatSize(initrd.length)}) does not fit in guest RAM of ${formatSize(spec.memSize)}: ` +
        `it must lie between the end of the kernel (${hex(floor)}) and ${hex(maxEnd)}, which leaves ${formatSize(Math.max(0, maxEnd - floor))}; ` +
        "give the guest more memory or use a smaller initrd",
    );
  }
  return { gpa, size: initrd.length };
}

/** Plan the PT_LOAD segments at their physical addresses; returns the writes and the kernel's end. */
function planSegments(spec: BootSpec, elf: ElfImage, lowEnd: number, fail: (p: string) => never): { writes: Write[]; kernelEnd: number } {
  const writes: Write[] = [];
  let kernelEnd = 0;
  for (const seg of elf.segments) {
    if (seg.memsz === 0) continue;
    const end = seg.paddr + seg.memsz;
    if (seg.paddr < HIGH_MEMORY_START) {
      fail(
        `ELF program header ${seg.index}: segment at ${hex(seg.paddr)} lies below 1 MiB, where kiln keeps the boot ` +
          "structures (GDT, start_info, zero page, page tables, command line, ACPI tables)",
      );
    }
    if (end > lowEnd) {
      fail(
        `ELF program header ${seg.index}: segment ${hex(seg.paddr)}..${hex(end)} (${formatSize(seg.memsz)}) does not fit in ` +
          `guest RAM of ${formatSize(spec.memSize)} (RAM below the MMIO hole ends at ${hex(lowEnd)}); give the guest more memory`,
      );
    }
    writes.push({ gpa: seg.paddr, bytes: spec.kernel.subarray(seg.offset, seg.offset + seg.filesz) });
    if (seg.memsz > seg.filesz) writes.push({ gpa: seg.paddr + seg.filesz, zeroes: seg.memsz - seg.filesz });
    kernelEnd = Math.max(kernelEnd, end);
  }
  if (kernelEnd === 0) fail("every PT_LOAD segment of the ELF file is empty, so there is nothing to load");
  return { writes, kernelEnd };
}

function entryInsideSegments(elf: ElfImage, entry: number): boolean {
  return elf.segments.some((s) => entry >= s.paddr && entry < s.paddr + s.memsz);
}

function applyWrites(mem: GuestMemoryAccess, writes: Write[]): void {
  for (const w of writes) {
    if ("bytes" in w) {
      mem.write(w.gpa, w.bytes);
      continue;
    }
    // Guest RAM is usually fresh zeroes, but not after a reset: clear the bss explicitly.
    const chunk = new Uint8Array(Math.min(w.zeroes, ZERO_CHUNK));
    for (let done = 0; done < w.zeroes; done += chunk.length) {
      mem.write(w.gpa + done, chunk.subarray(0, Math.min(chunk.length, w.zeroes - done)));
    }
  }
}

function gdtWrites(entries: Parameters<typeof encodeGdt>[0]): Write[] {
  return [
    { gpa: BOOT_GDT_START, bytes: encodeGdt(entries) },
    { gpa: BOOT_IDT_START, bytes: new Uint8Array(IDT_LIMIT + 1) },
  ];
}

// ---------------------------------------------------------------------------------------------
// PVH

function loadPvh(mem: GuestMemoryAccess, spec: BootSpec, elf: ElfImage, entry: number, lowEnd: number, fail: (p: string) => never): BootEntry {
  const cmdline = encodeCmdline(spec.cmdline);
  const { writes, kernelEnd } = planSegments(spec, elf, lowEnd, fail);
  if (!entryInsideSegments(elf, entry)) fail(`the PVH entry point ${hex(entry)} (Xen note 18) is not inside any loaded segment`);
  const initrd = placeInitrd(spec, lowEnd, kernelEnd);
  const memmap = e820Map(spec.memSize, spec.machine);
  if (memmap.length > PVH_MEMMAP_MAX_ENTRIES) throw new RangeError(`memory map has ${memmap.length} entries; PVH room is ${PVH_MEMMAP_MAX_ENTRIES}`);
  const modules = initrd ? [initrd] : [];

  if (initrd) writes.push({ gpa: initrd.gpa, bytes: spec.initrd! });
  writes.push(
    { gpa: CMDLINE_START, bytes: cmdline },
    { gpa: PVH_MODLIST_START, bytes: buildModlist(modules) },
    { gpa: PVH_MEMMAP_START, bytes: buildMemmap(memmap) },
    {
      gpa: PVH_INFO_START,
      bytes: buildStartInfo({
        modlistGpa: PVH_MODLIST_START,
        modules,
        cmdlineGpa: CMDLINE_START,
        rsdpGpa: spec.rsdpGpa,
        memmapGpa: PVH_MEMMAP_START,
        memmap,
      }),
    },
    ...gdtWrites(pvhSegments().gdt),
  );
  applyWrites(mem, writes);
  return { protocol: "pvh", entry, startInfo: PVH_INFO_START, kernelEnd };
}

// ---------------------------------------------------------------------------------------------
// Linux 64-bit boot protocol

/** Zero page, GDT and identity page tables: the common part of both 64-bit paths. */
function linux64Writes(spec: BootSpec, header: Uint8Array | undefined, cmdline: Uint8Array, initrd: { gpa: number; size: number } | undefined, rsdpGpa: number): Write[] {
  const zeroPage = buildZeroPage({
    ...(header ? { header } : {}),
    cmdline: { gpa: CMDLINE_START, length: cmdline.length - 1 },
    ...(initrd ? { initrd } : {}),
    e820: e820Map(spec.memSize, spec.machine),
    ...(rsdpGpa ? { rsdpGpa } : {}),
  });
  const writes: Write[] = [];
  if (initrd) writes.push({ gpa: initrd.gpa, bytes: spec.initrd! });
  writes.push(
    { gpa: CMDLINE_START, bytes: cmdline },
    { gpa: ZERO_PAGE_START, bytes: zeroPage },
    ...gdtWrites(linux64Segments().gdt),
    ...buildIdentityPageTables(),
  );
  return writes;
}

/** A 64-bit vmlinux without a PVH note, entered in long mode at e_entry (Firecracker's path). */
function loadElf64(mem: GuestMemoryAccess, spec: BootSpec, elf: ElfImage, lowEnd: number, fail: (p: string) => never): BootEntry {
  const cmdline = encodeCmdline(spec.cmdline);
  const { writes, kernelEnd } = planSegments(spec, elf, lowEnd, fail);
  // vmlinux's e_entry is physical already (ENTRY(phys_startup_64)); a virtual one is translated
  // through the segment that contains it.
  let entry: number | undefined;
  const seg = elf.segments.find((s) => elf.entry >= s.vaddr && elf.entry < s.vaddr + BigInt(s.memsz));
  if (seg) entry = seg.paddr + Number(elf.entry - seg.vaddr);
  else if (elf.entry < BigInt(lowEnd)) entry = Number(elf.entry);
  if (entry === undefined || !entryInsideSegments(elf, entry)) {
    fail(`the ELF entry point ${hex(elf.entry)} is not inside any loaded segment`);
  }
  const initrd = placeInitrd(spec, lowEnd, kernelEnd);
  writes.push(...linux64Writes(spec, undefined, cmdline, initrd, spec.rsdpGpa));
  applyWrites(mem, writes);
  return { protocol: "linux64", entry: entry!, bootParams: ZERO_PAGE_START, kernelEnd };
}

function loadBzImage(mem: GuestMemoryAccess, spec: BootSpec, hdr: BzImageHeader, lowEnd: number, fail: (p: string) => never): BootEntry {
  const cmdline = encodeCmdline(spec.cmdline, { size: hdr.cmdlineSize, version: hdr.version });
  const align = hdr.relocatable ? hdr.kernelAlignment : PAGE_SIZE;
  if (hdr.relocatable && (align < PAGE_SIZE || (align & (align - 1)) !== 0)) {
    fail(`bzImage kernel_alignment ${hex(align)} is not a power of two of at least 4 KiB`);
  }

  // Where the kernel ends up: a relocatable kernel runs at its load address rounded up to
  // kernel_alignment but never below pref_address (LOAD_PHYSICAL_ADDR); a non-relocatable one
  // moves itself to pref_address. It needs init_size bytes from there (protocol 2.10+).
  const footprintEnd = (load: number) => {
    const runtime = Math.max(alignUp(load, align), hdr.prefAddress);
    return Math.max(load + hdr.pmSize, runtime + hdr.initSize);
  };
  let load = hdr.relocatable ? alignUp(KERNEL_DEFAULT_LOAD, align) : KERNEL_DEFAULT_LOAD;
  if (hdr.relocatable && hdr.prefAddress >= HIGH_MEMORY_START && hdr.prefAddress % align === 0 && footprintEnd(hdr.prefAddress) <= lowEnd) {
    load = hdr.prefAddress;
  }
  const kernelEnd = footprintEnd(load);
  if (kernelEnd > lowEnd) {
    fail(
      `the kernel needs guest memory up to ${hex(kernelEnd)} (loaded at ${hex(load)}, init_size ${formatSize(hdr.initSize)}), ` +
        `but guest RAM of ${formatSize(spec.memSize)} ends at ${hex(lowEnd)}; give the guest more memory`,
    );
  }
  // initrd_addr_max is the highest byte the initrd may occupy.
  const initrd = placeInitrd(spec, Math.min(lowEnd, hdr.initrdAddrMax + 1), kernelEnd);
  const rsdpGpa = hdr.version >= PROTOCOL.ACPI_RSDP ? spec.rsdpGpa : 0;
  const writes: Write[] = [
    { gpa: load, bytes: spec.kernel.subarray(hdr.pmOffset) },
    ...linux64Writes(spec, hdr.header, cmdline, initrd, rsdpGpa),
  ];
  applyWrites(mem, writes);
  return { protocol: "linux64", entry: load + ENTRY_64_OFFSET, bootParams: ZERO_PAGE_START, kernelEnd };
}
