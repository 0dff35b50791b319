/**
 * Running kiln in tests: spawn it as a user would (bun src/main.ts ... or the compiled binary), follow
 * its serial console line by line, and wait for conditions instead of sleeping.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { FdReader } from "./fd-reader.ts";

export const REPO = resolve(import.meta.dir, "../..");
/** How long output may trail kiln's exit when something else still holds its stdout/stderr. */
const DRAIN_AFTER_EXIT_MS = 2000;
export const MAIN = join(REPO, "src/main.ts");

export interface KilnOptions {
  /** Run this executable instead of `bun src/main.ts`. */
  binary?: string;
  cwd?: string;
  env?: Record<string, string>;
  /** Feed the serial console from a pipe (default: /dev/null). */
  stdinPipe?: boolean;
}

/** A unique scratch directory, removed by the returned cleanup. */
export function scratchDir(prefix = "kiln-test-"): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

type LineWaiter = { re: RegExp; from: number; resolve: (m: RegExpMatchArray) => void; reject: (e: Error) => void; timer: Timer };

export class KilnProcess {
  readonly proc: Subprocess<"pipe" | "ignore", number, number>;
  /** Every complete console line so far. */
  readonly lines: string[] = [];
  stderr = "";
  private partial = "";
  private waiters: LineWaiter[] = [];
  readonly exited: Promise<number>;
  readonly startedAt = performance.now();

  constructor(args: string[], opts: KilnOptions = {}) {
    const cmd = opts.binary ? [opts.binary, ...args] : [process.execPath, MAIN, ...args];
    const outDec = new TextDecoder();
    const errDec = new TextDecoder();
    const out = new FdReader((b) => this.onStdout(outDec.decode(b, { stream: true })));
    const err = new FdReader((b) => (this.stderr += errDec.decode(b, { stream: true })));
    try {
      this.proc = Bun.spawn(cmd, {
        cwd: opts.cwd ?? REPO,
        env: { ...process.env, ...opts.env },
        stdin: opts.stdinPipe ? "pipe" : "ignore",
        stdout: out.writeFd,
        stderr: err.writeFd,
      }) as never;
    } finally {
      out.childStarted();
      err.childStarted();
    }
    // Everything the child wrote is in `lines` and `stderr` before `exited` resolves. A descendant
    // may hold the pipes open after kiln exits (exec: migration's shell, a daemon): wait for end of
    // file only a little while then.
    const drained = Promise.all([out.done, err.done]);
    this.exited = this.proc.exited.then(async (code) => {
      let timer: Timer | undefined;
      await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, DRAIN_AFTER_EXIT_MS)))]);
      clearTimeout(timer);
      if (this.partial) this.pushLine(this.partial);
      this.partial = "";
      for (const w of this.waiters) {
        clearTimeout(w.timer);
        w.reject(new Error(`kiln exited (status ${code}) before a line matched ${w.re}\n--- console tail ---\n${this.tail()}\n--- stderr ---\n${this.stderr}`));
      }
      this.waiters = [];
      return code;
    });
  }

  private onStdout(text: string): void {
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop()!;
    for (const p of parts) this.pushLine(p.replace(/\r$/, ""));
  }

  private pushLine(line: string): void {
    const idx = this.lines.push(line) - 1;
    for (const w of [...this.waiters]) {
      if (idx < w.from) continue;
      const m = line.match(w.re);
      if (m) {
        clearTimeout(w.timer);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  }

  /** The next line (at or after line index `from`, default: any line so far) matching `re`. */
  waitFor(re: RegExp, timeoutMs = 30_000, from = 0): Promise<RegExpMatchArray> {
    for (let i = from; i < this.lines.length; i++) {
      const m = this.lines[i]!.match(re);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.timer !== timer);
        reject(new Error(`no console line matched ${re} within ${timeoutMs} ms\n--- console tail ---\n${this.tail()}\n--- stderr ---\n${this.stderr}`));
      }, timeoutMs);
      this.waiters.push({ re, from, resolve, reject, timer });
    });
  }

  /** Wait for a line matching `re` that appears after this call. */
  waitForNew(re: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    return this.waitFor(re, timeoutMs, this.lines.length);
  }

  /** All lines matching `re` so far. */
  matches(re: RegExp): RegExpMatchArray[] {
    return this.lines.map((l) => l.match(re)).filter((m): m is RegExpMatchArray => m !== null);
  }

  tail(n = 30): string {
    return this.lines.slice(-n).join("\n");
  }

  /** Write to the serial console (stdinPipe must be set). */
  type(text: string): void {
    const stdin = this.proc.stdin as unknown as { write(s: string): void; flush(): void };
    stdin.write(text);
    stdin.flush();
  }

  /** Exit status, failing if kiln is still running after `timeoutMs`. */
  async exitCode(timeoutMs = 30_000): Promise<number> {
    let timer: Timer | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`kiln still running after ${timeoutMs} ms\n${this.tail()}\n${this.stderr}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill(signal: NodeJS.Signals | number = "SIGKILL"): void {
    this.proc.kill(signal);
  }
}

/** Start kiln; tests must `await k.exitCode()` or `k.kill()` in a finally block. */
export function kiln(args: string[], opts?: KilnOptions): KilnProcess {
  return new KilnProcess(args, opts);
}
