/**
 * The source side of a live migration (pre-copy):
 *
 *   setup    connect, send the header and the guest configuration, wait for the destination's OK,
 *            turn on dirty logging
 *   active   pass 1 sends every page that holds data; then, while the expected downtime (pages still
 *            dirty / measured bandwidth) exceeds downtime-limit, another pass sends what was dirtied
 *   switch   pause the vCPUs, send the last dirty pages and every component's state, wait until the
 *            destination has loaded it all, then tell it to run (COMMIT)
 *
 * Whatever fails or is cancelled before COMMIT, the guest keeps running here.
 */
import { trace } from "../util/trace.ts";
import type { Machine } from "../vmm/machine.ts";
import { guestConfig, saveMachineState } from "../vmm/machine-state.ts";
import type { VcpuState } from "../vmm/vcpu-protocol.ts";
import { shutdownFd, pipe, closeFd } from "../../ffi/socket.ts";
import { munmap } from "../../ffi/libc.ts";
import { WorkerChannel } from "./channel.ts";
import { SCTL_CANCEL, SCTL_WORDS, type SendCommand, type SendReply, type SendStats, type SendTarget } from "./worker-protocol.ts";
import { describeUri, resolveSockAddr, type MigrationUri } from "./uri.ts";
import { encodeHeader, encodeState, FLAG_RETURN_PATH, FLAG_SNAPSHOT, jsonRecord, record, Rec, PAGE_SIZE } from "./wire.ts";
import type { MigrationParameters } from "./params.ts";

export type MigrationStatus = "none" | "setup" | "active" | "completed" | "failed" | "cancelling" | "cancelled";

export class MigrationFailed extends Error {}
class CancelledError extends Error {}

/** Progress as query-migrate reports it. */
export interface MigrationProgress {
  status: MigrationStatus;
  startedAt: number;
  setupMs: number;
  totalMs?: number;
  downtimeMs?: number;
  expectedDowntimeMs: number;
  transferred: number;
  totalBytes: number;
  remaining: number;
  duplicate: number;
  normal: number;
  dirtySyncCount: number;
  dirtyPagesRate: number;
  mbps: number;
  pass: number;
  errorDesc?: string;
}

export interface SourceHooks {
  onStatus(status: MigrationStatus): void;
  onPass(pass: number): void;
  log(level: "info" | "warn" | "debug", msg: string): void;
}

/** How long the destination may take to answer at setup and at switchover. */
const CONFIG_TIMEOUT_MS = 30_000;
const LOADED_TIMEOUT_MS = 60_000;
/** Pre-copy goes on while a pass leaves less than this fraction of what the previous one left... */
const SHRINKING = 0.75;
/** ...and more than this much (below it, the stopped pass is already short)... */
const SMALL_ENOUGH = 1 << 20;
/** ...for at most this many passes (StratoVirt's bound). */
const MAX_PASSES = 30;

export class MigrationSource {
  readonly progress: MigrationProgress;
  private readonly ch = new WorkerChannel<SendCommand, SendReply>("send-worker");
  private readonly ctlSab = new SharedArrayBuffer(SCTL_WORDS * 4);
  private readonly ctl = new Int32Array(this.ctlSab);
  private fd = -1;
  private child: ReturnType<typeof Bun.spawn> | undefined;
  private cancelRequested = false;
  private pausedByUs = false;
  private dirtyLogging = false;
  private readonly done: Promise<void>;

  /** `local`: a same-host migration that passes guest RAM's memfd instead of copying pages (unix: only). */
  constructor(
    private readonly m: Machine,
    private readonly uri: MigrationUri,
    private readonly params: MigrationParameters,
    private readonly hooks: SourceHooks,
    private readonly local = false,
  ) {
    this.progress = {
      status: "setup",
      startedAt: performance.now(),
      setupMs: 0,
      expectedDowntimeMs: params["downtime-limit"],
      transferred: 0,
      totalBytes: m.memory.size,
      remaining: m.memory.size,
      duplicate: 0,
      normal: 0,
      dirtySyncCount: 0,
      dirtyPagesRate: 0,
      mbps: 0,
      pass: 0,
    };
    this.done = this.run();
  }

  get finished(): Promise<void> {
    return this.done;
  }

  /** migrate_cancel: stop at the next opportunity, unblocking a stalled transfer. */
  cancel(): void {
    if (this.cancelRequested || !["setup", "active"].includes(this.progress.status)) return;
    this.cancelRequested = true;
    this.setStatus("cancelling");
    Atomics.store(this.ctl, SCTL_CANCEL, 1);
    Atomics.notify(this.ctl, SCTL_CANCEL);
    if (this.fd >= 0) shutdownFd(this.fd);
    this.child?.kill("SIGKILL");
  }

  /** max-bandwidth changed while running (migrate-set-parameters). */
  setBandwidth(bytesPerSec: number): void {
    void this.ch.call({ type: "bandwidth", bytesPerSec });
  }

  private setStatus(s: MigrationStatus): void {
    this.progress.status = s;
    this.hooks.onStatus(s);
  }

