/**
 * What several router families' lowerings share (compiler/library/route/, one file per family):
 * the context a family lowers in, router logits, weighted sums and constant tables, and the
 * sparse machinery: the top-k token-choice path (top-k, slot-major assignments, capacity), one
 * stacked expert body over rows grouped by expert (stack-experts.ts: every expert matmul is one
 * expert_matmul), and the router statistics. No step reads anything back to the host and no
 * expert computes on tokens it was not given.
 *
 * Top-k assignments are listed slot-major (row = slot·N + token), so with a capacity every
 * token's first choice is served before any second choice, as in GShard and Switch; within a
 * slot earlier tokens come first.
 */
import type { DiagnosticCode } from "../../diagnostics.js";
import type { IrBuilder } from "../../ir/builder.js";
import { numel } from "../../ir/graph.js";
import type { LayerLowering, LoweringHooks } from "../lowering-hooks.js";
import type { PrimitiveContext } from "../../check/primitive-rule.js";
import { concatChunked, rowAlign, stackExperts } from "../stack-experts.js";
import type { Instance, Value } from "../../check/values.js";
import { dimConst } from "../../check/dims.js";

export type TensorValue = Extract<Value, { k: "tensor" }>;

/** One MoE layer, as a router family lowers it. */
export interface MoeLowering {
  r: LayerLowering;
  router: Instance;
  /** The experts in their groups (one group per expert unless the router groups them). */
  groups: Instance[][];
  /** Every expert, in order. */
  experts: Instance[];
  /** The layer's input [..., d]. */
  x: TensorValue;
  /** The layer's second input, the task ids, token ids or instruction its router routes on. */
  ids: TensorValue | undefined;
  /** The router's [rows, width] gate weight (width d unless given; created on first use). */
  gate(name: string, rows: number, width?: number): number | undefined;
  /** A router parameter of any shape. */
  param(name: string, shape: number[], init: string): number | undefined;
}

/** The MoE layer's parameter path: it names the layer's routing outputs and pinned groups. */
export function layerPath(r: LayerLowering): string {
  return r.ctx.inst.path ?? "moe";
}

/** Records the routing output `name` of the layer (`routing:<layer>.<name>`). */
export function routingStat(r: LayerLowering): (name: string, node: number) => void {
  return (name, node) => r.lowering.routing(layerPath(r), name, node);
}

/** x·Wᵀ for the layer's input x [..., d] and a gate W [rows, d]: [..., rows]. */
export function logitsOf(m: MoeLowering, w: number): number {
  const ir = m.r.lowering.builder;
  return ir.matmul(m.x.node!, ir.permute(w, [1, 0]));
}

/** Every expert applied to `input`, in order (dense mixtures). */
export function applyEach(m: MoeLowering, input: TensorValue): number[] | undefined {
  const ys: number[] = [];
  for (const e of m.experts) {
    const y = m.r.applyExpert(e, input);
    if (!y || y.node === undefined) return undefined;
    ys.push(y.node);
  }
  return ys;
}

/** A constant tensor built from scalar constants (small tables: task maps, masks). */
export function constantTable(ir: IrBuilder, rows: number[][]): number {
  const rowNodes = rows.map((row) =>
    concatChunked(
      ir,
      row.map((v) => ir.reshape(ir.constant(v), [1, 1])),
      1,
    ),
  );
  return concatChunked(ir, rowNodes, 0);
}

/** `w[..., e]` kept as a trailing axis of size 1, to scale a [..., d] tensor. */
export function weightOf(ir: IrBuilder, w: number, e: number): number {
  const rank = ir.shape(w).length;
  return ir.slice(w, rank - 1, e, 1);
}

/** Σ_e w[..., e] · y_e for expert outputs `ys` ([..., d]) and weights `w` ([..., E]). */
export function weightedSum(ir: IrBuilder, w: number, ys: number[]): number {
  let acc: number | undefined;
  ys.forEach((y, e) => {
    const term = ir.binary("mul", y, weightOf(ir, w, e));
    acc = acc === undefined ? term : ir.binary("add", acc, term);
  });
  return acc!;
}

// ---------------------------------------------------------------- sparse routing

/** The layer's tokens as rows: x [..., d] → xf [N, d], with the leading dims and N. */
export function tokenRows(m: MoeLowering): { lead: number[]; N: number; d: number; xf: number } {
  const ir = m.r.lowering.builder;
  const xs = ir.shape(m.x.node!);
  const d = xs[xs.length - 1]!;
  const lead = xs.slice(0, -1);
  const N = numel(lead);
  return { lead, N, d, xf: ir.reshape(m.x.node!, [N, d]) };
}

