/**
 * Migration benchmark: kiln vs QEMU + KVM migrating the same test guest over a unix socket on this host.
 *
 *   bun bench/migrate.ts [runs] [pingpong-hops]
 *
 * Scenarios (1 GiB guest, 2 vCPUs, unlimited bandwidth, default downtime-limit 300 ms):
 *   idle      the guest only prints a heartbeat every 10 ms
 *   dirty256  the guest rewrites 256 MiB continuously (and verifies it)
 * Reported: total time and downtime as each VMM reports them (query-migrate; QEMU's downtime ends when
 * the source has sent everything, kiln's when the destination has loaded it), the downtime the guest
 * saw (the gap by its TSC between its last heartbeat on the source and its first on the destination,
 * less its usual gap), and throughput. Then N ping-pong hops (kiln: two processes; QEMU: a fresh destination per hop, whose
 * start-up is not counted).
 */
import { join } from "node:path";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { REPO, fmt, median, qemuArgs, qemuPath } from "./lib.ts";
import { updateBenchmarks } from "./report.ts";
import { Qmp } from "../test/lib/qmp.ts";
import { collectHeartbeats, parseHeartbeat } from "../test/lib/guest-lines.ts";

const runs = Number(process.argv[2] ?? 5);
const hops = Number(process.argv[3] ?? 100);
if (Bun.spawnSync(["bash", join(REPO, "scripts/build-guest.sh")]).exitCode !== 0) throw new Error("guest build failed");
if (Bun.spawnSync(["bun", "run", "build"], { cwd: REPO }).exitCode !== 0) throw new Error("kiln build failed");
const ELF = join(REPO, "build/guest/guest.elf");
const KILN = join(REPO, "dist/kiln");
const QEMU = qemuPath();
const UNLIMITED = 1e12; // bytes/s: both VMMs, so neither is throttled

type Vmm = "kiln" | "qemu";

class Proc {
  lines: string[] = [];
  /** When each line arrived here (performance.now()). */
  times: number[] = [];
  readonly p: ReturnType<typeof Bun.spawn>;
  constructor(cmd: string[]) {
    const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    this.p = p;
    void (async () => {
      let buf = "";
      for await (const c of p.stdout as ReadableStream<Uint8Array>) {
        const now = performance.now();
        buf += new TextDecoder().decode(c);
        const parts = buf.split("\n");
        buf = parts.pop()!;
        this.lines.push(...parts);
        for (const _ of parts) this.times.push(now);
      }
    })();
  }
  kill(): void {
    this.p.kill("SIGKILL");
  }
}

/**
 * `sharedRam`: the same-host upgrade, where RAM is not copied: kiln passes its memfd (capability
 * x-ignore-shared); QEMU maps the same shared file on both sides (memory-backend-file, share=on,
 * x-ignore-shared), its way of doing the same.
 */
function vmCmd(vmm: Vmm, append: string, qmpSock: string, incoming?: string, sharedRam?: string): string[] {
  if (vmm === "kiln") {
    return [KILN, "-machine", "microvm", "-m", "1G", "-smp", "2", "-kernel", ELF, "-append", append, "-serial", "stdio",
      "-qmp", `unix:${qmpSock},server,nowait`, ...(incoming ? ["-incoming", incoming] : [])];
  }
  // QEMU does not bring up its QMP socket until an -incoming unix: connection arrived, so it gets
  // -incoming defer and migrate-incoming (as libvirt drives it).
  const shared = sharedRam
    ? ["-object", `memory-backend-file,id=ram,size=1G,mem-path=${sharedRam},share=on`, "-machine", "memory-backend=ram"]
    : [];
  return [QEMU, ...qemuArgs({ mem: "1G", smp: 2, kernel: ELF, append, extra: [...shared, "-qmp", `unix:${qmpSock},server,nowait`, ...(incoming ? ["-incoming", "defer"] : [])] })];
}

