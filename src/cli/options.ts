/**
 * Helpers for StratoVirt/QEMU option strings ("virtio-blk-pci,drive=d0,bus=pcie.0,addr=0x3"), sizes,
 * PCI addresses, MACs and socket addresses. Every failure is a UsageError naming the flag.
 */
import type { SocketAddress } from "./config.ts";

/** A command-line mistake. `message` is one line: "<flag>: <what is wrong>". */
export class UsageError extends Error {
  constructor(
    readonly flag: string,
    detail: string,
  ) {
    super(`${flag}: ${detail}`);
    this.name = "UsageError";
  }
}

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

/**
 * Split on commas; ",," is a literal comma (QEMU's escape, so paths may contain commas).
 */
export function splitOptionList(text: string): string[] {
  const items: string[] = [];
  let cur = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === ",") {
      if (text[i + 1] === ",") {
        cur += ",";
        i++;
      } else {
        items.push(cur);
        cur = "";
      }
    } else {
      cur += c;
    }
  }
  items.push(cur);
  return items;
}

export interface OptionSpec {
  /** Key that a leading bare item stands for: "type" in "q35,mem-share=on", "driver" in "virtio-blk-pci,...". */
  implied?: string;
  /** Keys accepted as key=value. */
  keys: readonly string[];
  /** Words accepted without a value ("server", "nowait"); stored as "on". */
  words?: readonly string[];
  /** The first item is always the implied value, even if it contains '=' (a URI such as "unix:/tmp/a=b"). */
  firstIsImplied?: boolean;
}

/** A parsed option string with typed getters that throw UsageError naming `flag`. */
export class Options {
  private constructor(
    readonly flag: string,
    private readonly values: Map<string, string>,
  ) {}

  static parse(flag: string, text: string, spec: OptionSpec): Options {
    const values = new Map<string, string>();
    const words = spec.words ?? [];
    const valid = [...new Set([...(spec.implied ? [spec.implied] : []), ...spec.keys, ...words])];
    const items = splitOptionList(text);
    items.forEach((item, index) => {
      if (item === "") {
        throw new UsageError(flag, `empty option in '${text}'`);
      }
      const eq = index === 0 && spec.firstIsImplied ? -1 : item.indexOf("=");
      let key: string;
      let value: string;
      if (eq < 0) {
        if (index === 0 && spec.implied) {
          key = spec.implied;
          value = item;
        } else if (words.includes(item)) {
          key = item;
          value = "on";
        } else if (spec.keys.includes(item)) {
          throw new UsageError(flag, `'${item}' needs a value (${item}=...)`);
        } else {
          throw new UsageError(flag, `unknown option '${item}' (valid: ${valid.join(", ")})`);
        }
      } else {
        key = item.slice(0, eq);
        value = item.slice(eq + 1);
        if (!(key === spec.implied || spec.keys.includes(key) || words.includes(key))) {
          throw new UsageError(flag, `unknown option '${key}' (valid: ${valid.join(", ")})`);
        }
        if (value === "") {
          throw new UsageError(flag, `'${key}' has an empty value`);
        }
      }
      if (values.has(key)) {
        throw new UsageError(flag, `'${key}' given twice`);
      }
      values.set(key, value);
    });
    return new Options(flag, values);
  }

  has(key: string): boolean {
    return this.values.has(key);
  }

  /** Reject keys that exist in the spec but do not apply in this case ("path" on a stdio chardev). */
  only(allowed: readonly string[], context: string): void {
    for (const key of this.values.keys()) {
      if (!allowed.includes(key)) {
        throw new UsageError(this.flag, `'${key}' does not apply to ${context}`);
      }
    }
  }

  str(key: string): string | null {
    return this.values.get(key) ?? null;
  }

  /** A required value; `what` describes the option for the error ("-drive needs file=PATH"). */
  need(key: string, hint: string): string {
    const v = this.values.get(key);
    if (v === undefined) {
      throw new UsageError(this.flag, `missing '${key}' (${hint})`);
    }
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.values.get(key);
    if (v === undefined) return fallback;
    const b = parseBool(v);
    if (b === null) {
      throw new UsageError(this.flag, `'${key}' must be on or off, got '${v}'`);
    }
    return b;
  }

  /** An integer option (decimal or 0x hex) in [min, max]. */
  int(key: string, min: number, max: number): number | null {
    const v = this.values.get(key);
    if (v === undefined) return null;
    const n = parseUint(v);
    if (n === null || n < min || n > max) {
      throw new UsageError(this.flag, `'${key}' must be an integer in ${min}..${max}, got '${v}'`);
    }
    return n;
  }

  oneOf<T extends string>(key: string, choices: readonly T[]): T | null {
    const v = this.values.get(key);
    if (v === undefined) return null;
    if (!(choices as readonly string[]).includes(v)) {
      throw new UsageError(this.flag, `'${key}' must be one of ${choices.join(", ")}, got '${v}'`);
    }
    return v as T;
  }
}

/** on/off as StratoVirt's ExBool reads them (also true/false, yes/no). */
export function parseBool(text: string): boolean | null {
  switch (text) {
    case "on":
    case "true":
    case "yes":
      return true;
    case "off":
    case "false":
    case "no":
      return false;
    default:
      return null;
  }
}

