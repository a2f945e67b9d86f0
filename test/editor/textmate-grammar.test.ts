// The VS Code extension's TextMate grammar (editor/vscode/syntaxes/moe.tmLanguage.json),
// loaded with the engine VS Code uses (vscode-textmate + Oniguruma): every example tokenizes,
// and keywords, declarations' names, types, numbers, strings and comments get their scopes.
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import oniguruma from "vscode-oniguruma";
import vsctm from "vscode-textmate";
import { beforeAll, describe, expect, it } from "vitest";

const root = path.resolve(import.meta.dirname, "../..");
const grammarPath = path.join(root, "editor/vscode/syntaxes/moe.tmLanguage.json");
let grammar: vsctm.IGrammar;

beforeAll(async () => {
  const require = createRequire(import.meta.url);
  const wasm = fs.readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm"));
  await oniguruma.loadWASM(wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.byteLength));
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (patterns: string[]) => new oniguruma.OnigScanner(patterns),
      createOnigString: (s: string) => new oniguruma.OnigString(s),
    }),
    loadGrammar: async (scope: string) =>
      scope === "source.moe"
        ? vsctm.parseRawGrammar(fs.readFileSync(grammarPath, "utf8"), grammarPath)
        : null,
  });
  grammar = (await registry.loadGrammar("source.moe"))!;
});

/** Each token's text with its innermost scope. */
function tokenize(text: string): [string, string][] {
  let stack = vsctm.INITIAL;
  const out: [string, string][] = [];
  for (const line of text.split("\n")) {
    const r = grammar.tokenizeLine(line, stack);
    for (const t of r.tokens) {
      const s = line.slice(t.startIndex, t.endIndex);
      if (s.trim()) out.push([s.trim(), t.scopes.at(-1)!]);
    }
    stack = r.ruleStack;
  }
  return out;
}

function scopeOf(tokens: [string, string][], text: string): string | undefined {
  return tokens.find(([t]) => t === text)?.[1];
}

describe("TextMate grammar", () => {
  it("gives keywords, names, types, literals and comments their scopes", () => {
    const tokens = tokenize(
      [
        "// a comment",
        "/// The doc.",
        "import std.nn { Linear as Lin }",
        "tasks Lang { en_de, en_fr }",
        "const vocab: Int = 50_257",
        "block Expert(d: Dim, act: Act = gelu) {",
        "  in x: f32[B, ..., d]",
        "  param w: f32[d, d] = normal(0.02)",
        "  repeat 2 as layers { x = x @ w }",
        "  y = per task Lin(d, d, bias: true)(softmax(x)) /* block */",
        "}",
      ].join("\n"),
    );
    expect(scopeOf(tokens, "// a comment")).toBe("comment.line.double-slash.moe");
    expect(scopeOf(tokens, "/// The doc.")).toBe("comment.line.documentation.moe");
    expect(scopeOf(tokens, "import")).toBe("keyword.control.import.moe");
    expect(scopeOf(tokens, "std.nn")).toBe("entity.name.namespace.moe");
    expect(scopeOf(tokens, "Lin")).toBe("entity.name.type.alias.moe");
    expect(scopeOf(tokens, "Lang")).toBe("entity.name.type.enum.moe");
    expect(scopeOf(tokens, "en_fr")).toBe("variable.other.enummember.moe");
    expect(scopeOf(tokens, "vocab")).toBe("variable.other.constant.moe");
    expect(scopeOf(tokens, "50_257")).toBe("constant.numeric.moe");
    expect(scopeOf(tokens, "block")).toBe("storage.type.component.moe");
    expect(scopeOf(tokens, "Expert")).toBe("entity.name.type.class.moe");
    expect(scopeOf(tokens, "Dim")).toBe("support.type.moe");
    expect(scopeOf(tokens, "f32")).toBe("support.type.primitive.moe");
    expect(scopeOf(tokens, "...")).toBe("keyword.operator.ellipsis.moe");
    expect(scopeOf(tokens, "x")).toBe("variable.parameter.port.moe");
    expect(scopeOf(tokens, "w")).toBe("variable.other.property.moe");
    expect(scopeOf(tokens, "normal")).toBe("support.function.builtin.moe");
    expect(scopeOf(tokens, "repeat")).toBe("keyword.control.repeat.moe");
    expect(scopeOf(tokens, "layers")).toBe("entity.name.label.moe");
    expect(scopeOf(tokens, "@")).toBe("keyword.operator.arithmetic.moe");
    expect(scopeOf(tokens, "per")).toBe("keyword.other.per-task.moe");
    expect(scopeOf(tokens, "bias")).toBe("variable.parameter.named-argument.moe");
    expect(scopeOf(tokens, "true")).toBe("constant.language.boolean.moe");
    expect(scopeOf(tokens, "/*")).toBe("punctuation.definition.comment.begin.moe");
  });

  it("tokenizes every example and standard-library module", () => {
    const files = [
      ...fs.readdirSync(path.join(root, "examples")).map((f) => path.join(root, "examples", f)),
      ...fs.readdirSync(path.join(root, "stdlib")).map((f) => path.join(root, "stdlib", f)),
    ].filter((f) => f.endsWith(".moe"));
    for (const f of files) {
      const tokens = tokenize(fs.readFileSync(f, "utf8"));
      expect(tokens.length, f).toBeGreaterThan(10);
      // Every keyword at the start of a declaration is recognised.
      for (const [text, scope] of tokens) {
        if (["block", "model", "primitive"].includes(text))
          expect(scope, f).toBe("storage.type.component.moe");
      }
    }
  });
});
