/**
 * libc through bun:ffi: the only way kiln talks to the kernel (KVM ioctls, mmap, eventfd, signals, sockets).
 * Every failing call becomes a SysError carrying the call, errno name and message.
 *
 * errno is read straight after the call through __errno_location(), whose result is per thread and cached
 * per module instance (each Worker loads its own instance, so each thread caches its own pointer).
 */
import { dlopen, FFIType, read, ptr, toArrayBuffer, type Pointer } from "bun:ffi";
import { errnoMessage, errnoName } from "./errno.ts";

const lib = dlopen("libc.so.6", {
  open: { args: ["cstring", "i32", "u32"], returns: "i32" },
  close: { args: ["i32"], returns: "i32" },
  read: { args: ["i32", "ptr", "u64"], returns: FFIType.i64_fast },
  write: { args: ["i32", "ptr", "u64"], returns: FFIType.i64_fast },
  pread: { args: ["i32", "ptr", "u64", "i64"], returns: FFIType.i64_fast },
  pwrite: { args: ["i32", "ptr", "u64", "i64"], returns: FFIType.i64_fast },
  readv: { args: ["i32", "ptr", "i32"], returns: FFIType.i64_fast },
  writev: { args: ["i32", "ptr", "i32"], returns: FFIType.i64_fast },
  preadv: { args: ["i32", "ptr", "i32", "i64"], returns: FFIType.i64_fast },
  pwritev: { args: ["i32", "ptr", "i32", "i64"], returns: FFIType.i64_fast },
  ioctl: { args: ["i32", "u64", "ptr"], returns: "i32" },
  mmap: { args: ["ptr", "u64", "i32", "i32", "i32", "i64"], returns: "ptr" },
  munmap: { args: ["ptr", "u64"], returns: "i32" },
  mremap: { args: ["ptr", "u64", "u64", "i32", "ptr"], returns: "ptr" },
  madvise: { args: ["ptr", "u64", "i32"], returns: "i32" },
  memfd_create: { args: ["cstring", "u32"], returns: "i32" },
  ftruncate: { args: ["i32", "i64"], returns: "i32" },
  fcntl: { args: ["i32", "i32", "u64"], returns: "i32" },
  eventfd: { args: ["u32", "i32"], returns: "i32" },
  getpid: { args: [], returns: "i32" },
  gettid: { args: [], returns: "i32" },
  tgkill: { args: ["i32", "i32", "i32"], returns: "i32" },
  sigaction: { args: ["i32", "ptr", "ptr"], returns: "i32" },
  __errno_location: { args: [], returns: "ptr" },
  fdatasync: { args: ["i32"], returns: "i32" },
  flock: { args: ["i32", "i32"], returns: "i32" },
  isatty: { args: ["i32"], returns: "i32" },
  tcgetattr: { args: ["i32", "ptr"], returns: "i32" },
  tcsetattr: { args: ["i32", "i32", "ptr"], returns: "i32" },
  cfmakeraw: { args: ["ptr"], returns: "void" },
  dup: { args: ["i32"], returns: "i32" },
});

// bun:ffi binds one signature per symbol name, so the ioctl with an integer third argument (vCPU id, TSS
// address, capability number) comes from a second handle on the same library.
const libInt = dlopen("libc.so.6", {
  ioctl: { args: ["i32", "u64", "u64"], returns: "i32" },
  socket: { args: ["i32", "i32", "i32"], returns: "i32" },
  sendmsg: { args: ["i32", "ptr", "i32"], returns: FFIType.i64_fast },
  recvmsg: { args: ["i32", "ptr", "i32"], returns: FFIType.i64_fast },
});

const c = lib.symbols;

let errnoPtr: Pointer | null = null;

/** The calling thread's errno. Call it immediately after the failing call. */
export function errno(): number {
  if (errnoPtr === null) errnoPtr = c.__errno_location() as Pointer;
  return read.i32(errnoPtr!, 0);
}

