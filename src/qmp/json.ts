/**
 * QMP's JSON, as QEMU reads and writes it.
 *
 * Input goes through a streaming lexer and a brace-counting "streamer" modelled on QEMU's
 * qobject/json-lexer.c + json-streamer.c, because QMP clients see the consequences: messages need no
 * delimiter (objects may span lines, several may share one read), a bare word at top level is its own
 * (bad) message ("JSON parse error, invalid keyword 'not'"), a lexical error discards input up to the next
 * structural or control character, and the error texts are QEMU's. The parser yields a tagged tree
 * (QObject) rather than plain JS values so that argument checking can tell 1 from 1.0 and keep 64-bit
 * integers exact, as QEMU's visitors do.
 *
 * Output is ASCII-only JSON with QEMU's escapes (\uXXXX for everything outside 0x20..0x7E).
 */

export type QObject =
  | { readonly t: "null" }
  | { readonly t: "bool"; readonly v: boolean }
  /** A JSON integer within int64 or uint64 range (QEMU's QNUM_I64 / QNUM_U64). */
  | { readonly t: "int"; readonly v: bigint }
  /** A JSON number with a fraction or exponent, or an integer beyond 64 bits (QNUM_DOUBLE). */
  | { readonly t: "float"; readonly v: number }
  | { readonly t: "str"; readonly v: string }
  | { readonly t: "list"; readonly v: readonly QObject[] }
  | { readonly t: "dict"; readonly v: ReadonlyMap<string, QObject> };

export type QDict = Extract<QObject, { t: "dict" }>;

export const INT64_MIN = -(1n << 63n);
export const INT64_MAX = (1n << 63n) - 1n;
export const UINT64_MAX = (1n << 64n) - 1n;

/** A message from the stream: a parsed value, or an error to report (fatal: the stream is dead). */
export type StreamMessage = { ok: true; value: QObject } | { ok: false; error: string; fatal: boolean };

/** QEMU's limits (json-streamer.c), except the byte budget, which QMP keeps much smaller. */
export const MAX_NESTING = 1024;
export const MAX_TOKEN_COUNT = 256 * 1024;
export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024;

const enum Tok {
  LCurly,
  RCurly,
  LSquare,
  RSquare,
  Colon,
  Comma,
  String,
  Integer,
  Float,
  Keyword,
}

interface Token {
  type: Tok;
  /** Raw bytes for strings (decoded by the parser), ASCII text otherwise. */
  text: string;
  bytes: Uint8Array | null;
}

const enum St {
  Start,
  Keyword,
  DqString,
  DqEscape,
  SqString,
  SqEscape,
  Zero,
  Digits,
  Sign,
  Mantissa,
  MantissaDigits,
  ExpE,
  ExpSign,
  ExpDigits,
  /** After a lexical error: skip to a structural character, a control character or 0xFE/0xFF. */
  Recovery,
}

const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isLower = (b: number) => b >= 0x61 && b <= 0x7a;

const lossy = new TextDecoder("utf-8");
const strict = new TextDecoder("utf-8", { fatal: true });

/**
 * Splits a byte stream into QMP messages. Feed it whatever the socket delivers; it calls `onMessage`
 * once per complete top-level value or error, in input order.
 */
export class JsonStreamer {
  private state = St.Start;
  private tok = new Uint8Array(64);
  private tokLen = 0;
  private tokens: Token[] = [];
  private tokenBytes = 0;
  private braces = 0;
  private brackets = 0;
  private deadFlag = false;
  private readonly maxBytes: number;

  constructor(
    private readonly onMessage: (m: StreamMessage) => void,
    opts: { maxMessageBytes?: number } = {},
  ) {
    this.maxBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  }

  /** True after a fatal error (size limit): further input is ignored. */
  get dead(): boolean {
    return this.deadFlag;
  }

