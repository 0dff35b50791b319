/**
 * A small AML (ACPI Machine Language) encoder: the subset kiln's DSDT needs. Every function returns
 * the encoded bytes of one term; compose them by passing them to the container encoders.
 * References are to the ACPI 6.5 specification, chapter 20 (AML) and 6.4 (resource descriptors).
 */

export const AmlOp = {
  ZERO: 0x00,
  ONE: 0x01,
  NAME: 0x08,
  BYTE_PREFIX: 0x0a,
  WORD_PREFIX: 0x0b,
  DWORD_PREFIX: 0x0c,
  STRING_PREFIX: 0x0d,
  QWORD_PREFIX: 0x0e,
  SCOPE: 0x10,
  BUFFER: 0x11,
  PACKAGE: 0x12,
  METHOD: 0x14,
  DUAL_NAME_PREFIX: 0x2e,
  MULTI_NAME_PREFIX: 0x2f,
  EXT_PREFIX: 0x5b,
  ROOT_CHAR: 0x5c,
  PARENT_PREFIX: 0x5e,
  RETURN: 0xa4,
  ONES: 0xff,
  /** Second byte after EXT_PREFIX. */
  EXT_DEVICE: 0x82,
} as const;

export class AmlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AmlError";
  }
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function le(value: number | bigint, bytes: number): number[] {
  let v = BigInt(value);
  const out: number[] = [];
  for (let i = 0; i < bytes; i++) {
    out.push(Number(v & 0xffn));
    v >>= 8n;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// PkgLength (20.2.4): the length of the package *including* the PkgLength bytes themselves.
// One byte holds up to 63; otherwise the lead byte carries the count of following bytes in bits
// 7..6 and the low nibble of the length in bits 3..0, the following bytes the rest (12/20/28 bits).

const PKG_LENGTH_MAX = [0x3f, 0xfff, 0xfffff, 0xfffffff] as const;

export function pkgLength(contentLength: number): Uint8Array {
  for (let n = 1; n <= 4; n++) {
    const total = contentLength + n;
    if (total > PKG_LENGTH_MAX[n - 1]!) continue;
    if (n === 1) return Uint8Array.of(total);
    const out = [((n - 1) << 6) | (total & 0x0f)];
    for (let i = 1; i < n; i++) out.push((total >> (4 + 8 * (i - 1))) & 0xff);
    return Uint8Array.from(out);
  }
  throw new AmlError(`AML package of ${contentLength} bytes is too long for a PkgLength`);
}

/** Prefix `body` with its PkgLength. */
function withPkgLength(body: Uint8Array): Uint8Array {
  return concat(pkgLength(body.length), body);
}

// ---------------------------------------------------------------------------------------------
// Names (20.2.2)

const NAME_SEG = /^[A-Z_][A-Z0-9_]{0,3}$/;

/** A 4-character NameSeg; shorter names are padded with '_' ("RTC" -> "RTC_"). */
export function nameSeg(seg: string): Uint8Array {
  if (!NAME_SEG.test(seg)) throw new AmlError(`"${seg}" is not an ACPI name segment (1-4 of A-Z 0-9 _, not starting with a digit)`);
  return new TextEncoder().encode(seg.padEnd(4, "_"));
}

/** A NameString: "\\_SB.PCI0", "_HID", "^PCI0", "\\" (the root). */
export function nameString(path: string): Uint8Array {
  const prefix: number[] = [];
  let rest = path;
  if (rest.startsWith("\\")) {
    prefix.push(AmlOp.ROOT_CHAR);
    rest = rest.slice(1);
  } else {
    while (rest.startsWith("^")) {
      prefix.push(AmlOp.PARENT_PREFIX);
      rest = rest.slice(1);
    }
  }
  const segs = rest === "" ? [] : rest.split(".");
  const encoded = segs.map(nameSeg);
  let body: Uint8Array;
  if (encoded.length === 0) body = Uint8Array.of(0x00); // NullName
  else if (encoded.length === 1) body = encoded[0]!;
  else if (encoded.length === 2) body = concat(Uint8Array.of(AmlOp.DUAL_NAME_PREFIX), ...encoded);
  else if (encoded.length <= 255) body = concat(Uint8Array.of(AmlOp.MULTI_NAME_PREFIX, encoded.length), ...encoded);
  else throw new AmlError(`name path "${path}" has too many segments`);
  return concat(Uint8Array.from(prefix), body);
}

// ---------------------------------------------------------------------------------------------
// Data objects (20.2.3)

const ONES = 0xffff_ffff_ffff_ffffn;

/** An integer with the shortest encoding: Zero, One, Ones, or Byte/Word/DWord/QWord constants. */
export function integer(value: number | bigint): Uint8Array {
  if (typeof value === "number" && (!Number.isSafeInteger(value) || value < 0)) {
    throw new AmlError(`AML integer ${value} is not a non-negative safe integer (pass a bigint for 64-bit values)`);
  }
  const v = BigInt(value);
  if (v < 0n || v > ONES) throw new AmlError(`AML integer ${value} does not fit in 64 bits`);
  if (v === 0n) return Uint8Array.of(AmlOp.ZERO);
  if (v === 1n) return Uint8Array.of(AmlOp.ONE);
  if (v === ONES) return Uint8Array.of(AmlOp.ONES);
  if (v <= 0xffn) return Uint8Array.of(AmlOp.BYTE_PREFIX, Number(v));
  if (v <= 0xffffn) return Uint8Array.of(AmlOp.WORD_PREFIX, ...le(v, 2));
  if (v <= 0xffff_ffffn) return Uint8Array.of(AmlOp.DWORD_PREFIX, ...le(v, 4));
  return Uint8Array.of(AmlOp.QWORD_PREFIX, ...le(v, 8));
}

/** A DWordConst regardless of value (how ASL compilers emit EISAID). */
export function dword(value: number): Uint8Array {
  return Uint8Array.of(AmlOp.DWORD_PREFIX, ...le(value, 4));
}

/** A String: ASCII characters 0x01-0x7f and a NUL. */
export function string(s: string): Uint8Array {
  const bytes = new TextEncoder().encode(s);
  if (bytes.some((b) => b === 0 || b > 0x7f)) throw new AmlError(`AML string "${s}" must be ASCII without NULs`);
  return concat(Uint8Array.of(AmlOp.STRING_PREFIX), bytes, Uint8Array.of(0));
}

/**
 * The 32-bit compressed EISA ID of "PNP0A03": three letters in 5 bits each, then four hex
 * digits, stored big-endian, so that the dword reads 0x030AD041 little-endian.
 */
export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new AmlError(`"${id}" is not an EISA ID (three letters A-Z, four hex digits)`);
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  const bytes = [vendor >> 8, vendor & 0xff, product >> 8, product & 0xff];
  return (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
}

/** EISAID("PNP0A03") as a DWordConst. */
export function eisaId(id: string): Uint8Array {
  return dword(eisaIdValue(id));
}

/** Buffer (bytes): BufferOp PkgLength BufferSize ByteList. */
export function buffer(bytes: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(AmlOp.BUFFER), withPkgLength(concat(integer(bytes.length), bytes)));
}

/** Package(n) { elements }: each element an already-encoded data object. */
export function pkg(...elements: Uint8Array[]): Uint8Array {
  if (elements.length > 255) throw new AmlError(`Package of ${elements.length} elements needs VarPackage, which kiln does not emit`);
  return concat(Uint8Array.of(AmlOp.PACKAGE), withPkgLength(concat(Uint8Array.of(elements.length), ...elements)));
}

// ---------------------------------------------------------------------------------------------
// Named objects and statements (20.2.5)

/** Name (name, value). */
export function name(path: string, value: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(AmlOp.NAME), nameString(path), value);
}

