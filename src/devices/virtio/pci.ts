/**
 * The virtio-pci transport, modern only (virtio 1.x; spec 4.1): a PCI function whose vendor-specific
 * capabilities point into one 64-bit memory BAR holding the common configuration, ISR status, device
 * configuration and notification areas, plus the MSI-X table and pending bits.
 *
 *   BAR0 (32 KiB):  0x0000 common cfg   0x1000 ISR   0x2000 device cfg   0x3000 notify (4 bytes/queue)
 *                   0x4000 MSI-X table  0x5000 MSI-X PBA
 *
 * kiln has no firmware, so the BAR comes pre-assigned in the q35 PCI window; a guest may move it. The
 * queue doorbells are ioeventfds at the BAR's notify addresses, re-registered wherever the BAR goes.
 * Interrupts: MSI-X (one vector per queue plus one for configuration changes), or INTx on a GSI as the
 * fallback when the driver leaves MSI-X off.
 */
import type { AccessSize, MmioDevice } from "../bus.ts";
import { PersistError, type Persistent } from "../../persist/persist.ts";
import { VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_DEVICE_ID_BASE, VIRTIO_VENDOR_ID } from "./constants.ts";
import type { VirtioDevice } from "./device.ts";
import type { DmaMemory } from "./memory.ts";
import type { Virtqueue } from "./queue.ts";
import { VirtioTransport, type CoreState, type LogFn } from "./transport.ts";
import { setHigh, setLow } from "./mmio.ts";
import { CMD_INTX_DISABLE, CMD_MEMORY, PCI_CAP_ID_MSIX, PCI_CAP_ID_VNDR, PciCfg, PciConfigSpace, STATUS_INTERRUPT } from "../pci/config-space.ts";
import { MsixTable, type MsixState } from "../pci/msix.ts";
import type { GsiRouter, VmLink } from "../pci/irq-routing.ts";

export const VIRTIO_PCI_BAR_SIZE = 0x8000;
export const BarLayout = {
  COMMON: 0x0000,
  COMMON_SIZE: 0x38,
  ISR: 0x1000,
  DEVICE: 0x2000,
  NOTIFY: 0x3000,
  NOTIFY_MULTIPLIER: 4,
  MSIX_TABLE: 0x4000,
  MSIX_PBA: 0x5000,
} as const;

/** virtio_pci_cap cfg_type values (spec 4.1.4). */
export const VirtioPciCap = { COMMON: 1, NOTIFY: 2, ISR: 3, DEVICE: 4, PCI_CFG: 5 } as const;
/** virtio_pci_cap layout: vndr, next, len, cfg_type, bar, id, pad[2], offset u32, length u32 (+ extra). */
const CAP_CFG_TYPE = 3;
const CAP_BAR = 4;
const CAP_OFFSET = 8;
const CAP_LENGTH = 12;
const CAP_EXTRA = 16;

/** Common configuration layout (spec 4.1.4.3). */
export const CommonCfg = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  CONFIG_MSIX_VECTOR: 0x10,
  NUM_QUEUES: 0x12,
  DEVICE_STATUS: 0x14,
  CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_MSIX_VECTOR: 0x1a,
  QUEUE_ENABLE: 0x1c,
  QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC: 0x20,
  QUEUE_DRIVER: 0x28,
  QUEUE_DEVICE: 0x30,
} as const;

/** MSI-X capability: message control at +2, table offset/BIR at +4, PBA offset/BIR at +8. */
const MSIX_CTRL = 2;
const MSIX_CTRL_ENABLE = 0x8000;
const MSIX_CTRL_MASK = 0x4000;

/** Physical addresses above this are not decoded (and would lose precision as numbers). */
const MAX_BAR_ADDR = 2 ** 46;

export interface MmioBus {
  registerMmio(base: number, len: number, dev: MmioDevice, name: string): void;
  unregisterMmio(dev: MmioDevice): void;
}

export interface PciPlacement {
  /** "pcie.0:03.0" style location, used in names and messages. */
  location: string;
  devfn: number;
  multifunction: boolean;
  /** Where BAR0 starts out (kiln assigns it; there is no firmware). */
  barAddr: number;
  /** IOAPIC GSI for INTx. */
  intxGsi: number;
}

