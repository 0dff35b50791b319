/**
 * A virtio device type (block, network) independent of its transport (virtio-mmio, virtio-pci). The
 * transport owns feature negotiation, status, the queues' registers and interrupts; the device owns its
 * configuration space and what its queues carry.
 */
import type { DmaMemory } from "./memory.ts";
import type { Virtqueue } from "./queue.ts";

/** What a device gets from its transport. */
export interface VirtioHost {
  readonly mem: DmaMemory;
  readonly queues: readonly Virtqueue[];
  /** The machine is paused (or migrating): touch neither guest memory nor the backend's data. */
  readonly paused: boolean;
  /** Publish the used elements pushed on `q` and interrupt the driver if it asked for it. */
  usedBuffers(q: Virtqueue): void;
  /** The device configuration space changed (e.g. link status): bump the generation and interrupt. */
  configChanged(): void;
  /** The driver broke the protocol or the backend failed for good: set DEVICE_NEEDS_RESET. */
  deviceError(e: Error): void;
  log(level: "debug" | "info" | "warn", msg: string): void;
}

export abstract class VirtioDevice {
  /** Set by the transport before any other call. */
  host!: VirtioHost;
  /** Virtio device id (1 net, 2 block). */
  abstract readonly type: number;
  /** "virtio-blk", "virtio-net". */
  abstract readonly kind: string;
  /** Features offered to the driver (transport bits included). */
  abstract readonly features: bigint;
  /** Maximum size of each queue; its length is the number of queues. */
  abstract readonly queueSizes: readonly number[];
  /** The device-specific configuration space, read in place by the transport. */
  abstract readonly config: Uint8Array;

  /** A driver write into the configuration space (most fields are read-only). */
  writeConfig(_offset: number, _size: number, _value: number): void {}

  /** The driver set DRIVER_OK with these features; the queues it enabled are mapped. */
  abstract activate(features: bigint): void;

  /** Device reset (by the driver writing status 0, or a machine reset): drop everything in flight. */
  abstract deactivate(): void;

  /** The driver notified queue `q`, or the transport asks to look at it again after a pause. */
  abstract kick(q: number): void;

  /** Resume after a pause or a restore: process whatever queues and backends accumulated. */
  resumeIo(): void {
    this.host.queues.forEach((q, i) => {
      if (q.active) this.kick(i);
    });
  }

  /** Finish anything in flight before a pause completes (migration saves right after). */
  quiesce(_reason: string): void {}

  /** Device-specific state beyond the transport's (plain JSON). */
  saveState(): Record<string, unknown> {
    return {};
  }

  /** Validate and load what saveState() produced; throw an Error naming the bad field. */
  loadState(_s: Record<string, unknown>): void {}

  /** Release backend resources (files, taps). */
  close(): void {}
}