  feed(bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length && !this.deadFlag; i++) {
      this.step(bytes[i]!);
      // Bound memory while a value is incomplete: buffered tokens plus the token being lexed.
      if (this.tokenBytes + this.tokLen > this.maxBytes) this.fatal("JSON token size limit exceeded");
    }
  }

  /** End of input: complete a pending token (e.g. a number) and report an unfinished value. */
  flush(): void {
    if (this.deadFlag) return;
    switch (this.state) {
      case St.Keyword:
        this.emitToken(Tok.Keyword);
        break;
      case St.Zero:
      case St.Digits:
        this.emitToken(Tok.Integer);
        break;
      case St.MantissaDigits:
      case St.ExpDigits:
        this.emitToken(Tok.Float);
        break;
      case St.Start:
      case St.Recovery:
        break;
      default:
        this.lexError();
    }
    this.state = St.Start;
    this.tokLen = 0;
    if (this.tokens.length > 0) this.parseAndEmit();
  }

  private push(b: number): void {
    if (this.tokLen === this.tok.length) {
      const bigger = new Uint8Array(this.tok.length * 2);
      bigger.set(this.tok);
      this.tok = bigger;
    }
    this.tok[this.tokLen++] = b;
  }

  private step(b: number): void {
    // Each iteration either consumes b (return) or changes state and looks at b again (continue),
    // which is how a token that ends without a delimiter (a number, a keyword) is completed.
    for (;;) {
      switch (this.state) {
        case St.Start:
          switch (b) {
            case 0x22:
              this.push(b);
              this.state = St.DqString;
              return;
            case 0x27:
              this.push(b);
              this.state = St.SqString;
              return;
            case 0x30:
              this.push(b);
              this.state = St.Zero;
              return;
            case 0x2d:
              this.push(b);
              this.state = St.Sign;
              return;
            case 0x7b:
              return this.single(b, Tok.LCurly);
            case 0x7d:
              return this.single(b, Tok.RCurly);
            case 0x5b:
              return this.single(b, Tok.LSquare);
            case 0x5d:
              return this.single(b, Tok.RSquare);
            case 0x3a:
              return this.single(b, Tok.Colon);
            case 0x2c:
              return this.single(b, Tok.Comma);
            case 0x20:
            case 0x09:
            case 0x0d:
            case 0x0a:
              return;
          }
          if (isDigit(b)) {
            this.push(b);
            this.state = St.Digits;
            return;
          }
          if (isLower(b)) {
            this.push(b);
            this.state = St.Keyword;
            return;
          }
          this.push(b);
          return this.lexError();
        case St.Keyword:
          if (isLower(b)) return this.push(b);
          this.emitToken(Tok.Keyword);
          continue;
        case St.DqString:
        case St.SqString: {
          const quote = this.state === St.DqString ? 0x22 : 0x27;
          this.push(b);
          if (b === quote) {
            this.emitToken(Tok.String);
            return;
          }
          if (b === 0x5c) this.state = this.state === St.DqString ? St.DqEscape : St.SqEscape;
          else if (b < 0x20 || b > 0xfd) this.lexError();
          return;
        }
        case St.DqEscape:
        case St.SqEscape:
          this.push(b);
          if (b < 0x20 || b > 0xfd) return this.lexError();
          this.state = this.state === St.DqEscape ? St.DqString : St.SqString;
          return;
        case St.Zero:
          if (isDigit(b)) {
            this.push(b);
            return this.lexError();
          }
          if (b === 0x2e) {
            this.push(b);
            this.state = St.Mantissa;
            return;
          }
          this.emitToken(Tok.Integer);
          continue;
        case St.Digits:
          if (isDigit(b)) return this.push(b);
          if (b === 0x2e) {
            this.push(b);
            this.state = St.Mantissa;
            return;
          }
          if (b === 0x65 || b === 0x45) {
            this.push(b);
            this.state = St.ExpE;
            return;
          }
          this.emitToken(Tok.Integer);
          continue;
        case St.Sign:
          this.push(b);
          if (b === 0x30) this.state = St.Zero;
          else if (isDigit(b)) this.state = St.Digits;
          else this.lexError();
          return;
        case St.Mantissa:
          this.push(b);
          if (isDigit(b)) this.state = St.MantissaDigits;
          else this.lexError();
          return;
        case St.MantissaDigits:
          if (isDigit(b)) return this.push(b);
          if (b === 0x65 || b === 0x45) {
            this.push(b);
            this.state = St.ExpE;
            return;
          }
          this.emitToken(Tok.Float);
          continue;
        case St.ExpE:
          this.push(b);
          if (b === 0x2b || b === 0x2d) this.state = St.ExpSign;
          else if (isDigit(b)) this.state = St.ExpDigits;
          else this.lexError();
          return;
        case St.ExpSign:
          this.push(b);
          if (isDigit(b)) this.state = St.ExpDigits;
          else this.lexError();
          return;
        case St.ExpDigits:
          if (isDigit(b)) return this.push(b);
          this.emitToken(Tok.Float);
          continue;
        case St.Recovery:
          if (
            (b < 0x20 && b !== 0x09) ||
            b >= 0xfe ||
            b === 0x5b ||
            b === 0x5d ||
            b === 0x7b ||
            b === 0x7d ||
            b === 0x3a ||
            b === 0x2c
          ) {
            this.state = St.Start;
            continue;
          }
          return;
      }
    }
  }

  private single(b: number, type: Tok): void {
    this.push(b);
    this.emitToken(type);
  }

  /** The token so far (including the offending byte) is reported; input is skipped until resync. */
  private lexError(): void {
    const text = lossy.decode(this.tok.subarray(0, this.tokLen));
    this.tokLen = 0;
    this.state = St.Recovery;
    this.reset();
    this.onMessage({ ok: false, error: `JSON parse error, stray '${text}'`, fatal: false });
  }

  private emitToken(type: Tok): void {
    const raw = this.tok.subarray(0, this.tokLen);
    const token: Token =
      type === Tok.String ? { type, text: "", bytes: raw.slice() } : { type, text: lossy.decode(raw), bytes: null };
    const len = this.tokLen;
    this.tokLen = 0;
    this.state = St.Start;
    switch (type) {
      case Tok.LCurly:
        this.braces++;
        break;
      case Tok.RCurly:
        this.braces--;
        break;
      case Tok.LSquare:
        this.brackets++;
        break;
      case Tok.RSquare:
        this.brackets--;
        break;
    }
    if (this.tokens.length + 1 > MAX_TOKEN_COUNT) return this.fatal("JSON token count limit exceeded");
    if (this.braces + this.brackets > MAX_NESTING) {
      this.reset();
      this.onMessage({ ok: false, error: "JSON nesting depth limit exceeded", fatal: false });
      return;
    }
    this.tokens.push(token);
    this.tokenBytes += len;
    if ((this.braces > 0 || this.brackets > 0) && this.braces >= 0 && this.brackets >= 0) return;
    this.parseAndEmit();
  }

  private parseAndEmit(): void {
    const tokens = this.tokens;
    this.reset();
    const r = parseTokens(tokens);
    this.onMessage(typeof r === "string" ? { ok: false, error: r, fatal: false } : { ok: true, value: r });
  }

  private reset(): void {
    this.tokens = [];
    this.tokenBytes = 0;
    this.braces = 0;
    this.brackets = 0;
  }

  private fatal(error: string): void {
    this.deadFlag = true;
    this.reset();
    this.tok = new Uint8Array(0);
    this.tokLen = 0;
    this.onMessage({ ok: false, error, fatal: true });
  }
}

