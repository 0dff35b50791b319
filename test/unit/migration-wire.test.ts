/** The migration stream's encoding and the checks a destination applies to it (no KVM needed). */
import { test, expect, describe } from "bun:test";
import { decodeVcpuState, encodeVcpuState } from "../../src/vmm/vcpu-state.ts";
import type { VcpuState } from "../../src/vmm/vcpu-protocol.ts";
import {
  decodeHeader,
  decodeRecordHeader,
  decodeRuns,
  decodeState,
  encodeHeader,
  encodeState,
  jsonRecord,
  record,
  Rec,
  RECORD_HEADER_SIZE,
  RUN_DATA,
  RUN_ZERO,
  FLAG_RETURN_PATH,
  LIMITS,
  WireError,
} from "../../src/migration/wire.ts";
import { parseMigrationUri, UriError, BAD_PROTOCOL } from "../../src/migration/uri.ts";
import { applyParameters, checkCapability, DEFAULT_PARAMETERS, ParameterError } from "../../src/migration/params.ts";
import { configMismatch, type GuestConfig } from "../../src/vmm/machine-state.ts";

describe("header", () => {
  test("round trip, and refusals naming what was found", () => {
    expect(decodeHeader(encodeHeader(FLAG_RETURN_PATH)).flags).toBe(FLAG_RETURN_PATH);
    expect(() => decodeHeader(new Uint8Array(4))).toThrow("too short");
    const bad = encodeHeader(0);
    bad[0] = 0x58;
    expect(() => decodeHeader(bad)).toThrow("bad magic");
    const v = encodeHeader(0);
    new DataView(v.buffer).setUint16(8, 7, true);
    expect(() => decodeHeader(v)).toThrow("version 7 is not supported");
    const a = encodeHeader(0);
    new DataView(a.buffer).setUint16(10, 3, true);
    expect(() => decodeHeader(a)).toThrow("architecture 3");
  });
});

describe("records", () => {
  test("header round trip; reserved must be zero; absurd lengths refused", () => {
    const r = record(Rec.PASS, new Uint8Array([1, 0, 0, 0]));
    expect(decodeRecordHeader(r.subarray(0, RECORD_HEADER_SIZE))).toEqual({ type: Rec.PASS, length: 4 });
    const res = record(Rec.PASS, new Uint8Array(4));
    res[4] = 1;
    expect(() => decodeRecordHeader(res)).toThrow("reserved");
    const huge = record(Rec.STATE);
    new DataView(huge.buffer).setBigUint64(8, 1n << 60n, true);
    expect(() => decodeRecordHeader(huge)).toThrow("absurd");
  });

  test("JSON records", () => {
    const r = jsonRecord(Rec.END, { runState: "running" });
    const h = decodeRecordHeader(r);
    expect(JSON.parse(new TextDecoder().decode(r.subarray(RECORD_HEADER_SIZE, RECORD_HEADER_SIZE + h.length)))).toEqual({ runState: "running" });
  });
});

