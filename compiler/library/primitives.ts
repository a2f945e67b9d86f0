/**
 * Rules for the standard library's `primitive` declarations: routers, the MoE layer, LoRA and
 * optimisers. The `.moe` declaration gives parameters, defaults and docs; the rule here adds
 * what the language cannot say itself: cross-argument checks (k ≤ number of experts, groups
 * well formed), the MoE layer's ports (those of its experts) and router parameters.
 */
import type { Span } from "../../grammar/ast.js";
import type { BuiltinArg } from "../check/builtins.js";
import type { DiagnosticCode, RelatedInfo } from "../diagnostics.js";
import { type Dim, dimAdd, dimConst, dimValue, formatDim } from "../check/dims.js";
import type { MoeRecord, PrimitiveContext } from "../check/primitive-rule.js";
import type { LoweredPrimitiveRule, LoweringHooks } from "../lower/lowering-hooks.js";
import type { Unifier } from "../check/unify.js";
import {
  type Instance,
  type InstanceRole,
  type TensorType,
  type Value,
  UNKNOWN,
  describeValue,
  formatTensorType,
} from "../check/values.js";

// ---------------------------------------------------------------- argument helpers
// (shared with the MoE lowerings: an instance's argument as a number, enum member or flag)

export function num(inst: Instance, name: string): number | undefined {
  const v = inst.args.get(name);
  if (!v) return undefined;
  if (v.k === "int") return dimValue(v.v);
  if (v.k === "float") return v.v;
  return undefined;
}

export function member(inst: Instance, name: string): string | undefined {
  const v = inst.args.get(name);
  return v?.k === "enum" ? v.member : undefined;
}

export function bool(inst: Instance, name: string): boolean | undefined {
  const v = inst.args.get(name);
  return v?.k === "bool" ? v.v : undefined;
}

/** Reports when a known numeric option is outside its range. */
function requireRange(
  ctx: PrimitiveContext,
  name: string,
  ok: (x: number) => boolean,
  expectation: string,
): void {
  const x = num(ctx.inst, name);
  if (x !== undefined && !ok(x)) {
    ctx.report(
      "E0319",
      ctx.span,
      `${ctx.inst.component}: \`${name}\` must be ${expectation}, found ${x}`,
    );
  }
}

const tensor = (dims: Dim[]): TensorType => ({ dtype: "f32", dims });

// ---------------------------------------------------------------- routers

const ROUTERS = new Set([
  "TopK",
  "ExpertChoice",
  "TaskRoute",
  "TaskMap",
  "Grouped",
  "TokenMix",
  "Soft",
]);

/** Whether a router needs the task ids as a second input to its MoE layer. */
function routerNeedsTask(router: Instance): boolean {
  switch (router.component) {
    case "TopK":
      return (num(router, "task_embed") ?? 0) > 0;
    case "TaskRoute":
    case "TaskMap":
      return true;
    default:
      return false;
  }
}

