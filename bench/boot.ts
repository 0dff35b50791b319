/**
 * Boot benchmark: process start to the test guest's READY line, kiln (compiled binary) vs QEMU + KVM
 * booting the same PVH ELF. Median of N runs each, interleaved. Writes a section of BENCHMARKS.md.
 *
 *   bun bench/boot.ts [runs]
 */
import { join } from "node:path";
import { REPO, fmt, median, qemuArgs, qemuPath, timeToLine } from "./lib.ts";
import { updateBenchmarks } from "./report.ts";

const runs = Number(process.argv[2] ?? 15);
const build = Bun.spawnSync(["bash", join(REPO, "scripts/build-guest.sh")]);
if (build.exitCode !== 0) throw new Error("guest build failed");
const elf = join(REPO, "build/guest/guest.elf");
const kilnBin = join(REPO, "dist/kiln");
if (Bun.spawnSync(["bun", "run", "build"], { cwd: REPO }).exitCode !== 0) throw new Error("kiln build failed");

const append = "";
const kilnCmd = [kilnBin, "-machine", "microvm", "-m", "256", "-smp", "1", "-kernel", elf, "-append", append, "-serial", "stdio"];
const qemuCmd = [qemuPath(), ...qemuArgs({ mem: "256", smp: 1, kernel: elf, append })];

const k: number[] = [];
const q: number[] = [];
// One warm-up each (page cache), then interleave so both see the same machine conditions.
await timeToLine(kilnCmd, /^READY/);
await timeToLine(qemuCmd, /^READY/);
for (let i = 0; i < runs; i++) {
  k.push(await timeToLine(kilnCmd, /^READY/));
  q.push(await timeToLine(qemuCmd, /^READY/));
}
const mk = median(k);
const mq = median(q);
const lines = [
  `Process start to the test guest's \`READY\` line (microvm, 256 MiB, 1 vCPU, empty guest command line), median of ${runs} interleaved runs after one warm-up each.`,
  "",
  "| | median ms | min | max |",
  "|---|---|---|---|",
  `| kiln (dist/kiln) | ${fmt(mk)} | ${fmt(Math.min(...k))} | ${fmt(Math.max(...k))} |`,
  `| QEMU + KVM | ${fmt(mq)} | ${fmt(Math.min(...q))} | ${fmt(Math.max(...q))} |`,
  `| **ratio kiln / QEMU** | **${(mk / mq).toFixed(2)}** | | |`,
  "",
  "Commands:",
  "```",
  kilnCmd.map((a) => (a === "" ? '""' : a.replace(REPO + "/", ""))).join(" "),
  qemuCmd.map((a) => (a === "" ? '""' : a.replace(REPO + "/", ""))).join(" "),
  "```",
];
console.log(lines.join("\n"));
updateBenchmarks("Boot", `bun bench/boot.ts ${runs}`, lines.join("\n"));
