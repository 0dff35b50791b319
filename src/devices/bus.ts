/**
 * Device-side interfaces. The main thread owns every device model; vCPU Workers forward PIO/MMIO exits
 * to it and wait for the answer, so device models never need locks.
 */
export type AccessSize = 1 | 2 | 4 | 8;

/** A device on the x86 I/O port bus; `offset` is relative to the base port it was registered at. */
export interface PioDevice {
  pioRead(offset: number, size: AccessSize): number;
  pioWrite(offset: number, size: AccessSize, value: number): void;
}

/** A device in the MMIO space; `offset` is relative to its base address. Values wider than 32 bits are bigint. */
export interface MmioDevice {
  mmioRead(offset: number, size: AccessSize): number | bigint;
  mmioWrite(offset: number, size: AccessSize, value: number | bigint): void;
}

/** An interrupt line into the in-kernel irqchip (or a test double). Level semantics: set(true) asserts. */
export interface IrqLine {
  set(level: boolean): void;
}
