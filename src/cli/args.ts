/**
 * kiln's VM command line → VmConfig.
 *
 * StratoVirt's flags are single-dash long options (`-machine q35`) whose value is always the next argv
 * item, which no getopt-style parser (citty's mri included) reads correctly, hence this hand-written
 * parser. `--machine` is accepted too; `-machine=q35` is not (StratoVirt does not accept it either).
 * Single-valued flags: the last occurrence wins (as QEMU), but every occurrence must be valid.
 */
import type {
  AioMode,
  ChardevBackend,
  ChardevConfig,
  DeviceConfig,
  DeviceDriver,
  DriveConfig,
  IncomingConfig,
  MachineConfig,
  MachineType,
  NetdevConfig,
  PciAddress,
  SerialConfig,
  SmpConfig,
  SocketAddress,
  VmConfig,
} from "./config.ts";
import {
  GiB,
  MiB,
  Options,
  UsageError,
  checkId,
  checkUnixPath,
  formatSize,
  normalizeMac,
  parseHostPort,
  parsePciSlotFunction,
  parseSize,
  parseSocketUri,
  socketAddressText,
} from "./options.ts";

export { UsageError } from "./options.ts";

export const MACHINE_TYPES: readonly MachineType[] = ["microvm", "q35"];
export const DEVICE_DRIVERS: readonly DeviceDriver[] = [
  "virtio-blk-pci",
  "virtio-blk-device",
  "virtio-net-pci",
  "virtio-net-device",
  "pcie-root-port",
];

export const MIN_MEMORY = 16 * MiB;
/** StratoVirt's MAX_MEMSIZE. */
export const MAX_MEMORY = 512 * GiB;
export const DEFAULT_MEMORY = 256 * MiB; // StratoVirt's default
export const MAX_VCPUS = 254; // StratoVirt's MAX_NR_CPUS (x2APIC ids stay below 255 without an IOMMU)
/** q35's root complex; devices default to it. */
export const PCIE_ROOT_BUS = "pcie.0";

const MAX_VIRTIO_QUEUES = 32; // StratoVirt's MAX_VIRTIO_QUEUE
const MAX_TAP_QUEUES = MAX_VIRTIO_QUEUES / 2; // one rx + one tx queue per pair
const VIRTIO_BLK_SERIAL_MAX = 20; // VIRTIO_BLK_ID_BYTES
const MAX_IOPS = 1_000_000; // StratoVirt's limit for throttling.iops-total
const IFNAMSIZ = 16;
const DEFAULT_QUEUE_SIZE = 256;

type Arity = "none" | "one" | "optional";

interface FlagDef {
  arity: Arity;
  apply: (b: Builder, value: string | null) => void;
}

type QmpSource = { kind: "socket"; address: SocketAddress } | { kind: "mon"; chardev: string };

/** Accumulates flags in argv order; `finish()` resolves references and runs the cross-checks. */
class Builder {
  machine: MachineConfig = { type: "microvm", memShare: false, dumpGuestCore: true };
  memoryBytes = DEFAULT_MEMORY;
  smp: SmpConfig = { cpus: 1, maxCpus: 1, sockets: 1, dies: 1, clusters: 1, cores: 1, threads: 1 };
  kernel: string | null = null;
  initrd: string | null = null;
  append = "";
  name: string | null = null;
  uuid: string | null = null;
  chardevs: ChardevConfig[] = [];
  serial: SerialConfig | { kind: "chardev"; id: string } = { kind: "none" };
  qmp: QmpSource[] = [];
  drives: DriveConfig[] = [];
  netdevs: NetdevConfig[] = [];
  /** virtio-net MACs are "" until finish() assigns the defaults. */
  devices: DeviceConfig[] = [];
  incoming: IncomingConfig | null = null;
  logFile: string | null = null;
  pidFile: string | null = null;
  daemonize = false;
  startPaused = false;
  noReboot = false;
  noShutdown = false;

  finish(): VmConfig {
    if (this.kernel === null) {
      throw new UsageError(
        "-kernel",
        "missing; kiln boots a kernel directly, so every VM needs -kernel PATH " +
          "(a migration destination too: it takes the same command line as the source, plus -incoming)",
      );
    }
    const chardevUsers = new Map<string, string>();
    const useChardev = (flag: string, id: string): ChardevBackend => {
      const c = this.chardevs.find((x) => x.id === id);
      if (!c) throw new UsageError(flag, `no -chardev with id '${id}'`);
      const user = chardevUsers.get(id);
      if (user) throw new UsageError(flag, `chardev '${id}' is already used by ${user}`);
      chardevUsers.set(id, flag);
      return c.backend;
    };

    const serial: SerialConfig =
      this.serial.kind === "chardev" ? useChardev("-serial", this.serial.id) : this.serial;

    const qmp: SocketAddress[] = this.qmp.map((q) => {
      if (q.kind === "socket") return q.address;
      const backend = useChardev("-mon", q.chardev);
      if (backend.kind !== "socket") {
        throw new UsageError(
          "-mon",
          `chardev '${q.chardev}' is a ${backend.kind} chardev; QMP needs a listening socket ` +
            `(-chardev socket,id=${q.chardev},path=PATH,server,nowait)`,
        );
      }
      if (backend.wait) {
        throw new UsageError("-mon", `chardev '${q.chardev}' needs 'nowait' (kiln does not wait for a QMP client)`);
      }
      return backend.address;
    });

    this.checkListeners(serial, qmp);

    if (this.daemonize && serial.kind === "stdio") {
      throw new UsageError(
        "-daemonize",
        "cannot be combined with a stdio serial (a daemon has no terminal); use -serial pty, -serial file,path=F or a socket",
      );
    }

    const devices = this.resolveDevices();

    return {
      machine: this.machine,
      accel: "kvm",
      cpuModel: "host",
      memoryBytes: this.memoryBytes,
      smp: this.smp,
      boot: { kernel: this.kernel, initrd: this.initrd, append: this.append },
      name: this.name,
      uuid: this.uuid,
      chardevs: this.chardevs,
      serial,
      qmp,
      drives: this.drives,
      netdevs: this.netdevs,
      devices,
      incoming: this.incoming,
      process: {
        logFile: this.logFile,
        pidFile: this.pidFile,
        daemonize: this.daemonize,
        startPaused: this.startPaused,
        noReboot: this.noReboot,
        noShutdown: this.noShutdown,
      },
    };
  }

