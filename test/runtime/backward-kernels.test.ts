// The backward pass on the device: graphs differentiated by compiler/ir/differentiate-graph.ts,
// compiled by the normal fuse → plan → emit path and run with poisoned buffers, each gradient
// against the float64 reference interpreter (relative L2 < 1e-4) at awkward sizes (1, 7, odd).
// Fails, never skips, without a WebGPU adapter (run scripts/setup.sh).
import * as path from "node:path";
import { describe, expect, it } from "vitest";

import { IrBuilder } from "../../compiler/ir/builder.js";
import { differentiateGraph } from "../../compiler/ir/differentiate-graph.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import type { LowerOptions } from "../../compiler/lower/lower-model.js";
import { interpret } from "../../runtime/reference/interpret.js";
import { topkMargin, withTrainableInputs } from "../compiler/ir/gradient-check.js";
import { lowerFile } from "../compiler/routing-fixtures.js";
import { type LeafSpec, checkGraph, randomLeaves, useDevice } from "./gpu-harness.js";
import { attention, layerNorm, linear, transformerBlock } from "./model-graphs.js";

const TOL = 1e-4;

const gpu = useDevice();

const modelFile = path.join(import.meta.dirname, "../../examples/__backward__.moe");

/**
 * The graph of ⟨c, y⟩'s gradients for `build`'s value y (c a random input), with the loss and
 * each trainable parameter's gradient as outputs (and no forward output besides).
 */
function backward(build: (b: IrBuilder) => number): IrGraph {
  const b = new IrBuilder();
  const y = build(b);
  const shape = b.shape(y);
  const flat = b.reshape(b.binary("mul", y, b.input("c", "f32", shape)), [
    shape.reduce((a, d) => a * d, 1),
  ]);
  const loss = b.reduce("sum", flat, 0, false);
  b.output("loss", loss);
  const d = differentiateGraph(b.finish(), loss, { outputPrefix: "grad:" });
  expect(d.unused).toEqual([]);
  return d.graph;
}

let seed = 500;

const norm = (xs: ArrayLike<number>) => Math.hypot(...Array.from(xs));

/**
 * Runs `graph` on the device and expects every output within TOL of the reference, relative
 * to its own norm; where that is zero in exact arithmetic (the key projection's bias: softmax
 * does not see a shift shared by a row's scores), within float32 rounding of the largest.
 */
async function expectGradients(
  graph: IrGraph,
  specs: Record<string, LeafSpec> = {},
  differentiated = true,
) {
  const r = await checkGraph(gpu(), graph, { seed: seed++, specs });
  const names = [...r.ref.keys()];
  if (differentiated) expect(names.filter((n) => n.startsWith("grad:")).length).toBeGreaterThan(0);
  const largest = Math.max(...names.map((n) => norm(r.ref.get(n)!.data)));
  // Every row dropped: zeros written over the poison.
  if (largest === 0)
    for (const name of names)
      expect(
        [...r.gpu.get(name)!].every((v) => v === 0),
        name,
      ).toBe(true);
  for (const name of names) {
    const ref = r.ref.get(name)!.data;
    const out = r.gpu.get(name)!;
    expect(out.length).toBe(ref.length);
    const diff = norm(Array.from(ref, (v, i) => out[i]! - v));
    if (largest === 0) continue;
    if (norm(ref) >= 1e-3 * largest)
      expect(diff / norm(ref), `output ${name}: relative L2 error`).toBeLessThan(TOL);
    // Zero but for rounding: float32 rounding of the largest gradient's size.
    else expect(diff / largest, `output ${name}: error of a zero gradient`).toBeLessThan(1e-6);
  }
  return r;
}

/**
 * The gradients of ⟨c, y⟩ for the lowered model's output y, its f32 inputs trainable too:
 * every trainable parameter but `unused` gets one.
 */
function lowerBackward(
  source: string,
  dims: Record<string, number>,
  unused: string[] = [],
  options: LowerOptions = {},
): IrGraph {
  const { lowered, diagnostics } = lowerFile(source, modelFile, dims, undefined, options);
  expect(diagnostics).toEqual([]);
  const graph = withTrainableInputs(lowered!.graph);
  const y = graph.outputs.find((o) => o.name === "y")!.node;
  const b = IrBuilder.extend({ nodes: graph.nodes, outputs: [] });
  const shape = b.shape(y);
  const flat = b.reshape(b.binary("mul", y, b.input("c", "f32", shape)), [
    shape.reduce((a, d) => a * d, 1),
  ]);
  const loss = b.reduce("sum", flat, 0, false);
  b.output("loss", loss);
  const d = differentiateGraph(b.finish(), loss, { outputPrefix: "grad:" });
  expect(d.unused).toEqual(unused);
  return d.graph;
}

