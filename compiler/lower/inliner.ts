/**
 * Lowering's half of evaluation: the evaluator checks an application, then hands it here
 * (its `EvaluationHooks.apply`), and the instance is inlined on the actual tensors: a
 * component's body is evaluated with its inputs bound, a primitive lowers itself (the MoE
 * layer, adapters), `per task` instances run per task (segmented where they stack), and the
 * adapters of `with LoRA(targets: ...)` are placed on the layers they target.
 */
import type { Expr, Span } from "../../grammar/ast.js";
import type { BuiltinArg } from "../check/builtins.js";
import type { PrimitiveContext } from "../check/primitive-rule.js";
import { dimConst } from "../check/dims.js";
import {
  type EvaluationHooks,
  type Evaluator,
  type Frame,
  matchesTarget,
} from "../check/evaluator.js";
import { type Instance, type TensorType, type Value, UNKNOWN } from "../check/values.js";
import type { IrBuilder } from "../ir/builder.js";
import type { IrOrigin } from "../ir/graph.js";
import type { LoweredPrimitiveRule, LoweringHooks } from "./lowering-hooks.js";
import { rowAlign, stackExperts } from "./stack-experts.js";

/** An adapter with `targets` in force while its base's body is inlined. */
interface TargetRule {
  /** The base's path: targets match the layers' paths below it. */
  root: string;
  adapter: Instance;
  patterns: string[];
  /** `with per task LoRA(targets: ...)`: the task ids the base was applied with. */
  taskIds?: number;
}

/** Applies instances by inlining them into the IR being built (see the file comment). */
export class Inliner implements EvaluationHooks {
  constructor(
    private readonly evaluator: Evaluator,
    private readonly lowering: LoweringHooks,
    private readonly rules: ReadonlyMap<string, LoweredPrimitiveRule>,
  ) {}

  input(name: string, t: TensorType): number | undefined {
    return this.lowering.input(name, t);
  }

  param(
    path: string,
    t: TensorType,
    trainable: boolean,
    init: string | undefined,
  ): number | undefined {
    return this.lowering.param(path, t, trainable, init);
  }

  tensorExpr(
    e: Expr,
    value: Extract<Value, { k: "tensor" }>,
    operand: (e: Expr) => Value | undefined,
    file: string,
  ): number | undefined {
    const ir = this.lowering.builder;
    return ir.at(this.originAt(file, e.span), () =>
      this.lowering.lowerExpr(e, value, operand, file),
    );
  }

  /** Applications being inlined, outermost first: the callers of what is lowered now. */
  private readonly sites: IrOrigin[] = [];

  private originAt(file: string, span: Span): IrOrigin {
    const caller = this.sites.at(-1);
    return { file, start: span.start, end: span.end, ...(caller ? { caller } : {}) };
  }

  /**
   * Lower mode: inlines the application at `span`, its nodes (a primitive's own, those of a
   * body's expressions through their callers) recorded as coming from there.
   */
  apply(inst: Instance, values: BuiltinArg[], span: Span, frame: Frame): Value {
    const top = this.sites.at(-1);
    // An expert or a wrapped base applied at the same site is the same application.
    if (top && top.file === frame.file && top.start === span.start && top.end === span.end)
      return this.applyAt(inst, values, span, frame);
    const site = this.originAt(frame.file, span);
    this.sites.push(site);
    try {
      return this.lowering.builder.at(site, () => this.applyAt(inst, values, span, frame));
    } finally {
      this.sites.pop();
    }
  }

  /** Targeted adapters in force while their base's body is inlined (outermost first). */
  private readonly targetRules: TargetRule[] = [];

  /**
   * A targeted layer under `with per task LoRA(targets: ...)`: its output y plus each token's
   * own task's update, segmented as for `base with per task LoRA` (the adapters' parameters
   * under the layer by task: `<layer>.<task>.lora_A.weight`).
   */
  private targetPerTask(
    target: TargetRule,
    inst: Instance,
    x: Extract<Value, { k: "tensor" }>,
    y: Extract<Value, { k: "tensor" }>,
    span: Span,
    frame: Frame,
  ): Value {
    const rule = this.rules.get(target.adapter.component);
    if (!target.adapter.perTaskInstances || !rule?.lowerDelta) {
      this.lowering.unsupported(frame.file, span, `per-task ${target.adapter.component} targets`);
      return UNKNOWN;
    }
    const updates = this.evaluator.attachToTarget(target.adapter, inst, frame, span);
    // A problem is reported at the adapter (the user's `per task LoRA(...)`), not in the base.
    const at = { file: target.adapter.file, span: target.adapter.span };
    return this.addPerTaskDeltas(rule, updates, x.node!, y, target.taskIds!, at);
  }

