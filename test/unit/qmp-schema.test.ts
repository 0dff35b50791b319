/** QMP argument checking (QEMU's visitor messages), command/event tables, and query-qmp-schema. */
import { describe, expect, test } from "bun:test";
import { parseJson } from "../../src/qmp/json.ts";
import {
  conformance,
  defineEnum,
  defineStruct,
  defineUnion,
  introspect,
  visitArguments,
  type MemberMap,
  type SchemaInfoEntry,
} from "../../src/qmp/schema.ts";
import { CommandTable, EventTable, defineQmpCommand, defineQmpEvent } from "../../src/qmp/commands.ts";
import { QmpError, QmpSchemaError } from "../../src/qmp/errors.ts";
import { registerLifecycleCommands, registerLifecycleEvents } from "../../src/qmp/lifecycle.ts";

const Cap = defineEnum("MigrationCapability", ["xbzrle", "events", "multifd"]);
const CapStatus = defineStruct("MigrationCapabilityStatus", { capability: Cap, state: "bool" });

/** The error message of visiting `json` with `members`, or the visited value. */
function visit(members: MemberMap, json: string): unknown {
  try {
    return visitArguments(members, parseJson(json));
  } catch (e) {
    if (e instanceof QmpError) return `${e.errorClass}: ${e.message}`;
    throw e;
  }
}

describe("argument checking, as QEMU's qobject-input-visitor", () => {
  const migrate = { uri: "str", "*blk": "bool", "*inc": "bool" } as const;

  test("the transcript's migrate errors", () => {
    expect(visit(migrate, "{}")).toBe("GenericError: Parameter 'uri' is missing");
    expect(visit(migrate, '{"uri": 42}')).toBe("GenericError: Invalid parameter type for 'uri', expected: string");
    expect(visit(migrate, '{"uri": "unix:/x", "x": 1}')).toBe("GenericError: Parameter 'x' is unexpected");
    expect(visit(migrate, '{"uri": "unix:/x", "blk": true}')).toEqual({ uri: "unix:/x", blk: true });
  });

  test("nested names: struct members in lists", () => {
    const m = { capabilities: [CapStatus] } as const;
    expect(visit(m, '{"capabilities": [{"capability": "multifd", "state": true}]}')).toEqual({
      capabilities: [{ capability: "multifd", state: true }],
    });
    // The transcript: enum errors name the bare member, not its path.
    expect(visit(m, '{"capabilities": [{"capability": "bogus", "state": true}]}')).toBe(
      "GenericError: Parameter 'capability' does not accept value 'bogus'",
    );
    expect(visit(m, '{"capabilities": [{"capability": "events", "state": 1}]}')).toBe(
      "GenericError: Invalid parameter type for 'capabilities[0].state', expected: boolean",
    );
    expect(visit(m, '{"capabilities": [{"capability": "events", "state": true}, {"capability": "events"}]}')).toBe(
      "GenericError: Parameter 'capabilities[1].state' is missing",
    );
    expect(visit(m, '{"capabilities": [{"capability": "events", "state": true, "z": 0}]}')).toBe(
      "GenericError: Parameter 'capabilities[0].z' is unexpected",
    );
    expect(visit(m, '{"capabilities": {}}')).toBe("GenericError: Invalid parameter type for 'capabilities', expected: array");
    expect(visit(m, '{"capabilities": [1]}')).toBe("GenericError: Invalid parameter type for 'capabilities[0]', expected: object");
    // Enum list elements have no name.
    expect(visit({ "*enable": [Cap] } as const, '{"enable": ["nope"]}')).toBe("GenericError: Parameter 'null' does not accept value 'nope'");
  });

  test("integers: type, 64-bit range, sized ranges, unsigned wrap", () => {
    const m = { "*i": "int", "*u": "uint64", "*s": "size", "*b": "uint8", "*w": "int32", "*n": "number" } as const;
    expect(visit(m, '{"i": 1.0}')).toBe("GenericError: Invalid parameter type for 'i', expected: integer");
    expect(visit(m, '{"i": "1"}')).toBe("GenericError: Invalid parameter type for 'i', expected: integer");
    expect(visit(m, '{"i": 9223372036854775808}')).toBe("GenericError: Invalid parameter type for 'i', expected: integer");
    expect(visit(m, '{"i": -9223372036854775808}')).toEqual({ i: -9223372036854775808 });
    expect(visit(m, '{"u": 18446744073709551615, "s": 0}')).toEqual({ u: 18446744073709551615, s: 0 });
    expect(visit(m, '{"u": 1.5}')).toBe("GenericError: Parameter 'u' expects uint64");
    expect(visit(m, '{"u": -1}')).toEqual({ u: 18446744073709551615 });
    expect(visit(m, '{"b": 256}')).toBe("GenericError: Parameter 'b' expects uint8_t");
    expect(visit(m, '{"w": 2147483648}')).toBe("GenericError: Parameter 'w' expects int32_t");
    expect(visit(m, '{"n": 3, "w": -5}')).toEqual({ n: 3, w: -5 });
    expect(visit(m, '{"n": 0.5}')).toEqual({ n: 0.5 });
    expect(visit(m, '{"n": true}')).toBe("GenericError: Invalid parameter type for 'n', expected: number");
  });

  test("other builtins; null is not absence", () => {
    const m = { "*s": "str", "*b": "bool", "*z": "null", "*a": "any" } as const;
    expect(visit(m, '{"s": null}')).toBe("GenericError: Invalid parameter type for 's', expected: string");
    expect(visit(m, '{"b": "true"}')).toBe("GenericError: Invalid parameter type for 'b', expected: boolean");
    expect(visit(m, '{"z": 0}')).toBe("GenericError: Invalid parameter type for 'z', expected: null");
    expect(visit(m, '{"z": null, "a": {"x": [1, "y"]}}')).toEqual({ z: null, a: { x: [1, "y"] } });
  });

  test("members are checked in schema order, unexpected ones last", () => {
    expect(visit({ a: "str", b: "str" }, '{"zz": 1, "b": 2}')).toBe("GenericError: Parameter 'a' is missing");
    expect(visit({ a: "str" }, '{"zz": 1, "a": 2}')).toBe("GenericError: Invalid parameter type for 'a', expected: string");
  });

  test("flat unions: base, then the variant the discriminator selects", () => {
    const Kind = defineEnum("Kind", ["tcp", "unix"]);
    const U = defineUnion("Addr", { type: Kind, "*tag": "str" }, "type", {
      tcp: defineStruct("TcpAddr", { host: "str", port: "uint16" }),
      unix: defineStruct("UnixAddr", { path: "str" }),
    });
    const m = { addr: U } as const;
    expect(visit(m, '{"addr": {"type": "unix", "path": "/x"}}')).toEqual({ addr: { type: "unix", path: "/x" } });
    expect(visit(m, '{"addr": {"type": "tcp", "host": "h"}}')).toBe("GenericError: Parameter 'addr.port' is missing");
    expect(visit(m, '{"addr": {"type": "unix", "path": "/x", "host": "h"}}')).toBe(
      "GenericError: Parameter 'addr.host' is unexpected",
    );
    expect(visit(m, '{"addr": {"type": "udp"}}')).toBe("GenericError: Parameter 'type' does not accept value 'udp'");
  });
});

