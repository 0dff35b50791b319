/**
 * The bootstrap processor's register state at the kernel entry point, as plain data that the KVM
 * layer maps onto kvm_regs / kvm_sregs. Segment values use KVM's conventions: `limit` is the
 * byte-granular limit (0xffffffff for a flat 4 GiB segment with g = 1).
 *
 * The GDT that loadKernel writes at BOOT_GDT_START is encoded from these same segment values, so
 * the hidden segment state KVM loads and the descriptors in memory agree.
 */
import { BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START } from "../layout.ts";
import type { BootEntry } from "./loader.ts";

export interface SegmentState {
  base: number;
  limit: number;
  selector: number;
  type: number;
  present: 1 | 0;
  dpl: number;
  db: 1 | 0;
  s: 1 | 0;
  l: 1 | 0;
  g: 1 | 0;
  avl: 0;
  unusable: 0 | 1;
}

export interface BootCpuState {
  regs: { rip: number; rsp: number; rflags: number; rax?: number; rbx?: number; rsi?: number; rdi?: number; rbp?: number };
  sregs: {
    cs: SegmentState;
    ds: SegmentState;
    es: SegmentState;
    fs: SegmentState;
    gs: SegmentState;
    ss: SegmentState;
    tr: SegmentState;
    ldt: SegmentState;
    gdt: { base: number; limit: number };
    idt: { base: number; limit: number };
    cr0: number;
    cr3: number;
    cr4: number;
    efer: number;
  };
}

export const CR0 = { PE: 1 << 0, ET: 1 << 4, NE: 1 << 5, PG: 0x8000_0000 } as const;
export const CR4 = { PAE: 1 << 5 } as const;
export const EFER = { LME: 1 << 8, LMA: 1 << 10 } as const;
/** Bit 1 of RFLAGS is reserved and always 1; everything else (IF included) starts clear. */
export const RFLAGS_RESERVED = 0x2;

/** Segment descriptor types (with the accessed bit set, as the CPU would after loading them). */
export const SEG_TYPE = { DATA_RW: 0x3, CODE_XR: 0xb, LDT: 0x2, TSS_BUSY: 0xb } as const;

/** Selectors and GDT slots. The 64-bit Linux protocol requires __BOOT_CS = 0x10, __BOOT_DS = 0x18. */
export const LINUX64_SELECTORS = { CS: 0x10, DS: 0x18 } as const;
/** PVH leaves selectors unspecified; kiln uses null, code, data, TSS. */
export const PVH_SELECTORS = { CS: 0x08, DS: 0x10, TR: 0x18 } as const;
/** BOOT_GDT_START .. BOOT_IDT_START holds four descriptors. */
export const BOOT_GDT_ENTRIES = 4;
export const GDT_LIMIT = BOOT_GDT_ENTRIES * 8 - 1;
/** An empty IDT: any exception before the kernel loads its own triple-faults, which is what we want. */
export const IDT_LIMIT = 7;
/** A minimal 32-bit TSS is 0x68 bytes; the Xen PVH ABI asks for exactly this limit. */
export const TSS_LIMIT = 0x67;

const FLAT_LIMIT = 0xffff_ffff;

function flat(selector: number, type: number, is64: boolean): SegmentState {
  return {
    base: 0,
    limit: FLAT_LIMIT,
    selector,
    type,
    present: 1,
    dpl: 0,
    db: is64 ? 0 : 1, // D/B must be 0 when L is 1
    s: 1,
    l: is64 ? 1 : 0,
    g: 1,
    avl: 0,
    unusable: 0,
  };
}

