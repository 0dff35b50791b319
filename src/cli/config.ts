/**
 * The typed result of parsing kiln's StratoVirt-style VM command line (src/cli/args.ts).
 *
 * Everything here is plain data: no classes, no Maps, no `undefined` (absent values are `null`), so a
 * config survives `JSON.parse(JSON.stringify(cfg))` unchanged. That matters because the migration source
 * sends its config to the destination, which compares it with its own.
 *
 * Defaults are resolved by the parser (e.g. memory 256 MiB, 1 vCPU, auto MAC addresses), so two kiln
 * processes started with the same command line produce equal configs.
 */

export type MachineType = "microvm" | "q35";

export interface MachineConfig {
  /** microvm: virtio-mmio devices, no PCI/ACPI. q35: PCIe root bus `pcie.0`, virtio-pci, ACPI. */
  type: MachineType;
  /**
   * `mem-share=on|off` (StratoVirt's; for vhost-user backends). kiln's guest RAM is always a shared
   * memfd mapping, so both values give the same machine; the flag is accepted for compatibility.
   */
  memShare: boolean;
  /** `dump-guest-core=off`: MADV_DONTDUMP guest RAM (default on). */
  dumpGuestCore: boolean;
}

/** Resolved vCPU topology; `sockets * dies * clusters * cores * threads === maxCpus` always holds. */
export interface SmpConfig {
  /** vCPUs present at boot, 1..254. */
  cpus: number;
  /** Upper bound for hot-plugged vCPUs, cpus..254. */
  maxCpus: number;
  sockets: number;
  dies: number;
  clusters: number;
  cores: number;
  threads: number;
}

export interface BootConfig {
  /** Paths are stored as given (possibly relative); the loader checks that they exist. */
  kernel: string;
  initrd: string | null;
  /** Kernel command line; "" when -append was not given. */
  append: string;
}

/** Where a socket listens. Unix paths are stored as given; TCP hosts without brackets ("::1"). */
export type SocketAddress =
  | { transport: "unix"; path: string }
  | { transport: "tcp"; host: string; port: number };

/** A character-device backend (for the serial port or a QMP monitor). */
export type ChardevBackend =
  | { kind: "stdio" }
  | { kind: "pty" }
  | { kind: "file"; path: string }
  /** kiln only listens: `server` is required. `wait: true` means the VM waits for a client before starting. */
  | { kind: "socket"; address: SocketAddress; wait: boolean };

export interface ChardevConfig {
  id: string;
  backend: ChardevBackend;
}

/** The COM1 UART's backend. `none`: output discarded, no input. */
export type SerialConfig = { kind: "none" } | ChardevBackend;

export type AioMode = "native" | "io_uring" | "threads" | "off";

/** A `-drive` backend (raw image file). Only `-device virtio-blk-*,drive=ID` makes it visible to the guest. */
export interface DriveConfig {
  id: string;
  file: string;
  readOnly: boolean;
  /** O_DIRECT; StratoVirt's default is on. */
  direct: boolean;
  /** null: kiln picks its engine. */
  aio: AioMode | null;
  /** throttling.iops-total; null: unlimited. */
  iopsTotal: number | null;
  /** Legacy QEMU drive serial; a device's `serial=` takes precedence. */
  serial: string | null;
}

export interface NetdevConfig {
  id: string;
  type: "tap";
  /** Host tap interface name; null when an inherited `fd` is used instead. */
  ifname: string | null;
  /** An already-open tap fd inherited from the parent (as libvirt passes). */
  fd: number | null;
  /** Queue pairs (multiqueue tap), 1..16. */
  queues: number;
}

/** A PCI function's location. `bus` is "pcie.0" or the id of a pcie-root-port. */
export interface PciAddress {
  bus: string;
  slot: number;
  function: number;
  multifunction: boolean;
}

export interface VirtioBlkDeviceConfig {
  driver: "virtio-blk-pci" | "virtio-blk-device";
  id: string | null;
  /** Id of a -drive. */
  drive: string;
  /** null for virtio-mmio (virtio-blk-device). */
  pci: PciAddress | null;
  /** Disk serial reported to the guest (≤ 20 bytes). */
  serial: string | null;
  numQueues: number;
  queueSize: number;
  bootIndex: number | null;
}

export interface VirtioNetDeviceConfig {
  driver: "virtio-net-pci" | "virtio-net-device";
  id: string | null;
  /** Id of a -netdev. */
  netdev: string;
  pci: PciAddress | null;
  /** Lower-case "52:54:00:12:34:56"; assigned deterministically (QEMU style) when not given. */
  mac: string;
  /** Multiqueue negotiation (`mq=on`); the queue count comes from the netdev's `queues`. */
  mq: boolean;
  queueSize: number;
}

export interface PcieRootPortConfig {
  driver: "pcie-root-port";
  /** Required: other devices name it as their `bus`. */
  id: string;
  pci: PciAddress;
  port: number | null;
  chassis: number | null;
}

export type DeviceConfig = VirtioBlkDeviceConfig | VirtioNetDeviceConfig | PcieRootPortConfig;
export type DeviceDriver = DeviceConfig["driver"];

/** Where a migration destination takes its incoming stream (`-incoming`). */
export type IncomingConfig =
  | { transport: "tcp"; host: string; port: number }
  | { transport: "unix"; path: string }
  /** A snapshot directory written by `migrate file:DIR`; `mapped`: mmap the memory file instead of reading it. */
  | { transport: "file"; path: string; mapped: boolean }
  /** Read the stream from a shell command's stdout (`sh -c COMMAND`). */
  | { transport: "exec"; command: string }
  /** Wait for QMP `migrate-incoming` to name the URI. */
  | { transport: "defer" };

/** Host-process behaviour: nothing here is visible to the guest. */
export interface ProcessConfig {
  /** -D PATH; null: log to stderr. */
  logFile: string | null;
  pidFile: string | null;
  daemonize: boolean;
  /** -S: create the VM but do not run vCPUs until QMP `cont`. */
  startPaused: boolean;
  /** -no-reboot: a guest reset exits kiln instead of rebooting. */
  noReboot: boolean;
  /** -no-shutdown: a guest power-off pauses the VM (QMP stays up) instead of exiting. */
  noShutdown: boolean;
}

export interface VmConfig {
  machine: MachineConfig;
  accel: "kvm";
  cpuModel: "host";
  /** Guest RAM in bytes: ≥ 16 MiB, ≤ 512 GiB, a multiple of 4 KiB. */
  memoryBytes: number;
  smp: SmpConfig;
  boot: BootConfig;
  name: string | null;
  /** Lower-case canonical form. */
  uuid: string | null;
  /** Every -chardev as declared, in command-line order (also those used by -serial chardev:ID or -mon). */
  chardevs: ChardevConfig[];
  serial: SerialConfig;
  /** QMP listeners from -qmp and -mon chardev=ID,mode=control, in command-line order. */
  qmp: SocketAddress[];
  drives: DriveConfig[];
  netdevs: NetdevConfig[];
  /** In command-line order (virtio-mmio slots are assigned in this order). */
  devices: DeviceConfig[];
  incoming: IncomingConfig | null;
  process: ProcessConfig;
}
