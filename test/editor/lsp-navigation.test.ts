// Hover, go to definition, references, highlights and rename through the protocol, from the
// real server process, on a two-file workspace (a model importing a block and a task set)
// and into the standard library.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type {
  DocumentHighlight,
  Hover,
  Location,
  Range,
  TextEdit,
  WorkspaceEdit,
} from "vscode-languageserver";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { analyze, nodeFileSystem, reportParams } from "../../compiler/pipeline.js";
import { LspClient, fileUri, positionAt, positionOf, repoRoot, withCursors } from "./lsp-client.js";

const PARTS = `import std.nn { Linear }

tasks Lang { en_de, en_fr }

/// A two-layer feed-forward expert.
block Expert(
  d: Dim,
  /// Width of the hidden layer.
  hidden: Dim = 4 * d,
) {
  in x: f32[B, T, d]
  out y: f32[B, T, d]
  up = Linear(d, hidden)
  down = Linear(hidden, d, bias: false)
  h = gelu(up(x))
  y = down(h)
}
`;

const MAIN = `import std.nn { LayerNorm }
import std.route { MoE, TopK, TaskMap }
import "./parts.moe" { Expert, Lang }

model Mixer(d: Dim = 64, n: Int = 4) {
  in x: f32[B, T, d]
  in task: Lang[B]
  out y: f32[B, T, d]
  norm = LayerNorm(d)
  moe = MoE(router: TopK(k: 2), experts: [Expert(d, hidden: 2 * d); n])
  fixed = MoE(router: TaskMap({ en_de: [0, 1], en_fr: [2, 3] }), experts: [Expert(d); 4])
  h = norm(x)
  h = h + moe(h)
  h = h + fixed(h, task)
  y = h
}
`;

let client: LspClient;
let dir: string;
let parts: { path: string; uri: string };
let main: { path: string; uri: string };

