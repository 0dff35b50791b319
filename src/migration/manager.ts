/**
 * One VM process's migration state, as QMP sees it: parameters and capabilities, the outgoing
 * migration (at most one at a time) or the incoming one, and query-migrate's answer.
 */
import type { Machine } from "../vmm/machine.ts";
import { MigrationSource, type MigrationStatus } from "./source.ts";
import { MigrationIncoming } from "./incoming.ts";
import { applyParameters, checkCapability, DEFAULT_PARAMETERS, CAPABILITIES, type Capability, type MigrationParameters } from "./params.ts";
import { parseMigrationUri, UriError, type MigrationUri } from "./uri.ts";
import { PAGE_SIZE } from "./wire.ts";

export class MigrationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MigrationError";
  }
}

export interface ManagerHooks {
  /** QMP events (MIGRATION, MIGRATION_PASS); sent only with the "events" capability, as QEMU does. */
  emit(name: string, data: Record<string, unknown>): void;
  log(level: "info" | "warn" | "debug", msg: string): void;
  /** An incoming migration failed: this process has nothing to run (QEMU exits here). */
  incomingFailed(e: Error): void;
  /**
   * An incoming migration completed; `run`: the guest is running here now (it ran on the source and
   * autostart allowed it), else it waits paused.
   */
  incomingDone(run: boolean): void;
  /** Whether a guest that ran on the source should run here (QEMU's autostart: off with -S or after stop). */
  autostart(): boolean;
}

export class MigrationManager {
  params: MigrationParameters = { ...DEFAULT_PARAMETERS };
  private caps = new Map<Capability, boolean>(CAPABILITIES.map((c) => [c, false]));
  private source: MigrationSource | undefined;
  private incoming: MigrationIncoming | undefined;
  /** Status of the incoming side, when this process is (or was) a destination. */
  private incomingStatus: MigrationStatus = "none";
  private incomingError: string | undefined;

  constructor(
    private readonly m: Machine,
    private readonly hooks: ManagerHooks,
  ) {}

  private event(status: MigrationStatus): void {
    if (this.caps.get("events")) this.hooks.emit("MIGRATION", { status });
  }

  /** QMP migrate: validate, then run in the background. */
  migrate(uri: string): void {
    let u: MigrationUri;
    try {
      u = parseMigrationUri(uri);
    } catch (e) {
      throw new MigrationError((e as UriError).message);
    }
    if (this.source && ["setup", "active", "cancelling"].includes(this.source.progress.status)) {
      throw new MigrationError("There's a migration process in progress");
    }
    const st = this.m.state;
    if (st === "inmigrate") throw new MigrationError("Guest is waiting for an incoming migration");
    if (st === "postmigrate") throw new MigrationError("the guest has already been migrated away from this process");
    if (st === "shutdown" || st === "internal-error") throw new MigrationError(`the guest cannot be migrated in state '${st}'`);
    const local = this.caps.get("x-ignore-shared") === true;
    if (local && u.transport !== "unix") {
      throw new MigrationError("x-ignore-shared passes guest memory to a destination on this host: it needs a unix: URI");
    }
    this.source = new MigrationSource(this.m, u, this.params, {
      onStatus: (s) => this.event(s),
      onPass: (pass) => {
        if (this.caps.get("events")) this.hooks.emit("MIGRATION_PASS", { pass });
      },
      log: this.hooks.log,
    }, local);
  }

  /** QMP migrate_cancel: a no-op when nothing runs, as in QEMU. */
  cancel(): void {
    this.source?.cancel();
  }

  /** Start waiting for an incoming migration (-incoming URI, or QMP migrate-incoming after -incoming defer). */
  async listen(uri: MigrationUri): Promise<void> {
    // Run the device restore path once on the fresh (never run) machine's own pristine state: the
    // switchover then runs warm code (JavaScript runs a function's first call slowly). The receiving
    // Worker primes its own part.
    for (const d of this.m.devices) d.restore(d.save(), d.persistVersion);
    this.incoming = new MigrationIncoming(this.m, uri, {
      onStatus: (s) => {
        this.incomingStatus = s;
        this.event(s);
      },
      log: this.hooks.log,
    }, () => this.hooks.autostart());
    await this.incoming.listen();
    this.incoming.receive().then(
      ({ run }) => this.hooks.incomingDone(run),
      (e: Error) => {
        this.incomingError = e.message;
        this.hooks.incomingFailed(e);
      },
    );
  }

