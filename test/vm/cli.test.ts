/**
 * kiln as a command: bad flags and bad kernel files get one clear line and a meaningful status,
 * -initrd reaches the guest intact, the serial console goes where -serial says, and the compiled
 * binary works from anywhere.
 */
import { test, expect, describe } from "bun:test";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { kiln, scratchDir, REPO } from "../lib/kiln.ts";
import { connectUnix } from "../lib/unix-socket.ts";
import { bootGuest, guestArgs, stop } from "../lib/guest-vm.ts";
import { buildGuest } from "../lib/guest-build.ts";
import { fnv1a64, parseModule } from "../lib/guest-lines.ts";

describe("bad command lines", () => {
  const cases: [string[], RegExp][] = [
    [["-bogus"], /^kiln: -bogus: unknown option/],
    [["-m", "lots", "-kernel", "x"], /^kiln: -m: invalid memory size 'lots'/],
    [["-machine", "pc", "-kernel", "x"], /^kiln: -machine: .*pc/],
    [["-smp", "0", "-kernel", "x"], /^kiln: -smp:/],
    [["-kernel"], /^kiln: -kernel: missing value/],
    [["-m", "512"], /^kiln: -kernel:/],
  ];
  for (const [args, re] of cases) {
    test(`${args.join(" ")} -> status 2 naming the flag`, async () => {
      const k = kiln(args);
      expect(await k.exitCode()).toBe(2);
      expect(k.stderr.trim().split("\n").length).toBe(1);
      expect(k.stderr).toMatch(re);
    });
  }
});

describe("bad kernel files", () => {
  test("missing, empty, garbage and truncated kernels: status 1 and a message naming the file", async () => {
    const { dir, cleanup } = scratchDir();
    try {
      const elf = readFileSync(await buildGuest());
      const files: [string, Uint8Array | null, RegExp][] = [
        ["missing.elf", null, /-kernel .*missing\.elf: no such file/],
        ["empty.elf", new Uint8Array(0), /empty\.elf.*empty/i],
        ["garbage.bin", new Uint8Array(4096).map((_, i) => (i * 7919) & 0xff), /garbage\.bin/],
        ["truncated.elf", elf.subarray(0, 200), /truncated\.elf/],
      ];
      for (const [name, bytes, re] of files) {
        const path = join(dir, name);
        if (bytes) writeFileSync(path, bytes);
        const k = kiln(["-m", "256", "-kernel", path, "-serial", "stdio"]);
        expect(await k.exitCode()).toBe(1);
        expect(k.stderr).toMatch(re);
        expect(k.stderr).not.toMatch(/RangeError|TypeError|at .*\.ts:\d+/);
      }
    } finally {
      cleanup();
    }
  });
});

test("-initrd reaches the guest intact", async () => {
  const { dir, cleanup } = scratchDir();
  try {
    const data = new Uint8Array(3_000_001);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    const path = join(dir, "initrd.img");
    writeFileSync(path, data);
    const k = await bootGuest({ append: "initrd", extra: ["-initrd", path] });
    try {
      const m = parseModule((await k.waitFor(/^MODULE 0 /)).input!)!;
      expect(m.size).toBe(data.length);
      expect(m.fnv1a64).toBe(fnv1a64(data));
    } finally {
      await stop(k);
    }
  } finally {
    cleanup();
  }
});

test("-serial file,path= writes the console to a file", async () => {
  const { dir, cleanup } = scratchDir();
  try {
    const out = join(dir, "console.log");
    const args = (await guestArgs({ append: "runfor=30 then=poweroff" })).map((a) => (a === "stdio" ? `file,path=${out}` : a));
    const k = kiln(args);
    expect(await k.exitCode()).toBe(0);
    const text = readFileSync(out, "utf8");
    expect(text).toContain("READY cpus=1");
    expect(text).toContain("ACTION poweroff");
  } finally {
    cleanup();
  }
});

