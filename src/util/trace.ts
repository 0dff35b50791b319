/**
 * Timestamped trace points for the parts of kiln where milliseconds matter (a migration's switchover).
 * Off unless KILN_TRACE=1; then each point prints `kiln-trace NAME EPOCH_MS` to stderr, comparable
 * across threads and processes on one host.
 */
const on = process.env.KILN_TRACE === "1";

export function trace(name: string): void {
  if (on) process.stderr.write(`kiln-trace ${name} ${(performance.timeOrigin + performance.now()).toFixed(3)}\n`);
}
