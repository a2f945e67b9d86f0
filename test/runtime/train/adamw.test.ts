// AdamW as IR against a float64 transcription of torch.optim.AdamW (with clip_grad_norm_),
// three steps with clipping, decoupled decay, learning-rate multipliers (a group at 10×) and
// trainable rows, on the reference interpreter and on the device (state kept there between
// steps; the rows that do not train keep their bytes).
import { describe, expect, it } from "vitest";

import { IrBuilder } from "../../../compiler/ir/builder.js";
import type { IrGraph } from "../../../compiler/ir/graph.js";
import { compileGraph } from "../../../compiler/kernels/compile-graph.js";
import {
  ADAMW_STEP_INPUT,
  type AdamWOptions,
  adamwStepInputs,
  appendAdamW,
} from "../../../compiler/library/optim/adamw.js";
import { interpret, type HostTensor } from "../../../runtime/reference/interpret.js";
import { learningRate } from "../../../runtime/train/schedule.js";
import { TrainExecutor } from "../../../runtime/train/train-executor.js";
import { prng, relL2, useDevice } from "../gpu-harness.js";

const gpu = useDevice();

const OPTIONS: AdamWOptions = {
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
  maxNorm: 1.5,
};
interface Spec {
  name: string;
  shape: number[];
  decay: boolean;
  lrScale: number;
  rows?: number[];
}
const SPECS: Spec[] = [
  { name: "w", shape: [5, 7], decay: true, lrScale: 1 },
  { name: "b", shape: [7], decay: false, lrScale: 2 },
  // An embedding-like table whose rows 1, 4 and 5 alone train, at 10× the rate, with decay.
  { name: "e", shape: [7, 3], decay: true, lrScale: 10, rows: [1, 4, 5] },
  // Two experts' weights, stacked as an expert matmul reads them (`stack_sum` below): the flat
  // parameter buffer takes the stack's buffer in whole.
  { name: "x0", shape: [3, 4], decay: true, lrScale: 1 },
  { name: "x1", shape: [3, 4], decay: true, lrScale: 1 },
];
/** Whether element j of parameter `spec` trains (its row is one of `rows`). */
const trains = (spec: Spec, j: number) =>
  !spec.rows || spec.rows.includes(Math.floor(j / (size(spec.shape) / spec.shape[0]!)));
const STEPS = 3;
// Per-step gradient scales: steps 1 and 3 are clipped, step 2 is not.
const GRAD_SCALE = [2, 0.05, 1];

interface TorchState {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
}

/** torch.nn.utils.clip_grad_norm_ then torch.optim.AdamW.step (single-tensor path), in float64. */
function torchStep(
  states: TorchState[],
  grads: Float64Array[],
  t: number,
  lr: number,
  o: AdamWOptions,
): number {
  // Rows that do not train have their gradient zeroed first (a gradient hook in PyTorch).
  grads = grads.map((g, i) => g.map((x, j) => (trains(SPECS[i]!, j) ? x : 0)));
  let sq = 0;
  for (const g of grads) for (const x of g) sq += x * x;
  const total = Math.sqrt(sq);
  const coef = Math.min(o.maxNorm! / (total + 1e-6), 1);
  states.forEach((s, i) => {
    const spec = SPECS[i]!;
    const g = grads[i]!.map((x) => x * coef);
    const lrI = lr * spec.lrScale;
    if (spec.decay)
      for (let j = 0; j < s.p.length; j++) if (trains(spec, j)) s.p[j]! *= 1 - lrI * o.weightDecay;
    const bc1 = 1 - o.beta1 ** t;
    const bc2 = 1 - o.beta2 ** t;
    const stepSize = lrI / bc1;
    for (let j = 0; j < s.p.length; j++) {
      s.m[j] = s.m[j]! + (g[j]! - s.m[j]!) * (1 - o.beta1); // exp_avg.lerp_(grad, 1 - beta1)
      s.v[j] = s.v[j]! * o.beta2 + (1 - o.beta2) * g[j]! * g[j]!;
      const denom = Math.sqrt(s.v[j]!) / Math.sqrt(bc2) + o.eps;
      s.p[j] = s.p[j]! - (stepSize * s.m[j]!) / denom;
    }
  });
  return total;
}

