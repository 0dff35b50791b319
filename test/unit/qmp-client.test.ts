/** `kiln qmp SOCKET COMMAND [JSON-ARGS] [--events]`, spawned as a user would run it, against the server. */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { startQmp, type QmpServer } from "../../src/qmp/server.ts";
import { CommandTable, defineQmpCommand } from "../../src/qmp/commands.ts";
import { registerLifecycleCommands } from "../../src/qmp/lifecycle.ts";
import { parseClientArgs, parseSocket } from "../../src/qmp/client.ts";
import { QmpUsageError } from "../../src/qmp/errors.ts";
import type { RunState, VmController, VmEventListener } from "../../src/qmp/vm-controller.ts";

const CLIENT = resolve(import.meta.dir, "../../src/qmp/client-main.ts");

class FakeVm implements VmController {
  name = "client-test";
  uuid = null;
  state: RunState = "running";
  listener: VmEventListener | undefined;
  runState = () => this.state;
  async stop() {
    if (this.state === "running") {
      this.state = "paused";
      this.listener?.("STOP");
    }
  }
  async cont() {
    if (this.state !== "running") {
      this.state = "running";
      this.listener?.("RESUME");
    }
  }
  async systemReset() {}
  systemPowerdown() {}
  quit() {}
  cpus = () => [];
  onEvent(l: VmEventListener) {
    this.listener = l;
  }
}

let dir: string;
let vm: FakeVm;
let server: QmpServer;
let sock: string;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-qmp-client-"));
  vm = new FakeVm();
  sock = join(dir, "qmp.sock");
  const commands = registerLifecycleCommands(new CommandTable()).register(
    defineQmpCommand({ name: "x-echo", args: { "*value": "any" }, returns: "any", run: ({ value }) => value ?? null }),
    defineQmpCommand({ name: "x-big", returns: "uint64", run: () => 18446744073709551615n as unknown as number }),
  );
  server = await startQmp(
    [
      { transport: "unix", path: sock },
      { transport: "tcp", host: "127.0.0.1", port: 0 },
    ],
    vm,
    "0.0.1",
    { commands },
  );
});

