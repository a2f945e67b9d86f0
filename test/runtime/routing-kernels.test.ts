// The routing kernels (top-k, running sums, rows grouped by expert, the expert matmul with its
// fused epilogue) on the real device against the float64 reference interpreter: seeded random
// inputs, outputs poisoned with NaN first, awkward sizes (1, 7, 33, more experts than rows,
// experts with no rows, dropped rows, ties). Integer results must be equal, floats within 1e-5.
import { describe, expect, it } from "vitest";

import * as path from "node:path";
import { IrBuilder } from "../../compiler/ir/builder.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import { analyze, lower, nodeFileSystem } from "../../compiler/pipeline.js";
import {
  DEFAULT_TUNING,
  type Tuning,
  matmulVariant,
  withMatmulVariant,
} from "../../compiler/kernels/wgsl/variants.js";
import { type LeafSpec, checkGraph, useDevice } from "./gpu-harness.js";

const gpu = useDevice();

let seed = 500;

async function expectMatches(
  graph: IrGraph,
  specs: Record<string, LeafSpec> = {},
  tuning?: Tuning,
) {
  const r = await checkGraph(gpu(), graph, { seed: seed++, specs, ...(tuning ? { tuning } : {}) });
  for (const [name, err] of Object.entries(r.errors)) {
    const node = graph.nodes[graph.outputs.find((o) => o.name === name)!.node]!;
    if (node.dtype === "i32") {
      expect([...r.gpu.get(name)!], `output ${name}`).toEqual([...r.ref.get(name)!.data]);
    } else expect(err, `output ${name}: relative L2 error`).toBeLessThan(1e-5);
  }
  return r;
}

describe("topk", () => {
  it.each([
    [1, 1, 1],
    [7, 5, 2],
    [33, 8, 8],
    [3, 67, 7],
  ])("rows %i, width %i, k %i", async (rows, width, k) => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [rows, width]);
    b.output("ids", b.topk(x, k));
    await expectMatches(b.finish());
  });

  it("breaks ties by the lower position, and reads a transposed view", async () => {
    const b = new IrBuilder();
    // Integer-valued scores in 0..2 make many ties.
    const x = b.cast(b.input("x", "i32", [9, 6]), "f32");
    b.output("ids", b.topk(x, 4));
    b.output("by_column", b.topk(b.permute(b.binary("mul", x, b.constant(0.5)), [1, 0]), 3));
    await expectMatches(b.finish(), { x: { ints: 3 } });
  });
});

describe("cumsum", () => {
  it.each([
    [[1], 0],
    [[7, 3], 0],
    [[33, 5], 1],
    [[2, 9, 4], 1],
  ])("shape %j along %i", async (shape, axis) => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", shape);
    b.output("y", b.cumsum(x, axis));
    await expectMatches(b.finish());
  });
});

describe("group_rows", () => {
  it.each([
    [1, 1, 4],
    [7, 3, 4],
    [33, 9, 16],
    [5, 12, 8], // more experts than rows: most have none
  ])("%i rows over %i experts, align %i", async (rows, experts, align) => {
    const b = new IrBuilder();
    // ids in -1..experts: -1 and `experts` are dropped rows.
    const ids = b.binary("sub", b.input("ids", "i32", [rows]), b.constant(1, "i32"));
    b.output("order", b.groupRows(ids, experts, align));
    await expectMatches(b.finish(), { ids: { ints: experts + 2 } });
  });
});

