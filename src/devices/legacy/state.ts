/**
 * Validation helpers for the legacy device models' `restore`. A migration stream is untrusted, so
 * every field is checked for type and range and a PersistError names the first bad one. Models
 * validate everything before assigning anything, so a rejected restore leaves the device untouched.
 */
import { PersistError } from "../../persist/persist.ts";

export type StateRecord = Record<string, unknown>;

export function checkVersion(component: string, version: number, expected: number): void {
  if (version !== expected) {
    throw new PersistError(component, `unsupported state version ${String(version)} (expected ${expected})`);
  }
}

export function asRecord(component: string, state: unknown): StateRecord {
  if (typeof state !== "object" || state === null || Array.isArray(state)) {
    throw new PersistError(component, "state is not an object");
  }
  return state as StateRecord;
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.length > 32 ? `${value.slice(0, 32)}...` : value);
  if (typeof value === "object" && value !== null) return Array.isArray(value) ? "an array" : "an object";
  return String(value);
}

export function readInt(component: string, obj: StateRecord, field: string, min: number, max: number): number {
  const v = obj[field];
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new PersistError(component, `field "${field}": expected an integer in [${min}, ${max}], got ${describe(v)}`);
  }
  return v;
}

/** An integer with only the bits in `mask` set (register images). */
export function readBits(component: string, obj: StateRecord, field: string, mask: number): number {
  const v = readInt(component, obj, field, 0, 0xffff_ffff);
  if ((v & ~mask) >>> 0 !== 0) {
    throw new PersistError(component, `field "${field}": 0x${v.toString(16)} has bits outside mask 0x${mask.toString(16)}`);
  }
  return v;
}

export function readFinite(component: string, obj: StateRecord, field: string, maxAbs: number): number {
  const v = obj[field];
  if (typeof v !== "number" || !Number.isFinite(v) || Math.abs(v) > maxAbs) {
    throw new PersistError(component, `field "${field}": expected a finite number with magnitude <= ${maxAbs}, got ${describe(v)}`);
  }
  return v;
}

export function readBool(component: string, obj: StateRecord, field: string): boolean {
  const v = obj[field];
  if (typeof v !== "boolean") throw new PersistError(component, `field "${field}": expected a boolean, got ${describe(v)}`);
  return v;
}

/** A byte blob stored as a JSON number array (used for small buffers). */
export function readByteArray(
  component: string,
  obj: StateRecord,
  field: string,
  minLen: number,
  maxLen: number,
): Uint8Array {
  const v = obj[field];
  if (!Array.isArray(v)) throw new PersistError(component, `field "${field}": expected an array of bytes, got ${describe(v)}`);
  if (v.length < minLen || v.length > maxLen) {
    throw new PersistError(component, `field "${field}": length ${v.length} outside [${minLen}, ${maxLen}]`);
  }
  const out = new Uint8Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const b: unknown = v[i];
    if (typeof b !== "number" || !Number.isInteger(b) || b < 0 || b > 0xff) {
      throw new PersistError(component, `field "${field}"[${i}]: expected a byte, got ${describe(b)}`);
    }
    out[i] = b;
  }
  return out;
}

// Canonical (padded, no whitespace) standard base64 only: Buffer's decoder silently skips junk.
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A byte blob stored as a base64 string (used for buffers up to tens of KiB). */
export function readBase64(component: string, obj: StateRecord, field: string, maxLen: number): Uint8Array {
  const v = obj[field];
  if (typeof v !== "string") throw new PersistError(component, `field "${field}": expected a base64 string, got ${describe(v)}`);
  if (v.length > Math.ceil(maxLen / 3) * 4) {
    throw new PersistError(component, `field "${field}": longer than ${maxLen} bytes`);
  }
  if (!BASE64_RE.test(v)) throw new PersistError(component, `field "${field}": not canonical base64`);
  const bytes = new Uint8Array(Buffer.from(v, "base64"));
  if (bytes.length > maxLen) throw new PersistError(component, `field "${field}": longer than ${maxLen} bytes`);
  return bytes;
}

export function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}
