/**
 * kiln's QMP server: QEMU 7.2's monitor protocol on unix and TCP listeners (-qmp ...,server,nowait).
 *
 * Each connection is a session with its own capabilities negotiation. Input is split into messages by
 * a streaming JSON parser (json.ts); in-band requests go to one dispatcher shared by all sessions that
 * runs them one at a time, taking sessions round-robin, as QEMU's monitor dispatcher does. So replies
 * to a client come in request order, and the VM never sees two lifecycle commands at once. Events go to
 * every negotiated session as they happen. A session that misbehaves (garbage, an endless value, not
 * reading its replies) gets errors or is disconnected without disturbing the VM or other sessions.
 */
import { chmodSync, lstatSync, statSync, unlinkSync } from "node:fs";
import { getSystemErrorMessage } from "node:util";
import type { Socket, SocketHandler, SocketListener } from "bun";
import type { SocketAddress } from "../cli/config.ts";
import { removeStaleSocket } from "../chardev/chardev.ts";
import { log } from "../util/log.ts";
import {
  CommandTable,
  EventTable,
  type CommandContext,
  type QmpCapability,
  type QmpServerView,
  type QmpSessionView,
  type QmpVersionInfo,
} from "./commands.ts";
import { QmpError, QmpListenError, QmpSocketInUseError } from "./errors.ts";
import { JsonStreamer, encodeJson, toPlain, type QObject, type StreamMessage } from "./json.ts";
import { negotiationCommands, registerLifecycleCommands, registerLifecycleEvents } from "./lifecycle.ts";
import { conformance, visitArguments } from "./schema.ts";
import type { VmController } from "./vm-controller.ts";

/** The QEMU release kiln's QMP poses as (clients such as libvirt gate features on it). */
export const QEMU_COMPAT_VERSION = { major: 7, minor: 2, micro: 0 } as const;

export interface QmpServerOptions {
  /** The commands after negotiation; default: the lifecycle commands (lifecycle.ts). */
  commands?: CommandTable;
  /** The events query-qmp-schema describes; default: the lifecycle events. */
  events?: EventTable;
  /** An incomplete JSON value larger than this gets an error and the connection is closed. */
  maxMessageBytes?: number;
  /** Unsent output beyond this (a client that does not read) disconnects the client. */
  maxOutputBytes?: number;
  /** Sessions beyond this many are refused. */
  maxClients?: number;
  /** Check every command result and event against its schema (tests): a mismatch is an error. */
  checkResults?: boolean;
  qemuVersion?: { major: number; minor: number; micro: number };
}

export interface QmpServer extends QmpServerView {
  /** Where it listens; TCP port 0 is resolved to the port actually bound. */
  readonly addresses: readonly SocketAddress[];
  readonly closed: boolean;
  /** Connected sessions. */
  readonly clientCount: number;
  /**
   * Stop listening, end every session (pending output is flushed as far as the socket takes it now)
   * and remove the unix socket files. Idempotent and synchronous, so it can run on any exit path.
   */
  close(): void;
}

const CRLF = "\r\n";
/** QEMU's QMP_REQ_QUEUE_LEN_MAX: a session with this many queued requests stops being read. */
const QUEUE_MAX = 8;
/** A session we ended is cut if the peer has not closed its side by then. */
const END_GRACE_MS = 3000;
const EMPTY_ARGS: QObject = { t: "dict", v: new Map() };
const textEncoder = new TextEncoder();

/**
 * Start listening on every address. Unix sockets are created mode 0600; a stale socket file (its
 * process is gone) is replaced, a live one is refused (QmpSocketInUseError). Throws QmpListenError
 * if any listener cannot be set up (the others are closed again).
 */
export async function startQmp(
  addresses: readonly SocketAddress[],
  vm: VmController,
  version: string,
  options: QmpServerOptions = {},
): Promise<QmpServer> {
  const server = new Server(vm, version, options);
  try {
    for (const a of addresses) await server.listen(a);
  } catch (e) {
    server.close();
    throw e;
  }
  vm.onEvent((event, data) => server.emit(event, data));
  return server;
}

interface Listener {
  address: SocketAddress;
  listener: SocketListener<Session | undefined>;
  /** Identity of the socket file we created, so we never remove someone else's. */
  file: { path: string; dev: number; ino: number } | null;
}

type Item = StreamMessage;

