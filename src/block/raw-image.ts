/**
 * A raw disk image (`-drive file=PATH,readonly=on|off,direct=on|off`): one file descriptor, read and
 * written with preadv/pwritev straight from and into guest memory (the iovecs hold guest buffers'
 * host addresses), fdatasync for flushes, fallocate for discard and write-zeroes.
 *
 * direct=on opens the file O_DIRECT. Guest buffers then must meet the filesystem's alignment; those
 * that do not (or a filesystem that refuses O_DIRECT, such as tmpfs) go through an aligned bounce
 * buffer, read-modify-write for partial blocks. A filesystem that refuses O_DIRECT is reported once at
 * start-up and the image uses the page cache.
 *
 * The image is locked with flock (exclusive when writable, shared when read-only), so two VMs cannot
 * write one image. Live migration hands the lock over: the source unlocks when it stops for good, the
 * destination locks when it starts running.
 */
import { O_DIRECT, O_RDONLY, O_RDWR, SysError, close, fdatasync, flock, mmap, munmap, open, preadvRaw, pwritevRaw, LOCK_EX, LOCK_NB, MAP_PRIVATE, MAP_ANONYMOUS, PROT_READ, PROT_WRITE } from "../../ffi/libc.ts";
import { dioAlignment, fallocate, fcntlInt, fileSize, memcpyRaw, IovecArray, F_GETFL, F_SETFL, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE } from "../../ffi/io.ts";
import { EAGAIN, EINTR, EINVAL } from "../../ffi/errno.ts";

const LOCK_SH = 1;
const LOCK_UN = 8;
const EIO = 5;
const EOPNOTSUPP = 95;
const ENOENT = 2;
const EACCES = 13;
const EROFS = 30;
const EISDIR = 21;

/** Most segments one preadv/pwritev takes. */
const IOV_MAX = 1024;
/** Bounce buffer size: a multiple of every alignment the kernel reports. */
const BOUNCE_SIZE = 1 << 20;

export class BlockError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BlockError";
  }
}

export interface RawImageOptions {
  path: string;
  readOnly: boolean;
  direct: boolean;
  /** Take the image lock now (false on a migration destination: it locks when it starts running). */
  lock: boolean;
  /** Flag name for messages, e.g. "-drive id=d0". */
  what: string;
  log: (level: "info" | "warn", msg: string) => void;
}

export class RawImage {
  /** Bytes; capacity in 512-byte sectors is size / 512 (a partial last sector is not visible). */
  readonly size: number;
  /** O_DIRECT is in effect. */
  readonly direct: boolean;
  /** O_DIRECT alignment of guest buffers (address) and of file offsets and lengths. */
  readonly memAlign: number;
  readonly offsetAlign: number;
  private locked = false;
  private bounce = 0;
  private zero = 0;
  /** Written since the last flush. */
  private unflushed = false;
  private readonly scratch = new IovecArray(1);

  private constructor(
    private readonly fd: number,
    readonly opts: RawImageOptions,
    direct: boolean,
  ) {
    this.size = fileSize(fd);
    const a = dioAlignment(fd);
    // Kernels before 6.1 (or filesystems that do not say) report 0: assume the strictest common case.
    const memAlign = a.memAlign || 4096;
    const offsetAlign = a.offsetAlign || 4096;
    if (direct && this.size % offsetAlign !== 0) {
      // The last partial block could only be written by extending the file: keep it simple and honest.
      opts.log("warn", `${opts.what}: file=${opts.path}: its size is not a multiple of ${offsetAlign} bytes, which O_DIRECT needs; using the page cache instead`);
      clearDirect(fd);
      direct = false;
    }
    this.direct = direct;
    this.memAlign = direct ? memAlign : 1;
    this.offsetAlign = direct ? offsetAlign : 1;
  }

