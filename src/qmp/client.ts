/**
 * `kiln qmp SOCKET [COMMAND [JSON-ARGS]] [--events]`: a one-shot QMP client for scripts and humans.
 *
 * Connects, reads the greeting, negotiates, sends COMMAND once and prints its `return` (indented on a
 * terminal, one line otherwise). Exit status: 0 on success; 1 when the command fails (the error goes
 * to stderr as "Class: desc") or the server cannot be reached; 2 on a bad command line. `--events`
 * prints every event as one JSON line, after the reply if a COMMAND was given, until interrupted or the
 * server goes away.
 */
import { parseArgs, renderUsage, type ArgsDef } from "citty";
import type { SocketAddress } from "../cli/config.ts";
import { QmpClientError, QmpUsageError } from "./errors.ts";
import { JsonStreamer, encodeJson, parseJson, quoteString, toPlain, type QObject } from "./json.ts";

const GREETING_TIMEOUT_MS = 10_000;
const REQUEST_ID = "kiln-qmp";

const ARGS = {
  socket: { type: "positional", description: "The QMP socket: a unix socket path, unix:PATH or tcp:HOST:PORT", required: true },
  command: { type: "positional", description: "The QMP command to run, e.g. query-status", required: false },
  arguments: { type: "positional", description: "Its arguments as one JSON object, e.g. '{\"uri\":\"tcp:host:4444\"}'", required: false },
  events: { type: "boolean", description: "Print events (one JSON line each) until interrupted" },
  help: { type: "boolean", alias: "h", description: "Show this help" },
} as const satisfies ArgsDef;

const COMMAND_META = { name: "kiln qmp", description: "Send one QMP command to a running kiln (or QEMU) and print the reply" };

