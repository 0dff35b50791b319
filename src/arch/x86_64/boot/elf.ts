/**
 * Just enough ELF to boot a kernel: the header, PT_LOAD segments (loaded at their physical
 * addresses) and the Xen PVH entry note. Every offset and length comes from the file, so each one
 * is checked before use.
 */
import { CheckedReader } from "./bytes.ts";

export const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46] as const; // "\x7fELF"

/** e_ident fields. */
export const EI = { CLASS: 4, DATA: 5, NIDENT: 16 } as const;
export const ELFCLASS32 = 1;
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;
export const ET_EXEC = 2;
export const EM_386 = 3;
export const EM_X86_64 = 62;
export const PT_LOAD = 1;
export const PT_NOTE = 4;
/** e_phnum value meaning "the real count is elsewhere"; no kernel uses it. */
const PN_XNUM = 0xffff;

/** Header field offsets that differ between ELF32 and ELF64. */
const EHDR = {
  32: { size: 52, type: 16, machine: 18, entry: 24, phoff: 28, phentsize: 42, phnum: 44 },
  64: { size: 64, type: 16, machine: 18, entry: 24, phoff: 32, phentsize: 54, phnum: 56 },
} as const;

/** Program header field offsets. */
const PHDR = {
  32: { size: 32, type: 0, offset: 4, vaddr: 8, paddr: 12, filesz: 16, memsz: 20 },
  64: { size: 56, type: 0, offset: 8, vaddr: 16, paddr: 24, filesz: 32, memsz: 40 },
} as const;

/** Note header: namesz, descsz, type (u32 each), then name and desc, each padded to 4 bytes. */
const NOTE = { NAMESZ: 0, DESCSZ: 4, TYPE: 8, HEADER_SIZE: 12, ALIGN: 4 } as const;
export const XEN_NOTE_NAME = "Xen";
/** XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit physical entry point of a PVH kernel. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export interface ElfLoadSegment {
  /** Index in the program header table, for error messages. */
  index: number;
  offset: number;
  /** Virtual address; a bigint because x86-64 kernels link at 0xffffffff8xxxxxxx. */
  vaddr: bigint;
  paddr: number;
  filesz: number;
  memsz: number;
}

export interface ElfImage {
  elfClass: 32 | 64;
  machine: number;
  entry: bigint;
  segments: ElfLoadSegment[];
  /** From the XEN_ELFNOTE_PHYS32_ENTRY note, when there is one. */
  pvhEntry?: number;
}

export function isElf(data: Uint8Array): boolean {
  return data.length >= 4 && ELF_MAGIC.every((b, i) => data[i] === b);
}

