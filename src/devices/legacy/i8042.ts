/**
 * i8042 PS/2 keyboard controller: enough for Linux's i8042 probe, atkbd's keyboard probe, and the
 * keyboard-controller reset paths (command 0xFE and output-port writes).
 *
 * Port wiring: the object itself is a PioDevice spanning 0x60..0x64 (offset 0 = data port 0x60,
 * offset 4 = status/command port 0x64; offsets 1-3 read 0xFF and ignore writes). Because 0x61 is
 * port B (PC speaker / NMI status, handled by KVM's in-kernel PIT), the better registration is two
 * 1-port ranges using `dataPort` at I8042_DATA_PORT and `commandPort` at I8042_CMD_PORT.
 *
 * Choices, so they are consistent everywhere:
 *  - A keyboard IS present. It answers what atkbd sends (reset 0xFF -> FA AA, get-ID 0xF2 -> FA AB 83
 *    (AB 41 while the controller translates), set-LEDs/typematic/scancode-set with parameter ACKs,
 *    enable/disable/defaults -> FA, echo -> EE, unknown -> FE). It never produces key events.
 *  - There is NO aux (mouse) port. 0xD3 (write aux output buffer, Linux's AUX_LOOP test) echoes the
 *    byte without the AUXDATA status bit, which Linux reports as "auxerr" at once, and 0xA9 (aux
 *    interface test) answers AUX_TEST_CLOCK_HIGH, so Linux gives up on the aux port without any
 *    timeout. 0xA7/0xA8 still toggle the CTR's aux-disable bit, as Linux's bit test expects.
 *  - Controller replies go straight into the one-byte output buffer (the controller wins over the
 *    keyboard); a keyboard byte they displace goes back to the head of the keyboard's queue, so
 *    nothing the keyboard sent is lost. Keyboard bytes move into the output buffer only while it is
 *    empty and the keyboard interface is enabled (CTR bit 4 clear).
 *  - The IRQ (IRQ 1) is OBF from the keyboard side && CTR.KBDINT. When the guest reads a byte and
 *    another follows, the line is dropped and raised again so an edge-triggered pin sees each byte.
 *  - The input buffer is processed synchronously, so IBF always reads 0.
 *  - Unlisted controller commands are ignored.
 */
import type { AccessSize, IrqLine, PioDevice } from "../bus.ts";
import type { Persistent } from "../../persist/persist.ts";
import { asRecord, checkVersion, readBits, readBool, readByteArray, readInt, type StateRecord } from "./state.ts";
import { PersistError } from "../../persist/persist.ts";

/** Port offsets relative to I8042_DATA_PORT (0x60). */
export const I8042_DATA_OFFSET = 0;
export const I8042_COMMAND_OFFSET = 4; // 0x64: status on read, command on write
export const I8042_PORT_SPAN = 5;

export const I8042_STR_OBF = 0x01; // output buffer full
export const I8042_STR_IBF = 0x02; // input buffer full
export const I8042_STR_SYSFLAG = 0x04; // mirrors CTR bit 2
export const I8042_STR_CMDDAT = 0x08; // last write went to the command port
export const I8042_STR_KEYLOCK = 0x10; // 1 = keyboard not inhibited by the keylock
export const I8042_STR_AUXDATA = 0x20; // output buffer holds aux data

export const I8042_CTR_KBDINT = 0x01;
export const I8042_CTR_AUXINT = 0x02;
export const I8042_CTR_SYSFLAG = 0x04;
export const I8042_CTR_IGNKEYLOCK = 0x08;
export const I8042_CTR_KBDDIS = 0x10;
export const I8042_CTR_AUXDIS = 0x20;
export const I8042_CTR_XLATE = 0x40;
/** CTR after firmware POST: translation on, keyboard IRQ on, aux disabled, system flag set. */
export const I8042_CTR_DEFAULT = I8042_CTR_XLATE | I8042_CTR_AUXDIS | I8042_CTR_SYSFLAG | I8042_CTR_KBDINT;

