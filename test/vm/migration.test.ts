/**
 * Live migration between kiln processes, driven through QMP as a user would. The guest keeps
 * rewriting its memory and verifies every page on each pass, so "0 bad pages and passes still
 * advancing on the destination" means nothing was lost; whatever goes wrong, the source guest must
 * keep running.
 */
import { test, expect, describe } from "bun:test";
import { join } from "node:path";
import { existsSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { scratchDir } from "../lib/kiln.ts";
import { startVm, stopVm, migrate, guestKeepsVerifying, waitStatus, type Vm } from "../lib/migration.ts";
import { QmpError } from "../lib/qmp.ts";

const DIRTY = "dirty=64M hb=20";

/** A free TCP port on 127.0.0.1 (or ::1). */
async function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const { dir, cleanup } = scratchDir("kiln-mig-");
  try {
    return await fn(dir);
  } finally {
    cleanup();
  }
}

/** Source and destination with the same command line; the destination waits on `incoming`. */
async function pair(dir: string, incoming: string, o: { smp?: number; mem?: string; append?: string } = {}) {
  const opts = { smp: o.smp ?? 2, mem: o.mem ?? "512M", append: o.append ?? DIRTY };
  const src = await startVm(dir, { ...opts, name: "src" });
  const dst = await startVm(dir, { ...opts, name: "dst", incoming });
  await src.qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "events", state: true }] });
  await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 0 });
  return { src, dst };
}

async function expectRunning(vm: Vm, cpus: number): Promise<void> {
  await waitStatus(vm, "running");
  await guestKeepsVerifying(vm, cpus, vm.k.lines.length, 2);
}

describe.each(["unix", "tcp", "tcp6"] as const)("over %s", (transport) => {
  test("a guest rewriting its memory moves, loses nothing and keeps running; the source ends in postmigrate", async () => {
    await withDir(async (dir) => {
      const uri =
        transport === "unix"
          ? `unix:${join(dir, "mig.sock")}`
          : transport === "tcp"
            ? `tcp:127.0.0.1:${await freePort()}`
            : `tcp:[::1]:${await freePort("::1")}`;
      const { src, dst } = await pair(dir, uri);
      try {
        await src.k.waitFor(/^READY cpus=2/);
        await guestKeepsVerifying(src, 2, 0, 2);
        expect((await dst.qmp.execute<{ status: string }>("query-status")).status).toBe("inmigrate");
        const r = await migrate(src, uri);
        expect(r.status).toBe("completed");
        const ram = r.ram as Record<string, number>;
        expect(ram.transferred).toBeGreaterThan(64 * 1024 * 1024);
        expect(ram.total).toBe(512 * 1024 * 1024);
        expect(ram.remaining).toBe(0);
        expect(ram.normal).toBeGreaterThan(16384);
        expect(typeof r.downtime).toBe("number");
        expect(r["total-time"] as number).toBeGreaterThanOrEqual(r.downtime as number);
        // The source must not run the guest again; the destination runs it, verifying every page.
        expect((await src.qmp.execute<{ status: string }>("query-status")).status).toBe("postmigrate");
        await expectRunning(dst, 2);
        const statuses = src.qmp.events.filter((e) => e.event === "MIGRATION").map((e) => e.data!.status);
        expect(statuses).toEqual(["setup", "active", "completed"]);
        expect(src.qmp.events.some((e) => e.event === "MIGRATION_PASS")).toBe(true);
        expect(src.qmp.events.some((e) => e.event === "STOP")).toBe(true);
        await expect(src.qmp.execute("cont")).rejects.toThrow(QmpError);
      } finally {
        await stopVm(src);
        await stopVm(dst);
      }
    });
  }, 60_000);
});

