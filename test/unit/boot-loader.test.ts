import { beforeEach, describe, expect, test } from "bun:test";
import { BootConfigError, BootError, KernelFormatError, loadKernel, type BootEntry, type BootSpec } from "../../src/arch/x86_64/boot/index.ts";
import {
  BOOT_GDT_START,
  CMDLINE_MAX_SIZE,
  CMDLINE_START,
  e820Map,
  MiB,
  PAGE_SIZE,
  PDE_START,
  PDPTE_START,
  PML4_START,
  PVH_INFO_START,
  PVH_MEMMAP_START,
  PVH_MODLIST_START,
  ZERO_PAGE_START,
} from "../../src/arch/x86_64/layout.ts";
import { ArrayMemory } from "../lib/array-memory.ts";

// ---------------------------------------------------------------------------------------------
// Synthetic kernels, assembled byte by byte.

interface SegmentSpec {
  paddr: number;
  vaddr?: bigint;
  data: Uint8Array;
  memsz?: number;
}

interface ElfSpec {
  elfClass: 32 | 64;
  segments: SegmentSpec[];
  pvhEntry?: number;
  /** Size of the PVH note's value: Linux has used both. */
  pvhDescSize?: 4 | 8;
  entry?: bigint;
  /** Extra notes before the Xen one, to exercise the note walk. */
  otherNote?: boolean;
}

function buildElf(spec: ElfSpec): Uint8Array {
  const is64 = spec.elfClass === 64;
  const ehsize = is64 ? 64 : 52;
  const phentsize = is64 ? 56 : 32;
  // Notes: optional "GNU" note, then Xen PHYS32_ENTRY.
  const notes: number[] = [];
  const note = (name: string, type: number, desc: number[]) => {
    const n = [...new TextEncoder().encode(name), 0];
    const pad = (a: number[]) => [...a, ...new Array((4 - (a.length % 4)) % 4).fill(0)];
    notes.push(...le(n.length, 4), ...le(desc.length, 4), ...le(type, 4), ...pad(n), ...pad(desc));
  };
  if (spec.otherNote) note("GNU", 3, [1, 2, 3, 4, 5, 6, 7]);
  if (spec.pvhEntry !== undefined) note("Xen", 18, le(spec.pvhEntry, spec.pvhDescSize ?? 8));
  const phnum = spec.segments.length + (notes.length ? 1 : 0);
  const notesOff = ehsize + phnum * phentsize;
  let dataOff = alignUp(notesOff + notes.length, 16);
  const segOffsets = spec.segments.map((s) => {
    const off = dataOff;
    dataOff += alignUp(s.data.length, 16);
    return off;
  });
  const out = new Uint8Array(dataOff);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, 1, 1]);
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, is64 ? 62 : 3, true);
  v.setUint32(20, 1, true);
  const entry = spec.entry ?? BigInt(spec.pvhEntry ?? spec.segments[0]!.paddr);
  if (is64) {
    v.setBigUint64(24, entry, true);
    v.setBigUint64(32, BigInt(ehsize), true);
    v.setUint16(52, ehsize, true);
    v.setUint16(54, phentsize, true);
    v.setUint16(56, phnum, true);
  } else {
    v.setUint32(24, Number(entry), true);
    v.setUint32(28, ehsize, true);
    v.setUint16(40, ehsize, true);
    v.setUint16(42, phentsize, true);
    v.setUint16(44, phnum, true);
  }
  const ph = (i: number, type: number, offset: number, vaddr: bigint, paddr: number, filesz: number, memsz: number) => {
    const b = ehsize + i * phentsize;
    v.setUint32(b, type, true);
    if (is64) {
      v.setBigUint64(b + 8, BigInt(offset), true);
      v.setBigUint64(b + 16, vaddr, true);
      v.setBigUint64(b + 24, BigInt(paddr), true);
      v.setBigUint64(b + 32, BigInt(filesz), true);
      v.setBigUint64(b + 40, BigInt(memsz), true);
    } else {
      v.setUint32(b + 4, offset, true);
      v.setUint32(b + 8, Number(vaddr), true);
      v.setUint32(b + 12, paddr, true);
      v.setUint32(b + 16, filesz, true);
      v.setUint32(b + 20, memsz, true);
    }
  };
  spec.segments.forEach((s, i) => {
    ph(i, 1, segOffsets[i]!, s.vaddr ?? BigInt(s.paddr), s.paddr, s.data.length, s.memsz ?? s.data.length);
    out.set(s.data, segOffsets[i]!);
  });
  if (notes.length) {
    ph(spec.segments.length, 4, notesOff, 0n, 0, notes.length, notes.length);
    out.set(notes, notesOff);
  }
  return out;
}

