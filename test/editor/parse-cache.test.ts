// The language server's item-wise reparse must give exactly what a full parse gives: random
// edits (typing, deleting, pasting) on every example, compared with parseSource on the result.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { parseSource } from "../../grammar/parse.js";
import { ParseCache } from "../../editor/lsp/parse-cache.js";

const examplesDir = path.join(import.meta.dirname, "../../examples");
const examples = fs
  .readdirSync(examplesDir)
  .filter((f) => f.endsWith(".moe"))
  .map((f) => ({ name: f, text: fs.readFileSync(path.join(examplesDir, f), "utf8") }));

/** A small deterministic generator (xorshift). */
function random(seed: number): () => number {
  let x = seed || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const SNIPPETS = [
  " ",
  "\n",
  "x",
  "}",
  "{",
  "(",
  "// note\n",
  "/// doc\n",
  "/*",
  '"',
  "\nblock Extra(d: Dim) {\n  in x: f32[B, d]\n  out y: f32[B, d]\n  y = x\n}\n",
  "\nconst k: Int = 3\n",
  "2",
  " + 1",
  "blo",
  "\n/// Documented.\n",
];

describe("ParseCache", () => {
  for (const ex of examples) {
    it(`reparses edits of ${ex.name} exactly`, () => {
      const rnd = random(ex.text.length);
      const cache = new ParseCache();
      // The edited document's own parses move unchanged items in place instead of copying.
      const owned = new ParseCache();
      const file = `/virtual/${ex.name}`;
      let text = ex.text;
      cache.parse(text, file);
      owned.parseOwned(text, file);
      for (let step = 0; step < 150; step++) {
        const at = Math.floor(rnd() * (text.length + 1));
        const r = rnd();
        if (r < 0.4) {
          text = text.slice(0, at) + SNIPPETS[Math.floor(rnd() * SNIPPETS.length)] + text.slice(at);
        } else if (r < 0.7) {
          text =
            text.slice(0, at) + text.slice(Math.min(text.length, at + 1 + Math.floor(rnd() * 3)));
        } else {
          // Undo-like: go back to the example, so edits also start from clean parses.
          text = ex.text;
        }
        const full = parseSource(text, file);
        expect(cache.parse(text, file)).toEqual(full);
        expect(owned.parseOwned(text, file)).toEqual(full);
      }
      expect(cache.stats.incremental).toBeGreaterThan(0);
      expect(owned.stats.incremental).toBe(cache.stats.incremental);
    });
  }

  it("reuses a parse while the text is unchanged", () => {
    const cache = new ParseCache();
    const a = cache.parse(examples[0]!.text, "/virtual/a.moe");
    expect(cache.parse(examples[0]!.text, "/virtual/a.moe")).toBe(a);
    expect(cache.stats).toEqual({ hits: 1, incremental: 0, full: 1 });
  });
});