/** Parse the text of one complete value (used by the client for replies, and by tests). */
export function parseJson(text: string | Uint8Array): QObject {
  const out: StreamMessage[] = [];
  const s = new JsonStreamer((m) => out.push(m), { maxMessageBytes: Number.MAX_SAFE_INTEGER });
  s.feed(typeof text === "string" ? new TextEncoder().encode(text) : text);
  s.flush();
  const first = out[0];
  if (!first) throw new SyntaxError("JSON parse error, empty input");
  if (!first.ok) throw new SyntaxError(first.error);
  if (out.length > 1) throw new SyntaxError("JSON parse error, trailing data after the value");
  return first.value;
}

// ---------------------------------------------------------------------------------------------------
// Parser: QEMU's json-parser.c rules and messages; the first error wins.

class Parser {
  private pos = 0;
  err: string | null = null;
  constructor(private readonly tokens: readonly Token[]) {}

  private peek(): Token | undefined {
    return this.tokens[this.pos];
  }
  private pop(): Token | undefined {
    return this.tokens[this.pos++];
  }
  private error(msg: string): null {
    if (this.err === null) this.err = `JSON parse error, ${msg}`;
    return null;
  }

  value(): QObject | null {
    const t = this.peek();
    if (!t) return this.error("premature EOI");
    switch (t.type) {
      case Tok.LCurly:
        return this.object();
      case Tok.LSquare:
        return this.array();
      case Tok.String:
        this.pop();
        return this.string(t);
      case Tok.Integer:
        this.pop();
        return integer(t.text);
      case Tok.Float:
        this.pop();
        return { t: "float", v: Number(t.text) };
      case Tok.Keyword:
        this.pop();
        if (t.text === "true") return { t: "bool", v: true };
        if (t.text === "false") return { t: "bool", v: false };
        if (t.text === "null") return { t: "null" };
        return this.error(`invalid keyword '${t.text}'`);
      default:
        return this.error("expecting value");
    }
  }

