// Dense MoE lowering (Soft, Grouped, TokenMix, TaskMap) against float64 code written here.
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import type { Diagnostic } from "../../compiler/diagnostics.js";
import { selectModel } from "../../compiler/elaborate-model.js";
import { verifyGraph } from "../../compiler/ir/verify.js";
import { type LoweredModel, lowerModel } from "../../compiler/lower-model.js";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";
import { type HostTensor, interpret } from "../../runtime/reference/interpret.js";

const file = path.join(import.meta.dirname, "../../examples/__routing__.moe");

function lower(source: string, dims: Record<string, number>): LoweredModel {
  const analysis = analyze([file], nodeFileSystem(new Map([[file, source]])));
  expect(analysis.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  const model = selectModel(analysis.program, file, undefined);
  if (typeof model === "string") throw new Error(model);
  const diagnostics: Diagnostic[] = [];
  const lowered = lowerModel(
    analysis.program,
    model,
    new Map(),
    new Map(Object.entries(dims)),
    diagnostics,
  );
  expect(diagnostics).toEqual([]);
  expect(verifyGraph(lowered!.graph)).toEqual([]);
  return lowered!;
}

function values(n: number, seed: number): Float64Array {
  let s = (seed * 2654435761) >>> 0 || 7;
  return Float64Array.from({ length: n }, () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) / 2 ** 32) * 2 - 1;
  });
}

function leaves(m: LoweredModel, fixed: Record<string, number[]> = {}): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  m.graph.nodes.forEach((n, i) => {
    if (n.op !== "param" && n.op !== "input") return;
    const size = n.shape.reduce((a, b) => a * b, 1);
    const data = fixed[n.name] ? Float64Array.from(fixed[n.name]!) : values(size, i + 1);
    out.set(n.name, { shape: n.shape, data });
  });
  return out;
}

type Mat = number[][];
const row = (t: HostTensor, i: number): number[] => {
  const d = t.shape[t.shape.length - 1]!;
  return [...t.data.slice(i * d, (i + 1) * d)];
};
const mat = (t: HostTensor): Mat =>
  [...Array(t.data.length / t.shape[t.shape.length - 1]!).keys()].map((i) => row(t, i));
const linear = (x: number[], w: Mat, b?: number[]) =>
  w.map((wr, o) => wr.reduce((a, wv, k) => a + wv * x[k]!, b ? b[o]! : 0));
const softmax = (z: number[]) => {
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b);
  return e.map((v) => v / s);
};
const relu = (v: number[]) => v.map((z) => Math.max(0, z));
const close = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThan(1e-10);
};