/** Connect to a destination's QMP; for QEMU, start its deferred incoming migration. */
async function destination(vmm: Vmm, qmpSock: string, incoming: string): Promise<Qmp> {
  const q = await Qmp.connect(qmpSock);
  if (vmm === "qemu") await q.execute("migrate-incoming", { uri: incoming });
  return q;
}

async function waitLine(p: Proc, re: RegExp, ms = 30_000): Promise<void> {
  const end = performance.now() + ms;
  while (!p.lines.some((l) => re.test(l))) {
    if (performance.now() > end) throw new Error(`no ${re} in output: ${p.lines.slice(-5).join(" / ")}`);
    await Bun.sleep(5);
  }
}

async function setParams(q: Qmp): Promise<void> {
  await q.execute("migrate-set-parameters", { "max-bandwidth": UNLIMITED });
}

async function runMigration(q: Qmp, uri: string): Promise<Record<string, unknown>> {
  await q.execute("migrate", { uri });
  return q.waitMigration(["completed", "failed", "cancelled"], 120_000);
}

/**
 * The guest's view of the downtime: the gap (by its TSC) between the last heartbeat it printed on the
 * source and the first on the destination, less its usual gap between heartbeats (the period).
 */
function guestGapMs(srcLines: string[], dstLines: string[]): number {
  const khzLine = srcLines.find((l) => l.startsWith("TSC khz="));
  const khz = khzLine ? Number(khzLine.match(/khz=(\d+)/)![1]) : 0;
  const src = collectHeartbeats(srcLines).filter((h) => h.tsc !== null);
  const dst = collectHeartbeats(dstLines).filter((h) => h.tsc !== null);
  const last = src.at(-1)!;
  const first = dst.find((h) => h.n > last.n)!;
  const gaps: number[] = [];
  for (let i = 1; i < src.length; i++) gaps.push(Number(src[i]!.tsc! - src[i - 1]!.tsc!) / khz);
  return Number(first.tsc! - last.tsc!) / khz - median(gaps);
}

/**
 * The same gap seen from outside: between the arrival here of the last heartbeat line from the source
 * and of the first from the destination, less the usual spacing of arrivals. Unlike the guest's TSC,
 * this clock runs on for both VMMs (QEMU restores the TSC it saved at the stop, so its guest's TSC
 * stands still during the downtime; kiln advances it by the downtime, as KVM's TSC migration
 * procedure describes).
 */
function hostGapMs(src: Proc, dst: Proc): number {
  const hbs = (p: Proc) =>
    p.lines.flatMap((l, i) => {
      const h = parseHeartbeat(l);
      return h && h.tsc !== null ? [{ n: h.n, at: p.times[i]! }] : [];
    });
  const s = hbs(src);
  const last = s.at(-1)!;
  const first = hbs(dst).find((h) => h.n > last.n)!;
  const gaps: number[] = [];
  for (let i = 1; i < s.length; i++) gaps.push(s[i]!.at - s[i - 1]!.at);
  return first.at - last.at - median(gaps);
}

interface Result {
  total: number;
  downtime: number;
  guestGap: number;
  hostGap: number;
  mbps: number;
}

