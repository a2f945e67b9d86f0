/**
 * Two-level routing over expert groups (`Grouped`, AT-MoE): weight(g)·weight(e | g), each a
 * softmax or a sigmoid normalisation; group weights may be pinned in the source or from the
 * command line. Each token routes on its own features, or (`on: instruction`) each sequence on the
 * features the layer takes beside x. Dense: every expert runs; LoRA experts over one shared base
 * are factorised (the base runs once).
 */
import { dimConst, dimValue } from "../../check/dims.js";
import type { IrBuilder } from "../../ir/builder.js";
import { numel } from "../../ir/graph.js";
import {
  type MoeLowering,
  constantTable,
  layerPath,
  logitsOf,
  recordGateShare,
  routingStat,
  weightOf,
} from "../../lower/routing/common.js";
import { concatChunked } from "../../lower/stack-experts.js";
import { loraDelta } from "../adapt/lora.js";
import { f32Tensor, member } from "../options.js";
import { type RouterFamily, routerPath } from "./router-family.js";

/** Sigmoid scores normalised to sum 1 along the last axis (the `normalize` in-group rule). */
function normalizeScores(ir: IrBuilder, logits: number): number {
  const s = ir.unary("sigmoid", logits);
  return ir.binary("div", s, ir.reduce("sum", s, -1, true));
}

/**
 * `on: instruction`: logits from the layer's instruction features ([..., d], x [..., T, d] less
 * its position axis), one row per sequence, broadcast to every position: [..., T, rows]. Null
 * (reported) without the features.
 */
function instructionLogits(m: MoeLowering): ((gate: number) => number) | null {
  const { r, x } = m;
  const ir = r.lowering.builder;
  const features = m.ids?.node;
  if (features === undefined || m.ids?.t.dtype !== "f32") {
    r.unsupported("Grouped(on: instruction) without the instruction's features");
    return null;
  }
  const xs = ir.shape(x.node!);
  const d = xs[xs.length - 1]!;
  const perSequence = xs.slice(0, -2);
  const fs = ir.shape(features);
  const expected = [...perSequence, d];
  // Checking compares symbolic dims; a variadic lead leaves only the width to it.
  if (fs.length !== expected.length || fs.some((n, i) => n !== expected[i])) {
    r.unsupported(
      `Grouped(on: instruction) with an instruction of shape [${fs.join(", ")}] for x [${xs.join(", ")}] (expected [${expected.join(", ")}])`,
    );
    return null;
  }
  const rows = ir.reshape(features, [Math.max(1, numel(perSequence)), d]);
  return (gate) => {
    const rowsOut = ir.shape(gate)[0]!;
    const l = ir.matmul(rows, ir.permute(gate, [1, 0])); // [sequences, rows]
    const shaped = ir.reshape(l, [...perSequence, 1, rowsOut]);
    return ir.binary("add", shaped, ir.constant(0, "f32", [...xs.slice(0, -1), rowsOut]));
  };
}

export const grouped: RouterFamily = {
  name: "Grouped",
  grouped: true,
  checkOptions(ctx) {
    const pin = ctx.inst.args.get("pin");
    if (pin?.k === "list") {
      const values = pin.items.map((v) =>
        v.k === "float" ? v.v : v.k === "int" ? dimValue(v.v) : undefined,
      );
      if (values.some((v) => v !== undefined && v < 0)) {
        ctx.report("E0319", ctx.span, "Grouped: pinned group weights must be non-negative");
      } else if (values.length > 0 && values.every((v) => v !== undefined)) {
        const sum = values.reduce((a, b) => a! + b!, 0)!;
        if (Math.abs(sum - 1) > 1e-6)
          ctx.report("E0319", ctx.span, `Grouped: pinned group weights sum to ${sum}, not 1`);
      }
    }
  },
  routingInput: (router) => (member(router, "on") === "instruction" ? "instruction" : "none"),
  checkExperts(ctx, router, { groups, symbolic }) {
    const pin = router.args.get("pin");
    if (
      pin?.k === "list" &&
      pin.items.length > 0 &&
      !symbolic &&
      pin.items.length !== groups.length
    ) {
      ctx.report(
        "E0403",
        router.span,
        `Grouped pins ${pin.items.length} group weights, but there are ${groups.length} groups`,
      );
    }
  },
  registerParams(ctx, router, { E, d, groups }) {
    const rp = routerPath(router);
    const c = (n: number) => dimConst(n);
    ctx.registerParamAt(`${rp}.group_gate`, f32Tensor([c(groups), c(d)]), "normal");
    ctx.registerParamAt(`${rp}.expert_gate`, f32Tensor([c(E), c(d)]), "normal");
  },
  activeExperts: (_router, { E }) => E,
  lower(m) {
    const { r, router, groups, x } = m;
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
    const groupGate = m.gate("group_gate", G);
    const expertGate = m.gate("expert_gate", E);
    if (groupGate === undefined || expertGate === undefined) return undefined;
    const rank = ir.shape(x.node!).length;
    const logits = member(router, "on") === "instruction" ? instructionLogits(m) : undefined;
    if (logits === null) return undefined;
    const logitsFor = (gate: number) => (logits ? logits(gate) : logitsOf(m, gate));
    let wg: number;
    if (pinned) {
      wg = ir.reshape(constantTable(ir, [pinned]), [...Array(rank - 1).fill(1), G]);
    } else {
      const gl = logitsFor(groupGate);
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
      // And per token, for --trace-routing: which group each token leaned on (a pinned
      // layer's one row broadcast to every token).
      const N = ir
        .shape(x.node!)
        .slice(0, -1)
        .reduce((a, b) => a * b, 1);
      const perToken =
        ir.shape(flat)[0] === N ? flat : ir.binary("add", flat, ir.constant(0, "f32", [N, 1]));
      r.lowering.routing(layerPath(r), "groups", perToken);
    }
    const el = logitsFor(expertGate);
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
    if (r.lowering.routingStats)
      recordGateShare(ir, routingStat(r), concatChunked(ir, weights, rank - 1));
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
  },
};
