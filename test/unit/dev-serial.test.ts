import { describe, expect, test } from "bun:test";
import type { IrqLine } from "../../src/devices/bus.ts";
import { PersistError } from "../../src/persist/persist.ts";
import {
  HOST_INPUT_CAPACITY,
  OUTPUT_FLUSH_THRESHOLD,
  Serial16550,
  UART_DLL,
  UART_DLM,
  UART_FCR,
  UART_IER,
  UART_IIR,
  UART_LCR,
  UART_LSR,
  UART_MCR,
  UART_MSR,
  UART_RX,
  UART_SCR,
  UART_TX,
  type SerialState,
} from "../../src/devices/legacy/serial.ts";

class FakeIrq implements IrqLine {
  calls: boolean[] = [];
  level = false;
  set(level: boolean): void {
    this.calls.push(level);
    this.level = level;
  }
}

// Register values as Linux's 8250 driver (include/uapi/linux/serial_reg.h) names them.
const LCR_DLAB = 0x80;
const LCR_8N1 = 0x03;
const LCR_CONF_MODE_B = 0xbf;
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RCVR = 0x02;
const FCR_CLEAR_XMIT = 0x04;
const FCR_TRIG_8 = 0x80;
const FCR7_64BYTE = 0x20;
const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_RLSI = 0x04;
const IER_MSI = 0x08;
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const IIR_NO_INT = 0x01;
const IIR_FIFO = 0xc0;

function make() {
  const irq = new FakeIrq();
  const out: Uint8Array[] = [];
  const uart = new Serial16550({ irq, output: (b) => out.push(b) });
  const r = (off: number) => uart.pioRead(off, 1);
  const w = (off: number, v: number) => uart.pioWrite(off, 1, v);
  const text = () => new TextDecoder().decode(Buffer.concat(out));
  return { uart, irq, out, r, w, text };
}

