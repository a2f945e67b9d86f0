// The backward pass on the device: graphs differentiated by compiler/ir/differentiate-graph.ts,
// compiled by the normal fuse → plan → emit path and run with poisoned buffers, each gradient
// against the float64 reference interpreter (relative L2 < 1e-4) at awkward sizes (1, 7, odd).
// Fails, never skips, without a WebGPU adapter (run scripts/setup.sh).
import { describe, expect, it } from "vitest";

import { IrBuilder } from "../../compiler/ir/builder.js";
import { differentiateGraph } from "../../compiler/ir/differentiate-graph.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import { interpret } from "../../runtime/reference/interpret.js";
import { lower } from "../compiler/routing-fixtures.js";
import { type LeafSpec, checkGraph, randomLeaves, useDevice } from "./gpu-harness.js";
import { attention, layerNorm, linear, transformerBlock } from "./model-graphs.js";

const TOL = 1e-4;

const gpu = useDevice();

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
      const m = lower(
        `import std.nn { FFN }
import std.route { MoE, TopK, ExpertChoice }
model M() { in x: f32[N, 9]  out y: f32[N, 9]
  moe = MoE(router: ${router}, experts: [FFN(9, 5, act: gelu); 3])
  y = moe(x) }`,
        { N },
      );
      const y = m.graph.outputs.find((o) => o.name === "y")!.node;
      const b = IrBuilder.extend({ nodes: m.graph.nodes, outputs: [] });
      const shape = b.shape(y);
      const flat = b.reshape(b.binary("mul", y, b.input("c", "f32", shape)), [
        shape[0]! * shape[1]!,
      ]);
      const loss = b.reduce("sum", flat, 0, false);
      b.output("loss", loss);
      const d = differentiateGraph(b.finish(), loss, { outputPrefix: "grad:" });
      expect(d.unused).toEqual([]);
      await expectGradients(d.graph);
    });
  }
});
