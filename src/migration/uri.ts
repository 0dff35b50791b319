/**
 * Migration URIs, as QEMU and StratoVirt spell them: tcp:HOST:PORT (IPv4, [IPv6] or a name), unix:PATH,
 * file:PATH, exec:COMMAND. `-incoming defer` waits for QMP migrate-incoming.
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import type { SockAddr } from "../../ffi/socket.ts";

export type MigrationUri =
  | { transport: "tcp"; host: string; port: number }
  | { transport: "unix"; path: string }
  | { transport: "file"; path: string }
  | { transport: "exec"; command: string };

export class UriError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UriError";
  }
}

/** QEMU's message for anything it cannot parse. */
export const BAD_PROTOCOL = "Parameter 'uri' expects a valid migration protocol";

export function parseMigrationUri(uri: string): MigrationUri {
  const colon = uri.indexOf(":");
  if (colon < 0) throw new UriError(BAD_PROTOCOL);
  const scheme = uri.slice(0, colon);
  const rest = uri.slice(colon + 1);
  switch (scheme) {
    case "tcp": {
      const m = rest.match(/^\[([0-9a-fA-F:.]+)\]:(\d+)$/) ?? rest.match(/^([^:\[\]]+):(\d+)$/);
      if (!m) throw new UriError(`invalid tcp migration address '${rest}' (expected tcp:HOST:PORT or tcp:[IPv6]:PORT)`);
      const port = Number(m[2]);
      if (port < 1 || port > 65535) throw new UriError(`invalid tcp port ${m[2]}`);
      return { transport: "tcp", host: m[1]!, port };
    }
    case "unix":
      if (!rest) throw new UriError("unix: needs a socket path");
      if (Buffer.byteLength(rest) > 107) throw new UriError(`unix socket path too long (max 107 bytes): ${rest}`);
      return { transport: "unix", path: rest };
    case "file":
      if (!rest) throw new UriError("file: needs a path");
      return { transport: "file", path: rest };
    case "exec":
      if (!rest.trim()) throw new UriError("exec: needs a command");
      return { transport: "exec", command: rest };
    default:
      throw new UriError(BAD_PROTOCOL);
  }
}

export function describeUri(u: MigrationUri): string {
  switch (u.transport) {
    case "tcp":
      return `${u.host.includes(":") ? `[${u.host}]` : u.host}:${u.port}`;
    case "unix":
    case "file":
      return u.path;
    case "exec":
      return u.command;
  }
}

/** Resolve a tcp host to a numeric socket address (the data-path Worker connects with plain libc). */
export async function resolveSockAddr(u: MigrationUri & { transport: "tcp" | "unix" }, forListen = false): Promise<SockAddr> {
  if (u.transport === "unix") return { family: "unix", path: u.path };
  let host = u.host;
  if (forListen && (host === "" || host === "*")) host = "0.0.0.0";
  const kind = isIP(host);
  if (kind === 4) return { family: "inet", host, port: u.port };
  if (kind === 6) return { family: "inet6", host, port: u.port };
  try {
    const r = await lookup(host);
    return r.family === 6 ? { family: "inet6", host: r.address, port: u.port } : { family: "inet", host: r.address, port: u.port };
  } catch {
    throw new UriError(`cannot resolve host '${host}'`);
  }
}