test("ping-pong: 10 round trips between two kiln processes, the guest verifying throughout", async () => {
  await withDir(async (dir) => {
    const a2b = `unix:${join(dir, "a2b.sock")}`;
    const b2a = `unix:${join(dir, "b2a.sock")}`;
    const { src: a, dst: b } = await pair(dir, a2b, { append: "dirty=32M hb=50", mem: "256M" });
    await b.qmp.execute("migrate-set-parameters", { "max-bandwidth": 0 });
    try {
      await a.k.waitFor(/^READY/);
      let from = a;
      let to = b;
      for (let i = 0; i < 20; i++) {
        const uri = to === b ? a2b : b2a;
        if (i > 0) await to.qmp.execute("migrate-incoming", { uri }); // the process the guest left becomes a destination again
        const mark = to.k.lines.length;
        const r = await migrate(from, uri);
        expect(r.status).toBe("completed");
        await guestKeepsVerifying(to, 2, mark, 1);
        [from, to] = [to, from];
      }
      await expectRunning(from, 2);
    } finally {
      await stopVm(a);
      await stopVm(b);
    }
  });
}, 120_000);

describe("failure and cancel leave the guest running on the source", () => {
  test("migrate_cancel in setup and while active; a later migrate still works", async () => {
    await withDir(async (dir) => {
      const uri = `unix:${join(dir, "mig.sock")}`;
      const { src, dst } = await pair(dir, uri);
      try {
        await src.k.waitFor(/^READY/);
        // Active and slow (1 MiB/s): cancel mid-transfer.
        await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 1024 * 1024 });
        await src.qmp.execute("migrate", { uri });
        await src.qmp.waitMigration(["active"]);
        await src.qmp.execute("migrate_cancel");
        expect((await src.qmp.waitMigration(["cancelled", "failed"])).status).toBe("cancelled");
        await expectRunning(src, 2);
        // The destination saw its stream end early: it gives up.
        expect(await dst.k.exitCode()).toBe(1);
        // Cancel right after migrate (still in setup: nobody listens yet on this path).
        await src.qmp.execute("migrate", { uri: `unix:${join(dir, "nobody.sock")}` });
        await src.qmp.execute("migrate_cancel");
        expect(["cancelled", "failed"]).toContain((await src.qmp.waitMigration(["cancelled", "failed"])).status as string);
        await expectRunning(src, 2);
        // And a later migration to a fresh destination succeeds.
        const dst2 = await startVm(dir, { smp: 2, mem: "512M", append: DIRTY, name: "dst2", incoming: uri });
        try {
          await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 0 });
          expect((await migrate(src, uri)).status).toBe("completed");
          await expectRunning(dst2, 2);
        } finally {
          await stopVm(dst2);
        }
      } finally {
        await stopVm(src);
        await stopVm(dst);
      }
    });
  }, 60_000);

  test("the destination killed mid-stream: failed, source keeps running", async () => {
    await withDir(async (dir) => {
      const uri = `unix:${join(dir, "mig.sock")}`;
      const { src, dst } = await pair(dir, uri);
      try {
        await src.k.waitFor(/^READY/);
        await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 4 * 1024 * 1024 });
        await src.qmp.execute("migrate", { uri });
        await src.qmp.waitMigration(["active"]);
        dst.k.kill("SIGKILL");
        const r = await src.qmp.waitMigration(["failed", "completed", "cancelled"]);
        expect(r.status).toBe("failed");
        expect(String(r["error-desc"])).toMatch(/pipe|reset|closed|ended/i);
        await expectRunning(src, 2);
      } finally {
        await stopVm(src);
        await stopVm(dst);
      }
    });
  }, 60_000);

  test("the connection cut in the middle of the stream: failed, source keeps running, a retry works", async () => {
    await withDir(async (dir) => {
      const destUri = `unix:${join(dir, "mig.sock")}`;
      const { src, dst } = await pair(dir, destUri);
      // A relay between source and destination that drops both ends after 8 MiB have gone through.
      const relayPort = await freePort();
      let relayed = 0;
      let cut = false;
      // Bun's socket write is partial under back-pressure and does not keep the rest: queue it and
      // resend on drain, so the relay itself never loses a byte.
      const queued = new Map<object, Uint8Array[]>();
      const send = (sock: { write(b: Uint8Array): number }, b: Uint8Array) => {
        const q = queued.get(sock) ?? [];
        queued.set(sock, q);
        q.push(b);
        flush(sock);
      };
      const flush = (sock: { write(b: Uint8Array): number }) => {
        const q = queued.get(sock) ?? [];
        while (q.length > 0) {
          const n = sock.write(q[0]!);
          if (n < q[0]!.byteLength) {
            q[0] = q[0]!.subarray(Math.max(n, 0));
            return;
          }
          q.shift();
        }
      };
      type Peer = Awaited<ReturnType<typeof Bun.connect>>;
      // Bytes that arrive before the relay's own connection to the destination is up wait in `early`.
      const relay = Bun.listen<{ peer?: Peer; early: Uint8Array[] }>({
        hostname: "127.0.0.1",
        port: relayPort,
        socket: {
          async open(client) {
            client.data = { early: [] };
            const peer = await Bun.connect({
              unix: join(dir, "mig.sock"),
              socket: { data: (_p, d) => send(client, new Uint8Array(d)), drain: (p) => flush(p), close: () => void client.end(), error() {} },
            });
            for (const b of client.data.early.splice(0)) send(peer, b);
            client.data.peer = peer;
          },
          data(client, d) {
            relayed += d.byteLength;
            if (relayed > 8 << 20) {
              cut = true;
              client.data.peer?.end();
              client.end();
              return;
            }
            const b = new Uint8Array(d);
            if (client.data.peer) send(client.data.peer, b);
            else client.data.early.push(b);
          },
          drain(client) {
            flush(client);
          },
          close(client) {
            client.data.peer?.end();
          },
          error() {},
        },
      });
      try {
        await src.k.waitFor(/^READY/);
        await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 32 * 1024 * 1024 });
        const r = await migrate(src, `tcp:127.0.0.1:${relayPort}`);
        expect(cut).toBe(true);
        expect(r.status).toBe("failed");
        await expectRunning(src, 2);
        expect(await dst.k.exitCode()).toBe(1);
        // The guest goes on; migrating again (straight to a new destination) works.
        const dst2 = await startVm(dir, { smp: 2, mem: "512M", append: DIRTY, name: "dst2", incoming: `unix:${join(dir, "again.sock")}` });
        try {
          await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 0 });
          expect((await migrate(src, `unix:${join(dir, "again.sock")}`)).status).toBe("completed");
          await expectRunning(dst2, 2);
        } finally {
          await stopVm(dst2);
        }
      } finally {
        relay.stop(true);
        await stopVm(src);
        await stopVm(dst);
      }
    });
  }, 60_000);

  test("nobody listening: failed with QEMU's message", async () => {
    await withDir(async (dir) => {
      const src = await startVm(dir, { append: "hb=20" });
      try {
        const path = join(dir, "nonexistent.sock");
        const r = await migrate(src, `unix:${path}`);
        expect(r.status).toBe("failed");
        expect(r["error-desc"]).toBe(`Failed to connect to '${path}': No such file or directory`);
        expect((await src.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
        await expect(src.qmp.execute("migrate", { uri: "bogus:xyz" })).rejects.toThrow("Parameter 'uri' expects a valid migration protocol");
      } finally {
        await stopVm(src);
      }
    });
  });

  test("a destination with another -m refuses before anything is applied; the source is unaffected", async () => {
    await withDir(async (dir) => {
      const uri = `unix:${join(dir, "mig.sock")}`;
      const src = await startVm(dir, { smp: 2, mem: "512M", append: DIRTY, name: "src" });
      const dst = await startVm(dir, { smp: 2, mem: "1G", append: DIRTY, name: "dst", incoming: uri });
      try {
        await src.k.waitFor(/^READY/);
        const r = await migrate(src, uri);
        expect(r.status).toBe("failed");
        expect(String(r["error-desc"])).toContain("the source has -m 512M but this destination has -m 1G");
        await expectRunning(src, 2);
        expect(await dst.k.exitCode()).toBe(1);
      } finally {
        await stopVm(src);
        await stopVm(dst);
      }
    });
  }, 60_000);
});

