/**
 * The QMP command and event tables. Adding a command is one registration:
 *
 *   table.register(defineQmpCommand({
 *     name: "migrate",
 *     args: { uri: "str", "*detach": "bool" },        // checked before run(); "*x" is optional
 *     run: async ({ uri }, ctx) => { ... },             // args typed {uri: string; detach?: boolean}
 *   }));
 *
 * The same description feeds argument checking, query-commands and query-qmp-schema.
 */
import { QmpSchemaError } from "./errors.ts";
import { checkMembers, type Infer, type InferMembers, type MemberMap, type QType, type SchemaCommand, type SchemaEvent } from "./schema.ts";
import type { VmController } from "./vm-controller.ts";

/** QMP capabilities a client may enable with qmp_capabilities (QEMU 7.2 has only "oob"). */
export type QmpCapability = "oob";

/** The client connection a command runs for. */
export interface QmpSessionView {
  /** Unique per connection, for logs. */
  readonly id: number;
  readonly negotiated: boolean;
  readonly oobEnabled: boolean;
  /** Leave capabilities-negotiation mode with these capabilities enabled (qmp_capabilities only). */
  completeNegotiation(enabled: readonly QmpCapability[]): void;
}

/** The server as commands see it. */
export interface QmpServerView {
  readonly commands: CommandTable;
  readonly events: EventTable;
  /** query-version's answer. */
  readonly versionInfo: QmpVersionInfo;
  /** Capabilities offered in the greeting. */
  readonly capabilities: readonly QmpCapability[];
  /** Broadcast an event to every negotiated client, timestamped now. */
  emit(event: string, data?: Record<string, unknown>): void;
  /** QMP quit: flush replies, close the server (removing socket files), then VmController.quit(). */
  quit(): void;
}

export interface QmpVersionInfo {
  qemu: { micro: number; minor: number; major: number };
  package: string;
}

export interface CommandContext {
  readonly vm: VmController;
  readonly session: QmpSessionView;
  readonly server: QmpServerView;
  /** Run `fn` once this command's reply has been written (e.g. an event QEMU sends after the reply). */
  afterReply(fn: () => void): void;
}

type Returned<R> = [R] extends [QType] ? Infer<R> : void | Record<string, never>;

export interface CommandSpec<A extends MemberMap, R extends QType | undefined> {
  name: string;
  /** Argument members; omit for none. */
  args?: A;
  /** Result type; omit for commands that return {} (QEMU's commands without 'returns'). */
  returns?: R;
  /** May be run with exec-oob (immediately, outside the in-band queue). */
  allowOob?: boolean;
  run(args: InferMembers<A>, ctx: CommandContext): Returned<R> | Promise<Returned<R>>;
}

/** A registered command with its types erased. */
export interface QmpCommand extends SchemaCommand {
  run(args: Record<string, unknown>, ctx: CommandContext): unknown;
}

const COMMAND_NAME = /^[a-z][a-z0-9_-]*$/;
const EVENT_NAME = /^[A-Z][A-Z0-9_]*$/;

export function defineQmpCommand<const A extends MemberMap = {}, const R extends QType | undefined = undefined>(
  spec: CommandSpec<A, R>,
): QmpCommand {
  if (!COMMAND_NAME.test(spec.name)) throw new QmpSchemaError(`bad QMP command name '${spec.name}'`);
  const args: MemberMap = spec.args ?? {};
  checkMembers(spec.name, args);
  return {
    name: spec.name,
    args,
    returns: spec.returns,
    allowOob: spec.allowOob ?? false,
    run: spec.run as QmpCommand["run"],
  };
}

export class CommandTable {
  private readonly byName = new Map<string, QmpCommand>();

  register(...commands: QmpCommand[]): this {
    for (const c of commands) {
      if (this.byName.has(c.name)) throw new QmpSchemaError(`QMP command '${c.name}' is already registered`);
      this.byName.set(c.name, c);
    }
    return this;
  }

  get(name: string): QmpCommand | undefined {
    return this.byName.get(name);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** In registration order. */
  list(): QmpCommand[] {
    return [...this.byName.values()];
  }
}

export interface QmpEventDef extends SchemaEvent {}

export function defineQmpEvent(spec: { name: string; data?: MemberMap }): QmpEventDef {
  if (!EVENT_NAME.test(spec.name)) throw new QmpSchemaError(`bad QMP event name '${spec.name}'`);
  if (spec.data) checkMembers(spec.name, spec.data);
  return { name: spec.name, data: spec.data };
}

export class EventTable {
  private readonly byName = new Map<string, QmpEventDef>();

  register(...events: QmpEventDef[]): this {
    for (const e of events) {
      if (this.byName.has(e.name)) throw new QmpSchemaError(`QMP event '${e.name}' is already registered`);
      this.byName.set(e.name, e);
    }
    return this;
  }

  get(name: string): QmpEventDef | undefined {
    return this.byName.get(name);
  }

  list(): QmpEventDef[] {
    return [...this.byName.values()];
  }
}
