/**
 * The loss builtins of `train` programs as IR: cross_entropy, distill and mse, each a scalar
 * f32 [] built from ops that have gradient rules (no new op), in float32 with the max
 * subtracted before every exp. Semantics follow PyTorch, with the differences noted per
 * function (docs/training.md).
 */
import type { IrBuilder } from "../ir/builder.js";
import { numel } from "../ir/graph.js";

/** log_softmax over the last axis, with the row max subtracted first. */
export function logSoftmax(ir: IrBuilder, x: number): number {
  const shifted = ir.binary("sub", x, ir.reduce("max", x, -1, true));
  const logSum = ir.unary("log", ir.reduce("sum", ir.unary("exp", shifted), -1, true));
  return ir.binary("sub", shifted, logSum);
}

/** x [..., C] as rows [N, C]. */
function rows(ir: IrBuilder, x: number): { flat: number; N: number; C: number } {
  const s = ir.shape(x);
  const C = s[s.length - 1]!;
  const N = numel(s.slice(0, -1));
  return { flat: ir.reshape(x, [N, C]), N, C };
}

/** Σ of every element of x, as a scalar []. */
function sumAll(ir: IrBuilder, x: number): number {
  return ir.reduce("sum", ir.reshape(x, [numel(ir.shape(x))]), 0, false);
}

/**
 * Mean cross-entropy of `logits` [..., C] against i32 `labels` [...], as PyTorch's
 * `F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1), ignore_index, label_smoothing)`:
 * per position (1 − ε)·(−log p_y) + ε·mean_j(−log p_j), averaged over the positions whose
 * label is not `ignoreIndex`. With every position ignored the result is 0 (PyTorch: NaN). A
 * label outside [0, C) that is not ignored contributes only its smoothing term (PyTorch
 * raises). The picked log-probability is a one-hot (labels = iota) dot product: the
 * comparison has no gradient, the log-probabilities do.
 */
export function lowerCrossEntropy(
  ir: IrBuilder,
  logits: number,
  labels: number,
  ignoreIndex: number,
  smoothing: number,
): number {
  const { flat, N, C } = rows(ir, logits);
  const ids = ir.reshape(ir.cast(labels, "i32"), [N, 1]);
  const logp = logSoftmax(ir, flat); // [N, C]
  const classes = ir.iota(ir.constant(0, "i32", [N, C]));
  const onehot = ir.cast(ir.binary("eq", classes, ids), "f32");
  const nll = ir.unary("neg", ir.reduce("sum", ir.binary("mul", onehot, logp), -1, false)); // [N]
  let perRow = nll;
  if (smoothing > 0) {
    const smooth = ir.unary("neg", ir.reduce("mean", logp, -1, false)); // [N]
    perRow = ir.binary(
      "add",
      ir.binary("mul", nll, ir.constant(1 - smoothing)),
      ir.binary("mul", smooth, ir.constant(smoothing)),
    );
  }
  const ignored = ir.cast(ir.binary("eq", ids, ir.constant(ignoreIndex, "i32")), "f32"); // [N, 1]
  const kept = ir.reshape(ir.binary("sub", ir.constant(1), ignored), [N]);
  const total = sumAll(ir, ir.binary("mul", perRow, kept));
  // At least 1 in the denominator: all-ignored batches give 0·(1/1) = 0 rather than 0/0.
  const count = ir.binary("max", sumAll(ir, kept), ir.constant(1));
  return ir.binary("div", total, count);
}

/** Teacher weights for distill: fixed, one row per example ([N, K], rows summing to 1), or CA-MKD's. */
export type DistillWeights =
  | { kind: "fixed"; values: readonly number[] }
  | { kind: "rows"; node: number }
  | { kind: "confidence"; labels: number };