  /** Two listeners on one address would fail at bind time with a far less helpful error. */
  private checkListeners(serial: SerialConfig, qmp: SocketAddress[]): void {
    const seen: { flag: string; a: SocketAddress }[] = [];
    const wildcard = (host: string) => host === "0.0.0.0" || host === "::" || host === "0";
    const clash = (x: SocketAddress, y: SocketAddress) =>
      x.transport === "unix"
        ? y.transport === "unix" && x.path === y.path
        : y.transport === "tcp" && x.port === y.port && (x.host === y.host || wildcard(x.host) || wildcard(y.host));
    const add = (flag: string, a: SocketAddress) => {
      const prev = seen.find((s) => clash(s.a, a));
      if (prev) throw new UsageError(flag, `'${socketAddressText(a)}' is already used by ${prev.flag}`);
      seen.push({ flag, a });
    };
    for (const a of qmp) add("-qmp", a);
    if (serial.kind === "socket") add("-serial", serial.address);
    const inc = this.incoming;
    if (inc && (inc.transport === "tcp" || inc.transport === "unix")) add("-incoming", inc);
  }

  private resolveDevices(): DeviceConfig[] {
    const machine = this.machine.type;
    const drivesUsed = new Map<string, string>();
    const netdevsUsed = new Map<string, string>();
    const bootIndexes = new Map<number, string>();
    const rootPorts = new Set(this.devices.filter((d) => d.driver === "pcie-root-port").map((d) => d.id));
    const label = (d: DeviceConfig) => (d.id ? `${d.driver} '${d.id}'` : d.driver);
    this.assignPciSlots(label);

    for (const d of this.devices) {
      const isPci = d.driver.endsWith("-pci") || d.driver === "pcie-root-port";
      if (isPci && machine !== "q35") {
        const mmio = d.driver === "pcie-root-port" ? "" : `; use ${d.driver.replace(/-pci$/, "-device")}`;
        throw new UsageError(
          "-device",
          `${d.driver} needs machine q35 (microvm has no PCI, only virtio-mmio devices${mmio})`,
        );
      }
      if (!isPci && machine !== "microvm") {
        throw new UsageError(
          "-device",
          `${d.driver} is a virtio-mmio device, for machine microvm; on q35 use ${d.driver.replace(/-device$/, "-pci")}`,
        );
      }
      if (d.driver === "virtio-blk-pci" || d.driver === "virtio-blk-device") {
        if (!this.drives.some((x) => x.id === d.drive)) {
          throw new UsageError("-device", `${label(d)}: no -drive with id '${d.drive}'`);
        }
        const user = drivesUsed.get(d.drive);
        if (user) throw new UsageError("-device", `${label(d)}: drive '${d.drive}' is already used by ${user}`);
        drivesUsed.set(d.drive, label(d));
        if (d.bootIndex !== null) {
          const other = bootIndexes.get(d.bootIndex);
          if (other) throw new UsageError("-device", `${label(d)}: bootindex ${d.bootIndex} is already used by ${other}`);
          bootIndexes.set(d.bootIndex, label(d));
        }
      }
      if (d.driver === "virtio-net-pci" || d.driver === "virtio-net-device") {
        if (!this.netdevs.some((x) => x.id === d.netdev)) {
          throw new UsageError("-device", `${label(d)}: no -netdev with id '${d.netdev}'`);
        }
        const user = netdevsUsed.get(d.netdev);
        if (user) throw new UsageError("-device", `${label(d)}: netdev '${d.netdev}' is already used by ${user}`);
        netdevsUsed.set(d.netdev, label(d));
      }
      if (d.pci) {
        if (d.pci.bus !== PCIE_ROOT_BUS && !rootPorts.has(d.pci.bus)) {
          throw new UsageError(
            "-device",
            `${label(d)}: unknown bus '${d.pci.bus}' (use ${PCIE_ROOT_BUS} or the id of a pcie-root-port)`,
          );
        }
        if (d.driver === "pcie-root-port" && d.pci.bus !== PCIE_ROOT_BUS) {
          throw new UsageError("-device", `${label(d)}: a pcie-root-port must sit on ${PCIE_ROOT_BUS}`);
        }
        if (d.pci.bus !== PCIE_ROOT_BUS && d.pci.slot !== 0) {
          throw new UsageError(
            "-device",
            `${label(d)}: a pcie-root-port has a single slot; use addr=0x0 (or 0x0.N) on bus '${d.pci.bus}'`,
          );
        }
      }
    }
    this.checkPciAddresses(label);
    this.assignMacs();
    return this.devices;
  }

