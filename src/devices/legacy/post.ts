/**
 * Port 0x80, the POST diagnostic port: firmware and some kernels write progress codes here, and
 * Linux uses it for I/O delays (outb to 0x80 in io_delay). Reads return 0, writes are absorbed; the
 * last code written is kept for debugging (not migrated: it is not guest-visible state).
 */
import type { AccessSize, PioDevice } from "../bus.ts";

export class PostPort implements PioDevice {
  private last: number | null = null;
  private count = 0;

  /** Last code written, or null if none yet. */
  get lastCode(): number | null {
    return this.last;
  }

  /** Number of writes seen (io_delay makes this large; useful only as a debugging hint). */
  get writes(): number {
    return this.count;
  }

  pioRead(_offset: number, _size: AccessSize): number {
    return 0;
  }

  pioWrite(_offset: number, _size: AccessSize, value: number): void {
    this.last = value & 0xff;
    this.count++;
  }
}
