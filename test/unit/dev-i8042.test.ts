import { describe, expect, test } from "bun:test";
import type { IrqLine } from "../../src/devices/bus.ts";
import { PersistError } from "../../src/persist/persist.ts";
import {
  I8042,
  I8042_COMMAND_OFFSET,
  I8042_CTR_DEFAULT,
  I8042_DATA_OFFSET,
  type I8042State,
} from "../../src/devices/legacy/i8042.ts";

class FakeIrq implements IrqLine {
  calls: boolean[] = [];
  level = false;
  set(level: boolean): void {
    this.calls.push(level);
    this.level = level;
  }
}

// Names as in Linux's drivers/input/serio/i8042.h.
const STR_OBF = 0x01;
const STR_IBF = 0x02;
const STR_AUXDATA = 0x20;
const STR_KEYLOCK = 0x10;
const CTR_KBDINT = 0x01;
const CTR_KBDDIS = 0x10;
const CTR_AUXDIS = 0x20;
const CTR_XLATE = 0x40;
const CMD_CTL_RCTR = 0x20;
const CMD_CTL_WCTR = 0x60;
const CMD_CTL_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_KBD_DISABLE = 0xad;
const CMD_KBD_ENABLE = 0xae;
const CMD_AUX_DISABLE = 0xa7;
const CMD_AUX_ENABLE = 0xa8;
const CMD_AUX_TEST = 0xa9;
const CMD_AUX_LOOP = 0xd3;
const CMD_READ_OUTPUT = 0xd0;
const CMD_WRITE_OUTPUT = 0xd1;
const CMD_RESET = 0xfe;

function make() {
  const irq = new FakeIrq();
  let resets = 0;
  const kbc = new I8042({ irq, onReset: () => resets++ });
  const status = () => kbc.pioRead(I8042_COMMAND_OFFSET, 1);
  const cmd = (v: number) => kbc.pioWrite(I8042_COMMAND_OFFSET, 1, v);
  const data = () => kbc.pioRead(I8042_DATA_OFFSET, 1);
  const writeData = (v: number) => kbc.pioWrite(I8042_DATA_OFFSET, 1, v);
  /** i8042_command with one reply byte: the reply, or null when none arrived (Linux would time out). */
  const command = (c: number, param?: number): number | null => {
    expect(status() & STR_IBF).toBe(0);
    cmd(c);
    if (param !== undefined) writeData(param);
    if (!(status() & STR_OBF)) return null;
    return data();
  };
  /** Drain the output buffer as i8042_flush does. */
  const flush = (): number[] => {
    const got: number[] = [];
    while (status() & STR_OBF && got.length < 64) got.push(data());
    return got;
  };
  return { kbc, irq, status, cmd, data, writeData, command, flush, resets: () => resets };
}

