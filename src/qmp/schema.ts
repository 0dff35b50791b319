/**
 * QAPI-style type descriptions for QMP commands and events. One description drives three things:
 * argument checking (with the messages of QEMU's qobject-input-visitor), the TypeScript types of a
 * handler's arguments and result, and `query-qmp-schema` (QEMU's SchemaInfo list).
 *
 * Types are written as in QAPI's JSON: a builtin name ("str", "int", "bool", ...), `[T]` for an array,
 * or an enum/struct/union made with defineEnum/defineStruct/defineUnion. Struct members named "*x" are
 * optional (QAPI's spelling).
 */
import { INT64_MAX, INT64_MIN, toPlain, type QObject } from "./json.ts";
import { QmpError, QmpSchemaError } from "./errors.ts";

export const INT_TYPES = ["int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "size"] as const;
export type IntTypeName = (typeof INT_TYPES)[number];
export type BuiltinName = IntTypeName | "str" | "number" | "bool" | "null" | "any";

export interface EnumType<V extends string = string> {
  readonly kind: "enum";
  readonly name: string;
  readonly values: readonly V[];
}

export interface StructType<M extends MemberMap = MemberMap> {
  readonly kind: "struct";
  readonly name: string;
  readonly members: M;
}

/** A QAPI flat union: base members, one of which (an enum) selects extra members. */
export interface UnionType<B extends MemberMap = MemberMap> {
  readonly kind: "union";
  readonly name: string;
  readonly base: B;
  readonly discriminator: string;
  /** Extra members per discriminator value; values without an entry add nothing. */
  readonly variants: Readonly<Record<string, StructType>>;
}

export type QType = BuiltinName | EnumType | StructType | UnionType | readonly [QType];

export interface MemberMap {
  readonly [member: string]: QType;
}

// ---------------------------------------------------------------------------------------------------
// TypeScript types from descriptions.

type Simplify<T> = { [K in keyof T]: T[K] } & {};

export type Infer<T> = T extends "str"
  ? string
  : T extends "bool"
    ? boolean
    : T extends "null"
      ? null
      : T extends "any"
        ? unknown
        : T extends IntTypeName | "number"
          ? number
          : T extends EnumType<infer V>
            ? V
            : T extends StructType<infer M>
              ? InferMembers<M>
              : T extends UnionType<infer B>
                ? InferMembers<B> & Record<string, unknown>
                : T extends readonly [infer E]
                  ? Infer<E>[]
                  : never;

export type InferMembers<M> = Simplify<
  { -readonly [K in keyof M as K extends `*${string}` ? never : K]: Infer<M[K]> } & {
    -readonly [K in keyof M as K extends `*${infer N}` ? N : never]?: Infer<M[K]>;
  }
>;

// ---------------------------------------------------------------------------------------------------
// Constructors.

export function defineEnum<const V extends string>(name: string, values: readonly V[]): EnumType<V> {
  if (values.length === 0) throw new QmpSchemaError(`enum ${name} has no values`);
  if (new Set(values).size !== values.length) throw new QmpSchemaError(`enum ${name} repeats a value`);
  return { kind: "enum", name, values };
}

export function defineStruct<const M extends MemberMap>(name: string, members: M): StructType<M> {
  checkMembers(name, members);
  return { kind: "struct", name, members };
}

export function defineUnion<const B extends MemberMap>(
  name: string,
  base: B,
  discriminator: keyof B & string,
  variants: Readonly<Record<string, StructType>>,
): UnionType<B> {
  checkMembers(name, base);
  const tag = base[discriminator];
  if (tag === undefined || typeof tag !== "object" || !("kind" in tag) || tag.kind !== "enum") {
    throw new QmpSchemaError(`union ${name}: discriminator '${discriminator}' must be a required enum member`);
  }
  for (const c of Object.keys(variants)) {
    if (!tag.values.includes(c)) throw new QmpSchemaError(`union ${name}: '${c}' is not a value of ${tag.name}`);
  }
  return { kind: "union", name, base, discriminator, variants };
}

export function checkMembers(owner: string, members: MemberMap): void {
  const seen = new Set<string>();
  for (const key of Object.keys(members)) {
    const name = memberName(key);
    if (name === "" || seen.has(name)) throw new QmpSchemaError(`${owner}: bad or repeated member '${key}'`);
    seen.add(name);
  }
}

const memberName = (key: string) => (key.startsWith("*") ? key.slice(1) : key);

// ---------------------------------------------------------------------------------------------------
// Argument checking: QEMU's qobject-input-visitor, message for message. `full` is the member's path
// ("a.b", "list[0].x"); `name` is its bare name (null for list elements), which some messages use.

const fail = (msg: string): never => {
  throw QmpError.generic(msg);
};
const badType = (full: string, expected: string): never => fail(`Invalid parameter type for '${full}', expected: ${expected}`);

const SIGNED: Partial<Record<IntTypeName, [bigint, bigint, string]>> = {
  int8: [-128n, 127n, "int8_t"],
  int16: [-32768n, 32767n, "int16_t"],
  int32: [-2147483648n, 2147483647n, "int32_t"],
};
const UNSIGNED: Partial<Record<IntTypeName, [bigint, string]>> = {
  uint8: [255n, "uint8_t"],
  uint16: [65535n, "uint16_t"],
  uint32: [4294967295n, "uint32_t"],
};

/** Check a command's `arguments` object against its members; returns plain JS values. */
export function visitArguments(members: MemberMap, args: QObject): Record<string, unknown> {
  if (args.t !== "dict") return badType("<anonymous>", "object");
  return visitMembers([members], args.v, "");
}

function visitMembers(groups: readonly MemberMap[], dict: ReadonlyMap<string, QObject>, prefix: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const seen = new Set<string>();
  for (const members of groups) visitGroup(members, dict, prefix, out, seen);
  for (const key of dict.keys()) {
    if (!seen.has(key)) fail(`Parameter '${join(prefix, key)}' is unexpected`);
  }
  return out;
}

function visitGroup(
  members: MemberMap,
  dict: ReadonlyMap<string, QObject>,
  prefix: string,
  out: Record<string, unknown>,
  seen: Set<string>,
): void {
  for (const [key, type] of Object.entries(members)) {
    const name = memberName(key);
    const full = join(prefix, name);
    const v = dict.get(name);
    if (v === undefined) {
      if (key.startsWith("*")) continue;
      fail(`Parameter '${full}' is missing`);
    }
    seen.add(name);
    out[name] = visitValue(type, v!, full, name);
  }
}

const join = (prefix: string, name: string) => (prefix ? `${prefix}.${name}` : name);

function visitValue(type: QType, v: QObject, full: string, name: string | null): unknown {
  if (typeof type === "string") return visitBuiltin(type, v, full, name);
  if (isArrayType(type)) {
    if (v.t !== "list") return badType(full, "array");
    return v.v.map((e, i) => visitValue(type[0], e, `${full}[${i}]`, null));
  }
  switch (type.kind) {
    case "enum":
      if (v.t !== "str") return badType(full, "string");
      if (!type.values.includes(v.v)) fail(`Parameter '${name ?? "null"}' does not accept value '${v.v}'`);
      return v.v;
    case "struct":
      if (v.t !== "dict") return badType(full, "object");
      return visitMembers([type.members], v.v, full);
    case "union": {
      if (v.t !== "dict") return badType(full, "object");
      // The base first (it includes the discriminator), then the selected variant, then leftovers.
      const out: Record<string, unknown> = {};
      const seen = new Set<string>();
      visitGroup(type.base, v.v, full, out, seen);
      const variant = type.variants[out[type.discriminator] as string];
      if (variant) visitGroup(variant.members, v.v, full, out, seen);
      for (const key of v.v.keys()) if (!seen.has(key)) fail(`Parameter '${join(full, key)}' is unexpected`);
      return out;
    }
  }
}

function visitBuiltin(type: BuiltinName, v: QObject, full: string, name: string | null): unknown {
  switch (type) {
    case "str":
      return v.t === "str" ? v.v : badType(full, "string");
    case "bool":
      return v.t === "bool" ? v.v : badType(full, "boolean");
    case "null":
      return v.t === "null" ? null : badType(full, "null");
    case "number":
      return v.t === "int" ? Number(v.v) : v.t === "float" ? v.v : badType(full, "number");
    case "any":
      return toPlain(v);
    case "int":
    case "int64":
    case "int8":
    case "int16":
    case "int32": {
      if (v.t !== "int" || v.v < INT64_MIN || v.v > INT64_MAX) return badType(full, "integer");
      const range = SIGNED[type];
      if (range && (v.v < range[0] || v.v > range[1])) fail(`Parameter '${name ?? "null"}' expects ${range[2]}`);
      return Number(v.v);
    }
    case "uint64":
    case "size":
    case "uint8":
    case "uint16":
    case "uint32": {
      // Negative values are accepted and wrap, "for backward compatibility" (QEMU does the same).
      if (v.t !== "int") fail(`Parameter '${full}' expects uint64`);
      const u = BigInt.asUintN(64, (v as { v: bigint }).v);
      const range = UNSIGNED[type];
      if (range && u > range[0]) fail(`Parameter '${name ?? "null"}' expects ${range[1]}`);
      return Number(u);
    }
  }
}

export function isArrayType(t: QType): t is readonly [QType] {
  return Array.isArray(t);
}

// ---------------------------------------------------------------------------------------------------
// Conformance of plain values (a handler's result, an event's data) to a description. Used as a
// self-check in tests; returns a description of the first mismatch, or null.

export function conformance(type: QType, value: unknown, path = "value"): string | null {
  if (typeof type === "string") {
    switch (type) {
      case "str":
        return typeof value === "string" ? null : `${path}: expected a string`;
      case "bool":
        return typeof value === "boolean" ? null : `${path}: expected a boolean`;
      case "null":
        return value === null ? null : `${path}: expected null`;
      case "any":
        return value === undefined ? `${path}: missing` : null;
      case "number":
        return typeof value === "number" || typeof value === "bigint" ? null : `${path}: expected a number`;
      default: {
        const ok = (typeof value === "number" && Number.isInteger(value)) || typeof value === "bigint";
        return ok ? null : `${path}: expected an integer`;
      }
    }
  }
  if (isArrayType(type)) {
    if (!Array.isArray(value)) return `${path}: expected an array`;
    for (let i = 0; i < value.length; i++) {
      const e = conformance(type[0], value[i], `${path}[${i}]`);
      if (e) return e;
    }
    return null;
  }
  switch (type.kind) {
    case "enum":
      return typeof value === "string" && type.values.includes(value) ? null : `${path}: not a ${type.name} value`;
    case "struct":
      return conformsMembers([type.members], value, path);
    case "union": {
      const groups: MemberMap[] = [type.base];
      const tag = (value as Record<string, unknown> | null)?.[type.discriminator];
      const variant = typeof tag === "string" ? type.variants[tag] : undefined;
      if (variant) groups.push(variant.members);
      return conformsMembers(groups, value, path);
    }
  }
}

function conformsMembers(groups: readonly MemberMap[], value: unknown, path: string): string | null {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return `${path}: expected an object`;
  const obj = value as Record<string, unknown>;
  const known = new Set<string>();
  for (const members of groups) {
    for (const [key, t] of Object.entries(members)) {
      const name = memberName(key);
      known.add(name);
      if (obj[name] === undefined) {
        if (key.startsWith("*")) continue;
        return `${path}.${name}: missing`;
      }
      const e = conformance(t, obj[name], `${path}.${name}`);
      if (e) return e;
    }
  }
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && !known.has(k)) return `${path}.${k}: not in the schema`;
  return null;
}