  static open(opts: RawImageOptions): RawImage {
    const base = opts.readOnly ? O_RDONLY : O_RDWR;
    const fail = (e: unknown): never => {
      const errno = e instanceof SysError ? e.errno : 0;
      const why =
        errno === ENOENT
          ? "no such file"
          : errno === EISDIR
            ? "is a directory, not an image file"
            : (errno === EACCES || errno === EROFS) && !opts.readOnly
              ? `cannot be opened for writing (${(e as SysError).errnoName}); use readonly=on to attach it read-only`
              : (e as Error).message;
      throw new BlockError(`${opts.what}: file=${opts.path}: ${why}`);
    };
    let fd: number;
    let direct = opts.direct;
    try {
      fd = open(opts.path, base | (direct ? O_DIRECT : 0));
    } catch (e) {
      if (!(direct && e instanceof SysError && e.errno === EINVAL)) fail(e);
      // tmpfs and some FUSE filesystems refuse O_DIRECT: carry on through the page cache, and say so.
      opts.log("warn", `${opts.what}: file=${opts.path}: the filesystem does not support O_DIRECT (direct=on); using the page cache instead`);
      direct = false;
      try {
        fd = open(opts.path, base);
      } catch (e2) {
        fail(e2);
      }
    }
    const img = new RawImage(fd!, opts, direct);
    try {
      if (opts.lock) img.lock();
    } catch (e) {
      img.close();
      throw e;
    }
    return img;
  }

