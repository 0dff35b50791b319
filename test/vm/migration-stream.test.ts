/**
 * A destination kiln fed hostile or broken migration streams: each fails the incoming migration with
 * a clear message (exit status 1), and nothing is ever written outside guest RAM (the guest never
 * runs; kiln checks every run before it reads pages into memory).
 */
import { test, expect, describe } from "bun:test";
import { join } from "node:path";
import { writeFileSync } from "node:fs";
import { kiln, scratchDir } from "../lib/kiln.ts";
import { connectUnix } from "../lib/unix-socket.ts";
import { guestArgs } from "../lib/guest-vm.ts";
import { encodeHeader, encodeState, jsonRecord, record, Rec, FLAG_RETURN_PATH, RECORD_HEADER_SIZE, decodeRecordHeader } from "../../src/migration/wire.ts";

const MEM = 256 * 1024 * 1024;
/** What kiln's CONFIG record says for `-machine microvm -m 256M -smp 1` (the protocol, docs/migration-protocol.md). */
const CONFIG = {
  machine: "microvm",
  memSize: MEM,
  regions: [{ gpa: 0, size: MEM }],
  cpus: 1,
  topology: { sockets: 1, cores: 1, threads: 1 },
  devices: ["serial@0x3f8", "i8042", "rtc@0x70", "acpi-pm@0x600", "reset-control@0xcf9", "pci-config@0xcf8"],
};

function ram(runs: { gpa: number; pages: number; kind: number }[], dataPages = runs.filter((r) => r.kind === 0).reduce((n, r) => n + r.pages, 0), lengthDelta = 0): Uint8Array {
  const table = new Uint8Array(8 + runs.length * 16);
  const dv = new DataView(table.buffer);
  dv.setUint32(0, runs.length, true);
  runs.forEach((r, i) => {
    dv.setBigUint64(8 + i * 16, BigInt(r.gpa), true);
    dv.setUint32(8 + i * 16 + 8, r.pages, true);
    dv.setUint32(8 + i * 16 + 12, r.kind, true);
  });
  const payload = new Uint8Array(table.byteLength + dataPages * 4096);
  payload.set(table);
  payload.fill(0xa5, table.byteLength);
  const rec = record(Rec.RAM, payload);
  new DataView(rec.buffer).setBigUint64(8, BigInt(payload.byteLength + lengthDelta), true);
  return rec;
}

const cat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
};

/** Start a destination, connect, send `stream`, collect what it answers; returns its exit status and stderr. */
async function feed(stream: Uint8Array, opts: { mem?: string } = {}): Promise<{ code: number; stderr: string; answers: { type: number; text: string }[] }> {
  const { dir, cleanup } = scratchDir();
  const sock = join(dir, "in.sock");
  try {
    const k = kiln([...(await guestArgs({ mem: opts.mem ?? "256M" })), "-incoming", `unix:${sock}`]);
    let got = new Uint8Array(0);
    const s = await connectUnix(sock, { data(_s, d) { got = cat(got, new Uint8Array(d)); }, error() {} });
    s.write(stream);
    const code = await k.exitCode();
    s.end();
    const answers: { type: number; text: string }[] = [];
    for (let o = 0; o + RECORD_HEADER_SIZE <= got.byteLength; ) {
      const h = decodeRecordHeader(got.subarray(o, o + RECORD_HEADER_SIZE));
      answers.push({ type: h.type, text: new TextDecoder().decode(got.subarray(o + RECORD_HEADER_SIZE, o + RECORD_HEADER_SIZE + h.length)) });
      o += RECORD_HEADER_SIZE + h.length;
    }
    return { code, stderr: k.stderr, answers };
  } finally {
    cleanup();
  }
}

const HEADER_BYTES = 16;
const head = () => cat(encodeHeader(FLAG_RETURN_PATH), jsonRecord(Rec.CONFIG, CONFIG));