class Server implements QmpServer {
  readonly commands: CommandTable;
  readonly events: EventTable;
  readonly versionInfo: QmpVersionInfo;
  readonly capabilities: readonly QmpCapability[] = ["oob"];
  private readonly negotiation = negotiationCommands();
  private readonly listeners: Listener[] = [];
  private readonly sessions = new Set<Session>();
  private nextSessionId = 1;
  /** Sessions with queued in-band requests, served round-robin. */
  private readonly runQueue: Session[] = [];
  private dispatching = false;
  private lastEventUs = 0;
  private closedFlag = false;
  private quitting = false;
  private readonly greeting: string;
  private readonly exitHook = () => this.removeSocketFiles();
  readonly maxMessageBytes: number;
  readonly maxOutputBytes: number;
  private readonly maxClients: number;
  private readonly checkResults: boolean;

  constructor(
    readonly vm: VmController,
    version: string,
    options: QmpServerOptions,
  ) {
    this.commands = options.commands ?? registerLifecycleCommands(new CommandTable());
    this.events = options.events ?? registerLifecycleEvents(new EventTable());
    const q = options.qemuVersion ?? QEMU_COMPAT_VERSION;
    // Key order as QEMU prints it.
    this.versionInfo = { qemu: { micro: q.micro, minor: q.minor, major: q.major }, package: `kiln-${version}` };
    this.maxMessageBytes = options.maxMessageBytes ?? 1024 * 1024;
    this.maxOutputBytes = options.maxOutputBytes ?? 16 * 1024 * 1024;
    this.maxClients = options.maxClients ?? 64;
    this.checkResults = options.checkResults ?? false;
    this.greeting = encodeJson({ QMP: { version: this.versionInfo, capabilities: this.capabilities } }) + CRLF;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  get clientCount(): number {
    return this.sessions.size;
  }

  get addresses(): SocketAddress[] {
    return this.listeners.map((l) => l.address);
  }

  // ---- listeners ------------------------------------------------------------------------------------

  private handlers(): SocketHandler<Session | undefined> {
    return {
      open: (s) => this.accept(s),
      data: (s, d: Buffer) => s.data?.onData(new Uint8Array(d.buffer, d.byteOffset, d.byteLength)),
      drain: (s) => s.data?.onDrain(),
      end: (s) => s.data?.onEnd(),
      close: (s) => s.data?.onClose(),
      error: (s, e) => log.debug(`qmp: client ${s.data?.id ?? "?"}: ${e.message}`),
    };
  }

  async listen(a: SocketAddress): Promise<void> {
    if (a.transport === "tcp") {
      let l: SocketListener<Session | undefined> & { port: number };
      try {
        l = Bun.listen<Session | undefined>({ hostname: a.host, port: a.port, allowHalfOpen: true, socket: this.handlers() });
      } catch (e) {
        throw new QmpListenError(`cannot listen for QMP on ${addressText(a)}: ${errnoText(e)}`);
      }
      this.listeners.push({ address: { transport: "tcp", host: a.host, port: l.port }, listener: l, file: null });
      log.debug(`qmp: listening on ${addressText({ ...a, port: l.port })}`);
      return;
    }
    const path = a.path;
    if (Buffer.byteLength(path) > 107) {
      throw new QmpListenError(`cannot listen for QMP on unix:${path}: the path is longer than 107 bytes`);
    }
    await clearStaleSocket(path);
    // Created 0600 from the start (no window where others could connect), and chmod'ed to be sure.
    const umask = process.umask(0o177);
    let l: SocketListener<Session | undefined>;
    try {
      l = Bun.listen<Session | undefined>({ unix: path, allowHalfOpen: true, socket: this.handlers() });
    } catch (e) {
      throw new QmpListenError(`cannot listen for QMP on unix:${path}: ${errnoText(e)}`);
    } finally {
      process.umask(umask);
    }
    chmodSync(path, 0o600);
    const st = statSync(path);
    if (this.listeners.every((x) => x.file === null)) process.on("exit", this.exitHook);
    this.listeners.push({ address: { transport: "unix", path }, listener: l, file: { path, dev: st.dev, ino: st.ino } });
    log.debug(`qmp: listening on unix:${path}`);
  }

  private accept(socket: Socket<Session | undefined>): void {
    if (this.closedFlag || this.sessions.size >= this.maxClients) {
      log.warn(`qmp: refusing a client (${this.closedFlag ? "shutting down" : `${this.maxClients} already connected`})`);
      socket.end();
      return;
    }
    const s = new Session(this, socket, this.nextSessionId++);
    socket.data = s;
    this.sessions.add(s);
    log.debug(`qmp: client ${s.id} connected`);
    s.writeText(this.greeting);
  }

  forget(s: Session): void {
    this.sessions.delete(s);
    const i = this.runQueue.indexOf(s);
    if (i >= 0) this.runQueue.splice(i, 1);
  }

  // ---- dispatch ---------------------------------------------------------------------------------------

  schedule(s: Session): void {
    if (!this.runQueue.includes(s)) this.runQueue.push(s);
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.dispatching) return;
    this.dispatching = true;
    try {
      while (!this.closedFlag) {
        const s = this.runQueue.shift();
        if (!s) break;
        const item = s.queue.shift();
        if (!item) continue;
        if (s.queue.length > 0) this.runQueue.push(s);
        s.busy = true;
        try {
          await s.process(item);
        } catch (e) {
          log.error(`qmp: client ${s.id}: ${(e as Error).stack ?? e}`);
        } finally {
          s.busy = false;
        }
        s.afterItem();
      }
    } finally {
      this.dispatching = false;
    }
  }

