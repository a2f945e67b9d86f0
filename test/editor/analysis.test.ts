// The language server's analysis must report exactly what `moec check` reports: on every
// example and error case, and after every step of random edits, where it reuses parses and
// per-body check results (editor/lsp/parse-cache.ts, editor/lsp/check-cache.ts).
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";
import { analyzeDocument } from "../../editor/lsp/analysis.js";
import { CheckCache } from "../../editor/lsp/check-cache.js";
import { ParseCache } from "../../editor/lsp/parse-cache.js";

const root = path.resolve(import.meta.dirname, "../..");
const examples = fs
  .readdirSync(path.join(root, "examples"))
  .filter((f) => f.endsWith(".moe"))
  .map((f) => path.join(root, "examples", f));
const casesDir = path.join(root, "test/compiler/cases");
const cases = fs.readdirSync(casesDir).flatMap((f) => {
  const full = path.join(casesDir, f);
  if (f.endsWith(".moe")) return [full];
  const main = path.join(full, "main.moe");
  return fs.existsSync(main) ? [main] : [];
});

function random(seed: number): () => number {
  let x = seed || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const STATEMENTS = [
  "  _probe = 1\n",
  "  zz = x\n",
  "  y = y\n",
  "  bad = nope\n",
  "  q2 = Linear(d, d)\n",
  "  w = x @ x\n",
  "  x = x\n",
];

describe("analyzeDocument", () => {
  for (const file of [...examples, ...cases]) {
    it(`reports what moec check reports: ${path.relative(root, file)}`, () => {
      const fsView = nodeFileSystem();
      const a = analyzeDocument(file, 0, fsView, new ParseCache().parse, new CheckCache());
      expect(a.diagnostics).toEqual(analyze([file], fsView).diagnostics);
    });
  }

  for (const file of examples) {
    it(`stays exact through random edits: ${path.basename(file)}`, () => {
      const original = fs.readFileSync(file, "utf8");
      const rnd = random(original.length * 7 + 1);
      const overlay = new Map<string, string>();
      const fsView = nodeFileSystem(overlay);
      const parses = new ParseCache();
      const checks = new CheckCache();
      let text = original;
      for (let step = 0; step < 60; step++) {
        const lines = text.split("\n");
        const at = Math.floor(rnd() * lines.length);
        const r = rnd();
        if (r < 0.35)
          lines.splice(at, 0, STATEMENTS[Math.floor(rnd() * STATEMENTS.length)]!.trimEnd());
        else if (r < 0.55) lines.splice(at, 1);
        else if (r < 0.7) lines.splice(at, 0, lines[at] ?? "");
        else if (r < 0.85) lines[at] = (lines[at] ?? "").replace(/[a-z]\b/, "q");
        else {
          text = original;
          lines.splice(0, lines.length, ...original.split("\n"));
        }
        text = lines.join("\n");
        overlay.set(file, text);
        const a = analyzeDocument(file, step, fsView, parses.forEntry(file), checks);
        expect(a.diagnostics, `step ${step}`).toEqual(analyze([file], fsView).diagnostics);
      }
      expect(checks.stats.incremental).toBeGreaterThan(0);
      expect(parses.stats.incremental).toBeGreaterThan(0);
    });
  }
});
