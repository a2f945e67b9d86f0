/**
 * The MoE layer (`std.route`'s `MoE`): construction checks its experts (one signature, groups
 * when the router groups them) and asks its router's family (families.ts) for the rest: checks
 * against the experts and the task set, what the layer takes beside x, the router's parameters
 * and the active experts per token. Application checks the inputs; lowering (`lowerMoE`)
 * builds what every family needs, dispatches to the family and adds the shared experts.
 */
import { dimConst, dimValue, formatDim } from "../../check/dims.js";
import type { BuiltinArg } from "../../check/builtins.js";
import type { PrimitiveContext } from "../../check/primitive-rule.js";
import { unifyTensor } from "../../check/unify.js";
import {
  type Instance,
  type TensorType,
  type Value,
  UNKNOWN,
  describeValue,
  formatTensorType,
} from "../../check/values.js";
import type { LoweredPrimitiveRule } from "../../lower/lowering-hooks.js";
import type { LayerLowering } from "../../lower/lowering-hooks.js";
import { type MoeLowering, layerPath } from "../../lower/routing/common.js";
import { num } from "../options.js";
import { ROUTER_FAMILIES } from "./families.js";
import type { ExpertLayout, RouterShape, RoutingInput } from "./router-family.js";

// ---------------------------------------------------------------- checking

/** What MoE construction learned, for its application. */
const moeInfo = new WeakMap<Instance, { input: RoutingInput; taskSet?: string }>();

function leavesOf(
  ctx: PrimitiveContext,
  experts: Value,
  grouped: boolean,
  label: string,
): { leaves: Instance[]; groups: number[] } | undefined {
  if (experts.k !== "list") return undefined;
  const leaves: Instance[] = [];
  const groups: number[] = [];
  for (const item of experts.items) {
    if (grouped) {
      if (item.k !== "list") {
        if (item.k !== "unknown")
          ctx.report(
            "E0403",
            ctx.span,
            `${label}: a Grouped router needs a list of expert groups, like [[E; 4]; 3]`,
            { hint: `found ${describeValue(item)} where a group (a list) should be` },
          );
        return undefined;
      }
      if (item.items.length === 0) {
        ctx.report("E0403", ctx.span, `${label}: expert group ${groups.length} is empty`);
        return undefined;
      }
      groups.push(item.count !== undefined ? NaN : item.items.length);
      for (const x of item.items) {
        if (x.k === "instance") leaves.push(x.inst);
        else if (x.k === "list") {
          ctx.report("E0403", ctx.span, `${label}: expert groups nest only one level deep`);
          return undefined;
        } else return undefined;
      }
    } else {
      if (item.k === "list") {
        ctx.report("E0403", ctx.span, `${label}: nested expert groups need a \`Grouped\` router`, {
          hint: "use router: Grouped(...), or flatten the list",
        });
        return undefined;
      }
      if (item.k !== "instance") return undefined;
      leaves.push(item.inst);
    }
  }
  return { leaves, groups };
}

function sig(inst: Instance): string {
  const ports = (ps: Instance["inputs"]) => ps.map((p) => formatTensorType(p.type)).join(", ");
  return `(${ports(inst.inputs)}) -> (${ports(inst.outputs)})`;
}

