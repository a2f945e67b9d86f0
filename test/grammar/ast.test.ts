/** Targeted checks of the tree the parser builds (the goldens cover the rest). */
import { describe, expect, it } from "vitest";
import type { ComponentDecl, ConstDecl, Expr, ImportDecl, Stmt } from "../../grammar/ast.js";
import { parseSource } from "../../grammar/parse.js";
import { withoutSpans } from "./ast-print.js";

function constValue(src: string): Expr {
  const r = parseSource(`const c = ${src}`, "t.moe");
  expect(r.diagnostics).toEqual([]);
  return (r.file.items[0] as ConstDecl).value;
}

/** A compact rendering of an expression: binary operations fully parenthesized. */
function show(e: Expr): string {
  switch (e.kind) {
    case "NameExpr":
      return e.name.name;
    case "NumberLit":
      return String(e.value);
    case "BinaryExpr":
      return `(${show(e.left)} ${e.op} ${show(e.right)})`;
    case "UnaryExpr":
      return `(${e.op}${show(e.operand)})`;
    case "CallExpr":
      return `${show(e.callee)}(${e.args.map((a) => (a.name ? `${a.name.name}: ` : "") + show(a.value)).join(", ")})`;
    case "MemberExpr":
      return `${show(e.object)}.${e.member.name}`;
    case "WithExpr":
      return `(${show(e.base)} with ${show(e.adapter)})`;
    case "PerTaskExpr":
      return `(per task ${show(e.operand)})`;
    case "FrozenExpr":
      return `(frozen ${show(e.operand)})`;
    case "ListExpr":
      return `[${e.elements.map(show).join(", ")}]`;
    case "RepeatListExpr":
      return `[${show(e.element)}; ${show(e.count)}]`;
    default:
      return e.kind;
  }
}

function body(src: string): Stmt[] {
  const r = parseSource(src, "t.moe");
  expect(r.diagnostics).toEqual([]);
  return (r.file.items[0] as ComponentDecl).body;
}

describe("expressions", () => {
  it("applies precedence and left associativity", () => {
    expect(show(constValue("a + b * c - d"))).toBe("((a + (b * c)) - d)");
    expect(show(constValue("a / b % c @ d * e"))).toBe("((((a / b) % c) @ d) * e)");
    expect(show(constValue("a - b - c"))).toBe("((a - b) - c)");
    expect(show(constValue("a + 1 <= b * 2"))).toBe("((a + 1) <= (b * 2))");
    expect(show(constValue("(a + b) * c"))).toBe("((a + b) * c)");
    expect(show(constValue("-a * b"))).toBe("((-a) * b)");
    expect(show(constValue("- -a"))).toBe("(-(-a))");
    expect(show(constValue("-f(x).y"))).toBe("(-f(x).y)");
  });

  it("binds `with` loosest and prefixes tighter than `with`", () => {
    expect(show(constValue("a + b with L(r: 8) with B"))).toBe("(((a + b) with L(r: 8)) with B)");
    expect(show(constValue("frozen base with LoRA(r: 8)"))).toBe("((frozen base) with LoRA(r: 8))");
    expect(show(constValue("per task frozen E(d)"))).toBe("(per task (frozen E(d)))");
    expect(show(constValue("-per task f(x)"))).toBe("(-(per task f(x)))");
  });

  it("parses calls, members, lists and repeat lists", () => {
    expect(show(constValue("Linear(d, 4*d)(x).weight"))).toBe("Linear(d, (4 * d))(x).weight");
    expect(show(constValue("[[base with L(r: 8); 4]; 3]"))).toBe("[[(base with L(r: 8)); 4]; 3]");
    expect(show(constValue("[a, b,]"))).toBe("[a, b]");
    expect(show(constValue("[]"))).toBe("[]");
  });

  it("reads numbers, strings, booleans and records", () => {
    const v = (s: string) => withoutSpans(constValue(s));
    expect(v("1_000")).toEqual({ kind: "NumberLit", value: 1000, isInt: true });
    expect(v("1.25")).toEqual({ kind: "NumberLit", value: 1.25, isInt: false });
    expect(v("1e-5")).toEqual({ kind: "NumberLit", value: 1e-5, isInt: false });
    expect(v("3.0e2")).toEqual({ kind: "NumberLit", value: 300, isInt: false });
    expect(v('"a\\"b\\\\c\\nd\\te"')).toEqual({ kind: "StringLit", value: 'a"b\\c\nd\te' });
    expect(v("true")).toEqual({ kind: "BoolLit", value: true });
    expect(v("{ en_de: 1, en_fr: 2, }")).toEqual({
      kind: "RecordExpr",
      fields: [
        {
          name: { kind: "Ident", name: "en_de" },
          value: { kind: "NumberLit", value: 1, isInt: true },
        },
        {
          name: { kind: "Ident", name: "en_fr" },
          value: { kind: "NumberLit", value: 2, isInt: true },
        },
      ],
    });
  });

  it("gives a parenthesized expression the span of its parentheses", () => {
    const text = "const c = (a + b)";
    const value = (parseSource(text, "t.moe").file.items[0] as ConstDecl).value;
    expect(text.slice(value.span.start, value.span.end)).toBe("(a + b)");
  });
});

