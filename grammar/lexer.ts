/**
 * The lexer of the moe language: Chevrotain token types and one shared `Lexer` instance.
 *
 * Comments are kept (token group "comments") for the formatter and for doc comments. Lexical
 * problems never stop the lexer; `tokenize` turns them into diagnostics:
 * - E0102 unterminated string (the string token is still produced, up to the end of its line),
 * - E0103 unterminated block comment (`/*` up to the end of the file, kept as a comment),
 * - E0104 unexpected character (one diagnostic per run of characters no token matches),
 * - E0106 invalid number (`1e`, `1.`; the token is still produced),
 * - E0101 unknown escape sequence inside a string.
 */
import { createToken, Lexer, type IToken, type TokenType } from "chevrotain";
import { diagnostic, type Diagnostic } from "../compiler/diagnostics.js";

// ---------------------------------------------------------------------------------------------
// Identifiers: a Unicode letter or `_`, then letters, digits, `_` (and combining marks, so that
// decomposed letters such as `u` + U+0308 stay one name). Chevrotain drops the `u` flag of
// regex patterns, so identifiers use a custom matcher plus start-character hints that keep the
// lexer's first-character optimization on.

const IDENT_RE = /[\p{L}_][\p{L}\p{M}\p{Nd}_]*/uy;

/**
 * Chevrotain reads `match[0]` right after calling a custom matcher and keeps nothing else, so
 * one result array is reused (identifiers are a third of all tokens).
 */
const IDENT_MATCH: [string] = [""];

function isAsciiIdentPart(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 95;
}

function matchIdentifier(text: string, offset: number): [string] | RegExpExecArray | null {
  const c0 = text.charCodeAt(offset);
  if (c0 < 128) {
    if (!isAsciiIdentPart(c0) || c0 <= 57) return null; // not a letter or `_`
    let i = offset + 1;
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (isAsciiIdentPart(c)) i++;
      else if (c >= 128) return matchUnicodeIdentifier(text, offset);
      else break;
    }
    IDENT_MATCH[0] = text.substring(offset, i);
    return IDENT_MATCH;
  }
  return matchUnicodeIdentifier(text, offset);
}

function matchUnicodeIdentifier(text: string, offset: number): RegExpExecArray | null {
  IDENT_RE.lastIndex = offset;
  return IDENT_RE.exec(text);
}

/** One start character per block Chevrotain's optimizer distinguishes (every code < 256, then blocks of 256). */
function identifierStartHints(): number[] {
  const hints: number[] = [];
  const isStart = /[\p{L}_]/u;
  for (let c = 0; c < 256; c++) if (isStart.test(String.fromCharCode(c))) hints.push(c);
  for (let block = 1; block < 256; block++) {
    const base = block << 8;
    if (base >= 0xd800 && base <= 0xdbff) {
      // High surrogates: an astral letter starts with one of these.
      hints.push(base);
      continue;
    }
    for (let c = base; c < base + 256; c++) {
      if (isStart.test(String.fromCharCode(c))) {
        hints.push(c);
        break;
      }
    }
  }
  return hints;
}

export const Identifier = createToken({
  name: "Identifier",
  pattern: { exec: matchIdentifier },
  line_breaks: false,
  start_chars_hint: identifierStartHints(),
});

// ---------------------------------------------------------------------------------------------
// Whitespace and comments

export const WhiteSpace = createToken({
  name: "WhiteSpace",
  pattern: /\s+/,
  group: Lexer.SKIPPED,
  line_breaks: true,
});

/** `// ...` and `/// ...` (a doc comment when it starts with exactly three slashes). */
export const LineComment = createToken({
  name: "LineComment",
  pattern: /\/\/[^\n\r]*/,
  group: "comments",
});

export const BlockComment = createToken({
  name: "BlockComment",
  pattern: /\/\*[\s\S]*?\*\//,
  group: "comments",
  line_breaks: true,
});

