/**
 * The main thread's side of vCPU exits (see vcpu-protocol.ts): one loop that sleeps on the machine's
 * doorbell, applies posted writes from the shared ring in order, and answers the vCPUs' pending
 * requests, each only after every earlier write.
 */
import {
  CTL_ADDR_HI,
  CTL_ADDR_LO,
  CTL_COUNT,
  CTL_DIR,
  CTL_KIND,
  CTL_SIZE,
  CTL_SLOT,
  KIND_PIO,
  Q_BYTES,
  Q_DOORBELL,
  Q_TAIL,
  Q_WORDS,
  RING_ENTRIES,
  RING_ENTRY_WORDS,
  SLOT_REQUEST,
  SLOT_RESPONSE,
} from "./vcpu-protocol.ts";

/** Where exits go: the machine's PIO and MMIO buses. `data` is read from (writes) or filled (reads). */
export interface ExitHandler {
  pio(write: boolean, port: number, size: number, count: number, data: Uint8Array): void;
  mmio(write: boolean, addr: number, size: number, data: Uint8Array): void;
}

/** A vCPU's request slot as the server sees it. */
export interface RequestSlot {
  readonly ctl: Int32Array;
  readonly data: Uint8Array;
}

export class ExitServer {
  readonly sab = new SharedArrayBuffer(Q_BYTES);
  private readonly q = new Int32Array(this.sab);
  private readonly scratch = new Uint8Array(8);
  private readonly scratchView = new DataView(this.scratch.buffer);
  private readonly slots: RequestSlot[] = [];
  private running = false;

  constructor(
    private readonly exits: ExitHandler,
    /** Runs after each batch (devices flush buffered host output here). */
    private readonly afterBatch: () => void,
    private readonly onError: (e: Error) => void,
  ) {}

  addSlot(slot: RequestSlot): void {
    this.slots.push(slot);
  }

  removeSlot(slot: RequestSlot): void {
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1);
  }

  /** Apply every posted write that is ready, oldest first. */
  drain(): void {
    const q = this.q;
    let tail = q[Q_TAIL]!;
    const sv = this.scratchView;
    try {
      for (;;) {
        const e = Q_WORDS + ((tail >>> 0) % RING_ENTRIES) * RING_ENTRY_WORDS;
        // A reserved entry that is not written yet ends the batch; its writer rings again when it is.
        if (Atomics.load(q, e) !== ((tail + 1) | 0)) break;
        const size = q[e + 2]!;
        const addr = (q[e + 3]! >>> 0) + (q[e + 4]! >>> 0) * 0x1_0000_0000;
        sv.setInt32(0, q[e + 5]!, true);
        sv.setInt32(4, q[e + 6]!, true);
        tail = (tail + 1) | 0;
        if (q[e + 1] === KIND_PIO) this.exits.pio(true, addr, size, 1, this.scratch);
        else this.exits.mmio(true, addr, size, this.scratch);
      }
    } catch (err) {
      this.onError(err as Error);
    } finally {
      if (tail !== q[Q_TAIL]) {
        Atomics.store(q, Q_TAIL, tail);
        Atomics.notify(q, Q_TAIL);
      }
    }
  }

  /** Drain, answer pending requests, flush. Also called when a vCPU reports it parked. */
  serviceOnce(): void {
    this.drain();
    for (const s of this.slots) {
      if (Atomics.load(s.ctl, CTL_SLOT) !== SLOT_REQUEST) continue;
      this.drain();
      try {
        this.serve(s);
      } catch (e) {
        this.onError(e as Error);
      }
      Atomics.store(s.ctl, CTL_SLOT, SLOT_RESPONSE);
      Atomics.notify(s.ctl, CTL_SLOT);
    }
    this.afterBatch();
  }

  private serve(s: RequestSlot): void {
    const ctl = s.ctl;
    const write = ctl[CTL_DIR] === 1;
    const size = ctl[CTL_SIZE]!;
    const addr = (ctl[CTL_ADDR_LO]! >>> 0) + (ctl[CTL_ADDR_HI]! >>> 0) * 0x1_0000_0000;
    if (ctl[CTL_KIND] === KIND_PIO) this.exits.pio(write, addr, size, ctl[CTL_COUNT]!, s.data);
    else this.exits.mmio(write, addr, size, s.data);
  }

  /** Serve until stop(). */
  async run(): Promise<void> {
    this.running = true;
    const q = this.q;
    while (this.running) {
      const bell = Atomics.load(q, Q_DOORBELL);
      this.serviceOnce();
      if (Atomics.load(q, Q_DOORBELL) !== bell) continue;
      const w = Atomics.waitAsync(q, Q_DOORBELL, bell);
      if (w.async) await w.value;
    }
  }

  stop(): void {
    this.running = false;
    Atomics.add(this.q, Q_DOORBELL, 1);
    Atomics.notify(this.q, Q_DOORBELL);
  }
}
