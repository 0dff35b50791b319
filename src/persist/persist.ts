/**
 * The contract every stateful component fulfils so that snapshots and live migration can move it
 * (Firecracker's Persist, Cloud Hypervisor's Snapshottable). State is plain JSON-serialisable data:
 * numbers, strings, booleans, arrays, plain objects (binary blobs as number arrays or base64 strings).
 * `restore` must validate what it is given and throw a PersistError naming the bad field rather than
 * ever accepting out-of-range values: a migration stream is untrusted input.
 */
export interface Persistent<S = unknown> {
  /** Stable section name in the migration stream, e.g. "serial@0x3f8". */
  readonly persistName: string;
  /** Bumped whenever the shape of S changes. */
  readonly persistVersion: number;
  save(): S;
  restore(state: S, version: number): void;
}

export class PersistError extends Error {
  constructor(component: string, detail: string) {
    super(`cannot restore ${component}: ${detail}`);
    this.name = "PersistError";
  }
}
