/**
 * The migration destination's data path, in its own thread: it accepts (or opens) the incoming stream,
 * validates every record, reads guest pages straight into the memfd mapping with readv, and hands the
 * small records (configuration, component state, end) to the main thread, which applies them.
 *
 * Commands arrive by postMessage; "receive" runs until the END record (or an error) and posts the
 * records it does not handle itself as events along the way.
 */
import { GuestMemory } from "../memory/guest-memory.ts";
import { open, O_RDONLY, close as closeFdLibc } from "../../ffi/libc.ts";
import { acceptRaw, listenOn, recvWithFds, tuneStream, closeFd } from "../../ffi/socket.ts";
import { ptr } from "bun:ffi";
import { EAGAIN, EINTR } from "../../ffi/errno.ts";
import { IovecList, readExact, readvAll, writeAll, TransportError } from "./fdio.ts";
import { errnoMessage } from "../../ffi/errno.ts";
import { configMismatch, restoreKvmState, sectionsByName, type GuestConfig, type KvmTargets } from "../vmm/machine-state.ts";
import { decodeVcpuState, encodeVcpuState, probeSavableMsrs, restoreVcpuState, saveVcpuState } from "../vmm/vcpu-state.ts";
import { Vm } from "../kvm/vm.ts";
import { VcpuFd } from "../kvm/vcpu.ts";
import { KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE } from "../../ffi/kvm-abi.ts";
import { RCTL_TEXT, RCTL_TEXT_LEN, RCTL_VERDICT, VERDICT_FAILED, VERDICT_LOADED_RUN, type RecvCommand, type RecvEvent, type RecvSource, type RecvStats } from "./worker-protocol.ts";
import {
  FLAG_RETURN_PATH,
  FLAG_SNAPSHOT,
  HEADER_SIZE,
  LIMITS,
  PAGE_SIZE,
  RAM_HEAD_SIZE,
  Rec,
  RECORD_HEADER_SIZE,
  RUN_DATA,
  RUN_DESC_SIZE,
  WireError,
  decodeHeader,
  decodeRecordHeader,
  decodeRuns,
  decodeState,
  record,
  type StateSection,
} from "./wire.ts";
import { GO_RUN, GO_WAIT } from "../vmm/vcpu-protocol.ts";
import { trace } from "../util/trace.ts";

declare const self: Worker;

let mem: GuestMemory;
let ctl: Int32Array;
let ctlBytes: Uint8Array;
let expected: GuestConfig;
let goWords: Int32Array[] = [];
let goIndex = 0;
let kvm: KvmTargets;
let sectionNames: string[] = [];

/** The longest a live migration may have kept the guest stopped for its clock to be advanced by it. */
const MAX_ADVANCE_NS = 10e9;

/**
 * Wall time the guest was stopped, to add to its TSC and kvmclock: the downtime of a live migration
 * (bounded; clocks of two hosts may disagree), nothing for a snapshot (time stood still for it).
 */
function advanceFor(endJson: string, flags: number): number {
  if (flags & FLAG_SNAPSHOT) return 0;
  let end: { pausedRealtimeNs?: unknown };
  try {
    end = JSON.parse(endJson);
  } catch {
    throw new WireError("the END record is not JSON");
  }
  const paused = typeof end.pausedRealtimeNs === "number" ? end.pausedRealtimeNs : 0;
  return Math.min(Math.max(Date.now() * 1e6 - paused, 0), MAX_ADVANCE_NS);
}
let listenFd = -1;
let fd = -1;
let source: RecvSource;

function send(e: RecvEvent): void {
  self.postMessage(e);
}

function prepare(s: RecvSource): void {
  source = s;
  if (s.kind === "listen") {
    try {
      listenFd = listenOn(s.addr);
    } catch (e) {
      throw new TransportError(`cannot listen for an incoming migration on ${s.display}: ${(e as Error).message}`);
    }
    send({ type: "listening", listenFd });
  } else {
    send({ type: "ok" });
  }
}

