/**
 * A minimal QMP client for tests and benchmarks: plain JSON lines over a socket, as socat would send
 * them; shares no code with kiln's server. Works against kiln and QEMU alike.
 */
import { existsSync } from "node:fs";
import type { Socket } from "bun";

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`${errorClass}: ${desc}`);
  }
}

export class Qmp {
  greeting: Record<string, unknown> | undefined;
  readonly events: QmpEvent[] = [];
  private buf = "";
  private pending: ((msg: Record<string, unknown>) => void)[] = [];
  private eventWaiters: { pred: (e: QmpEvent) => boolean; resolve: (e: QmpEvent) => void }[] = [];
  private greeted!: Promise<void>;
  private closed = false;

  private constructor(private sock: Socket<undefined>) {}

  /** Connect (waiting up to timeoutMs for the socket file to appear) and negotiate capabilities. */
  static async connect(path: string, timeoutMs = 10_000): Promise<Qmp> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (existsSync(path)) {
        try {
          return await Qmp.open(path);
        } catch (e) {
          if (performance.now() > deadline) throw e;
        }
      }
      if (performance.now() > deadline) throw new Error(`QMP socket ${path} did not appear within ${timeoutMs} ms`);
      await Bun.sleep(10);
    }
  }

  private static async open(path: string): Promise<Qmp> {
    let q!: Qmp;
    let greet!: () => void;
    const greeted = new Promise<void>((r) => (greet = r));
    const sock = await Bun.connect({
      unix: path,
      socket: {
        data(_s, d) {
          q.onData(d.toString(), greet);
        },
        close() {
          q.closed = true;
        },
        error() {},
      },
    });
    q = new Qmp(sock);
    q.greeted = greeted;
    await greeted;
    await q.execute("qmp_capabilities");
    return q;
  }

  private onData(text: string, greet: () => void): void {
    this.buf += text;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as Record<string, unknown>;
      if ("QMP" in msg) {
        this.greeting = msg;
        greet();
      } else if ("event" in msg) {
        const ev = msg as unknown as QmpEvent;
        this.events.push(ev);
        for (const w of [...this.eventWaiters]) {
          if (w.pred(ev)) {
            this.eventWaiters.splice(this.eventWaiters.indexOf(w), 1);
            w.resolve(ev);
          }
        }
      } else {
        this.pending.shift()?.(msg);
      }
    }
  }

  /** Run a command; resolves with its `return`, rejects with QmpError on an error reply. */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) throw new Error("QMP connection closed");
    const reply = new Promise<Record<string, unknown>>((r) => this.pending.push(r));
    this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
    const msg = await reply;
    if ("error" in msg) {
      const e = msg.error as { class: string; desc: string };
      throw new QmpError(e.class, e.desc);
    }
    return msg.return as T;
  }

  /** The first event (already seen or future) matching `pred`. */
  waitEvent(pred: (e: QmpEvent) => boolean, timeoutMs = 30_000): Promise<QmpEvent> {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no matching QMP event within ${timeoutMs} ms; saw ${this.events.map((e) => e.event).join(", ")}`)), timeoutMs);
      this.eventWaiters.push({ pred, resolve: (e) => (clearTimeout(t), resolve(e)) });
    });
  }

  /** Poll query-migrate until its status is one of `statuses`. */
  async waitMigration(statuses: string[], timeoutMs = 60_000): Promise<Record<string, unknown>> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const r = await this.execute<Record<string, unknown>>("query-migrate");
      if (statuses.includes(r.status as string)) return r;
      if (performance.now() > deadline) throw new Error(`migration still ${String(r.status)} after ${timeoutMs} ms: ${JSON.stringify(r)}`);
      await Bun.sleep(5);
    }
  }

  close(): void {
    this.sock.end();
  }
}