/** A non-negative integer written in decimal or 0x hex (as StratoVirt's str_to_usize); null if malformed. */
export function parseUint(text: string): number | null {
  let n: number;
  if (/^0[xX][0-9a-fA-F]+$/.test(text)) {
    n = Number.parseInt(text.slice(2), 16);
  } else if (/^[0-9]+$/.test(text)) {
    n = Number.parseInt(text, 10);
  } else {
    return null;
  }
  return Number.isSafeInteger(n) ? n : null;
}

const SIZE_UNITS: Record<string, number> = { k: KiB, m: MiB, g: GiB, t: TiB };

/**
 * "512" (in `defaultUnit`), "512M", "2g", "1048576K" → bytes. Returns null when malformed or beyond 2^53.
 * Only whole numbers: StratoVirt rejects "1.5G" too.
 */
export function parseSize(text: string, defaultUnit: number): number | null {
  const m = /^([0-9]+)([kKmMgGtT])?$/.exec(text);
  if (!m) return null;
  const unit = m[2] ? SIZE_UNITS[m[2].toLowerCase()]! : defaultUnit;
  // BigInt so that "99999999999999G" is reported as too large rather than rounded.
  const bytes = BigInt(m[1]!) * BigInt(unit);
  return bytes <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(bytes) : null;
}

/** "1536 MiB", "2 GiB", "4 KiB", "1000 bytes": a size for error messages. */
export function formatSize(bytes: number): string {
  for (const [unit, name] of [
    [TiB, "TiB"],
    [GiB, "GiB"],
    [MiB, "MiB"],
    [KiB, "KiB"],
  ] as const) {
    if (bytes >= unit && bytes % unit === 0) return `${bytes / unit} ${name}`;
  }
  return `${bytes} bytes`;
}

/** "0x3", "3", "0x3.0x1", "8.2" → slot/function (StratoVirt: decimal unless 0x, unlike QEMU's hex). */
export function parsePciSlotFunction(text: string): { slot: number; function: number } | null {
  const parts = text.split(".");
  if (parts.length > 2) return null;
  const slot = parseUint(parts[0]!);
  const fn = parts.length === 2 ? parseUint(parts[1]!) : 0;
  if (slot === null || fn === null || slot > 31 || fn > 7) return null;
  return { slot, function: fn };
}

/**
 * A unicast, non-zero MAC "52:54:00:12:34:56" (either case) → lower case, or null.
 * Multicast addresses (low bit of the first octet) cannot be a NIC's own address.
 */
export function normalizeMac(text: string): string | null {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(text)) return null;
  const mac = text.toLowerCase();
  const first = Number.parseInt(mac.slice(0, 2), 16);
  if ((first & 1) !== 0 || mac === "00:00:00:00:00:00") return null;
  return mac;
}

/** Linux sun_path is 108 bytes including the terminating NUL. */
export const UNIX_PATH_MAX = 107;

export function checkUnixPath(flag: string, path: string): string {
  if (path === "") throw new UsageError(flag, "empty unix socket path");
  const len = new TextEncoder().encode(path).length;
  if (len > UNIX_PATH_MAX) {
    throw new UsageError(flag, `unix socket path is ${len} bytes, longer than the ${UNIX_PATH_MAX} Linux allows: '${path}'`);
  }
  return path;
}

/**
 * "HOST:PORT" or "[IPv6]:PORT" → host (brackets removed; "" → "0.0.0.0", as QEMU's "tcp::4444") and port.
 */
export function parseHostPort(flag: string, text: string): { host: string; port: number } {
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0 || text[close + 1] !== ":") {
      throw new UsageError(flag, `invalid address '${text}' (expected [IPv6]:PORT)`);
    }
    host = text.slice(1, close);
    portText = text.slice(close + 2);
    if (!/^[0-9a-fA-F:.]+$/.test(host) || !host.includes(":")) {
      throw new UsageError(flag, `invalid IPv6 address '${host}'`);
    }
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) {
      throw new UsageError(flag, `invalid address '${text}' (expected HOST:PORT)`);
    }
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(":")) {
      throw new UsageError(flag, `invalid address '${text}' (write IPv6 hosts in brackets: [::1]:PORT)`);
    }
    if (host === "") host = "0.0.0.0";
    if (!/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)) {
      throw new UsageError(flag, `invalid host '${host}'`);
    }
  }
  const port = /^[0-9]+$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= 1 && port <= 65535)) {
    throw new UsageError(flag, `invalid port '${portText}' (expected 1..65535)`);
  }
  return { host, port };
}

/** "unix:PATH" or "tcp:HOST:PORT" (QMP and serial socket URIs); null when the scheme is neither. */
export function parseSocketUri(flag: string, uri: string): SocketAddress | null {
  if (uri.startsWith("unix:")) {
    return { transport: "unix", path: checkUnixPath(flag, uri.slice(5)) };
  }
  if (uri.startsWith("tcp:")) {
    return { transport: "tcp", ...parseHostPort(flag, uri.slice(4)) };
  }
  return null;
}

/** QEMU's rule for ids: a letter, then letters, digits, '-', '.', '_' (at most 255 characters, as StratoVirt). */
export function checkId(flag: string, id: string): string {
  if (!/^[A-Za-z][A-Za-z0-9._-]*$/.test(id) || id.length > 255) {
    throw new UsageError(
      flag,
      `invalid id '${id}' (ids start with a letter and contain only letters, digits, '-', '.', '_')`,
    );
  }
  return id;
}

export function socketAddressText(a: SocketAddress): string {
  return a.transport === "unix" ? `unix:${a.path}` : `tcp:${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}
