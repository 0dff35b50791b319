/** QMP's JSON reader (QEMU's lexer/streamer/parser behaviour and messages) and writer. */
import { describe, expect, test } from "bun:test";
import { JsonStreamer, encodeJson, parseJson, quoteString, toPlain, type StreamMessage } from "../../src/qmp/json.ts";

/** Feed chunks; collect messages as plain values or "ERR:<text>" / "FATAL:<text>". */
function run(chunks: (string | number[])[], opts: { flush?: boolean; maxMessageBytes?: number } = {}): unknown[] {
  const out: unknown[] = [];
  const s = new JsonStreamer(
    (m: StreamMessage) => out.push(m.ok ? toPlain(m.value) : `${m.fatal ? "FATAL" : "ERR"}:${m.error}`),
    { maxMessageBytes: opts.maxMessageBytes },
  );
  for (const c of chunks) s.feed(typeof c === "string" ? new TextEncoder().encode(c) : new Uint8Array(c));
  if (opts.flush) s.flush();
  return out;
}

describe("message splitting", () => {
  test("one object per message, whitespace between them ignored", () => {
    expect(run(['{"a":1}{"b":2}\n\r\n\t {"c":3}'])).toEqual([{ a: 1 }, { b: 2 }, { c: 3 }]);
  });

  test("an object split across reads, byte by byte", () => {
    const text = '{"execute": "query-status", "id": [1, {"x": "y"}]}';
    expect(run(text.split(""))).toEqual([{ execute: "query-status", id: [1, { x: "y" }] }]);
  });

  test("objects may span lines", () => {
    expect(run(['{\n"execute"\n:\n"stop"\n}\n'])).toEqual([{ execute: "stop" }]);
  });

  test("a string containing braces does not confuse the counting", () => {
    expect(run(['{"a":"}}]]{{"}'])).toEqual([{ a: "}}]]{{" }]);
  });

  test("top-level scalars are messages of their own once terminated", () => {
    expect(run(['42 "s" true [1]\n'])).toEqual([42, "s", true, [1]]);
    // A number needs a following byte (or end of input) to be complete.
    expect(run(["42"])).toEqual([]);
    expect(run(["42"], { flush: true })).toEqual([42]);
  });

  test("UTF-8 split across reads", () => {
    const bytes = [...new TextEncoder().encode('{"k":"héllo €"}')];
    expect(run(bytes.map((b) => [b]))).toEqual([{ k: "héllo €" }]);
  });
});