/** What serial8250_do_startup + set_termios leave behind at 115200 8N1. */
function linuxInit(d: ReturnType<typeof make>, ier = IER_RDI | IER_RLSI) {
  const { r, w } = d;
  w(UART_FCR, FCR_ENABLE);
  w(UART_FCR, FCR_ENABLE | FCR_CLEAR_RCVR | FCR_CLEAR_XMIT);
  w(UART_FCR, 0);
  r(UART_LSR);
  r(UART_RX);
  r(UART_IIR);
  r(UART_MSR);
  w(UART_LCR, LCR_8N1 | LCR_DLAB);
  w(UART_DLL, 1);
  w(UART_DLM, 0);
  w(UART_LCR, LCR_8N1);
  w(UART_FCR, FCR_ENABLE | FCR_TRIG_8);
  w(UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
  w(UART_IER, ier);
}

describe("16550A probe (Linux 8250 autoconfig)", () => {
  test("scratch, IER, loopback and FIFO-type tests identify a 16550A", () => {
    const { r, w } = make();
    // Scratch register.
    w(UART_SCR, 0xa5);
    expect(r(UART_SCR)).toBe(0xa5);
    // IER: only the low nibble exists.
    w(UART_IER, 0);
    expect(r(UART_IER) & 0x0f).toBe(0);
    w(UART_IER, 0xff);
    expect(r(UART_IER)).toBe(0x0f);
    w(UART_IER, 0);
    // Loopback: RTS|OUT2 must come back as CTS|DCD.
    w(UART_MCR, MCR_LOOP | 0x0a);
    expect(r(UART_MSR) & 0xf0).toBe(0x90);
    w(UART_MCR, 0);
    // EFR probe through LCR 0xBF writes 0 to offset 2 (FCR); then FIFO-type detection.
    w(UART_LCR, LCR_CONF_MODE_B);
    w(UART_FCR, 0);
    w(UART_LCR, 0);
    w(UART_FCR, FCR_ENABLE);
    expect(r(UART_IIR) >> 6).toBe(3);
    // With LCR_DLAB set, offset 2 still reads IIR (not a 16650 EFR): non-zero.
    w(UART_LCR, LCR_DLAB);
    expect(r(UART_IIR)).not.toBe(0);
    w(UART_LCR, 0);
    // No 64-byte FIFO (16750 test): IIR bit 5 stays clear.
    w(UART_FCR, FCR_ENABLE | FCR7_64BYTE);
    expect(r(UART_IIR) & 0xe0).toBe(0xc0);
    w(UART_FCR, 0);
    expect(r(UART_IIR)).toBe(IIR_NO_INT);
    expect(r(UART_LSR)).toBe(LSR_THRE | LSR_TEMT);
  });

  test("divisor latch is separate from RBR/IER under DLAB", () => {
    const d = make();
    linuxInit(d);
    const { r, w } = d;
    w(UART_LCR, LCR_8N1 | LCR_DLAB);
    expect(r(UART_DLL)).toBe(1);
    expect(r(UART_DLM)).toBe(0);
    w(UART_DLL, 0x0c);
    w(UART_LCR, LCR_8N1);
    expect(r(UART_IER)).toBe(IER_RDI | IER_RLSI);
    expect(r(UART_LCR)).toBe(LCR_8N1);
    expect(r(UART_MCR)).toBe(MCR_DTR | MCR_RTS | MCR_OUT2);
    expect(r(UART_IIR)).toBe(IIR_FIFO | IIR_NO_INT);
    // The DLL write did not transmit anything.
    d.uart.flush();
    expect(d.out.length).toBe(0);
  });
});

describe("transmit path", () => {
  test("bytes reach output in batches at flush, in fresh arrays", () => {
    const d = make();
    linuxInit(d);
    for (const c of "hello\n") d.w(UART_TX, c.charCodeAt(0));
    expect(d.out.length).toBe(0);
    expect(d.uart.pendingOutput).toBe(6);
    d.uart.flush();
    expect(d.out.length).toBe(1);
    expect(d.text()).toBe("hello\n");
    d.uart.flush(); // nothing pending: no call
    expect(d.out.length).toBe(1);
    // The callee owns its array: later output does not overwrite it.
    d.w(UART_TX, 0x41);
    d.uart.flush();
    expect(d.text()).toBe("hello\nA");
    expect(d.r(UART_LSR) & (LSR_THRE | LSR_TEMT)).toBe(LSR_THRE | LSR_TEMT);
  });

  test("flushes by itself at the threshold", () => {
    const d = make();
    linuxInit(d);
    for (let i = 0; i < OUTPUT_FLUSH_THRESHOLD + 3; i++) d.w(UART_TX, i & 0xff);
    expect(d.out.length).toBe(1);
    expect(d.out[0]!.length).toBe(OUTPUT_FLUSH_THRESHOLD);
    d.uart.flush();
    expect(d.out[1]!.length).toBe(3);
    expect(d.out[1]![0]).toBe(OUTPUT_FLUSH_THRESHOLD & 0xff);
  });
});

describe("THRE interrupt", () => {
  test("raise on IER.THRI, clear by IIR read, re-arm on IER toggle and THR write", () => {
    const d = make();
    linuxInit(d, 0);
    const { irq, r, w } = d;
    expect(irq.calls).toEqual([]);
    // Linux's THRE test: enable THRI -> pending at once.
    w(UART_IER, IER_THRI);
    expect(irq.calls).toEqual([true]);
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x02);
    expect(irq.calls).toEqual([true, false]);
    expect(r(UART_IIR)).toBe(IIR_FIFO | IIR_NO_INT); // acknowledged by the read
    w(UART_IER, 0);
    w(UART_IER, IER_THRI); // rising edge re-arms
    expect(irq.calls).toEqual([true, false, true]);
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x02);
    expect(irq.level).toBe(false);
    // Rewriting IER with THRI already set is not an edge.
    w(UART_IER, IER_THRI | IER_RDI);
    expect(r(UART_IIR)).toBe(IIR_FIFO | IIR_NO_INT);
    // A THR write empties at once and raises THRE again.
    w(UART_TX, 0x31);
    expect(irq.level).toBe(true);
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x02);
    expect(irq.level).toBe(false);
    // Disabling THRI drops a pending THRE.
    w(UART_TX, 0x32);
    expect(irq.level).toBe(true);
    w(UART_IER, IER_RDI);
    expect(irq.level).toBe(false);
    expect(r(UART_IIR)).toBe(IIR_FIFO | IIR_NO_INT);
  });

  test("OUT2 gates the IRQ line but not IIR", () => {
    const d = make();
    linuxInit(d, 0);
    d.w(UART_MCR, MCR_DTR | MCR_RTS);
    d.w(UART_IER, IER_THRI);
    expect(d.irq.calls).toEqual([]);
    d.w(UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    expect(d.irq.calls).toEqual([true]);
    d.w(UART_MCR, MCR_DTR | MCR_RTS);
    expect(d.irq.calls).toEqual([true, false]);
    expect(d.r(UART_IIR)).toBe(IIR_FIFO | 0x02);
  });
});

