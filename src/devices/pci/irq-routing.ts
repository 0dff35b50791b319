/**
 * The KVM side of device interrupts and doorbells: which VM calls kiln's devices make (so tests can
 * stand in for KVM), and the GSI routing table shared by the machine's ISA routes and every MSI vector.
 *
 * KVM_SET_GSI_ROUTING replaces the whole table, so one owner keeps it: the machine's default routes
 * (ISA IRQs to the PICs and IOAPIC) plus one MSI route per unmasked MSI-X vector, each on a GSI above
 * the IOAPIC's pins. MSI vectors are bound to their GSI with an irqfd once; only routes change later.
 */
import type { IrqRoute } from "../../kvm/vm.ts";

/** The subset of Vm (src/kvm/vm.ts) that device models use. */
export interface VmLink {
  ioeventfd(eventFd: number, addr: number, len: number, opts?: { pio?: boolean; datamatch?: number; deassign?: boolean }): void;
  irqfd(eventFd: number, gsi: number, deassign?: boolean): void;
  irqLine(gsi: number, level: boolean): void;
  setGsiRouting(routes: IrqRoute[]): void;
}

/** First GSI for MSI routes: KVM's IOAPIC has 24 pins (GSIs 0..23). */
export const MSI_GSI_BASE = 24;
/** KVM_MAX_IRQ_ROUTES. */
export const MAX_GSI = 4096;

export class IrqRoutingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "IrqRoutingError";
  }
}

export class GsiRouter {
  private vm: VmLink | undefined;
  private base: IrqRoute[] = [];
  private readonly msi = new Map<number, { addressLo: number; addressHi: number; data: number }>();
  private nextGsi = MSI_GSI_BASE;

  /** A GSI for one MSI vector, for the machine's lifetime. */
  allocate(): number {
    if (this.nextGsi >= MAX_GSI) throw new IrqRoutingError(`out of interrupt routes (KVM allows ${MAX_GSI})`);
    return this.nextGsi++;
  }

  /** A new KVM VM (first build or a reboot): install default routes plus every current MSI route. */
  attachVm(vm: VmLink, defaultRoutes: IrqRoute[]): void {
    this.vm = vm;
    this.base = defaultRoutes;
    this.commit();
  }

  /** The VM was closed (a machine reset): keep the table, install it on the next attachVm(). */
  detachVm(): void {
    this.vm = undefined;
  }

  /** Route `gsi` to an MSI message; no ioctl when nothing changed. */
  setMsi(gsi: number, addressLo: number, addressHi: number, data: number): void {
    const cur = this.msi.get(gsi);
    if (cur && cur.addressLo === addressLo && cur.addressHi === addressHi && cur.data === data) return;
    this.msi.set(gsi, { addressLo, addressHi, data });
    this.commit();
  }

  clearMsi(gsi: number): void {
    if (this.msi.delete(gsi)) this.commit();
  }

  routes(): IrqRoute[] {
    const r: IrqRoute[] = [...this.base];
    for (const [gsi, m] of this.msi) r.push({ gsi, kind: "msi", ...m });
    return r;
  }

  private commit(): void {
    this.vm?.setGsiRouting(this.routes());
  }
}
