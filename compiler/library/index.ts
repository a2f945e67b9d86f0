/**
 * The standard library's table: the rule of every `primitive` in stdlib/ by name (routers and
 * the MoE layer in route/, LoRA in adapt/, AdamW in optim/, as stdlib/ is laid out), and the
 * std module that defines each name, for "import it" hints. The `.moe` declarations give
 * options, defaults and docs; the rules add what the language cannot say itself. The pipeline
 * hands this table to the evaluator, so check/ never imports the library.
 */
import type { LoweredLibrary, LoweredPrimitiveRule } from "../lower/lowering-hooks.js";
import { loraRule } from "./adapt/lora.js";
import { adamwRule } from "./optim/adamw.js";
import { groupRule } from "./optim/param-groups.js";
import { ROUTER_FAMILIES } from "./route/families.js";
import { moeRule } from "./route/moe.js";

const rules = new Map<string, LoweredPrimitiveRule>([
  ...[...ROUTER_FAMILIES.values()].map((family): [string, LoweredPrimitiveRule] => [
    family.name,
    { role: "router", construct: (ctx) => family.checkOptions(ctx) },
  ]),
  ["MoE", moeRule],
  ["LoRA", loraRule],
  ["AdamW", adamwRule],
  ["Group", groupRule],
]);

/** Every top-level name of stdlib/*.moe (test/compiler/library-homes.test.ts keeps it whole). */
const exported: Record<string, readonly string[]> = {
  "std.nn": [
    "Act",
    "Linear",
    "Embedding",
    "LayerNorm",
    "RMSNorm",
    "FFN",
    "SwiGLU",
    "Attention",
    "TransformerBlock",
  ],
  "std.route": [
    "SoftmaxOrder",
    "Overflow",
    "Granularity",
    "GroupNorm",
    "RouteOn",
    "Emit",
    "MixAxis",
    ...ROUTER_FAMILIES.keys(),
    "MoE",
  ],
  "std.adapt": ["LoRA", "Bottleneck"],
  "std.optim": ["Decay", "Group", "AdamW"],
};

const homes = new Map<string, string>(
  Object.entries(exported).flatMap(([module, names]) =>
    names.map((name): [string, string] => [name, module]),
  ),
);

export const STANDARD_LIBRARY: LoweredLibrary = { rules, homes };