export const I8042_CMD_READ_RAM = 0x20; // 0x20-0x3F: read controller RAM byte n (0x20 = CTR)
export const I8042_CMD_WRITE_RAM = 0x60; // 0x60-0x7F: write controller RAM byte n (0x60 = CTR)
export const I8042_CMD_AUX_DISABLE = 0xa7;
export const I8042_CMD_AUX_ENABLE = 0xa8;
export const I8042_CMD_AUX_TEST = 0xa9;
export const I8042_CMD_SELF_TEST = 0xaa;
export const I8042_CMD_KBD_TEST = 0xab;
export const I8042_CMD_KBD_DISABLE = 0xad;
export const I8042_CMD_KBD_ENABLE = 0xae;
export const I8042_CMD_READ_OUTPUT = 0xd0;
export const I8042_CMD_WRITE_OUTPUT = 0xd1;
export const I8042_CMD_WRITE_KBD_OUTBUF = 0xd2;
export const I8042_CMD_WRITE_AUX_OUTBUF = 0xd3;
export const I8042_CMD_WRITE_AUX = 0xd4;
export const I8042_CMD_READ_TEST_INPUTS = 0xe0;
export const I8042_CMD_PULSE_BASE = 0xf0; // 0xF0-0xFF: pulse output-port lines whose mask bit is 0
export const I8042_CMD_RESET = 0xfe; // pulse line 0: CPU reset

export const I8042_SELF_TEST_OK = 0x55;
export const I8042_KBD_TEST_OK = 0x00;
/** Aux interface test result for the absent aux port: "clock line stuck high" (nothing pulls it). */
export const I8042_AUX_TEST_CLOCK_HIGH = 0x02;

export const I8042_OUT_RESET = 0x01; // active low: 0 holds the CPU in reset
export const I8042_OUT_A20 = 0x02;
export const I8042_OUT_KBD_OBF = 0x10; // IRQ1 line
export const I8042_OUT_AUX_OBF = 0x20; // IRQ12 line
/** Output port after POST: CPU running, A20 on, keyboard clock/data lines released (bits 6-7, 2-3). */
export const I8042_OUT_DEFAULT = 0xcc | I8042_OUT_A20 | I8042_OUT_RESET;

/** Keyboard (atkbd) commands and replies. */
export const KBD_CMD_SET_LEDS = 0xed;
export const KBD_CMD_ECHO = 0xee;
export const KBD_CMD_SCANCODE_SET = 0xf0;
export const KBD_CMD_GET_ID = 0xf2;
export const KBD_CMD_SET_TYPEMATIC = 0xf3;
export const KBD_CMD_ENABLE = 0xf4;
export const KBD_CMD_RESET_DISABLE = 0xf5;
export const KBD_CMD_RESET_ENABLE = 0xf6;
export const KBD_CMD_SET3_FIRST = 0xf7; // 0xF7-0xFD: scan-set-3 key attributes, just ACKed
export const KBD_CMD_SET3_LAST = 0xfd;
export const KBD_CMD_RESEND = 0xfe;
export const KBD_CMD_RESET = 0xff;
export const KBD_REPLY_ACK = 0xfa;
export const KBD_REPLY_RESEND = 0xfe;
export const KBD_REPLY_BAT_OK = 0xaa;
export const KBD_REPLY_ECHO = 0xee;
export const KBD_ID_1 = 0xab;
export const KBD_ID_2 = 0x83;
/** Second ID byte as the controller delivers it while translating (0x83 through the set-2->1 table). */
export const KBD_ID_2_TRANSLATED = 0x41;
/** Scancode-set numbers 1-3 as delivered through translation (the set-2->1 table at 0x01..0x03). */
const TRANSLATED_SET_NUMBER: readonly number[] = [0, 0x43, 0x41, 0x3f];
const KBD_LED_MASK = 0x07; // scroll, num, caps lock
const KBD_TYPEMATIC_MASK = 0x7f; // rate (bits 0-4) and delay (bits 5-6)
const KBD_DEFAULT_TYPEMATIC = 0x2b; // 10.9 characters/s, 500 ms delay
const KBD_DEFAULT_SET = 2;
const KBD_QUEUE_MAX = 16;

const CONTROLLER_RAM_SIZE = 32;

/** Where the byte in the output buffer came from. */
const SRC_CONTROLLER = 0;
const SRC_KEYBOARD = 1;

