/**
 * Mixture of tokens (`TokenMix`): groups of `group` tokens at one position across sequences
 * (or along the sequence) are mixed per expert by a softmax over the group (temperature τ);
 * each expert processes its mixed token and returns the result with the same weights (`emit:
 * merge`) or a softmax over the experts (`softmax_experts`). `discrete: true` is the τ → 0
 * limit: expert choice with one token per expert per group.
 */
import { dimConst } from "../../check/dims.js";
import {
  type MoeLowering,
  applyStackedExperts,
  layerPath,
  recordGateShare,
  routingStat,
} from "../../lower/routing/common.js";
import { bool, f32Tensor, member, num, requireRange } from "../options.js";
import { type RouterFamily, routerPath } from "./router-family.js";

export const tokenMix: RouterFamily = {
  name: "TokenMix",
  checkOptions(ctx) {
    requireRange(ctx, "group", (x) => x >= 1, "at least 1");
    if (bool(ctx.inst, "discrete") !== true)
      requireRange(ctx, "temperature", (x) => x > 0, "positive (or use `discrete: true`)");
    if (member(ctx.inst, "axis") === "sequence") {
      ctx.report(
        "W0502",
        ctx.span,
        "TokenMix groups along the sequence: a token would see later tokens of its own sequence",
        {
          hint: "group across the batch (`axis: batch`, the default) to keep the model causal",
        },
      );
    }
  },
  routingInput: () => "none",
  registerParams(ctx, router, { E, d }) {
    ctx.registerParamAt(
      `${routerPath(router)}.controller`,
      f32Tensor([dimConst(E), dimConst(d)]),
      "normal",
    );
  },
  // Each expert processes one mixed token per group of `group` tokens.
  activeExperts: (router, { E }) => E / Math.max(1, num(router, "group") ?? 1),
  lower: lowerTokenMix,
};

/**
 * Mixture of tokens over x [B, T, d]: groups of `group` tokens at one position across
 * sequences (or along the sequence, with `axis: sequence`); per expert, a softmax over the
 * group (temperature τ) mixes the group into one token; the expert's output returns to the
 * tokens with the same weights (`emit: merge`) or a softmax over experts (`softmax_experts`).
 */
function lowerTokenMix(m: MoeLowering): number | undefined {
  const { r, router, x, experts: leaves } = m;
  const ir = r.lowering.builder;
  const E = leaves.length;
  const alongSequence = member(router, "axis") === "sequence";
  // A batch of single tokens [B, d] mixes along the batch as [B, 1, d] would.
  const flat = ir.shape(x.node!).length === 2 && !alongSequence;
  const input = flat
    ? ir.reshape(x.node!, [ir.shape(x.node!)[0]!, 1, ir.shape(x.node!)[1]!])
    : x.node!;
  const shape = ir.shape(input);
  if (shape.length !== 3) {
    const what = alongSequence ? "a [B, T, d] sequence" : "a [B, d] or [B, T, d] batch";
    r.unsupported(`TokenMix on a ${shape.length}-D input (it groups ${what})`);
    return undefined;
  }
  const [B, T, d] = shape as [number, number, number];
  const group = num(router, "group") ?? 32;
  const controller = m.gate("controller", E);
  if (controller === undefined) return undefined;
  // Arrange tokens as [M, group, d]: M groups of `group` tokens each. A batch (or sequence)
  // that is not a multiple of the group is padded with zero tokens, which take part in the
  // mixing: warn, since the result then depends on the padding.
  let axisLen = alongSequence ? T : B;
  let xs = input;
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
    emitted = lowerDiscreteTokenMix(m, X, logits);
  } else emitted = mixTokens(m, X, logits);
  if (emitted === undefined) return undefined;
  const dOut = ir.shape(emitted)[2]!;
  const y = alongSequence
    ? ir.reshape(emitted, [Bp, Tp, dOut])
    : ir.reshape(ir.permute(ir.reshape(emitted, [G, Tp, group, dOut]), [0, 2, 1, 3]), [
        Bp,
        Tp,
        dOut,
      ]);
  const out =
    Bp === B && Tp === T ? y : ir.slice(y, alongSequence ? 1 : 0, 0, alongSequence ? T : B);
  return flat ? ir.reshape(out, [B, dOut]) : out;
}

/** The continuous mixture: merge each group per expert, run the experts, emit back. */
function mixTokens(m: MoeLowering, X: number, logits: number): number | undefined {
  const { r, router, experts: leaves } = m;
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
  // Padding tokens (a batch not a multiple of the group) are counted like the others.
  if (r.lowering.routingStats) recordGateShare(ir, routingStat(r), emitWeights);
  return ir.matmul(emitWeights, Y); // [M, group, dOut]
}

/**
 * Mixture of tokens at τ → 0 (`TokenMix(discrete: true)`): the merge weights over a group
 * become one-hot on the group's highest-scoring token for each expert, so each expert takes
 * exactly one token per group (expert choice with capacity 1 per group) and returns its
 * output to that token alone. X [M, group, d], logits [M, group, E] → [M, group, dOut].
 */
function lowerDiscreteTokenMix(m: MoeLowering, X: number, logits: number): number | undefined {
  const { r, experts } = m;
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
  if (r.lowering.routingStats) {
    r.lowering.routing(layerPath(r), "tokens", ir.reshape(tokens, [M, E]));
    // One token per expert per group: every expert gets the same share.
    r.lowering.routing(layerPath(r), "share", ir.constant(1 / E, "f32", [E]));
  }
  const dOut = ir.shape(y)[1]!;
  return ir.reshape(ir.scatterAdd(y, tokens, M * group), [M, group, dOut]);
}