  private object(): QObject | null {
    this.pop();
    const dict = new Map<string, QObject>();
    const peek = this.peek();
    if (!peek) return this.error("premature EOI");
    if (peek.type === Tok.RCurly) {
      this.pop();
      return { t: "dict", v: dict };
    }
    if (!this.pair(dict)) return null;
    let t = this.pop();
    if (!t) return this.error("premature EOI");
    while (t.type !== Tok.RCurly) {
      if (t.type !== Tok.Comma) return this.error("expected separator in dict");
      if (!this.pair(dict)) return null;
      t = this.pop();
      if (!t) return this.error("premature EOI");
    }
    return { t: "dict", v: dict };
  }

  private pair(dict: Map<string, QObject>): boolean {
    const fail = (msg: string) => (this.error(msg), false);
    if (!this.peek()) return fail("premature EOI");
    const key = this.value();
    if (!key || key.t !== "str") return fail("key is not a string in object");
    const colon = this.pop();
    if (!colon) return fail("premature EOI");
    if (colon.type !== Tok.Colon) return fail("missing : in object pair");
    const value = this.value();
    if (!value) return fail("Missing value in dict");
    if (dict.has(key.v)) return fail("duplicate key");
    dict.set(key.v, value);
    return true;
  }

  private array(): QObject | null {
    this.pop();
    const list: QObject[] = [];
    const peek = this.peek();
    if (!peek) return this.error("premature EOI");
    if (peek.type === Tok.RSquare) {
      this.pop();
      return { t: "list", v: list };
    }
    let v = this.value();
    if (!v) return this.error("expecting value");
    list.push(v);
    let t = this.pop();
    if (!t) return this.error("premature EOI");
    while (t.type !== Tok.RSquare) {
      if (t.type !== Tok.Comma) return this.error("expected separator in list");
      v = this.value();
      if (!v) return this.error("expecting value");
      list.push(v);
      t = this.pop();
      if (!t) return this.error("premature EOI");
    }
    return { t: "list", v: list };
  }

  /** Unescape a string token (QEMU's parse_string): escapes, surrogate pairs, strict UTF-8. */
  private string(t: Token): QObject | null {
    const b = t.bytes!;
    const quote = b[0]!;
    const parts: string[] = [];
    let i = 1;
    let run = i; // start of a run of raw (unescaped) bytes
    const flushRun = (end: number): boolean => {
      if (end > run) {
        let s: string;
        try {
          s = strict.decode(b.subarray(run, end));
        } catch {
          return false;
        }
        for (const ch of s) if (!validCodepoint(ch.codePointAt(0)!)) return false;
        parts.push(s);
      }
      return true;
    };
    while (i < b.length && b[i] !== quote) {
      if (b[i] !== 0x5c) {
        i++;
        continue;
      }
      if (!flushRun(i)) return this.error("invalid UTF-8 sequence in string");
      const beg = i;
      const c = b[i + 1];
      i += 2;
      switch (c) {
        case 0x22:
          parts.push('"');
          break;
        case 0x27:
          parts.push("'");
          break;
        case 0x5c:
          parts.push("\\");
          break;
        case 0x2f:
          parts.push("/");
          break;
        case 0x62:
          parts.push("\b");
          break;
        case 0x66:
          parts.push("\f");
          break;
        case 0x6e:
          parts.push("\n");
          break;
        case 0x72:
          parts.push("\r");
          break;
        case 0x74:
          parts.push("\t");
          break;
        case 0x75: {
          let cp = hex4(b, i);
          i += 4;
          if (cp >= 0xd800 && cp <= 0xdbff && b[i] === 0x5c && b[i + 1] === 0x75) {
            const trailing = hex4(b, i + 2);
            if (trailing >= 0xdc00 && trailing <= 0xdfff) {
              cp = 0x10000 + ((cp & 0x3ff) << 10) + (trailing & 0x3ff);
              i += 6;
            } else {
              cp = -1;
            }
          }
          if (!validCodepoint(cp)) {
            const text = lossy.decode(b.subarray(beg, Math.min(i, b.length - 1)));
            return this.error(`${text} is not a valid Unicode character`);
          }
          parts.push(String.fromCodePoint(cp));
          break;
        }
        default:
          return this.error("invalid escape sequence in string");
      }
      run = i;
    }
    if (!flushRun(i)) return this.error("invalid UTF-8 sequence in string");
    return { t: "str", v: parts.join("") };
  }
}

