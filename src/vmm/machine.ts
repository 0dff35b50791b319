/**
 * A kiln machine (microvm or q35): KVM VM, guest RAM, in-kernel irqchip and PIT, legacy devices, the
 * loaded kernel, ACPI tables and one Worker per vCPU. It owns the run state and turns guest requests
 * (power off, reset, crash) into a single `stopped` outcome for whoever runs it (the CLI, QMP).
 */
import { Kvm } from "../kvm/kvm.ts";
import type { Vm, IrqRoute } from "../kvm/vm.ts";
import type { CpuidEntry } from "../kvm/kvm.ts";
import { KvmCap, KVM_MEM_LOG_DIRTY_PAGES, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE } from "../../ffi/kvm-abi.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import * as L from "../arch/x86_64/layout.ts";
import { vcpuCpuid, type CpuTopology } from "../arch/x86_64/cpuid.ts";
import { bootMsrs, type BootCpuState } from "../arch/x86_64/regs.ts";
import { loadKernel, initialCpuState } from "../arch/x86_64/boot/index.ts";
import { buildAcpiTables } from "../arch/x86_64/acpi/index.ts";
import { Buses } from "../devices/buses.ts";
import type { IrqLine } from "../devices/bus.ts";
import { Serial16550 } from "../devices/legacy/serial.ts";
import { I8042, I8042_PORT_SPAN } from "../devices/legacy/i8042.ts";
import { CmosRtc } from "../devices/legacy/rtc.ts";
import { AcpiPm } from "../devices/legacy/acpi-pm.ts";
import { ResetControl } from "../devices/legacy/reset-control.ts";
import { PostPort } from "../devices/legacy/post.ts";
import { PciConfigPorts, PciRoot, SimpleConfigSpace, Q35_HOST_BRIDGE } from "../devices/pci/host.ts";
import { VcpuThread, type StoppedMessage } from "./vcpu-thread.ts";
import type { VcpuState } from "./vcpu-protocol.ts";
import { ExitServer } from "./exit-server.ts";
import { installNoopSignalHandler } from "../../ffi/libc.ts";
import type { Persistent } from "../persist/persist.ts";
import type { DeviceConfig, DriveConfig, NetdevConfig } from "../cli/config.ts";
import { VirtioDevices } from "./virtio-devices.ts";

export type MachineType = "microvm" | "q35";

export interface MachineConfig {
  machine: MachineType;
  memSize: number;
  topology: CpuTopology;
  kernel: string;
  cmdline: string;
  initrd?: string;
  /** false: keep guest RAM out of kiln's core dumps (MADV_DONTDUMP), -machine dump-guest-core=off. */
  dumpGuestCore?: boolean;
  /** -device / -drive / -netdev as parsed (virtio devices; see virtio-devices.ts). */
  devices?: DeviceConfig[];
  drives?: DriveConfig[];
  netdevs?: NetdevConfig[];
}

export interface MachineHooks {
  /** Bytes the guest wrote to COM1. */
  serialOutput(bytes: Uint8Array): void;
  /** Diagnostics worth a line in the log. */
  log(level: "debug" | "info" | "warn", msg: string): void;
}

/** Why the guest stopped running for good. */
export type StopEvent =
  | { kind: "poweroff"; detail: string }
  | { kind: "reset"; detail: string }
  | { kind: "crash"; detail: string; dump: string };

/** QEMU's run states, as query-status reports them. */
export type RunState = "prelaunch" | "running" | "paused" | "shutdown" | "internal-error" | "inmigrate" | "postmigrate" | "finish-migrate";

export class MachineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MachineError";
  }
}

/** GSI routing as QEMU sets it up for a PC: ISA IRQs to both PICs and the IOAPIC, the PIT (IRQ 0) on IOAPIC pin 2. */
function defaultRoutes(): IrqRoute[] {
  const routes: IrqRoute[] = [];
  for (let i = 0; i < 16; i++) {
    if (i === 2) continue; // the cascade
    routes.push({ gsi: i, kind: "irqchip", chip: i < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, pin: i % 8 });
  }
  for (let i = 0; i < 24; i++) {
    if (i === 2) continue;
    routes.push({ gsi: i, kind: "irqchip", chip: KVM_IRQCHIP_IOAPIC, pin: i === 0 ? 2 : i });
  }
  return routes;
}

