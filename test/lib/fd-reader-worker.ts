/**
 * Reads one pipe with blocking read(2) and posts what it gets; see fd-reader.ts for why a child's
 * output is not read through Bun's own pipe reader.
 */
import { close, readFd, SysError } from "../../ffi/libc.ts";

declare const self: Worker;

self.onmessage = (ev: MessageEvent<{ fd: number }>) => {
  const fd = ev.data.fd;
  const buf = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      let n: number;
      try {
        n = readFd(fd, buf);
      } catch (e) {
        if (e instanceof SysError && e.errnoName === "EINTR") continue;
        throw e;
      }
      if (n === 0) break;
      self.postMessage(buf.slice(0, n));
    }
  } catch (e) {
    self.postMessage({ error: (e as Error).message });
  } finally {
    close(fd);
    self.postMessage({ eof: true });
  }
};
