#!/usr/bin/env bun
/** kiln: a migration-first KVM hypervisor. */
import { main } from "./cli/main.ts";

// No top-level await: the compiled binary is built as bytecode, which needs a CommonJS-shaped entry.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`kiln: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