describe("Linux i8042 probe", () => {
  test("controller check, self-test, CTR init, aux rejected quickly, keyboard test", () => {
    const d = make();
    const { status, cmd, data, writeData, flush } = d;
    // i8042_controller_check: a present controller, nothing to flush.
    expect(status()).not.toBe(0xff);
    expect(status() & STR_KEYLOCK).toBe(STR_KEYLOCK);
    expect(flush()).toEqual([]);
    // i8042_controller_selftest.
    expect(d.command(CMD_CTL_TEST)).toBe(0x55);
    // i8042_controller_init: stable CTR read, then KBDDIS set / KBDINT cleared written back.
    const ctr = d.command(CMD_CTL_RCTR)!;
    expect(d.command(CMD_CTL_RCTR)).toBe(ctr);
    expect(ctr).toBe(I8042_CTR_DEFAULT);
    expect(ctr & CTR_XLATE).toBe(CTR_XLATE);
    cmd(CMD_CTL_WCTR);
    writeData((ctr | CTR_KBDDIS) & ~CTR_KBDINT);
    expect(d.command(CMD_CTL_RCTR)).toBe((ctr | CTR_KBDDIS) & ~CTR_KBDINT);
    expect(flush()).toEqual([]);
    // i8042_check_aux: AUX_LOOP comes back without AUXDATA -> Linux "auxerr" without reading it...
    cmd(CMD_AUX_LOOP);
    writeData(0x5a);
    expect(status() & (STR_OBF | STR_AUXDATA)).toBe(STR_OBF);
    // ...then AUX_TEST (its reply replaces the unread byte) reports an error -> no aux port.
    const auxTest = d.command(CMD_AUX_TEST)!;
    expect(auxTest !== 0 && auxTest !== 0xfa && auxTest !== 0xff).toBe(true);
    expect(status() & STR_OBF).toBe(0);
    // The aux-disable bit toggles as the bit-assignment test expects.
    cmd(CMD_AUX_DISABLE);
    expect(d.command(CMD_CTL_RCTR)! & CTR_AUXDIS).toBe(CTR_AUXDIS);
    cmd(CMD_AUX_ENABLE);
    expect(d.command(CMD_CTL_RCTR)! & CTR_AUXDIS).toBe(0);
    // Keyboard interface test, then enable the keyboard port (i8042_enable_kbd_port).
    expect(d.command(CMD_KBD_TEST)).toBe(0x00);
    cmd(CMD_KBD_DISABLE);
    expect(d.command(CMD_CTL_RCTR)! & CTR_KBDDIS).toBe(CTR_KBDDIS);
    cmd(CMD_KBD_ENABLE);
    const last = d.command(CMD_CTL_RCTR)!;
    expect(last & CTR_KBDDIS).toBe(0);
    expect(data()).toBe(last); // reading an empty buffer returns the last byte again
    expect(d.resets()).toBe(0);
  });

  test("atkbd probe through the keyboard port, with IRQ 1 edges per byte", () => {
    const d = make();
    const { irq, cmd, data, writeData, status } = d;
    cmd(CMD_CTL_WCTR);
    writeData(CTR_KBDINT | CTR_XLATE);
    expect(irq.calls).toEqual([]);
    // ATKBD_CMD_GETID: ACK, then AB 41 (translated).
    writeData(0xf2);
    expect(irq.level).toBe(true);
    expect(data()).toBe(0xfa);
    expect(data()).toBe(0xab);
    expect(data()).toBe(0x41);
    expect(status() & STR_OBF).toBe(0);
    expect(irq.calls).toEqual([true, false, true, false, true, false]);
    // ATKBD_CMD_SETLEDS + parameter: two ACKs.
    writeData(0xed);
    expect(data()).toBe(0xfa);
    writeData(0x02);
    expect(data()).toBe(0xfa);
    expect(d.kbc.keyboardLeds).toBe(0x02);
    // Typematic, enable, reset-with-BAT, echo, an unknown command; replies read per byte sent.
    const replies = [0xf3, 0x20, 0xf4, 0xff, 0xee, 0x12].map((b) => {
      writeData(b);
      return d.flush();
    });
    expect(replies).toEqual([[0xfa], [0xfa], [0xfa], [0xfa, 0xaa], [0xee], [0xfe]]);
    // Reset clears the keyboard's own buffer: of GETID's FA AB 41 only the FA already handed to the
    // controller survives.
    writeData(0xf2);
    writeData(0xff);
    expect(d.flush()).toEqual([0xfa, 0xfa, 0xaa]);
    // Untranslated: the real ID; scancode set query.
    cmd(CMD_CTL_WCTR);
    writeData(CTR_KBDINT);
    writeData(0xf2);
    writeData(0xf0);
    writeData(0x00);
    expect(d.flush()).toEqual([0xfa, 0xab, 0x83, 0xfa, 0xfa, 0x02]);
  });

  test("keyboard bytes wait while the interface is disabled and after a displacing controller reply", () => {
    const d = make();
    const { cmd, data, writeData, status } = d;
    writeData(0xf4); // ACK queued and delivered
    cmd(CMD_CTL_RCTR); // controller reply takes the buffer; the ACK goes back in the queue
    expect(data()).toBe(I8042_CTR_DEFAULT & ~CTR_KBDDIS);
    expect(data()).toBe(0xfa);
    writeData(0xee);
    expect(data()).toBe(0xee);
    cmd(CMD_KBD_DISABLE);
    cmd(0xd2); // write keyboard output buffer: controller-injected byte still appears
    writeData(0x99);
    expect(data()).toBe(0x99);
    expect(status() & STR_OBF).toBe(0);
  });
});

