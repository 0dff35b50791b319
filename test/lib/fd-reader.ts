/**
 * A child's stdout/stderr for tests, read off the main thread.
 *
 * Bun's own subprocess pipe reader (proc.stdout as a ReadableStream) was seen to stop delivering in
 * long migration tests: the child's output sat unread in the socket while the pending read never
 * resolved, so a healthy guest looked silent. Here each stream is a plain pipe that a Worker reads
 * with blocking read(2), which does not depend on the event loop's readiness notifications.
 */
import { pipe } from "../../ffi/socket.ts";
import { close } from "../../ffi/libc.ts";

export class FdReader {
  /** The end to hand to the child (close it here once the child has it: see childStarted). */
  readonly writeFd: number;
  /** Resolves at end of file (every writer closed) or on a read error. */
  readonly done: Promise<void>;
  /** Why reading stopped early, if it did. */
  error: string | undefined;
  private readonly readFd: number;
  private resolveDone!: () => void;
  private started = false;

  /** A new pipe; with `paused`, nothing reads it until start() (a reader that is not keeping up). */
  constructor(
    private readonly onData: (bytes: Uint8Array) => void,
    paused = false,
  ) {
    const [r, w] = pipe();
    this.writeFd = w;
    this.readFd = r;
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    if (!paused) this.start();
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    const worker = new Worker(new URL("./fd-reader-worker.ts", import.meta.url).href);
    // A descendant that keeps the pipe open must not keep the test runner alive.
    worker.unref();
    worker.onmessage = (ev: MessageEvent<Uint8Array | { eof?: true; error?: string }>) => {
      const m = ev.data;
      if (m instanceof Uint8Array) this.onData(m);
      else if (m.error) this.error = m.error;
      else if (m.eof) {
        worker.terminate();
        this.resolveDone();
      }
    };
    worker.postMessage({ fd: this.readFd });
  }

  /** The child has its copy: drop ours, so end of file comes when the child (and its children) close theirs. */
  childStarted(): void {
    close(this.writeFd);
  }
}
