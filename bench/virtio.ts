/**
 * virtio benchmark: kiln vs QEMU + KVM, the same test guest driving the same devices.
 *
 *   bun bench/virtio.ts [runs]          (root: it makes a network namespace with a tap)
 *
 * Block (virtio-blk on virtio-mmio, microvm, one 512 MiB raw image on this host's disk, page cache):
 *   sequential read and write, 256 KiB requests, 4 in flight, 2 GiB each (the image, four times); 4 KiB random reads and
 *   writes, 32 in flight, 100000 requests. The guest's driver polls its used ring and times itself.
 * Network (virtio-net on a tap, userspace device model on both sides: QEMU with vhost=off):
 *   transmit: the guest sends 200000 full-size frames as fast as its ring takes them;
 *   receive: the host injects 100000 64-byte frames through a packet socket, the guest counts what
 *   arrives (first to last frame).
 * Median of N runs each, interleaved. Writes a section of BENCHMARKS.md.
 *
 * QEMU's microvm describes virtio-mmio devices in ACPI only for kernels that read its DSDT; with
 * acpi=off it puts them on the kernel command line (virtio_mmio.device=...), where the test guest
 * looks. Its virtio-mmio transport defaults to the legacy version 1: force-legacy=false makes it 1.x.
 */
import { join } from "node:path";
import { mkdtempSync, rmSync, openSync, writeSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { REPO, median, qemuPath } from "./lib.ts";
import { updateBenchmarks } from "./report.ts";
import { PacketSocket } from "../src/net/packet-socket.ts";

const runs = Number(process.argv[2] ?? 3);
if (Bun.spawnSync(["bash", join(REPO, "scripts/build-guest.sh")]).exitCode !== 0) throw new Error("guest build failed");
if (Bun.spawnSync(["bun", "run", "build"], { cwd: REPO }).exitCode !== 0) throw new Error("kiln build failed");
const ELF = join(REPO, "build/guest/guest.elf");
const KILN = join(REPO, "dist/kiln");
const QEMU = qemuPath();
const NS = `kiln-bench-${process.pid}`;
const TAP = "btap0";

type Vmm = "kiln" | "qemu";

function sh(...cmd: string[]): void {
  const r = Bun.spawnSync(cmd, { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString()}`);
}

function vmCmd(vmm: Vmm, append: string, dev: "blk" | "net", image: string): string[] {
  const inNs = ["ip", "netns", "exec", NS];
  if (vmm === "kiln") {
    const d = dev === "blk" ? ["-drive", `file=${image},id=d0,direct=off`, "-device", "virtio-blk-device,drive=d0"] : ["-netdev", `tap,id=n0,ifname=${TAP}`, "-device", "virtio-net-device,netdev=n0"];
    return [...inNs, KILN, "-machine", "microvm", "-m", "256", "-smp", "1", "-kernel", ELF, "-append", append, "-serial", "stdio", ...d];
  }
  const d =
    dev === "blk"
      ? ["-drive", `file=${image},if=none,id=d0,format=raw,cache=writeback`, "-device", "virtio-blk-device,drive=d0"]
      : ["-netdev", `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=off`, "-device", "virtio-net-device,netdev=n0"];
  return [
    ...inNs, QEMU, "-accel", "kvm", "-machine", "microvm,acpi=off", "-cpu", "host,-arch-capabilities", "-nodefaults", "-no-user-config",
    "-nographic", "-serial", "stdio", "-m", "256", "-smp", "1", "-kernel", ELF, "-append", append,
    "-global", "virtio-mmio.force-legacy=false", ...d,
  ];
}

/** Run until a line matches `re` (calling `onReady` after READY), return its key=value fields, kill. */
async function runUntil(cmd: string[], re: RegExp, onReady?: () => Promise<void>, timeoutMs = 120_000): Promise<Record<string, string>> {
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
  const dec = new TextDecoder();
  let buf = "";
  const seen: string[] = [];
  try {
    for await (const chunk of p.stdout as ReadableStream<Uint8Array>) {
      buf += dec.decode(chunk, { stream: true });
      const lines = buf.split("\n");
      buf = lines.pop()!;
      for (const l of lines) {
        seen.push(l);
        if (onReady && l.startsWith("READY")) void onReady();
        if (re.test(l)) return Object.fromEntries([...l.matchAll(/(\S+?)=(\S+)/g)].map((m) => [m[1]!, m[2]!]));
      }
    }
    throw new Error(`${cmd[4]} exited before ${re}: ${seen.slice(-5).join(" / ")} ${await new Response(p.stderr as ReadableStream).text()}`);
  } finally {
    clearTimeout(timer);
    p.kill("SIGKILL");
    await p.exited;
  }
}

/** A command as one would type it (without the `ip netns exec` prefix), repository paths relative. */
function shellLine(cmd: string[]): string {
  return cmd
    .slice(4)
    .map((a) => a.replaceAll(REPO + "/", ""))
    .map((a) => (/[\s"]/.test(a) ? `"${a}"` : a))
    .join(" ");
}

interface Metric {
  name: string;
  unit: string;
  /** Guest command line, and how to turn its result line into the metric. */
  append: string;
  dev: "blk" | "net";
  re: RegExp;
  value: (f: Record<string, string>) => number;
  inject?: () => Promise<void>;
}

const mbps = (f: Record<string, string>) => Number(f.bytes) / Number(f.us); // bytes/us = MB/s
const iops = (f: Record<string, string>) => (Number(f.reqs) / Number(f.us)) * 1e6;
const fps = (f: Record<string, string>) => (Number(f.frames) / Number(f.us)) * 1e6;

let injector: PacketSocket | undefined;
async function flood(): Promise<void> {
  const f = new Uint8Array(64);
  f.fill(0xff, 0, 6);
  f.set([2, 0, 0, 0, 0, 1], 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  await Bun.sleep(50);
  for (let i = 0; i < 100_000; i++) {
    try {
      injector!.send(f);
    } catch {
      await Bun.sleep(0); // the tap's queue is full: the guest is behind
    }
  }
}

const METRICS: Metric[] = [
  { name: "sequential read, 256 KiB x 4", unit: "MB/s", dev: "blk", append: "vblk-bench=seqread vblk-mb=2048", re: /^VBLK-BENCH/, value: mbps },
  { name: "sequential write, 256 KiB x 4", unit: "MB/s", dev: "blk", append: "vblk-bench=seqwrite vblk-mb=2048", re: /^VBLK-BENCH/, value: mbps },
  { name: "4 KiB random read, 32 in flight", unit: "requests/s", dev: "blk", append: "vblk-bench=randread vblk-reqs=100000", re: /^VBLK-BENCH/, value: iops },
  { name: "4 KiB random write, 32 in flight", unit: "requests/s", dev: "blk", append: "vblk-bench=randwrite vblk-reqs=100000", re: /^VBLK-BENCH/, value: iops },
  { name: "net transmit, 1514-byte frames", unit: "frames/s", dev: "net", append: "vnet-bench=tx:200000", re: /^VNET-BENCH/, value: fps },
  { name: "net receive, 64-byte frames", unit: "frames/s", dev: "net", append: "vnet-bench=rx:100000", re: /^VNET-BENCH/, value: fps, inject: flood },
];

const dir = mkdtempSync(join(tmpdir(), "kiln-bench-virtio-"));
const image = join(dir, "disk.img");
try {
  // 512 MiB of incompressible data, written once (and so in the page cache for both VMMs).
  const fd = openSync(image, "w");
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < 512; i++) {
    crypto.getRandomValues(chunk.subarray(0, 65536));
    for (let o = 65536; o < chunk.length; o += 65536) chunk.copyWithin(o, 0, 65536);
    writeSync(fd, chunk);
  }
  closeSync(fd);
  sh("ip", "netns", "add", NS);
  sh("ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
  sh("ip", "-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr");
  sh("ip", "-n", NS, "link", "set", TAP, "up");
  injector = PacketSocket.open(TAP, NS);

  const results: { m: Metric; k: number[]; q: number[] }[] = [];
  for (const m of METRICS) {
    const k: number[] = [];
    const q: number[] = [];
    // One warm-up each, then interleave.
    for (let i = 0; i <= runs; i++) {
      const kv = m.value(await runUntil(vmCmd("kiln", m.append, m.dev, image), m.re, m.inject));
      const qv = m.value(await runUntil(vmCmd("qemu", m.append, m.dev, image), m.re, m.inject));
      if (i > 0) {
        k.push(kv);
        q.push(qv);
      }
    }
    results.push({ m, k, q });
    console.log(`${m.name}: kiln ${median(k).toFixed(0)} ${m.unit}, QEMU ${median(q).toFixed(0)} ${m.unit}`);
  }

  const f = (x: number) => (x >= 1000 ? Math.round(x).toLocaleString("en-US") : x.toFixed(0));
  const lines = [
    `The test guest's own virtio drivers (polling their used rings) on microvm, 256 MiB, 1 vCPU; virtio-blk on a 512 MiB raw image in the page cache (kiln \`direct=off\`, QEMU \`cache=writeback\`), virtio-net on a tap in a private network namespace (QEMU \`vhost=off\`: both VMMs' device models in userspace). Median of ${runs} interleaved runs after one warm-up each; higher is better, ratio > 1 means kiln is faster.`,
    "",
    "| | kiln median (min–max) | QEMU + KVM median (min–max) | ratio kiln / QEMU |",
    "|---|---|---|---|",
    ...results.map(
      ({ m, k, q }) =>
        `| ${m.name} (${m.unit}) | ${f(median(k))} (${f(Math.min(...k))}–${f(Math.max(...k))}) | ${f(median(q))} (${f(Math.min(...q))}–${f(Math.max(...q))}) | **${(median(k) / median(q)).toFixed(2)}** |`,
    ),
    "",
    "Commands (guest command line per row: `vblk-bench=seqread|seqwrite|randread|randwrite`, `vnet-bench=tx:N|rx:N`):",
    "```",
    shellLine(vmCmd("kiln", "vblk-bench=seqread vblk-mb=2048", "blk", "disk.img")),
    shellLine(vmCmd("qemu", "vblk-bench=seqread vblk-mb=2048", "blk", "disk.img")),
    "```",
  ];
  console.log(lines.join("\n"));
  updateBenchmarks("virtio", `bun bench/virtio.ts ${runs}`, lines.join("\n"));
} finally {
  injector?.close();
  Bun.spawnSync(["ip", "netns", "del", NS]);
  rmSync(dir, { recursive: true, force: true });
}