/** Gradients enter as inputs: the optimizer alone. */
function optimizerGraph(): IrGraph {
  const b = new IrBuilder();
  const params = SPECS.map((s) => ({
    name: s.name,
    param: b.param(s.name, s.shape, true, "normal"),
    grad: b.input(`grad.${s.name}`, "f32", s.shape),
    decay: s.decay,
    lrScale: s.lrScale,
    ...(s.rows ? { rows: s.rows } : {}),
  }));
  const stack = b.concat(
    ["x0", "x1"].map((x) => b.reshape(params.find((p) => p.name === x)!.param, [1, 3, 4])),
    0,
  );
  b.output("stack_sum", b.reduce("sum", stack, 0, false));
  appendAdamW(b, params, OPTIONS);
  return b.finish();
}

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

function randomF32(n: number, rand: () => number, scale: number): Float64Array {
  return Float64Array.from({ length: n }, () => Math.fround(scale * (2 * rand() - 1)));
}

function setup(seed: number) {
  const rand = prng(seed);
  const init = SPECS.map((s) => randomF32(size(s.shape), rand, 1));
  const grads = GRAD_SCALE.map((scale) => SPECS.map((s) => randomF32(size(s.shape), rand, scale)));
  const schedule = { lr: 0.05, totalSteps: STEPS, warmupSteps: 1, decay: "cosine" as const };
  const lrs = [1, 2, 3].map((t) => Math.fround(learningRate(schedule, t)));
  const expected: TorchState[] = init.map((p) => ({
    p: p.slice(),
    m: new Float64Array(p.length),
    v: new Float64Array(p.length),
  }));
  const norms = grads.map((g, i) => torchStep(expected, g, i + 1, lrs[i]!, OPTIONS));
  return { init, grads, lrs, expected, norms };
}

