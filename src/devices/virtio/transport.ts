/**
 * What virtio-mmio and virtio-pci have in common (spec 3.1, 4.1, 4.2): feature negotiation, device
 * status and reset, the queue registers behind a queue selector, the configuration generation, and the
 * doorbells. Each queue has an eventfd that KVM signals on a notification write (ioeventfd), so a kick
 * never goes through a vCPU exit to userspace; the transport hears it in Bun's event loop.
 *
 * Pausing: while the machine is paused (QMP stop, migration's switch-over, reset) the transport does
 * not call into the device: kicks are remembered and replayed on resume. The device models are
 * synchronous, so a paused device has nothing in flight.
 */
import {
  bit,
  F_RING_EVENT_IDX,
  F_VERSION_1,
  INT_CONFIG_CHANGE,
  INT_USED_RING,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
} from "./constants.ts";
import type { VirtioDevice, VirtioHost } from "./device.ts";
import { EventFd } from "./eventfd.ts";
import type { DmaMemory } from "./memory.ts";
import { Virtqueue, queueStateProblem, type QueueState } from "./queue.ts";
import type { VmLink } from "../pci/irq-routing.ts";

export type LogFn = (level: "debug" | "info" | "warn", msg: string) => void;

/** The part of a transport's state every transport saves. */
export interface CoreState {
  status: number;
  /** Negotiated features, hex. */
  driverFeatures: string;
  deviceFeatureSel: number;
  driverFeatureSel: number;
  queueSel: number;
  configGeneration: number;
  queues: QueueState[];
  device: Record<string, unknown>;
}

export abstract class VirtioTransport implements VirtioHost {
  readonly queues: Virtqueue[];
  /** One doorbell per queue (ioeventfd). */
  readonly kickFds: EventFd[];
  status = 0;
  driverFeatures = 0n;
  deviceFeatureSel = 0;
  driverFeatureSel = 0;
  queueSel = 0;
  configGeneration = 0;
  /** Devices run only while the machine runs: paused until the first resume(). */
  paused = true;

  constructor(
    readonly device: VirtioDevice,
    readonly mem: DmaMemory,
    protected readonly logFn: LogFn,
  ) {
    device.host = this;
    this.queues = device.queueSizes.map((s, i) => new Virtqueue(i, s, mem));
    this.kickFds = this.queues.map(() => new EventFd());
    this.kickFds.forEach((f, i) =>
      f.listen(
        () => this.kick(i),
        (e) => this.log("warn", `queue ${i} doorbell: ${e.message}`),
      ),
    );
  }

  /** "virtio-blk-pci@pcie.0:03.0" and the like: the migration section name. */
  abstract readonly persistName: string;
  /** Raise an interrupt for `cause` (INT_USED_RING for queue `q`, or INT_CONFIG_CHANGE). */
  protected abstract interrupt(cause: number, q: Virtqueue | undefined): void;
  /** Transport-specific reset (interrupt status, vectors). */
  protected abstract resetTransport(): void;
  /** Register doorbells and interrupt fds with a (new) KVM VM. */
  abstract attachVm(vm: VmLink): void;

  log(level: "debug" | "info" | "warn", msg: string): void {
    this.logFn(level, `${this.persistName}: ${msg}`);
  }

  deviceFeaturesWord(): number {
    if (this.deviceFeatureSel > 1) return 0;
    return Number((this.device.features >> BigInt(32 * this.deviceFeatureSel)) & 0xffffffffn);
  }

  driverFeaturesWord(): number {
    if (this.driverFeatureSel > 1) return 0;
    return Number((this.driverFeatures >> BigInt(32 * this.driverFeatureSel)) & 0xffffffffn);
  }

