/**
 * Task routing (`TaskRoute`): top-k from the token and a learned task embedding (`level:
 * token`), one decision per sequence from its mean and the task embedding (`sequence`), or a
 * learned task → expert-logits table (`task`). Needs the task ids; sparse like top-k, with the
 * chosen weights always renormalised.
 */
import { dimConst } from "../../check/dims.js";
import { lowerTokenChoice, routerLogits, tokenRows } from "../../lower/routing/common.js";
import { f32Tensor, member, num, requireRange } from "../options.js";
import { type RouterFamily, routerPath } from "./router-family.js";
import { requireKAtMost } from "./top-k.js";

export const taskRoute: RouterFamily = {
  name: "TaskRoute",
  checkOptions(ctx) {
    requireRange(ctx, "k", (x) => x >= 1, "at least 1");
    requireRange(ctx, "embed", (x) => x >= 1, "at least 1");
  },
  routingInput: () => "task ids",
  checkExperts(ctx, router, experts) {
    requireKAtMost(ctx, router, experts.E);
  },
  registerParams(ctx, router, { E, d, tasks, taskNames }) {
    const rp = routerPath(router);
    const c = (n: number) => dimConst(n);
    const level = member(router, "level") ?? "token";
    if (level === "task") {
      ctx.registerParamAt(`${rp}.task_logits`, f32Tensor([c(tasks), c(E)]), "zeros", taskNames);
    } else {
      const emb = num(router, "embed") ?? 16;
      ctx.registerParamAt(`${rp}.gate`, f32Tensor([c(E), c(d + emb)]), "normal");
      const table = f32Tensor([c(tasks), c(emb)]);
      ctx.registerParamAt(`${rp}.task_embedding`, table, "normal", taskNames);
    }
  },
  activeExperts: (router, { E }) => Math.min(num(router, "k") ?? 1, E),
  lower(m) {
    const { router } = m;
    const rows = tokenRows(m);
    const level = member(router, "level") ?? "token";
    const logits = routerLogits(m, rows.lead, rows.d, {
      taskEmbed: num(router, "embed") ?? 16,
      level: level === "sequence" || level === "task" ? level : "token",
      needsTask: true,
    });
    if (logits === undefined) return undefined;
    return lowerTokenChoice(m, rows, logits, {
      k: Math.min(num(router, "k") ?? 1, m.experts.length),
      softmaxAfter: false,
      renormalize: true,
      capacity: 0,
      overflowZero: false,
    });
  },
};
