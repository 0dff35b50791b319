/**
 * Host-side character devices behind the guest's serial port: stdio (raw mode on a TTY, with QEMU's
 * Ctrl-A escapes), a file, a listening unix/TCP socket, or nothing.
 */
import { openSync, writeSync, closeSync, unlinkSync, existsSync, lstatSync } from "node:fs";
import type { Socket, TCPSocketListener, UnixSocketListener } from "bun";
import type { SerialConfig, SocketAddress } from "../cli/config.ts";

export interface Chardev {
  /** Guest output. */
  write(bytes: Uint8Array): void;
  /** Where host input goes (set once by the machine's serial port). */
  setInputHandler(cb: (bytes: Uint8Array) => void): void;
  /** Resolves when a client is connected (server,wait sockets); at once for everything else. */
  ready(): Promise<void>;
  close(): void;
}

export class ChardevError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChardevError";
  }
}

class NullChardev implements Chardev {
  write(): void {}
  setInputHandler(): void {}
  async ready(): Promise<void> {}
  close(): void {}
}

/**
 * Guest output waiting for a slow reader (a paused terminal, a console pipe nobody drains) is held
 * up to this many bytes; beyond that it is dropped and counted, so a stuck reader cannot make kiln
 * grow without bound. (QEMU instead holds the UART's transmitter busy; kiln's UART always accepts.)
 */
export const OUTPUT_BACKLOG_LIMIT = 1 << 20;

/** Bytes handed to a writer but not yet taken by the reader, and what was dropped meanwhile. */
export class OutputBacklog {
  bytes = 0;
  dropped = 0;
  constructor(
    private readonly what: string,
    private readonly warn: (msg: string) => void,
    private readonly limit = OUTPUT_BACKLOG_LIMIT,
  ) {}

  /** May `n` more bytes be queued? If not they count as dropped (the first drop of a spell is reported). */
  admit(n: number): boolean {
    if (this.bytes + n <= this.limit) {
      this.bytes += n;
      return true;
    }
    if (this.dropped === 0) this.warn(`guest console output to ${this.what} is not being read: dropping what exceeds ${this.limit >> 10} KiB`);
    this.dropped += n;
    return false;
  }

  /** The reader took `n` bytes; once it has caught up, say how much was lost. */
  drained(n: number): void {
    this.bytes -= n;
    if (this.bytes === 0 && this.dropped > 0) {
      this.warn(`guest console output to ${this.what} flows again; ${this.dropped} bytes were dropped`);
      this.dropped = 0;
    }
  }
}

const CTRL_A = 0x01;
const ESCAPE_HELP = "\r\nC-a h    print this help\r\nC-a x    exit kiln\r\nC-a C-a  send C-a to the guest\r\n";

/** stdin/stdout. On a TTY, stdin goes raw (every key reaches the guest) and C-a x quits, as in QEMU. */
class StdioChardev implements Chardev {
  private input: (b: Uint8Array) => void = () => {};
  private escape = false;
  private readonly tty = process.stdin.isTTY === true;

  private readonly backlog: OutputBacklog;

  constructor(
    private readonly onQuit: () => void,
    warn: (msg: string) => void,
  ) {
    this.backlog = new OutputBacklog("stdout", warn);
    if (this.tty) {
      process.stdin.setRawMode(true);
      process.on("exit", () => this.restore());
    }
    process.stdin.on("data", (d: Buffer) => this.onData(new Uint8Array(d.buffer, d.byteOffset, d.byteLength)));
    process.stdin.on("error", () => {});
  }

  private onData(d: Uint8Array): void {
    if (!this.tty) {
      this.input(d);
      return;
    }
    const out: number[] = [];
    for (const b of d) {
      if (this.escape) {
        this.escape = false;
        if (b === 0x78 /* x */) {
          process.stderr.write("\r\nkiln: terminating on C-a x\r\n");
          this.onQuit();
          return;
        }
        if (b === 0x68 /* h */) process.stderr.write(ESCAPE_HELP);
        else if (b === CTRL_A) out.push(CTRL_A);
        continue;
      }
      if (b === CTRL_A) this.escape = true;
      else out.push(b);
    }
    if (out.length > 0) this.input(new Uint8Array(out));
  }

  write(bytes: Uint8Array): void {
    const n = bytes.byteLength;
    // The callback runs once the bytes are written out (Bun's writableLength stays 0).
    if (this.backlog.admit(n)) process.stdout.write(bytes, () => this.backlog.drained(n));
  }

  setInputHandler(cb: (bytes: Uint8Array) => void): void {
    this.input = cb;
  }

  async ready(): Promise<void> {}