interface PciState {
  core: CoreState;
  config: number[];
  msix: MsixState;
  configVector: number;
  queueVectors: number[];
  isr: number;
}

const PCI_CLASS = { 1: 0x020000, 2: 0x010000 } as Record<number, number>; // network/ethernet, storage/SCSI (as QEMU)

export class VirtioPciTransport extends VirtioTransport implements Persistent<PciState> {
  readonly persistName: string;
  readonly persistVersion = 1;
  readonly cfg: PciConfigSpace;
  private readonly initialConfig: Uint8Array;
  readonly msix: MsixTable;
  configVector = VIRTIO_MSI_NO_VECTOR;
  readonly queueVectors: number[];
  isr = 0;
  private intxLevel = false;
  private vm: VmLink | undefined;
  /** Where BAR0 is decoded now (undefined: memory decoding off or no address). */
  mappedAt: number | undefined;
  private ioeventfdsAt: number | undefined;
  private readonly msixCap: number;
  private readonly pciCfgCap: number;
  private readonly common = new DataView(new ArrayBuffer(BarLayout.COMMON_SIZE));
  private readonly bar: MmioDevice = {
    mmioRead: (o, s) => this.barRead(o, s),
    mmioWrite: (o, s, v) => this.barWrite(o, s, v),
  };

  constructor(
    device: VirtioDevice,
    mem: DmaMemory,
    log: LogFn,
    readonly placement: PciPlacement,
    private readonly bus: MmioBus,
    private readonly router: GsiRouter,
  ) {
    super(device, mem, log);
    this.persistName = `${device.kind}-pci@${placement.location}`;
    const nq = this.queues.length;
    this.queueVectors = this.queues.map(() => VIRTIO_MSI_NO_VECTOR);
    const cfg = new PciConfigSpace({
      vendor: VIRTIO_VENDOR_ID,
      device: VIRTIO_PCI_DEVICE_ID_BASE + device.type,
      classCode: PCI_CLASS[device.type] ?? 0xff0000,
      revision: 1, // modern-only devices have revision ≥ 1 (spec 4.1.2.1)
      subsystemVendor: VIRTIO_VENDOR_ID,
      subsystem: 0x40 | device.type,
      multifunction: placement.multifunction,
    });
    this.cfg = cfg;
    cfg.addBar64(0, VIRTIO_PCI_BAR_SIZE, placement.barAddr);
    cfg.bytes[PciCfg.INTERRUPT_PIN] = 1; // INTA#
    cfg.bytes[PciCfg.INTERRUPT_LINE] = placement.intxGsi;

    const vectors = nq + 1;
    this.msixCap = cfg.addCapability(PCI_CAP_ID_MSIX, 12);
    cfg.view.setUint16(this.msixCap + MSIX_CTRL, vectors - 1, true);
    cfg.setMask16(this.msixCap + MSIX_CTRL, MSIX_CTRL_ENABLE | MSIX_CTRL_MASK);
    cfg.view.setUint32(this.msixCap + 4, BarLayout.MSIX_TABLE | 0, true); // BIR 0
    cfg.view.setUint32(this.msixCap + 8, BarLayout.MSIX_PBA | 0, true);
    this.msix = new MsixTable(vectors, router);

    const cap = (type: number, offset: number, length: number, len = 16) => {
      const at = cfg.addCapability(PCI_CAP_ID_VNDR, len);
      cfg.bytes[at + 2] = len;
      cfg.bytes[at + CAP_CFG_TYPE] = type;
      cfg.bytes[at + CAP_BAR] = 0;
      cfg.view.setUint32(at + CAP_OFFSET, offset, true);
      cfg.view.setUint32(at + CAP_LENGTH, length, true);
      return at;
    };
    cap(VirtioPciCap.COMMON, BarLayout.COMMON, BarLayout.COMMON_SIZE);
    cap(VirtioPciCap.ISR, BarLayout.ISR, 1);
    cap(VirtioPciCap.DEVICE, BarLayout.DEVICE, Math.max(device.config.length, 1));
    const notify = cap(VirtioPciCap.NOTIFY, BarLayout.NOTIFY, Math.max(nq * BarLayout.NOTIFY_MULTIPLIER, 2), 20);
    cfg.view.setUint32(notify + CAP_EXTRA, BarLayout.NOTIFY_MULTIPLIER, true);
    // The PCI configuration access capability: BAR, offset and length are the driver's to set.
    this.pciCfgCap = cap(VirtioPciCap.PCI_CFG, 0, 0, 20);
    cfg.wmask[this.pciCfgCap + CAP_BAR] = 0xff;
    cfg.setMask32(this.pciCfgCap + CAP_OFFSET, 0xffffffff);
    cfg.setMask32(this.pciCfgCap + CAP_LENGTH, 0xffffffff);
    cfg.intercept = {
      start: this.pciCfgCap + CAP_EXTRA,
      end: this.pciCfgCap + CAP_EXTRA + 4,
      read: (reg, size) => this.pciCfgAccess(reg, size, undefined),
      write: (reg, size, value) => void this.pciCfgAccess(reg, size, value),
    };
    cfg.onWrite = (reg) => this.configWritten(reg);
    this.initialConfig = cfg.bytes.slice();
  }

