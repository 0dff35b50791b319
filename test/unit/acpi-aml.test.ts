import { describe, expect, test } from "bun:test";
import * as aml from "../../src/arch/x86_64/acpi/aml.ts";

const bytes = (u: Uint8Array) => Array.from(u);
const ascii = (s: string) => Array.from(new TextEncoder().encode(s));

describe("PkgLength", () => {
  // The encoded length counts the PkgLength bytes themselves.
  test.each([
    [0, [0x01]],
    [62, [0x3f]], // largest 1-byte: total 63
    [63, [0x41, 0x04]], // smallest 2-byte: total 65 = 0x41
    [0xffd, [0x4f, 0xff]], // largest 2-byte: total 0xfff
    [0xffe, [0x81, 0x00, 0x01]], // smallest 3-byte: total 0x1001
    [0xffffc, [0x8f, 0xff, 0xff]], // largest 3-byte: total 0xfffff
    [0xffffd, [0xc1, 0x00, 0x00, 0x01]], // smallest 4-byte: total 0x100001
  ] as [number, number[]][])("content %d -> %p", (len, expected) => {
    expect(bytes(aml.pkgLength(len))).toEqual(expected);
  });

  test("too long for 28 bits", () => {
    expect(() => aml.pkgLength(0x0fff_fffc)).toThrow(aml.AmlError);
  });
});

