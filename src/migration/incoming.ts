/**
 * The destination side: listen (or open the file / start the command), refuse a source whose guest
 * configuration differs before anything is applied, take RAM and state, answer LOADED, and run the
 * guest only once the source says COMMIT. Any error fails this destination (its guest never ran);
 * the source then keeps running its guest.
 */
import { trace } from "../util/trace.ts";
import type { Machine } from "../vmm/machine.ts";
import { expectedSections, guestConfig, restoreDevices } from "../vmm/machine-state.ts";
import { pipe, closeFd } from "../../ffi/socket.ts";
import { removeStaleSocket } from "../chardev/chardev.ts";
import { WorkerChannel } from "./channel.ts";
import { RCTL_BYTES, RCTL_TEXT, RCTL_TEXT_LEN, RCTL_VERDICT, VERDICT_FAILED, VERDICT_LOADED_RUN, VERDICT_LOADED_STAY, type RecvCommand, type RecvEvent, type RecvSource } from "./worker-protocol.ts";
import { describeUri, resolveSockAddr, type MigrationUri } from "./uri.ts";
import { WireError, type StateSection } from "./wire.ts";
import type { MigrationStatus } from "./source.ts";
import { existsSync, unlinkSync } from "node:fs";

export interface IncomingHooks {
  onStatus(status: MigrationStatus): void;
  log(level: "info" | "warn" | "debug", msg: string): void;
}

export interface IncomingResult {
  /** Whether the guest should run now (it was running on the source). */
  run: boolean;
}

export class IncomingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "IncomingError";
  }
}

export class MigrationIncoming {
  status: MigrationStatus = "none";
  errorDesc: string | undefined;
  private ch: WorkerChannel<RecvCommand, RecvEvent> | undefined;
  private child: ReturnType<typeof Bun.spawn> | undefined;
  private unixPath: string | undefined;
  private readonly ctlSab = new SharedArrayBuffer(RCTL_BYTES);
  private readonly ctl = new Int32Array(this.ctlSab);
  private readonly ctlBytes = new Uint8Array(this.ctlSab);

  /** `autostart`: whether the guest should run once here, if it ran on the source (QEMU's autostart). */
  constructor(
    private readonly m: Machine,
    private readonly uri: MigrationUri,
    private readonly hooks: IncomingHooks,
    private readonly autostart: () => boolean,
  ) {}

  private setStatus(s: MigrationStatus): void {
    this.status = s;
    this.hooks.onStatus(s);
  }

  /** Start listening (sockets) or prepare the file/command; resolves once a source can connect. */
  async listen(): Promise<void> {
    const u = this.uri;
    let source: RecvSource;
    if (u.transport === "tcp" || u.transport === "unix") {
      if (u.transport === "unix") {
        await refuseLiveSocket(u.path);
        this.unixPath = u.path;
      }
      source = { kind: "listen", addr: await resolveSockAddr(u, true), display: describeUri(u) };
    } else if (u.transport === "file") {
      source = { kind: "file", path: u.path };
    } else {
      const [r, w] = pipe();
      this.child = Bun.spawn(["/bin/sh", "-c", u.command], { stdin: "ignore", stdout: w, stderr: "inherit" });
      closeFd(w);
      source = { kind: "fd", fd: r, display: u.command };
    }
    this.ch = new WorkerChannel<RecvCommand, RecvEvent>("recv-worker");
    const init = await this.ch.call({
      type: "init",
      memory: this.m.memory.desc,
      ctl: this.ctlSab,
      config: guestConfig(this.m),
      goWords: this.m.vcpus.map((v) => v.goWord),
      vmFd: this.m.vm.fd,
      vcpuFds: this.m.vcpus.map((v) => v.vcpuFd),
      xsaveSize: this.m.xsaveSize,
      msrIndexList: this.m.msrIndexList,
      sections: expectedSections(this.m),
    });
    if (init.type === "error") throw new IncomingError(init.message);
    const ready = await this.ch.call({ type: "prepare", source });
    if (ready.type === "error") throw new IncomingError(ready.message);
    // From here the vCPU Workers wait on their go words; the receiver loads their state and lets them run.
    for (const v of this.m.vcpus) v.arm();
  }

  /**
   * Receive one migration. Resolves with whether to run the guest (after COMMIT, or at the end of a
   * file/exec stream); rejects with the reason the incoming migration failed.
   */
  async receive(): Promise<IncomingResult> {
    const ch = this.ch!;
    let run = false;
    const outcome = new Promise<void>((resolve, reject) => {
      ch.onEvent((ev) => {
        switch (ev.type) {
          case "connected":
            this.setStatus("active");
            break;
          case "memfd":
            // The receiving Worker mapped the source's guest RAM over ours (same-host migration).
            this.m.memory.adoptedElsewhere(ev.fd);
            break;
          case "end":
            trace("dst.end");
            void this.applyEnd(ev.json, ev.sections).then(
              (r) => {
                run = r;
                this.verdict(r ? VERDICT_LOADED_RUN : VERDICT_LOADED_STAY);
              },
              // The Worker answers ERROR to the source and then reports the failure itself.
              (e: Error) => this.verdict(VERDICT_FAILED, e.message),
            );
            break;
          case "done":
            trace("dst.done");
            resolve();
            break;
          case "error":
            reject(new IncomingError(ev.message));
            break;
        }
      });
    });
    ch.post({ type: "receive" });
    try {
      await outcome;
      this.setStatus("completed");
      return { run };
    } catch (e) {
      this.errorDesc = (e as Error).message;
      this.setStatus("failed");
      // vCPUs restored and waiting for the switchover stay parked.
      for (const v of this.m.vcpus) v.go(false);
      throw e;
    } finally {
      this.close();
    }
  }

  /**
   * The receiving Worker has loaded the vCPUs and KVM state; restore the devices (this thread owns
   * them). It waits for the verdict before it answers LOADED. Resolves with whether the guest is to run.
   */
  private async applyEnd(json: string, sections: StateSection[]): Promise<boolean> {
    let end: { runState?: unknown };
    try {
      end = JSON.parse(json);
    } catch {
      throw new WireError("the END record is not JSON");
    }
    restoreDevices(this.m, new Map(sections.map((s) => [s.name, s])));
    trace("dst.restored");
    return end.runState === "running" && this.autostart();
  }

  private verdict(v: number, text = ""): void {
    const bytes = new TextEncoder().encode(text).subarray(0, RCTL_BYTES - RCTL_TEXT);
    this.ctlBytes.set(bytes, RCTL_TEXT);
    Atomics.store(this.ctl, RCTL_TEXT_LEN, bytes.byteLength);
    Atomics.store(this.ctl, RCTL_VERDICT, v);
    Atomics.notify(this.ctl, RCTL_VERDICT);
  }

  close(): void {
    this.ch?.terminate();
    this.ch = undefined;
    this.child?.kill("SIGKILL");
    if (this.unixPath && existsSync(this.unixPath)) {
      try {
        unlinkSync(this.unixPath);
      } catch {
        // gone already
      }
    }
  }
}

/** A unix socket path in use by a live process is refused; a stale file is removed. */
async function refuseLiveSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  const live = await Bun.connect({ unix: path, socket: { data() {} } }).then(
    (s) => {
      s.end();
      return true;
    },
    () => false,
  );
  if (live) throw new IncomingError(`${path} is in use by another process`);
  removeStaleSocket(path);
}
