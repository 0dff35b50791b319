/**
 * 16550A UART (the PC COM port), modelled register-for-register after the National/TI PC16550D
 * datasheet, with the behaviours Linux's 8250 driver probes for (scratch/IER/loopback tests, IIR
 * FIFO bits 0xC0 but not the 16750's 0x20, THRE re-armed when IER.THRI is enabled).
 *
 * Timing model: the line runs at "infinite baud". A byte written to THR is transmitted at once, so
 * THRE/TEMT always read 1 and the TX FIFO is never visible to the guest; the bytes go to a host-side
 * output buffer instead (see flush contract below). The receiver timeout interrupt is approximated
 * as "FIFO holds data below the trigger level" (no 4-character-time delay).
 *
 * Host side:
 *  - Output: transmitted bytes collect in a fixed buffer. The machine calls `flush()` once per
 *    event-loop turn; the buffer also flushes itself when it reaches OUTPUT_FLUSH_THRESHOLD bytes.
 *    Each `output` call receives a fresh Uint8Array the callee owns (one allocation per flush, not
 *    per byte). In loopback mode transmitted bytes go to the receiver, not to `output`.
 *  - Input: `receive(bytes)` fills the RX FIFO and keeps the remainder in a bounded host queue
 *    (HOST_INPUT_CAPACITY bytes; bytes past it are dropped and counted in `droppedInput`) that
 *    refills the FIFO as the guest reads, so host input is never lost to a FIFO overrun. Host input
 *    waits while the UART is in loopback (the serial input pin is disconnected then), and a guest FIFO
 *    clear discards only what was already in the FIFO, as on hardware.
 *
 * IRQ: driven level-style as `pending && MCR.OUT2` (a PC board gates INTR with OUT2), calling
 * `IrqLine.set` only when that changes. Modem inputs from the host side read as CTS, DSR and DCD
 * asserted (a cable with a ready peer); in loopback they follow MCR (RTS->CTS, DTR->DSR, OUT1->RI,
 * OUT2->DCD) and changes set the MSR delta bits.
 */
import type { AccessSize, IrqLine, PioDevice } from "../bus.ts";
import type { Persistent } from "../../persist/persist.ts";
import { PersistError } from "../../persist/persist.ts";
import {
  asRecord,
  checkVersion,
  readBase64,
  readBits,
  readBool,
  readByteArray,
  readInt,
  toBase64,
} from "./state.ts";

/** Register offsets from the base port. Offsets 0 and 1 are the divisor latch while LCR.DLAB is set. */
export const UART_RX = 0; // read: receiver buffer (RBR)
export const UART_TX = 0; // write: transmitter holding (THR)
export const UART_DLL = 0;
export const UART_IER = 1;
export const UART_DLM = 1;
export const UART_IIR = 2; // read
export const UART_FCR = 2; // write
export const UART_LCR = 3;
export const UART_MCR = 4;
export const UART_LSR = 5;
export const UART_MSR = 6;
export const UART_SCR = 7;
/** Number of I/O ports the UART occupies. */
export const UART_PORT_COUNT = 8;

export const UART_IER_RDI = 0x01; // received data available (and RX timeout)
export const UART_IER_THRI = 0x02; // transmitter holding register empty
export const UART_IER_RLSI = 0x04; // receiver line status
export const UART_IER_MSI = 0x08; // modem status
const UART_IER_MASK = 0x0f; // bits 4-7 are 16750/XScale extensions and read 0 on a 16550A

export const UART_IIR_NO_INT = 0x01;
export const UART_IIR_MSI = 0x00;
export const UART_IIR_THRI = 0x02;
export const UART_IIR_RDI = 0x04;
export const UART_IIR_RLSI = 0x06;
export const UART_IIR_RX_TIMEOUT = 0x0c;
/** IIR bits 6-7 when the FIFOs are enabled: identifies a 16550A (bit 5 stays 0: no 64-byte FIFO). */
export const UART_IIR_FIFO_ENABLED = 0xc0;