interface BzSpec {
  version?: number;
  setupSects?: number;
  loadflags?: number;
  xloadflags?: number;
  relocatable?: boolean;
  kernelAlignment?: number;
  prefAddress?: number;
  initSize?: number;
  cmdlineSize?: number;
  initrdAddrMax?: number;
  pmSize?: number;
}

const BZ_HEADER_END = 0x26c;

function buildBzImage(s: BzSpec = {}): Uint8Array {
  const setupSects = s.setupSects ?? 4;
  const pmOffset = ((setupSects || 4) + 1) * 512;
  const pmSize = s.pmSize ?? 0x3000;
  const out = new Uint8Array(pmOffset + pmSize);
  const v = new DataView(out.buffer);
  out[0] = 0x4d; // "MZ"
  out[1] = 0x5a;
  out[0x1f1] = setupSects;
  v.setUint16(0x1fe, 0xaa55, true);
  out[0x200] = 0xeb; // jmp short past the header
  out[0x201] = BZ_HEADER_END - 0x202;
  out.set(new TextEncoder().encode("HdrS"), 0x202);
  v.setUint16(0x206, s.version ?? 0x020f, true);
  out[0x211] = s.loadflags ?? 0x01; // LOADED_HIGH
  v.setUint32(0x214, 0x100000, true);
  v.setUint32(0x22c, s.initrdAddrMax ?? 0x7fffffff, true);
  v.setUint32(0x230, s.kernelAlignment ?? 0x200000, true);
  out[0x234] = (s.relocatable ?? true) ? 1 : 0;
  out[0x235] = 21;
  v.setUint16(0x236, s.xloadflags ?? 0x7f, true);
  v.setUint32(0x238, s.cmdlineSize ?? 2047, true);
  v.setBigUint64(0x258, BigInt(s.prefAddress ?? 0x1000000), true);
  v.setUint32(0x260, s.initSize ?? 0x800000, true);
  for (let i = 0; i < pmSize; i++) out[pmOffset + i] = (i * 7 + 3) & 0xff;
  return out;
}

function le(value: number | bigint, bytes: number): number[] {
  let x = BigInt(value);
  return Array.from({ length: bytes }, () => {
    const b = Number(x & 0xffn);
    x >>= 8n;
    return b;
  });
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function pattern(len: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff);
}

const MEM = 64 * MiB;
const spec = (kernel: Uint8Array, extra: Partial<BootSpec> = {}): BootSpec => ({
  kernel,
  kernelPath: "/images/test-kernel",
  cmdline: "console=ttyS0 reboot=k panic=1",
  memSize: MEM,
  machine: "microvm",
  rsdpGpa: 0xe0000,
  ...extra,
});

const pvhKernel = (extra: Partial<ElfSpec> = {}) =>
  buildElf({
    elfClass: 64,
    segments: [
      { paddr: 0x100000, vaddr: 0xffffffff81000000n, data: pattern(0x2000, 1), memsz: 0x5000 },
      { paddr: 0x200000, vaddr: 0xffffffff81100000n, data: pattern(0x800, 2) },
    ],
    pvhEntry: 0x100040,
    ...extra,
  });

let mem: ArrayMemory;
beforeEach(() => {
  mem = new ArrayMemory(MEM);
});

/** Run `fn`, expecting a BootError of `cls` whose message matches; returns the error. */
function expectBootError(fn: () => unknown, cls: new (...args: never[]) => BootError, message: RegExp): BootError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(cls);
    expect((e as Error).message).toMatch(message);
    return e as BootError;
  }
  throw new Error("expected a boot error");
}