  /** The function's configuration space, for the PCI root. */
  get pciFunction(): PciConfigSpace {
    return this.cfg;
  }

  attachVm(vm: VmLink): void {
    this.vm = vm;
    this.ioeventfdsAt = undefined; // those of a previous VM went with it
    this.intxLevel = false;
    this.msix.attachVm(vm);
    this.registerIoeventfds();
    if (this.isr && !this.msix.enabled) this.setIntx(true);
  }

  private registerIoeventfds(): void {
    const vm = this.vm;
    if (!vm || this.mappedAt === this.ioeventfdsAt) return;
    if (this.ioeventfdsAt !== undefined) {
      const old = this.ioeventfdsAt;
      this.queues.forEach((_, i) => vm.ioeventfd(this.kickFds[i]!.fd, old + BarLayout.NOTIFY + i * BarLayout.NOTIFY_MULTIPLIER, 2, { deassign: true }));
      this.ioeventfdsAt = undefined;
    }
    const at = this.mappedAt;
    if (at !== undefined) {
      this.queues.forEach((_, i) => vm.ioeventfd(this.kickFds[i]!.fd, at + BarLayout.NOTIFY + i * BarLayout.NOTIFY_MULTIPLIER, 2));
      this.ioeventfdsAt = at;
    }
  }

  /** Decode BAR0 where the configuration says, or nowhere. */
  private updateMapping(): void {
    const addr = this.cfg.bar64(0);
    const want = this.cfg.command & CMD_MEMORY && addr !== 0 && addr + VIRTIO_PCI_BAR_SIZE <= MAX_BAR_ADDR ? addr : undefined;
    if (want === this.mappedAt) return;
    if (this.mappedAt !== undefined) this.bus.unregisterMmio(this.bar);
    this.mappedAt = undefined;
    if (want !== undefined) {
      try {
        this.bus.registerMmio(want, VIRTIO_PCI_BAR_SIZE, this.bar, this.persistName);
        this.mappedAt = want;
      } catch (e) {
        this.log("warn", `BAR0 at 0x${want.toString(16)} not decoded: ${(e as Error).message}`);
      }
    }
    this.registerIoeventfds();
  }

  private configWritten(reg: number): void {
    if (reg === PciCfg.COMMAND || reg === PciCfg.BAR0 || reg === PciCfg.BAR0 + 4) {
      this.updateMapping();
      if (reg === PciCfg.COMMAND) this.setIntx(this.isr !== 0 && !this.msix.enabled);
    }
    if (reg === this.msixCap) {
      const ctrl = this.cfg.view.getUint16(this.msixCap + MSIX_CTRL, true);
      this.msix.setControl((ctrl & MSIX_CTRL_ENABLE) !== 0, (ctrl & MSIX_CTRL_MASK) !== 0);
      if (this.msix.enabled) this.setIntx(false);
    }
  }