describe("AdamW as IR", () => {
  it("matches torch.optim.AdamW with clip_grad_norm_ on the reference interpreter", () => {
    const { init, grads, lrs, expected, norms } = setup(11);
    expect(norms[0]).toBeGreaterThan(OPTIONS.maxNorm!);
    expect(norms[1]).toBeLessThan(OPTIONS.maxNorm!);
    const graph = optimizerGraph();
    const state = new Map<string, HostTensor>();
    SPECS.forEach((s, i) => {
      state.set(s.name, { shape: s.shape, data: init[i]!.slice() });
      state.set(`exp_avg.${s.name}`, { shape: s.shape, data: new Float64Array(size(s.shape)) });
      state.set(`exp_avg_sq.${s.name}`, { shape: s.shape, data: new Float64Array(size(s.shape)) });
    });
    for (let t = 1; t <= STEPS; t++) {
      const leaves = new Map(state);
      // Exact bias corrections (the device gets them rounded to float32): the algorithm alone.
      const host = adamwStepInputs(t, lrs[t - 1]!, OPTIONS);
      expect([...host.keys()]).toEqual([ADAMW_STEP_INPUT]);
      const exact = [lrs[t - 1]!, 1 - OPTIONS.beta1 ** t, 1 - OPTIONS.beta2 ** t];
      expect([...host.get(ADAMW_STEP_INPUT)!]).toEqual(exact.map(Math.fround));
      leaves.set(ADAMW_STEP_INPUT, { shape: [3], data: Float64Array.from(exact) });
      SPECS.forEach((s, i) =>
        leaves.set(`grad.${s.name}`, { shape: s.shape, data: grads[t - 1]![i]! }),
      );
      const out = interpret(graph, leaves).outputs;
      expect(out.get("grad_norm")!.data[0]).toBeCloseTo(norms[t - 1]!, 12);
      for (const s of SPECS) {
        state.set(s.name, out.get(`update:${s.name}`)!);
        state.set(`exp_avg.${s.name}`, out.get(`exp_avg:${s.name}`)!);
        state.set(`exp_avg_sq.${s.name}`, out.get(`exp_avg_sq:${s.name}`)!);
      }
    }
    SPECS.forEach((s, i) => {
      const e = expected[i]!;
      expect(relL2(state.get(s.name)!.data, e.p)).toBeLessThan(1e-12);
      expect(relL2(state.get(`exp_avg.${s.name}`)!.data, e.m)).toBeLessThan(1e-12);
      expect(relL2(state.get(`exp_avg_sq.${s.name}`)!.data, e.v)).toBeLessThan(1e-12);
      // The update itself, not just the parameter, must match.
      const moved = state.get(s.name)!.data.map((x, j) => x - init[i]![j]!);
      const want = e.p.map((x, j) => x - init[i]![j]!);
      expect(relL2(moved, want)).toBeLessThan(1e-10);
    });
  });

  it("matches torch.optim.AdamW on the device, state kept there between steps", async () => {
    const ctx = gpu();
    const { init, grads, lrs, expected, norms } = setup(23);
    const program = compileGraph(optimizerGraph(), ctx.limits);
    // One flat parameter buffer, the stack nested in it.
    const buffers = program.params.filter((p) => SPECS.some((s) => s.name === p.name));
    expect(new Set(buffers.map((p) => p.buffer)).size).toBe(1);
    const exe = await TrainExecutor.create(ctx, program);
    try {
      const state = new Map<string, Float32Array>();
      SPECS.forEach((s, i) => {
        state.set(s.name, Float32Array.from(init[i]!));
        state.set(`exp_avg.${s.name}`, new Float32Array(size(s.shape)));
        state.set(`exp_avg_sq.${s.name}`, new Float32Array(size(s.shape)));
      });
      expect(exe.setState(state)).toEqual([]);
      expect(exe.updated.sort()).toEqual(
        SPECS.flatMap((s) => [s.name, `exp_avg.${s.name}`, `exp_avg_sq.${s.name}`]).sort(),
      );
      exe.poison();
      const pending = [];
      for (let t = 1; t <= STEPS; t++) {
        const feeds = new Map<string, Float32Array>(adamwStepInputs(t, lrs[t - 1]!, OPTIONS));
        SPECS.forEach((s, i) => feeds.set(`grad.${s.name}`, Float32Array.from(grads[t - 1]![i]!)));
        pending.push(await exe.submit(feeds));
      }
      for (const [i, p] of pending.entries()) {
        const r = await p.result;
        expect(r.step).toBe(i + 1);
        expect([...r.scalars.keys()].sort()).toEqual(["grad_norm", "stack_sum"]);
        expect(r.scalars.get("grad_norm")![0]).toBeCloseTo(norms[i]!, 4);
      }
      const got = await exe.readState();
      SPECS.forEach((s, i) => {
        const e = expected[i]!;
        const moved = Array.from(got.get(s.name)!, (x, j) => x - init[i]![j]!);
        const want = e.p.map((x, j) => x - init[i]![j]!);
        expect(relL2(moved, want)).toBeLessThan(1e-4);
        expect(relL2(got.get(`exp_avg.${s.name}`)!, e.m)).toBeLessThan(1e-5);
        expect(relL2(got.get(`exp_avg_sq.${s.name}`)!, e.v)).toBeLessThan(1e-5);
        // Rows that do not train: the very bytes they started with, and no optimizer state.
        const p = got.get(s.name)!;
        const start = Float32Array.from(init[i]!);
        for (let j = 0; j < p.length; j++) {
          if (trains(s, j)) continue;
          expect(p[j]).toBe(start[j]);
          expect(got.get(`exp_avg.${s.name}`)![j]).toBe(0);
          expect(got.get(`exp_avg_sq.${s.name}`)![j]).toBe(0);
        }
      });
      // The rows that train did move (the comparison above holds them to the 10× step).
      const e = got.get("e")!;
      expect(
        Array.from(e).some((x, j) => trains(SPECS[2]!, j) && x !== Math.fround(init[2]![j]!)),
      ).toBe(true);
    } finally {
      exe.destroy();
    }
  });
});
