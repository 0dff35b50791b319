/**
 * kiln's built-in QMP commands (control, queries, VM lifecycle) and events, with QEMU 7.2's types and
 * result shapes.
 */
import { CommandTable, EventTable, defineQmpCommand, defineQmpEvent, type QmpCapability } from "./commands.ts";
import { QmpError } from "./errors.ts";
import { introspect, defineEnum, defineStruct, defineUnion } from "./schema.ts";
import { RUN_STATES } from "./vm-controller.ts";

// ---- types (qapi/*.json) --------------------------------------------------------------------------

export const QMPCapabilityEnum = defineEnum("QMPCapability", ["oob"]);
export const RunStateEnum = defineEnum("RunState", RUN_STATES);

export const ShutdownCauseEnum = defineEnum("ShutdownCause", [
  "none",
  "host-error",
  "host-qmp-quit",
  "host-qmp-system-reset",
  "host-signal",
  "host-ui",
  "guest-shutdown",
  "guest-reset",
  "guest-panic",
  "subsystem-reset",
  "snapshot-load",
]);

const VersionTriple = defineStruct("VersionTriple", { major: "int", minor: "int", micro: "int" });
const VersionInfo = defineStruct("VersionInfo", { qemu: VersionTriple, package: "str" });
const CommandInfo = defineStruct("CommandInfo", { name: "str" });
const StatusInfo = defineStruct("StatusInfo", { running: "bool", singlestep: "bool", status: RunStateEnum });
const NameInfo = defineStruct("NameInfo", { "*name": "str" });
const UuidInfo = defineStruct("UuidInfo", { UUID: "str" });
const KvmInfo = defineStruct("KvmInfo", { enabled: "bool", present: "bool" });

const CpuInstanceProperties = defineStruct("CpuInstanceProperties", {
  "*node-id": "int",
  "*socket-id": "int",
  "*die-id": "int",
  "*cluster-id": "int",
  "*core-id": "int",
  "*thread-id": "int",
});
const SysEmuTargetEnum = defineEnum("SysEmuTarget", [
  "aarch64",
  "alpha",
  "arm",
  "avr",
  "cris",
  "hppa",
  "i386",
  "loongarch64",
  "m68k",
  "microblaze",
  "microblazeel",
  "mips",
  "mips64",
  "mips64el",
  "mipsel",
  "nios2",
  "or1k",
  "ppc",
  "ppc64",
  "riscv32",
  "riscv64",
  "rx",
  "s390x",
  "sh4",
  "sh4eb",
  "sparc",
  "sparc64",
  "tricore",
  "x86_64",
  "xtensa",
  "xtensaeb",
]);
const CpuInfoFast = defineStruct("CpuInfoFast", {
  "cpu-index": "int",
  "qom-path": "str",
  "thread-id": "int",
  "*props": CpuInstanceProperties,
  target: SysEmuTargetEnum,
});

// SchemaInfo (qapi/introspect.json), so that query-qmp-schema describes itself.
const SchemaMetaType = defineEnum("SchemaMetaType", ["builtin", "enum", "array", "object", "alternate", "command", "event"]);
const JSONType = defineEnum("JSONType", ["string", "number", "int", "boolean", "null", "object", "array", "value"]);
const SchemaInfo = defineUnion(
  "SchemaInfo",
  { name: "str", "meta-type": SchemaMetaType, "*features": ["str"] },
  "meta-type",
  {
    builtin: defineStruct("SchemaInfoBuiltin", { "json-type": JSONType }),
    enum: defineStruct("SchemaInfoEnum", {
      members: [defineStruct("SchemaInfoEnumMember", { name: "str", "*features": ["str"] })],
      values: ["str"],
    }),
    array: defineStruct("SchemaInfoArray", { "element-type": "str" }),
    object: defineStruct("SchemaInfoObject", {
      members: [defineStruct("SchemaInfoObjectMember", { name: "str", type: "str", "*default": "any", "*features": ["str"] })],
      "*tag": "str",
      "*variants": [defineStruct("SchemaInfoObjectVariant", { case: "str", type: "str" })],
    }),
    alternate: defineStruct("SchemaInfoAlternate", {
      members: [defineStruct("SchemaInfoAlternateMember", { type: "str" })],
    }),
    command: defineStruct("SchemaInfoCommand", { "arg-type": "str", "ret-type": "str", "*allow-oob": "bool" }),
    event: defineStruct("SchemaInfoEvent", { "arg-type": "str" }),
  },
);

// ---- commands --------------------------------------------------------------------------------------

