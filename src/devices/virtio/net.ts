/**
 * virtio-net (spec 5.1) on a tap: one receive and one transmit queue, the MAC and link status in the
 * configuration space.
 *
 * Receive: when the tap has frames (SIGIO) or the driver adds buffers (a kick on queue 0), frames are
 * read with one readv each straight into the guest's buffers, header included. A frame that does not
 * fit the buffer is dropped and counted (an extra scratch iovec catches the overflow, so the length is
 * known). Frames wait in the tap's queue while the guest has no buffers; the kernel counts what its
 * queue cannot hold.
 * Transmit: each chain goes out with one writev. Failures are counted, never silent.
 *
 * After a migration (or a snapshot restore) the device announces the guest's MAC on the tap with RARP
 * frames, as QEMU's self-announce does, so switches learn where the guest is now.
 */
import { IovecArray, PinnedBuffer } from "../../../ffi/io.ts";
import { EAGAIN } from "../../../ffi/errno.ts";
import { VNET_HDR_SIZE } from "../../net/tap.ts";
import { rarpAnnouncement } from "../../net/announce.ts";
import { bit, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, VIRTIO_ID_NET } from "./constants.ts";
import { VirtioDevice } from "./device.ts";
import { chainIovecs, copyToChain, markChainDirty } from "./chain-io.ts";
import { DescChain, MAX_CHAIN_SEGMENTS, VirtqueueError } from "./queue.ts";

/** Feature bits (spec 5.1.3). */
export const NetF = {
  CSUM: 0,
  GUEST_CSUM: 1,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
} as const;

/** struct virtio_net_config offsets. */
export const NetCfg = { MAC: 0, STATUS: 6, MAX_VIRTQUEUE_PAIRS: 8, SIZE: 10 } as const;
export const NET_S_LINK_UP = 1;

export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
/** Offset of num_buffers in the header. */
const HDR_NUM_BUFFERS = 10;
/** Catches the part of a frame that does not fit the guest's buffer (a tap frame is at most 64 KiB + header). */
const OVERFLOW_SIZE = 65536 + VNET_HDR_SIZE;
const PUBLISH_EVERY = 64;
/** Self-announce rounds after a migration, ms after resuming (QEMU: 5 rounds, 50 ms then +100 ms). */
const ANNOUNCE_AT_MS = [0, 50, 150, 250, 350];

export interface NetStats {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  /** Frames longer than the guest's receive buffer: dropped. */
  rxDroppedTooBig: number;
  /** Reads from the tap that failed (other than "nothing queued"). */
  rxErrors: number;
  /** Times receiving stopped because the guest had no buffers (frames wait in the tap's queue). */
  rxNoBuffers: number;
  /** Frames the tap refused: dropped. */
  txErrors: number;
  announcements: number;
}

/** Where frames go: a Tap (src/net/tap.ts), or a test double. Frames carry the 12-byte header. */
export interface NetBackend {
  readonly ifname: string;
  /** One frame into the iovecs: its length, or -errno (-EAGAIN: none queued). */
  readv(iov: Uint8Array, count: number): number;
  /** One frame from the iovecs: bytes written, or -errno. */
  writev(iov: Uint8Array, count: number): number;
  /** Call `cb` whenever frames may be waiting. */
  onReadable(cb: () => void): void;
  /** Stop (false) or restart (true) those calls; after restarting, the caller reads until EAGAIN. */
  setSignals(on: boolean): void;
  close(): void;
}

export interface VirtioNetOptions {
  tap: NetBackend;
  mac: string;
  queueSize: number;
}