/**
 * Knowledge distillation from `teachers` (each [..., C], like the student) with `weights`
 * at temperature τ: τ²·KL(p ‖ q) with p = Σ_k w_k·softmax(t_k/τ) and q = softmax(s/τ), summed
 * over classes and averaged over the rows of the flattened [N, C] view: PyTorch's
 * `τ² · F.kl_div(log_softmax(s/τ).reshape(-1, C), p.reshape(-1, C), reduction="batchmean")`.
 * log p is a log-sum-exp over the teachers of log w_k + log p_k, so p_j log p_j needs no
 * clamp. Weights are fixed (summing to 1), given per example as a tensor [..., K], or
 * confidence-aware (CA-MKD, Zhang et al. 2022): per example, teacher k's cross-entropy on the
 * label L_k gives w_k = (1 − e^{L_k}/Σ_j e^{L_j})/(K − 1), so the teachers that predict the
 * label better weigh more (rows whose label is outside [0, C) weigh them equally). Teachers get gradients only
 * through their own inputs: they come from frozen instances, and the IR has no stop-gradient,
 * so a teacher sharing parameters with the student passes gradients to them.
 */
export function lowerDistill(
  ir: IrBuilder,
  student: number,
  teachers: readonly number[],
  temperature: number,
  weights: DistillWeights,
): number {
  const { flat, N, C } = rows(ir, student);
  const K = teachers.length;
  const invT = ir.constant(1 / temperature);
  const logq = logSoftmax(ir, ir.binary("mul", flat, invT));
  const teacherRows = teachers.map((t) => rows(ir, t).flat);
  // log w_k per teacher: a constant, or a column [N, 1] of per-example weights.
  let logW: (k: number) => number | undefined;
  if (weights.kind === "fixed") {
    // Teachers with weight 0 add nothing; log 0 would put -inf in the graph.
    logW = (k) => (weights.values[k]! > 0 ? ir.constant(Math.log(weights.values[k]!)) : undefined);
  } else {
    const w = weights.kind === "rows" ? ir.reshape(weights.node, [N, K]) : confidenceWeights();
    // A weight of 0 would be log 0: clamped, so the mixture and its gradient stay finite.
    const logRows = ir.unary("log", ir.binary("max", w, ir.constant(1e-30)));
    logW = (k) => ir.slice(logRows, 1, k, 1);
  }
  function confidenceWeights(): number {
    if (K === 1) return ir.constant(1, "f32", [N, 1]);
    const labels = ir.reshape((weights as { labels: number }).labels, [N, 1]);
    const hit = ir.cast(ir.binary("eq", labels, ir.iota(ir.constant(0, "i32", [N, C]))), "f32");
    // L_k: −log p_k(label) at temperature 1, per example: [N, K].
    const losses = ir.concat(
      teacherRows.map((t) =>
        ir.reduce("sum", ir.binary("mul", hit, ir.unary("neg", logSoftmax(ir, t))), 1, true),
      ),
      1,
    );
    const share = ir.softmax(losses);
    return ir.binary("mul", ir.binary("sub", ir.constant(1), share), ir.constant(1 / (K - 1)));
  }
  const terms = teacherRows.flatMap((t, k) => {
    const lw = logW(k);
    return lw === undefined
      ? []
      : [ir.binary("add", logSoftmax(ir, ir.binary("mul", t, invT)), lw)];
  });
  let logp: number;
  if (terms.length === 1) logp = terms[0]!;
  else {
    const m = terms.slice(1).reduce((a, b) => ir.binary("max", a, b), terms[0]!);
    const sum = terms
      .map((t) => ir.unary("exp", ir.binary("sub", t, m)))
      .reduce((a, b) => ir.binary("add", a, b));
    logp = ir.binary("add", m, ir.unary("log", sum));
  }
  const kl = ir.binary("mul", ir.unary("exp", logp), ir.binary("sub", logp, logq)); // [N, C]
  return ir.binary("mul", sumAll(ir, kl), ir.constant((temperature * temperature) / N));
}

/** Mean of (a − b)² over every element (PyTorch's `F.mse_loss`, reduction "mean"). */
export function lowerMse(ir: IrBuilder, a: number, b: number): number {
  const d = ir.binary("sub", a, b);
  const n = numel(ir.shape(d));
  return ir.reduce("mean", ir.reshape(ir.binary("mul", d, d), [n]), 0, false);
}
