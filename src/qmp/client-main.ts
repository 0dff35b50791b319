#!/usr/bin/env bun
/** Standalone entry for `kiln qmp` (tests spawn this; the kiln entry calls runQmpClient itself). */
import { runQmpClient } from "./client.ts";

runQmpClient(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`kiln qmp: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
