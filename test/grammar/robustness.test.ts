/** Inputs that must never make the parser throw or hang. No timing assertions. */
import { describe, expect, it } from "vitest";
import type { ConstDecl } from "../../grammar/ast.js";
import type { ParseResult } from "../../grammar/parse.js";
import { parseSource } from "../../grammar/parse.js";
import { walkSpans, withoutSpans } from "./ast-print.js";

const CODES = new Set(["E0101", "E0102", "E0103", "E0104", "E0105", "E0106"]);

/** Parses and checks the invariants every result must satisfy. */
function parseChecked(text: string): ParseResult {
  const result = parseSource(text, "r.moe");
  expect(result.file.kind).toBe("SourceFile");
  expect(result.file.span).toEqual({ start: 0, end: text.length });
  for (const d of result.diagnostics) {
    expect(CODES.has(d.code), d.code).toBe(true);
    expect(d.span.start).toBeGreaterThanOrEqual(0);
    expect(d.span.end).toBeLessThanOrEqual(text.length);
    expect(d.span.start).toBeLessThanOrEqual(d.span.end);
  }
  return result;
}

/** A small deterministic generator (the tests must not be flaky). */
function randomBytes(n: number, seed: number): Buffer {
  const bytes = Buffer.alloc(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    bytes[i] = s >>> 24;
  }
  return bytes;
}