function connect(): number {
  const s = source;
  if (s.kind === "listen") {
    const c = acceptRaw(listenFd);
    if (c < 0) throw new TransportError(`accepting the incoming migration failed: ${errnoMessage(-c)}`);
    // One migration per listener, as QEMU: stop listening once the source is here.
    closeFd(listenFd);
    listenFd = -1;
    tuneStream(c, 4 << 20);
    return c;
  }
  if (s.kind === "file") {
    try {
      return open(s.path, O_RDONLY);
    } catch (e) {
      throw new TransportError(`cannot open the migration file ${s.path}: ${(e as Error).message}`);
    }
  }
  return s.fd;
}

function readPayload(length: number, limit: number, what: string): Uint8Array {
  if (length > limit) throw new WireError(`${what} record is too large (${length} bytes, limit ${limit})`);
  return readExact(fd, length)!;
}

/** File descriptors that arrived with the stream (SCM_RIGHTS), for the next MEMFD record. */
const passedFds: number[] = [];

/**
 * The next record header, or null at a clean end of stream. On a socket it is read with recvmsg so
 * that a file descriptor passed with it (a MEMFD record) is not lost.
 */
function readRecordHeader(): Uint8Array | null {
  if (source.kind !== "listen") return readExact(fd, RECORD_HEADER_SIZE, "migration stream", true);
  const b = new Uint8Array(RECORD_HEADER_SIZE);
  let done = 0;
  while (done < RECORD_HEADER_SIZE) {
    const { n, fds } = recvWithFds(fd, ptr(b) + done, RECORD_HEADER_SIZE - done);
    passedFds.push(...fds);
    if (n < 0) {
      if (-n === EINTR || -n === EAGAIN) continue;
      throw new TransportError(`reading the migration stream failed: ${errnoMessage(-n)}`);
    }
    if (n === 0) {
      if (done === 0) return null;
      throw new TransportError(`the migration stream ended early (${done} of ${RECORD_HEADER_SIZE} bytes)`);
    }
    done += n;
  }
  return b;
}

/** A RAM record: validate the run table, then read the data straight into guest memory. */
function receiveRam(length: number, stats: RecvStats): void {
  if (length < RAM_HEAD_SIZE) throw new WireError("RAM record too short");
  const head = readExact(fd, RAM_HEAD_SIZE)!;
  const hv = new DataView(head.buffer);
  const count = hv.getUint32(0, true);
  if (hv.getUint32(4, true) !== 0) throw new WireError("RAM record flags are not zero");
  if (count === 0 || count > LIMITS.runsPerRecord) throw new WireError(`RAM record has a bad run count ${count}`);
  const tableLen = count * RUN_DESC_SIZE;
  if (RAM_HEAD_SIZE + tableLen > length) throw new WireError("RAM record run table overruns the record");
  const table = readExact(fd, tableLen)!;
  const { runs, dataPages } = decodeRuns(table, count, (gpa, len) => mem.contains(gpa, len));
  if (RAM_HEAD_SIZE + tableLen + dataPages * PAGE_SIZE !== length) {
    throw new WireError(`RAM record length ${length} does not match its ${dataPages} data pages`);
  }
  const list = new IovecList();
  const flushList = () => {
    readvAll(fd, list);
    list.reset();
  };
  for (const r of runs) {
    if (r.kind === RUN_DATA) {
      // One run lies inside one RAM region (decodeRuns checked), so its host range is contiguous.
      if (list.full) flushList();
      list.addRaw(mem.hostAddress(r.gpa, r.pages * PAGE_SIZE), r.pages * PAGE_SIZE);
      stats.dataPages += r.pages;
    }
  }
  if (list.bytes > 0) flushList();
  for (const r of runs) {
    if (r.kind === RUN_DATA) continue;
    // The source names each page at most once per record, so zero runs can follow the data reads.
    const v = mem.view(r.gpa, r.pages * PAGE_SIZE);
    if (v) v.fill(0);
    else mem.write(r.gpa, new Uint8Array(r.pages * PAGE_SIZE));
    stats.zeroPages += r.pages;
  }
  stats.bytes += length;
}

