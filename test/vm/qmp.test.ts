/**
 * QMP against a running guest, spoken as socat would (raw bytes, CRLF-terminated JSON; no code shared
 * with the server), with every command's effect checked on what the guest itself reports.
 */
import { test, expect } from "bun:test";
import { join } from "node:path";
import { existsSync, statSync } from "node:fs";
import { scratchDir, MAIN } from "../lib/kiln.ts";
import { connectUnix } from "../lib/unix-socket.ts";
import { bootGuest, heartbeats, stop, waitHeartbeat } from "../lib/guest-vm.ts";
import type { Socket } from "bun";

/** A raw QMP connection: lines in, lines out. */
class Raw {
  lines: string[] = [];
  raw = "";
  private waiters: (() => void)[] = [];
  closed = false;
  private constructor(private s: Socket<undefined>) {}

  static async open(path: string): Promise<Raw> {
    let r!: Raw;
    const s = await connectUnix(path, {
      data(_s, d) {
        r.raw += d.toString("latin1");
        const parts = r.raw.split("\r\n");
        r.raw = parts.pop()!;
        r.lines.push(...parts);
        for (const w of r.waiters.splice(0)) w();
      },
      close() {
        r.closed = true;
        for (const w of r.waiters.splice(0)) w();
      },
      drain() {
        r.flush();
      },
      error() {},
    });
    r = new Raw(s);
    return r;
  }

  private pending: Uint8Array[] = [];

  /** Write everything (Bun's socket write is partial under back-pressure; the rest goes on drain). */
  send(text: string | Uint8Array): void {
    this.pending.push(typeof text === "string" ? new TextEncoder().encode(text) : text);
    this.flush();
  }

  flush(): void {
    while (this.pending.length > 0) {
      const b = this.pending[0]!;
      const n = this.s.write(b);
      if (n < b.byteLength) {
        this.pending[0] = b.subarray(Math.max(n, 0));
        return;
      }
      this.pending.shift();
    }
  }