beforeAll(async () => {
  dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "moec-lsp-nav-")));
  parts = { path: path.join(dir, "parts.moe"), uri: fileUri(path.join(dir, "parts.moe")) };
  main = { path: path.join(dir, "main.moe"), uri: fileUri(path.join(dir, "main.moe")) };
  fs.writeFileSync(parts.path, PARTS);
  fs.writeFileSync(main.path, MAIN);
  client = await LspClient.start({ rootDir: dir });
  await client.open(main.uri, MAIN);
  await client.waitForDiagnostics(main.uri);
});
afterAll(async () => {
  await client.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

const stdlib = (name: string) => fileUri(path.join(repoRoot, "stdlib", name));

async function hoverAt(uri: string, text: string, needle: string, delta = 0, n = 0) {
  const h = await client.request<Hover | null>("textDocument/hover", {
    textDocument: { uri },
    position: positionOf(text, needle, delta, n),
  });
  return h ? (h.contents as { value: string }).value : null;
}

async function definitionAt(uri: string, text: string, needle: string, delta = 0, n = 0) {
  const locs = await client.request<Location[] | null>("textDocument/definition", {
    textDocument: { uri },
    position: positionOf(text, needle, delta, n),
  });
  expect(locs).toHaveLength(1);
  return locs![0]!;
}

function rangeOf(text: string, needle: string, n = 0): Range {
  return rangeAt(text, needle, needle.length, n);
}

/** The `length` characters where the `n`th `needle` starts. */
function rangeAt(text: string, needle: string, length: number, n = 0, delta = 0): Range {
  const start = positionOf(text, needle, delta, n);
  return { start, end: { line: start.line, character: start.character + length } };
}

describe("hover", () => {
  it("shows a block's signature, doc comment and parameters per instance", async () => {
    const v = await hoverAt(main.uri, MAIN, "Expert(d, hidden", 1);
    expect(v).toBe(
      [
        "```moe",
        "block Expert(d: Dim, hidden: Dim = 4 * d)",
        "  in x: f32[B, T, d]",
        "  out y: f32[B, T, d]",
        "```",
        "",
        "A two-layer feed-forward expert.",
        "",
        "**parameters** 16,512 (16.5K) per instance (`moe.experts.0` in Mixer; d = 64, hidden = 128)",
        "- trainable 16,512 (16.5K)",
        "- 8 instances in Mixer",
      ].join("\n"),
    );
  });

  it("shows a model's parameter count from elaboration", async () => {
    const v = await hoverAt(main.uri, MAIN, "Mixer", 2);
    const report = reportParams(analyze([main.path], nodeFileSystem()).models[0]!);
    expect(report.total).toBe(198_528);
    expect(v).toContain("model Mixer(d: Dim = 64, n: Int = 4)");
    expect(v).toContain("**parameters** 198,528 (199K)");
    expect(v).toContain("- active per token 99,456 (99.5K)");
    expect(v).toContain("- per task: en_de +0 (+0.0%), en_fr +0 (+0.0%)");
    expect(v).toContain("- MoE `moe`: 4 experts, 2 per token");
  });

  it("shows the inferred shape of a binding, a use and an expression", async () => {
    expect(await hoverAt(main.uri, MAIN, "h = h + moe", 0)).toBe("```moe\nh: f32[B, T, d]\n```");
    expect(await hoverAt(main.uri, MAIN, "moe(h)", 4)).toBe("```moe\nh: f32[B, T, d]\n```");
    // On the operator: the sum's type.
    expect(await hoverAt(main.uri, MAIN, "+ moe(h)")).toBe("```moe\nf32[B, T, d]\n```");
    expect(await hoverAt(main.uri, MAIN, "moe =", 0)).toBe(
      "```moe\nmoe: instance of MoE: (f32[B, T, d]) -> f32[B, T, d]\n```",
    );
  });

  it("shows a parameter with its doc comment at a named argument", async () => {
    const v = await hoverAt(main.uri, MAIN, "hidden: 2");
    expect(v).toBe(
      [
        "```moe",
        "(parameter) hidden: Dim = 4 * d",
        "```",
        "",
        "parameter of `block Expert`",
        "",
        "Width of the hidden layer.",
      ].join("\n"),
    );
  });

  it("shows ports, dims, task sets, tasks and builtins", async () => {
    expect(await hoverAt(main.uri, MAIN, "task)", 1)).toBe("```moe\n(input) task: Lang[B]\n```");
    expect(await hoverAt(main.uri, MAIN, "T, d]")).toContain("```moe\n(dimension) T\n```");
    expect(await hoverAt(main.uri, MAIN, "Lang[B]")).toBe(
      "```moe\ntasks Lang { en_de, en_fr }\n```",
    );
    expect(await hoverAt(main.uri, MAIN, "en_fr: [2")).toBe("```moe\n(task) Lang.en_fr\n```");
    const gelu = await hoverAt(parts.uri, PARTS, "gelu");
    expect(gelu).toBeNull(); // parts.moe is not open: hovers answer for open documents
    await client.open(parts.uri, PARTS);
    await client.waitForDiagnostics(parts.uri);
    expect(await hoverAt(parts.uri, PARTS, "gelu")).toMatch(
      /^```moe\n\(builtin\) gelu\(x\)\n```\n\n/,
    );
  });

  it("on a LoRA targets pattern: the layers it puts LoRA on (per task ones once)", async () => {
    const text = `import std.nn { TransformerBlock, Linear }
import std.adapt { LoRA }
tasks Job { a, b }
model Tuned(d: Dim = 16) {
  in x: f32[B, T, d]
  in task: Job[B]
  out y: f32[B, T, d]
  body = frozen TransformerBlock(d, 2, 32) with per task LoRA(r: 2, targets: ["attn.q", "mlp.*"])
  base = frozen TransformerBlock(d, 2, 32)
  tuned = base with LoRA(r: 2, targets: ["down"])
  y = tuned(body(x, task)) + base(x)
}
`;
    const doc = { path: path.join(dir, "lora.moe"), uri: fileUri(path.join(dir, "lora.moe")) };
    fs.writeFileSync(doc.path, text);
    await client.open(doc.uri, text);
    await client.waitForDiagnostics(doc.uri);
    expect(await hoverAt(doc.uri, text, "attn.q", 1)).toBe(
      '**"attn.q"** puts LoRA on 1 layer of `body`\n- `body.attn.q`',
    );
    expect(await hoverAt(doc.uri, text, "mlp.*", 1)).toBe(
      '**"mlp.*"** puts LoRA on 2 layers of `body`\n- `body.mlp.up`\n- `body.mlp.down`',
    );
    // A base bound before: its layers, under its own name.
    expect(await hoverAt(doc.uri, text, '"down"', 1)).toBe(
      '**"down"** puts LoRA on 1 layer of `base`\n- `base.mlp.down`',
    );
  });
});

describe("go to definition", () => {
  it("follows names across files and into the standard library", async () => {
    expect(await definitionAt(main.uri, MAIN, "Expert(d)")).toEqual({
      uri: parts.uri,
      range: rangeOf(PARTS, "Expert"),
    });
    expect(await definitionAt(main.uri, MAIN, "Lang[B]")).toEqual({
      uri: parts.uri,
      range: rangeOf(PARTS, "Lang"),
    });
    const ln = await definitionAt(main.uri, MAIN, "LayerNorm(d)");
    expect(ln.uri).toBe(stdlib("nn.moe"));
    const nn = fs.readFileSync(path.join(repoRoot, "stdlib/nn.moe"), "utf8");
    expect(ln.range).toEqual(rangeOf(nn, "LayerNorm"));
    // An imported name, and a module path.
    expect((await definitionAt(main.uri, MAIN, "TopK, Task")).uri).toBe(stdlib("route.moe"));
    expect(await definitionAt(main.uri, MAIN, "std.route", 5)).toEqual({
      uri: stdlib("route.moe"),
      range: { start: { line: 0, character: 0 }, end: { line: 0, character: 0 } },
    });
  });

  it("takes named arguments to the callee's parameter", async () => {
    expect(await definitionAt(main.uri, MAIN, "hidden: 2")).toEqual({
      uri: parts.uri,
      range: rangeAt(PARTS, "hidden: Dim", 6),
    });
    const route = fs.readFileSync(path.join(repoRoot, "stdlib/route.moe"), "utf8");
    expect(await definitionAt(main.uri, MAIN, "k: 2")).toEqual({
      uri: stdlib("route.moe"),
      range: (() => {
        const at = route.indexOf("k: Int", route.indexOf("primitive TopK("));
        const start = positionAt(route, at);
        return { start, end: { line: start.line, character: start.character + 1 } };
      })(),
    });
  });

  it("resolves rebinding flow-sensitively to the first binding", async () => {
    const src = withCursors(MAIN.replace("  y = h\n", "  y = <|>h\n"));
    const loc = await client.request<Location[]>("textDocument/definition", {
      textDocument: { uri: main.uri },
      position: src.cursors[0],
    });
    expect(loc).toEqual([{ uri: main.uri, range: rangeAt(MAIN, "h = norm", 1) }]);
  });
});

describe("references and highlights", () => {
  it("finds a block's declaration, import and uses across files", async () => {
    const refs = await client.request<Location[]>("textDocument/references", {
      textDocument: { uri: main.uri },
      position: positionOf(MAIN, "Expert(d)"),
      context: { includeDeclaration: true },
    });
    const key = (l: Location) =>
      `${path.basename(l.uri)}:${l.range.start.line}:${l.range.start.character}`;
    expect(refs.map(key).sort()).toEqual(
      [
        `main.moe:${positionOf(MAIN, "Expert,").line}:${positionOf(MAIN, "Expert,").character}`,
        `main.moe:${positionOf(MAIN, "Expert(d,").line}:${positionOf(MAIN, "Expert(d,").character}`,
        `main.moe:${positionOf(MAIN, "Expert(d)").line}:${positionOf(MAIN, "Expert(d)").character}`,
        `parts.moe:${positionOf(PARTS, "Expert").line}:${positionOf(PARTS, "Expert").character}`,
      ].sort(),
    );
  });

  it("highlights a name's binding, rebindings and uses in the document", async () => {
    const hs = await client.request<DocumentHighlight[]>("textDocument/documentHighlight", {
      textDocument: { uri: main.uri },
      position: positionOf(MAIN, "h = norm"),
    });
    const lines = hs.map((h) => `${h.range.start.line}:${h.range.start.character}:${h.kind}`);
    const hLine = positionOf(MAIN, "h = norm").line;
    expect(lines.sort()).toEqual(
      [
        `${hLine}:2:3`,
        `${hLine + 1}:2:2`,
        `${hLine + 1}:6:2`,
        `${hLine + 1}:14:2`,
        `${hLine + 2}:2:2`,
        `${hLine + 2}:6:2`,
        `${hLine + 2}:16:2`,
        `${hLine + 3}:6:2`,
      ].sort(),
    );
  });
});

describe("rename", () => {
  function editsOf(edit: WorkspaceEdit): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const [uri, edits] of Object.entries(edit.changes ?? {})) {
      out[path.basename(uri)] = (edits as TextEdit[])
        .map(
          (e) =>
            `${e.range.start.line}:${e.range.start.character}-${e.range.end.character}=${e.newText}`,
        )
        .sort();
    }
    return out;
  }
  const at = (text: string, needle: string, n = 0) => {
    const p = positionOf(text, needle, 0, n);
    return `${p.line}:${p.character}`;
  };

  it("renames a parameter at its declaration, its uses and a named argument in another file", async () => {
    const edit = await client.request<WorkspaceEdit>("textDocument/rename", {
      textDocument: { uri: main.uri },
      position: positionOf(MAIN, "hidden: 2"),
      newName: "width",
    });
    expect(editsOf(edit)).toEqual({
      "main.moe": [`${at(MAIN, "hidden: 2")}-${positionOf(MAIN, "hidden: 2").character + 6}=width`],
      "parts.moe": [
        `${at(PARTS, "hidden: Dim")}-${positionOf(PARTS, "hidden: Dim").character + 6}=width`,
        `${at(PARTS, "hidden)")}-${positionOf(PARTS, "hidden)").character + 6}=width`,
        `${at(PARTS, "hidden, d")}-${positionOf(PARTS, "hidden, d").character + 6}=width`,
      ].sort(),
    });
  });

  it("renames a block across files, and a task in a record key", async () => {
    const edit = await client.request<WorkspaceEdit>("textDocument/rename", {
      textDocument: { uri: parts.uri },
      position: positionOf(PARTS, "Expert"),
      newName: "FeedForward",
    });
    expect(
      Object.keys(edit.changes!)
        .map((u) => path.basename(u))
        .sort(),
    ).toEqual(["main.moe", "parts.moe"]);
    expect(editsOf(edit)["main.moe"]).toHaveLength(3);
    expect(editsOf(edit)["parts.moe"]).toHaveLength(1);
    const task = await client.request<WorkspaceEdit>("textDocument/rename", {
      textDocument: { uri: main.uri },
      position: positionOf(MAIN, "en_de"),
      newName: "de",
    });
    expect(editsOf(task)).toEqual({
      "main.moe": [`${at(MAIN, "en_de")}-${positionOf(MAIN, "en_de").character + 5}=de`],
      "parts.moe": [`${at(PARTS, "en_de")}-${positionOf(PARTS, "en_de").character + 5}=de`],
    });
  });

  it("renames a dim and a block's parameter within their scope only", async () => {
    const dim = await client.request<WorkspaceEdit>("textDocument/rename", {
      textDocument: { uri: parts.uri },
      position: positionOf(PARTS, "T, d]"),
      newName: "S",
    });
    expect(editsOf(dim)).toEqual({
      "parts.moe": [
        `${at(PARTS, "T, d]")}-${positionOf(PARTS, "T, d]").character + 1}=S`,
        `${at(PARTS, "T, d]", 1)}-${positionOf(PARTS, "T, d]", 0, 1).character + 1}=S`,
      ].sort(),
    });
    const d = await client.request<WorkspaceEdit>("textDocument/rename", {
      textDocument: { uri: parts.uri },
      position: positionOf(PARTS, "d: Dim"),
      newName: "width",
    });
    // Expert's `d`: its declaration and five uses, nothing in main.moe (whose `d` is Mixer's).
    expect(Object.keys(d.changes!).map((u) => path.basename(u))).toEqual(["parts.moe"]);
    expect(editsOf(d)["parts.moe"]).toHaveLength(6);
  });

  it("refuses to rename standard-library declarations and checks the new name", async () => {
    await expect(
      client.request("textDocument/prepareRename", {
        textDocument: { uri: main.uri },
        position: positionOf(MAIN, "LayerNorm(d)"),
      }),
    ).rejects.toThrow("`LayerNorm` is declared in the standard library and cannot be renamed");
    await expect(
      client.request("textDocument/rename", {
        textDocument: { uri: main.uri },
        position: positionOf(MAIN, "norm ="),
        newName: "block",
      }),
    ).rejects.toThrow("`block` is not a valid name");
    await expect(
      client.request("textDocument/rename", {
        textDocument: { uri: main.uri },
        position: positionOf(MAIN, "norm ="),
        newName: "moe",
      }),
    ).rejects.toThrow("`moe` is already defined here (a binding of the same body)");
    const ok = await client.request<{ range: Range; placeholder: string }>(
      "textDocument/prepareRename",
      {
        textDocument: { uri: main.uri },
        position: positionOf(MAIN, "norm =", 1),
      },
    );
    expect(ok).toEqual({ range: rangeAt(MAIN, "norm =", 4), placeholder: "norm" });
  });
});
