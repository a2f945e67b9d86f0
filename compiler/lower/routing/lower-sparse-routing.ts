/**
 * Lowering of the MoE layer for the sparse routers: top-k token choice (`TopK`), expert
 * choice (`ExpertChoice`) and task routing (`TaskRoute` at token, sequence or task level).
 * Each becomes router logits, a top-k, an assignment list of (row, expert, weight) and one
 * stacked expert body over the assigned rows (stack-experts.ts: every expert matmul is one
 * expert_matmul over rows grouped by expert), combined back into token order. No step reads
 * anything back to the host and no expert computes on tokens it was not given.
 *
 * Top-k assignments are listed slot-major (row = slot·N + token), so with a capacity every
 * token's first choice is served before any second choice, as in GShard and Switch; within a
 * slot earlier tokens come first.
 */
import type { IrBuilder } from "../../ir/builder.js";
import { numel } from "../../ir/graph.js";
import { type RoutingLowering, layerPath } from "./lower-routing.js";
import { rowAlign, stackExperts } from "../stack-experts.js";
import { bool, member, num } from "../../library/primitives.js";
import type { Instance, Value } from "../../check/values.js";
import { dimConst } from "../../check/dims.js";

type TensorValue = Extract<Value, { k: "tensor" }>;

/** m[r, idx[r, j]] for m [N, E] and idx [N, k] (i32): the chosen entries of each row. */
function takeAlongRows(ir: IrBuilder, m: number, idx: number): number {
  const [N, E] = ir.shape(m) as [number, number];
  const k = ir.shape(idx)[1]!;
  const rowOf = ir.permute(ir.iota(ir.constant(0, "i32", [k, N])), [1, 0]); // [N, k]: r
  const flat = ir.binary("add", idx, ir.binary("mul", rowOf, ir.constant(E, "i32")));
  return ir.reshape(ir.gather(ir.reshape(m, [N * E, 1]), flat), [N, k]);
}

/** [N, k] → [k·N]: the slot-major assignment list. */
function slotMajor(ir: IrBuilder, m: number): number {
  const [N, k] = ir.shape(m) as [number, number];
  return ir.reshape(ir.permute(m, [1, 0]), [k * N]);
}

export interface SparseMoE {
  r: RoutingLowering;
  router: Instance;
  experts: Instance[];
  x: TensorValue;
  task: TensorValue | undefined;
  /** The router's [rows, width] gate weight (created on first use). */
  gate(name: string, rows: number, width: number): number | undefined;
  /** A router parameter of any shape. */
  param(name: string, shape: number[], init: string): number | undefined;
}

