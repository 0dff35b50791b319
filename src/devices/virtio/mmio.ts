/**
 * The virtio-mmio transport, version 2 (virtio 1.x modern; spec 4.2): one 4 KiB register window per
 * device, an IOAPIC pin for its interrupt. Guests find it through a DSDT `LNRO0005` device (Linux) or
 * the `virtio_mmio.device=SIZE@ADDR:IRQ` command-line form (kiln's test guest).
 *
 * Doorbell: QueueNotify (0x50) has one ioeventfd per queue, matched on the queue index written.
 * Interrupt: an irqfd on the pin, injected as an edge (the DSDT declares it edge-triggered); the driver
 * reads InterruptStatus to learn why and acknowledges with InterruptACK.
 */
import type { AccessSize, MmioDevice } from "../bus.ts";
import { PersistError, type Persistent } from "../../persist/persist.ts";
import { VIRTIO_VENDOR_ID } from "./constants.ts";
import type { VirtioDevice } from "./device.ts";
import { EventFd } from "./eventfd.ts";
import type { DmaMemory } from "./memory.ts";
import type { Virtqueue } from "./queue.ts";
import { VirtioTransport, type CoreState, type LogFn } from "./transport.ts";
import type { VmLink } from "../pci/irq-routing.ts";

/** Register offsets (spec 4.2.2). */
export const MmioReg = {
  MAGIC: 0x000,
  VERSION: 0x004,
  DEVICE_ID: 0x008,
  VENDOR_ID: 0x00c,
  DEVICE_FEATURES: 0x010,
  DEVICE_FEATURES_SEL: 0x014,
  DRIVER_FEATURES: 0x020,
  DRIVER_FEATURES_SEL: 0x024,
  QUEUE_SEL: 0x030,
  QUEUE_NUM_MAX: 0x034,
  QUEUE_NUM: 0x038,
  QUEUE_READY: 0x044,
  QUEUE_NOTIFY: 0x050,
  INTERRUPT_STATUS: 0x060,
  INTERRUPT_ACK: 0x064,
  STATUS: 0x070,
  QUEUE_DESC_LOW: 0x080,
  QUEUE_DESC_HIGH: 0x084,
  QUEUE_DRIVER_LOW: 0x090,
  QUEUE_DRIVER_HIGH: 0x094,
  QUEUE_DEVICE_LOW: 0x0a0,
  QUEUE_DEVICE_HIGH: 0x0a4,
  SHM_SEL: 0x0ac,
  SHM_LEN_LOW: 0x0b0,
  SHM_LEN_HIGH: 0x0b4,
  CONFIG_GENERATION: 0x0fc,
  CONFIG: 0x100,
} as const;

export const MMIO_MAGIC = 0x74726976; // "virt"
export const MMIO_VERSION = 2;
export const MMIO_WINDOW_SIZE = 0x1000;

interface MmioState {
  core: CoreState;
  interruptStatus: number;
}

export class VirtioMmioTransport extends VirtioTransport implements MmioDevice, Persistent<MmioState> {
  readonly persistName: string;
  readonly persistVersion = 1;
  interruptStatus = 0;
  readonly irqFd = new EventFd();

  constructor(
    device: VirtioDevice,
    mem: DmaMemory,
    log: LogFn,
    readonly base: number,
    readonly gsi: number,
  ) {
    super(device, mem, log);
    this.persistName = `${device.kind}-device@0x${base.toString(16)}`;
  }

  attachVm(vm: VmLink): void {
    vm.irqfd(this.irqFd.fd, this.gsi);
    this.queues.forEach((_, i) => vm.ioeventfd(this.kickFds[i]!.fd, this.base + MmioReg.QUEUE_NOTIFY, 4, { datamatch: i }));
  }

  protected interrupt(cause: number, _q: Virtqueue | undefined): void {
    this.interruptStatus |= cause;
    this.irqFd.signal();
  }

  protected resetTransport(): void {
    this.interruptStatus = 0;
  }

  private get selected(): Virtqueue | undefined {
    return this.queues[this.queueSel];
  }

  mmioRead(offset: number, size: AccessSize): number {
    if (offset >= MmioReg.CONFIG) return this.readConfig(offset - MmioReg.CONFIG, size);
    if (size !== 4 || offset & 3) return 0; // registers are 32-bit (spec 4.2.2.2)
    const q = this.selected;
    switch (offset) {
      case MmioReg.MAGIC:
        return MMIO_MAGIC;
      case MmioReg.VERSION:
        return MMIO_VERSION;
      case MmioReg.DEVICE_ID:
        return this.device.type;
      case MmioReg.VENDOR_ID:
        return VIRTIO_VENDOR_ID;
      case MmioReg.DEVICE_FEATURES:
        return this.deviceFeaturesWord();
      case MmioReg.QUEUE_NUM_MAX:
        return q ? q.maxSize : 0;
      case MmioReg.QUEUE_READY:
        return q?.ready ? 1 : 0;
      case MmioReg.INTERRUPT_STATUS:
        return this.interruptStatus;
      case MmioReg.STATUS:
        return this.status;
      case MmioReg.SHM_LEN_LOW:
      case MmioReg.SHM_LEN_HIGH:
        return 0xffffffff; // no shared memory regions
      case MmioReg.CONFIG_GENERATION:
        return this.configGeneration;
      default:
        return 0;
    }
  }