  /**
   * Devices given without addr= take the first free slot of their bus, in command-line order, after
   * the explicitly placed ones: from slot 1 on pcie.0 (slot 0 is the host bridge's unless a device
   * asks for it), slot 0 behind a root port. Deterministic, so both ends of a migration agree.
   */
  private assignPciSlots(label: (d: DeviceConfig) => string): void {
    const used = new Set<string>();
    for (const d of this.devices) if (d.pci && d.pci.slot !== AUTO_SLOT) used.add(`${d.pci.bus}/${d.pci.slot}`);
    for (const d of this.devices) {
      if (!d.pci || d.pci.slot !== AUTO_SLOT) continue;
      const first = d.pci.bus === PCIE_ROOT_BUS ? 1 : 0;
      const last = d.pci.bus === PCIE_ROOT_BUS ? 31 : 0;
      let slot = first;
      while (slot <= last && used.has(`${d.pci.bus}/${slot}`)) slot++;
      if (slot > last) throw new UsageError("-device", `${label(d)}: no free PCI slot left on bus '${d.pci.bus}'; give addr=`);
      used.add(`${d.pci.bus}/${slot}`);
      d.pci.slot = slot;
    }
  }

  private checkPciAddresses(label: (d: DeviceConfig) => string): void {
    const at = new Map<string, DeviceConfig>();
    const fmt = (p: PciAddress) => `${p.bus} addr 0x${p.slot.toString(16)}.${p.function}`;
    for (const d of this.devices) {
      if (!d.pci) continue;
      const key = `${d.pci.bus}/${d.pci.slot}/${d.pci.function}`;
      const other = at.get(key);
      if (other) throw new UsageError("-device", `${label(d)}: ${fmt(d.pci)} is already used by ${label(other)}`);
      at.set(key, d);
    }
    // PCI: functions 1..7 of a slot exist only if function 0 is there and says multifunction=on.
    for (const d of this.devices) {
      if (!d.pci || d.pci.function === 0) continue;
      const f0 = at.get(`${d.pci.bus}/${d.pci.slot}/0`);
      if (!f0 || !f0.pci?.multifunction) {
        throw new UsageError(
          "-device",
          `${label(d)}: ${fmt(d.pci)} needs a device at function 0 of slot 0x${d.pci.slot.toString(16)} with multifunction=on`,
        );
      }
    }
  }

  /** QEMU's scheme (52:54:00:12:34:56, :57, ...), skipping MACs given explicitly, so both migration ends agree. */
  private assignMacs(): void {
    const taken = new Set<string>();
    for (const d of this.devices) {
      if ((d.driver === "virtio-net-pci" || d.driver === "virtio-net-device") && d.mac !== "") taken.add(d.mac);
    }
    let next = 0x56;
    for (const d of this.devices) {
      if ((d.driver === "virtio-net-pci" || d.driver === "virtio-net-device") && d.mac === "") {
        let mac: string;
        do {
          if (next > 0xff) throw new UsageError("-device", "too many virtio-net devices without mac=");
          mac = `52:54:00:12:34:${(next++).toString(16).padStart(2, "0")}`;
        } while (taken.has(mac));
        taken.add(mac);
        d.mac = mac;
      }
    }
  }
}

// ---- one parser per flag ------------------------------------------------------------------------------

function nonEmpty(flag: string, v: string, what: string): string {
  if (v === "") throw new UsageError(flag, `empty ${what}`);
  return v;
}

function parseMachine(b: Builder, v: string): void {
  const o = Options.parse("-machine", v, {
    implied: "type",
    keys: ["mem-share", "dump-guest-core", "accel", "usb"],
  });
  const type = o.need("type", `machine type: ${MACHINE_TYPES.join(" or ")}`).toLowerCase();
  if (!(MACHINE_TYPES as readonly string[]).includes(type)) {
    throw new UsageError("-machine", `unknown machine type '${type}' (valid: ${MACHINE_TYPES.join(", ")})`);
  }
  const accel = o.str("accel");
  if (accel !== null && accel !== "kvm") {
    throw new UsageError("-machine", `unsupported accel '${accel}' (kiln supports only kvm)`);
  }
  if (o.bool("usb", false)) throw new UsageError("-machine", "usb=on is not supported");
  b.machine = {
    type: type as MachineType,
    memShare: o.bool("mem-share", false),
    dumpGuestCore: o.bool("dump-guest-core", true),
  };
}

function parseAccel(v: string): void {
  const o = Options.parse("-accel", v, { implied: "accel", keys: [] });
  const accel = o.need("accel", "kvm");
  if (accel !== "kvm") throw new UsageError("-accel", `unsupported accelerator '${accel}' (kiln supports only kvm)`);
}

function parseCpu(v: string): void {
  const o = Options.parse("-cpu", v, { implied: "model", keys: [] });
  const model = o.need("model", "host");
  if (model !== "host") {
    throw new UsageError("-cpu", `unknown CPU model '${model}' (kiln supports only host: the guest sees the host CPU)`);
  }
}