export class VirtioNet extends VirtioDevice {
  readonly type = VIRTIO_ID_NET;
  readonly kind = "virtio-net";
  readonly features: bigint;
  readonly queueSizes: number[];
  readonly config = new Uint8Array(NetCfg.SIZE);
  readonly stats: NetStats = { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, rxDroppedTooBig: 0, rxErrors: 0, rxNoBuffers: 0, txErrors: 0, announcements: 0 };
  readonly tap: NetBackend;
  readonly mac: Uint8Array;
  private readonly rxChain = new DescChain();
  private readonly txChain = new DescChain();
  private readonly iov = new IovecArray(MAX_CHAIN_SEGMENTS + 1);
  /** Catches what does not fit; outside the JS heap because its address is kept. */
  private readonly overflow = new PinnedBuffer(OVERFLOW_SIZE);
  private readonly announceFrame = new PinnedBuffer(4096);
  private readonly numBuffers = new Uint8Array([1, 0]);
  private active = false;
  /** The guest had no receive buffers when last looked: wait for its kick, not for the tap. */
  private starved = false;
  private announcePending = false;
  private timers: Timer[] = [];
  private lastRxError = "";

  constructor(o: VirtioNetOptions) {
    super();
    this.tap = o.tap;
    this.mac = parseMac(o.mac);
    this.queueSizes = [o.queueSize, o.queueSize];
    this.features = bit(F_VERSION_1) | bit(F_RING_EVENT_IDX) | bit(F_RING_INDIRECT_DESC) | bit(NetF.MAC) | bit(NetF.STATUS);
    this.config.set(this.mac, NetCfg.MAC);
    new DataView(this.config.buffer).setUint16(NetCfg.STATUS, NET_S_LINK_UP, true);
    new DataView(this.config.buffer).setUint16(NetCfg.MAX_VIRTQUEUE_PAIRS, 1, true);
    // A signal while starved (no receive buffers) is stale: only the driver's kick can help then.
    this.tap.onReadable(() => {
      if (!this.starved) this.receive();
    });
  }

  activate(_features: bigint): void {
    this.active = true;
  }

  deactivate(): void {
    this.active = false;
    this.starved = false;
    // Nothing to receive into: activation (through resumeIo) reads the tap and turns signals on again.
    this.tap.setSignals(false);
  }

  kick(q: number): void {
    if (q === RX_QUEUE) {
      this.starved = false;
      this.receive();
    }
    else if (q === TX_QUEUE) this.transmit();
  }

  override resumeIo(): void {
    this.starved = false;
    this.transmit();
    this.receive();
    if (this.announcePending) {
      this.announcePending = false;
      this.scheduleAnnounce();
    }
  }

  /** Move frames from the tap into the guest's receive buffers until either runs out. */
  receive(): void {
    const host = this.host;
    if (!this.active || host.paused) return;
    const q = host.queues[RX_QUEUE]!;
    if (!q.active) return;
    try {
      this.receiveFrames();
    } catch (e) {
      if (e instanceof VirtqueueError) host.deviceError(e);
      else throw e;
    }
  }

  private receiveFrames(): void {
    const host = this.host;
    const mem = host.mem;
    const q = host.queues[RX_QUEUE]!;
    const chain = this.rxChain;
    const iov = this.iov;
    let n = 0;
    // The tap signals every frame it queues: off while draining (that was most of the cost of receiving
    // under load), back on once it is empty, then one more look for a frame that slipped in between.
    this.tap.setSignals(false);
    let armed = false;
    q.setNotify(false);
    for (;;) {
      if (!q.pop(chain)) {
        // Out of buffers: ask the driver to kick when it adds some, unless it just did. The tap stays
        // quiet meanwhile (frames wait in its queue); the kick brings us back.
        if (q.setNotify(true)) continue;
        this.stats.rxNoBuffers++;
        this.starved = true;
        break;
      }
      const room = chain.writableBytes;
      if (room < VNET_HDR_SIZE) throw new VirtqueueError(`virtio-net receive buffer ${chain.head} has ${room} bytes (the header alone is ${VNET_HDR_SIZE})`);
      iov.clear();
      chainIovecs(mem, chain, true, 0, room, iov);
      iov.push(this.overflow.addr, OVERFLOW_SIZE);
      const len = this.tap.readv(iov.bytes, iov.count);
      if (len < 0) {
        q.unpop();
        if (len !== -EAGAIN) {
          this.rxError(len);
          this.tap.setSignals(true);
          break;
        }
        if (armed) break;
        this.tap.setSignals(true);
        armed = true;
        continue;
      }
      if (len > room) {
        // The buffer is still the device's; its contents changed, so migration must resend it.
        markChainDirty(mem, chain, 0, room);
        this.stats.rxDroppedTooBig++;
        q.unpop();
        continue;
      }
      // num_buffers: without MRG_RXBUF always 1 (spec 5.1.6.3.1); taps write 0 or leave it alone.
      copyToChain(mem, chain, HDR_NUM_BUFFERS, this.numBuffers);
      markChainDirty(mem, chain, 0, len);
      q.pushUsed(chain.head, len);
      this.stats.rxFrames++;
      this.stats.rxBytes += len - VNET_HDR_SIZE;
      if (++n % PUBLISH_EVERY === 0) host.usedBuffers(q);
    }
    host.usedBuffers(q);
  }