describe("the destination refuses", () => {
  test("a stream that is not kiln's (bad magic)", async () => {
    const r = await feed(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("not a kiln migration stream");
  });

  test("another stream version", async () => {
    const h = encodeHeader(FLAG_RETURN_PATH);
    new DataView(h.buffer).setUint16(8, 99, true);
    const r = await feed(h);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("version 99");
  });

  test("a source with another memory size: ERROR on the return path, before anything is applied", async () => {
    const r = await feed(head(), { mem: "512M" });
    expect(r.code).toBe(1);
    expect(r.answers[0]?.type).toBe(Rec.ERROR);
    expect(r.answers[0]?.text).toContain("-m 256M");
    expect(r.answers[0]?.text).toContain("-m 512M");
    expect(r.stderr).toContain("-m 256M");
  });

  test("a truncated stream (-incoming file:)", async () => {
    const { dir, cleanup } = scratchDir();
    try {
      const full = cat(encodeHeader(0), jsonRecord(Rec.CONFIG, CONFIG), ram([{ gpa: 0x100000, pages: 4, kind: 0 }]));
      for (const cut of [10, HEADER_BYTES + 20, full.byteLength - 5000, full.byteLength]) {
        const path = join(dir, `cut-${cut}.kiln`);
        writeFileSync(path, full.subarray(0, cut));
        const k = kiln([...(await guestArgs({ mem: "256M" })), "-incoming", `file:${path}`]);
        expect(await k.exitCode()).toBe(1);
        expect(k.stderr).toMatch(/ended|too short|before its END/);
      }
    } finally {
      cleanup();
    }
  });

  const badRuns: [string, { gpa: number; pages: number; kind: number }[], RegExp][] = [
    ["pages beyond the end of RAM", [{ gpa: MEM - 4096, pages: 2, kind: 0 }], /outside guest RAM/],
    ["pages far outside RAM", [{ gpa: 0xfee00000, pages: 1, kind: 0 }], /outside guest RAM/],
    ["an address that wraps", [{ gpa: Number.MAX_SAFE_INTEGER - 4095, pages: 1, kind: 0 }], /outside guest RAM|aligned/],
    ["an unaligned address", [{ gpa: 0x100010, pages: 1, kind: 0 }], /not page aligned/],
    ["a zero-page run outside RAM", [{ gpa: MEM, pages: 1, kind: 1 }], /outside guest RAM/],
    ["an unknown run kind", [{ gpa: 0x100000, pages: 1, kind: 7 }], /unknown kind/],
    ["a zero-length run", [{ gpa: 0x100000, pages: 0, kind: 0 }], /bad page count/],
  ];
  for (const [what, runs, re] of badRuns) {
    test(`RAM with ${what}`, async () => {
      const r = await feed(cat(head(), ram(runs)));
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(re);
    });
  }

  test("a RAM record whose length does not match its pages", async () => {
    const r = await feed(cat(head(), ram([{ gpa: 0x100000, pages: 2, kind: 0 }], 2, -4096)));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("does not match");
  });

  test("an unknown record type, and records before the configuration", async () => {
    let r = await feed(cat(head(), record(77, new Uint8Array(8))));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("unknown record type 77");
    r = await feed(cat(encodeHeader(FLAG_RETURN_PATH), ram([{ gpa: 0x100000, pages: 1, kind: 0 }])));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("before the configuration");
  });

  test("an oversized state section", async () => {
    const h = record(Rec.STATE, new Uint8Array(0));
    new DataView(h.buffer).setBigUint64(8, BigInt(1) << 40n, true);
    const r = await feed(cat(head(), h));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("too large");
  });

  test("malformed vCPU state: a truncated binary form, and the old JSON form", async () => {
    // Every section the machine has is present, so the vCPU's own check is what refuses.
    const others = ["kvm/irqchip", "kvm/pit", "kvm/clock", ...CONFIG.devices].map((name) => encodeState({ name, version: 1, data: {} }));
    const end = jsonRecord(Rec.END, { runState: "running", pausedRealtimeNs: 0 });
    let r = await feed(cat(head(), encodeState({ name: "cpu/0", version: 2, data: new Uint8Array(6) }), ...others, end));
    expect(r.code).toBe(1);
    expect(r.answers.at(-1)?.type).toBe(Rec.ERROR);
    expect(r.stderr).toContain("cpu/0");
    expect(r.stderr).toContain("truncated at the header");
    r = await feed(cat(head(), encodeState({ name: "cpu/0", version: 1, data: { regs: new Uint8Array(144) } }), ...others, end));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("cpu/0");
    expect(r.stderr).toContain("version 1 is not supported (expected 2)");
  });

  test("an END without the machine's state", async () => {
    const r = await feed(cat(head(), jsonRecord(Rec.END, { runState: "running", pausedRealtimeNs: 0 })));
    expect(r.code).toBe(1);
    expect(r.answers.at(-1)?.type).toBe(Rec.ERROR);
    expect(r.stderr).toContain("missing from the migration stream");
  });
});
