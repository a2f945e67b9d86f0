/** AdamW (`std.optim`): its option ranges; training reads the options themselves. */
import type { LoweredPrimitiveRule } from "../../lower/lowering-hooks.js";
import { requireRange } from "../options.js";

export const adamwRule: LoweredPrimitiveRule = {
  role: "optimizer",
  construct(ctx) {
    requireRange(ctx, "lr", (x) => x > 0, "positive");
    requireRange(ctx, "beta1", (x) => x >= 0 && x < 1, "in [0, 1)");
    requireRange(ctx, "beta2", (x) => x >= 0 && x < 1, "in [0, 1)");
    requireRange(ctx, "weight_decay", (x) => x >= 0, "non-negative");
  },
};
