/**
 * Parsers for every line the kiln test guest (test/guest/, docs/test-guest.md) prints on COM1.
 *
 * Each `parseX(line)` returns the line's fields, or `null` when the line is not of that kind. A trailing "\r"
 * or "\n" is ignored. Addresses, sizes and counters are `number`s (they stay below 2^53); 64-bit values that can
 * use all 64 bits (TSC readings, dirtier stamps, hashes, seeds, RIP/CR2) are `bigint`s.
 * `parseLine(line)` tries them all and returns a tagged union; `GuestLineReader` splits raw serial output into
 * lines; `collectHeartbeats` joins `HB` lines with their `HB+` continuations.
 */

export interface Banner {
  version: number;
  cpus: number;
  /** MiB of type-1 RAM in the memory map. */
  memMiB: number;
  /** The command line; a line longer than 320 characters is cut to 317 plus "...". */
  cmdline: string;
}
export interface Tsc {
  khz: number;
  src: string;
}
export interface Timer {
  mode: "tsc-deadline" | "oneshot";
  vector: number;
  /** LAPIC timer kHz (one-shot mode only). */
  khz?: number;
  src?: string;
}
export interface Note {
  text: string;
}
export interface Acpi {
  fields: Record<string, string>;
}
export interface MemEntry {
  addr: number;
  size: number;
  type: number;
}
export interface Module {
  index: number;
  addr: number;
  size: number;
  fnv1a64: bigint;
}
export interface CpuUp {
  cpu: number;
  apic: number;
}
export interface CpuFailed {
  cpu: number;
  apic: number;
}
export interface Dirtier {
  pages: number;
  seed: bigint;
}
export interface DirtyRange {
  cpu: number;
  start: number;
  end: number;
  pages: number;
}
export interface Boot {
  entryTsc: bigint;
  readyTsc: bigint;
  /** Microseconds from the PVH entry point to READY, by the guest's TSC. */
  us: number;
}
export interface Ready {
  cpus: number;
}
export interface Pass {
  cpu: number;
  n: number;
  bad: number;
  pages: number;
}
export interface Bad {
  cpu: number;
  addr: number;
  want: bigint;
  got: bigint;
}
export interface Heartbeat {
  n: number;
  /** The TSC on the `HB` line; null on an `HB+` continuation line. */
  tsc: bigint | null;
  /** Index of the CPU whose counter comes first (0 on `HB` lines). */
  from: number;
  counters: number[];
}
export interface Action {
  action: string;
}
export interface Echo {
  text: string;
}
export interface Exc {
  vector: number;
  error: bigint;
  rip: bigint;
  cr2: bigint;
  cpu: number;
}
export interface Nmi {
  cpu: number;
  rip: bigint;
}

export const ACTIONS = ["poweroff", "reset", "cf9", "triplefault", "halt"] as const;
export type ActionName = (typeof ACTIONS)[number];

const DEC = "(\\d+)";
const HEX = "0x([0-9a-f]+)";

function clean(line: string): string {
  return line.replace(/\r?\n?$/, "").replace(/\r$/, "");
}

function num(s: string): number {
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new RangeError(`guest line value ${s} does not fit a safe integer`);
  return n;
}

function hexNum(s: string): number {
  const b = BigInt(`0x${s}`);
  if (b > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`guest line value 0x${s} does not fit a safe integer`);
  return Number(b);
}

function hexBig(s: string): bigint {
  return BigInt(`0x${s}`);
}

function match(re: RegExp, line: string): string[] | null {
  const m = re.exec(clean(line));
  return m ? m.slice(1).map((x) => x ?? "") : null;
}

const reBanner = /^KILN-GUEST v(\d+) cpus=(\d+) mem=(\d+) cmdline="(.*)"$/;
export function parseBanner(line: string): Banner | null {
  const m = match(reBanner, line);
  return m ? { version: num(m[0]!), cpus: num(m[1]!), memMiB: num(m[2]!), cmdline: m[3]! } : null;
}

const reTsc = new RegExp(`^TSC khz=${DEC} src=(\\S+)$`);
export function parseTsc(line: string): Tsc | null {
  const m = match(reTsc, line);
  return m ? { khz: num(m[0]!), src: m[1]! } : null;
}

const reTimerDeadline = new RegExp(`^TIMER mode=tsc-deadline vector=${HEX}$`);
const reTimerOneshot = new RegExp(`^TIMER mode=oneshot khz=${DEC} src=(\\S+) vector=${HEX}$`);
export function parseTimer(line: string): Timer | null {
  let m = match(reTimerDeadline, line);
  if (m) return { mode: "tsc-deadline", vector: hexNum(m[0]!) };
  m = match(reTimerOneshot, line);
  return m ? { mode: "oneshot", khz: num(m[0]!), src: m[1]!, vector: hexNum(m[2]!) } : null;
}

const reNote = /^NOTE (.*)$/;
export function parseNote(line: string): Note | null {
  const m = match(reNote, line);
  return m ? { text: m[0]! } : null;
}

