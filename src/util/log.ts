/**
 * kiln's log: consola, but never on stdout (that is the guest's console with -serial stdio). Messages go
 * to stderr as "kiln: message", or with timestamps to the file given by -D. KILN_LOG=debug|info|warn
 * sets how much is said (default: warnings and errors; info with -D).
 */
import { createConsola, type ConsolaInstance, type LogObject } from "consola";
import { appendFileSync } from "node:fs";

const LEVELS: Record<string, number> = { error: 0, warn: 1, info: 3, debug: 4, trace: 5 };

function line(o: LogObject): string {
  const msg = o.args.map((a) => (a instanceof Error ? a.message : typeof a === "string" ? a : Bun.inspect(a))).join(" ");
  return msg;
}

export function createLogger(logFile: string | null): ConsolaInstance {
  const env = process.env.KILN_LOG;
  const level = env !== undefined && env in LEVELS ? LEVELS[env]! : logFile ? LEVELS.info! : LEVELS.warn!;
  return createConsola({
    level,
    reporters: [
      {
        log(o) {
          if (logFile) {
            appendFileSync(logFile, `${new Date(o.date).toISOString()} ${o.type}: ${line(o)}\n`);
          } else {
            process.stderr.write(`kiln: ${o.type === "info" || o.type === "log" ? "" : o.type + ": "}${line(o)}\n`);
          }
        },
      },
    ],
  });
}

/** The process-wide logger; main replaces it once the command line is parsed. */
export let log: ConsolaInstance = createLogger(null);

export function setLogger(l: ConsolaInstance): void {
  log = l;
}