function tss(selector: number): SegmentState {
  return { base: 0, limit: TSS_LIMIT, selector, type: SEG_TYPE.TSS_BUSY, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
}

/** KVM's reset value for LDTR: usable but empty. */
const LDT: SegmentState = { base: 0, limit: 0xffff, selector: 0, type: SEG_TYPE.LDT, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };

export function linux64Segments() {
  const code = flat(LINUX64_SELECTORS.CS, SEG_TYPE.CODE_XR, true);
  const data = flat(LINUX64_SELECTORS.DS, SEG_TYPE.DATA_RW, false);
  // The four-slot GDT has no room for a TSS after the two selectors the protocol fixes; TR only
  // needs valid hidden state for VM entry (a busy TSS) and Linux loads its own before using it.
  const tr = tss(0);
  return { code, data, tr, gdt: [null, null, code, data] as (SegmentState | null)[] };
}

export function pvhSegments() {
  const code = flat(PVH_SELECTORS.CS, SEG_TYPE.CODE_XR, false);
  const data = flat(PVH_SELECTORS.DS, SEG_TYPE.DATA_RW, false);
  const tr = tss(PVH_SELECTORS.TR);
  return { code, data, tr, gdt: [null, code, data, tr] as (SegmentState | null)[] };
}

/** The 8-byte GDT descriptor for a segment (Intel SDM vol. 3, 3.4.5). */
export function encodeDescriptor(seg: SegmentState): bigint {
  const limit = BigInt(seg.g ? seg.limit >>> 12 : seg.limit) & 0xfffffn;
  const base = BigInt(seg.base) & 0xffff_ffffn;
  const access = BigInt(seg.type | (seg.s << 4) | (seg.dpl << 5) | (seg.present << 7));
  const flags = BigInt(seg.avl | (seg.l << 1) | (seg.db << 2) | (seg.g << 3));
  return (
    (limit & 0xffffn) |
    ((base & 0xff_ffffn) << 16n) |
    (access << 40n) |
    ((limit >> 16n) << 48n) |
    (flags << 52n) |
    ((base >> 24n) << 56n)
  );
}

/** The bytes of a GDT (null slots encode as zero descriptors). */
export function encodeGdt(entries: (SegmentState | null)[]): Uint8Array {
  const out = new Uint8Array(entries.length * 8);
  const view = new DataView(out.buffer);
  entries.forEach((seg, i) => view.setBigUint64(i * 8, seg ? encodeDescriptor(seg) : 0n, true));
  return out;
}

/** The BSP's registers for entering the kernel that loadKernel placed. */
/** Flat segments from `seg`, the boot GDT/IDT, and the given control registers. */
function bootSregs(seg: ReturnType<typeof pvhSegments>, cr: { cr0: number; cr3: number; cr4: number; efer: number }): BootCpuState["sregs"] {
  return {
    cs: { ...seg.code },
    ds: { ...seg.data },
    es: { ...seg.data },
    fs: { ...seg.data },
    gs: { ...seg.data },
    ss: { ...seg.data },
    tr: { ...seg.tr },
    ldt: { ...LDT },
    gdt: { base: BOOT_GDT_START, limit: GDT_LIMIT },
    idt: { base: BOOT_IDT_START, limit: IDT_LIMIT },
    ...cr,
  };
}

export function initialCpuState(entry: BootEntry): BootCpuState {
  if (entry.protocol === "pvh") {
    // Xen PVH ABI: 32-bit protected mode, paging off, flat segments, ebx = start_info.
    return {
      regs: { rip: entry.entry, rsp: BOOT_STACK_POINTER, rflags: RFLAGS_RESERVED, rax: 0, rbx: entry.startInfo, rsi: 0, rdi: 0, rbp: 0 },
      sregs: bootSregs(pvhSegments(), { cr0: CR0.PE | CR0.ET, cr3: 0, cr4: 0, efer: 0 }),
    };
  }
  // Linux 64-bit boot protocol: long mode, identity-mapped page tables, rsi = boot_params.
  return {
    regs: { rip: entry.entry, rsp: BOOT_STACK_POINTER, rflags: RFLAGS_RESERVED, rax: 0, rbx: 0, rsi: entry.bootParams, rdi: 0, rbp: 0 },
    sregs: bootSregs(linux64Segments(), {
      // >>> 0: JS bitwise results are signed 32-bit, and PG is bit 31.
      cr0: (CR0.PE | CR0.ET | CR0.NE | CR0.PG) >>> 0,
      cr3: PML4_START,
      cr4: CR4.PAE,
      efer: EFER.LME | EFER.LMA,
    }),
  };
}