// ---------------------------------------------------------------------------------------------------
// Introspection: QEMU's SchemaInfo list (qapi/introspect.json), with type names masked to numbers as
// QEMU does ("0" is the empty object used by argument-less commands and events).

export interface SchemaCommand {
  readonly name: string;
  readonly args: MemberMap;
  readonly returns: QType | undefined;
  readonly allowOob: boolean;
}

export interface SchemaEvent {
  readonly name: string;
  readonly data: MemberMap | undefined;
}

const JSON_TYPES: Record<string, string> = { str: "string", int: "int", number: "number", bool: "boolean", null: "null", any: "value" };

export type SchemaMetaTypeName = "builtin" | "enum" | "array" | "object" | "alternate" | "command" | "event";

/** One SchemaInfo object of query-qmp-schema. */
export interface SchemaInfoEntry {
  name: string;
  "meta-type": SchemaMetaTypeName;
  [member: string]: unknown;
}

type Entry = SchemaInfoEntry;
type EntryBody = Omit<Entry, "name">;

class Introspector {
  private readonly names = new Map<object, string>();
  private readonly builtins = new Set<string>();
  private readonly arrays = new Set<string>();
  readonly types: Entry[] = [{ name: "0", "meta-type": "object", members: [] }];
  private next = 1;

  /** An anonymous members object (a command's arguments, an event's data). */
  members(m: MemberMap | undefined): string {
    if (!m || Object.keys(m).length === 0) return "0";
    return this.named(m, () => ({ "meta-type": "object", members: this.objectMembers(m) }));
  }