/** `/*` without a closing `*\/`: runs to the end of the file (reported as E0103). */
export const UnterminatedBlockComment = createToken({
  name: "UnterminatedBlockComment",
  pattern: /\/\*[\s\S]*/,
  group: "comments",
  line_breaks: true,
});

// ---------------------------------------------------------------------------------------------
// Literals

/** A string up to its closing quote, or up to the end of the line when unterminated (E0102). */
export const StringLit = createToken({
  name: "StringLit",
  pattern: /"(?:[^"\\\r\n]|\\[^\r\n]?)*"?/,
});

/**
 * Numbers, matched generously (`1e`, `1.` included) so that a malformed number is one token
 * with one E0106 diagnostic instead of a cascade of syntax errors.
 */
export const NumberLit = createToken({
  name: "NumberLit",
  pattern: /\d[\d_]*(?:\.[\d_]*)?(?:[eE][+-]?[\d_]*)?/,
});

// ---------------------------------------------------------------------------------------------
// Punctuation (longest first where prefixes overlap)

export const Ellipsis = createToken({ name: "Ellipsis", pattern: "..." });
export const Arrow = createToken({ name: "Arrow", pattern: "->" });
export const EqEq = createToken({ name: "EqEq", pattern: "==" });
export const NotEq = createToken({ name: "NotEq", pattern: "!=" });
export const LtEq = createToken({ name: "LtEq", pattern: "<=" });
export const GtEq = createToken({ name: "GtEq", pattern: ">=" });
export const Eq = createToken({ name: "Eq", pattern: "=" });
export const Bang = createToken({ name: "Bang", pattern: "!" });
export const Lt = createToken({ name: "Lt", pattern: "<" });
export const Gt = createToken({ name: "Gt", pattern: ">" });
export const LBrace = createToken({ name: "LBrace", pattern: "{" });
export const RBrace = createToken({ name: "RBrace", pattern: "}" });
export const LParen = createToken({ name: "LParen", pattern: "(" });
export const RParen = createToken({ name: "RParen", pattern: ")" });
export const LBracket = createToken({ name: "LBracket", pattern: "[" });
export const RBracket = createToken({ name: "RBracket", pattern: "]" });
export const Comma = createToken({ name: "Comma", pattern: "," });
export const Semicolon = createToken({ name: "Semicolon", pattern: ";" });
export const Colon = createToken({ name: "Colon", pattern: ":" });
export const Dot = createToken({ name: "Dot", pattern: "." });
export const Plus = createToken({ name: "Plus", pattern: "+" });
export const Minus = createToken({ name: "Minus", pattern: "-" });
export const Star = createToken({ name: "Star", pattern: "*" });
export const Slash = createToken({ name: "Slash", pattern: "/" });
export const Percent = createToken({ name: "Percent", pattern: "%" });
export const At = createToken({ name: "At", pattern: "@" });

// ---------------------------------------------------------------------------------------------
// Keywords. `task` is deliberately not one: it is an ordinary name except after `per`.

function keyword(word: string): TokenType {
  const name = "Kw" + word[0]!.toUpperCase() + word.slice(1);
  return createToken({ name, pattern: new RegExp(word), longer_alt: Identifier });
}

export const Import = keyword("import");
export const As = keyword("as");
export const Tasks = keyword("tasks");
export const Enum = keyword("enum");
export const Const = keyword("const");
export const Block = keyword("block");
export const Model = keyword("model");
export const Primitive = keyword("primitive");
export const Train = keyword("train");
export const In = keyword("in");
export const Out = keyword("out");
export const Param = keyword("param");
export const Repeat = keyword("repeat");
export const If = keyword("if");
export const Else = keyword("else");
export const Per = keyword("per");
export const Frozen = keyword("frozen");
export const With = keyword("with");
export const True = keyword("true");
export const False = keyword("false");

export const keywordTokens: readonly TokenType[] = [
  Import,
  As,
  Tasks,
  Enum,
  Const,
  Block,
  Model,
  Primitive,
  Train,
  In,
  Out,
  Param,
  Repeat,
  If,
  Else,
  Per,
  Frozen,
  With,
  True,
  False,
];

