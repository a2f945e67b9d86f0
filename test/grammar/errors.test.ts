/** One minimal bad program per lexing/parsing diagnostic code, with exact message and span. */
import { describe, expect, it } from "vitest";
import { parseSource } from "../../grammar/parse.js";
import { diagnosticsOf } from "./helpers.js";

describe("E0101 syntax error", () => {
  it("names the missing closing brace and where the block opened", () => {
    expect(diagnosticsOf("block A {\n  x = 1\n")).toEqual([
      {
        code: "E0101",
        at: "2:8",
        end: "3:1",
        message: "expected `}` to close the block opened at 1:9, found end of file",
      },
    ]);
  });

  it("names the token after `=` that is not an expression", () => {
    expect(diagnosticsOf("block A {\n  x = )\n}\n")).toEqual([
      {
        code: "E0101",
        at: "2:7",
        end: "2:8",
        message: "expected an expression after `=`, found `)`",
      },
    ]);
  });

  it("reports a stray comma as unexpected", () => {
    const [d, ...rest] = diagnosticsOf("block A {\n  x = 1\n  ,\n  y = 2\n}\n");
    expect(rest).toEqual([]);
    expect(d).toMatchObject({ code: "E0101", at: "3:3", end: "3:4", message: "unexpected `,`" });
  });

  it("hints at `=` for a binding without it", () => {
    expect(diagnosticsOf("block A {\n  x f(1)\n}\n")).toEqual([
      {
        code: "E0101",
        at: "2:5",
        end: "2:6",
        message: "expected `=` after `x`, found `f`",
        hint: "a binding is written `name = expression`",
      },
    ]);
  });

  it("hints at the type of a `param` without one", () => {
    expect(diagnosticsOf("block A {\n  param w\n}\n")).toEqual([
      {
        code: "E0101",
        at: "3:1",
        end: "3:2",
        message: "expected `:` and a type after `param w`, found `}`",
        hint: "write `param w: f32[n, m]`",
      },
    ]);
  });

  it("requires `task` after `per`", () => {
    expect(diagnosticsOf("block A {\n  a = per Bottleneck(8)\n}\n")).toEqual([
      {
        code: "E0101",
        at: "2:11",
        end: "2:21",
        message: "expected `task` after `per`, found `Bottleneck`",
        hint: "write `per task E`",
      },
    ]);
  });

  it("rejects chained comparisons", () => {
    expect(diagnosticsOf("const c = a < b < d")).toEqual([
      {
        code: "E0101",
        at: "1:17",
        end: "1:18",
        message: "comparison operators cannot be chained: unexpected `<`",
        hint: "use parentheses, e.g. `(a < b) == c`",
      },
    ]);
  });

  it("names the opening parenthesis of an unclosed call", () => {
    expect(diagnosticsOf("block A {\n  x = f(a\n  y = 2\n}\n")).toEqual([
      {
        code: "E0101",
        at: "3:3",
        end: "3:4",
        message: "expected `)` to close the argument list opened at 2:8, found `y`",
      },
    ]);
  });

  it("asks for a comma between arguments", () => {
    expect(diagnosticsOf("block A {\n  x = f(a b)\n}\n")).toEqual([
      {
        code: "E0101",
        at: "2:11",
        end: "2:12",
        message: "expected `,` or `)` after the argument, found `b`",
        hint: "separate arguments with commas",
      },
    ]);
  });

  it("explains reserved words used as names", () => {
    expect(diagnosticsOf("block A {\n  in in: f32[B]\n}\n")).toEqual([
      {
        code: "E0101",
        at: "2:6",
        end: "2:8",
        message: "expected a name after `in`, found `in`",
        hint: "`in` is a reserved word and cannot be used as a name",
      },
    ]);
  });

  it("explains top-level bindings", () => {
    expect(diagnosticsOf("vocab = 8000\n")).toEqual([
      {
        code: "E0101",
        at: "1:1",
        end: "1:6",
        message: "unexpected `vocab`: expected an item",
        hint: "a file-level binding needs `const`: `const vocab = ...`",
      },
    ]);
  });

  it("does not support `else if`", () => {
    const [d] = diagnosticsOf("block A {\n  if a { x = 1 } else if b { x = 2 }\n}\n");
    expect(d).toMatchObject({
      code: "E0101",
      at: "2:23",
      message: "expected `{` to start the `else` body, found `if`",
    });
  });

  it("points at the last character for an error at the end of the file", () => {
    const text = "const x =";
    const [d] = parseSource(text, "t.moe").diagnostics;
    expect(d?.span).toEqual({ start: text.length - 1, end: text.length });
    expect(d?.message).toBe("expected an expression after `=`, found end of file");
    expect(parseSource("", "t.moe").diagnostics).toEqual([]);
  });

  it("flags unknown escapes in strings", () => {
    expect(diagnosticsOf('const s = "a\\qb"')).toEqual([
      {
        code: "E0101",
        at: "1:13",
        end: "1:15",
        message: "unknown escape sequence `\\q` in string",
        hint: 'the escapes are \\", \\\\, \\n and \\t',
      },
    ]);
  });
});