/** Controller commands that take a data byte on port 0x60 (besides the 0x60-0x7F RAM writes). */
const DATA_COMMANDS: readonly number[] = [
  I8042_CMD_WRITE_OUTPUT,
  I8042_CMD_WRITE_KBD_OUTBUF,
  I8042_CMD_WRITE_AUX_OUTBUF,
  I8042_CMD_WRITE_AUX,
];
const KBD_PARAM_COMMANDS: readonly number[] = [KBD_CMD_SET_LEDS, KBD_CMD_SCANCODE_SET, KBD_CMD_SET_TYPEMATIC];

export interface I8042Options {
  /** IRQ 1. */
  irq: IrqLine;
  /** The guest asked the controller to reset the CPU (0xFE / pulse, or output-port bit 0 cleared). */
  onReset: () => void;
  persistName?: string;
}

export interface I8042State {
  /** Controller RAM; byte 0 is the command byte (CTR). */
  ram: number[];
  outputPort: number;
  lastWriteWasCommand: boolean;
  outFull: boolean;
  outByte: number;
  /** 0 = controller reply, 1 = keyboard. */
  outSource: number;
  /** Controller command waiting for its data byte, or 0. */
  pendingCommand: number;
  kbdQueue: number[];
  /** Keyboard command waiting for its parameter byte, or 0. */
  kbdPendingCommand: number;
  kbdScanning: boolean;
  kbdLeds: number;
  kbdTypematic: number;
  kbdScancodeSet: number;
  kbdLastSent: number;
}

export class I8042 implements PioDevice, Persistent<I8042State> {
  readonly persistName: string;
  readonly persistVersion = 1;

  private readonly irq: IrqLine;
  private readonly onReset: () => void;

  private ram = new Uint8Array(CONTROLLER_RAM_SIZE);
  private outputPort = I8042_OUT_DEFAULT;
  private lastWriteWasCommand = false;
  private outFull = false;
  private outByte = 0;
  private outSource = SRC_CONTROLLER;
  private pendingCommand = 0;

  private kbdQueue: number[] = [];
  private kbdPendingCommand = 0;
  private kbdScanning = true;
  private kbdLeds = 0;
  private kbdTypematic = KBD_DEFAULT_TYPEMATIC;
  private kbdScancodeSet = KBD_DEFAULT_SET;
  private kbdLastSent = 0;

  private irqLevel = false;

  /** Port 0x60 alone (offset 0 = data). */
  readonly dataPort: PioDevice;
  /** Port 0x64 alone (offset 0 = status on read, command on write). */
  readonly commandPort: PioDevice;

  constructor(opts: I8042Options) {
    this.irq = opts.irq;
    this.onReset = opts.onReset;
    this.persistName = opts.persistName ?? "i8042";
    this.ram[0] = I8042_CTR_DEFAULT;
    this.dataPort = {
      pioRead: (offset, size) => (offset === 0 ? this.pioRead(I8042_DATA_OFFSET, size) : 0xff),
      pioWrite: (offset, size, value) => {
        if (offset === 0) this.pioWrite(I8042_DATA_OFFSET, size, value);
      },
    };
    this.commandPort = {
      pioRead: (offset, size) => (offset === 0 ? this.pioRead(I8042_COMMAND_OFFSET, size) : 0xff),
      pioWrite: (offset, size, value) => {
        if (offset === 0) this.pioWrite(I8042_COMMAND_OFFSET, size, value);
      },
    };
  }

  private get ctr(): number {
    return this.ram[0]!;
  }

  private set ctr(v: number) {
    this.ram[0] = v;
  }

  /** Machine reset: controller and keyboard back to their post-POST state. */
  reset(): void {
    this.ram.fill(0);
    this.ctr = I8042_CTR_DEFAULT;
    this.outputPort = I8042_OUT_DEFAULT;
    this.lastWriteWasCommand = false;
    this.outFull = false;
    this.pendingCommand = 0;
    this.kbdQueue = [];
    this.kbdPendingCommand = 0;
    this.kbdDefaults();
    this.kbdScanning = true;
    this.kbdLastSent = 0;
    this.updateIrq();
  }

  pioRead(offset: number, _size: AccessSize): number {
    if (offset === I8042_DATA_OFFSET) return this.readData();
    if (offset === I8042_COMMAND_OFFSET) return this.readStatus();
    return 0xff;
  }