  /** The PCI configuration access capability's data window: a BAR access through config space. */
  private pciCfgAccess(reg: number, size: AccessSize, value: number | undefined): number {
    const v = this.cfg.view;
    const bar = this.cfg.bytes[this.pciCfgCap + CAP_BAR]!;
    const off = v.getUint32(this.pciCfgCap + CAP_OFFSET, true);
    const len = v.getUint32(this.pciCfgCap + CAP_LENGTH, true);
    const start = this.pciCfgCap + CAP_EXTRA;
    if (bar !== 0 || reg !== start || (len !== 1 && len !== 2 && len !== 4) || size < len) return 0;
    if (value === undefined) return Number(this.barRead(off, len as AccessSize));
    this.barWrite(off, len as AccessSize, value & (len === 4 ? 0xffffffff : (1 << (8 * len)) - 1));
    return 0;
  }

  private setIntx(level: boolean): void {
    const st = this.cfg.view.getUint16(PciCfg.STATUS, true);
    this.cfg.view.setUint16(PciCfg.STATUS, level ? st | STATUS_INTERRUPT : st & ~STATUS_INTERRUPT, true);
    const line = level && !(this.cfg.command & CMD_INTX_DISABLE);
    if (line === this.intxLevel) return;
    this.intxLevel = line;
    this.vm?.irqLine(this.placement.intxGsi, line);
  }

  protected interrupt(cause: number, q: Virtqueue | undefined): void {
    if (this.msix.enabled) {
      const v = q ? this.queueVectors[q.index]! : this.configVector;
      if (v !== VIRTIO_MSI_NO_VECTOR) this.msix.signal(v);
      return;
    }
    this.isr |= cause;
    this.setIntx(true);
  }

  protected resetTransport(): void {
    this.configVector = VIRTIO_MSI_NO_VECTOR;
    this.queueVectors.fill(VIRTIO_MSI_NO_VECTOR);
    this.isr = 0;
    this.setIntx(false);
  }

  /** Machine reset: the virtio device, and the PCI function back to its power-on configuration. */
  override reset(): void {
    this.resetDevice();
    // The machine closed its KVM VM: the doorbells and routes registered there are gone with it.
    this.vm = undefined;
    this.router.detachVm();
    this.ioeventfdsAt = undefined;
    this.intxLevel = false;
    this.cfg.bytes.set(this.initialConfig);
    this.msix.reset();
    this.updateMapping();
  }

  private validVector(v: number): number {
    return v < this.msix.size ? v : VIRTIO_MSI_NO_VECTOR;
  }

  // ---- BAR0 ----

  private barRead(off: number, size: AccessSize): number | bigint {
    if (off < BarLayout.COMMON + BarLayout.COMMON_SIZE) return this.commonRead(off, size);
    if (off === BarLayout.ISR) {
      // Reading ISR acknowledges the interrupt (spec 4.1.4.5).
      const v = this.isr;
      this.isr = 0;
      this.setIntx(false);
      return v;
    }
    if (off >= BarLayout.DEVICE && off < BarLayout.NOTIFY) {
      const c = this.device.config;
      const o = off - BarLayout.DEVICE;
      if (o + size > c.length || size === 8) return 0;
      let v = 0;
      for (let i = size - 1; i >= 0; i--) v = v * 256 + c[o + i]!;
      return v;
    }
    if (off >= BarLayout.MSIX_TABLE && off < BarLayout.MSIX_PBA) return this.msix.readTable(off - BarLayout.MSIX_TABLE, size);
    if (off >= BarLayout.MSIX_PBA && off < BarLayout.MSIX_PBA + 0x1000) return this.msix.readPba(off - BarLayout.MSIX_PBA, size);
    return 0;
  }

