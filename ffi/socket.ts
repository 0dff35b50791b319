/**
 * Sockets, pipes and file seeking through libc, for the migration data path: it runs in its own Worker
 * with plain blocking file descriptors, so guest pages go from the memfd mapping to the socket with one
 * writev and come back with one readv, never through a JavaScript copy.
 */
import { dlopen, FFIType, ptr, type Pointer } from "bun:ffi";
import { check, errno, SysError } from "./libc.ts";

const lib = dlopen("libc.so.6", {
  socket: { args: ["i32", "i32", "i32"], returns: "i32" },
  connect: { args: ["i32", "ptr", "u32"], returns: "i32" },
  bind: { args: ["i32", "ptr", "u32"], returns: "i32" },
  listen: { args: ["i32", "i32"], returns: "i32" },
  accept4: { args: ["i32", "ptr", "ptr", "i32"], returns: "i32" },
  shutdown: { args: ["i32", "i32"], returns: "i32" },
  setsockopt: { args: ["i32", "i32", "i32", "ptr", "u32"], returns: "i32" },
  getsockname: { args: ["i32", "ptr", "ptr"], returns: "i32" },
  getsockopt: { args: ["i32", "i32", "i32", "ptr", "ptr"], returns: "i32" },
  poll: { args: ["ptr", "u64", "i32"], returns: "i32" },
  pipe2: { args: ["ptr", "i32"], returns: "i32" },
  lseek: { args: ["i32", "i64", "i32"], returns: FFIType.i64_fast },
  fchmod: { args: ["i32", "u32"], returns: "i32" },
});
const c = lib.symbols;

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_CLOEXEC = 0o2000000;
export const SOCK_NONBLOCK = 0o4000;
const O_NONBLOCK_ = 0o4000;
const F_GETFL = 3;
const F_SETFL = 4;
const SO_ERROR = 4;
const EINPROGRESS = 115;
const EAGAIN_ = 11;
const EINTR_ = 4;
const ETIMEDOUT = 110;
const ECANCELED = 125;
const fcntlLib = dlopen("libc.so.6", { fcntl: { args: ["i32", "i32", "u64"], returns: "i32" } });
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
export const SHUT_RDWR = 2;
export const POLLIN = 1;
export const POLLOUT = 4;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

export type SockAddr = { family: "unix"; path: string } | { family: "inet"; host: string; port: number } | { family: "inet6"; host: string; port: number };

/** Encode a sockaddr; hosts must be numeric addresses (resolve names before calling). */
export function sockaddr(a: SockAddr): Uint8Array {
  if (a.family === "unix") {
    const path = Buffer.from(a.path);
    if (path.byteLength > 107) throw new RangeError(`unix socket path too long (${path.byteLength} > 107 bytes): ${a.path}`);
    const b = new Uint8Array(110);
    new DataView(b.buffer).setUint16(0, AF_UNIX, true);
    b.set(path, 2);
    return b;
  }
  if (a.family === "inet") {
    const parts = a.host.split(".").map(Number);
    if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new RangeError(`not an IPv4 address: ${a.host}`);
    const b = new Uint8Array(16);
    const dv = new DataView(b.buffer);
    dv.setUint16(0, AF_INET, true);
    dv.setUint16(2, a.port, false);
    b.set(parts, 4);
    return b;
  }
  const b = new Uint8Array(28);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, AF_INET6, true);
  dv.setUint16(2, a.port, false);
  b.set(parseIpv6(a.host), 8);
  return b;
}

function parseIpv6(host: string): Uint8Array {
  const out = new Uint8Array(16);
  const [head, tail] = host.includes("::") ? host.split("::") : [host, undefined];
  const h = head ? head.split(":").filter((x) => x !== "") : [];
  const t = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  if (groups.length !== 8) throw new RangeError(`not an IPv6 address: ${host}`);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    if (!/^[0-9a-fA-F]{1,4}$/.test(g) || Number.isNaN(v)) throw new RangeError(`not an IPv6 address: ${host}`);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  return out;
}

function domainOf(a: SockAddr): number {
  return a.family === "unix" ? AF_UNIX : a.family === "inet" ? AF_INET : AF_INET6;
}