async function once(vmm: Vmm, append: string, settleMs: number, sharedRam = false): Promise<Result> {
  const dir = mkdtempSync(join(tmpdir(), "kiln-bench-"));
  const ramFile = sharedRam ? join("/dev/shm", `kiln-bench-${process.pid}-${Date.now()}`) : undefined;
  const src = new Proc(vmCmd(vmm, append, join(dir, "src.qmp"), undefined, ramFile));
  const mig = join(dir, "mig.sock");
  const dst = new Proc(vmCmd(vmm, append, join(dir, "dst.qmp"), `unix:${mig}`, ramFile));
  try {
    const qs = await Qmp.connect(join(dir, "src.qmp"));
    const qd = await destination(vmm, join(dir, "dst.qmp"), `unix:${mig}`);
    await waitLine(src, /^READY/);
    await Bun.sleep(settleMs); // let the workload reach its steady state (e.g. the dirtier's first passes)
    await setParams(qs);
    if (sharedRam) {
      const caps = { capabilities: [{ capability: "x-ignore-shared", state: true }] };
      await qs.execute("migrate-set-capabilities", caps);
      await qd.execute("migrate-set-capabilities", caps);
    }
    const r = await runMigration(qs, `unix:${mig}`);
    if (r.status !== "completed") throw new Error(`${vmm}: migration ${String(r.status)}: ${String(r["error-desc"])}`);
    const hbBefore = collectHeartbeats(dst.lines).length;
    // Heartbeats both sides printed, in order: the guest's view across the switchover.
    const end = performance.now() + 5000;
    while (collectHeartbeats(dst.lines).length < hbBefore + 5 && performance.now() < end) await Bun.sleep(5);
    const gap = guestGapMs(src.lines, dst.lines);
    const ram = r.ram as Record<string, number>;
    qs.close();
    qd.close();
    return { total: Number(r["total-time"]), downtime: Number(r.downtime), guestGap: Math.max(0, gap), hostGap: Math.max(0, hostGapMs(src, dst)), mbps: (ram.transferred * 8) / 1e6 / (Number(r["total-time"]) / 1000) };
  } finally {
    src.kill();
    dst.kill();
    rmSync(dir, { recursive: true, force: true });
    if (ramFile) rmSync(ramFile, { force: true });
  }
}

/** A ratio only means something when QEMU's side is clearly above zero (a gap of ~0 or nothing sent). */
function ratio(kiln: number, qemu: number): string {
  return qemu > 0.5 ? (kiln / qemu).toFixed(2) : "n/a";
}

async function scenario(name: string, append: string, settleMs: number, sharedRam = false): Promise<string[]> {
  const res: Record<Vmm, Result[]> = { kiln: [], qemu: [] };
  for (let i = 0; i < runs; i++) {
    for (const vmm of ["kiln", "qemu"] as Vmm[]) res[vmm].push(await once(vmm, append, settleMs, sharedRam));
  }
  const m = (vmm: Vmm, k: keyof Result) => median(res[vmm].map((r) => r[k]));
  const row = (label: string, k: keyof Result, unit: string) =>
    `| ${label} (${unit}) | ${fmt(m("kiln", k))} | ${fmt(m("qemu", k))} | ${ratio(m("kiln", k), m("qemu", k))} |`;
  console.log(name, JSON.stringify(res));
  return [
    `### ${name}: \`-append "${append}"\`, median of ${runs}`,
    "",
    "| | kiln | QEMU | kiln / QEMU |",
    "|---|---|---|---|",
    row("total time, reported", "total", "ms"),
    row("downtime, reported", "downtime", "ms"),
    row("downtime seen by the guest's TSC (heartbeat gap across the switchover, less the usual gap)", "guestGap", "ms"),
    row("downtime seen from the host (gap between heartbeat lines arriving, less the usual gap)", "hostGap", "ms"),
    row("throughput", "mbps", "Mbit/s"),
    "",
  ];
}