  /** Run one request (QEMU's qmp_dispatch); returns the reply and what to do once it is written. */
  async execute(session: Session, req: QObject): Promise<{ reply: Record<string, unknown>; after: (() => void)[] }> {
    const after: (() => void)[] = [];
    let id: QObject | undefined;
    let reply: Record<string, unknown>;
    try {
      if (req.t !== "dict") throw QmpError.generic("QMP input must be a JSON object");
      id = req.v.get("id");
      const { name, oob } = checkRequest(req.v, session.oobEnabled);
      const cmd = (session.negotiated ? this.commands : this.negotiation).get(name);
      if (!cmd) throw new QmpError("CommandNotFound", `The command ${name} has not been found`);
      if (oob && !cmd.allowOob) throw QmpError.generic(`The command ${name} does not support OOB`);
      const args = visitArguments(cmd.args, req.v.get("arguments") ?? EMPTY_ARGS);
      log.debug(`qmp: client ${session.id}: ${name}`);
      const ctx: CommandContext = { vm: this.vm, session, server: this, afterReply: (fn) => after.push(fn) };
      const ret = await cmd.run(args, ctx);
      if (this.checkResults && cmd.returns !== undefined) {
        const bad = conformance(cmd.returns, ret, "return");
        if (bad) throw QmpError.generic(`internal error: ${name} result does not match its schema: ${bad}`);
      }
      reply = { return: ret === undefined ? {} : ret };
    } catch (e) {
      after.length = 0;
      let err: QmpError;
      if (e instanceof QmpError) {
        err = e;
      } else {
        log.warn(`qmp: client ${session.id}: command failed: ${(e as Error).message ?? e}`);
        err = QmpError.generic((e as Error).message ?? String(e));
      }
      // Before negotiation QEMU answers every unknown command this way (monitor_qmp_dispatch).
      const desc =
        !session.negotiated && err.errorClass === "CommandNotFound"
          ? "Expecting capabilities negotiation with 'qmp_capabilities'"
          : err.message;
      reply = { error: { class: err.errorClass, desc } };
    }
    if (id !== undefined) reply.id = toPlain(id);
    return { reply, after };
  }

  // ---- events -----------------------------------------------------------------------------------------

  emit(event: string, data?: Record<string, unknown>): void {
    if (this.closedFlag) return;
    const def = this.events.get(event);
    if (!def) log.debug(`qmp: event ${event} is not in the schema`);
    else if (this.checkResults) {
      const bad = def.data
        ? conformance({ kind: "struct", name: event, members: def.data }, data ?? {}, "data")
        : data !== undefined && Object.keys(data).length > 0
          ? "data: the event has no data"
          : null;
      if (bad) log.error(`qmp: event ${event} does not match its schema: ${bad}`);
    }
    const msg = data === undefined ? { timestamp: this.timestamp(), event } : { timestamp: this.timestamp(), event, data };
    const text = encodeJson(msg) + CRLF;
    for (const s of this.sessions) if (s.negotiated) s.writeText(text);
  }

  /** Wall-clock time as QEMU stamps events, never going backwards between events. */
  private timestamp(): { seconds: number; microseconds: number } {
    let us = Date.now() * 1000 + Math.floor((performance.now() % 1) * 1000);
    if (us < this.lastEventUs) us = this.lastEventUs;
    this.lastEventUs = us;
    return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
  }

  // ---- shutdown ---------------------------------------------------------------------------------------

  quit(): void {
    if (this.quitting) return;
    this.quitting = true;
    this.close();
    try {
      this.vm.quit();
    } catch (e) {
      log.error(`qmp: quit: ${(e as Error).message}`);
    }
  }

