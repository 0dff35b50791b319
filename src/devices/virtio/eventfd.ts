/**
 * An eventfd as a virtio doorbell: KVM signals it for a queue notification (ioeventfd) or waits on it
 * to inject an interrupt (irqfd). Listening uses `Bun.file(nonblocking fd).stream()`, which wakes Bun's
 * event loop through epoll with no thread blocked in read() (see /work/shared/notes/bun-kvm-facts.md §6).
 */
import { close, dup, eventfd, writeAt, EFD_CLOEXEC, EFD_NONBLOCK } from "../../../ffi/libc.ts";
import { PinnedBuffer } from "../../../ffi/io.ts";

/** The 8-byte increment every signal writes, at an address that stays valid (write(2) wants one). */
const ONE = new PinnedBuffer(4096);
new DataView(ONE.bytes.buffer).setBigUint64(0, 1n, true);
const ONE_ADDR = ONE.addr;

export class EventFd {
  readonly fd: number;
  private reader: { cancel(): Promise<void> } | undefined;
  private closed = false;

  constructor() {
    this.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }

  /** Add 1 to the counter (wakes a listener, or makes KVM inject the irqfd's interrupt). */
  signal(): void {
    // EAGAIN only if the counter would overflow 2^64-2, which a consumer that never reads could reach
    // only after ~10^19 signals: ignore it.
    writeAt(this.fd, ONE_ADDR, 8);
  }

  /** Call `cb` on the main thread each time the counter becomes non-zero (it is reset by the read). */
  listen(cb: () => void, onError: (e: Error) => void): void {
    if (this.reader) throw new Error("EventFd.listen called twice");
    // Bun's reader gets a duplicate that it keeps for good: after a cancel it may still poll the fd
    // number it was given, so that number must never be reused by another file (seen in tests).
    const reader = Bun.file(dup(this.fd)).stream().getReader();
    this.reader = reader;
    void (async () => {
      try {
        for (;;) {
          const r = await reader.read();
          if (r.done || this.closed) return;
          cb();
        }
      } catch (e) {
        if (!this.closed) onError(e as Error);
      }
    })();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const r = this.reader;
    this.reader = undefined;
    if (r) void r.cancel().catch(() => {});
    try {
      close(this.fd);
    } catch {
      // already closed
    }
  }
}