afterEach(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function kilnQmp(...args: string[]): Promise<Run> {
  const p = Bun.spawn([process.execPath, CLIENT, ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

describe("one command", () => {
  test("success: the return value on one line (not a TTY), exit 0", async () => {
    expect(await kilnQmp(sock, "query-status")).toEqual({
      code: 0,
      stdout: '{"status":"running","singlestep":false,"running":true}\n',
      stderr: "",
    });
    expect(await kilnQmp(sock, "stop")).toEqual({ code: 0, stdout: "{}\n", stderr: "" });
    expect(vm.state).toBe("paused");
  });

  test("quit: the reply arrives before the server closes", async () => {
    expect(await kilnQmp(sock, "quit")).toEqual({ code: 0, stdout: "{}\n", stderr: "" });
    expect(server.closed).toBe(true);
  });

  test("JSON-ARGS are passed verbatim (64-bit integers stay exact)", async () => {
    const r = await kilnQmp(sock, "x-echo", '{"value": {"n": 18446744073709551615, "s": "é", "l": [1, null]}}');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('{"n":18446744073709551615,"s":"\\u00E9","l":[1,null]}\n');
    expect((await kilnQmp(sock, "x-big")).stdout).toBe("18446744073709551615\n");
  });

  test("tcp:HOST:PORT and unix:PATH sockets", async () => {
    const tcp = server.addresses[1] as { host: string; port: number };
    expect((await kilnQmp(`tcp:127.0.0.1:${tcp.port}`, "query-name")).stdout).toBe('{"name":"client-test"}\n');
    expect((await kilnQmp(`unix:${sock}`, "query-kvm")).stdout).toBe('{"enabled":true,"present":true}\n');
  });

  test("an error reply: 'Class: desc' on stderr, exit 1", async () => {
    expect(await kilnQmp(sock, "no-such-command")).toEqual({
      code: 1,
      stdout: "",
      stderr: "CommandNotFound: The command no-such-command has not been found\n",
    });
    expect(await kilnQmp(sock, "x-echo", '{"bogus": 1}')).toEqual({
      code: 1,
      stdout: "",
      stderr: "GenericError: Parameter 'bogus' is unexpected\n",
    });
  });

  test("no server: a clear message, exit 1", async () => {
    const r = await kilnQmp(join(dir, "nobody.sock"), "query-status");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("kiln qmp: cannot connect to");
    expect(r.stderr).toContain("nobody.sock");
    const tcp = await kilnQmp("tcp:127.0.0.1:1", "query-status");
    expect(tcp.code).toBe(1);
    expect(tcp.stderr).toContain("connection refused");
  });

  test("bad command lines: exit 2", async () => {
    for (const args of [
      [sock, "x-echo", "{not json"],
      [sock, "x-echo", "[1, 2]"],
      [sock],
      [],
      [sock, "query-status", "{}", "extra"],
      [sock, "query-status", "--frobnicate"],
      ["tcp:host-without-port", "query-status"],
    ]) {
      const r = await kilnQmp(...args);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain("kiln qmp:");
      expect(r.stdout).toBe("");
    }
  });

  test("--help: usage on stdout, exit 0", async () => {
    const r = await kilnQmp("--help");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("SOCKET");
    expect(r.stdout).toContain("--events");
  });
});

describe("--events", () => {
  /**
   * Spawn with --events; once it prints (probe events prove it is negotiated, and `first` lines
   * are in), let `act` cause events; once `total` lines are in, interrupt it. Probe lines are left
   * out of stdout.
   */
  async function withEvents(args: string[], first: number, act: () => Promise<void> | void, total: number): Promise<Run> {
    const p = Bun.spawn([process.execPath, CLIENT, ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    const stderr = new Response(p.stderr).text();
    const reader = p.stdout.getReader();
    let out = "";
    const lines = () => out.split("\n").filter((l) => l && !l.includes("X_PROBE"));
    const readUntil = async (enough: () => boolean) => {
      while (!enough()) {
        const { value, done } = await reader.read();
        if (done) break;
        out += new TextDecoder().decode(value);
      }
    };
    const probe = setInterval(() => server.emit("X_PROBE"), 20);
    try {
      await readUntil(() => out.includes("X_PROBE") && lines().length >= first);
    } finally {
      clearInterval(probe);
    }
    await act();
    // Complete lines only: a line is printed whole, but may arrive in pieces.
    await readUntil(() => out.endsWith("\n") && lines().length >= total);
    p.kill("SIGINT");
    const code = await p.exited;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    return { code, stdout: lines().join("\n") + "\n", stderr: await stderr };
  }

  test("without a COMMAND: one JSON line per event until interrupted, exit 0", async () => {
    const r = await withEvents([sock, "--events"], 0, () => {
      vm.listener?.("STOP");
      server.emit("RESET", { guest: true, reason: "guest-reset" });
    }, 2);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
    expect(lines.map((e) => e.event)).toEqual(["STOP", "RESET"]);
    expect(lines[1].data).toEqual({ guest: true, reason: "guest-reset" });
    expect(typeof lines[0].timestamp.seconds).toBe("number");
  });

  test("with a COMMAND: its reply, then the events", async () => {
    const r = await withEvents([sock, "stop", "--events"], 2, () => {
      vm.listener?.("RESUME");
    }, 3);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n").map((l) => JSON.parse(l));
    // stop's own STOP event comes before its reply.
    expect(lines).toEqual([
      { timestamp: expect.any(Object), event: "STOP" },
      {},
      { timestamp: expect.any(Object), event: "RESUME" },
    ]);
  });

  test("the server going away ends the stream with exit 0", async () => {
    const p = Bun.spawn([process.execPath, CLIENT, sock, "--events"], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    // Close once it is negotiated and printing events (a probe event came out).
    const reader = p.stdout.getReader();
    const probe = setInterval(() => server.emit("X_PROBE"), 20);
    try {
      let out = "";
      while (!out.includes("X_PROBE")) {
        const { value, done } = await reader.read();
        if (done) break;
        out += new TextDecoder().decode(value);
      }
    } finally {
      clearInterval(probe);
    }
    server.close();
    expect(await p.exited).toBe(0);
  });
});

describe("argument parsing", () => {
  test("sockets", () => {
    expect(parseSocket("/run/kiln/qmp.sock")).toEqual({ transport: "unix", path: "/run/kiln/qmp.sock" });
    expect(parseSocket("unix:rel.sock")).toEqual({ transport: "unix", path: "rel.sock" });
    expect(parseSocket("tcp:localhost:4444")).toEqual({ transport: "tcp", host: "localhost", port: 4444 });
    expect(parseSocket("tcp:[::1]:4444")).toEqual({ transport: "tcp", host: "::1", port: 4444 });
    expect(() => parseSocket("tcp:h:0")).toThrow(QmpUsageError);
    expect(() => parseSocket("tcp:h")).toThrow(QmpUsageError);
  });

  test("options", () => {
    expect(parseClientArgs(["s", "migrate", '{"uri":"tcp:h:1"}'])).toMatchObject({
      command: "migrate",
      argsText: '{"uri":"tcp:h:1"}',
      events: false,
    });
    expect(parseClientArgs(["--events", "s"])).toMatchObject({ command: null, events: true });
    expect(parseClientArgs(["-h"])).toBe("help");
    expect(() => parseClientArgs(["s"])).toThrow("nothing to do");
  });
});
