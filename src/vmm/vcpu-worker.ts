/**
 * One vCPU's thread. It creates its vCPU (the KVM API wants vCPU ioctls from the creating thread), then
 * loops in KVM_RUN, forwarding PIO/MMIO exits that need a device model to the main thread through the
 * shared control block (see vcpu-protocol.ts). When asked to pause it leaves the loop and serves
 * postMessage commands (save/restore/run) from its event loop.
 */
import { KvmExit, KvmRun, KVM_EXIT_IO_OUT, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, exitReasonName } from "../../ffi/kvm-abi.ts";
import { EINTR, EAGAIN } from "../../ffi/errno.ts";
import { gettid } from "../../ffi/libc.ts";
import { trace } from "../util/trace.ts";
import { Vcpu, readSegment } from "../kvm/vcpu.ts";
import { probeSavableMsrs, saveVcpuState } from "./vcpu-state.ts";
import { KVM_CPUID_TIMING } from "../arch/x86_64/cpuid.ts";
import { applyBootRegs, applyBootSregs, FPU_FCW_DEFAULT, FPU_MXCSR_DEFAULT, setLapicLints, type BootCpuState } from "../arch/x86_64/regs.ts";
import {
  CTL_ADDR_HI,
  CTL_ADDR_LO,
  CTL_COUNT,
  CTL_DATA_OFFSET,
  CTL_DATA_SIZE,
  CTL_DIR,
  CTL_EXITS,
  CTL_GO,
  CTL_KIND,
  CTL_SAVE_ON_PARK,
  CTL_SIZE,
  CTL_SLOT,
  CTL_WANT,
  DIR_READ,
  DIR_WRITE,
  GO_RUN,
  GO_WAIT,
  KIND_MMIO,
  KIND_PIO,
  Q_DOORBELL,
  Q_HEAD,
  Q_TAIL,
  Q_WORDS,
  RING_ENTRIES,
  RING_ENTRY_WORDS,
  SLOT_IDLE,
  SLOT_REQUEST,
  WANT_EXIT,
  WANT_RUN,
  type GuestStopReason,
  type MainToVcpu,
  type VcpuInitMessage,
  type VcpuState,
  type VcpuToMain,
} from "./vcpu-protocol.ts";

declare const self: Worker;

const POST_PORT = 0x80;
/** Atomics.load iterations (a few µs) to spin on an answer before sleeping in Atomics.wait. */
const SPIN_BEFORE_WAIT = 4000;

const F = KvmRun.fields;

let vcpu: Vcpu;
let ctl: Int32Array;
let data: Uint8Array;
let queue: Int32Array;
let init: VcpuInitMessage;
let savableMsrs: number[] | null = null;

function send(msg: VcpuToMain): void {
  self.postMessage(msg);
}

function ringDoorbell(): void {
  Atomics.add(queue, Q_DOORBELL, 1);
  Atomics.notify(queue, Q_DOORBELL);
}

/** Queue a device write for the main thread and return to the guest without waiting (see vcpu-protocol.ts). */
function postWrite(kind: number, size: number, addr: number, lo: number, hi: number): void {
  let seq: number;
  for (;;) {
    seq = Atomics.load(queue, Q_HEAD);
    const tail = Atomics.load(queue, Q_TAIL);
    if (((seq - tail) | 0) >= RING_ENTRIES) {
      // Full: the main thread is behind; wait for it to drain.
      ringDoorbell();
      Atomics.wait(queue, Q_TAIL, tail, 10);
      continue;
    }
    if (Atomics.compareExchange(queue, Q_HEAD, seq, (seq + 1) | 0) === seq) break;
  }
  const e = Q_WORDS + ((seq >>> 0) % RING_ENTRIES) * RING_ENTRY_WORDS;
  queue[e + 1] = kind;
  queue[e + 2] = size;
  queue[e + 3] = addr | 0;
  queue[e + 4] = Math.floor(addr / 0x1_0000_0000) | 0;
  queue[e + 5] = lo;
  queue[e + 6] = hi;
  Atomics.store(queue, e, (seq + 1) | 0);
  ringDoorbell();
}