/** Parse and validate an ELF kernel. `fail` throws with the problem (it names the file). */
export function parseElf(data: Uint8Array, fail: (problem: string) => never): ElfImage {
  const r = new CheckedReader(data, fail);
  r.require(0, EI.NIDENT, "ELF identification bytes");
  const cls = r.u8(EI.CLASS, "ELF class");
  if (cls !== ELFCLASS32 && cls !== ELFCLASS64) fail(`ELF class ${cls} is neither 32-bit (1) nor 64-bit (2)`);
  const elfClass = cls === ELFCLASS64 ? 64 : 32;
  if (r.u8(EI.DATA, "ELF data encoding") !== ELFDATA2LSB) fail("ELF file is big-endian; an x86 kernel is little-endian");

  const eh = EHDR[elfClass];
  if (!r.has(0, eh.size)) fail(`truncated ELF header: the file has ${data.length} bytes, an ELF${elfClass} header needs ${eh.size}`);
  const type = r.u16(eh.type, "e_type");
  if (type !== ET_EXEC) fail(`ELF type ${type} is not an executable (ET_EXEC = 2); is this a kernel module or object file?`);
  const machine = r.u16(eh.machine, "e_machine");
  if (machine !== EM_X86_64 && machine !== EM_386) fail(`ELF machine ${machine} is not x86 (EM_X86_64 = 62 or EM_386 = 3)`);
  const entry = elfClass === 64 ? r.u64big(eh.entry, "e_entry") : BigInt(r.u32(eh.entry, "e_entry"));
  const phoff = elfClass === 64 ? r.u64(eh.phoff, "e_phoff") : r.u32(eh.phoff, "e_phoff");
  const phentsize = r.u16(eh.phentsize, "e_phentsize");
  const phnum = r.u16(eh.phnum, "e_phnum");

  const ph = PHDR[elfClass];
  if (phnum === 0) fail("ELF file has no program headers, so there is nothing to load");
  if (phnum === PN_XNUM) fail("ELF file uses extended program header numbering (e_phnum = 0xffff), which kiln does not support");
  if (phentsize < ph.size) fail(`ELF program header entry size ${phentsize} is smaller than the ${ph.size} bytes of an ELF${elfClass} program header`);
  if (!r.has(phoff, phnum * phentsize)) {
    fail(
      `ELF program header table (offset 0x${phoff.toString(16)}, ${phnum} x ${phentsize} bytes) ` +
        `lies outside the ${data.length}-byte file`,
    );
  }

  const segments: ElfLoadSegment[] = [];
  let pvhEntry: number | undefined;
  for (let i = 0; i < phnum; i++) {
    const base = phoff + i * phentsize;
    const what = (field: string) => `program header ${i} ${field}`;
    const pType = r.u32(base + ph.type, what("p_type"));
    if (pType !== PT_LOAD && pType !== PT_NOTE) continue;
    const word = (off: number, field: string) => (elfClass === 64 ? r.u64(base + off, what(field)) : r.u32(base + off, what(field)));
    const offset = word(ph.offset, "p_offset");
    const filesz = word(ph.filesz, "p_filesz");
    if (!r.has(offset, filesz)) {
      fail(`ELF program header ${i}: segment data (offset 0x${offset.toString(16)}, ${filesz} bytes) lies outside the ${data.length}-byte file`);
    }
    if (pType === PT_NOTE) {
      const found = findPvhEntry(r, offset, filesz, i, fail);
      if (found !== undefined) pvhEntry = found;
      continue;
    }
    const vaddr = elfClass === 64 ? r.u64big(base + ph.vaddr, what("p_vaddr")) : BigInt(r.u32(base + ph.vaddr, what("p_vaddr")));
    const paddr = word(ph.paddr, "p_paddr");
    const memsz = word(ph.memsz, "p_memsz");
    if (filesz > memsz) fail(`ELF program header ${i}: p_filesz (${filesz}) is larger than p_memsz (${memsz})`);
    segments.push({ index: i, offset, vaddr, paddr, filesz, memsz });
  }
  if (segments.length === 0) fail("ELF file has no PT_LOAD segments, so there is nothing to load");
  return pvhEntry === undefined ? { elfClass, machine, entry, segments } : { elfClass, machine, entry, segments, pvhEntry };
}

/** Walk the notes in one PT_NOTE segment; return the PVH entry if a Xen PHYS32_ENTRY note is there. */
function findPvhEntry(r: CheckedReader, start: number, size: number, phIndex: number, fail: (problem: string) => never): number | undefined {
  const end = start + size;
  const pad = (n: number) => Math.ceil(n / NOTE.ALIGN) * NOTE.ALIGN;
  let pos = start;
  let entry: number | undefined;
  while (pos + NOTE.HEADER_SIZE <= end) {
    const namesz = r.u32(pos + NOTE.NAMESZ, "ELF note name size");
    const descsz = r.u32(pos + NOTE.DESCSZ, "ELF note descriptor size");
    const type = r.u32(pos + NOTE.TYPE, "ELF note type");
    const nameOff = pos + NOTE.HEADER_SIZE;
    const descOff = nameOff + pad(namesz);
    const next = descOff + pad(descsz);
    if (descOff + descsz > end) {
      fail(`ELF program header ${phIndex}: a note at offset 0x${pos.toString(16)} runs past the end of its PT_NOTE segment`);
    }
    // The name is NUL-terminated and namesz counts the NUL.
    const isXen = namesz === XEN_NOTE_NAME.length + 1 && r.ascii(nameOff, XEN_NOTE_NAME.length, "ELF note name") === XEN_NOTE_NAME;
    if (isXen && type === XEN_ELFNOTE_PHYS32_ENTRY) {
      // Linux emits the entry as .quad (older) or .long (newer); it is a 32-bit physical address either way.
      if (descsz === 4) entry = r.u32(descOff, "PVH entry note");
      else if (descsz === 8) {
        const v = r.u64big(descOff, "PVH entry note");
        if (v > 0xffff_ffffn) fail(`PVH entry point 0x${v.toString(16)} (Xen note 18) is above 4 GiB; it must be a 32-bit physical address`);
        entry = Number(v);
      } else fail(`the PVH entry note (Xen note 18) has a ${descsz}-byte value; expected 4 or 8 bytes`);
    }
    pos = next;
  }
  return entry;
}
