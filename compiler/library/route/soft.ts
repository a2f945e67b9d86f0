/** Dense soft mixture (`Soft`): every expert, weighted by softmax(x·Wᵀ) over all experts. */
import { dimConst } from "../../check/dims.js";
import {
  applyEach,
  logitsOf,
  recordGateShare,
  routingStat,
  weightedSum,
} from "../../lower/routing/common.js";
import { f32Tensor } from "../options.js";
import { type RouterFamily, routerPath } from "./router-family.js";

export const soft: RouterFamily = {
  name: "Soft",
  checkOptions() {},
  routingInput: () => "none",
  registerParams(ctx, router, { E, d }) {
    ctx.registerParamAt(
      `${routerPath(router)}.gate`,
      f32Tensor([dimConst(E), dimConst(d)]),
      "normal",
    );
  },
  activeExperts: (_router, { E }) => E,
  lower(m) {
    const ir = m.r.lowering.builder;
    const g = m.gate("gate", m.experts.length);
    const ys = applyEach(m, m.x);
    if (g === undefined || !ys) return undefined;
    const gates = ir.softmax(logitsOf(m, g));
    if (m.r.lowering.routingStats) recordGateShare(ir, routingStat(m.r), gates);
    return weightedSum(ir, gates, ys);
  },
};