function checkE820(entries: { addr: number; size: number; type: number }[], machine: "microvm" | "q35" = "microvm") {
  expect(entries).toEqual(e820Map(MEM, machine));
}

// ---------------------------------------------------------------------------------------------

describe("PVH", () => {
  test("loads segments at p_paddr and zeroes the bss", () => {
    mem.write(0x100000, new Uint8Array(0x5000).fill(0xee)); // stale data, as after a reset
    const e = loadKernel(mem, spec(pvhKernel()));
    expect(e).toEqual({ protocol: "pvh", entry: 0x100040, startInfo: PVH_INFO_START, kernelEnd: 0x200800 });
    expect(mem.read(0x100000, 0x2000)).toEqual(pattern(0x2000, 1));
    expect(mem.read(0x102000, 0x3000).every((b) => b === 0)).toBe(true);
    expect(mem.read(0x200000, 0x800)).toEqual(pattern(0x800, 2));
  });

  test("hvm_start_info, memmap and command line", () => {
    loadKernel(mem, spec(pvhKernel(), { machine: "q35" }));
    const si = PVH_INFO_START;
    expect(mem.u32(si)).toBe(0x336ec578);
    expect(mem.u32(si + 4)).toBe(1);
    expect(mem.u32(si + 8)).toBe(0);
    expect(mem.u32(si + 12)).toBe(0); // no initrd, no modules
    expect(mem.u64(si + 16)).toBe(0);
    expect(mem.u64(si + 24)).toBe(CMDLINE_START);
    expect(mem.u64(si + 32)).toBe(0xe0000);
    expect(mem.u64(si + 40)).toBe(PVH_MEMMAP_START);
    const n = mem.u32(si + 48);
    const memmap = Array.from({ length: n }, (_, i) => ({
      addr: mem.u64(PVH_MEMMAP_START + i * 24),
      size: mem.u64(PVH_MEMMAP_START + i * 24 + 8),
      type: mem.u32(PVH_MEMMAP_START + i * 24 + 16),
    }));
    checkE820(memmap, "q35");
    expect(mem.cstring(CMDLINE_START)).toBe("console=ttyS0 reboot=k panic=1");
  });

  test("initrd as module 0, page-aligned at the top of low RAM", () => {
    const initrd = pattern(0x12345, 9);
    loadKernel(mem, spec(pvhKernel(), { initrd, initrdPath: "/images/initrd" }));
    expect(mem.u32(PVH_INFO_START + 12)).toBe(1);
    expect(mem.u64(PVH_INFO_START + 16)).toBe(PVH_MODLIST_START);
    const gpa = mem.u64(PVH_MODLIST_START);
    expect(mem.u64(PVH_MODLIST_START + 8)).toBe(initrd.length);
    expect(mem.u64(PVH_MODLIST_START + 16)).toBe(0);
    expect(gpa % PAGE_SIZE).toBe(0);
    expect(gpa + initrd.length).toBeLessThanOrEqual(MEM);
    expect(MEM - (gpa + initrd.length)).toBeLessThan(PAGE_SIZE);
    expect(mem.read(gpa, initrd.length)).toEqual(initrd);
  });

  test("32-bit ELF with a 4-byte note, after another note", () => {
    const k = buildElf({ elfClass: 32, segments: [{ paddr: 0x100000, data: pattern(0x1000, 3) }], pvhEntry: 0x100010, pvhDescSize: 4, otherNote: true });
    expect(loadKernel(mem, spec(k))).toMatchObject({ protocol: "pvh", entry: 0x100010 });
  });

  test("GDT: flat 32-bit code and data, a TSS", () => {
    loadKernel(mem, spec(pvhKernel()));
    const gdt = [0, 1, 2, 3].map((i) => mem.view(BOOT_GDT_START + i * 8, 8).getBigUint64(0, true));
    expect(gdt).toEqual([0n, 0x00cf9b000000ffffn, 0x00cf93000000ffffn, 0x00008b0000000067n]);
  });
});

