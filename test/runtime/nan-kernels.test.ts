// NaN in, NaN out: activations, max-style reductions, softmax and attention keep a NaN where
// PyTorch does (relu(NaN) is NaN, a row with a NaN has a NaN maximum and NaN probabilities),
// on the device and in the reference interpreter alike. WGSL's max and min may return the
// other operand of a NaN, so a corrupt value must not turn into a plausible number.
import { describe, expect, it } from "vitest";

import { compileGraph } from "../../compiler/kernels/compile-graph.js";
import { IrBuilder } from "../../compiler/ir/builder.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import { Executor } from "../../runtime/executor.js";
import { interpret } from "../../runtime/reference/interpret.js";
import { deviceFeeds, randomLeaves, useDevice } from "./gpu-harness.js";

const gpu = useDevice();

function graph(build: (b: IrBuilder) => void): IrGraph {
  const b = new IrBuilder();
  build(b);
  return b.finish();
}

/**
 * Runs `g` on the device and in the reference with NaN written into the leaves at `nans`
 * (leaf name → flat indices); returns both, per output, after checking that the reference
 * has NaN exactly where `expectNan` says and the device has NaN exactly where the reference has.
 */
async function runWithNans(
  g: IrGraph,
  nans: Record<string, number[]>,
): Promise<Map<string, { gpu: ArrayLike<number>; ref: ArrayLike<number> }>> {
  const leaves = randomLeaves(g, 5);
  for (const [name, at] of Object.entries(nans))
    for (const i of at) leaves.get(name)!.data[i] = NaN;
  const program = compileGraph(g, gpu().limits);
  const exe = await Executor.create(gpu(), program);
  try {
    const { params, inputs } = deviceFeeds(g, leaves);
    exe.setParams(params);
    const out = await exe.run(inputs);
    const ref = interpret(g, leaves).outputs;
    const both = new Map<string, { gpu: ArrayLike<number>; ref: ArrayLike<number> }>();
    for (const [name, r] of ref) both.set(name, { gpu: out.get(name)!, ref: r.data });
    return both;
  } finally {
    exe.destroy();
  }
}

/** Indices holding NaN. */
const nanAt = (xs: ArrayLike<number>) =>
  Array.from(xs, (v, i) => (Number.isNaN(v) ? i : -1)).filter((i) => i >= 0);

/** The device agrees with the reference: NaN at the same places, close elsewhere. */
function expectAgree(r: { gpu: ArrayLike<number>; ref: ArrayLike<number> }) {
  expect(nanAt(r.gpu)).toEqual(nanAt(r.ref));
  for (let i = 0; i < r.ref.length; i++) {
    if (Number.isNaN(r.ref[i]!)) continue;
    expect(Math.abs(r.gpu[i]! - r.ref[i]!)).toBeLessThan(1e-4 * (1 + Math.abs(r.ref[i]!)));
  }
}

describe("NaN propagates through kernels and the reference", () => {
  it("relu, max and min, alone and fused into a matmul epilogue", async () => {
    const g = graph((b) => {
      const x = b.input("x", "f32", [3, 7]);
      const y = b.input("y", "f32", [3, 7]);
      b.output("relu", b.unary("relu", x));
      b.output("max", b.binary("max", x, y));
      b.output("min", b.binary("min", y, x));
      b.output("clamp", b.binary("min", b.binary("max", x, b.constant(-0.5)), b.constant(0.5)));
      const w = b.param("w", [5, 7], true, "normal");
      b.output("mm_relu", b.unary("relu", b.matmul(x, b.permute(w, [1, 0]))));
    });
    const r = await runWithNans(g, { x: [0, 9, 20] });
    for (const name of ["relu", "max", "min", "clamp"]) {
      expect(nanAt(r.get(name)!.ref), name).toEqual([0, 9, 20]);
      expectAgree(r.get(name)!);
    }
    // A NaN in row 0 and row 1 of x reaches every output of those rows through the matmul.
    const mm = r.get("mm_relu")!;
    expect(nanAt(mm.ref)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    expectAgree(mm);
  });

  it("max reductions along the last axis (rows) and another axis (map)", async () => {
    const g = graph((b) => {
      const x = b.input("x", "f32", [4, 33]);
      b.output("last", b.reduce("max", x, 1, false));
      b.output("first", b.reduce("max", x, 0, false));
    });
    // x[1, 2] and x[3, 32].
    const r = await runWithNans(g, { x: [33 + 2, 3 * 33 + 32] });
    expect(nanAt(r.get("last")!.ref)).toEqual([1, 3]);
    expect(nanAt(r.get("first")!.ref)).toEqual([2, 32]);
    expectAgree(r.get("last")!);
    expectAgree(r.get("first")!);
  });

  it("top-k ranks NaN above every number, as torch.topk (a NaN router logit is chosen)", async () => {
    const g = graph((b) => {
      b.output("top", b.topk(b.input("x", "f32", [3, 9]), 2));
    });
    const r = await runWithNans(g, { x: [4, 9 + 8, 9 + 2] });
    const top = r.get("top")!;
    // Row 0: NaN at 4 first; row 1: NaNs at 2 and 8, the lower position first.
    expect([top.ref[0], top.ref[2], top.ref[3]]).toEqual([4, 2, 8]);
    expect(Array.from(top.gpu)).toEqual(Array.from(top.ref));
  });

  it("softmax: a row with a NaN is NaN", async () => {
    const g = graph((b) => {
      const x = b.input("x", "f32", [3, 67]);
      b.output("p", b.softmax(x));
    });
    const r = await runWithNans(g, { x: [67 + 5] });
    const p = r.get("p")!;
    expect(nanAt(p.ref)).toEqual(Array.from({ length: 67 }, (_, j) => 67 + j));
    expectAgree(p);
  });

  // Head dim 8 takes the vec4 row-blocked kernel, 6 the scalar one.
  for (const hd of [8, 6])
    it(`fused attention, head dim ${hd}: a NaN key makes its head's rows NaN`, async () => {
      const g = graph((b) => {
        const q = b.input("q", "f32", [1, 2, 9, hd]);
        const k = b.input("k", "f32", [1, 2, 9, hd]);
        const v = b.input("v", "f32", [1, 2, 9, hd]);
        const s = b.binary("mul", b.matmul(q, b.permute(k, [0, 1, 3, 2])), b.constant(0.35));
        b.output("o", b.matmul(b.softmax(s), v));
      });
      expect(compileGraph(g, gpu().limits).kernels.map((k) => k.kind)).toContain("attention");
      // Head 1, key 4.
      const r = await runWithNans(g, { k: [9 * hd + 4 * hd + 3] });
      const o = r.get("o")!;
      expect(nanAt(o.ref)).toEqual(Array.from({ length: 9 * hd }, (_, j) => 9 * hd + j));
      expectAgree(o);
    });
});
