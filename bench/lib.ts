/** Shared helpers for the side-by-side benchmarks (kiln vs QEMU + KVM on the same host and guest). */
import { existsSync } from "node:fs";
import { join } from "node:path";

export const REPO = join(import.meta.dir, "..");

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function qemuPath(): string {
  for (const p of ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"]) if (existsSync(p)) return p;
  throw new Error("QEMU is not installed: apt-get install -y qemu-system-x86 (only needed to compare against)");
}

/** QEMU as the notes say it must run on PVM hosts (-cpu host,-arch-capabilities). */
export function qemuArgs(o: { machine?: string; mem: string; smp: number; kernel: string; append: string; extra?: string[] }): string[] {
  return [
    "-accel", "kvm", "-machine", o.machine ?? "microvm", "-cpu", "host,-arch-capabilities",
    "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
    "-m", o.mem, "-smp", String(o.smp), "-kernel", o.kernel, "-append", o.append, ...(o.extra ?? []),
  ];
}

/** Run a command and resolve with ms from spawn to the first stdout line matching `re`, then kill it. */
export async function timeToLine(cmd: string[], re: RegExp, timeoutMs = 30_000): Promise<number> {
  const t0 = performance.now();
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "ignore", stdin: "ignore" });
  const dec = new TextDecoder();
  let buf = "";
  const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
  try {
    for await (const chunk of p.stdout) {
      buf += dec.decode(chunk, { stream: true });
      const lines = buf.split("\n");
      buf = lines.pop()!;
      for (const l of lines) if (re.test(l)) return performance.now() - t0;
    }
    throw new Error(`${cmd[0]} exited before printing ${re}`);
  } finally {
    clearTimeout(timer);
    p.kill("SIGKILL");
    await p.exited;
  }
}

export function fmt(ms: number): string {
  return ms < 10 ? ms.toFixed(2) : ms.toFixed(1);
}
