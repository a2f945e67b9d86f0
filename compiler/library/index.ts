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

const homes = new Map<string, string>([
  ...["Linear", "Embedding", "LayerNorm", "RMSNorm", "FFN", "SwiGLU", "Attention"].map(
    (name): [string, string] => [name, "std.nn"],
  ),
  ...[...ROUTER_FAMILIES.keys()].map((name): [string, string] => [name, "std.route"]),
  ["MoE", "std.route"],
  ["LoRA", "std.adapt"],
  ["Bottleneck", "std.adapt"],
  ["AdamW", "std.optim"],
  ["Group", "std.optim"],
]);

export const STANDARD_LIBRARY: LoweredLibrary = { rules, homes };
