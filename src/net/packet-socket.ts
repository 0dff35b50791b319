/**
 * The host's side of a tap, for tests and benchmarks: a raw AF_PACKET socket bound to the interface
 * (optionally inside a network namespace) that sends Ethernet frames into it (the guest receives them)
 * and receives what the guest transmits. Non-blocking; `waitFor` polls with a deadline.
 */
import { SysError, close, ioctl, open, O_RDONLY } from "../../ffi/libc.ts";
import { bind, ifreq, recv, send, setns, socket, SockaddrLl, AF_PACKET, CLONE_NEWNET, ETH_P_ALL, MSG_DONTWAIT, SIOCGIFINDEX, SOCK_NONBLOCK, SOCK_RAW } from "../../ffi/io.ts";
import { EAGAIN } from "../../ffi/errno.ts";

const htons = (v: number) => ((v & 0xff) << 8) | ((v >> 8) & 0xff);

/** Run `fn` with the calling thread in network namespace `name` (from `ip netns add`), then come back. */
export function inNetns<T>(name: string, fn: () => T): T {
  const self = open("/proc/thread-self/ns/net", O_RDONLY);
  let target: number;
  try {
    target = open(`/var/run/netns/${name}`, O_RDONLY);
  } catch (e) {
    close(self);
    throw e;
  }
  try {
    setns(target, CLONE_NEWNET);
    try {
      return fn();
    } finally {
      setns(self, CLONE_NEWNET);
    }
  } finally {
    close(target);
    close(self);
  }
}

export class PacketSocket {
  private readonly buf = new Uint8Array(65536 + 64);
  private closed = false;

  private constructor(
    readonly fd: number,
    readonly ifname: string,
  ) {}

  /** Bind to `ifname` (in namespace `netns` if given). */
  static open(ifname: string, netns?: string): PacketSocket {
    const make = () => {
      const fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
      try {
        const r = ifreq(ifname);
        ioctl(fd, SIOCGIFINDEX, r.bytes, `ioctl(SIOCGIFINDEX ${ifname})`);
        const sa = SockaddrLl.alloc().set("sll_family", AF_PACKET).set("sll_protocol", htons(ETH_P_ALL)).set("sll_ifindex", r.get("ifr_ifindex"));
        bind(fd, sa.bytes);
        return new PacketSocket(fd, ifname);
      } catch (e) {
        close(fd);
        throw e;
      }
    };
    return netns ? inNetns(netns, make) : make();
  }

  /** Transmit one frame into the interface (towards the guest). */
  send(frame: Uint8Array): void {
    const r = send(this.fd, frame);
    if (r < 0) throw new SysError("send", -r);
  }

  /** One received frame (a copy), or null when none is queued. */
  recv(): Uint8Array | null {
    const r = recv(this.fd, this.buf, MSG_DONTWAIT);
    if (r === -EAGAIN) return null;
    if (r < 0) throw new SysError("recv", -r);
    return this.buf.slice(0, r);
  }

  /** Collect frames matching `pred` until `count` arrived; throws after `timeoutMs`. */
  async waitFor(pred: (f: Uint8Array) => boolean, count: number, timeoutMs = 10_000): Promise<Uint8Array[]> {
    const got: Uint8Array[] = [];
    const deadline = performance.now() + timeoutMs;
    while (got.length < count) {
      const f = this.recv();
      if (f) {
        if (pred(f)) got.push(f);
        continue;
      }
      if (performance.now() > deadline) throw new Error(`${this.ifname}: ${got.length} of ${count} expected frames within ${timeoutMs} ms`);
      await Bun.sleep(1);
    }
    return got;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }
}