describe("receive path", () => {
  test("RX FIFO fills, trigger level selects timeout vs data-available", () => {
    const d = make();
    linuxInit(d); // trigger level 8, RDI|RLSI
    const { uart, irq, r } = d;
    uart.receive(new TextEncoder().encode("abcde"));
    expect(r(UART_LSR) & LSR_DR).toBe(LSR_DR);
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x0c); // below trigger: character timeout
    expect(irq.level).toBe(true);
    uart.receive(new TextEncoder().encode("fgh"));
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x04); // at trigger: data available
    let got = "";
    while (r(UART_LSR) & LSR_DR) got += String.fromCharCode(r(UART_RX));
    expect(got).toBe("abcdefgh");
    expect(r(UART_IIR)).toBe(IIR_FIFO | IIR_NO_INT);
    expect(irq.level).toBe(false);
    expect(irq.calls).toEqual([true, false]);
  });

  test("trigger levels 1, 4, 8, 14", () => {
    for (const [bits, level] of [
      [0x00, 1],
      [0x40, 4],
      [0x80, 8],
      [0xc0, 14],
    ] as const) {
      const d = make();
      linuxInit(d);
      d.w(UART_FCR, FCR_ENABLE | bits);
      d.uart.receive(new Uint8Array(level - 1));
      expect(d.r(UART_IIR)).toBe(level === 1 ? IIR_FIFO | IIR_NO_INT : IIR_FIFO | 0x0c);
      d.uart.receive(new Uint8Array(1));
      expect(d.r(UART_IIR)).toBe(IIR_FIFO | 0x04);
    }
  });

  test("without FIFOs: one byte in RBR, refilled from the host queue as the guest reads", () => {
    const d = make();
    linuxInit(d);
    d.w(UART_FCR, 0);
    d.uart.receive(new TextEncoder().encode("xyz"));
    expect(d.r(UART_IIR)).toBe(0x04); // no FIFO bits, data available
    expect(d.uart.pendingInput).toBe(3);
    expect(String.fromCharCode(d.r(UART_RX), d.r(UART_RX), d.r(UART_RX))).toBe("xyz");
    expect(d.r(UART_LSR) & LSR_DR).toBe(0);
    expect(d.r(UART_LSR) & LSR_OE).toBe(0); // host input never overruns
    expect(d.r(UART_RX)).toBe("z".charCodeAt(0)); // empty RBR reads the last byte again
  });

  test("host queue beyond the FIFO, bounded with a drop counter", () => {
    const d = make();
    linuxInit(d);
    const n = HOST_INPUT_CAPACITY + 100;
    const data = new Uint8Array(n);
    for (let i = 0; i < n; i++) data[i] = (i * 7) & 0xff;
    expect(d.uart.receive(data)).toBe(HOST_INPUT_CAPACITY);
    expect(d.uart.droppedInput).toBe(100);
    expect(d.uart.pendingInput).toBe(HOST_INPUT_CAPACITY);
    let count = 0;
    let ok = true;
    while (d.r(UART_LSR) & LSR_DR) {
      if (d.r(UART_RX) !== data[count]) ok = false;
      count++;
    }
    expect(ok).toBe(true);
    expect(count).toBe(HOST_INPUT_CAPACITY);
    expect(d.uart.pendingInput).toBe(0);
    // Room again.
    expect(d.uart.receive(new Uint8Array([1, 2]))).toBe(2);
    expect(d.uart.droppedInput).toBe(100);
  });

  test("FCR receiver clear drops what is in the FIFO only; the host queue refills it", () => {
    const d = make();
    linuxInit(d);
    const data = new Uint8Array(40).map((_, i) => i);
    d.uart.receive(data);
    d.w(UART_FCR, FCR_ENABLE | FCR_TRIG_8 | FCR_CLEAR_RCVR);
    expect(d.uart.pendingInput).toBe(24);
    expect(d.r(UART_RX)).toBe(16);
  });
});