export class Machine {
  readonly vcpus: VcpuThread[] = [];
  readonly buses: Buses;
  readonly serial: Serial16550;
  private readonly exitServer: ExitServer;
  /** Stateful device models: reset with the machine, saved and restored by migration. */
  readonly devices: (Persistent & { reset(): void })[] = [];
  private pm!: AcpiPm;
  /** The PCI root bus (q35 only). */
  pci: PciRoot | undefined;
  /** virtio-blk / virtio-net devices (their transports are in `devices` too). */
  virtio: VirtioDevices | undefined;
  vm!: Vm;
  state: RunState = "prelaunch";
  private stopListeners: ((e: StopEvent) => void)[] = [];
  private eventListeners: ((name: string, data?: Record<string, unknown>) => void)[] = [];
  private stopped: StopEvent | undefined;
  private readonly supportedCpuid: CpuidEntry[];
  /** Bytes of a vCPU's XSAVE area (KVM_CAP_XSAVE2; 4096 without AMX). */
  readonly xsaveSize: number;
  /** The MSRs KVM can save for a vCPU (KVM_GET_MSR_INDEX_LIST). */
  readonly msrIndexList: number[];

  private constructor(
    readonly config: MachineConfig,
    readonly kvm: Kvm,
    readonly memory: GuestMemory,
    private readonly kernel: Uint8Array,
    private readonly initrd: Uint8Array | undefined,
    private readonly hooks: MachineHooks,
  ) {
    this.buses = new Buses((what) => hooks.log("debug", what));
    this.serial = new Serial16550({ irq: this.irq(L.COM1_IRQ), output: (b) => hooks.serialOutput(b) });
    this.exitServer = new ExitServer(
      this.buses,
      () => this.serial.flush(),
      (e) => hooks.log("warn", e.message),
    );
    this.supportedCpuid = kvm.supportedCpuid();
    this.msrIndexList = kvm.msrIndexList();
    this.xsaveSize = Math.max(4096, kvm.checkExtension(KvmCap.XSAVE2));
  }

  /**
   * Build the machine and its vCPUs; they are ready but not running (state "prelaunch"). With
   * `boot: false` (a migration destination) no kernel is loaded: RAM and vCPU state arrive later.
   */
  static async create(config: MachineConfig, hooks: MachineHooks, opts: { boot?: boolean } = {}): Promise<Machine> {
    installNoopSignalHandler();
    const kvm = Kvm.open();
    const maxVcpus = kvm.checkExtension(KvmCap.MAX_VCPUS) || kvm.checkExtension(KvmCap.NR_VCPUS);
    if (config.topology.cpus > maxVcpus) {
      throw new MachineError(`-smp ${config.topology.cpus}: KVM on this host supports at most ${maxVcpus} vCPUs`);
    }
    const kernel = await readInput(config.kernel, "-kernel");
    const initrd = config.initrd !== undefined ? await readInput(config.initrd, "-initrd") : undefined;
    const memory = GuestMemory.create(L.ramRegions(config.memSize));
    if (config.dumpGuestCore === false) memory.excludeFromCoreDumps();
    const m = new Machine(config, kvm, memory, kernel, initrd, hooks);
    try {
      m.spawnVcpus();
      m.attachDevices(opts.boot === false);
      m.buildVm();
      const boot = opts.boot === false ? undefined : m.loadGuest();
      await m.startVcpus(boot);
      void m.exitServer.run();
    } catch (e) {
      m.destroy();
      throw e;
    }
    return m;
  }

  /** A fresh KVM VM over the (kept) guest RAM: irqchip, PIT, interrupt routing, memory slots. */
  private buildVm(): void {
    const vm = this.kvm.createVm();
    this.vm = vm;
    vm.setTssAddr(L.KVM_TSS_START);
    vm.setIdentityMapAddr(L.KVM_IDENTITY_MAP_START);
    vm.createIrqchip();
    // The whole table: the ISA routes plus the MSI routes of PCI devices.
    this.virtio!.attachVm(vm, defaultRoutes());
    vm.createPit2();
    for (const r of this.memory.regions) vm.setUserMemoryRegion(r.slot, 0, r.gpa, r.size, this.memory.hostAddr + r.offset);
  }

  /** Write ACPI tables and the kernel into guest RAM; returns the boot vCPU's initial state. */
  private loadGuest(): BootCpuState {
    const c = this.config;
    const acpi = buildAcpiTables(this.memory, {
      machine: c.machine,
      cpus: c.topology.cpus,
      virtioMmio: this.virtio!.acpiSlots(),
      pciRoot:
        c.machine === "q35"
          ? {
              ecamBase: L.PCIE_ECAM_START,
              ecamSize: L.PCIE_ECAM_SIZE,
              busStart: 0,
              busEnd: L.PCIE_ECAM_SIZE / (1 << 20) - 1,
              mmio32: { base: L.PCI_MMIO32_START, size: L.PCI_MMIO32_SIZE },
            }
          : undefined,
    });
    const entry = loadKernel(this.memory, {
      kernel: this.kernel,
      kernelPath: c.kernel,
      cmdline: c.cmdline + this.virtio!.cmdlineSuffix(),
      initrd: this.initrd,
      initrdPath: c.initrd,
      memSize: c.memSize,
      machine: c.machine,
      rsdpGpa: acpi.rsdpGpa,
    });
    return initialCpuState(entry);
  }

