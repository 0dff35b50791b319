/**
 * virtio-blk end to end: kiln's command line → a device → the test guest's driver writing a pattern,
 * flushing and reading it back → the image file on the host checked byte for byte. Both transports
 * (virtio-mmio on microvm, virtio-pci on q35), read-only drives, O_DIRECT, two disks, interrupts
 * (IOAPIC pin, MSI-X, INTx), and the start-up errors a user can make.
 */
import { test, expect, describe } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { kiln, scratchDir, type KilnProcess } from "../lib/kiln.ts";
import { buildGuest } from "../lib/guest-build.ts";
import { bootGuest, stop } from "../lib/guest-vm.ts";
import { fnv1a64 } from "../lib/guest-lines.ts";

const SECTOR = 512;

/** The guest's pattern (workloads/vblk.c): word w of sector s on disk k, seed `seed`. */
function word(seed: number, k: number, sector: number, w: number): number {
  let h = ((sector * 128 + w) >>> 0) ^ Math.imul(seed, 0x9e3779b9) ^ Math.imul(k, 0x85ebca6b);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Sectors of [start, start+count) in the file that do not hold disk k's pattern. */
function badSectors(file: string, seed: number, k: number, start: number, count: number): number[] {
  const b = readFileSync(file);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const bad: number[] = [];
  for (let s = start; s < start + count; s++) {
    for (let w = 0; w < 128; w++) {
      if (v.getUint32(s * SECTOR + w * 4, true) !== word(seed, k, s, w)) {
        bad.push(s);
        break;
      }
    }
  }
  return bad;
}

/** key=value fields of the first line starting with `prefix` (and matching `also`). */
async function fields(k: KilnProcess, prefix: string, also = "", timeoutMs = 30_000): Promise<Record<string, string>> {
  const re = new RegExp(`^${prefix} .*${also}`);
  const m = await k.waitFor(re, timeoutMs);
  return Object.fromEntries([...m.input!.matchAll(/(\S+?)=(\S+)/g)].map((x) => [x[1]!, x[2]!]));
}

/** A scratch image of `bytes` filled with a byte pattern the guest never writes. */
function image(dir: string, name: string, bytes = 4 << 20): string {
  const path = join(dir, name);
  const data = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 4096) data.fill((i / 4096) & 0xff, i, i + 4096);
  writeFileSync(path, data);
  return path;
}

async function withDir<T>(fn: (dir: string) => Promise<T>, root?: string): Promise<T> {
  const { dir, cleanup } = root ? { dir: root, cleanup: () => {} } : scratchDir("kiln-vblk-");
  try {
    return await fn(dir);
  } finally {
    cleanup();
  }
}

test("the StratoVirt seed's q35 line: virtio-blk-pci at addr=0 (the host bridge moves aside); data reaches the file", async () => {
  await withDir(async (dir) => {
    const disk = image(dir, "rootfs.img");
    const sock = join(dir, "qmp.sock");
    // Verbatim but for paths, the guest's command line and -m; `-append` carries the test guest's workload.
    const k = kiln([
      "-machine", "q35",
      "-kernel", await buildGuest(),
      "-append", "pciscan ecam=0xe0000000 vblk vblk-write=0:2048 vblk-read=4096:64",
      "-drive", `file=${disk},id=rootfs,readonly=off,direct=off`,
      "-device", "virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0",
      "-qmp", `unix:${sock},server,nowait`,
      "-serial", "stdio",
    ]);
    try {
      await k.waitFor(/^VBLK-DONE dev=0/);
      expect(k.lines).toContain("PCI bdf=00:00.0 id=1af4:1042 class=0x010000 ecam=match");
      expect(k.lines).toContain("PCI bdf=00:01.0 id=8086:29c0 class=0x060000 ecam=match");
      expect(k.lines).toContain("VIRTIO dev=0 type=blk transport=pci loc=00:00.0 irq=16");
      expect((await fields(k, "VBLK", "disk=0")).cap).toBe(String((4 << 20) / SECTOR));
      expect(await fields(k, "VBLK-WRITE")).toMatchObject({ status: "ok", sectors: "2048" });
      expect(await fields(k, "VBLK-FLUSH")).toMatchObject({ status: "ok" });
      expect(await fields(k, "VBLK-VERIFY")).toMatchObject({ sectors: "2048", bad: "0", status: "ok" });
      const rd = await fields(k, "VBLK-READ");
      expect(rd.status).toBe("ok");
      expect(BigInt(rd.fnv1a64!)).toBe(fnv1a64(readFileSync(disk).subarray(4096 * SECTOR, 4160 * SECTOR)));
      expect(badSectors(disk, 1, 0, 0, 2048)).toEqual([]);
    } finally {
      await stop(k);
    }
  });
});

