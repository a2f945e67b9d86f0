// The whole front end (parse → resolve → check → elaborate) on hostile input: it reports
// diagnostics and never throws or hangs.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";

const root = path.join(import.meta.dirname, "../..");
const file = path.join(root, "examples", "__fuzz__.moe");

function run(source: string) {
  return analyze([file], nodeFileSystem(new Map([[file, source]])));
}

/** Deterministic pseudo-random numbers, so a failure reproduces. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("front end robustness", () => {
  it("handles degenerate files", () => {
    const inputs = [
      "",
      "// only a comment",
      "/* unterminated",
      'const s = "unterminated',
      "(".repeat(10_000) + ")".repeat(10_000),
      "const x = " + Array.from({ length: 100_000 }, () => "1").join(" + "),
      "tasks Sprachen { übersetzen, 翻译 }\r\nblock Δ(d: Dim) {\r\n  in x: f32[B, d]\r\n  out y: f32[B, d]\r\n  y = x\r\n}\r\n",
      Buffer.from(Array.from({ length: 10_000 }, (_, i) => (i * 7919) % 256)).toString("latin1"),
    ];
    for (const src of inputs) {
      const a = run(src);
      expect(Array.isArray(a.diagnostics)).toBe(true);
    }
    expect(run(inputs[6]!).diagnostics).toEqual([]);
  });

  it("reports several independent errors in one run", () => {
    const a = run(`
import std.nn { Linear }
block A(d: Dim) {
  in x: f32[B, d]
  out y: f32[B, d]
  y = Linear(d, 2 * d)(x)
}
block C(d: Dim) {
  in x: f32[B, d]
  out y: f32[B, d]
  y = undefined_thing(x)
}
model M(w: Dim = 0) {
  in x: f32[B, 4]
  out y: f32[B, 4]
  y = x
}`);
    expect(a.diagnostics.map((d) => d.code)).toEqual(["E0302", "E0201", "E0315"]);
  });

  it("survives random edits of every example without throwing", () => {
    const next = rng(42);
    const sources = fs
      .readdirSync(path.join(root, "examples"))
      .filter((f) => f.endsWith(".moe"))
      .map((f) => fs.readFileSync(path.join(root, "examples", f), "utf8"));
    const alphabet = '{}()[],;:.=+-*/@<>!"#abcxyzBT0123456789 \n\t';
    for (let i = 0; i < 150; i++) {
      let src = sources[i % sources.length]!;
      for (let edits = 1 + Math.floor(next() * 4); edits > 0; edits--) {
        const at = Math.floor(next() * src.length);
        const op = next();
        if (op < 0.4) src = src.slice(0, at) + src.slice(at + 1 + Math.floor(next() * 8));
        else if (op < 0.8)
          src = src.slice(0, at) + alphabet[Math.floor(next() * alphabet.length)] + src.slice(at);
        else {
          const from = Math.floor(next() * src.length);
          src = src.slice(0, at) + src.slice(from, from + 20) + src.slice(at);
        }
      }
      expect(() => run(src), `edit ${i}`).not.toThrow();
    }
  });
});

describe("deep expressions", () => {
  it("a 100,000-term sum used by a model is a diagnostic, not a crash", () => {
    const sum = Array.from({ length: 100_000 }, () => "1").join(" + ");
    const a = run(
      `const big = ${sum}\nmodel M(n: Int = big) {\n  in x: f32[B, 2]\n  out y: f32[B, 2]\n  y = x\n}\n`,
    );
    expect(a.diagnostics.some((d) => d.code === "E0105")).toBe(true);
  });
});
