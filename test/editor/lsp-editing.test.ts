// Completion, signature help, code actions, formatting, inlay hints, code lenses, semantic
// tokens, folding, the outline and workspace symbols through the protocol, from the real
// server process. Inline sources mark the cursor with `<|>`.
import * as fs from "node:fs";
import * as path from "node:path";
import type {
  CodeAction,
  CodeLens,
  CompletionItem,
  CompletionList,
  Diagnostic,
  DocumentSymbol,
  FoldingRange,
  InlayHint,
  InitializeResult,
  SemanticTokens,
  SignatureHelp,
  SymbolInformation,
  TextEdit,
} from "vscode-languageserver";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LspClient, fileUri, positionOf, repoRoot, withCursors } from "./lsp-client.js";

let client: LspClient;
let counter = 0;

beforeAll(async () => {
  client = await LspClient.start({ rootDir: path.join(repoRoot, "examples") });
});
afterAll(async () => {
  await client.stop();
});

/** Opens `source` (with a `<|>` cursor) as a new document and waits for its first analysis. */
async function openWithCursor(source: string) {
  const { text, cursors } = withCursors(source);
  const uri = fileUri(path.join(repoRoot, "examples", `__scratch${counter++}.moe`));
  await client.open(uri, text);
  const diagnostics = (await client.waitForDiagnostics(uri)).diagnostics;
  return { uri, text, position: cursors[0]!, diagnostics };
}

async function complete(source: string): Promise<CompletionItem[]> {
  const d = await openWithCursor(source);
  const list = await client.request<CompletionList>("textDocument/completion", {
    textDocument: { uri: d.uri },
    position: d.position,
  });
  await client.close(d.uri);
  return list.items;
}

const labels = (items: CompletionItem[]) => items.map((i) => i.label);

const HEAD = `import std.nn { Linear }
tasks Lang { en_de, en_fr }
block A(d: Dim) {
  in x: f32[B, T, d]
  in task: Lang[B]
  out y: f32[B, T, d]
  q = Linear(d, d)
`;
const TAIL = `  y = x
}
`;

function example(name: string): { uri: string; text: string } {
  const file = path.join(repoRoot, "examples", name);
  return { uri: fileUri(file), text: fs.readFileSync(file, "utf8") };
}