describe("QEMU's parse errors", () => {
  test("each bare word is its own error (the transcript's 'not json at all')", () => {
    expect(run(["not json at all\n"])).toEqual([
      "ERR:JSON parse error, invalid keyword 'not'",
      "ERR:JSON parse error, invalid keyword 'json'",
      "ERR:JSON parse error, invalid keyword 'at'",
      "ERR:JSON parse error, invalid keyword 'all'",
    ]);
  });

  test("a stray character skips input up to the next structural or control character", () => {
    // 'N' is not a token start; "ot json" is skipped up to the newline; then a good object.
    expect(run(['Not json\n{"a":1}'])).toEqual(["ERR:JSON parse error, stray 'N'", { a: 1 }]);
    // Inside an object the partial object is dropped; the closing brace then has nothing to close.
    expect(run(['{"a": N}\n'])).toEqual(["ERR:JSON parse error, stray 'N'", "ERR:JSON parse error, expecting value"]);
    // A bad keyword inside an object fails the whole object once it is complete.
    expect(run(['{"a": x1}\n'])).toEqual(["ERR:JSON parse error, invalid keyword 'x'"]);
  });

  test("binary garbage yields errors and resynchronizes", () => {
    const out = run([[0xff, 0xfe, 0x00, 0x80, 0x0a], '{"ok":true}\n']);
    expect(out.at(-1)).toEqual({ ok: true });
    expect(out.slice(0, -1).every((m) => typeof m === "string" && m.startsWith("ERR:JSON parse error, stray"))).toBe(true);
  });

  test("structural errors", () => {
    expect(run(["}"])).toEqual(["ERR:JSON parse error, expecting value"]);
    expect(run(['{"a" 1}'])).toEqual(["ERR:JSON parse error, missing : in object pair"]);
    expect(run(["{1: 2}"])).toEqual(["ERR:JSON parse error, key is not a string in object"]);
    expect(run(['{"a": 1 "b": 2}'])).toEqual(["ERR:JSON parse error, expected separator in dict"]);
    expect(run(["[1 2]"])).toEqual(["ERR:JSON parse error, expected separator in list"]);
    expect(run(['{"a":1, "a":2}'])).toEqual(["ERR:JSON parse error, duplicate key"]);
    expect(run(['{"a":}'])).toEqual(["ERR:JSON parse error, expecting value"]);
    expect(run(['{"a":1]'])).toEqual(["ERR:JSON parse error, expected separator in dict"]);
  });

  test("end of input inside a value", () => {
    expect(run(['{"a":'], { flush: true })).toEqual(["ERR:JSON parse error, premature EOI"]);
    expect(run(['{"a":"unterminated'], { flush: true })).toEqual(["ERR:JSON parse error, stray '\"unterminated'"]);
  });

  test("strings: escapes, surrogate pairs, invalid sequences", () => {
    expect(run(['"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00"\n'])).toEqual(['a"b\\c/d\b\f\n\r\té😀']);
    expect(run(["'single \\' quoted'\n"])).toEqual(["single ' quoted"]);
    expect(run(['"\\x"\n'])).toEqual(["ERR:JSON parse error, invalid escape sequence in string"]);
    expect(run(['"\\ud800"\n'])).toEqual(["ERR:JSON parse error, \\ud800 is not a valid Unicode character"]);
    expect(run(['"\\u12g4"\n'])).toEqual(["ERR:JSON parse error, \\u12g4 is not a valid Unicode character"]);
    expect(run([[0x22, 0xc3, 0x28, 0x22, 0x0a]])).toEqual(["ERR:JSON parse error, invalid UTF-8 sequence in string"]);
    // A raw control character ends the string with an error.
    expect(run(['"ab\ncd"'])[0]).toBe("ERR:JSON parse error, stray '\"ab\n'");
  });

  test("numbers: int64, uint64, beyond (double), floats", () => {
    expect(run(["[0, -1, 9223372036854775807, 18446744073709551615, 18446744073709551616, 1.5, -2e3, 1.0]\n"])).toEqual([
      [0, -1, 9223372036854775807n, 18446744073709551615n, 18446744073709551616, 1.5, -2000, 1],
    ]);
    expect(parseJson("1.0")).toEqual({ t: "float", v: 1 });
    expect(parseJson("1")).toEqual({ t: "int", v: 1n });
    expect(run(["01\n"])[0]).toBe("ERR:JSON parse error, stray '01'");
    expect(run(["-x\n"])[0]).toBe("ERR:JSON parse error, stray '-x'");
  });
});

describe("limits", () => {
  test("an incomplete value beyond the byte budget is fatal and stops the stream", () => {
    const out = run(['{"execute":"', "a".repeat(2000), '"}', '{"execute":"x"}'], { maxMessageBytes: 1000 });
    expect(out).toEqual(["FATAL:JSON token size limit exceeded"]);
  });

  test("whitespace and skipped garbage do not count against the budget", () => {
    const out = run([" ".repeat(5000), "X" + "a".repeat(5000) + "\n", '{"a":1}'], { maxMessageBytes: 1000 });
    expect(out).toEqual(["ERR:JSON parse error, stray 'X'", { a: 1 }]);
  });

  test("nesting deeper than 1024 is an error, not fatal", () => {
    const out = run(["[".repeat(1025), "\n"]);
    expect(out).toEqual(["ERR:JSON nesting depth limit exceeded"]);
  });
});

describe("writer", () => {
  test("ASCII only, QEMU's escapes", () => {
    expect(quoteString('a"b\\c\n\u0001é😀\u007f')).toBe('"a\\"b\\\\c\\n\\u0001\\u00E9\\uD83D\\uDE00\\u007F"');
  });

  test("plain data, bigints exact, undefined members left out, pretty form", () => {
    expect(encodeJson({ a: 1, b: [true, null, "x"], c: undefined, d: 18446744073709551615n, e: {} })).toBe(
      '{"a":1,"b":[true,null,"x"],"d":18446744073709551615,"e":{}}',
    );
    expect(encodeJson({ a: [1, 2], b: {} }, 2)).toBe('{\n  "a": [\n    1,\n    2\n  ],\n  "b": {}\n}');
  });

  test("round trip through the reader", () => {
    const v = { s: "ü\u0000\t", n: -3, big: 12345678901234567890n, f: 0.25, l: [[], {}], t: false };
    expect(toPlain(parseJson(encodeJson(v)))).toEqual(v);
  });

  test("a __proto__ key stays a plain member", () => {
    const v = toPlain(parseJson('{"__proto__": {"polluted": true}}')) as Record<string, unknown>;
    expect(Object.keys(v)).toEqual(["__proto__"]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});