function parseMemory(b: Builder, v: string): void {
  const o = Options.parse("-m", v, { implied: "size", keys: [] });
  const text = o.need("size", "e.g. -m 512M");
  const bytes = parseSize(text, MiB); // no suffix = MiB, as QEMU and StratoVirt
  if (bytes === null) {
    throw new UsageError("-m", `invalid memory size '${text}' (expected e.g. 512, 512M, 2G)`);
  }
  if (bytes < MIN_MEMORY) {
    throw new UsageError("-m", `memory size ${formatSize(bytes)} is below the minimum of ${formatSize(MIN_MEMORY)}`);
  }
  if (bytes > MAX_MEMORY) {
    throw new UsageError("-m", `memory size ${formatSize(bytes)} is above the maximum of ${formatSize(MAX_MEMORY)}`);
  }
  if (bytes % 4096 !== 0) {
    throw new UsageError("-m", `memory size ${formatSize(bytes)} is not a multiple of 4 KiB`);
  }
  b.memoryBytes = bytes;
}

/**
 * StratoVirt's topology resolution (SmpConfig::auto_adjust_topology), extended as QEMU to allow omitting
 * cpus: maxcpus defaults to sockets*dies*clusters*cores*threads when all three of sockets, cores, threads
 * are given, else to cpus; missing members are derived (cores first, then sockets, then threads).
 */
export function resolveSmp(v: string): SmpConfig {
  const flag = "-smp";
  const o = Options.parse(flag, v, {
    implied: "cpus",
    keys: ["maxcpus", "sockets", "dies", "clusters", "cores", "threads"],
  });
  const cpusGiven = o.int("cpus", 1, MAX_VCPUS);
  const maxGiven = o.int("maxcpus", 1, MAX_VCPUS);
  let sockets = o.int("sockets", 1, MAX_VCPUS);
  const dies = o.int("dies", 1, MAX_VCPUS) ?? 1;
  const clusters = o.int("clusters", 1, MAX_VCPUS) ?? 1;
  let cores = o.int("cores", 1, MAX_VCPUS);
  let threads = o.int("threads", 1, MAX_VCPUS);

  let maxCpus: number;
  if (maxGiven !== null) maxCpus = maxGiven;
  else if (sockets !== null && cores !== null && threads !== null) maxCpus = sockets * dies * clusters * cores * threads;
  else if (cpusGiven !== null) maxCpus = cpusGiven;
  else maxCpus = (sockets ?? 1) * dies * clusters * (cores ?? 1) * (threads ?? 1);
  const cpus = cpusGiven ?? maxCpus;

  if (cores === null) {
    sockets ??= 1;
    threads ??= 1;
    cores = Math.floor(maxCpus / (sockets * dies * clusters * threads));
  } else if (sockets === null) {
    threads ??= 1;
    sockets = Math.floor(maxCpus / (dies * clusters * cores * threads));
  }
  if (threads === null) threads = Math.floor(maxCpus / (sockets * dies * clusters * cores));

  if (maxCpus > MAX_VCPUS) {
    throw new UsageError(flag, `maxcpus ${maxCpus} (from the topology) is above the maximum of ${MAX_VCPUS}`);
  }
  const product = sockets * dies * clusters * cores * threads;
  if (cpus > maxCpus) {
    const from =
      maxGiven === null && cpusGiven !== null
        ? ` (sockets ${sockets} * dies ${dies} * clusters ${clusters} * cores ${cores} * threads ${threads}, as maxcpus was not given)`
        : "";
    throw new UsageError(flag, `cpus ${cpus} is above maxcpus ${maxCpus}${from}`);
  }
  if (product !== maxCpus) {
    throw new UsageError(
      flag,
      `sockets (${sockets}) * dies (${dies}) * clusters (${clusters}) * cores (${cores}) * threads (${threads}) = ${product}, ` +
        `but must equal maxcpus (${maxCpus})`,
    );
  }
  return { cpus, maxCpus, sockets, dies, clusters, cores, threads };
}

function parseName(b: Builder, v: string): void {
  const o = Options.parse("-name", v, { implied: "guest", keys: ["debug-threads"] });
  o.bool("debug-threads", false); // accepted for libvirt-style lines; kiln's threads are Workers either way
  b.name = o.need("guest", "-name NAME");
}

function parseUuid(b: Builder, v: string): void {
  if (!/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(v)) {
    throw new UsageError("-uuid", `invalid UUID '${v}' (expected e.g. 6ba7b810-9dad-11d1-80b4-00c04fd430c8)`);
  }
  b.uuid = v.toLowerCase();
}

const CHARDEV_BACKENDS = ["stdio", "pty", "file", "socket"] as const;
const SOCKET_KEYS = ["path", "host", "port", "server", "nowait", "wait"];

/** The `server` / `nowait` / `wait=` triple shared by -chardev socket, -serial and -qmp. */
function socketFlags(o: Options): { server: boolean; wait: boolean } {
  const server = o.bool("server", false);
  if (o.has("nowait") && o.has("wait")) throw new UsageError(o.flag, "give either 'nowait' or 'wait=', not both");
  const wait = o.has("wait") ? o.bool("wait", true) : !o.bool("nowait", false);
  return { server, wait };
}

function socketBackend(o: Options, address: SocketAddress, example: string): ChardevBackend {
  const { server, wait } = socketFlags(o);
  if (!server) {
    throw new UsageError(o.flag, `a socket needs 'server' (kiln only listens; e.g. ${example})`);
  }
  return { kind: "socket", address, wait };
}

