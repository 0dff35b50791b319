/**
 * Running a VM as a process: log, pidfile, daemonizing, the serial backend, the machine itself, and the
 * exit status that tells a supervisor what happened.
 */
import { closeSync, openSync, writeSync, unlinkSync, ftruncateSync } from "node:fs";
import { spawn } from "node:child_process";
import type { VmConfig } from "./config.ts";
import { ExitCode } from "./exit-codes.ts";
import { createLogger, log, setLogger } from "../util/log.ts";
import { openChardev, type Chardev } from "../chardev/chardev.ts";
import { Machine } from "../vmm/machine.ts";
import { MachineController } from "../vmm/controller.ts";
import { CommandTable, EventTable, registerLifecycleCommands, registerLifecycleEvents, startQmp, type QmpServer } from "../qmp/index.ts";
import { registerMigrationCommands, registerMigrationEvents } from "../migration/qmp-commands.ts";
import { VERSION } from "./version.ts";
import { flock, LOCK_EX, LOCK_NB } from "../../ffi/libc.ts";
import { MigrationManager } from "../migration/manager.ts";
import type { MigrationUri } from "../migration/uri.ts";
import type { IncomingConfig } from "./config.ts";

function incomingUri(c: Exclude<IncomingConfig, { transport: "defer" }>): MigrationUri {
  switch (c.transport) {
    case "tcp":
      return { transport: "tcp", host: c.host, port: c.port };
    case "unix":
      return { transport: "unix", path: c.path };
    case "file":
      return { transport: "file", path: c.path };
    case "exec":
      return { transport: "exec", command: c.command };
  }
}

/** Set in a daemonized child: the fd of the pipe on which it tells its parent it is up. */
const DAEMON_READY_FD_ENV = "KILN_DAEMON_READY_FD";

export class StartupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StartupError";
  }
}

/** Write our pid to `path`, holding a lock on it so a second kiln with the same pidfile is refused. */
function writePidfile(path: string): () => void {
  let fd: number;
  try {
    fd = openSync(path, "a+");
  } catch (e) {
    throw new StartupError(`-pidfile ${path}: ${(e as Error).message}`);
  }
  if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
    closeSync(fd);
    throw new StartupError(`-pidfile ${path}: in use by another running process`);
  }
  ftruncateSync(fd, 0);
  writeSync(fd, `${process.pid}\n`, 0);
  return () => {
    try {
      unlinkSync(path);
    } catch {
      // already gone
    }
    closeSync(fd);
  };
}

/**
 * -daemonize, parent side: start ourselves again detached (a new session, no terminal) and wait for the
 * child to report that the VM is set up (or why it failed), then exit with that outcome, as QEMU does.
 */
async function daemonize(argv: string[]): Promise<number> {
  const self = import.meta.path.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, process.argv[1]!];
  const child = spawn(self[0]!, [...self.slice(1), ...argv], {
    detached: true,
    stdio: ["ignore", "ignore", "pipe", "pipe"],
    env: { ...process.env, [DAEMON_READY_FD_ENV]: "3" },
  });
  const ready = child.stdio[3] as NodeJS.ReadableStream;
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const answer = await new Promise<string>((resolve) => {
    let got = "";
    ready.on("data", (d: Buffer) => (got += d.toString()));
    ready.on("end", () => resolve(got));
    child.on("exit", () => resolve(got));
  });
  if (answer.startsWith("ok")) {
    child.unref();
    return ExitCode.Ok;
  }
  process.stderr.write(stderr || "kiln: the daemonized VM failed to start\n");
  return ExitCode.Error;
}

function reportReady(): void {
  const fd = process.env[DAEMON_READY_FD_ENV];
  if (!fd) return;
  delete process.env[DAEMON_READY_FD_ENV];
  writeSync(Number(fd), "ok\n");
  closeSync(Number(fd));
  // Detach from the parent's stderr pipe now that startup errors can no longer happen.
  closeSync(2);
  openSync("/dev/null", "w");
}

