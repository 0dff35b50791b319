/**
 * What the QMP server needs from the VM. The VM side implements this (an adapter over the Machine);
 * the server, its commands and their tests only ever see this interface.
 *
 * Concurrency: the server runs in-band commands one at a time across all clients (as QEMU's single
 * dispatcher does), so at most one of stop/cont/systemReset/systemPowerdown/quit is in progress at any
 * moment. Out-of-band commands (none of these) are the exception.
 *
 * Errors: a method that refuses throws QmpError (class + QEMU's message); any other Error is reported
 * to the client as a GenericError with its message.
 */

/** QEMU's RunState values (qapi/run-state.json); kiln uses a subset. */
export const RUN_STATES = [
  "debug",
  "inmigrate",
  "internal-error",
  "io-error",
  "paused",
  "postmigrate",
  "prelaunch",
  "finish-migrate",
  "restore-vm",
  "running",
  "save-vm",
  "shutdown",
  "suspended",
  "watchdog",
  "guest-panicked",
  "colo",
] as const;
export type RunState = (typeof RUN_STATES)[number];

/** One vCPU, for query-cpus-fast. */
export interface VcpuInfo {
  /** 0-based index, as in QEMU's cpu-index. */
  cpuIndex: number;
  /** Host thread id (gettid) of the thread running this vCPU. */
  threadId: number;
  socketId: number;
  /** Only reported when the topology has more than one die per socket (as QEMU). */
  dieId?: number;
  coreId: number;
  /** Thread within the core (QEMU's props.thread-id). */
  threadIdInCore: number;
  /** Default: QEMU's path for cold-plugged CPUs, /machine/unattached/device[cpuIndex]. */
  qomPath?: string;
}

/**
 * An event from the VM, without timestamp (the server adds it). `data` is the event's QMP data object.
 *
 * The VM emits the events that follow from its own state changes, whoever caused them:
 *   STOP / RESUME                      whenever the vCPUs are paused / resumed (QMP stop/cont, migration,
 *                                      a guest power-off under -no-shutdown...); before stop()/cont() resolve
 *   SHUTDOWN {guest, reason}           guest-initiated: reason "guest-shutdown", "guest-reset" (with
 *                                      -no-reboot), "guest-panic"; or "host-signal" on SIGTERM/SIGINT
 *   RESET {guest:true, reason:"guest-reset"}   a guest-initiated reboot
 *   later: MIGRATION {status}, MIGRATION_PASS {pass}, ...
 * The server itself emits what QMP commands cause by definition, so the VM must NOT emit these:
 *   SHUTDOWN {guest:false, reason:"host-qmp-quit"} (quit), RESET {guest:false, reason:
 *   "host-qmp-system-reset"} (system_reset), POWERDOWN (system_powerdown).
 */
export type VmEventListener = (event: string, data?: Record<string, unknown>) => void;

export interface VmController {
  /** -name; null when not given (query-name then returns {}). */
  readonly name: string | null;
  /** -uuid; null when not given (query-uuid then reports the all-zero UUID, as QEMU). */
  readonly uuid: string | null;

  runState(): RunState;

  /**
   * QMP stop: pause all vCPUs and resolve once they are parked, after emitting STOP. A no-op (no event)
   * unless running. In "inmigrate" QEMU clears autostart instead (the VM stays paused after migration).
   */
  stop(): Promise<void>;

  /**
   * QMP cont: resume the vCPUs and resolve once they run, after emitting RESUME; a no-op when already
   * running. QEMU's refusals: "Resetting the Virtual Machine is required" in shutdown, internal-error
   * and guest-panicked; "Migration is not finalized yet" in finish-migrate. In "inmigrate" it is not an
   * error: the VM starts when the incoming migration completes (autostart).
   */
  cont(): Promise<void>;

  /**
   * QMP system_reset: reset the machine in place (rebuild vCPU and device state, keep RAM) and resolve
   * when done. The VM keeps running if it was; from paused/shutdown QEMU goes to "prelaunch" (cont
   * starts it again). The server sends RESET after the reply.
   */
  systemReset(): Promise<void>;

  /** QMP system_powerdown: press the ACPI power button (the guest decides what to do). */
  systemPowerdown(): void | Promise<void>;

  /**
   * QMP quit: called after the SHUTDOWN event and the reply have been flushed and the QMP server closed.
   * Tear the VM down and end the process with status 0 (QEMU exits 0 on quit).
   */
  quit(): void;

  /** The vCPUs, by cpuIndex. */
  cpus(): VcpuInfo[];

  /** Subscribe to the VM's events (called once by the server). */
  onEvent(listener: VmEventListener): void;
}