/** Hand one exit to the main thread and wait for the device model's answer. */
function forward(kind: number, dir: number, size: number, count: number, addr: number, bytes: Uint8Array | null): void {
  ctl[CTL_KIND] = kind;
  ctl[CTL_DIR] = dir;
  ctl[CTL_SIZE] = size;
  ctl[CTL_COUNT] = count;
  ctl[CTL_ADDR_LO] = addr | 0;
  ctl[CTL_ADDR_HI] = Math.floor(addr / 0x1_0000_0000) | 0;
  if (bytes) data.set(bytes);
  Atomics.store(ctl, CTL_SLOT, SLOT_REQUEST);
  ringDoorbell();
  // The main thread usually answers within a few microseconds, while a futex sleep and wake-up through
  // Atomics.wait costs ~50 µs here: spin briefly before sleeping.
  for (let i = 0; i < SPIN_BEFORE_WAIT && Atomics.load(ctl, CTL_SLOT) === SLOT_REQUEST; i++);
  // Signals (our kick, JSC's own) may wake the wait early; only the main thread's answer ends it.
  while (Atomics.load(ctl, CTL_SLOT) === SLOT_REQUEST) Atomics.wait(ctl, CTL_SLOT, SLOT_REQUEST);
}

function handleIo(): void {
  const rv = vcpu.runView;
  const port = rv.getUint16(F.io_port.offset, true);
  const size = rv.getUint8(F.io_size.offset);
  const count = rv.getUint32(F.io_count.offset, true);
  const dir = rv.getUint8(F.io_direction.offset) === KVM_EXIT_IO_OUT ? DIR_WRITE : DIR_READ;
  const off = Number(rv.getBigUint64(F.io_data_offset.offset, true));
  const len = size * count;
  if (port === POST_PORT) {
    // POST codes: nothing to do, and no reason to bother the main thread.
    if (dir === DIR_READ) vcpu.run.fill(0, off, off + len);
    return;
  }
  if (dir === DIR_WRITE && count === 1) {
    const v = size === 1 ? vcpu.run[off]! : size === 2 ? rv.getUint16(off, true) : rv.getUint32(off, true);
    postWrite(KIND_PIO, size, port, v | 0, 0);
    return;
  }
  if (len > CTL_DATA_SIZE) throw new Error(`PIO exit with ${len} bytes of data`);
  forward(KIND_PIO, dir, size, count, port, dir === DIR_WRITE ? vcpu.run.subarray(off, off + len) : null);
  if (dir === DIR_READ) vcpu.run.set(data.subarray(0, len), off);
  Atomics.store(ctl, CTL_SLOT, SLOT_IDLE);
}

function handleMmio(): void {
  const rv = vcpu.runView;
  const addr = Number(rv.getBigUint64(F.mmio_phys_addr.offset, true));
  const len = rv.getUint32(F.mmio_len.offset, true);
  const isWrite = rv.getUint8(F.mmio_is_write.offset) !== 0;
  const off = F.mmio_data.offset;
  if (isWrite && len <= 8) {
    const lo = len >= 4 ? rv.getInt32(off, true) : len === 2 ? rv.getUint16(off, true) : vcpu.run[off]!;
    const hi = len === 8 ? rv.getInt32(off + 4, true) : 0;
    postWrite(KIND_MMIO, len, addr, lo, hi);
    return;
  }
  forward(KIND_MMIO, isWrite ? DIR_WRITE : DIR_READ, len, 1, addr, isWrite ? vcpu.run.subarray(off, off + len) : null);
  if (!isWrite) vcpu.run.set(data.subarray(0, len), off);
  Atomics.store(ctl, CTL_SLOT, SLOT_IDLE);
}

const hex = (v: number | bigint, w = 16) => "0x" + v.toString(16).padStart(w, "0");

