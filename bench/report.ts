/** Keeps BENCHMARKS.md: one section per benchmark, replaced when that benchmark runs again. */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { REPO } from "./lib.ts";

const FILE = join(REPO, "BENCHMARKS.md");
const HEAD = `# kiln benchmarks

Side by side with QEMU + KVM on the same machine and the same guest, reported as ratios. Numbers are
from the machine the benchmark last ran on (see each section's date and host line); rerun with the
command given to refresh a section.
`;

export function updateBenchmarks(name: string, command: string, body: string): void {
  const text = existsSync(FILE) ? readFileSync(FILE, "utf8") : HEAD;
  const host = `${(readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.*)/) ?? [])[1] ?? "unknown CPU"}, ${navigator.hardwareConcurrency} CPUs, kernel ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}`;
  const section = `## ${name}\n\n_Run ${new Date().toISOString().slice(0, 10)} with \`${command}\` on ${host}._\n\n${body}\n`;
  const re = new RegExp(`## ${name}\\n[\\s\\S]*?(?=\\n## |$)`);
  const out = re.test(text) ? text.replace(re, section.trimEnd() + "\n") : text.trimEnd() + "\n\n" + section;
  writeFileSync(FILE, out);
}
