/**
 * Messages and shared control words between the migration orchestrators (main thread) and their
 * data-path Workers (send-worker.ts, recv-worker.ts). Kept apart from the Worker modules so that
 * importing them never runs Worker code on the main thread.
 */
import type { GuestMemoryDescriptor } from "../memory/guest-memory.ts";
import type { SockAddr } from "../../ffi/socket.ts";
import type { GuestConfig } from "../vmm/machine-state.ts";
import type { StateSection } from "./wire.ts";

export type SendTarget = { kind: "socket"; addr: SockAddr; display: string } | { kind: "file"; path: string } | { kind: "fd"; fd: number; display: string };

export interface SendStats {
  bytes: number;
  normalPages: number;
  zeroPages: number;
  ms: number;
}

export type SendCommand =
  | { type: "init"; memory: GuestMemoryDescriptor; vmFd: number; userDirty: SharedArrayBuffer | null; ctl: SharedArrayBuffer; maxBandwidth: number }
  | { type: "open"; target: SendTarget }
  | { type: "write"; bytes: Uint8Array }
  /** Fetch and clear KVM's dirty log and kiln's bitmap into the pending set; reply with its size. */
  | { type: "sync" }
  /** Send the pending set (or, with full, every page that holds data) as RAM records. */
  | { type: "send"; full: boolean }
  /**
   * Read one return-path record, waiting at most timeoutMs. With `commitOn`, answer that record type
   * with COMMIT at once, from this thread: the switchover then costs no extra hop to the main thread.
   */
  | { type: "await"; timeoutMs: number; commitOn?: number }
  | { type: "bandwidth"; bytesPerSec: number }
  /** Send the MEMFD record with guest RAM's memfd attached (same-host migration). */
  | { type: "send-memfd" }
  /** Unmap guest RAM's old mapping after a same-host migration moved it aside (GuestMemory.detach). */
  | { type: "unmap"; addr: number; len: number }
  | { type: "close" };

export type SendReply =
  | { type: "ok" }
  | { type: "opened"; fd: number }
  | { type: "synced"; dirtyPages: number }
  | { type: "sent"; stats: SendStats }
  | { type: "response"; rtype: number; text: string }
  | { type: "error"; message: string; cancelled: boolean };

/** Control words shared with the main thread. */
/** Set (and notified) by migrate_cancel; the Worker's bandwidth throttle sleeps on this word too. */
export const SCTL_CANCEL = 0;
export const SCTL_WORDS = 4;

export type RecvSource = { kind: "listen"; addr: SockAddr; display: string } | { kind: "file"; path: string } | { kind: "fd"; fd: number; display: string };

export type RecvCommand =
  | {
      type: "init";
      memory: GuestMemoryDescriptor;
      ctl: SharedArrayBuffer;
      config: GuestConfig;
      /** Each vCPU's go word (vcpu-protocol.ts CTL_GO): set to GO_RUN on COMMIT, so the guest starts with no main-thread hop. */
      goWords: { sab: SharedArrayBuffer; index: number }[];
      /** Where this thread loads the vCPU and KVM state itself (vCPU ioctls work from any thread). */
      vmFd: number;
      vcpuFds: number[];
      xsaveSize: number;
      msrIndexList: number[];
      /** Every state section the machine has (cpu/N, kvm/..., then the devices). */
      sections: string[];
    }
  /** Listen (sockets) now, so that the source can connect as soon as this resolves. */
  | { type: "prepare"; source: RecvSource }
  /**
   * Accept/open, then run the whole protocol: check the configuration (answering CONFIG_OK or ERROR),
   * take records up to END, wait for the main thread's verdict on applying the state (RCTL_VERDICT),
   * answer LOADED and wait for COMMIT. This thread blocks throughout, so it cannot take further
   * commands until it posts "done" or "error".
   */
  | { type: "receive" }
  | { type: "close" };

export type RecvEvent =
  | { type: "listening"; listenFd: number }
  | { type: "connected"; fd: number; flags: number }
  | { type: "pass"; pass: number }
  /** The source's guest RAM is now mapped over ours (same-host migration); we own `fd`. */
  | { type: "memfd"; fd: number }
  /**
   * END: this thread has loaded the vCPU and KVM state; the device sections (and END itself) are for
   * the main thread, which owns the device models.
   */
  | { type: "end"; json: string; flags: number; stats: RecvStats; sections: StateSection[] }
  | { type: "ok" }
  /** The protocol finished; `committed` false for streams without a return path (file, exec). */
  | { type: "done"; committed: boolean }
  | { type: "error"; message: string };

/**
 * Shared words: the main thread's verdict after END: state applied and the guest is to run (its vCPUs
 * wait on their go words, which the receiver sets on COMMIT), applied and to stay paused, or failed
 * (text in RCTL_TEXT).
 */
export const RCTL_VERDICT = 0;
export const RCTL_TEXT_LEN = 1;
export const RCTL_TEXT = 8; // byte offset of the utf-8 failure text
export const RCTL_BYTES = 4096;
export const VERDICT_LOADED_RUN = 1;
export const VERDICT_LOADED_STAY = 2;
export const VERDICT_FAILED = 3;

export interface RecvStats {
  bytes: number;
  dataPages: number;
  zeroPages: number;
}