/** Scope (path) { terms }. */
export function scope(path: string, ...terms: Uint8Array[]): Uint8Array {
  return concat(Uint8Array.of(AmlOp.SCOPE), withPkgLength(concat(nameString(path), ...terms)));
}

/** Device (path) { terms }. */
export function device(path: string, ...terms: Uint8Array[]): Uint8Array {
  return concat(Uint8Array.of(AmlOp.EXT_PREFIX, AmlOp.EXT_DEVICE), withPkgLength(concat(nameString(path), ...terms)));
}

/** Method (path, argCount, Serialized|NotSerialized) { terms }. */
export function method(path: string, argCount: number, serialized: boolean, ...terms: Uint8Array[]): Uint8Array {
  if (!Number.isInteger(argCount) || argCount < 0 || argCount > 7) throw new AmlError(`a method takes 0-7 arguments, not ${argCount}`);
  const flags = argCount | (serialized ? 0x08 : 0);
  return concat(Uint8Array.of(AmlOp.METHOD), withPkgLength(concat(nameString(path), Uint8Array.of(flags), ...terms)));
}

/** Return (value). */
export function ret(value: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(AmlOp.RETURN), value);
}

// ---------------------------------------------------------------------------------------------
// Resource descriptors (6.4). A ResourceTemplate is a Buffer of descriptors ending in an End Tag.

