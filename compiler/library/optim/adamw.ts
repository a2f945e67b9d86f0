/**
 * AdamW (`std.optim`): its option ranges, and the optimizer step as IR (`appendAdamW`).
 *
 * The step is torch.optim.AdamW's, term for term, after clip_grad_norm_:
 *   scale = min(1, max_norm / (‖g‖ + 1e-6));  g ← scale·g
 *   p ← p − lr·wd·p                            (decoupled; only parameters with `decay`)
 *   m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
 *   p ← p − (lr / (1 − β1ᵗ))·m / (√v / √(1 − β2ᵗ) + eps)
 * The learning rate and both bias corrections are one graph input (`adamwStepInputs`
 * computes them on the host), so a schedule changes them per step without recompiling.
 */
import type { IrBuilder } from "../../ir/builder.js";
import type { LoweredPrimitiveRule } from "../../lower/lowering-hooks.js";
import { requireRange } from "../options.js";
import { numel } from "../../ir/graph.js";
import { paramStacks } from "../../ir/param-stacks.js";
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

/**
 * The graph input the host sets every step: f32[3] = [learning rate, 1 − β1ᵗ, 1 − β2ᵗ]. One
 * tensor, so the update kernel binds one buffer for all three.
 */
export const ADAMW_STEP_INPUT = "adamw.step";

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
 *
 * The step runs over flat vectors: the parameters, the gradients and both moments each
 * concatenated into one (see `flatLayout`), so the whole update is a few kernels whatever the
 * number of tensors. Where a parameter is stacked in a way the flat vector cannot contain
 * (a stack with frozen members), the step is written per parameter instead.
 */
export function appendAdamW(
  b: IrBuilder,
  params: readonly AdamWParam[],
  options: AdamWOptions = ADAMW_DEFAULTS,
): void {
  const input = b.input(ADAMW_STEP_INPUT, "f32", [3]);
  const step = {
    lr: b.slice(input, 0, 0, 1),
    bc1: b.slice(input, 0, 1, 1),
    bc2: b.slice(input, 0, 2, 1),
  };
  const layout = params.length > 0 ? flatLayout(b, params) : undefined;
  if (layout) appendFlat(b, params, layout, options, step);
  else appendPerTensor(b, params, options, step);
}

interface StepInputs {
  lr: number;
  bc1: number;
  bc2: number;
}

/**
 * Outputs `grad_norm` (√Σg²) and returns a maker of the clip coefficient
 * min(1, max_norm / (‖g‖ + 1e-6)), or undefined without clipping. Each call makes the few
 * scalar nodes anew, so every kernel that scales by it computes it itself.
 */
function clipScale(
  b: IrBuilder,
  sumSq: number | undefined,
  maxNorm?: number,
): (() => number) | undefined {
  const norm = sumSq === undefined ? b.constant(0, "f32", [1]) : b.unary("sqrt", sumSq);
  b.output(adamwNames.gradNorm, b.reshape(norm, [1]));
  if (maxNorm === undefined) return undefined;
  return () =>
    b.binary(
      "min",
      b.constant(1),
      b.binary("div", b.constant(maxNorm), b.binary("add", norm, b.constant(1e-6))),
    );
}

/** A parameter's place in the flat vectors. */
interface FlatSlot {
  p: AdamWParam;
  offset: number;
  size: number;
}

/**
 * The order of the flat vectors: each parameter stack (param-stacks.ts: the experts' weights
 * the forward pass reads as one buffer) as a consecutive run in its own order, so the back
 * end nests the stack's buffer in the flat one; then the runs sorted by their settings, so a
 * per-element learning-rate scale or decay mask has few pieces. Undefined where a stack has
 * a member that does not train or sits in two stacks.
 */