test("microvm, two disks with serials, interrupts through the IOAPIC: each file gets its own pattern", async () => {
  await withDir(async (dir) => {
    const a = image(dir, "a.img");
    const b = image(dir, "b.img", 8 << 20);
    const k = await bootGuest({
      machine: "microvm",
      append: "virtio-irq vblk vblk-seed=7 vblk-write=100:700",
      extra: [
        "-drive", `file=${a},id=da,serial=disk-a`, "-device", "virtio-blk-device,drive=da,id=ba",
        "-drive", `file=${b},id=db`, "-device", "virtio-blk-device,drive=db,id=bb,serial=disk-b",
      ],
    });
    try {
      await k.waitFor(/^VBLK-DONE dev=1/);
      expect(k.lines.find((l) => l.startsWith("KILN-GUEST"))).toContain("virtio_mmio.device=4K@0xd0000000:16 virtio_mmio.device=4K@0xd0001000:17");
      expect(await fields(k, "VBLK", "disk=0")).toMatchObject({ dev: "0", serial: "disk-a", cap: "8192", ro: "0" });
      expect(await fields(k, "VBLK", "disk=1")).toMatchObject({ dev: "1", serial: "disk-b", cap: "16384" });
      for (const dev of ["0", "1"]) {
        expect(await fields(k, "VBLK-VERIFY", `dev=${dev}`)).toMatchObject({ bad: "0", sectors: "700" });
        const irq = await fields(k, "VIRTIO-IRQ", `dev=${dev}`);
        expect(irq.mode).toBe("ioapic");
        expect(Number(irq.count)).toBeGreaterThan(0);
      }
      expect(badSectors(a, 7, 0, 100, 700)).toEqual([]);
      expect(badSectors(b, 7, 1, 100, 700)).toEqual([]);
      // Untouched sectors keep what the host put there.
      expect(readFileSync(a)[99 * SECTOR]).toBe(((99 * SECTOR) / 4096) & 0xff);
    } finally {
      await stop(k);
    }
  });
});

test("readonly=on: the guest sees RO, its writes fail with an I/O error and never reach the file", async () => {
  await withDir(async (dir) => {
    const disk = image(dir, "ro.img");
    const before = readFileSync(disk);
    const k = await bootGuest({
      machine: "q35",
      append: "vblk vblk-write=0:16 vblk-zero=32:8 vblk-read=0:64",
      extra: ["-drive", `file=${disk},id=d0,readonly=on`, "-device", "virtio-blk-pci,drive=d0,addr=0x5"],
    });
    try {
      await k.waitFor(/^VBLK-DONE/);
      expect((await fields(k, "VBLK", "disk=0")).ro).toBe("1");
      expect(await fields(k, "VBLK-WRITE")).toMatchObject({ status: "ioerr", sectors: "0" });
      expect((await fields(k, "VBLK-ZERO")).status).toBe("ioerr");
      expect(BigInt((await fields(k, "VBLK-READ")).fnv1a64!)).toBe(fnv1a64(before.subarray(0, 64 * SECTOR)));
      expect(readFileSync(disk).equals(before)).toBe(true);
    } finally {
      await stop(k);
    }
  });
});

