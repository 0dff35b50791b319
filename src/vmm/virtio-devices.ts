/**
 * The machine's virtio devices, built from the command line's -drive / -netdev / -device: backends
 * opened (start-up errors name the flag), transports placed (virtio-mmio windows and IOAPIC pins on
 * microvm; PCI slots, BARs and MSI-X on q35's pcie.0), wired to the buses, to KVM (doorbells,
 * interrupts, MSI routes) and to the machine's run state (paused devices touch nothing).
 *
 * Machine hooks (src/vmm/machine.ts calls these):
 *   create()            before the buses are populated (opens images and taps)
 *   attach()            registers MMIO windows, PCI functions and the ECAM window
 *   attachVm()          on every new KVM VM (boot, reboot): GSI routes, ioeventfds, irqfds
 *   acpiSlots()         DSDT LNRO0005 entries; cmdlineSuffix(): virtio_mmio.device= for the kernel
 *   quiesce() / resume() with Machine.pause() / resume()
 *   close()             process exit
 */
import type { DeviceConfig, DriveConfig, NetdevConfig, VirtioBlkDeviceConfig, VirtioNetDeviceConfig } from "../cli/config.ts";
import type { IrqRoute } from "../kvm/vm.ts";
import type { VirtioMmioSlot } from "../arch/x86_64/acpi/index.ts";
import * as L from "../arch/x86_64/layout.ts";
import { RawImage, BlockError } from "../block/raw-image.ts";
import { Tap, TapError } from "../net/tap.ts";
import type { DmaMemory } from "../devices/virtio/memory.ts";
import type { VirtioDevice } from "../devices/virtio/device.ts";
import { VirtioBlk } from "../devices/virtio/blk.ts";
import { VirtioNet } from "../devices/virtio/net.ts";
import { VirtioMmioTransport, MMIO_WINDOW_SIZE } from "../devices/virtio/mmio.ts";
import { VirtioPciTransport, type MmioBus } from "../devices/virtio/pci.ts";
import type { LogFn } from "../devices/virtio/transport.ts";
import { GsiRouter, type VmLink } from "../devices/pci/irq-routing.ts";
import { PciEcam } from "../devices/pci/ecam.ts";
import type { PciRoot } from "../devices/pci/host.ts";

/** IOAPIC pins for virtio-mmio devices: 16..23 (below 16 are ISA IRQs; KVM's IOAPIC has 24 pins). */
export const MAX_VIRTIO_MMIO_DEVICES = 24 - L.VIRTIO_MMIO_IRQ_BASE;
/** q35's root bus. */
const ROOT_BUS = "pcie.0";
/** Each PCI function's BAR0 starts at PCI_MMIO32_START + devfn * this (64 KiB, room for a 32 KiB BAR). */
const BAR_STRIDE = 0x10000;
/** INTx GSIs (IOAPIC pins 16..23), spread over slots as PCI's swizzle would. */
const INTX_GSI_BASE = 16;

export class VirtioConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VirtioConfigError";
  }
}

export interface VirtioSetup {
  machine: "microvm" | "q35";
  devices: readonly DeviceConfig[];
  drives: readonly DriveConfig[];
  netdevs: readonly NetdevConfig[];
  memory: DmaMemory;
  /** A migration destination: image locks are taken when the guest first runs, not at start-up. */
  incoming: boolean;
  log: LogFn;
}

type Transport = VirtioMmioTransport | VirtioPciTransport;

/** Something a transport is built from, before the buses exist. */
interface Planned {
  config: VirtioBlkDeviceConfig | VirtioNetDeviceConfig;
  device: VirtioDevice;
  image?: RawImage;
}

const label = (d: DeviceConfig) => (d.id ? `-device ${d.driver},id=${d.id}` : `-device ${d.driver}`);

export class VirtioDevices {
  readonly router = new GsiRouter();
  readonly transports: Transport[] = [];
  private readonly images: RawImage[] = [];
  private readonly mmioSlots: VirtioMmioSlot[] = [];

  private constructor(
    private readonly setup: VirtioSetup,
    private readonly planned: Planned[],
  ) {
    for (const p of planned) if (p.image) this.images.push(p.image);
  }