  /**
   * QMP migrate-incoming: after `-incoming defer`, or (a kiln extension) on a process whose guest
   * already migrated away, which becomes a destination again: the way two kiln processes play
   * migration ping-pong, and how a same-host upgrade can be rolled back.
   */
  async migrateIncoming(uri: string, deferred: boolean): Promise<void> {
    const again = this.m.state === "postmigrate";
    if (!deferred && !again) throw new MigrationError("'-incoming' was not specified on the command line");
    if (deferred && this.incoming) throw new MigrationError("The incoming migration has already been started");
    let u: MigrationUri;
    try {
      u = parseMigrationUri(uri);
    } catch (e) {
      throw new MigrationError((e as UriError).message);
    }
    if (again) {
      await this.m.prepareIncoming();
      this.incoming = undefined;
      this.source = undefined;
    }
    await this.listen(u);
  }

  setParameters(args: Record<string, unknown>): void {
    this.params = applyParameters(this.params, args);
    if ("max-bandwidth" in args) this.source?.setBandwidth(this.params["max-bandwidth"]);
  }

  setCapabilities(list: unknown): void {
    if (!Array.isArray(list)) throw new MigrationError("Invalid parameter type for 'capabilities', expected: array");
    if (this.source && ["setup", "active", "cancelling"].includes(this.source.progress.status)) {
      throw new MigrationError("There's a migration process in progress");
    }
    const next = new Map(this.caps);
    for (const item of list) {
      const it = item as { capability?: unknown; state?: unknown };
      if (!it || typeof it !== "object") throw new MigrationError("Invalid parameter type for 'capabilities', expected: array of objects");
      if (typeof it.state !== "boolean") throw new MigrationError("Invalid parameter type for 'state', expected: boolean");
      next.set(checkCapability(it.capability), it.state);
    }
    this.caps = next;
  }

  queryCapabilities(): { capability: string; state: boolean }[] {
    return [...this.caps].map(([capability, state]) => ({ capability, state }));
  }

  /** query-migrate, in QEMU's shape: {} before any migration. */
  query(): Record<string, unknown> {
    if (!this.source) {
      if (this.incomingStatus === "none") return {};
      const r: Record<string, unknown> = { status: this.incomingStatus };
      if (this.incomingStatus === "failed" && this.incomingError) r["error-desc"] = this.incomingError;
      return r;
    }
    const p = this.source.progress;
    const now = performance.now();
    const r: Record<string, unknown> = { status: p.status };
    if (p.status === "failed") {
      if (p.errorDesc) r["error-desc"] = p.errorDesc;
      return r;
    }
    if (p.status === "cancelled" || p.status === "cancelling") return r;
    r["setup-time"] = Math.round(p.setupMs);
    r["total-time"] = p.totalMs ?? Math.round(now - p.startedAt);
    if (p.status === "completed") r["downtime"] = p.downtimeMs;
    else r["expected-downtime"] = p.expectedDowntimeMs;
    r["ram"] = {
      transferred: p.transferred,
      remaining: p.remaining,
      total: p.totalBytes,
      duplicate: p.duplicate,
      normal: p.normal,
      "normal-bytes": p.normal * PAGE_SIZE,
      "dirty-pages-rate": p.dirtyPagesRate,
      mbps: p.mbps,
      "dirty-sync-count": p.dirtySyncCount,
      "page-size": PAGE_SIZE,
    };
    return r;
  }

  /** Resolves when the current outgoing migration ends (any outcome). */
  async settled(): Promise<void> {
    await this.source?.finished;
  }

  close(): void {
    this.source?.cancel();
    this.incoming?.close();
  }
}