  /**
   * Evaluates the instance's body with its inputs bound to the argument tensors, with the
   * adapters of `with LoRA(targets: ...)` placed on the layers they target.
   */
  private applyAt(inst: Instance, values: BuiltinArg[], span: Span, frame: Frame): Value {
    if (inst.targeted) {
      // `with per task LoRA(targets: ...)`: the last argument is the task ids, for the targets.
      let inputs = values;
      let taskIds: number | undefined;
      if (inst.perTask !== undefined) {
        const ids = values.at(-1)?.value;
        if (ids?.k !== "tensor" || ids.node === undefined) return UNKNOWN;
        taskIds = ids.node;
        inputs = values.slice(0, -1);
      }
      this.targetRules.push({ root: inst.path ?? "", ...inst.targeted, taskIds });
      try {
        return this.apply(
          { ...inst, targeted: undefined, perTask: undefined },
          inputs,
          span,
          frame,
        );
      } finally {
        this.targetRules.pop();
      }
    }
    const target = this.targetRules.find((t) =>
      t.patterns.some((p) => matchesTarget(inst.path, t.root, p)),
    );
    const x = values[0]?.value;
    if (!target || x?.k !== "tensor" || x.node === undefined)
      return this.inlineApplyOwn(inst, values, span, frame);
    const y = this.inlineApplyOwn(inst, values, span, frame);
    if (y.k !== "tensor" || y.node === undefined) return y;
    if (target.taskIds !== undefined) return this.targetPerTask(target, inst, x, y, span, frame);
    const rule = this.rules.get(target.adapter.component);
    // Not per task: one placement.
    const { ctx, one } = this.evaluator.attachToTarget(target.adapter, inst, frame, span)[0]!;
    if (!rule?.lowerAdapter) return y;
    return rule.lowerAdapter(ctx, this.lowering, one, x, y);
  }

  private inlineApplyOwn(inst: Instance, values: BuiltinArg[], span: Span, frame: Frame): Value {
    const lowering = this.lowering;
    if (inst.perTask !== undefined && inst.wrapOf?.adapter.role === "module") {
      // `base with per task Bottleneck(...)`: the base on every example, then each example's
      // own task's adapter (task id -1: the base's output as it is).
      const y = this.apply(inst.wrapOf.base, values.slice(0, -1), span, frame);
      if (y.k !== "tensor" || y.node === undefined) return UNKNOWN;
      return this.apply(inst.wrapOf.adapter, [{ value: y, span }, values.at(-1)!], span, frame);
    }
    if (inst.perTask !== undefined) return this.inlinePerTask(inst, values, span, frame);
    if (inst.wrapOf) {
      const { base, adapter } = inst.wrapOf;
      const y = this.apply(base, values, span, frame);
      if (y.k !== "tensor" || y.node === undefined) return UNKNOWN;
      if (adapter.role === "module") return this.apply(adapter, [{ value: y, span }], span, frame);
      const rule = this.rules.get(adapter.component);
      const x = values[0]!.value;
      if (!rule?.lowerAdapter || x.k !== "tensor" || x.node === undefined) {
        lowering.unsupported(frame.file, span, `the adapter ${adapter.component}`);
        return UNKNOWN;
      }
      return rule.lowerAdapter(
        this.evaluator.primitiveContext(frame, span, adapter),
        lowering,
        inst,
        x,
        y,
      );
    }
    if (inst.form === "primitive") {
      const rule = this.rules.get(inst.component);
      if (!rule?.lowerLayer) {
        lowering.unsupported(frame.file, span, `the ${inst.component} layer`);
        return UNKNOWN;
      }
      return rule.lowerLayer(
        {
          ctx: this.evaluator.primitiveContext(frame, span, inst),
          lowering,
          applyExpert: (expert, x) => {
            const y = this.apply(expert, [{ value: x, span }], span, frame);
            return y.k === "tensor" ? y : undefined;
          },
          contextFor: (other) => this.evaluator.primitiveContext(frame, span, other),
          unsupported: (what) => {
            lowering.unsupported(frame.file, span, what);
            return UNKNOWN;
          },
          warn: (code, message, hint) => lowering.warn(frame.file, span, code, message, hint),
        },
        values,
      );
    }
    return this.evaluator.evaluateBody(inst, values, span, frame);
  }