  private restore(): void {
    if (this.tty) {
      try {
        process.stdin.setRawMode(false);
      } catch {
        // the terminal may be gone already
      }
    }
  }

  close(): void {
    this.restore();
    process.stdin.pause();
  }
}

class FileChardev implements Chardev {
  private fd: number;
  constructor(path: string) {
    try {
      this.fd = openSync(path, "w");
    } catch (e) {
      throw new ChardevError(`cannot open serial output file ${path}: ${(e as Error).message}`);
    }
  }
  write(bytes: Uint8Array): void {
    writeSync(this.fd, bytes);
  }
  setInputHandler(): void {}
  async ready(): Promise<void> {}
  close(): void {
    closeSync(this.fd);
  }
}

/**
 * A listening socket; one client at a time (as QEMU's socket chardev server). Guest output while no
 * client is connected is dropped, like a serial line nobody listens to.
 */
class SocketChardev implements Chardev {
  private client: Socket<undefined> | undefined;
  private listener: UnixSocketListener<undefined> | TCPSocketListener<undefined>;
  private input: (b: Uint8Array) => void = () => {};
  private connected: Promise<void>;
  private markConnected!: () => void;
  private pending: Uint8Array[] = [];
  private readonly backlog: OutputBacklog;

  constructor(
    private readonly address: SocketAddress,
    private readonly waitForClient: boolean,
    warn: (msg: string) => void,
  ) {
    this.backlog = new OutputBacklog(`the client of ${describe(address)}`, warn);
    this.connected = new Promise((r) => (this.markConnected = r));
    const handlers = {
      open: (s: Socket<undefined>) => {
        if (this.client) {
          s.end();
          return;
        }
        this.client = s;
        this.markConnected();
      },
      data: (_s: Socket<undefined>, d: Buffer) => this.input(new Uint8Array(d.buffer, d.byteOffset, d.byteLength)),
      close: (s: Socket<undefined>) => {
        if (this.client !== s) return;
        this.client = undefined;
        // What the departed client did not take is gone with it.
        for (const b of this.pending.splice(0)) this.backlog.drained(b.byteLength);
      },
      drain: () => this.flushPending(),
      error: () => {},
    };
    try {
      if (address.transport === "unix") {
        removeStaleSocket(address.path);
        this.listener = Bun.listen({ unix: address.path, socket: handlers });
      } else {
        this.listener = Bun.listen({ hostname: address.host, port: address.port, socket: handlers });
      }
    } catch (e) {
      throw new ChardevError(`cannot listen for the serial console on ${describe(address)}: ${(e as Error).message}`);
    }
  }

  private flushPending(): void {
    while (this.client && this.pending.length > 0) {
      const b = this.pending[0]!;
      const n = Math.max(this.client.write(b), 0);
      this.backlog.drained(n);
      if (n < b.byteLength) {
        this.pending[0] = b.subarray(n);
        return;
      }
      this.pending.shift();
    }
  }

  write(bytes: Uint8Array): void {
    if (!this.client) return;
    if (this.pending.length > 0) {
      if (this.backlog.admit(bytes.byteLength)) this.pending.push(bytes.slice());
      return;
    }
    const n = Math.max(this.client.write(bytes), 0);
    if (n < bytes.byteLength && this.backlog.admit(bytes.byteLength - n)) this.pending.push(bytes.slice(n));
  }

  setInputHandler(cb: (bytes: Uint8Array) => void): void {
    this.input = cb;
  }

  ready(): Promise<void> {
    return this.waitForClient ? this.connected : Promise.resolve();
  }

  close(): void {
    this.client?.end();
    this.listener.stop(true);
    if (this.address.transport === "unix") {
      try {
        unlinkSync(this.address.path);
      } catch {
        // already gone
      }
    }
  }
}

function describe(a: SocketAddress): string {
  return a.transport === "unix" ? `unix:${a.path}` : `tcp:${a.host}:${a.port}`;
}

/** A socket file left by a dead process is removed; anything else at that path is an error. */
export function removeStaleSocket(path: string): void {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) throw new ChardevError(`${path} exists and is not a socket`);
  unlinkSync(path);
}

export function openChardev(cfg: SerialConfig, onQuit: () => void, warn: (msg: string) => void): Chardev {
  switch (cfg.kind) {
    case "none":
      return new NullChardev();
    case "stdio":
      return new StdioChardev(onQuit, warn);
    case "file":
      return new FileChardev(cfg.path);
    case "socket":
      return new SocketChardev(cfg.address, cfg.wait, warn);
    case "pty":
      throw new ChardevError("-serial pty is not supported yet; use -serial unix:PATH,server,nowait and connect with socat");
  }
}