/** Run `kiln qmp` with the arguments after "qmp"; resolves to the exit status. */
export async function runQmpClient(argv: string[]): Promise<number> {
  let opts: ClientOptions;
  try {
    const o = parseClientArgs(argv);
    if (o === "help") {
      await writeOut((await renderUsage({ meta: COMMAND_META, args: ARGS })) + "\n");
      return 0;
    }
    opts = o;
  } catch (e) {
    if (e instanceof QmpUsageError) {
      process.stderr.write(`kiln qmp: ${e.message}\nUsage: kiln qmp SOCKET [COMMAND [JSON-ARGS]] [--events] (kiln qmp --help)\n`);
      return 2;
    }
    throw e;
  }
  try {
    return await session(opts);
  } catch (e) {
    if (e instanceof QmpClientError) {
      process.stderr.write(`kiln qmp: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

interface ClientOptions {
  address: SocketAddress;
  socketText: string;
  command: string | null;
  /** The JSON-ARGS text, sent verbatim (so 64-bit integers stay exact). */
  argsText: string | null;
  events: boolean;
}

export function parseClientArgs(argv: string[]): ClientOptions | "help" {
  if (argv.includes("--help") || argv.includes("-h")) return "help";
  let parsed: Record<string, unknown> & { _: string[] };
  try {
    parsed = parseArgs(argv, ARGS) as typeof parsed;
  } catch (e) {
    throw new QmpUsageError((e as Error).message);
  }
  const known = new Set(["_", "socket", "command", "arguments", "events", "help", "h"]);
  for (const key of Object.keys(parsed)) if (!known.has(key)) throw new QmpUsageError(`unknown option --${key}`);
  if (parsed._.length > 3) throw new QmpUsageError(`unexpected argument '${parsed._[3]}'`);
  const socketText = String(parsed.socket);
  const command = typeof parsed.command === "string" ? parsed.command : null;
  const argsText = typeof parsed.arguments === "string" ? parsed.arguments : null;
  const events = parsed.events === true;
  if (command === null && !events) throw new QmpUsageError("nothing to do: give a COMMAND, --events, or both");
  if (argsText !== null) {
    let v: QObject;
    try {
      v = parseJson(argsText);
    } catch (e) {
      throw new QmpUsageError(`JSON-ARGS is not valid JSON: ${(e as Error).message}`);
    }
    if (v.t !== "dict") throw new QmpUsageError("JSON-ARGS must be a JSON object, e.g. '{\"uri\":\"unix:/tmp/mig.sock\"}'");
  }
  return { address: parseSocket(socketText), socketText, command, argsText, events };
}

/** A unix path (or unix:PATH), or tcp:HOST:PORT / tcp:[IPv6]:PORT. */
export function parseSocket(text: string): SocketAddress {
  if (text.startsWith("tcp:")) {
    const m = /^tcp:(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
    const port = m ? Number(m[3]) : NaN;
    if (!m || !(port >= 1 && port <= 65535)) throw new QmpUsageError(`bad socket '${text}' (expected tcp:HOST:PORT)`);
    return { transport: "tcp", host: m[1] ?? m[2]!, port };
  }
  const path = text.startsWith("unix:") ? text.slice(5) : text;
  if (path === "") throw new QmpUsageError("empty socket path");
  return { transport: "unix", path };
}

async function session(o: ClientOptions): Promise<number> {
  const conn = await Connection.open(o.address, o.socketText);
  try {
    const greeting = await conn.next(GREETING_TIMEOUT_MS);
    if (!greeting || greeting.t !== "dict" || !greeting.v.has("QMP")) {
      throw new QmpClientError(`${o.socketText} did not greet like a QMP server`);
    }
    conn.send('{"execute":"qmp_capabilities"}');
    for (;;) {
      const m = await conn.next();
      if (!m) throw new QmpClientError(`${o.socketText} closed the connection during capabilities negotiation`);
      if (m.t !== "dict") continue;
      const err = errorOf(m);
      if (err) throw new QmpClientError(`capabilities negotiation failed: ${err}`);
      if (m.v.has("return")) break;
    }

    if (o.command !== null) {
      const args = o.argsText === null ? "" : `,"arguments":${o.argsText}`;
      conn.send(`{"execute":${quoteString(o.command)}${args},"id":${quoteString(REQUEST_ID)}}`);
      for (;;) {
        const m = await conn.next();
        if (!m) throw new QmpClientError(`${o.socketText} closed the connection before replying to ${o.command}`);
        if (m.t !== "dict") continue;
        if (m.v.has("event")) {
          if (o.events) await writeOut(encodeJson(toPlain(m)) + "\n");
          continue;
        }
        const id = m.v.get("id");
        if (!id || id.t !== "str" || id.v !== REQUEST_ID) continue;
        const err = errorOf(m);
        if (err) {
          process.stderr.write(err + "\n");
          return 1;
        }
        const ret = m.v.get("return");
        await writeOut(encodeJson(ret ? toPlain(ret) : {}, process.stdout.isTTY ? 2 : 0) + "\n");
        break;
      }
    }

    if (o.events) {
      const stop = new Promise<null>((resolve) => {
        const onSignal = () => resolve(null);
        process.once("SIGINT", onSignal);
        process.once("SIGTERM", onSignal);
      });
      for (;;) {
        const m = await Promise.race([conn.next(), stop]);
        if (!m) break;
        if (m.t === "dict" && m.v.has("event")) await writeOut(encodeJson(toPlain(m)) + "\n");
      }
    }
    return 0;
  } finally {
    conn.close();
  }
}

/** "Class: desc" for an error reply, null otherwise. */
function errorOf(m: QObject): string | null {
  if (m.t !== "dict") return null;
  const e = m.v.get("error");
  if (!e || e.t !== "dict") return null;
  const cls = e.v.get("class");
  const desc = e.v.get("desc");
  return `${cls?.t === "str" ? cls.v : "Error"}: ${desc?.t === "str" ? desc.v : encodeJson(toPlain(e))}`;
}

/** stdout writes complete before we return (the caller exits the process right after). */
function writeOut(text: string): Promise<void> {
  return new Promise((resolve, reject) => process.stdout.write(text, (e) => (e ? reject(e) : resolve())));
}

/** One QMP connection: messages in arrival order, null at end of stream. */
class Connection {
  private readonly inbox: (QObject | null)[] = [];
  private waiter: ((m: QObject | null) => void) | null = null;
  private ended = false;
  private sock: import("bun").Socket<undefined> | null = null;

  private constructor(private readonly label: string) {}

  static async open(a: SocketAddress, label: string): Promise<Connection> {
    const c = new Connection(label);
    const streamer = new JsonStreamer((m) => {
      if (m.ok) c.deliver(m.value);
      else if (m.fatal) c.finish();
    });
    const socket = {
      data: (_s: unknown, d: Buffer) => streamer.feed(new Uint8Array(d.buffer, d.byteOffset, d.byteLength)),
      end: () => {
        streamer.flush();
        c.finish();
      },
      close: () => c.finish(),
      error: () => c.finish(),
      connectError: () => {},
    };
    try {
      c.sock =
        a.transport === "unix"
          ? await Bun.connect({ unix: a.path, socket })
          : await Bun.connect({ hostname: a.host, port: a.port, socket });
    } catch (e) {
      throw new QmpClientError(`cannot connect to ${label}: ${connectErrorText(e)}`);
    }
    return c;
  }

  private deliver(m: QObject | null): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(m);
    } else {
      this.inbox.push(m);
    }
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.deliver(null);
  }

  /** The next message, or null once the connection is closed. */
  next(timeoutMs?: number): Promise<QObject | null> {
    if (this.inbox.length > 0) {
      const m = this.inbox.shift()!;
      if (m === null) this.inbox.unshift(null); // stay at end of stream
      return Promise.resolve(m);
    }
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      let timer: Timer | undefined;
      this.waiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.waiter = null;
          reject(new QmpClientError(`${this.label}: no answer within ${timeoutMs / 1000} s`));
        }, timeoutMs);
      }
    });
  }

  send(text: string): void {
    this.sock?.write(text + "\r\n");
  }

  close(): void {
    this.sock?.end();
    this.sock = null;
  }
}

function connectErrorText(e: unknown): string {
  switch ((e as { code?: string }).code) {
    case "ENOENT":
      return "no such socket (is kiln running with -qmp ...,server,nowait?)";
    case "ECONNREFUSED":
      return "connection refused (nothing is listening there)";
    case "EACCES":
    case "EPERM":
      return "permission denied";
    default:
      return (e as Error).message ?? String(e);
  }
}
