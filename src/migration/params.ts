/**
 * Migration parameters and capabilities, with QEMU's names, units and defaults (migration/options.c).
 * Only what kiln implements is accepted: a parameter or capability that would be silently ignored is
 * refused with a message saying so, rather than pretending.
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
        throw new ParameterError(
          KNOWN_QEMU_PARAMETERS.has(k) ? `Parameter '${k}' is not supported by kiln yet` : `Parameter '${k}' is unexpected`,
        );
    }
  }
  return next;
}

/** QEMU parameters kiln knows of but does not implement yet (so the refusal can say "not yet"). */
const KNOWN_QEMU_PARAMETERS = new Set([
  "announce-initial", "announce-max", "announce-rounds", "announce-step", "compress-level", "compress-threads",
  "compress-wait-thread", "decompress-threads", "cpu-throttle-initial", "cpu-throttle-increment",
  "cpu-throttle-tailslow", "max-cpu-throttle", "throttle-trigger-threshold", "tls-creds", "tls-hostname", "tls-authz",
  "max-postcopy-bandwidth", "multifd-channels", "multifd-compression", "multifd-zlib-level", "multifd-zstd-level",
  "xbzrle-cache-size", "x-checkpoint-delay", "block-incremental", "compress-method",
]);

export const CAPABILITIES = ["events"] as const;
export type Capability = (typeof CAPABILITIES)[number];

const KNOWN_QEMU_CAPABILITIES = new Set([
  "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "postcopy-ram", "x-colo", "release-ram",
  "block", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
  "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
]);

export function checkCapability(name: unknown): Capability {
  if (typeof name !== "string") throw new ParameterError("Invalid parameter type for 'capability', expected: string");
  if ((CAPABILITIES as readonly string[]).includes(name)) return name as Capability;
  if (KNOWN_QEMU_CAPABILITIES.has(name)) throw new ParameterError(`Capability '${name}' is not supported by kiln yet`);
  throw new ParameterError(`Parameter 'capability' does not accept value '${name}'`);
}
