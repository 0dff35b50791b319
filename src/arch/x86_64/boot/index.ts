/** x86-64 kernel loading: PVH and the Linux 64-bit boot protocol. */
export { loadKernel, type BootEntry, type BootSpec } from "./loader.ts";
export { initialCpuState, encodeDescriptor, encodeGdt, type BootCpuState, type SegmentState } from "./cpu-state.ts";
export { BootConfigError, BootError, KernelFormatError } from "./errors.ts";