function flatLayout(b: IrBuilder, params: readonly AdamWParam[]): FlatSlot[] | undefined {
  const byNode = new Map(params.map((p) => [p.param, p]));
  const stackOf = new Map<number, number[]>();
  for (const stack of paramStacks(b.nodes)) {
    if (!stack.params.some((id) => byNode.has(id))) continue;
    if (!stack.params.every((id) => byNode.has(id) && !stackOf.has(id))) return undefined;
    for (const id of stack.params) stackOf.set(id, stack.params);
  }
  const runs: AdamWParam[][] = [];
  const seen = new Set<number>();
  for (const p of params) {
    if (seen.has(p.param)) continue;
    const run = (stackOf.get(p.param) ?? [p.param]).map((id) => byNode.get(id)!);
    for (const q of run) seen.add(q.param);
    runs.push(run);
  }
  const key = (p: AdamWParam) => `${p.decay ? 1 : 0}/${p.lrScale ?? 1}/${p.rows ? 1 : 0}`;
  runs.sort((x, y) => (key(x[0]!) < key(y[0]!) ? -1 : key(x[0]!) > key(y[0]!) ? 1 : 0));
  const slots: FlatSlot[] = [];
  let offset = 0;
  for (const p of runs.flat()) {
    const size = numel(b.shape(p.param));
    slots.push({ p, offset, size });
    offset += size;
  }
  // The element index is compared in i32.
  return offset > 0 && offset < 2 ** 31 ? slots : undefined;
}

/** A value over the flat elements [start, end). */
interface Piece {
  start: number;
  end: number;
  value: number;
}

/**
 * A per-element f32 vector over the flat layout ([1, total]) from pieces that cover it: the
 * value most elements have everywhere, plus each other run as (i < end) − (i < start) times
 * its difference. Built anew on each call, so every kernel that reads it computes it in
 * registers from the element index (nothing stored, nothing read); a scalar where uniform.
 */
function piecewise(b: IrBuilder, total: number, pieces: readonly Piece[]): number {
  const cover = new Map<number, number>();
  for (const p of pieces) cover.set(p.value, (cover.get(p.value) ?? 0) + p.end - p.start);
  const fill = [...cover].reduce((a, c) => (c[1] > a[1] ? c : a), [1, -1])[0];
  const runs: Piece[] = [];
  for (const p of pieces) {
    if (p.value === fill || p.end === p.start) continue;
    const last = runs.at(-1);
    if (last && last.end === p.start && last.value === p.value) last.end = p.end;
    else runs.push({ ...p });
  }
  if (runs.length === 0) return b.constant(fill);
  const index = b.iota(b.constant(0, "i32", [1, total]));
  let out = b.constant(fill, "f32", [1, total]);
  for (const r of runs) {
    const inRange = b.binary(
      "sub",
      b.binary("lt", index, b.constant(r.end, "i32")),
      b.binary("lt", index, b.constant(r.start, "i32")),
    );
    out = b.binary("add", out, b.binary("mul", b.cast(inRange, "f32"), b.constant(r.value - fill)));
  }
  return out;
}

/**
 * The flat layout's runs with what each element needs besides the step's scalars: whether it
 * trains (rows that do not have their gradient zeroed first, as a PyTorch gradient hook
 * would), its learning-rate scale, and its decay coefficient lr_scale·weight_decay (0 where
 * decay is off or the row does not train).
 */
function flatSettings(
  b: IrBuilder,
  slots: readonly FlatSlot[],
  weightDecay: number,
): { trains: Piece[]; lrScale: Piece[]; decay: Piece[] } {
  const trains: Piece[] = [];
  const lrScale: Piece[] = [];
  const decay: Piece[] = [];
  for (const s of slots) {
    const scale = s.p.lrScale ?? 1;
    const runs: { start: number; end: number; on: boolean }[] = [];
    if (!s.p.rows) runs.push({ start: s.offset, end: s.offset + s.size, on: true });
    else {
      const rows = b.shape(s.p.param)[0]!;
      const rowSize = s.size / rows;
      let at = 0;
      const push = (from: number, to: number, on: boolean) =>
        to > from &&
        runs.push({ start: s.offset + from * rowSize, end: s.offset + to * rowSize, on });
      for (const [start, end] of rowRuns(s.p.rows)) {
        push(at, Math.min(start, rows), false);
        push(start, Math.min(end, rows), true);
        at = end;
      }
      push(at, rows, false);
    }
    for (const r of runs) {
      trains.push({ start: r.start, end: r.end, value: r.on ? 1 : 0 });
      lrScale.push({ start: r.start, end: r.end, value: scale });
      const d = r.on && s.p.decay ? scale * weightDecay : 0;
      decay.push({ start: r.start, end: r.end, value: d });
    }
  }
  return { trains, lrScale, decay };
}

