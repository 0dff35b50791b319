/** Typed errors of kiln's QMP server and client. */

/** QEMU's QapiErrorClass values (qapi/error.json), as sent in `{"error":{"class":...}}`. */
export type QmpErrorClass = "GenericError" | "CommandNotFound" | "DeviceNotActive" | "DeviceNotFound" | "KVMMissingCap";

/**
 * A command's failure as the client sees it. Command handlers (and VmController methods) throw this to
 * choose the class; any other Error becomes a GenericError with its message.
 */
export class QmpError extends Error {
  constructor(
    readonly errorClass: QmpErrorClass,
    message: string,
  ) {
    super(message);
    this.name = "QmpError";
  }

  static generic(message: string): QmpError {
    return new QmpError("GenericError", message);
  }
}

/** A -qmp listener could not be set up (bad path, address in use, not a socket...). */
export class QmpListenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QmpListenError";
  }
}

/** The unix socket path is served by a live process (another kiln, most likely): we do not steal it. */
export class QmpSocketInUseError extends QmpListenError {
  constructor(readonly path: string) {
    super(`QMP socket ${path} is in use by a running process (another kiln?); refusing to replace it`);
    this.name = "QmpSocketInUseError";
  }
}

/** A command or event definition is invalid (duplicate name, bad schema). A programming error. */
export class QmpSchemaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QmpSchemaError";
  }
}

/** `kiln qmp`: could not talk to the server (connect failure, not QMP, connection lost). */
export class QmpClientError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QmpClientError";
  }
}

/** `kiln qmp`: bad command line (exit status 2). */
export class QmpUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QmpUsageError";
  }
}