describe("expert_matmul", () => {
  it.each([
    [1, 4, 3, 1, "nn"],
    [7, 8, 5, 3, "nt"],
    [33, 12, 20, 4, "nt"],
    [9, 5, 7, 16, "nn"], // more experts than rows
    [40, 64, 33, 5, "nn"],
  ] as const)("%i rows, K %i, N %i, %i experts (%s)", async (rows, K, N, E, layout) => {
    const b = new IrBuilder();
    const x = b.input("x", "f32", [rows, K]);
    const ids = b.binary("sub", b.input("ids", "i32", [rows]), b.constant(1, "i32"));
    // Experts' weights as std.nn.Linear stores them ([out, in], read transposed) or [in, out].
    const w =
      layout === "nt"
        ? b.permute(b.param("w", [E, N, K], true, "normal"), [0, 2, 1])
        : b.param("w", [E, K, N], true, "normal");
    const order = b.groupRows(ids, E, 16);
    const y = b.expertMatmul(x, w, ids, order);
    // The epilogue: each row's own expert bias, then an activation.
    const bias = b.gather(
      b.param("b", [E, N], true, "normal"),
      b.binary("max", ids, b.constant(0, "i32")),
    );
    b.output("y", b.unary("gelu", b.binary("add", y, bias)));
    b.output("plain", b.expertMatmul(x, w, ids, order));
    await expectMatches(b.finish(), { ids: { ints: E + 1 } });
  });

  it(
    "with the large-matmul variant: 32-row blocks of 32-aligned segments, vec4 along k",
    {
      timeout: 300_000,
    },
    async () => {
      // 70 rows over 3 experts (one may get none), K a multiple of 4, N past one 32-column block.
      const [rows, K, N, E] = [70, 68, 40, 3];
      const b = new IrBuilder();
      const x = b.input("x", "f32", [rows, K]);
      const ids = b.binary("sub", b.input("ids", "i32", [rows]), b.constant(1, "i32"));
      const w = b.permute(b.param("w", [E, N, K], true, "normal"), [0, 2, 1]);
      const order = b.groupRows(ids, E, 32);
      const bias = b.gather(
        b.param("b", [E, N], true, "normal"),
        b.binary("max", ids, b.constant(0, "i32")),
      );
      b.output("y", b.unary("gelu", b.binary("add", b.expertMatmul(x, w, ids, order), bias)));
      const v = matmulVariant("vreg32x32-cols-8x1");
      const r = await expectMatches(
        b.finish(),
        { ids: { ints: E + 1 } },
        withMatmulVariant(DEFAULT_TUNING, v),
      );
      // Really the 32-row block (slots order_0 … order_31) and vec4 loads.
      const k = r.program.kernels.find((x) => x.kind === "matmul")!;
      expect(k.wgsl).toContain("order_31");
      expect(k.wgsl).toContain("array<vec4<f32>>");
    },
  );
});

describe("eq and lt", () => {
  it("compare in f32 and i32", async () => {
    const b = new IrBuilder();
    const a = b.input("a", "i32", [7, 5]);
    const c = b.input("c", "i32", [5]);
    b.output("eq", b.binary("eq", a, c));
    b.output("lt", b.binary("lt", b.cast(a, "f32"), b.cast(c, "f32")));
    await expectMatches(b.finish(), { a: { ints: 3 }, c: { ints: 3 } });
  });
});