/** m[r, idx[r, j]] for m [N, E] and idx [N, k] (i32): the chosen entries of each row. */
export function takeAlongRows(ir: IrBuilder, m: number, idx: number): number {
  const [N, E] = ir.shape(m) as [number, number];
  const k = ir.shape(idx)[1]!;
  const rowOf = ir.permute(ir.iota(ir.constant(0, "i32", [k, N])), [1, 0]); // [N, k]: r
  const flat = ir.binary("add", idx, ir.binary("mul", rowOf, ir.constant(E, "i32")));
  return ir.reshape(ir.gather(ir.reshape(m, [N * E, 1]), flat), [N, k]);
}

/** [N, k] → [k·N]: the slot-major assignment list. */
export function slotMajor(ir: IrBuilder, m: number): number {
  const [N, k] = ir.shape(m) as [number, number];
  return ir.reshape(ir.permute(m, [1, 0]), [k * N]);
}

/** Where a router's logits come from. */
export interface LogitsSource {
  /** Width of a learned task embedding the router sees beside each token (0: none). */
  taskEmbed: number;
  /** One decision per token, per sequence (from its mean) or per task (a learned table). */
  level: "token" | "sequence" | "task";
  /** Whether the router needs the task ids. */
  needsTask: boolean;
  /**
   * Switch-style jitter ε (training only): the router sees each input value times a fresh
   * uniform draw from [1 − ε, 1 + ε]; the experts see the input as it is.
   */
  jitter?: number;
}

/** Router logits per token, [N, E]. */
export function routerLogits(
  m: MoeLowering,
  lead: number[],
  d: number,
  source: LogitsSource,
): number | undefined {
  const { r, router, x } = m;
  const task = m.ids;
  const ir = r.lowering.builder;
  const N = numel(lead);
  const E = m.experts.length;
  let xf = ir.reshape(x.node!, [N, d]);
  const { level, taskEmbed: te } = source;
  const jitter = source.jitter ?? 0;
  const noise = r.lowering.noise;
  if (jitter > 0 && noise) {
    const u = noise.call(r.lowering, [N, d]);
    const factor = ir.binary(
      "add",
      ir.binary("mul", u, ir.constant(2 * jitter)),
      ir.constant(1 - jitter),
    );
    xf = ir.binary("mul", xf, factor);
  }
  if (source.needsTask && (task?.node === undefined || !task.t.taskSet)) {
    r.unsupported(`${router.component} without task ids (pass the task as the MoE's second input)`);
    return undefined;
  }
  const taskIds = () => ir.binary("max", task!.node!, ir.constant(0, "i32")); // "no task" → 0
  /** A per-sequence [..taskShape, E] value broadcast to every token: [N, E]. */
  const toTokens = (perTask: number): number => {
    const taskShape = ir.shape(task!.node!);
    const shaped = ir.reshape(perTask, [
      ...taskShape,
      ...Array(lead.length - taskShape.length).fill(1),
      E,
    ]);
    return ir.reshape(ir.binary("add", shaped, ir.constant(0, "f32", [...lead, E])), [N, E]);
  };
  if (level === "task") {
    const nTasks = r.ctx.taskMembers(task!.t.taskSet!).length;
    const table = m.param("task_logits", [nTasks, E], "zeros");
    if (table === undefined) return undefined;
    return toTokens(ir.gather(table, taskIds()));
  }
  const gate = m.gate("gate", E, d + te);
  if (gate === undefined) return undefined;
  const wx = te > 0 ? ir.slice(gate, 1, 0, d) : gate;
  let logits: number;
  if (level === "sequence") {
    // One decision per sequence, from the mean of its tokens.
    const taskShape = ir.shape(task!.node!);
    const seq = numel(taskShape);
    const pooled = ir.reduce("mean", ir.reshape(xf, [seq, N / seq, d]), 1, false); // [seq, d]
    logits = ir.matmul(pooled, ir.permute(wx, [1, 0])); // [seq, E]
  } else logits = ir.matmul(xf, ir.permute(wx, [1, 0])); // [N, E]
  if (te > 0) {
    const nTasks = r.ctx.taskMembers(task!.t.taskSet!).length;
    const emb = m.param("task_embedding", [nTasks, te], "normal(0.02)");
    if (emb === undefined) return undefined;
    const wt = ir.slice(gate, 1, d, te);
    const taskTerm = ir.matmul(ir.gather(emb, taskIds()), ir.permute(wt, [1, 0])); // [B, E]
    if (level === "sequence")
      logits = ir.binary("add", logits, ir.reshape(taskTerm, ir.shape(logits)));
    else logits = ir.binary("add", logits, toTokens(taskTerm));
  }
  if (level === "sequence") logits = toTokens(logits);
  return logits;
}