export const qmpCapabilities = defineQmpCommand({
  name: "qmp_capabilities",
  args: { "*enable": [QMPCapabilityEnum] },
  run({ enable }, { session, server }) {
    if (session.negotiated) {
      throw new QmpError("CommandNotFound", "Capabilities negotiation is already complete, command ignored");
    }
    const wanted = enable ?? [];
    const unavailable = wanted.filter((c) => !server.capabilities.includes(c));
    if (unavailable.length > 0) throw QmpError.generic(`Capability ${unavailable.join(", ")} not available`);
    session.completeNegotiation([...new Set<QmpCapability>(wanted)]);
  },
});

export const queryVersion = defineQmpCommand({
  name: "query-version",
  returns: VersionInfo,
  run: (_a, { server }) => server.versionInfo,
});

export const queryCommands = defineQmpCommand({
  name: "query-commands",
  returns: [CommandInfo],
  run: (_a, { server }) => server.commands.list().map((c) => ({ name: c.name })),
});

export const queryStatus = defineQmpCommand({
  name: "query-status",
  returns: StatusInfo,
  run(_a, { vm }) {
    const status = vm.runState();
    return { status, singlestep: false, running: status === "running" };
  },
});

export const queryName = defineQmpCommand({
  name: "query-name",
  returns: NameInfo,
  run: (_a, { vm }) => (vm.name === null ? {} : { name: vm.name }),
});

export const queryUuid = defineQmpCommand({
  name: "query-uuid",
  returns: UuidInfo,
  run: (_a, { vm }) => ({ UUID: vm.uuid ?? "00000000-0000-0000-0000-000000000000" }),
});

export const queryKvm = defineQmpCommand({
  name: "query-kvm",
  returns: KvmInfo,
  // kiln only runs on KVM: if it is up, KVM is present and in use.
  run: () => ({ enabled: true, present: true }),
});

export const queryCpusFast = defineQmpCommand({
  name: "query-cpus-fast",
  returns: [CpuInfoFast],
  run: (_a, { vm }) =>
    vm.cpus().map((c) => ({
      "cpu-index": c.cpuIndex,
      "qom-path": c.qomPath ?? `/machine/unattached/device[${c.cpuIndex}]`,
      "thread-id": c.threadId,
      props:
        c.dieId === undefined
          ? { "core-id": c.coreId, "thread-id": c.threadIdInCore, "socket-id": c.socketId }
          : { "core-id": c.coreId, "thread-id": c.threadIdInCore, "die-id": c.dieId, "socket-id": c.socketId },
      target: "x86_64" as const,
    })),
});

export const stop = defineQmpCommand({
  name: "stop",
  run: async (_a, { vm }) => {
    await vm.stop();
  },
});

export const cont = defineQmpCommand({
  name: "cont",
  run: async (_a, { vm }) => {
    await vm.cont();
  },
});

export const systemReset = defineQmpCommand({
  name: "system_reset",
  async run(_a, { vm, server, afterReply }) {
    await vm.systemReset();
    // QEMU resets from its main loop after replying, then announces it.
    afterReply(() => server.emit("RESET", { guest: false, reason: "host-qmp-system-reset" }));
  },
});

export const systemPowerdown = defineQmpCommand({
  name: "system_powerdown",
  async run(_a, { vm, server, afterReply }) {
    await vm.systemPowerdown();
    afterReply(() => server.emit("POWERDOWN"));
  },
});

export const quit = defineQmpCommand({
  name: "quit",
  run(_a, { server, afterReply }) {
    // As QEMU: the SHUTDOWN event goes out before the reply, then the connection closes.
    server.emit("SHUTDOWN", { guest: false, reason: "host-qmp-quit" });
    afterReply(() => server.quit());
  },
});

export const queryQmpSchema = defineQmpCommand({
  name: "query-qmp-schema",
  returns: [SchemaInfo],
  run: (_a, { server }) => introspect(server.commands.list(), server.events.list()),
});

/** Commands that exist before capabilities negotiation (QEMU: qmp_capabilities only). */
export function negotiationCommands(): CommandTable {
  return new CommandTable().register(qmpCapabilities);
}

export function registerLifecycleCommands(table: CommandTable): CommandTable {
  return table.register(
    qmpCapabilities,
    queryVersion,
    queryCommands,
    queryStatus,
    queryName,
    queryUuid,
    queryKvm,
    queryCpusFast,
    stop,
    cont,
    systemReset,
    systemPowerdown,
    quit,
    queryQmpSchema,
  );
}

// ---- events ----------------------------------------------------------------------------------------

export const lifecycleEvents = [
  defineQmpEvent({ name: "SHUTDOWN", data: { guest: "bool", reason: ShutdownCauseEnum } }),
  defineQmpEvent({ name: "POWERDOWN" }),
  defineQmpEvent({ name: "RESET", data: { guest: "bool", reason: ShutdownCauseEnum } }),
  defineQmpEvent({ name: "STOP" }),
  defineQmpEvent({ name: "RESUME" }),
];

export function registerLifecycleEvents(table: EventTable): EventTable {
  return table.register(...lifecycleEvents);
}