/** Every token type, in matching order. */
export const allTokens: readonly TokenType[] = [
  WhiteSpace,
  LineComment,
  BlockComment,
  UnterminatedBlockComment,
  StringLit,
  NumberLit,
  Ellipsis,
  Arrow,
  EqEq,
  NotEq,
  LtEq,
  GtEq,
  Eq,
  Bang,
  Lt,
  Gt,
  LBrace,
  RBrace,
  LParen,
  RParen,
  LBracket,
  RBracket,
  Comma,
  Semicolon,
  Colon,
  Dot,
  Plus,
  Minus,
  Star,
  Slash,
  Percent,
  At,
  ...keywordTokens,
  Identifier,
];

/** The one lexer instance (Chevrotain lexers are stateless between `tokenize` calls). */
export const moeLexer = new Lexer(allTokens as TokenType[], {
  positionTracking: "onlyOffset",
  ensureOptimizations: true,
});

// ---------------------------------------------------------------------------------------------

export interface LexResult {
  /** Significant tokens (no whitespace, no comments). */
  tokens: IToken[];
  /** Comment tokens, in source order. */
  comments: IToken[];
  diagnostics: Diagnostic[];
}

/** End offset (exclusive) of a token produced by the lexer. */
export function tokenEnd(t: IToken): number {
  return t.startOffset + t.image.length;
}

/** Lexes `text`; never throws. */
export function tokenize(text: string, path: string): LexResult {
  const result = moeLexer.tokenize(text);
  const diagnostics: Diagnostic[] = [];
  for (const e of result.errors) {
    const chars = text.slice(e.offset, e.offset + e.length);
    diagnostics.push(badCharacters(path, e.offset, chars));
  }
  for (const t of result.tokens) {
    const type = t.tokenType;
    if (type === StringLit) checkString(t, path, diagnostics);
    else if (type === NumberLit) checkNumber(t, path, diagnostics);
  }
  const comments = result.groups["comments"] ?? [];
  for (const c of comments) {
    if (c.tokenType === UnterminatedBlockComment) {
      diagnostics.push(
        diagnostic(
          "E0103",
          path,
          { start: c.startOffset, end: c.startOffset + 2 },
          "unterminated block comment: this `/*` has no closing `*/`",
          { hint: "close the comment with `*/` (block comments do not nest)" },
        ),
      );
    }
  }
  diagnostics.sort((a, b) => a.span.start - b.span.start);
  return { tokens: result.tokens, comments, diagnostics };
}

function showChar(ch: string): string {
  const code = ch.codePointAt(0)!;
  if (code < 0x20 || (code >= 0x7f && code < 0xa0) || code === 0xad) {
    return `\\u{${code.toString(16).toUpperCase().padStart(4, "0")}}`;
  }
  if (ch === "`") return "\\`";
  return ch;
}

function badCharacters(path: string, offset: number, chars: string): Diagnostic {
  const shown = Array.from(chars.length > 24 ? chars.slice(0, 24) : chars, showChar).join("");
  const more = chars.length > 24 ? "…" : "";
  const count = Array.from(chars).length;
  const message =
    count === 1 ? `unexpected character \`${shown}\`` : `unexpected characters \`${shown}${more}\``;
  let hint: string | undefined;
  const first = chars[0];
  if (first === "#") hint = "comments start with `//`";
  else if (first === "'") hint = 'strings use double quotes: "..."';
  else if (first === "\\") hint = "`\\` is only allowed inside strings";
  return diagnostic(
    "E0104",
    path,
    { start: offset, end: offset + chars.length },
    message,
    hint ? { hint } : {},
  );
}

