/**
 * The StratoVirt migration seed's command lines (shared/seeds/stratovirt-migration.md) must parse unchanged.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseVmArgs } from "../../src/cli/args.ts";
import type { VmConfig } from "../../src/cli/config.ts";

/** Enough of sh's word splitting for documentation command lines: quotes, backslash escapes, line continuation. */
function shellWords(text: string): string[] {
  const words: string[] = [];
  let cur: string | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === "\\") {
      const n = text[++i];
      if (n === "\n" || n === undefined) continue; // line continuation
      cur = (cur ?? "") + n;
    } else if (c === '"' || c === "'") {
      const end = text.indexOf(c, i + 1);
      if (end < 0) throw new Error(`unterminated quote in ${text}`);
      cur = (cur ?? "") + text.slice(i + 1, end);
      i = end;
    } else if (/\s/.test(c)) {
      if (cur !== null) words.push(cur);
      cur = null;
    } else {
      cur = (cur ?? "") + c;
    }
  }
  if (cur !== null) words.push(cur);
  return words;
}

// Verbatim from the seed (it ends each line, the last one too, with a backslash).
const SOURCE = `./stratovirt \\
    -machine q35 \\
    -kernel ./vmlinux.bin \\
    -append "console=ttyS0 pci=off reboot=k quiet panic=1 root=/dev/vda" \\
    -drive file=path/to/rootfs,id=rootfs,readonly=off,direct=off \\
    -device virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0 \\
    -qmp unix:path/to/socket1,server,nowait \\
    -serial stdio \\
`;

const DESTINATION = `./stratovirt \\
    -machine q35 \\
    -kernel ./vmlinux.bin \\
    -append "console=ttyS0 pci=off reboot=k quiet panic=1 root=/dev/vda" \\
    -drive file=path/to/rootfs,id=rootfs,readonly=off,direct=off \\
    -device virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0 \\
    -qmp unix:path/to/socket2,server,nowait \\
    -serial stdio \\
    -incoming tcp:192.168.0.1:4446 \\
`;

const argvOf = (cmd: string) => {
  const words = shellWords(cmd);
  expect(words[0]).toBe("./stratovirt");
  return words.slice(1);
};

/** What must match between the two ends of a migration: everything but the host-side endpoints. */
function guestSide(cfg: VmConfig) {
  const { qmp: _q, incoming: _i, ...rest } = cfg;
  return rest;
}

describe("seed: StratoVirt live migration", () => {
  test("the shell splitter reads the seed as sh would", () => {
    expect(argvOf(SOURCE)).toEqual([
      "-machine", "q35",
      "-kernel", "./vmlinux.bin",
      "-append", "console=ttyS0 pci=off reboot=k quiet panic=1 root=/dev/vda",
      "-drive", "file=path/to/rootfs,id=rootfs,readonly=off,direct=off",
      "-device", "virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0",
      "-qmp", "unix:path/to/socket1,server,nowait",
      "-serial", "stdio",
    ]);
  });

  test("source command line", () => {
    const cfg = parseVmArgs(argvOf(SOURCE));
    expect(cfg).toEqual({
      machine: { type: "q35", memShare: false, dumpGuestCore: true },
      accel: "kvm",
      cpuModel: "host",
      memoryBytes: 256 * 1024 * 1024,
      smp: { cpus: 1, maxCpus: 1, sockets: 1, dies: 1, clusters: 1, cores: 1, threads: 1 },
      boot: {
        kernel: "./vmlinux.bin",
        initrd: null,
        append: "console=ttyS0 pci=off reboot=k quiet panic=1 root=/dev/vda",
      },
      name: null,
      uuid: null,
      chardevs: [],
      serial: { kind: "stdio" },
      qmp: [{ transport: "unix", path: "path/to/socket1" }],
      drives: [
        { id: "rootfs", file: "path/to/rootfs", readOnly: false, direct: false, aio: null, iopsTotal: null, serial: null },
      ],
      netdevs: [],
      devices: [
        {
          driver: "virtio-blk-pci",
          id: "rootfs",
          drive: "rootfs",
          pci: { bus: "pcie.0", slot: 0, function: 0, multifunction: false },
          serial: null,
          numQueues: 1,
          queueSize: 256,
          bootIndex: null,
        },
      ],
      incoming: null,
      process: { logFile: null, pidFile: null, daemonize: false, startPaused: false, noReboot: false, noShutdown: false },
    });
  });

  test("destination command line", () => {
    const cfg = parseVmArgs(argvOf(DESTINATION));
    expect(cfg.incoming).toEqual({ transport: "tcp", host: "192.168.0.1", port: 4446 });
    expect(cfg.qmp).toEqual([{ transport: "unix", path: "path/to/socket2" }]);
  });

  test("source and destination describe the same guest", () => {
    expect(guestSide(parseVmArgs(argvOf(DESTINATION)))).toEqual(guestSide(parseVmArgs(argvOf(SOURCE))));
  });

  test("the seed's unix variant of -incoming", () => {
    const argv = argvOf(DESTINATION);
    argv[argv.indexOf("-incoming") + 1] = "unix:/tmp/stratovirt-migrate.socket";
    expect(parseVmArgs(argv).incoming).toEqual({ transport: "unix", path: "/tmp/stratovirt-migrate.socket" });
  });

  test("configs survive JSON round trips (they are sent to the destination)", () => {
    for (const cmd of [SOURCE, DESTINATION]) {
      const cfg = parseVmArgs(argvOf(cmd));
      expect(JSON.parse(JSON.stringify(cfg))).toStrictEqual(cfg);
    }
  });

  // The seed file itself, when shared/ sits beside the repository (as on developer machines and in CI).
  const seedPath = fileURLToPath(new URL("../../../shared/seeds/stratovirt-migration.md", import.meta.url));
  test.skipIf(!existsSync(seedPath))("every ./stratovirt command line in the seed file parses", () => {
    const md = readFileSync(seedPath, "utf8");
    const blocks = [...md.matchAll(/```shell\s+(\.\/stratovirt[\s\S]*?)```/g)].map((m) => m[1]!);
    expect(blocks.length).toBe(2);
    for (const block of blocks) {
      // The stored copy lost its line breaks: "a \ -b" was "a \<newline> -b".
      const cmd = block.replace(/ \\ /g, " \\\n").replace(/ \\\s*$/, "\n");
      const cfg = parseVmArgs(argvOf(cmd));
      expect(cfg.machine.type).toBe("q35");
      expect(cfg.devices).toHaveLength(1);
    }
    const [src, dst] = blocks.map((b) => parseVmArgs(argvOf(b.replace(/ \\ /g, " \\\n").replace(/ \\\s*$/, "\n"))));
    expect(src).toEqual(parseVmArgs(argvOf(SOURCE)));
    expect(dst).toEqual(parseVmArgs(argvOf(DESTINATION)));
  });
});