test("-serial unix:PATH,server,nowait: a client sees the console and can type into it", async () => {
  const { dir, cleanup } = scratchDir();
  try {
    const sock = join(dir, "console.sock");
    const args = (await guestArgs({ append: "echo" })).map((a) => (a === "stdio" ? `unix:${sock},server,nowait` : a));
    const k = kiln(args);
    try {
      let seen = "";
      let resolveEcho!: () => void;
      let resolveReady!: () => void;
      const echoed = new Promise<void>((r) => (resolveEcho = r));
      const ready = new Promise<void>((r) => (resolveReady = r));
      const c = await connectUnix(sock, {
        data(_s, d) {
          seen += d.toString();
          if (seen.includes("READY")) resolveReady();
          if (seen.includes("ECHO hello from the socket")) resolveEcho();
        },
      });
      // The guest's UART driver clears its FIFOs while it boots: type once it is up.
      await ready;
      c.write("hello from the socket\r\n");
      await echoed;
      c.end();
    } finally {
      await stop(k);
    }
  } finally {
    cleanup();
  }
});

test("stdin feeds the serial console (-serial stdio)", async () => {
  const k = await bootGuest({ append: "echo", stdinPipe: true });
  try {
    await k.waitFor(/^READY/);
    k.type("ping 123\n");
    await k.waitFor(/^ECHO ping 123$/);
  } finally {
    await stop(k);
  }
});

test("the compiled binary runs from another directory", async () => {
  const { dir, cleanup } = scratchDir();
  try {
    const build = Bun.spawnSync(["bun", "run", "build"], { cwd: REPO, stderr: "pipe" });
    expect(build.exitCode).toBe(0);
    copyFileSync(join(REPO, "dist/kiln"), join(dir, "kiln"));
    Bun.spawnSync(["chmod", "+x", join(dir, "kiln")]);
    copyFileSync(await buildGuest(), join(dir, "guest.elf"));
    const k = kiln(["-m", "256", "-smp", "2", "-kernel", "guest.elf", "-append", "runfor=30 then=poweroff", "-serial", "stdio"], {
      binary: join(dir, "kiln"),
      cwd: dir,
    });
    expect(await k.exitCode()).toBe(0);
    expect(k.lines).toContain("READY cpus=2");
    const v = Bun.spawnSync([join(dir, "kiln"), "--version"], { cwd: dir });
    expect(v.stdout.toString()).toMatch(/^kiln \d+\.\d+\.\d+/);
    // Its migration Workers are inside it too: save a running guest to a file and restore it.
    const args = ["-m", "256", "-smp", "2", "-kernel", "guest.elf", "-append", "dirty=16M hb=20", "-serial", "stdio"];
    const src = kiln([...args, "-qmp", "unix:src.qmp,server,nowait"], { binary: join(dir, "kiln"), cwd: dir });
    try {
      await src.waitFor(/^PASS cpu=1 n=2 /);
      const q = (...a: string[]) => Bun.spawnSync([join(dir, "kiln"), "qmp", join(dir, "src.qmp"), ...a], { cwd: dir });
      expect(q("migrate", '{"uri":"file:vm.snap"}').exitCode).toBe(0);
      for (let i = 0; i < 1000 && !q("query-migrate").stdout.toString().includes('"completed"'); i++) await Bun.sleep(10);
      expect(q("query-migrate").stdout.toString()).toContain('"completed"');
    } finally {
      src.kill();
      await src.exited;
    }
    const dst = kiln([...args, "-incoming", "file:vm.snap"], { binary: join(dir, "kiln"), cwd: dir });
    try {
      await dst.waitFor(/^PASS cpu=0 n=\d+ bad=0/);
      await dst.waitFor(/^PASS cpu=1 n=\d+ bad=0/);
      expect(dst.lines.some((l) => / bad=[1-9]/.test(l))).toBe(false);
    } finally {
      dst.kill();
      await dst.exited;
    }
  } finally {
    cleanup();
  }
}, 60_000);
