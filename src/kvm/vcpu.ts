/**
 * A KVM vCPU file descriptor and its shared kvm_run page. The KVM API asks that vCPU ioctls come from
 * the thread that created the vCPU, so a Vcpu lives inside its own Worker (src/vmm/vcpu-worker.ts).
 */
import {
  Ioctl,
  KVM_CPUID_ENTRY_SIZE,
  KVM_DEBUGREGS_SIZE,
  KVM_LAPIC_STATE_SIZE,
  KVM_MSR_ENTRY_SIZE,
  KVM_VCPU_EVENTS_SIZE,
  KVM_VCPU_TSC_CTRL,
  KVM_VCPU_TSC_OFFSET,
  KVM_XCRS_SIZE,
  KvmCpuid2,
  KvmCpuidEntry2,
  KvmDeviceAttr,
  KvmFpu,
  KvmMpState,
  KvmMsrs,
  KvmRegs,
  KvmRun,
  KvmSegment,
  KvmSregs,
  SREGS_SEGMENT_OFFSETS,
} from "../../ffi/kvm-abi.ts";
import { close, errno, ioctl, ioctlInt, ioctlRaw, mmap, munmap, MAP_SHARED, PROT_READ, PROT_WRITE, ptr, toArrayBuffer, SysError } from "../../ffi/libc.ts";
import type { StructBuf } from "../../ffi/struct.ts";
import type { CpuidEntry } from "./kvm.ts";

export type SegmentName = keyof typeof SREGS_SEGMENT_OFFSETS;

/** A segment register as plain data (mirrors struct kvm_segment). */
export interface Segment {
  base: number;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export function readSegment(sregs: StructBuf<typeof KvmSregs.fields>, name: SegmentName): Segment {
  const s = sregs.sub(KvmSegment, SREGS_SEGMENT_OFFSETS[name]);
  return {
    base: s.get("base"),
    limit: s.get("limit"),
    selector: s.get("selector"),
    type: s.get("type"),
    present: s.get("present"),
    dpl: s.get("dpl"),
    db: s.get("db"),
    s: s.get("s"),
    l: s.get("l"),
    g: s.get("g"),
    avl: s.get("avl"),
    unusable: s.get("unusable"),
  };
}

export function writeSegment(sregs: StructBuf<typeof KvmSregs.fields>, name: SegmentName, seg: Segment): void {
  const s = sregs.sub(KvmSegment, SREGS_SEGMENT_OFFSETS[name]);
  for (const k of Object.keys(seg) as (keyof Segment)[]) s.set(k, seg[k]);
}

/**
 * A vCPU file descriptor's state ioctls (registers, MSRs, LAPIC, ...). Any thread may use them; the
 * KVM API only warns that the first ioctl after a thread switch is slower. A migration destination's
 * receiver uses this to load vCPU state without a hop through the vCPU's own Worker.
 */
export class VcpuFd {
  constructor(
    readonly fd: number,
    readonly id: number,
  ) {}

  getRegs(): StructBuf<typeof KvmRegs.fields> {
    const r = KvmRegs.alloc();
    ioctl(this.fd, Ioctl.GET_REGS, r.bytes, "ioctl(KVM_GET_REGS)");
    return r;
  }

  setRegs(r: StructBuf<typeof KvmRegs.fields>): void {
    ioctl(this.fd, Ioctl.SET_REGS, r.bytes, "ioctl(KVM_SET_REGS)");
  }

  getSregs(): StructBuf<typeof KvmSregs.fields> {
    const s = KvmSregs.alloc();
    ioctl(this.fd, Ioctl.GET_SREGS, s.bytes, "ioctl(KVM_GET_SREGS)");
    return s;
  }

  setSregs(s: StructBuf<typeof KvmSregs.fields>): void {
    ioctl(this.fd, Ioctl.SET_SREGS, s.bytes, "ioctl(KVM_SET_SREGS)");
  }

  getFpu(): StructBuf<typeof KvmFpu.fields> {
    const f = KvmFpu.alloc();
    ioctl(this.fd, Ioctl.GET_FPU, f.bytes, "ioctl(KVM_GET_FPU)");
    return f;
  }

  setFpu(f: StructBuf<typeof KvmFpu.fields>): void {
    ioctl(this.fd, Ioctl.SET_FPU, f.bytes, "ioctl(KVM_SET_FPU)");
  }