  /** Wait for the next line (from index `from`) satisfying pred; returns it parsed. */
  async next(pred: (m: Record<string, unknown>) => boolean, from = 0, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      for (let i = from; i < this.lines.length; i++) {
        const m = JSON.parse(this.lines[i]!) as Record<string, unknown>;
        if (pred(m)) return m;
      }
      if (this.closed) throw new Error(`connection closed; got:\n${this.lines.join("\n")}`);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`no matching QMP line in ${timeoutMs} ms; got:\n${this.lines.join("\n")}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => (clearTimeout(t), r()));
      });
    }
  }

  /** Send a command and return its reply (the first return/error line after now). */
  async cmd(obj: Record<string, unknown>): Promise<Record<string, unknown>> {
    const from = this.lines.length;
    this.send(JSON.stringify(obj) + "\n");
    return this.next((m) => "return" in m || "error" in m, from);
  }

  end(): void {
    this.s.end();
  }
}

async function vmWithQmp(dir: string, append = "hb=20", extra: string[] = []) {
  const sock = join(dir, "qmp.sock");
  const k = await bootGuest({ append, smp: 2, extra: [...extra, "-qmp", `unix:${sock},server,nowait`] });
  await k.waitFor(/^READY/);
  return { k, sock };
}

test("greeting, negotiation, ids, errors: QEMU's shapes, every line ending in CRLF", async () => {
  const { dir, cleanup } = scratchDir();
  const { k, sock } = await vmWithQmp(dir, "hb=20", ["-name", "guest-one"]);
  try {
    expect(statSync(sock).mode & 0o777).toBe(0o600);
    const q = await Raw.open(sock);
    const greeting = await q.next((m) => "QMP" in m);
    expect(greeting).toEqual({ QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: expect.stringMatching(/^kiln-/) }, capabilities: ["oob"] } });
    expect(await q.cmd({ execute: "query-status" })).toEqual({
      error: { class: "CommandNotFound", desc: "Expecting capabilities negotiation with 'qmp_capabilities'" },
    });
    expect(await q.cmd({ execute: "qmp_capabilities" })).toEqual({ return: {} });
    expect((await q.cmd({ execute: "qmp_capabilities" })).error).toEqual({ class: "CommandNotFound", desc: "Capabilities negotiation is already complete, command ignored" });
    expect(await q.cmd({ execute: "query-status", id: { any: ["json", 1] } })).toEqual({
      return: { status: "running", singlestep: false, running: true },
      id: { any: ["json", 1] },
    });
    expect((await q.cmd({ execute: "no-such-command" })).error).toEqual({ class: "CommandNotFound", desc: "The command no-such-command has not been found" });
    expect(await q.cmd({ execute: "query-name" })).toEqual({ return: { name: "guest-one" } });
    expect(await q.cmd({ execute: "query-kvm" })).toEqual({ return: { enabled: true, present: true } });
    const cpus = (await q.cmd({ execute: "query-cpus-fast" })).return as { "cpu-index": number; "thread-id": number; target: string }[];
    expect(cpus.map((c) => c["cpu-index"])).toEqual([0, 1]);
    // thread-id is the vCPU Worker's real thread in the kiln process.
    for (const c of cpus) expect(existsSync(`/proc/${k.proc.pid}/task/${c["thread-id"]}`)).toBe(true);
    const cmds = ((await q.cmd({ execute: "query-commands" })).return as { name: string }[]).map((c) => c.name);
    for (const c of ["migrate", "migrate_cancel", "query-migrate", "stop", "cont", "quit", "system_reset", "system_powerdown", "query-qmp-schema"]) {
      expect(cmds).toContain(c);
    }
    const schema = (await q.cmd({ execute: "query-qmp-schema" })).return as { name: string; "meta-type": string }[];
    expect(schema.some((e) => e.name === "migrate" && e["meta-type"] === "command")).toBe(true);
    expect(q.raw).toBe(""); // nothing left without its CRLF
    q.end();
  } finally {
    await stop(k);
    cleanup();
  }
});

test("stop parks the guest (its heartbeat stops), cont resumes it; STOP and RESUME in order", async () => {
  const { dir, cleanup } = scratchDir();
  const { k, sock } = await vmWithQmp(dir, "hb=10");
  try {
    const q = await Raw.open(sock);
    await q.next((m) => "QMP" in m);
    await q.cmd({ execute: "qmp_capabilities" });
    const before = await waitHeartbeat(k, 5);
    const mark = q.lines.length;
    expect(await q.cmd({ execute: "stop" })).toEqual({ return: {} });
    const stopEv = await q.next((m) => m.event === "STOP", mark);
    expect(q.lines.findIndex((l) => l.includes('"STOP"'))).toBeLessThan(q.lines.findIndex((l, i) => i >= mark && l.includes('"return"')));
    expect((await q.cmd({ execute: "query-status" })).return).toEqual({ status: "paused", singlestep: false, running: false });
    const lastBefore = heartbeats(k).filter((h) => h.tsc !== null).at(-1)!;
    // While stopped the guest runs no instruction: across the pause it prints one more heartbeat at
    // most (one in flight), however long the pause, while its TSC (the host's) moves on.
    const pausedAt = performance.now();
    await k.waitForNew(/^HB /, 300).then(
      () => {},
      () => {},
    );
    const heldMs = performance.now() - pausedAt;
    const mark2 = q.lines.length;
    await q.cmd({ execute: "cont" });
    await q.next((m) => m.event === "RESUME", mark2);
    const after = await waitHeartbeat(k, lastBefore.n + 3);
    const hb = heartbeats(k).filter((h) => h.tsc !== null && h.n > lastBefore.n);
    const firstAfter = hb[0]!;
    expect(firstAfter.n).toBe(lastBefore.n + 1);
    const khz = Number(k.lines.find((l) => l.startsWith("TSC khz="))!.match(/khz=(\d+)/)![1]);
    expect(Number(firstAfter.tsc! - lastBefore.tsc!) / khz).toBeGreaterThan(heldMs * 0.8);
    expect(after.counters[0]!).toBeGreaterThan(before.counters[0]!);
    expect((stopEv.timestamp as { seconds: number }).seconds).toBeGreaterThan(1_700_000_000);
    q.end();
  } finally {
    await stop(k);
    cleanup();
  }
});

test("system_reset reboots the guest (RESET event), system_powerdown presses the power button, quit ends kiln", async () => {
  const { dir, cleanup } = scratchDir();
  const { k, sock } = await vmWithQmp(dir, "hb=20 powerbtn");
  try {
    const q = await Raw.open(sock);
    await q.next((m) => "QMP" in m);
    await q.cmd({ execute: "qmp_capabilities" });
    const lines = k.lines.length;
    let mark = q.lines.length;
    expect(await q.cmd({ execute: "system_reset" })).toEqual({ return: {} });
    expect((await q.next((m) => m.event === "RESET", mark)).data).toEqual({ guest: false, reason: "host-qmp-system-reset" });
    await k.waitFor(/^KILN-GUEST v1/, 10_000, lines);
    await k.waitFor(/^READY/, 10_000, lines);
    // The guest (like acpid) powers off when it sees the button; kiln exits 0.
    mark = q.lines.length;
    expect(await q.cmd({ execute: "system_powerdown" })).toEqual({ return: {} });
    await q.next((m) => m.event === "POWERDOWN", mark);
    await k.waitFor(/^POWERBUTTON$/);
    expect((await q.next((m) => m.event === "SHUTDOWN", mark)).data).toEqual({ guest: true, reason: "guest-shutdown" });
    expect(await k.exitCode()).toBe(0);
    expect(existsSync(sock)).toBe(false);
  } finally {
    await stop(k);
    cleanup();
  }
});

test("quit: SHUTDOWN, the reply, then kiln exits 0 and removes its socket", async () => {
  const { dir, cleanup } = scratchDir();
  const { k, sock } = await vmWithQmp(dir);
  try {
    const q = await Raw.open(sock);
    await q.next((m) => "QMP" in m);
    await q.cmd({ execute: "qmp_capabilities" });
    const mark = q.lines.length;
    q.send('{"execute":"quit"}\n');
    await q.next((m) => "return" in m, mark);
    expect(JSON.parse(q.lines[mark]!).event).toBe("SHUTDOWN");
    expect(JSON.parse(q.lines[mark]!).data).toEqual({ guest: false, reason: "host-qmp-quit" });
    expect(await k.exitCode()).toBe(0);
    expect(existsSync(sock)).toBe(false);
  } finally {
    await stop(k);
    cleanup();
  }
});

test("two clients at once, and malformed input, leave the guest and each other unaffected", async () => {
  const { dir, cleanup } = scratchDir();
  const { k, sock } = await vmWithQmp(dir, "hb=10");
  try {
    const a = await Raw.open(sock);
    const b = await Raw.open(sock);
    await a.next((m) => "QMP" in m);
    await b.next((m) => "QMP" in m);
    await a.cmd({ execute: "qmp_capabilities" });
    // b has not negotiated: still refused there.
    expect((await b.cmd({ execute: "query-status" })).error).toBeDefined();
    // Garbage, non-objects, split and joined commands on a: each gets error replies, and a command
    // sent after each is answered normally (ids mark where each part ends).
    const errorsBetween = async (garbage: string | Uint8Array, id: number) => {
      const mark = a.lines.length;
      a.send(garbage);
      a.send(`{"execute":"query-name","id":${id}}\n`);
      await a.next((m) => m.id === id, mark);
      return a.lines.slice(mark).map((l) => JSON.parse(l)).filter((m) => "error" in m && m.id === undefined);
    };
    expect((await errorsBetween("not json at all\n", 101)).length).toBeGreaterThan(0);
    expect((await errorsBetween("[1,2,3]\n", 102)).map((m) => m.error.desc)).toEqual(["QMP input must be a JSON object"]);
    expect((await errorsBetween(new Uint8Array([0xff, 0xfe, 0x00, 0x80, 0x0a]), 103)).length).toBeGreaterThan(0);
    const mark = a.lines.length;
    a.send('{"execute":"query-');
    a.send('status","id":1}{"execute":"query-name","id":2}\n');
    expect((await a.next((m) => m.id === 1, mark)).return).toBeDefined();
    expect((await a.next((m) => m.id === 2, mark)).return).toBeDefined();
    // A client that goes away mid-command does not disturb anyone.
    const c = await Raw.open(sock);
    await c.next((m) => "QMP" in m);
    c.send('{"execute":"qmp_capabilities"}\n{"execute":"stop"}\n');
    c.end();
    await b.cmd({ execute: "qmp_capabilities" });
    const st = (await b.cmd({ execute: "query-status" })).return as { status: string };
    expect(["paused", "running"]).toContain(st.status);
    await b.cmd({ execute: "cont" });
    // An oversized message closes only that connection.
    const big = await Raw.open(sock);
    await big.next((m) => "QMP" in m);
    big.send('{"execute":"qmp_capabilities","arguments":{"x":"' + "a".repeat(2 * 1024 * 1024));
    await big.next((m) => "error" in m).catch(() => {});
    for (let i = 0; !big.closed && i < 200; i++) await Bun.sleep(10);
    expect(big.closed).toBe(true);
    // The guest never noticed.
    const hb = await waitHeartbeat(k, heartbeats(k).at(-1)!.n + 5);
    expect(hb.counters.length).toBe(2);
    expect((await a.cmd({ execute: "query-status" })).return).toEqual({ status: "running", singlestep: false, running: true });
  } finally {
    await stop(k);
    cleanup();
  }
});

test("kiln qmp SOCKET COMMAND: one command from the shell, exit status from the reply", async () => {
  const { dir, cleanup } = scratchDir();
  const { k, sock } = await vmWithQmp(dir);
  try {
    const run = (...args: string[]) => Bun.spawnSync([process.execPath, MAIN, "qmp", sock, ...args]);
    const st = run("query-status");
    expect(st.exitCode).toBe(0);
    expect(JSON.parse(st.stdout.toString())).toEqual({ status: "running", singlestep: false, running: true });
    const bad = run("migrate", '{"uri":"bogus:x"}');
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr.toString()).toContain("GenericError: Parameter 'uri' expects a valid migration protocol");
    const none = Bun.spawnSync([process.execPath, MAIN, "qmp", join(dir, "nope.sock"), "query-status"]);
    expect(none.exitCode).toBe(1);
  } finally {
    await stop(k);
    cleanup();
  }
});

test("a second kiln on a live QMP socket is refused; a stale socket file is replaced", async () => {
  const { dir, cleanup } = scratchDir();
  const { k, sock } = await vmWithQmp(dir);
  try {
    const again = await bootGuest({ extra: ["-qmp", `unix:${sock},server,nowait`] });
    expect(await again.exitCode()).toBe(1);
    expect(again.stderr).toContain(sock);
    k.kill("SIGKILL"); // leaves a stale socket file behind
    await k.exited;
    expect(existsSync(sock)).toBe(true);
    const fresh = await bootGuest({ extra: ["-qmp", `unix:${sock},server,nowait`] });
    try {
      await fresh.waitFor(/^READY/);
      const q = await Raw.open(sock);
      expect(await q.next((m) => "QMP" in m)).toBeDefined();
      q.end();
    } finally {
      await stop(fresh);
    }
  } finally {
    cleanup();
  }
});


test("StratoVirt's form: -chardev socket,... -mon chardev=ID,mode=control", async () => {
  const { dir, cleanup } = scratchDir();
  const sock = join(dir, "mon.sock");
  const k = await bootGuest({ append: "hb=50", extra: ["-chardev", `socket,id=mon0,path=${sock},server,nowait`, "-mon", "chardev=mon0,mode=control"] });
  try {
    await k.waitFor(/^READY/);
    const q = await Raw.open(sock);
    await q.next((m) => "QMP" in m);
    await q.cmd({ execute: "qmp_capabilities" });
    expect((await q.cmd({ execute: "query-status" })).return).toEqual({ status: "running", singlestep: false, running: true });
    q.end();
  } finally {
    await stop(k);
    cleanup();
  }
});