describe("robustness", () => {
  it("parses an empty file", () => {
    const r = parseChecked("");
    expect(r.file.items).toEqual([]);
    expect(r.diagnostics).toEqual([]);
    expect(r.comments).toEqual([]);
  });

  it("parses a file of only comments", () => {
    const text = "// line\n/// doc\n/* block\n comment */\n";
    const r = parseChecked(text);
    expect(r.file.items).toEqual([]);
    expect(r.diagnostics).toEqual([]);
    expect(r.comments.map((c) => c.text)).toEqual(["// line", "/// doc", "/* block\n comment */"]);
  });

  it("survives binary garbage", () => {
    for (const seed of [1, 2, 3]) {
      const text = randomBytes(10 * 1024, seed).toString("latin1");
      const r = parseChecked(text);
      expect(r.diagnostics.length).toBeGreaterThan(0);
      walkSpans(r.file, (node) => {
        expect(node.span.start).toBeLessThanOrEqual(node.span.end);
        expect(node.span.end).toBeLessThanOrEqual(text.length);
      });
    }
  });

  it("survives random tokens of the language", () => {
    const words = [
      "block",
      "model",
      "in",
      "out",
      "param",
      "repeat",
      "if",
      "else",
      "per",
      "task",
      "frozen",
      "with",
      "x",
      "=",
      "(",
      ")",
      "[",
      "]",
      "{",
      "}",
      ",",
      ";",
      ":",
      ".",
      "...",
      "+",
      "*",
      "<",
      "==",
      "1",
      "2.5",
      '"s"',
      "import",
      "tasks",
      "const",
      "train",
      "as",
      "\n",
    ];
    const bytes = randomBytes(20_000, 7);
    let text = "";
    for (const b of bytes) text += words[b % words.length] + " ";
    parseChecked(text);
  });

  it("survives an unterminated block comment", () => {
    const r = parseChecked("block A {\n  x = 1\n/* no end\n  y = 2\n}\n");
    expect(r.diagnostics.map((d) => d.code)).toEqual(["E0103"]);
    expect(r.comments).toHaveLength(1);
  });

  it("survives an unterminated string", () => {
    const r = parseChecked('const s = "no end\nconst t = 1\n');
    expect(r.diagnostics.map((d) => d.code)).toEqual(["E0102"]);
    expect(r.file.items).toHaveLength(2);
  });

  it("survives 10,000 nested parentheses", () => {
    const r = parseChecked("(".repeat(10_000));
    expect(r.diagnostics.map((d) => d.code)).toEqual(["E0105"]);
    const r2 = parseChecked("const x = " + "(".repeat(10_000) + "1" + ")".repeat(10_000));
    expect(r2.diagnostics.map((d) => d.code)).toEqual(["E0105"]);
    expect(r2.diagnostics[0]!.span.start).toBe("const x = ".length + 200);
  });

  it("survives 10,000 nested brackets, braces and prefix operators", () => {
    for (const text of [
      "const x = " + "[".repeat(10_000),
      "const x = " + "{a: ".repeat(10_000),
      "const x = " + "f(".repeat(10_000),
      "block A {\n" + "repeat 2 {\n".repeat(10_000),
      "const x = " + "-".repeat(10_000) + "1",
      "const x = " + "frozen ".repeat(10_000) + "y",
      "block A { in x: " + "[".repeat(10_000) + "T" + "]".repeat(10_000) + " }",
    ]) {
      expect(parseChecked(text).diagnostics.map((d) => d.code)).toEqual(["E0105"]);
    }
  });

  it("parses nesting up to the limit", () => {
    for (const [open, close] of [
      ["(", ")"],
      ["[", "]"],
      ["f(", ")"],
      ["{a: ", "}"],
    ] as const) {
      const text = "const x = " + open.repeat(200) + "1" + close.repeat(200);
      expect(parseChecked(text).diagnostics).toEqual([]);
    }
  });

  it("parses a 1 MB single line", () => {
    const text = "const x = 1" + " + 1".repeat(250_000);
    expect(text.length).toBeGreaterThan(1_000_000);
    const r = parseChecked(text);
    expect(r.diagnostics).toEqual([]);
    const c = r.file.items[0] as ConstDecl;
    expect(c.value.kind).toBe("BinaryExpr");
    expect(c.value.span).toEqual({ start: 10, end: text.length });
  });

  it("parses non-ASCII identifiers", () => {
    const r = parseChecked("tasks Sprachen { übersetzen, 翻译 }\nconst Δ𝑥 = größe\n");
    expect(r.diagnostics).toEqual([]);
    expect(withoutSpans(r.file.items)).toEqual([
      {
        kind: "TasksDecl",
        name: { kind: "Ident", name: "Sprachen" },
        members: [
          { kind: "Ident", name: "übersetzen" },
          { kind: "Ident", name: "翻译" },
        ],
      },
      {
        kind: "ConstDecl",
        name: { kind: "Ident", name: "Δ𝑥" },
        value: { kind: "NameExpr", name: { kind: "Ident", name: "größe" } },
      },
    ]);
  });

  it("gives the same tree for CRLF and LF line endings", () => {
    const lf = [
      "/// Doc line one.",
      "/// Doc line two.",
      "block A(d: Dim) {",
      "  in x: f32[B, d]",
      "  // a comment",
      "  y = f(x,",
      "        k: 2)",
      "  out y: f32[B, d]",
      "}",
      "",
    ].join("\n");
    const crlf = lf.replace(/\n/g, "\r\n");
    const a = parseChecked(lf);
    const b = parseChecked(crlf);
    expect(b.diagnostics).toEqual([]);
    expect(withoutSpans(b.file)).toEqual(withoutSpans(a.file));
    // Every node covers the same text, up to the carriage returns.
    const spansOf = (r: ParseResult) => {
      const spans: { start: number; end: number }[] = [];
      walkSpans(r.file, (n) => spans.push(n.span));
      return spans;
    };
    const sa = spansOf(a);
    const sb = spansOf(b);
    expect(sb).toHaveLength(sa.length);
    sa.forEach((s, i) => {
      const t = sb[i]!;
      expect(crlf.slice(t.start, t.end).replace(/\r/g, "")).toBe(lf.slice(s.start, s.end));
    });
  });

  it("parses a file of 10,000 lines", () => {
    const lines = ["block A(d: Dim) {", "  in x: f32[B, d]", "  out y: f32[B, d]"];
    for (let i = 0; i < 9_996; i++) lines.push(`  h${i} = Linear(d, 4*d)(x) + ${i}`);
    lines.push("  y = x", "}");
    const r = parseChecked(lines.join("\n"));
    expect(r.diagnostics).toEqual([]);
    expect(r.file.items).toHaveLength(1);
  });

  it("is pure: a parse does not depend on earlier parses", () => {
    const text = "block A {\n  x = 1\n  y = f(x)\n}\n";
    const first = parseSource(text, "a.moe");
    parseSource(randomBytes(4096, 9).toString("latin1"), "junk.moe");
    parseSource("block B {\n  x = (\n", "broken.moe");
    expect(parseSource(text, "a.moe")).toEqual(first);
  });
});
