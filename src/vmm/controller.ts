/**
 * The Machine as QMP sees it (VmController): run state, stop/cont with QEMU's rules and refusals,
 * reset, the power button, vCPU threads, events.
 */
import type { Machine } from "./machine.ts";
import { QmpError } from "../qmp/errors.ts";
import type { RunState, VcpuInfo, VmController, VmEventListener } from "../qmp/vm-controller.ts";

export class MachineController implements VmController {
  /**
   * Whether the guest runs once an incoming migration completes (QEMU's autostart): false with -S,
   * or after QMP stop during "inmigrate"; cont sets it again.
   */
  autostart: boolean;

  constructor(
    private readonly m: Machine,
    readonly name: string | null,
    readonly uuid: string | null,
    startPaused: boolean,
    private readonly onQuit: () => void,
  ) {
    this.autostart = !startPaused;
  }

  runState(): RunState {
    return this.m.state;
  }

  async stop(): Promise<void> {
    if (this.m.state === "inmigrate") {
      this.autostart = false;
      return;
    }
    if (this.m.state === "running") await this.m.pause();
  }

  async cont(): Promise<void> {
    switch (this.m.state) {
      case "running":
        return;
      case "inmigrate":
        this.autostart = true;
        return;
      case "shutdown":
      case "internal-error":
        throw new QmpError("GenericError", "Resetting the Virtual Machine is required");
      case "finish-migrate":
        throw new QmpError("GenericError", "Migration is not finalized yet");
      case "postmigrate":
        throw new QmpError("GenericError", "The guest has migrated away from this process and must not run here again; quit this process");
      default:
        this.m.resume();
    }
  }

  async systemReset(): Promise<void> {
    const running = this.m.state === "running";
    await this.m.reset();
    // As QEMU: a machine that was not running is left ready to start ("prelaunch"); cont starts it.
    if (!running) this.m.state = "prelaunch";
  }

  systemPowerdown(): void {
    this.m.powerButton();
  }

  quit(): void {
    this.onQuit();
  }

  cpus(): VcpuInfo[] {
    const t = this.m.config.topology;
    return this.m.vcpus.map((v, i) => ({
      cpuIndex: i,
      threadId: v.tid,
      socketId: Math.floor(i / (t.cores * t.threads)),
      coreId: Math.floor(i / t.threads) % t.cores,
      threadIdInCore: i % t.threads,
    }));
  }

  onEvent(listener: VmEventListener): void {
    this.m.onEvent(listener);
  }
}