export const ResourceTag = {
  IRQ_NO_FLAGS: 0x22, // small item 0x04, length 2
  IO: 0x47, // small item 0x08, length 7
  END: 0x79, // small item 0x0f, length 1
  MEMORY32_FIXED: 0x86,
  DWORD_ADDRESS: 0x87,
  WORD_ADDRESS: 0x88,
  EXTENDED_INTERRUPT: 0x89,
  QWORD_ADDRESS: 0x8a,
} as const;

/** Address space resource types. */
export const AddressSpaceType = { MEMORY: 0, IO: 1, BUS_NUMBER: 2 } as const;

/** General flags of address space descriptors (6.4.3.5.*): producer, positive decode, fixed min and max. */
const ADDR_FIXED_PRODUCER = 0x0c; // bit 3 MaxFixed, bit 2 MinFixed, bit 1 PosDecode (0), bit 0 Producer (0)
const ADDR_CONSUMER = 0x01;
/** WordIO type-specific flag: the window passes both ISA and non-ISA ranges. */
const IO_ENTIRE_RANGE = 0x03;

function largeItem(tag: number, body: number[]): Uint8Array {
  return Uint8Array.of(tag, ...le(body.length, 2), ...body);
}

function checkRange(what: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) throw new AmlError(`${what} ${value} is outside 0..0x${max.toString(16)}`);
}

/** IO (Decode16, min, max, alignment, length). */
export function io(min: number, max: number, alignment: number, length: number): Uint8Array {
  checkRange("IO minimum", min, 0xffff);
  checkRange("IO maximum", max, 0xffff);
  checkRange("IO alignment", alignment, 0xff);
  checkRange("IO length", length, 0xff);
  const DECODE16 = 0x01;
  return Uint8Array.of(ResourceTag.IO, DECODE16, ...le(min, 2), ...le(max, 2), alignment, length);
}

/** IRQNoFlags () { irqs }: ISA IRQs 0-15, edge-triggered, active high. */
export function irqNoFlags(...irqs: number[]): Uint8Array {
  let mask = 0;
  for (const irq of irqs) {
    checkRange("ISA IRQ", irq, 15);
    mask |= 1 << irq;
  }
  return Uint8Array.of(ResourceTag.IRQ_NO_FLAGS, ...le(mask, 2));
}

/** Memory32Fixed (ReadWrite|ReadOnly, base, length). */
export function memory32Fixed(base: number, length: number, readWrite = true): Uint8Array {
  checkRange("Memory32Fixed base", base, 0xffff_ffff);
  checkRange("Memory32Fixed length", length, 0xffff_ffff);
  return largeItem(ResourceTag.MEMORY32_FIXED, [readWrite ? 1 : 0, ...le(base, 4), ...le(length, 4)]);
}

export interface InterruptFlags {
  /** ResourceConsumer (true) or ResourceProducer. */
  consumer: boolean;
  /** Edge (true) or Level. */
  edge: boolean;
  /** ActiveLow (true) or ActiveHigh. */
  activeLow: boolean;
  /** Shared (true) or Exclusive. */
  shared: boolean;
}