describe("loopback, overrun and modem status", () => {
  test("loopback routes TX to RX, holds host input, reflects MCR in MSR", () => {
    const d = make();
    linuxInit(d);
    const { uart, r, w } = d;
    uart.receive(new TextEncoder().encode("host"));
    r(UART_RX);
    r(UART_RX);
    r(UART_RX);
    r(UART_RX);
    uart.receive(new TextEncoder().encode("later"));
    // "later" sits in the FIFO; clear it, then enter loopback: the serial input is disconnected.
    w(UART_FCR, FCR_ENABLE | FCR_TRIG_8 | FCR_CLEAR_RCVR);
    w(UART_MCR, MCR_LOOP | MCR_OUT2 | MCR_DTR);
    uart.receive(new TextEncoder().encode("!"));
    expect(uart.pendingInput).toBe(1);
    expect(r(UART_LSR) & LSR_DR).toBe(0);
    w(UART_TX, 0x55);
    w(UART_TX, 0xaa);
    uart.flush();
    expect(d.out.length).toBe(0);
    expect(r(UART_LSR) & LSR_DR).toBe(LSR_DR);
    expect(r(UART_RX)).toBe(0x55);
    expect(r(UART_RX)).toBe(0xaa);
    // DTR -> DSR, OUT2 -> DCD.
    expect(r(UART_MSR) & 0xf0).toBe(0xa0);
    // Leaving loopback reconnects the host input.
    w(UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    expect(r(UART_LSR) & LSR_DR).toBe(LSR_DR);
    expect(r(UART_RX)).toBe("!".charCodeAt(0));
    expect(r(UART_LSR) & LSR_DR).toBe(0);
  });

  test("overrun keeps the FIFO, sets OE, line status outranks data available", () => {
    const d = make();
    linuxInit(d, IER_RDI | IER_RLSI);
    const { r, w, irq } = d;
    w(UART_MCR, MCR_LOOP | MCR_OUT2);
    for (let i = 0; i < 17; i++) w(UART_TX, i);
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x06);
    expect(irq.level).toBe(true);
    const lsr = r(UART_LSR);
    expect(lsr & (LSR_OE | LSR_DR)).toBe(LSR_OE | LSR_DR);
    expect(r(UART_LSR) & LSR_OE).toBe(0); // read-to-clear
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x04);
    const got: number[] = [];
    while (r(UART_LSR) & LSR_DR) got.push(r(UART_RX));
    expect(got).toEqual([...Array(16).keys()]);
    expect(irq.level).toBe(false);
  });

  test("overrun without FIFOs overwrites RBR", () => {
    const d = make();
    linuxInit(d);
    d.w(UART_FCR, 0);
    d.w(UART_MCR, MCR_LOOP);
    d.w(UART_TX, 1);
    d.w(UART_TX, 2);
    expect(d.r(UART_LSR) & (LSR_OE | LSR_DR)).toBe(LSR_OE | LSR_DR);
    expect(d.r(UART_RX)).toBe(2);
  });

  test("MSR delta bits and the modem-status interrupt (lowest priority)", () => {
    const d = make();
    linuxInit(d, IER_MSI | IER_THRI);
    const { r, w } = d;
    // Host lines: CTS, DSR, DCD.
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x02); // THRE pending, no modem-status change yet
    expect(r(UART_MSR)).toBe(0xb0);
    w(UART_MCR, MCR_LOOP | MCR_OUT2 | MCR_OUT1); // lines become RI|DCD: CTS, DSR dropped
    expect(r(UART_IIR)).toBe(IIR_FIFO | 0x00);
    expect(r(UART_MSR)).toBe(0xc0 | 0x01 | 0x02);
    expect(r(UART_MSR)).toBe(0xc0); // deltas clear on read
    expect(r(UART_IIR)).toBe(IIR_FIFO | IIR_NO_INT);
    w(UART_MCR, MCR_LOOP | MCR_OUT2); // RI falls: trailing edge
    expect(r(UART_MSR)).toBe(0x80 | 0x04);
    w(UART_MCR, MCR_LOOP | MCR_OUT2 | MCR_OUT1); // RI rises: no TERI
    expect(r(UART_MSR)).toBe(0xc0);
  });
});

