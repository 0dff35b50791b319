/**
 * Migration parameters and capabilities, with QEMU's names, units and defaults (migration/options.c).
 * Only what kiln implements is accepted (and listed by query-qmp-schema): a parameter or capability
 * that would be silently ignored is refused, rather than pretending.
 */

export interface MigrationParameters {
  /** Bytes per second; 0 = unlimited. QEMU's default: 128 MiB/s. */
  "max-bandwidth": number;
  /** Milliseconds of acceptable downtime at switchover; QEMU's default: 300. */
  "downtime-limit": number;
}

export const DEFAULT_PARAMETERS: MigrationParameters = {
  "max-bandwidth": 128 * 1024 * 1024,
  "downtime-limit": 300,
};

/** QEMU caps downtime-limit at 2000 s. */
export const MAX_DOWNTIME_MS = 2000 * 1000;

export class ParameterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ParameterError";
  }
}

/** Validate and merge a migrate-set-parameters request (QEMU's messages for range errors). */
export function applyParameters(cur: MigrationParameters, args: Record<string, unknown>): MigrationParameters {
  const next = { ...cur };
  for (const [k, v] of Object.entries(args)) {
    switch (k) {
      case "max-bandwidth":
        if (typeof v !== "number" || !Number.isInteger(v)) throw new ParameterError("Invalid parameter type for 'max-bandwidth', expected: integer");
        if (v < 0 || v > Number.MAX_SAFE_INTEGER) throw new ParameterError("Parameter 'max_bandwidth' expects an integer in the range of 0 to 9007199254740991 bytes/second");
        next["max-bandwidth"] = v;
        break;
      case "downtime-limit":
        if (typeof v !== "number" || !Number.isInteger(v)) throw new ParameterError("Invalid parameter type for 'downtime-limit', expected: integer");
        if (v < 0 || v > MAX_DOWNTIME_MS) throw new ParameterError("Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms");
        next["downtime-limit"] = v;
        break;
      default:
        throw new ParameterError(`Parameter '${k}' is unexpected`);
    }
  }
  return next;
}

/**
 * events: MIGRATION / MIGRATION_PASS events (QEMU's). x-ignore-shared: guest RAM is shared memory, so
 * over a unix: socket kiln passes its memfd to the destination instead of copying pages (QEMU's name
 * for not migrating shared RAM; the same-host upgrade).
 */
export const CAPABILITIES = ["events", "x-ignore-shared"] as const;
export type Capability = (typeof CAPABILITIES)[number];

export function checkCapability(name: unknown): Capability {
  if (typeof name !== "string") throw new ParameterError("Invalid parameter type for 'capability', expected: string");
  if ((CAPABILITIES as readonly string[]).includes(name)) return name as Capability;
  throw new ParameterError(`Parameter 'capability' does not accept value '${name}'`);
}
