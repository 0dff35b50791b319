/**
 * libc calls for kiln's device backends (disk images, tap devices) that ffi/libc.ts does not bind:
 * fallocate, statx (O_DIRECT alignment), fcntl with a struct argument (SIGIO ownership), and the raw
 * socket calls a test needs to see a tap from the host side (AF_PACKET, setns). Errors follow
 * libc.ts: a negative return carries -errno, or a SysError is thrown where the caller cannot go on.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { check, errno, mmap, munmap, toArrayBuffer, SysError, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "./libc.ts";
import { struct, u8, u16, u32, i32, u64 } from "./struct.ts";

const lib = dlopen("libc.so.6", {
  fallocate: { args: ["i32", "i32", "i64", "i64"], returns: "i32" },
  statx: { args: ["i32", "cstring", "i32", "u32", "ptr"], returns: "i32" },
  fcntl: { args: ["i32", "i32", "ptr"], returns: "i32" },
  bind: { args: ["i32", "ptr", "u32"], returns: "i32" },
  setns: { args: ["i32", "i32"], returns: "i32" },
  recv: { args: ["i32", "ptr", "u64", "i32"], returns: FFIType.i64_fast },
  send: { args: ["i32", "ptr", "u64", "i32"], returns: FFIType.i64_fast },
  socket: { args: ["i32", "i32", "i32"], returns: "i32" },
  memcpy: { args: ["ptr", "ptr", "u64"], returns: "ptr" },
  lseek: { args: ["i32", "i64", "i32"], returns: FFIType.i64_fast },
});
// fcntl with an integer third argument (F_GETFL/F_SETFL/F_SETSIG) needs its own binding.
const libInt = dlopen("libc.so.6", { fcntl: { args: ["i32", "i32", "u64"], returns: "i32" } });
const c = lib.symbols;

// ---- files ----

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** fallocate(2); returns 0 or -errno (EOPNOTSUPP when the filesystem cannot do `mode`). */
export function fallocate(fd: number, mode: number, offset: number, len: number): number {
  const r = c.fallocate(fd, mode, offset, len);
  return r < 0 ? -errno() : r;
}

/** Copy `len` bytes between raw addresses (guest memory, mmapped buffers). */
export function memcpyRaw(dst: number, src: number, len: number): void {
  if (len > 0) c.memcpy(dst as never, src as never, len);
}

const SEEK_END = 2;
/** Size of an open file or block device (statx reports 0 for block devices; lseek does not). */
export function fileSize(fd: number): number {
  const r = c.lseek(fd, 0, SEEK_END) as number;
  if (r < 0) throw new SysError("lseek", errno());
  return r;
}

/** struct statx (256 bytes); only the fields kiln reads are named. */
export const Statx = struct("statx", 256, {
  stx_mask: u32(0),
  stx_blksize: u32(4),
  stx_size: u64(40),
  stx_dio_mem_align: u32(152),
  stx_dio_offset_align: u32(156),
});
const AT_EMPTY_PATH = 0x1000;
const STATX_SIZE = 0x200;
const STATX_DIOALIGN = 0x2000;

/** O_DIRECT alignment of an open file (0/0 when the kernel or filesystem does not say), and its size. */
export function dioAlignment(fd: number): { memAlign: number; offsetAlign: number; size: number } {
  const st = Statx.alloc();
  check("statx", c.statx(fd, Buffer.from("\0"), AT_EMPTY_PATH, STATX_SIZE | STATX_DIOALIGN, st.bytes));
  const known = (st.get("stx_mask") & STATX_DIOALIGN) !== 0;
  return {
    memAlign: known ? st.get("stx_dio_mem_align") : 0,
    offsetAlign: known ? st.get("stx_dio_offset_align") : 0,
    size: st.get("stx_size"),
  };
}

// ---- fcntl: SIGIO on readiness ----

export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_SETSIG = 10;
export const F_SETOWN_EX = 15;
export const F_OWNER_TID = 0;
export const O_ASYNC = 0o20000;
export const O_NONBLOCK = 0o4000;

export function fcntlInt(fd: number, cmd: number, arg: number, name = "fcntl"): number {
  return check(name, libInt.symbols.fcntl(fd, cmd, arg));
}

/**
 * Make the kernel send SIGIO to thread `tid` whenever `fd` becomes readable (O_ASYNC + F_SETOWN_EX).
 * Directing it at one thread keeps it away from vCPU threads, whose KVM_RUN it would interrupt.
 */
export function signalOnReadable(fd: number, tid: number): void {
  const owner = new Int32Array([F_OWNER_TID, tid]);
  check("fcntl(F_SETOWN_EX)", c.fcntl(fd, F_SETOWN_EX, new Uint8Array(owner.buffer)));
  const fl = fcntlInt(fd, F_GETFL, 0, "fcntl(F_GETFL)");
  fcntlInt(fd, F_SETFL, fl | O_ASYNC | O_NONBLOCK, "fcntl(F_SETFL)");
}

// ---- tap devices (/dev/net/tun) ----