  mmioWrite(offset: number, size: AccessSize, value: number | bigint): void {
    if (offset >= MmioReg.CONFIG) {
      this.device.writeConfig(offset - MmioReg.CONFIG, size, Number(value));
      return;
    }
    if (size !== 4 || offset & 3) return;
    const v = Number(value) >>> 0;
    const q = this.selected;
    // Queue layout registers are fixed while the queue is enabled (spec 4.2.3.2).
    const qw = q && !q.ready ? q : undefined;
    switch (offset) {
      case MmioReg.DEVICE_FEATURES_SEL:
        this.deviceFeatureSel = v;
        break;
      case MmioReg.DRIVER_FEATURES:
        this.writeDriverFeaturesWord(v);
        break;
      case MmioReg.DRIVER_FEATURES_SEL:
        this.driverFeatureSel = v;
        break;
      case MmioReg.QUEUE_SEL:
        this.queueSel = v & 0xffff;
        break;
      case MmioReg.QUEUE_NUM:
        if (qw) qw.size = v;
        break;
      case MmioReg.QUEUE_READY:
        if (!q) break;
        if (v & 1 && !q.ready) {
          q.ready = true;
          this.queueEnabled(q);
        } else if (!(v & 1)) {
          q.ready = false;
          q.deactivate();
        }
        break;
      case MmioReg.QUEUE_NOTIFY:
        // Reaches here only when the write bypassed the ioeventfd (e.g. another width).
        this.kick(v & 0xffff);
        break;
      case MmioReg.INTERRUPT_ACK:
        this.interruptStatus &= ~v;
        break;
      case MmioReg.STATUS:
        this.writeStatus(v);
        break;
      case MmioReg.QUEUE_DESC_LOW:
        if (qw) qw.descAddr = setLow(qw.descAddr, v);
        break;
      case MmioReg.QUEUE_DESC_HIGH:
        if (qw) qw.descAddr = setHigh(qw.descAddr, v);
        break;
      case MmioReg.QUEUE_DRIVER_LOW:
        if (qw) qw.availAddr = setLow(qw.availAddr, v);
        break;
      case MmioReg.QUEUE_DRIVER_HIGH:
        if (qw) qw.availAddr = setHigh(qw.availAddr, v);
        break;
      case MmioReg.QUEUE_DEVICE_LOW:
        if (qw) qw.usedAddr = setLow(qw.usedAddr, v);
        break;
      case MmioReg.QUEUE_DEVICE_HIGH:
        if (qw) qw.usedAddr = setHigh(qw.usedAddr, v);
        break;
      default:
        break;
    }
  }

  private readConfig(offset: number, size: AccessSize): number {
    const c = this.device.config;
    if (offset + size > c.length || size === 8) return 0;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + c[offset + i]!;
    return v;
  }

  save(): MmioState {
    return { core: this.saveCore(), interruptStatus: this.interruptStatus };
  }

  restore(s: MmioState, version: number): void {
    if (version !== this.persistVersion) throw new PersistError(this.persistName, `unsupported version ${version}`);
    if (!s || typeof s !== "object") throw new PersistError(this.persistName, "not an object");
    const p = this.coreProblem(s.core);
    if (p) throw new PersistError(this.persistName, p);
    if (!Number.isInteger(s.interruptStatus) || s.interruptStatus < 0 || s.interruptStatus > 3) throw new PersistError(this.persistName, "interruptStatus must be 0..3");
    try {
      this.loadCore(s.core);
    } catch (e) {
      throw new PersistError(this.persistName, (e as Error).message);
    }
    this.interruptStatus = s.interruptStatus;
    // KVM injects irqfd signals from a worker: one sent just before the source paused may be missing
    // from the saved irqchip. The driver has not acknowledged it, so raise it again (an edge; a
    // duplicate only makes the driver look at InterruptStatus once more).
    if (this.interruptStatus !== 0) this.irqFd.signal();
  }

  override close(): void {
    super.close();
    this.irqFd.close();
  }
}

/** Replace the low / high 32 bits of a guest address (below 2^53). */
export function setLow(addr: number, lo: number): number {
  return Math.floor(addr / 0x1_0000_0000) * 0x1_0000_0000 + (lo >>> 0);
}
export function setHigh(addr: number, hi: number): number {
  // Guest addresses above 2^53 cannot be RAM; clamp so the mapping check fails cleanly.
  return ((hi >>> 0) & 0x1fffff) * 0x1_0000_0000 + (addr % 0x1_0000_0000);
}
