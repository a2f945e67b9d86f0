// Every request at positions all over every example (and a broken copy of each) answers
// without an internal error: the server logs none and every answer is well-formed.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LspClient, fileUri, positionAt, repoRoot } from "./lsp-client.js";

let client: LspClient;
beforeAll(async () => {
  client = await LspClient.start({ rootDir: path.join(repoRoot, "examples") });
});
afterAll(async () => {
  await client.stop();
});

const examples = fs
  .readdirSync(path.join(repoRoot, "examples"))
  .filter((f) => f.endsWith(".moe"))
  .map((f) => path.join(repoRoot, "examples", f));

const REQUESTS = [
  "textDocument/hover",
  "textDocument/definition",
  "textDocument/completion",
  "textDocument/signatureHelp",
  "textDocument/documentHighlight",
];

async function probe(uri: string, text: string, step: number): Promise<void> {
  for (let o = 0; o <= text.length; o += step) {
    const position = positionAt(text, o);
    for (const method of REQUESTS) {
      await client.request(method, { textDocument: { uri }, position });
    }
  }
  for (const method of [
    "textDocument/semanticTokens/full",
    "textDocument/foldingRange",
    "textDocument/documentSymbol",
    "textDocument/codeLens",
  ]) {
    await client.request(method, { textDocument: { uri } });
  }
  await client.request("textDocument/inlayHint", {
    textDocument: { uri },
    range: { start: { line: 0, character: 0 }, end: positionAt(text, text.length) },
  });
}

describe("robustness", () => {
  for (const file of examples) {
    it(`answers every request on ${path.basename(file)}, intact and broken`, async () => {
      const text = fs.readFileSync(file, "utf8");
      const uri = fileUri(file);
      await client.open(uri, text);
      await client.waitForDiagnostics(uri);
      await probe(uri, text, 31);
      // Cut the file in the middle of a line: syntax errors, requests on a stale analysis.
      const cut = text.indexOf("\n", Math.floor(text.length / 2)) - 3;
      await client.change(uri, [
        { range: { start: positionAt(text, cut), end: positionAt(text, cut + 9) }, text: "(" },
      ]);
      await client.settled(uri);
      const broken = text.slice(0, cut) + "(" + text.slice(cut + 9);
      await probe(uri, broken, 47);
      await client.close(uri);
      expect(client.logs.filter((l) => l.type === 1)).toEqual([]);
    });
  }
});