export const moeRule: LoweredPrimitiveRule = {
  role: "module",
  construct(ctx) {
    const inst = ctx.inst;
    const routerValue = inst.args.get("router");
    const expertsValue = inst.args.get("experts");
    if (routerValue?.k !== "instance" || !expertsValue || expertsValue.k !== "list") return;
    const router = routerValue.inst;
    const family = ROUTER_FAMILIES.get(router.component);
    const grouped = family?.grouped === true;
    const found = leavesOf(ctx, expertsValue, grouped, "MoE");
    if (!found) return;
    const { leaves, groups } = found;
    if (leaves.length === 0) {
      ctx.report("E0403", ctx.span, "MoE needs at least one expert");
      return;
    }
    const first = leaves[0]!;
    if (first.inputs.length !== 1 || first.outputs.length !== 1) {
      ctx.report(
        "E0401",
        first.span,
        `an expert must take one input and give one output; ${first.component} has ${first.inputs.length} and ${first.outputs.length}`,
      );
      return;
    }
    const shared = inst.args.get("shared");
    const sharedLeaves =
      shared?.k === "list"
        ? shared.items
            .filter((v): v is Extract<Value, { k: "instance" }> => v.k === "instance")
            .map((v) => v.inst)
        : [];
    for (const e of [...leaves.slice(1), ...sharedLeaves]) {
      if (sig(e) !== sig(first)) {
        ctx.report(
          "E0401",
          e.span,
          `experts must share one signature: ${e.component} is ${sig(e)}, the first expert is ${sig(first)}`,
          {
            related: [{ file: first.file, span: first.span, message: "first expert" }],
          },
        );
        return;
      }
    }
    const symbolicCount = expertsValue.count !== undefined || groups.some((g) => Number.isNaN(g));
    const E = symbolicCount ? undefined : leaves.length;
    // Router checks that depend on the experts, then on the layer's task set.
    const layout: ExpertLayout = { E, groups, symbolic: symbolicCount };
    family?.checkExperts?.(ctx, router, layout);
    const input = family?.routingInput(router) ?? "none";
    const needsTask = input === "task ids";
    let taskSet: string | undefined;
    if (needsTask) taskSet = ctx.taskSet(`${router.component} router`);
    if (taskSet !== undefined) family?.checkTasks?.(ctx, router, layout, taskSet);
    moeInfo.set(inst, taskSet !== undefined ? { input, taskSet } : { input });
    // The layer's ports are its experts'.
    inst.inputs = [{ ...first.inputs[0]!, name: "x" }];
    if (needsTask && taskSet !== undefined) {
      inst.inputs.push({
        name: "task",
        type: { dtype: "task", taskSet, dims: [] },
        span: ctx.span,
        file: ctx.file,
      });
    }
    if (input === "token ids") {
      // One id per token: x's type without its feature axis.
      const xType = first.inputs[0]!.type;
      const type: TensorType = { dtype: "i32", dims: xType.dims.slice(0, -1) };
      if (xType.lead !== undefined) type.lead = xType.lead;
      inst.inputs.push({ name: "tokens", type, span: ctx.span, file: ctx.file });
    }
    if (input === "instruction") {
      // One feature vector per sequence; with a variadic lead, only the width is known.
      const xType = first.inputs[0]!.type;
      const dims = lessPositionAxis(xType);
      const type: TensorType = dims ? { dtype: "f32", dims } : { ...xType, dtype: "f32" };
      inst.inputs.push({ name: "instruction", type, span: ctx.span, file: ctx.file });
    }
    inst.outputs = [{ ...first.outputs[0]!, name: "y" }];
    inst.freeAtoms = first.freeAtoms;
    inst.children.set("router", router);
    leaves.forEach((l, i) => inst.children.set(`experts.${i}`, l));

    if (ctx.mode !== "elaborate" || E === undefined) return;
    const inType = first.inputs[0]!.type;
    const d = inType.dims[inType.dims.length - 1];
    const dv = d === undefined ? undefined : dimValue(ctx.unifier.resolve(d));
    if (dv === undefined) {
      ctx.report(
        "E0401",
        first.span,
        `the experts' input width must be known to size the router, found ${formatTensorType(inType)}`,
      );
      return;
    }
    const taskNames = taskSet !== undefined ? ctx.taskMembers(taskSet) : [];
    const shape: RouterShape = {
      E,
      d: dv,
      groups: groups.length,
      tasks: taskNames.length,
      taskNames,
    };
    family?.registerParams(ctx, router, shape);
    ctx.recordMoe({
      path: inst.path ?? "",
      router: router.component,
      experts: leaves.map((l) => l.path ?? ""),
      activePerToken: family ? family.activeExperts(router, shape) : E,
      // The weights lowering gives the train loss's aux terms (lowerMoe below).
      balance: num(router, "balance") ?? 0,
      zLoss: num(router, "z_loss") ?? 0,
    });
  },
  apply(ctx, args) {
    const inst = ctx.inst;
    const info = moeInfo.get(inst);
    if (!info || inst.inputs.length === 0) return UNKNOWN;
    const needsTask = info.input === "task ids";
    const needsTokens = info.input === "token ids";
    const needsInstruction = info.input === "instruction";
    const want = info.input === "none" ? 1 : 2;
    if (args.length !== want) {
      if (needsTask && args.length === 1) {
        ctx.report(
          "E0409",
          ctx.span,
          "this MoE's router routes on the task: pass the task ids too, `moe(x, task)`",
        );
      } else if (needsTokens && args.length === 1) {
        ctx.report(
          "E0411",
          ctx.span,
          "this MoE's router routes on the token ids: pass them too, `moe(x, tokens)`",
          { hint: "the ids are i32 with x's leading dims, e.g. `in tokens: i32[B, T]`" },
        );
      } else if (needsInstruction && args.length === 1) {
        ctx.report(
          "E0414",
          ctx.span,
          "this MoE's router routes on an instruction: pass its features too, `moe(x, instruction)`",
          {
            hint: "one f32 vector per sequence, x's dims less the position axis: for x [B, T, d], e.g. `select(x, 1, 0)` is [B, d]",
          },
        );
      } else {
        const second = needsTask
          ? ", task"
          : needsTokens
            ? ", tokens"
            : needsInstruction
              ? ", instruction"
              : "";
        ctx.report(
          "E0305",
          ctx.span,
          `MoE takes ${want} input${want === 1 ? "" : "s"} (x${second}), found ${args.length}`,
        );
      }
      return UNKNOWN;
    }
    const { inputs, outputs } = ctx.freshen(inst);
    const x = args[0]!;
    if (!ctx.expectTensor(x.value, inputs[0]!, x.span, "MoE input `x`")) return UNKNOWN;
    if (needsTask) {
      const t = args[1]!;
      if (t.value.k === "tensor") {
        if (t.value.t.dtype !== "task" || t.value.t.taskSet !== info.taskSet) {
          ctx.report(
            "E0404",
            t.span,
            `expected task ids of ${info.taskSet}, found ${formatTensorType(t.value.t)}`,
          );
          return UNKNOWN;
        }
        const xs = ctx.unifier.resolveTensor((x.value as { t: TensorType }).t);
        const ts = t.value.t.dims;
        if (xs.lead === undefined && ts.length > xs.dims.length) {
          ctx.report(
            "E0302",
            t.span,
            `task ids ${formatTensorType(t.value.t)} must match the leading dims of x ${formatTensorType(xs)}`,
          );
          return UNKNOWN;
        }
        for (let i = 0; i < ts.length && i < xs.dims.length; i++) {
          if (ctx.unifier.unifyDim(ts[i]!, xs.dims[i]!) === "mismatch") {
            ctx.report(
              "E0302",
              t.span,
              `task ids ${formatTensorType(t.value.t)} must match the leading dims of x ${formatTensorType(xs)}`,
              {
                hint: `dimension ${i + 1}: ${formatDim(ts[i]!)} vs ${formatDim(xs.dims[i]!)}`,
              },
            );
            return UNKNOWN;
          }
        }
      } else if (t.value.k !== "unknown") {
        ctx.report("E0301", t.span, `expected task ids, found ${describeValue(t.value)}`);
        return UNKNOWN;
      }
    }
    if (needsTokens && !checkTokenIds(ctx, args[1]!, inputs[1]!, x)) return UNKNOWN;
    if (needsInstruction && !checkInstruction(ctx, args[1]!, x)) return UNKNOWN;
    return { k: "tensor", t: ctx.unifier.resolveTensor(outputs[0]!) };
  },
  lowerLayer: (layer, args) => lowerMoE(layer, args),
};