describe("direct=on", () => {
  test("O_DIRECT on a filesystem that has it; write-zeroes too", async () => {
    await withDir(async (dir) => {
      const disk = image(dir, "direct.img");
      const k = await bootGuest({
        append: "vblk vblk-write=1:333 vblk-zero=400:9",
        extra: ["-drive", `file=${disk},id=d0,direct=on`, "-device", "virtio-blk-device,drive=d0"],
      });
      try {
        expect(await fields(k, "VBLK-VERIFY")).toMatchObject({ bad: "0", sectors: "333" });
        expect(await fields(k, "VBLK-ZERO")).toMatchObject({ status: "ok", bad: "0" });
        expect(badSectors(disk, 1, 0, 1, 333)).toEqual([]);
        expect(readFileSync(disk).subarray(400 * SECTOR, 409 * SECTOR).every((x) => x === 0)).toBe(true);
        expect(k.stderr).not.toContain("O_DIRECT");
      } finally {
        await stop(k);
      }
    });
  });

  test("a filesystem without O_DIRECT (ramfs) is said once at start-up, and the disk still works", async () => {
    // tmpfs has O_DIRECT since Linux 6.6; ramfs still refuses it. Mounting needs root, as the tap tests do.
    await withDir(async (dir) => {
      const mnt = join(dir, "ramfs");
      Bun.spawnSync(["mkdir", mnt]);
      const m = Bun.spawnSync(["mount", "-t", "ramfs", "kiln-test", mnt], { stderr: "pipe" });
      expect(m.exitCode, `mount -t ramfs: ${m.stderr.toString()}`).toBe(0);
      try {
        const disk = image(mnt, "ramfs.img");
        const k = await bootGuest({
          append: "vblk vblk-write=0:64",
          extra: ["-drive", `file=${disk},id=d0,direct=on`, "-device", "virtio-blk-device,drive=d0"],
        });
        try {
          expect(await fields(k, "VBLK-VERIFY")).toMatchObject({ bad: "0" });
          expect(k.stderr).toBe(`kiln: warn: -drive id=d0: file=${disk}: the filesystem does not support O_DIRECT (direct=on); using the page cache instead\n`);
          expect(badSectors(disk, 1, 0, 0, 64)).toEqual([]);
        } finally {
          await stop(k);
        }
      } finally {
        Bun.spawnSync(["umount", mnt]);
      }
    });
  });
});

test("q35 interrupts: MSI-X by default, INTx when the driver leaves MSI-X off", async () => {
  await withDir(async (dir) => {
    const disk = image(dir, "irq.img");
    for (const [irq, mode] of [["virtio-irq", "msix"], ["virtio-irq=intx", "intx"]] as const) {
      const k = await bootGuest({
        machine: "q35",
        append: `${irq} vblk vblk-write=0:300`,
        extra: ["-drive", `file=${disk},id=d0`, "-device", "virtio-blk-pci,drive=d0,addr=0x1f"],
      });
      try {
        expect(await fields(k, "VBLK-VERIFY")).toMatchObject({ bad: "0" });
        const f = await fields(k, "VIRTIO-IRQ");
        expect(f.mode).toBe(mode);
        expect(Number(f.count)).toBeGreaterThan(0);
      } finally {
        await stop(k);
      }
    }
  });
});

