/**
 * virtio-pci on q35's root bus: configuration space and capabilities as a driver walks them, BAR
 * sizing and moving (with the doorbells following), MSI-X masking and routes, INTx, the configuration
 * access capability, ECAM, the host bridge's slot, and migration of the whole function.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { Buses } from "../../src/devices/buses.ts";
import { PciRoot } from "../../src/devices/pci/host.ts";
import { PciEcam } from "../../src/devices/pci/ecam.ts";
import { GsiRouter, MSI_GSI_BASE, type VmLink } from "../../src/devices/pci/irq-routing.ts";
import { PciCfg, CMD_MEMORY } from "../../src/devices/pci/config-space.ts";
import { VirtioPciTransport, BarLayout, CommonCfg, VirtioPciCap, VIRTIO_PCI_BAR_SIZE } from "../../src/devices/virtio/pci.ts";
import { VirtioBlk } from "../../src/devices/virtio/blk.ts";
import { RawImage } from "../../src/block/raw-image.ts";
import { VirtioDevices } from "../../src/vmm/virtio-devices.ts";
import { readFd } from "../../ffi/libc.ts";
import type { IrqRoute } from "../../src/kvm/vm.ts";
import type { DeviceConfig } from "../../src/cli/config.ts";
import { STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK } from "../../src/devices/virtio/constants.ts";

const MiB = 1 << 20;
let mem: GuestMemory;
let dir: string;
beforeAll(() => {
  mem = GuestMemory.create([{ gpa: 0, size: 16 * MiB }]);
  dir = mkdtempSync(join(tmpdir(), "kiln-vpci-"));
});
afterAll(() => {
  mem.destroy();
  rmSync(dir, { recursive: true, force: true });
});

class FakeVm implements VmLink {
  ioeventfds: { fd: number; addr: number; len: number; deassign?: boolean }[] = [];
  irqfds: { fd: number; gsi: number }[] = [];
  lines: [number, boolean][] = [];
  routing: IrqRoute[] = [];
  routingCalls = 0;
  ioeventfd(fd: number, addr: number, len: number, o: { deassign?: boolean } = {}): void {
    this.ioeventfds.push({ fd, addr, len, ...o });
  }
  irqfd(fd: number, gsi: number): void {
    this.irqfds.push({ fd, gsi });
  }
  irqLine(gsi: number, level: boolean): void {
    this.lines.push([gsi, level]);
  }
  setGsiRouting(routes: IrqRoute[]): void {
    this.routing = routes;
    this.routingCalls++;
  }
  /** Doorbell addresses currently assigned. */
  doorbells(): number[] {
    const live = new Map<string, number>();
    for (const e of this.ioeventfds) {
      const k = `${e.fd}@${e.addr}`;
      if (e.deassign) live.delete(k);
      else live.set(k, e.addr);
    }
    return [...live.values()].sort((a, b) => a - b);
  }
}

const ISA: IrqRoute[] = [{ gsi: 4, kind: "irqchip", chip: 2, pin: 4 }];

function drain(fd: number): number {
  const b = new BigUint64Array(1);
  try {
    readFd(fd, new Uint8Array(b.buffer));
    return Number(b[0]);
  } catch {
    return 0;
  }
}