describe("64-bit ELF without a PVH note", () => {
  test("enters at e_entry translated to its physical address", () => {
    const k = buildElf({
      elfClass: 64,
      segments: [{ paddr: 0x1000000, vaddr: 0xffffffff81000000n, data: pattern(0x1000, 4), memsz: 0x3000 }],
      entry: 0xffffffff81000100n,
    });
    const e = loadKernel(mem, spec(k, { initrd: pattern(5000, 1) }));
    expect(e).toEqual({ protocol: "linux64", entry: 0x1000100, bootParams: ZERO_PAGE_START, kernelEnd: 0x1003000 });
    const zp = ZERO_PAGE_START;
    expect(mem.u16(zp + 0x1fe)).toBe(0xaa55);
    expect(new TextDecoder().decode(mem.read(zp + 0x202, 4))).toBe("HdrS");
    expect(mem.u8(zp + 0x210)).toBe(0xff);
    expect(mem.u32(zp + 0x228)).toBe(CMDLINE_START);
    expect(mem.u64(zp + 0x70)).toBe(0xe0000);
    expect(mem.u32(zp + 0x21c)).toBe(5000);
    expectPageTables();
  });

  test("a physical e_entry is used as is", () => {
    const k = buildElf({ elfClass: 64, segments: [{ paddr: 0x1000000, vaddr: 0x1000000n, data: pattern(0x1000, 4) }], entry: 0x1000000n });
    expect(loadKernel(mem, spec(k))).toMatchObject({ protocol: "linux64", entry: 0x1000000 });
  });
});

function expectPageTables() {
  expect(mem.u64(PML4_START)).toBe(PDPTE_START | 3);
  for (let i = 0; i < 4; i++) expect(mem.u64(PDPTE_START + i * 8)).toBe((PDE_START + i * PAGE_SIZE) | 3);
  expect(mem.u64(PDPTE_START + 32)).toBe(0);
  expect(mem.u64(PDE_START)).toBe(0x83);
  expect(mem.u64(PDE_START + 8)).toBe(0x200083);
  expect(mem.u64(PDE_START + 2047 * 8)).toBe(0xffe00083); // the last 2 MiB below 4 GiB
  const gdt = [0, 1, 2, 3].map((i) => mem.view(BOOT_GDT_START + i * 8, 8).getBigUint64(0, true));
  // __BOOT_CS = 0x10: 64-bit code; __BOOT_DS = 0x18: flat data (the values Linux itself uses).
  expect(gdt).toEqual([0n, 0n, 0x00af9b000000ffffn, 0x00cf93000000ffffn]);
}

