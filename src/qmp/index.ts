/** kiln's QMP: server, command/event tables, schema helpers, and the `kiln qmp` client. */
export { startQmp, QEMU_COMPAT_VERSION, type QmpServer, type QmpServerOptions } from "./server.ts";
export {
  CommandTable,
  EventTable,
  defineQmpCommand,
  defineQmpEvent,
  type CommandContext,
  type QmpCapability,
  type QmpCommand,
  type QmpEventDef,
  type QmpServerView,
  type QmpSessionView,
  type QmpVersionInfo,
} from "./commands.ts";
export { defineEnum, defineStruct, defineUnion, type Infer, type InferMembers, type MemberMap, type QType } from "./schema.ts";
export { registerLifecycleCommands, registerLifecycleEvents, ShutdownCauseEnum, RunStateEnum } from "./lifecycle.ts";
export { RUN_STATES, type RunState, type VcpuInfo, type VmController, type VmEventListener } from "./vm-controller.ts";
export {
  QmpError,
  QmpListenError,
  QmpSocketInUseError,
  QmpSchemaError,
  QmpClientError,
  QmpUsageError,
  type QmpErrorClass,
} from "./errors.ts";
export { runQmpClient } from "./client.ts";
