/**
 * The QMP server over real sockets, against a fake VmController. The client here talks raw bytes as
 * socat would (CRLF-split lines and JSON.parse; nothing shared with the server's parser).
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import { startQmp, type QmpServer, type QmpServerOptions } from "../../src/qmp/server.ts";
import { CommandTable, defineQmpCommand } from "../../src/qmp/commands.ts";
import { registerLifecycleCommands } from "../../src/qmp/lifecycle.ts";
import { QmpError, QmpListenError, QmpSocketInUseError } from "../../src/qmp/errors.ts";
import type { RunState, VcpuInfo, VmController, VmEventListener } from "../../src/qmp/vm-controller.ts";

// ---- a fake VM ---------------------------------------------------------------------------------------

class FakeVm implements VmController {
  name: string | null = "vm1";
  uuid: string | null = null;
  state: RunState = "prelaunch";
  readonly calls: string[] = [];
  /** stop() takes this long to "park the vCPUs". */
  stopDelayMs = 0;
  vcpus: VcpuInfo[] = [
    { cpuIndex: 0, threadId: 4242, socketId: 0, coreId: 0, threadIdInCore: 0 },
    { cpuIndex: 1, threadId: 4243, socketId: 0, coreId: 1, threadIdInCore: 0 },
  ];
  private listener: VmEventListener | undefined;

  emit(event: string, data?: Record<string, unknown>): void {
    this.listener?.(event, data);
  }
  runState(): RunState {
    return this.state;
  }
  async stop(): Promise<void> {
    this.calls.push("stop");
    if (this.stopDelayMs) await Bun.sleep(this.stopDelayMs);
    if (this.state === "running") {
      this.state = "paused";
      this.emit("STOP");
    }
    this.calls.push("stop-done");
  }
  async cont(): Promise<void> {
    this.calls.push("cont");
    if (this.state === "shutdown") throw new QmpError("GenericError", "Resetting the Virtual Machine is required");
    if (this.state !== "running") {
      this.state = "running";
      this.emit("RESUME");
    }
  }
  async systemReset(): Promise<void> {
    this.calls.push("system_reset");
  }
  systemPowerdown(): void {
    this.calls.push("system_powerdown");
  }
  quit(): void {
    this.calls.push("quit");
  }
  cpus(): VcpuInfo[] {
    return this.vcpus;
  }
  onEvent(listener: VmEventListener): void {
    this.listener = listener;
  }
}

// ---- a raw client ------------------------------------------------------------------------------------

type Msg = Record<string, any>;

class Raw {
  raw = "";
  private consumed = 0;
  private waiters: (() => void)[] = [];
  closed = false;
  sock!: Socket<undefined>;

  static async unix(path: string): Promise<Raw> {
    const r = new Raw();
    r.sock = await Bun.connect({ unix: path, socket: r.handlers() });
    return r;
  }

  static async tcp(host: string, port: number): Promise<Raw> {
    const r = new Raw();
    r.sock = await Bun.connect({ hostname: host, port, socket: r.handlers() });
    return r;
  }

