/**
 * AdamW (`std.optim`): its option ranges, and the optimizer step as IR (`appendAdamW`).
 *
 * The step is torch.optim.AdamW's, term for term, after clip_grad_norm_:
 *   scale = min(1, max_norm / (‖g‖ + 1e-6));  g ← scale·g
 *   p ← p − lr·wd·p                            (decoupled; only parameters with `decay`)
 *   m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
 *   p ← p − (lr / (1 − β1ᵗ))·m / (√v / √(1 − β2ᵗ) + eps)
 * The learning rate and both bias corrections are one-element graph inputs (`adamwStepInputs`
 * computes them on the host), so a schedule changes them per step without recompiling.
 */
import type { IrBuilder } from "../../ir/builder.js";
import type { LoweredPrimitiveRule } from "../../lower/lowering-hooks.js";
import { requireRange } from "../options.js";
import { rowRuns } from "./param-groups.js";

export const adamwRule: LoweredPrimitiveRule = {
  role: "optimizer",
  construct(ctx) {
    requireRange(ctx, "lr", (x) => x > 0, "positive");
    requireRange(ctx, "beta1", (x) => x >= 0 && x < 1, "in [0, 1)");
    requireRange(ctx, "beta2", (x) => x >= 0 && x < 1, "in [0, 1)");
    requireRange(ctx, "weight_decay", (x) => x >= 0, "non-negative");
    requireRange(ctx, "max_norm", (x) => x >= 0, "non-negative (0: no clipping)");
  },
};

/** AdamW's options (PyTorch's names and defaults), plus clip_grad_norm_'s max_norm. */
export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Clip the global gradient norm to this (clip_grad_norm_); undefined: no clipping. */
  maxNorm?: number;
}

export const ADAMW_DEFAULTS: AdamWOptions = {
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
  weightDecay: 0.01,
};

/** One parameter the optimizer updates. */
export interface AdamWParam {
  /** The parameter's dotted path (its `param` node's name). */
  name: string;
  param: number;
  grad: number;
  /** Apply weight decay to it (PyTorch's usual split: matrices yes, biases and norms no). */
  decay: boolean;
  /** Its learning rate is the scheduled one times this (default 1). */
  lrScale?: number;
  /**
   * Only these rows (first-axis indices, ascending) train: the gradient of every other row is
   * zeroed before clipping, so those rows' moments stay 0 and their values keep their bytes
   * (a zero step and no decay leave a float exactly as it was).
   */
  rows?: number[];
}

/** The graph inputs the host sets every step (one-element f32 each). */
export const ADAMW_INPUTS = {
  lr: "adamw.lr",
  biasCorrection1: "adamw.bias_correction1",
  biasCorrection2: "adamw.bias_correction2",
} as const;

/** Output and state names: `update:<p>`, `exp_avg:<p>` (new state), `exp_avg.<p>` (old state). */
export const adamwNames = {
  update: (p: string) => `update:${p}`,
  expAvgOut: (p: string) => `exp_avg:${p}`,
  expAvgSqOut: (p: string) => `exp_avg_sq:${p}`,
  expAvg: (p: string) => `exp_avg.${p}`,
  expAvgSq: (p: string) => `exp_avg_sq.${p}`,
  gradNorm: "grad_norm",
};

/**
 * Appends the AdamW step for `params` to the graph `b` is building: the three step inputs,
 * each parameter's moments as frozen parameters (`exp_avg.<p>`, `exp_avg_sq.<p>`), and the
 * outputs `grad_norm` (before clipping) and, per parameter, `update:<p>`, `exp_avg:<p>` and
 * `exp_avg_sq:<p>`.
 */