  private rxError(errno: number): void {
    this.stats.rxErrors++;
    const msg = `reading from tap ${this.tap.ifname} failed: errno ${-errno}`;
    if (msg !== this.lastRxError) this.host.log("warn", msg);
    this.lastRxError = msg;
  }

  /** Send every frame the driver queued. */
  private transmit(): void {
    const host = this.host;
    if (!this.active || host.paused) return;
    const q = host.queues[TX_QUEUE]!;
    if (!q.active) return;
    const chain = this.txChain;
    const iov = this.iov;
    for (;;) {
      q.setNotify(false);
      let n = 0;
      while (q.pop(chain)) {
        iov.clear();
        chainIovecs(host.mem, chain, false, 0, chain.readableBytes, iov);
        const r = chain.readableBytes > VNET_HDR_SIZE ? this.tap.writev(iov.bytes, iov.count) : -22;
        if (r < 0) this.stats.txErrors++;
        else {
          this.stats.txFrames++;
          this.stats.txBytes += chain.readableBytes - VNET_HDR_SIZE;
        }
        q.pushUsed(chain.head, 0);
        if (++n % PUBLISH_EVERY === 0) host.usedBuffers(q);
      }
      host.usedBuffers(q);
      if (!q.setNotify(true)) return;
    }
  }

  /** Tell the network where the guest's MAC now lives (RARP broadcasts from the guest's address). */
  announce(): void {
    const frame = this.announceFrame.bytes;
    frame.fill(0, 0, VNET_HDR_SIZE);
    frame.set(rarpAnnouncement(this.mac), VNET_HDR_SIZE);
    const iov = new IovecArray(1);
    iov.push(this.announceFrame.addr, VNET_HDR_SIZE + 60);
    if (this.tap.writev(iov.bytes, 1) < 0) this.stats.txErrors++;
    else this.stats.announcements++;
  }

  private scheduleAnnounce(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers = ANNOUNCE_AT_MS.map((ms) =>
      setTimeout(() => {
        if (!this.host.paused) this.announce();
      }, ms),
    );
  }

  override saveState(): Record<string, unknown> {
    return { stats: { ...this.stats } };
  }

  override loadState(s: Record<string, unknown>): void {
    const st = s.stats as Partial<NetStats> | undefined;
    if (st && typeof st === "object") {
      for (const k of Object.keys(this.stats) as (keyof NetStats)[]) {
        const v = st[k];
        if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) this.stats[k] = v;
      }
    }
    // The guest now runs behind this tap: announce it once the machine resumes.
    this.announcePending = true;
  }

  override close(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    this.tap.close();
    this.overflow.free();
    this.announceFrame.free();
  }
}

/** "52:54:00:12:34:56" → 6 bytes. */
export function parseMac(mac: string): Uint8Array {
  const parts = mac.split(":");
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) throw new RangeError(`invalid MAC address '${mac}'`);
  return new Uint8Array(parts.map((p) => parseInt(p, 16)));
}