/** How token choice turns logits into weighted assignments. */
export interface TokenChoice {
  /** Experts per token. */
  k: number;
  /** Softmax over the k chosen logits (`softmax: after`) instead of the chosen probabilities. */
  softmaxAfter: boolean;
  /** Divide the chosen probabilities by their sum. */
  renormalize: boolean;
  /** Capacity factor (0: dropless). */
  capacity: number;
  /** Overflow adds nothing (`overflow: zero`) instead of passing the input through. */
  overflowZero: boolean;
}

/**
 * Top-k token choice: each token's k highest logits [N, E], weighted, listed slot-major, with
 * an optional capacity per expert; every assignment through its expert and the weighted
 * outputs summed back per token: [..., dOut].
 */
export function lowerTokenChoice(
  m: MoeLowering,
  rows: { lead: number[]; N: number; d: number; xf: number },
  logits: number,
  choice: TokenChoice,
): number | undefined {
  const { r } = m;
  const { lead, N, d, xf } = rows;
  const ir = r.lowering.builder;
  const E = m.experts.length;
  const stat = routingStat(r);
  const k = choice.k;
  const chosen = ir.topk(logits, k); // [N, k]; softmax is monotonic, so the same experts
  let weights: number;
  if (choice.softmaxAfter) {
    weights = ir.softmax(takeAlongRows(ir, logits, chosen));
  } else {
    weights = takeAlongRows(ir, ir.softmax(logits), chosen);
    if (choice.renormalize)
      weights = ir.binary("div", weights, ir.reduce("sum", weights, -1, true));
  }
  const R = k * N;
  let ids = slotMajor(ir, chosen);
  let w = slotMajor(ir, weights);
  const tokens = ir.reshape(ir.iota(ir.constant(0, "i32", [k, N])), [R]);
  const capacity = choice.capacity;
  let dropped: number | undefined;
  if (capacity > 0) {
    // An assignment is kept while its expert has room: its rank among the expert's
    // assignments (a running count over the slot-major list) is at most C.
    const C = Math.max(1, Math.ceil((capacity * k * N) / E));
    const expertIds = ir.iota(ir.constant(0, "i32", [1, E]));
    const onehot = ir.cast(ir.binary("eq", ir.reshape(ids, [R, 1]), expertIds), "f32");
    const rank = ir.reduce("sum", ir.binary("mul", onehot, ir.cumsum(onehot, 0)), -1, false);
    const keep = ir.binary("lt", rank, ir.constant(C + 0.5));
    const keepI = ir.cast(keep, "i32");
    ids = ir.binary(
      "sub",
      ir.binary("mul", ir.binary("add", ids, ir.constant(1, "i32")), keepI),
      ir.constant(1, "i32"),
    );
    if (!choice.overflowZero) dropped = ir.binary("mul", w, ir.binary("sub", ir.constant(1), keep));
    w = ir.binary("mul", w, keep);
  }
  const y = runExperts(m, xf, tokens, ids);
  if (y === undefined) return undefined;
  if (r.lowering.routingStats) {
    recordRouterStats(ir, stat, logits, slotMajor(ir, chosen), ids, E);
    stat("experts", ir.permute(ir.reshape(ids, [k, N]), [1, 0]));
    stat("weights", ir.permute(ir.reshape(w, [k, N]), [1, 0]));
  }
  const dOut = ir.shape(y)[1]!;
  // Weighting each row before the reshape lets the expert matmul's epilogue do it.
  const perSlot = ir.reshape(ir.binary("mul", y, ir.reshape(w, [R, 1])), [k, N, dOut]);
  let out = ir.reduce("sum", perSlot, 0, false); // [N, dOut]
  if (dropped !== undefined && dOut === d) {
    // Overflow passes through on the residual: the dropped share of the weight keeps x.
    const share = ir.reduce("sum", ir.reshape(dropped, [k, N, 1]), 0, false); // [N, 1]
    out = ir.binary("add", out, ir.binary("mul", xf, share));
  }
  return ir.reshape(out, [...lead, dOut]);
}

/** Every assigned row (`tokens` [R] of xf [N, d]) through its own expert: [R, dOut]. */
export function runExperts(
  m: MoeLowering,
  xf: number,
  tokens: number,
  ids: number,
): number | undefined {
  return applyStackedExperts(m.r, m.experts, m.r.lowering.builder.gather(xf, tokens), ids);
}