export class SysError extends Error {
  readonly errnoName: string;
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call}: ${errnoName(errno)} (${errnoMessage(errno)})`);
    this.name = "SysError";
    this.errnoName = errnoName(errno);
  }
}

/** Throw a SysError for a negative return, reading errno first. */
export function check(call: string, ret: number): number {
  if (ret < 0) throw new SysError(call, errno());
  return ret;
}

const cstr = (s: string) => Buffer.from(s + "\0");

// open(2) flags and friends (x86-64 values).
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_NONBLOCK = 0o4000;
export const O_DIRECT = 0o40000;
export const O_CLOEXEC = 0o2000000;
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_NORESERVE = 0x4000;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MREMAP_MAYMOVE = 1;
export const MREMAP_FIXED = 2;
export const MFD_CLOEXEC = 1;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const MADV_REMOVE = 9;
export const MADV_DONTDUMP = 16;
export const MADV_HUGEPAGE = 14;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const SIGUSR1 = 10;

export function open(path: string, flags: number, mode = 0o644): number {
  return check(`open(${path})`, c.open(cstr(path), flags | O_CLOEXEC, mode));
}

export function close(fd: number): void {
  check("close", c.close(fd));
}

export function ioctl(fd: number, request: number, arg: Uint8Array | null, name = "ioctl"): number {
  return check(name, c.ioctl(fd, request, arg));
}

/** ioctl returning the raw result (negative = -1 and errno set) for callers that handle errors themselves. */
export function ioctlRaw(fd: number, request: number, arg: Uint8Array | null): number {
  return c.ioctl(fd, request, arg);
}

export function ioctlInt(fd: number, request: number, arg: number | bigint, name = "ioctl"): number {
  return check(name, libInt.symbols.ioctl(fd, request, arg));
}

export function readFd(fd: number, buf: Uint8Array, name = "read"): number {
  return check(name, c.read(fd, buf, buf.byteLength) as number);
}

export function writeFd(fd: number, buf: Uint8Array, name = "write"): number {
  return check(name, c.write(fd, buf, buf.byteLength) as number);
}

/** read(2) at a raw address (guest memory), returning -errno on failure instead of throwing. */
export function readAt(fd: number, addr: number, len: number): number {
  const r = c.read(fd, addr as Pointer, len) as number;
  return r < 0 ? -errno() : r;
}

/** write(2) from a raw address (guest memory), returning -errno on failure instead of throwing. */
export function writeAt(fd: number, addr: number, len: number): number {
  const r = c.write(fd, addr as Pointer, len) as number;
  return r < 0 ? -errno() : r;
}

export function writevRaw(fd: number, iov: Uint8Array, count: number): number {
  const r = c.writev(fd, iov, count) as number;
  return r < 0 ? -errno() : r;
}

export function readvRaw(fd: number, iov: Uint8Array, count: number): number {
  const r = c.readv(fd, iov, count) as number;
  return r < 0 ? -errno() : r;
}

export function preadvRaw(fd: number, iov: Uint8Array, count: number, offset: number): number {
  const r = c.preadv(fd, iov, count, offset) as number;
  return r < 0 ? -errno() : r;
}

export function pwritevRaw(fd: number, iov: Uint8Array, count: number, offset: number): number {
  const r = c.pwritev(fd, iov, count, offset) as number;
  return r < 0 ? -errno() : r;
}

export function fdatasync(fd: number): number {
  const r = c.fdatasync(fd);
  return r < 0 ? -errno() : r;
}

/** mmap; returns the mapping's address as a number. `at` with MAP_FIXED replaces what is mapped there. */
export function mmap(len: number, prot: number, flags: number, fd: number, offset = 0, name = "mmap", at = 0): number {
  const p = c.mmap(at === 0 ? null : (at as Pointer), len, prot, flags, fd, offset) as unknown;
  // MAP_FAILED ((void*)-1) arrives as a bigint; a valid mapping as a number.
  if (typeof p !== "number") throw new SysError(name, errno());
  return p;
}

export function munmap(addr: number, len: number): void {
  check("munmap", c.munmap(addr as Pointer, len));
}

/** mremap with MREMAP_MAYMOVE|MREMAP_FIXED: move the mapping at `from` to `to` (page tables move with it). */
export function mremapTo(from: number, len: number, to: number): void {
  const p = c.mremap(from as Pointer, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to as Pointer) as unknown;
  if (typeof p !== "number") throw new SysError("mremap", errno());
}

export function madvise(addr: number, len: number, advice: number): number {
  return c.madvise(addr as Pointer, len, advice);
}

export function memfdCreate(name: string, flags = MFD_CLOEXEC): number {
  return check("memfd_create", c.memfd_create(cstr(name), flags));
}

export function ftruncate(fd: number, size: number): void {
  check("ftruncate", c.ftruncate(fd, size));
}

export function eventfd(initval = 0, flags = EFD_CLOEXEC | EFD_NONBLOCK): number {
  return check("eventfd", c.eventfd(initval, flags));
}

export function flock(fd: number, op: number): number {
  const r = c.flock(fd, op);
  return r < 0 ? -errno() : r;
}

export function getpid(): number {
  return c.getpid();
}

export function gettid(): number {
  return c.gettid();
}

export function tgkill(pid: number, tid: number, sig: number): number {
  const r = c.tgkill(pid, tid, sig);
  return r < 0 ? -errno() : r;
}

export function dup(fd: number): number {
  return check("dup", c.dup(fd));
}

export function isatty(fd: number): boolean {
  return c.isatty(fd) === 1;
}

/** glibc struct sigaction: sa_handler @0, sa_mask @8 (128 bytes), sa_flags @136, sa_restorer @144. */
const SIGACTION_SIZE = 152;

let kickHandlerInstalled = false;

/**
 * Install a handler for `sig` that does nothing, process-wide. Its only purpose is to make a signal sent
 * with tgkill interrupt a blocking KVM_RUN (EINTR) without killing the process. A signal needs a real
 * handler for that (an ignored one is discarded); any async-signal-safe C function that ignores its
 * argument will do, and getpid() is exactly that, so no C compiler is needed at run time.
 */
export function installNoopSignalHandler(sig = SIGUSR1): void {
  if (kickHandlerInstalled) return;
  const sa = new Uint8Array(SIGACTION_SIZE);
  new DataView(sa.buffer).setBigUint64(0, BigInt((c.getpid as unknown as { ptr: number }).ptr), true);
  check("sigaction", c.sigaction(sig, sa, null));
  kickHandlerInstalled = true;
}

/** termios handling for raw console input. struct termios is 60 bytes on x86-64 glibc. */
export const TERMIOS_SIZE = 60;
export function tcgetattr(fd: number): Uint8Array | null {
  const t = new Uint8Array(TERMIOS_SIZE);
  return c.tcgetattr(fd, t) === 0 ? t : null;
}
export function tcsetattr(fd: number, t: Uint8Array): boolean {
  return c.tcsetattr(fd, 0 /* TCSANOW */, t) === 0;
}
export function cfmakeraw(t: Uint8Array): void {
  c.cfmakeraw(t);
}

export { ptr, toArrayBuffer };