  private attachDevices(incoming: boolean): void {
    const b = this.buses;
    this.virtio = VirtioDevices.create({
      machine: this.config.machine,
      devices: this.config.devices ?? [],
      drives: this.config.drives ?? [],
      netdevs: this.config.netdevs ?? [],
      memory: this.memory,
      incoming,
      log: (level, msg) => this.hooks.log(level, msg),
    });
    b.registerPio(L.COM1_PORT, 8, this.serial, "serial");
    const i8042 = new I8042({ irq: this.irq(L.I8042_IRQ), onReset: () => this.guestStop({ kind: "reset", detail: "keyboard controller reset (i8042)" }) });
    // 0x60..0x64 (0x61 never exits: the in-kernel PIT answers it).
    b.registerPio(L.I8042_DATA_PORT, I8042_PORT_SPAN, i8042, "i8042");
    const rtc = new CmosRtc({ irq: this.irq(L.RTC_IRQ) });
    b.registerPio(L.RTC_PORT, 2, rtc, "rtc");
    b.registerPio(L.POST_PORT, 1, new PostPort(), "post");
    const pm = (this.pm = new AcpiPm({ onPowerOff: () => this.guestStop({ kind: "poweroff", detail: "ACPI S5 (power off)" }), sciIrq: this.irq(L.ACPI_SCI_IRQ) }));
    b.registerPio(L.ACPI_PM_BASE, 12, pm, "acpi-pm");
    const reset = new ResetControl({ onReset: () => this.guestStop({ kind: "reset", detail: "reset control register (0xcf9)" }) });
    if (this.config.machine === "q35") {
      this.pci = new PciRoot();
      this.pci.attach(VirtioDevices.hostBridgeDevfn(this.config.devices ?? []), new SimpleConfigSpace(Q35_HOST_BRIDGE.vendor, Q35_HOST_BRIDGE.device, Q35_HOST_BRIDGE.classCode));
    }
    // 0xcf8..0xcff: PCI config address/data on q35, with the reset control register's byte at 0xcf9.
    const pciPorts = new PciConfigPorts(this.pci, reset);
    b.registerPio(L.PCI_CONFIG_ADDRESS_PORT, 8, pciPorts, "pci-config");
    this.devices.push(this.serial, i8042, rtc, pm, reset, pciPorts);
    this.virtio.attach(b, this.pci);
    this.devices.push(...this.virtio.transports);
  }

  /** An interrupt line into the in-kernel irqchip. */
  irq(gsi: number): IrqLine {
    return { set: (level) => this.vm.irqLine(gsi, level) };
  }

  /** Start the vCPU Worker threads (their vCPUs are created later, by startVcpus). */
  private spawnVcpus(): void {
    for (let i = 0; i < this.config.topology.cpus; i++) {
      const v = new VcpuThread(i, this.exitServer, (m) => this.onVcpuStopped(m), (e) => this.hooks.log("warn", e.message));
      v.spawn();
      this.vcpus.push(v);
    }
  }

  private async startVcpus(boot: BootCpuState | undefined): Promise<void> {
    const xsaveSize = this.xsaveSize;
    const runSize = this.kvm.vcpuMmapSize();
    const msrs = bootMsrs().map(([i, v]) => [i, v.toString()] as [number, string]);
    if (this.vcpus.length === 0) this.spawnVcpus();
    await Promise.all(
      this.vcpus.map((v, i) =>
        v.start({
          vmFd: this.vm.fd,
          runSize,
          // The timing leaf's TSC kHz is filled in by the Worker, which can ask its own vCPU.
          cpuid: vcpuCpuid(this.supportedCpuid, i, this.config.topology, 0),
          bootMsrs: msrs,
          boot: i === 0 ? boot : undefined,
          xsaveSize,
          msrIndexList: this.msrIndexList,
        }),
      ),
    );
  }

  /** Start (or resume) every vCPU; a RESUME event when the guest was not running. */
  resume(): void {
    if (this.stopped) return;
    const was = this.state;
    this.virtio?.resume();
    for (const v of this.vcpus) v.run();
    this.state = "running";
    if (was !== "running") this.emit("RESUME");
  }

  /**
   * Park every vCPU; resolves when none runs guest code and every posted device write was applied.
   * A STOP event when the guest was running.
   */
  async pause(state: RunState = "paused"): Promise<void> {
    await this.pauseAndSave(state, false);
  }

  /**
   * pause(), with `save`: each vCPU saves its state as it parks (a migration's switchover: one hop
   * fewer). Returns the states of the vCPUs that were running (undefined for the others).
   */
  async pauseAndSave(state: RunState, save: boolean): Promise<(VcpuState | undefined)[]> {
    const was = this.state;
    const states = await Promise.all(this.vcpus.map((v) => v.pauseAndSave(save)));
    await this.virtio?.quiesce(state);
    if (!this.stopped) this.state = state;
    if (was === "running") this.emit("STOP");
    return states;
  }