  private handlers() {
    return {
      data: (_s: Socket<undefined>, d: Buffer) => {
        this.raw += d.toString("latin1");
        this.wake();
      },
      drain: () => this.drain(),
      close: () => {
        this.closed = true;
        this.wake();
      },
      error: () => {},
    };
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async until(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; received so far: ${JSON.stringify(this.raw)}`);
      await Promise.race([new Promise<void>((r) => this.waiters.push(r)), Bun.sleep(50)]);
    }
  }

  /** The next CRLF-terminated line, parsed. */
  async next(): Promise<Msg> {
    await this.until(() => this.raw.indexOf("\n", this.consumed) >= 0, "a message");
    const nl = this.raw.indexOf("\n", this.consumed);
    const line = this.raw.slice(this.consumed, nl + 1);
    this.consumed = nl + 1;
    expect(line.endsWith("\r\n")).toBe(true);
    return JSON.parse(line);
  }

  /** The next message that is not an event. */
  async reply(): Promise<Msg> {
    for (;;) {
      const m = await this.next();
      if (!("event" in m)) return m;
    }
  }

  private pending: Uint8Array[] = [];

  /** Writes everything, however long, queueing what the socket does not take yet. */
  write(data: string | Uint8Array): void {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    if (this.pending.length > 0) {
      this.pending.push(bytes);
      return;
    }
    const n = this.sock.write(bytes);
    if (n >= 0 && n < bytes.byteLength) this.pending.push(bytes.subarray(n));
  }

  private drain(): void {
    while (this.pending.length > 0) {
      const b = this.pending[0]!;
      const n = this.sock.write(b);
      if (n < 0) return;
      if (n < b.byteLength) {
        this.pending[0] = b.subarray(n);
        return;
      }
      this.pending.shift();
    }
  }

  async cmd(execute: string, args?: unknown, id?: unknown): Promise<Msg> {
    const req: Msg = { execute };
    if (args !== undefined) req.arguments = args;
    if (id !== undefined) req.id = id;
    this.write(JSON.stringify(req) + "\n");
    return this.reply();
  }

  async negotiate(caps?: string[]): Promise<void> {
    expect(Object.keys(await this.next())).toEqual(["QMP"]);
    expect(await this.cmd("qmp_capabilities", caps ? { enable: caps } : undefined)).toEqual({ return: {} });
  }

  async waitClosed(): Promise<void> {
    await this.until(() => this.closed, "the server to close the connection");
  }

  /** Nothing more arrives within ms. */
  async quiet(ms = 100): Promise<void> {
    await Bun.sleep(ms);
    expect(this.raw.slice(this.consumed)).toBe("");
  }

  close(): void {
    this.sock.end();
  }
}

// ---- fixtures ----------------------------------------------------------------------------------------

let dir: string;
let vm: FakeVm;
let servers: QmpServer[];
let clients: Raw[];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-qmp-"));
  vm = new FakeVm();
  servers = [];
  clients = [];
});

afterEach(() => {
  for (const c of clients) if (!c.closed) c.sock.terminate();
  for (const s of servers) s.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Poll `cond` (it changes on the event loop: the fake VM's calls) until it holds. */
async function waitUntil(cond: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(1);
  }
}

async function serve(opts: QmpServerOptions = {}, path = join(dir, "qmp.sock")): Promise<{ server: QmpServer; path: string }> {
  const server = await startQmp([{ transport: "unix", path }], vm, "9.8.7", { checkResults: true, ...opts });
  servers.push(server);
  return { server, path };
}

async function connect(path: string, negotiate = true): Promise<Raw> {
  const c = await Raw.unix(path);
  clients.push(c);
  if (negotiate) await c.negotiate();
  return c;
}

/** Commands only tests need: typed arguments (the transcript's migrate errors), an OOB command. */
function testCommands(): CommandTable {
  const t = registerLifecycleCommands(new CommandTable());
  t.register(
    defineQmpCommand({ name: "migrate", args: { uri: "str", "*blk": "bool" }, run: () => {} }),
    defineQmpCommand({ name: "x-echo", args: { "*value": "any" }, returns: "any", run: ({ value }) => value ?? null }),
    defineQmpCommand({ name: "x-oob-ping", allowOob: true, returns: "str", run: () => "pong" }),
    defineQmpCommand({
      name: "x-fail",
      run: () => {
        throw new Error("the backend fell over");
      },
    }),
  );
  return t;
}

// ---- tests -------------------------------------------------------------------------------------------

describe("greeting and negotiation", () => {
  test("greeting shaped like QEMU 7.2's, CRLF after every message", async () => {
    const { path } = await serve();
    const c = await connect(path, false);
    await c.next();
    expect(c.raw).toBe(
      '{"QMP":{"version":{"qemu":{"micro":0,"minor":2,"major":7},"package":"kiln-9.8.7"},"capabilities":["oob"]}}\r\n',
    );
    c.write('{"execute":"qmp_capabilities"}\n{"execute":"query-status"}\n');
    await c.next();
    await c.next();
    expect(c.raw.split("\r\n").length).toBe(4);
    expect(c.raw.replaceAll("\r\n", "").includes("\n")).toBe(false);
  });

  test("the transcript's negotiation rules", async () => {
    const { path } = await serve();
    const c = await connect(path, false);
    await c.next();
    expect(await c.cmd("query-status")).toEqual({
      error: { class: "CommandNotFound", desc: "Expecting capabilities negotiation with 'qmp_capabilities'" },
    });
    expect(await c.cmd("no-such-command", undefined, 7)).toEqual({
      error: { class: "CommandNotFound", desc: "Expecting capabilities negotiation with 'qmp_capabilities'" },
      id: 7,
    });
    // Input errors are not CommandNotFound, so they keep their text.
    c.write('{"exec": "query-status"}\n');
    expect(await c.reply()).toEqual({ error: { class: "GenericError", desc: "QMP input member 'exec' is unexpected" } });
    expect(await c.cmd("qmp_capabilities", { enable: ["bogus"] })).toEqual({
      error: { class: "GenericError", desc: "Parameter 'null' does not accept value 'bogus'" },
    });
    expect(await c.cmd("qmp_capabilities", { enable: ["oob"] })).toEqual({ return: {} });
    expect(await c.cmd("qmp_capabilities")).toEqual({
      error: { class: "CommandNotFound", desc: "Capabilities negotiation is already complete, command ignored" },
    });
    expect((await c.cmd("query-status")).return).toEqual({ status: "prelaunch", singlestep: false, running: false });
  });

  test("ids of every JSON type are echoed; no id, no id member", async () => {
    const { path } = await serve();
    const c = await connect(path);
    for (const id of ["req-1", 42, -1.5, true, null, [1, "a"], { any: ["json", 1] }]) {
      expect(await c.cmd("query-kvm", undefined, id)).toEqual({ return: { enabled: true, present: true }, id });
    }
    // Exact beyond 2^53, as QEMU keeps 64-bit integers.
    c.write('{"execute":"query-kvm","id":18446744073709551615}\n');
    await c.reply();
    expect(c.raw).toContain('"id":18446744073709551615}\r\n');
    expect(await c.cmd("query-kvm")).toEqual({ return: { enabled: true, present: true } });
    // Errors echo the id too, even when the request is otherwise malformed.
    c.write('{"id": "x", "arguments": {}}\n');
    expect(await c.reply()).toEqual({ error: { class: "GenericError", desc: "QMP input lacks member 'execute'" }, id: "x" });
  });

  test("request shape errors", async () => {
    const { path } = await serve({ commands: testCommands() });
    const c = await connect(path);
    const err = async (text: string) => {
      c.write(text + "\n");
      return (await c.reply()).error;
    };
    expect(await err('{"execute": 1}')).toEqual({ class: "GenericError", desc: "QMP input member 'execute' must be a string" });
    expect(await err('{"execute": "stop", "arguments": []}')).toEqual({
      class: "GenericError",
      desc: "QMP input member 'arguments' must be an object",
    });
    expect(await err("[1, 2]")).toEqual({ class: "GenericError", desc: "QMP input must be a JSON object" });
    expect(await err('"a string"')).toEqual({ class: "GenericError", desc: "QMP input must be a JSON object" });
    expect(await err("42")).toEqual({ class: "GenericError", desc: "QMP input must be a JSON object" });
    expect(await err('{"execute": "no-such-command"}')).toEqual({
      class: "CommandNotFound",
      desc: "The command no-such-command has not been found",
    });
    expect(await err('{"execute": "migrate"}')).toEqual({ class: "GenericError", desc: "Parameter 'uri' is missing" });
    expect(await err('{"execute": "migrate", "arguments": {"uri": 42}}')).toEqual({
      class: "GenericError",
      desc: "Invalid parameter type for 'uri', expected: string",
    });
    expect(await err('{"execute": "migrate", "arguments": {"uri": "unix:/x", "x": 1}}')).toEqual({
      class: "GenericError",
      desc: "Parameter 'x' is unexpected",
    });
    expect(await err('{"execute": "query-status", "arguments": {"verbose": true}}')).toEqual({
      class: "GenericError",
      desc: "Parameter 'verbose' is unexpected",
    });
    // A handler's plain Error becomes a GenericError with its message.
    expect(await err('{"execute": "x-fail"}')).toEqual({ class: "GenericError", desc: "the backend fell over" });
    expect(await c.cmd("x-echo", { value: { a: [1, "b", null] } })).toEqual({ return: { a: [1, "b", null] } });
  });
});

describe("commands", () => {
  test("query-version, query-name, query-uuid, query-kvm", async () => {
    const { path } = await serve();
    const c = await connect(path);
    expect(await c.cmd("query-version")).toEqual({ return: { qemu: { micro: 0, minor: 2, major: 7 }, package: "kiln-9.8.7" } });
    expect(await c.cmd("query-name")).toEqual({ return: { name: "vm1" } });
    vm.name = null;
    expect(await c.cmd("query-name")).toEqual({ return: {} });
    expect(await c.cmd("query-uuid")).toEqual({ return: { UUID: "00000000-0000-0000-0000-000000000000" } });
    vm.uuid = "5b2f1a2e-0000-4000-8000-00000000abcd";
    expect(await c.cmd("query-uuid")).toEqual({ return: { UUID: "5b2f1a2e-0000-4000-8000-00000000abcd" } });
    expect(await c.cmd("query-kvm")).toEqual({ return: { enabled: true, present: true } });
  });

  test("query-commands lists the table", async () => {
    const { path } = await serve({ commands: testCommands() });
    const c = await connect(path);
    const names = ((await c.cmd("query-commands")).return as { name: string }[]).map((x) => x.name);
    for (const n of [
      "qmp_capabilities",
      "query-version",
      "query-commands",
      "query-status",
      "query-name",
      "query-kvm",
      "query-cpus-fast",
      "stop",
      "cont",
      "quit",
      "system_reset",
      "system_powerdown",
      "query-qmp-schema",
      "migrate",
    ]) {
      expect(names).toContain(n);
    }
  });

  test("query-status follows the run state", async () => {
    const { path } = await serve();
    const c = await connect(path);
    for (const [state, running] of [
      ["running", true],
      ["paused", false],
      ["inmigrate", false],
      ["postmigrate", false],
      ["shutdown", false],
    ] as const) {
      vm.state = state;
      expect(await c.cmd("query-status")).toEqual({ return: { status: state, singlestep: false, running } });
    }
  });

  test("query-cpus-fast in QEMU's shape", async () => {
    const { path } = await serve();
    const c = await connect(path);
    expect((await c.cmd("query-cpus-fast")).return).toEqual([
      {
        "cpu-index": 0,
        "qom-path": "/machine/unattached/device[0]",
        "thread-id": 4242,
        props: { "core-id": 0, "thread-id": 0, "socket-id": 0 },
        target: "x86_64",
      },
      {
        "cpu-index": 1,
        "qom-path": "/machine/unattached/device[1]",
        "thread-id": 4243,
        props: { "core-id": 1, "thread-id": 0, "socket-id": 0 },
        target: "x86_64",
      },
    ]);
    vm.vcpus = [{ cpuIndex: 0, threadId: 9, socketId: 1, dieId: 1, coreId: 2, threadIdInCore: 1 }];
    expect((await c.cmd("query-cpus-fast")).return[0].props).toEqual({ "core-id": 2, "thread-id": 1, "die-id": 1, "socket-id": 1 });
  });

  test("stop and cont: events before the reply, no event when nothing changes", async () => {
    const { path } = await serve();
    const c = await connect(path);
    vm.state = "paused";
    c.write('{"execute":"cont"}\n');
    expect((await c.next()).event).toBe("RESUME");
    expect(await c.next()).toEqual({ return: {} });
    c.write('{"execute":"stop"}\n');
    expect((await c.next()).event).toBe("STOP");
    expect(await c.next()).toEqual({ return: {} });
    expect((await c.cmd("query-status")).return.status).toBe("paused");
    // Already paused: still {} and no event.
    c.write('{"execute":"stop"}\n');
    expect(await c.next()).toEqual({ return: {} });
    vm.state = "shutdown";
    expect(await c.cmd("cont")).toEqual({ error: { class: "GenericError", desc: "Resetting the Virtual Machine is required" } });
    expect(vm.calls.filter((x) => x === "cont")).toHaveLength(2);
  });

  test("system_reset and system_powerdown: reply, then the event", async () => {
    const { path } = await serve();
    const c = await connect(path);
    c.write('{"execute":"system_reset","id":1}\n');
    expect(await c.next()).toEqual({ return: {}, id: 1 });
    const reset = await c.next();
    expect(reset.event).toBe("RESET");
    expect(reset.data).toEqual({ guest: false, reason: "host-qmp-system-reset" });
    c.write('{"execute":"system_powerdown"}\n');
    expect(await c.next()).toEqual({ return: {} });
    const pd = await c.next();
    expect(pd.event).toBe("POWERDOWN");
    expect("data" in pd).toBe(false);
    expect(vm.calls).toEqual(["system_reset", "system_powerdown"]);
  });

  test("quit: SHUTDOWN, then the reply, then every connection closes, the socket goes, then vm.quit()", async () => {
    const { server, path } = await serve();
    const c = await connect(path);
    const other = await connect(path);
    c.write('{"execute":"quit","id":"q"}\n');
    const ev = await c.next();
    expect(ev.event).toBe("SHUTDOWN");
    expect(ev.data).toEqual({ guest: false, reason: "host-qmp-quit" });
    expect(await c.next()).toEqual({ return: {}, id: "q" });
    await c.waitClosed();
    expect((await other.next()).event).toBe("SHUTDOWN");
    await other.waitClosed();
    expect(vm.calls).toEqual(["quit"]);
    expect(server.closed).toBe(true);
    expect(existsSync(path)).toBe(false);
  });

  test("query-qmp-schema answers and lists every command", async () => {
    const { path } = await serve({ commands: testCommands() });
    const c = await connect(path);
    const schema = (await c.cmd("query-qmp-schema")).return as { name: string; "meta-type": string }[];
    const commands = schema.filter((e) => e["meta-type"] === "command").map((e) => e.name);
    const listed = ((await c.cmd("query-commands")).return as { name: string }[]).map((x) => x.name);
    expect(commands.sort()).toEqual(listed.sort());
    expect(schema.find((e) => e.name === "x-oob-ping")).toMatchObject({ "allow-oob": true });
    expect(schema.filter((e) => e["meta-type"] === "event").map((e) => e.name)).toEqual(
      expect.arrayContaining(["SHUTDOWN", "RESET", "STOP", "RESUME", "POWERDOWN"]),
    );
  });
});

describe("out-of-band", () => {
  test("exec-oob is unknown until oob is enabled", async () => {
    const { path } = await serve({ commands: testCommands() });
    const c = await connect(path);
    c.write('{"exec-oob":"x-oob-ping","id":1}\n');
    expect(await c.reply()).toEqual({ error: { class: "GenericError", desc: "QMP input member 'exec-oob' is unexpected" }, id: 1 });
  });

  test("with oob: only commands that allow it, and they overtake a slow in-band command", async () => {
    const { path } = await serve({ commands: testCommands() });
    const c = await connect(path, false);
    await c.negotiate(["oob"]);
    c.write('{"exec-oob":"query-status","id":1}\n');
    expect(await c.reply()).toEqual({ error: { class: "GenericError", desc: "The command query-status does not support OOB" }, id: 1 });
    c.write('{"execute":"stop","exec-oob":"x-oob-ping"}\n');
    expect((await c.reply()).error.desc).toBe("QMP input member 'exec-oob' clashes with 'execute'");

    vm.state = "running";
    vm.stopDelayMs = 300;
    c.write('{"execute":"stop","id":"slow"}\n{"exec-oob":"x-oob-ping","id":"oob"}\n');
    expect(await c.next()).toEqual({ return: "pong", id: "oob" });
    expect((await c.next()).event).toBe("STOP");
    expect(await c.next()).toEqual({ return: {}, id: "slow" });
  });
});

describe("events", () => {
  test("QEMU's shape, in order, sane timestamps, only to negotiated clients", async () => {
    const { server, path } = await serve();
    const a = await connect(path);
    const b = await connect(path, false);
    await b.next(); // greeting only
    const before = Date.now() / 1000;
    vm.emit("STOP");
    vm.emit("RESUME");
    server.emit("SHUTDOWN", { guest: true, reason: "guest-shutdown" });
    vm.emit("MIGRATION", { status: "setup" });
    const got = [await a.next(), await a.next(), await a.next(), await a.next()];
    const after = Date.now() / 1000;
    expect(got.map((e) => e.event)).toEqual(["STOP", "RESUME", "SHUTDOWN", "MIGRATION"]);
    expect(Object.keys(got[0]!)).toEqual(["timestamp", "event"]);
    expect(Object.keys(got[2]!)).toEqual(["timestamp", "event", "data"]);
    expect(got[2]!.data).toEqual({ guest: true, reason: "guest-shutdown" });
    let last = 0;
    for (const e of got) {
      const { seconds, microseconds } = e.timestamp;
      expect(Number.isInteger(seconds) && Number.isInteger(microseconds)).toBe(true);
      expect(microseconds >= 0 && microseconds < 1_000_000).toBe(true);
      const t = seconds + microseconds / 1e6;
      expect(t >= before - 0.01 && t <= after + 0.01).toBe(true);
      expect(t >= last).toBe(true);
      last = t;
    }
    await b.quiet();
    b.write('{"execute":"qmp_capabilities"}\n');
    expect(await b.reply()).toEqual({ return: {} });
    vm.emit("STOP");
    expect((await b.next()).event).toBe("STOP");
  });
});

describe("several clients", () => {
  test("each negotiates on its own", async () => {
    const { server, path } = await serve();
    const a = await connect(path);
    const b = await connect(path, false);
    await b.next();
    expect(server.clientCount).toBe(2);
    expect((await a.cmd("query-status")).return.status).toBe("prelaunch");
    expect((await b.cmd("query-status")).error.class).toBe("CommandNotFound");
    expect((await a.cmd("qmp_capabilities")).error.desc).toBe("Capabilities negotiation is already complete, command ignored");
    expect(await b.cmd("qmp_capabilities")).toEqual({ return: {} });
  });

  test("in-band commands run one at a time across clients, replies in request order", async () => {
    const { path } = await serve();
    const a = await connect(path);
    const b = await connect(path);
    vm.state = "running";
    vm.stopDelayMs = 200;
    // a: a slow stop, then a query in the same write; b asks meanwhile.
    a.write('{"execute":"stop","id":1}{"execute":"query-status","id":2}');
    await waitUntil(() => vm.calls.includes("stop"), "a's stop to start");
    b.write('{"execute":"query-status","id":"b"}\n');
    expect((await a.next()).event).toBe("STOP");
    expect(await a.next()).toEqual({ return: {}, id: 1 });
    expect((await a.next()).return.status).toBe("paused");
    // b's query waited for a's stop: the VM never saw them overlap.
    expect(await b.reply()).toEqual({ return: { status: "paused", singlestep: false, running: false }, id: "b" });
  });

  test("a client that disconnects mid-command: its reply is dropped, nothing else notices", async () => {
    const { server, path } = await serve();
    const a = await connect(path);
    const b = await connect(path);
    vm.state = "running";
    vm.stopDelayMs = 150;
    a.write('{"execute":"stop"}\n{"execute":"cont"}\n');
    await waitUntil(() => vm.calls.includes("stop"), "a's stop to start");
    a.sock.terminate();
    expect((await b.next()).event).toBe("STOP");
    // Commands run one at a time in arrival order: b's query is answered only after a's queued
    // cont would have run.
    expect((await b.cmd("query-status")).return.status).toBe("paused");
    // The queued cont of the departed client was dropped, as QEMU drops a closed monitor's queue.
    expect(vm.calls).toEqual(["stop", "stop-done"]);
    expect(server.clientCount).toBe(1);
  });

  test("clients beyond maxClients are turned away", async () => {
    const { path } = await serve({ maxClients: 1 });
    await connect(path);
    const extra = await connect(path, false);
    await extra.waitClosed();
    expect(extra.raw).toBe("");
  });
});

describe("malformed input", () => {
  test("input split across reads, byte by byte", async () => {
    const { path } = await serve();
    const c = await connect(path);
    const text = '{"execute": "query-name", "id": "split"}';
    for (const ch of text) {
      c.write(ch);
      await Bun.sleep(1);
    }
    expect(await c.reply()).toEqual({ return: { name: "vm1" }, id: "split" });
  });

  test("several commands in one write, an object spanning lines", async () => {
    const { path } = await serve();
    const c = await connect(path);
    c.write('{"execute":"query-name","id":1}{"execute":"query-kvm","id":2}\n{\n  "execute":\n  "query-status",\n  "id": 3\n}\n');
    expect((await c.reply()).id).toBe(1);
    expect((await c.reply()).id).toBe(2);
    expect((await c.reply()).id).toBe(3);
  });

  test("garbage, non-objects and bad JSON get errors; the connection stays usable", async () => {
    const { path } = await serve();
    const c = await connect(path);
    c.write("not json at all\n");
    for (const w of ["not", "json", "at", "all"]) {
      expect(await c.reply()).toEqual({ error: { class: "GenericError", desc: `JSON parse error, invalid keyword '${w}'` } });
    }
    // Binary garbage: each resynchronization point may yield another "stray" error.
    c.write(new Uint8Array([0xff, 0x00, 0x80, 0x81, 0x0a]));
    c.write('{"execute":"query-kvm","id":"sync"}\n');
    for (;;) {
      const m = await c.reply();
      if (m.id === "sync") break;
      expect(m.error.class).toBe("GenericError");
      expect(m.error.desc).toStartWith("JSON parse error, stray");
    }
    c.write('{"execute": "query-status",, }\n');
    expect(await c.reply()).toEqual({ error: { class: "GenericError", desc: "JSON parse error, expecting value" } });
    c.write("[1,2]\n");
    expect((await c.reply()).error.desc).toBe("QMP input must be a JSON object");
    // Replies to errors carry no id; the stream then resynchronizes.
    expect(await c.cmd("query-kvm", undefined, "after")).toEqual({ return: { enabled: true, present: true }, id: "after" });
  });

  test("deep nesting is refused without closing", async () => {
    const { path } = await serve();
    const c = await connect(path);
    c.write("[".repeat(1100) + "\n");
    expect(await c.reply()).toEqual({ error: { class: "GenericError", desc: "JSON nesting depth limit exceeded" } });
  });

  test("an endless value: an error, then the connection is closed; others unaffected", async () => {
    const { server, path } = await serve({ maxMessageBytes: 64 * 1024 });
    const other = await connect(path);
    const c = await connect(path);
    c.write('{"execute": "');
    const chunk = "a".repeat(16 * 1024);
    for (let i = 0; i < 8 && !c.closed; i++) {
      c.write(chunk);
      await Bun.sleep(2);
    }
    expect(await c.reply()).toEqual({ error: { class: "GenericError", desc: "JSON token size limit exceeded" } });
    await c.waitClosed();
    expect(server.clientCount).toBe(1);
    expect((await other.cmd("query-status")).return.status).toBe("prelaunch");
  });

  test("the default limit is 1 MiB", async () => {
    const { path } = await serve();
    const c = await connect(path);
    c.write(`{"execute":"x-echo","arguments":{"value":"${"b".repeat(900 * 1024)}"}}\n`);
    expect((await c.reply()).error.desc).toBe("The command x-echo has not been found");
    c.write(`{"execute":"x","arguments":{"value":"${"b".repeat(1100 * 1024)}`);
    expect((await c.reply()).error.desc).toBe("JSON token size limit exceeded");
    await c.waitClosed();
  });

  test("a client that does not read its output is disconnected", async () => {
    const { server, path } = await serve({ maxOutputBytes: 64 * 1024 });
    const slow = await connect(path);
    const ok = await connect(path);
    slow.sock.pause();
    // In batches, so that the reading client keeps up between them.
    for (let batch = 0; batch < 400 && server.clientCount === 2; batch++) {
      for (let i = 0; i < 100; i++) vm.emit("STOP");
      await Bun.sleep(1);
    }
    expect(server.clientCount).toBe(1);
    expect((await ok.cmd("query-kvm")).return.enabled).toBe(true);
  });

  test("a pipeline that half-closes (printf ... | socat) gets every reply, then EOF", async () => {
    const { path } = await serve();
    const c = await connect(path, false);
    vm.state = "running";
    vm.stopDelayMs = 50;
    c.write('{"execute":"qmp_capabilities"}\n{"execute":"stop"}\n{"execute":"query-status"}');
    c.sock.shutdown();
    await c.next();
    expect(await c.next()).toEqual({ return: {} });
    expect((await c.next()).event).toBe("STOP");
    expect(await c.next()).toEqual({ return: {} });
    expect((await c.next()).return.status).toBe("paused");
    await c.waitClosed();
  });
});

describe("listeners", () => {
  test("unix socket: mode 0600, removed on close, close is idempotent", async () => {
    const { server, path } = await serve();
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(path).isSocket()).toBe(true);
    const c = await connect(path);
    server.close();
    server.close();
    await c.waitClosed();
    expect(existsSync(path)).toBe(false);
    expect(server.closed).toBe(true);
  });

  test("the socket file goes on exit paths that skip close(): process.exit, an uncaught error", async () => {
    const script = join(dir, "child.ts");
    const server = JSON.stringify(join(import.meta.dir, "../../src/qmp/server.ts"));
    writeFileSync(
      script,
      `import { startQmp } from ${server};
const vm = { name: null, uuid: null, runState: () => "running", stop: async () => {}, cont: async () => {},
  systemReset: async () => {}, systemPowerdown() {}, quit() {}, cpus: () => [], onEvent() {} };
await startQmp([{ transport: "unix", path: process.argv[2] }], vm, "1");
if (!require("node:fs").statSync(process.argv[2]).isSocket()) process.exit(99);
if (process.argv[3] === "exit") process.exit(3);
setTimeout(() => { throw new Error("boom"); }, 1);
`,
    );
    for (const how of ["exit", "throw"]) {
      const path = join(dir, `${how}.sock`);
      const p = Bun.spawn([process.execPath, script, path, how], { stdout: "ignore", stderr: "ignore" });
      expect(await p.exited).toBe(how === "exit" ? 3 : 1);
      expect(existsSync(path)).toBe(false);
    }
  });

  test("a stale socket from a dead process is replaced", async () => {
    const path = join(dir, "stale.sock");
    const child = Bun.spawn(
      [process.execPath, "-e", `Bun.listen({unix: ${JSON.stringify(path)}, socket: {data() {}}}); console.log("up"); setInterval(() => {}, 1000);`],
      { stdout: "pipe" },
    );
    await child.stdout.getReader().read();
    child.kill("SIGKILL");
    await child.exited;
    expect(statSync(path).isSocket()).toBe(true);
    await serve({}, path);
    const c = await connect(path);
    expect((await c.cmd("query-kvm")).return.present).toBe(true);
  });

  test("a live socket is refused with a clear error, and keeps working", async () => {
    const { path } = await serve();
    const err = await startQmp([{ transport: "unix", path }], vm, "1").then(
      (s) => {
        servers.push(s);
        return null;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(QmpSocketInUseError);
    expect((err as Error).message).toContain("in use by a running process");
    const c = await connect(path);
    expect((await c.cmd("query-kvm")).return.enabled).toBe(true);
  });

  test("a path that is not a socket, a missing directory, a too-long path", async () => {
    const file = join(dir, "file");
    writeFileSync(file, "x");
    await expect(startQmp([{ transport: "unix", path: file }], vm, "1")).rejects.toThrow("exists and is not a socket");
    await expect(startQmp([{ transport: "unix", path: join(dir, "no/such/dir.sock") }], vm, "1")).rejects.toThrow(
      QmpListenError,
    );
    await expect(startQmp([{ transport: "unix", path: join(dir, "x".repeat(120)) }], vm, "1")).rejects.toThrow("longer than 107");
  });

  test("tcp listener; several listeners share one VM and event stream; a failing listener closes the others", async () => {
    const path = join(dir, "a.sock");
    const server = await startQmp(
      [
        { transport: "unix", path },
        { transport: "tcp", host: "127.0.0.1", port: 0 },
      ],
      vm,
      "1",
    );
    servers.push(server);
    const tcp = server.addresses[1]!;
    expect(tcp.transport === "tcp" && tcp.port > 0).toBe(true);
    const t = await Raw.tcp("127.0.0.1", (tcp as { port: number }).port);
    clients.push(t);
    await t.negotiate();
    const u = await connect(path);
    vm.emit("STOP");
    expect((await t.next()).event).toBe("STOP");
    expect((await u.next()).event).toBe("STOP");

    const path2 = join(dir, "b.sock");
    await expect(
      startQmp(
        [
          { transport: "unix", path: path2 },
          { transport: "tcp", host: "127.0.0.1", port: (tcp as { port: number }).port },
        ],
        vm,
        "1",
      ),
    ).rejects.toThrow(/cannot listen for QMP on tcp:127\.0\.0\.1:\d+: address already in use/);
    expect(existsSync(path2)).toBe(false);
  });

  test("after close, events and late replies go nowhere", async () => {
    const { server, path } = await serve();
    const c = await connect(path);
    vm.state = "running";
    vm.stopDelayMs = 100;
    c.write('{"execute":"stop"}\n');
    await waitUntil(() => vm.calls.includes("stop"), "the stop to start");
    server.close();
    vm.emit("RESUME");
    // The stop finishes after the close; its reply has nowhere to go.
    await waitUntil(() => vm.calls.includes("stop-done"), "the stop to finish");
    expect(vm.calls).toEqual(["stop", "stop-done"]);
    await c.waitClosed();
  });
});
