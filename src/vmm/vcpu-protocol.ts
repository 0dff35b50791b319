/**
 * How the main thread and a vCPU Worker talk.
 *
 * While the vCPU runs, its Worker is inside a synchronous KVM_RUN loop and cannot receive messages, so
 * everything on that path goes through SharedArrayBuffers:
 *  - per vCPU, WANT: what the main thread wants (run / pause / exit). To make a running vCPU notice,
 *    the main thread also sets kvm_run.immediate_exit and sends SIGUSR1 to the Worker's thread (a kick).
 *  - per vCPU, SLOT: one in-flight PIO/MMIO read (or string write) that needs a device model's answer.
 *    The Worker fills the request, sets SLOT=REQUEST and rings the machine's doorbell; the main thread
 *    runs the device and sets SLOT=RESPONSE; the Worker copies any read data back into kvm_run and sets
 *    SLOT=IDLE.
 *  - per machine, the posted-write RING: plain device writes are *posted*, as KVM's coalesced MMIO
 *    does: the Worker appends them and goes straight back into the guest. A wake-up of the idle main
 *    thread costs ~20 µs on these hosts against ~9 µs for the exit itself, so waiting for writes would
 *    cost a serial console most of its speed. One ring shared by all vCPUs keeps the guest's order
 *    across vCPUs (two CPUs taking turns under a lock to print lines get their bytes in that order),
 *    and the main thread drains it before serving any read and before reporting a pause, so a read
 *    always sees every write that happened before it.
 * While paused, the Worker is back in its event loop and takes postMessage commands (save, run, arm,
 * destroy), answering with messages.
 */
import type { CpuidEntry } from "../kvm/kvm.ts";
import type { BootCpuState } from "../arch/x86_64/regs.ts";

export const CTL_WANT = 0;
export const CTL_SLOT = 1;
export const CTL_KIND = 2;
export const CTL_DIR = 3;
export const CTL_SIZE = 4;
export const CTL_COUNT = 5;
export const CTL_ADDR_LO = 6;
export const CTL_ADDR_HI = 7;
/** Incremented by the Worker on every KVM exit: a cheap liveness/progress counter. */
export const CTL_EXITS = 8;
/** Set by the main thread before a pause: save the vCPU state on the way out and send it with "paused". */
export const CTL_SAVE_ON_PARK = 9;
/**
 * An armed Worker (see "arm") blocks until this word is GO_RUN (enter KVM_RUN at once: a migration
 * destination's switchover, with no hop through the main thread) or GO_STAY (park).
 */
export const CTL_GO = 10;
export const GO_WAIT = 0;
export const GO_RUN = 1;
export const GO_STAY = 2;
export const CTL_WORDS = 16;
/** Request data (PIO string data up to a page, or MMIO's 8 bytes) follows the control words. */
export const CTL_DATA_OFFSET = CTL_WORDS * 4;
export const CTL_DATA_SIZE = 4096;
export const CTL_BYTES = CTL_DATA_OFFSET + CTL_DATA_SIZE;

/** The machine's queue: a doorbell any vCPU rings when it has something for the main thread, and the ring. */
export const Q_DOORBELL = 0;
/** Free-running int32 counters: HEAD reserved by producers (compare-and-swap), TAIL advanced by the main thread. */
export const Q_HEAD = 1;
export const Q_TAIL = 2;
export const Q_WORDS = 4;
/**
 * Ring entries of RING_ENTRY_WORDS Int32s: ready marker (sequence + 1 once the entry is written),
 * kind, size, addr lo, addr hi, value lo, value hi.
 */
export const RING_ENTRIES = 1024;
export const RING_ENTRY_WORDS = 7;
export const Q_BYTES = (Q_WORDS + RING_ENTRIES * RING_ENTRY_WORDS) * 4;

export const WANT_RUN = 0;
export const WANT_PAUSE = 1;
export const WANT_EXIT = 2;

export const SLOT_IDLE = 0;
export const SLOT_REQUEST = 1;
export const SLOT_RESPONSE = 2;

export const KIND_PIO = 1;
export const KIND_MMIO = 2;

export const DIR_READ = 0;
export const DIR_WRITE = 1;

/** Serialisable vCPU state: raw KVM structs, as produced and consumed by the same KVM ABI. */
export interface VcpuState {
  id: number;
  regs: Uint8Array;
  sregs: Uint8Array;
  xsave: Uint8Array;
  xcrs: Uint8Array;
  lapic: Uint8Array;
  events: Uint8Array;
  debugRegs: Uint8Array;
  mpState: number;
  /** [index, value] pairs; values as decimal strings (bigints do not survive JSON). */
  msrs: [number, string][];
}

export interface VcpuInitMessage {
  type: "init";
  id: number;
  vmFd: number;
  runSize: number;
  ctl: SharedArrayBuffer;
  /** The machine's doorbell and posted-write ring, shared by all vCPUs. */
  queue: SharedArrayBuffer;
  cpuid: CpuidEntry[];
  /** MSRs written at boot, values as decimal strings. */
  bootMsrs: [number, string][];
  /** Register state for a vCPU that starts running at once (the BSP); APs wait for INIT/SIPI. */
  boot?: BootCpuState;
  xsaveSize: number;
  /** MSR indices KVM can save (KVM_GET_MSR_INDEX_LIST), probed for readability at first save. */
  msrIndexList: number[];
}

export type MainToVcpu =
  | VcpuInitMessage
  | { type: "run" }
  | { type: "save" }
  /** A migration destination: block on CTL_GO until the switchover (GO_RUN) or its failure (GO_STAY). */
  | { type: "arm" }
  /** Close the vCPU fd and unmap kvm_run (only while paused); answered with "destroyed". */
  | { type: "destroy" };

export type GuestStopReason = "triple-fault" | "internal-error" | "fail-entry" | "system-shutdown" | "system-reset" | "system-crash" | "unexpected-exit";

export type VcpuToMain =
  | { type: "ready"; id: number; tid: number; runAddr: number; vcpuFd: number }
  | { type: "paused"; id: number; state?: VcpuState }
  | { type: "state"; id: number; state: VcpuState }
  | { type: "destroyed"; id: number }
  | { type: "stopped"; id: number; reason: GuestStopReason; detail: string; dump: string }
  | { type: "error"; id: number; message: string };