  /** Machine events for QMP (STOP, RESUME, RESET, SHUTDOWN, POWERDOWN, MIGRATION...). */
  onEvent(cb: (name: string, data?: Record<string, unknown>) => void): void {
    this.eventListeners.push(cb);
  }

  emit(name: string, data?: Record<string, unknown>): void {
    for (const cb of this.eventListeners) cb(name, data);
  }

  /**
   * Turn on dirty page tracking for a migration: KVM logs guest writes per memory slot, and kiln's
   * own writes go to a shared bitmap. Returns that bitmap for the migration sender.
   */
  startDirtyLog(): SharedArrayBuffer {
    for (const r of this.memory.regions) this.vm.setUserMemoryRegion(r.slot, KVM_MEM_LOG_DIRTY_PAGES, r.gpa, r.size, this.memory.hostAddr + r.offset);
    return this.memory.startDirtyTracking();
  }

  stopDirtyLog(): void {
    this.memory.stopDirtyTracking();
    for (const r of this.memory.regions) this.vm.setUserMemoryRegion(r.slot, 0, r.gpa, r.size, this.memory.hostAddr + r.offset);
  }

  /** Reset the machine as a power cycle would (see rebuild); it runs again afterwards if it was running. */
  async reset(): Promise<void> {
    const wasRunning = this.state === "running" || this.stopped?.kind === "reset";
    await this.rebuild(true);
    if (wasRunning) this.resume();
    else this.state = "paused";
  }

  /**
   * A power cycle under the same RAM: the vCPUs released, a fresh KVM VM (vCPUs, irqchip and PIT
   * from KVM's reset state), RAM discarded, devices reset, and with `boot` the kernel loaded again.
   */
  private async rebuild(boot: boolean): Promise<void> {
    await this.pause();
    await this.destroyVcpus();
    this.vm.close();
    this.memory.discard();
    for (const d of this.devices) d.reset();
    this.stopped = undefined;
    this.buildVm();
    await this.startVcpus(boot ? this.loadGuest() : undefined);
  }

  /**
   * The vCPUs were armed for a migration and have been released by the receiver (or must be now):
   * record that the guest runs (or stays paused) and announce it.
   */
  releaseRestored(run: boolean): void {
    for (const v of this.vcpus) v.go(run);
    if (!run) return;
    this.virtio?.resume();
    this.state = "running";
    this.emit("RESUME");
  }

  /** Press the ACPI power button (QMP system_powerdown); the guest decides what to do. */
  powerButton(): void {
    this.pm.pressPowerButton();
  }

  /**
   * Make this process a migration destination again after its guest migrated away (ping-pong,
   * same-host upgrade back): fresh VM and vCPUs, RAM discarded, nothing loaded; state "inmigrate".
   */
  async prepareIncoming(): Promise<void> {
    await this.rebuild(false);
    this.state = "inmigrate";
  }


  onStop(cb: (e: StopEvent) => void): void {
    this.stopListeners.push(cb);
    if (this.stopped) cb(this.stopped);
  }

  /** The guest asked to stop (or crashed): park everything once and tell the listeners. */
  private guestStop(e: StopEvent): void {
    if (this.stopped) return;
    this.stopped = e;
    this.state = e.kind === "crash" ? "internal-error" : "shutdown";
    void this.pause(this.state).finally(() => {
      for (const cb of this.stopListeners) cb(e);
    });
  }

  private onVcpuStopped(m: StoppedMessage): void {
    switch (m.reason) {
      case "system-shutdown":
        this.guestStop({ kind: "poweroff", detail: m.detail });
        break;
      case "system-reset":
        this.guestStop({ kind: "reset", detail: m.detail });
        break;
      default:
        this.guestStop({ kind: "crash", detail: `vCPU ${m.id}: ${m.detail}`, dump: m.dump });
    }
  }

  private async destroyVcpus(): Promise<void> {
    await Promise.all(this.vcpus.map((v) => v.destroy()));
    this.vcpus.length = 0;
  }

  /** Tear everything down without waiting (process exit path). */
  destroy(): void {
    this.exitServer.stop();
    this.virtio?.close();
    this.virtio = undefined;
    for (const v of this.vcpus) v.terminate();
    this.vcpus.length = 0;
  }
}
async function readInput(path: string, flag: string): Promise<Uint8Array> {
  const f = Bun.file(path);
  if (!(await f.exists())) throw new MachineError(`${flag} ${path}: no such file`);
  try {
    return new Uint8Array(await f.arrayBuffer());
  } catch (e) {
    throw new MachineError(`${flag} ${path}: cannot read: ${(e as Error).message}`);
  }
}