  pioWrite(offset: number, _size: AccessSize, value: number): void {
    const v = value & 0xff;
    if (offset === I8042_DATA_OFFSET) this.writeData(v);
    else if (offset === I8042_COMMAND_OFFSET) this.writeCommand(v);
  }

  private readStatus(): number {
    let s = I8042_STR_KEYLOCK;
    if (this.outFull) s |= I8042_STR_OBF;
    if (this.ctr & I8042_CTR_SYSFLAG) s |= I8042_STR_SYSFLAG;
    if (this.lastWriteWasCommand) s |= I8042_STR_CMDDAT;
    return s;
  }

  private readData(): number {
    const v = this.outByte;
    if (this.outFull) {
      this.outFull = false;
      this.updateIrq(); // drop the line first so a following byte makes a fresh edge
      this.refill();
      this.updateIrq();
    }
    return v;
  }

  private writeData(v: number): void {
    this.lastWriteWasCommand = false;
    const cmd = this.pendingCommand;
    if (cmd !== 0) {
      this.pendingCommand = 0;
      this.commandData(cmd, v);
    } else {
      // Writing to the keyboard re-enables its interface, as real controllers do.
      this.ctr &= ~I8042_CTR_KBDDIS;
      this.kbdWrite(v);
    }
    this.refill();
    this.updateIrq();
  }

  private commandData(cmd: number, v: number): void {
    if (cmd >= I8042_CMD_WRITE_RAM && cmd < I8042_CMD_WRITE_RAM + CONTROLLER_RAM_SIZE) {
      this.ram[cmd - I8042_CMD_WRITE_RAM] = v;
      return;
    }
    switch (cmd) {
      case I8042_CMD_WRITE_OUTPUT:
        this.outputPort = v;
        if (!(v & I8042_OUT_RESET)) this.onReset();
        break;
      case I8042_CMD_WRITE_KBD_OUTBUF:
        this.reply(v);
        break;
      case I8042_CMD_WRITE_AUX_OUTBUF:
        // No aux port: the byte comes back without AUXDATA, which Linux's AUX_LOOP test rejects.
        this.reply(v);
        break;
      case I8042_CMD_WRITE_AUX:
        break; // no aux device to receive it
    }
  }

  private writeCommand(cmd: number): void {
    this.lastWriteWasCommand = true;
    this.pendingCommand = 0; // a new command abandons one still waiting for data
    if (cmd >= I8042_CMD_READ_RAM && cmd < I8042_CMD_READ_RAM + CONTROLLER_RAM_SIZE) {
      this.reply(this.ram[cmd - I8042_CMD_READ_RAM]!);
    } else if (cmd >= I8042_CMD_WRITE_RAM && cmd < I8042_CMD_WRITE_RAM + CONTROLLER_RAM_SIZE) {
      this.pendingCommand = cmd;
    } else if (DATA_COMMANDS.includes(cmd)) {
      this.pendingCommand = cmd;
    } else if (cmd >= I8042_CMD_PULSE_BASE) {
      // Pulse the output-port lines whose bit is 0 in the low nibble; line 0 is CPU reset.
      if (!(cmd & I8042_OUT_RESET)) this.onReset();
    } else {
      switch (cmd) {
        case I8042_CMD_AUX_DISABLE:
          this.ctr |= I8042_CTR_AUXDIS;
          break;
        case I8042_CMD_AUX_ENABLE:
          this.ctr &= ~I8042_CTR_AUXDIS;
          break;
        case I8042_CMD_AUX_TEST:
          this.reply(I8042_AUX_TEST_CLOCK_HIGH);
          break;
        case I8042_CMD_SELF_TEST:
          this.reply(I8042_SELF_TEST_OK);
          break;
        case I8042_CMD_KBD_TEST:
          this.reply(I8042_KBD_TEST_OK);
          break;
        case I8042_CMD_KBD_DISABLE:
          this.ctr |= I8042_CTR_KBDDIS;
          break;
        case I8042_CMD_KBD_ENABLE:
          this.ctr &= ~I8042_CTR_KBDDIS;
          break;
        case I8042_CMD_READ_OUTPUT:
          this.reply(this.readOutputPort());
          break;
        case I8042_CMD_READ_TEST_INPUTS:
          this.reply(0);
          break;
      }
    }
    this.refill();
    this.updateIrq();
  }