  /** Open every backend and build the devices; throws VirtioConfigError (closing what it opened). */
  static create(setup: VirtioSetup): VirtioDevices {
    const planned: Planned[] = [];
    try {
      for (const d of setup.devices) {
        if (d.driver === "pcie-root-port") {
          throw new VirtioConfigError(`${label(d)}: PCIe root ports are not supported yet; put devices on ${ROOT_BUS} (bus=${ROOT_BUS},addr=N)`);
        }
        if (d.pci && d.pci.bus !== ROOT_BUS) {
          throw new VirtioConfigError(`${label(d)}: bus '${d.pci.bus}' is a pcie-root-port, which kiln does not support yet; use bus=${ROOT_BUS}`);
        }
        switch (d.driver) {
          case "virtio-blk-pci":
          case "virtio-blk-device":
            planned.push(openBlk(d, setup));
            break;
          case "virtio-net-pci":
          case "virtio-net-device":
            planned.push(openNet(d, setup));
            break;
        }
      }
      const mmio = planned.filter((p) => p.config.pci === null).length;
      if (mmio > MAX_VIRTIO_MMIO_DEVICES) {
        throw new VirtioConfigError(`-device: ${mmio} virtio-mmio devices; microvm has IOAPIC pins for at most ${MAX_VIRTIO_MMIO_DEVICES}`);
      }
    } catch (e) {
      for (const p of planned) p.device.close();
      throw e;
    }
    return new VirtioDevices(setup, planned);
  }

  /**
   * Where q35's host bridge goes: 00.0, as on a real Q35, unless the command line put a device in
   * slot 0 (StratoVirt's examples use addr=0); then the first slot nobody asked for.
   */
  static hostBridgeDevfn(devices: readonly DeviceConfig[]): number {
    const taken = new Set(devices.filter((d) => d.pci && d.pci.bus === ROOT_BUS).map((d) => d.pci!.slot));
    for (let slot = 0; slot < 32; slot++) if (!taken.has(slot)) return slot << 3;
    throw new VirtioConfigError(`-device: every slot of ${ROOT_BUS} is taken; the host bridge needs one`);
  }

  /** Register the transports on the buses (and PCI functions on the root bus, plus ECAM). */
  attach(buses: MmioBus, pci: PciRoot | undefined): void {
    const { memory, log } = this.setup;
    if (pci) buses.registerMmio(L.PCIE_ECAM_START, L.PCIE_ECAM_SIZE, new PciEcam(pci), "pci-ecam");
    let mmioIndex = 0;
    for (const p of this.planned) {
      const pa = p.config.pci;
      if (pa === null) {
        const base = L.VIRTIO_MMIO_START + mmioIndex * L.VIRTIO_MMIO_SLOT_SIZE;
        const gsi = L.VIRTIO_MMIO_IRQ_BASE + mmioIndex;
        mmioIndex++;
        const t = new VirtioMmioTransport(p.device, memory, log, base, gsi);
        buses.registerMmio(base, MMIO_WINDOW_SIZE, t, t.persistName);
        this.mmioSlots.push({ base, size: MMIO_WINDOW_SIZE, irq: gsi, trigger: "edge" });
        this.transports.push(t);
      } else {
        if (!pci) throw new VirtioConfigError(`${label(p.config)}: this machine has no PCI bus`);
        const devfn = (pa.slot << 3) | pa.function;
        const t = new VirtioPciTransport(
          p.device,
          memory,
          log,
          {
            location: `${pa.bus}:${pa.slot.toString(16).padStart(2, "0")}.${pa.function}`,
            devfn,
            multifunction: pa.multifunction,
            barAddr: L.PCI_MMIO32_START + devfn * BAR_STRIDE,
            intxGsi: INTX_GSI_BASE + (pa.slot % 8),
          },
          buses,
          this.router,
        );
        pci.attach(devfn, t.pciFunction);
        this.transports.push(t);
      }
    }
  }

  /** A new KVM VM: the full GSI routing table (the machine's defaults plus MSI routes), doorbells, irqfds. */
  attachVm(vm: VmLink, defaultRoutes: IrqRoute[]): void {
    this.router.attachVm(vm, defaultRoutes);
    for (const t of this.transports) t.attachVm(vm);
  }