  setCpuid(entries: CpuidEntry[]): void {
    const buf = new Uint8Array(KvmCpuid2.size + entries.length * KVM_CPUID_ENTRY_SIZE);
    KvmCpuid2.wrap(buf).set("nent", entries.length);
    entries.forEach((e, i) => {
      const w = KvmCpuidEntry2.wrap(buf, KvmCpuid2.size + i * KVM_CPUID_ENTRY_SIZE);
      w.set("function", e.function).set("index", e.index).set("flags", e.flags);
      w.set("eax", e.eax).set("ebx", e.ebx).set("ecx", e.ecx).set("edx", e.edx);
    });
    ioctl(this.fd, Ioctl.SET_CPUID2, buf, "ioctl(KVM_SET_CPUID2)");
  }

  /** Read MSRs; returns as many values as KVM could read, in order (KVM stops at the first it can't). */
  getMsrs(indices: number[]): bigint[] {
    const buf = new Uint8Array(KvmMsrs.size + indices.length * KVM_MSR_ENTRY_SIZE);
    const dv = new DataView(buf.buffer);
    dv.setUint32(0, indices.length, true);
    indices.forEach((idx, i) => dv.setUint32(KvmMsrs.size + i * KVM_MSR_ENTRY_SIZE, idx, true));
    const n = ioctl(this.fd, Ioctl.GET_MSRS, buf, "ioctl(KVM_GET_MSRS)");
    const out: bigint[] = [];
    for (let i = 0; i < n; i++) out.push(dv.getBigUint64(KvmMsrs.size + i * KVM_MSR_ENTRY_SIZE + 8, true));
    return out;
  }

  /** Write MSRs; throws naming the first MSR KVM refused. */
  setMsrs(msrs: [number, bigint][]): void {
    const buf = new Uint8Array(KvmMsrs.size + msrs.length * KVM_MSR_ENTRY_SIZE);
    const dv = new DataView(buf.buffer);
    dv.setUint32(0, msrs.length, true);
    msrs.forEach(([idx, val], i) => {
      dv.setUint32(KvmMsrs.size + i * KVM_MSR_ENTRY_SIZE, idx, true);
      dv.setBigUint64(KvmMsrs.size + i * KVM_MSR_ENTRY_SIZE + 8, BigInt.asUintN(64, val), true);
    });
    const n = ioctl(this.fd, Ioctl.SET_MSRS, buf, "ioctl(KVM_SET_MSRS)");
    if (n !== msrs.length) {
      throw new Error(`KVM refused MSR 0x${msrs[n]![0].toString(16)} (value 0x${msrs[n]![1].toString(16)})`);
    }
  }

  private getRaw(req: number, size: number, name: string): Uint8Array {
    const b = new Uint8Array(size);
    ioctl(this.fd, req, b, name);
    return b;
  }

  private setRaw(req: number, b: Uint8Array, size: number, name: string): void {
    if (b.byteLength !== size) throw new RangeError(`${name}: expected ${size} bytes, got ${b.byteLength}`);
    ioctl(this.fd, req, b, name);
  }

  getLapic(): Uint8Array {
    return this.getRaw(Ioctl.GET_LAPIC, KVM_LAPIC_STATE_SIZE, "ioctl(KVM_GET_LAPIC)");
  }
  setLapic(b: Uint8Array): void {
    this.setRaw(Ioctl.SET_LAPIC, b, KVM_LAPIC_STATE_SIZE, "ioctl(KVM_SET_LAPIC)");
  }
  getVcpuEvents(): Uint8Array {
    return this.getRaw(Ioctl.GET_VCPU_EVENTS, KVM_VCPU_EVENTS_SIZE, "ioctl(KVM_GET_VCPU_EVENTS)");
  }
  setVcpuEvents(b: Uint8Array): void {
    this.setRaw(Ioctl.SET_VCPU_EVENTS, b, KVM_VCPU_EVENTS_SIZE, "ioctl(KVM_SET_VCPU_EVENTS)");
  }
  getDebugRegs(): Uint8Array {
    return this.getRaw(Ioctl.GET_DEBUGREGS, KVM_DEBUGREGS_SIZE, "ioctl(KVM_GET_DEBUGREGS)");
  }
  setDebugRegs(b: Uint8Array): void {
    this.setRaw(Ioctl.SET_DEBUGREGS, b, KVM_DEBUGREGS_SIZE, "ioctl(KVM_SET_DEBUGREGS)");
  }
  getXcrs(): Uint8Array {
    return this.getRaw(Ioctl.GET_XCRS, KVM_XCRS_SIZE, "ioctl(KVM_GET_XCRS)");
  }
  setXcrs(b: Uint8Array): void {
    this.setRaw(Ioctl.SET_XCRS, b, KVM_XCRS_SIZE, "ioctl(KVM_SET_XCRS)");
  }
  /** XSAVE area of `size` bytes (KVM_CAP_XSAVE2 tells the size; 4096 without AMX). */
  getXsave(size: number): Uint8Array {
    return this.getRaw(size > 4096 ? Ioctl.GET_XSAVE2 : Ioctl.GET_XSAVE, size, "ioctl(KVM_GET_XSAVE)");
  }
  setXsave(b: Uint8Array): void {
    ioctl(this.fd, Ioctl.SET_XSAVE, b, "ioctl(KVM_SET_XSAVE)");
  }