export const UART_FCR_ENABLE_FIFO = 0x01;
export const UART_FCR_CLEAR_RCVR = 0x02;
export const UART_FCR_CLEAR_XMIT = 0x04;
export const UART_FCR_DMA_SELECT = 0x08;
export const UART_FCR_TRIGGER_MASK = 0xc0;
const UART_FCR_TRIGGER_SHIFT = 6;
/** FCR bits the chip latches (the clear bits self-clear; bits 4-5 are reserved on a 16550A). */
const UART_FCR_STORED = UART_FCR_ENABLE_FIFO | UART_FCR_DMA_SELECT | UART_FCR_TRIGGER_MASK;
/** RX trigger levels selected by FCR bits 6-7. */
export const UART_RX_TRIGGER_LEVELS: readonly number[] = [1, 4, 8, 14];

export const UART_LCR_DLAB = 0x80;

export const UART_MCR_DTR = 0x01;
export const UART_MCR_RTS = 0x02;
export const UART_MCR_OUT1 = 0x04;
export const UART_MCR_OUT2 = 0x08;
export const UART_MCR_LOOP = 0x10;
const UART_MCR_MASK = 0x1f; // bit 5 (auto flow control) is a 16750 feature

export const UART_LSR_DR = 0x01;
export const UART_LSR_OE = 0x02;
export const UART_LSR_PE = 0x04;
export const UART_LSR_FE = 0x08;
export const UART_LSR_BI = 0x10;
export const UART_LSR_THRE = 0x20;
export const UART_LSR_TEMT = 0x40;
export const UART_LSR_FIFOE = 0x80;
/** The sticky error bits that raise the line-status interrupt and clear on an LSR read. */
const UART_LSR_ERRORS = UART_LSR_OE | UART_LSR_PE | UART_LSR_FE | UART_LSR_BI;

export const UART_MSR_DCTS = 0x01;
export const UART_MSR_DDSR = 0x02;
export const UART_MSR_TERI = 0x04;
export const UART_MSR_DDCD = 0x08;
export const UART_MSR_CTS = 0x10;
export const UART_MSR_DSR = 0x20;
export const UART_MSR_RI = 0x40;
export const UART_MSR_DCD = 0x80;
const UART_MSR_DELTAS = 0x0f;

/** Depth of each 16550A FIFO. */
export const UART_FIFO_SIZE = 16;
/** Host-side input queue bound. */
export const HOST_INPUT_CAPACITY = 64 * 1024;
/** Output bytes buffered before an automatic flush (also the buffer size). */
export const OUTPUT_FLUSH_THRESHOLD = 4096;

/** Modem inputs seen when not in loopback: a connected peer that is ready to receive. */
const HOST_MODEM_LINES = UART_MSR_CTS | UART_MSR_DSR | UART_MSR_DCD;

export interface SerialOptions {
  irq: IrqLine;
  /** Receives transmitted bytes; the array belongs to the callee. Called from flush(). */
  output: (bytes: Uint8Array) => void;
  /** Migration section name; defaults to "serial@0x3f8". */
  persistName?: string;
}

export interface SerialState {
  dll: number;
  dlm: number;
  ier: number;
  fcr: number;
  lcr: number;
  mcr: number;
  scr: number;
  /** Sticky LSR error bits (OE/PE/FE/BI) not yet read. */
  lsrErrors: number;
  /** MSR delta bits not yet read. */
  msrDeltas: number;
  /** THRE interrupt armed and not yet acknowledged by an IIR read or THR write. */
  thrIpending: boolean;
  /** Last byte the receiver buffer held (what RBR reads when empty). */
  rbr: number;
  /** RX FIFO contents, oldest first (at most 1 byte with the FIFOs off, 16 with them on). */
  rxFifo: number[];
  /** Host input not yet in the RX FIFO, base64. */
  hostInput: string;
  /** Transmitted bytes not yet passed to `output`, base64 (this is where the TX FIFO drains to). */
  pendingOutput: string;
}