  /** DSDT entries for the virtio-mmio devices (LNRO0005). */
  acpiSlots(): VirtioMmioSlot[] {
    return [...this.mmioSlots];
  }

  /** What the kernel command line gets appended: ` virtio_mmio.device=4K@0xd0000000:16` per device. */
  cmdlineSuffix(): string {
    return this.mmioSlots.map((s) => ` virtio_mmio.device=${s.size / 1024}K@0x${s.base.toString(16)}:${s.irq}`).join("");
  }

  /**
   * The machine paused (every vCPU parked, posted writes applied): stop the devices. Requests are
   * served synchronously, so nothing is in flight afterwards; written data is flushed to the images.
   * For migration's switch-over ("finish-migrate") the image locks are released too, so that the
   * destination can take them when it starts.
   */
  async quiesce(state: string): Promise<void> {
    for (const t of this.transports) t.quiesce(state);
    for (const img of this.images) {
      if (img.flush() < 0) this.setup.log("warn", `${img.opts.what}: flushing ${img.opts.path} failed`);
      if (state === "finish-migrate") img.unlock();
    }
  }

  /** The machine runs (again): take the image locks if not held, then let the devices catch up. */
  resume(): void {
    for (const img of this.images) {
      try {
        img.lock();
      } catch (e) {
        this.setup.log("warn", `${(e as Error).message}; running without the lock`);
      }
    }
    for (const t of this.transports) t.resume();
  }

  /**
   * Per-device counters (requests and bytes; frames, drops and errors), keyed by section name:
   * what a QMP query (query-blockstats / a net counterpart) would report.
   */
  stats(): Record<string, Record<string, number>> {
    const out: Record<string, Record<string, number>> = {};
    for (const t of this.transports) {
      const d = t.device;
      if (d instanceof VirtioBlk || d instanceof VirtioNet) out[t.persistName] = { ...d.stats };
    }
    return out;
  }

  close(): void {
    for (const t of this.transports) t.close();
    // Devices never attached to a transport (a failed start) still own their backends.
    const attached = new Set(this.transports.map((t) => t.device));
    for (const p of this.planned) if (!attached.has(p.device)) p.device.close();
  }
}

function openBlk(d: VirtioBlkDeviceConfig, setup: VirtioSetup): Planned {
  const drive = setup.drives.find((x) => x.id === d.drive);
  if (!drive) throw new VirtioConfigError(`${label(d)}: no -drive with id '${d.drive}'`);
  const what = `-drive id=${drive.id}`;
  let image: RawImage;
  try {
    image = RawImage.open({
      path: drive.file,
      readOnly: drive.readOnly,
      direct: drive.direct,
      lock: !setup.incoming,
      what,
      log: (level, msg) => setup.log(level, msg),
    });
  } catch (e) {
    if (e instanceof BlockError) throw new VirtioConfigError(e.message);
    throw e;
  }
  const device = new VirtioBlk({
    image,
    readOnly: drive.readOnly,
    serial: d.serial ?? drive.serial,
    numQueues: d.numQueues,
    queueSize: d.queueSize,
    iopsTotal: drive.iopsTotal,
  });
  return { config: d, device, image };
}

function openNet(d: VirtioNetDeviceConfig, setup: VirtioSetup): Planned {
  const nd = setup.netdevs.find((x) => x.id === d.netdev);
  if (!nd) throw new VirtioConfigError(`${label(d)}: no -netdev with id '${d.netdev}'`);
  const what = `-netdev tap,id=${nd.id}`;
  if (nd.queues > 1 || d.mq) throw new VirtioConfigError(`${what}: multiqueue (queues=${nd.queues}${d.mq ? ", mq=on" : ""}) is not supported yet; use one queue pair`);
  let tap: Tap;
  try {
    tap = nd.ifname !== null ? Tap.open(nd.ifname, what) : Tap.fromFd(nd.fd!, what);
  } catch (e) {
    if (e instanceof TapError) throw new VirtioConfigError(e.message);
    throw e;
  }
  return { config: d, device: new VirtioNet({ tap, mac: d.mac, queueSize: d.queueSize }) };
}
