/** parseVmArgs: every flag's good and bad forms, smp topology, cross-checks, JSON round trips. */
import { describe, expect, test } from "bun:test";
import { KNOWN_FLAGS, infoRequest, parseVmArgs, resolveSmp, UsageError } from "../../src/cli/args.ts";
import type { VmConfig } from "../../src/cli/config.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Minimal valid lines: microvm (the default machine) and q35. */
const MICRO = ["-kernel", "vmlinux"];
const Q35 = ["-machine", "q35", "-kernel", "vmlinux"];

function parse(...argv: string[]): VmConfig {
  return parseVmArgs(argv);
}

function fail(...argv: string[]): UsageError {
  try {
    parseVmArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) return e;
    throw e;
  }
  throw new Error(`parsed without error: ${argv.join(" ")}`);
}

/** The error message, for exact checks. */
function msg(...argv: string[]): string {
  return fail(...argv).message;
}

describe("general argv handling", () => {
  test("defaults", () => {
    const cfg = parse(...MICRO);
    expect(cfg.machine).toEqual({ type: "microvm", memShare: false, dumpGuestCore: true });
    expect(cfg.memoryBytes).toBe(256 * MiB);
    expect(cfg.smp).toEqual({ cpus: 1, maxCpus: 1, sockets: 1, dies: 1, clusters: 1, cores: 1, threads: 1 });
    expect(cfg.boot).toEqual({ kernel: "vmlinux", initrd: null, append: "" });
    expect(cfg.serial).toEqual({ kind: "none" });
    expect(cfg.qmp).toEqual([]);
    expect(cfg.devices).toEqual([]);
    expect(cfg.incoming).toBeNull();
    expect(cfg.process).toEqual({
      logFile: null,
      pidFile: null,
      daemonize: false,
      startPaused: false,
      noReboot: false,
      noShutdown: false,
    });
  });

  test("double-dash spelling of every flag", () => {
    const cfg = parse("--machine", "q35", "--kernel", "k", "--m", "1G", "--smp", "2", "--S", "--no-reboot");
    expect(cfg.machine.type).toBe("q35");
    expect(cfg.memoryBytes).toBe(GiB);
    expect(cfg.smp.cpus).toBe(2);
    expect(cfg.process.startPaused).toBe(true);
    expect(cfg.process.noReboot).toBe(true);
  });

  test("unknown option", () => {
    const e = fail(...MICRO, "-foo");
    expect(e.message).toBe("-foo: unknown option; see kiln --help");
    expect(e.flag).toBe("-foo");
    expect(e.name).toBe("UsageError");
    expect(msg(...MICRO, "--foo", "1")).toBe("--foo: unknown option; see kiln --help");
  });

  test("-flag=value is not StratoVirt syntax, and the error says how to write it", () => {
    expect(msg("-m=512", ...MICRO)).toBe("-m=512: unknown option; give the value as the next argument: -m 512");
    expect(msg("--machine=q35", ...MICRO)).toBe(
      "--machine=q35: unknown option; give the value as the next argument: -machine q35",
    );
  });

  test("missing value", () => {
    const e = fail(...MICRO, "-m");
    expect(e.message).toBe("-m: missing value");
    expect(e.flag).toBe("-m");
    // A flag where the value should be is a forgotten value.
    expect(msg("-kernel", "-append", "x")).toBe("-kernel: missing value");
    expect(msg(...MICRO, "--device")).toBe("-device: missing value");
  });

  test("stray positional argument", () => {
    expect(msg(...MICRO, "disk.img")).toBe("disk.img: unexpected argument (options start with '-'; see kiln --help)");
    expect(msg(...MICRO, "-")).toBe("-: unexpected argument (options start with '-'; see kiln --help)");
  });

  test("last one wins for single-valued flags", () => {
    const cfg = parse("-m", "512", "-kernel", "a", "-kernel", "b", "-m", "1G", "-append", "x", "-append", "y");
    expect(cfg.memoryBytes).toBe(GiB);
    expect(cfg.boot.kernel).toBe("b");
    expect(cfg.boot.append).toBe("y");
  });

  test("every occurrence must be valid, even one that a later one overrides", () => {
    expect(msg("-m", "abc", "-m", "512", ...MICRO)).toBe("-m: invalid memory size 'abc' (expected e.g. 512, 512M, 2G)");
  });

  test("values may start with '-' when they are not flags", () => {
    expect(parse(...MICRO, "-append", "-v quiet").boot.append).toBe("-v quiet");
  });

  test("unsupported flags are rejected with a reason", () => {
    expect(msg(...MICRO, "-global", "virtio-blk-pci.x=1")).toBe(
      "-global: not supported by kiln (set device properties on -device)",
    );
    expect(msg(...MICRO, "-boot", "c")).toBe(
      "-boot: not supported by kiln (it boots the -kernel directly; there is no firmware boot order)",
    );
    expect(fail(...MICRO, "--boot", "c").flag).toBe("-boot");
    expect(msg(...MICRO, "-net", "nic")).toStartWith("-net: not supported by kiln (use -netdev tap");
  });

  test("help and version requests", () => {
    expect(infoRequest(["-machine", "q35", "--help"])).toBe("help");
    expect(infoRequest(["-h"])).toBe("help");
    expect(infoRequest(["-help"])).toBe("help");
    expect(infoRequest(["-version"])).toBe("version");
    expect(infoRequest(["--version"])).toBe("version");
    expect(infoRequest(MICRO)).toBeNull();
  });

  test("KNOWN_FLAGS lists the canonical spellings", () => {
    expect(KNOWN_FLAGS).toContain("-machine");
    expect(KNOWN_FLAGS).not.toContain("-global");
    expect(KNOWN_FLAGS.every((f) => f.startsWith("-") && !f.startsWith("--"))).toBe(true);
  });
});