describe("state sections", () => {
  test("round trip with binary blobs and bigints", () => {
    const blob = new Uint8Array([0, 1, 2, 255]);
    const r = encodeState({ name: "cpu/0", version: 1, data: { regs: blob, tsc: 123n, list: [1, "x"] } });
    const h = decodeRecordHeader(r);
    expect(h.type).toBe(Rec.STATE);
    const s = decodeState(r.subarray(RECORD_HEADER_SIZE));
    expect(s.name).toBe("cpu/0");
    expect(s.version).toBe(1);
    const d = s.data as { regs: Uint8Array; tsc: string; list: unknown[] };
    expect([...d.regs]).toEqual([...blob]);
    expect(d.tsc).toBe("123");
    expect(d.list).toEqual([1, "x"]);
  });

  test("a Uint8Array is passed through as the component's own binary form", () => {
    const bytes = new Uint8Array([9, 8, 7]);
    const r = encodeState({ name: "cpu/1", version: 2, data: bytes });
    const s = decodeState(r.subarray(RECORD_HEADER_SIZE));
    expect(s).toEqual({ name: "cpu/1", version: 2, data: new Uint8Array([9, 8, 7]) });
    // A copy: the record's buffer may be reused.
    expect((s.data as Uint8Array).buffer).not.toBe(r.buffer);
  });

  test("a vCPU's binary form round-trips and refuses truncation and stray bytes", () => {
    const blob = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);
    const st: VcpuState = {
      id: 3,
      regs: blob(144, 1),
      sregs: blob(312, 2),
      xsave: blob(4096, 3),
      xcrs: blob(392, 4),
      lapic: blob(1024, 5),
      events: blob(64, 6),
      debugRegs: blob(128, 7),
      mpState: 4,
      msrs: [
        [0x10, "18446744073709551615"],
        [0xc0000080, "3329"],
        [0x6e0, "0"],
      ],
    };
    const b = encodeVcpuState(st);
    expect(decodeVcpuState(b)).toEqual(st);
    expect(() => decodeVcpuState(b.subarray(0, 6))).toThrow("truncated at the header");
    expect(() => decodeVcpuState(b.subarray(0, 200))).toThrow("truncated at sregs");
    expect(() => decodeVcpuState(b.subarray(0, b.byteLength - 1))).toThrow("3 MSRs do not fill the rest");
    const longer = new Uint8Array(b.byteLength + 16);
    longer.set(b);
    expect(() => decodeVcpuState(longer)).toThrow("3 MSRs do not fill the rest");
    // A blob length pointing past the end.
    const bad = b.slice();
    new DataView(bad.buffer).setUint32(8, 0xffffffff, true);
    expect(() => decodeVcpuState(bad)).toThrow("truncated at regs");
  });

  test("malformed sections are WireErrors", () => {
    expect(() => decodeState(new Uint8Array(3))).toThrow(WireError);
    const overrun = new Uint8Array(12);
    new DataView(overrun.buffer).setUint16(0, 500, true);
    expect(() => decodeState(overrun)).toThrow("overruns");
    const r = encodeState({ name: "x", version: 1, data: {} });
    const p = r.slice(RECORD_HEADER_SIZE);
    new DataView(p.buffer).setUint32(2 + 1 + 4, 9, true);
    expect(() => decodeState(p)).toThrow("unknown encoding 9");
    const q = r.slice(RECORD_HEADER_SIZE);
    q[q.length - 1] = 0x7b;
    expect(() => decodeState(q)).toThrow("bad JSON");
  });
});

describe("RAM run tables", () => {
  const ram = (gpa: number, len: number) => gpa >= 0 && gpa + len <= 64 << 20;
  const table = (runs: [number | bigint, number, number][]) => {
    const b = new Uint8Array(runs.length * 16);
    const dv = new DataView(b.buffer);
    runs.forEach(([g, p, k], i) => {
      dv.setBigUint64(i * 16, BigInt(g), true);
      dv.setUint32(i * 16 + 8, p, true);
      dv.setUint32(i * 16 + 12, k, true);
    });
    return b;
  };

  test("valid runs count their data pages", () => {
    const r = decodeRuns(table([[0x1000, 2, RUN_DATA], [0x10000, 8, RUN_ZERO], [0x20000, 1, RUN_DATA]]), 3, ram);
    expect(r.dataPages).toBe(3);
    expect(r.runs.map((x) => x.kind)).toEqual([RUN_DATA, RUN_ZERO, RUN_DATA]);
  });

  const bad: [string, [number | bigint, number, number][], string][] = [
    ["unaligned", [[0x1001, 1, RUN_DATA]], "not page aligned"],
    ["beyond RAM", [[(64 << 20) - 4096, 2, RUN_DATA]], "outside guest RAM"],
    ["a 64-bit address", [[1n << 62n, 1, RUN_DATA]], "outside guest RAM"],
    ["zero pages", [[0x1000, 0, RUN_DATA]], "bad page count"],
    ["too many pages", [[0x1000, LIMITS.pagesPerRecord + 1, RUN_DATA]], "bad page count"],
    ["unknown kind", [[0x1000, 1, 5]], "unknown kind 5"],
  ];
  for (const [what, runs, msg] of bad) {
    test(`refused: ${what}`, () => {
      expect(() => decodeRuns(table(runs), runs.length, ram)).toThrow(msg);
    });
  }

  test("refused: more data pages in total than a record may carry", () => {
    const half = LIMITS.pagesPerRecord / 2 + 1;
    expect(() => decodeRuns(table([[0, half, RUN_DATA], [half * 4096, half, RUN_DATA]]), 2, () => true)).toThrow("limit");
  });
});