describe("whole MoE layers on the device", () => {
  const file = path.join(import.meta.dirname, "../../examples/__routing_gpu__.moe");
  function lowerSource(router: string, experts: number, dims: Record<string, number>) {
    const src = `import std.nn { FFN, Linear }
import std.route { MoE, TopK, ExpertChoice, TaskRoute, TokenMix }
import std.adapt { LoRA }
tasks Lang { a, b, c }
model M() { in x: f32[B, T, 12]  in task: Lang[B]  out y: f32[B, T, 12]
  moe = MoE(router: ${router}, experts: [FFN(12, 20, act: gelu); ${experts}])
  y = moe(x${router.startsWith("TaskRoute") || router.includes("task_embed") ? ", task" : ""}) }`;
    return lowerGraph(src, dims);
  }

  /** The graph of a model's source at the given sizes, which must lower without errors. */
  function lowerGraph(src: string, dims: Record<string, number>) {
    const analysis = analyze([file], nodeFileSystem(new Map([[file, src]])));
    const r = lower(analysis, file, undefined, new Map(), new Map(Object.entries(dims)));
    if ("error" in r || !r.model) throw new Error(JSON.stringify(r));
    expect(r.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    return r.model.graph;
  }

  it.each([
    ["TopK(2)", 6, { B: 3, T: 7 }],
    ["TopK(2, capacity: 1.0, task_embed: 4)", 5, { B: 3, T: 5 }],
    ["TopK(3, softmax: after)", 3, { B: 1, T: 1 }], // a single token
    ["TopK(1)", 9, { B: 1, T: 3 }], // more experts than tokens
    ["TopK(4)", 4, { B: 2, T: 3 }], // k = E
    ["ExpertChoice(capacity: 1.5)", 4, { B: 2, T: 7 }],
    ["TaskRoute(level: sequence, k: 2, embed: 4)", 4, { B: 3, T: 3 }],
    ["TaskRoute(level: task, k: 1)", 3, { B: 4, T: 2 }],
    ["TokenMix(group: 2, discrete: true)", 3, { B: 4, T: 3 }],
    ["TokenMix(group: 3)", 3, { B: 3, T: 2 }],
  ] as const)("%s over %i experts", async (router, experts, dims) => {
    await expectMatches(lowerSource(router, experts, dims), { task: { ints: 3 } });
  });

  it("per-task LoRA on a shared Linear, segmented by task", async () => {
    const src = `import std.nn { Linear }
import std.adapt { LoRA }
tasks Lang { a, b, c }
model M() { in x: f32[B, T, 12]  in task: Lang[B]  out y: f32[B, T, 20]
  q = Linear(12, 20) with per task LoRA(r: 4, alpha: 8.0)
  y = q(x, task) }`;
    const analysis = analyze([file], nodeFileSystem(new Map([[file, src]])));
    const r = lower(
      analysis,
      file,
      undefined,
      new Map(),
      new Map([
        ["B", 5],
        ["T", 3],
      ]),
    );
    if ("error" in r || !r.model) throw new Error(JSON.stringify(r));
    expect(r.model.graph.nodes.filter((n) => n.op === "expert_matmul").length).toBe(2);
    await expectMatches(r.model.graph, { task: { ints: 3 } });
  });

  it("a per-task bottleneck attached to a base with `with`, per-task widths", async () => {
    const src = `import std.nn { FFN }
import std.adapt { Bottleneck }
tasks Lang { a, b, c }
model M() { in x: f32[B, T, 12]  in task: Lang[B]  out y: f32[B, T, 12]
  tuned = frozen FFN(12, 20) with per task Bottleneck(12, r: { a: 3, b: 5, c: 1 }, act: gelu)
  y = tuned(x, task) }`;
    await expectMatches(lowerGraph(src, { B: 7, T: 3 }), { task: { ints: 3 } });
  });

  it.each([
    ["one rank", "2", { B: 5, T: 3 }],
    ["ranks per task", "{ a: 3, b: 1, c: 2 }", { B: 7, T: 1 }],
  ] as const)("per-task LoRA targets inside a block, %s", async (_, r, dims) => {
    const src = `import std.nn { Linear }
import std.adapt { LoRA }
tasks Lang { a, b, c }
block Pair(d: Dim) { in x: f32[..., d]  out y: f32[..., d]
  q = Linear(d, 20)
  o = Linear(20, d)
  y = o(gelu(q(x))) }
model M() { in x: f32[B, T, 12]  in task: Lang[B]  out y: f32[B, T, 12]
  pair = frozen Pair(12) with per task LoRA(r: ${r}, alpha: 8.0, targets: ["q", "o"])
  y = pair(x, task) }`;
    const graph = lowerGraph(src, dims);
    // Segmented: one expert_matmul per LoRA matrix of each target, for all tasks.
    expect(graph.nodes.filter((n) => n.op === "expert_matmul").length).toBe(4);
    await expectMatches(graph, { task: { ints: 3 } });
  });

  it.each([
    ["Hash()", 4, { B: 3, T: 7 }],
    ["Hash(seed: 5)", 9, { B: 1, T: 7 }], // more experts than tokens
    ["Hash(seed: 2)", 3, { B: 2, T: 33 }],
  ] as const)("%s over %i experts: the hash and the layer", async (router, experts, dims) => {
    const src = `import std.nn { FFN }
import std.route { MoE, Hash }
model M() { in x: f32[B, T, 12]  in tokens: i32[B, T]  out y: f32[B, T, 12]
  moe = MoE(router: ${router}, experts: [FFN(12, 20, act: gelu); ${experts}])
  y = moe(x, tokens) }`;
    const analysis = analyze([file], nodeFileSystem(new Map([[file, src]])));
    const r = lower(analysis, file, undefined, new Map(), new Map(Object.entries(dims)), {
      routingStats: true,
    });
    if ("error" in r || !r.model) throw new Error(JSON.stringify(r));
    expect(r.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    const graph = r.model.graph;
    expect(graph.outputs.map((o) => o.name)).toContain("routing:moe.experts");
    // Ids over all of i32's non-negative range: the modular arithmetic near 2³¹ must agree.
    await expectMatches(graph, { tokens: { ints: 2 ** 31 - 1 } });
  });

  it("ties: a zero router gives every token experts 0 and 1", async () => {
    const graph = lowerSource("TopK(2)", 5, { B: 2, T: 3 });
    const zero = { lo: 0, hi: 0 };
    await expectMatches(graph, { "moe.router.gate.weight": zero });
  });
});
