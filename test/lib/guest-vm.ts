/** Booting the project's test guest under kiln, for behavioural tests. */
import { buildGuest } from "./guest-build.ts";
import { kiln, type KilnOptions, type KilnProcess } from "./kiln.ts";
import { collectHeartbeats, parsePass, type Heartbeat, type Pass } from "./guest-lines.ts";

export interface GuestVmOptions extends KilnOptions {
  machine?: "microvm" | "q35";
  mem?: string;
  smp?: number | string;
  /** The guest's command line (workloads). */
  append?: string;
  /** Extra kiln flags. */
  extra?: string[];
  /** Use this ELF instead of the freshly built guest. */
  kernel?: string;
}

export async function guestArgs(o: GuestVmOptions = {}): Promise<string[]> {
  const elf = o.kernel ?? (await buildGuest());
  return [
    "-machine", o.machine ?? "microvm",
    "-m", o.mem ?? "256M",
    "-smp", String(o.smp ?? 1),
    "-kernel", elf,
    "-append", o.append ?? "",
    "-serial", "stdio",
    ...(o.extra ?? []),
  ];
}

export async function bootGuest(o: GuestVmOptions = {}): Promise<KilnProcess> {
  return kiln(await guestArgs(o), o);
}

/** Heartbeats seen so far (continuation lines joined). */
export function heartbeats(k: KilnProcess): Heartbeat[] {
  return collectHeartbeats(k.lines);
}

/** Wait until heartbeat number `n` (or later) has been printed completely. */
export async function waitHeartbeat(k: KilnProcess, atLeast: number, timeoutMs = 20_000): Promise<Heartbeat> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const hb = heartbeats(k).filter((h) => h.n >= atLeast && h.tsc !== null);
    const last = hb.at(-1);
    if (last) return last;
    const left = deadline - performance.now();
    if (left <= 0) throw new Error(`no heartbeat n>=${atLeast} within ${timeoutMs} ms\n${k.tail()}\n${k.stderr}`);
    await k.waitForNew(/^HB/, left).catch(() => {});
  }
}

/** PASS lines among `lines`. */
export function passesIn(lines: string[]): Pass[] {
  return lines.map(parsePass).filter((p): p is Pass => p !== null);
}

/** PASS lines so far. */
export function passes(k: KilnProcess): Pass[] {
  return passesIn(k.lines);
}

/** Wait until every CPU in `cpus` has reported a pass numbered at least `n`. */
export async function waitPasses(k: KilnProcess, cpus: number, n: number, timeoutMs = 30_000): Promise<Pass[]> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const ps = passes(k);
    const done = Array.from({ length: cpus }, (_, c) => ps.some((p) => p.cpu === c && p.n >= n));
    if (done.every(Boolean)) return ps;
    const left = deadline - performance.now();
    if (left <= 0) throw new Error(`not every CPU reached pass ${n} within ${timeoutMs} ms\n${k.tail()}\n${k.stderr}`);
    await k.waitForNew(/^PASS/, left).catch(() => {});
  }
}

export async function stop(k: KilnProcess): Promise<void> {
  k.kill("SIGKILL");
  await k.exited;
}
