/**
 * The builtin tensor functions of the language, one table row each: parameters and shape rule.
 * Standard-library layers (Linear, LayerNorm, Attention, ...) are written in `.moe` on top of
 * these; the back end gives each row a reference implementation and a WGSL template.
 */
import type { Span } from "../../grammar/ast.js";
import type { DiagnosticCode } from "../diagnostics.js";
import { type Dim, dimAdd, dimConst, dimEquals, dimMul, dimValue, formatDim } from "./dims.js";
import type { Unifier } from "./unify.js";
import { type TensorType, type Value, UNKNOWN, describeValue, formatTensorType } from "./values.js";

/** An argument as the rule sees it. */
export interface BuiltinArg {
  value: Value;
  span: Span;
}

/** What a rule may use: its arguments, the unifier, and a way to report a problem. */
export interface BuiltinCall {
  name: string;
  args: Map<string, BuiltinArg>;
  span: Span;
  unifier: Unifier;
  report(code: DiagnosticCode, span: Span, message: string, hint?: string): void;
}

export interface BuiltinParam {
  name: string;
  /** Literal default, used when the argument is absent. */
  default?: Value;
  required?: boolean;
}

/** One builtin: its documented signature and its shape rule. */
export interface Builtin {
  name: string;
  signature: string;
  doc: string;
  params: BuiltinParam[];
  rule(call: BuiltinCall): Value;
}

const int = (n: number): Value => ({ k: "int", v: dimConst(n), isDim: false });
const float = (n: number): Value => ({ k: "float", v: n });
const bool = (b: boolean): Value => ({ k: "bool", v: b });

const ELEMENTWISE_UNARY: Record<string, ((x: number) => number) | undefined> = {
  relu: (x) => Math.max(0, x),
  gelu: undefined,
  gelu_tanh: undefined,
  silu: (x) => x / (1 + Math.exp(-x)),
  tanh: Math.tanh,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  abs: Math.abs,
};

/** Members of the `Act` enum that `activation` accepts. */
export const ACTIVATIONS = [
  "identity",
  "relu",
  "gelu",
  "gelu_tanh",
  "silu",
  "tanh",
  "sigmoid",
] as const;

/** Whether dims `a` and `b` agree (unifying free dims), rank included. */
function sameDims(call: BuiltinCall, a: readonly Dim[], b: readonly Dim[]): boolean {
  return a.length === b.length && a.every((d, i) => call.unifier.unifyDim(d, b[i]!) !== "mismatch");
}

function tensorArg(call: BuiltinCall, name: string): TensorType | undefined {
  const a = call.args.get(name);
  if (!a || a.value.k === "unknown") return undefined;
  if (a.value.k !== "tensor") {
    call.report(
      "E0301",
      a.span,
      `${call.name}: \`${name}\` must be a tensor, found ${describeValue(a.value)}`,
    );
    return undefined;
  }
  return a.value.t;
}

function intArg(call: BuiltinCall, name: string): number | undefined {
  const a = call.args.get(name);
  if (!a || a.value.k === "unknown") return undefined;
  if (a.value.k === "int") {
    const v = dimValue(a.value.v);
    if (v !== undefined) return v;
    call.report("E0314", a.span, `${call.name}: \`${name}\` must be a known integer`);
    return undefined;
  }
  call.report(
    "E0301",
    a.span,
    `${call.name}: \`${name}\` must be an Int, found ${describeValue(a.value)}`,
  );
  return undefined;
}

function boolArg(call: BuiltinCall, name: string): boolean | undefined {
  const a = call.args.get(name);
  if (!a || a.value.k === "unknown") return undefined;
  if (a.value.k === "bool") return a.value.v;
  call.report(
    "E0301",
    a.span,
    `${call.name}: \`${name}\` must be a Bool, found ${describeValue(a.value)}`,
  );
  return undefined;
}