describe("snapshots and pipes", () => {
  test("file: save a running VM, restore it in a new process; it runs and its memory is intact", async () => {
    await withDir(async (dir) => {
      const path = join(dir, "vm.snap");
      const src = await startVm(dir, { smp: 2, mem: "512M", append: DIRTY, name: "src" });
      try {
        await src.k.waitFor(/^READY/);
        await guestKeepsVerifying(src, 2, 0, 2);
        await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 0 });
        expect((await migrate(src, `file:${path}`)).status).toBe("completed");
        expect(statSync(path).size).toBeGreaterThan(64 * 1024 * 1024);
      } finally {
        await stopVm(src);
      }
      const dst = await startVm(dir, { smp: 2, mem: "512M", append: DIRTY, name: "dst", incoming: `file:${path}` });
      try {
        await expectRunning(dst, 2);
      } finally {
        await stopVm(dst);
      }
    });
  }, 60_000);

  test("file: a stopped VM is saved and restored stopped; cont resumes it intact", async () => {
    await withDir(async (dir) => {
      const path = join(dir, "paused.snap");
      const src = await startVm(dir, { smp: 2, mem: "256M", append: "dirty=32M hb=20", name: "src" });
      try {
        await guestKeepsVerifying(src, 2, 0, 2);
        await src.qmp.execute("stop");
        expect((await migrate(src, `file:${path}`)).status).toBe("completed");
      } finally {
        await stopVm(src);
      }
      const dst = await startVm(dir, { smp: 2, mem: "256M", append: "dirty=32M hb=20", name: "dst", incoming: `file:${path}` });
      try {
        await waitStatus(dst, "paused");
        const mark = dst.k.lines.length;
        await dst.qmp.execute("cont");
        await guestKeepsVerifying(dst, 2, mark, 2);
      } finally {
        await stopVm(dst);
      }
    });
  }, 60_000);

  test("exec: through gzip and back", async () => {
    await withDir(async (dir) => {
      const gz = join(dir, "vm.gz");
      const src = await startVm(dir, { smp: 1, mem: "256M", append: "dirty=32M hb=20", name: "src" });
      try {
        await guestKeepsVerifying(src, 1, 0, 2);
        await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 0 });
        expect((await migrate(src, `exec:gzip -c > ${gz}`)).status).toBe("completed");
        expect(existsSync(gz)).toBe(true);
      } finally {
        await stopVm(src);
      }
      const dst = await startVm(dir, { smp: 1, mem: "256M", append: "dirty=32M hb=20", name: "dst", incoming: `exec:gzip -dc ${gz}` });
      try {
        await expectRunning(dst, 1);
      } finally {
        await stopVm(dst);
      }
    });
  }, 60_000);

  test("a paused VM migrates and stays paused on the destination", async () => {
    await withDir(async (dir) => {
      const uri = `unix:${join(dir, "mig.sock")}`;
      const { src, dst } = await pair(dir, uri, { append: "dirty=32M hb=20", mem: "256M" });
      try {
        await guestKeepsVerifying(src, 2, 0, 1);
        await src.qmp.execute("stop");
        expect((await migrate(src, uri)).status).toBe("completed");
        await waitStatus(dst, "paused");
        const mark = dst.k.lines.length;
        await dst.qmp.execute("cont");
        await guestKeepsVerifying(dst, 2, mark, 2);
      } finally {
        await stopVm(src);
        await stopVm(dst);
      }
    });
  }, 60_000);
});

