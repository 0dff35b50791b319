/**
 * Timestamped trace points for the parts of kiln where milliseconds matter (a migration's switchover).
 * Off unless KILN_TRACE=1; then each point writes `kiln-trace NAME EPOCH_MS` to stderr with one
 * write(2) (process.stderr is asynchronous and would itself shift the timeline), comparable across
 * threads and processes on one host.
 */
import { writeFd } from "../../ffi/libc.ts";

const on = process.env.KILN_TRACE === "1";

export function trace(name: string): void {
  if (!on) return;
  writeFd(2, new TextEncoder().encode(`kiln-trace ${name} ${(performance.timeOrigin + performance.now()).toFixed(3)}\n`));
}