  /**
   * Lower mode, `per task` instances: every task's instance runs on the batch and each example
   * keeps its own task's result (mask m_t = relu(1 - |id - t|), exact for integer ids). An
   * example whose id is no task's (-1) bypasses: its output is its input.
   */
  private inlinePerTask(inst: Instance, values: BuiltinArg[], span: Span, frame: Frame): Value {
    const ir = this.lowering.builder;
    const byTask = inst.perTaskInstances;
    const ids = values[values.length - 1]!.value;
    const inputs = values.slice(0, -1);
    if (!byTask) {
      this.lowering.unsupported(frame.file, span, "an adapter attached with `with per task`");
      return UNKNOWN;
    }
    if (ids.k !== "tensor" || ids.node === undefined) return UNKNOWN;
    const additive = (t: Instance) =>
      t.wrapOf !== undefined &&
      this.rules.get(t.wrapOf.adapter.component)?.lowerDelta !== undefined;
    if (inst.wrapOf && [...byTask.values()].every(additive))
      return this.inlinePerTaskLora(inst.wrapOf.base, byTask, inputs, ids.node, span, frame);
    const segmented = this.inlinePerTaskSegmented(byTask, inputs, ids.node, span, frame);
    if (segmented) return segmented;
    const idf = ir.cast(ids.node, "f32");
    let acc: number | undefined;
    let coverage: number | undefined;
    let outType: TensorType | undefined;
    let t = 0;
    for (const taskInst of byTask.values()) {
      const y = this.apply({ ...taskInst, perTask: undefined } as Instance, inputs, span, frame);
      if (y.k !== "tensor" || y.node === undefined) return UNKNOWN;
      outType = y.t;
      const mask = ir.unary(
        "relu",
        ir.binary("sub", ir.constant(1), ir.unary("abs", ir.binary("sub", idf, ir.constant(t)))),
      );
      // Task ids are [B]; broadcast over the example's remaining dims.
      const yRank = ir.shape(y.node).length;
      const idShape = ir.shape(mask);
      const m = ir.reshape(mask, [...idShape, ...Array(yRank - idShape.length).fill(1)]);
      const term = ir.binary("mul", y.node, m);
      acc = acc === undefined ? term : ir.binary("add", acc, term);
      coverage = coverage === undefined ? m : ir.binary("add", coverage, m);
      t++;
    }
    if (acc === undefined || coverage === undefined || !outType) return UNKNOWN;
    const x = inputs[0]?.value;
    if (inputs.length === 1 && x?.k === "tensor" && x.node !== undefined) {
      const same = ir.shape(x.node).join(",") === ir.shape(acc).join(",");
      if (same)
        acc = ir.binary(
          "add",
          acc,
          ir.binary("mul", x.node, ir.binary("sub", ir.constant(1), coverage)),
        );
    }
    return { k: "tensor", t: outType, node: acc };
  }

  /**
   * Per-task instances of one shape as one segmented body (as SGMV kernels do for LoRA): every
   * token goes through its own task's instance, each weight matmul one expert_matmul over the
   * tokens grouped by task, instead of every task's instance on the whole batch. Undefined when
   * the instances cannot be stacked (per-task sizes differ): the caller masks instead.
   */
  private inlinePerTaskSegmented(
    byTask: Map<string, Instance>,
    inputs: BuiltinArg[],
    taskIds: number,
    span: Span,
    frame: Frame,
  ): Value | undefined {
    const ir = this.lowering.builder;
    const x = inputs[0]?.value;
    if (inputs.length !== 1 || x?.k !== "tensor" || x.node === undefined) return undefined;
    // The instances run on the tokens as rows [N, d]: their input must take any leading dims.
    const port = [...byTask.values()][0]?.inputs[0]?.type;
    if (!port || (port.lead === undefined && port.dims.length !== 2)) return undefined;
    const tokens = taskRows(ir, x.node, taskIds);
    if (!tokens) return undefined;
    const { rows, ids, lead, N, d } = tokens;
    const rowsValue: Extract<Value, { k: "tensor" }> = {
      k: "tensor",
      t: { dtype: "f32", dims: [dimConst(N), dimConst(d)] },
      node: rows,
    };
    const outs: number[] = [];
    let outType: TensorType | undefined;
    for (const taskInst of byTask.values()) {
      const y = this.apply(
        { ...taskInst, perTask: undefined } as Instance,
        [{ value: rowsValue, span }],
        span,
        frame,
      );
      if (y.k !== "tensor" || y.node === undefined) return undefined;
      outs.push(y.node);
      outType = y.t;
    }
    const order = ir.groupRows(ids, byTask.size, rowAlign(N, byTask.size));
    const stacked = stackExperts(ir, rows, outs, ids, order);
    if ("error" in stacked) return undefined;
    const dOut = ir.shape(stacked.node)[1]!;
    // "No task" (-1) bypasses: x itself where the adapter keeps the shape, else zeros.
    const valid = ir.binary(
      "sub",
      ir.constant(1),
      ir.cast(ir.binary("lt", ids, ir.constant(0, "i32")), "f32"),
    );
    const v = ir.reshape(valid, [N, 1]);
    let y = ir.binary("mul", stacked.node, v);
    if (dOut === d)
      y = ir.binary("add", y, ir.binary("mul", rows, ir.binary("sub", ir.constant(1), v)));
    const out = ir.reshape(y, [...lead, dOut]);
    return { k: "tensor", t: { ...outType!, dims: ir.shape(out).map(dimConst) }, node: out };
  }