  private async cmd(c: SendCommand): Promise<SendReply> {
    const r = await this.ch.call(c);
    if (r.type === "error") {
      if (r.cancelled || this.cancelRequested) throw new CancelledError(r.message);
      throw new MigrationFailed(r.message);
    }
    return r;
  }

  private check(): void {
    if (this.cancelRequested) throw new CancelledError("cancelled");
  }

  private account(s: SendStats): void {
    const p = this.progress;
    p.transferred += s.bytes;
    p.normal += s.normalPages;
    p.duplicate += s.zeroPages;
    if (s.ms > 0 && s.bytes > 0) p.mbps = (s.bytes * 8) / 1e6 / (s.ms / 1000);
  }

  private async openTarget(): Promise<{ target: SendTarget; returnPath: boolean; snapshot: boolean }> {
    const u = this.uri;
    switch (u.transport) {
      case "tcp":
      case "unix":
        return { target: { kind: "socket", addr: await resolveSockAddr(u), display: describeUri(u) }, returnPath: true, snapshot: false };
      case "file":
        return { target: { kind: "file", path: u.path }, returnPath: false, snapshot: true };
      case "exec": {
        // The stream goes to the command's stdin; kiln keeps the write end of the pipe.
        const [r, w] = pipe();
        this.child = Bun.spawn(["/bin/sh", "-c", u.command], { stdin: r, stdout: "inherit", stderr: "inherit" });
        closeFd(r);
        return { target: { kind: "fd", fd: w, display: u.command }, returnPath: false, snapshot: true };
      }
    }
  }

  private async run(): Promise<void> {
    const m = this.m;
    const p = this.progress;
    this.hooks.onStatus("setup");
    let oldRam: { addr: number; len: number } | undefined;
    try {
      // Same-host: the destination maps this RAM itself; nothing to track or copy.
      const userDirty = this.local ? null : m.startDirtyLog();
      this.dirtyLogging = !this.local;
      await this.cmd({ type: "init", memory: m.memory.desc, vmFd: m.vm.fd, userDirty, ctl: this.ctlSab, maxBandwidth: this.params["max-bandwidth"] });
      const { target, returnPath, snapshot } = await this.openTarget();
      this.check();
      const opened = (await this.cmd({ type: "open", target })) as Extract<SendReply, { type: "opened" }>;
      this.fd = opened.fd;
      // A cancel that came while connecting found no descriptor to shut down: do it now.
      if (this.cancelRequested) shutdownFd(this.fd);
      this.check();
      const flags = (returnPath ? FLAG_RETURN_PATH : 0) | (snapshot ? FLAG_SNAPSHOT : 0);
      const header = new Uint8Array([...encodeHeader(flags), ...jsonRecord(Rec.CONFIG, guestConfig(m))]);
      await this.cmd({ type: "write", bytes: header });
      if (returnPath) await this.expect(Rec.CONFIG_OK, CONFIG_TIMEOUT_MS);
      p.setupMs = performance.now() - p.startedAt;
      this.setStatus("active");
      // Encode the device sections once now (and throw them away): the encoder then runs warm in the downtime.
      concat(m.devices.map((d) => encodeState({ name: d.persistName, version: d.persistVersion, data: d.save() })));

      if (this.local) {
        // Hand over the memfd (the guest goes on running on the shared pages until the switchover).
        await this.cmd({ type: "send-memfd" });
        p.remaining = 0;
      }
      // Pass 1: everything that holds data. Dirty logging is already on, so nothing written meanwhile is lost.
      if (!this.local) await this.pass(true);
      let previous = Infinity;
      while (!this.local) {
        this.check();
        const dirty = ((await this.cmd({ type: "sync" })) as Extract<SendReply, { type: "synced" }>).dirtyPages;
        p.dirtySyncCount++;
        p.remaining = dirty * PAGE_SIZE;
        const bytesPerMs = Math.max((p.mbps * 1e6) / 8 / 1000, 1);
        p.expectedDowntimeMs = Math.round(p.remaining / bytesPerMs);
        if (m.state !== "running") break;
        // Within the limit, keep going while each pass still shrinks what is left markedly: the stopped
        // pass is then as small as the guest's writing allows, for a little more total time. Always do
        // at least one incremental pass, so the switchover runs warm code (JavaScript starts cold).
        const withinLimit = p.expectedDowntimeMs <= this.params["downtime-limit"];
        const stillShrinking = p.remaining < previous * SHRINKING && p.remaining > SMALL_ENOUGH;
        if (withinLimit && p.pass >= 2 && (!stillShrinking || p.pass >= MAX_PASSES)) break;
        previous = p.remaining;
        await this.pass(false);
      }

      // Switchover: from here the guest is stopped; everything still dirty goes now.
      const wasRunning = m.state === "running";
      const pausedAt = performance.now();
      let cpuStates: (VcpuState | undefined)[] = [];
      trace("src.pause");
      if (wasRunning) {
        this.pausedByUs = true;
        cpuStates = await m.pauseAndSave("finish-migrate", true);
      }
      const pausedRealtimeNs = Date.now() * 1e6;
      trace("src.paused");
      // Commands to the data-path Worker are queued without waiting for each answer: it sends the last
      // pages while this thread collects the state (the downtime is their maximum, not their sum), then
      // writes the state, then waits for LOADED and answers COMMIT itself.
      const queued: Promise<unknown>[] = this.local ? [] : [this.cmd({ type: "sync" }), this.pass(false, true)];
      queued.forEach((q) => q.catch(() => {}));
      const sections = await saveMachineState(m, cpuStates);
      trace("src.state-saved");
      p.dirtySyncCount++;
      const tail: Uint8Array[] = sections.map(encodeState);
      tail.push(jsonRecord(Rec.END, { runState: wasRunning ? "running" : "paused", pausedRealtimeNs }));
      queued.push(this.cmd({ type: "write", bytes: concat(tail) }));
      // The point of no return: on LOADED the Worker answers COMMIT, after which the destination runs
      // the guest, so this side must not.
      if (returnPath) queued.push(this.expect(Rec.LOADED, LOADED_TIMEOUT_MS, true));
      queued.forEach((q) => q.catch(() => {}));
      await Promise.all(queued);
      trace("src.committed");
      await this.cmd({ type: "close" });
      this.fd = -1;
      if (this.child) {
        const code = await this.child.exited;
        if (code !== 0) throw new MigrationFailed(`the exec migration command exited with status ${code}`);
      }
      p.downtimeMs = Math.round(performance.now() - pausedAt);
      p.remaining = 0;
      // The destination owns the shared pages now; this process must never touch them again.
      if (this.local) oldRam = m.memory.detach();
      p.totalMs = Math.round(performance.now() - p.startedAt);
      this.stopDirtyLog();
      this.pausedByUs = false;
      m.state = "postmigrate";
      this.setStatus("completed");
      this.hooks.log("info", `migration to ${describeUri(this.uri)} completed in ${p.totalMs} ms, downtime ${p.downtimeMs} ms`);
    } catch (e) {
      await this.abort(e as Error);
    } finally {
      // Unmapping what the guest touched is slow (see detach()): the idle Worker does it, not this thread.
      const moved = oldRam;
      if (moved && (await this.ch.call({ type: "unmap", ...moved })).type === "error") munmap(moved.addr, moved.len);
      this.ch.terminate();
    }
  }