/** Interrupt (consumer, trigger, polarity, sharing) { gsis }: the Extended Interrupt descriptor. */
export function extendedInterrupt(flags: InterruptFlags, ...gsis: number[]): Uint8Array {
  if (gsis.length === 0 || gsis.length > 255) throw new AmlError("an Interrupt descriptor lists 1-255 interrupts");
  for (const g of gsis) checkRange("interrupt number", g, 0xffff_ffff);
  const f = (flags.consumer ? 0x01 : 0) | (flags.edge ? 0x02 : 0) | (flags.activeLow ? 0x04 : 0) | (flags.shared ? 0x08 : 0);
  return largeItem(ResourceTag.EXTENDED_INTERRUPT, [f, gsis.length, ...gsis.flatMap((g) => le(g, 4))]);
}

/** Address space descriptor body shared by Word/DWord/QWord forms; _LEN = max - min + 1 as MinFixed+MaxFixed require. */
function addressSpace(
  tag: number,
  width: number,
  type: number,
  typeFlags: number,
  min: number | bigint,
  max: number | bigint,
  translation: number | bigint,
  consumer = false,
): Uint8Array {
  const lo = BigInt(min);
  const hi = BigInt(max);
  const limit = (1n << BigInt(width * 8)) - 1n;
  if (lo < 0n || hi > limit || hi < lo) throw new AmlError(`address range 0x${lo.toString(16)}..0x${hi.toString(16)} is invalid for a ${width * 8}-bit descriptor`);
  const len = hi - lo + 1n;
  if (len > limit) throw new AmlError(`address range 0x${lo.toString(16)}..0x${hi.toString(16)} is too long for a ${width * 8}-bit descriptor`);
  return largeItem(tag, [
    type,
    ADDR_FIXED_PRODUCER | (consumer ? ADDR_CONSUMER : 0),
    typeFlags,
    ...le(0, width), // granularity: 0 for a fixed range
    ...le(lo, width),
    ...le(hi, width),
    ...le(translation, width),
    ...le(len, width),
  ]);
}

/** WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, len). */
export function wordBusNumber(min: number, max: number): Uint8Array {
  return addressSpace(ResourceTag.WORD_ADDRESS, 2, AddressSpaceType.BUS_NUMBER, 0, min, max, 0);
}

/** WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0, len). */
export function wordIo(min: number, max: number): Uint8Array {
  return addressSpace(ResourceTag.WORD_ADDRESS, 2, AddressSpaceType.IO, IO_ENTIRE_RANGE, min, max, 0);
}

export interface MemoryFlags {
  cacheable: boolean;
  readWrite: boolean;
}

function memoryTypeFlags(f: MemoryFlags): number {
  // bit 0 ReadWrite; bits 2..1: 0 NonCacheable, 1 Cacheable.
  return (f.readWrite ? 0x01 : 0) | (f.cacheable ? 0x02 : 0);
}

/** DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, caching, rw, 0, min, max, 0, len). */
export function dwordMemory(flags: MemoryFlags, min: number, max: number): Uint8Array {
  return addressSpace(ResourceTag.DWORD_ADDRESS, 4, AddressSpaceType.MEMORY, memoryTypeFlags(flags), min, max, 0);
}

/** QWordMemory (ResourceProducer|ResourceConsumer, PosDecode, MinFixed, MaxFixed, caching, rw, 0, min, max, 0, len). */
export function qwordMemory(flags: MemoryFlags, min: number | bigint, max: number | bigint, consumer = false): Uint8Array {
  return addressSpace(ResourceTag.QWORD_ADDRESS, 8, AddressSpaceType.MEMORY, memoryTypeFlags(flags), min, max, 0, consumer);
}

/**
 * ResourceTemplate () { descriptors }: a Buffer ending with an End Tag whose checksum makes the
 * template's bytes sum to zero (OSPMs also accept 0, "not checksummed", which is what iasl emits).
 */
export function resourceTemplate(...descriptors: Uint8Array[]): Uint8Array {
  const body = concat(...descriptors, Uint8Array.of(ResourceTag.END, 0));
  const sum = body.reduce((s, b) => (s + b) & 0xff, 0);
  body[body.length - 1] = (0x100 - sum) & 0xff;
  return buffer(body);
}
