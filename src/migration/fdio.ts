/**
 * Blocking I/O on a migration file descriptor, for the data-path Workers: whole writes from iovec lists
 * (guest pages go straight from the mapping to the kernel), exact reads, and reads into guest RAM.
 */
import { ptr } from "bun:ffi";
import { readvRaw, writevRaw, readAt } from "../../ffi/libc.ts";
import { EINTR, EAGAIN } from "../../ffi/errno.ts";
import { errnoMessage } from "../../ffi/errno.ts";

export const IOV_MAX = 1024;

export class TransportError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TransportError";
  }
}

/**
 * An iovec list being built: entries point either into a JS buffer (pinned by holding it) or at raw
 * addresses (guest RAM). Adjacent raw ranges are merged.
 */
export class IovecList {
  readonly iov = new BigUint64Array(IOV_MAX * 2);
  count = 0;
  bytes = 0;
  private readonly keep: Uint8Array[] = [];

  get full(): boolean {
    return this.count >= IOV_MAX - 1;
  }

  addBuffer(b: Uint8Array): void {
    if (b.byteLength === 0) return;
    this.keep.push(b);
    this.addRaw(ptr(b), b.byteLength, false);
  }

  addRaw(addr: number, len: number, merge = true): void {
    if (len === 0) return;
    const n = this.count;
    if (merge && n > 0 && Number(this.iov[(n - 1) * 2]!) + Number(this.iov[(n - 1) * 2 + 1]!) === addr) {
      this.iov[(n - 1) * 2 + 1] = BigInt(Number(this.iov[(n - 1) * 2 + 1]!) + len);
    } else {
      this.iov[n * 2] = BigInt(addr);
      this.iov[n * 2 + 1] = BigInt(len);
      this.count++;
    }
    this.bytes += len;
  }

  reset(): void {
    this.count = 0;
    this.bytes = 0;
    this.keep.length = 0;
  }
}

/** Write everything in `list` to fd (blocking), coping with partial writes. */
export function writevAll(fd: number, list: IovecList, what = "migration stream"): void {
  const iov = list.iov;
  let first = 0;
  let remaining = list.bytes;
  const bytes = new Uint8Array(iov.buffer);
  while (remaining > 0) {
    const n = writevRaw(fd, bytes.subarray(first * 16), list.count - first);
    if (n < 0) {
      if (-n === EINTR || -n === EAGAIN) continue;
      throw new TransportError(`writing the ${what} failed: ${errnoMessage(-n)}`);
    }
    remaining -= n;
    first = consume(iov, first, n);
  }
}

/** Step past `n` transferred bytes of an iovec list (a short readv/writev); returns the new first entry. */
function consume(iov: BigUint64Array, first: number, n: number): number {
  let left = n;
  while (left > 0) {
    const len = Number(iov[first * 2 + 1]!);
    if (left >= len) {
      left -= len;
      first++;
    } else {
      iov[first * 2] = BigInt(Number(iov[first * 2]!) + left);
      iov[first * 2 + 1] = BigInt(len - left);
      left = 0;
    }
  }
  return first;
}

export function writeAll(fd: number, b: Uint8Array, what?: string): void {
  const l = new IovecList();
  l.addBuffer(b);
  writevAll(fd, l, what);
}

/**
 * Read exactly len bytes to a raw address. EOF before the first byte returns false when `eofOk` (a
 * stream may end at a record boundary); EOF anywhere else throws (the peer went away mid-record).
 */
export function readExactAt(fd: number, addr: number, len: number, what = "migration stream", eofOk = false): boolean {
  let done = 0;
  while (done < len) {
    const n = readAt(fd, addr + done, len - done);
    if (n < 0) {
      if (-n === EINTR || -n === EAGAIN) continue;
      throw new TransportError(`reading the ${what} failed: ${errnoMessage(-n)}`);
    }
    if (n === 0) {
      if (done === 0 && eofOk) return false;
      throw new TransportError(`the ${what} ended early (${done} of ${len} bytes)`);
    }
    done += n;
  }
  return true;
}

/** Read exactly len bytes into a new buffer (null at a clean EOF when `eofOk`). */
export function readExact(fd: number, len: number, what = "migration stream", eofOk = false): Uint8Array | null {
  const b = new Uint8Array(len);
  if (len === 0) return b;
  return readExactAt(fd, ptr(b), len, what, eofOk) ? b : null;
}

/** readv into guest RAM from an iovec list, until every byte arrived. */
export function readvAll(fd: number, list: IovecList, what = "migration stream"): void {
  const iov = list.iov;
  let first = 0;
  let remaining = list.bytes;
  const bytes = new Uint8Array(iov.buffer);
  while (remaining > 0) {
    const n = readvRaw(fd, bytes.subarray(first * 16), list.count - first);
    if (n < 0) {
      if (-n === EINTR || -n === EAGAIN) continue;
      throw new TransportError(`reading the ${what} failed: ${errnoMessage(-n)}`);
    }
    if (n === 0) throw new TransportError(`the ${what} ended in the middle of guest pages`);
    remaining -= n;
    first = consume(iov, first, n);
  }
}