  /** Take the image lock; a BlockError when another process holds it. */
  lock(): void {
    if (this.locked) return;
    const r = flock(this.fd, (this.opts.readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB);
    if (r === -EAGAIN) {
      throw new BlockError(
        `${this.opts.what}: file=${this.opts.path}: the image is in use by another process (locked${this.opts.readOnly ? " for writing" : ""}); ` +
          "two VMs must not share a writable image",
      );
    }
    if (r < 0) throw new BlockError(`${this.opts.what}: file=${this.opts.path}: cannot lock the image: errno ${-r}`);
    this.locked = true;
  }

  unlock(): void {
    if (!this.locked) return;
    flock(this.fd, LOCK_UN);
    this.locked = false;
  }

  get isLocked(): boolean {
    return this.locked;
  }

  private aligned(iov: IovecArray, offset: number): boolean {
    if (!this.direct) return true;
    if (offset % this.offsetAlign !== 0) return false;
    for (let i = 0; i < iov.count; i++) {
      if (iov.addr(i) % this.memAlign !== 0 || iov.len(i) % this.offsetAlign !== 0) return false;
    }
    return true;
  }

  /** Read into the iovecs from `offset`: the byte count, or -errno. Short only at the end of the file. */
  readv(iov: IovecArray, offset: number): number {
    if (this.aligned(iov, offset)) {
      const r = this.fullIo(false, iov, offset);
      if (r !== -EINVAL || !this.direct) return r;
    }
    return this.bounceIo(false, iov, offset);
  }

  /** Write the iovecs at `offset`: the byte count, or -errno. */
  writev(iov: IovecArray, offset: number): number {
    if (this.opts.readOnly) return -EROFS;
    this.unflushed = true;
    if (this.aligned(iov, offset)) {
      const r = this.fullIo(true, iov, offset);
      if (r !== -EINVAL || !this.direct) return r;
    }
    return this.bounceIo(true, iov, offset);
  }

  /** preadv/pwritev until done (they may return short, e.g. on a signal); IOV_MAX segments per call. */
  private fullIo(write: boolean, iov: IovecArray, offset: number): number {
    if (iov.count > IOV_MAX) {
      let done = 0;
      for (let first = 0; first < iov.count; first += IOV_MAX) {
        const part = new IovecArray(Math.min(IOV_MAX, iov.count - first));
        let want = 0;
        for (let i = first; i < first + part.capacity; i++) {
          part.push(iov.addr(i), iov.len(i));
          want += iov.len(i);
        }
        const r = this.fullIo(write, part, offset + done);
        if (r < 0) return r;
        done += r;
        if (r < want) break;
      }
      return done;
    }
    let total = 0;
    for (let i = 0; i < iov.count; i++) total += iov.len(i);
    let done = 0;
    let cur = iov;
    for (;;) {
      const r = write ? pwritevRaw(this.fd, cur.bytes, cur.count, offset + done) : preadvRaw(this.fd, cur.bytes, cur.count, offset + done);
      if (r === -EINTR) continue;
      if (r < 0) return r;
      done += r;
      if (done >= total || r === 0) return done; // 0: end of file
      cur = remainder(iov, done);
    }
  }

  private bounceBuf(): number {
    if (!this.bounce) this.bounce = mmap(BOUNCE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, "mmap(bounce buffer)");
    return this.bounce;
  }

  /** One aligned transfer between the bounce buffer and the file. */
  private rawIo(write: boolean, addr: number, len: number, offset: number): number {
    this.scratch.clear();
    this.scratch.push(addr, len);
    return this.fullIo(write, this.scratch, offset);
  }

  /** Misaligned O_DIRECT I/O through the bounce buffer, whole aligned blocks at a time. */
  private bounceIo(write: boolean, iov: IovecArray, offset: number): number {
    const A = Math.max(this.offsetAlign, 512);
    let total = 0;
    for (let i = 0; i < iov.count; i++) total += iov.len(i);
    const buf = this.bounceBuf();
    let seg = 0;
    let segOff = 0;
    let pos = offset; // file position of the next guest byte
    const end = offset + total;
    while (pos < end) {
      const chunkStart = Math.floor(pos / A) * A;
      const chunkEnd = Math.min(Math.ceil(end / A) * A, chunkStart + BOUNCE_SIZE);
      const len = chunkEnd - chunkStart;
      const dataEnd = Math.min(end, chunkEnd);
      const partial = pos !== chunkStart || dataEnd !== chunkEnd;
      if (!write || partial) {
        const r = this.rawIo(false, buf, len, chunkStart);
        if (r < 0) return r;
      }
      // Copy between the guest segments and the bounce buffer for [pos, dataEnd).
      let p = pos;
      while (p < dataEnd) {
        const n = Math.min(iov.len(seg) - segOff, dataEnd - p);
        const g = iov.addr(seg) + segOff;
        const b = buf + (p - chunkStart);
        if (write) memcpyRaw(b, g, n);
        else memcpyRaw(g, b, n);
        p += n;
        segOff += n;
        if (segOff === iov.len(seg)) {
          seg++;
          segOff = 0;
        }
      }
      if (write) {
        const r = this.rawIo(true, buf, len, chunkStart);
        if (r < 0) return r;
      }
      pos = dataEnd;
    }
    return total;
  }

  flush(): number {
    if (this.opts.readOnly || !this.unflushed) return 0;
    for (;;) {
      const r = fdatasync(this.fd);
      if (r === -EINTR) continue;
      if (r === 0) this.unflushed = false;
      return r;
    }
  }

  /** Deallocate [offset, offset+len); reads return zeroes afterwards. -EOPNOTSUPP when the filesystem cannot. */
  discard(offset: number, len: number): number {
    if (this.opts.readOnly) return -EROFS;
    this.unflushed = true;
    return fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
  }

  /** Make [offset, offset+len) read as zeroes, deallocating it if `unmap` and the filesystem can. */
  writeZeroes(offset: number, len: number, unmap: boolean): number {
    if (this.opts.readOnly) return -EROFS;
    this.unflushed = true;
    const mode = unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    const r = fallocate(this.fd, mode, offset, len);
    if (r === 0) return 0;
    if (r !== -EOPNOTSUPP && r !== -EINVAL) return r;
    // The filesystem cannot: write zeroes from a zeroed buffer (aligned, so O_DIRECT takes it directly).
    if (!this.zero) this.zero = mmap(BOUNCE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, "mmap(zero buffer)");
    const iov = new IovecArray(1);
    for (let done = 0; done < len; ) {
      const n = Math.min(BOUNCE_SIZE, len - done);
      iov.clear();
      iov.push(this.zero, n);
      const w = this.writev(iov, offset + done);
      if (w < 0) return w;
      if (w === 0) return -EIO;
      done += w;
    }
    return 0;
  }

  close(): void {
    this.unlock();
    try {
      close(this.fd);
    } catch {
      // already closed
    }
    if (this.bounce) munmap(this.bounce, BOUNCE_SIZE);
    if (this.zero) munmap(this.zero, BOUNCE_SIZE);
    this.bounce = this.zero = 0;
  }
}

/** Turn O_DIRECT off on an open file (F_SETFL may change it). */
function clearDirect(fd: number): void {
  const fl = fcntlInt(fd, F_GETFL, 0);
  fcntlInt(fd, F_SETFL, fl & ~O_DIRECT);
}

/** The iovecs that remain after the first `skip` bytes. */
function remainder(iov: IovecArray, skip: number): IovecArray {
  const out = new IovecArray(iov.count);
  let left = skip;
  for (let i = 0; i < iov.count; i++) {
    const len = iov.len(i);
    if (left >= len) {
      left -= len;
      continue;
    }
    out.push(iov.addr(i) + left, len - left);
    left = 0;
  }
  return out;
}