  private barWrite(off: number, size: AccessSize, value: number | bigint): void {
    if (off < BarLayout.COMMON + BarLayout.COMMON_SIZE) {
      this.commonWrite(off, size, value);
      return;
    }
    if (off >= BarLayout.DEVICE && off < BarLayout.NOTIFY) {
      this.device.writeConfig(off - BarLayout.DEVICE, size, Number(value));
      return;
    }
    if (off >= BarLayout.NOTIFY && off < BarLayout.MSIX_TABLE) {
      // Reaches here only when the write bypassed the ioeventfd (another width, or no VM yet).
      const q = (off - BarLayout.NOTIFY) / BarLayout.NOTIFY_MULTIPLIER;
      if (Number.isInteger(q)) this.kick(q);
      return;
    }
    if (off >= BarLayout.MSIX_TABLE && off < BarLayout.MSIX_PBA) this.msix.writeTable(off - BarLayout.MSIX_TABLE, size, value);
  }

  private commonRead(off: number, size: AccessSize): number | bigint {
    const c = this.common;
    const q = this.queues[this.queueSel];
    c.setUint32(CommonCfg.DEVICE_FEATURE_SELECT, this.deviceFeatureSel, true);
    c.setUint32(CommonCfg.DEVICE_FEATURE, this.deviceFeaturesWord(), true);
    c.setUint32(CommonCfg.DRIVER_FEATURE_SELECT, this.driverFeatureSel, true);
    c.setUint32(CommonCfg.DRIVER_FEATURE, this.driverFeaturesWord(), true);
    c.setUint16(CommonCfg.CONFIG_MSIX_VECTOR, this.configVector, true);
    c.setUint16(CommonCfg.NUM_QUEUES, this.queues.length, true);
    c.setUint8(CommonCfg.DEVICE_STATUS, this.status);
    c.setUint8(CommonCfg.CONFIG_GENERATION, this.configGeneration);
    c.setUint16(CommonCfg.QUEUE_SELECT, this.queueSel, true);
    c.setUint16(CommonCfg.QUEUE_SIZE, q ? q.size : 0, true);
    c.setUint16(CommonCfg.QUEUE_MSIX_VECTOR, q ? this.queueVectors[this.queueSel]! : VIRTIO_MSI_NO_VECTOR, true);
    c.setUint16(CommonCfg.QUEUE_ENABLE, q?.ready ? 1 : 0, true);
    c.setUint16(CommonCfg.QUEUE_NOTIFY_OFF, q ? this.queueSel : 0, true);
    const setAddr = (at: number, a: number) => {
      c.setUint32(at, a % 0x1_0000_0000, true);
      c.setUint32(at + 4, Math.floor(a / 0x1_0000_0000), true);
    };
    setAddr(CommonCfg.QUEUE_DESC, q?.descAddr ?? 0);
    setAddr(CommonCfg.QUEUE_DRIVER, q?.availAddr ?? 0);
    setAddr(CommonCfg.QUEUE_DEVICE, q?.usedAddr ?? 0);
    if (off + size > BarLayout.COMMON_SIZE) return 0;
    switch (size) {
      case 1:
        return c.getUint8(off);
      case 2:
        return c.getUint16(off, true);
      case 4:
        return c.getUint32(off, true);
      default:
        return c.getBigUint64(off, true);
    }
  }