export class Serial16550 implements PioDevice, Persistent<SerialState> {
  readonly persistName: string;
  readonly persistVersion = 1;

  private readonly irq: IrqLine;
  private readonly output: (bytes: Uint8Array) => void;

  private dll = 0;
  private dlm = 0;
  private ier = 0;
  private fcr = 0;
  private lcr = 0;
  private mcr = 0;
  private scr = 0;
  private lsrErrors = 0;
  private msrDeltas = 0;
  private thrIpending = false;
  private rbr = 0;

  // RX FIFO: ring of UART_FIFO_SIZE bytes; capacity is 1 (plain RBR) with the FIFOs disabled.
  private readonly rx = new Uint8Array(UART_FIFO_SIZE);
  private rxHead = 0;
  private rxCount = 0;

  // Host input queue: ring buffer.
  private readonly hostQ = new Uint8Array(HOST_INPUT_CAPACITY);
  private hostHead = 0;
  private hostCount = 0;
  private dropped = 0;

  private readonly outBuf = new Uint8Array(OUTPUT_FLUSH_THRESHOLD);
  private outLen = 0;

  private irqLevel = false;

  constructor(opts: SerialOptions) {
    this.irq = opts.irq;
    this.output = opts.output;
    this.persistName = opts.persistName ?? "serial@0x3f8";
  }

  /** Host input bytes dropped because the host queue was full. Host-side statistic, not migrated. */
  get droppedInput(): number {
    return this.dropped;
  }

  /** Host input not yet read by the guest (RX FIFO plus host queue). */
  get pendingInput(): number {
    return this.rxCount + this.hostCount;
  }

  /** Transmitted bytes waiting for the next flush. */
  get pendingOutput(): number {
    return this.outLen;
  }

  // ---- host side ----

  /**
   * Queue host input for the guest. Returns how many bytes were accepted; the rest (past
   * HOST_INPUT_CAPACITY) are dropped and counted in `droppedInput`.
   */
  receive(bytes: Uint8Array): number {
    const room = HOST_INPUT_CAPACITY - this.hostCount;
    const n = Math.min(room, bytes.length);
    let tail = (this.hostHead + this.hostCount) % HOST_INPUT_CAPACITY;
    for (let i = 0; i < n; i++) {
      this.hostQ[tail] = bytes[i]!;
      tail = tail + 1 === HOST_INPUT_CAPACITY ? 0 : tail + 1;
    }
    this.hostCount += n;
    this.dropped += bytes.length - n;
    this.pumpHostInput();
    this.updateIrq();
    return n;
  }

  /** Pass buffered output to `output`. Call once per event-loop turn; a no-op when nothing is pending. */
  flush(): void {
    if (this.outLen === 0) return;
    const chunk = this.outBuf.slice(0, this.outLen);
    this.outLen = 0;
    this.output(chunk);
  }

  /** Machine reset (the UART's MR pin): registers to power-on values, RX FIFO emptied. Host queue and unflushed output are kept. */
  reset(): void {
    this.ier = 0;
    this.fcr = 0;
    this.lcr = 0;
    this.mcr = 0;
    this.lsrErrors = 0;
    this.msrDeltas = 0;
    this.thrIpending = false;
    this.rxHead = 0;
    this.rxCount = 0;
    this.pumpHostInput();
    this.updateIrq();
  }

  // ---- guest side ----

  pioRead(offset: number, _size: AccessSize): number {
    // Byte registers; a wider access returns the addressed register only (ISA UARTs are 8-bit).
    switch (offset) {
      case UART_RX:
        return this.lcr & UART_LCR_DLAB ? this.dll : this.readRbr();
      case UART_IER:
        return this.lcr & UART_LCR_DLAB ? this.dlm : this.ier;
      case UART_IIR:
        return this.readIir();
      case UART_LCR:
        return this.lcr;
      case UART_MCR:
        return this.mcr;
      case UART_LSR:
        return this.readLsr();
      case UART_MSR:
        return this.readMsr();
      case UART_SCR:
        return this.scr;
      default:
        return 0xff;
    }
  }

