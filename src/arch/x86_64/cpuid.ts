/**
 * Per-vCPU CPUID, derived from what KVM supports (KVM_GET_SUPPORTED_CPUID): APIC ids and topology
 * (leaves 1, 4, 0xB, 0x1F), the hypervisor bit, TSC-deadline timer, and KVM's paravirt leaves including
 * the timing leaf 0x40000010 (TSC and APIC-bus kHz), because microvm offers no timer a guest could
 * calibrate the TSC against.
 */
import type { CpuidEntry } from "../../kvm/kvm.ts";

export interface CpuTopology {
  cpus: number;
  sockets: number;
  cores: number;
  threads: number;
}

const bitsFor = (n: number) => (n <= 1 ? 0 : Math.ceil(Math.log2(n)));

/** x2APIC/APIC id of vCPU `index`: thread, core and socket fields packed as CPUID leaf 0xB describes. */
export function apicId(index: number, t: CpuTopology): number {
  const threadBits = bitsFor(t.threads);
  const coreBits = bitsFor(t.cores);
  const thread = index % t.threads;
  const core = Math.floor(index / t.threads) % t.cores;
  const socket = Math.floor(index / (t.threads * t.cores));
  return (socket << (coreBits + threadBits)) | (core << threadBits) | thread;
}

const FEAT_1_ECX_TSC_DEADLINE = 1 << 24;
const FEAT_1_ECX_HYPERVISOR = 1 << 31;
const FEAT_1_EDX_HTT = 1 << 28;
const KVM_SIGNATURE = [0x4b4d564b, 0x564b4d56, 0x4d]; // "KVMKVMKVM\0\0\0" as ebx, ecx, edx
export const KVM_CPUID_SIGNATURE = 0x40000000;
export const KVM_CPUID_FEATURES = 0x40000001;
export const KVM_CPUID_TIMING = 0x40000010;
/** KVM's in-kernel LAPIC timer ticks at 1 GHz. */
const APIC_BUS_KHZ = 1_000_000;

export function vcpuCpuid(supported: CpuidEntry[], index: number, topo: CpuTopology, tscKhz: number): CpuidEntry[] {
  const id = apicId(index, topo);
  const threadBits = bitsFor(topo.threads);
  const coreBits = bitsFor(topo.cores);
  const perPackage = topo.cores * topo.threads;
  const out: CpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 1:
        e.ebx = (e.ebx & 0x0000ffff) | ((perPackage & 0xff) << 16) | ((id & 0xff) << 24);
        e.ecx |= FEAT_1_ECX_HYPERVISOR | FEAT_1_ECX_TSC_DEADLINE;
        if (perPackage > 1) e.edx |= FEAT_1_EDX_HTT;
        else e.edx &= ~FEAT_1_EDX_HTT;
        break;
      case 4: {
        // Cache topology: cores per package in 31:26, threads sharing this cache in 25:14.
        const level = (e.eax >> 5) & 7;
        const sharing = level >= 3 ? perPackage : topo.threads;
        e.eax = (e.eax & 0x3fff) | (((sharing - 1) & 0xfff) << 14) | (((topo.cores - 1) & 0x3f) << 26);
        break;
      }
      case 0xb:
      case 0x1f: {
        // Extended topology: sub-leaf 0 = SMT level, 1 = core level, then invalid.
        if (e.index === 0) {
          e.eax = threadBits;
          e.ebx = topo.threads;
          e.ecx = 0 | (1 << 8);
        } else if (e.index === 1) {
          e.eax = threadBits + coreBits;
          e.ebx = perPackage;
          e.ecx = 1 | (2 << 8);
        } else {
          e.eax = 0;
          e.ebx = 0;
          e.ecx = e.index & 0xff;
        }
        e.edx = id;
        break;
      }
      case KVM_CPUID_SIGNATURE:
        e.eax = KVM_CPUID_TIMING;
        [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE as [number, number, number];
        break;
      case KVM_CPUID_TIMING:
        continue; // replaced below
    }
    out.push(e);
  }
  if (!out.some((e) => e.function === KVM_CPUID_SIGNATURE)) {
    out.push({ function: KVM_CPUID_SIGNATURE, index: 0, flags: 0, eax: KVM_CPUID_TIMING, ebx: KVM_SIGNATURE[0]!, ecx: KVM_SIGNATURE[1]!, edx: KVM_SIGNATURE[2]! });
  }
  out.push({ function: KVM_CPUID_TIMING, index: 0, flags: 0, eax: tscKhz >>> 0, ebx: APIC_BUS_KHZ, ecx: 0, edx: 0 });
  return out;
}
