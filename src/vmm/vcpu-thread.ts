/**
 * The main thread's handle on one vCPU Worker: start it, run/pause it (kick = immediate_exit + SIGUSR1),
 * hand its request slot to the ExitServer, and ask it for its state while paused.
 */
import { getpid, tgkill, toArrayBuffer, SIGUSR1 } from "../../ffi/libc.ts";
import { KvmRun } from "../../ffi/kvm-abi.ts";
import {
  CTL_BYTES,
  CTL_DATA_OFFSET,
  CTL_DATA_SIZE,
  CTL_EXITS,
  CTL_GO,
  CTL_SAVE_ON_PARK,
  CTL_WANT,
  GO_RUN,
  GO_STAY,
  GO_WAIT,
  WANT_EXIT,
  WANT_PAUSE,
  WANT_RUN,
  type MainToVcpu,
  type VcpuInitMessage,
  type VcpuState,
  type VcpuToMain,
} from "./vcpu-protocol.ts";
import type { ExitServer, RequestSlot } from "./exit-server.ts";

export type StoppedMessage = Extract<VcpuToMain, { type: "stopped" }>;

export class VcpuError extends Error {
  constructor(id: number, message: string) {
    super(`vCPU ${id}: ${message}`);
    this.name = "VcpuError";
  }
}

/**
 * The Worker's module. In the compiled binary it is a second entry point (see package.json "build"),
 * stored by its path under the bundle root, which import.meta.url does not reflect there.
 */
function workerUrl(): string {
  if (import.meta.url.startsWith("file:///$bunfs/")) return "/$bunfs/root/vmm/vcpu-worker.ts";
  return new URL("./vcpu-worker.ts", import.meta.url).href;
}

type Waiter = { type: VcpuToMain["type"]; resolve: (m: VcpuToMain) => void; reject: (e: Error) => void };

export class VcpuThread implements RequestSlot {
  private worker: Worker | undefined;
  private readonly sab = new SharedArrayBuffer(CTL_BYTES);
  readonly ctl = new Int32Array(this.sab, 0, CTL_DATA_OFFSET / 4);
  readonly data = new Uint8Array(this.sab, CTL_DATA_OFFSET, CTL_DATA_SIZE);
  /** The Worker's kernel thread id (for query-cpus-fast), once started. */
  tid = 0;
  /** The vCPU's fd (its state ioctls may come from other threads, e.g. a migration receiver). */
  vcpuFd = -1;
  private immediateExit: Uint8Array | undefined;
  private waiters: Waiter[] = [];
  /** True between run() and the Worker reporting it parked (or stopped). */
  running = false;

  constructor(
    readonly id: number,
    private readonly server: ExitServer,
    private readonly onStopped: (m: StoppedMessage) => void,
    private readonly onError: (e: Error) => void,
  ) {}

  /**
   * Start the Worker thread. Loading its module takes a few milliseconds of its own thread's time, so
   * the machine spawns Workers first and sets up the VM meanwhile.
   */
  spawn(): void {
    if (this.worker) return;
    this.worker = new Worker(workerUrl());
    this.worker.onmessage = (ev: MessageEvent<VcpuToMain>) => this.onMessage(ev.data);
    this.worker.onerror = (ev) => this.onError(new VcpuError(this.id, `worker failed: ${(ev as ErrorEvent).message}`));
  }

  /** Create and set up the vCPU in its Worker; resolves once it is ready to run. */
  async start(init: Omit<VcpuInitMessage, "type" | "ctl" | "id" | "queue">): Promise<void> {
    this.spawn();
    const ready = this.waitFor("ready");
    this.post({ type: "init", id: this.id, ctl: this.sab, queue: this.server.sab, ...init });
    const m = (await ready) as Extract<VcpuToMain, { type: "ready" }>;
    this.tid = m.tid;
    this.vcpuFd = m.vcpuFd;
    this.immediateExit = new Uint8Array(toArrayBuffer(m.runAddr as never, 0, KvmRun.fields.immediate_exit.offset + 1));
    this.server.addSlot(this);
  }

  /** Let the vCPU run (after start, or after pause). */
  run(): void {
    Atomics.store(this.ctl, CTL_WANT, WANT_RUN);
    this.running = true;
    this.post({ type: "run" });
  }

  /**
   * Stop the vCPU and wait until its Worker has left KVM_RUN. Any exit it had in flight is completed
   * first (KVM finishes a pending PIO/MMIO read on the immediate_exit re-entry), so once this resolves
   * the vCPU touches neither guest memory nor device state.
   */
  async pause(): Promise<void> {
    await this.pauseAndSave(false);
  }

