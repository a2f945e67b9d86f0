// Each IR op and function the ONNX builder maps, on a graph built by hand, run by
// onnxruntime-node against the reference interpreter (float32 inputs, float64 reference):
// the elementwise functions in f32 and i32, reductions, views, scans, top-k with ties, the
// scatter with repeated ids and the expert matmul with rows outside every expert.
import { describe, expect, it } from "vitest";
import type * as Ort from "onnxruntime-node";
import { IrBuilder } from "../../compiler/ir/builder.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import { BINARY_OPS, UNARY_OPS } from "../../compiler/ir/ops.js";
import { ONNX_OPSET, buildOnnxModel } from "../../compiler/export/onnx-model.js";
import { SymbolicSizes } from "../../compiler/export/onnx-dims.js";
import { type HostTensor, interpret } from "../../runtime/reference/interpret.js";
import { relL2, session } from "./onnx-harness.js";

const ort: typeof Ort = await import("onnxruntime-node");

/** Seeded values in [-2, 2), rounded to float32 so both sides read the same inputs. */
function values(n: number, seed: number): Float64Array {
  let s = seed * 2654435761 || 7;
  return Float64Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) >>> 0;
    return Math.fround((s / 2 ** 32) * 4 - 2);
  });
}

/** Runs `graph` both ways on `feeds` (f32 or i32 by the input's dtype); per output rel L2. */
async function both(
  graph: IrGraph,
  feeds: Record<string, number[] | Float64Array>,
  params: Record<string, Float64Array> = {},
): Promise<Record<string, number>> {
  const weights = new Map(
    Object.entries(params).map(([k, data]) => {
      const n = graph.nodes.find((x) => x.op === "param" && x.name === k)!;
      return [k, { shape: n.shape, data }];
    }),
  );
  const model = buildOnnxModel({
    name: "ops",
    sizes: new SymbolicSizes(graph),
    weights,
    header: { opset: ONNX_OPSET },
  }).model;
  const leaves = new Map<string, HostTensor>();
  const ortFeeds: Record<string, Ort.Tensor> = {};
  for (const n of graph.nodes) {
    if (n.op === "param") leaves.set(n.name, { shape: n.shape, data: params[n.name]! });
    if (n.op !== "input") continue;
    const data = Float64Array.from(feeds[n.name]!);
    leaves.set(n.name, { shape: n.shape, data });
    ortFeeds[n.name] =
      n.dtype === "i32"
        ? new ort.Tensor("int32", Int32Array.from(data), n.shape)
        : new ort.Tensor("float32", Float32Array.from(data), n.shape);
  }
  const want = interpret(graph, leaves).outputs;
  const s = await session(model);
  const got = await s.run(ortFeeds);
  await s.release();
  const out: Record<string, number> = {};
  for (const [name, w] of want) {
    expect(got[name]!.dims, name).toEqual(w.shape);
    // An i32 unary function without an integer form is computed in f32 and truncated (the op
    // table's rule, as the kernels do); the reference leaves the fraction in its float64 array.
    const node = graph.nodes[graph.outputs.find((o) => o.name === name)!.node]!;
    const ref = node.dtype === "i32" ? w.data.map(Math.trunc) : w.data;
    out[name] = relL2(Array.from(got[name]!.data as ArrayLike<number>, Number), ref);
  }
  return out;
}

const expectClose = (errors: Record<string, number>, tol = 1e-6) => {
  expect(Object.keys(errors).length).toBeGreaterThan(0);
  for (const [name, e] of Object.entries(errors)) expect(e, name).toBeLessThan(tol);
};

