/**
 * /dev/kvm: opening it, checking what kiln needs, and the system-wide queries (supported CPUID, MSR lists).
 * Thin wrapper in the style of rust-vmm's kvm-ioctls `Kvm`.
 */
import { KVM_API_VERSION, KVM_CPUID_ENTRY_SIZE, KvmCap, KvmCpuid2, KvmCpuidEntry2, Ioctl } from "../../ffi/kvm-abi.ts";
import { E2BIG } from "../../ffi/errno.ts";
import { close, ioctlInt, ioctlRaw, open, errno, O_RDWR, SysError } from "../../ffi/libc.ts";
import { Vm } from "./vm.ts";

export class KvmUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KvmUnavailableError";
  }
}

/** Capabilities without which kiln cannot run a VM, with what each is for. */
const REQUIRED_CAPS: [keyof typeof KvmCap, string][] = [
  ["USER_MEMORY", "guest memory"],
  ["IRQCHIP", "the in-kernel interrupt controllers"],
  ["PIT2", "the in-kernel PIT"],
  ["SET_TSS_ADDR", "x86 boot"],
  ["EXT_CPUID", "CPUID setup"],
  ["IMMEDIATE_EXIT", "pausing vCPUs"],
  ["MP_STATE", "SMP and vCPU state"],
  ["VCPU_EVENTS", "vCPU state save/restore"],
  ["XSAVE", "FPU state save/restore"],
  ["XCRS", "FPU state save/restore"],
  ["DEBUGREGS", "vCPU state save/restore"],
  ["IRQ_ROUTING", "interrupt routing"],
  ["IRQFD", "device interrupts"],
  ["IOEVENTFD", "device notifications"],
  ["ADJUST_CLOCK", "kvmclock save/restore"],
];

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export class Kvm {
  private constructor(readonly fd: number) {}

  /** Open /dev/kvm and check the API version and the capabilities kiln depends on. */
  static open(path = "/dev/kvm"): Kvm {
    let fd: number;
    try {
      fd = open(path, O_RDWR);
    } catch (e) {
      if (e instanceof SysError && e.errnoName === "ENOENT") {
        throw new KvmUnavailableError(
          `${path} does not exist: this host does not expose KVM (load kvm_intel or kvm_amd, enable virtualization in the firmware, or run on a host with nested virtualization)`,
        );
      }
      if (e instanceof SysError && e.errnoName === "EACCES") {
        throw new KvmUnavailableError(`permission denied opening ${path}: run as root or add your user to the 'kvm' group`);
      }
      throw new KvmUnavailableError(`cannot open ${path}: ${(e as Error).message}`);
    }
    const kvm = new Kvm(fd);
    const version = ioctlInt(fd, Ioctl.GET_API_VERSION, 0, "ioctl(KVM_GET_API_VERSION)");
    if (version !== KVM_API_VERSION) {
      close(fd);
      throw new KvmUnavailableError(`${path} speaks KVM API version ${version}; kiln needs ${KVM_API_VERSION}`);
    }
    const missing = REQUIRED_CAPS.filter(([cap]) => kvm.checkExtension(KvmCap[cap]) <= 0);
    if (missing.length > 0) {
      close(fd);
      throw new KvmUnavailableError(
        `KVM on this host lacks ${missing.map(([c, why]) => `KVM_CAP_${c} (${why})`).join(", ")}`,
      );
    }
    return kvm;
  }

  checkExtension(cap: number): number {
    return ioctlInt(this.fd, Ioctl.CHECK_EXTENSION, cap, "ioctl(KVM_CHECK_EXTENSION)");
  }

  vcpuMmapSize(): number {
    return ioctlInt(this.fd, Ioctl.GET_VCPU_MMAP_SIZE, 0, "ioctl(KVM_GET_VCPU_MMAP_SIZE)");
  }

  /** KVM_GET_SUPPORTED_CPUID, growing the buffer while KVM answers E2BIG. */
  supportedCpuid(): CpuidEntry[] {
    for (let n = 64; n <= 4096; n *= 2) {
      const buf = new Uint8Array(KvmCpuid2.size + n * KVM_CPUID_ENTRY_SIZE);
      KvmCpuid2.wrap(buf).set("nent", n);
      const r = ioctlRaw(this.fd, Ioctl.GET_SUPPORTED_CPUID, buf);
      if (r < 0) {
        const e = errno();
        if (e === E2BIG) continue;
        throw new SysError("ioctl(KVM_GET_SUPPORTED_CPUID)", e);
      }
      const nent = KvmCpuid2.wrap(buf).get("nent");
      const out: CpuidEntry[] = [];
      for (let i = 0; i < nent; i++) {
        const e = KvmCpuidEntry2.wrap(buf, KvmCpuid2.size + i * KVM_CPUID_ENTRY_SIZE);
        out.push({
          function: e.get("function"),
          index: e.get("index"),
          flags: e.get("flags"),
          eax: e.get("eax"),
          ebx: e.get("ebx"),
          ecx: e.get("ecx"),
          edx: e.get("edx"),
        });
      }
      return out;
    }
    throw new KvmUnavailableError("KVM_GET_SUPPORTED_CPUID returned more than 4096 entries");
  }

  /** KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save and restore for a vCPU. */
  msrIndexList(): number[] {
    for (let n = 256; n <= 16384; n *= 2) {
      const buf = new Uint8Array(4 + n * 4);
      const dv = new DataView(buf.buffer);
      dv.setUint32(0, n, true);
      const r = ioctlRaw(this.fd, Ioctl.GET_MSR_INDEX_LIST, buf);
      if (r < 0) {
        const e = errno();
        if (e === E2BIG) continue;
        throw new SysError("ioctl(KVM_GET_MSR_INDEX_LIST)", e);
      }
      const count = dv.getUint32(0, true);
      const out: number[] = [];
      for (let i = 0; i < count; i++) out.push(dv.getUint32(4 + i * 4, true));
      return out;
    }
    throw new KvmUnavailableError("KVM_GET_MSR_INDEX_LIST returned more than 16384 entries");
  }

  createVm(): Vm {
    const fd = ioctlInt(this.fd, Ioctl.CREATE_VM, 0, "ioctl(KVM_CREATE_VM)");
    return new Vm(fd);
  }

  close(): void {
    close(this.fd);
  }
}