  use(t: QType | undefined): string {
    if (t === undefined) return "0";
    if (typeof t === "string") {
      const name = (INT_TYPES as readonly string[]).includes(t) ? "int" : t;
      if (!this.builtins.has(name)) {
        this.builtins.add(name);
        this.types.push({ name, "meta-type": "builtin", "json-type": JSON_TYPES[name] });
      }
      return name;
    }
    if (isArrayType(t)) {
      const element = this.use(t[0]);
      const name = `[${element}]`;
      if (!this.arrays.has(name)) {
        this.arrays.add(name);
        this.types.push({ name, "meta-type": "array", "element-type": element });
      }
      return name;
    }
    switch (t.kind) {
      case "enum":
        return this.named(t, () => ({
          "meta-type": "enum",
          members: t.values.map((v) => ({ name: v })),
          values: [...t.values],
        }));
      case "struct":
        return this.named(t, () => ({ "meta-type": "object", members: this.objectMembers(t.members) }));
      case "union":
        return this.named(t, () => {
          const tag = t.base[t.discriminator] as EnumType;
          return {
            "meta-type": "object",
            members: this.objectMembers(t.base),
            tag: t.discriminator,
            variants: tag.values.map((c) => ({ case: c, type: t.variants[c] ? this.use(t.variants[c]) : "0" })),
          };
        });
    }
  }

