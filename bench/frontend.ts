/**
 * Front-end speed: parse + resolve + check of a generated 10,000-line model file, the work the
 * language server redoes on every keystroke. Goal (issue #2): under 100 ms on 2 cores.
 */
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { parseSource } from "../grammar/parse.js";
import { analyze, nodeFileSystem } from "../compiler/pipeline.js";

/** A realistic file: many small blocks (FFN-like, MoE layers) and a deep model using them. */
export function generateModelSource(targetLines: number): string {
  const out: string[] = [
    "import std.nn { Linear, LayerNorm, FFN, Attention }",
    "import std.route { MoE, TopK }",
    "",
  ];
  let i = 0;
  while (out.length < targetLines - 40) {
    out.push(
      `/// Generated block ${i}.`,
      `block Part${i}(d: Dim, h: Dim = 4 * d, n: Int = 8) {`,
      `  in x: f32[B, T, d]`,
      `  out y: f32[B, T, d]`,
      `  norm = LayerNorm(d)`,
      `  up = Linear(d, h)`,
      `  down = Linear(h, d)`,
      `  moe = MoE(router: TopK(k: 2), experts: [FFN(d, h); n])`,
      `  z = down(gelu(up(norm(x))))`,
      `  y = x + z + moe(norm(z))`,
      `}`,
      ``,
    );
    i++;
  }
  out.push(`model Big(d: Dim = 64) {`, `  in x: f32[B, T, d]`, `  out y: f32[B, T, d]`, `  h = x`);
  for (let j = 0; j < Math.min(i, 30); j++) out.push(`  p${j} = Part${j}(d)`, `  h = p${j}(h)`);
  out.push(`  y = h`, `}`);
  return out.join("\n") + "\n";
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export function benchFrontend(): string[] {
  const source = generateModelSource(10_000);
  const lines = source.split("\n").length - 1;
  const file = path.resolve("bench-generated.moe");
  const fsView = nodeFileSystem(new Map([[file, source]]));
  const parseTimes: number[] = [];
  const checkTimes: number[] = [];
  let diagnostics = 0;
  for (let r = 0; r < 12; r++) {
    let t = performance.now();
    parseSource(source, file);
    parseTimes.push(performance.now() - t);
    t = performance.now();
    diagnostics = analyze([file], fsView).diagnostics.length;
    checkTimes.push(performance.now() - t);
  }
  const p = median(parseTimes.slice(2));
  const c = median(checkTimes.slice(2));
  return [
    `front end: ${lines} lines, ${diagnostics} diagnostics`,
    `  parse only          ${p.toFixed(1).padStart(7)} ms  ${Math.round(lines / (p / 1000)).toLocaleString("en-US")} lines/s`,
    `  parse+resolve+check ${c.toFixed(1).padStart(7)} ms  ${Math.round(lines / (c / 1000)).toLocaleString("en-US")} lines/s  (goal < 100 ms: ${c < 100 ? "met" : "NOT met"})`,
  ];
}
