/**
 * Request/response over a data-path Worker: one command in flight, answered by exactly one message
 * (send-worker) or by a stream of events the caller consumes (recv-worker).
 */

export function workerUrl(name: string): string {
  // In the compiled binary Workers are extra entry points stored under the bundle root.
  if (import.meta.url.startsWith("file:///$bunfs/")) return `/$bunfs/root/migration/${name}.ts`;
  return new URL(`./${name}.ts`, import.meta.url).href;
}

export class WorkerChannel<Cmd, Reply extends { type: string }> {
  private readonly worker: Worker;
  private queue: ((r: Reply) => void)[] = [];
  private listeners: ((r: Reply) => void)[] = [];
  private dead: Error | undefined;

  constructor(name: string) {
    this.worker = new Worker(workerUrl(name));
    this.worker.onmessage = (ev: MessageEvent<Reply>) => {
      const waiter = this.queue.shift();
      if (waiter) waiter(ev.data);
      else for (const l of this.listeners) l(ev.data);
    };
    this.worker.onerror = (ev) => {
      this.dead = new Error(`migration worker failed: ${(ev as ErrorEvent).message}`);
      const err = { type: "error", message: this.dead.message } as unknown as Reply;
      for (const w of this.queue.splice(0)) w(err);
      for (const l of this.listeners) l(err);
    };
  }

  /** Send a command and wait for its one reply. */
  call(cmd: Cmd): Promise<Reply> {
    if (this.dead) return Promise.resolve({ type: "error", message: this.dead.message } as unknown as Reply);
    return new Promise((resolve) => {
      this.queue.push(resolve);
      this.worker.postMessage(cmd);
    });
  }

  /** Send a command whose answers arrive as events (see onEvent). */
  post(cmd: Cmd): void {
    this.worker.postMessage(cmd);
  }

  /** Messages that are not the reply to a `call`. */
  onEvent(cb: (r: Reply) => void): void {
    this.listeners.push(cb);
  }

  terminate(): void {
    this.worker.terminate();
  }
}