/** E0102 when the closing quote is missing, E0101 for an unknown escape. */
function checkString(t: IToken, path: string, out: Diagnostic[]): void {
  const s = t.image;
  let i = 1;
  let terminated = false;
  while (i < s.length) {
    const ch = s[i]!;
    if (ch === "\\") {
      const next = s[i + 1];
      if (next !== undefined && next !== '"' && next !== "\\" && next !== "n" && next !== "t") {
        out.push(
          diagnostic(
            "E0101",
            path,
            { start: t.startOffset + i, end: t.startOffset + i + 2 },
            `unknown escape sequence \`\\${showChar(next)}\` in string`,
            { hint: 'the escapes are \\", \\\\, \\n and \\t' },
          ),
        );
      }
      i += 2;
    } else if (ch === '"') {
      terminated = i === s.length - 1;
      break;
    } else {
      i++;
    }
  }
  if (!terminated) {
    out.push(
      diagnostic(
        "E0102",
        path,
        { start: t.startOffset, end: tokenEnd(t) },
        'unterminated string: missing closing `"` before the end of the line',
        { hint: 'close the string with `"`; strings cannot span lines (use \\n)' },
      ),
    );
  }
}

function isDigits(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

const VALID_NUMBER = /^\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d[\d_]*)?$/;

/** E0106 for `1e`, `1.`, `1e+`, and for numbers too large to represent. */
function checkNumber(t: IToken, path: string, out: Diagnostic[]): void {
  const s = t.image;
  if (s.length < 16 && isDigits(s)) return; // the common case: a plain, safe integer
  const span = { start: t.startOffset, end: tokenEnd(t) };
  if (!VALID_NUMBER.test(s)) {
    const dot = s.indexOf(".");
    const exp = s.search(/[eE]/);
    let message: string;
    let hint: string;
    if (dot >= 0 && !/\d/.test(s[dot + 1] ?? "")) {
      message = `invalid number \`${s}\`: a decimal point must be followed by digits`;
      hint = `write \`${s.slice(0, dot)}.0\` or \`${s.slice(0, dot)}\``;
    } else if (exp >= 0) {
      message = `invalid number \`${s}\`: the exponent has no digits`;
      hint = "write an exponent like `1e-5` or `3.0e2`";
    } else {
      message = `invalid number \`${s}\``;
      hint = "numbers look like `256`, `1_000`, `1.25` or `1e-5`";
    }
    out.push(diagnostic("E0106", path, span, message, { hint }));
    return;
  }
  const value = Number(s.replace(/_/g, ""));
  if (!Number.isFinite(value)) {
    out.push(diagnostic("E0106", path, span, `number \`${s}\` is too large`));
  } else if (!/[.eE]/.test(s) && !Number.isSafeInteger(value)) {
    out.push(
      diagnostic("E0106", path, span, `integer \`${s}\` is too large`, {
        hint: `integers must be at most ${Number.MAX_SAFE_INTEGER}`,
      }),
    );
  }
}

/** The value of a number token (underscores removed; the valid prefix of a malformed number). */
export function numberValue(image: string): number {
  const clean = image.indexOf("_") < 0 ? image : image.replace(/_/g, "");
  const v = Number(clean);
  if (!Number.isNaN(v)) return v;
  const prefix = /^\d+(?:\.\d+)?/.exec(clean);
  return prefix ? Number(prefix[0]) : 0;
}

/** Whether a number token is written as an integer (no point, no exponent). */
export function isIntLiteral(image: string): boolean {
  for (let i = 0; i < image.length; i++) {
    const c = image.charCodeAt(i);
    if (c === 46 || c === 101 || c === 69) return false; // . e E
  }
  return true;
}

/** The value of a string token: quotes removed, escapes decoded (unknown escapes kept as written). */
export function stringValue(image: string): string {
  let out = "";
  let i = 1;
  while (i < image.length) {
    const ch = image[i]!;
    if (ch === "\\") {
      const next = image[i + 1];
      if (next === undefined) break;
      if (next === "n") out += "\n";
      else if (next === "t") out += "\t";
      else if (next === '"' || next === "\\") out += next;
      else out += "\\" + next;
      i += 2;
    } else if (ch === '"') {
      break;
    } else {
      out += ch;
      i++;
    }
  }
  return out;
}