  pioWrite(offset: number, _size: AccessSize, value: number): void {
    const v = value & 0xff;
    switch (offset) {
      case UART_TX:
        if (this.lcr & UART_LCR_DLAB) this.dll = v;
        else this.transmit(v);
        break;
      case UART_IER:
        if (this.lcr & UART_LCR_DLAB) this.dlm = v;
        else this.writeIer(v & UART_IER_MASK);
        break;
      case UART_FCR:
        this.writeFcr(v);
        break;
      case UART_LCR:
        this.lcr = v;
        break;
      case UART_MCR:
        this.writeMcr(v & UART_MCR_MASK);
        break;
      case UART_SCR:
        this.scr = v;
        break;
      // LSR and MSR writes are factory-test only on the 16550A: ignored.
    }
  }

  private get fifoEnabled(): boolean {
    return (this.fcr & UART_FCR_ENABLE_FIFO) !== 0;
  }

  private get rxCapacity(): number {
    return this.fifoEnabled ? UART_FIFO_SIZE : 1;
  }

  private get rxTrigger(): number {
    return UART_RX_TRIGGER_LEVELS[(this.fcr & UART_FCR_TRIGGER_MASK) >> UART_FCR_TRIGGER_SHIFT]!;
  }

  private get loopback(): boolean {
    return (this.mcr & UART_MCR_LOOP) !== 0;
  }

  private readRbr(): number {
    if (this.rxCount > 0) {
      this.rbr = this.rx[this.rxHead]!;
      this.rxHead = (this.rxHead + 1) % UART_FIFO_SIZE;
      this.rxCount--;
      this.pumpHostInput();
      this.updateIrq();
    }
    return this.rbr;
  }

  private readIir(): number {
    const id = this.pendingInterrupt();
    // Reading IIR acknowledges a THRE interrupt, but only when it is the one reported.
    if (id === UART_IIR_THRI) {
      this.thrIpending = false;
      this.updateIrq();
    }
    return id | (this.fifoEnabled ? UART_IIR_FIFO_ENABLED : 0);
  }

  private readLsr(): number {
    const v = (this.rxCount > 0 ? UART_LSR_DR : 0) | this.lsrErrors | UART_LSR_THRE | UART_LSR_TEMT;
    if (this.lsrErrors !== 0) {
      this.lsrErrors = 0;
      this.updateIrq();
    }
    return v;
  }

  private readMsr(): number {
    const v = this.modemLines() | this.msrDeltas;
    if (this.msrDeltas !== 0) {
      this.msrDeltas = 0;
      this.updateIrq();
    }
    return v;
  }

  private transmit(byte: number): void {
    if (this.loopback) {
      this.rxPush(byte);
    } else {
      this.outBuf[this.outLen++] = byte;
      if (this.outLen >= OUTPUT_FLUSH_THRESHOLD) this.flush();
    }
    // THR empties again immediately, which (re-)raises THRE.
    this.thrIpending = (this.ier & UART_IER_THRI) !== 0;
    this.updateIrq();
  }

  private writeIer(v: number): void {
    const rising = v & ~this.ier & UART_IER_THRI;
    this.ier = v;
    // Enabling THRI while THR is empty (always, here) raises THRE at once: Linux's 8250 startup
    // tests exactly this (UART_BUG_THRE/TXEN) and its start_tx relies on it.
    if (rising) this.thrIpending = true;
    else if (!(v & UART_IER_THRI)) this.thrIpending = false;
    this.updateIrq();
  }

