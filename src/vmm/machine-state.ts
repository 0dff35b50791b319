/**
 * The whole machine's state as named, versioned sections (for live migration and snapshots): every
 * vCPU, the in-kernel irqchip, PIT and kvmclock, and every device model. Also the guest-visible
 * configuration a destination must match before it accepts anything.
 */
import type { Machine } from "./machine.ts";
import type { StateSection } from "../migration/wire.ts";
import type { VcpuState } from "./vcpu-protocol.ts";
import {
  KVM_CLOCK_REALTIME,
  KVM_DEBUGREGS_SIZE,
  KVM_IRQCHIP_IOAPIC,
  KVM_IRQCHIP_PIC_MASTER,
  KVM_IRQCHIP_PIC_SLAVE,
  KVM_IRQCHIP_SIZE,
  KVM_LAPIC_STATE_SIZE,
  KVM_PIT_STATE2_SIZE,
  KVM_VCPU_EVENTS_SIZE,
  KVM_XCRS_SIZE,
  KvmRegs,
  KvmSregs,
} from "../../ffi/kvm-abi.ts";
import { PersistError } from "../persist/persist.ts";
import type { VcpuFd } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { decodeVcpuState, encodeVcpuState, restoreVcpuState } from "./vcpu-state.ts";

/** 2: the binary form of vcpu-state.ts (1 was JSON). */
export const CPU_SECTION_VERSION = 2;
export const KVM_SECTION_VERSION = 1;

/** What must be identical on both ends of a migration (StratoVirt checks vCPUs, memory and devices). */
export interface GuestConfig {
  machine: string;
  memSize: number;
  regions: { gpa: number; size: number }[];
  cpus: number;
  topology: { sockets: number; cores: number; threads: number };
  devices: string[];
}

export function guestConfig(m: Machine): GuestConfig {
  const c = m.config;
  return {
    machine: c.machine,
    memSize: c.memSize,
    regions: m.memory.regions.map((r) => ({ gpa: r.gpa, size: r.size })),
    cpus: c.topology.cpus,
    topology: { sockets: c.topology.sockets, cores: c.topology.cores, threads: c.topology.threads },
    devices: m.devices.map((d) => d.persistName),
  };
}

const fmtSize = (n: number) => (n % (1 << 30) === 0 ? `${n / (1 << 30)}G` : `${n / (1 << 20)}M`);

/** Why `theirs` (the source) cannot be loaded into `ours`, in the user's terms; null when they match. */
export function configMismatch(ours: GuestConfig, theirs: unknown): string | null {
  const t = theirs as Partial<GuestConfig>;
  if (!t || typeof t !== "object") return "the source sent no configuration";
  if (t.machine !== ours.machine) return `the source is -machine ${String(t.machine)} but this destination is -machine ${ours.machine}`;
  if (t.memSize !== ours.memSize) {
    return `the source has -m ${typeof t.memSize === "number" ? fmtSize(t.memSize) : "?"} but this destination has -m ${fmtSize(ours.memSize)}`;
  }
  if (JSON.stringify(t.regions) !== JSON.stringify(ours.regions)) return "the guest memory layout differs between source and destination";
  if (t.cpus !== ours.cpus) return `the source has -smp ${String(t.cpus)} but this destination has -smp ${ours.cpus}`;
  if (JSON.stringify(t.topology) !== JSON.stringify(ours.topology)) return "the vCPU topology (-smp sockets/cores/threads) differs";
  if (JSON.stringify(t.devices) !== JSON.stringify(ours.devices)) {
    return `the devices differ: source [${(t.devices ?? []).join(", ")}], destination [${ours.devices.join(", ")}]`;
  }
  return null;
}

/** Save everything while the machine is paused; `cpuStates` when the vCPUs already saved theirs as they parked. */
export async function saveMachineState(m: Machine, cpuStates?: (VcpuState | undefined)[]): Promise<StateSection[]> {
  const sections: StateSection[] = [];
  const cpus = await Promise.all(m.vcpus.map((v, i) => cpuStates?.[i] ?? v.save()));
  cpus.forEach((st, i) => sections.push({ name: `cpu/${i}`, version: CPU_SECTION_VERSION, data: encodeVcpuState(st) }));
  sections.push({
    name: "kvm/irqchip",
    version: KVM_SECTION_VERSION,
    data: { picMaster: m.vm.getIrqchip(KVM_IRQCHIP_PIC_MASTER), picSlave: m.vm.getIrqchip(KVM_IRQCHIP_PIC_SLAVE), ioapic: m.vm.getIrqchip(KVM_IRQCHIP_IOAPIC) },
  });
  sections.push({ name: "kvm/pit", version: KVM_SECTION_VERSION, data: { pit: m.vm.getPit2() } });
  const clock = m.vm.getClock();
  sections.push({
    name: "kvm/clock",
    version: KVM_SECTION_VERSION,
    data: { clock: clock.clock.toString(), flags: clock.flags, realtime: clock.realtime.toString() },
  });
  for (const d of m.devices) sections.push({ name: d.persistName, version: d.persistVersion, data: d.save() });
  return sections;
}

function bytes(section: string, v: unknown, field: string, size: number): Uint8Array {
  if (!(v instanceof Uint8Array) || v.byteLength !== size) throw new PersistError(section, `${field} must be ${size} bytes`);
  return v;
}