describe("declarations", () => {
  it("parses both import forms with aliases", () => {
    const r = parseSource('import std.nn { Linear as L, FFN, }\nimport "./x.moe" { A }', "t.moe");
    expect(r.diagnostics).toEqual([]);
    const [a, b] = r.file.items as ImportDecl[];
    expect(withoutSpans(a!.module)).toEqual({
      kind: "std",
      parts: [
        { kind: "Ident", name: "std" },
        { kind: "Ident", name: "nn" },
      ],
    });
    expect(a!.names.map((n) => [n.name.name, n.alias?.name])).toEqual([
      ["Linear", "L"],
      ["FFN", undefined],
    ]);
    expect(withoutSpans(b!.module)).toEqual({ kind: "file", path: "./x.moe" });
  });

  it("attaches doc comments to the declaration right after them", () => {
    const text = [
      "/// Tasks.",
      "///   indented",
      "///no space",
      "tasks T { a }",
      "/// Not attached: a plain comment follows.",
      "// plain",
      "enum E { x }",
      "/// The block.",
      "block B {",
      "  /// Port doc.",
      "  in x: f32[B]",
      "  /// Weight doc.",
      "  param w: f32[B]",
      "  /// Binding doc.",
      "  y = x",
      "  z = y",
      "}",
    ].join("\n");
    const r = parseSource(text, "t.moe");
    expect(r.diagnostics).toEqual([]);
    const [t, e, b] = r.file.items as [{ doc?: string }, { doc?: string }, ComponentDecl];
    expect(t.doc).toBe("Tasks.\n  indented\nno space");
    expect(e.doc).toBeUndefined();
    expect(b.doc).toBe("The block.");
    expect(b.body.map((s) => ("doc" in s ? s.doc : undefined))).toEqual([
      "Port doc.",
      "Weight doc.",
      "Binding doc.",
      undefined,
    ]);
  });

  it("parses types: tensors with `...`, expressions, scalars and lists", () => {
    const [port, weight] = body(
      "block A(experts: [[Module]]) {\n  in x: f32[..., 4*d, d/heads]\n  param g: f32[]\n}",
    );
    expect(port!.kind === "PortDecl" && withoutSpans(port.type)).toEqual({
      kind: "NamedType",
      name: { kind: "Ident", name: "f32" },
      dims: [
        { kind: "Ellipsis" },
        {
          kind: "BinaryExpr",
          op: "*",
          left: { kind: "NumberLit", value: 4, isInt: true },
          right: { kind: "NameExpr", name: { kind: "Ident", name: "d" } },
        },
        {
          kind: "BinaryExpr",
          op: "/",
          left: { kind: "NameExpr", name: { kind: "Ident", name: "d" } },
          right: { kind: "NameExpr", name: { kind: "Ident", name: "heads" } },
        },
      ],
    });
    expect(weight!.kind === "WeightDecl" && withoutSpans(weight.type)).toEqual({
      kind: "NamedType",
      name: { kind: "Ident", name: "f32" },
      dims: [],
    });
    const r = parseSource("block A(experts: [[Module]]) {}", "t.moe");
    const param = (r.file.items[0] as ComponentDecl).params[0]!;
    expect(withoutSpans(param.type)).toEqual({
      kind: "ListType",
      element: {
        kind: "ListType",
        element: { kind: "NamedType", name: { kind: "Ident", name: "Module" } },
      },
    });
  });

  it("parses statements: repeat with and without a label, if/else, `;`", () => {
    const stmts = body(
      "block A {\n  repeat n { x = 1 }; repeat 2 as blocks { y = 2 }\n  if c { a = 1 } else { a = 2 }\n  if d { b = 1 };\n}",
    );
    expect(stmts.map((s) => s.kind)).toEqual(["RepeatStmt", "RepeatStmt", "IfStmt", "IfStmt"]);
    const [r1, r2, i1, i2] = stmts as [Stmt, Stmt, Stmt, Stmt];
    expect(r1.kind === "RepeatStmt" && r1.label).toBeUndefined();
    expect(r2.kind === "RepeatStmt" && r2.label?.name).toBe("blocks");
    expect(i1.kind === "IfStmt" && i1.else?.length).toBe(1);
    expect(i2.kind === "IfStmt" && i2.else).toBeUndefined();
  });

  it("returns every comment with its span", () => {
    const text = "// a\nconst x = 1 /* b */\n/// c\n";
    const r = parseSource(text, "t.moe");
    expect(r.comments.map((c) => [c.text, text.slice(c.span.start, c.span.end)])).toEqual([
      ["// a", "// a"],
      ["/* b */", "/* b */"],
      ["/// c", "/// c"],
    ]);
  });
});