function receive(): void {
  fd = connect();
  const header = readExact(fd, HEADER_SIZE, "migration stream", true);
  if (!header) throw new TransportError("the migration stream is empty");
  const { flags } = decodeHeader(header);
  send({ type: "connected", fd, flags });
  const stats: RecvStats = { bytes: HEADER_SIZE, dataPages: 0, zeroPages: 0 };
  let sawConfig = false;
  const sections: StateSection[] = [];
  for (;;) {
    const h = readRecordHeader();
    if (!h) throw new TransportError("the migration stream ended before its END record");
    const { type, length } = decodeRecordHeader(h);
    stats.bytes += RECORD_HEADER_SIZE;
    if (type !== Rec.CONFIG && !sawConfig) throw new WireError(`record ${type} before the configuration`);
    switch (type) {
      case Rec.CONFIG: {
        if (sawConfig) throw new WireError("a second configuration record");
        sawConfig = true;
        const text = new TextDecoder().decode(readPayload(length, LIMITS.configBytes, "configuration"));
        let theirs: unknown;
        try {
          theirs = JSON.parse(text);
        } catch {
          throw new WireError("the configuration record is not JSON");
        }
        const why = configMismatch(expected, theirs);
        if (why) {
          answer(flags, Rec.ERROR, why);
          throw new TransportError(why);
        }
        answer(flags, Rec.CONFIG_OK);
        stats.bytes += length;
        break;
      }
      case Rec.RAM:
        receiveRam(length, stats);
        break;
      case Rec.MEMFD: {
        const p = readPayload(length, 8, "memfd");
        const received = passedFds.splice(0);
        if (p.byteLength !== 8 || received.length !== 1) {
          for (const f of received) closeFdLibc(f);
          throw new WireError("a MEMFD record needs its 8-byte size and exactly one file descriptor (unix sockets only)");
        }
        const size = Number(new DataView(p.buffer).getBigUint64(0, true));
        if (size !== mem.size) {
          closeFdLibc(received[0]!);
          throw new WireError(`the source's guest RAM is ${size} bytes, this destination's ${mem.size}`);
        }
        // Map the source's pages over ours at the same address: nothing else here is touching guest
        // RAM before the switchover, and every view and KVM memory slot stays valid.
        mem.adopt(received[0]!);
        send({ type: "memfd", fd: received[0]! });
        stats.bytes += length;
        break;
      }
      case Rec.PASS: {
        const p = readPayload(length, 4, "pass");
        if (p.byteLength !== 4) throw new WireError("pass record must be 4 bytes");
        send({ type: "pass", pass: new DataView(p.buffer).getUint32(0, true) });
        stats.bytes += length;
        break;
      }
      case Rec.STATE:
        sections.push(decodeState(readPayload(length, LIMITS.stateBytes, "state")));
        stats.bytes += length;
        break;
      case Rec.END: {
        trace("dst.end-record");
        stats.bytes += length;
        const json = new TextDecoder().decode(readPayload(length, LIMITS.endBytes, "end"));
        let devices: StateSection[];
        try {
          // Load the vCPUs and KVM's devices right here, without a hop to other threads.
          const byName = sectionsByName(sectionNames, sections);
          restoreKvmState(kvm, byName, advanceFor(json, flags));
          devices = sections.filter((s) => !s.name.startsWith("cpu/") && !s.name.startsWith("kvm/"));
        } catch (e) {
          answer(flags, Rec.ERROR, (e as Error).message);
          throw e;
        }
        send({ type: "end", json, flags, stats, sections: devices });
        // The main thread restores the devices; wait for its verdict before answering the source.
        while (Atomics.load(ctl, RCTL_VERDICT) === 0) Atomics.wait(ctl, RCTL_VERDICT, 0);
        const verdict = Atomics.load(ctl, RCTL_VERDICT);
        if (verdict === VERDICT_FAILED) {
          const why = new TextDecoder().decode(ctlBytes.subarray(RCTL_TEXT, RCTL_TEXT + ctl[RCTL_TEXT_LEN]!));
          answer(flags, Rec.ERROR, why);
          throw new TransportError(why);
        }
        if (flags & FLAG_RETURN_PATH) {
          answer(flags, Rec.LOADED);
          if (!awaitCommit()) throw new TransportError("the source went away before the switchover (no COMMIT)");
        }
        // The switchover: start the restored vCPUs from here, without a hop through the main thread.
        trace("dst.commit");
        if (verdict === VERDICT_LOADED_RUN) release();
        send({ type: "done", committed: (flags & FLAG_RETURN_PATH) !== 0 });
        return;
      }
      default:
        throw new WireError(`unknown record type ${type}`);
    }
  }
}

