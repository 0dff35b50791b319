/** Helpers for migration tests: a VM with a QMP socket, and what its guest reports across a migration. */
import { join } from "node:path";
import { bootGuest, passesIn, type GuestVmOptions } from "./guest-vm.ts";
import type { KilnProcess } from "./kiln.ts";
import { Qmp } from "./qmp.ts";
import { collectHeartbeats } from "./guest-lines.ts";

export interface Vm {
  k: KilnProcess;
  qmp: Qmp;
  sock: string;
}

let seq = 0;

/** Boot (or, with `incoming`, wait for) a VM with a QMP socket in `dir`. */
export async function startVm(dir: string, o: GuestVmOptions & { incoming?: string; name?: string } = {}): Promise<Vm> {
  const name = o.name ?? `vm${seq++}`;
  const sock = join(dir, `${name}.qmp`);
  const extra = [...(o.extra ?? []), "-qmp", `unix:${sock},server,nowait`];
  if (o.incoming) extra.push("-incoming", o.incoming);
  const k = await bootGuest({ ...o, extra });
  let qmp: Qmp;
  try {
    qmp = await Qmp.connect(sock);
  } catch (e) {
    k.kill();
    throw new Error(`${(e as Error).message}\n${k.stderr}`);
  }
  return { k, qmp, sock };
}

export async function stopVm(vm: Vm | undefined): Promise<void> {
  if (!vm) return;
  vm.qmp.close();
  vm.k.kill("SIGKILL");
  await vm.k.exited;
}

/** Start a migration and wait for it to end; returns the final query-migrate answer. */
export async function migrate(src: Vm, uri: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
  await src.qmp.execute("migrate", { uri });
  return src.qmp.waitMigration(["completed", "failed", "cancelled"], timeoutMs);
}

/**
 * Wait until the guest on `vm` has finished `count` more dirtier passes on every CPU after the line
 * index `from`, and check every pass it reported since then verified clean.
 */
export async function guestKeepsVerifying(vm: Vm, cpus: number, from: number, count = 3, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const ps = passesIn(vm.k.lines.slice(from));
    const bad = ps.filter((p) => p.bad !== 0);
    if (bad.length > 0) throw new Error(`the guest found ${bad[0]!.bad} bad pages (cpu ${bad[0]!.cpu}, pass ${bad[0]!.n})\n${vm.k.tail()}`);
    const perCpu = Array.from({ length: cpus }, (_, c) => ps.filter((p) => p.cpu === c).length);
    if (perCpu.every((n) => n >= count)) return;
    const left = deadline - performance.now();
    if (left <= 0) throw new Error(`passes per CPU after line ${from}: ${perCpu.join(",")} (wanted ${count})\n${vm.k.tail()}\n${vm.k.stderr}`);
    await vm.k.waitForNew(/^PASS/, left).catch(() => {});
  }
}

/** The largest gap, in ms of guest TSC, between consecutive heartbeats (guest-visible downtime). */
export function largestHeartbeatGapMs(lines: string[], tscKhz: number): number {
  const hb = collectHeartbeats(lines).filter((h) => h.tsc !== null);
  let gap = 0;
  for (let i = 1; i < hb.length; i++) gap = Math.max(gap, Number(hb[i]!.tsc! - hb[i - 1]!.tsc!) / tscKhz);
  return gap;
}

/** Poll query-status until it is `status` (e.g. a destination leaving "inmigrate"). */
export async function waitStatus(vm: Vm, status: string, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const st = (await vm.qmp.execute<{ status: string }>("query-status")).status;
    if (st === status) return;
    if (performance.now() > deadline) throw new Error(`status still ${st} (wanted ${status}) after ${timeoutMs} ms\n${vm.k.stderr}`);
    await Bun.sleep(5);
  }
}
