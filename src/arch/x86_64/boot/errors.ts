/** Errors the x86-64 boot loaders raise. Messages name the file and say what kiln expected. */

/** Base class: anything that stops kiln from loading the guest kernel. */
export class BootError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BootError";
  }
}

/** The kernel file is not something kiln can boot, or it is malformed. */
export class KernelFormatError extends BootError {
  constructor(
    readonly path: string,
    readonly problem: string,
  ) {
    super(`kernel ${path}: ${problem}`);
    this.name = "KernelFormatError";
  }
}

/** The kernel is fine but the rest of the boot configuration (RAM, command line, initrd) does not work with it. */
export class BootConfigError extends BootError {
  constructor(message: string) {
    super(message);
    this.name = "BootConfigError";
  }
}

/** "64 MiB" / "1.5 MiB" / "512 KiB": sizes for messages. */
export function formatSize(bytes: number): string {
  const MiB = 1024 * 1024;
  if (bytes >= MiB) {
    const m = bytes / MiB;
    return `${Number.isInteger(m) ? m : m.toFixed(1)} MiB`;
  }
  if (bytes >= 1024) {
    const k = bytes / 1024;
    return `${Number.isInteger(k) ? k : k.toFixed(1)} KiB`;
  }
  return `${bytes} bytes`;
}

export function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}