const routerRules: Record<string, (ctx: PrimitiveContext) => void> = {
  TopK(ctx) {
    requireRange(ctx, "k", (x) => x >= 1, "at least 1");
    requireRange(ctx, "capacity", (x) => x === 0 || x >= 1, "0 (dropless) or at least 1.0");
    requireRange(ctx, "noise", (x) => x >= 0, "non-negative");
    requireRange(ctx, "balance", (x) => x >= 0, "non-negative");
    requireRange(ctx, "z_loss", (x) => x >= 0, "non-negative");
    requireRange(ctx, "task_embed", (x) => x >= 0, "non-negative");
  },
  ExpertChoice(ctx) {
    requireRange(ctx, "capacity", (x) => x > 0, "positive");
  },
  TaskRoute(ctx) {
    requireRange(ctx, "k", (x) => x >= 1, "at least 1");
    requireRange(ctx, "embed", (x) => x >= 1, "at least 1");
  },
  TaskMap() {},
  Grouped(ctx) {
    const pin = ctx.inst.args.get("pin");
    if (pin?.k === "list") {
      const values = pin.items.map((v) =>
        v.k === "float" ? v.v : v.k === "int" ? dimValue(v.v) : undefined,
      );
      if (values.some((v) => v !== undefined && v < 0)) {
        ctx.report("E0319", ctx.span, "Grouped: pinned group weights must be non-negative");
      } else if (values.length > 0 && values.every((v) => v !== undefined)) {
        const sum = values.reduce((a, b) => a! + b!, 0)!;
        if (Math.abs(sum - 1) > 1e-6)
          ctx.report("E0319", ctx.span, `Grouped: pinned group weights sum to ${sum}, not 1`);
      }
    }
  },
  TokenMix(ctx) {
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
  Soft() {},
};

// ---------------------------------------------------------------- MoE

/** What MoE construction learned, for its application. */
const moeInfo = new WeakMap<Instance, { needsTask: boolean; taskSet?: string }>();

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

const moeRule: LoweredPrimitiveRule = {
  role: "module",
  construct(ctx) {
    const inst = ctx.inst;
    const routerValue = inst.args.get("router");
    const expertsValue = inst.args.get("experts");
    if (routerValue?.k !== "instance" || !expertsValue || expertsValue.k !== "list") return;
    const router = routerValue.inst;
    const grouped = router.component === "Grouped";
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
    // Router options that depend on the number of experts.
    if (router.component === "TopK" || router.component === "TaskRoute") {
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
    if (grouped) {
      const pin = router.args.get("pin");
      if (
        pin?.k === "list" &&
        pin.items.length > 0 &&
        !symbolicCount &&
        pin.items.length !== groups.length
      ) {
        ctx.report(
          "E0403",
          router.span,
          `Grouped pins ${pin.items.length} group weights, but there are ${groups.length} groups`,
        );
      }
    }
    const needsTask = routerNeedsTask(router);
    let taskSet: string | undefined;
    if (needsTask) taskSet = ctx.taskSet(`${router.component} router`);
    if (router.component === "TaskMap" && taskSet !== undefined) {
      const map = router.args.get("map");
      if (map?.k === "record") {
        const members = ctx.taskMembers(taskSet);
        const missing = members.filter((m) => !map.fields.has(m));
        const extra = [...map.fields.keys()].filter((k) => !members.includes(k));
        if (missing.length || extra.length) {
          ctx.report("E0406", router.span, `TaskMap does not match task set ${taskSet}`, {
            hint: [
              missing.length ? `missing ${missing.join(", ")}` : "",
              extra.length ? `not tasks of ${taskSet}: ${extra.join(", ")}` : "",
            ]
              .filter(Boolean)
              .join("; "),
          });
        }
        for (const [task, v] of map.fields) {
          const items = v.k === "list" ? v.items : [v];
          for (const x of items) {
            const i = x.k === "int" ? dimValue(x.v) : undefined;
            if (x.k !== "int")
              ctx.report(
                "E0301",
                map.keySpans.get(task) ?? router.span,
                `TaskMap: task \`${task}\` maps to ${describeValue(x)}; expected expert indices`,
              );
            else if (i !== undefined && E !== undefined && (i < 0 || i >= E)) {
              ctx.report(
                "E0402",
                map.keySpans.get(task) ?? router.span,
                `TaskMap: task \`${task}\` uses expert ${i}, but experts are numbered 0 to ${E - 1}`,
              );
            }
          }
        }
      }
    }
    moeInfo.set(inst, taskSet !== undefined ? { needsTask, taskSet } : { needsTask });
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
    registerRouterParams(ctx, router, E, dv, groups.length, taskSet);
    ctx.recordMoe({
      path: inst.path ?? "",
      router: router.component,
      experts: leaves.map((l) => l.path ?? ""),
      activePerToken: activeExperts(router, E, groups.length),
    });
  },
  apply(ctx, args) {
    const inst = ctx.inst;
    const info = moeInfo.get(inst);
    if (!info || inst.inputs.length === 0) return UNKNOWN;
    const want = info.needsTask ? 2 : 1;
    if (args.length !== want) {
      if (info.needsTask && args.length === 1) {
        ctx.report(
          "E0409",
          ctx.span,
          "this MoE's router routes on the task: pass the task ids too, `moe(x, task)`",
        );
      } else {
        ctx.report(
          "E0305",
          ctx.span,
          `MoE takes ${want} input${want === 1 ? "" : "s"} (x${info.needsTask ? ", task" : ""}), found ${args.length}`,
        );
      }
      return UNKNOWN;
    }
    const { inputs, outputs } = ctx.freshen(inst);
    const x = args[0]!;
    if (!ctx.expectTensor(x.value, inputs[0]!, x.span, "MoE input `x`")) return UNKNOWN;
    if (info.needsTask) {
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
    return { k: "tensor", t: ctx.unifier.resolveTensor(outputs[0]!) };
  },
};

function registerRouterParams(
  ctx: PrimitiveContext,
  router: Instance,
  E: number,
  d: number,
  groups: number,
  taskSet: string | undefined,
): void {
  const rp = router.path ?? "router";
  const nTasks = taskSet !== undefined ? ctx.taskMembers(taskSet).length : 0;
  const c = (n: number) => dimConst(n);
  switch (router.component) {
    case "TopK": {
      const te = num(router, "task_embed") ?? 0;
      ctx.registerParamAt(`${rp}.gate`, tensor([c(E), dimAdd(c(d), c(te))]), "normal");
      if (te > 0) ctx.registerParamAt(`${rp}.task_embedding`, tensor([c(nTasks), c(te)]), "normal");
      return;
    }
    case "ExpertChoice":
    case "Soft":
      ctx.registerParamAt(`${rp}.gate`, tensor([c(E), c(d)]), "normal");
      return;
    case "TaskRoute": {
      const level = member(router, "level") ?? "token";
      if (level === "task") {
        ctx.registerParamAt(`${rp}.task_logits`, tensor([c(nTasks), c(E)]), "zeros");
      } else {
        const emb = num(router, "embed") ?? 16;
        ctx.registerParamAt(`${rp}.gate`, tensor([c(E), c(d + emb)]), "normal");
        ctx.registerParamAt(`${rp}.task_embedding`, tensor([c(nTasks), c(emb)]), "normal");
      }
      return;
    }
    case "Grouped":
      ctx.registerParamAt(`${rp}.group_gate`, tensor([c(groups), c(d)]), "normal");
      ctx.registerParamAt(`${rp}.expert_gate`, tensor([c(E), c(d)]), "normal");
      return;
    case "TokenMix":
      ctx.registerParamAt(`${rp}.controller`, tensor([c(E), c(d)]), "normal");
      return;
    case "TaskMap":
      return;
  }
}

function activeExperts(router: Instance, E: number, groups: number): number {
  switch (router.component) {
    case "TopK":
    case "TaskRoute":
      return Math.min(num(router, "k") ?? 1, E);
    case "ExpertChoice":
      return Math.min(num(router, "capacity") ?? 1, E);
    case "TokenMix":
      // Each expert processes one mixed token per group of `group` tokens.
      return E / Math.max(1, num(router, "group") ?? 1);
    case "TaskMap": {
      const map = router.args.get("map");
      if (map?.k !== "record") return 1;
      return Math.max(
        1,
        ...[...map.fields.values()].map((v) => (v.k === "list" ? v.items.length : 1)),
      );
    }
    default:
      void groups;
      return E;
  }
}

// ---------------------------------------------------------------- adapters and optimisers

const loraRule: LoweredPrimitiveRule = {
  role: "adapter",
  construct(ctx) {
    requireRange(ctx, "r", (x) => x >= 1, "at least 1");
    requireRange(ctx, "alpha", (x) => x > 0, "positive");
    requireRange(ctx, "dropout", (x) => x >= 0 && x < 1, "in [0, 1)");
  },
  lowerAdapter: lowerLora,
  attach(ctx, adapter, base, wrapped) {
    const inT = base.inputs[0]!.type;
    const outT = base.outputs[0]!.type;
    const fin = inT.dims[inT.dims.length - 1];
    const fout = outT.dims[outT.dims.length - 1];
    if (fin === undefined || fout === undefined || inT.dtype !== "f32" || outT.dtype !== "f32") {
      ctx.report(
        "E0408",
        ctx.span,
        `LoRA needs a base mapping f32[..., in] to f32[..., out]; ${base.component} maps ${formatTensorType(inT)} to ${formatTensorType(outT)}`,
      );
      return;
    }
    const r = adapter.args.get("r");
    const rd = r?.k === "int" ? r.v : undefined;
    if (!rd) return;
    const a: TensorType = tensor([rd, fin]);
    const b: TensorType = tensor([fout, rd]);
    wrapped.weights.set("lora_A", a);
    wrapped.weights.set("lora_B", b);
    const path = adapter.path ?? wrapped.path ?? "";
    // PEFT's names: <module>.lora_A.weight [r, in], <module>.lora_B.weight [out, r]; B starts at zero.
    ctx.registerParamAt(`${path}.lora_A`, a, LORA_A_INIT);
    ctx.registerParamAt(`${path}.lora_B`, b, "zeros");
  },
};

/** y + (alpha / r) · (x Aᵀ) Bᵀ, unmerged: the fuser folds it into the base matmul's epilogue. */
function lowerLora(
  ctx: PrimitiveContext,
  lowering: LoweringHooks,
  wrapped: Instance,
  x: Extract<Value, { k: "tensor" }>,
  y: Extract<Value, { k: "tensor" }>,
): Value {
  if (x.node === undefined || y.node === undefined) return UNKNOWN;
  if (lowering.mergeAdapters) {
    const merged = mergeLora(ctx, lowering, wrapped, x.node, y.node);
    if (merged !== undefined) return { k: "tensor", t: y.t, node: merged };
  }
  const delta = loraDelta(ctx, lowering, wrapped, x.node);
  if (delta === undefined) return UNKNOWN;
  return { k: "tensor", t: y.t, node: lowering.builder.binary("add", y.node, delta) };
}

/**
 * `--merge-adapters`: a LoRA on a Linear-shaped base (y = x·Wᵀ [+ b]) becomes the base with
 * W + (alpha / r)·B·A, a value of parameters alone that the runtime computes once (a static
 * kernel) rather than two extra matmuls per call. Other bases (an FFN) stay unmerged.
 */
function mergeLora(
  ctx: PrimitiveContext,
  lowering: LoweringHooks,
  wrapped: Instance,
  x: number,
  y: number,
): number | undefined {
  const ir = lowering.builder;
  let out = ir.node(y);
  let bias: number | undefined;
  if (out.op === "binary" && out.fn === "add") {
    bias = out.inputs[1];
    out = ir.node(out.inputs[0]);
  }
  if (out.op !== "matmul" || out.inputs[0] !== x) return undefined;
  const wt = ir.node(out.inputs[1]);
  if (wt.op !== "permute" || ir.node(wt.inputs[0]).op !== "param") return undefined;
  if (bias !== undefined && ir.shape(bias).length !== 1) return undefined;
  const factors = loraFactors(ctx, lowering, wrapped);
  if (!factors) return undefined;
  const { A, B, scale } = factors;
  const W = wt.inputs[0];
  const merged = ir.binary("add", W, ir.binary("mul", ir.matmul(B, A), ir.constant(scale)));
  const m = ir.matmul(x, ir.permute(merged, [1, 0]));
  return bias === undefined ? m : ir.binary("add", m, bias);
}

/** The IR of (alpha / r) · (x Aᵀ) Bᵀ for the LoRA adapter of `wrapped` (ctx.inst). */
export function loraDelta(
  ctx: PrimitiveContext,
  lowering: LoweringHooks,
  wrapped: Instance,
  x: number,
): number | undefined {
  const factors = loraFactors(ctx, lowering, wrapped);
  if (!factors) return undefined;
  const { A, B, scale } = factors;
  const ir = lowering.builder;
  const xa = ir.matmul(x, ir.permute(A, [1, 0]));
  return ir.binary("mul", ir.matmul(xa, ir.permute(B, [1, 0])), ir.constant(scale));
}

/** The LoRA's parameters A [r, in] and B [out, r] and its scale alpha / r. */
function loraFactors(
  ctx: PrimitiveContext,
  lowering: LoweringHooks,
  wrapped: Instance,
): { A: number; B: number; scale: number } | undefined {
  const adapter = ctx.inst;
  const a = wrapped.weights.get("lora_A");
  const b = wrapped.weights.get("lora_B");
  const r = num(adapter, "r");
  const alpha = num(adapter, "alpha");
  const path = adapter.path ?? wrapped.path ?? "";
  if (!a || !b || r === undefined || alpha === undefined) return undefined;
  const trainable = !adapter.frozen;
  const A = lowering.param(
    `${path}.lora_A.weight`,
    ctx.unifier.resolveTensor(a),
    trainable,
    LORA_A_INIT,
  );
  const B = lowering.param(
    `${path}.lora_B.weight`,
    ctx.unifier.resolveTensor(b),
    trainable,
    "zeros",
  );
  if (A === undefined || B === undefined) return undefined;
  lowering.noteLora(path, r, alpha);
  return { A, B, scale: alpha / r };
}

const LORA_A_INIT = "normal(0.02)";

const adamwRule: LoweredPrimitiveRule = {
  role: "optimizer",
  construct(ctx) {
    requireRange(ctx, "lr", (x) => x > 0, "positive");
    requireRange(ctx, "beta1", (x) => x >= 0 && x < 1, "in [0, 1)");
    requireRange(ctx, "beta2", (x) => x >= 0 && x < 1, "in [0, 1)");
    requireRange(ctx, "weight_decay", (x) => x >= 0, "non-negative");
  },
};

/** Every primitive the compiler implements, by the name its stdlib declaration uses. */
export const PRIMITIVES: ReadonlyMap<string, LoweredPrimitiveRule> = new Map<
  string,
  LoweredPrimitiveRule
>([
  ...[...ROUTERS].map((name): [string, LoweredPrimitiveRule] => [
    name,
    { role: "router", construct: routerRules[name]! },
  ]),
  ["MoE", moeRule],
  ["LoRA", loraRule],
  ["AdamW", adamwRule],
]);