  /**
   * Pause, and with `save` have the Worker save the vCPU's state as it parks (one message instead of
   * two). Resolves with the state, or undefined when not asked or the vCPU was not running (then use save()).
   */
  async pauseAndSave(save: boolean): Promise<VcpuState | undefined> {
    if (!this.running) return undefined;
    const parked = this.waitFor("paused");
    if (save) Atomics.store(this.ctl, CTL_SAVE_ON_PARK, 1);
    this.kick(WANT_PAUSE);
    return ((await parked) as Extract<VcpuToMain, { type: "paused" }>).state;
  }

  private kick(want: number): void {
    Atomics.store(this.ctl, CTL_WANT, want);
    this.immediateExit![0] = 1;
    // A Worker inside KVM_RUN (or sleeping in a halted vCPU) leaves it with EINTR.
    tgkill(getpid(), this.tid, SIGUSR1);
  }

  async save(): Promise<VcpuState> {
    if (this.running) throw new VcpuError(this.id, "save while running");
    const p = this.waitFor("state");
    this.post({ type: "save" });
    return ((await p) as Extract<VcpuToMain, { type: "state" }>).state;
  }

  /**
   * A migration destination: the Worker blocks on its go word (no messages until released) while
   * the receiver loads the vCPU's state through its fd, and starts running the moment the go word
   * says so. See go().
   */
  arm(): void {
    if (this.running) throw new VcpuError(this.id, "arm while running");
    Atomics.store(this.ctl, CTL_GO, GO_WAIT);
    Atomics.store(this.ctl, CTL_WANT, WANT_RUN);
    this.post({ type: "arm" });
  }

  /** The go word of an armed vCPU; another thread (the migration receiver) may set it. */
  get goWord(): { sab: SharedArrayBuffer; index: number } {
    return { sab: this.sab, index: CTL_GO };
  }

  /**
   * Release an armed vCPU: run it, or leave it parked. The migration receiver normally sets GO_RUN
   * itself on COMMIT; this records that the vCPU runs (or not).
   */
  go(run: boolean): void {
    const was = Atomics.compareExchange(this.ctl, CTL_GO, GO_WAIT, run ? GO_RUN : GO_STAY);
    if (was === GO_WAIT) Atomics.notify(this.ctl, CTL_GO);
    if ((was === GO_WAIT && run) || was === GO_RUN) this.running = true;
  }

  /** Number of KVM exits so far (progress indicator for tests and stats). */
  get exitCount(): number {
    return Atomics.load(this.ctl, CTL_EXITS);
  }

  /** Release the vCPU (fd, kvm_run) and end the Worker. Only for a paused vCPU. */
  async destroy(): Promise<void> {
    if (!this.worker) return;
    if (this.running) await this.pause();
    const done = this.waitFor("destroyed");
    this.post({ type: "destroy" });
    await done;
    this.terminate();
  }

  terminate(): void {
    if (!this.worker) return;
    if (this.running && this.immediateExit) this.kick(WANT_EXIT);
    this.running = false;
    this.server.removeSlot(this);
    this.worker.terminate();
    this.worker = undefined;
    for (const w of this.waiters) w.reject(new VcpuError(this.id, "terminated"));
    this.waiters = [];
  }

  private post(m: MainToVcpu): void {
    this.worker!.postMessage(m);
  }

  private waitFor(type: VcpuToMain["type"]): Promise<VcpuToMain> {
    return new Promise((resolve, reject) => this.waiters.push({ type, resolve, reject }));
  }

  private onMessage(m: VcpuToMain): void {
    // Writes the vCPU posted before it parked or stopped must reach the devices before anyone sees it paused.
    if (m.type === "paused" || m.type === "stopped") this.server.serviceOnce();
    if (m.type === "paused") this.running = false;
    if (m.type === "stopped") {
      this.running = false;
      this.onStopped(m);
      // Someone may be waiting for this vCPU to park: a stopped vCPU has left KVM_RUN too.
      this.resolve("paused", { type: "paused", id: this.id });
      return;
    }
    if (m.type === "error") {
      const err = new VcpuError(this.id, m.message);
      if (this.waiters.length > 0) {
        for (const w of this.waiters) w.reject(err);
        this.waiters = [];
      } else {
        this.onError(err);
      }
      return;
    }
    this.resolve(m.type, m);
  }

  private resolve(type: VcpuToMain["type"], m: VcpuToMain): void {
    const i = this.waiters.findIndex((w) => w.type === type);
    if (i >= 0) this.waiters.splice(i, 1)[0]!.resolve(m);
  }
}
