/** Error recovery: one typo gives one diagnostic, and parsing goes on with the next statement. */
import { describe, expect, it } from "vitest";
import type { ComponentDecl, Item } from "../../grammar/ast.js";
import { parseSource } from "../../grammar/parse.js";
import { diagnosticsOf } from "./helpers.js";

function outline(items: Item[]): string[] {
  return items.map((item) => {
    if (item.kind === "ComponentDecl" || item.kind === "TrainDecl") {
      const body = item.body.map((s) => {
        if (s.kind === "Binding") return `${s.target.name}=${s.value.kind}`;
        if (s.kind === "PortDecl" || s.kind === "WeightDecl") return `${s.kind}:${s.name.name}`;
        return s.kind;
      });
      return `${item.name.name}{${body.join(", ")}}`;
    }
    if (item.kind === "ImportDecl") return "import";
    return `${item.kind}:${item.name.name}`;
  });
}

describe("recovery", () => {
  it("reports three typos in three blocks exactly once each and keeps the rest", () => {
    const text = [
      "tasks Lang { en_de, en_fr }",
      "",
      "block First(d: Dim) {",
      "  in x: f32[B, d]",
      "  h = Linear(d d)(x)",
      "  y = h",
      "}",
      "",
      "block Second(d: Dim) {",
      "  in x f32[B, d]",
      "  y = x",
      "}",
      "",
      "model Third {",
      "  z = (x +",
      "  y = x",
      "}",
      "",
    ].join("\n");
    const found = diagnosticsOf(text);
    expect(found.map((d) => `${d.code} ${d.at}`)).toEqual([
      "E0101 5:16",
      "E0101 10:8",
      "E0101 16:3",
    ]);
    const result = parseSource(text, "t.moe");
    expect(outline(result.file.items)).toEqual([
      "TasksDecl:Lang",
      "First{PortDecl:x, h=CallExpr, y=NameExpr}",
      "Second{PortDecl:x, y=NameExpr}",
      "Third{z=ErrorExpr, y=NameExpr}",
    ]);
  });

  it("suppresses further errors in the same statement", () => {
    // Two problems in one statement, then a third in the next one.
    const found = diagnosticsOf("block A {\n  x = f(a b) + g(c d)\n  y = )\n}\n");
    expect(found.map((d) => d.at)).toEqual(["2:11", "3:7"]);
  });

  it("re-syncs at the next statement after a broken one", () => {
    const text = "block A {\n  in x: f32[B]\n  x: f32[B]\n  out y: f32[B]\n  y = x\n}\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual([
      "3:4 expected `=` after `x`, found `:`",
    ]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual([
      "A{PortDecl:x, PortDecl:y, y=NameExpr}",
    ]);
  });

  it("re-syncs at the next item after a broken header", () => {
    const text = "tasks L { a b c\nblock B {\n  y = 1\n}\n";
    expect(diagnosticsOf(text).map((d) => d.at)).toEqual(["1:13"]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual([
      "TasksDecl:L",
      "B{y=NumberLit}",
    ]);
  });

  it("keeps the body when a parameter list is broken", () => {
    const text = "block A(d Dim, h) {\n  y = 1\n}\n";
    expect(diagnosticsOf(text).map((d) => d.at)).toEqual(["1:11"]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual(["A{y=NumberLit}"]);
  });

  it("does not glue a statement missing `=` to the next one", () => {
    const text = "block A {\n  b\n  y = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual([
      "3:3 expected `=` after `b`, found `y`",
    ]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual(["A{y=NumberLit}"]);
  });

  it("gives one diagnostic for a bad character and its consequences", () => {
    const text = "block A {\n  x = a # b\n  y = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => d.code)).toEqual(["E0104"]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual(["A{x=NameExpr, y=NumberLit}"]);
  });

  it("gives one diagnostic for an unterminated string that hides a closing parenthesis", () => {
    const text = 'block A {\n  x = f("abc)\n  y = 2\n}\n';
    expect(diagnosticsOf(text).map((d) => d.code)).toEqual(["E0102"]);
  });

  it("gives one diagnostic for an unterminated comment that hides the end of the file", () => {
    expect(diagnosticsOf("block A {\n  x = 1 /*\n}\n").map((d) => d.code)).toEqual(["E0103"]);
  });

  it("keys a reserved word used as a binding name to one diagnostic per use", () => {
    const text = "block A {\n  block = Linear(4, 4)\n  y = block(x)\n  z = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual([
      "2:3 `block` is a reserved word and cannot name a binding",
      "3:7 expected an expression after `=`, found `block`",
    ]);
    // The body goes on after both: `z` is still a binding of A.
    expect(outline(parseSource(text, "t.moe").file.items)[0]).toMatch(/z=NumberLit/);
  });

  it("keys a reserved word used as a named argument to one diagnostic", () => {
    const text = "block A {\n  l = Linear(in: 256, out: 512)\n  y = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual([
      "2:14 unexpected reserved word `in`",
    ]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual(["A{l=CallExpr, y=NumberLit}"]);
  });

  it("treats an unclosed parenthesis before the next statement as one error", () => {
    const text = "block A {\n  x = (a + b\n  y = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual([
      "3:3 expected `)` to close the `(` opened at 2:7, found `y`",
    ]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual([
      "A{x=BinaryExpr, y=NumberLit}",
    ]);
  });

  it("reports an error again after a block closed cleanly", () => {
    const text = "block A {\n  x = f(in: 1)\n}\nx = 1\n";
    expect(diagnosticsOf(text).map((d) => d.at)).toEqual(["2:9", "4:1"]);
  });

  it("ends at a missing `}` before the next item and keeps both items", () => {
    const text = "block A {\n  repeat 3 {\n    x = 1\n}\nblock B { y = 2 }\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual([
      "5:1 expected `}` to close the block opened at 1:9, found `block`",
    ]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual([
      "A{RepeatStmt}",
      "B{y=NumberLit}",
    ]);
  });

  it("abandons a `repeat` without a body and keeps the enclosing block intact", () => {
    const text = "block A {\n  repeat 3\n  y = 2\n}\nblock B { z = 1 }\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual([
      "3:3 expected `{` to start the body of `repeat`, found `y`",
    ]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual([
      "A{y=NumberLit}",
      "B{z=NumberLit}",
    ]);
  });

  it("invents the `{` of a body only when a `}` further on closes nothing", () => {
    const text = "block A {\n  repeat 3\n    x = 1\n  }\n  y = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => d.at)).toEqual(["3:5"]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual(["A{RepeatStmt, y=NumberLit}"]);
  });

  it("skips the body of a statement whose keyword was forgotten", () => {
    // `if` deleted: `norm { ... }` must not leave the statements of that body in the block.
    const text = "block A {\n  norm {\n    x = 1\n  }\n  y = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => d.at)).toEqual(["2:8"]);
    expect(outline(parseSource(text, "t.moe").file.items)).toEqual(["A{y=NumberLit}"]);
  });

  it("reports `if` without a condition once", () => {
    expect(diagnosticsOf("block A {\n  if { x = 1 }\n  y = 2\n}\n")).toEqual([
      {
        code: "E0101",
        at: "2:6",
        end: "2:7",
        message: "expected a condition after `if`, found `{`",
      },
    ]);
  });

  it("reports `=` in an `if` condition once, with a hint", () => {
    expect(diagnosticsOf("block A {\n  if a = b {\n    x = 1\n  }\n  y = 2\n}\n")).toEqual([
      {
        code: "E0101",
        at: "2:8",
        end: "2:9",
        message: "expected `{` to start the body of `if`, found `=`",
        hint: "use `==` to compare values",
      },
    ]);
  });

  it("ends the body of `if` at an `else` when its `}` is missing", () => {
    const text = "block A {\n  if c {\n    x = 1\n  else {\n    x = 2\n  }\n  y = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual([
      "4:3 expected `}` to close the body of `if` opened at 2:8, found `else`",
    ]);
    const a = parseSource(text, "t.moe").file.items[0] as ComponentDecl;
    expect(a.body.map((s) => s.kind)).toEqual(["IfStmt", "Binding"]);
    const ifStmt = a.body[0]!;
    expect(ifStmt.kind === "IfStmt" && [ifStmt.then.length, ifStmt.else?.length]).toEqual([1, 1]);
  });

  it("excuses the missing `}` caused by a stray `{`", () => {
    const text = "block A {\n  repeat 2 { {\n    x = 1\n  }\n  y = 2\n}\n";
    expect(diagnosticsOf(text).map((d) => `${d.at} ${d.message}`)).toEqual(["2:14 unexpected `{`"]);
  });

  it("reports a port without a type once", () => {
    expect(diagnosticsOf("block A {\n  in x:\n  y = 2\n}\n")).toEqual([
      {
        code: "E0101",
        at: "3:3",
        end: "3:4",
        message: "expected a type after `:`, found `y`",
        hint: "write the port's type, e.g. `in x: f32[B, T, d]`",
      },
    ]);
  });

  it("keeps a binding whose value is broken as an ErrorExpr", () => {
    const result = parseSource("block A {\n  x = f(1,\n  y = 2\n}\n", "t.moe");
    const a = result.file.items[0] as ComponentDecl;
    expect(a.body.map((s) => s.kind === "Binding" && [s.target.name, s.value.kind])).toEqual([
      ["x", "ErrorExpr"],
      ["y", "NumberLit"],
    ]);
  });
});

describe("single-token typos in the grammar's cases", () => {
  it("almost always give exactly one diagnostic", async () => {
    const { readdirSync, readFileSync } = await import("node:fs");
    const { tokenize } = await import("../../grammar/lexer.js");
    const dir = new URL("./cases/", import.meta.url);
    let mutations = 0;
    let noisy = 0;
    for (const name of readdirSync(dir)) {
      if (!name.endsWith(".moe") || name.startsWith("recovery-")) continue;
      const text = readFileSync(new URL(name, dir), "utf8");
      for (const t of tokenize(text, name).tokens) {
        const end = t.startOffset + t.image.length;
        for (const mutated of [
          text.slice(0, t.startOffset) + text.slice(end), // deleted
          text.slice(0, t.startOffset) + t.image + " " + text.slice(t.startOffset), // doubled
        ]) {
          const n = parseSource(mutated, name).diagnostics.length;
          mutations++;
          if (n > 1) noisy++;
        }
      }
    }
    expect(mutations).toBeGreaterThan(1000);
    expect(noisy / mutations).toBeLessThan(0.01);
  });
});