describe("reset", () => {
  test("0xFE pulses the reset line", () => {
    const d = make();
    d.cmd(CMD_RESET);
    expect(d.resets()).toBe(1);
    d.cmd(0xff); // pulse nothing
    d.cmd(0xfd); // line 1 only
    expect(d.resets()).toBe(1);
    d.cmd(0xf0); // all lines including reset
    expect(d.resets()).toBe(2);
  });

  test("output port write with bit 0 clear resets; read-back via 0xD0", () => {
    const d = make();
    const out = d.command(CMD_READ_OUTPUT)!;
    expect(out & 0x03).toBe(0x03);
    d.cmd(CMD_WRITE_OUTPUT);
    d.writeData(0xdf);
    expect(d.resets()).toBe(0);
    expect(d.command(CMD_READ_OUTPUT)! & 0xcf).toBe(0xcf);
    d.cmd(CMD_WRITE_OUTPUT);
    d.writeData(0xde);
    expect(d.resets()).toBe(1);
  });
});

describe("persistence", () => {
  test("save -> JSON -> restore continues mid-conversation", () => {
    const a = make();
    a.cmd(CMD_CTL_WCTR);
    a.writeData(CTR_KBDINT | CTR_XLATE);
    a.writeData(0xf2); // FA AB 41 queued
    a.data();
    a.writeData(0xed); // SETLEDS: the keyboard now waits for its parameter (AB 41 still unread)
    a.cmd(CMD_WRITE_OUTPUT); // pending controller command awaiting its data byte
    const state = JSON.parse(JSON.stringify(a.kbc.save())) as I8042State;
    const b = make();
    b.kbc.restore(state, 1);
    expect(b.irq.calls).toEqual([true]);
    for (const d of [a, b]) {
      d.writeData(0xdf); // output port data
      d.writeData(0x04); // LED parameter
    }
    expect(b.flush()).toEqual(a.flush());
    expect(b.kbc.keyboardLeds).toBe(4);
    expect(b.command(CMD_READ_OUTPUT)).toBe(a.command(CMD_READ_OUTPUT));
    expect(b.resets()).toBe(0);
  });

  test("restore rejects bad state", () => {
    const good = make().kbc.save();
    const d = make();
    const bad: [string, unknown][] = [
      ["ram", { ...good, ram: [1, 2, 3] }],
      ["outByte", { ...good, outByte: 256 }],
      ["outSource", { ...good, outSource: 2 }],
      ["pendingCommand", { ...good, pendingCommand: 0xaa }],
      ["kbdQueue", { ...good, kbdQueue: new Array(17).fill(0xfa) }],
      ["kbdPendingCommand", { ...good, kbdPendingCommand: 0xf2 }],
      ["kbdScancodeSet", { ...good, kbdScancodeSet: 0 }],
      ["kbdLeds", { ...good, kbdLeds: 8 }],
      ["outFull", { ...good, outFull: "yes" }],
    ];
    for (const [field, state] of bad) {
      expect(() => d.kbc.restore(state as I8042State, 1)).toThrow(PersistError);
      expect(() => d.kbc.restore(state as I8042State, 1)).toThrow(field);
    }
    expect(() => d.kbc.restore(good, 0)).toThrow(/version/);
    expect(d.irq.calls).toEqual([]);
  });
});

test("separate per-port views for two 1-port registrations", () => {
  const d = make();
  d.kbc.commandPort.pioWrite(0, 1, CMD_CTL_TEST);
  expect(d.kbc.commandPort.pioRead(0, 1) & STR_OBF).toBe(STR_OBF);
  expect(d.kbc.dataPort.pioRead(0, 1)).toBe(0x55);
});
