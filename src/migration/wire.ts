/**
 * kiln's migration stream, version 1 (documented in docs/migration-protocol.md).
 *
 *   stream   = header record*
 *   header   = magic "KILN-MIG" (8) | u16 version | u16 arch | u32 flags
 *   record   = u32 type | u32 reserved (0) | u64 payload length | payload
 *
 * All integers little-endian. The destination checks every length and address before it acts on a
 * record; anything malformed fails the migration (see WireError), never writes outside guest RAM.
 */

export const MAGIC = "KILN-MIG";
export const VERSION = 1;
export const ARCH_X86_64 = 1;
export const HEADER_SIZE = 16;
export const RECORD_HEADER_SIZE = 16;
export const PAGE_SIZE = 4096;

/** Header flags. */
export const FLAG_RETURN_PATH = 1; // the destination answers (sockets); not for file/exec streams
export const FLAG_SNAPSHOT = 2; // written to a file: restore freezes guest time instead of advancing it

export const Rec = {
  /** JSON: the guest-visible configuration; the destination refuses a mismatch before applying anything. */
  CONFIG: 1,
  /** RAM runs: u32 count | u32 0 | count x { u64 gpa | u32 pages | u32 kind } | the data pages of DATA runs, in order. */
  RAM: 2,
  /** u32 pass number: a pre-copy round begins (informational). */
  PASS: 3,
  /** A component's state: u16 name length | name | u32 version | u32 encoding | data. */
  STATE: 4,
  /** JSON { runState, pausedAtRealtimeNs, ... }: all state was sent. */
  END: 5,
  /** Source -> destination after LOADED: the switchover; only now may the destination run the guest. */
  COMMIT: 6,
  /**
   * Same-host only (unix sockets, capability x-ignore-shared): u64 RAM size, with the guest RAM's
   * memfd attached (SCM_RIGHTS). The destination maps it instead of receiving pages.
   */
  MEMFD: 7,
  // Return path (destination -> source):
  /** The configuration matches; send the rest. */
  CONFIG_OK: 100,
  /** utf-8 message: the destination refuses or failed; the source resumes its guest. */
  ERROR: 101,
  /** Everything was received and applied; the destination waits for COMMIT. */
  LOADED: 102,
} as const;

export const RUN_DATA = 0;
export const RUN_ZERO = 1;
export const RUN_DESC_SIZE = 16;
export const RAM_HEAD_SIZE = 8;

export const ENCODING_JSON = 1;
/** The section's data is the component's own binary format, passed through as bytes. */
export const ENCODING_RAW = 2;

/** Bounds the destination enforces, so a hostile stream cannot make it allocate or wait without limit. */
export const LIMITS = {
  configBytes: 1 << 20,
  stateBytes: 16 << 20,
  endBytes: 1 << 16,
  errorBytes: 1 << 16,
  runsPerRecord: 4096,
  /** Data pages in one RAM record (also what the source batches up to). */
  pagesPerRecord: 16384,
};

export class WireError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WireError";
  }
}

export function encodeHeader(flags: number): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE);
  b.set(new TextEncoder().encode(MAGIC), 0);
  const dv = new DataView(b.buffer);
  dv.setUint16(8, VERSION, true);
  dv.setUint16(10, ARCH_X86_64, true);
  dv.setUint32(12, flags, true);
  return b;
}

export function decodeHeader(b: Uint8Array): { flags: number } {
  if (b.byteLength < HEADER_SIZE) throw new WireError("stream too short for a header");
  const magic = new TextDecoder().decode(b.subarray(0, 8));
  if (magic !== MAGIC) throw new WireError("not a kiln migration stream (bad magic)");
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const version = dv.getUint16(8, true);
  if (version !== VERSION) throw new WireError(`migration stream version ${version} is not supported (this kiln speaks version ${VERSION})`);
  const arch = dv.getUint16(10, true);
  if (arch !== ARCH_X86_64) throw new WireError(`migration stream is for architecture ${arch}, not x86_64`);
  return { flags: dv.getUint32(12, true) };
}

export function recordHeader(type: number, length: number): Uint8Array {
  const b = new Uint8Array(RECORD_HEADER_SIZE);
  writeRecordHeader(new DataView(b.buffer), 0, type, length);
  return b;
}

export function writeRecordHeader(dv: DataView, off: number, type: number, length: number): void {
  dv.setUint32(off, type, true);
  dv.setUint32(off + 4, 0, true);
  dv.setBigUint64(off + 8, BigInt(length), true);
}

export function decodeRecordHeader(b: Uint8Array): { type: number; length: number } {
  const dv = new DataView(b.buffer, b.byteOffset, RECORD_HEADER_SIZE);
  const type = dv.getUint32(0, true);
  if (dv.getUint32(4, true) !== 0) throw new WireError(`record ${type}: reserved field is not zero`);
  const len = dv.getBigUint64(8, true);
  if (len > BigInt(Number.MAX_SAFE_INTEGER)) throw new WireError(`record ${type}: length ${len} is absurd`);
  return { type, length: Number(len) };
}