describe("QMP", () => {
  test("parameters and capabilities, with QEMU's defaults, names and errors", async () => {
    await withDir(async (dir) => {
      const vm = await startVm(dir, { append: "hb=50" });
      try {
        const p = await vm.qmp.execute<Record<string, number>>("query-migrate-parameters");
        expect(p["max-bandwidth"]).toBe(134217728);
        expect(p["downtime-limit"]).toBe(300);
        await vm.qmp.execute("migrate-set-parameters", { "downtime-limit": 50 });
        await vm.qmp.execute("migrate_set_speed", { value: 1000000 });
        const q = await vm.qmp.execute<Record<string, number>>("query-migrate-parameters");
        expect(q["downtime-limit"]).toBe(50);
        expect(q["max-bandwidth"]).toBe(1000000);
        await vm.qmp.execute("migrate_set_downtime", { value: 0.5 });
        expect((await vm.qmp.execute<Record<string, number>>("query-migrate-parameters"))["downtime-limit"]).toBe(500);
        await expect(vm.qmp.execute("migrate-set-parameters", { "downtime-limit": 99999999 })).rejects.toThrow(
          "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
        );
        await expect(vm.qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "bogus", state: true }] })).rejects.toThrow(
          "Parameter 'capability' does not accept value 'bogus'",
        );
        expect(await vm.qmp.execute("query-migrate")).toEqual({});
        await expect(vm.qmp.execute("migrate")).rejects.toThrow("Parameter 'uri' is missing");
        await expect(vm.qmp.execute("migrate-incoming", { uri: "unix:/tmp/x.sock" })).rejects.toThrow("'-incoming' was not specified on the command line");
        await vm.qmp.execute("migrate_cancel"); // nothing to cancel: fine, as in QEMU
      } finally {
        await stopVm(vm);
      }
    });
  });

  test("-incoming defer waits for migrate-incoming", async () => {
    await withDir(async (dir) => {
      const uri = `unix:${join(dir, "late.sock")}`;
      const src = await startVm(dir, { smp: 1, mem: "256M", append: "dirty=16M hb=20", name: "src" });
      const dst = await startVm(dir, { smp: 1, mem: "256M", append: "dirty=16M hb=20", name: "dst", incoming: "defer" });
      try {
        expect((await dst.qmp.execute<{ status: string }>("query-status")).status).toBe("inmigrate");
        await dst.qmp.execute("migrate-incoming", { uri });
        await src.qmp.execute("migrate-set-parameters", { "max-bandwidth": 0 });
        expect((await migrate(src, uri)).status).toBe("completed");
        await expectRunning(dst, 1);
      } finally {
        await stopVm(src);
        await stopVm(dst);
      }
    });
  }, 60_000);
});