describe("completion", () => {
  it("offers keywords and the names in scope at a statement", async () => {
    const items = await complete(HEAD + "  <|>\n" + TAIL);
    expect(labels(items)).toEqual(expect.arrayContaining(["in", "out", "param", "repeat", "if"]));
    const byLabel = new Map(items.map((i) => [i.label, i]));
    expect(byLabel.get("d")?.detail).toBe("(parameter) d: Dim");
    expect(byLabel.get("T")?.detail).toBe("(dimension)");
    expect(byLabel.get("x")?.detail).toBe("(input) f32[B, T, d]");
    expect(byLabel.get("q")?.detail).toBe("instance of Linear: (f32[..., d]) -> f32[..., d]");
    expect(byLabel.get("softmax")?.detail).toBe("softmax(x, axis: Int = -1)");
  });

  it("offers a standard-library component as a snippet and adds its import", async () => {
    const items = await complete(HEAD + "  ffn = FF<|>\n" + TAIL);
    const ffn = items.find((i) => i.label === "FFN")!;
    expect(ffn.insertText).toBe("FFN(${1:d}, ${2:hidden}, act: ${3:gelu}, bias: ${4:true})$0");
    expect(ffn.insertTextFormat).toBe(2);
    expect(ffn.detail).toBe(
      "block FFN(d: Dim, hidden: Dim, act: Act = gelu, bias: Bool = true) — import from std.nn",
    );
    // Into the existing `import std.nn { Linear }`.
    expect(ffn.additionalTextEdits).toEqual([
      {
        range: { start: { line: 0, character: 22 }, end: { line: 0, character: 22 } },
        newText: ", FFN",
      },
    ]);
    const moe = items.find((i) => i.label === "MoE")!;
    expect(moe.additionalTextEdits?.[0]?.newText).toBe("\nimport std.route { MoE }");
    expect(labels(items)).not.toContain("ffn");
  });

  it("offers the named arguments a call has not given yet", async () => {
    const items = await complete(HEAD + "  z = Linear(d, d, <|>)\n" + TAIL);
    expect(items[0]).toMatchObject({
      label: "bias:",
      insertText: "bias: ${1:true}",
      detail: "bias: Bool = true",
    });
    expect(labels(items)).not.toContain("in_features:");
  });

  it("offers an enum parameter's values, the default preselected", async () => {
    const items = await complete(HEAD + "  f = FFN(d, 4 * d, act: <|>)\n" + TAIL);
    const acts = items.filter((i) => i.detail?.startsWith("Act"));
    expect(labels(acts)).toEqual([
      "identity",
      "relu",
      "gelu",
      "gelu_tanh",
      "silu",
      "tanh",
      "sigmoid",
    ]);
    expect(acts.find((i) => i.preselect)?.label).toBe("gelu");
  });

  it("offers task names as record keys", async () => {
    const items = await complete(
      "import std.adapt { Bottleneck }\n" +
        HEAD +
        "  ad = per task Bottleneck(d, r: { <|> })\n" +
        TAIL,
    );
    expect(items.map((i) => [i.label, i.insertText])).toEqual([
      ["en_de", "en_de: $0"],
      ["en_fr", "en_fr: $0"],
    ]);
  });

  it("offers dims inside a tensor type, types after a port's colon", async () => {
    const dims = await complete(HEAD.replace("  in task: Lang[B]", "  in z: f32[<|>]") + TAIL);
    expect(labels(dims).sort()).toEqual(["...", "B", "T", "d"]);
    const types = await complete(HEAD.replace("  in task: Lang[B]", "  in t: <|>") + TAIL);
    expect(labels(types)).toEqual(expect.arrayContaining(["Dim", "f32", "bf16", "i32", "Lang"]));
  });

  it("offers an instance's weights and parts, and a module's names in an import", async () => {
    const members = await complete(HEAD + "  w = q.<|>\n" + TAIL);
    expect(members.map((i) => [i.label, i.detail])).toEqual([
      ["weight", "f32[out_features, in_features]"],
      ["bias", "f32[out_features]"],
    ]);
    const names = await complete("import std.route { MoE, <|> }\n");
    expect(labels(names)).toEqual(expect.arrayContaining(["TopK", "TaskMap", "SoftmaxOrder"]));
    expect(labels(names)).not.toContain("MoE");
  });
});

describe("signature help", () => {
  async function help(source: string) {
    const d = await openWithCursor(source);
    const h = await client.request<SignatureHelp>("textDocument/signatureHelp", {
      textDocument: { uri: d.uri },
      position: d.position,
    });
    await client.close(d.uri);
    return h;
  }

  it("shows a component's parameters with the active one", async () => {
    const h = await help(HEAD + "  z = Linear(d, <|>\n" + TAIL);
    expect(h.signatures[0]!.label).toBe(
      "Linear(in_features: Dim, out_features: Dim, bias: Bool = true)",
    );
    expect(h.activeParameter).toBe(1);
    const named = await help(HEAD + "  z = Linear(d, d, bias: <|>)\n" + TAIL);
    expect(named.activeParameter).toBe(2);
  });

  it("shows a builtin's signature and an instance's inputs", async () => {
    const b = await help(HEAD + "  z = softmax(x, <|>)\n" + TAIL);
    expect(b.signatures[0]!.label).toBe("softmax(x, axis: Int = -1)");
    expect(b.activeParameter).toBe(1);
    const inst = await help(HEAD + "  z = q(<|>x)\n" + TAIL);
    expect(inst.signatures[0]!.label).toBe("q(x: f32[..., d]) -> f32[..., d]");
  });
});

describe("code actions", () => {
  async function actions(source: string) {
    const d = await openWithCursor(source);
    const result = await client.request<CodeAction[]>("textDocument/codeAction", {
      textDocument: { uri: d.uri },
      range: d.diagnostics[0]?.range ?? { start: d.position, end: d.position },
      context: { diagnostics: d.diagnostics as Diagnostic[] },
    });
    await client.close(d.uri);
    return { uri: d.uri, result, diagnostics: d.diagnostics };
  }

  it("replace a misspelt name with the suggestion", async () => {
    const { uri, result } = await actions(HEAD + "  y = qq(x)\n}\n");
    expect(result.map((a) => a.title)).toContain("Replace `qq` with `q`");
    const fix = result.find((a) => a.title === "Replace `qq` with `q`")!;
    expect(fix.edit?.changes?.[uri]).toEqual([
      { range: { start: { line: 7, character: 6 }, end: { line: 7, character: 8 } }, newText: "q" },
    ]);
  });

  it("import an unknown name the standard library has", async () => {
    const { uri, result, diagnostics } = await actions(
      HEAD + "  n = LayerNorm(d)\n  y = n(x)\n}\n",
    );
    expect(diagnostics[0]).toMatchObject({ code: "E0201", message: "unknown name `LayerNorm`" });
    const fix = result.find((a) => a.title === "Import `LayerNorm` from std.nn")!;
    expect(fix.edit?.changes?.[uri]).toEqual([
      {
        range: { start: { line: 0, character: 22 }, end: { line: 0, character: 22 } },
        newText: ", LayerNorm",
      },
    ]);
  });
});