describe("-kernel, -initrd, -append, -name, -uuid", () => {
  test("-kernel is required, also with -incoming", () => {
    const e = fail("-machine", "q35");
    expect(e.flag).toBe("-kernel");
    expect(e.message).toStartWith("-kernel: missing; kiln boots a kernel directly");
    expect(fail("-incoming", "defer").flag).toBe("-kernel");
  });

  test("paths are stored as given", () => {
    const cfg = parse("-kernel", "./vmlinux.bin", "-initrd", "../initrd.img", "-append", "console=ttyS0 quiet");
    expect(cfg.boot).toEqual({ kernel: "./vmlinux.bin", initrd: "../initrd.img", append: "console=ttyS0 quiet" });
    expect(msg("-kernel", "")).toBe("-kernel: empty path");
    expect(msg(...MICRO, "-initrd", "")).toBe("-initrd: empty path");
    expect(parse(...MICRO, "-append", "").boot.append).toBe("");
  });

  test("-name", () => {
    expect(parse(...MICRO, "-name", "vm1").name).toBe("vm1");
    expect(parse(...MICRO, "-name", "guest=vm1,debug-threads=on").name).toBe("vm1");
    expect(parse(...MICRO, "-name", "a,,b").name).toBe("a,b");
    expect(msg(...MICRO, "-name", "vm1,process=x")).toBe("-name: unknown option 'process' (valid: guest, debug-threads)");
    expect(msg(...MICRO, "-name", "debug-threads=on")).toBe("-name: missing 'guest' (-name NAME)");
  });

  test("-uuid", () => {
    expect(parse(...MICRO, "-uuid", "6BA7B810-9DAD-11D1-80B4-00C04FD430C8").uuid).toBe(
      "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    );
    expect(msg(...MICRO, "-uuid", "1234")).toBe(
      "-uuid: invalid UUID '1234' (expected e.g. 6ba7b810-9dad-11d1-80b4-00c04fd430c8)",
    );
  });
});

describe("-machine, -accel, -cpu", () => {
  test("types and options", () => {
    expect(parse("-machine", "microvm", ...MICRO).machine.type).toBe("microvm");
    expect(parse("-machine", "type=q35", "-kernel", "k").machine.type).toBe("q35");
    expect(parse("-machine", "Q35", "-kernel", "k").machine.type).toBe("q35");
    expect(parse("-machine", "q35,mem-share=on,dump-guest-core=off,accel=kvm", "-kernel", "k").machine).toEqual({
      type: "q35",
      memShare: true,
      dumpGuestCore: false,
    });
  });

  test("bad forms", () => {
    expect(msg("-machine", "pc", ...MICRO)).toBe("-machine: unknown machine type 'pc' (valid: microvm, q35)");
    expect(msg("-machine", "mem-share=on", ...MICRO)).toBe("-machine: missing 'type' (machine type: microvm or q35)");
    expect(msg("-machine", "q35,mem-share=maybe", ...MICRO)).toBe(
      "-machine: 'mem-share' must be on or off, got 'maybe'",
    );
    expect(msg("-machine", "q35,accel=tcg", ...MICRO)).toBe("-machine: unsupported accel 'tcg' (kiln supports only kvm)");
    expect(msg("-machine", "q35,smm=off", ...MICRO)).toBe(
      "-machine: unknown option 'smm' (valid: type, mem-share, dump-guest-core, accel, usb)",
    );
    expect(msg("-machine", "q35,usb=on", ...MICRO)).toBe("-machine: usb=on is not supported");
  });

  test("-accel kvm, -enable-kvm", () => {
    expect(parse(...MICRO, "-accel", "kvm", "-enable-kvm").accel).toBe("kvm");
    expect(msg(...MICRO, "-accel", "tcg")).toBe("-accel: unsupported accelerator 'tcg' (kiln supports only kvm)");
  });

  test("-cpu host", () => {
    expect(parse(...MICRO, "-cpu", "host").cpuModel).toBe("host");
    expect(msg(...MICRO, "-cpu", "qemu64")).toBe(
      "-cpu: unknown CPU model 'qemu64' (kiln supports only host: the guest sees the host CPU)",
    );
    expect(msg(...MICRO, "-cpu", "host,pmu=on")).toBe("-cpu: unknown option 'pmu' (valid: model)");
  });
});

describe("-m", () => {
  const mem = (v: string) => parse(...MICRO, "-m", v).memoryBytes;

  test("sizes (no suffix = MiB)", () => {
    expect(mem("512")).toBe(512 * MiB);
    expect(mem("size=512")).toBe(512 * MiB);
    expect(mem("512M")).toBe(512 * MiB);
    expect(mem("512m")).toBe(512 * MiB);
    expect(mem("2G")).toBe(2 * GiB);
    expect(mem("2g")).toBe(2 * GiB);
    expect(mem("16")).toBe(16 * MiB); // the minimum
    expect(mem("16384K")).toBe(16 * MiB);
    expect(mem("16388K")).toBe(16 * MiB + 4096);
    expect(mem("512G")).toBe(512 * GiB); // the maximum
  });

  test("bad sizes", () => {
    const bad = (v: string) => msg(...MICRO, "-m", v);
    expect(bad("abc")).toBe("-m: invalid memory size 'abc' (expected e.g. 512, 512M, 2G)");
    expect(bad("1.5G")).toBe("-m: invalid memory size '1.5G' (expected e.g. 512, 512M, 2G)");
    expect(bad("-1")).toBe("-m: invalid memory size '-1' (expected e.g. 512, 512M, 2G)");
    expect(bad("0x200")).toBe("-m: invalid memory size '0x200' (expected e.g. 512, 512M, 2G)");
    expect(bad("512MB")).toBe("-m: invalid memory size '512MB' (expected e.g. 512, 512M, 2G)");
    expect(bad("99999999999999T")).toBe("-m: invalid memory size '99999999999999T' (expected e.g. 512, 512M, 2G)");
    expect(bad("15")).toBe("-m: memory size 15 MiB is below the minimum of 16 MiB");
    expect(bad("16380K")).toBe("-m: memory size 16380 KiB is below the minimum of 16 MiB");
    expect(bad("0")).toBe("-m: memory size 0 bytes is below the minimum of 16 MiB");
    expect(bad("513G")).toBe("-m: memory size 513 GiB is above the maximum of 512 GiB");
    expect(bad("1T")).toBe("-m: memory size 1 TiB is above the maximum of 512 GiB");
    expect(bad("16386K")).toBe("-m: memory size 16386 KiB is not a multiple of 4 KiB");
    expect(bad("512,maxmem=1G")).toBe("-m: unknown option 'maxmem' (valid: size)");
    expect(fail(...MICRO, "-m", "abc").flag).toBe("-m");
  });
});

describe("-smp topology", () => {
  const smp = (v: string) => resolveSmp(v);

  test("StratoVirt's resolution", () => {
    expect(smp("4")).toEqual({ cpus: 4, maxCpus: 4, sockets: 1, dies: 1, clusters: 1, cores: 4, threads: 1 });
    expect(smp("cpus=4")).toEqual(smp("4"));
    expect(smp("4,sockets=2")).toEqual({ cpus: 4, maxCpus: 4, sockets: 2, dies: 1, clusters: 1, cores: 2, threads: 1 });
    expect(smp("4,cores=2")).toEqual({ cpus: 4, maxCpus: 4, sockets: 2, dies: 1, clusters: 1, cores: 2, threads: 1 });
    expect(smp("4,cores=2,threads=2")).toEqual({ cpus: 4, maxCpus: 4, sockets: 1, dies: 1, clusters: 1, cores: 2, threads: 2 });
    expect(smp("8,sockets=2,cores=2")).toEqual({ cpus: 8, maxCpus: 8, sockets: 2, dies: 1, clusters: 1, cores: 2, threads: 2 });
    expect(smp("2,maxcpus=8,sockets=2,cores=2,threads=2")).toEqual({
      cpus: 2, maxCpus: 8, sockets: 2, dies: 1, clusters: 1, cores: 2, threads: 2,
    });
    expect(smp("2,sockets=2,cores=2,threads=2")).toEqual(smp("2,maxcpus=8,sockets=2,cores=2,threads=2"));
    expect(smp("8,sockets=2,dies=2,cores=2")).toEqual({ cpus: 8, maxCpus: 8, sockets: 2, dies: 2, clusters: 1, cores: 2, threads: 1 });
    expect(smp("8,clusters=2,sockets=1,cores=4")).toEqual({ cpus: 8, maxCpus: 8, sockets: 1, dies: 1, clusters: 2, cores: 4, threads: 1 });
    expect(smp("254").cpus).toBe(254);
    expect(smp("1,maxcpus=254").maxCpus).toBe(254);
  });

  test("cpus may be omitted (QEMU): it is maxcpus", () => {
    expect(smp("sockets=2,cores=2,threads=1")).toEqual({ cpus: 4, maxCpus: 4, sockets: 2, dies: 1, clusters: 1, cores: 2, threads: 1 });
    expect(smp("sockets=2")).toEqual({ cpus: 2, maxCpus: 2, sockets: 2, dies: 1, clusters: 1, cores: 1, threads: 1 });
    expect(smp("maxcpus=4")).toEqual({ cpus: 4, maxCpus: 4, sockets: 1, dies: 1, clusters: 1, cores: 4, threads: 1 });
  });

  test("the product must equal maxcpus", () => {
    expect(msg(...MICRO, "-smp", "4,maxcpus=4,sockets=2,cores=3,threads=1")).toBe(
      "-smp: sockets (2) * dies (1) * clusters (1) * cores (3) * threads (1) = 6, but must equal maxcpus (4)",
    );
    // With the whole topology and no maxcpus, the topology defines maxcpus (CPU hot-plug room).
    expect(smp("4,sockets=2,cores=3,threads=1")).toMatchObject({ cpus: 4, maxCpus: 6 });
    expect(msg(...MICRO, "-smp", "2,maxcpus=8,sockets=2,cores=2,threads=1")).toBe(
      "-smp: sockets (2) * dies (1) * clusters (1) * cores (2) * threads (1) = 4, but must equal maxcpus (8)",
    );
    expect(msg(...MICRO, "-smp", "3,sockets=2")).toBe(
      "-smp: sockets (2) * dies (1) * clusters (1) * cores (1) * threads (1) = 2, but must equal maxcpus (3)",
    );
    expect(msg(...MICRO, "-smp", "2,sockets=4")).toBe(
      "-smp: sockets (4) * dies (1) * clusters (1) * cores (0) * threads (1) = 0, but must equal maxcpus (2)",
    );
  });

  test("limits", () => {
    expect(msg(...MICRO, "-smp", "0")).toBe("-smp: 'cpus' must be an integer in 1..254, got '0'");
    expect(msg(...MICRO, "-smp", "255")).toBe("-smp: 'cpus' must be an integer in 1..254, got '255'");
    expect(msg(...MICRO, "-smp", "two")).toBe("-smp: 'cpus' must be an integer in 1..254, got 'two'");
    expect(msg(...MICRO, "-smp", "4,maxcpus=2")).toBe("-smp: cpus 4 is above maxcpus 2");
    expect(msg(...MICRO, "-smp", "4,sockets=1,cores=2,threads=1")).toBe(
      "-smp: cpus 4 is above maxcpus 2 (sockets 1 * dies 1 * clusters 1 * cores 2 * threads 1, as maxcpus was not given)",
    );
    expect(msg(...MICRO, "-smp", "1,sockets=16,cores=16,threads=1")).toBe(
      "-smp: maxcpus 256 (from the topology) is above the maximum of 254",
    );
    expect(msg(...MICRO, "-smp", "2,sockets=0")).toBe("-smp: 'sockets' must be an integer in 1..254, got '0'");
    expect(msg(...MICRO, "-smp", "2,books=1")).toBe(
      "-smp: unknown option 'books' (valid: cpus, maxcpus, sockets, dies, clusters, cores, threads)",
    );
  });

  test("stored in the config", () => {
    expect(parse(...MICRO, "-smp", "4,sockets=2").smp).toEqual(smp("4,sockets=2"));
  });
});

describe("-drive", () => {
  const drive = (v: string) => parse(...MICRO, "-drive", v).drives[0];

  test("good forms", () => {
    expect(drive("file=disk.img,id=d0")).toEqual({
      id: "d0", file: "disk.img", readOnly: false, direct: true, aio: null, iopsTotal: null, serial: null,
    });
    expect(
      drive("file=/a,,b.img,id=d0,if=none,format=raw,readonly=on,direct=off,aio=io_uring,throttling.iops-total=1000,serial=SN1"),
    ).toEqual({ id: "d0", file: "/a,b.img", readOnly: true, direct: false, aio: "io_uring", iopsTotal: 1000, serial: "SN1" });
    const cfg = parse(...MICRO, "-drive", "file=a,id=d0", "-drive", "file=b,id=d1");
    expect(cfg.drives.map((d) => d.id)).toEqual(["d0", "d1"]);
  });

  test("bad forms", () => {
    const bad = (v: string) => msg(...MICRO, "-drive", v);
    expect(bad("id=d0")).toBe("-drive: missing 'file' (file=PATH to a raw image)");
    expect(bad("file=a")).toBe("-drive: missing 'id' (id=ID, which a -device virtio-blk-*,drive=ID names)");
    expect(bad("file=a,id=0d")).toBe(
      "-drive: invalid id '0d' (ids start with a letter and contain only letters, digits, '-', '.', '_')",
    );
    expect(bad("file=a,id=d0,format=qcow2")).toBe("-drive: format 'qcow2' is not supported (only raw)");
    expect(bad("file=a,id=d0,if=virtio")).toBe(
      "-drive: if=virtio is not supported; only if=none, with a -device virtio-blk-* using the drive",
    );
    expect(bad("file=a,id=d0,if=pflash")).toEndWith("(kiln has no firmware; it boots -kernel directly)");
    expect(bad("file=a,id=d0,readonly=maybe")).toBe("-drive: 'readonly' must be on or off, got 'maybe'");
    expect(bad("file=a,id=d0,aio=posix")).toBe("-drive: 'aio' must be one of native, io_uring, threads, off, got 'posix'");
    expect(bad("file=a,id=d0,throttling.iops-total=0")).toBe(
      "-drive: 'throttling.iops-total' must be an integer in 1..1000000, got '0'",
    );
    expect(bad("file=a,id=d0,serial=123456789012345678901")).toBe(
      "-drive: serial '123456789012345678901' is longer than 20 bytes (virtio-blk's ID size)",
    );
    expect(bad("file=a,id=d0,cache=none")).toStartWith("-drive: unknown option 'cache' (valid: file, id, if,");
    expect(msg(...MICRO, "-drive", "file=a,id=d0", "-drive", "file=b,id=d0")).toBe("-drive: duplicate id 'd0'");
  });
});

describe("-netdev", () => {
  test("good forms", () => {
    expect(parse(...MICRO, "-netdev", "tap,id=n0,ifname=tap0").netdevs).toEqual([
      { id: "n0", type: "tap", ifname: "tap0", fd: null, queues: 1 },
    ]);
    expect(parse(...MICRO, "-netdev", "tap,id=n0,ifname=tap0,queues=4,vhost=off,script=no,downscript=no").netdevs[0]!.queues).toBe(4);
    expect(parse(...MICRO, "-netdev", "tap,id=n0,fd=3").netdevs[0]).toEqual({ id: "n0", type: "tap", ifname: null, fd: 3, queues: 1 });
  });

  test("bad forms", () => {
    const bad = (v: string) => msg(...MICRO, "-netdev", v);
    expect(bad("user,id=n0")).toBe("-netdev: unsupported netdev type 'user' (kiln supports only tap)");
    expect(bad("tap,ifname=tap0")).toBe("-netdev: missing 'id' (id=ID, which a -device virtio-net-*,netdev=ID names)");
    expect(bad("tap,id=n0")).toBe("-netdev: a tap needs ifname=NAME (or an inherited fd=N)");
    expect(bad("tap,id=n0,ifname=t,fd=3")).toBe("-netdev: give either ifname= or fd=, not both");
    expect(bad("tap,id=n0,ifname=tap0,vhost=on")).toStartWith("-netdev: vhost=on is not supported");
    expect(bad("tap,id=n0,ifname=tap0,queues=17")).toBe("-netdev: 'queues' must be an integer in 1..16, got '17'");
    expect(bad("tap,id=n0,ifname=a-very-long-tap-name")).toBe(
      "-netdev: invalid interface name 'a-very-long-tap-name' (at most 15 characters, no '/' or spaces)",
    );
    expect(bad("tap,id=n0,ifname=tap0,script=/etc/qemu-ifup")).toBe(
      "-netdev: script=/etc/qemu-ifup is not supported (kiln runs no scripts; use script=no)",
    );
    expect(bad("tap,id=n0,ifname=tap0,queue=2")).toStartWith("-netdev: unknown option 'queue' (valid: type, id, ifname, fd, queues,");
    expect(msg(...MICRO, "-netdev", "tap,id=n0,ifname=a", "-netdev", "tap,id=n0,ifname=b")).toBe("-netdev: duplicate id 'n0'");
  });
});

describe("-device", () => {
  const DRIVE = ["-drive", "file=disk.img,id=d0"];
  const NET = ["-netdev", "tap,id=n0,ifname=tap0"];

  test("virtio-blk-pci with every option", () => {
    const cfg = parse(
      ...Q35,
      ...DRIVE,
      "-device",
      "virtio-blk-pci,id=blk0,drive=d0,bus=pcie.0,addr=0x3,serial=SN,num-queues=4,queue-size=128,bootindex=1",
    );
    expect(cfg.devices).toEqual([
      {
        driver: "virtio-blk-pci",
        id: "blk0",
        drive: "d0",
        pci: { bus: "pcie.0", slot: 3, function: 0, multifunction: false },
        serial: "SN",
        numQueues: 4,
        queueSize: 128,
        bootIndex: 1,
      },
    ]);
  });

  test("virtio-blk-device on microvm; bus defaults to pcie.0 on q35", () => {
    expect(parse(...MICRO, ...DRIVE, "-device", "virtio-blk-device,drive=d0").devices[0]).toEqual({
      driver: "virtio-blk-device", id: null, drive: "d0", pci: null, serial: null, numQueues: 1, queueSize: 256, bootIndex: null,
    });
    expect(parse(...Q35, ...DRIVE, "-device", "driver=virtio-blk-pci,drive=d0,addr=4").devices[0]!.pci).toEqual({
      bus: "pcie.0", slot: 4, function: 0, multifunction: false,
    });
  });

  test("virtio-net-pci and virtio-net-device", () => {
    const cfg = parse(...Q35, ...NET, "-device", "virtio-net-pci,id=net0,netdev=n0,bus=pcie.0,addr=0x2.0x0,mac=52:54:00:AA:BB:CC,mq=on,queue-size=1024");
    expect(cfg.devices[0]).toEqual({
      driver: "virtio-net-pci",
      id: "net0",
      netdev: "n0",
      pci: { bus: "pcie.0", slot: 2, function: 0, multifunction: false },
      mac: "52:54:00:aa:bb:cc",
      mq: true,
      queueSize: 1024,
    });
    expect(parse(...MICRO, ...NET, "-device", "virtio-net-device,netdev=n0").devices[0]).toEqual({
      driver: "virtio-net-device", id: null, netdev: "n0", pci: null, mac: "52:54:00:12:34:56", mq: false, queueSize: 256,
    });
  });

  test("default MACs are QEMU's, deterministic, and skip explicit ones", () => {
    const cfg = parse(
      ...MICRO,
      "-netdev", "tap,id=a,ifname=ta",
      "-netdev", "tap,id=b,ifname=tb",
      "-netdev", "tap,id=c,ifname=tc",
      "-device", "virtio-net-device,netdev=a",
      "-device", "virtio-net-device,netdev=b,mac=52:54:00:12:34:57",
      "-device", "virtio-net-device,netdev=c",
    );
    expect(cfg.devices.map((d) => (d.driver === "virtio-net-device" ? d.mac : ""))).toEqual([
      "52:54:00:12:34:56",
      "52:54:00:12:34:57",
      "52:54:00:12:34:58",
    ]);
  });

  test("pcie-root-port and a device behind it", () => {
    const cfg = parse(
      ...Q35, ...DRIVE,
      "-device", "virtio-blk-pci,id=blk0,drive=d0,bus=rp1,addr=0x0",
      "-device", "pcie-root-port,id=rp1,bus=pcie.0,addr=0x4,port=1,chassis=1",
    );
    expect(cfg.devices[1]).toEqual({
      driver: "pcie-root-port", id: "rp1", pci: { bus: "pcie.0", slot: 4, function: 0, multifunction: false }, port: 1, chassis: 1,
    });
    expect(cfg.devices[0]!.pci).toEqual({ bus: "rp1", slot: 0, function: 0, multifunction: false });
  });

  test("multifunction slots", () => {
    const cfg = parse(
      ...Q35,
      "-drive", "file=a,id=d0", "-drive", "file=b,id=d1",
      "-device", "virtio-blk-pci,drive=d1,addr=0x3.0x1",
      "-device", "virtio-blk-pci,drive=d0,addr=0x3,multifunction=on",
    );
    expect(cfg.devices.map((d) => d.pci)).toEqual([
      { bus: "pcie.0", slot: 3, function: 1, multifunction: false },
      { bus: "pcie.0", slot: 3, function: 0, multifunction: true },
    ]);
  });

  test("bad options", () => {
    const bad = (...v: string[]) => msg(...Q35, ...DRIVE, ...NET, ...v.flatMap((x) => ["-device", x]));
    // No addr= is fine: the first free slot is taken (see "PCI devices without addr").
    expect(bad("virtio-rng-pci,addr=3")).toBe(
      "-device: unknown device 'virtio-rng-pci' (supported: virtio-blk-pci, virtio-blk-device, virtio-net-pci, virtio-net-device, pcie-root-port)",
    );
    expect(bad("")).toBe("-device: empty value (expected DRIVER,key=value,...)");
    expect(bad("virtio-blk-pci,addr=3")).toBe("-device: missing 'drive' (drive=ID of a -drive)");
    expect(bad("virtio-net-pci,addr=3")).toBe("-device: missing 'netdev' (netdev=ID of a -netdev)");
    expect(bad("virtio-blk-pci,drive=d0,addr=0x20")).toBe(
      "-device: invalid PCI addr '0x20' (expected SLOT or SLOT.FUNCTION, slot 0..31, function 0..7, e.g. 0x3 or 0x3.0x1)",
    );
    expect(bad("virtio-blk-pci,drive=d0,addr=3.8")).toStartWith("-device: invalid PCI addr '3.8'");
    expect(bad("virtio-net-pci,netdev=n0,addr=3,mac=01:00:5e:00:00:01")).toBe(
      "-device: invalid MAC address '01:00:5e:00:00:01' (expected a unicast address such as 52:54:00:12:34:56)",
    );
    expect(bad("virtio-net-pci,netdev=n0,addr=3,mac=52:54:00:12:34")).toStartWith("-device: invalid MAC address");
    expect(bad("virtio-net-pci,netdev=n0,addr=3,mq=2")).toBe("-device: 'mq' must be on or off, got '2'");
    expect(bad("virtio-blk-pci,drive=d0,addr=3,num-queues=0")).toBe("-device: 'num-queues' must be an integer in 1..32, got '0'");
    expect(bad("virtio-blk-pci,drive=d0,addr=3,queue-size=100")).toBe("-device: 'queue-size' must be a power of 2, got 100");
    expect(bad("virtio-blk-pci,drive=d0,addr=3,queue-size=2048")).toBe("-device: 'queue-size' must be an integer in 4..1024, got '2048'");
    expect(bad("virtio-blk-pci,drive=d0,addr=3,bootindex=256")).toBe("-device: 'bootindex' must be an integer in 0..255, got '256'");
    expect(bad("virtio-blk-pci,drive=d0,addr=3,iothread=io0")).toStartWith("-device: unknown option 'iothread' (valid: driver, id, drive,");
    expect(bad("virtio-net-pci,netdev=n0,addr=3,serial=x")).toStartWith("-device: unknown option 'serial' (valid: driver, id, netdev,");
    expect(bad("pcie-root-port,addr=3")).toBe("-device: pcie-root-port needs id= (devices behind it name it as bus=)");
    expect(bad("virtio-blk-pci,id=pcie.0,drive=d0,addr=3")).toBe("-device: id 'pcie.0' is reserved for q35's root bus");
    expect(msg(...MICRO, ...DRIVE, "-device", "virtio-blk-device,drive=d0,addr=0x3")).toBe(
      "-device: virtio-blk-device is virtio-mmio and takes no 'addr' (bus/addr are for virtio-blk-pci on q35)",
    );
    expect(msg(...MICRO, ...NET, "-device", "virtio-net-device,netdev=n0,bus=pcie.0")).toBe(
      "-device: virtio-net-device is virtio-mmio and takes no 'bus' (bus/addr are for virtio-net-pci on q35)",
    );
  });
});

describe("cross-checks", () => {
  const DRIVE = ["-drive", "file=disk.img,id=d0"];
  const NET = ["-netdev", "tap,id=n0,ifname=tap0"];

  test("a device must refer to an existing drive or netdev", () => {
    expect(msg(...Q35, "-device", "virtio-blk-pci,id=blk0,drive=nope,addr=3")).toBe(
      "-device: virtio-blk-pci 'blk0': no -drive with id 'nope'",
    );
    expect(msg(...MICRO, "-device", "virtio-net-device,netdev=nope")).toBe("-device: virtio-net-device: no -netdev with id 'nope'");
    // Order does not matter: the drive may come after the device.
    expect(parse(...Q35, "-device", "virtio-blk-pci,drive=d0,addr=3", ...DRIVE).devices).toHaveLength(1);
  });

  test("a drive or netdev serves one device", () => {
    expect(msg(...Q35, ...DRIVE, "-device", "virtio-blk-pci,id=a,drive=d0,addr=3", "-device", "virtio-blk-pci,id=b,drive=d0,addr=4")).toBe(
      "-device: virtio-blk-pci 'b': drive 'd0' is already used by virtio-blk-pci 'a'",
    );
    expect(msg(...MICRO, ...NET, "-device", "virtio-net-device,netdev=n0", "-device", "virtio-net-device,netdev=n0")).toBe(
      "-device: virtio-net-device: netdev 'n0' is already used by virtio-net-device",
    );
  });

  test("duplicate ids, per kind (a drive and its device may share one, as in the seed)", () => {
    expect(msg(...Q35, "-drive", "file=a,id=d0", "-drive", "file=b,id=d1",
      "-device", "virtio-blk-pci,id=x,drive=d0,addr=3", "-device", "virtio-blk-pci,id=x,drive=d1,addr=4")).toBe("-device: duplicate id 'x'");
    expect(msg(...MICRO, "-chardev", "stdio,id=c", "-chardev", "pty,id=c")).toBe("-chardev: duplicate id 'c'");
    expect(parse(...Q35, ...DRIVE, "-device", "virtio-blk-pci,id=d0,drive=d0,addr=3").devices[0]!.id).toBe("d0");
  });

  test("one device per PCI address and bus", () => {
    expect(msg(...Q35, ...DRIVE, ...NET, "-device", "virtio-blk-pci,id=blk0,drive=d0,addr=0x3", "-device", "virtio-net-pci,id=net0,netdev=n0,addr=3")).toBe(
      "-device: virtio-net-pci 'net0': pcie.0 addr 0x3.0 is already used by virtio-blk-pci 'blk0'",
    );
    // Same slot on different buses is fine.
    const cfg = parse(
      ...Q35, ...DRIVE, ...NET,
      "-device", "pcie-root-port,id=rp0,addr=0x5",
      "-device", "virtio-blk-pci,drive=d0,addr=0x0",
      "-device", "virtio-net-pci,netdev=n0,bus=rp0,addr=0x0",
    );
    expect(cfg.devices).toHaveLength(3);
  });

  test("functions above 0 need function 0 with multifunction=on", () => {
    const two = ["-drive", "file=a,id=d0", "-drive", "file=b,id=d1"];
    expect(msg(...Q35, ...two, "-device", "virtio-blk-pci,id=b1,drive=d1,addr=0x3.0x1")).toBe(
      "-device: virtio-blk-pci 'b1': pcie.0 addr 0x3.1 needs a device at function 0 of slot 0x3 with multifunction=on",
    );
    expect(fail(...Q35, ...two, "-device", "virtio-blk-pci,drive=d0,addr=3", "-device", "virtio-blk-pci,drive=d1,addr=3.1").message).toEndWith(
      "needs a device at function 0 of slot 0x3 with multifunction=on",
    );
  });

  test("buses: pcie.0 or a root port, whose only slot is 0", () => {
    expect(msg(...Q35, ...DRIVE, "-device", "virtio-blk-pci,drive=d0,bus=pci.0,addr=3")).toBe(
      "-device: virtio-blk-pci: unknown bus 'pci.0' (use pcie.0 or the id of a pcie-root-port)",
    );
    expect(msg(...Q35, ...DRIVE, "-device", "pcie-root-port,id=rp0,addr=4", "-device", "virtio-blk-pci,drive=d0,bus=rp0,addr=1")).toBe(
      "-device: virtio-blk-pci: a pcie-root-port has a single slot; use addr=0x0 (or 0x0.N) on bus 'rp0'",
    );
    expect(msg(...Q35, "-device", "pcie-root-port,id=rp0,addr=4", "-device", "pcie-root-port,id=rp1,bus=rp0,addr=0")).toBe(
      "-device: pcie-root-port 'rp1': a pcie-root-port must sit on pcie.0",
    );
  });

  test("virtio-*-pci needs q35, virtio-*-device needs microvm", () => {
    expect(msg(...MICRO, ...DRIVE, "-device", "virtio-blk-pci,drive=d0,addr=3")).toBe(
      "-device: virtio-blk-pci needs machine q35 (microvm has no PCI, only virtio-mmio devices; use virtio-blk-device)",
    );
    expect(msg(...MICRO, ...NET, "-device", "virtio-net-pci,netdev=n0,addr=3")).toBe(
      "-device: virtio-net-pci needs machine q35 (microvm has no PCI, only virtio-mmio devices; use virtio-net-device)",
    );
    expect(msg(...MICRO, "-device", "pcie-root-port,id=rp0,addr=3")).toBe(
      "-device: pcie-root-port needs machine q35 (microvm has no PCI, only virtio-mmio devices)",
    );
    expect(msg(...Q35, ...DRIVE, "-device", "virtio-blk-device,drive=d0")).toBe(
      "-device: virtio-blk-device is a virtio-mmio device, for machine microvm; on q35 use virtio-blk-pci",
    );
    expect(msg(...Q35, ...NET, "-device", "virtio-net-device,netdev=n0")).toBe(
      "-device: virtio-net-device is a virtio-mmio device, for machine microvm; on q35 use virtio-net-pci",
    );
    // The machine may come after the devices.
    expect(parse("-kernel", "k", ...DRIVE, "-device", "virtio-blk-pci,drive=d0,addr=3", "-machine", "q35").devices).toHaveLength(1);
  });

  test("bootindex is unique", () => {
    expect(msg(...Q35, "-drive", "file=a,id=d0", "-drive", "file=b,id=d1",
      "-device", "virtio-blk-pci,id=a,drive=d0,addr=3,bootindex=0", "-device", "virtio-blk-pci,id=b,drive=d1,addr=4,bootindex=0")).toBe(
      "-device: virtio-blk-pci 'b': bootindex 0 is already used by virtio-blk-pci 'a'",
    );
  });

  test("-daemonize cannot keep a stdio serial", () => {
    const e = fail(...MICRO, "-daemonize", "-serial", "stdio");
    expect(e.flag).toBe("-daemonize");
    expect(e.message).toBe(
      "-daemonize: cannot be combined with a stdio serial (a daemon has no terminal); use -serial pty, -serial file,path=F or a socket",
    );
    expect(fail(...MICRO, "-chardev", "stdio,id=con", "-serial", "chardev:con", "-daemonize").flag).toBe("-daemonize");
    expect(parse(...MICRO, "-daemonize", "-serial", "pty", "-pidfile", "/run/kiln.pid").process.daemonize).toBe(true);
  });

  test("listeners may not share an address", () => {
    expect(msg(...MICRO, "-qmp", "unix:/tmp/q,server,nowait", "-qmp", "unix:/tmp/q,server,nowait")).toBe(
      "-qmp: 'unix:/tmp/q' is already used by -qmp",
    );
    expect(msg(...MICRO, "-qmp", "tcp:127.0.0.1:4444,server,nowait", "-incoming", "tcp:0.0.0.0:4444")).toBe(
      "-incoming: 'tcp:0.0.0.0:4444' is already used by -qmp",
    );
    expect(msg(...MICRO, "-serial", "unix:/tmp/s,server,nowait", "-incoming", "unix:/tmp/s")).toBe(
      "-incoming: 'unix:/tmp/s' is already used by -serial",
    );
    // Different hosts on one port are fine.
    expect(parse(...MICRO, "-qmp", "tcp:127.0.0.1:4444,server,nowait", "-incoming", "tcp:10.0.0.1:4444").qmp).toHaveLength(1);
  });
});

describe("-chardev, -serial, -qmp, -mon", () => {
  test("-serial simple backends", () => {
    expect(parse(...MICRO, "-serial", "stdio").serial).toEqual({ kind: "stdio" });
    expect(parse(...MICRO, "-serial", "pty").serial).toEqual({ kind: "pty" });
    expect(parse(...MICRO, "-serial", "stdio", "-serial", "none").serial).toEqual({ kind: "none" });
    expect(parse(...MICRO, "-serial", "file,path=/tmp/console.log").serial).toEqual({ kind: "file", path: "/tmp/console.log" });
    expect(parse(...MICRO, "-serial", "file:/tmp/a,b.log").serial).toEqual({ kind: "file", path: "/tmp/a,b.log" });
  });

  test("-serial sockets", () => {
    expect(parse(...MICRO, "-serial", "socket,path=/tmp/con.sock,server,nowait").serial).toEqual({
      kind: "socket", address: { transport: "unix", path: "/tmp/con.sock" }, wait: false,
    });
    expect(parse(...MICRO, "-serial", "unix:/tmp/con.sock,server").serial).toEqual({
      kind: "socket", address: { transport: "unix", path: "/tmp/con.sock" }, wait: true,
    });
    expect(parse(...MICRO, "-serial", "tcp:127.0.0.1:5555,server=on,wait=off").serial).toEqual({
      kind: "socket", address: { transport: "tcp", host: "127.0.0.1", port: 5555 }, wait: false,
    });
    expect(parse(...MICRO, "-serial", "socket,host=::1,port=5555,server,nowait").serial).toEqual({
      kind: "socket", address: { transport: "tcp", host: "::1", port: 5555 }, wait: false,
    });
  });

  test("-serial bad forms", () => {
    const bad = (v: string) => msg(...MICRO, "-serial", v);
    expect(bad("vc")).toStartWith("-serial: unknown backend 'vc' (valid: stdio, pty, none, file,path=F,");
    expect(bad("stdio,server")).toBe("-serial: 'server' does not apply to a stdio backend");
    expect(bad("file")).toBe("-serial: missing 'path' (file,path=FILE)");
    expect(bad("socket,path=/tmp/s")).toBe("-serial: a socket needs 'server' (kiln only listens; e.g. socket,path=PATH,server,nowait)");
    expect(bad("unix:/tmp/s")).toBe("-serial: a socket needs 'server' (kiln only listens; e.g. unix:/tmp/s,server,nowait)");
    expect(bad("socket,server,nowait")).toBe(
      "-serial: a socket needs path=PATH or host=HOST,port=PORT (e.g. socket,path=PATH,server,nowait)",
    );
    expect(bad("socket,path=/tmp/s,port=1,server")).toBe("-serial: give either path= or host=/port=, not both");
    expect(bad("socket,path=/tmp/s,server,nowait,wait=on")).toBe("-serial: give either 'nowait' or 'wait=', not both");
    expect(bad("chardev:")).toBe("-serial: empty chardev id");
    expect(bad("chardev:nope")).toBe("-serial: no -chardev with id 'nope'");
  });

  test("-chardev and -serial chardev:ID", () => {
    const cfg = parse(
      ...MICRO,
      "-chardev", "socket,id=con0,path=/tmp/con.sock,server,nowait",
      "-chardev", "file,id=log0,path=/tmp/log",
      "-chardev", "pty,id=p0",
      "-serial", "chardev:con0",
    );
    expect(cfg.chardevs).toEqual([
      { id: "con0", backend: { kind: "socket", address: { transport: "unix", path: "/tmp/con.sock" }, wait: false } },
      { id: "log0", backend: { kind: "file", path: "/tmp/log" } },
      { id: "p0", backend: { kind: "pty" } },
    ]);
    expect(cfg.serial).toEqual({ kind: "socket", address: { transport: "unix", path: "/tmp/con.sock" }, wait: false });
  });

  test("-chardev bad forms", () => {
    const bad = (v: string) => msg(...MICRO, "-chardev", v);
    expect(bad("stdio")).toBe("-chardev: missing 'id' (id=ID)");
    expect(bad("serial,id=c")).toBe("-chardev: unknown backend 'serial' (valid: stdio, pty, file, socket)");
    expect(bad("file,id=c")).toBe("-chardev: missing 'path' (file,path=FILE)");
    expect(bad("stdio,id=c,path=/x")).toBe("-chardev: 'path' does not apply to a stdio backend");
    expect(bad("socket,id=c,path=/tmp/s")).toBe(
      "-chardev: a socket needs 'server' (kiln only listens; e.g. socket,path=PATH,server,nowait)",
    );
    expect(bad("socket,id=c,host=1.2.3.4,port=99999,server")).toBe("-chardev: 'port' must be an integer in 1..65535, got '99999'");
  });

  test("-qmp", () => {
    const cfg = parse(
      ...MICRO,
      "-qmp", "unix:/tmp/qmp.sock,server,nowait",
      "-qmp", "tcp:127.0.0.1:4444,server,nowait",
      "-qmp", "tcp:[::1]:4445,server=on,wait=off",
    );
    expect(cfg.qmp).toEqual([
      { transport: "unix", path: "/tmp/qmp.sock" },
      { transport: "tcp", host: "127.0.0.1", port: 4444 },
      { transport: "tcp", host: "::1", port: 4445 },
    ]);
  });

  test("-qmp bad forms", () => {
    const bad = (v: string) => msg(...MICRO, "-qmp", v);
    expect(bad("unix:/tmp/q")).toBe(
      "-qmp: 'server' is required (kiln only listens for QMP clients): -qmp unix:/tmp/q,server,nowait",
    );
    expect(bad("unix:/tmp/q,server")).toBe(
      "-qmp: 'nowait' is required (kiln does not wait for a QMP client): -qmp unix:/tmp/q,server,nowait",
    );
    expect(bad("stdio")).toBe(
      "-qmp: unsupported address 'stdio' (expected unix:PATH,server,nowait or tcp:HOST:PORT,server,nowait)",
    );
    expect(bad("tcp:127.0.0.1,server,nowait")).toBe("-qmp: invalid address '127.0.0.1' (expected HOST:PORT)");
    expect(bad("unix:/tmp/q,server,nowait,pretty=on")).toBe("-qmp: unknown option 'pretty' (valid: uri, server, wait, nowait)");
  });

  test("-mon chardev=ID,mode=control", () => {
    const cfg = parse(
      ...MICRO,
      "-chardev", "socket,id=mon0,path=/tmp/mon.sock,server,nowait",
      "-mon", "chardev=mon0,id=monitor,mode=control",
      "-qmp", "unix:/tmp/q2,server,nowait",
    );
    expect(cfg.qmp).toEqual([
      { transport: "unix", path: "/tmp/mon.sock" },
      { transport: "unix", path: "/tmp/q2" },
    ]);
  });

  test("-mon bad forms", () => {
    const SOCK = ["-chardev", "socket,id=m,path=/tmp/m,server,nowait"];
    expect(msg(...MICRO, ...SOCK, "-mon", "chardev=m")).toBe("-mon: missing 'mode' (mode=control: kiln's monitor speaks QMP only)");
    expect(msg(...MICRO, ...SOCK, "-mon", "chardev=m,mode=readline")).toBe(
      "-mon: mode 'readline' is not supported (only mode=control: kiln's monitor speaks QMP only)",
    );
    expect(msg(...MICRO, "-mon", "chardev=nope,mode=control")).toBe("-mon: no -chardev with id 'nope'");
    expect(msg(...MICRO, "-chardev", "file,id=f,path=/x", "-mon", "chardev=f,mode=control")).toBe(
      "-mon: chardev 'f' is a file chardev; QMP needs a listening socket (-chardev socket,id=f,path=PATH,server,nowait)",
    );
    expect(msg(...MICRO, "-chardev", "socket,id=w,path=/tmp/w,server", "-mon", "chardev=w,mode=control")).toBe(
      "-mon: chardev 'w' needs 'nowait' (kiln does not wait for a QMP client)",
    );
    expect(msg(...MICRO, ...SOCK, "-serial", "chardev:m", "-mon", "chardev=m,mode=control")).toBe(
      "-mon: chardev 'm' is already used by -serial",
    );
  });

  test("-nographic and -display none are accepted", () => {
    expect(parse(...MICRO, "-nographic", "-display", "none")).toEqual(parse(...MICRO));
    expect(msg(...MICRO, "-display", "gtk")).toBe("-display: 'gtk' is not supported (kiln has no display; only -display none)");
  });
});

describe("-incoming", () => {
  const inc = (v: string) => parse(...MICRO, "-incoming", v).incoming;

  test("good forms", () => {
    expect(inc("tcp:192.168.0.1:4446")).toEqual({ transport: "tcp", host: "192.168.0.1", port: 4446 });
    expect(inc("tcp:[::1]:4446")).toEqual({ transport: "tcp", host: "::1", port: 4446 });
    expect(inc("tcp::4446")).toEqual({ transport: "tcp", host: "0.0.0.0", port: 4446 });
    expect(inc("tcp:dest.example:4446")).toEqual({ transport: "tcp", host: "dest.example", port: 4446 });
    expect(inc("unix:/tmp/stratovirt-migrate.socket")).toEqual({ transport: "unix", path: "/tmp/stratovirt-migrate.socket" });
    expect(inc("file:/var/snap")).toEqual({ transport: "file", path: "/var/snap", mapped: true });
    expect(inc("file:/var/snap,mapped=off")).toEqual({ transport: "file", path: "/var/snap", mapped: false });
    expect(inc("exec:gzip -dc /tmp/vm.gz, with commas: too")).toEqual({
      transport: "exec", command: "gzip -dc /tmp/vm.gz, with commas: too",
    });
    expect(inc("defer")).toEqual({ transport: "defer" });
  });

  test("bad forms", () => {
    const bad = (v: string) => msg(...MICRO, "-incoming", v);
    const expected = "expected tcp:HOST:PORT, tcp:[IPv6]:PORT, unix:PATH, file:PATH, exec:COMMAND or defer";
    expect(bad("fd:3")).toBe(`-incoming: unsupported URI 'fd:3' (${expected})`);
    expect(bad("stdio")).toBe(`-incoming: unsupported URI 'stdio' (${expected})`);
    expect(bad("tcp:192.168.0.1")).toBe("-incoming: invalid address '192.168.0.1' (expected HOST:PORT)");
    expect(bad("tcp:192.168.0.1:70000")).toBe("-incoming: invalid port '70000' (expected 1..65535)");
    expect(bad("tcp:fe80::1:4446")).toBe(
      "-incoming: invalid address 'fe80::1:4446' (write IPv6 hosts in brackets: [::1]:PORT)",
    );
    expect(bad("unix:")).toBe("-incoming: empty unix socket path");
    expect(bad("exec: ")).toBe("-incoming: empty command after exec:");
    expect(bad("file:/x,mapped=sometimes")).toBe("-incoming: 'mapped' must be on or off, got 'sometimes'");
    expect(bad("file:/x,uffd=1")).toBe("-incoming: unknown option 'uffd' (valid: path, mapped)");
  });
});

describe("process flags", () => {
  test("-D, -pidfile, -daemonize, -S, -no-reboot, -no-shutdown", () => {
    const cfg = parse(...MICRO, "-D", "/tmp/kiln.log", "-pidfile", "/run/kiln.pid", "-daemonize", "-S", "-no-reboot", "-no-shutdown");
    expect(cfg.process).toEqual({
      logFile: "/tmp/kiln.log",
      pidFile: "/run/kiln.pid",
      daemonize: true,
      startPaused: true,
      noReboot: true,
      noShutdown: true,
    });
  });

  test("-D's path is optional", () => {
    expect(parse(...MICRO, "-D").process.logFile).toBeNull();
    expect(parse("-D", ...MICRO).process.logFile).toBeNull();
    expect(parse("-D", "-S", ...MICRO).process).toMatchObject({ logFile: null, startPaused: true });
    expect(parse("-D", "/tmp/a", "-D", ...MICRO).process.logFile).toBeNull(); // last wins
    expect(parse("-D", "kiln.log", ...MICRO).process.logFile).toBe("kiln.log");
  });

  test("-pidfile needs a path", () => {
    expect(msg(...MICRO, "-pidfile")).toBe("-pidfile: missing value");
    expect(msg(...MICRO, "-pidfile", "")).toBe("-pidfile: empty path");
  });
});

describe("JSON round trip", () => {
  test("a config using every flag survives JSON unchanged", () => {
    const cfg = parse(
      "-machine", "q35,mem-share=on,dump-guest-core=off",
      "-accel", "kvm", "-cpu", "host",
      "-m", "2G", "-smp", "2,maxcpus=4,sockets=2,cores=2,threads=1",
      "-kernel", "bzImage", "-initrd", "initrd.img", "-append", "console=ttyS0 \"quoted\" é",
      "-name", "guest=vm1", "-uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
      "-chardev", "socket,id=mon0,host=127.0.0.1,port=4000,server,nowait",
      "-mon", "chardev=mon0,mode=control",
      "-serial", "file,path=/tmp/serial.log",
      "-qmp", "unix:/tmp/qmp.sock,server,nowait",
      "-drive", "file=root.img,id=d0,readonly=on,aio=threads,throttling.iops-total=500,serial=abc",
      "-netdev", "tap,id=n0,ifname=tap0,queues=2",
      "-device", "pcie-root-port,id=rp0,addr=0x5,port=1,chassis=1",
      "-device", "virtio-blk-pci,id=blk0,drive=d0,bus=pcie.0,addr=0x3,multifunction=on,bootindex=0",
      "-device", "virtio-net-pci,id=net0,netdev=n0,bus=rp0,addr=0x0,mq=on",
      "-incoming", "tcp:[::]:4446",
      "-D", "kiln.log", "-pidfile", "kiln.pid", "-S", "-no-reboot", "-no-shutdown",
    );
    const copy = JSON.parse(JSON.stringify(cfg));
    expect(copy).toStrictEqual(cfg);
    // Nothing JSON would drop or change: no undefined, no non-finite numbers, plain objects only.
    const walk = (v: unknown): void => {
      expect(v).not.toBeUndefined();
      if (typeof v === "number") expect(Number.isFinite(v)).toBe(true);
      if (v && typeof v === "object") {
        expect([Object.prototype, Array.prototype]).toContain(Object.getPrototypeOf(v));
        Object.values(v).forEach(walk);
      }
    };
    walk(cfg);
  });

  test("parsing twice gives equal configs (both migration ends resolve defaults alike)", () => {
    const argv = ["-kernel", "k", "-netdev", "tap,id=n0,ifname=t0", "-device", "virtio-net-device,netdev=n0"];
    expect(parseVmArgs(argv)).toEqual(parseVmArgs(argv));
  });
});

describe("PCI devices without addr", () => {
  test("take the first free slot of their bus, after the explicit ones, in command-line order", () => {
    const cfg = parseVmArgs([
      "-machine", "q35", "-kernel", "vmlinux",
      "-drive", "file=a.img,id=d0", "-drive", "file=b.img,id=d1",
      "-netdev", "tap,id=n0,ifname=tap0",
      "-device", "virtio-net-pci,netdev=n0,id=net0,mac=52:54:00:12:34:56",
      "-device", "virtio-blk-pci,drive=d0,addr=0x1",
      "-device", "virtio-blk-pci,drive=d1",
    ]);
    const slots = Object.fromEntries(cfg.devices.map((d) => [d.id ?? d.driver + ("drive" in d ? d.drive : ""), d.pci?.slot]));
    expect(slots).toEqual({ net0: 2, "virtio-blk-pcid0": 1, "virtio-blk-pcid1": 3 });
  });
});

