// Shared by the lowering tests: lower a source string or file, seeded leaves, and the float64
// helpers (rows, linear layers, softmax, an FFN expert) the expected values are written with.
import * as path from "node:path";
import { expect } from "vitest";
import type { Diagnostic } from "../../compiler/diagnostics.js";
import { selectModel } from "../../compiler/check/elaborate-model.js";
import { verifyGraph } from "../../compiler/ir/verify.js";
import {
  type LowerOptions,
  type LoweredModel,
  lowerModel,
} from "../../compiler/lower/lower-model.js";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";
import type { HostTensor } from "../../runtime/reference/interpret.js";
import { STANDARD_LIBRARY } from "../../compiler/library/index.js";

const file = path.join(import.meta.dirname, "../../examples/__routing__.moe");

/**
 * Analyzes `file` (with `source` in place of its text, unless undefined), expecting no errors,
 * and lowers `model` (or the file's only one) at `dims`, collecting the diagnostics.
 */
export function lowerFile(
  source: string | undefined,
  file: string,
  dims: Record<string, number>,
  model?: string,
  options: LowerOptions = {},
) {
  const overlay = new Map(source === undefined ? [] : [[file, source]]);
  const analysis = analyze([file], nodeFileSystem(overlay));
  expect(analysis.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  const chosen = selectModel(analysis.program, file, model);
  if (typeof chosen === "string") throw new Error(chosen);
  const diagnostics: Diagnostic[] = [];
  const lowered = lowerModel(
    analysis.program,
    chosen,
    new Map(),
    new Map(Object.entries(dims)),
    diagnostics,
    STANDARD_LIBRARY,
    options,
  );
  return { lowered, diagnostics, analysis };
}

/** Lowers `source` at `dims`; lowering reports exactly the diagnostic codes `expected`. */
export function lower(
  source: string,
  dims: Record<string, number>,
  expected: string[] = [],
): LoweredModel {
  const { lowered, diagnostics } = lowerFile(source, file, dims);
  expect(diagnostics.map((d) => d.code)).toEqual(expected);
  expect(verifyGraph(lowered!.graph)).toEqual([]);
  return lowered!;
}

export function values(n: number, seed: number): Float64Array {
  let s = (seed * 2654435761) >>> 0 || 7;
  return Float64Array.from({ length: n }, () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) / 2 ** 32) * 2 - 1;
  });
}

export function leaves(
  m: LoweredModel,
  fixed: Record<string, number[]> = {},
): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  m.graph.nodes.forEach((n, i) => {
    if (n.op !== "param" && n.op !== "input") return;
    const size = n.shape.reduce((a, b) => a * b, 1);
    const data = fixed[n.name] ? Float64Array.from(fixed[n.name]!) : values(size, i + 1);
    out.set(n.name, { shape: n.shape, data });
  });
  return out;
}

export type Mat = number[][];
export const row = (t: HostTensor, i: number): number[] => {
  const d = t.shape[t.shape.length - 1]!;
  return [...t.data.slice(i * d, (i + 1) * d)];
};
export const mat = (t: HostTensor): Mat =>
  [...Array(t.data.length / t.shape[t.shape.length - 1]!).keys()].map((i) => row(t, i));
export const linear = (x: number[], w: Mat, b?: number[]) =>
  w.map((wr, o) => wr.reduce((a, wv, k) => a + wv * x[k]!, b ? b[o]! : 0));
export const softmax = (z: number[]) => {
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b);
  return e.map((v) => v / s);
};
export const relu = (v: number[]) => v.map((z) => Math.max(0, z));
export const close = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-10);
};

/** std.nn.FFN(act: relu) at parameter path `p`, on one row. */
export const ffn = (l: Map<string, HostTensor>, p: string, x: number[]) =>
  linear(
    relu(linear(x, mat(l.get(`${p}.up.weight`)!), row(l.get(`${p}.up.bias`)!, 0))),
    mat(l.get(`${p}.down.weight`)!),
    row(l.get(`${p}.down.bias`)!, 0),
  );