  private writeFcr(v: number): void {
    const toggled = (v ^ this.fcr) & UART_FCR_ENABLE_FIFO;
    // Changing the enable bit empties both FIFOs; the TX side is always empty here.
    if (toggled || v & UART_FCR_CLEAR_RCVR) {
      this.rxHead = 0;
      this.rxCount = 0;
    }
    // The other FCR bits only latch while FCR0 is written as 1.
    this.fcr = v & UART_FCR_ENABLE_FIFO ? v & UART_FCR_STORED : this.fcr & ~UART_FCR_ENABLE_FIFO;
    this.pumpHostInput();
    this.updateIrq();
  }

  private writeMcr(v: number): void {
    const before = this.modemLines();
    this.mcr = v;
    this.noteModemChange(before, this.modemLines());
    this.pumpHostInput(); // leaving loopback reconnects the host input
    this.updateIrq();
  }

  /** MSR bits 4-7: host lines, or MCR's outputs wired back in loopback. */
  private modemLines(): number {
    if (!this.loopback) return HOST_MODEM_LINES;
    let lines = 0;
    if (this.mcr & UART_MCR_RTS) lines |= UART_MSR_CTS;
    if (this.mcr & UART_MCR_DTR) lines |= UART_MSR_DSR;
    if (this.mcr & UART_MCR_OUT1) lines |= UART_MSR_RI;
    if (this.mcr & UART_MCR_OUT2) lines |= UART_MSR_DCD;
    return lines;
  }

  private noteModemChange(before: number, after: number): void {
    const changed = before ^ after;
    if (changed & UART_MSR_CTS) this.msrDeltas |= UART_MSR_DCTS;
    if (changed & UART_MSR_DSR) this.msrDeltas |= UART_MSR_DDSR;
    if (changed & UART_MSR_DCD) this.msrDeltas |= UART_MSR_DDCD;
    // TERI flags the trailing edge of RI only.
    if (before & UART_MSR_RI && !(after & UART_MSR_RI)) this.msrDeltas |= UART_MSR_TERI;
  }

  /** A character arriving from the (loopback) line: on a full FIFO it is lost and OE is set. */
  private rxPush(byte: number): void {
    if (this.rxCount < this.rxCapacity) {
      this.rx[(this.rxHead + this.rxCount) % UART_FIFO_SIZE] = byte;
      this.rxCount++;
    } else {
      this.lsrErrors |= UART_LSR_OE;
      // Without FIFOs the new character overwrites RBR; with them the FIFO contents are kept.
      if (!this.fifoEnabled) this.rx[this.rxHead] = byte;
    }
  }

  /** Move host input into the RX FIFO while it has room (flow-controlled: host input never overruns). */
  private pumpHostInput(): void {
    if (this.loopback) return;
    const cap = this.rxCapacity;
    while (this.hostCount > 0 && this.rxCount < cap) {
      this.rx[(this.rxHead + this.rxCount) % UART_FIFO_SIZE] = this.hostQ[this.hostHead]!;
      this.rxCount++;
      this.hostHead = this.hostHead + 1 === HOST_INPUT_CAPACITY ? 0 : this.hostHead + 1;
      this.hostCount--;
    }
  }

  /** The highest-priority pending interrupt as an IIR value (without the FIFO bits). */
  private pendingInterrupt(): number {
    const ier = this.ier;
    if (ier & UART_IER_RLSI && this.lsrErrors) return UART_IIR_RLSI;
    if (ier & UART_IER_RDI && this.rxCount > 0) {
      if (!this.fifoEnabled || this.rxCount >= this.rxTrigger) return UART_IIR_RDI;
      return UART_IIR_RX_TIMEOUT;
    }
    if (ier & UART_IER_THRI && this.thrIpending) return UART_IIR_THRI;
    if (ier & UART_IER_MSI && this.msrDeltas) return UART_IIR_MSI;
    return UART_IIR_NO_INT;
  }