/** A Float argument (an Int is accepted as its value); undefined when unknown or wrong. */
function floatArg(call: BuiltinCall, name: string): number | undefined {
  const a = call.args.get(name);
  if (!a || a.value.k === "unknown") return undefined;
  if (a.value.k === "float") return a.value.v;
  if (a.value.k === "int") return dimValue(a.value.v);
  call.report(
    "E0301",
    a.span,
    `${call.name}: \`${name}\` must be a Float, found ${describeValue(a.value)}`,
  );
  return undefined;
}

/** Rank of a tensor with no `...`, or undefined. */
function fixedRank(t: TensorType): number | undefined {
  return t.lead === undefined ? t.dims.length : undefined;
}

/** Resolves a possibly negative axis against the known trailing dims; undefined when out of range. */
function resolveAxis(
  call: BuiltinCall,
  t: TensorType,
  axis: number,
  span: Span,
): number | undefined {
  const n = t.dims.length;
  if (axis < 0) {
    if (-axis <= n) return n + axis;
  } else if (t.lead === undefined && axis < n) return axis;
  call.report(
    "E0303",
    span,
    `${call.name}: axis ${axis} is out of range for ${formatTensorType(t)}`,
    t.lead !== undefined ? "use a negative axis to count from the end of a `...` shape" : undefined,
  );
  return undefined;
}

function withDims(t: TensorType, dims: Dim[]): TensorType {
  const out: TensorType = { ...t, dims };
  return out;
}

function reduceRule(call: BuiltinCall): Value {
  const x = tensorArg(call, "x");
  const axis = intArg(call, "axis") ?? -1;
  const keepdim = boolArg(call, "keepdim") ?? false;
  if (!x) return UNKNOWN;
  const i = resolveAxis(call, x, axis, call.args.get("axis")?.span ?? call.span);
  if (i === undefined) return UNKNOWN;
  const dims = [...x.dims];
  if (keepdim) dims[i] = dimConst(1);
  else dims.splice(i, 1);
  return { k: "tensor", t: withDims(x, dims) };
}

function unaryRule(call: BuiltinCall): Value {
  const a = call.args.get("x");
  if (!a) return UNKNOWN;
  const v = a.value;
  const f = ELEMENTWISE_UNARY[call.name];
  if (v.k === "int" || v.k === "float") {
    const n = v.k === "int" ? dimValue(v.v) : v.v;
    return { k: "float", ...(f && n !== undefined ? { v: f(n) } : {}) };
  }
  const t = tensorArg(call, "x");
  if (!t) return UNKNOWN;
  if (t.dtype !== "f32" && t.dtype !== "f16" && t.dtype !== "bf16") {
    call.report(
      "E0304",
      a.span,
      `${call.name} needs a floating-point tensor, found ${formatTensorType(t)}`,
    );
  }
  return { k: "tensor", t };
}

const tensorOnly: BuiltinParam[] = [{ name: "x", required: true }];

function product(dims: readonly Dim[]): Dim {
  return dims.reduce<Dim>((acc, d) => dimMul(acc, d), dimConst(1));
}