describe("ONNX mapping of each IR op", () => {
  it("every unary and binary function, in f32 and i32", async () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [3, 8]);
    const y = b.input("y", "f32", [8]);
    const i = b.input("i", "i32", [3, 8]);
    const j = b.input("j", "i32", [8]);
    // Positive operands for log, sqrt, rsqrt and pow's base.
    const pos = b.binary("add", b.unary("abs", x), b.constant(0.25));
    for (const fn of UNARY_OPS)
      b.output(`f32_${fn}`, b.unary(fn, ["log", "sqrt", "rsqrt"].includes(fn) ? pos : x));
    // In i32: the functions with an integer form, and sqrt (computed in f32, truncated: of
    // integers its value is exact or far from the next integer, unlike gelu(6) or erf(4),
    // which float32 rounds to the integer that float64 stays below).
    for (const fn of ["neg", "relu", "abs", "step"] as const) b.output(`i32_${fn}`, b.unary(fn, i));
    b.output("i32_sqrt", b.unary("sqrt", b.unary("abs", i)));
    for (const fn of BINARY_OPS) {
      b.output(
        `f32_${fn}`,
        fn === "div"
          ? b.binary("div", x, b.binary("add", b.unary("abs", y), b.constant(0.25)))
          : b.binary(fn, fn === "pow" ? pos : x, y),
      );
      if (fn === "pow")
        b.output("i32_pow", b.binary("pow", b.unary("abs", i), b.constant(2, "i32")));
      else if (fn === "div") b.output("i32_div", b.binary("div", i, b.constant(3, "i32")));
      else b.output(`i32_${fn}`, b.binary(fn, i, j));
    }
    const ints = (n: number, seed: number) => Array.from(values(n, seed), (v) => Math.round(v * 3));
    // Ties and equal values for eq, max and min.
    const xs = values(24, 1);
    xs[3] = 0;
    const ys = values(8, 2);
    ys[3] = 0;
    expectClose(await both(b.finish(), { x: xs, y: ys, i: ints(24, 3), j: ints(8, 4) }));
  });

  it("matmul, reductions, softmax, the causal mask, views, concat, cast and cumsum", async () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [2, 4, 6]);
    const w = b.param("w", [6, 5], true, "normal(1)");
    b.output("matmul", b.matmul(x, w));
    b.output("batched", b.matmul(x, b.permute(x, [0, 2, 1])));
    for (const fn of ["sum", "mean", "max"] as const)
      for (const axis of [0, 1, 2]) b.output(`${fn}${axis}`, b.reduce(fn, x, axis, axis === 1));
    b.output("softmax", b.softmax(x));
    const square = b.slice(x, 2, 1, 4);
    b.output("causal", b.softmax(b.causalMask(square)));
    b.output("reshape", b.reshape(b.permute(x, [1, 0, 2]), [4, 12]));
    b.output("concat", b.concat([x, b.slice(x, 1, 1, 2)], 1));
    b.output("cast", b.cast(b.binary("mul", x, b.constant(3)), "i32"));
    b.output("cumsum", b.cumsum(x, 1));
    b.output("cumsum_i32", b.cumsum(b.cast(b.binary("mul", x, b.constant(3)), "i32"), 2));
    b.output("iota", b.iota(x));
    b.output(
      "const",
      b.binary("add", b.constant(1.5, "f32", [2, 4, 6]), b.constant(-1, "f32", [1])),
    );
    expectClose(await both(b.finish(), { x: values(48, 5) }, { w: values(30, 6) }));
  });

  it("gather, scatter_add with repeated ids, topk with ties", async () => {
    const b = new IrBuilder();
    const table = b.param("table", [5, 3], true, "normal(1)");
    const ids = b.input("ids", "i32", [2, 4]);
    const src = b.input("src", "f32", [2, 4, 3]);
    b.output("gather", b.gather(table, ids));
    b.output("scatter", b.scatterAdd(src, ids, 5));
    const scores = b.input("scores", "f32", [3, 6]);
    b.output("topk", b.topk(scores, 3));
    const s = Array.from(values(18, 7));
    s[1] = s[4] = 5; // a tie: the lower position first
    s[8] = s[9] = s[10] = -1;
    expectClose(
      await both(
        b.finish(),
        { ids: [0, 4, 4, 1, 2, 0, 4, 3], src: values(24, 8), scores: s },
        { table: values(15, 9) },
      ),
    );
  });

  it("expert_matmul: each row by its expert's weight, rows outside every expert zero", async () => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [7, 4]);
    const ids = b.input("ids", "i32", [7]);
    const w = b.param("w", [3, 4, 5], true, "normal(1)");
    b.output("y", b.expertMatmul(x, w, ids, b.groupRows(ids, 3, 4)));
    const errors = await both(
      b.finish(),
      { x: values(28, 10), ids: [2, 0, -1, 2, 1, 3, 0] },
      { w: values(60, 11) },
    );
    expectClose(errors);
  });
});