function checkVcpuState(name: string, v: unknown, xsaveSize: number): VcpuState {
  if (!(v instanceof Uint8Array)) throw new PersistError(name, "not in the binary form");
  let s: VcpuState;
  try {
    s = decodeVcpuState(v);
  } catch (e) {
    throw new PersistError(name, (e as Error).message);
  }
  bytes(name, s.regs, "regs", KvmRegs.size);
  bytes(name, s.sregs, "sregs", KvmSregs.size);
  bytes(name, s.xsave, "xsave", xsaveSize);
  bytes(name, s.xcrs, "xcrs", KVM_XCRS_SIZE);
  bytes(name, s.lapic, "lapic", KVM_LAPIC_STATE_SIZE);
  bytes(name, s.events, "events", KVM_VCPU_EVENTS_SIZE);
  bytes(name, s.debugRegs, "debugRegs", KVM_DEBUGREGS_SIZE);
  if (!Number.isInteger(s.mpState) || s.mpState < 0 || s.mpState > 8) throw new PersistError(name, "bad mpState");
  if (!Array.isArray(s.msrs) || s.msrs.length > 4096) throw new PersistError(name, "bad msrs");
  for (const e of s.msrs) {
    if (!Array.isArray(e) || !Number.isInteger(e[0]) || typeof e[1] !== "string" || !/^\d{1,20}$/.test(e[1])) throw new PersistError(name, "bad msr entry");
  }
  return s;
}

/** Every section a machine's state consists of, by name. */
export function expectedSections(m: Machine): string[] {
  return [...m.vcpus.map((_, i) => `cpu/${i}`), "kvm/irqchip", "kvm/pit", "kvm/clock", ...m.devices.map((d) => d.persistName)];
}

/** The sections by name, refusing duplicates, missing and unknown ones. */
export function sectionsByName(expected: string[], sections: StateSection[]): Map<string, StateSection> {
  const byName = new Map<string, StateSection>();
  for (const s of sections) {
    if (byName.has(s.name)) throw new PersistError(s.name, "section appears twice");
    byName.set(s.name, s);
  }
  for (const n of expected) if (!byName.has(n)) throw new PersistError(n, "missing from the migration stream");
  for (const n of byName.keys()) if (!expected.includes(n)) throw new PersistError(n, "is not a component of this machine");
  return byName;
}

function want(byName: Map<string, StateSection>, n: string, version: number): Record<string, unknown> {
  const s = byName.get(n)!;
  if (s.version !== version) throw new PersistError(n, `version ${s.version} is not supported (expected ${version})`);
  return s.data as Record<string, unknown>;
}

/** What KVM state is restored into: the VM and its vCPUs, by fd (any thread may use them). */
export interface KvmTargets {
  vm: Vm;
  vcpus: VcpuFd[];
  xsaveSize: number;
}

/**
 * Validate, then load, the vCPU and KVM sections (cpu/N, irqchip, PIT, kvmclock). `advanceNs`: wall
 * time the guest was stopped, added to its TSC and kvmclock (0 for snapshots: time stands still).
 */
export function restoreKvmState(t: KvmTargets, byName: Map<string, StateSection>, advanceNs: number): void {
  const cpus = t.vcpus.map((_, i) => checkVcpuState(`cpu/${i}`, want(byName, `cpu/${i}`, CPU_SECTION_VERSION), t.xsaveSize));
  const irq = want(byName, "kvm/irqchip", KVM_SECTION_VERSION);
  const chips = [irq.picMaster, irq.picSlave, irq.ioapic].map((c, i) => bytes("kvm/irqchip", c, ["picMaster", "picSlave", "ioapic"][i]!, KVM_IRQCHIP_SIZE));
  const pit = bytes("kvm/pit", want(byName, "kvm/pit", KVM_SECTION_VERSION).pit, "pit", KVM_PIT_STATE2_SIZE);
  const clock = want(byName, "kvm/clock", KVM_SECTION_VERSION);
  if (typeof clock.clock !== "string" || !/^\d{1,20}$/.test(clock.clock) || typeof clock.realtime !== "string" || !/^\d{1,20}$/.test(clock.realtime)) {
    throw new PersistError("kvm/clock", "bad clock values");
  }
  t.vcpus.forEach((v, i) => restoreVcpuState(v, cpus[i]!, advanceNs));
  for (const c of chips) t.vm.setIrqchip(c);
  t.vm.setPit2(pit);
  // With KVM_CLOCK_REALTIME, KVM adds the wall time since `realtime` to the clock: the downtime.
  if (advanceNs > 0) t.vm.setClock(BigInt(clock.clock), KVM_CLOCK_REALTIME, BigInt(clock.realtime));
  else t.vm.setClock(BigInt(clock.clock));
}

/**
 * Devices last: restoring one re-drives its interrupt line, which must meet the restored irqchip.
 * Each validates its section before changing anything (a bad one fails this destination, which is
 * then discarded; the source keeps running).
 */
export function restoreDevices(m: Machine, byName: Map<string, StateSection>): void {
  for (const d of m.devices) {
    const s = byName.get(d.persistName)!;
    d.restore(s.data, s.version);
  }
}
