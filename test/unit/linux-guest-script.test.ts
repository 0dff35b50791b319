/**
 * scripts/fetch-linux-guest.sh: fetches Debian's cloud kernel and busybox-static and prepares the Linux guest
 * (vmlinuz, vmlinux with its PVH note, a busybox initramfs with the virtio modules). The first run downloads
 * ~28 MB from Debian's mirrors (apt-get download); the second must be a cache hit that touches nothing.
 */
import { test, expect } from "bun:test";
import { readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dir, "../..");
const SCRIPT = join(REPO, "scripts/fetch-linux-guest.sh");
const OUT = join(REPO, "build/linux");

/** The modules the initramfs carries, in an insmod order that satisfies their `depends=`. */
const MODULES = [
  "virtio_ring",
  "virtio",
  "virtio_mmio",
  "virtio_pci_modern_dev",
  "virtio_pci_legacy_dev",
  "virtio_pci",
  "virtio_blk",
  "failover",
  "net_failover",
  "virtio_net",
];

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

async function runScript(...args: string[]): Promise<RunResult> {
  const t0 = performance.now();
  // Run from another directory: the default OUTDIR must not depend on the cwd.
  const proc = Bun.spawn(["bash", SCRIPT, ...args], { cwd: "/", stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, stdout, stderr, ms: performance.now() - t0 };
}

function parseVersion(text: string): Map<string, string> {
  const kv = new Map<string, string>();
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) kv.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return kv;
}

/** The value of the first ELF note named `owner` with type `type`, from the PT_NOTE program headers. */
function findElfNote(elf: Uint8Array, owner: string, type: number): Uint8Array | undefined {
  const dv = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const phoff = Number(dv.getBigUint64(0x20, true));
  const phentsize = dv.getUint16(0x36, true);
  const phnum = dv.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (dv.getUint32(ph, true) !== 4) continue; // PT_NOTE
    const off = Number(dv.getBigUint64(ph + 8, true));
    const size = Number(dv.getBigUint64(ph + 0x20, true));
    let p = off;
    while (p + 12 <= off + size) {
      const namesz = dv.getUint32(p, true);
      const descsz = dv.getUint32(p + 4, true);
      const ntype = dv.getUint32(p + 8, true);
      const name = new TextDecoder().decode(elf.subarray(p + 12, p + 12 + Math.max(0, namesz - 1)));
      const desc = p + 12 + ((namesz + 3) & ~3);
      if (name === owner && ntype === type) return elf.subarray(desc, desc + descsz);
      p = desc + ((descsz + 3) & ~3);
    }
  }
  return undefined;
}

interface CpioEntry {
  name: string;
  mode: number;
  data: Uint8Array;
}

/** Parses a newc ("070701") cpio archive. */
function parseNewc(buf: Uint8Array): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const text = new TextDecoder();
  const hex = (off: number, field: number): number =>
    parseInt(text.decode(buf.subarray(off + 6 + field * 8, off + 6 + field * 8 + 8)), 16);
  let p = 0;
  for (;;) {
    const magic = text.decode(buf.subarray(p, p + 6));
    if (magic !== "070701") throw new Error(`bad cpio magic ${JSON.stringify(magic)} at ${p}`);
    const mode = hex(p, 1);
    const filesize = hex(p, 6);
    const namesize = hex(p, 11);
    const name = text.decode(buf.subarray(p + 110, p + 110 + namesize - 1));
    const dataOff = (p + 110 + namesize + 3) & ~3;
    if (name === "TRAILER!!!") break;
    entries.push({ name, mode, data: buf.subarray(dataOff, dataOff + filesize) });
    p = (dataOff + filesize + 3) & ~3;
  }
  return entries;
}

