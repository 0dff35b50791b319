/**
 * A KVM VM file descriptor: memory slots, the in-kernel irqchip and PIT, interrupt lines and routing,
 * ioeventfd/irqfd, dirty logging and kvmclock. Used from the main thread only; vCPUs are created by
 * their own Worker threads from `fd` (see src/vmm/vcpu-worker.ts).
 */
import {
  Ioctl,
  KVM_IRQ_ROUTING_ENTRY_SIZE,
  KVM_IRQ_ROUTING_IRQCHIP,
  KVM_IRQ_ROUTING_MSI,
  KVM_IRQCHIP_SIZE,
  KVM_PIT_SPEAKER_DUMMY,
  KVM_PIT_STATE2_SIZE,
  KvmClearDirtyLog,
  KvmClockData,
  KvmDirtyLog,
  KvmEnableCap,
  KvmIoeventfd,
  KvmIrqchip,
  KvmIrqfd,
  KvmIrqLevel,
  KvmIrqRouting,
  KvmIrqRoutingEntry,
  KvmMsi,
  KvmPitConfig,
  KvmUserspaceMemoryRegion,
  KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_DEASSIGN,
  KVM_IOEVENTFD_FLAG_PIO,
  KVM_IRQFD_FLAG_DEASSIGN,
} from "../../ffi/kvm-abi.ts";
import { close, ioctl, ioctlInt, ptr } from "../../ffi/libc.ts";

export type IrqRoute =
  | { gsi: number; kind: "irqchip"; chip: number; pin: number }
  | { gsi: number; kind: "msi"; addressLo: number; addressHi: number; data: number };

export interface ClockState {
  clock: bigint;
  flags: number;
  realtime: bigint;
  hostTsc: bigint;
}

export class Vm {
  constructor(readonly fd: number) {}

  setTssAddr(addr: number): void {
    ioctlInt(this.fd, Ioctl.SET_TSS_ADDR, addr, "ioctl(KVM_SET_TSS_ADDR)");
  }