describe("formatting", () => {
  // The formatter (compiler/format/format-source.ts) is written separately; the server loads it on demand.
  const formatter = fs.existsSync(path.join(repoRoot, "compiler/format/format-source.ts"));
  it.skipIf(!formatter)("formats the document with the compiler's formatter", async () => {
    const messy = "block A(d:Dim){\nin x:f32[B,d]\n  out y : f32[B, d]\n     y=x*2.0}\n";
    const d = await openWithCursor(messy + "<|>");
    const edits = await client.request<TextEdit[]>("textDocument/formatting", {
      textDocument: { uri: d.uri },
      options: { tabSize: 2, insertSpaces: true },
    });
    expect(edits).toHaveLength(1);
    expect(edits[0]!.newText).toBe(
      "block A(d: Dim) {\n  in x: f32[B, d]\n  out y: f32[B, d]\n  y = x * 2.0\n}\n",
    );
    await client.close(d.uri);
  });
});

describe("document features", () => {
  const taskMoe = example("task-moe.moe");
  beforeAll(async () => {
    await client.open(taskMoe.uri, taskMoe.text);
    await client.waitForDiagnostics(taskMoe.uri);
  });

  it("inlay hints show the shape after each binding of a tensor", async () => {
    const hints = await client.request<InlayHint[]>("textDocument/inlayHint", {
      textDocument: { uri: taskMoe.uri },
      range: { start: { line: 0, character: 0 }, end: { line: 200, character: 0 } },
    });
    const at = (needle: string) => {
      const p = positionOf(taskMoe.text, needle, needle.indexOf(" ="));
      return hints.find((h) => h.position.line === p.line && h.position.character === p.character)
        ?.label;
    };
    expect(at("  y = adapter(")).toBe(": f32[B, T, d]");
    expect(at("  x = embed(tokens)")).toBe(": f32[B, T, d]");
    expect(at("  logits = head(")).toBe(": f32[B, T, vocab]");
    // Instances get no hint.
    expect(at("  embed = Embedding")).toBeUndefined();
  });

  it("a code lens over each model shows its parameter count", async () => {
    const lenses = await client.request<CodeLens[]>("textDocument/codeLens", {
      textDocument: { uri: taskMoe.uri },
    });
    expect(lenses).toEqual([
      {
        range: {
          start: positionOf(taskMoe.text, "Translator"),
          end: positionOf(taskMoe.text, "Translator", 10),
        },
        command: { title: "params: 32.3M · active/token 12.6M (per task +0.3%)", command: "" },
      },
    ]);
  });

  it("semantic tokens classify names by what they resolve to", async () => {
    const tokens = await client.request<SemanticTokens>("textDocument/semanticTokens/full", {
      textDocument: { uri: taskMoe.uri },
    });
    expect(tokens.data.length % 5).toBe(0);
    expect(tokens.data.length).toBeGreaterThan(500);
    const legend = (client.initializeResult as InitializeResult).capabilities
      .semanticTokensProvider!.legend;
    const decoded: { line: number; char: number; text: string; type: string; mods: string[] }[] =
      [];
    const lines = taskMoe.text.split("\n");
    let line = 0;
    let char = 0;
    for (let i = 0; i < tokens.data.length; i += 5) {
      const [dl, dc, len, type, mods] = tokens.data.slice(i, i + 5) as [
        number,
        number,
        number,
        number,
        number,
      ];
      line += dl;
      char = dl === 0 ? char + dc : dc;
      expect(len).toBeGreaterThan(0);
      decoded.push({
        line,
        char,
        text: lines[line]!.slice(char, char + len),
        type: legend.tokenTypes[type]!,
        mods: legend.tokenModifiers.filter((_, b) => (mods >> b) & 1),
      });
    }
    const find = (text: string, line: number) =>
      decoded.find((t) => t.text === text && t.line === line);
    const l = (needle: string) => positionOf(taskMoe.text, needle).line;
    expect(find("TaskMoE", l("block TaskMoE"))).toMatchObject({
      type: "class",
      mods: ["declaration"],
    });
    expect(find("Linear", l("head = Linear"))).toMatchObject({
      type: "class",
      mods: ["defaultLibrary"],
    });
    expect(find("TopK", l("router: TopK("))).toMatchObject({
      type: "interface",
      mods: ["defaultLibrary"],
    });
    expect(find("d", l("in x: f32[B, T, d]"))).toMatchObject({ type: "parameter" });
    expect(find("B", l("in x: f32[B, T, d]"))).toMatchObject({
      type: "typeParameter",
      mods: ["declaration", "readonly"],
    });
    expect(find("gelu", l("act: gelu"))).toMatchObject({
      type: "enumMember",
      mods: ["defaultLibrary"],
    });
    expect(find("Lang", l("in task: Lang[B]"))).toMatchObject({ type: "enum" });
    expect(find("f32", l("in x: f32[B, T, d]"))).toMatchObject({ type: "type" });
    expect(find("repeat", l("repeat layers"))).toMatchObject({ type: "keyword" });
    expect(find("task", l("per task"))).toMatchObject({ type: "keyword" });
    expect(
      decoded.find((t) => t.type === "comment" && t.mods.includes("documentation")),
    ).toBeDefined();
  });

  it("folding ranges cover declarations, calls, comments and imports", async () => {
    const ranges = await client.request<FoldingRange[]>("textDocument/foldingRange", {
      textDocument: { uri: taskMoe.uri },
    });
    const l = (needle: string) => positionOf(taskMoe.text, needle).line;
    const starts = new Map(ranges.map((r) => [r.startLine, r]));
    expect(starts.get(l("block TaskMoE"))?.endLine).toBe(l("  y = adapter(") + 1);
    expect(starts.get(l("  moe = MoE(\n    router: TopK"))).toBeDefined();
    expect(starts.get(0)).toMatchObject({ kind: "comment", endLine: l("import std.nn") - 1 });
    expect(starts.get(l("import std.nn"))).toMatchObject({
      kind: "imports",
      endLine: l("import std.optim"),
    });
  });

  it("the outline lists declarations with their parameters, ports and bindings", async () => {
    const symbols = await client.request<DocumentSymbol[]>("textDocument/documentSymbol", {
      textDocument: { uri: taskMoe.uri },
    });
    expect(symbols.map((s) => s.name)).toEqual([
      "import std.nn",
      "import std.route",
      "import std.adapt",
      "import std.optim",
      "Lang",
      "TaskMoE",
      "StaticTaskMoE",
      "Translator",
      "Translate",
    ]);
    const taskMoeSymbol = symbols.find((s) => s.name === "TaskMoE")!;
    expect(taskMoeSymbol.children!.map((c) => c.name)).toEqual([
      "d",
      "h",
      "n",
      "k",
      "x",
      "task",
      "y",
      "moe",
      "adapter",
    ]);
    const translator = symbols.find((s) => s.name === "Translator")!;
    expect(translator.children!.map((c) => c.name)).toContain("repeat layers as blocks");
    expect(symbols.find((s) => s.name === "Lang")!.children!.map((c) => c.name)).toEqual([
      "en_de",
      "en_fr",
      "de_en",
    ]);
  });

  it("workspace symbols find declarations in the workspace and the standard library", async () => {
    const found = await client.request<SymbolInformation[]>("workspace/symbol", {
      query: "TaskMoE",
    });
    expect(found.map((s) => `${s.name} ${path.basename(s.location.uri)}`)).toEqual(
      expect.arrayContaining(["TaskMoE task-moe.moe", "StaticTaskMoE task-moe.moe"]),
    );
    const std = await client.request<SymbolInformation[]>("workspace/symbol", {
      query: "LayerNorm",
    });
    expect(std.find((s) => s.name === "LayerNorm")).toMatchObject({
      containerName: "std.nn",
      location: { uri: fileUri(path.join(repoRoot, "stdlib/nn.moe")) },
    });
  });
});