/** -chardev's backends, also used by -serial's long forms ("socket,path=..", "file,path=.."). */
function chardevBackend(o: Options, backend: string, idKey: readonly string[]): ChardevBackend {
  switch (backend) {
    case "stdio":
    case "pty":
      o.only(["backend", ...idKey], `a ${backend} backend`);
      return { kind: backend };
    case "file":
      o.only(["backend", "path", ...idKey], "a file backend");
      return { kind: "file", path: o.need("path", "file,path=FILE") };
    case "socket": {
      o.only(["backend", ...SOCKET_KEYS, ...idKey], "a socket backend");
      const example = "socket,path=PATH,server,nowait";
      const path = o.str("path");
      let address: SocketAddress;
      if (path !== null) {
        if (o.has("host") || o.has("port")) throw new UsageError(o.flag, "give either path= or host=/port=, not both");
        address = { transport: "unix", path: checkUnixPath(o.flag, path) };
      } else if (o.has("port")) {
        const port = o.int("port", 1, 65535)!;
        address = { transport: "tcp", ...parseHostPort(o.flag, `${bracket(o.str("host") ?? "0.0.0.0")}:${port}`) };
      } else {
        throw new UsageError(o.flag, `a socket needs path=PATH or host=HOST,port=PORT (e.g. ${example})`);
      }
      return socketBackend(o, address, example);
    }
    default:
      throw new UsageError(o.flag, `unknown backend '${backend}' (valid: ${CHARDEV_BACKENDS.join(", ")})`);
  }
}