describe("bzImage", () => {
  test("relocatable: loads the protected-mode kernel at pref_address, entry at +0x200", () => {
    const k = buildBzImage();
    const e = loadKernel(mem, spec(k)) as Extract<BootEntry, { protocol: "linux64" }>;
    expect(e).toEqual({ protocol: "linux64", entry: 0x1000200, bootParams: ZERO_PAGE_START, kernelEnd: 0x1800000 });
    expect(mem.read(0x1000000, 0x3000)).toEqual(k.subarray(5 * 512));
    expectPageTables();
  });

  test("zero page: copied header plus loader fields", () => {
    const k = buildBzImage();
    const initrd = pattern(0x20000, 5);
    loadKernel(mem, spec(k, { initrd, cmdline: "root=/dev/vda" }));
    const zp = ZERO_PAGE_START;
    // Header bytes come from the file, except what a loader must fill in.
    expect(mem.read(zp + 0x202, 4)).toEqual(k.subarray(0x202, 0x206));
    expect(mem.u16(zp + 0x206)).toBe(0x020f);
    expect(mem.u32(zp + 0x230)).toBe(0x200000);
    expect(mem.u64(zp + 0x258)).toBe(0x1000000);
    expect(mem.u8(zp + 0x210)).toBe(0xff); // type_of_loader
    expect(mem.u8(zp + 0x211)).toBe(0x81); // LOADED_HIGH | CAN_USE_HEAP
    expect(mem.u16(zp + 0x224)).toBe(0xfe00); // heap_end_ptr
    expect(mem.u32(zp + 0x228)).toBe(CMDLINE_START);
    expect(mem.u32(zp + 0xc8)).toBe(0);
    expect(mem.cstring(CMDLINE_START)).toBe("root=/dev/vda");
    expect(mem.u64(zp + 0x70)).toBe(0xe0000); // acpi_rsdp_addr, protocol 2.15
    expect(mem.u8(zp + 0x1ef)).toBe(0); // sentinel
    // Nothing past the header end is copied.
    expect(mem.read(zp + BZ_HEADER_END, 0x290 - BZ_HEADER_END).every((b) => b === 0)).toBe(true);
    // e820
    const count = mem.u8(zp + 0x1e8);
    checkE820(
      Array.from({ length: count }, (_, i) => ({
        addr: mem.u64(zp + 0x2d0 + i * 20),
        size: mem.u64(zp + 0x2d0 + i * 20 + 8),
        type: mem.u32(zp + 0x2d0 + i * 20 + 16),
      })),
    );
    // initrd
    const image = mem.u32(zp + 0x218);
    expect(mem.u32(zp + 0x21c)).toBe(initrd.length);
    expect(mem.u32(zp + 0xc0)).toBe(0);
    expect(image % PAGE_SIZE).toBe(0);
    expect(image).toBeGreaterThanOrEqual(0x1800000); // above the kernel's init_size footprint
    expect(image + initrd.length).toBeLessThanOrEqual(MEM);
    expect(mem.read(image, initrd.length)).toEqual(initrd);
  });

  test("initrd stays below initrd_addr_max", () => {
    const k = buildBzImage({ initrdAddrMax: 0x2ffffff });
    loadKernel(mem, spec(k, { initrd: pattern(0x10000, 1) }));
    const image = mem.u32(ZERO_PAGE_START + 0x218);
    expect(image + 0x10000).toBeLessThanOrEqual(0x3000000);
    expect(image).toBe(0x3000000 - 0x10000);
  });

  test("protocol 2.13 gets no acpi_rsdp_addr", () => {
    loadKernel(mem, spec(buildBzImage({ version: 0x020d })));
    expect(mem.u64(ZERO_PAGE_START + 0x70)).toBe(0);
  });

  test("non-relocatable: loads at 1 MiB", () => {
    const e = loadKernel(mem, spec(buildBzImage({ relocatable: false })));
    expect(e).toMatchObject({ entry: 0x100200 });
    // It moves itself to pref_address and needs init_size from there.
    expect(e.kernelEnd).toBe(0x1800000);
  });

  test("setup_sects 0 means 4", () => {
    const k = buildBzImage({ setupSects: 0 });
    loadKernel(mem, spec(k));
    expect(mem.read(0x1000000, 16)).toEqual(k.subarray(5 * 512, 5 * 512 + 16));
  });

  test("a pref_address not aligned to kernel_alignment falls back to the aligned default", () => {
    const e = loadKernel(mem, spec(buildBzImage({ prefAddress: 0x1100000 })));
    // Loaded at 2 MiB; the kernel still runs from pref_address (it never goes below LOAD_PHYSICAL_ADDR).
    expect(e).toEqual({ protocol: "linux64", entry: 0x200200, bootParams: ZERO_PAGE_START, kernelEnd: 0x1900000 });
  });
});

// ---------------------------------------------------------------------------------------------