describe("integers", () => {
  test.each([
    [0, [0x00]],
    [1, [0x01]],
    [2, [0x0a, 0x02]],
    [0xff, [0x0a, 0xff]],
    [0x100, [0x0b, 0x00, 0x01]],
    [0xffff, [0x0b, 0xff, 0xff]],
    [0x10000, [0x0c, 0x00, 0x00, 0x01, 0x00]],
    [0xffff_ffff, [0x0c, 0xff, 0xff, 0xff, 0xff]],
    [0x1_0000_0000, [0x0e, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00]],
  ] as [number, number[]][])("%d", (v, expected) => {
    expect(bytes(aml.integer(v))).toEqual(expected);
  });

  test("Ones and large bigints", () => {
    expect(bytes(aml.integer(0xffff_ffff_ffff_ffffn))).toEqual([0xff]);
    expect(bytes(aml.integer(0xffff_ffff_ffff_fffen))).toEqual([0x0e, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  });

  test("rejects negative, fractional and oversized values", () => {
    expect(() => aml.integer(-1)).toThrow(aml.AmlError);
    expect(() => aml.integer(1.5)).toThrow(aml.AmlError);
    expect(() => aml.integer(1n << 64n)).toThrow(aml.AmlError);
  });
});

describe("strings and EISA IDs", () => {
  test("String", () => {
    expect(bytes(aml.string("LNRO0005"))).toEqual([0x0d, ...ascii("LNRO0005"), 0x00]);
    expect(() => aml.string("a\0b")).toThrow(aml.AmlError);
  });

  test("EISAID values", () => {
    expect(aml.eisaIdValue("PNP0A03")).toBe(0x030ad041);
    expect(aml.eisaIdValue("PNP0A08")).toBe(0x080ad041);
    expect(aml.eisaIdValue("PNP0501")).toBe(0x0105d041);
    expect(aml.eisaIdValue("PNP0B00")).toBe(0x000bd041);
    expect(bytes(aml.eisaId("PNP0A03"))).toEqual([0x0c, 0x41, 0xd0, 0x0a, 0x03]);
    // Small values still encode as a DWordConst, as ASL compilers emit EISAID.
    expect(bytes(aml.eisaId("PNP0000"))).toEqual([0x0c, 0x41, 0xd0, 0x00, 0x00]);
    expect(() => aml.eisaIdValue("pnp0a03")).toThrow(aml.AmlError);
  });
});

describe("names", () => {
  test("segments and paths", () => {
    expect(bytes(aml.nameString("_HID"))).toEqual(ascii("_HID"));
    expect(bytes(aml.nameString("RTC"))).toEqual(ascii("RTC_"));
    expect(bytes(aml.nameString("\\_SB"))).toEqual([0x5c, ...ascii("_SB_")]);
    expect(bytes(aml.nameString("\\_SB.PCI0"))).toEqual([0x5c, 0x2e, ...ascii("_SB_PCI0")]);
    expect(bytes(aml.nameString("\\_SB.PCI0.ISA"))).toEqual([0x5c, 0x2f, 0x03, ...ascii("_SB_PCI0ISA_")]);
    expect(bytes(aml.nameString("^^FOO"))).toEqual([0x5e, 0x5e, ...ascii("FOO_")]);
    expect(bytes(aml.nameString("\\"))).toEqual([0x5c, 0x00]);
  });

  test("invalid segments", () => {
    expect(() => aml.nameString("1ABC")).toThrow(aml.AmlError);
    expect(() => aml.nameString("TOOLONG")).toThrow(aml.AmlError);
    expect(() => aml.nameString("ab")).toThrow(aml.AmlError);
  });
});

describe("terms", () => {
  test("Name", () => {
    expect(bytes(aml.name("_UID", aml.integer(1)))).toEqual([0x08, ...ascii("_UID"), 0x01]);
  });

  test("Package: \\_S5 style", () => {
    const p = aml.pkg(aml.integer(5), aml.integer(5), aml.integer(0), aml.integer(0));
    expect(bytes(p)).toEqual([0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]);
  });

  test("Device and Scope", () => {
    expect(bytes(aml.device("COM1"))).toEqual([0x5b, 0x82, 0x05, ...ascii("COM1")]);
    expect(bytes(aml.scope("\\_SB", aml.name("X", aml.integer(0))))).toEqual([0x10, 0x0c, 0x5c, ...ascii("_SB_"), 0x08, ...ascii("X___"), 0x00]);
  });

  test("a Scope over 63 bytes uses a 2-byte PkgLength", () => {
    const big = aml.name("BUF", aml.buffer(new Uint8Array(100)));
    const s = aml.scope("\\_SB", big);
    expect(s[1]! >> 6).toBe(1);
    const total = (s[1]! & 0x0f) | (s[2]! << 4);
    expect(total).toBe(s.length - 1); // everything after the opcode
  });

  test("Method returning a constant", () => {
    const m = aml.method("_STA", 0, false, aml.ret(aml.integer(0x0f)));
    expect(bytes(m)).toEqual([0x14, 0x09, ...ascii("_STA"), 0x00, 0xa4, 0x0a, 0x0f]);
    expect(aml.method("FOO", 2, true)[6]).toBe(0x0a);
    expect(() => aml.method("BAD", 8, false)).toThrow(aml.AmlError);
  });
});

describe("resource descriptors", () => {
  test("IO and IRQNoFlags in a template with a checksummed End Tag", () => {
    const t = aml.resourceTemplate(aml.io(0x3f8, 0x3f8, 0, 8), aml.irqNoFlags(4));
    const descriptors = [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00];
    // BufferOp, PkgLength, BufferSize (13), descriptors, End Tag (0x79, checksum).
    expect(bytes(t)).toEqual([0x11, 0x10, 0x0a, 0x0d, ...descriptors, 0x79, 0x0f]);
    const body = t.subarray(4);
    expect(body.reduce((s, b) => (s + b) & 0xff, 0)).toBe(0);
  });

  test("an empty template is just the End Tag", () => {
    expect(bytes(aml.resourceTemplate())).toEqual([0x11, 0x05, 0x0a, 0x02, 0x79, 0x87]);
  });

  test("Memory32Fixed", () => {
    expect(bytes(aml.memory32Fixed(0xd000_0000, 0x1000))).toEqual([0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00]);
  });

  test("Extended Interrupt", () => {
    const edge = aml.extendedInterrupt({ consumer: true, edge: true, activeLow: false, shared: false }, 16);
    expect(bytes(edge)).toEqual([0x89, 0x06, 0x00, 0x03, 0x01, 0x10, 0x00, 0x00, 0x00]);
    const level = aml.extendedInterrupt({ consumer: true, edge: false, activeLow: false, shared: false }, 17);
    expect(level[3]).toBe(0x01);
  });

  test("IRQNoFlags masks", () => {
    expect(bytes(aml.irqNoFlags(1))).toEqual([0x22, 0x02, 0x00]);
    expect(bytes(aml.irqNoFlags(8))).toEqual([0x22, 0x00, 0x01]);
    expect(() => aml.irqNoFlags(16)).toThrow(aml.AmlError);
  });

  test("WordBusNumber, WordIO", () => {
    expect(bytes(aml.wordBusNumber(0, 255))).toEqual([0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0xff, 0, 0, 0, 0x00, 0x01]);
    expect(bytes(aml.wordIo(0x0d00, 0xffff))).toEqual([0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0, 0, 0x00, 0x0d, 0xff, 0xff, 0, 0, 0x00, 0xf3]);
  });

  test("DWordMemory, QWordMemory", () => {
    const d = aml.dwordMemory({ cacheable: false, readWrite: true }, 0xc000_0000, 0xcfff_ffff);
    expect(d.length).toBe(26);
    expect(bytes(d.subarray(0, 6))).toEqual([0x87, 0x17, 0x00, 0x00, 0x0c, 0x01]);
    const len = new DataView(d.buffer, d.byteOffset).getUint32(22, true);
    expect(len).toBe(0x1000_0000);
    const q = aml.qwordMemory({ cacheable: true, readWrite: true }, 0x100_0000_0000, 0x13f_ffff_ffffn);
    expect(q.length).toBe(46);
    expect(bytes(q.subarray(0, 6))).toEqual([0x8a, 0x2b, 0x00, 0x00, 0x0c, 0x03]);
    expect(new DataView(q.buffer, q.byteOffset).getBigUint64(38, true)).toBe(0x40_0000_0000n);
    expect(() => aml.dwordMemory({ cacheable: false, readWrite: true }, 10, 5)).toThrow(aml.AmlError);
  });
});