describe("definitions", () => {
  test("bad definitions are refused", () => {
    expect(() => defineEnum("E", [])).toThrow(QmpSchemaError);
    expect(() => defineEnum("E", ["a", "a"])).toThrow(QmpSchemaError);
    expect(() => defineStruct("S", { a: "str", "*a": "int" })).toThrow(QmpSchemaError);
    expect(() => defineQmpCommand({ name: "Bad Name", run: () => {} })).toThrow(QmpSchemaError);
    expect(() => defineQmpEvent({ name: "lower" })).toThrow(QmpSchemaError);
    const c = defineQmpCommand({ name: "x-one", run: () => {} });
    expect(() => new CommandTable().register(c, c)).toThrow("already registered");
    const e = defineQmpEvent({ name: "X_ONE" });
    expect(() => new EventTable().register(e, e)).toThrow("already registered");
  });

  test("handlers get typed, checked arguments", async () => {
    const cmd = defineQmpCommand({
      name: "x-typed",
      args: { uri: "str", "*n": "int" },
      returns: "int",
      // Compile-time: uri is a string, n an optional number; the result must be a number.
      run: ({ uri, n }) => uri.length + (n ?? 0),
    });
    const args = visitArguments(cmd.args, parseJson('{"uri": "abc", "n": 2}'));
    expect(await cmd.run(args, undefined as never)).toBe(5);
  });

  test("result conformance (the server's self-check)", () => {
    expect(conformance(CapStatus, { capability: "events", state: true })).toBeNull();
    expect(conformance(CapStatus, { capability: "nope", state: true })).toBe("value.capability: not a MigrationCapability value");
    expect(conformance(CapStatus, { capability: "events" })).toBe("value.state: missing");
    expect(conformance(CapStatus, { capability: "events", state: true, extra: 1 })).toBe("value.extra: not in the schema");
    expect(conformance(["int"], [1, 2n, 3])).toBeNull();
    expect(conformance(["int"], [1.5])).toBe("value[0]: expected an integer");
  });
});

