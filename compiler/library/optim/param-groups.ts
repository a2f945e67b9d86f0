/**
 * Parameter groups (`std.optim`'s `Group`): which trainable parameters train at a scaled
 * learning rate, with weight decay forced on or off, or on some rows only.
 *
 *   optimizer = AdamW(lr: 1e-4, groups: [
 *     Group(params: ["lora_A.weight", "lora_B.weight"], lr_scale: 10.0),
 *     Group(params: ["student.embed.weight"], rows: [64, 65, 66, 67]),
 *   ])
 *
 * Patterns match a parameter's dotted path by its end, `*` standing for any one name (as
 * LoRA's `targets`). Resolving needs the concrete parameter names, so it runs when the
 * program is lowered (`resolveParamGroups`); every mistake is E0412 at the group.
 */
import type { Span } from "../../../grammar/ast.js";
import { dimValue } from "../../check/dims.js";
import { matchesTarget } from "../../check/evaluator.js";
import type { Instance, Value } from "../../check/values.js";
import { type Diagnostic, diagnostic } from "../../diagnostics.js";
import type { LoweredPrimitiveRule } from "../../lower/lowering-hooks.js";
import { member, num, requireRange } from "../options.js";

export const groupRule: LoweredPrimitiveRule = {
  role: "parameter group",
  construct(ctx) {
    requireRange(ctx, "lr_scale", (x) => x > 0, "positive");
    const params = ctx.inst.args.get("params");
    if (params?.k === "list" && params.items.length === 0)
      ctx.report("E0319", ctx.span, "Group: `params` must name at least one parameter pattern");
    for (const r of intList(ctx.inst.args.get("rows")) ?? []) {
      if (r < 0) ctx.report("E0319", ctx.span, `Group: \`rows\` must be non-negative, found ${r}`);
    }
  },
};

/** What the groups say about one trainable parameter (absent fields: the defaults). */
export interface ParamGroupSettings {
  /** Learning-rate multiplier. */
  lrScale?: number;
  /** Forced weight decay on (true) or off (false). */
  decay?: boolean;
  /** The only rows (first-axis indices, ascending, distinct) that train. */
  rows?: number[];
}

/** A parameter as the groups see it. */
export interface GroupedParam {
  name: string;
  shape: readonly number[];
  trainable: boolean;
}

/**
 * Resolves the optimizer's `groups` against the program's parameters: parameter name →
 * settings, for every trainable parameter some group matches. Reports E0412 for a pattern
 * that matches no parameter or only frozen ones, a parameter in two groups, and rows on a
 * scalar or past the first axis.
 */
export function resolveParamGroups(
  groups: readonly Instance[],
  params: readonly GroupedParam[],
  diagnostics: Diagnostic[],
): Map<string, ParamGroupSettings> {
  const out = new Map<string, ParamGroupSettings>();
  const owner = new Map<string, { index: number; span: Span; file: string }>();
  groups.forEach((g, index) => {
    const report = (message: string, hint?: string) =>
      diagnostics.push(diagnostic("E0412", g.file, g.span, message, hint ? { hint } : {}));
    const patterns = stringList(g.args.get("params"));
    const matched = new Set<GroupedParam>();
    for (const pattern of patterns) {
      const hits = params.filter((p) => matchesTarget(p.name, "", pattern));
      if (hits.length === 0) {
        report(
          `parameter group pattern "${pattern}" matches no parameter`,
          "patterns match the end of a dotted path (`*` is any one name), as `moec params --program` lists them",
        );
        continue;
      }
      const trainable = hits.filter((p) => p.trainable);
      if (trainable.length === 0) {
        report(
          `parameter group pattern "${pattern}" matches only frozen parameters (${hits[0]!.name}${hits.length > 1 ? ", ..." : ""})`,
          "frozen parameters do not train; drop `frozen` from the instance to train them",
        );
        continue;
      }
      for (const p of trainable) matched.add(p);
    }
    const lrScale = num(g, "lr_scale") ?? 1;
    const decayMode = member(g, "decay") ?? "auto";
    const rows = intList(g.args.get("rows")) ?? [];
    for (const p of matched) {
      const before = owner.get(p.name);
      if (before) {
        report(
          `parameter ${p.name} is in parameter groups ${before.index + 1} and ${index + 1}`,
          "a parameter belongs to one group; narrow the patterns",
        );
        continue;
      }
      owner.set(p.name, { index, span: g.span, file: g.file });
      const s: ParamGroupSettings = {};
      if (lrScale !== 1) s.lrScale = lrScale;
      if (decayMode !== "auto") s.decay = decayMode === "on";
      if (rows.length > 0) {
        const first = p.shape[0];
        if (first === undefined) {
          report(`parameter ${p.name} is a scalar: it has no rows to train`);
          continue;
        }
        const bad = rows.find((r) => r < 0 || r >= first);
        if (bad !== undefined) {
          report(
            `row ${bad} is outside parameter ${p.name} [${p.shape.join(", ")}] (rows 0..${first - 1})`,
          );
          continue;
        }
        s.rows = [...new Set(rows)].sort((a, b) => a - b);
      }
      out.set(p.name, s);
    }
  });
  return out;
}

/** The groups of an AdamW instance (its `groups` argument). */
export function groupInstances(adamw: Instance): Instance[] {
  const v = adamw.args.get("groups");
  if (v?.k !== "list") return [];
  return v.items.flatMap((i) => (i.k === "instance" ? [i.inst] : []));
}

/** Runs of consecutive rows, as half-open [start, end) ranges. */
export function rowRuns(rows: readonly number[]): [number, number][] {
  const runs: [number, number][] = [];
  for (const r of rows) {
    const last = runs[runs.length - 1];
    if (last && last[1] === r) last[1] = r + 1;
    else runs.push([r, r + 1]);
  }
  return runs;
}

function stringList(v: Value | undefined): string[] {
  if (v?.k !== "list") return [];
  return v.items.flatMap((i) => (i.k === "string" && i.v !== undefined ? [i.v] : []));
}

function intList(v: Value | undefined): number[] | undefined {
  if (v?.k !== "list") return undefined;
  return v.items.flatMap((i) => {
    const x = i.k === "int" ? dimValue(i.v) : undefined;
    return x === undefined ? [] : [x];
  });
}