/**
 * The token ids of a router that routes on them (`moe(x, tokens)`): i32 (E0411), one per token
 * of x, i.e. x's dims without the last (E0302). `expected` is the layer's freshened port.
 */
function checkTokenIds(
  ctx: PrimitiveContext,
  t: BuiltinArg,
  expected: TensorType,
  x: BuiltinArg,
): boolean {
  const router = ctx.inst.children.get("router")?.component ?? "router";
  if (t.value.k === "unknown") return true;
  if (t.value.k !== "tensor" || t.value.t.dtype !== "i32") {
    const found = t.value.k === "tensor" ? formatTensorType(t.value.t) : describeValue(t.value);
    ctx.report(
      "E0411",
      t.span,
      `${router} routes on the token ids: expected i32 ids, found ${found}`,
      {
        hint: "pass the model's token ids, e.g. `in tokens: i32[B, T]`",
      },
    );
    return false;
  }
  const conflict = unifyTensor(ctx.unifier, expected, t.value.t);
  if (conflict) {
    const xs =
      x.value.k === "tensor" ? formatTensorType(ctx.unifier.resolveTensor(x.value.t)) : "x";
    ctx.report(
      "E0302",
      t.span,
      `token ids ${formatTensorType(t.value.t)} must have the leading dims of x ${xs}: one id per token`,
      {
        hint:
          conflict.kind === "dim"
            ? `dimension ${conflict.position}: expected ${formatDim(conflict.expected!)}, found ${formatDim(conflict.found!)}`
            : `expected ${formatTensorType(ctx.unifier.resolveTensor(expected))}`,
      },
    );
    return false;
  }
  return true;
}

/**
 * The dims of one vector per sequence of x: x's dims less the position axis, the next to last
 * (x [B, T, d] → [B, d]); undefined for a variadic lead or a rank below 2.
 */
function lessPositionAxis(x: TensorType): TensorType["dims"] | undefined {
  if (x.lead !== undefined || x.dims.length < 2) return undefined;
  return [...x.dims.slice(0, -2), x.dims[x.dims.length - 1]!];
}

/**
 * The instruction features of a router that routes on them (`moe(x, instruction)`): f32 (E0414)
 * with x's dims less the position axis, the next to last (E0302): one vector per sequence.
 */
