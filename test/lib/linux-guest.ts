/** The Debian Linux guest, fetched and prepared by scripts/fetch-linux-guest.sh (cached after the first run). */
import { join } from "node:path";
import { REPO } from "./kiln.ts";

export const LINUX_DIR = join(REPO, "build/linux");

let ready: Promise<{ vmlinux: string; vmlinuz: string; initramfs: string }> | undefined;

export function linuxGuest(): Promise<{ vmlinux: string; vmlinuz: string; initramfs: string }> {
  ready ??= (async () => {
    const p = Bun.spawn(["bash", join(REPO, "scripts/fetch-linux-guest.sh")], { stdout: "pipe", stderr: "pipe" });
    const code = await p.exited;
    if (code !== 0) throw new Error(`fetch-linux-guest.sh failed (${code}):\n${await new Response(p.stderr).text()}`);
    return { vmlinux: join(LINUX_DIR, "vmlinux"), vmlinuz: join(LINUX_DIR, "vmlinuz"), initramfs: join(LINUX_DIR, "initramfs.cpio.gz") };
  })();
  return ready;
}