/**
 * Run the restore path once now, on the machine's own pristine state (its vCPUs have never run): the
 * switchover then runs warm code, including the first vCPU ioctls from this thread, which KVM warns
 * are slower than the rest.
 */
function prime(msrIndexList: number[]): void {
  for (const v of kvm.vcpus) restoreVcpuState(v, decodeVcpuState(encodeVcpuState(saveVcpuState(v, kvm.xsaveSize, probeSavableMsrs(v, msrIndexList)))), 0);
  for (const chip of [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC]) kvm.vm.setIrqchip(kvm.vm.getIrqchip(chip));
  kvm.vm.setPit2(kvm.vm.getPit2());
}

/** Let every restored vCPU run (GO_RUN on its go word; see vcpu-protocol.ts CTL_GO). */
function release(): void {
  for (const w of goWords) {
    if (Atomics.compareExchange(w, goIndex, GO_WAIT, GO_RUN) === GO_WAIT) Atomics.notify(w, goIndex);
  }
}

/** A return-path record, when the stream has a return path. */
function answer(flags: number, rtype: number, text = ""): void {
  if (flags & FLAG_RETURN_PATH) writeAll(fd, record(rtype, new TextEncoder().encode(text)), "return path");
}

function awaitCommit(): boolean {
  const h = readExact(fd, RECORD_HEADER_SIZE, "migration stream", true);
  if (!h) return false;
  const { type, length } = decodeRecordHeader(h);
  if (type !== Rec.COMMIT || length !== 0) throw new WireError(`expected the switchover (COMMIT), got record ${type}`);
  return true;
}

function handle(msg: RecvCommand): void {
  switch (msg.type) {
    case "init":
      mem = GuestMemory.attach(msg.memory);
      ctl = new Int32Array(msg.ctl);
      ctlBytes = new Uint8Array(msg.ctl);
      expected = msg.config;
      goWords = msg.goWords.map((g) => new Int32Array(g.sab));
      goIndex = msg.goWords[0]?.index ?? 0;
      sectionNames = msg.sections;
      kvm = { vm: new Vm(msg.vmFd), vcpus: msg.vcpuFds.map((fd, i) => new VcpuFd(fd, i)), xsaveSize: msg.xsaveSize };
      prime(msg.msrIndexList);
      send({ type: "ok" });
      return;
    case "prepare":
      prepare(msg.source);
      return;
    case "receive":
      receive();
      return;
    case "close":
      for (const f of passedFds.splice(0)) closeFdLibc(f);
      if (fd >= 0 && !(source?.kind === "fd")) closeFdLibc(fd);
      if (listenFd >= 0) closeFd(listenFd);
      fd = -1;
      listenFd = -1;
      send({ type: "ok" });
      return;
  }
}

self.onmessage = (ev: MessageEvent<RecvCommand>) => {
  try {
    handle(ev.data);
  } catch (e) {
    send({ type: "error", message: (e as Error).message });
  }
};
