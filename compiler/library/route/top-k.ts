/**
 * Top-k token choice (`TopK`): each token takes the k experts with the highest logits x·Wᵀ,
 * optionally beside a learned task embedding (`task_embed`), with a capacity per expert and an
 * overflow policy. Sparse: rows grouped by expert, one expert matmul for all experts.
 */
import { dimAdd, dimConst } from "../../check/dims.js";
import type { PrimitiveContext } from "../../check/primitive-rule.js";
import type { Instance } from "../../check/values.js";
import { lowerTokenChoice, routerLogits, tokenRows } from "../../lower/routing/common.js";
import { bool, f32Tensor, member, num, requireRange } from "../options.js";
import { type ExpertLayout, type RouterFamily, routerPath } from "./router-family.js";

/** E0402 when a router selects more experts (`k`) than the layer has. */
export function requireKAtMost(ctx: PrimitiveContext, router: Instance, E: number | undefined) {
  const k = num(router, "k");
  if (k !== undefined && E !== undefined && k > E) {
    ctx.report(
      "E0402",
      router.span,
      `${router.component} selects k = ${k} experts, but there are only ${E}`,
      { hint: `use k ≤ ${E}, or add experts` },
    );
  }
}

export const topK: RouterFamily = {
  name: "TopK",
  checkOptions(ctx) {
    requireRange(ctx, "k", (x) => x >= 1, "at least 1");
    requireRange(ctx, "capacity", (x) => x === 0 || x >= 1, "0 (dropless) or at least 1.0");
    requireRange(ctx, "noise", (x) => x >= 0, "non-negative");
    requireRange(ctx, "balance", (x) => x >= 0, "non-negative");
    requireRange(ctx, "z_loss", (x) => x >= 0, "non-negative");
    requireRange(ctx, "task_embed", (x) => x >= 0, "non-negative");
    // The default is `k > 1`, so `true` at k = 1 was written by the user.
    if (num(ctx.inst, "k") === 1 && bool(ctx.inst, "renormalize") === true) {
      ctx.report(
        "W0504",
        ctx.span,
        "TopK(k: 1) with `renormalize: true`: the one weight is always 1, so the router gets no gradient from the task loss",
        { hint: "drop `renormalize: true`: top-1 keeps the router probability p (Switch)" },
      );
    }
  },
  routingInput: (router) => ((num(router, "task_embed") ?? 0) > 0 ? "task ids" : "none"),
  checkExperts(ctx, router, experts: ExpertLayout) {
    requireKAtMost(ctx, router, experts.E);
  },
  registerParams(ctx, router, { E, d, tasks, taskNames }) {
    const rp = routerPath(router);
    const c = (n: number) => dimConst(n);
    const te = num(router, "task_embed") ?? 0;
    ctx.registerParamAt(`${rp}.gate`, f32Tensor([c(E), dimAdd(c(d), c(te))]), "normal");
    if (te > 0) {
      const table = f32Tensor([c(tasks), c(te)]);
      ctx.registerParamAt(`${rp}.task_embedding`, table, "normal", taskNames);
    }
  },
  activeExperts: (router, { E }) => Math.min(num(router, "k") ?? 1, E),
  lower(m) {
    const { router } = m;
    const rows = tokenRows(m);
    const taskEmbed = num(router, "task_embed") ?? 0;
    const logits = routerLogits(m, rows.lead, rows.d, {
      taskEmbed,
      level: "token",
      needsTask: taskEmbed > 0,
      jitter: num(router, "noise") ?? 0,
    });
    if (logits === undefined) return undefined;
    const k = num(router, "k") ?? 2;
    return lowerTokenChoice(m, rows, logits, {
      k: Math.min(k, m.experts.length),
      softmaxAfter: member(router, "softmax") === "after",
      // Off by default at k = 1 (Switch keeps p); written `true`, it is honoured (W0504).
      renormalize: bool(router, "renormalize") === true,
      capacity: num(router, "capacity") ?? 0,
      overflowZero: member(router, "overflow") === "zero",
    });
  },
};