async function pingPong(vmm: Vmm): Promise<number[]> {
  const dir = mkdtempSync(join(tmpdir(), "kiln-pp-"));
  const procs: Proc[] = [];
  const times: number[] = [];
  const append = "dirty=64M hb=50";
  try {
    const mk = (name: string, incoming?: string) => {
      const p = new Proc(vmCmd(vmm, append, join(dir, `${name}.qmp`), incoming));
      procs.push(p);
      return incoming ? destination(vmm, join(dir, `${name}.qmp`), incoming) : Qmp.connect(join(dir, `${name}.qmp`));
    };
    let from = await mk("a");
    await waitLine(procs[0]!, /^READY/);
    await setParams(from);
    let other: Qmp | undefined;
    for (let i = 0; i < hops; i++) {
      const uri = `unix:${join(dir, `hop${i}.sock`)}`;
      let to: Qmp;
      if (vmm === "kiln" && other) {
        // The process the guest left becomes the destination again.
        to = other;
        await to.execute("migrate-incoming", { uri });
      } else {
        to = await mk(`p${i}`, uri);
      }
      const t0 = performance.now();
      const r = await runMigration(from, uri);
      if (r.status !== "completed") throw new Error(`${vmm} hop ${i}: ${String(r["error-desc"])}`);
      times.push(performance.now() - t0);
      await setParams(to);
      if (vmm === "qemu") {
        from.close();
        procs.shift()?.kill();
      }
      other = vmm === "kiln" ? from : undefined;
      from = to;
    }
    const last = procs.at(-1)!;
    if (last.lines.some((l) => /bad=[1-9]/.test(l))) throw new Error(`${vmm}: the guest saw bad pages during ping-pong`);
    return times;
  } finally {
    for (const p of procs) p.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

const body: string[] = [
  "1 GiB guest, 2 vCPUs, `-machine microvm`, unix socket on the same host, `max-bandwidth` unlimited",
  "(1e12 bytes/s for both), `downtime-limit` 300 ms (both defaults). QEMU:",
  "`qemu-system-x86_64 -accel kvm -machine microvm -cpu host,-arch-capabilities -nodefaults -m 1G -smp 2",
  "-kernel build/guest/guest.elf -append ...`; kiln: `dist/kiln -machine microvm -m 1G -smp 2 -kernel",
  "build/guest/guest.elf -append ...`; both driven by QMP (QEMU's destination with `-incoming defer` and",
  "`migrate-incoming`, as libvirt does; kiln's with `-incoming unix:...`).",
  "",
  "Reported downtime is each VMM's own: QEMU's ends when the source has sent everything, kiln's when the",
  "destination has loaded it. The two measured gaps count only what exceeds the guest's usual 10 ms between",
  "heartbeats. The guest's TSC does not see QEMU's downtime at all (QEMU restores the TSC it saved at the",
  "stop, so the guest's clock stands still meanwhile; kiln advances it by the downtime, as KVM's TSC",
  "migration procedure describes), so the row measured from the host, by when the heartbeat lines arrive,",
  "is the one that compares like with like. Both gaps are sampled by a 10 ms heartbeat: a switchover that",
  "fits in the slack before the next heartbeat shows as 0, and from run to run they vary by several ms.",
  "",
];
body.push(...(await scenario("Idle guest", "hb=10", 300)));
body.push(...(await scenario("Rewriting 256 MiB", "dirty=256M hb=10", 1500)));
body.push(...(await scenario("Same-host upgrade, RAM not copied (x-ignore-shared), rewriting 256 MiB", "dirty=256M hb=10", 1500, true)));
body.push(
  "kiln hands its guest-memory memfd to the destination over the unix socket (`x-ignore-shared`); QEMU maps one",
  "shared file on both sides (`-object memory-backend-file,share=on,mem-path=/dev/shm/...` with `x-ignore-shared`).",
  "",
);
const pk = await pingPong("kiln");
const pq = await pingPong("qemu");
body.push(
  `### ${hops} ping-pong hops (64 MiB dirtied continuously)`,
  "",
  "| | kiln | QEMU | kiln / QEMU |",
  "|---|---|---|---|",
  `| median hop, migrate to completed (ms) | ${fmt(median(pk))} | ${fmt(median(pq))} | ${(median(pk) / median(pq)).toFixed(2)} |`,
  `| all ${hops} hops (s) | ${fmt(pk.reduce((a, b) => a + b, 0) / 1000)} | ${fmt(pq.reduce((a, b) => a + b, 0) / 1000)} | ${(pk.reduce((a, b) => a + b, 0) / pq.reduce((a, b) => a + b, 0)).toFixed(2)} |`,
  "",
  "kiln plays ping-pong between two processes (`migrate-incoming` on the process the guest just left); QEMU",
  "cannot take a guest back into a process it left, so each QEMU hop goes to a fresh destination started",
  "beforehand (its start-up is not counted).",
);
console.log(body.join("\n"));
updateBenchmarks("Migration", `bun bench/migrate.ts ${runs} ${hops}`, body.join("\n"));
process.exit(0);
