/**
 * The x86-64 vCPU state kiln sets at boot: the boot protocol's register state (plain data from the
 * loader), MSRs, FPU control words and the local APIC's LINT pins.
 */
import { KvmRegs, KvmSregs } from "../../../ffi/kvm-abi.ts";
import type { StructBuf } from "../../../ffi/struct.ts";
import { writeSegment, type Segment, type SegmentName } from "../../kvm/vcpu.ts";
import type { BootCpuState } from "./boot/cpu-state.ts";

export type { BootCpuState, SegmentState } from "./boot/cpu-state.ts";

/** Write the boot state over registers fetched from KVM (so fields the loader leaves alone keep KVM's reset values). */
export function applyBootRegs(regs: StructBuf<typeof KvmRegs.fields>, boot: BootCpuState): void {
  const r = boot.regs;
  regs.bytes.fill(0);
  regs.set("rip", r.rip).set("rsp", r.rsp).set("rflags", r.rflags);
  if (r.rax !== undefined) regs.set("rax", r.rax);
  if (r.rbx !== undefined) regs.set("rbx", r.rbx);
  if (r.rsi !== undefined) regs.set("rsi", r.rsi);
  if (r.rdi !== undefined) regs.set("rdi", r.rdi);
  if (r.rbp !== undefined) regs.set("rbp", r.rbp);
}

export function applyBootSregs(sregs: StructBuf<typeof KvmSregs.fields>, boot: BootCpuState): void {
  const s = boot.sregs;
  for (const name of ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as SegmentName[]) {
    writeSegment(sregs, name, s[name] as Segment);
  }
  sregs.set("gdt_base", s.gdt.base).set("gdt_limit", s.gdt.limit);
  sregs.set("idt_base", s.idt.base).set("idt_limit", s.idt.limit);
  sregs.set("cr0", s.cr0).set("cr3", s.cr3).set("cr4", s.cr4).set("efer", s.efer);
}

export const Msr = {
  IA32_TSC: 0x10,
  IA32_APIC_BASE: 0x1b,
  IA32_MISC_ENABLE: 0x1a0,
  MTRR_DEF_TYPE: 0x2ff,
  IA32_SYSENTER_CS: 0x174,
  IA32_SYSENTER_ESP: 0x175,
  IA32_SYSENTER_EIP: 0x176,
  IA32_TSC_DEADLINE: 0x6e0,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SYSCALL_MASK: 0xc0000084,
  KERNEL_GS_BASE: 0xc0000102,
} as const;

const MISC_ENABLE_FAST_STRING = 1n;
const MTRR_ENABLE = 1n << 11n;
const MTRR_MEM_TYPE_WB = 6n;

/** MSRs every vCPU gets at boot (as Firecracker and Cloud Hypervisor set them): syscall MSRs zeroed,
 * fast strings on, MTRRs enabled with write-back default so the guest does not see all memory as UC. */
export function bootMsrs(): [number, bigint][] {
  return [
    [Msr.IA32_SYSENTER_CS, 0n],
    [Msr.IA32_SYSENTER_ESP, 0n],
    [Msr.IA32_SYSENTER_EIP, 0n],
    [Msr.STAR, 0n],
    [Msr.CSTAR, 0n],
    [Msr.KERNEL_GS_BASE, 0n],
    [Msr.SYSCALL_MASK, 0n],
    [Msr.LSTAR, 0n],
    [Msr.IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING],
    [Msr.MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB],
  ];
}

/** x87 control word and MXCSR at reset values (all exceptions masked). */
export const FPU_FCW_DEFAULT = 0x37f;
export const FPU_MXCSR_DEFAULT = 0x1f80;

const APIC_LVT0 = 0x350;
const APIC_LVT1 = 0x360;
const APIC_MODE_NMI = 0x4;
const APIC_MODE_EXTINT = 0x7;

/** Virtual-wire mode as a BIOS leaves it: LINT0 delivers the PIC's ExtINT, LINT1 NMIs. */
export function setLapicLints(lapic: Uint8Array): void {
  const dv = new DataView(lapic.buffer, lapic.byteOffset, lapic.byteLength);
  const setMode = (reg: number, mode: number) => {
    const v = dv.getUint32(reg, true);
    dv.setUint32(reg, (v & ~0x700) | (mode << 8), true);
  };
  setMode(APIC_LVT0, APIC_MODE_EXTINT);
  setMode(APIC_LVT1, APIC_MODE_NMI);
}
