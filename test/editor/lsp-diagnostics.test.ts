// Diagnostics through the protocol, from the real server process: the same codes, ranges and
// messages as `moec check` for every error case; incremental edits; re-checking importers
// when an imported file changes; answering requests while the text has syntax errors.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Diagnostic as LspDiagnostic, Hover } from "vscode-languageserver";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LineMap } from "../../compiler/diagnostics.js";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";
import { LspClient, fileUri, positionOf, repoRoot, withCursors } from "./lsp-client.js";

let client: LspClient;
let dir: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-lsp-diag-"));
  client = await LspClient.start({ rootDir: dir });
});
afterAll(async () => {
  await client.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** What the CLI reports for `file`, in protocol form. */
function expected(
  file: string,
): { code: string; message: string; range: LspDiagnostic["range"] }[] {
  const text = fs.readFileSync(file, "utf8");
  const map = new LineMap(text);
  const pos = (o: number) => {
    const lc = map.lineColumn(o);
    return { line: lc.line - 1, character: lc.column - 1 };
  };
  return analyze([file], nodeFileSystem())
    .diagnostics.filter((d) => d.file === file)
    .map((d) => ({
      code: d.code,
      message: d.message,
      range: { start: pos(d.span.start), end: pos(d.span.end) },
    }));
}

function simplify(ds: LspDiagnostic[]) {
  return ds.map((d) => ({ code: String(d.code), message: d.message as string, range: d.range }));
}

describe("diagnostics", () => {
  it("are the CLI's for every error case (code, range, message)", async () => {
    const casesDir = path.join(repoRoot, "test/compiler/cases");
    const files = fs
      .readdirSync(casesDir)
      .filter((f) => f.endsWith(".moe") && !f.startsWith("E06"))
      .map((f) => path.join(casesDir, f));
    files.push(path.join(casesDir, "E0205-import-cycle/main.moe"));
    expect(files.length).toBeGreaterThan(30);
    for (const file of files) {
      const uri = fileUri(file);
      await client.open(uri, fs.readFileSync(file, "utf8"));
      const got = await client.waitForDiagnostics(uri);
      const want = expected(file);
      // Problems inside the standard library are shown at their use too (tested below).
      const own = got.diagnostics.filter(
        (d) => d.relatedInformation?.[0]?.message !== "reported here",
      );
      expect(simplify(own), path.basename(file)).toEqual(want);
      for (const d of got.diagnostics) expect(d.source).toBe("moec");
      await client.close(uri);
    }
  });

  it("carry the hint and the related locations", async () => {
    const file = path.join(repoRoot, "test/compiler/cases/E0201-unknown-name.moe");
    const uri = fileUri(file);
    await client.open(uri, fs.readFileSync(file, "utf8"));
    const [d] = (await client.waitForDiagnostics(uri)).diagnostics;
    expect(d).toMatchObject({
      code: "E0201",
      severity: 1,
      message: "unknown name `prj`",
      range: { start: { line: 5, character: 6 }, end: { line: 5, character: 9 } },
      data: { hint: "did you mean `proj`?" },
    });
    expect(d!.relatedInformation?.map((r) => r.message)).toEqual(["hint: did you mean `proj`?"]);
    await client.close(uri);
  });

  it("show a problem found inside the standard library where the user's code uses it", async () => {
    const file = path.join(repoRoot, "test/compiler/cases/E0315-invalid-dimension.moe");
    const uri = fileUri(file);
    await client.open(uri, fs.readFileSync(file, "utf8"));
    const [d, ...rest] = (await client.waitForDiagnostics(uri)).diagnostics;
    expect(rest).toEqual([]);
    expect(d).toMatchObject({
      code: "E0315",
      message: "100 / 12 is not a whole number",
      range: { start: { line: 4, character: 9 }, end: { line: 4, character: 32 } },
    });
    const [where] = d!.relatedInformation!;
    expect(where!.message).toBe("in Attention (standard library)");
    expect(where!.location.uri).toBe(fileUri(path.join(repoRoot, "stdlib/nn.moe")));
    expect(where!.location.range.start).toEqual({ line: 75, character: 13 });
    await client.close(uri);
  });

  it("follow incremental edits", async () => {
    const file = path.join(dir, "edit.moe");
    const uri = fileUri(file);
    const text = [
      "block A(d: Dim) {",
      "  in x: f32[B, d]",
      "  out y: f32[B, d]",
      "  y = x",
      "}",
      "",
    ].join("\n");
    await client.open(uri, text);
    expect((await client.waitForDiagnostics(uri)).diagnostics).toEqual([]);
    // `y = x` → `y = xx`: an unknown name, then back.
    await client.change(uri, [
      { range: { start: { line: 3, character: 7 }, end: { line: 3, character: 7 } }, text: "x" },
    ]);
    await client.settled(uri);
    expect(simplify(client.diagnostics.get(uri)!.diagnostics)).toEqual([
      {
        code: "E0201",
        message: "unknown name `xx`",
        range: { start: { line: 3, character: 6 }, end: { line: 3, character: 8 } },
      },
    ]);
    await client.change(uri, [
      { range: { start: { line: 3, character: 7 }, end: { line: 3, character: 8 } }, text: "" },
    ]);
    await client.settled(uri);
    expect(client.diagnostics.get(uri)!.diagnostics).toEqual([]);
    await client.close(uri);
  });

  it("re-check the files that import a changed file", async () => {
    const lib = path.join(dir, "lib.moe");
    const main = path.join(dir, "main.moe");
    const libText = [
      "block Dense(d: Dim) {",
      "  in x: f32[B, d]",
      "  out y: f32[B, d]",
      "  y = x",
      "}",
      "",
    ].join("\n");
    const mainText = [
      'import "./lib.moe" { Dense }',
      "model M(d: Dim = 8) {",
      "  in x: f32[B, d]",
      "  out y: f32[B, d]",
      "  layer = Dense(d)",
      "  y = layer(x)",
      "}",
      "",
    ].join("\n");
    fs.writeFileSync(lib, libText);
    fs.writeFileSync(main, mainText);
    const libUri = fileUri(lib);
    const mainUri = fileUri(main);
    await client.open(mainUri, mainText);
    expect((await client.waitForDiagnostics(mainUri)).diagnostics).toEqual([]);
    await client.open(libUri, libText);
    await client.waitForDiagnostics(libUri);
    // The block's output now has twice the width: main's use no longer fits.
    await client.change(libUri, [
      {
        range: { start: { line: 2, character: 16 }, end: { line: 2, character: 17 } },
        text: "2 * d",
      },
    ]);
    const d = await client.waitForDiagnostics(mainUri, (p) => p.diagnostics.length > 0);
    expect(simplify(d.diagnostics)).toEqual([
      {
        code: "E0302",
        message: "output `y`: expected f32[B, d], found f32[B, 2*d]",
        range: { start: { line: 5, character: 6 }, end: { line: 5, character: 14 } },
      },
    ]);
    // Closing the buffer: main sees the file on disk again.
    await client.close(libUri);
    await client.waitForDiagnostics(mainUri, (p) => p.diagnostics.length === 0);
    // A closed imported file with errors: shown as its importer sees it.
    fs.writeFileSync(lib, libText.replace("y = x", "y = nope"));
    await client.connection.sendNotification("workspace/didChangeWatchedFiles", {
      changes: [{ uri: libUri, type: 2 }],
    });
    const libDiagnostics = await client.waitForDiagnostics(libUri, (p) =>
      p.diagnostics.some((d) => d.code === "E0201"),
    );
    expect(simplify(libDiagnostics.diagnostics)).toEqual([
      {
        code: "E0201",
        message: "unknown name `nope`",
        range: { start: { line: 3, character: 6 }, end: { line: 3, character: 10 } },
      },
    ]);
    await client.close(mainUri);
  });

  it("answers requests from the last good analysis while the text has syntax errors", async () => {
    const src = withCursors(
      [
        "block A(d: Dim) {",
        "  in x: f32[B, d]",
        "  out y: f32[B, d]",
        "  h = x * 2.0",
        "  y = <|>h",
        "}",
        "",
      ].join("\n"),
    );
    const file = path.join(dir, "broken.moe");
    const uri = fileUri(file);
    await client.open(uri, src.text);
    await client.waitForDiagnostics(uri);
    // Break the file above the cursor: a binding without a value.
    await client.change(uri, [
      {
        range: { start: { line: 3, character: 0 }, end: { line: 3, character: 0 } },
        text: "  z = \n",
      },
    ]);
    await client.settled(uri);
    expect(client.diagnostics.get(uri)!.diagnostics.map((d) => d.code)).toContain("E0101");
    const cursor = { line: src.cursors[0]!.line + 1, character: src.cursors[0]!.character };
    const hover = await client.request<Hover>("textDocument/hover", {
      textDocument: { uri },
      position: cursor,
    });
    expect(hover.contents).toEqual({ kind: "markdown", value: "```moe\nh: f32[B, d]\n```" });
    expect(hover.range?.start).toEqual(cursor);
    await client.close(uri);
  });

  it("never print anything but protocol messages on stdout", () => {
    // The stream parser would have failed on stray output; stderr carries nothing either.
    expect(client.stderr).toBe("");
    expect(positionOf("a\nbc", "c")).toEqual({ line: 1, character: 1 });
  });
});
