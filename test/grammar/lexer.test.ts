import { describe, expect, it } from "vitest";
import { tokenize } from "../../grammar/lexer.js";

function kinds(text: string): string[] {
  return tokenize(text, "t.moe").tokens.map((t) => `${t.tokenType.name}:${t.image}`);
}

describe("lexer", () => {
  it("separates keywords from names that start with them", () => {
    expect(kinds("in input if iffy import imports as ask per perk with without")).toEqual([
      "KwIn:in",
      "Identifier:input",
      "KwIf:if",
      "Identifier:iffy",
      "KwImport:import",
      "Identifier:imports",
      "KwAs:as",
      "Identifier:ask",
      "KwPer:per",
      "Identifier:perk",
      "KwWith:with",
      "Identifier:without",
    ]);
  });

  it("lexes `task` as a name", () => {
    expect(kinds("per task tasks")).toEqual(["KwPer:per", "Identifier:task", "KwTasks:tasks"]);
  });

  it("keeps comments in their own group", () => {
    const r = tokenize("a // line\n/// doc\nb /* block */ c", "t.moe");
    expect(r.tokens.map((t) => t.image)).toEqual(["a", "b", "c"]);
    expect(r.comments.map((t) => t.image)).toEqual(["// line", "/// doc", "/* block */"]);
    expect(r.diagnostics).toEqual([]);
  });

  it("lexes numbers with separators, fractions and exponents", () => {
    expect(kinds("0 256 1_000 1.25 1e-5 3.0e2 2E+3")).toEqual([
      "NumberLit:0",
      "NumberLit:256",
      "NumberLit:1_000",
      "NumberLit:1.25",
      "NumberLit:1e-5",
      "NumberLit:3.0e2",
      "NumberLit:2E+3",
    ]);
  });

  it("lexes Unicode names", () => {
    expect(kinds("übersetzen 翻译 Δ x2 _a 𝑥")).toEqual([
      "Identifier:übersetzen",
      "Identifier:翻译",
      "Identifier:Δ",
      "Identifier:x2",
      "Identifier:_a",
      "Identifier:𝑥",
    ]);
  });

  it("lexes punctuation, longest first", () => {
    expect(kinds("... . -> - == = != ! <= < >= > { } ( ) [ ] , ; : + * / % @")).toEqual([
      "Ellipsis:...",
      "Dot:.",
      "Arrow:->",
      "Minus:-",
      "EqEq:==",
      "Eq:=",
      "NotEq:!=",
      "Bang:!",
      "LtEq:<=",
      "Lt:<",
      "GtEq:>=",
      "Gt:>",
      "LBrace:{",
      "RBrace:}",
      "LParen:(",
      "RParen:)",
      "LBracket:[",
      "RBracket:]",
      "Comma:,",
      "Semicolon:;",
      "Colon::",
      "Plus:+",
      "Star:*",
      "Slash:/",
      "Percent:%",
      "At:@",
    ]);
  });

  it("keeps lexing after a bad character", () => {
    const r = tokenize("a ¤¤ b ` c", "t.moe");
    expect(r.tokens.map((t) => t.image)).toEqual(["a", "b", "c"]);
    expect(r.diagnostics.map((d) => [d.code, d.span.start, d.span.end])).toEqual([
      ["E0104", 2, 4],
      ["E0104", 7, 8],
    ]);
  });
});
