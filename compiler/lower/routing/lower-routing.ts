/**
 * Lowering of the MoE layer for the routers whose mixture is dense: every expert sees its
 * (weighted or mixed) tokens, so the layer is matmuls, softmaxes and weighted sums of the
 * existing IR ops. `Soft` (dense softmax mixture), `Grouped` (AT-MoE: softmax over groups ×
 * normalisation within the group, with a factorised path for LoRA experts on a shared base),
 * `TokenMix` (mixture of tokens: merge → experts → emit) and `TaskMap` (a static
 * task → experts table). The sparse routers (top-k, expert choice, task routing) are
 * lower-sparse-routing.ts.
 */
import type { DiagnosticCode } from "../../diagnostics.js";
import type { IrBuilder } from "../../ir/builder.js";
import type { LoweringHooks } from "../lowering-hooks.js";
import type { PrimitiveContext } from "../../check/primitive-rule.js";
import { bool, loraDelta, member, num } from "../../library/primitives.js";
import { concatChunked } from "../stack-experts.js";
import { type Instance, type TensorType, type Value, UNKNOWN } from "../../check/values.js";
import { dimConst, dimValue } from "../../check/dims.js";
import {
  applyStackedExperts,
  lowerDiscreteTokenMix,
  lowerSparseMoE,
} from "./lower-sparse-routing.js";

type TensorValue = Extract<Value, { k: "tensor" }>;

/** Applies one expert (inlined) to a tensor. */
export type ApplyExpert = (expert: Instance, x: TensorValue) => TensorValue | undefined;

/** Context the MoE lowering needs from the evaluator. */
export interface RoutingLowering {
  ctx: PrimitiveContext;
  lowering: LoweringHooks;
  applyExpert: ApplyExpert;
  /** A PrimitiveContext for another instance (the LoRA adapters of factorised experts). */
  contextFor(inst: Instance): PrimitiveContext;
  unsupported(what: string): Value;
  /** A lowering warning at the MoE layer's use. */
  warn(code: DiagnosticCode, message: string, hint?: string): void;
}

