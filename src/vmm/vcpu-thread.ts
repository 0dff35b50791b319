/**
 * The main thread's handle on one vCPU Worker: start it, run/pause it (kick = immediate_exit + SIGUSR1),
 * serve its PIO/MMIO exits from the device buses, and ask it for its state while paused.
 */
import { getpid, tgkill, toArrayBuffer, SIGUSR1 } from "../../ffi/libc.ts";
import { KvmRun } from "../../ffi/kvm-abi.ts";
import {
  CTL_ADDR_HI,
  CTL_ADDR_LO,
  CTL_BYTES,
  CTL_COUNT,
  CTL_DATA_OFFSET,
  CTL_DATA_SIZE,
  CTL_DIR,
  CTL_DOORBELL,
  CTL_EXITS,
  CTL_RING_HEAD,
  CTL_RING_TAIL,
  CTL_KIND,
  CTL_SIZE,
  CTL_SLOT,
  CTL_WANT,
  KIND_PIO,
  RING_ENTRIES,
  RING_ENTRY_WORDS,
  RING_OFFSET,
  SLOT_REQUEST,
  SLOT_RESPONSE,
  WANT_EXIT,
  WANT_PAUSE,
  WANT_RUN,
  type MainToVcpu,
  type VcpuInitMessage,
  type VcpuState,
  type VcpuToMain,
} from "./vcpu-protocol.ts";

/** Where forwarded exits go: the machine's PIO and MMIO buses. `data` is read from (writes) or filled (reads). */
export interface ExitHandler {
  pio(write: boolean, port: number, size: number, count: number, data: Uint8Array): void;
  mmio(write: boolean, addr: number, size: number, data: Uint8Array): void;
}

export type StoppedMessage = Extract<VcpuToMain, { type: "stopped" }>;

export class VcpuError extends Error {
  constructor(id: number, message: string) {
    super(`vCPU ${id}: ${message}`);
    this.name = "VcpuError";
  }
}

type Waiter = { type: VcpuToMain["type"]; resolve: (m: VcpuToMain) => void; reject: (e: Error) => void };

export class VcpuThread {
  private worker: Worker | undefined;
  private readonly sab = new SharedArrayBuffer(CTL_BYTES);
  private readonly ctl = new Int32Array(this.sab, 0, CTL_DATA_OFFSET / 4);
  private readonly data = new Uint8Array(this.sab, CTL_DATA_OFFSET, CTL_DATA_SIZE);
  private readonly ring = new Int32Array(this.sab, RING_OFFSET, RING_ENTRIES * RING_ENTRY_WORDS);
  private readonly scratch = new Uint8Array(8);
  private readonly scratchView = new DataView(this.scratch.buffer);
  private tid = 0;
  private immediateExit: Uint8Array | undefined;
  private waiters: Waiter[] = [];
  private serving = false;
  /** True between run() and the Worker reporting it parked (or stopped). */
  running = false;

  /**
   * `drainAll` must drain the posted writes of every vCPU of the machine (this one included): it runs
   * before any read is served, so reads observe every write that happened before them.
   */
  constructor(
    readonly id: number,
    private readonly exits: ExitHandler,
    private readonly drainAll: () => void,
    private readonly onStopped: (m: StoppedMessage) => void,
    private readonly onError: (e: Error) => void,
  ) {}

  /** Spawn the Worker, create and set up the vCPU in it; resolves once it is ready to run. */
  async start(init: Omit<VcpuInitMessage, "type" | "ctl" | "id">): Promise<void> {
    // The Worker file is a separate entry point of the compiled binary (see package.json "build").
    this.worker = new Worker(new URL("./vcpu-worker.ts", import.meta.url).href);
    this.worker.onmessage = (ev: MessageEvent<VcpuToMain>) => this.onMessage(ev.data);
    this.worker.onerror = (ev) => this.onError(new VcpuError(this.id, `worker failed: ${(ev as ErrorEvent).message}`));
    const ready = this.waitFor("ready");
    this.post({ type: "init", id: this.id, ctl: this.sab, ...init });
    const m = (await ready) as Extract<VcpuToMain, { type: "ready" }>;
    this.tid = m.tid;
    this.immediateExit = new Uint8Array(toArrayBuffer(m.runAddr as never, 0, KvmRun.fields.immediate_exit.offset + 1));
    this.serveExits();
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
    if (!this.running) return;
    const parked = this.waitFor("paused");
    this.kick(WANT_PAUSE);
    await parked;
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

  async restore(state: VcpuState): Promise<void> {
    if (this.running) throw new VcpuError(this.id, "restore while running");
    const p = this.waitFor("restored");
    this.post({ type: "restore", state });
    await p;
  }

  /** Number of KVM exits so far (progress indicator for tests and stats). */
  get exitCount(): number {
    return Atomics.load(this.ctl, CTL_EXITS);
  }

  terminate(): void {
    if (!this.worker) return;
    if (this.running && this.immediateExit) this.kick(WANT_EXIT);
    this.running = false;
    this.serving = false;
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
    if (m.type === "paused" || m.type === "stopped") this.drainRing();
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

  /** Apply this vCPU's posted writes, oldest first. */
  drainRing(): void {
    const ctl = this.ctl;
    let tail = ctl[CTL_RING_TAIL]!;
    const head = Atomics.load(ctl, CTL_RING_HEAD);
    if (tail === head) return;
    const ring = this.ring;
    const sv = this.scratchView;
    try {
      while (tail !== head) {
        const e = (tail % RING_ENTRIES) * RING_ENTRY_WORDS;
        const size = ring[e + 1]!;
        const addr = (ring[e + 2]! >>> 0) + (ring[e + 3]! >>> 0) * 0x1_0000_0000;
        sv.setInt32(0, ring[e + 4]!, true);
        sv.setInt32(4, ring[e + 5]!, true);
        tail++;
        if (ring[e] === KIND_PIO) this.exits.pio(true, addr, size, 1, this.scratch);
        else this.exits.mmio(true, addr, size, this.scratch);
      }
    } catch (err) {
      this.onError(err as Error);
    } finally {
      Atomics.store(ctl, CTL_RING_TAIL, tail);
      Atomics.notify(ctl, CTL_RING_TAIL);
    }
  }

  /** Serve posted writes and forwarded requests for as long as the Worker lives. */
  private async serveExits(): Promise<void> {
    this.serving = true;
    const ctl = this.ctl;
    while (this.serving) {
      const bell = Atomics.load(ctl, CTL_DOORBELL);
      this.drainRing();
      if (Atomics.load(ctl, CTL_SLOT) === SLOT_REQUEST) {
        try {
          this.drainAll();
          this.serveOne();
        } catch (e) {
          this.onError(e as Error);
        }
        Atomics.store(ctl, CTL_SLOT, SLOT_RESPONSE);
        Atomics.notify(ctl, CTL_SLOT);
      }
      if (Atomics.load(ctl, CTL_DOORBELL) !== bell) continue;
      const w = Atomics.waitAsync(ctl, CTL_DOORBELL, bell);
      if (w.async) await w.value;
    }
  }

  private serveOne(): void {
    const ctl = this.ctl;
    const write = ctl[CTL_DIR] === 1;
    const size = ctl[CTL_SIZE]!;
    const addr = (ctl[CTL_ADDR_LO]! >>> 0) + (ctl[CTL_ADDR_HI]! >>> 0) * 0x1_0000_0000;
    if (ctl[CTL_KIND] === KIND_PIO) this.exits.pio(write, addr, size, ctl[CTL_COUNT]!, this.data);
    else this.exits.mmio(write, addr, size, this.data);
  }
}