describe("errors", () => {
  test("empty file", () => {
    const e = expectBootError(() => loadKernel(mem, spec(new Uint8Array(0))), KernelFormatError, /empty/);
    expect(e.message).toContain("/images/test-kernel");
    expect(e.message).toContain("expected an ELF vmlinux");
  });

  test("random bytes", () => {
    const junk = pattern(4096, 77);
    expectBootError(() => loadKernel(mem, spec(junk)), KernelFormatError, /not a kernel image kiln can boot .*starts with/);
  });

  test("truncated ELF header", () => {
    expectBootError(() => loadKernel(mem, spec(pvhKernel().subarray(0, 40))), KernelFormatError, /truncated ELF header: the file has 40 bytes/);
  });

  test("program header table out of bounds", () => {
    const k = pvhKernel();
    new DataView(k.buffer).setBigUint64(32, 0x100000n, true); // e_phoff
    expectBootError(() => loadKernel(mem, spec(k)), KernelFormatError, /program header table .* outside the \d+-byte file/);
  });

  test("segment data out of bounds", () => {
    const k = pvhKernel();
    new DataView(k.buffer).setBigUint64(64 + 32, 0x10000000n, true); // phdr 0 p_filesz
    expectBootError(() => loadKernel(mem, spec(k)), KernelFormatError, /program header 0: segment data .* outside/);
  });

  test("segment beyond RAM", () => {
    const k = buildElf({ elfClass: 64, segments: [{ paddr: 0x100000, data: pattern(16, 1), memsz: 80 * MiB }], pvhEntry: 0x100000 });
    expectBootError(() => loadKernel(mem, spec(k)), KernelFormatError, /does not fit in guest RAM of 64 MiB/);
  });

  test("segment below 1 MiB", () => {
    const k = buildElf({ elfClass: 64, segments: [{ paddr: 0x8000, data: pattern(16, 1) }], pvhEntry: 0x8000 });
    expectBootError(() => loadKernel(mem, spec(k)), KernelFormatError, /below 1 MiB/);
  });

  test("PVH entry outside the image", () => {
    expectBootError(() => loadKernel(mem, spec(pvhKernel({ pvhEntry: 0x900000 }))), KernelFormatError, /PVH entry point 0x900000/);
  });

  test("32-bit ELF without a PVH note", () => {
    const k = buildElf({ elfClass: 32, segments: [{ paddr: 0x100000, data: pattern(16, 1) }] });
    expectBootError(() => loadKernel(mem, spec(k)), KernelFormatError, /32-bit ELF kernel without a PVH entry note/);
  });

  test("bzImage too old, 32-bit only, zImage, truncated", () => {
    expectBootError(() => loadKernel(mem, spec(buildBzImage({ version: 0x0205 }))), KernelFormatError, /boot protocol 2\.05 is too old.*2\.06/);
    expectBootError(() => loadKernel(mem, spec(buildBzImage({ xloadflags: 0 }))), KernelFormatError, /no 64-bit entry point/);
    expectBootError(() => loadKernel(mem, spec(buildBzImage({ version: 0x020b }))), KernelFormatError, /no 64-bit entry point/);
    expectBootError(() => loadKernel(mem, spec(buildBzImage({ loadflags: 0 }))), KernelFormatError, /zImage/);
    expectBootError(() => loadKernel(mem, spec(buildBzImage().subarray(0, 0x300))), KernelFormatError, /truncated bzImage: the setup code takes 5 sectors/);
    expectBootError(() => loadKernel(mem, spec(buildBzImage().subarray(0, 0x100))), KernelFormatError, /truncated bzImage/);
  });

  test("bzImage that needs more RAM than the guest has", () => {
    const small = new ArrayMemory(16 * MiB);
    expectBootError(() => loadKernel(small, spec(buildBzImage(), { memSize: 16 * MiB })), KernelFormatError, /needs guest memory up to 0x1800000.*16 MiB/);
  });

  test("command line too long for kiln", () => {
    const k = pvhKernel();
    expectBootError(() => loadKernel(mem, spec(k, { cmdline: "x".repeat(CMDLINE_MAX_SIZE) })), BootConfigError, /command line is 65536 bytes; .* at most 65535/);
    expect(loadKernel(mem, spec(k, { cmdline: "x".repeat(CMDLINE_MAX_SIZE - 1) }))).toMatchObject({ protocol: "pvh" });
  });

  test("command line too long for the kernel's cmdline_size", () => {
    const k = buildBzImage({ cmdlineSize: 255 });
    expectBootError(() => loadKernel(mem, spec(k, { cmdline: "y".repeat(256) })), BootConfigError, /at most 255 \(cmdline_size/);
    expect(loadKernel(mem, spec(k, { cmdline: "y".repeat(255) })).protocol).toBe("linux64");
  });

  test("NUL in the command line", () => {
    expectBootError(() => loadKernel(mem, spec(pvhKernel(), { cmdline: "a\0b" })), BootConfigError, /NUL/);
  });

  test("initrd too big for RAM", () => {
    const e = expectBootError(
      () => loadKernel(mem, spec(pvhKernel(), { initrd: new Uint8Array(64 * MiB), initrdPath: "/images/big.cpio" })),
      BootConfigError,
      /initrd \/images\/big.cpio \(64 MiB\) does not fit in guest RAM of 64 MiB/,
    );
    expect(e.message).toContain("more memory");
    expectBootError(() => loadKernel(mem, spec(buildBzImage(), { initrd: new Uint8Array(41 * MiB) })), BootConfigError, /does not fit/);
  });

  test("empty initrd", () => {
    expectBootError(() => loadKernel(mem, spec(pvhKernel(), { initrd: new Uint8Array(0), initrdPath: "x.img" })), BootConfigError, /initrd x.img is empty/);
  });

  test("bad memory sizes", () => {
    expectBootError(() => loadKernel(mem, spec(pvhKernel(), { memSize: 1000 })), BootConfigError, /multiple of 4096/);
    expectBootError(() => loadKernel(mem, spec(pvhKernel(), { memSize: MiB })), BootConfigError, /too small/);
  });

  test("a failed load leaves guest memory untouched", () => {
    expect(() => loadKernel(mem, spec(pvhKernel(), { initrd: new Uint8Array(64 * MiB) }))).toThrow(BootConfigError);
    expect(mem.read(0, 4 * MiB).every((b) => b === 0)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// Malformed input must give a BootError, never a RangeError or a GuestMemoryError.

function xorshift(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

const fuzzMem = new ArrayMemory(32 * MiB);
/** Returns "loaded" or the BootError's message; anything else fails the test. */
function loadsOrBootError(kernel: Uint8Array, initrd?: Uint8Array): string {
  try {
    loadKernel(fuzzMem, { ...spec(kernel), memSize: 32 * MiB, ...(initrd ? { initrd } : {}) });
    return "loaded";
  } catch (e) {
    if (!(e instanceof BootError)) throw new Error(`unexpected ${(e as Error).name}: ${(e as Error).message}`);
    return e.message;
  }
}

describe("robustness", () => {
  const samples = [
    ["PVH ELF64", pvhKernel({ otherNote: true })],
    ["PVH ELF32", buildElf({ elfClass: 32, segments: [{ paddr: 0x100000, data: pattern(0x400, 3) }], pvhEntry: 0x100000, pvhDescSize: 4 })],
    ["bzImage", buildBzImage({ pmSize: 0x400 })],
  ] as const;

  test.each(samples)("%s truncated at every length", (_, k) => {
    const outcomes = new Set<string>();
    for (let len = 0; len < k.length; len += len < 0x300 ? 1 : 17) outcomes.add(loadsOrBootError(k.subarray(0, len)).replace(/\d+/g, "N"));
    expect(outcomes.size).toBeGreaterThan(3); // several distinct, specific messages
    if (process.env.KILN_TEST_VERBOSE) console.log([...outcomes].join("\n"));
  });

  test.each(samples)("%s with random header corruption", (_, k) => {
    const rnd = xorshift(k.length);
    const outcomes = new Set<string>();
    for (let i = 0; i < 400; i++) {
      const c = k.slice();
      for (let n = 1 + (rnd() % 4); n > 0; n--) c[rnd() % Math.min(c.length, 0x300)] = rnd() & 0xff;
      outcomes.add(loadsOrBootError(c, i % 2 ? pattern(0x1000, i) : undefined).replace(/\d+/g, "N"));
    }
    expect(outcomes.has("loaded")).toBe(true);
    expect(outcomes.size).toBeGreaterThan(3);
    if (process.env.KILN_TEST_VERBOSE) console.log([...outcomes].join("\n"));
  });
});