/** A register dump for triple faults and internal errors, like QEMU's. */
function dumpState(): string {
  try {
    const r = vcpu.getRegs();
    const s = vcpu.getSregs();
    const g = (n: Parameters<typeof r.getBig>[0]) => hex(r.getBig(n));
    const lines = [
      `vCPU ${vcpu.id}:`,
      `RAX=${g("rax")} RBX=${g("rbx")} RCX=${g("rcx")} RDX=${g("rdx")}`,
      `RSI=${g("rsi")} RDI=${g("rdi")} RBP=${g("rbp")} RSP=${g("rsp")}`,
      `R8 =${g("r8")} R9 =${g("r9")} R10=${g("r10")} R11=${g("r11")}`,
      `R12=${g("r12")} R13=${g("r13")} R14=${g("r14")} R15=${g("r15")}`,
      `RIP=${g("rip")} RFL=${hex(r.getBig("rflags"), 8)}`,
    ];
    for (const seg of ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const) {
      const x = readSegment(s, seg);
      lines.push(
        `${seg.toUpperCase().padEnd(3)}=${hex(x.selector, 4)} base=${hex(x.base)} limit=${hex(x.limit, 8)} type=${x.type} dpl=${x.dpl} p=${x.present} db=${x.db} l=${x.l} g=${x.g}`,
      );
    }
    lines.push(`GDT=${hex(s.getBig("gdt_base"))} limit=${hex(s.get("gdt_limit"), 4)}  IDT=${hex(s.getBig("idt_base"))} limit=${hex(s.get("idt_limit"), 4)}`);
    lines.push(`CR0=${hex(s.getBig("cr0"), 8)} CR2=${hex(s.getBig("cr2"))} CR3=${hex(s.getBig("cr3"))} CR4=${hex(s.getBig("cr4"), 8)} EFER=${hex(s.getBig("efer"), 8)}`);
    return lines.join("\n");
  } catch (e) {
    return `vCPU ${vcpu.id}: registers unavailable (${(e as Error).message})`;
  }
}

function stop(reason: GuestStopReason, detail: string): void {
  send({ type: "stopped", id: vcpu.id, reason, detail, dump: dumpState() });
}

/**
 * The run loop. Returns when the main thread wants something other than running (then the Worker is
 * parked in its event loop), or after the guest did something that ends this vCPU's run.
 */
function runLoop(): void {
  const run = vcpu.run;
  for (;;) {
    const want = Atomics.load(ctl, CTL_WANT);
    if (want !== WANT_RUN) {
      run[F.immediate_exit.offset] = 0;
      // On WANT_EXIT the main thread terminates this Worker; it only needs us out of KVM_RUN.
      if (want !== WANT_EXIT) {
        trace(`vcpu${vcpu.id}.parked`);
        // A migration's switchover asks for the state in the same breath as the pause: one hop fewer.
        const state = Atomics.exchange(ctl, CTL_SAVE_ON_PARK, 0) ? saveState() : undefined;
        send({ type: "paused", id: vcpu.id, state });
      }
      return;
    }
    const r = vcpu.runOnce();
    Atomics.add(ctl, CTL_EXITS, 1);
    if (r < 0) {
      if (r === -EINTR || r === -EAGAIN) continue;
      stop("internal-error", `KVM_RUN failed: errno ${-r}`);
      return;
    }
    switch (vcpu.exitReason) {
      case KvmExit.IO:
        handleIo();
        break;
      case KvmExit.MMIO:
        handleMmio();
        break;
      case KvmExit.INTR:
        break;
      case KvmExit.SHUTDOWN:
        stop("triple-fault", "the guest triple-faulted (KVM_EXIT_SHUTDOWN)");
        return;
      case KvmExit.SYSTEM_EVENT: {
        const t = vcpu.runView.getUint32(F.system_event_type.offset, true);
        if (t === KVM_SYSTEM_EVENT_SHUTDOWN) stop("system-shutdown", "system event: shutdown");
        else if (t === KVM_SYSTEM_EVENT_RESET) stop("system-reset", "system event: reset");
        else if (t === KVM_SYSTEM_EVENT_CRASH) stop("system-crash", "system event: crash");
        else stop("unexpected-exit", `system event ${t}`);
        return;
      }
      case KvmExit.INTERNAL_ERROR: {
        const sub = vcpu.runView.getUint32(F.internal_suberror.offset, true);
        const what = sub === 1 ? "emulation failure" : sub === 2 ? "simultaneous exceptions" : sub === 3 ? "delivery event failure" : `suberror ${sub}`;
        stop("internal-error", `KVM internal error: ${what}`);
        return;
      }
      case KvmExit.FAIL_ENTRY:
        stop("fail-entry", `VM entry failed, hardware reason ${hex(vcpu.runView.getBigUint64(F.fail_entry_reason.offset, true))}`);
        return;
      default:
        stop("unexpected-exit", `unexpected exit ${exitReasonName(vcpu.exitReason)}`);
        return;
    }
  }
}