describe("E0102 unterminated string", () => {
  it("spans the string up to the end of its line", () => {
    expect(diagnosticsOf('block A {\n  s = "abc\n  t = 1\n}\n')).toEqual([
      {
        code: "E0102",
        at: "2:7",
        end: "2:11",
        message: 'unterminated string: missing closing `"` before the end of the line',
        hint: 'close the string with `"`; strings cannot span lines (use \\n)',
      },
    ]);
  });

  it("treats an escaped quote as part of the string", () => {
    expect(diagnosticsOf('const s = "abc\\"').map((d) => d.code)).toEqual(["E0102"]);
  });
});

describe("E0103 unterminated block comment", () => {
  it("points at the `/*`", () => {
    expect(diagnosticsOf("block A {\n  x = 1 /* never closed\n  y = 2\n}\n")).toEqual([
      {
        code: "E0103",
        at: "2:9",
        end: "2:11",
        message: "unterminated block comment: this `/*` has no closing `*/`",
        hint: "close the comment with `*/` (block comments do not nest)",
      },
    ]);
  });
});

describe("E0104 unexpected character", () => {
  it("reports one diagnostic per run of bad characters", () => {
    expect(diagnosticsOf("block A {\n  x = a $$$ b\n}\n")).toEqual([
      { code: "E0104", at: "2:9", end: "2:12", message: "unexpected characters `$$$`" },
    ]);
  });

  it("hints at comments for `#`", () => {
    expect(diagnosticsOf("# not a comment\n")[0]).toEqual({
      code: "E0104",
      at: "1:1",
      end: "1:2",
      message: "unexpected character `#`",
      hint: "comments start with `//`",
    });
  });
});

describe("E0105 nesting too deep", () => {
  it("reports the first token deeper than 200 levels once and skips the item", () => {
    const text =
      "block A {\n  x = " + "(".repeat(250) + "1" + ")".repeat(250) + "\n}\nblock B { y = 1 }\n";
    expect(diagnosticsOf(text)).toEqual([
      {
        code: "E0105",
        // The block's `{` is level 1, so the 200th `(` is the first one too deep.
        at: "2:206",
        end: "2:207",
        message: "nesting deeper than 200 levels",
        hint: "split the expression into several bindings; the rest of this item is skipped",
      },
    ]);
    const items = parseSource(text, "t.moe").file.items;
    expect(items.map((i) => i.kind === "ComponentDecl" && i.name.name)).toEqual(["B"]);
  });
});

describe("E0106 invalid number", () => {
  it("rejects an exponent without digits", () => {
    expect(diagnosticsOf("const x = 1e")).toEqual([
      {
        code: "E0106",
        at: "1:11",
        end: "1:13",
        message: "invalid number `1e`: the exponent has no digits",
        hint: "write an exponent like `1e-5` or `3.0e2`",
      },
    ]);
  });

  it("rejects a point without digits", () => {
    expect(diagnosticsOf("const x = 1.")).toEqual([
      {
        code: "E0106",
        at: "1:11",
        end: "1:13",
        message: "invalid number `1.`: a decimal point must be followed by digits",
        hint: "write `1.0` or `1`",
      },
    ]);
  });

  it("rejects numbers too large to represent", () => {
    expect(diagnosticsOf("const x = 1e999").map((d) => [d.code, d.message])).toEqual([
      ["E0106", "number `1e999` is too large"],
    ]);
  });
});
