/**
 * A tap device (`-netdev tap,id=,ifname=` or an inherited `fd=`): frames with a 12-byte virtio-net
 * header in front (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), which is exactly the layout of a virtio 1.x
 * buffer, so frames go between the tap and guest buffers with one readv/writev and no copy in kiln.
 *
 * Readiness: the fd is non-blocking and O_ASYNC with the main thread as its owner, so the kernel sends
 * SIGIO when a frame arrives; Bun runs the handler in its event loop (no thread sits in read()).
 * Receivers drain the tap until EAGAIN, so coalesced signals lose nothing.
 */
import { SysError, close, gettid, ioctl, ioctlInt, open, readvRaw, writevRaw, O_RDWR, O_NONBLOCK } from "../../ffi/libc.ts";
import { fcntlInt, ifreq, ifreqName, signalOnReadable, F_GETFL, F_SETFL, O_ASYNC, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, IFNAMSIZ, TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ } from "../../ffi/io.ts";
import { onSigio } from "./sigio.ts";

/** virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const VNET_HDR_SIZE = 12;
const EPERM = 1;
const EBUSY = 16;
const EINVAL = 22;
const EBADFD = 77;
const EBADF = 9;
const ENOTTY = 25;

export class TapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TapError";
  }
}

export class Tap {
  private unsubscribe: (() => void) | undefined;
  private closed = false;
  private signalling = true;

  private constructor(
    readonly fd: number,
    readonly ifname: string,
  ) {}

  /** Create the tap `ifname`, or attach to an existing one (kiln needs CAP_NET_ADMIN for either). */
  static open(ifname: string, what: string): Tap {
    if (ifname.length >= IFNAMSIZ) throw new TapError(`${what}: ifname '${ifname}' is longer than ${IFNAMSIZ - 1} characters`);
    let fd: number;
    try {
      fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    } catch (e) {
      throw new TapError(`${what}: cannot open /dev/net/tun: ${(e as Error).message} (is the tun module loaded?)`);
    }
    const r = ifreq(ifname);
    r.set("ifr_flags", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    try {
      ioctl(fd, TUNSETIFF, r.bytes, "ioctl(TUNSETIFF)");
    } catch (e) {
      close(fd);
      const errno = e instanceof SysError ? e.errno : 0;
      const why =
        errno === EPERM
          ? "permission denied (creating or attaching a tap needs CAP_NET_ADMIN, or a persistent tap owned by this user)"
          : errno === EBUSY
            ? "the tap is in use by another process"
            : errno === EINVAL
              ? "an interface of that name exists and is not a tap kiln can attach to (a tun device, or multiqueue)"
              : (e as Error).message;
      throw new TapError(`${what}: ifname=${ifname}: ${why}`);
    }
    const tap = new Tap(fd, ifreqName(r) || ifname);
    tap.configure(what);
    return tap;
  }

  /** Use an already-open tap fd inherited from the parent process (`fd=N`). */
  static fromFd(fd: number, what: string): Tap {
    const r = ifreq("");
    try {
      ioctl(fd, TUNGETIFF, r.bytes, "ioctl(TUNGETIFF)");
    } catch (e) {
      const errno = e instanceof SysError ? e.errno : 0;
      const why = errno === EBADF ? "is not open" : errno === EBADFD || errno === EINVAL || errno === ENOTTY ? "is not an attached tap device" : (e as Error).message;
      throw new TapError(`${what}: fd=${fd} ${why}`);
    }
    const flags = r.get("ifr_flags");
    if (!(flags & IFF_TAP) || !(flags & IFF_NO_PI) || !(flags & IFF_VNET_HDR)) {
      throw new TapError(`${what}: fd=${fd} (${ifreqName(r)}) must be a tap opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`);
    }
    const tap = new Tap(fd, ifreqName(r));
    tap.configure(what);
    return tap;
  }

  private configure(what: string): void {
    try {
      const sz = new Uint8Array(new Int32Array([VNET_HDR_SIZE]).buffer);
      ioctl(this.fd, TUNSETVNETHDRSZ, sz, "ioctl(TUNSETVNETHDRSZ)");
      // No receive offloads until the guest asks for them: frames arrive whole, checksummed.
      ioctlInt(this.fd, TUNSETOFFLOAD, 0, "ioctl(TUNSETOFFLOAD)");
      signalOnReadable(this.fd, gettid());
    } catch (e) {
      this.close();
      throw new TapError(`${what}: ${this.ifname}: ${(e as Error).message}`);
    }
  }

  /**
   * Turn readiness signals off while nobody can take frames (the guest has no receive buffers): the
   * kernel would otherwise signal every arriving frame for nothing. Whoever turns them back on must
   * then read until EAGAIN, since frames that arrived meanwhile raise no signal.
   */
  setSignals(on: boolean): void {
    if (on === this.signalling) return;
    const fl = fcntlInt(this.fd, F_GETFL, 0, "fcntl(F_GETFL)");
    fcntlInt(this.fd, F_SETFL, on ? fl | O_ASYNC : fl & ~O_ASYNC, "fcntl(F_SETFL)");
    this.signalling = on;
  }

  /** TUN_F_* receive offloads the guest can take (checksum, TSO). */
  setOffload(flags: number): void {
    ioctlInt(this.fd, TUNSETOFFLOAD, flags, "ioctl(TUNSETOFFLOAD)");
  }

  /** Call `cb` (on the main thread) whenever frames may be waiting; it must read until EAGAIN. */
  onReadable(cb: () => void): void {
    this.unsubscribe?.();
    this.unsubscribe = onSigio(cb);
  }

  /** One frame (with its header) into the iovecs: its length, or -errno (-EAGAIN: none queued). */
  readv(iov: Uint8Array, count: number): number {
    return readvRaw(this.fd, iov, count);
  }

  /** One frame (with its header) from the iovecs: bytes written, or -errno. */
  writev(iov: Uint8Array, count: number): number {
    return writevRaw(this.fd, iov, count);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    // An inherited fd is closed too: kiln owns it from now on, as QEMU does.
    try {
      close(this.fd);
    } catch {
      // already closed
    }
  }
}
