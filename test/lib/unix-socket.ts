/** Connecting to a socket kiln is about to listen on. */
import type { Socket, SocketHandler } from "bun";

/**
 * Connect to the unix socket at `path`, retrying while it does not exist yet or exists without a
 * listener (between kiln's bind and listen: ECONNREFUSED), until `timeoutMs` has passed.
 */
export async function connectUnix<T = undefined>(path: string, socket: SocketHandler<T>, timeoutMs = 10_000): Promise<Socket<T>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await Bun.connect({ unix: path, socket });
    } catch (e) {
      const code = (e as { code?: string }).code;
      if ((code !== "ENOENT" && code !== "ECONNREFUSED") || performance.now() > deadline) throw e;
    }
    await Bun.sleep(5);
  }
}