function applyBoot(boot: BootCpuState | undefined, msrs: [number, string][]): void {
  vcpu.setMsrs(msrs.map(([i, v]) => [i, BigInt(v)]));
  const fpu = vcpu.getFpu();
  fpu.bytes.fill(0);
  fpu.set("fcw", FPU_FCW_DEFAULT).set("mxcsr", FPU_MXCSR_DEFAULT);
  vcpu.setFpu(fpu);
  const lapic = vcpu.getLapic();
  setLapicLints(lapic);
  vcpu.setLapic(lapic);
  if (boot) {
    const sregs = vcpu.getSregs();
    applyBootSregs(sregs, boot);
    vcpu.setSregs(sregs);
    const regs = vcpu.getRegs();
    applyBootRegs(regs, boot);
    vcpu.setRegs(regs);
  }
}

function saveState(): VcpuState {
  savableMsrs ??= probeSavableMsrs(vcpu, init.msrIndexList);
  return saveVcpuState(vcpu, init.xsaveSize, savableMsrs);
}

self.onmessage = (ev: MessageEvent<MainToVcpu>) => {
  const msg = ev.data;
  try {
    switch (msg.type) {
      case "init": {
        init = msg;
        ctl = new Int32Array(msg.ctl, 0, CTL_DATA_OFFSET / 4);
        data = new Uint8Array(msg.ctl, CTL_DATA_OFFSET, CTL_DATA_SIZE);
        queue = new Int32Array(msg.queue);
        vcpu = Vcpu.create(msg.vmFd, msg.id, msg.runSize);
        // KVM's timing leaf carries the guest TSC frequency, which only a vCPU fd can tell.
        const tscKhz = vcpu.getTscKhz();
        vcpu.setCpuid(msg.cpuid.map((e) => (e.function === KVM_CPUID_TIMING ? { ...e, eax: tscKhz } : e)));
        applyBoot(msg.boot, msg.bootMsrs);
        send({ type: "ready", id: msg.id, tid: gettid(), runAddr: vcpu.runAddr, vcpuFd: vcpu.fd });
        // Probe the savable MSRs and run the save path once now, while nothing waits for this vCPU:
        // a first save later would happen inside a migration's downtime, on cold code.
        saveState();
        break;
      }
      case "run":
        runLoop();
        break;
      case "save":
        send({ type: "state", id: vcpu.id, state: saveState() });
        break;
      case "arm":
        // Another thread (the migration receiver) loads this vCPU's state meanwhile, then lets it go.
        while (Atomics.load(ctl, CTL_GO) === GO_WAIT) Atomics.wait(ctl, CTL_GO, GO_WAIT);
        if (Atomics.load(ctl, CTL_GO) === GO_RUN) {
          trace(`vcpu${vcpu.id}.go`);
          runLoop();
        } else {
          send({ type: "paused", id: vcpu.id });
        }
        break;
      case "destroy":
        vcpu.close();
        send({ type: "destroyed", id: vcpu.id });
        break;
    }
  } catch (e) {
    send({ type: "error", id: init?.id ?? -1, message: (e as Error).message });
  }
};
