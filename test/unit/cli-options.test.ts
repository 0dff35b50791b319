/** Helpers behind the VM flag parser: option strings, sizes, PCI addresses, MACs, socket addresses. */
import { describe, expect, test } from "bun:test";
import {
  GiB,
  KiB,
  MiB,
  Options,
  TiB,
  UsageError,
  formatSize,
  normalizeMac,
  parseBool,
  parseHostPort,
  parsePciSlotFunction,
  parseSize,
  parseSocketUri,
  parseUint,
  splitOptionList,
} from "../../src/cli/options.ts";

function usageError(fn: () => unknown): UsageError {
  try {
    fn();
  } catch (e) {
    if (e instanceof UsageError) return e;
    throw e;
  }
  throw new Error("expected a UsageError");
}

describe("splitOptionList", () => {
  test("commas separate, ',,' is a literal comma", () => {
    expect(splitOptionList("a,b=1,c")).toEqual(["a", "b=1", "c"]);
    expect(splitOptionList("file=/tmp/a,,b.img,id=d0")).toEqual(["file=/tmp/a,b.img", "id=d0"]);
    expect(splitOptionList("x")).toEqual(["x"]);
    expect(splitOptionList("a,")).toEqual(["a", ""]);
  });
});

describe("Options", () => {
  const spec = { implied: "type", keys: ["id", "n", "flag"], words: ["server"] };

  test("implied first value, key=value, words", () => {
    const o = Options.parse("-x", "tap,id=a,n=0x10,server", spec);
    expect(o.str("type")).toBe("tap");
    expect(o.str("id")).toBe("a");
    expect(o.int("n", 0, 100)).toBe(16);
    expect(o.bool("server", false)).toBe(true);
    expect(o.str("flag")).toBeNull();
    expect(Options.parse("-x", "type=tap", spec).str("type")).toBe("tap");
  });

  test("errors name the flag and the key", () => {
    expect(usageError(() => Options.parse("-x", "tap,bogus=1", spec)).message).toBe(
      "-x: unknown option 'bogus' (valid: type, id, n, flag, server)",
    );
    expect(usageError(() => Options.parse("-x", "tap,id=a,id=b", spec)).message).toBe("-x: 'id' given twice");
    expect(usageError(() => Options.parse("-x", "tap,type=tap", spec)).message).toBe("-x: 'type' given twice");
    expect(usageError(() => Options.parse("-x", "tap,id=", spec)).message).toBe("-x: 'id' has an empty value");
    expect(usageError(() => Options.parse("-x", "tap,id", spec)).message).toBe("-x: 'id' needs a value (id=...)");
    expect(usageError(() => Options.parse("-x", "tap,id=a,", spec)).message).toBe("-x: empty option in 'tap,id=a,'");
    expect(usageError(() => Options.parse("-x", "tap,n=12", spec).int("n", 0, 10)).message).toBe(
      "-x: 'n' must be an integer in 0..10, got '12'",
    );
    expect(usageError(() => Options.parse("-x", "tap,flag=maybe", spec).bool("flag", false)).message).toBe(
      "-x: 'flag' must be on or off, got 'maybe'",
    );
    expect(usageError(() => Options.parse("-x", "tap", spec).need("id", "id=ID")).message).toBe("-x: missing 'id' (id=ID)");
    const e = usageError(() => Options.parse("-x", "tap,bogus=1", spec));
    expect(e.flag).toBe("-x");
    expect(e.name).toBe("UsageError");
    expect(e).toBeInstanceOf(Error);
  });

  test("firstIsImplied keeps '=' in a leading URI", () => {
    const o = Options.parse("-qmp", "unix:/tmp/a=b,server", { implied: "uri", keys: [], words: ["server"], firstIsImplied: true });
    expect(o.str("uri")).toBe("unix:/tmp/a=b");
  });
});

describe("scalars", () => {
  test("parseBool", () => {
    for (const t of ["on", "true", "yes"]) expect(parseBool(t)).toBe(true);
    for (const f of ["off", "false", "no"]) expect(parseBool(f)).toBe(false);
    for (const x of ["ON", "1", "", "of"]) expect(parseBool(x)).toBeNull();
  });

  test("parseUint: decimal or 0x hex", () => {
    expect(parseUint("0")).toBe(0);
    expect(parseUint("10")).toBe(10);
    expect(parseUint("0x1f")).toBe(31);
    expect(parseUint("0X1F")).toBe(31);
    for (const bad of ["", "-1", "1.5", "0x", "1e3", " 1", "abc", "99999999999999999999"]) expect(parseUint(bad)).toBeNull();
  });
});

describe("parseSize", () => {
  test("suffixes and the default unit", () => {
    expect(parseSize("512", MiB)).toBe(512 * MiB);
    expect(parseSize("512", 1)).toBe(512);
    expect(parseSize("512M", MiB)).toBe(512 * MiB);
    expect(parseSize("512m", MiB)).toBe(512 * MiB);
    expect(parseSize("2G", MiB)).toBe(2 * GiB);
    expect(parseSize("2g", MiB)).toBe(2 * GiB);
    expect(parseSize("1T", MiB)).toBe(TiB);
    expect(parseSize("4096K", MiB)).toBe(4 * MiB);
    expect(parseSize("4k", MiB)).toBe(4 * KiB);
    expect(parseSize("0", MiB)).toBe(0);
  });

  test("malformed or too large", () => {
    for (const bad of ["", "M", "G6", "6Gg", "6GM", "1.5G", "-1", "0x10", "12MB", "1 G", "abc"]) {
      expect(parseSize(bad, MiB)).toBeNull();
    }
    expect(parseSize("9999999999T", MiB)).toBeNull(); // beyond 2^53 bytes
  });

  test("formatSize", () => {
    expect(formatSize(8 * MiB)).toBe("8 MiB");
    expect(formatSize(1536 * MiB)).toBe("1536 MiB");
    expect(formatSize(2 * GiB)).toBe("2 GiB");
    expect(formatSize(TiB)).toBe("1 TiB");
    expect(formatSize(5 * KiB)).toBe("5 KiB");
    expect(formatSize(1000)).toBe("1000 bytes");
  });
});