  setIdentityMapAddr(addr: number): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(addr), true);
    ioctl(this.fd, Ioctl.SET_IDENTITY_MAP_ADDR, b, "ioctl(KVM_SET_IDENTITY_MAP_ADDR)");
  }

  createIrqchip(): void {
    ioctlInt(this.fd, Ioctl.CREATE_IRQCHIP, 0, "ioctl(KVM_CREATE_IRQCHIP)");
  }

  /** The in-kernel PIT; the dummy speaker makes KVM answer port 0x61 too. */
  createPit2(): void {
    const cfg = KvmPitConfig.alloc().set("flags", KVM_PIT_SPEAKER_DUMMY);
    ioctl(this.fd, Ioctl.CREATE_PIT2, cfg.bytes, "ioctl(KVM_CREATE_PIT2)");
  }

  setUserMemoryRegion(slot: number, flags: number, gpa: number, size: number, hostAddr: number): void {
    const r = KvmUserspaceMemoryRegion.alloc()
      .set("slot", slot)
      .set("flags", flags)
      .set("guest_phys_addr", gpa)
      .set("memory_size", size)
      .set("userspace_addr", hostAddr);
    ioctl(this.fd, Ioctl.SET_USER_MEMORY_REGION, r.bytes, "ioctl(KVM_SET_USER_MEMORY_REGION)");
  }

  /** Fetch (and, without manual protect, clear) the slot's dirty bitmap into `bitmap` (one bit per page). */
  getDirtyLog(slot: number, bitmap: BigUint64Array): void {
    const d = KvmDirtyLog.alloc().set("slot", slot).set("dirty_bitmap", ptr(bitmap));
    ioctl(this.fd, Ioctl.GET_DIRTY_LOG, d.bytes, "ioctl(KVM_GET_DIRTY_LOG)");
  }

  /** With manual protect: re-arm write protection for the pages set in `bitmap` (first_page and count multiples of 64). */
  clearDirtyLog(slot: number, firstPage: number, numPages: number, bitmap: BigUint64Array): void {
    const d = KvmClearDirtyLog.alloc()
      .set("slot", slot)
      .set("first_page", firstPage)
      .set("num_pages", numPages)
      .set("dirty_bitmap", ptr(bitmap));
    ioctl(this.fd, Ioctl.CLEAR_DIRTY_LOG, d.bytes, "ioctl(KVM_CLEAR_DIRTY_LOG)");
  }

  enableCap(cap: number, arg0 = 0): void {
    const c = KvmEnableCap.alloc().set("cap", cap).set("args0", arg0);
    ioctl(this.fd, Ioctl.ENABLE_CAP, c.bytes, "ioctl(KVM_ENABLE_CAP)");
  }

  private readonly irqLevelBuf = KvmIrqLevel.alloc();
  /** Drive a GSI of the in-kernel irqchip; edge-triggered inputs see the 0→1 transitions. */
  irqLine(gsi: number, level: boolean): void {
    this.irqLevelBuf.set("irq", gsi).set("level", level ? 1 : 0);
    ioctl(this.fd, Ioctl.IRQ_LINE, this.irqLevelBuf.bytes, "ioctl(KVM_IRQ_LINE)");
  }

  /** Replace the whole GSI routing table. */
  setGsiRouting(routes: IrqRoute[]): void {
    const buf = new Uint8Array(KvmIrqRouting.size + routes.length * KVM_IRQ_ROUTING_ENTRY_SIZE);
    KvmIrqRouting.wrap(buf).set("nr", routes.length);
    routes.forEach((r, i) => {
      const e = KvmIrqRoutingEntry.wrap(buf, KvmIrqRouting.size + i * KVM_IRQ_ROUTING_ENTRY_SIZE);
      e.set("gsi", r.gsi);
      if (r.kind === "irqchip") {
        e.set("type", KVM_IRQ_ROUTING_IRQCHIP).set("irqchip", r.chip).set("pin", r.pin);
      } else {
        e.set("type", KVM_IRQ_ROUTING_MSI).set("address_lo", r.addressLo).set("address_hi", r.addressHi).set("data", r.data);
      }
    });
    ioctl(this.fd, Ioctl.SET_GSI_ROUTING, buf, "ioctl(KVM_SET_GSI_ROUTING)");
  }

  signalMsi(addressLo: number, addressHi: number, data: number): number {
    const m = KvmMsi.alloc().set("address_lo", addressLo).set("address_hi", addressHi).set("data", data);
    return ioctl(this.fd, Ioctl.SIGNAL_MSI, m.bytes, "ioctl(KVM_SIGNAL_MSI)");
  }

  irqfd(eventFd: number, gsi: number, deassign = false): void {
    const f = KvmIrqfd.alloc()
      .set("fd", eventFd)
      .set("gsi", gsi)
      .set("flags", deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0);
    ioctl(this.fd, Ioctl.IRQFD, f.bytes, "ioctl(KVM_IRQFD)");
  }

  ioeventfd(eventFd: number, addr: number, len: number, opts: { pio?: boolean; datamatch?: number; deassign?: boolean } = {}): void {
    let flags = 0;
    if (opts.pio) flags |= KVM_IOEVENTFD_FLAG_PIO;
    if (opts.datamatch !== undefined) flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    if (opts.deassign) flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
    const e = KvmIoeventfd.alloc()
      .set("datamatch", opts.datamatch ?? 0)
      .set("addr", addr)
      .set("len", len)
      .set("fd", eventFd)
      .set("flags", flags);
    ioctl(this.fd, Ioctl.IOEVENTFD, e.bytes, "ioctl(KVM_IOEVENTFD)");
  }

  getClock(): ClockState {
    const c = KvmClockData.alloc();
    ioctl(this.fd, Ioctl.GET_CLOCK, c.bytes, "ioctl(KVM_GET_CLOCK)");
    return { clock: c.getBig("clock"), flags: c.get("flags"), realtime: c.getBig("realtime"), hostTsc: c.getBig("host_tsc") };
  }

  setClock(clock: bigint, flags = 0, realtime = 0n): void {
    const c = KvmClockData.alloc().set("clock", clock).set("flags", flags).set("realtime", realtime);
    ioctl(this.fd, Ioctl.SET_CLOCK, c.bytes, "ioctl(KVM_SET_CLOCK)");
  }

  /** Raw kvm_irqchip for chip 0 (PIC master), 1 (PIC slave) or 2 (IOAPIC). */
  getIrqchip(chip: number): Uint8Array {
    const c = KvmIrqchip.alloc().set("chip_id", chip);
    ioctl(this.fd, Ioctl.GET_IRQCHIP, c.bytes, "ioctl(KVM_GET_IRQCHIP)");
    return c.bytes;
  }

  setIrqchip(raw: Uint8Array): void {
    if (raw.byteLength !== KVM_IRQCHIP_SIZE) throw new RangeError(`kvm_irqchip must be ${KVM_IRQCHIP_SIZE} bytes`);
    ioctl(this.fd, Ioctl.SET_IRQCHIP, raw, "ioctl(KVM_SET_IRQCHIP)");
  }

  getPit2(): Uint8Array {
    const b = new Uint8Array(KVM_PIT_STATE2_SIZE);
    ioctl(this.fd, Ioctl.GET_PIT2, b, "ioctl(KVM_GET_PIT2)");
    return b;
  }

  setPit2(raw: Uint8Array): void {
    if (raw.byteLength !== KVM_PIT_STATE2_SIZE) throw new RangeError(`kvm_pit_state2 must be ${KVM_PIT_STATE2_SIZE} bytes`);
    ioctl(this.fd, Ioctl.SET_PIT2, raw, "ioctl(KVM_SET_PIT2)");
  }

  close(): void {
    close(this.fd);
  }
}