/**
 * expectGradients at the next seed whose routing has a top-k margin > 1e-3 in float64: float32
 * routing on the device makes the same choices only away from ties.
 */
async function expectRoutedGradients(graph: IrGraph, specs: Record<string, LeafSpec> = {}) {
  const start = seed;
  while (topkMargin(graph, interpret(graph, randomLeaves(graph, seed, specs)).values) <= 1e-3)
    expect(++seed - start, "a seed with a routing margin > 1e-3").toBeLessThan(64);
  return expectGradients(graph, specs);
}

describe("backward kernels", () => {
  it("erf (GELU's derivative needs it) at 4097 points in [-6, 6]", async () => {
    const b = new IrBuilder();
    b.output("erf", b.unary("erf", b.input("x", "f32", [4097])));
    await expectGradients(b.finish(), { x: { lo: -6, hi: 6 } }, false);
  });

  for (const [rows, d, hidden] of [
    [7, 33, 67],
    [1, 7, 1],
  ] as const) {
    it(`a GELU MLP at ${rows}×${d}, hidden ${hidden}`, async () => {
      await expectGradients(
        backward((b) => {
          const x = b.input("x", "f32", [rows, d]);
          const up = b.unary("gelu", linear(b, x, d, hidden, "up"));
          return linear(b, up, hidden, d, "down");
        }),
      );
    });
  }

  for (const [rows, d] of [
    [7, 33],
    [1, 7],
    [127, 1],
  ] as const) {
    it(`LayerNorm at ${rows}×${d}, the input differentiated too`, async () => {
      await expectGradients(
        backward((b) => layerNorm(b, b.param("x", [rows, d], true, "normal"), d, "ln")),
      );
    });
  }

  for (const [B, T, d, heads] of [
    [2, 7, 12, 3],
    [1, 1, 5, 1],
  ] as const) {
    it(`causal attention at B=${B}, T=${T}, d=${d}, ${heads} heads`, async () => {
      await expectGradients(
        backward((b) => attention(b, b.param("x", [B, T, d], true, "normal"), B, T, d, heads, "a")),
      );
    });
  }

  it("a transformer block (pre-norm attention and GELU MLP) at B=1, T=7, d=9", async () => {
    await expectGradients(
      backward((b) => transformerBlock(b, b.input("x", "f32", [1, 7, 9]), 1, 7, 9, 3, 11)),
    );
  });

  for (const [vocab, tokens, d] of [
    [5, 33, 7],
    [1, 7, 3],
  ] as const) {
    it(`an embedding of ${tokens} ids into ${vocab}×${d} (repeated ids accumulate)`, async () => {
      await expectGradients(
        backward((b) => {
          const table = b.param("table", [vocab, d], true, "normal");
          const h = b.gather(table, b.input("ids", "i32", [tokens]));
          return b.unary("tanh", linear(b, h, d, 5, "proj"));
        }),
        { ids: { ints: vocab } },
      );
    });
  }

  for (const [rows, d, experts, out] of [
    [33, 7, 3, 5],
    [7, 9, 4, 1],
    [1, 3, 2, 7],
  ] as const) {
    it(`a top-1 MoE: ${rows} rows, ${experts} experts ${d}→${out}`, async () => {
      const graph = backward((b) => {
        const x = b.param("x", [rows, d], true, "normal");
        const probs = b.softmax(b.matmul(x, b.param("router", [d, experts], true, "normal")));
        const ids = b.reshape(b.topk(probs, 1), [rows]);
        const gate = b.reduce("max", probs, -1, true);
        const w = b.param("experts", [experts, d, out], true, "normal");
        const y = b.expertMatmul(x, w, ids, b.groupRows(ids, experts, 4));
        return b.binary("mul", y, gate);
      });
      // float32 routing on the device matches float64's only away from ties.
      const leaves = randomLeaves(graph, seed);
      const probs = interpret(graph, leaves).values.find(
        (v, i) => graph.nodes[i]!.op === "softmax" && v.shape.length === 2,
      )!;
      for (let r = 0; r < rows; r++) {
        const row = [...probs.data.slice(r * experts, (r + 1) * experts)].sort((a, b) => b - a);
        if (row.length > 1) expect(row[0]! - row[1]!).toBeGreaterThan(1e-3);
      }
      const result = await expectGradients(graph);
      // The experts' weight gradient is the grouped kernel, not a dense product.
      const fused = result.program.fused;
      const anchors = fused.kernels.map((k) =>
        k.anchor === undefined ? "" : fused.graph.nodes[k.anchor]!.op,
      );
      expect(anchors).toContain("expert_matmul_wgrad");
    });
  }

  // [rows, K, N, experts, align, ids beyond the experts (dropped rows)]
  for (const [rows, depth, cols, experts, align, dropped] of [
    [1, 1, 1, 1, 1, 0],
    [1, 3, 2, 2, 4, 3],
    [7, 2, 3, 4, 2, 2],
    [33, 7, 5, 3, 4, 2],
    [127, 3, 9, 6, 8, 2],
    // More than one 16×16 tile each way, neither a multiple of it.
    [90, 19, 33, 3, 4, 1],
  ] as const) {
    it(`expert_matmul_wgrad: ${rows} rows, ${experts} experts, align ${align}, ${dropped} dropped ids`, async () => {
      const b = new IrBuilder();
      const ids = b.input("ids", "i32", [rows]);
      const x = b.input("x", "f32", [rows, depth]);
      const g = b.input("g", "f32", [rows, cols]);
      b.output("dw", b.expertMatmulWgrad(x, g, ids, b.groupRows(ids, experts, align), experts));
      await expectGradients(b.finish(), { ids: { ints: experts + dropped } }, false);
    });
  }

  for (const [router, N] of [
    ["TopK(2)", 7],
    ["TopK(1)", 1],
    ["ExpertChoice(capacity: 1.5)", 7],
  ] as const) {
    it(`a lowered MoE layer (${router}, stacked FFN experts) at N = ${N}`, async () => {
      const graph = lowerBackward(
        `import std.nn { FFN }
import std.route { MoE, TopK, ExpertChoice }
model M() { in x: f32[N, 9]  out y: f32[N, 9]
  moe = MoE(router: ${router}, experts: [FFN(9, 5, act: gelu); 3])
  y = moe(x) }`,
        { N },
      );
      await expectRoutedGradients(graph);
    });
  }

  // Families whose backward goes through other kernels: task embeddings and tables gathered
  // (scatter_add), sequence means, dense two-level weights, token mixing (batched matmuls over
  // permuted groups, scatter back), LoRA's low-rank products (merged and per task), capacity
  // ranks and hash ids. The layer's input is a trainable parameter too.
  const taskSource = (router: string, T: string) => `import std.nn { FFN }
import std.route { MoE, TaskRoute }
tasks Lang { a, b, c }
model M() { in x: f32[B, ${T}, 9]  in task: Lang[B]  out y: f32[B, ${T}, 9]
  moe = MoE(router: ${router}, experts: [FFN(9, 5, act: gelu); 3])
  y = moe(x, task) }`;
  for (const [router, B, T] of [
    ["TaskRoute(level: token, k: 2, embed: 3)", 3, 7],
    ["TaskRoute(level: token, k: 1, embed: 5)", 1, 1],
    ["TaskRoute(level: sequence, k: 1, embed: 2)", 2, 5],
    ["TaskRoute(level: task, k: 2)", 5, 3],
  ] as const) {
    it(`${router} at B = ${B}, T = ${T}, tasks mixed`, async () => {
      const graph = lowerBackward(taskSource(router, "T"), { B, T });
      await expectRoutedGradients(graph, { task: { ints: 3 } });
    });
  }

  for (const [router, groups, N] of [
    ["Grouped()", "[[FFN(9, 5, act: gelu); 2], [FFN(9, 5, act: gelu)]]", 7],
    ["Grouped(outer: normalize, inner: normalize)", "[[FFN(9, 5, act: gelu); 2]; 2]", 1],
    ["Grouped(pin: [0.25, 0.75])", "[[FFN(9, 5, act: gelu); 2]; 2]", 7],
    ["Grouped(inner: normalize)", "[[base with LoRA(r: 3, alpha: 6.0); 2]; 2]", 7],
  ] as const) {
    it(`${router} over ${groups} at N = ${N}`, async () => {
      const graph = lowerBackward(
        `import std.nn { FFN, Linear }
import std.adapt { LoRA }
import std.route { MoE, Grouped }
model M() { in x: f32[N, 9]  out y: f32[N, 9]
  ${groups.includes("base") ? "base = Linear(9, 9)" : ""}
  moe = MoE(router: ${router}, experts: ${groups})
  y = moe(x) }`,
        { N },
        router.includes("pin") ? ["moe.router.group_gate.weight"] : [],
      );
      await expectGradients(graph);
    });
  }

  for (const [router, groups, B, T] of [
    ["Grouped(on: instruction)", "[[FFN(9, 5, act: gelu); 2], [FFN(9, 5, act: gelu)]]", 3, 7],
    ["Grouped(outer: normalize, on: instruction)", "[[FFN(9, 5, act: gelu); 2]; 2]", 1, 1],
    [
      "Grouped(inner: normalize, on: instruction)",
      "[[base with LoRA(r: 3, alpha: 6.0); 2]; 2]",
      5,
      3,
    ],
  ] as const) {
    it(`${router} over ${groups} at B = ${B}, T = ${T}`, async () => {
      const graph = lowerBackward(
        `import std.nn { FFN, Linear }
import std.adapt { LoRA }
import std.route { MoE, Grouped }
model M() { in x: f32[B, T, 9]  in instruction: f32[B, 9]  out y: f32[B, T, 9]
  ${groups.includes("base") ? "base = Linear(9, 9)" : ""}
  moe = MoE(router: ${router}, experts: ${groups})
  y = moe(x, instruction) }`,
        { B, T },
      );
      await expectGradients(graph);
    });
  }

  for (const [router, B, T] of [
    ["TokenMix(group: 3)", 3, 7],
    ["TokenMix(group: 2, temperature: 0.5, emit: softmax_experts)", 4, 1],
    ["TokenMix(group: 3, discrete: true)", 3, 5],
    ["TokenMix(group: 1, discrete: true)", 1, 3],
  ] as const) {
    it(`${router} at B = ${B}, T = ${T}`, async () => {
      const graph = lowerBackward(
        `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[B, T, 9]  out y: f32[B, T, 9]
  moe = MoE(router: ${router}, experts: [FFN(9, 5, act: gelu); 3])
  y = moe(x) }`,
        { B, T },
        // Discrete mixing only picks with its controller (a topk): no gradient reaches it.
        router.includes("discrete") ? ["moe.router.controller.weight"] : [],
      );
      await expectRoutedGradients(graph);
    });
  }

  const loraSource = `import std.nn { Linear, FFN }
import std.adapt { LoRA }
model M() { in x: f32[N, 9]  out y: f32[N, 7]
  q = Linear(9, 7) with LoRA(r: 3, alpha: 6.0)
  k = Linear(9, 9, bias: false) with LoRA(r: 1)
  f = FFN(9, 5, act: gelu) with LoRA(r: 2)
  y = q(k(x) + f(x)) }`;
  for (const [N, merge] of [
    [7, false],
    [1, false],
    [7, true],
  ] as const) {
    it(`LoRA on Linear and FFN bases${merge ? ", merged" : ""} at N = ${N}`, async () => {
      await expectGradients(lowerBackward(loraSource, { N }, [], { mergeAdapters: merge }));
    });
  }

  for (const [adapter, B] of [
    ["Linear(9, 9) with per task LoRA(r: { a: 2, b: 3, c: 1 }, alpha: 4.0)", 5],
    ["per task Bottleneck(9, r: 3)", 7],
  ] as const) {
    it(`${adapter} at B = ${B}: rows of every task in one batch`, async () => {
      const graph = lowerBackward(
        `import std.nn { Linear }
import std.adapt { Bottleneck, LoRA }
tasks Lang { a, b, c }
model M() { in x: f32[B, T, 9]  in task: Lang[B]  out y: f32[B, T, 9]
  adapter = ${adapter}
  y = adapter(x, task) }`,
        { B, T: 3 },
      );
      // Random tasks per example: an adapter whose task is absent must come out zero.
      await expectGradients(graph, { task: { ints: 3 } });
    });
  }

  it("TopK(k: 2, capacity: 1.0, overflow: residual) with rows over capacity at N = 11", async () => {
    const graph = lowerBackward(
      `import std.nn { FFN }
import std.route { MoE, TopK }
model M() { in x: f32[N, 9]  out y: f32[N, 9]
  moe = MoE(router: TopK(k: 2, capacity: 1.0), experts: [FFN(9, 5, act: gelu); 3])
  y = moe(x) }`,
      { N: 11 },
    );
    await expectRoutedGradients(graph);
  });

  it("Hash routing at B = 2, T = 7: every expert its tokens' gradient", async () => {
    const graph = lowerBackward(
      `import std.nn { FFN }
import std.route { MoE, Hash }
model M() { in x: f32[B, T, 9]  in tokens: i32[B, T]  out y: f32[B, T, 9]
  moe = MoE(router: Hash(seed: 3), experts: [FFN(9, 5, act: gelu); 3])
  y = moe(x, tokens) }`,
      { B: 2, T: 7 },
    );
    await expectGradients(graph, { tokens: { ints: 50000 } });
  });
});
