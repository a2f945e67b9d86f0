// A train program through the whole pipeline (lower, differentiate, AdamW, compile) on the
// device: a 10× group moves 10× as far in step 1, only the grouped rows of an embedding train,
// and a frozen teacher gets no backward or optimizer kernel and keeps its bytes for 100 steps.
import { describe, expect, it } from "vitest";

import type { CompiledProgram } from "../../../compiler/kernels/compile-graph.js";
import { compileGraph } from "../../../compiler/kernels/compile-graph.js";
import type { LimitsLike } from "../../../compiler/kernels/plan-buffers.js";
import { adamwStepInputs } from "../../../compiler/library/optim/adamw.js";
import { analyze, assembleTrain, lowerTrain, nodeFileSystem } from "../../../compiler/pipeline.js";
import type { TensorData } from "../../../runtime/executor.js";
import { paramSpecs } from "../../../runtime/run-model.js";
import { TrainExecutor } from "../../../runtime/train/train-executor.js";
import { initWeights } from "../../../runtime/weights.js";
import { prng, useDevice } from "../gpu-harness.js";

const gpu = useDevice();

const V = 11;
const B = 3;
const T = 5;
const LR = 1e-3;

const source = `import std.nn { Embedding, Linear, LayerNorm }
import std.optim { AdamW, Group }
model Net() {
  in tokens: i32[B, T]
  out logits: f32[B, T, ${V}]
  embed = Embedding(${V}, 6)
  norm = LayerNorm(6)
  hidden = Linear(6, 7)
  head = Linear(7, ${V})
  logits = head(hidden(norm(embed(tokens))))
}
train Fit() {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  net = Net()
  teacher = frozen Net()
  loss = cross_entropy(net(tokens), labels) + distill(net(tokens), [teacher(tokens)])
  optimizer = AdamW(lr: ${LR}, weight_decay: 0.0, groups: [
    Group(params: ["net.head.weight", "net.head.bias"], lr_scale: 10.0),
    Group(params: ["net.embed.weight"], rows: [2, 3, 9]),
  ])
}
`;

function compileStep(limits: LimitsLike) {
  const file = "/virtual/flat-adamw.moe";
  const analysis = analyze([file], nodeFileSystem(new Map([[file, source]])));
  expect(analysis.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  const lowered = lowerTrain(
    analysis,
    file,
    undefined,
    new Map(),
    new Map([
      ["B", B],
      ["T", T],
    ]),
  );
  if ("error" in lowered || !lowered.train) throw new Error("lowering failed");
  const step = assembleTrain(lowered.train);
  if ("error" in step) throw new Error(step.error);
  return { train: lowered.train, step, program: compileGraph(step.graph, limits) };
}

/** Kernels that read or write a storage of the named parameter (packed ones by their pack). */
function kernelsTouching(program: CompiledProgram, prefix: string): number {
  const graph = program.fused.graph;
  const ids = new Set(
    program.fused.storages
      .filter((s) => s.name?.startsWith(prefix) && !s.packedIn)
      .map((s) => s.id),
  );
  // Reads of a parameter are loads of its node (packed ones too: the load keeps the node id).
  const nodes = new Set(
    graph.nodes.flatMap((n) => (n.op === "param" && n.name.startsWith(prefix) ? [n.id] : [])),
  );
  return program.fused.kernels.filter(
    (k) => ids.has(k.out.storage) || Object.keys(k.loads).some((id) => nodes.has(Number(id))),
  ).length;
}

describe("parameter groups through the pipeline", () => {
  it(
    "groups, rows and frozen teachers on the device over 100 steps",
    { timeout: 300_000 },
    async () => {
      const ctx = gpu();
      const { train, step, program } = compileStep(ctx.limits);

      const graph = step.graph;
      expect(train.params.filter((p) => p.trainable)).toHaveLength(7);

      // The frozen teacher: no optimizer state, no update, and no kernel beyond its forward.
      expect(step.updated.some((p) => p.startsWith("teacher."))).toBe(false);
      expect(graph.outputs.some((o) => o.name.includes("teacher."))).toBe(false);
      const forward = compileGraph(train.graph, ctx.limits);
      expect(kernelsTouching(program, "teacher.")).toBe(kernelsTouching(forward, "teacher."));

      const exe = await TrainExecutor.create(ctx, program);
      try {
        const init = new Map<string, TensorData>();
        for (const [k, t] of initWeights(paramSpecs(graph), 3)) init.set(k, t.data as TensorData);
        expect(exe.setState(init)).toEqual([]);
        exe.poison();
        const rand = prng(5);
        const ids = () => Int32Array.from({ length: B * T }, () => Math.floor(rand() * V));
        // Tokens avoid no row: every embedding row gets a gradient, trained or not.
        const feeds = (t: number) =>
          new Map<string, TensorData>([
            ["tokens", Int32Array.from({ length: B * T }, (_, i) => (i + t) % V)],
            ["labels", ids()],
            ...adamwStepInputs(t, LR),
          ]);
        await exe.step(feeds(1));
        const after1 = await exe.readState();
        // Adam's first step moves each element by lr·scale·g/(|g| + eps·…) ≈ lr·scale.
        const moved = (name: string) =>
          Array.from(after1.get(name)!, (x, j) => Math.abs(x - init.get(name)![j]!)).filter(
            (d) => d > 0,
          );
        for (const d of moved("net.head.weight")) expect(d / (10 * LR)).toBeCloseTo(1, 2);
        for (const d of moved("net.hidden.weight")) expect(d / LR).toBeCloseTo(1, 2);
        expect(moved("net.head.weight").length).toBeGreaterThan(0);
        expect(moved("net.hidden.weight").length).toBeGreaterThan(0);

        const pending = [];
        for (let t = 2; t <= 100; t++) pending.push((await exe.submit(feeds(t))).result);
        for (const p of pending)
          expect(Number.isFinite((await p).scalars.get("loss")![0])).toBe(true);
        const state = await exe.readState();
        const same = (a: TensorData, b: TensorData) =>
          Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
            Buffer.from(b.buffer, b.byteOffset, b.byteLength),
          );
        for (const [name, data] of init)
          if (name.startsWith("teacher.")) expect(same(state.get(name)!, data), name).toBe(true);
        // Rows 2, 3 and 9 of the embedding trained; every other row kept its bytes and no state.
        const embed = state.get("net.embed.weight") as Float32Array;
        const start = init.get("net.embed.weight") as Float32Array;
        const m = state.get("exp_avg.net.embed.weight") as Float32Array;
        for (let r = 0; r < V; r++) {
          const row = (a: Float32Array) => a.subarray(r * 6, r * 6 + 6);
          if ([2, 3, 9].includes(r)) {
            expect(same(row(embed), row(start)), `row ${r}`).toBe(false);
          } else {
            expect(same(row(embed), row(start)), `row ${r}`).toBe(true);
            expect(Array.from(row(m))).toEqual([0, 0, 0, 0, 0, 0]);
          }
        }
      } finally {
        exe.destroy();
      }
    },
  );
});