  private commonWrite(off: number, size: AccessSize, value: number | bigint): void {
    if (size === 8) {
      const b = BigInt(value);
      this.commonWrite(off, 4, Number(b & 0xffffffffn));
      this.commonWrite(off + 4, 4, Number(b >> 32n));
      return;
    }
    const v = Number(value) >>> 0;
    const q = this.queues[this.queueSel];
    const qw = q && !q.ready ? q : undefined;
    switch (off) {
      case CommonCfg.DEVICE_FEATURE_SELECT:
        if (size === 4) this.deviceFeatureSel = v;
        break;
      case CommonCfg.DRIVER_FEATURE_SELECT:
        if (size === 4) this.driverFeatureSel = v;
        break;
      case CommonCfg.DRIVER_FEATURE:
        if (size === 4) this.writeDriverFeaturesWord(v);
        break;
      case CommonCfg.CONFIG_MSIX_VECTOR:
        if (size === 2) this.configVector = this.validVector(v);
        break;
      case CommonCfg.DEVICE_STATUS:
        // Status 0 resets the virtio device only: the PCI function keeps its BAR and MSI-X setup.
        if (size === 1) this.writeStatus(v);
        break;
      case CommonCfg.QUEUE_SELECT:
        if (size === 2) this.queueSel = v & 0xffff;
        break;
      case CommonCfg.QUEUE_SIZE:
        if (size === 2 && qw) qw.size = v & 0xffff;
        break;
      case CommonCfg.QUEUE_MSIX_VECTOR:
        if (size === 2 && q) this.queueVectors[this.queueSel] = this.validVector(v & 0xffff);
        break;
      case CommonCfg.QUEUE_ENABLE:
        if (size === 2 && q && v & 1 && !q.ready) {
          q.ready = true;
          this.queueEnabled(q);
        }
        break;
      case CommonCfg.QUEUE_DESC:
        if (qw) qw.descAddr = setLow(qw.descAddr, v);
        break;
      case CommonCfg.QUEUE_DESC + 4:
        if (qw) qw.descAddr = setHigh(qw.descAddr, v);
        break;
      case CommonCfg.QUEUE_DRIVER:
        if (qw) qw.availAddr = setLow(qw.availAddr, v);
        break;
      case CommonCfg.QUEUE_DRIVER + 4:
        if (qw) qw.availAddr = setHigh(qw.availAddr, v);
        break;
      case CommonCfg.QUEUE_DEVICE:
        if (qw) qw.usedAddr = setLow(qw.usedAddr, v);
        break;
      case CommonCfg.QUEUE_DEVICE + 4:
        if (qw) qw.usedAddr = setHigh(qw.usedAddr, v);
        break;
      default:
        break;
    }
  }

  // ---- migration ----

  save(): PciState {
    return {
      core: this.saveCore(),
      config: Array.from(this.cfg.bytes),
      msix: this.msix.save(),
      configVector: this.configVector,
      queueVectors: [...this.queueVectors],
      isr: this.isr,
    };
  }

  restore(s: PciState, version: number): void {
    const fail = (m: string) => new PersistError(this.persistName, m);
    if (version !== this.persistVersion) throw fail(`unsupported version ${version}`);
    if (!s || typeof s !== "object") throw fail("not an object");
    const p = this.coreProblem(s.core) ?? this.cfg.problem(s.config) ?? this.msix.problem(s.msix);
    if (p) throw fail(p);
    const vec = (v: unknown) => v === VIRTIO_MSI_NO_VECTOR || (Number.isInteger(v) && (v as number) >= 0 && (v as number) < this.msix.size);
    if (!vec(s.configVector)) throw fail("configVector is out of range");
    if (!Array.isArray(s.queueVectors) || s.queueVectors.length !== this.queues.length || !s.queueVectors.every(vec)) throw fail("queueVectors are out of range");
    if (!Number.isInteger(s.isr) || s.isr < 0 || s.isr > 3) throw fail("isr must be 0..3");
    this.cfg.bytes.set(s.config);
    const ctrl = this.cfg.view.getUint16(this.msixCap + MSIX_CTRL, true);
    if (((ctrl & MSIX_CTRL_ENABLE) !== 0) !== s.msix.enabled || ((ctrl & MSIX_CTRL_MASK) !== 0) !== s.msix.functionMask) {
      throw fail("the MSI-X enable/mask bits disagree with the configuration space");
    }
    this.msix.load(s.msix);
    this.updateMapping();
    try {
      this.loadCore(s.core);
    } catch (e) {
      throw fail((e as Error).message);
    }
    this.configVector = s.configVector;
    this.queueVectors.splice(0, this.queueVectors.length, ...s.queueVectors);
    this.isr = s.isr;
    this.intxLevel = false;
    this.setIntx(this.isr !== 0 && !this.msix.enabled);
    // An MSI-X message sent just before the source paused may not have reached the saved irqchip
    // (KVM injects irqfds from a worker): send one per vector in use; drivers tolerate spurious ones.
    if (this.msix.enabled && this.live) {
      const used = new Set([this.configVector, ...this.queueVectors].filter((v) => v !== VIRTIO_MSI_NO_VECTOR));
      for (const v of used) this.msix.signal(v);
    }
  }

  override close(): void {
    super.close();
    this.msix.close();
  }
}
