// Serial console backends (src/chardev/chardev.ts) with a reader that stops reading: output beyond
// the backlog limit is dropped and counted, kiln says so, and everything else arrives in order.
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { Socket } from "bun";
import { openChardev, OutputBacklog, OUTPUT_BACKLOG_LIMIT } from "../../src/chardev/chardev.ts";
import { FdReader } from "../lib/fd-reader.ts";
import { scratchDir } from "../lib/kiln.ts";
import { connectUnix } from "../lib/unix-socket.ts";

const { dir, cleanup } = scratchDir("kiln-chardev-");
afterAll(cleanup);

/** 3 MiB of numbered 64-byte lines, so what arrives can be checked for order and gaps. */
const CHUNKS = Array.from({ length: 3 * 16384 }, (_, i) => new TextEncoder().encode(`line ${String(i).padStart(8, "0")} `.padEnd(63, ".") + "\n"));
const TOTAL = CHUNKS.length * 64;

/** The line numbers in `text`: strictly increasing, each line intact. */
function lineNumbers(text: string): number[] {
  const lines = text.split("\n").filter((l) => l);
  for (const l of lines) expect(l).toMatch(/^line \d{8} \.+$/);
  const ns = lines.map((l) => Number(l.slice(5, 13)));
  for (let i = 1; i < ns.length; i++) expect(ns[i]!).toBeGreaterThan(ns[i - 1]!);
  return ns;
}

async function until(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(2);
  }
}

test("OutputBacklog: admits up to the limit, counts drops, reports them once the reader caught up", () => {
  const warnings: string[] = [];
  const b = new OutputBacklog("stdout", (m) => warnings.push(m), 100);
  expect(b.admit(60)).toBe(true);
  expect(b.admit(40)).toBe(true);
  expect(b.admit(1)).toBe(false);
  expect(b.admit(10)).toBe(false);
  expect(warnings).toEqual(["guest console output to stdout is not being read: dropping what exceeds 0 KiB"]);
  b.drained(50);
  expect(b.admit(50)).toBe(true);
  b.drained(100);
  expect(warnings[1]).toBe("guest console output to stdout flows again; 11 bytes were dropped");
  expect(b.dropped).toBe(0);
  expect(b.admit(100)).toBe(true);
});

test("socket backend: a client that stops reading costs at most the backlog; the rest arrives in order", async () => {
  const path = join(dir, "console.sock");
  const warnings: string[] = [];
  const dev = openChardev({ kind: "socket", address: { transport: "unix", path }, wait: false }, () => {}, (m) => warnings.push(m));
  let got = "";
  const client: Socket<undefined> = await connectUnix(path, { data: (_s, d) => void (got += d.toString()) });
  try {
    client.pause();
    for (const c of CHUNKS) dev.write(c);
    expect(warnings[0]).toContain("guest console output to the client of unix:");
    expect(warnings[0]).toContain("is not being read");
    client.resume();
    await until(() => warnings.length === 2, "the backlog to drain");
    const dropped = Number(warnings[1]!.match(/; (\d+) bytes were dropped/)![1]);
    // Nothing but the excess was lost: the socket buffers plus the backlog got through.
    expect(dropped).toBeGreaterThan(0);
    expect(dropped).toBeLessThanOrEqual(TOTAL - OUTPUT_BACKLOG_LIMIT);
    await until(() => got.length === TOTAL - dropped, "every admitted byte");
    expect(lineNumbers(got).length).toBe((TOTAL - dropped) / 64);
  } finally {
    client.end();
    dev.close();
  }
});

test("stdio backend: a pipe nobody reads costs at most the backlog; reading again gets the rest", async () => {
  // A child process owns the stdio backend; this process holds its stdout pipe without reading it.
  const script = join(dir, "stdio-child.ts");
  await Bun.write(
    script,
    `import { openChardev } from ${JSON.stringify(join(import.meta.dir, "../../src/chardev/chardev.ts"))};
const dev = openChardev({ kind: "stdio" }, () => {}, (m) => console.error(m));
const n = ${CHUNKS.length};
for (let i = 0; i < n; i++) dev.write(new TextEncoder().encode(\`line \${String(i).padStart(8, "0")} \`.padEnd(63, ".") + "\\n"));
process.stdin.pause();
`,
  );
  let out = "";
  let err = "";
  const stdout = new FdReader((b) => (out += new TextDecoder().decode(b)), true);
  const stderr = new FdReader((b) => (err += new TextDecoder().decode(b)));
  const p = Bun.spawn([process.execPath, script], { stdin: "ignore", stdout: stdout.writeFd, stderr: stderr.writeFd });
  stdout.childStarted();
  stderr.childStarted();
  try {
    await until(() => err.includes("is not being read"), "the drop warning");
    stdout.start();
    await until(() => err.includes("flows again"), "the backlog to drain");
    expect(await p.exited).toBe(0);
    await stdout.done;
    const dropped = Number(err.match(/; (\d+) bytes were dropped/)![1]);
    expect(dropped).toBeGreaterThan(0);
    expect(dropped).toBeLessThanOrEqual(TOTAL - OUTPUT_BACKLOG_LIMIT);
    expect(out.length).toBe(TOTAL - dropped);
    expect(lineNumbers(out).length).toBe((TOTAL - dropped) / 64);
  } finally {
    p.kill();
  }
});