  writeDriverFeaturesWord(value: number): void {
    if (this.status & STATUS_FEATURES_OK || this.driverFeatureSel > 1) return;
    const shift = BigInt(32 * this.driverFeatureSel);
    this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(value >>> 0) << shift);
  }

  private featuresAcceptable(): boolean {
    return (this.driverFeatures & ~this.device.features) === 0n && (this.driverFeatures & bit(F_VERSION_1)) !== 0n;
  }

  writeStatus(value: number): void {
    value &= 0xff;
    if (value === 0) {
      this.resetDevice();
      return;
    }
    const added = value & ~this.status;
    // FEATURES_OK sticks only if the device accepts the features; the driver reads it back (spec 3.1.1).
    if (added & STATUS_FEATURES_OK && !this.featuresAcceptable()) {
      this.log("debug", `refused driver features 0x${this.driverFeatures.toString(16)}`);
      value &= ~STATUS_FEATURES_OK;
    }
    // Only the device sets NEEDS_RESET; the driver cannot clear bits except through a reset.
    this.status = (value & ~STATUS_DEVICE_NEEDS_RESET) | (this.status & STATUS_DEVICE_NEEDS_RESET);
    if (added & STATUS_DRIVER_OK && !(value & STATUS_FAILED)) this.activate();
  }

  /** DRIVER_OK: map the enabled queues and start the device. */
  private activate(): void {
    if (!(this.status & STATUS_FEATURES_OK)) {
      this.deviceError(new Error("the driver set DRIVER_OK without FEATURES_OK"));
      return;
    }
    try {
      const eventIdx = (this.driverFeatures & bit(F_RING_EVENT_IDX)) !== 0n;
      for (const q of this.queues) if (q.ready) q.activate(eventIdx);
      this.device.activate(this.driverFeatures);
    } catch (e) {
      this.deviceError(e as Error);
      return;
    }
    if (!this.paused) this.device.resumeIo();
  }

  /** A queue was enabled after DRIVER_OK (allowed for some queues): map it now. */
  protected queueEnabled(q: Virtqueue): void {
    if (!(this.status & STATUS_DRIVER_OK) || q.active) return;
    try {
      q.activate((this.driverFeatures & bit(F_RING_EVENT_IDX)) !== 0n);
    } catch (e) {
      this.deviceError(e as Error);
    }
  }

  get live(): boolean {
    return (this.status & (STATUS_DRIVER_OK | STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED)) === STATUS_DRIVER_OK;
  }

  /** A notification for queue `i` (from its ioeventfd, or a register write that bypassed it). */
  kick(i: number): void {
    // While paused the kick is dropped: resume() looks at every queue anyway.
    if (this.paused) return;
    const q = this.queues[i];
    if (!q || !q.active || !this.live) return;
    try {
      this.device.kick(i);
    } catch (e) {
      this.deviceError(e as Error);
    }
  }

  usedBuffers(q: Virtqueue): void {
    if (q.flushUsed() && q.needsInterrupt()) this.interrupt(INT_USED_RING, q);
  }

  configChanged(): void {
    this.configGeneration = (this.configGeneration + 1) & 0xff;
    if (this.status & STATUS_DRIVER_OK) this.interrupt(INT_CONFIG_CHANGE, undefined);
  }

  deviceError(e: Error): void {
    this.log("warn", `${e.message}; the device needs a reset by its driver`);
    if (this.status & STATUS_DEVICE_NEEDS_RESET) return;
    this.status |= STATUS_DEVICE_NEEDS_RESET;
    for (const q of this.queues) q.deactivate();
    if (this.status & STATUS_DRIVER_OK) this.interrupt(INT_CONFIG_CHANGE, undefined);
  }

  /** Machine reset (Persistent devices reset with the machine); transports add their own state. */
  reset(): void {
    this.resetDevice();
  }

  /** Virtio device reset: the driver wrote status 0 (spec 2.4), or part of a machine reset. */
  resetDevice(): void {
    this.device.deactivate();
    for (const q of this.queues) q.reset();
    this.status = 0;
    this.driverFeatures = 0n;
    this.deviceFeatureSel = this.driverFeatureSel = this.queueSel = 0;
    this.resetTransport();
  }

  /** The machine pauses: stop touching guest memory and backends. */
  quiesce(reason: string): void {
    this.paused = true;
    this.device.quiesce(reason);
  }

  /** The machine runs again: replay what arrived meanwhile. */
  resume(): void {
    this.paused = false;
    if (!this.live) return;
    try {
      this.device.resumeIo();
    } catch (e) {
      this.deviceError(e as Error);
    }
  }

  protected saveCore(): CoreState {
    return {
      status: this.status,
      driverFeatures: this.driverFeatures.toString(16),
      deviceFeatureSel: this.deviceFeatureSel,
      driverFeatureSel: this.driverFeatureSel,
      queueSel: this.queueSel,
      configGeneration: this.configGeneration,
      queues: this.queues.map((q) => q.save()),
      device: this.device.saveState(),
    };
  }

  /** Validate a saved core state; a message naming the bad field, or null. */
  protected coreProblem(s: CoreState): string | null {
    if (!s || typeof s !== "object") return "not an object";
    const u = (v: unknown, max: number) => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= max;
    if (!u(s.status, 0xff)) return "status must be a byte";
    if (typeof s.driverFeatures !== "string" || !/^[0-9a-f]{1,16}$/.test(s.driverFeatures)) return "driverFeatures must be 64-bit hex";
    const f = BigInt("0x" + s.driverFeatures);
    if ((f & ~this.device.features) !== 0n) return `driver features 0x${s.driverFeatures} include some this device does not offer`;
    if (!u(s.deviceFeatureSel, 0xffffffff) || !u(s.driverFeatureSel, 0xffffffff)) return "feature selectors must be 32-bit";
    if (!u(s.queueSel, 0xffff)) return "queueSel must be 16-bit";
    if (!u(s.configGeneration, 0xff)) return "configGeneration must be a byte";
    if (!Array.isArray(s.queues) || s.queues.length !== this.queues.length) return `queues must have ${this.queues.length} entries`;
    for (let i = 0; i < this.queues.length; i++) {
      const p = queueStateProblem(s.queues[i], this.queues[i]!.maxSize);
      if (p) return `queue ${i}: ${p}`;
    }
    if (!s.device || typeof s.device !== "object") return "device state is missing";
    return null;
  }

  /** Load a validated core state and map the rings if the device was live. Throws on rings outside RAM. */
  protected loadCore(s: CoreState): void {
    this.device.deactivate();
    this.status = s.status;
    this.driverFeatures = BigInt("0x" + s.driverFeatures);
    this.deviceFeatureSel = s.deviceFeatureSel;
    this.driverFeatureSel = s.driverFeatureSel;
    this.queueSel = s.queueSel;
    this.configGeneration = s.configGeneration;
    s.queues.forEach((qs, i) => this.queues[i]!.load(qs));
    this.device.loadState(s.device);
    if (this.live) {
      const eventIdx = (this.driverFeatures & bit(F_RING_EVENT_IDX)) !== 0n;
      for (const q of this.queues) if (q.ready) q.activate(eventIdx);
      this.device.activate(this.driverFeatures);
    }
  }

  close(): void {
    for (const f of this.kickFds) f.close();
    this.device.close();
  }
}
