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

/**
 * The binary form of a vCPU's state in a migration stream (section `cpu/N`, version 2), little-endian:
 *   u32 id | u32 mpState | for each blob in BLOB_ORDER: u32 length, bytes | u32 msrCount |
 *   msrCount × { u32 index, u32 0, u64 value }
 * Decoding is slicing: it runs inside the switchover, where parsing JSON cost ~0.5 ms per vCPU here.
 */
const BLOB_ORDER = ["regs", "sregs", "xsave", "xcrs", "lapic", "events", "debugRegs"] as const;
const MSR_ENTRY = 16;

export function encodeVcpuState(st: VcpuState): Uint8Array {
  const blobs = BLOB_ORDER.map((k) => st[k]);
  const size = 8 + blobs.reduce((n, b) => n + 4 + b.byteLength, 0) + 4 + st.msrs.length * MSR_ENTRY;
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, st.id, true);
  dv.setUint32(4, st.mpState, true);
  let o = 8;
  for (const b of blobs) {
    dv.setUint32(o, b.byteLength, true);
    out.set(b, o + 4);
    o += 4 + b.byteLength;
  }
  dv.setUint32(o, st.msrs.length, true);
  o += 4;
  for (const [index, value] of st.msrs) {
    dv.setUint32(o, index, true);
    dv.setBigUint64(o + 8, BigInt(value), true);
    o += MSR_ENTRY;
  }
  return out;
}

/** Parse the binary form; throws a message naming what is malformed (sizes are checked by the caller). */
export function decodeVcpuState(b: Uint8Array): VcpuState {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const need = (o: number, n: number, what: string) => {
    if (o + n > b.byteLength) throw new Error(`truncated at ${what}`);
  };
  need(0, 8, "the header");
  const st: Partial<Record<(typeof BLOB_ORDER)[number], Uint8Array>> = {};
  let o = 8;
  for (const k of BLOB_ORDER) {
    need(o, 4, k);
    const len = dv.getUint32(o, true);
    need(o + 4, len, k);
    st[k] = b.slice(o + 4, o + 4 + len);
    o += 4 + len;
  }
  need(o, 4, "the MSR count");
  const count = dv.getUint32(o, true);
  o += 4;
  if (o + count * MSR_ENTRY !== b.byteLength) throw new Error(`${count} MSRs do not fill the rest of the section`);
  const msrs: [number, string][] = [];
  for (let i = 0; i < count; i++, o += MSR_ENTRY) msrs.push([dv.getUint32(o, true), dv.getBigUint64(o + 8, true).toString()]);
  return { id: dv.getUint32(0, true), mpState: dv.getUint32(4, true), ...(st as Record<(typeof BLOB_ORDER)[number], Uint8Array>), msrs };
}