function makeDevice(name: string, slot = 3, numQueues = 2) {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(64 * 1024));
  const image = RawImage.open({ path, readOnly: false, direct: false, lock: true, what: name, log: () => {} });
  const buses = new Buses();
  const root = new PciRoot();
  const router = new GsiRouter();
  const devfn = slot << 3;
  const t = new VirtioPciTransport(
    new VirtioBlk({ image, readOnly: false, serial: null, numQueues, queueSize: 32 }),
    mem,
    () => {},
    { location: `pcie.0:0${slot}.0`, devfn, multifunction: false, barAddr: 0xc0000000 + devfn * 0x10000, intxGsi: 19 },
    buses,
    router,
  );
  root.attach(devfn, t.pciFunction);
  const vm = new FakeVm();
  router.attachVm(vm, ISA);
  t.attachVm(vm);
  const cfg = {
    r8: (off: number) => root.read(0, devfn, off, 1),
    r16: (off: number) => root.read(0, devfn, off, 2),
    r32: (off: number) => root.read(0, devfn, off, 4),
    w16: (off: number, v: number) => root.write(0, devfn, off, 2, v),
    w32: (off: number, v: number) => root.write(0, devfn, off, 4, v),
  };
  const data = new Uint8Array(8);
  const dv = new DataView(data.buffer);
  const bar = {
    r: (addr: number, size: 1 | 2 | 4) => {
      buses.mmio(false, addr, size, data);
      return size === 1 ? data[0]! : size === 2 ? dv.getUint16(0, true) : dv.getUint32(0, true);
    },
    w: (addr: number, size: 1 | 2 | 4, v: number) => {
      if (size === 1) data[0] = v;
      else if (size === 2) dv.setUint16(0, v, true);
      else dv.setUint32(0, v >>> 0, true);
      buses.mmio(true, addr, size, data);
    },
  };
  return { t, root, buses, router, vm, cfg, bar, devfn };
}

/** Walk the capability list as a driver does: virtio caps by cfg_type, and MSI-X. */
function walkCaps(cfg: ReturnType<typeof makeDevice>["cfg"]) {
  const virtio = new Map<number, { bar: number; offset: number; length: number; at: number }>();
  let msix = 0;
  for (let p = cfg.r8(PciCfg.CAPABILITIES); p; p = cfg.r8(p + 1)) {
    const id = cfg.r8(p);
    if (id === 0x11) msix = p;
    if (id === 0x09) virtio.set(cfg.r8(p + 3), { bar: cfg.r8(p + 4), offset: cfg.r32(p + 8), length: cfg.r32(p + 12), at: p });
  }
  return { virtio, msix };
}

describe("virtio-pci configuration space", () => {
  test("identity, capabilities and the pre-assigned 64-bit BAR", () => {
    const { t, cfg } = makeDevice("ident.img");
    try {
      expect(cfg.r16(PciCfg.VENDOR_ID)).toBe(0x1af4);
      expect(cfg.r16(PciCfg.DEVICE_ID)).toBe(0x1042);
      expect(cfg.r8(PciCfg.REVISION)).toBe(1);
      expect(cfg.r16(PciCfg.STATUS) & 0x10).toBe(0x10);
      expect(cfg.r8(PciCfg.INTERRUPT_PIN)).toBe(1);
      expect(cfg.r8(PciCfg.INTERRUPT_LINE)).toBe(19);
      const { virtio, msix } = walkCaps(cfg);
      expect([...virtio.keys()].sort()).toEqual([VirtioPciCap.COMMON, VirtioPciCap.NOTIFY, VirtioPciCap.ISR, VirtioPciCap.DEVICE, VirtioPciCap.PCI_CFG]);
      expect(virtio.get(VirtioPciCap.COMMON)).toMatchObject({ bar: 0, offset: BarLayout.COMMON, length: 0x38 });
      expect(cfg.r32(virtio.get(VirtioPciCap.NOTIFY)!.at + 16)).toBe(BarLayout.NOTIFY_MULTIPLIER);
      expect(msix).not.toBe(0);
      expect(cfg.r16(msix + 2) & 0x7ff).toBe(2); // 3 vectors: two queues + configuration
      expect(cfg.r32(msix + 4)).toBe(BarLayout.MSIX_TABLE);
      const lo = cfg.r32(PciCfg.BAR0);
      expect(lo & 0xf).toBe(0b0100); // 64-bit memory
      expect((lo & ~0xf) >>> 0).toBe(0xc0000000 + (3 << 3) * 0x10000);
      // Identity registers are read-only.
      cfg.w32(0, 0x12345678);
      expect(cfg.r16(PciCfg.DEVICE_ID)).toBe(0x1042);
      // Extended configuration space (ECAM reads beyond 256 bytes): no capabilities.
      expect(cfg.r32(0x100)).toBe(0);
    } finally {
      t.close();
    }
  });

  test("BAR sizing, decoding only with memory enabled, and doorbells that follow the BAR", () => {
    const { t, cfg, bar, vm } = makeDevice("bar.img");
    try {
      const base = 0xc0000000 + (3 << 3) * 0x10000;
      expect(vm.doorbells()).toEqual([]); // memory decoding is off at power-on
      expect(bar.r(base + CommonCfg.NUM_QUEUES, 2)).toBe(0xffff); // unclaimed: all ones
      cfg.w32(PciCfg.BAR0, 0xffffffff);
      cfg.w32(PciCfg.BAR0 + 4, 0xffffffff);
      expect(cfg.r32(PciCfg.BAR0)).toBe((~(VIRTIO_PCI_BAR_SIZE - 1) | 0b0100) >>> 0);
      expect(cfg.r32(PciCfg.BAR0 + 4)).toBe(0xffffffff);
      cfg.w32(PciCfg.BAR0, base);
      cfg.w32(PciCfg.BAR0 + 4, 0);
      cfg.w16(PciCfg.COMMAND, CMD_MEMORY);
      expect(bar.r(base + CommonCfg.NUM_QUEUES, 2)).toBe(2);
      expect(vm.doorbells()).toEqual([base + BarLayout.NOTIFY, base + BarLayout.NOTIFY + 4]);
      // The guest moves the BAR above 4 GiB: registers and doorbells move with it.
      cfg.w32(PciCfg.BAR0 + 4, 0x1);
      const high = 0x1_0000_0000 + base;
      expect(t.mappedAt).toBe(high);
      expect(bar.r(high + CommonCfg.NUM_QUEUES, 2)).toBe(2);
      expect(vm.doorbells()).toEqual([high + BarLayout.NOTIFY, high + BarLayout.NOTIFY + 4]);
      cfg.w16(PciCfg.COMMAND, 0);
      expect(vm.doorbells()).toEqual([]);
      expect(t.mappedAt).toBeUndefined();
    } finally {
      t.close();
    }
  });
});

