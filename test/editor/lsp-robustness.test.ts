// Every request at positions all over every example (and a broken copy of each) answers
// without an internal error: the server logs none and every answer is well-formed.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LspClient, fileUri, positionAt, positionOf, repoRoot } from "./lsp-client.js";

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

/** A request that must answer within `ms` (the server going deaf shows as never answering). */
async function answered<T>(c: LspClient, method: string, params: unknown, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${method}: no answer in ${ms} ms; stderr:\n${c.stderr}`)),
      ms,
    );
  });
  try {
    return await Promise.race([c.request<T>(method, params), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe("malformed input between frames", () => {
  const file = path.join(repoRoot, "examples", "tiny-transformer.moe");
  const text = fs.readFileSync(file, "utf8");
  const uri = fileUri(file);
  const hoverProj = (c: LspClient) =>
    answered<{ contents: unknown } | null>(c, "textDocument/hover", {
      textDocument: { uri },
      position: positionOf(text, "proj(x)"),
    });
  const garbage: [string, string][] = [
    ["a stray CRLF", "\r\n"],
    ["44 spaces", " ".repeat(44)],
    ["an oversized Content-Length", 'Content-Length: 100000\r\n\r\n{"jsonrpc":"2.0","method":"x"}'],
    ["a body that is not JSON", "Content-Length: 7\r\n\r\nnotjson"],
  ];
  for (const [what, bytes] of garbage) {
    it(`${what}: dropped and logged, and the next requests are answered`, async () => {
      const c = await LspClient.start({ rootDir: path.join(repoRoot, "examples") });
      try {
        await c.open(uri, text);
        await c.waitForDiagnostics(uri);
        expect(await hoverProj(c)).not.toBeNull();
        c.child.stdin!.write(bytes);
        expect(await hoverProj(c)).not.toBeNull();
        expect(await hoverProj(c)).not.toBeNull();
        expect(c.stderr).toMatch(/moec lsp: dropped \d+ bytes? of input/);
        expect(c.logs.some((l) => l.type === 2 && /dropped \d+ byte/.test(l.message))).toBe(true);
      } finally {
        await c.stop();
      }
    });
  }
});

describe("requests right after a change", () => {
  it("hover after a whole-text change answers from the new text", async () => {
    // A long debounce: the re-check is still pending when the hover arrives.
    const c = await LspClient.start({ debounceMs: 5000 });
    try {
      const uri = fileUri(path.join(repoRoot, "examples", "scratch-whole-text.moe"));
      await c.open(uri, "model M {\n  in x: f32[B, 4]\n  out y: f32[B, 4]\n  y = x\n}\n");
      await c.waitForDiagnostics(uri);
      const text = fs.readFileSync(path.join(repoRoot, "examples", "tiny-transformer.moe"), "utf8");
      await c.change(uri, [{ text }]);
      const h = await answered<{ contents: unknown } | null>(c, "textDocument/hover", {
        textDocument: { uri },
        position: positionOf(text, "proj(x)"),
      });
      expect(JSON.stringify(h?.contents)).toContain("Linear");
    } finally {
      await c.stop();
    }
  });
});

describe("a 5 MB document", () => {
  it("every answer comes within a second; the server says once that it does not analyse it", async () => {
    const c = await LspClient.start();
    try {
      const base = fs.readFileSync(path.join(repoRoot, "examples", "tiny-transformer.moe"), "utf8");
      const body = base.slice(base.indexOf("model TinyTransformer"), base.indexOf("/// Cross"));
      const parts = [base];
      for (let i = 0, n = base.length; n < 4_900_000; i++, n += body.length)
        parts.push(body.replace("TinyTransformer", `Tiny${i}`));
      const text = parts.join("");
      const uri = fileUri(path.join(repoRoot, "examples", "scratch-huge.moe"));
      const at = positionAt(text, text.length - 200);
      const timed = async (method: string, params: object) => {
        const t0 = performance.now();
        await answered(c, method, { textDocument: { uri }, ...params }, 30_000);
        return performance.now() - t0;
      };
      await c.open(uri, text);
      const times: Record<string, number> = {};
      for (const m of ["hover", "completion", "definition", "signatureHelp", "references"]) {
        times[m] = await timed(`textDocument/${m}`, {
          position: at,
          context: { includeDeclaration: true },
        });
      }
      for (const m of ["documentSymbol", "foldingRange", "semanticTokens/full", "codeLens"])
        times[m] = await timed(`textDocument/${m}`, {});
      await c.change(uri, [{ range: { start: at, end: at }, text: " " }]);
      times["hover after an edit"] = await timed("textDocument/hover", { position: at });
      for (const [m, ms] of Object.entries(times)) expect(ms, m).toBeLessThan(1000);
      const told = c.messages.filter((m) =>
        /scratch-huge\.moe is 4\.\d MB, over the 1 MiB/.test(m.message),
      );
      expect(told, JSON.stringify(c.messages)).toHaveLength(1);
      expect(c.logs.filter((l) => l.type === 1)).toEqual([]);
    } finally {
      await c.stop();
    }
  }, 120_000);
});