  /** One pre-copy pass. Both commands are queued before anything is awaited, so a caller may queue more. */
  private async pass(full: boolean, final = false): Promise<void> {
    const p = this.progress;
    p.pass++;
    if (!final) this.hooks.onPass(p.pass);
    const t0 = performance.now();
    const marker = this.cmd({ type: "write", bytes: passRecord(p.pass) });
    const sent = this.cmd({ type: "send", full });
    marker.catch(() => {});
    await marker;
    const r = (await sent) as Extract<SendReply, { type: "sent" }>;
    this.account(r.stats);
    const secs = (performance.now() - t0) / 1000;
    if (!full && secs > 0) p.dirtyPagesRate = Math.round((r.stats.normalPages + r.stats.zeroPages) / secs);
  }

  private async expect(type: number, timeoutMs: number, commit = false): Promise<void> {
    const r = (await this.cmd({ type: "await", timeoutMs, commitOn: commit ? type : undefined })) as Extract<SendReply, { type: "response" }>;
    if (r.rtype === Rec.ERROR) throw new MigrationFailed(`the destination refused: ${r.text}`);
    if (r.rtype !== type) throw new MigrationFailed(`unexpected answer ${r.rtype} from the destination`);
  }

  private stopDirtyLog(): void {
    if (!this.dirtyLogging) return;
    this.dirtyLogging = false;
    this.m.stopDirtyLog();
  }

  /** Failure or cancel before COMMIT: the guest goes on running here as if nothing happened. */
  private async abort(e: Error): Promise<void> {
    const p = this.progress;
    if (this.fd >= 0) shutdownFd(this.fd);
    await this.ch.call({ type: "close" });
    this.fd = -1;
    this.child?.kill("SIGKILL");
    this.stopDirtyLog();
    if (this.pausedByUs) {
      this.pausedByUs = false;
      this.m.resume();
    } else if (this.m.state === "finish-migrate") {
      this.m.state = "paused";
    }
    p.totalMs = Math.round(performance.now() - p.startedAt);
    if (e instanceof CancelledError || this.cancelRequested) {
      this.setStatus("cancelled");
      this.hooks.log("info", `migration to ${describeUri(this.uri)} cancelled`);
    } else {
      p.errorDesc = e.message;
      this.setStatus("failed");
      this.hooks.log("warn", `migration to ${describeUri(this.uri)} failed: ${e.message}`);
    }
  }
}

function passRecord(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, true);
  return record(Rec.PASS, b);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, b) => n + b.byteLength, 0));
  let o = 0;
  for (const b of parts) {
    out.set(b, o);
    o += b.byteLength;
  }
  return out;
}