function checkInstruction(ctx: PrimitiveContext, t: BuiltinArg, x: BuiltinArg): boolean {
  const router = ctx.inst.children.get("router")?.component ?? "router";
  if (t.value.k === "unknown" || x.value.k !== "tensor") return true;
  if (t.value.k !== "tensor" || t.value.t.dtype !== "f32") {
    const found = t.value.k === "tensor" ? formatTensorType(t.value.t) : describeValue(t.value);
    ctx.report(
      "E0414",
      t.span,
      `${router} routes on an instruction: expected f32 features, found ${found}`,
      {
        hint: "one f32 vector per sequence, e.g. the hidden state at the instruction's last token",
      },
    );
    return false;
  }
  const xs = ctx.unifier.resolveTensor(x.value.t);
  const ts = ctx.unifier.resolveTensor(t.value.t);
  // With a variadic lead only the width is known here.
  const perSequence = lessPositionAxis(xs);
  const expected = perSequence ?? xs.dims.slice(-1);
  const fits =
    (xs.lead !== undefined || ts.lead !== undefined || ts.dims.length === expected.length) &&
    expected.every((dim, i) => {
      const at = ts.dims.length - expected.length + i;
      return at >= 0 && ctx.unifier.unifyDim(ts.dims[at]!, dim) !== "mismatch";
    });
  if (!fits) {
    ctx.report(
      "E0302",
      t.span,
      `instruction ${formatTensorType(ts)} must have x's dims less the position axis: x is ${formatTensorType(xs)}`,
      {
        hint: perSequence
          ? `expected f32[${expected.map((e) => formatDim(e)).join(", ")}], one vector per sequence`
          : `expected the experts' input width ${formatDim(expected[0]!)} last`,
      },
    );
    return false;
  }
  return true;
}

// ---------------------------------------------------------------- lowering

/**
 * IR for one application of an MoE layer (`ctx.inst`) to `args` (x, then the task ids, token ids
 * or instruction features its router routes on).
 */
export function lowerMoE(r: LayerLowering, args: { value: Value }[]): Value {
  const { ctx, lowering } = r;
  const ir = lowering.builder;
  const inst = ctx.inst;
  const router = inst.args.get("router");
  const expertsValue = inst.args.get("experts");
  const x = args[0]?.value;
  if (
    router?.k !== "instance" ||
    expertsValue?.k !== "list" ||
    x?.k !== "tensor" ||
    x.node === undefined
  )
    return UNKNOWN;
  const routerInst = router.inst;
  const groups: Instance[][] = expertsValue.items.map((item) =>
    item.k === "list"
      ? item.items.flatMap((v) => (v.k === "instance" ? [v.inst] : []))
      : item.k === "instance"
        ? [item.inst]
        : [],
  );
  const leaves = groups.flat();
  const d = ir.shape(x.node)[ir.shape(x.node).length - 1]!;
  const rp = routerInst.path ?? "router";
  const trainable = !routerInst.frozen && !inst.frozen;
  const family = ROUTER_FAMILIES.get(routerInst.component);
  if (!family) return r.unsupported(`the ${routerInst.component} router`);
  const ids = args[1]?.value;
  const layer: MoeLowering = {
    r,
    router: routerInst,
    groups,
    experts: leaves,
    x,
    ids: ids?.k === "tensor" ? ids : undefined,
    gate: (name, rows, width = d) =>
      lowering.param(
        `${rp}.${name}.weight`,
        { dtype: "f32", dims: [dimConst(rows), dimConst(width)] },
        trainable,
        "normal(0.02)",
      ),
    param: (name, shape, init) =>
      lowering.param(
        `${rp}.${name}.weight`,
        { dtype: "f32", dims: shape.map(dimConst) },
        trainable,
        init,
      ),
  };
  let y = family.lower(layer);
  if (y === undefined) return UNKNOWN;
  lowering.auxLossWeights?.(
    layerPath(r),
    { balance: num(routerInst, "balance") ?? 0, z: num(routerInst, "z_loss") ?? 0 },
    trainable,
  );
  const shared = inst.args.get("shared");
  if (shared?.k === "list") {
    for (const s of shared.items) {
      if (s.k !== "instance") continue;
      const ys = r.applyExpert(s.inst, x);
      if (!ys || ys.node === undefined) return UNKNOWN;
      y = ir.binary("add", y, ys.node);
    }
  }
  // The type in concrete dims: the declared output's dims are the MoE's own (unresolved) free
  // dims, which a consumer such as a per-task adapter cannot unify with its ports.
  const outType: TensorType = { dtype: "f32", dims: ir.shape(y).map(dimConst) };
  return { k: "tensor", t: outType, node: y };
}
