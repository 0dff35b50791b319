/**
 * Builds kiln's test guest (test/guest/, docs/test-guest.md) with scripts/build-guest.sh and returns the ELF's
 * absolute path. The script returns at once when the ELF is newer than every source, so tests call this freely.
 */
import { join, resolve } from "node:path";

export const REPO_ROOT = resolve(import.meta.dir, "../..");
export const GUEST_BUILD_SCRIPT = join(REPO_ROOT, "scripts/build-guest.sh");
export const GUEST_ELF = join(REPO_ROOT, "build/guest/guest.elf");

export async function buildGuest(): Promise<string> {
  const proc = Bun.spawn(["bash", GUEST_BUILD_SCRIPT], { cwd: REPO_ROOT, stdout: "pipe", stderr: "pipe" });
  const [code, out, err] = await Promise.all([
    proc.exited,
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
  ]);
  if (code !== 0) throw new Error(`scripts/build-guest.sh failed with exit code ${code}:\n${out}${err}`);
  return GUEST_ELF;
}
