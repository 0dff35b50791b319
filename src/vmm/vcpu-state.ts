/**
 * Saving and restoring one vCPU's complete state through its fd (usable from any thread): registers,
 * XSAVE, XCRs, special registers, every MSR KVM can save, MP state, LAPIC, events, debug registers.
 */
import type { VcpuFd } from "../kvm/vcpu.ts";
import { Msr } from "../arch/x86_64/regs.ts";
import type { VcpuState } from "./vcpu-protocol.ts";

/** The MSRs in KVM's save list this vCPU can actually read, in order (TSC_DEADLINE apart: it must follow the LAPIC). */
export function probeSavableMsrs(vcpu: VcpuFd, msrIndexList: number[]): number[] {
  const ok: number[] = [];
  let rest = msrIndexList.filter((m) => m !== Msr.IA32_TSC_DEADLINE);
  while (rest.length > 0) {
    const got = vcpu.getMsrs(rest).length;
    ok.push(...rest.slice(0, got));
    rest = rest.slice(got + 1); // skip the one KVM could not read
  }
  return ok;
}

export function saveVcpuState(vcpu: VcpuFd, xsaveSize: number, savableMsrs: number[]): VcpuState {
  const values = vcpu.getMsrs(savableMsrs);
  const msrs: [number, string][] = savableMsrs.map((m, i) => [m, (values[i] ?? 0n).toString()]);
  const deadline = vcpu.getMsrs([Msr.IA32_TSC_DEADLINE]);
  if (deadline.length === 1) msrs.push([Msr.IA32_TSC_DEADLINE, deadline[0]!.toString()]);
  return {
    id: vcpu.id,
    regs: vcpu.getRegs().bytes,
    sregs: vcpu.getSregs().bytes,
    xsave: vcpu.getXsave(xsaveSize),
    xcrs: vcpu.getXcrs(),
    lapic: vcpu.getLapic(),
    events: vcpu.getVcpuEvents(),
    debugRegs: vcpu.getDebugRegs(),
    mpState: vcpu.getMpState(),
    msrs,
  };
}

/**
 * Restore in the order QEMU uses (the TSC deadline only after the LAPIC it arms). `tscAdvanceNs`
 * moves the guest TSC forward by that much wall time (a live migration's downtime), at the rate the
 * timing leaf announced, as KVM's documented TSC migration procedure does.
 */
export function restoreVcpuState(vcpu: VcpuFd, st: VcpuState, tscAdvanceNs: number): void {
  const regs = vcpu.getRegs();
  regs.bytes.set(st.regs);
  vcpu.setRegs(regs);
  vcpu.setXsave(st.xsave);
  vcpu.setXcrs(st.xcrs);
  const sregs = vcpu.getSregs();
  sregs.bytes.set(st.sregs);
  vcpu.setSregs(sregs);
  const msrs = st.msrs.map(([i, v]) => [i, BigInt(v)] as [number, bigint]);
  if (tscAdvanceNs > 0) {
    const khz = BigInt(vcpu.getTscKhz());
    for (const m of msrs) if (m[0] === Msr.IA32_TSC) m[1] += (BigInt(Math.round(tscAdvanceNs)) * khz) / 1_000_000n;
  }
  vcpu.setMsrs(msrs.filter(([i]) => i !== Msr.IA32_TSC_DEADLINE));
  vcpu.setMpState(st.mpState);
  vcpu.setLapic(st.lapic);
  const deadline = msrs.filter(([i]) => i === Msr.IA32_TSC_DEADLINE);
  if (deadline.length > 0) vcpu.setMsrs(deadline);
  vcpu.setVcpuEvents(st.events);
  vcpu.setDebugRegs(st.debugRegs);
}