/** A whole record (header + payload) in one buffer. */
export function record(type: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(RECORD_HEADER_SIZE + payload.byteLength);
  writeRecordHeader(new DataView(b.buffer), 0, type, payload.byteLength);
  b.set(payload, RECORD_HEADER_SIZE);
  return b;
}

export function jsonRecord(type: number, value: unknown): Uint8Array {
  return record(type, new TextEncoder().encode(JSON.stringify(value)));
}

// ---- state sections ----

/** JSON with Uint8Arrays carried as {"$b64": "..."}. */
export function encodeStateJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify(value, (_k, v) => (v instanceof Uint8Array ? { $b64: Buffer.from(v).toString("base64") } : typeof v === "bigint" ? v.toString() : v)),
  );
}

export function decodeStateJson(b: Uint8Array): unknown {
  return JSON.parse(new TextDecoder().decode(b), (_k, v) => {
    if (v && typeof v === "object" && !Array.isArray(v) && typeof v.$b64 === "string" && Object.keys(v).length === 1) {
      return new Uint8Array(Buffer.from(v.$b64, "base64"));
    }
    return v;
  });
}

export interface StateSection {
  name: string;
  version: number;
  /** JSON-able (Uint8Arrays and bigints allowed), or a Uint8Array: the component's own binary format. */
  data: unknown;
}

export function encodeState(s: StateSection): Uint8Array {
  const name = new TextEncoder().encode(s.name);
  const raw = s.data instanceof Uint8Array;
  const data = raw ? (s.data as Uint8Array) : encodeStateJson(s.data);
  const payload = new Uint8Array(2 + name.byteLength + 8 + data.byteLength);
  const dv = new DataView(payload.buffer);
  dv.setUint16(0, name.byteLength, true);
  payload.set(name, 2);
  dv.setUint32(2 + name.byteLength, s.version, true);
  dv.setUint32(6 + name.byteLength, raw ? ENCODING_RAW : ENCODING_JSON, true);
  payload.set(data, 10 + name.byteLength);
  return record(Rec.STATE, payload);
}

export function decodeState(payload: Uint8Array): StateSection {
  if (payload.byteLength < 10) throw new WireError("state record too short");
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const nameLen = dv.getUint16(0, true);
  if (2 + nameLen + 8 > payload.byteLength) throw new WireError("state record name overruns the record");
  const name = new TextDecoder("utf-8", { fatal: true }).decode(payload.subarray(2, 2 + nameLen));
  const version = dv.getUint32(2 + nameLen, true);
  const encoding = dv.getUint32(6 + nameLen, true);
  if (encoding === ENCODING_RAW) return { name, version, data: payload.slice(10 + nameLen) };
  if (encoding !== ENCODING_JSON) throw new WireError(`state ${name}: unknown encoding ${encoding}`);
  let data: unknown;
  try {
    data = decodeStateJson(payload.subarray(10 + nameLen));
  } catch (e) {
    throw new WireError(`state ${name}: bad JSON (${(e as Error).message})`);
  }
  return { name, version, data };
}

/** A run of guest pages in a RAM record. */
export interface PageRun {
  gpa: number;
  pages: number;
  kind: number;
}

/** Parse and validate a RAM record's run table; `isRam` says whether [gpa, gpa+len) is guest RAM. */
export function decodeRuns(table: Uint8Array, count: number, isRam: (gpa: number, len: number) => boolean): { runs: PageRun[]; dataPages: number } {
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const runs: PageRun[] = [];
  let dataPages = 0;
  for (let i = 0; i < count; i++) {
    const o = i * RUN_DESC_SIZE;
    const gpaBig = dv.getBigUint64(o, true);
    const pages = dv.getUint32(o + 8, true);
    const kind = dv.getUint32(o + 12, true);
    if (gpaBig > BigInt(Number.MAX_SAFE_INTEGER)) throw new WireError(`RAM run at 0x${gpaBig.toString(16)} is outside guest RAM`);
    const gpa = Number(gpaBig);
    if (gpa % PAGE_SIZE !== 0) throw new WireError(`RAM run at 0x${gpa.toString(16)} is not page aligned`);
    if (pages === 0 || pages > LIMITS.pagesPerRecord) throw new WireError(`RAM run at 0x${gpa.toString(16)} has a bad page count ${pages}`);
    if (kind !== RUN_DATA && kind !== RUN_ZERO) throw new WireError(`RAM run at 0x${gpa.toString(16)} has unknown kind ${kind}`);
    if (!isRam(gpa, pages * PAGE_SIZE)) {
      throw new WireError(`RAM run 0x${gpa.toString(16)}+${pages} pages is outside guest RAM`);
    }
    if (kind === RUN_DATA) dataPages += pages;
    runs.push({ gpa, pages, kind });
  }
  if (dataPages > LIMITS.pagesPerRecord) throw new WireError(`RAM record carries ${dataPages} pages (limit ${LIMITS.pagesPerRecord})`);
  return { runs, dataPages };
}