  getMpState(): number {
    const m = KvmMpState.alloc();
    ioctl(this.fd, Ioctl.GET_MP_STATE, m.bytes, "ioctl(KVM_GET_MP_STATE)");
    return m.get("mp_state");
  }
  setMpState(state: number): void {
    ioctl(this.fd, Ioctl.SET_MP_STATE, KvmMpState.alloc().set("mp_state", state).bytes, "ioctl(KVM_SET_MP_STATE)");
  }

  getTscKhz(): number {
    return ioctlInt(this.fd, Ioctl.GET_TSC_KHZ, 0, "ioctl(KVM_GET_TSC_KHZ)");
  }

  /** The guest TSC offset (KVM_VCPU_TSC_OFFSET attribute), or null where KVM lacks it. */
  getTscOffset(): bigint | null {
    const val = new BigInt64Array(1);
    const a = KvmDeviceAttr.alloc().set("group", KVM_VCPU_TSC_CTRL).set("attr", KVM_VCPU_TSC_OFFSET).set("addr", ptr(val));
    try {
      ioctl(this.fd, Ioctl.GET_DEVICE_ATTR, a.bytes, "ioctl(KVM_GET_DEVICE_ATTR tsc offset)");
    } catch (e) {
      if (e instanceof SysError) return null;
      throw e;
    }
    return val[0]!;
  }

  setTscOffset(offset: bigint): void {
    const val = new BigInt64Array([offset]);
    const a = KvmDeviceAttr.alloc().set("group", KVM_VCPU_TSC_CTRL).set("attr", KVM_VCPU_TSC_OFFSET).set("addr", ptr(val));
    ioctl(this.fd, Ioctl.SET_DEVICE_ATTR, a.bytes, "ioctl(KVM_SET_DEVICE_ATTR tsc offset)");
  }
}

/** The vCPU as its own thread runs it: the state ioctls plus the kvm_run page and KVM_RUN. */
export class Vcpu extends VcpuFd {
  /** The kvm_run page as bytes; exit data is read from here after KVM_RUN returns. */
  readonly run: Uint8Array;
  readonly runView: DataView;
  readonly runAddr: number;

  private constructor(fd: number, id: number, runAddr: number, runSize: number) {
    super(fd, id);
    this.runAddr = runAddr;
    this.run = new Uint8Array(toArrayBuffer(runAddr as never, 0, runSize));
    this.runView = new DataView(this.run.buffer, this.run.byteOffset, this.run.byteLength);
  }

  static create(vmFd: number, id: number, runSize: number): Vcpu {
    const fd = ioctlInt(vmFd, Ioctl.CREATE_VCPU, id, `ioctl(KVM_CREATE_VCPU ${id})`);
    const addr = mmap(runSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0, "mmap(kvm_run)");
    return new Vcpu(fd, id, addr, runSize);
  }

  /** Unmap kvm_run and close the fd. The Vcpu must not be used afterwards. */
  close(): void {
    munmap(this.runAddr, this.run.byteLength);
    close(this.fd);
  }

  /** KVM_RUN; returns 0 or -errno (EINTR is normal: a kick or one of JSC's own signals). */
  runOnce(): number {
    const r = ioctlRaw(this.fd, Ioctl.RUN, null);
    return r < 0 ? -errno() : r;
  }

  get exitReason(): number {
    return this.runView.getUint32(KvmRun.fields.exit_reason.offset, true);
  }
}