/** A constant tensor built from scalar constants (small tables: task maps, masks). */
function constantTable(ir: IrBuilder, rows: number[][]): number {
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
function weightOf(ir: IrBuilder, w: number, e: number): number {
  const rank = ir.shape(w).length;
  return ir.slice(w, rank - 1, e, 1);
}

/** Σ_e w[..., e] · y_e for expert outputs `ys` ([..., d]) and weights `w` ([..., E]). */
function weightedSum(ir: IrBuilder, w: number, ys: number[]): number {
  let acc: number | undefined;
  ys.forEach((y, e) => {
    const term = ir.binary("mul", y, weightOf(ir, w, e));
    acc = acc === undefined ? term : ir.binary("add", acc, term);
  });
  return acc!;
}

/** Sigmoid scores normalised to sum 1 along the last axis (the `normalize` in-group rule). */
function normalizeScores(ir: IrBuilder, logits: number): number {
  const s = ir.unary("sigmoid", logits);
  return ir.binary("div", s, ir.reduce("sum", s, -1, true));
}

/** The MoE layer's parameter path: it names the layer's routing outputs and pinned groups. */
export function layerPath(r: RoutingLowering): string {
  return r.ctx.inst.path ?? "moe";
}

export function lowerMoE(r: RoutingLowering, args: { value: Value }[]): Value {
  const { ctx, lowering } = r;
  const ir = lowering.builder;
  const inst = ctx.inst;
  const router = inst.args.get("router");
  const expertsValue = inst.args.get("experts");
  const x = args[0]?.value;
  if (
    router?.k !== "instance" ||
    expertsValue?.k !== "list" ||
    x?.k !== "tensor" ||
    x.node === undefined
  )
    return UNKNOWN;
  const routerInst = router.inst;
  const groups: Instance[][] = expertsValue.items.map((item) =>
    item.k === "list"
      ? item.items.flatMap((v) => (v.k === "instance" ? [v.inst] : []))
      : item.k === "instance"
        ? [item.inst]
        : [],
  );
  const leaves = groups.flat();
  const E = leaves.length;
  const d = ir.shape(x.node)[ir.shape(x.node).length - 1]!;
  const rp = routerInst.path ?? "router";
  const trainable = !routerInst.frozen && !inst.frozen;
  const gate = (name: string, rows: number): number | undefined =>
    lowering.param(
      `${rp}.${name}.weight`,
      { dtype: "f32", dims: [dimConst(rows), dimConst(d)] },
      trainable,
      "normal(0.02)",
    );
  const logitsOf = (w: number) => ir.matmul(x.node!, ir.permute(w, [1, 0]));
  const runAll = (input: TensorValue): number[] | undefined => {
    const ys: number[] = [];
    for (const e of leaves) {
      const y = r.applyExpert(e, input);
      if (!y || y.node === undefined) return undefined;
      ys.push(y.node);
    }
    return ys;
  };
  let y: number | undefined;
  switch (routerInst.component) {
    case "Soft": {
      const g = gate("gate", E);
      const ys = runAll(x);
      if (g === undefined || !ys) return UNKNOWN;
      y = weightedSum(ir, ir.softmax(logitsOf(g)), ys);
      break;
    }
    case "Grouped": {
      y = lowerGrouped(r, routerInst, groups, x, gate, logitsOf);
      break;
    }
    case "TaskMap": {
      const task = args[1]?.value;
      if (task?.k !== "tensor" || task.node === undefined) return UNKNOWN;
      const map = routerInst.args.get("map");
      const tasks = task.t.taskSet !== undefined ? ctx.taskMembers(task.t.taskSet) : [];
      if (map?.k !== "record") return UNKNOWN;
      const table = tasks.map((t) => {
        const v = map.fields.get(t);
        const ids = (v?.k === "list" ? v.items : v ? [v] : []).flatMap((i) =>
          i.k === "int" ? [dimValue(i.v)!] : [],
        );
        return [...Array(E).keys()].map((e) => (ids.includes(e) ? 1 / ids.length : 0));
      });
      // Task ids [B] pick rows [B, E]; broadcast over the token axes between B and d.
      let w = ir.gather(constantTable(ir, table), task.node);
      const xRank = ir.shape(x.node).length;
      const wShape = ir.shape(w);
      w = ir.reshape(w, [...wShape.slice(0, -1), ...Array(xRank - wShape.length).fill(1), E]);
      const ys = runAll(x);
      if (!ys) return UNKNOWN;
      y = weightedSum(ir, w, ys);
      break;
    }
    case "TokenMix": {
      y = lowerTokenMix(r, routerInst, x, leaves, gate);
      break;
    }
    case "TopK":
    case "ExpertChoice":
    case "TaskRoute": {
      const task = args[1]?.value;
      y = lowerSparseMoE({
        r,
        router: routerInst,
        experts: leaves,
        x,
        task: task?.k === "tensor" ? task : undefined,
        gate: (name, rows, width) =>
          lowering.param(
            `${rp}.${name}.weight`,
            { dtype: "f32", dims: [dimConst(rows), dimConst(width)] },
            trainable,
            "normal(0.02)",
          ),
        param: (name, shape, init) =>
          lowering.param(
            `${rp}.${name}.weight`,
            { dtype: "f32", dims: shape.map(dimConst) },
            trainable,
            init,
          ),
      });
      break;
    }
    default:
      return r.unsupported(`the ${routerInst.component} router`);
  }
  if (y === undefined) return UNKNOWN;
  const shared = inst.args.get("shared");
  if (shared?.k === "list") {
    for (const s of shared.items) {
      if (s.k !== "instance") continue;
      const ys = r.applyExpert(s.inst, x);
      if (!ys || ys.node === undefined) return UNKNOWN;
      y = ir.binary("add", y, ys.node);
    }
  }
  // The type in concrete dims: the declared output's dims are the MoE's own (unresolved) free
  // dims, which a consumer such as a per-task adapter cannot unify with its ports.
  const outType: TensorType = { dtype: "f32", dims: ir.shape(y).map(dimConst) };
  return { k: "tensor", t: outType, node: y };
}

function lowerGrouped(
  r: RoutingLowering,
  router: Instance,
  groups: Instance[][],
  x: TensorValue,
  gate: (name: string, rows: number) => number | undefined,
  logitsOf: (w: number) => number,
): number | undefined {
  const ir = r.lowering.builder;
  const G = groups.length;
  const E = groups.reduce((a, g) => a + g.length, 0);
  const pin = router.args.get("pin");
  // Pinned from the command line (moec run --pin-groups) first, else from the source.
  const pinned =
    r.lowering.pinnedGroups(layerPath(r), G) ??
    (pin?.k === "list" && pin.items.length > 0
      ? pin.items.map((v) => (v.k === "float" ? v.v! : v.k === "int" ? dimValue(v.v)! : 0))
      : undefined);
  const groupGate = gate("group_gate", G);
  const expertGate = gate("expert_gate", E);
  if (groupGate === undefined || expertGate === undefined) return undefined;
  const rank = ir.shape(x.node!).length;
  let wg: number;
  if (pinned) {
    wg = ir.reshape(constantTable(ir, [pinned]), [...Array(rank - 1).fill(1), G]);
  } else {
    const gl = logitsOf(groupGate);
    wg = member(router, "outer") === "normalize" ? normalizeScores(ir, gl) : ir.softmax(gl);
  }
  if (r.lowering.routingStats) {
    // The group weights each layer used, averaged over its tokens (AT-MoE's interpretability).
    const flat = ir.reshape(wg, [
      ir
        .shape(wg)
        .slice(0, -1)
        .reduce((a, b) => a * b, 1),
      G,
    ]);
    r.lowering.routing(layerPath(r), "group_weights", ir.reduce("mean", flat, 0, false));
  }
  const el = logitsOf(expertGate);
  const weights: number[] = [];
  let start = 0;
  groups.forEach((group, g) => {
    const part = ir.slice(el, rank - 1, start, group.length);
    const inner =
      member(router, "inner") === "normalize" ? normalizeScores(ir, part) : ir.softmax(part);
    const wgg = weightOf(ir, wg, g);
    for (let j = 0; j < group.length; j++)
      weights.push(ir.binary("mul", wgg, weightOf(ir, inner, j)));
    start += group.length;
  });
  const leaves = groups.flat();
  // LoRA experts over one shared base: Σ w_e (base(x) + δ_e(x)) = base(x) + Σ w_e δ_e(x), since Σ w_e = 1.
  const base = leaves[0]?.wrapOf?.base;
  const factorised =
    base !== undefined &&
    leaves.every((l) => l.wrapOf?.base === base && l.wrapOf.adapter.component === "LoRA");
  if (factorised) {
    const yb = r.applyExpert(base, x);
    if (!yb || yb.node === undefined) return undefined;
    let acc = yb.node;
    for (let e = 0; e < E; e++) {
      const leaf = leaves[e]!;
      const delta = loraDelta(r.contextFor(leaf.wrapOf!.adapter), r.lowering, leaf, x.node!);
      if (delta === undefined) return undefined;
      acc = ir.binary("add", acc, ir.binary("mul", delta, weights[e]!));
    }
    return acc;
  }
  let acc: number | undefined;
  for (let e = 0; e < E; e++) {
    const ye = r.applyExpert(leaves[e]!, x);
    if (!ye || ye.node === undefined) return undefined;
    const term = ir.binary("mul", ye.node, weights[e]!);
    acc = acc === undefined ? term : ir.binary("add", acc, term);
  }
  return acc;
}

/**
 * Mixture of tokens over x [B, T, d]: groups of `group` tokens at one position across
 * sequences (or along the sequence, with `axis: sequence`); per expert, a softmax over the
 * group (temperature τ) mixes the group into one token; the expert's output returns to the
 * tokens with the same weights (`emit: merge`) or a softmax over experts (`softmax_experts`).
 */
function lowerTokenMix(
  r: RoutingLowering,
  router: Instance,
  x: TensorValue,
  leaves: Instance[],
  gate: (name: string, rows: number) => number | undefined,
): number | undefined {
  const ir = r.lowering.builder;
  const E = leaves.length;
  const shape = ir.shape(x.node!);
  if (shape.length !== 3) {
    r.unsupported(`TokenMix on a ${shape.length}-D input (it groups a [B, T, d] batch)`);
    return undefined;
  }
  const [B, T, d] = shape as [number, number, number];
  const group = num(router, "group") ?? 32;
  const alongSequence = member(router, "axis") === "sequence";
  const controller = gate("controller", E);
  if (controller === undefined) return undefined;
  // Arrange tokens as [M, group, d]: M groups of `group` tokens each. A batch (or sequence)
  // that is not a multiple of the group is padded with zero tokens, which take part in the
  // mixing: warn, since the result then depends on the padding.
  let axisLen = alongSequence ? T : B;
  let xs = x.node!;
  if (axisLen % group !== 0) {
    const padded = Math.ceil(axisLen / group) * group;
    const axis = alongSequence ? 1 : 0;
    const padShape = alongSequence ? [B, padded - T, d] : [padded - B, T, d];
    xs = ir.concat([xs, ir.constant(0, "f32", padShape)], axis);
    r.warn(
      "W0601",
      `TokenMix pads the ${alongSequence ? "sequence" : "batch"} from ${axisLen} to ${padded}, a multiple of its group of ${group}; the zero tokens take part in the mixing`,
      `run with ${alongSequence ? "T" : "B"} a multiple of ${group} for results independent of padding`,
    );
    axisLen = padded;
  }
  const [Bp, Tp] = alongSequence ? [B, axisLen] : [axisLen, T];
  const G = axisLen / group;
  const X = alongSequence
    ? ir.reshape(xs, [Bp * G, group, d])
    : ir.reshape(ir.permute(ir.reshape(xs, [G, group, Tp, d]), [0, 2, 1, 3]), [G * Tp, group, d]);
  const logits = ir.matmul(X, ir.permute(controller, [1, 0])); // [M, group, E]
  let emitted: number | undefined;
  if (bool(router, "discrete")) {
    if (member(router, "emit") === "softmax_experts") {
      r.unsupported("`TokenMix(discrete: true, emit: softmax_experts)`");
      return undefined;
    }
    emitted = lowerDiscreteTokenMix(r, leaves, X, logits);
  } else emitted = mixTokens(r, router, leaves, X, logits);
  if (emitted === undefined) return undefined;
  const dOut = ir.shape(emitted)[2]!;
  const y = alongSequence
    ? ir.reshape(emitted, [Bp, Tp, dOut])
    : ir.reshape(ir.permute(ir.reshape(emitted, [G, Tp, group, dOut]), [0, 2, 1, 3]), [
        Bp,
        Tp,
        dOut,
      ]);
  return Bp === B && Tp === T ? y : ir.slice(y, alongSequence ? 1 : 0, 0, alongSequence ? T : B);
}

/** The continuous mixture: merge each group per expert, run the experts, emit back. */
function mixTokens(
  r: RoutingLowering,
  router: Instance,
  leaves: Instance[],
  X: number,
  logits: number,
): number | undefined {
  const ir = r.lowering.builder;
  const [M, , d] = ir.shape(X) as [number, number, number];
  const E = leaves.length;
  const tau = num(router, "temperature") ?? 1;
  const scaled = tau === 1 ? logits : ir.binary("div", logits, ir.constant(tau));
  const merge = ir.softmax(ir.permute(scaled, [0, 2, 1])); // [M, E, group]: softmax over the group
  const mixed = ir.matmul(merge, X); // [M, E, d]
  // Expert e's M mixed tokens are rows e, E + e, ...: one stacked expert body runs them all.
  const ids = ir.reshape(ir.iota(ir.constant(0, "i32", [M, E])), [M * E]);
  const ys = applyStackedExperts(r, leaves, ir.reshape(mixed, [M * E, d]), ids);
  if (ys === undefined) return undefined;
  const Y = ir.reshape(ys, [M, E, ir.shape(ys)[1]!]); // [M, E, dOut]
  const emitWeights =
    member(router, "emit") === "softmax_experts"
      ? ir.softmax(scaled)
      : ir.permute(merge, [0, 2, 1]); // [M, group, E]
  return ir.matmul(emitWeights, Y); // [M, group, dOut]
}