  close(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.runQueue.length = 0;
    for (const s of [...this.sessions]) s.shutdown();
    for (const l of this.listeners) {
      try {
        l.listener.stop(true);
      } catch (e) {
        log.debug(`qmp: stopping ${addressText(l.address)}: ${(e as Error).message}`);
      }
    }
    this.removeSocketFiles();
    process.off("exit", this.exitHook);
  }

  /** Remove our socket files (and only ours: a later kiln may own the path by now). */
  private removeSocketFiles(): void {
    for (const l of this.listeners) {
      if (!l.file) continue;
      try {
        const st = lstatSync(l.file.path);
        if (st.dev === l.file.dev && st.ino === l.file.ino) unlinkSync(l.file.path);
      } catch {
        // already gone
      }
      l.file = null;
    }
  }
}

/** QEMU's qmp_dispatch_check_obj: the request's members, in input order. */
function checkRequest(dict: ReadonlyMap<string, QObject>, allowOob: boolean): { name: string; oob: boolean } {
  let execKey: string | null = null;
  let name = "";
  for (const [key, v] of dict) {
    if (key === "execute" || (key === "exec-oob" && allowOob)) {
      if (v.t !== "str") throw QmpError.generic(`QMP input member '${key}' must be a string`);
      if (execKey !== null) throw QmpError.generic(`QMP input member '${key}' clashes with '${execKey}'`);
      execKey = key;
      name = v.v;
    } else if (key === "arguments") {
      if (v.t !== "dict") throw QmpError.generic("QMP input member 'arguments' must be an object");
    } else if (key !== "id") {
      throw QmpError.generic(`QMP input member '${key}' is unexpected`);
    }
  }
  if (execKey === null) throw QmpError.generic("QMP input lacks member 'execute'");
  return { name, oob: execKey === "exec-oob" };
}

const isOobRequest = (v: QObject) => v.t === "dict" && v.v.has("exec-oob") && !v.v.has("execute");

class Session implements QmpSessionView {
  negotiated = false;
  oobEnabled = false;
  /** In-band requests and input errors not yet handled, in arrival order. */
  readonly queue: Item[] = [];
  /** One of our in-band items is being handled by the dispatcher. */
  busy = false;
  private oobInFlight = 0;
  /** The peer finished sending (FIN). */
  private inputEnded = false;
  /** We stopped reading (fatal input error, shutdown). */
  private inputClosed = false;
  /** end() was requested; nothing more is written. */
  private ending = false;
  private closed = false;
  private paused = false;
  private readonly out: Uint8Array[] = [];
  private outBytes = 0;
  private endTimer: Timer | undefined;
  private readonly streamer: JsonStreamer;

  constructor(
    private readonly server: Server,
    private readonly socket: Socket<Session | undefined>,
    readonly id: number,
  ) {
    this.streamer = new JsonStreamer((m) => this.onMessage(m), { maxMessageBytes: server.maxMessageBytes });
  }

  completeNegotiation(enabled: readonly QmpCapability[]): void {
    this.negotiated = true;
    this.oobEnabled = enabled.includes("oob");
  }

  // ---- input ------------------------------------------------------------------------------------------

  onData(bytes: Uint8Array): void {
    if (this.inputClosed || this.closed) return;
    this.streamer.feed(bytes);
    if (!this.paused && this.queue.length >= QUEUE_MAX && !this.closed) {
      this.paused = true;
      this.socket.pause();
    }
  }

  onEnd(): void {
    if (!this.inputClosed) this.streamer.flush();
    this.inputEnded = true;
    this.maybeFinish();
  }

  private onMessage(m: StreamMessage): void {
    if (this.inputClosed || this.closed) return;
    if (m.ok && this.oobEnabled && isOobRequest(m.value)) {
      void this.runOob(m.value);
      return;
    }
    if (!m.ok && m.fatal) this.inputClosed = true;
    this.queue.push(m);
    this.server.schedule(this);
  }

  /** Out-of-band: run now, reply as soon as done, possibly before earlier in-band replies. */
  private async runOob(req: QObject): Promise<void> {
    this.oobInFlight++;
    try {
      const { reply, after } = await this.server.execute(this, req);
      this.send(reply);
      for (const fn of after) fn();
    } finally {
      this.oobInFlight--;
      this.maybeFinish();
    }
  }

  /** Handle one queued item (called by the dispatcher). */
  async process(item: Item): Promise<void> {
    if (!item.ok) {
      this.send({ error: { class: "GenericError", desc: item.error } });
      if (item.fatal) {
        log.warn(`qmp: client ${this.id}: ${item.error}; disconnecting`);
        this.endAfterFlush();
      }
      return;
    }
    const { reply, after } = await this.server.execute(this, item.value);
    // The client may have gone meanwhile: send() then drops the reply.
    this.send(reply);
    for (const fn of after) fn();
  }