describe("same-host migration without copying RAM (x-ignore-shared)", () => {
  test("the destination takes over guest memory through its memfd; ping-pong keeps it intact", async () => {
    await withDir(async (dir) => {
      const a2b = `unix:${join(dir, "a2b.sock")}`;
      const b2a = `unix:${join(dir, "b2a.sock")}`;
      const { src: a, dst: b } = await pair(dir, a2b, { mem: "512M" });
      try {
        for (const vm of [a, b]) await vm.qmp.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
        await expect(a.qmp.execute("migrate", { uri: "tcp:127.0.0.1:1" })).rejects.toThrow("needs a unix: URI");
        await guestKeepsVerifying(a, 2, 0, 2);
        let from = a;
        let to = b;
        for (let i = 0; i < 6; i++) {
          const uri = to === b ? a2b : b2a;
          if (i > 0) await to.qmp.execute("migrate-incoming", { uri });
          const mark = to.k.lines.length;
          const r = await migrate(from, uri);
          expect(r.status).toBe("completed");
          // No guest page crossed the socket: only the configuration and the state did.
          expect((r.ram as Record<string, number>).transferred).toBeLessThan(1 << 20);
          await guestKeepsVerifying(to, 2, mark, 2);
          [from, to] = [to, from];
        }
      } finally {
        await stopVm(a);
        await stopVm(b);
      }
    });
  }, 120_000);
});