function scenario(uart: Serial16550, r: (o: number) => number, w: (o: number, v: number) => void): number[] {
  // A fixed sequence of guest accesses whose results depend on all the saved state.
  const seen: number[] = [];
  for (const off of [UART_IIR, UART_LSR, UART_MSR, UART_SCR, UART_IER, UART_LCR, UART_MCR]) seen.push(r(off));
  w(UART_LCR, r(UART_LCR) | LCR_DLAB);
  seen.push(r(UART_DLL), r(UART_DLM));
  w(UART_LCR, r(UART_LCR) & ~LCR_DLAB);
  for (let i = 0; i < 40; i++) {
    seen.push(r(UART_IIR), r(UART_LSR), r(UART_RX));
  }
  w(UART_TX, 0x7a);
  uart.flush();
  return seen;
}

describe("persistence", () => {
  function busy() {
    const d = make();
    linuxInit(d, IER_RDI | IER_THRI | IER_RLSI);
    d.w(UART_SCR, 0x42);
    d.w(UART_LCR, LCR_8N1 | LCR_DLAB);
    d.w(UART_DLL, 3);
    d.w(UART_LCR, LCR_8N1);
    d.uart.receive(new TextEncoder().encode("pending input that is longer than a FIFO"));
    d.r(UART_RX);
    for (const c of "unflushed") d.w(UART_TX, c.charCodeAt(0));
    return d;
  }

  test("save -> JSON -> new instance -> restore behaves identically", () => {
    const a = busy();
    const state = JSON.parse(JSON.stringify(a.uart.save())) as SerialState;
    const b = make();
    b.uart.restore(state, b.uart.persistVersion);
    expect(b.irq.calls).toEqual([a.irq.level]); // line re-driven once
    expect(b.uart.pendingInput).toBe(a.uart.pendingInput);
    expect(b.uart.pendingOutput).toBe(a.uart.pendingOutput);
    const sa = scenario(a.uart, a.r, a.w);
    const sb = scenario(b.uart, b.r, b.w);
    expect(sb).toEqual(sa);
    expect(b.text()).toBe(a.text());
    expect(b.text()).toBe("unflushedz");
    expect(b.irq.level).toBe(a.irq.level);
  });

  test("restore rejects bad state, naming the field, and changes nothing", () => {
    const good = busy().uart.save();
    const d = make();
    const before = JSON.stringify(d.uart.save());
    const bad: [string, unknown][] = [
      ["ier", { ...good, ier: 0x10 }],
      ["fcr", { ...good, fcr: 0x06 }],
      ["mcr", { ...good, mcr: 0x20 }],
      ["lcr", { ...good, lcr: 256 }],
      ["dll", { ...good, dll: -1 }],
      ["scr", { ...good, scr: 1.5 }],
      ["thrIpending", { ...good, thrIpending: 1 }],
      ["lsrErrors", { ...good, lsrErrors: 0x20 }],
      ["rxFifo", { ...good, rxFifo: new Array(17).fill(0) }],
      ["rxFifo", { ...good, fcr: 0, rxFifo: [1, 2] }],
      ["rxFifo", { ...good, rxFifo: [300] }],
      ["hostInput", { ...good, hostInput: "not base64!" }],
      ["hostInput", { ...good, hostInput: 12 }],
      ["hostInput", { ...good, hostInput: Buffer.alloc(HOST_INPUT_CAPACITY + 1).toString("base64") }],
      ["pendingOutput", { ...good, pendingOutput: Buffer.alloc(OUTPUT_FLUSH_THRESHOLD).toString("base64") }],
      ["rbr", (({ rbr: _, ...rest }) => rest)(good)],
    ];
    for (const [field, state] of bad) {
      expect(() => d.uart.restore(state as SerialState, 1)).toThrow(PersistError);
      expect(() => d.uart.restore(state as SerialState, 1)).toThrow(field);
    }
    expect(() => d.uart.restore(null as unknown as SerialState, 1)).toThrow(PersistError);
    expect(() => d.uart.restore(good, 2)).toThrow(/version/);
    expect(JSON.stringify(d.uart.save())).toBe(before);
    expect(d.irq.calls).toEqual([]);
  });
});

test("reset() returns registers to power-on values", () => {
  const d = make();
  linuxInit(d, IER_THRI);
  expect(d.irq.level).toBe(true);
  d.uart.reset();
  expect(d.irq.level).toBe(false);
  expect(d.r(UART_IER)).toBe(0);
  expect(d.r(UART_MCR)).toBe(0);
  expect(d.r(UART_IIR)).toBe(IIR_NO_INT);
});