  afterItem(): void {
    if (this.paused && !this.closed && !this.inputClosed && this.queue.length < QUEUE_MAX) {
      this.paused = false;
      this.socket.resume();
    }
    this.maybeFinish();
  }

  /** Input over and everything answered: end our side too (as QEMU closes on EOF). */
  private maybeFinish(): void {
    if (this.closed || this.ending) return;
    if ((this.inputEnded || this.inputClosed) && this.queue.length === 0 && !this.busy && this.oobInFlight === 0) {
      this.endAfterFlush();
    }
  }

  // ---- output -----------------------------------------------------------------------------------------

  send(msg: Record<string, unknown>): void {
    this.writeText(encodeJson(msg) + CRLF);
  }

  writeText(text: string): void {
    if (this.closed || this.ending) return;
    const bytes = textEncoder.encode(text);
    if (this.out.length === 0) {
      const n = this.socket.write(bytes);
      if (n < 0) return;
      if (n === bytes.byteLength) return;
      this.out.push(bytes.subarray(n));
      this.outBytes += bytes.byteLength - n;
    } else {
      this.out.push(bytes);
      this.outBytes += bytes.byteLength;
    }
    if (this.outBytes > this.server.maxOutputBytes) {
      log.warn(`qmp: client ${this.id} does not read its replies and events; disconnecting`);
      this.socket.terminate();
      this.onClose();
    }
  }

  onDrain(): void {
    this.flushPending();
    if (this.ending && this.out.length === 0) this.endNow();
  }

  private flushPending(): void {
    while (this.out.length > 0 && !this.closed) {
      const b = this.out[0]!;
      const n = this.socket.write(b);
      if (n < 0) return;
      this.outBytes -= n;
      if (n < b.byteLength) {
        this.out[0] = b.subarray(n);
        return;
      }
      this.out.shift();
    }
  }

  private endAfterFlush(): void {
    if (this.ending || this.closed) return;
    this.ending = true;
    this.inputClosed = true;
    this.queue.length = 0;
    if (this.out.length === 0) this.endNow();
    this.endTimer = setTimeout(() => {
      if (!this.closed) this.socket.terminate();
    }, END_GRACE_MS);
    this.endTimer.unref();
  }

  private endNow(): void {
    this.socket.end();
  }

  /** Server shutdown: write what the socket takes now, then end. */
  shutdown(): void {
    if (this.closed) return;
    this.flushPending();
    this.ending = true;
    this.inputClosed = true;
    this.queue.length = 0;
    this.socket.end();
    this.onClose();
  }

  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.inputClosed = true;
    this.queue.length = 0;
    this.out.length = 0;
    if (this.endTimer) clearTimeout(this.endTimer);
    this.server.forget(this);
    log.debug(`qmp: client ${this.id} disconnected`);
  }
}

/** Refuse a path served by a live process; remove a dead one's socket file. */
async function clearStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new QmpListenError(`cannot listen for QMP on unix:${path}: it exists and is not a socket`);
  if (await socketIsLive(path)) throw new QmpSocketInUseError(path);
  try {
    removeStaleSocket(path);
  } catch (e) {
    throw new QmpListenError(`cannot replace the stale QMP socket ${path}: ${errnoText(e)}`);
  }
  log.info(`qmp: replaced the stale socket ${path}`);
}

/** Connect to it: refused means nobody listens any more. Anything else counts as live (be safe). */
async function socketIsLive(path: string): Promise<boolean> {
  let timer: Timer | undefined;
  const timeout = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), 2000)));
  try {
    const r = await Promise.race([Bun.connect({ unix: path, socket: { data() {}, error() {} } }), timeout]);
    if (r === "timeout") return true;
    r.end();
    return true;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ECONNREFUSED" || code === "ENOENT") return false;
    throw new QmpListenError(`cannot listen for QMP on unix:${path}: cannot tell whether the socket is in use (${errnoText(e)})`);
  } finally {
    clearTimeout(timer);
  }
}

function errnoText(e: unknown): string {
  const errno = (e as { errno?: number }).errno;
  if (typeof errno === "number" && errno !== 0) {
    try {
      return getSystemErrorMessage(-Math.abs(errno));
    } catch {
      // fall through
    }
  }
  return (e as Error).message ?? String(e);
}

function addressText(a: SocketAddress): string {
  return a.transport === "unix" ? `unix:${a.path}` : `tcp:${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}