  /**
   * `base with per task LoRA(...)`: the base once for every token, plus each token's own
   * task's low-rank update, segmented (tokens grouped by task, one expert_matmul per LoRA
   * matrix for all tasks: SGMV); "no task" (-1) gets the base alone. Per-task ranks that
   * differ fall back to masking each task's update.
   */
  private inlinePerTaskLora(
    base: Instance,
    byTask: Map<string, Instance>,
    inputs: BuiltinArg[],
    taskIds: number,
    span: Span,
    frame: Frame,
  ): Value {
    const y = this.apply(base, inputs, span, frame);
    const x = inputs[0]?.value;
    if (y.k !== "tensor" || y.node === undefined || x?.k !== "tensor" || x.node === undefined)
      return UNKNOWN;
    const updates = [...byTask.values()].map((one) => ({
      ctx: this.evaluator.primitiveContext(frame, span, one.wrapOf!.adapter),
      one,
    }));
    const rule = this.rules.get(updates[0]!.one.wrapOf!.adapter.component)!;
    return this.addPerTaskDeltas(rule, updates, x.node, y, taskIds, { file: frame.file, span });
  }

  /**
   * y plus each token's own task's additive update (`updates` in task-id order), segmented:
   * tokens grouped by task, one expert_matmul per adapter matrix for all tasks (SGMV). Task id
   * -1 ("no task") keeps y. Problems are reported at `at`.
   */
  private addPerTaskDeltas(
    rule: LoweredPrimitiveRule,
    updates: { ctx: PrimitiveContext; one: Instance }[],
    x: number,
    y: Extract<Value, { k: "tensor" }>,
    taskIds: number,
    at: { file: string; span: Span },
  ): Value {
    const ir = this.lowering.builder;
    const tokens = taskRows(ir, x, taskIds);
    if (!tokens) {
      // Task ids are per example: the layer's input must lead with the batch (not MoE rows).
      this.lowering.unsupported(
        at.file,
        at.span,
        "a per-task adapter on a layer whose input does not lead with the batch (such as an MoE expert's)",
      );
      return UNKNOWN;
    }
    const { rows, ids, N } = tokens;
    const deltas: number[] = [];
    for (const { ctx, one } of updates) {
      const d = rule.lowerDelta!(ctx, this.lowering, one, rows);
      if (d === undefined) return UNKNOWN;
      deltas.push(d);
    }
    const tasks = updates.length;
    const order = ir.groupRows(ids, tasks, rowAlign(N, tasks));
    const stacked = stackExperts(ir, rows, deltas, ids, order);
    let delta: number;
    if (!("error" in stacked)) delta = stacked.node;
    else {
      // Ranks differ per task: every task's update on every token, masked to its tokens.
      delta = deltas
        .map((d, t) =>
          ir.binary(
            "mul",
            d,
            ir.reshape(ir.cast(ir.binary("eq", ids, ir.constant(t, "i32")), "f32"), [N, 1]),
          ),
        )
        .reduce((a, b) => ir.binary("add", a, b));
    }
    const out = ir.binary("add", y.node!, ir.reshape(delta, ir.shape(y.node!)));
    return { k: "tensor", t: y.t, node: out };
  }
}

/**
 * The tokens of x [..., d] as rows [N, d] and each row's task id [N], from task ids over the
 * leading dims (one per example); undefined when the ids do not lead x's shape.
 */
function taskRows(
  ir: IrBuilder,
  x: number,
  taskIds: number,
): { rows: number; ids: number; lead: number[]; N: number; d: number } | undefined {
  const shape = ir.shape(x);
  const idShape = ir.shape(taskIds);
  const lead = shape.slice(0, -1);
  if (lead.length < idShape.length || idShape.some((n, i) => n !== lead[i])) return undefined;
  const d = shape[shape.length - 1]!;
  const N = lead.reduce((a, b) => a * b, 1);
  const perToken = ir.binary(
    "add",
    ir.reshape(taskIds, [...idShape, ...Array(lead.length - idShape.length).fill(1)]),
    ir.constant(0, "i32", lead),
  );
  return { rows: ir.reshape(x, [N, d]), ids: ir.reshape(perToken, [N]), lead, N, d };
}