export const TUNSETIFF = 0x400454ca;
export const TUNSETPERSIST = 0x400454cb;
export const TUNGETFEATURES = 0x800454cf;
export const TUNSETOFFLOAD = 0x400454d0;
export const TUNGETIFF = 0x800454d2;
export const TUNSETVNETHDRSZ = 0x400454d8;
export const IFF_UP = 0x1;
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
export const IFF_MULTI_QUEUE = 0x0100;
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const IFNAMSIZ = 16;

/** struct ifreq: the interface name, then a union (flags, ifindex, ...) at 16. */
export const Ifreq = struct("ifreq", 40, { ifr_flags: u16(16), ifr_ifindex: i32(16) });

export function ifreq(name: string): ReturnType<typeof Ifreq.alloc> {
  const r = Ifreq.alloc();
  const b = Buffer.from(name);
  if (b.length >= IFNAMSIZ) throw new RangeError(`interface name '${name}' is longer than ${IFNAMSIZ - 1} bytes`);
  r.bytes.set(b, 0);
  return r;
}

export function ifreqName(r: ReturnType<typeof Ifreq.alloc>): string {
  const end = r.bytes.indexOf(0);
  return Buffer.from(r.bytes.subarray(0, end < 0 ? IFNAMSIZ : Math.min(end, IFNAMSIZ))).toString();
}

// ---- sockets: AF_PACKET (a tap's host side, for tests and tools) and network namespaces ----

export const AF_INET = 2;
export const AF_PACKET = 17;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const ETH_P_ALL = 0x0003;
export const SIOCGIFINDEX = 0x8933;
export const SIOCGIFFLAGS = 0x8913;
export const SIOCSIFFLAGS = 0x8914;
export const MSG_DONTWAIT = 0x40;
export const CLONE_NEWNET = 0x40000000;

export const SockaddrLl = struct("sockaddr_ll", 20, {
  sll_family: u16(0),
  sll_protocol: u16(2),
  sll_ifindex: i32(4),
  sll_hatype: u16(8),
  sll_pkttype: u8(10),
  sll_halen: u8(11),
});

export function socket(domain: number, type: number, protocol: number): number {
  return check("socket", c.socket(domain, type | SOCK_CLOEXEC, protocol));
}

export function bind(fd: number, addr: Uint8Array): void {
  check("bind", c.bind(fd, addr, addr.byteLength));
}

/** recv(2); -errno on failure (-EAGAIN when nothing is queued on a non-blocking call). */
export function recv(fd: number, buf: Uint8Array, flags = 0): number {
  const r = c.recv(fd, buf, buf.byteLength, flags) as number;
  return r < 0 ? -errno() : r;
}

export function send(fd: number, buf: Uint8Array, flags = 0): number {
  const r = c.send(fd, buf, buf.byteLength, flags) as number;
  return r < 0 ? -errno() : r;
}

/** Move the calling thread into the namespace `nsFd` refers to (CLONE_NEWNET for a network namespace). */
export function setns(nsFd: number, nstype: number): void {
  const r = c.setns(nsFd, nstype);
  if (r < 0) throw new SysError("setns", errno());
}

/**
 * Memory outside the JS heap at a fixed address, for buffers whose address is kept and handed to
 * the kernel later (a JS typed array's storage may be collected or moved once nothing in JS refers
 * to it, which turned a cached `ptr()` into a pointer at zeroes).
 */
export class PinnedBuffer {
  readonly addr: number;
  readonly bytes: Uint8Array;
  private freed = false;
  constructor(readonly size: number) {
    this.addr = mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, "mmap(pinned buffer)");
    this.bytes = new Uint8Array(toArrayBuffer(this.addr as never, 0, size));
  }
  /** Only when no view of `bytes` is used any more. */
  free(): void {
    if (this.freed) return;
    this.freed = true;
    munmap(this.addr, this.size);
  }
}

/** A struct iovec array over raw addresses: {base u64, len u64} per entry. */
export class IovecArray {
  readonly bytes: Uint8Array;
  private readonly w: Uint32Array;
  count = 0;
  constructor(readonly capacity: number) {
    this.bytes = new Uint8Array(capacity * 16);
    this.w = new Uint32Array(this.bytes.buffer);
  }
  clear(): void {
    this.count = 0;
  }
  /** Append [addr, addr+len); false when full. Addresses are below 2^53. */
  push(addr: number, len: number): boolean {
    if (this.count === this.capacity) return false;
    const i = this.count++ * 4;
    this.w[i] = addr >>> 0;
    this.w[i + 1] = Math.floor(addr / 0x1_0000_0000);
    this.w[i + 2] = len >>> 0;
    this.w[i + 3] = 0;
    return true;
  }
  addr(i: number): number {
    return this.w[i * 4]! + this.w[i * 4 + 1]! * 0x1_0000_0000;
  }
  len(i: number): number {
    return this.w[i * 4 + 2]!;
  }
  setLen(i: number, len: number): void {
    this.w[i * 4 + 2] = len >>> 0;
  }
  /** Host address of a typed array, for iovecs into JS memory. */
  static addressOf(buf: Uint8Array): number {
    return ptr(buf);
  }
}