const reAcpi = /^ACPI ((?:\S+=\S*)(?: \S+=\S*)*)$/;
export function parseAcpi(line: string): Acpi | null {
  const m = match(reAcpi, line);
  if (!m) return null;
  const fields: Record<string, string> = {};
  for (const kv of m[0]!.split(" ")) {
    const i = kv.indexOf("=");
    fields[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return { fields };
}

const reMem = new RegExp(`^MEM addr=${HEX} size=${HEX} type=${DEC}$`);
export function parseMem(line: string): MemEntry | null {
  const m = match(reMem, line);
  return m ? { addr: hexNum(m[0]!), size: hexNum(m[1]!), type: num(m[2]!) } : null;
}

const reModule = new RegExp(`^MODULE ${DEC} addr=${HEX} size=${DEC} fnv1a64=0x([0-9a-f]{16})$`);
export function parseModule(line: string): Module | null {
  const m = match(reModule, line);
  return m ? { index: num(m[0]!), addr: hexNum(m[1]!), size: num(m[2]!), fnv1a64: hexBig(m[3]!) } : null;
}

const reCpuUp = new RegExp(`^CPU ${DEC} up apic=${DEC}$`);
export function parseCpuUp(line: string): CpuUp | null {
  const m = match(reCpuUp, line);
  return m ? { cpu: num(m[0]!), apic: num(m[1]!) } : null;
}

const reCpuFailed = new RegExp(`^CPU ${DEC} failed apic=${DEC}$`);
export function parseCpuFailed(line: string): CpuFailed | null {
  const m = match(reCpuFailed, line);
  return m ? { cpu: num(m[0]!), apic: num(m[1]!) } : null;
}

const reDirtier = new RegExp(`^DIRTIER pages=${DEC} seed=${HEX}$`);
export function parseDirtier(line: string): Dirtier | null {
  const m = match(reDirtier, line);
  return m ? { pages: num(m[0]!), seed: hexBig(m[1]!) } : null;
}

const reDirty = new RegExp(`^DIRTY cpu=${DEC} start=${HEX} end=${HEX} pages=${DEC}$`);
export function parseDirty(line: string): DirtyRange | null {
  const m = match(reDirty, line);
  return m ? { cpu: num(m[0]!), start: hexNum(m[1]!), end: hexNum(m[2]!), pages: num(m[3]!) } : null;
}

const reBoot = new RegExp(`^BOOT entry_tsc=${DEC} ready_tsc=${DEC} us=${DEC}$`);
export function parseBoot(line: string): Boot | null {
  const m = match(reBoot, line);
  return m ? { entryTsc: BigInt(m[0]!), readyTsc: BigInt(m[1]!), us: num(m[2]!) } : null;
}

const reReady = new RegExp(`^READY cpus=${DEC}$`);
export function parseReady(line: string): Ready | null {
  const m = match(reReady, line);
  return m ? { cpus: num(m[0]!) } : null;
}

const rePass = new RegExp(`^PASS cpu=${DEC} n=${DEC} bad=${DEC} pages=${DEC}$`);
export function parsePass(line: string): Pass | null {
  const m = match(rePass, line);
  return m ? { cpu: num(m[0]!), n: num(m[1]!), bad: num(m[2]!), pages: num(m[3]!) } : null;
}

const reBad = new RegExp(`^BAD cpu=${DEC} addr=${HEX} want=${HEX} got=${HEX}$`);
export function parseBad(line: string): Bad | null {
  const m = match(reBad, line);
  return m ? { cpu: num(m[0]!), addr: hexNum(m[1]!), want: hexBig(m[2]!), got: hexBig(m[3]!) } : null;
}

const reHb = new RegExp(`^HB n=${DEC} tsc=${DEC} c=(\\d+(?:,\\d+)*)$`);
const reHbCont = new RegExp(`^HB\\+ n=${DEC} from=${DEC} c=(\\d+(?:,\\d+)*)$`);
/** Parses both `HB` lines and their `HB+` continuations (see collectHeartbeats). */
export function parseHeartbeat(line: string): Heartbeat | null {
  let m = match(reHb, line);
  if (m) return { n: num(m[0]!), tsc: BigInt(m[1]!), from: 0, counters: m[2]!.split(",").map(num) };
  m = match(reHbCont, line);
  return m ? { n: num(m[0]!), tsc: null, from: num(m[1]!), counters: m[2]!.split(",").map(num) } : null;
}

const reAction = /^ACTION (\S+)$/;
export function parseAction(line: string): Action | null {
  const m = match(reAction, line);
  return m ? { action: m[0]! } : null;
}

const reActionFailed = /^ACTION-FAILED (\S+)$/;
export function parseActionFailed(line: string): Action | null {
  const m = match(reActionFailed, line);
  return m ? { action: m[0]! } : null;
}

const reEcho = /^ECHO (.*)$/;
export function parseEcho(line: string): Echo | null {
  const m = match(reEcho, line);
  return m ? { text: m[0]! } : null;
}

const reExc = new RegExp(`^EXC vec=${DEC} err=${HEX} rip=${HEX} cr2=${HEX} cpu=${DEC}$`);
export function parseExc(line: string): Exc | null {
  const m = match(reExc, line);
  return m
    ? { vector: num(m[0]!), error: hexBig(m[1]!), rip: hexBig(m[2]!), cr2: hexBig(m[3]!), cpu: num(m[4]!) }
    : null;
}

const reNmi = new RegExp(`^NMI cpu=${DEC} rip=${HEX}$`);
export function parseNmi(line: string): Nmi | null {
  const m = match(reNmi, line);
  return m ? { cpu: num(m[0]!), rip: hexBig(m[1]!) } : null;
}

export type GuestLine =
  | ({ kind: "banner" } & Banner)
  | ({ kind: "tsc" } & Tsc)
  | ({ kind: "timer" } & Timer)
  | ({ kind: "note" } & Note)
  | ({ kind: "acpi" } & Acpi)
  | ({ kind: "mem" } & MemEntry)
  | ({ kind: "module" } & Module)
  | ({ kind: "cpu-up" } & CpuUp)
  | ({ kind: "cpu-failed" } & CpuFailed)
  | ({ kind: "dirtier" } & Dirtier)
  | ({ kind: "dirty" } & DirtyRange)
  | ({ kind: "boot" } & Boot)
  | ({ kind: "ready" } & Ready)
  | ({ kind: "pass" } & Pass)
  | ({ kind: "bad" } & Bad)
  | ({ kind: "heartbeat" } & Heartbeat)
  | ({ kind: "action" } & Action)
  | ({ kind: "action-failed" } & Action)
  | ({ kind: "echo" } & Echo)
  | ({ kind: "exc" } & Exc)
  | ({ kind: "nmi" } & Nmi);

export type GuestLineKind = GuestLine["kind"];

const parsers: [GuestLineKind, (line: string) => object | null][] = [
  ["banner", parseBanner],
  ["tsc", parseTsc],
  ["timer", parseTimer],
  ["note", parseNote],
  ["acpi", parseAcpi],
  ["mem", parseMem],
  ["module", parseModule],
  ["cpu-up", parseCpuUp],
  ["cpu-failed", parseCpuFailed],
  ["dirtier", parseDirtier],
  ["dirty", parseDirty],
  ["boot", parseBoot],
  ["ready", parseReady],
  ["pass", parsePass],
  ["bad", parseBad],
  ["heartbeat", parseHeartbeat],
  ["action", parseAction],
  ["action-failed", parseActionFailed],
  ["echo", parseEcho],
  ["exc", parseExc],
  ["nmi", parseNmi],
];

/** Any guest line, tagged with its kind; null for lines the guest does not print (e.g. firmware output). */
export function parseLine(line: string): GuestLine | null {
  for (const [kind, parse] of parsers) {
    const r = parse(line);
    if (r) return { kind, ...r } as GuestLine;
  }
  return null;
}

/**
 * Joins each `HB` line with the `HB+` continuation lines that follow it (same n) into one record whose
 * `counters` cover every CPU. Lines of other kinds are skipped; a continuation without its `HB` line is dropped.
 */
export function collectHeartbeats(lines: Iterable<string>): Heartbeat[] {
  const out: Heartbeat[] = [];
  for (const line of lines) {
    const hb = parseHeartbeat(line);
    if (!hb) continue;
    if (hb.tsc !== null) {
      out.push({ ...hb, counters: [...hb.counters] });
      continue;
    }
    const last = out[out.length - 1];
    if (last && last.n === hb.n && last.counters.length === hb.from) last.counters.push(...hb.counters);
  }
  return out;
}

/**
 * Splits serial output, fed in arbitrary chunks, into lines (without "\n"; a trailing "\r" removed).
 * Bytes are decoded as Latin-1 so that a chunk boundary can never split a character.
 */
export class GuestLineReader {
  private partial = "";

  push(chunk: string | Uint8Array): string[] {
    const text = typeof chunk === "string" ? chunk : latin1(chunk);
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop() ?? "";
    return parts.map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
  }

  /** The unterminated rest (e.g. after the guest stopped). */
  rest(): string {
    return this.partial;
  }
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return s;
}

/** FNV-1a 64 as the guest's `initrd` workload computes it, for comparing MODULE lines. */
export function fnv1a64(bytes: Uint8Array): bigint {
  // Two 32-bit halves: far faster than bigint arithmetic per byte.
  let hi = 0xcbf29ce4;
  let lo = 0x84222325;
  for (let i = 0; i < bytes.length; i++) {
    lo = (lo ^ bytes[i]!) >>> 0;
    // (hi:lo) * 0x100000001b3 mod 2^64 = (hi:lo) * 0x1b3 + (lo << 40); lo * 0x1b3 < 2^41 is exact in a double.
    const p = lo * 0x1b3;
    hi = (Math.imul(hi, 0x1b3) + Math.floor(p / 0x100000000) + (lo << 8)) >>> 0;
    lo = p >>> 0;
  }
  return (BigInt(hi) << 32n) | BigInt(lo);
}