  private readOutputPort(): number {
    let v = this.outputPort & ~(I8042_OUT_KBD_OBF | I8042_OUT_AUX_OBF);
    if (this.outFull) v |= I8042_OUT_KBD_OBF;
    return v;
  }

  /** A controller reply takes the output buffer; a keyboard byte it displaces is re-queued first. */
  private reply(v: number): void {
    if (this.outFull && this.outSource === SRC_KEYBOARD) this.kbdQueue.unshift(this.outByte);
    this.outByte = v;
    this.outSource = SRC_CONTROLLER;
    this.outFull = true;
  }

  /** Let the keyboard deliver its next byte if the buffer is free and its interface enabled. */
  private refill(): void {
    if (this.outFull || this.kbdQueue.length === 0 || this.ctr & I8042_CTR_KBDDIS) return;
    this.outByte = this.kbdQueue.shift()!;
    this.outSource = SRC_KEYBOARD;
    this.outFull = true;
  }

  private updateIrq(force = false): void {
    const level = this.outFull && (this.ctr & I8042_CTR_KBDINT) !== 0;
    if (level !== this.irqLevel || force) {
      this.irqLevel = level;
      this.irq.set(level);
    }
  }

  // ---- the keyboard on the first PS/2 port ----

  private kbdSend(...bytes: number[]): void {
    for (const b of bytes) {
      if (this.kbdQueue.length >= KBD_QUEUE_MAX) return; // the keyboard's own buffer overflows
      this.kbdQueue.push(b);
      this.kbdLastSent = b;
    }
  }

  private kbdDefaults(): void {
    this.kbdLeds = 0;
    this.kbdTypematic = KBD_DEFAULT_TYPEMATIC;
    this.kbdScancodeSet = KBD_DEFAULT_SET;
  }

  private get translating(): boolean {
    return (this.ctr & I8042_CTR_XLATE) !== 0;
  }

  private kbdWrite(v: number): void {
    const pending = this.kbdPendingCommand;
    if (pending !== 0) {
      this.kbdPendingCommand = 0;
      this.kbdParameter(pending, v);
      return;
    }
    switch (v) {
      case KBD_CMD_SET_LEDS:
      case KBD_CMD_SCANCODE_SET:
      case KBD_CMD_SET_TYPEMATIC:
        this.kbdPendingCommand = v;
        this.kbdSend(KBD_REPLY_ACK);
        break;
      case KBD_CMD_ECHO:
        this.kbdSend(KBD_REPLY_ECHO);
        break;
      case KBD_CMD_GET_ID:
        this.kbdSend(KBD_REPLY_ACK, KBD_ID_1, this.translating ? KBD_ID_2_TRANSLATED : KBD_ID_2);
        break;
      case KBD_CMD_ENABLE:
        this.kbdScanning = true;
        this.kbdSend(KBD_REPLY_ACK);
        break;
      case KBD_CMD_RESET_DISABLE:
        this.kbdDefaults();
        this.kbdScanning = false;
        this.kbdSend(KBD_REPLY_ACK);
        break;
      case KBD_CMD_RESET_ENABLE:
        this.kbdDefaults();
        this.kbdScanning = true;
        this.kbdSend(KBD_REPLY_ACK);
        break;
      case KBD_CMD_RESEND:
        this.kbdSend(this.kbdLastSent);
        break;
      case KBD_CMD_RESET:
        this.kbdQueue = [];
        this.kbdDefaults();
        this.kbdScanning = true;
        this.kbdSend(KBD_REPLY_ACK, KBD_REPLY_BAT_OK);
        break;
      default:
        if (v >= KBD_CMD_SET3_FIRST && v <= KBD_CMD_SET3_LAST) this.kbdSend(KBD_REPLY_ACK);
        else this.kbdSend(KBD_REPLY_RESEND);
    }
  }