export const BUILTINS: ReadonlyMap<string, Builtin> = new Map(
  (
    [
      ...Object.keys(ELEMENTWISE_UNARY).map((name): Builtin => ({
        name,
        signature: `${name}(x)`,
        doc:
          name === "gelu"
            ? "GELU, exact (erf) form, elementwise."
            : name === "gelu_tanh"
              ? "GELU, tanh approximation, elementwise."
              : `${name}, elementwise; on a compile-time number, computes it.`,
        params: tensorOnly,
        rule: unaryRule,
      })),
      {
        name: "activation",
        signature: "activation(x, fn: Act)",
        doc: "Applies the activation named by an `Act` value (a parameter of the component).",
        params: [
          { name: "x", required: true },
          { name: "fn", required: true },
        ],
        rule(call) {
          const fn = call.args.get("fn");
          if (fn && fn.value.k !== "enum" && fn.value.k !== "unknown") {
            call.report(
              "E0301",
              fn.span,
              `activation: \`fn\` must be an Act value, found ${describeValue(fn.value)}`,
            );
          } else if (fn && fn.value.k === "enum" && fn.value.member !== undefined) {
            if (!(ACTIVATIONS as readonly string[]).includes(fn.value.member)) {
              call.report(
                "E0318",
                fn.span,
                `activation: unknown activation \`${fn.value.member}\``,
                `one of ${ACTIVATIONS.join(", ")}`,
              );
            }
          }
          const t = tensorArg(call, "x");
          return t ? { k: "tensor", t } : UNKNOWN;
        },
      },
      ...["softmax", "log_softmax"].map((name): Builtin => ({
        name,
        signature: `${name}(x, axis: Int = -1)`,
        doc:
          name === "softmax"
            ? "Softmax along `axis`, computed in float32 with the maximum subtracted."
            : "Log of softmax along `axis`.",
        params: [
          { name: "x", required: true },
          { name: "axis", default: int(-1) },
        ],
        rule(call) {
          const t = tensorArg(call, "x");
          if (!t) return UNKNOWN;
          resolveAxis(call, t, intArg(call, "axis") ?? -1, call.span);
          return { k: "tensor", t };
        },
      })),
      ...["mean", "sum", "max", "variance"].map((name): Builtin => ({
        name,
        signature: `${name}(x, axis: Int = -1, keepdim: Bool = false)`,
        doc:
          name === "variance"
            ? "Biased variance along `axis` (as LayerNorm uses)."
            : `${name[0]!.toUpperCase()}${name.slice(1)} along \`axis\`.`,
        params: [
          { name: "x", required: true },
          { name: "axis", default: int(-1) },
          { name: "keepdim", default: bool(false) },
        ],
        rule: reduceRule,
      })),
      {
        name: "transpose",
        signature: "transpose(x, a: Int = -2, b: Int = -1)",
        doc: "Swaps two axes (by default the last two).",
        params: [
          { name: "x", required: true },
          { name: "a", default: int(-2) },
          { name: "b", default: int(-1) },
        ],
        rule(call) {
          const t = tensorArg(call, "x");
          if (!t) return UNKNOWN;
          const a = resolveAxis(call, t, intArg(call, "a") ?? -2, call.span);
          const b = resolveAxis(call, t, intArg(call, "b") ?? -1, call.span);
          if (a === undefined || b === undefined) return UNKNOWN;
          const dims = [...t.dims];
          [dims[a], dims[b]] = [dims[b]!, dims[a]!];
          return { k: "tensor", t: withDims(t, dims) };
        },
      },
      {
        name: "reshape",
        signature: "reshape(x, shape: [Dim])",
        doc: "Same elements, new shape; the element count must not change.",
        params: [
          { name: "x", required: true },
          { name: "shape", required: true },
        ],
        rule(call) {
          const t = tensorArg(call, "x");
          const s = call.args.get("shape");
          if (!t || !s) return UNKNOWN;
          const dims = dimList(call, s);
          if (!dims) return UNKNOWN;
          if (t.lead !== undefined) {
            call.report("E0303", call.span, "reshape needs a tensor of known rank (no `...`)");
            return UNKNOWN;
          }
          const before = call.unifier.resolve(product(t.dims));
          const after = call.unifier.resolve(product(dims));
          if (call.unifier.unifyDim(before, after) === "mismatch") {
            call.report(
              "E0313",
              s.span,
              `reshape from ${formatTensorType(t)} to [${dims.map((d) => formatDim(d)).join(", ")}] changes the element count (${formatDim(before)} → ${formatDim(after)})`,
            );
          }
          return { k: "tensor", t: { dtype: t.dtype, dims } };
        },
      },
      {
        name: "permute",
        signature: "permute(x, order: [Int])",
        doc: "Reorders the axes of a tensor of known rank.",
        params: [
          { name: "x", required: true },
          { name: "order", required: true },
        ],
        rule(call) {
          const t = tensorArg(call, "x");
          const o = call.args.get("order");
          if (!t || !o) return UNKNOWN;
          const order = dimList(call, o)?.map((d) => dimValue(d));
          if (!order) return UNKNOWN;
          const n = fixedRank(t);
          const valid =
            n !== undefined &&
            order.length === n &&
            order.every((i) => i !== undefined && i >= 0 && i < n) &&
            new Set(order).size === n;
          if (!valid) {
            call.report(
              "E0303",
              o.span,
              `permute: [${order.join(", ")}] is not a permutation of the ${n ?? "unknown"} axes of ${formatTensorType(t)}`,
            );
            return UNKNOWN;
          }
          return {
            k: "tensor",
            t: withDims(
              t,
              order.map((i) => t.dims[i!]!),
            ),
          };
        },
      },
      {
        name: "concat",
        signature: "concat(xs: [Tensor], axis: Int = -1)",
        doc: "Joins tensors along `axis`; all other dims must agree.",
        params: [
          { name: "xs", required: true },
          { name: "axis", default: int(-1) },
        ],
        rule(call) {
          const xs = call.args.get("xs");
          if (!xs) return UNKNOWN;
          if (xs.value.k !== "list") {
            call.report(
              "E0301",
              xs.span,
              `concat takes a list of tensors, found ${describeValue(xs.value)}`,
            );
            return UNKNOWN;
          }
          const ts: TensorType[] = [];
          for (const item of xs.value.items) {
            if (item.k === "tensor") ts.push(item.t);
            else if (item.k !== "unknown") {
              call.report("E0301", xs.span, `concat takes tensors, found ${describeValue(item)}`);
              return UNKNOWN;
            } else return UNKNOWN;
          }
          if (ts.length === 0) {
            call.report("E0319", xs.span, "concat of an empty list");
            return UNKNOWN;
          }
          const first = ts[0]!;
          const axis = resolveAxis(call, first, intArg(call, "axis") ?? -1, call.span);
          if (axis === undefined) return UNKNOWN;
          let total = first.dims[axis]!;
          for (const t of ts.slice(1)) {
            if (t.dims.length !== first.dims.length) {
              call.report(
                "E0303",
                xs.span,
                `concat: ${formatTensorType(t)} and ${formatTensorType(first)} differ in rank`,
              );
              return UNKNOWN;
            }
            t.dims.forEach((d, i) => {
              if (i !== axis && call.unifier.unifyDim(d, first.dims[i]!) === "mismatch") {
                call.report(
                  "E0302",
                  xs.span,
                  `concat: dim ${i + 1} differs: ${formatDim(first.dims[i]!)} vs ${formatDim(d)}`,
                );
              }
            });
            total = dimAdd(total, t.dims[axis]!);
          }
          const dims = [...first.dims];
          dims[axis] = total;
          return { k: "tensor", t: withDims(first, dims) };
        },
      },
      {
        name: "take",
        signature: "take(table, ids)",
        doc: "Rows of `table` ([n, d]) at integer `ids` ([...]): result [..., d]. Embedding lookup.",
        params: [
          { name: "table", required: true },
          { name: "ids", required: true },
        ],
        rule(call) {
          const table = tensorArg(call, "table");
          const ids = tensorArg(call, "ids");
          if (!table || !ids) return UNKNOWN;
          if (ids.dtype !== "i32" && ids.dtype !== "i64") {
            call.report(
              "E0304",
              call.args.get("ids")!.span,
              `take: ids must be i32 or i64, found ${formatTensorType(ids)}`,
              ids.dtype === "task" ? "convert task ids with task_ids(task)" : undefined,
            );
          }
          if (fixedRank(table) !== 2) {
            call.report(
              "E0303",
              call.args.get("table")!.span,
              `take: the table must be 2-D, found ${formatTensorType(table)}`,
            );
            return UNKNOWN;
          }
          const out: TensorType = { dtype: table.dtype, dims: [...ids.dims, table.dims[1]!] };
          if (ids.lead !== undefined) out.lead = ids.lead;
          return { k: "tensor", t: out };
        },
      },
      {
        name: "select",
        signature: "select(x, axis: Int, index: Int)",
        doc: "The slice at `index` along `axis`; that axis is removed (x[..., index] for axis -1).",
        params: [
          { name: "x", required: true },
          { name: "axis", required: true },
          { name: "index", required: true },
        ],
        rule(call) {
          const t = tensorArg(call, "x");
          if (!t) return UNKNOWN;
          const axis = resolveAxis(
            call,
            t,
            intArg(call, "axis") ?? -1,
            call.args.get("axis")?.span ?? call.span,
          );
          const index = intArg(call, "index");
          if (axis === undefined) return UNKNOWN;
          const size = dimValue(call.unifier.resolve(t.dims[axis]!));
          if (index !== undefined && (index < 0 || (size !== undefined && index >= size))) {
            call.report(
              "E0319",
              call.args.get("index")!.span,
              `select: index ${index} is outside 0..${size === undefined ? "n" : size - 1}`,
            );
          }
          const dims = [...t.dims];
          dims.splice(axis, 1);
          return { k: "tensor", t: withDims(t, dims) };
        },
      },
      {
        name: "causal_mask",
        signature: "causal_mask(scores)",
        doc: "Sets scores[..., i, j] to -inf where j > i (the last two dims are queries × keys).",
        params: [{ name: "x", required: true }],
        rule(call) {
          const t = tensorArg(call, "x");
          if (!t) return UNKNOWN;
          if (t.dims.length < 2)
            call.report(
              "E0303",
              call.span,
              `causal_mask needs at least 2 dims, found ${formatTensorType(t)}`,
            );
          return { k: "tensor", t };
        },
      },
      {
        name: "positions",
        signature: "positions(ids)",
        doc: "The position of each element along the last axis (0, 1, ...), as i32 of the same shape.",
        params: [{ name: "x", required: true }],
        rule(call) {
          const t = tensorArg(call, "x");
          return t ? { k: "tensor", t: { ...t, dtype: "i32" } } : UNKNOWN;
        },
      },
      {
        name: "task_ids",
        signature: "task_ids(task)",
        doc: "Task ids as i32 (the task's index in its `tasks` declaration; -1 for no task).",
        params: [{ name: "x", required: true }],
        rule(call) {
          const t = tensorArg(call, "x");
          if (!t) return UNKNOWN;
          if (t.dtype !== "task")
            call.report(
              "E0304",
              call.span,
              `task_ids takes task ids, found ${formatTensorType(t)}`,
            );
          const out: TensorType = { dtype: "i32", dims: t.dims };
          if (t.lead !== undefined) out.lead = t.lead;
          return { k: "tensor", t: out };
        },
      },
      {
        name: "num_tasks",
        signature: "num_tasks(Tasks)",
        doc: "The number of tasks in a task set.",
        params: [{ name: "tasks", required: true }],
        rule(call) {
          const a = call.args.get("tasks");
          if (a && a.value.k === "taskset") return int(a.value.members.length);
          if (a && a.value.k !== "unknown") {
            call.report(
              "E0301",
              a.span,
              `num_tasks takes a task set, found ${describeValue(a.value)}`,
            );
          }
          return UNKNOWN;
        },
      },
      {
        name: "cross_entropy",
        signature:
          "cross_entropy(logits, labels, ignore_index: Int = -100, label_smoothing: Float = 0.0)",
        doc: "Mean cross-entropy of logits [..., C] against integer labels [...] over the positions whose label is not `ignore_index` (0 when all are), with PyTorch's label smoothing; a scalar.",
        params: [
          { name: "logits", required: true },
          { name: "labels", required: true },
          { name: "ignore_index", default: int(-100) },
          { name: "label_smoothing", default: float(0) },
        ],
        rule(call) {
          // A symbolic Int (a train program's parameter) is fine here: only its kind is checked.
          const ignore = call.args.get("ignore_index");
          if (ignore && ignore.value.k !== "int" && ignore.value.k !== "unknown") {
            call.report(
              "E0301",
              ignore.span,
              `cross_entropy: \`ignore_index\` must be an Int, found ${describeValue(ignore.value)}`,
            );
          }
          const smoothing = floatArg(call, "label_smoothing");
          if (smoothing !== undefined && !(smoothing >= 0 && smoothing <= 1)) {
            call.report(
              "E0319",
              call.args.get("label_smoothing")!.span,
              `cross_entropy: label_smoothing must be in [0, 1], found ${smoothing}`,
            );
          }
          const logits = tensorArg(call, "logits");
          const labels = tensorArg(call, "labels");
          if (logits && labels) {
            if (labels.dtype !== "i32" && labels.dtype !== "i64") {
              call.report(
                "E0304",
                call.args.get("labels")!.span,
                `cross_entropy: labels must be integers, found ${formatTensorType(labels)}`,
              );
            }
            const lead = { ...logits, dims: logits.dims.slice(0, -1) };
            if (labels.dims.length !== lead.dims.length) {
              call.report(
                "E0303",
                call.args.get("labels")!.span,
                `cross_entropy: labels ${formatTensorType(labels)} must have the shape of logits ${formatTensorType(logits)} without its last dim`,
              );
            } else {
              labels.dims.forEach((d, i) => {
                if (call.unifier.unifyDim(d, lead.dims[i]!) === "mismatch") {
                  call.report(
                    "E0302",
                    call.args.get("labels")!.span,
                    `cross_entropy: labels dim ${i + 1} is ${formatDim(d)}, logits have ${formatDim(lead.dims[i]!)}`,
                  );
                }
              });
            }
          }
          return { k: "tensor", t: { dtype: "f32", dims: [] } };
        },
      },
      {
        name: "distill",
        signature:
          "distill(student, teachers: [Tensor], temperature: Float = 1.0, weights: [Float] | Tensor = uniform, labels: Tensor = none)",
        doc: "Knowledge distillation: τ²·KL(Σ_k w_k softmax(t_k/τ) ‖ softmax(s/τ)), a scalar. Weights are uniform unless given: fixed (summing to 1), per example as f32[..., K] (rows summing to 1), or confidence-aware with `labels` (CA-MKD: teachers that predict each example's label better weigh more).",
        params: [
          { name: "student", required: true },
          { name: "teachers", required: true },
          { name: "temperature", default: float(1) },
          { name: "weights", default: { k: "list", items: [] } },
          { name: "labels", default: { k: "list", items: [] } },
        ],
        rule(call) {
          const s = tensorArg(call, "student");
          const ts = call.args.get("teachers");
          const temp = call.args.get("temperature");
          if (temp && temp.value.k === "float" && temp.value.v !== undefined && temp.value.v <= 0) {
            call.report(
              "E0319",
              temp.span,
              `distill: temperature must be positive, found ${temp.value.v}`,
            );
          }
          if (ts && ts.value.k !== "list" && ts.value.k !== "unknown") {
            call.report(
              "E0301",
              ts.span,
              `distill: teachers must be a list of tensors, found ${describeValue(ts.value)}`,
            );
          } else if (ts && ts.value.k === "list" && s) {
            if (ts.value.items.length === 0)
              call.report("E0319", ts.span, "distill needs at least one teacher");
            for (const item of ts.value.items) {
              if (item.k !== "tensor") continue;
              if (
                item.t.dims.length !== s.dims.length ||
                item.t.dims.some((d, i) => call.unifier.unifyDim(d, s.dims[i]!) === "mismatch")
              ) {
                call.report(
                  "E0302",
                  ts.span,
                  `distill: teacher output ${formatTensorType(item.t)} does not match the student's ${formatTensorType(s)}`,
                );
              }
            }
            const w = call.args.get("weights");
            const labels = call.args.get("labels");
            const K = ts.value.items.length;
            if (labels && labels.value.k !== "list") {
              const l = tensorArg(call, "labels");
              if (l && (l.dtype !== "i32" || !sameDims(call, l.dims, s.dims.slice(0, -1))))
                call.report(
                  "E0302",
                  labels.span,
                  `distill: labels ${formatTensorType(l)} must be i32 over the student's rows, ${formatTensorType({ dtype: "i32", dims: s.dims.slice(0, -1) })}`,
                );
              if (w && !(w.value.k === "list" && w.value.items.length === 0))
                call.report(
                  "E0319",
                  w.span,
                  "distill: give `weights` or `labels` (confidence-aware weights), not both",
                );
            }
            if (w && w.value.k === "tensor") {
              const wt = w.value.t;
              if (
                wt.dtype !== "f32" ||
                !sameDims(call, wt.dims, [...s.dims.slice(0, -1), dimConst(K)])
              )
                call.report(
                  "E0302",
                  w.span,
                  `distill: per-example weights ${formatTensorType(wt)} must be f32 over the student's rows and the ${K} teachers, ${formatTensorType({ dtype: "f32", dims: [...s.dims.slice(0, -1), dimConst(K)] })}`,
                );
            } else if (w && w.value.k === "list" && w.value.items.length > 0) {
              if (w.value.items.length !== ts.value.items.length) {
                call.report(
                  "E0319",
                  w.span,
                  `distill: ${w.value.items.length} weights for ${ts.value.items.length} teachers`,
                );
              } else {
                const nums = w.value.items.map((x) =>
                  x.k === "float" ? x.v : x.k === "int" ? dimValue(x.v) : undefined,
                );
                if (nums.every((x) => x !== undefined)) {
                  const sum = nums.reduce((a, b) => a! + b!, 0)!;
                  if (Math.abs(sum - 1) > 1e-6)
                    call.report("E0319", w.span, `distill: teacher weights sum to ${sum}, not 1`);
                }
              }
            }
          }
          return { k: "tensor", t: { dtype: "f32", dims: [] } };
        },
      },
      {
        name: "mse",
        signature: "mse(a, b)",
        doc: "Mean squared error between two tensors of one shape (e.g. distilling hidden states); a scalar.",
        params: [
          { name: "a", required: true },
          { name: "b", required: true },
        ],
        rule(call) {
          const a = tensorArg(call, "a");
          const b = tensorArg(call, "b");
          if (
            a &&
            b &&
            (a.dims.length !== b.dims.length ||
              a.dims.some(
                (d, i) =>
                  !dimEquals(call.unifier.resolve(d), call.unifier.resolve(b.dims[i]!)) &&
                  call.unifier.unifyDim(d, b.dims[i]!) === "mismatch",
              ))
          ) {
            call.report(
              "E0302",
              call.span,
              `mse: ${formatTensorType(a)} and ${formatTensorType(b)} differ in shape`,
            );
          }
          return { k: "tensor", t: { dtype: "f32", dims: [] } };
        },
      },
      ...[
        [
          "normal",
          "normal(std: Float = 0.02): initialise from N(0, std²)",
          [{ name: "std", default: float(0.02) }],
        ],
        [
          "uniform",
          "uniform(bound: Float): initialise from U(-bound, bound)",
          [{ name: "bound", required: true }],
        ],
        ["zeros", "zeros: initialise to 0", []],
        ["ones", "ones: initialise to 1", []],
      ].map(([name, doc, params]): Builtin => ({
        name: name as string,
        signature: (doc as string).split(":")[0]!,
        doc: doc as string,
        params: params as BuiltinParam[],
        rule: (call: BuiltinCall): Value => {
          // The initialiser's name carries its argument: normal(0.02), uniform(0.1).
          const a = call.args.get((params as BuiltinParam[])[0]?.name ?? "");
          const n =
            a?.value.k === "float"
              ? a.value.v
              : a?.value.k === "int"
                ? dimValue(a.value.v)
                : undefined;
          return { k: "init", name: n === undefined ? (name as string) : `${name}(${n})` };
        },
      })),
    ] satisfies Builtin[]
  ).map((b) => [b.name, b]),
);

function dimList(call: BuiltinCall, a: BuiltinArg): Dim[] | undefined {
  if (a.value.k !== "list") {
    if (a.value.k !== "unknown") {
      call.report(
        "E0301",
        a.span,
        `${call.name}: expected a list like [B, T, d], found ${describeValue(a.value)}`,
      );
    }
    return undefined;
  }
  const out: Dim[] = [];
  for (const item of a.value.items) {
    if (item.k === "int") out.push(item.v);
    else {
      if (item.k !== "unknown")
        call.report(
          "E0301",
          a.span,
          `${call.name}: list items must be dims, found ${describeValue(item)}`,
        );
      return undefined;
    }
  }
  return out;
}