/** Bring the device to DRIVER_OK through the common configuration (queues left disabled). */
function driverOk(bar: ReturnType<typeof makeDevice>["bar"], base: number): void {
  bar.w(base + CommonCfg.DEVICE_STATUS, 1, 0);
  bar.w(base + CommonCfg.DEVICE_STATUS, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  bar.w(base + CommonCfg.DRIVER_FEATURE_SELECT, 4, 1);
  bar.w(base + CommonCfg.DRIVER_FEATURE, 4, 1); // VERSION_1
  bar.w(base + CommonCfg.DEVICE_STATUS, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  bar.w(base + CommonCfg.DEVICE_STATUS, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

describe("interrupts", () => {
  test("MSI-X: routes follow the table; a masked vector stays pending until unmasked; vectors are validated", () => {
    const { t, cfg, bar, vm } = makeDevice("msix.img");
    try {
      const base = t.placement.barAddr;
      cfg.w16(PciCfg.COMMAND, CMD_MEMORY);
      const { msix } = walkCaps(cfg);
      const table = base + BarLayout.MSIX_TABLE;
      // Enable MSI-X with the function masked, program vector 1.
      cfg.w16(msix + 2, 0xc000);
      bar.w(table + 16, 4, 0xfee00000);
      bar.w(table + 20, 4, 0);
      bar.w(table + 24, 4, 0x45);
      expect(vm.irqfds.length).toBe(3);
      expect(vm.irqfds[1]!.gsi).toBe(MSI_GSI_BASE + 1);
      driverOk(bar, base);
      bar.w(base + CommonCfg.QUEUE_SELECT, 2, 0);
      bar.w(base + CommonCfg.QUEUE_MSIX_VECTOR, 2, 1);
      expect(bar.r(base + CommonCfg.QUEUE_MSIX_VECTOR, 2)).toBe(1);
      bar.w(base + CommonCfg.QUEUE_MSIX_VECTOR, 2, 7); // no such vector
      expect(bar.r(base + CommonCfg.QUEUE_MSIX_VECTOR, 2)).toBe(0xffff);
      bar.w(base + CommonCfg.QUEUE_MSIX_VECTOR, 2, 1);

      // The device raises queue 0's interrupt: vector 1 is masked (entry mask set at reset).
      (t as unknown as { interrupt(c: number, q: unknown): void }).interrupt(1, t.queues[0]);
      expect(drain(t.msix.fds[1]!.fd)).toBe(0);
      expect(bar.r(base + BarLayout.MSIX_PBA, 4)).toBe(0b10);
      bar.w(table + 28, 4, 0); // unmask the entry; the function is still masked
      expect(drain(t.msix.fds[1]!.fd)).toBe(0);
      cfg.w16(msix + 2, 0x8000); // unmask the function: the pending message goes out, on its route
      expect(drain(t.msix.fds[1]!.fd)).toBe(1);
      expect(bar.r(base + BarLayout.MSIX_PBA, 4)).toBe(0);
      expect(vm.routing).toContainEqual({ gsi: MSI_GSI_BASE + 1, kind: "msi", addressLo: 0xfee00000, addressHi: 0, data: 0x45 });
      expect(vm.routing).toContainEqual(ISA[0]);
      (t as unknown as { interrupt(c: number, q: unknown): void }).interrupt(1, t.queues[0]);
      expect(drain(t.msix.fds[1]!.fd)).toBe(1);
      expect(vm.lines).toEqual([]); // no INTx with MSI-X on
    } finally {
      t.close();
    }
  });

  test("INTx when MSI-X is off: the line rises with ISR and falls when the driver reads it", () => {
    const { t, cfg, bar, vm } = makeDevice("intx.img");
    try {
      const base = t.placement.barAddr;
      cfg.w16(PciCfg.COMMAND, CMD_MEMORY);
      driverOk(bar, base);
      (t as unknown as { interrupt(c: number, q: unknown): void }).interrupt(1, t.queues[0]);
      expect(vm.lines).toEqual([[19, true]]);
      expect(cfg.r16(PciCfg.STATUS) & 0x8).toBe(0x8);
      expect(bar.r(base + BarLayout.ISR, 1)).toBe(1);
      expect(vm.lines).toEqual([
        [19, true],
        [19, false],
      ]);
      expect(bar.r(base + BarLayout.ISR, 1)).toBe(0);
      // INTx disabled in the command register: status shows it, the line stays low.
      cfg.w16(PciCfg.COMMAND, CMD_MEMORY | (1 << 10));
      (t as unknown as { interrupt(c: number, q: unknown): void }).interrupt(2, undefined);
      expect(vm.lines.length).toBe(2);
      expect(cfg.r16(PciCfg.STATUS) & 0x8).toBe(0x8);
    } finally {
      t.close();
    }
  });

  test("the PCI configuration access capability reaches the BAR without mapping it", () => {
    const { t, cfg } = makeDevice("pcicfg.img");
    try {
      const { virtio } = walkCaps(cfg);
      const at = virtio.get(VirtioPciCap.PCI_CFG)!.at;
      cfg.w32(at + 4, 0); // bar 0 (byte at +4; the write covers id/padding too)
      cfg.w32(at + 8, BarLayout.COMMON + CommonCfg.NUM_QUEUES);
      cfg.w32(at + 12, 2);
      expect(cfg.r32(at + 16) & 0xffff).toBe(2);
      cfg.w32(at + 8, BarLayout.DEVICE); // capacity: 64 KiB = 128 sectors
      cfg.w32(at + 12, 4);
      expect(cfg.r32(at + 16)).toBe(128);
    } finally {
      t.close();
    }
  });
});

describe("migration of a virtio-pci function", () => {
  test("BAR, MSI-X table and queue setup move to a fresh device; a mismatched device is refused", () => {
    const a = makeDevice("mig-a.img");
    const b = makeDevice("mig-b.img");
    const c = makeDevice("mig-c.img", 3, 1);
    try {
      const base = a.t.placement.barAddr;
      a.cfg.w32(PciCfg.BAR0, base + 0x8000 * 4);
      a.cfg.w16(PciCfg.COMMAND, CMD_MEMORY);
      const { msix } = walkCaps(a.cfg);
      a.cfg.w16(msix + 2, 0x8000);
      const moved = base + 0x8000 * 4;
      a.bar.w(moved + BarLayout.MSIX_TABLE, 4, 0xfee01000);
      a.bar.w(moved + BarLayout.MSIX_TABLE + 8, 4, 0x51);
      a.bar.w(moved + BarLayout.MSIX_TABLE + 12, 4, 0);
      driverOk(a.bar, moved);
      const saved = JSON.parse(JSON.stringify(a.t.save()));
      a.t.close();
      b.t.restore(saved, 1);
      expect(b.t.mappedAt).toBe(moved);
      expect(b.vm.doorbells()).toEqual([moved + BarLayout.NOTIFY, moved + BarLayout.NOTIFY + 4]);
      expect(b.bar.r(moved + CommonCfg.DEVICE_STATUS, 1)).toBe(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
      expect(b.vm.routing).toContainEqual({ gsi: b.t.msix.gsis[0]!, kind: "msi", addressLo: 0xfee01000, addressHi: 0, data: 0x51 });
      // A different function (one queue: a smaller MSI-X table) does not accept it.
      expect(() => c.t.restore(saved, 1)).toThrow(/queues must have 1 entries/);
      expect(() => c.t.restore({ ...saved, core: { ...saved.core, queues: saved.core.queues.slice(0, 1) } }, 1)).toThrow(/read-only bits/);
    } finally {
      b.t.close();
      c.t.close();
    }
  });
});

describe("the PCI root", () => {
  test("ECAM reaches the same functions as 0xCF8/0xCFC", () => {
    const { t, root, devfn, cfg } = makeDevice("ecam.img");
    try {
      const ecam = new PciEcam(root);
      expect(ecam.mmioRead((devfn << 12) + 0, 4)).toBe(0x10421af4);
      expect(ecam.mmioRead((1 << 20) + (devfn << 12), 4)).toBe(0xffffffff); // bus 1: nothing
      expect(ecam.mmioRead((devfn << 12) + 2, 4)).toBe(0xffffffff); // misaligned
      ecam.mmioWrite((devfn << 12) + PciCfg.COMMAND, 2, CMD_MEMORY);
      expect(cfg.r16(PciCfg.COMMAND)).toBe(CMD_MEMORY);
      expect(t.mappedAt).toBe(t.placement.barAddr);
    } finally {
      t.close();
    }
  });

  test("the host bridge keeps 00.0 unless the command line puts a device there", () => {
    const dev = (slot: number): DeviceConfig => ({
      driver: "virtio-blk-pci",
      id: null,
      drive: "d",
      pci: { bus: "pcie.0", slot, function: 0, multifunction: false },
      serial: null,
      numQueues: 1,
      queueSize: 128,
      bootIndex: null,
    });
    expect(VirtioDevices.hostBridgeDevfn([])).toBe(0);
    expect(VirtioDevices.hostBridgeDevfn([dev(3)])).toBe(0);
    expect(VirtioDevices.hostBridgeDevfn([dev(0)])).toBe(1 << 3);
    expect(VirtioDevices.hostBridgeDevfn([dev(0), dev(1), dev(2)])).toBe(3 << 3);
  });

  test("GSI routing keeps the machine's routes and adds one per live MSI vector", () => {
    const r = new GsiRouter();
    const vm = new FakeVm();
    const g = r.allocate();
    expect(g).toBe(MSI_GSI_BASE);
    r.attachVm(vm, ISA);
    expect(vm.routing).toEqual(ISA);
    r.setMsi(g, 0xfee00000, 0, 0x30);
    const calls = vm.routingCalls;
    r.setMsi(g, 0xfee00000, 0, 0x30); // unchanged: no ioctl
    expect(vm.routingCalls).toBe(calls);
    expect(vm.routing).toEqual([...ISA, { gsi: g, kind: "msi", addressLo: 0xfee00000, addressHi: 0, data: 0x30 }]);
    // A new VM (reboot) gets the whole table again.
    const vm2 = new FakeVm();
    r.attachVm(vm2, ISA);
    expect(vm2.routing.length).toBe(2);
  });
});