  private kbdParameter(cmd: number, v: number): void {
    switch (cmd) {
      case KBD_CMD_SET_LEDS:
        this.kbdLeds = v & KBD_LED_MASK;
        this.kbdSend(KBD_REPLY_ACK);
        break;
      case KBD_CMD_SET_TYPEMATIC:
        this.kbdTypematic = v & KBD_TYPEMATIC_MASK;
        this.kbdSend(KBD_REPLY_ACK);
        break;
      case KBD_CMD_SCANCODE_SET:
        if (v === 0) {
          const set = this.kbdScancodeSet;
          this.kbdSend(KBD_REPLY_ACK, this.translating ? TRANSLATED_SET_NUMBER[set]! : set);
        } else if (v >= 1 && v <= 3) {
          this.kbdScancodeSet = v;
          this.kbdSend(KBD_REPLY_ACK);
        } else {
          this.kbdSend(KBD_REPLY_RESEND);
        }
        break;
    }
  }

  /** LED state last set by the guest (bit 0 scroll, 1 num, 2 caps lock). */
  get keyboardLeds(): number {
    return this.kbdLeds;
  }

  // ---- persistence ----

  save(): I8042State {
    return {
      ram: Array.from(this.ram),
      outputPort: this.outputPort,
      lastWriteWasCommand: this.lastWriteWasCommand,
      outFull: this.outFull,
      outByte: this.outByte,
      outSource: this.outSource,
      pendingCommand: this.pendingCommand,
      kbdQueue: [...this.kbdQueue],
      kbdPendingCommand: this.kbdPendingCommand,
      kbdScanning: this.kbdScanning,
      kbdLeds: this.kbdLeds,
      kbdTypematic: this.kbdTypematic,
      kbdScancodeSet: this.kbdScancodeSet,
      kbdLastSent: this.kbdLastSent,
    };
  }

  restore(state: I8042State, version: number): void {
    const c = this.persistName;
    checkVersion(c, version, this.persistVersion);
    const s: StateRecord = asRecord(c, state);
    const ram = readByteArray(c, s, "ram", CONTROLLER_RAM_SIZE, CONTROLLER_RAM_SIZE);
    const outputPort = readInt(c, s, "outputPort", 0, 0xff);
    const lastWriteWasCommand = readBool(c, s, "lastWriteWasCommand");
    const outFull = readBool(c, s, "outFull");
    const outByte = readInt(c, s, "outByte", 0, 0xff);
    const outSource = readInt(c, s, "outSource", SRC_CONTROLLER, SRC_KEYBOARD);
    const pendingCommand = readInt(c, s, "pendingCommand", 0, 0xff);
    const isRamWrite = pendingCommand >= I8042_CMD_WRITE_RAM && pendingCommand < I8042_CMD_WRITE_RAM + CONTROLLER_RAM_SIZE;
    if (pendingCommand !== 0 && !isRamWrite && !DATA_COMMANDS.includes(pendingCommand)) {
      throw new PersistError(c, `field "pendingCommand": 0x${pendingCommand.toString(16)} takes no data byte`);
    }
    const kbdQueue = readByteArray(c, s, "kbdQueue", 0, KBD_QUEUE_MAX);
    const kbdPendingCommand = readInt(c, s, "kbdPendingCommand", 0, 0xff);
    if (kbdPendingCommand !== 0 && !KBD_PARAM_COMMANDS.includes(kbdPendingCommand)) {
      throw new PersistError(c, `field "kbdPendingCommand": 0x${kbdPendingCommand.toString(16)} takes no parameter`);
    }
    const kbdScanning = readBool(c, s, "kbdScanning");
    const kbdLeds = readBits(c, s, "kbdLeds", KBD_LED_MASK);
    const kbdTypematic = readBits(c, s, "kbdTypematic", KBD_TYPEMATIC_MASK);
    const kbdScancodeSet = readInt(c, s, "kbdScancodeSet", 1, 3);
    const kbdLastSent = readInt(c, s, "kbdLastSent", 0, 0xff);

    this.ram = new Uint8Array(ram);
    this.outputPort = outputPort;
    this.lastWriteWasCommand = lastWriteWasCommand;
    this.outFull = outFull;
    this.outByte = outByte;
    this.outSource = outSource;
    this.pendingCommand = pendingCommand;
    this.kbdQueue = Array.from(kbdQueue);
    this.kbdPendingCommand = kbdPendingCommand;
    this.kbdScanning = kbdScanning;
    this.kbdLeds = kbdLeds;
    this.kbdTypematic = kbdTypematic;
    this.kbdScancodeSet = kbdScancodeSet;
    this.kbdLastSent = kbdLastSent;
    this.refill();
    this.updateIrq(true);
  }
}