/**
 * Row r of `rows` [R, d] through expert ids[r] (-1: zeros), as one stacked expert body whose
 * matmuls walk the rows grouped by expert: [R, dOut].
 */
export function applyStackedExperts(
  r: LayerLowering,
  experts: Instance[],
  rows: number,
  ids: number,
): number | undefined {
  const ir = r.lowering.builder;
  const [R, d] = ir.shape(rows) as [number, number];
  const order = ir.groupRows(ids, experts.length, rowAlign(R, experts.length));
  const outs: number[] = [];
  for (const e of experts) {
    const t = { dtype: "f32" as const, dims: [dimConst(R), dimConst(d)] };
    const y = r.applyExpert(e, { k: "tensor", t, node: rows });
    if (!y || y.node === undefined) return undefined;
    outs.push(y.node);
  }
  const stacked = stackExperts(ir, rows, outs, ids, order);
  if ("error" in stacked) {
    r.unsupported(`sparse routing over these experts: ${stacked.error}`);
    return undefined;
  }
  return stacked.node;
}

/** The sum of every element, as a [1] tensor. */
export function total(ir: IrBuilder, x: number): number {
  return ir.reduce("sum", ir.reshape(x, [numel(ir.shape(x))]), 0, true);
}

/**
 * A dense router's `share` statistic from its gates `weights` [..., E]: each token's gates
 * divided by their sum (a TaskMap row or a merge weight need not sum to 1), averaged over the
 * tokens, so the shares sum to 1 as a sparse router's do.
 */
export function recordGateShare(
  ir: IrBuilder,
  stat: (name: string, node: number) => void,
  weights: number,
): void {
  const s = ir.shape(weights);
  const E = s[s.length - 1]!;
  const rows = ir.reshape(weights, [numel(s.slice(0, -1)), E]);
  const perToken = ir.binary(
    "div",
    rows,
    ir.binary("max", ir.reduce("sum", rows, -1, true), ir.constant(1e-30)),
  );
  stat("share", ir.reduce("mean", perToken, 0, false));
}

/**
 * A router's statistics from its assignments before (`wanted`) and after (`served`) the
 * capacity limit, ids [R] with -1 for dropped: tokens per expert, dropped assignments and each
 * expert's share of the router's assignments (counted before the capacity limit); and,
 * for a router with logits [N, E], the Switch balance loss E·Σ f_e·P_e (f: share of
 * assignments wanted by e, P: mean router probability of e), the z-loss mean(logsumexp²) and
 * the mean router entropy. A router without logits (a fixed map) has no probabilities to
 * report.
 */
export function recordRouterStats(
  ir: IrBuilder,
  stat: (name: string, node: number) => void,
  logits: number | undefined,
  wanted: number,
  served: number,
  E: number,
): void {
  const R = ir.shape(served)[0]!;
  const expertIds = ir.iota(ir.constant(0, "i32", [1, E]));
  const load = (ids: number) =>
    ir.reshape(
      ir.reduce(
        "sum",
        ir.cast(ir.binary("eq", ir.reshape(ids, [R, 1]), expertIds), "f32"),
        0,
        true,
      ),
      [E],
    );
  const served_ = load(served);
  stat("tokens_per_expert", served_);
  stat("dropped", ir.binary("sub", ir.constant(R, "f32", [1]), total(ir, served_)));
  const share = ir.binary("div", load(wanted), ir.constant(R));
  stat("share", share);
  if (logits === undefined) return;
  const [N] = ir.shape(logits) as [number, number];
  const probs = ir.softmax(logits);
  const meanProb = ir.reduce("mean", probs, 0, false); // [E]
  stat(
    "balance_loss",
    ir.binary("mul", total(ir, ir.binary("mul", share, meanProb)), ir.constant(E)),
  );
  const max = ir.reduce("max", logits, -1, true);
  const sumExp = ir.reduce("sum", ir.unary("exp", ir.binary("sub", logits, max)), -1, true);
  const lse = ir.binary("add", max, ir.unary("log", sumExp)); // [N, 1]
  stat("z_loss", ir.binary("div", total(ir, ir.binary("mul", lse, lse)), ir.constant(N)));
  const plogp = ir.binary(
    "mul",
    probs,
    ir.unary("log", ir.binary("max", probs, ir.constant(1e-30))),
  );
  stat("entropy", ir.binary("div", ir.unary("neg", total(ir, plogp)), ir.constant(N)));
}