function bracket(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

function parseChardev(b: Builder, v: string): void {
  const o = Options.parse("-chardev", v, { implied: "backend", keys: ["id", ...SOCKET_KEYS], words: ["server", "nowait"] });
  const backend = o.need("backend", `a backend: ${CHARDEV_BACKENDS.join(", ")}`);
  const id = checkId("-chardev", o.need("id", "id=ID"));
  const cfg: ChardevConfig = { id, backend: chardevBackend(o, backend, ["id"]) };
  if (b.chardevs.some((c) => c.id === id)) throw new UsageError("-chardev", `duplicate id '${id}'`);
  b.chardevs.push(cfg);
}

function parseSerial(b: Builder, v: string): void {
  const flag = "-serial";
  if (v.startsWith("chardev:")) {
    b.serial = { kind: "chardev", id: nonEmpty(flag, v.slice(8), "chardev id") };
    return;
  }
  if (v.startsWith("file:")) {
    b.serial = { kind: "file", path: nonEmpty(flag, v.slice(5), "file path") }; // QEMU's short form
    return;
  }
  const o = Options.parse(flag, v, {
    implied: "backend",
    keys: SOCKET_KEYS,
    words: ["server", "nowait"],
    firstIsImplied: true,
  });
  const backend = o.need("backend", "stdio, pty, none, file,path=F, socket,... or chardev:ID");
  if (backend === "none") {
    o.only(["backend"], "-serial none");
    b.serial = { kind: "none" };
    return;
  }
  const uri = parseSocketUri(flag, backend);
  if (uri) {
    o.only(["backend", "server", "nowait", "wait"], `-serial ${uri.transport}:`);
    b.serial = socketBackend(o, uri, `${backend},server,nowait`);
    return;
  }
  if (!(CHARDEV_BACKENDS as readonly string[]).includes(backend)) {
    throw new UsageError(
      flag,
      `unknown backend '${backend}' (valid: stdio, pty, none, file,path=F, socket,path=P,server,nowait, unix:P,server,nowait, tcp:H:P,server,nowait, chardev:ID)`,
    );
  }
  b.serial = chardevBackend(o, backend, []);
}

function parseQmp(b: Builder, v: string): void {
  const flag = "-qmp";
  const o = Options.parse(flag, v, { implied: "uri", keys: ["server", "wait"], words: ["server", "nowait"], firstIsImplied: true });
  const uri = o.need("uri", "unix:PATH,server,nowait");
  const address = parseSocketUri(flag, uri);
  if (!address) {
    throw new UsageError(flag, `unsupported address '${uri}' (expected unix:PATH,server,nowait or tcp:HOST:PORT,server,nowait)`);
  }
  const { server, wait } = socketFlags(o);
  if (!server) throw new UsageError(flag, `'server' is required (kiln only listens for QMP clients): -qmp ${uri},server,nowait`);
  if (wait) throw new UsageError(flag, `'nowait' is required (kiln does not wait for a QMP client): -qmp ${uri},server,nowait`);
  b.qmp.push({ kind: "socket", address });
}

function parseMon(b: Builder, v: string): void {
  const o = Options.parse("-mon", v, { keys: ["chardev", "mode", "id"] });
  const chardev = o.need("chardev", "chardev=ID,mode=control");
  const mode = o.need("mode", "mode=control: kiln's monitor speaks QMP only");
  if (mode !== "control") {
    throw new UsageError("-mon", `mode '${mode}' is not supported (only mode=control: kiln's monitor speaks QMP only)`);
  }
  if (o.has("id")) checkId("-mon", o.str("id")!);
  b.qmp.push({ kind: "mon", chardev });
}

const AIO_MODES: readonly AioMode[] = ["native", "io_uring", "threads", "off"];

function parseDrive(b: Builder, v: string): void {
  const flag = "-drive";
  const o = Options.parse(flag, v, {
    keys: ["file", "id", "if", "format", "readonly", "direct", "aio", "throttling.iops-total", "serial"],
  });
  const iface = o.str("if");
  if (iface !== null && iface !== "none") {
    const why = iface === "pflash" ? " (kiln has no firmware; it boots -kernel directly)" : "";
    throw new UsageError(flag, `if=${iface} is not supported; only if=none, with a -device virtio-blk-* using the drive${why}`);
  }
  const format = o.str("format");
  if (format !== null && format !== "raw") throw new UsageError(flag, `format '${format}' is not supported (only raw)`);
  const id = checkId(flag, o.need("id", "id=ID, which a -device virtio-blk-*,drive=ID names"));
  const drive: DriveConfig = {
    id,
    file: o.need("file", "file=PATH to a raw image"),
    readOnly: o.bool("readonly", false),
    direct: o.bool("direct", true),
    aio: o.oneOf("aio", AIO_MODES),
    iopsTotal: o.int("throttling.iops-total", 1, MAX_IOPS),
    serial: checkBlkSerial(flag, o.str("serial")),
  };
  if (b.drives.some((d) => d.id === id)) throw new UsageError(flag, `duplicate id '${id}'`);
  b.drives.push(drive);
}

function checkBlkSerial(flag: string, serial: string | null): string | null {
  if (serial !== null && new TextEncoder().encode(serial).length > VIRTIO_BLK_SERIAL_MAX) {
    throw new UsageError(flag, `serial '${serial}' is longer than ${VIRTIO_BLK_SERIAL_MAX} bytes (virtio-blk's ID size)`);
  }
  return serial;
}

function parseNetdev(b: Builder, v: string): void {
  const flag = "-netdev";
  const o = Options.parse(flag, v, {
    implied: "type",
    keys: ["id", "ifname", "fd", "queues", "vhost", "script", "downscript"],
  });
  const type = o.need("type", "tap");
  if (type !== "tap") throw new UsageError(flag, `unsupported netdev type '${type}' (kiln supports only tap)`);
  const id = checkId(flag, o.need("id", "id=ID, which a -device virtio-net-*,netdev=ID names"));
  if (o.bool("vhost", false)) {
    throw new UsageError(flag, "vhost=on is not supported (kiln's virtio-net runs in userspace; vhost-net also blocks migration)");
  }
  for (const key of ["script", "downscript"]) {
    const s = o.str(key);
    if (s !== null && s !== "no") throw new UsageError(flag, `${key}=${s} is not supported (kiln runs no scripts; use ${key}=no)`);
  }
  const ifname = o.str("ifname");
  const fd = o.int("fd", 0, 0x7fff_ffff);
  if (ifname === null && fd === null) throw new UsageError(flag, "a tap needs ifname=NAME (or an inherited fd=N)");
  if (ifname !== null && fd !== null) throw new UsageError(flag, "give either ifname= or fd=, not both");
  if (ifname !== null && (ifname.length >= IFNAMSIZ || /[\s/]/.test(ifname))) {
    throw new UsageError(flag, `invalid interface name '${ifname}' (at most ${IFNAMSIZ - 1} characters, no '/' or spaces)`);
  }
  if (b.netdevs.some((n) => n.id === id)) throw new UsageError(flag, `duplicate id '${id}'`);
  b.netdevs.push({ id, type: "tap", ifname, fd, queues: o.int("queues", 1, MAX_TAP_QUEUES) ?? 1 });
}

const PCI_KEYS = ["bus", "addr", "multifunction"];
/** A PCI device given without addr=: its slot is assigned in finish(). */
const AUTO_SLOT = -1;
const DEVICE_KEYS: Record<DeviceDriver, readonly string[]> = {
  "virtio-blk-pci": ["id", "drive", ...PCI_KEYS, "serial", "num-queues", "bootindex", "queue-size"],
  "virtio-blk-device": ["id", "drive", ...PCI_KEYS, "serial", "num-queues", "bootindex", "queue-size"],
  "virtio-net-pci": ["id", "netdev", ...PCI_KEYS, "mac", "mq", "queue-size"],
  "virtio-net-device": ["id", "netdev", ...PCI_KEYS, "mac", "mq", "queue-size"],
  "pcie-root-port": ["id", ...PCI_KEYS, "port", "chassis"],
};

function queueSize(o: Options, min: number, max: number): number {
  const qs = o.int("queue-size", min, max);
  if (qs !== null && (qs & (qs - 1)) !== 0) throw new UsageError(o.flag, `'queue-size' must be a power of 2, got ${qs}`);
  return qs ?? DEFAULT_QUEUE_SIZE;
}

function pciAddress(o: Options, driver: string): PciAddress | null {
  if (driver.endsWith("-device")) {
    for (const key of PCI_KEYS) {
      if (o.has(key)) {
        throw new UsageError(
          o.flag,
          `${driver} is virtio-mmio and takes no '${key}' (bus/addr are for ${driver.replace(/-device$/, "-pci")} on q35)`,
        );
      }
    }
    return null;
  }
  const addrText = o.str("addr");
  // No addr: the first free slot is picked once every device is known (assignPciSlots), as QEMU does.
  if (addrText === null) return { bus: o.str("bus") ?? PCIE_ROOT_BUS, slot: AUTO_SLOT, function: 0, multifunction: o.bool("multifunction", false) };
  const df = parsePciSlotFunction(addrText);
  if (!df) {
    throw new UsageError(o.flag, `invalid PCI addr '${addrText}' (expected SLOT or SLOT.FUNCTION, slot 0..31, function 0..7, e.g. 0x3 or 0x3.0x1)`);
  }
  return { bus: o.str("bus") ?? PCIE_ROOT_BUS, ...df, multifunction: o.bool("multifunction", false) };
}

function parseDevice(b: Builder, v: string): void {
  const flag = "-device";
  nonEmpty(flag, v, "value (expected DRIVER,key=value,...)");
  const first = v.split(",", 1)[0]!;
  const driver = first.startsWith("driver=") ? first.slice(7) : first;
  if (!(DEVICE_DRIVERS as readonly string[]).includes(driver)) {
    throw new UsageError(flag, `unknown device '${driver}' (supported: ${DEVICE_DRIVERS.join(", ")})`);
  }
  const d = driver as DeviceDriver;
  const o = Options.parse(flag, v, { implied: "driver", keys: DEVICE_KEYS[d] });
  const idText = o.str("id");
  const id = idText === null ? null : checkId(flag, idText);
  if (id === PCIE_ROOT_BUS) throw new UsageError(flag, `id '${PCIE_ROOT_BUS}' is reserved for q35's root bus`);
  const pci = pciAddress(o, d);
  let dev: DeviceConfig;
  switch (d) {
    case "virtio-blk-pci":
    case "virtio-blk-device":
      dev = {
        driver: d,
        id,
        drive: o.need("drive", "drive=ID of a -drive"),
        pci,
        serial: checkBlkSerial(flag, o.str("serial")),
        numQueues: o.int("num-queues", 1, MAX_VIRTIO_QUEUES) ?? 1,
        queueSize: queueSize(o, 4, 1024),
        bootIndex: o.int("bootindex", 0, 255),
      };
      break;
    case "virtio-net-pci":
    case "virtio-net-device": {
      const macText = o.str("mac");
      const mac = macText === null ? "" : normalizeMac(macText); // "" = assign in finish()
      if (mac === null) {
        throw new UsageError(flag, `invalid MAC address '${macText}' (expected a unicast address such as 52:54:00:12:34:56)`);
      }
      dev = {
        driver: d,
        id,
        netdev: o.need("netdev", "netdev=ID of a -netdev"),
        pci,
        mac,
        mq: o.bool("mq", false),
        queueSize: queueSize(o, 256, 4096),
      };
      break;
    }
    case "pcie-root-port":
      if (id === null) throw new UsageError(flag, "pcie-root-port needs id= (devices behind it name it as bus=)");
      dev = { driver: d, id, pci: pci!, port: o.int("port", 0, 255), chassis: o.int("chassis", 0, 255) };
      break;
  }
  if (id !== null && b.devices.some((x) => x.id === id)) throw new UsageError(flag, `duplicate id '${id}'`);
  b.devices.push(dev);
}

function parseIncoming(b: Builder, v: string): void {
  const flag = "-incoming";
  const expected = "expected tcp:HOST:PORT, tcp:[IPv6]:PORT, unix:PATH, file:PATH, exec:COMMAND or defer";
  const colon = v.indexOf(":");
  const scheme = colon < 0 ? v : v.slice(0, colon);
  const rest = colon < 0 ? "" : v.slice(colon + 1);
  switch (colon < 0 ? v : scheme) {
    case "defer":
      b.incoming = { transport: "defer" };
      return;
    case "tcp":
      b.incoming = { transport: "tcp", ...parseHostPort(flag, rest) };
      return;
    case "unix":
      b.incoming = { transport: "unix", path: checkUnixPath(flag, rest) };
      return;
    case "file": {
      const o = Options.parse(flag, rest, { implied: "path", keys: ["mapped"], firstIsImplied: true });
      b.incoming = { transport: "file", path: o.need("path", "file:DIR"), mapped: o.bool("mapped", true) };
      return;
    }
    case "exec":
      if (rest.trim() === "") throw new UsageError(flag, "empty command after exec:");
      b.incoming = { transport: "exec", command: rest };
      return;
    default:
      throw new UsageError(flag, `unsupported URI '${v}' (${expected})`);
  }
}

const UNSUPPORTED: Record<string, string> = {
  "-global": "not supported by kiln (set device properties on -device)",
  "-boot": "not supported by kiln (it boots the -kernel directly; there is no firmware boot order)",
  "-bios": "not supported by kiln (it boots the -kernel directly)",
  "-object": "not supported by kiln",
  "-numa": "not supported by kiln",
  "-mem-path": "not supported by kiln (guest RAM is always a memfd)",
  "-mem-prealloc": "not supported by kiln",
  "-iothread": "not supported by kiln",
  "-vnc": "not supported by kiln (it has no display)",
  "-monitor": "not supported by kiln (use -qmp unix:PATH,server,nowait or -mon chardev=ID,mode=control)",
  "-net": "not supported by kiln (use -netdev tap,id=ID,ifname=TAP with -device virtio-net-*,netdev=ID)",
  "-hda": "not supported by kiln (use -drive file=PATH,id=ID with -device virtio-blk-*,drive=ID)",
  "-cdrom": "not supported by kiln (use -drive file=PATH,id=ID with -device virtio-blk-*,drive=ID)",
};

const FLAGS: Record<string, FlagDef> = {
  "-machine": { arity: "one", apply: (b, v) => parseMachine(b, v!) },
  "-accel": { arity: "one", apply: (_b, v) => parseAccel(v!) },
  "-enable-kvm": { arity: "none", apply: () => {} }, // QEMU's spelling of -accel kvm
  "-cpu": { arity: "one", apply: (_b, v) => parseCpu(v!) },
  "-m": { arity: "one", apply: (b, v) => parseMemory(b, v!) },
  "-smp": { arity: "one", apply: (b, v) => (b.smp = resolveSmp(v!)) },
  "-kernel": { arity: "one", apply: (b, v) => (b.kernel = nonEmpty("-kernel", v!, "path")) },
  "-initrd": { arity: "one", apply: (b, v) => (b.initrd = nonEmpty("-initrd", v!, "path")) },
  "-append": { arity: "one", apply: (b, v) => (b.append = v!) },
  "-name": { arity: "one", apply: (b, v) => parseName(b, v!) },
  "-uuid": { arity: "one", apply: (b, v) => parseUuid(b, v!) },
  "-chardev": { arity: "one", apply: (b, v) => parseChardev(b, v!) },
  "-serial": { arity: "one", apply: (b, v) => parseSerial(b, v!) },
  "-qmp": { arity: "one", apply: (b, v) => parseQmp(b, v!) },
  "-mon": { arity: "one", apply: (b, v) => parseMon(b, v!) },
  "-nographic": { arity: "none", apply: () => {} }, // kiln has no display; the serial port is wherever -serial says
  "-display": {
    arity: "one",
    apply: (_b, v) => {
      if (v !== "none") throw new UsageError("-display", `'${v}' is not supported (kiln has no display; only -display none)`);
    },
  },
  "-drive": { arity: "one", apply: (b, v) => parseDrive(b, v!) },
  "-netdev": { arity: "one", apply: (b, v) => parseNetdev(b, v!) },
  "-device": { arity: "one", apply: (b, v) => parseDevice(b, v!) },
  "-incoming": { arity: "one", apply: (b, v) => parseIncoming(b, v!) },
  // StratoVirt's -D takes an optional path; without one (or without -D) kiln logs to stderr.
  "-D": { arity: "optional", apply: (b, v) => (b.logFile = v) },
  "-pidfile": { arity: "one", apply: (b, v) => (b.pidFile = nonEmpty("-pidfile", v!, "path")) },
  "-daemonize": { arity: "none", apply: (b) => (b.daemonize = true) },
  "-S": { arity: "none", apply: (b) => (b.startPaused = true) },
  "-no-reboot": { arity: "none", apply: (b) => (b.noReboot = true) },
  "-no-shutdown": { arity: "none", apply: (b) => (b.noShutdown = true) },
};

/** The flags kiln accepts, in their canonical single-dash spelling. */
export const KNOWN_FLAGS: readonly string[] = Object.keys(FLAGS);
/** QEMU/StratoVirt flags that kiln recognises only to reject them with an explanation. */
export const REJECTED_FLAGS: readonly string[] = Object.keys(UNSUPPORTED);

const INFO_FLAGS: Record<string, "help" | "version"> = {
  "-h": "help",
  "-help": "help",
  "--help": "help",
  "-version": "version",
  "--version": "version",
};

/** "--machine" → "-machine"; anything else unchanged. */
function canonical(arg: string): string {
  return arg.startsWith("--") ? arg.slice(1) : arg;
}

function isKnownFlag(arg: string): boolean {
  const c = canonical(arg);
  return c in FLAGS || c in UNSUPPORTED || arg in INFO_FLAGS;
}

/**
 * If argv asks for help or the version (-h, -help, --help, -version, --version) anywhere, say which;
 * the entry point answers those before calling parseVmArgs.
 */
export function infoRequest(argv: readonly string[]): "help" | "version" | null {
  for (const a of argv) {
    const r = INFO_FLAGS[a];
    if (r) return r;
  }
  return null;
}

/** Parse kiln's VM command line (argv without "bun"/"kiln" itself). Throws UsageError. */
export function parseVmArgs(argv: readonly string[]): VmConfig {
  const b = new Builder();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("-") || arg === "-" || arg === "--") {
      throw new UsageError(arg, "unexpected argument (options start with '-'; see kiln --help)");
    }
    const name = canonical(arg);
    const unsupported = UNSUPPORTED[name];
    if (unsupported) throw new UsageError(name, unsupported);
    const def = FLAGS[name];
    if (!def) {
      const eq = arg.indexOf("=");
      if (eq > 0 && canonical(arg.slice(0, eq)) in FLAGS) {
        const flag = canonical(arg.slice(0, eq));
        throw new UsageError(arg, `unknown option; give the value as the next argument: ${flag} ${arg.slice(eq + 1)}`);
      }
      throw new UsageError(arg, "unknown option; see kiln --help");
    }
    let value: string | null = null;
    if (def.arity !== "none") {
      const next = argv[i + 1];
      // A known flag where the value should be is a forgotten value, not a value ("-kernel -append ...").
      const hasValue = next !== undefined && !(isKnownFlag(next) || (def.arity === "optional" && next.startsWith("-")));
      if (hasValue) {
        value = next;
        i++;
      } else if (def.arity === "one") {
        throw new UsageError(name, "missing value");
      }
    }
    def.apply(b, value);
  }
  return b.finish();
}
