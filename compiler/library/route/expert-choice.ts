/**
 * Expert choice (`ExpertChoice`): scores softmax(x·Wᵀ) over the experts; each expert takes its
 * c = ⌈capacity·N/E⌉ highest-scoring tokens and adds its output weighted by the score. Sparse:
 * the chosen rows grouped by expert, one expert matmul, scattered back to token order.
 */
import { dimConst } from "../../check/dims.js";
import {
  recordRouterStats,
  routerLogits,
  routingStat,
  runExperts,
  takeAlongRows,
  tokenRows,
  total,
} from "../../lower/routing/common.js";
import { f32Tensor, num, requireRange } from "../options.js";
import { type RouterFamily, routerPath } from "./router-family.js";

export const expertChoice: RouterFamily = {
  name: "ExpertChoice",
  checkOptions(ctx) {
    requireRange(ctx, "capacity", (x) => x > 0, "positive");
  },
  routingInput: () => "none",
  registerParams(ctx, router, { E, d }) {
    ctx.registerParamAt(
      `${routerPath(router)}.gate`,
      f32Tensor([dimConst(E), dimConst(d)]),
      "normal",
    );
  },
  activeExperts: (router, { E }) => Math.min(num(router, "capacity") ?? 1, E),
  lower(m) {
    const { r, router } = m;
    const ir = r.lowering.builder;
    const { lead, N, d, xf } = tokenRows(m);
    const E = m.experts.length;
    const logits = routerLogits(m, lead, d, { taskEmbed: 0, level: "token", needsTask: false });
    if (logits === undefined) return undefined;
    const stat = routingStat(r);
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
  },
};
