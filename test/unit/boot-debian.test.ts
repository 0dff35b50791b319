/**
 * Loads Debian's real kernels when scripts/fetch-linux-guest.sh has put them in build/linux/;
 * skipped otherwise. Expected values come from /work/shared/notes/linux-guest.md (or the repo copy).
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadKernel } from "../../src/arch/x86_64/boot/index.ts";
import { MiB, PVH_INFO_START, ZERO_PAGE_START } from "../../src/arch/x86_64/layout.ts";
import { ArrayMemory } from "../lib/array-memory.ts";

const root = join(import.meta.dir, "../..");
const vmlinux = join(root, "build/linux/vmlinux");
const vmlinuz = join(root, "build/linux/vmlinuz");
const NOTE_PATHS = [join(root, "notes/linux-guest.md"), "/work/shared/notes/linux-guest.md"];

function noteValue(pattern: RegExp): number | undefined {
  for (const p of NOTE_PATHS) {
    if (!existsSync(p)) continue;
    const m = readFileSync(p, "utf8").match(pattern);
    if (m) return parseInt(m[1]!, 16);
  }
  return undefined;
}

const MEM = 512 * MiB;
const load = (path: string) =>
  loadKernel(new ArrayMemory(MEM), {
    kernel: new Uint8Array(readFileSync(path)),
    kernelPath: path,
    cmdline: "console=ttyS0",
    initrd: new Uint8Array(4 * MiB),
    memSize: MEM,
    machine: "microvm",
    rsdpGpa: 0xe0000,
  });

describe.skipIf(!existsSync(vmlinux))("Debian vmlinux", () => {
  test("boots through PVH at the note's entry point", () => {
    const expected = noteValue(/PVH entry \(ELF note type 18\)\s*\|\s*(0x[0-9a-f]+)/i);
    const e = load(vmlinux);
    expect(e.protocol).toBe("pvh");
    if (e.protocol !== "pvh") return;
    expect(e.startInfo).toBe(PVH_INFO_START);
    if (expected !== undefined) expect(e.entry).toBe(expected);
    expect(e.kernelEnd).toBeGreaterThan(e.entry);
  });
});

describe.skipIf(!existsSync(vmlinuz))("Debian vmlinuz", () => {
  test("boots through the 64-bit protocol at pref_address + 0x200", () => {
    const pref = noteValue(/pref_address (0x[0-9a-f]+)/i) ?? 0x1000000;
    const e = load(vmlinuz);
    expect(e).toMatchObject({ protocol: "linux64", entry: pref + 0x200 });
    if (e.protocol === "linux64") expect(e.bootParams).toBe(ZERO_PAGE_START);
  });
});