function describe(a: SockAddr): string {
  return a.family === "unix" ? a.path : a.family === "inet" ? `${a.host}:${a.port}` : `[${a.host}]:${a.port}`;
}

function setIntOpt(fd: number, level: number, opt: number, v: number): void {
  const b = new Int32Array([v]);
  c.setsockopt(fd, level, opt, b, 4);
}

/** A connected, blocking stream socket. */
/**
 * A connected, blocking stream socket. The connect itself does not block (a TCP peer that never
 * answers would hold it for minutes): it polls in short slices, giving up when `cancelled()` says so
 * or after `timeoutMs`.
 */
export function connectTo(a: SockAddr, cancelled: () => boolean = () => false, timeoutMs = 30_000): number {
  const fd = check("socket", c.socket(domainOf(a), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  const fail = (e: number) => {
    closeFd(fd);
    return new SysError(`connect(${describe(a)})`, e);
  };
  const sa = sockaddr(a);
  if (c.connect(fd, sa, sa.byteLength) < 0) {
    const e = errno();
    if (e !== EINPROGRESS && e !== EAGAIN_) throw fail(e);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (cancelled()) throw fail(ECANCELED);
      const r = pollFd(fd, POLLOUT, 100);
      if (r > 0) break;
      if (r < 0 && r !== -EINTR_) throw fail(-r);
      if (performance.now() > deadline) throw fail(ETIMEDOUT);
    }
    const err = new Int32Array(1);
    const len = new Uint32Array([4]);
    c.getsockopt(fd, SOL_SOCKET, SO_ERROR, err, len);
    if (err[0] !== 0) throw fail(err[0]!);
  }
  setBlocking(fd);
  if (a.family !== "unix") setIntOpt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  return fd;
}

function setBlocking(fd: number): void {
  const flags = fcntlLib.symbols.fcntl(fd, F_GETFL, 0);
  fcntlLib.symbols.fcntl(fd, F_SETFL, flags & ~O_NONBLOCK_);
}

/** A listening, blocking stream socket (unix sockets get mode 0600 before anyone can connect). */
export function listenOn(a: SockAddr, backlog = 1): number {
  const fd = check("socket", c.socket(domainOf(a), SOCK_STREAM | SOCK_CLOEXEC, 0));
  try {
    if (a.family !== "unix") setIntOpt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    else c.fchmod(fd, 0o600);
    const sa = sockaddr(a);
    check(`bind(${describe(a)})`, c.bind(fd, sa, sa.byteLength));
    check(`listen(${describe(a)})`, c.listen(fd, backlog));
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

/** The port a listening inet socket got (for port 0). */
export function boundPort(fd: number): number {
  const b = new Uint8Array(28);
  const len = new Uint32Array([28]);
  check("getsockname", c.getsockname(fd, b, len));
  return new DataView(b.buffer).getUint16(2, false);
}

/** Block until a client connects; -errno on failure (EINVAL after shutdown() from another thread). */
export function acceptRaw(fd: number): number {
  const r = c.accept4(fd, null, null, SOCK_CLOEXEC);
  return r < 0 ? -errno() : r;
}

export function tuneStream(fd: number, bufBytes: number): void {
  setIntOpt(fd, SOL_SOCKET, SO_SNDBUF, bufBytes);
  setIntOpt(fd, SOL_SOCKET, SO_RCVBUF, bufBytes);
}

/** Wake any thread blocked on this socket (accept, read, write): how a cancel interrupts the data path. */
export function shutdownFd(fd: number): void {
  c.shutdown(fd, SHUT_RDWR);
}

/** Wait for `events` on fd up to timeoutMs (-1 = forever); returns revents, 0 on timeout, -errno on error. */
export function pollFd(fd: number, events: number, timeoutMs: number): number {
  const pfd = new Uint8Array(8);
  const dv = new DataView(pfd.buffer);
  dv.setInt32(0, fd, true);
  dv.setInt16(4, events, true);
  const r = c.poll(pfd, 1, timeoutMs);
  if (r < 0) return -errno();
  return r === 0 ? 0 : dv.getInt16(6, true);
}

export function pipe(): [number, number] {
  const fds = new Int32Array(2);
  check("pipe2", c.pipe2(fds, SOCK_CLOEXEC));
  return [fds[0]!, fds[1]!];
}

/** lseek; -errno on failure (ENXIO from SEEK_DATA means: no data at or after offset). */
export function lseekRaw(fd: number, offset: number, whence: number): number {
  const r = c.lseek(fd, offset, whence) as number;
  return r < 0 ? -errno() : r;
}

const closeLib = dlopen("libc.so.6", { close: { args: ["i32"], returns: "i32" } });
export function closeFd(fd: number): void {
  closeLib.symbols.close(fd);
}

export type { Pointer };

// ---- passing file descriptors over unix sockets (SCM_RIGHTS) ----

const msgLib = dlopen("libc.so.6", {
  sendmsg: { args: ["i32", "ptr", "i32"], returns: FFIType.i64_fast },
  recvmsg: { args: ["i32", "ptr", "i32"], returns: FFIType.i64_fast },
});

const SCM_RIGHTS = 1;
const MSG_CMSG_CLOEXEC = 0x40000000;
/** struct msghdr: name @0, namelen @8, iov @16, iovlen @24, control @32, controllen @40, flags @48. */
const MSGHDR_SIZE = 56;
/** CMSG_SPACE(sizeof(int) * 4): a header (len u64, level i32, type i32) and room for four fds. */
const CMSG_SPACE = 16 + 16;

function msghdr(iov: BigUint64Array, control: Uint8Array | null): Uint8Array {
  const m = new Uint8Array(MSGHDR_SIZE);
  const dv = new DataView(m.buffer);
  dv.setBigUint64(16, BigInt(ptr(iov)), true);
  dv.setBigUint64(24, 1n, true);
  if (control) {
    dv.setBigUint64(32, BigInt(ptr(control)), true);
    dv.setBigUint64(40, BigInt(control.byteLength), true);
  }
  return m;
}

/** Send `bytes` with `passFd` attached (SCM_RIGHTS); the whole buffer is written. */
export function sendWithFd(sock: number, bytes: Uint8Array, passFd: number): void {
  const iov = new BigUint64Array([BigInt(ptr(bytes)), BigInt(bytes.byteLength)]);
  const control = new Uint8Array(16 + 8);
  const cv = new DataView(control.buffer);
  cv.setBigUint64(0, 16n + 4n, true); // CMSG_LEN(sizeof(int))
  cv.setInt32(8, SOL_SOCKET, true);
  cv.setInt32(12, SCM_RIGHTS, true);
  cv.setInt32(16, passFd, true);
  const n = msgLib.symbols.sendmsg(sock, msghdr(iov, control), 0) as number;
  if (n < 0) throw new SysError("sendmsg", errno());
  if (n !== bytes.byteLength) throw new SysError("sendmsg (short)", 5);
}

/**
 * recv up to `len` bytes into `addr`, collecting any file descriptors passed along (received
 * close-on-exec). Returns the byte count (-errno on failure) and the fds.
 */
export function recvWithFds(sock: number, addr: number, len: number): { n: number; fds: number[] } {
  const iov = new BigUint64Array([BigInt(addr), BigInt(len)]);
  const control = new Uint8Array(CMSG_SPACE);
  const m = msghdr(iov, control);
  const n = msgLib.symbols.recvmsg(sock, m, MSG_CMSG_CLOEXEC) as number;
  if (n < 0) return { n: -errno(), fds: [] };
  const fds: number[] = [];
  const clen = Number(new DataView(m.buffer).getBigUint64(40, true));
  const cv = new DataView(control.buffer);
  for (let off = 0; off + 16 <= clen; ) {
    const l = Number(cv.getBigUint64(off, true));
    if (l < 16) break;
    if (cv.getInt32(off + 8, true) === SOL_SOCKET && cv.getInt32(off + 12, true) === SCM_RIGHTS) {
      for (let p = off + 16; p + 4 <= off + l; p += 4) fds.push(cv.getInt32(p, true));
    }
    off += (l + 7) & ~7;
  }
  return { n, fds };
}
