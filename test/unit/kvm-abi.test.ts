/**
 * The ABI constants and struct layouts in ffi/kvm-abi.ts, checked against the kernel's own headers by
 * compiling a C program that prints them (gcc and linux-libc-dev are on every machine of this kind).
 */
import { test, expect } from "bun:test";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as abi from "../../ffi/kvm-abi.ts";

const ioctls: Record<keyof typeof abi.Ioctl, string> = Object.fromEntries(
  Object.keys(abi.Ioctl).map((k) => [k, `KVM_${k}`]),
) as never;

const sizes: [string, number][] = [
  ["struct kvm_segment", abi.KvmSegment.size],
  ["struct kvm_regs", abi.KvmRegs.size],
  ["struct kvm_sregs", abi.KvmSregs.size],
  ["struct kvm_fpu", abi.KvmFpu.size],
  ["struct kvm_cpuid_entry2", abi.KvmCpuidEntry2.size],
  ["struct kvm_userspace_memory_region", abi.KvmUserspaceMemoryRegion.size],
  ["struct kvm_dirty_log", abi.KvmDirtyLog.size],
  ["struct kvm_clear_dirty_log", abi.KvmClearDirtyLog.size],
  ["struct kvm_irqchip", abi.KVM_IRQCHIP_SIZE],
  ["struct kvm_pit_state2", abi.KVM_PIT_STATE2_SIZE],
  ["struct kvm_clock_data", abi.KvmClockData.size],
  ["struct kvm_irq_routing_entry", abi.KVM_IRQ_ROUTING_ENTRY_SIZE],
  ["struct kvm_ioeventfd", abi.KvmIoeventfd.size],
  ["struct kvm_irqfd", abi.KvmIrqfd.size],
  ["struct kvm_msi", abi.KvmMsi.size],
  ["struct kvm_device_attr", abi.KvmDeviceAttr.size],
  ["struct kvm_enable_cap", abi.KvmEnableCap.size],
  ["struct kvm_vcpu_events", abi.KVM_VCPU_EVENTS_SIZE],
  ["struct kvm_debugregs", abi.KVM_DEBUGREGS_SIZE],
  ["struct kvm_xcrs", abi.KVM_XCRS_SIZE],
  ["struct kvm_xsave", abi.KVM_XSAVE_SIZE],
  ["struct kvm_lapic_state", abi.KVM_LAPIC_STATE_SIZE],
];

const offsets: [string, string, number][] = [
  ["struct kvm_run", "immediate_exit", abi.KvmRun.fields.immediate_exit.offset],
  ["struct kvm_run", "exit_reason", abi.KvmRun.fields.exit_reason.offset],
  ["struct kvm_run", "io.port", abi.KvmRun.fields.io_port.offset],
  ["struct kvm_run", "io.count", abi.KvmRun.fields.io_count.offset],
  ["struct kvm_run", "io.data_offset", abi.KvmRun.fields.io_data_offset.offset],
  ["struct kvm_run", "mmio.phys_addr", abi.KvmRun.fields.mmio_phys_addr.offset],
  ["struct kvm_run", "mmio.data", abi.KvmRun.fields.mmio_data.offset],
  ["struct kvm_run", "mmio.len", abi.KvmRun.fields.mmio_len.offset],
  ["struct kvm_run", "mmio.is_write", abi.KvmRun.fields.mmio_is_write.offset],
  ["struct kvm_run", "system_event.type", abi.KvmRun.fields.system_event_type.offset],
  ["struct kvm_run", "internal.suberror", abi.KvmRun.fields.internal_suberror.offset],
  ["struct kvm_sregs", "gdt", abi.KvmSregs.fields.gdt_base.offset],
  ["struct kvm_sregs", "idt", abi.KvmSregs.fields.idt_base.offset],
  ["struct kvm_sregs", "cr0", abi.KvmSregs.fields.cr0.offset],
  ["struct kvm_sregs", "efer", abi.KvmSregs.fields.efer.offset],
  ["struct kvm_sregs", "apic_base", abi.KvmSregs.fields.apic_base.offset],
  ["struct kvm_sregs", "tr", abi.SREGS_SEGMENT_OFFSETS.tr],
  ["struct kvm_sregs", "ldt", abi.SREGS_SEGMENT_OFFSETS.ldt],
  ["struct kvm_segment", "unusable", abi.KvmSegment.fields.unusable.offset],
  ["struct kvm_fpu", "fcw", abi.KvmFpu.fields.fcw.offset],
  ["struct kvm_fpu", "mxcsr", abi.KvmFpu.fields.mxcsr.offset],
  ["struct kvm_fpu", "last_ip", abi.KvmFpu.fields.last_ip.offset],
  ["struct kvm_irq_routing_entry", "u", abi.KvmIrqRoutingEntry.fields.irqchip.offset],
  ["struct kvm_clock_data", "realtime", abi.KvmClockData.fields.realtime.offset],
  ["struct kvm_clock_data", "host_tsc", abi.KvmClockData.fields.host_tsc.offset],
  ["struct kvm_ioeventfd", "flags", abi.KvmIoeventfd.fields.flags.offset],
  ["struct kvm_device_attr", "addr", abi.KvmDeviceAttr.fields.addr.offset],
];

test("ioctl numbers, struct sizes and offsets match <linux/kvm.h>", () => {
  const dir = mkdtempSync(join(tmpdir(), "kiln-abi-"));
  try {
    const lines: string[] = [];
    for (const [k, macro] of Object.entries(ioctls)) lines.push(`printf("ioctl ${k} %lu\\n", (unsigned long)${macro});`);
    for (const [s] of sizes) lines.push(`printf("size ${s} %zu\\n", sizeof(${s}));`);
    for (const [s, f] of offsets) lines.push(`printf("off ${s}.${f} %zu\\n", offsetof(${s}, ${f}));`);
    for (const [k, v] of Object.entries(abi.KvmExit)) lines.push(`printf("exit ${k} %d ${v}\\n", KVM_EXIT_${k});`);
    for (const [k, v] of Object.entries(abi.KvmCap)) lines.push(`printf("cap ${k} %d ${v}\\n", KVM_CAP_${k});`);
    const src = `#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void){\n${lines.join("\n")}\nreturn 0;}\n`;
    writeFileSync(join(dir, "abi.c"), src);
    const cc = Bun.spawnSync(["gcc", "-o", join(dir, "abi"), join(dir, "abi.c")]);
    expect(cc.stderr.toString()).toBe("");
    const out = Bun.spawnSync([join(dir, "abi")]).stdout.toString().trim().split("\n");
    const ours = new Map<string, number>();
    for (const [k, v] of Object.entries(abi.Ioctl)) ours.set(`ioctl ${k}`, v);
    for (const [s, v] of sizes) ours.set(`size ${s}`, v);
    for (const [s, f, v] of offsets) ours.set(`off ${s}.${f}`, v);
    let checked = 0;
    for (const line of out) {
      const parts = line.split(" ");
      if (parts[0] === "exit" || parts[0] === "cap") {
        expect(`${parts[0]} ${parts[1]} ${parts[2]}`).toBe(`${parts[0]} ${parts[1]} ${parts[3]}`);
      } else {
        const key = parts.slice(0, -1).join(" ");
        expect(`${key} ${ours.get(key)}`).toBe(line);
      }
      checked++;
    }
    expect(checked).toBe(
      Object.keys(abi.Ioctl).length + sizes.length + offsets.length + Object.keys(abi.KvmExit).length + Object.keys(abi.KvmCap).length,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