/** AdamW over the flat vectors (see appendAdamW). */
function appendFlat(
  b: IrBuilder,
  params: readonly AdamWParam[],
  slots: readonly FlatSlot[],
  options: AdamWOptions,
  { lr, bc1, bc2 }: StepInputs,
): void {
  const { beta1, beta2, eps, weightDecay, maxNorm } = options;
  const total = slots.reduce((a, s) => a + s.size, 0);
  // Rows of one: the norm's reduction and the scalars broadcast along the last axis.
  const flat = (ids: number[]) =>
    b.reshape(
      b.concat(
        ids.map((id) => b.reshape(id, [numel(b.shape(id))])),
        0,
      ),
      [1, total],
    );
  const P = flat(slots.map((s) => s.p.param));
  const G = flat(slots.map((s) => s.p.grad));
  const M = flat(
    slots.map((s) => b.param(adamwNames.expAvg(s.p.name), b.shape(s.p.param), false, "zeros")),
  );
  const V = flat(
    slots.map((s) => b.param(adamwNames.expAvgSq(s.p.name), b.shape(s.p.param), false, "zeros")),
  );

  const settings = flatSettings(b, slots, weightDecay);
  const masked = settings.trains.some((p) => p.value === 0);
  const grad = () => (masked ? b.binary("mul", G, piecewise(b, total, settings.trains)) : G);

  // ‖g‖ (clip_grad_norm_'s 2-norm) as one row reduction over the flat gradient.
  const g0 = grad();
  const sumSq = b.reduce("sum", b.binary("mul", g0, g0), 1, true);
  const scale = clipScale(b, sumSq, maxNorm);
  // Each consumer builds its own clipped gradient, so it is computed where it is read.
  const clipped = () => (scale === undefined ? grad() : b.binary("mul", grad(), scale()));

  const m = b.binary(
    "add",
    b.binary("mul", M, b.constant(beta1)),
    b.binary("mul", clipped(), b.constant(1 - beta1)),
  );
  const g1 = clipped();
  const v = b.binary(
    "add",
    b.binary("mul", V, b.constant(beta2)),
    b.binary("mul", b.binary("mul", g1, g1), b.constant(1 - beta2)),
  );
  // p·(1 − lr·lr_scale·wd) where decay applies: lr_scale·wd is one per-element constant.
  const w = settings.decay.some((p) => p.value !== 0)
    ? b.binary(
        "mul",
        P,
        b.binary("sub", b.constant(1), b.binary("mul", lr, piecewise(b, total, settings.decay))),
      )
    : P;
  const denom = b.binary(
    "add",
    b.binary("div", b.unary("sqrt", v), b.unary("sqrt", bc2)),
    b.constant(eps),
  );
  const stepSize = b.binary("div", b.binary("mul", lr, piecewise(b, total, settings.lrScale)), bc1);
  const updated = b.binary("sub", w, b.binary("mul", stepSize, b.binary("div", m, denom)));
  // Outputs in the caller's order of parameters, not the flat layout's.
  const slotOf = new Map(slots.map((s) => [s.p, s]));
  for (const s of params.map((p) => slotOf.get(p)!)) {
    const part = (x: number) => b.reshape(b.slice(x, 1, s.offset, s.size), b.shape(s.p.param));
    b.output(adamwNames.update(s.p.name), part(updated));
    b.output(adamwNames.expAvgOut(s.p.name), part(m));
    b.output(adamwNames.expAvgSqOut(s.p.name), part(v));
  }
}

/** AdamW tensor by tensor (see appendAdamW). */
function appendPerTensor(
  b: IrBuilder,
  params: readonly AdamWParam[],
  options: AdamWOptions,
  { lr, bc1, bc2 }: StepInputs,
): void {
  const { beta1, beta2, eps, weightDecay, maxNorm } = options;
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
  const clip = clipScale(b, sumSq, maxNorm);
  const scale = clip?.();

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

/** The step input for step `t` (1-based) at learning rate `lr`. */
export function adamwStepInputs(
  t: number,
  lr: number,
  options: Pick<AdamWOptions, "beta1" | "beta2"> = ADAMW_DEFAULTS,
): Map<string, Float32Array> {
  if (!Number.isInteger(t) || t < 1) throw new Error(`AdamW steps count from 1, got ${t}`);
  return new Map([
    [ADAMW_STEP_INPUT, Float32Array.of(lr, 1 - options.beta1 ** t, 1 - options.beta2 ** t)],
  ]);
}