  private updateIrq(force = false): void {
    const level = this.pendingInterrupt() !== UART_IIR_NO_INT && (this.mcr & UART_MCR_OUT2) !== 0;
    if (level !== this.irqLevel || force) {
      this.irqLevel = level;
      this.irq.set(level);
    }
  }

  // ---- persistence ----

  save(): SerialState {
    const rxFifo: number[] = [];
    for (let i = 0; i < this.rxCount; i++) rxFifo.push(this.rx[(this.rxHead + i) % UART_FIFO_SIZE]!);
    const host = new Uint8Array(this.hostCount);
    for (let i = 0; i < this.hostCount; i++) host[i] = this.hostQ[(this.hostHead + i) % HOST_INPUT_CAPACITY]!;
    return {
      dll: this.dll,
      dlm: this.dlm,
      ier: this.ier,
      fcr: this.fcr,
      lcr: this.lcr,
      mcr: this.mcr,
      scr: this.scr,
      lsrErrors: this.lsrErrors,
      msrDeltas: this.msrDeltas,
      thrIpending: this.thrIpending,
      rbr: this.rbr,
      rxFifo,
      hostInput: toBase64(host),
      pendingOutput: toBase64(this.outBuf.subarray(0, this.outLen)),
    };
  }

  /**
   * Restore a saved state. Validates everything first (throws PersistError naming the field, leaving
   * this instance untouched), then re-drives the IRQ line once unconditionally so the irqchip agrees.
   */
  restore(state: SerialState, version: number): void {
    const c = this.persistName;
    checkVersion(c, version, this.persistVersion);
    const s = asRecord(c, state);
    const dll = readInt(c, s, "dll", 0, 0xff);
    const dlm = readInt(c, s, "dlm", 0, 0xff);
    const ier = readBits(c, s, "ier", UART_IER_MASK);
    const fcr = readBits(c, s, "fcr", UART_FCR_STORED);
    const lcr = readInt(c, s, "lcr", 0, 0xff);
    const mcr = readBits(c, s, "mcr", UART_MCR_MASK);
    const scr = readInt(c, s, "scr", 0, 0xff);
    const lsrErrors = readBits(c, s, "lsrErrors", UART_LSR_ERRORS);
    const msrDeltas = readBits(c, s, "msrDeltas", UART_MSR_DELTAS);
    const thrIpending = readBool(c, s, "thrIpending");
    const rbr = readInt(c, s, "rbr", 0, 0xff);
    const rxFifo = readByteArray(c, s, "rxFifo", 0, fcr & UART_FCR_ENABLE_FIFO ? UART_FIFO_SIZE : 1);
    const hostInput = readBase64(c, s, "hostInput", HOST_INPUT_CAPACITY);
    const pendingOutput = readBase64(c, s, "pendingOutput", OUTPUT_FLUSH_THRESHOLD);
    // Our own saves never hold a full buffer (it flushes at the threshold).
    if (pendingOutput.length >= OUTPUT_FLUSH_THRESHOLD) {
      throw new PersistError(c, `field "pendingOutput": ${pendingOutput.length} bytes, limit ${OUTPUT_FLUSH_THRESHOLD - 1}`);
    }

    this.dll = dll;
    this.dlm = dlm;
    this.ier = ier;
    this.fcr = fcr;
    this.lcr = lcr;
    this.mcr = mcr;
    this.scr = scr;
    this.lsrErrors = lsrErrors;
    this.msrDeltas = msrDeltas;
    this.thrIpending = thrIpending && (ier & UART_IER_THRI) !== 0;
    this.rbr = rbr;
    this.rx.set(rxFifo);
    this.rxHead = 0;
    this.rxCount = rxFifo.length;
    this.hostQ.set(hostInput);
    this.hostHead = 0;
    this.hostCount = hostInput.length;
    this.outBuf.set(pendingOutput);
    this.outLen = pendingOutput.length;
    this.pumpHostInput();
    this.updateIrq(true);
  }
}
