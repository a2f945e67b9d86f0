// A softmax regression with hand-written gradients, assembled into a train step: the graph
// the train-runtime tests drive (the autodiff pass is not needed to test the runtime).
import { IrBuilder } from "../../../compiler/ir/builder.js";
import type { IrGraph } from "../../../compiler/ir/graph.js";
import { adamwStepInputs } from "../../../compiler/library/optim/adamw.js";
import { assembleTrainStep } from "../../../compiler/library/optim/train-step.js";
import { learningRate } from "../../../runtime/train/schedule.js";
import { prng } from "../gpu-harness.js";

export const N = 64;
export const D = 8;
export const C = 4;
export const ADAMW = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxNorm: 1 };

/**
 * logits = (x·W + b)·temp (temp frozen), loss = mean over rows of −Σ y·log softmax(logits),
 * with its gradients written by hand: dlogits = (p − y)/N, dW = xᵀ·(dlogits·temp),
 * db = Σ_rows dlogits·temp. Outputs `loss` and a second term `ce_first` (the first row's).
 */
export function softmaxRegression(): IrGraph {
  const b = new IrBuilder();
  const x = b.input("x", "f32", [N, D]);
  const y = b.input("y", "f32", [N, C]);
  const w = b.param("w", [D, C], true, "normal");
  const bias = b.param("b", [C], true, "zeros");
  const temp = b.param("temp", [C], false, "ones");
  const pre = b.binary("add", b.matmul(x, w), bias);
  const logits = b.binary("mul", pre, temp);
  const p = b.softmax(logits);
  const ce = b.unary("neg", b.reduce("sum", b.binary("mul", y, b.unary("log", p)), 1, false));
  b.output("loss", b.reduce("mean", b.reshape(ce, [1, N]), 1, false));
  b.output("ce_first", b.slice(ce, 0, 0, 1));
  const dLogits = b.binary("div", b.binary("sub", p, y), b.constant(N));
  const dPre = b.binary("mul", dLogits, temp);
  const dw = b.matmul(b.permute(x, [1, 0]), dPre);
  const db = b.reduce("sum", dPre, 0, false);
  const graph = b.finish();
  return assembleTrainStep(
    graph,
    new Map([
      ["w", dw],
      ["b", db],
    ]),
    [
      { name: "w", trainable: true, decay: true },
      { name: "b", trainable: true, decay: false },
      { name: "temp", trainable: false, decay: false },
    ],
    ADAMW,
  );
}

/** Rows of x labelled by argmax(x·W*) for a random W*: linearly separable. */
export function dataset(seed: number, n = N) {
  const rand = prng(seed);
  const x = Float32Array.from({ length: n * D }, () => 2 * rand() - 1);
  const wStar = Float64Array.from({ length: D * C }, () => 2 * rand() - 1);
  const y = new Float32Array(n * C);
  for (let r = 0; r < n; r++) {
    let best = 0;
    let bestV = -Infinity;
    for (let c = 0; c < C; c++) {
      let v = 0;
      for (let k = 0; k < D; k++) v += x[r * D + k]! * wStar[k * C + c]!;
      if (v > bestV) [best, bestV] = [c, v];
    }
    y[r * C + best] = 1;
  }
  return { x, y };
}

export function initialState(seed: number): Map<string, Float32Array> {
  const rand = prng(seed);
  const rnd = (n: number, s: number) =>
    Float32Array.from({ length: n }, () => s * (2 * rand() - 1));
  return new Map([
    ["w", rnd(D * C, 0.5)],
    ["b", rnd(C, 0.1)],
    ["temp", Float32Array.from({ length: C }, () => 1.5 + rand())],
    ["exp_avg.w", new Float32Array(D * C)],
    ["exp_avg_sq.w", new Float32Array(D * C)],
    ["exp_avg.b", new Float32Array(C)],
    ["exp_avg_sq.b", new Float32Array(C)],
  ]);
}

export const schedule = { lr: 0.05, totalSteps: 200, warmupSteps: 10, decay: "cosine" as const };

export function feeds(
  data: { x: Float32Array; y: Float32Array },
  t: number,
): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>(adamwStepInputs(t, learningRate(schedule, t), ADAMW));
  m.set("x", data.x);
  m.set("y", data.y);
  return m;
}