test("fetch-linux-guest.sh builds vmlinuz, vmlinux (PVH) and a busybox initramfs", async () => {
  const run = await runScript();
  if (run.code !== 0) throw new Error(`script failed (${run.code}):\n${run.stdout}\n${run.stderr}`);

  const version = parseVersion(await Bun.file(join(OUT, "VERSION")).text());
  expect(version.get("kernel_version")).toMatch(/^\d+\.\d+\.\d+-\S+$/);
  const pkg = version.get("kernel_package") ?? "";
  expect(pkg).toMatch(/^linux-image-\d+\.\d+\.\d+-\d+-cloud-amd64$/);
  const release = pkg.slice("linux-image-".length);
  expect(version.get("vmlinuz")).toBe(join(OUT, "vmlinuz"));
  expect(version.get("vmlinux")).toBe(join(OUT, "vmlinux"));
  expect(version.get("initramfs")).toBe(join(OUT, "initramfs.cpio.gz"));

  // vmlinuz: a bzImage.
  const vmlinuz = new Uint8Array(await Bun.file(join(OUT, "vmlinuz")).arrayBuffer());
  expect(new TextDecoder().decode(vmlinuz.subarray(0x202, 0x206))).toBe("HdrS");

  // vmlinux: x86-64 ELF with XEN_ELFNOTE_PHYS32_ENTRY (18), the PVH entry point.
  const vmlinux = new Uint8Array(await Bun.file(join(OUT, "vmlinux")).arrayBuffer());
  expect(Array.from(vmlinux.subarray(0, 6))).toEqual([0x7f, 0x45, 0x4c, 0x46, 2, 1]);
  expect(new DataView(vmlinux.buffer).getUint16(18, true)).toBe(62); // EM_X86_64
  const note = findElfNote(vmlinux, "Xen", 18);
  expect(note).toBeDefined();
  const entry = new DataView(note!.buffer, note!.byteOffset, note!.byteLength).getUint32(0, true);
  expect(entry).toBeGreaterThan(0);
  expect(Number(version.get("pvh_entry"))).toBe(entry);

  // initramfs: gzip'd newc with /init, static busybox, applet links and the virtio modules.
  const gz = new Uint8Array(await Bun.file(join(OUT, "initramfs.cpio.gz")).arrayBuffer());
  expect([gz[0], gz[1]]).toEqual([0x1f, 0x8b]);
  const entries = parseNewc(Bun.gunzipSync(gz));
  const byName = new Map(entries.map((e) => [e.name, e]));

  const init = byName.get("init");
  expect(init).toBeDefined();
  expect(init!.mode & 0o170000).toBe(0o100000); // regular file
  expect(init!.mode & 0o111).toBe(0o111); // executable
  const initText = new TextDecoder().decode(init!.data);
  expect(initText.startsWith("#!/bin/sh\n")).toBe(true);
  expect(initText).toContain("KILN-LINUX-INIT ok");
  expect(initText).toContain("setsid cttyhack sh");

  const busybox = byName.get("bin/busybox");
  expect(busybox).toBeDefined();
  expect(Array.from(busybox!.data.subarray(0, 4))).toEqual([0x7f, 0x45, 0x4c, 0x46]);
  const sh = byName.get("bin/sh");
  expect(sh).toBeDefined();
  expect(sh!.mode & 0o170000).toBe(0o120000); // symlink
  expect(new TextDecoder().decode(sh!.data)).toBe("busybox");
  for (const applet of ["sbin/insmod", "bin/mount", "bin/cttyhack", "usr/bin/setsid", "bin/cpio"]) {
    expect(byName.get(applet)?.mode! & 0o170000).toBe(0o120000);
  }

  const moddir = `lib/modules/${release}`;
  for (const m of MODULES) {
    const ko = byName.get(`${moddir}/${m}.ko`);
    expect(ko).toBeDefined();
    // Stored uncompressed (busybox insmod loads plain ELF objects).
    expect(Array.from(ko!.data.subarray(0, 4))).toEqual([0x7f, 0x45, 0x4c, 0x46]);
  }
  const order = new TextDecoder().decode(byName.get(`${moddir}/load-order`)!.data).trim().split("\n");
  expect(order).toEqual(MODULES);
  expect(version.get("modules")).toBe(MODULES.join(" "));
}, 600_000);

test("a second run is a cache hit: fast, downloads nothing, changes nothing", async () => {
  const outputs = ["vmlinuz", "vmlinux", "initramfs.cpio.gz", "VERSION"].map((f) => join(OUT, f));
  const debs = join(OUT, ".cache/debs");
  const snapshot = () => ({
    mtimes: outputs.map((f) => statSync(f).mtimeMs),
    debs: readdirSync(debs)
      .sort()
      .map((f) => `${f}:${statSync(join(debs, f)).mtimeMs}`),
  });
  const before = snapshot();
  const run = await runScript();
  if (run.code !== 0) throw new Error(`script failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
  expect(run.stdout).toContain("up to date");
  expect(run.stdout + run.stderr).not.toMatch(/downloading|apt-get|Get:/);
  expect(run.ms).toBeLessThan(1000);
  expect(snapshot()).toEqual(before);
}, 600_000);
