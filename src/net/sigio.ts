/**
 * One process-wide SIGIO handler for every fd kiln asks the kernel to signal on (taps; see
 * ffi/io.ts signalOnReadable). A signal does not say which fd is ready, so each subscriber checks its
 * own, reading until EAGAIN; signals that arrive while one is pending merge into it, which loses
 * nothing as long as every subscriber drains.
 */
const subscribers = new Set<() => void>();
let installed = false;

function dispatch(): void {
  for (const cb of [...subscribers]) cb();
}

/** Run `cb` on the main thread after every SIGIO; returns the unsubscribe function. */
export function onSigio(cb: () => void): () => void {
  if (!installed) {
    process.on("SIGIO", dispatch);
    installed = true;
  }
  subscribers.add(cb);
  // The handler stays installed for good: SIGIO's default action ends the process, and a signal can
  // still be on its way after the last tap closed.
  return () => void subscribers.delete(cb);
}