export function appendAdamW(
  b: IrBuilder,
  params: readonly AdamWParam[],
  options: AdamWOptions = ADAMW_DEFAULTS,
): void {
  const { beta1, beta2, eps, weightDecay, maxNorm } = options;
  const lr = b.input(ADAMW_INPUTS.lr, "f32", [1]);
  const bc1 = b.input(ADAMW_INPUTS.biasCorrection1, "f32", [1]);
  const bc2 = b.input(ADAMW_INPUTS.biasCorrection2, "f32", [1]);

  // Gradients of rows that do not train are zeroed first, as a PyTorch gradient hook would.
  const masks = params.map((p) => (p.rows ? rowMask(b, b.shape(p.param), p.rows) : undefined));
  const grads = params.map((p, i) =>
    masks[i] === undefined ? p.grad : b.binary("mul", p.grad, masks[i]!),
  );

  // ‖g‖ over every gradient, as one vector (clip_grad_norm_ with the 2-norm): each square is
  // summed along its last axis first, so a large matrix is reduced by many rows at once.
  let sumSq: number | undefined;
  for (const grad of grads) {
    const shape = b.shape(grad);
    let sq = b.binary("mul", grad, grad);
    if (shape.length >= 2) sq = b.reduce("sum", sq, -1, false);
    const n = b.shape(sq).reduce((a, d) => a * d, 1);
    const s = b.reduce("sum", b.reshape(sq, [1, n]), 1, false);
    sumSq = sumSq === undefined ? s : b.binary("add", sumSq, s);
  }
  const norm = sumSq === undefined ? b.constant(0, "f32", [1]) : b.unary("sqrt", sumSq);
  b.output(adamwNames.gradNorm, norm);
  const scale =
    maxNorm === undefined
      ? undefined
      : b.binary(
          "min",
          b.constant(1),
          b.binary("div", b.constant(maxNorm), b.binary("add", norm, b.constant(1e-6))),
        );

  const sqrtBc2 = b.unary("sqrt", bc2);
  params.forEach((p, i) => {
    const shape = b.shape(p.param);
    const g = scale === undefined ? grads[i]! : b.binary("mul", grads[i]!, scale);
    const lrP =
      p.lrScale === undefined || p.lrScale === 1 ? lr : b.binary("mul", lr, b.constant(p.lrScale));
    let w = p.param;
    if (p.decay && weightDecay !== 0) {
      let lrWd = b.binary("mul", lrP, b.constant(weightDecay));
      if (masks[i] !== undefined) lrWd = b.binary("mul", lrWd, masks[i]!);
      const keep = b.binary("sub", b.constant(1), lrWd);
      w = b.binary("mul", w, keep);
    }
    const m0 = b.param(adamwNames.expAvg(p.name), shape, false, "zeros");
    const v0 = b.param(adamwNames.expAvgSq(p.name), shape, false, "zeros");
    const m = b.binary(
      "add",
      b.binary("mul", m0, b.constant(beta1)),
      b.binary("mul", g, b.constant(1 - beta1)),
    );
    const v = b.binary(
      "add",
      b.binary("mul", v0, b.constant(beta2)),
      b.binary("mul", b.binary("mul", g, g), b.constant(1 - beta2)),
    );
    const denom = b.binary("add", b.binary("div", b.unary("sqrt", v), sqrtBc2), b.constant(eps));
    const stepSize = b.binary("div", lrP, bc1);
    const updated = b.binary("sub", w, b.binary("mul", stepSize, b.binary("div", m, denom)));
    b.output(adamwNames.update(p.name), updated);
    b.output(adamwNames.expAvgOut(p.name), m);
    b.output(adamwNames.expAvgSqOut(p.name), v);
  });
}

/** 1 on the given rows of a `shape` tensor, 0 elsewhere, shaped [rows, 1, ...] to broadcast. */
function rowMask(b: IrBuilder, shape: readonly number[], rows: readonly number[]): number {
  const count = shape[0]!;
  const index = b.cast(b.iota(b.constant(0, "f32", [1, count])), "f32");
  let mask: number | undefined;
  for (const [start, end] of rowRuns(rows)) {
    // [start, end): (i < end) − (i < start), exactly 0 or 1.
    const run = b.binary(
      "sub",
      b.binary("lt", index, b.constant(end)),
      b.binary("lt", index, b.constant(start)),
    );
    mask = mask === undefined ? run : b.binary("add", mask, run);
  }
  return b.reshape(mask ?? b.constant(0, "f32", [1, count]), [
    count,
    ...shape.slice(1).map(() => 1),
  ]);
}

/** The step inputs for step `t` (1-based) at learning rate `lr`. */
export function adamwStepInputs(
  t: number,
  lr: number,
  options: Pick<AdamWOptions, "beta1" | "beta2"> = ADAMW_DEFAULTS,
): Map<string, Float32Array> {
  if (!Number.isInteger(t) || t < 1) throw new Error(`AdamW steps count from 1, got ${t}`);
  return new Map([
    [ADAMW_INPUTS.lr, Float32Array.of(lr)],
    [ADAMW_INPUTS.biasCorrection1, Float32Array.of(1 - options.beta1 ** t)],
    [ADAMW_INPUTS.biasCorrection2, Float32Array.of(1 - options.beta2 ** t)],
  ]);
}
