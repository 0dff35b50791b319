/**
 * Migration's QMP commands and events, with QEMU 7.2's names, argument types and result shapes:
 * migrate, migrate_cancel, query-migrate, migrate-set-parameters / query-migrate-parameters (and the
 * legacy migrate_set_speed / migrate_set_downtime), migrate-set-capabilities /
 * query-migrate-capabilities, migrate-incoming; events MIGRATION and MIGRATION_PASS.
 */
import { CommandTable, EventTable, defineQmpCommand, defineQmpEvent, defineEnum, defineStruct, QmpError } from "../qmp/index.ts";
import { MigrationError, type MigrationManager } from "./manager.ts";
import { CAPABILITIES } from "./params.ts";
import { ParameterError } from "./params.ts";

const MigrationStatusEnum = defineEnum("MigrationStatus", ["none", "setup", "cancelling", "cancelled", "active", "completed", "failed"]);
const MigrationCapabilityEnum = defineEnum("MigrationCapability", CAPABILITIES);
const MigrationCapabilityStatus = defineStruct("MigrationCapabilityStatus", { capability: MigrationCapabilityEnum, state: "bool" });
const MigrationParameters = defineStruct("MigrationParameters", { "*max-bandwidth": "size", "*downtime-limit": "uint64" });

/** QEMU reports an exhausted or refused migration as a GenericError with the reason. */
function qmpErrors<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof MigrationError || e instanceof ParameterError) throw QmpError.generic(e.message);
    throw e;
  }
}

export function registerMigrationCommands(table: CommandTable, mgr: MigrationManager, opts: { deferredIncoming: () => boolean }): void {
  table.register(
    defineQmpCommand({
      name: "migrate",
      args: { uri: "str", "*blk": "bool", "*inc": "bool", "*detach": "bool", "*resume": "bool" },
      run({ uri, blk, inc, resume }) {
        if (blk || inc) throw QmpError.generic("block migration (blk/inc) is not supported; use shared storage");
        if (resume) throw QmpError.generic("resuming a postcopy migration is not supported");
        qmpErrors(() => mgr.migrate(uri));
      },
    }),
    defineQmpCommand({
      name: "migrate_cancel",
      run() {
        mgr.cancel();
      },
    }),
    defineQmpCommand({
      name: "query-migrate",
      returns: "any",
      run: () => mgr.query(),
    }),
    defineQmpCommand({
      name: "migrate-set-parameters",
      args: { "*max-bandwidth": "size", "*downtime-limit": "uint64" },
      run(args) {
        qmpErrors(() => mgr.setParameters(args));
      },
    }),
    defineQmpCommand({
      name: "query-migrate-parameters",
      returns: MigrationParameters,
      run: () => ({ ...mgr.params }),
    }),
    defineQmpCommand({
      name: "migrate_set_speed",
      args: { value: "int" },
      run({ value }) {
        qmpErrors(() => mgr.setParameters({ "max-bandwidth": value }));
      },
    }),
    defineQmpCommand({
      name: "migrate_set_downtime",
      args: { value: "number" },
      run({ value }) {
        // Seconds here, milliseconds in downtime-limit.
        qmpErrors(() => mgr.setParameters({ "downtime-limit": Math.round(value * 1000) }));
      },
    }),
    defineQmpCommand({
      name: "migrate-set-capabilities",
      args: { capabilities: [MigrationCapabilityStatus] },
      run({ capabilities }) {
        qmpErrors(() => mgr.setCapabilities(capabilities));
      },
    }),
    defineQmpCommand({
      name: "query-migrate-capabilities",
      returns: [MigrationCapabilityStatus],
      run: () => mgr.queryCapabilities() as { capability: (typeof CAPABILITIES)[number]; state: boolean }[],
    }),
    defineQmpCommand({
      name: "migrate-incoming",
      args: { uri: "str" },
      async run({ uri }) {
        try {
          await mgr.migrateIncoming(uri, opts.deferredIncoming());
        } catch (e) {
          if (e instanceof Error) throw QmpError.generic(e.message);
          throw e;
        }
      },
    }),
  );
}

export function registerMigrationEvents(table: EventTable): void {
  table.register(
    defineQmpEvent({ name: "MIGRATION", data: { status: MigrationStatusEnum } }),
    defineQmpEvent({ name: "MIGRATION_PASS", data: { pass: "int" } }),
  );
}