function hex4(b: Uint8Array, at: number): number {
  let cp = 0;
  for (let k = 0; k < 4; k++) {
    const c = b[at + k];
    if (c === undefined) return -1;
    const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
    if (d < 0) return -1;
    cp = (cp << 4) | d;
  }
  return cp;
}

/** QEMU's is_valid_codepoint(): no surrogates, no noncharacters, at most U+10FFFF. */
function validCodepoint(cp: number): boolean {
  if (cp < 0 || cp > 0x10ffff) return false;
  if ((cp & 0xfffff800) === 0xd800) return false;
  if (cp >= 0xfdd0 && cp <= 0xfdef) return false;
  if ((cp & 0xfffe) === 0xfffe) return false;
  return true;
}

/** int64 if it fits, else uint64, else a double (QEMU's parse_literal). */
function integer(text: string): QObject {
  const v = BigInt(text);
  if (v >= INT64_MIN && v <= UINT64_MAX) return { t: "int", v };
  return { t: "float", v: Number(text) };
}

function parseTokens(tokens: readonly Token[]): QObject | string {
  const p = new Parser(tokens);
  const v = p.value();
  if (v === null || p.err !== null) return p.err ?? "JSON parse error, expecting value";
  return v;
}

// ---------------------------------------------------------------------------------------------------

/** A QObject as plain JS: integers beyond 2^53 stay exact as bigint; dict keys become own properties. */
export function toPlain(q: QObject): unknown {
  switch (q.t) {
    case "null":
      return null;
    case "bool":
    case "str":
    case "float":
      return q.v;
    case "int":
      return q.v >= BigInt(Number.MIN_SAFE_INTEGER) && q.v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(q.v) : q.v;
    case "list":
      return q.v.map(toPlain);
    case "dict":
      // fromEntries defines properties (a "__proto__" key stays data, not a prototype).
      return Object.fromEntries([...q.v].map(([k, v]) => [k, toPlain(v)]));
  }
}

/** QEMU's json-writer string quoting: ASCII only, \uXXXX (upper-case hex) for anything else. */
export function quoteString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    switch (c) {
      case 0x22:
        out += '\\"';
        continue;
      case 0x5c:
        out += "\\\\";
        continue;
      case 0x08:
        out += "\\b";
        continue;
      case 0x0c:
        out += "\\f";
        continue;
      case 0x0a:
        out += "\\n";
        continue;
      case 0x0d:
        out += "\\r";
        continue;
      case 0x09:
        out += "\\t";
        continue;
    }
    out += c < 0x20 || c >= 0x7f ? "\\u" + c.toString(16).toUpperCase().padStart(4, "0") : s[i];
  }
  return out + '"';
}

/**
 * Serialize plain JS data (objects, arrays, strings, finite numbers, bigints, booleans, null). Object
 * members that are undefined or functions are left out, like JSON.stringify. `indent` > 0 pretty-prints.
 */
export function encodeJson(value: unknown, indent = 0): string {
  return enc(value, indent, "");
}

function enc(v: unknown, indent: number, pad: string): string {
  switch (typeof v) {
    case "string":
      return quoteString(v);
    case "number":
      return Number.isFinite(v) ? (Object.is(v, -0) ? "0" : String(v)) : "null";
    case "bigint":
      return v.toString();
    case "boolean":
      return v ? "true" : "false";
    case "undefined":
    case "function":
    case "symbol":
      return "null";
  }
  if (v === null) return "null";
  const inner = indent > 0 ? pad + " ".repeat(indent) : "";
  const nl = indent > 0 ? "\n" : "";
  const colon = indent > 0 ? ": " : ":";
  if (Array.isArray(v)) {
    if (v.length === 0) return "[]";
    return "[" + nl + v.map((e) => inner + enc(e, indent, inner)).join("," + nl) + nl + pad + "]";
  }
  const entries = Object.entries(v as Record<string, unknown>).filter(
    ([, e]) => e !== undefined && typeof e !== "function" && typeof e !== "symbol",
  );
  if (entries.length === 0) return "{}";
  return (
    "{" +
    nl +
    entries.map(([k, e]) => inner + quoteString(k) + colon + enc(e, indent, inner)).join("," + nl) +
    nl +
    pad +
    "}"
  );
}