describe("query-qmp-schema", () => {
  const commands = registerLifecycleCommands(new CommandTable());
  commands.register(
    defineQmpCommand({
      name: "migrate-set-capabilities",
      args: { capabilities: [CapStatus] },
      run: () => {},
    }),
    defineQmpCommand({ name: "x-oob", allowOob: true, returns: ["str"], run: () => [] }),
  );
  const events = registerLifecycleEvents(new EventTable());
  const schema = introspect(commands.list(), events.list());
  const byName = new Map<string, SchemaInfoEntry>(schema.map((e) => [e.name, e]));
  const get = (name: string) => {
    const e = byName.get(name);
    if (!e) throw new Error(`no schema entry '${name}'`);
    return e;
  };

  test("every command and event has an entry; names are unique", () => {
    for (const c of commands.list()) expect(get(c.name)["meta-type"]).toBe("command");
    for (const e of events.list()) expect(get(e.name)["meta-type"]).toBe("event");
    expect(byName.size).toBe(schema.length);
  });

  test("every type reference resolves", () => {
    const refs: string[] = [];
    for (const e of schema) {
      for (const k of ["arg-type", "ret-type", "element-type"]) if (typeof e[k] === "string") refs.push(e[k] as string);
      if (e["meta-type"] === "object") {
        for (const m of e.members as { type: string }[]) refs.push(m.type);
        for (const v of (e.variants as { type: string }[] | undefined) ?? []) refs.push(v.type);
      }
    }
    for (const r of refs) expect(byName.has(r)).toBe(true);
  });

  test("QEMU's shapes: empty object 0, masked names, builtins, optional members", () => {
    expect(get("0")).toEqual({ name: "0", "meta-type": "object", members: [] });
    expect(get("stop")).toEqual({ name: "stop", "meta-type": "command", "arg-type": "0", "ret-type": "0" });
    expect(get("x-oob")["allow-oob"]).toBe(true);
    expect(get("str")).toEqual({ name: "str", "meta-type": "builtin", "json-type": "string" });
    expect(get("bool")["json-type"]).toBe("boolean");

    const status = get(get("query-status")["ret-type"] as string);
    expect(status.name).toMatch(/^\d+$/);
    expect(status.members).toEqual([
      { name: "running", type: "bool" },
      { name: "singlestep", type: "bool" },
      { name: "status", type: expect.stringMatching(/^\d+$/) },
    ]);
    const runState = get((status.members as { type: string }[])[2]!.type);
    expect(runState["meta-type"]).toBe("enum");
    expect(runState.values).toContain("running");
    expect(runState.members).toContainEqual({ name: "postmigrate" });

    const caps = get(get("qmp_capabilities")["arg-type"] as string);
    expect(caps.members).toEqual([{ name: "enable", default: null, type: expect.stringMatching(/^\[\d+\]$/) }]);

    const msc = get(get("migrate-set-capabilities")["arg-type"] as string);
    const arr = get((msc.members as { type: string }[])[0]!.type);
    expect(arr["meta-type"]).toBe("array");
    expect(get(arr["element-type"] as string).members).toEqual([
      { name: "capability", type: expect.any(String) },
      { name: "state", type: "bool" },
    ]);

    const shutdown = get(get("SHUTDOWN")["arg-type"] as string);
    expect(shutdown.members).toEqual([
      { name: "guest", type: "bool" },
      { name: "reason", type: expect.any(String) },
    ]);
    expect(get("STOP")["arg-type"]).toBe("0");
  });

  test("query-qmp-schema describes SchemaInfo itself as a flat union", () => {
    const ret = get(get("query-qmp-schema")["ret-type"] as string);
    const info = get(ret["element-type"] as string);
    expect(info.tag).toBe("meta-type");
    const variants = info.variants as { case: string; type: string }[];
    expect(variants.map((v) => v.case)).toEqual(["builtin", "enum", "array", "object", "alternate", "command", "event"]);
    const command = get(variants.find((v) => v.case === "command")!.type);
    expect((command.members as { name: string }[]).map((m) => m.name)).toEqual(["arg-type", "ret-type", "allow-oob"]);
    // And the output conforms to that description.
    const lifecycle = commands.get("query-qmp-schema")!;
    expect(conformance(lifecycle.returns!, schema)).toBeNull();
  });
});