export function lowerSparseMoE(m: SparseMoE): number | undefined {
  const { r, router, experts, x } = m;
  const ir = r.lowering.builder;
  const xs = ir.shape(x.node!);
  const d = xs[xs.length - 1]!;
  const lead = xs.slice(0, -1);
  const N = numel(lead);
  const E = experts.length;
  const xf = ir.reshape(x.node!, [N, d]);
  const logits = routerLogits(m, lead, d);
  if (logits === undefined) return undefined;
  const stat = (name: string, node: number) => r.lowering.routing(layerPath(r), name, node);

  if (router.component === "ExpertChoice") {
    const capacity = num(router, "capacity") ?? 1;
    const c = Math.min(N, Math.max(1, Math.ceil((capacity * N) / E)));
    const scoresT = ir.permute(ir.softmax(logits), [1, 0]); // [E, N]: softmax over experts
    const chosen = ir.topk(scoresT, c); // [E, c]: each expert's tokens
    const weights = takeAlongRows(ir, scoresT, chosen);
    const R = E * c;
    const tokens = ir.reshape(chosen, [R]);
    const ids = ir.reshape(ir.permute(ir.iota(ir.constant(0, "i32", [c, E])), [1, 0]), [R]);
    const y = runExperts(m, xf, tokens, ids);
    if (y === undefined) return undefined;
    if (r.lowering.routingStats) {
      recordRouterStats(ir, stat, logits, ids, ids, E);
      // A token no expert chose passes through the layer's residual untouched.
      const chosenBy = ir.scatterAdd(ir.constant(1, "f32", [R, 1]), tokens, N); // [N, 1]
      stat("dropped", total(ir, ir.binary("lt", chosenBy, ir.constant(0.5))));
      stat("tokens", chosen);
      stat("weights", weights);
    }
    const dOut = ir.shape(y)[1]!;
    const weighted = ir.binary("mul", y, ir.reshape(weights, [R, 1]));
    return ir.reshape(ir.scatterAdd(weighted, tokens, N), [...lead, dOut]);
  }

  const k = Math.min(num(router, "k") ?? (router.component === "TopK" ? 2 : 1), E);
  const chosen = ir.topk(logits, k); // [N, k]; softmax is monotonic, so the same experts
  let weights: number;
  if (member(router, "softmax") === "after") {
    weights = ir.softmax(takeAlongRows(ir, logits, chosen));
  } else {
    weights = takeAlongRows(ir, ir.softmax(logits), chosen);
    // TaskRoute always renormalises; TopK as its `renormalize` option says (default true).
    const renormalize = router.component === "TaskRoute" || bool(router, "renormalize") === true;
    if (renormalize) weights = ir.binary("div", weights, ir.reduce("sum", weights, -1, true));
  }
  const R = k * N;
  let ids = slotMajor(ir, chosen);
  let w = slotMajor(ir, weights);
  const tokens = ir.reshape(ir.iota(ir.constant(0, "i32", [k, N])), [R]);
  const capacity = router.component === "TopK" ? (num(router, "capacity") ?? 0) : 0;
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
    if (member(router, "overflow") !== "zero")
      dropped = ir.binary("mul", w, ir.binary("sub", ir.constant(1), keep));
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

/** Router logits per token, [N, E]. */
function routerLogits(m: SparseMoE, lead: number[], d: number): number | undefined {
  const { r, router, x, task } = m;
  const ir = r.lowering.builder;
  const N = numel(lead);
  const E = m.experts.length;
  const xf = ir.reshape(x.node!, [N, d]);
  const level = router.component === "TaskRoute" ? (member(router, "level") ?? "token") : "token";
  const te =
    router.component === "TopK"
      ? (num(router, "task_embed") ?? 0)
      : router.component === "TaskRoute"
        ? (num(router, "embed") ?? 16)
        : 0;
  const needsTask = te > 0 || router.component === "TaskRoute";
  if (needsTask && (task?.node === undefined || !task.t.taskSet)) {
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

/** Every assigned row through its own expert: [R, dOut]. */
function runExperts(m: SparseMoE, xf: number, tokens: number, ids: number): number | undefined {
  return applyStackedExperts(m.r, m.experts, m.r.lowering.builder.gather(xf, tokens), ids);
}

/**
 * Row r of `rows` [R, d] through expert ids[r] (-1: zeros), as one stacked expert body whose
 * matmuls walk the rows grouped by expert: [R, dOut].
 */
export function applyStackedExperts(
  r: RoutingLowering,
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
function total(ir: IrBuilder, x: number): number {
  return ir.reduce("sum", ir.reshape(x, [numel(ir.shape(x))]), 0, true);
}

/**
 * A router's statistics from its logits [N, E] and its assignments before (`wanted`) and
 * after (`served`) the capacity limit, ids [R] with -1 for dropped: tokens per expert, dropped
 * assignments, the Switch balance loss E·Σ f_e·P_e (f: share of assignments wanted by e, P:
 * mean router probability of e), the z-loss mean(logsumexp²) and the mean router entropy.
 */
export function recordRouterStats(
  ir: IrBuilder,
  stat: (name: string, node: number) => void,
  logits: number,
  wanted: number,
  served: number,
  E: number,
): void {
  const [N] = ir.shape(logits) as [number, number];
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
  const probs = ir.softmax(logits);
  const meanProb = ir.reduce("mean", probs, 0, false); // [E]
  const share = ir.binary("div", load(wanted), ir.constant(R));
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

/**
 * Mixture of tokens at τ → 0 (`TokenMix(discrete: true)`): the merge weights over a group
 * become one-hot on the group's highest-scoring token for each expert, so each expert takes
 * exactly one token per group (expert choice with capacity 1 per group) and returns its
 * output to that token alone. X [M, group, d], logits [M, group, E] → [M, group, dOut].
 */
export function lowerDiscreteTokenMix(
  r: RoutingLowering,
  experts: Instance[],
  X: number,
  logits: number,
): number | undefined {
  const ir = r.lowering.builder;
  const [M, group, d] = ir.shape(X) as [number, number, number];
  const E = experts.length;
  const pick = ir.reshape(ir.topk(ir.permute(logits, [0, 2, 1]), 1), [M, E]); // position in group
  const groupStart = ir.binary(
    "mul",
    ir.permute(ir.iota(ir.constant(0, "i32", [E, M])), [1, 0]),
    ir.constant(group, "i32"),
  );
  const R = M * E;
  const tokens = ir.reshape(ir.binary("add", groupStart, pick), [R]); // rows of [M·group, d]
  const ids = ir.reshape(ir.iota(ir.constant(0, "i32", [M, E])), [R]);
  const xf = ir.reshape(X, [M * group, d]);
  const y = applyStackedExperts(r, experts, ir.gather(xf, tokens), ids);
  if (y === undefined) return undefined;
  if (r.lowering.routingStats)
    r.lowering.routing(layerPath(r), "tokens", ir.reshape(tokens, [M, E]));
  const dOut = ir.shape(y)[1]!;
  return ir.reshape(ir.scatterAdd(y, tokens, M * group), [M, group, dOut]);
}