describe("dense MoE lowering", () => {
  const ffn = (l: Map<string, HostTensor>, p: string, x: number[]) =>
    linear(
      relu(linear(x, mat(l.get(`${p}.up.weight`)!), row(l.get(`${p}.up.bias`)!, 0))),
      mat(l.get(`${p}.down.weight`)!),
      row(l.get(`${p}.down.bias`)!, 0),
    );

  it("Soft: softmax-weighted sum of every expert", () => {
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, Soft }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  moe = MoE(router: Soft(), experts: [FFN(4, 3, act: relu); 3])
  y = moe(x) }`,
      { N: 5 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const expected = [...Array(5).keys()].flatMap((n) => {
      const xn = row(x, n);
      const w = softmax(linear(xn, mat(l.get("moe.router.gate.weight")!)));
      const ys = [0, 1, 2].map((e) => ffn(l, `moe.experts.${e}`, xn));
      return [0, 1, 2, 3].map((j) => ys.reduce((a, ye, e) => a + w[e]! * ye[j]!, 0));
    });
    close(y.data, expected);
  });

  it("Soft with one expert equals that expert", () => {
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, Soft }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  moe = MoE(router: Soft(), experts: [FFN(4, 3, act: relu)])
  y = moe(x) }`,
      { N: 3 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    close(
      y.data,
      [0, 1, 2].flatMap((n) => ffn(l, "moe.experts.0", row(l.get("x")!, n))),
    );
  });

  it("Grouped LoRA experts on a shared base: base(x) + Σ w(g)·w(e|g)·δ_e(x)", () => {
    const m = lower(
      `import std.nn { Linear }
import std.route { MoE, Grouped }
import std.adapt { LoRA }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  base = frozen Linear(4, 4)
  moe = MoE(router: Grouped(outer: softmax, inner: normalize), experts: [[base with LoRA(r: 2, alpha: 4.0); 2]; 2])
  y = moe(x) }`,
      { N: 3 },
    );
    // Base applied once, not once per expert.
    expect(m.graph.nodes.filter((n) => n.op === "param" && n.name === "base.weight")).toHaveLength(
      1,
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const expected = [0, 1, 2].flatMap((n) => {
      const xn = row(x, n);
      const wg = softmax(linear(xn, mat(l.get("moe.router.group_gate.weight")!)));
      const el = linear(xn, mat(l.get("moe.router.expert_gate.weight")!));
      const sig = el.map((z) => 1 / (1 + Math.exp(-z)));
      const inner = [0, 1].flatMap((g) => {
        const s = sig.slice(2 * g, 2 * g + 2);
        const t = s[0]! + s[1]!;
        return s.map((v) => (wg[g]! * v) / t);
      });
      const out = linear(xn, mat(l.get("base.weight")!), row(l.get("base.bias")!, 0));
      [0, 1].forEach((g) =>
        [0, 1].forEach((j) => {
          const p = `moe.experts.${g}.${j}`;
          const delta = linear(
            linear(xn, mat(l.get(`${p}.lora_A.weight`)!)),
            mat(l.get(`${p}.lora_B.weight`)!),
          );
          for (let o = 0; o < 4; o++) out[o] += 2 * inner[2 * g + j]! * delta[o]!;
        }),
      );
      return out;
    });
    close(y.data, expected);
  });

  it("TokenMix: merge over the group, expert, emit with the same weights", () => {
    const [B, T, d, E, group] = [4, 2, 3, 2, 2];
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[B, T, ${d}]  out y: f32[B, T, ${d}]
  moe = MoE(router: TokenMix(group: ${group}, temperature: 0.5), experts: [FFN(${d}, 2, act: relu); ${E}])
  y = moe(x) }`,
      { B, T },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const wc = mat(l.get("moe.router.controller.weight")!);
    const out = new Array<number>(B * T * d).fill(0);
    for (let g = 0; g < B / group; g++) {
      for (let t = 0; t < T; t++) {
        const members = [...Array(group).keys()].map((i) => (g * group + i) * T + t);
        const xs = members.map((r) => row(x, r));
        for (let e = 0; e < E; e++) {
          const w = softmax(xs.map((xi) => linear(xi, wc)[e]! / 0.5));
          const mixed = [...Array(d).keys()].map((j) =>
            xs.reduce((a, xi, i) => a + w[i]! * xi[j]!, 0),
          );
          const ye = ffn(l, `moe.experts.${e}`, mixed);
          members.forEach((r, i) => ye.forEach((v, j) => (out[r * d + j]! += w[i]! * v)));
        }
      }
    }
    close(y.data, out);
  });

  it("TaskMap: each example mixes its task's experts, in one mixed-task batch", () => {
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, TaskMap }
tasks Lang { en_de, en_fr }
model M() { in x: f32[B, T, 4]  in task: Lang[B]  out y: f32[B, T, 4]
  moe = MoE(router: TaskMap({ en_de: [0], en_fr: [1, 2] }), experts: [FFN(4, 3, act: relu); 3])
  y = moe(x, task) }`,
      { B: 2, T: 2 },
    );
    const l = leaves(m, { task: [1, 0] });
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const expected = [0, 1, 2, 3].flatMap((r) => {
      const xn = row(x, r);
      if (r < 2) {
        const a = ffn(l, "moe.experts.1", xn);
        const b = ffn(l, "moe.experts.2", xn);
        return a.map((v, j) => 0.5 * v + 0.5 * b[j]!);
      }
      return ffn(l, "moe.experts.0", xn);
    });
    close(y.data, expected);
  });
});
