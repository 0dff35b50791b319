import { describe, expect, test } from "bun:test";
import { encodeDescriptor, initialCpuState, type SegmentState } from "../../src/arch/x86_64/boot/index.ts";
import { BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, PVH_INFO_START, ZERO_PAGE_START } from "../../src/arch/x86_64/layout.ts";

/** Decode an 8-byte descriptor back into the fields KVM's kvm_segment carries. */
function decode(d: bigint): Omit<SegmentState, "selector" | "unusable"> {
  const limitRaw = Number((d & 0xffffn) | (((d >> 48n) & 0xfn) << 16n));
  const access = Number((d >> 40n) & 0xffn);
  const flags = Number((d >> 52n) & 0xfn);
  const g = (flags >> 3) & 1;
  return {
    base: Number(((d >> 16n) & 0xffffffn) | (((d >> 56n) & 0xffn) << 24n)),
    limit: g ? limitRaw * 4096 + 4095 : limitRaw,
    type: access & 0xf,
    s: ((access >> 4) & 1) as 0 | 1,
    dpl: (access >> 5) & 3,
    present: ((access >> 7) & 1) as 0 | 1,
    avl: 0,
    l: ((flags >> 1) & 1) as 0 | 1,
    db: ((flags >> 2) & 1) as 0 | 1,
    g: g as 0 | 1,
  };
}

const strip = ({ selector: _s, unusable: _u, ...rest }: SegmentState) => rest;

describe("PVH entry state", () => {
  const s = initialCpuState({ protocol: "pvh", entry: 0x1000850, startInfo: PVH_INFO_START, kernelEnd: 0x3000000 });

  test("registers", () => {
    expect(s.regs.rip).toBe(0x1000850);
    expect(s.regs.rbx).toBe(PVH_INFO_START);
    expect(s.regs.rflags).toBe(2);
  });

  test("32-bit protected mode, paging off", () => {
    expect(s.sregs.cr0).toBe(0x11); // PE | ET
    expect(s.sregs.cr4).toBe(0);
    expect(s.sregs.efer).toBe(0);
  });

  test("flat 32-bit segments and a busy TSS", () => {
    expect(s.sregs.cs).toMatchObject({ base: 0, limit: 0xffffffff, type: 0xb, db: 1, l: 0, g: 1, s: 1, present: 1, selector: 0x08 });
    for (const seg of [s.sregs.ds, s.sregs.es, s.sregs.fs, s.sregs.gs, s.sregs.ss]) {
      expect(seg).toMatchObject({ base: 0, limit: 0xffffffff, type: 0x3, db: 1, g: 1, s: 1, present: 1, selector: 0x10 });
    }
    expect(s.sregs.tr).toMatchObject({ base: 0, limit: 0x67, type: 0xb, s: 0, present: 1 });
    expect(s.sregs.gdt).toEqual({ base: BOOT_GDT_START, limit: 31 });
  });
});

describe("Linux 64-bit entry state", () => {
  const s = initialCpuState({ protocol: "linux64", entry: 0x1000200, bootParams: ZERO_PAGE_START, kernelEnd: 0x3000000 });

  test("registers", () => {
    expect(s.regs).toMatchObject({ rip: 0x1000200, rsi: ZERO_PAGE_START, rsp: BOOT_STACK_POINTER, rflags: 2, rbx: 0, rdi: 0, rbp: 0 });
  });

  test("long mode with paging", () => {
    expect(s.sregs.cr0).toBe(0x8000_0031); // PG | NE | ET | PE, as an unsigned value
    expect(s.sregs.cr0).toBeGreaterThan(0);
    expect(s.sregs.cr3).toBe(PML4_START);
    expect(s.sregs.cr4).toBe(0x20); // PAE
    expect(s.sregs.efer).toBe(0x500); // LME | LMA
  });

  test("__BOOT_CS / __BOOT_DS", () => {
    expect(s.sregs.cs).toMatchObject({ selector: 0x10, l: 1, db: 0, type: 0xb, s: 1, present: 1 });
    for (const seg of [s.sregs.ds, s.sregs.es, s.sregs.fs, s.sregs.gs, s.sregs.ss]) expect(seg).toMatchObject({ selector: 0x18, type: 0x3 });
    expect(s.sregs.idt).toEqual({ base: BOOT_IDT_START, limit: 7 });
  });

  test("segment objects are independent copies", () => {
    s.sregs.ds.base = 123;
    expect(s.sregs.es.base).toBe(0);
    expect(initialCpuState({ protocol: "linux64", entry: 0, bootParams: 0, kernelEnd: 0 }).sregs.ds.base).toBe(0);
  });
});

describe("GDT descriptors agree with the hidden segment state", () => {
  test.each(["pvh", "linux64"] as const)("%s", (protocol) => {
    const entry =
      protocol === "pvh"
        ? ({ protocol, entry: 0, startInfo: 0, kernelEnd: 0 } as const)
        : ({ protocol, entry: 0, bootParams: 0, kernelEnd: 0 } as const);
    const s = initialCpuState(entry);
    for (const seg of [s.sregs.cs, s.sregs.ds, s.sregs.ss]) expect(decode(encodeDescriptor(seg))).toEqual(strip(seg));
    if (protocol === "pvh") expect(decode(encodeDescriptor(s.sregs.tr))).toEqual(strip(s.sregs.tr));
  });
});