describe("start-up errors name what is wrong", () => {
  test("a missing image file, or one another VM is using: status 1", async () => {
    await withDir(async (dir) => {
      const elf = await buildGuest();
      const base = ["-machine", "microvm", "-kernel", elf, "-serial", "none"];
      const missing = kiln([...base, "-drive", `file=${join(dir, "nope.img")},id=d0`, "-device", "virtio-blk-device,drive=d0"]);
      expect(await missing.exitCode()).toBe(1);
      expect(missing.stderr).toBe(`kiln: error: -drive id=d0: file=${join(dir, "nope.img")}: no such file\n`);

      const disk = image(dir, "busy.img");
      const first = await bootGuest({ append: "vblk", extra: ["-drive", `file=${disk},id=d0`, "-device", "virtio-blk-device,drive=d0"] });
      try {
        await first.waitFor(/^READY/);
        const second = kiln([...base, "-drive", `file=${disk},id=d1`, "-device", "virtio-blk-device,drive=d1"]);
        expect(await second.exitCode()).toBe(1);
        expect(second.stderr).toContain(`-drive id=d1: file=${disk}: the image is in use by another process`);
        // Read-only users are refused too while a writer holds it.
        const ro = kiln([...base, "-drive", `file=${disk},id=d2,readonly=on`, "-device", "virtio-blk-device,drive=d2"]);
        expect(await ro.exitCode()).toBe(1);
        expect(ro.stderr).toContain("in use by another process");
      } finally {
        await stop(first);
      }
    });
  });

  test("bad device options: status 2 and one line naming the problem", async () => {
    const elf = await buildGuest();
    const q35 = ["-machine", "q35", "-kernel", elf, "-serial", "none", "-drive", "file=/dev/null,id=d0"];
    const cases: [string[], RegExp][] = [
      [[...q35, "-device", "virtio-blk-pci,drive=nosuch,addr=3"], /no -drive with id 'nosuch'/],
      [[...q35, "-drive", "file=/dev/null,id=d1", "-device", "virtio-blk-pci,drive=d0,addr=3", "-device", "virtio-blk-pci,drive=d1,addr=3"], /addr 0x3\.0 is already used/],
      [[...q35, "-device", "virtio-blk-pci,drive=d0,bus=pcie.7,addr=3"], /unknown bus 'pcie\.7'/],
      [[...q35, "-device", "virtio-blk-device,drive=d0"], /virtio-mmio device, for machine microvm/],
      [[...q35, "-device", "virtio-blk-pci,drive=d0,addr=3", "-device", "virtio-blk-pci,drive=d0,addr=4"], /drive 'd0' is already used/],
    ];
    for (const [args, re] of cases) {
      const k = kiln(args);
      expect(await k.exitCode()).toBe(2);
      expect(k.stderr.trim().split("\n").length).toBe(1);
      expect(k.stderr).toMatch(re);
    }
  });
});

test("a guest reboot rebuilds the KVM VM: the devices reset and work again (doorbells and MSI-X on the new VM)", async () => {
  await withDir(async (dir) => {
    const disk = image(dir, "reboot.img");
    for (const [machine, dev, irq] of [
      ["microvm", "virtio-blk-device,drive=d0", "virtio-irq"],
      ["q35", "virtio-blk-pci,drive=d0,addr=2", "virtio-irq"],
    ] as const) {
      const k = await bootGuest({ machine, append: `${irq} vblk vblk-write=0:64 runfor=200 then=reset`, extra: ["-drive", `file=${disk},id=d0`, "-device", dev] });
      try {
        await k.waitFor(/^ACTION /);
        const after = k.lines.length;
        await k.waitFor(/^VBLK-VERIFY dev=0 sectors=64 bad=0/, 20_000, after);
        await k.waitFor(/^VIRTIO-IRQ dev=0 mode=\S+ vector=0x40 count=[1-9]/, 20_000, after);
      } finally {
        await stop(k);
      }
    }
  });
});

test("-drive throttling.iops-total holds the guest's disk to that many requests per second", async () => {
  await withDir(async (dir) => {
    const disk = image(dir, "slow.img", 8 << 20);
    const run = async (throttle: string) => {
      const k = await bootGuest({
        mem: "256M",
        append: "vblk vblk-bench=randread vblk-reqs=600 vblk-qd=8",
        extra: ["-drive", `file=${disk},id=d0,direct=off${throttle}`, "-device", "virtio-blk-device,drive=d0"],
      });
      try {
        const f = await fields(k, "VBLK-BENCH");
        expect(Number(f.errors)).toBe(0);
        expect(Number(f.reqs)).toBe(600);
        return Number(f.us) / 1e6;
      } finally {
        await stop(k);
      }
    };
    const free = await run("");
    // 600 requests at 300/s: the first burst (30) is free, the rest takes at least 570/300 = 1.9 s.
    const limited = await run(",throttling.iops-total=300");
    expect(limited).toBeGreaterThanOrEqual(1.8);
    expect(limited).toBeLessThan(6);
    expect(free).toBeLessThan(limited / 4);
  });
}, 60_000);