describe("PCI addresses", () => {
  test("slot[.function], StratoVirt style (decimal unless 0x)", () => {
    expect(parsePciSlotFunction("0")).toEqual({ slot: 0, function: 0 });
    expect(parsePciSlotFunction("0x3")).toEqual({ slot: 3, function: 0 });
    expect(parsePciSlotFunction("0x3.0x1")).toEqual({ slot: 3, function: 1 });
    expect(parsePciSlotFunction("10")).toEqual({ slot: 10, function: 0 });
    expect(parsePciSlotFunction("0x10.0x4")).toEqual({ slot: 16, function: 4 });
    expect(parsePciSlotFunction("8.2")).toEqual({ slot: 8, function: 2 });
    expect(parsePciSlotFunction("31.7")).toEqual({ slot: 31, function: 7 });
  });

  test("out of range or malformed", () => {
    for (const bad of ["32", "0x20", "1.8", ".0x5", "0x1.0x2.0x3", "abcd.dcba", "", "1.", "0a"]) {
      expect(parsePciSlotFunction(bad)).toBeNull();
    }
  });
});

describe("MAC addresses", () => {
  test("unicast, normalised to lower case", () => {
    expect(normalizeMac("52:54:00:12:34:56")).toBe("52:54:00:12:34:56");
    expect(normalizeMac("12:34:56:78:9A:BC")).toBe("12:34:56:78:9a:bc");
  });
  test("rejects malformed, multicast and zero", () => {
    for (const bad of ["52:54:00:12:34", "52-54-00-12-34-56", "5254.0012.3456", "52:54:00:12:34:5g", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "52:54:00:12:34:567"]) {
      expect(normalizeMac(bad)).toBeNull();
    }
  });
});

describe("socket addresses", () => {
  test("HOST:PORT forms", () => {
    expect(parseHostPort("-x", "192.168.0.1:4446")).toEqual({ host: "192.168.0.1", port: 4446 });
    expect(parseHostPort("-x", "[::1]:4446")).toEqual({ host: "::1", port: 4446 });
    expect(parseHostPort("-x", "[fe80::1%]:1".replace("%", ""))).toEqual({ host: "fe80::1", port: 1 });
    expect(parseHostPort("-x", ":4444")).toEqual({ host: "0.0.0.0", port: 4444 });
    expect(parseHostPort("-x", "localhost:65535")).toEqual({ host: "localhost", port: 65535 });
  });

  test("bad HOST:PORT", () => {
    expect(usageError(() => parseHostPort("-x", "1.2.3.4")).message).toBe("-x: invalid address '1.2.3.4' (expected HOST:PORT)");
    expect(usageError(() => parseHostPort("-x", "1.2.3.4:0")).message).toBe("-x: invalid port '0' (expected 1..65535)");
    expect(usageError(() => parseHostPort("-x", "1.2.3.4:65536")).message).toBe("-x: invalid port '65536' (expected 1..65535)");
    expect(usageError(() => parseHostPort("-x", "1.2.3.4:http")).message).toBe("-x: invalid port 'http' (expected 1..65535)");
    expect(usageError(() => parseHostPort("-x", "::1:4444")).message).toBe(
      "-x: invalid address '::1:4444' (write IPv6 hosts in brackets: [::1]:PORT)",
    );
    expect(usageError(() => parseHostPort("-x", "[::1]4444")).message).toBe("-x: invalid address '[::1]4444' (expected [IPv6]:PORT)");
    expect(usageError(() => parseHostPort("-x", "[zz]:1")).message).toBe("-x: invalid IPv6 address 'zz'");
    expect(usageError(() => parseHostPort("-x", "a b:1")).message).toBe("-x: invalid host 'a b'");
  });

  test("unix and tcp URIs", () => {
    expect(parseSocketUri("-x", "unix:/run/kiln.sock")).toEqual({ transport: "unix", path: "/run/kiln.sock" });
    expect(parseSocketUri("-x", "tcp:127.0.0.1:4444")).toEqual({ transport: "tcp", host: "127.0.0.1", port: 4444 });
    expect(parseSocketUri("-x", "udp:1.2.3.4:5")).toBeNull();
    expect(usageError(() => parseSocketUri("-x", "unix:")).message).toBe("-x: empty unix socket path");
    const long = "/tmp/" + "a".repeat(103);
    expect(usageError(() => parseSocketUri("-x", `unix:${long}`)).message).toBe(
      `-x: unix socket path is 108 bytes, longer than the 107 Linux allows: '${long}'`,
    );
    expect(parseSocketUri("-x", `unix:${long.slice(1)}`)).toEqual({ transport: "unix", path: long.slice(1) });
  });
});