export async function runVm(cfg: VmConfig, argv: string[]): Promise<number> {
  if (cfg.process.daemonize && !process.env[DAEMON_READY_FD_ENV]) return daemonize(argv);
  setLogger(createLogger(cfg.process.logFile));

  const cleanups: (() => void)[] = [];
  let finish!: (code: number) => void;
  const finished = new Promise<number>((r) => (finish = r));
  let machine: Machine | undefined;
  let chardev: Chardev | undefined;
  let migration: MigrationManager | undefined;
  let qmp: QmpServer | undefined;
  let done = false;

  const shutdown = (code: number) => {
    if (done) return;
    done = true;
    qmp?.close();
    migration?.close();
    machine?.destroy();
    chardev?.close();
    for (const c of cleanups.reverse()) c();
    cleanups.length = 0;
    finish(code);
  };

  try {
    if (cfg.process.pidFile) cleanups.push(writePidfile(cfg.process.pidFile));
    chardev = openChardev(cfg.serial, () => shutdown(ExitCode.Ok), (msg) => log.warn(msg));
    const out = chardev;
    const m = await Machine.create(
      {
        machine: cfg.machine.type,
        memSize: cfg.memoryBytes,
        topology: { cpus: cfg.smp.cpus, sockets: cfg.smp.sockets, cores: cfg.smp.cores * cfg.smp.dies * cfg.smp.clusters, threads: cfg.smp.threads },
        kernel: cfg.boot.kernel,
        cmdline: cfg.boot.append,
        initrd: cfg.boot.initrd ?? undefined,
        dumpGuestCore: cfg.machine.dumpGuestCore,
        devices: cfg.devices,
        drives: cfg.drives,
        netdevs: cfg.netdevs,
      },
      {
        serialOutput: (b) => out.write(b),
        log: (level, msg) => log[level](msg),
      },
      { boot: cfg.incoming === null },
    );
    machine = m;
    const controller = new MachineController(m, cfg.name, cfg.uuid, cfg.process.startPaused, () => shutdown(ExitCode.Ok));
    migration = new MigrationManager(m, {
      emit: (name, data) => m.emit(name, data),
      log: (l, msg) => log[l](msg),
      incomingFailed: (e) => {
        log.error(`incoming migration failed: ${e.message}`);
        shutdown(ExitCode.Error);
      },
      incomingDone: (run) => {
        // The receiver already let the vCPUs run at the switchover; record it (or that they wait).
        m.releaseRestored(run);
        if (!run) m.state = "paused";
      },
      autostart: () => controller.autostart,
    });
    if (cfg.incoming) m.state = "inmigrate";
    // Listen for the incoming migration before QMP comes up: whoever sees the QMP socket may migrate at once.
    if (cfg.incoming && cfg.incoming.transport !== "defer") await migration.listen(incomingUri(cfg.incoming));
    if (cfg.qmp.length > 0) {
      const commands = registerLifecycleCommands(new CommandTable());
      const events = registerLifecycleEvents(new EventTable());
      const incoming = cfg.incoming;
      registerMigrationCommands(commands, migration, { deferredIncoming: () => incoming?.transport === "defer" });
      registerMigrationEvents(events);
      qmp = await startQmp(cfg.qmp, controller, VERSION, { commands, events });
    }
  } catch (e) {
    log.error((e as Error).message);
    shutdown(ExitCode.Error);
    return finished;
  }

  const m = machine;
  chardev.setInputHandler((b) => m.serial.receive(b));
  m.onStop((e) => {
    switch (e.kind) {
      case "reset":
        if (!cfg.process.noReboot) {
          log.info(`guest reset: ${e.detail}; rebooting`);
          m.emit("RESET", { guest: true, reason: "guest-reset" });
          m.reset().catch((err) => {
            log.error(`reboot failed: ${(err as Error).message}`);
            shutdown(ExitCode.Error);
          });
          return;
        }
        log.info(`guest reset (-no-reboot): ${e.detail}`);
        m.emit("SHUTDOWN", { guest: true, reason: "guest-reset" });
        shutdown(ExitCode.GuestReset);
        return;
      case "poweroff":
        log.info(`guest powered off: ${e.detail}`);
        m.emit("SHUTDOWN", { guest: true, reason: "guest-shutdown" });
        // -no-shutdown: keep the process (and QMP) up with the machine stopped, as QEMU does.
        if (!cfg.process.noShutdown) shutdown(ExitCode.Ok);
        return;
      case "crash":
        log.error(`guest crashed: ${e.detail}`);
        process.stderr.write(e.dump + "\n");
        if (e.detail.includes("triple-fault")) m.emit("SHUTDOWN", { guest: true, reason: "guest-reset" });
        shutdown(ExitCode.GuestCrashed);
        return;
    }
  });

  for (const [sig, num] of [
    ["SIGINT", 2],
    ["SIGTERM", 15],
    ["SIGHUP", 1],
  ] as const) {
    process.on(sig, () => {
      log.info(`terminating on signal ${num}`);
      qmp?.emit("SHUTDOWN", { guest: false, reason: "host-signal" });
      shutdown(128 + num);
    });
  }

  await chardev.ready();
  reportReady();
  if (!cfg.incoming && !cfg.process.startPaused) m.resume();
  return finished;
}