  /** Name first, then build: recursive types refer to themselves by name. */
  private named(key: object, build: () => EntryBody): string {
    const known = this.names.get(key);
    if (known) return known;
    const name = String(this.next++);
    this.names.set(key, name);
    const entry: Entry = { name, "meta-type": "object" };
    this.types.push(entry);
    Object.assign(entry, build());
    return name;
  }

  private objectMembers(m: MemberMap): Record<string, unknown>[] {
    return Object.entries(m).map(([key, t]) =>
      key.startsWith("*") ? { name: key.slice(1), default: null, type: this.use(t) } : { name: key, type: this.use(t) },
    );
  }
}

/** The `query-qmp-schema` result for these commands and events. */
export function introspect(commands: readonly SchemaCommand[], events: readonly SchemaEvent[]): Entry[] {
  const ins = new Introspector();
  const entities: Entry[] = [];
  for (const c of commands) {
    const e: Entry = { name: c.name, "meta-type": "command", "arg-type": ins.members(c.args), "ret-type": ins.use(c.returns) };
    if (c.allowOob) e["allow-oob"] = true;
    entities.push(e);
  }
  for (const ev of events) entities.push({ name: ev.name, "meta-type": "event", "arg-type": ins.members(ev.data) });
  return [...entities, ...ins.types];
}