describe("URIs", () => {
  test("QEMU's forms", () => {
    expect(parseMigrationUri("tcp:127.0.0.1:4446")).toEqual({ transport: "tcp", host: "127.0.0.1", port: 4446 });
    expect(parseMigrationUri("tcp:[::1]:4446")).toEqual({ transport: "tcp", host: "::1", port: 4446 });
    expect(parseMigrationUri("tcp:dest.example:1")).toEqual({ transport: "tcp", host: "dest.example", port: 1 });
    expect(parseMigrationUri("unix:/tmp/x.sock")).toEqual({ transport: "unix", path: "/tmp/x.sock" });
    expect(parseMigrationUri("file:/tmp/vm.snap")).toEqual({ transport: "file", path: "/tmp/vm.snap" });
    expect(parseMigrationUri("exec:gzip -c > vm.gz")).toEqual({ transport: "exec", command: "gzip -c > vm.gz" });
  });
  test("bad ones", () => {
    expect(() => parseMigrationUri("bogus:xyz")).toThrow(BAD_PROTOCOL);
    expect(() => parseMigrationUri("nocolon")).toThrow(BAD_PROTOCOL);
    expect(() => parseMigrationUri("tcp:host")).toThrow(UriError);
    expect(() => parseMigrationUri("tcp:host:99999")).toThrow("invalid tcp port");
    expect(() => parseMigrationUri("unix:")).toThrow("needs a socket path");
    expect(() => parseMigrationUri("unix:/" + "x".repeat(200))).toThrow("too long");
    expect(() => parseMigrationUri("exec:   ")).toThrow("needs a command");
  });
});

describe("parameters", () => {
  test("QEMU's defaults and range messages", () => {
    expect(DEFAULT_PARAMETERS).toEqual({ "max-bandwidth": 134217728, "downtime-limit": 300 });
    expect(applyParameters(DEFAULT_PARAMETERS, { "downtime-limit": 50 })["downtime-limit"]).toBe(50);
    expect(() => applyParameters(DEFAULT_PARAMETERS, { "downtime-limit": 99999999 })).toThrow(
      "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
    );
    expect(() => applyParameters(DEFAULT_PARAMETERS, { "max-bandwidth": -1 })).toThrow(ParameterError);
    expect(() => applyParameters(DEFAULT_PARAMETERS, { "compress-level": 1 })).toThrow("Parameter 'compress-level' is unexpected");
    expect(checkCapability("events")).toBe("events");
    expect(() => checkCapability("bogus")).toThrow("Parameter 'capability' does not accept value 'bogus'");
  });
});

describe("configuration check", () => {
  const ours: GuestConfig = {
    machine: "microvm",
    memSize: 512 << 20,
    regions: [{ gpa: 0, size: 512 << 20 }],
    cpus: 2,
    topology: { sockets: 1, cores: 2, threads: 1 },
    devices: ["serial@0x3f8"],
  };
  test("a match, and each mismatch in the user's terms", () => {
    expect(configMismatch(ours, JSON.parse(JSON.stringify(ours)))).toBeNull();
    expect(configMismatch(ours, { ...ours, memSize: 1 << 30 })).toBe("the source has -m 1G but this destination has -m 512M");
    expect(configMismatch(ours, { ...ours, cpus: 4 })).toBe("the source has -smp 4 but this destination has -smp 2");
    expect(configMismatch(ours, { ...ours, machine: "q35" })).toBe("the source is -machine q35 but this destination is -machine microvm");
    expect(configMismatch(ours, { ...ours, devices: [] })).toContain("the devices differ");
    expect(configMismatch(ours, null)).toBe("the source sent no configuration");
  });
});
