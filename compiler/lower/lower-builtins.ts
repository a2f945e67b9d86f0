/**
 * How each builtin function of the language lowers to IR ops: one row per builtin, next
 * to its shape rule in builtins.ts. Derived functions (variance, log_softmax, select) are
 * compositions of IR ops, so the IR stays small.
 */
import type { IrBuilder } from "../ir/builder.js";
import { UNARY_OPS, type UnaryOp } from "../ir/graph.js";
import type { Value } from "../check/values.js";
import { dimValue } from "../check/dims.js";
import { type DistillWeights, lowerCrossEntropy, lowerDistill, lowerMse } from "./lower-losses.js";

/** An argument with its IR node (tensors) or its number (compile-time scalars). */
export interface LowerArg {
  value: Value;
  node?: number;
  number?: number;
}

/** Lowers one builtin call; `shape` is the concrete result shape. Undefined: not lowerable. */
export type BuiltinLowering = (
  ir: IrBuilder,
  args: Map<string, LowerArg>,
  shape: number[],
) => number | undefined;

/** The IR's unary ops that are also language builtins (`neg` is `-x`; `step` and `erf`, a gradient rule's, are internal). */
const UNARY: readonly UnaryOp[] = UNARY_OPS.filter(
  (op) => op !== "neg" && op !== "step" && op !== "erf",
);

function axisOf(ir: IrBuilder, x: number, a: LowerArg | undefined, fallback: number): number {
  const rank = ir.shape(x).length;
  const axis = a?.number ?? fallback;
  return axis < 0 ? rank + axis : axis;
}

/** Applies `f` along `axis` by moving that axis last and back. */
function alongAxis(ir: IrBuilder, x: number, axis: number, f: (y: number) => number): number {
  const rank = ir.shape(x).length;
  if (axis === rank - 1) return f(x);
  const perm = [...Array(rank).keys()].filter((i) => i !== axis).concat(axis);
  const inverse = perm.map((_, i) => perm.indexOf(i));
  return ir.permute(f(ir.permute(x, perm)), inverse);
}

function numbers(v: Value): number[] | undefined {
  if (v.k !== "list") return undefined;
  const out: number[] = [];
  for (const item of v.items) {
    if (item.k !== "int" || item.v.size > 1 || (item.v.size === 1 && !item.v.has("")))
      return undefined;
    out.push(item.v.get("") ?? 0);
  }
  return out;
}

/** A list of compile-time numbers (Float or Int items), e.g. distill's weights. */
function floats(v: Value | undefined): number[] | undefined {
  if (v?.k !== "list") return undefined;
  const out: number[] = [];
  for (const item of v.items) {
    if (item.k === "float" && item.v !== undefined) out.push(item.v);
    else if (item.k === "int" && dimValue(item.v) !== undefined) out.push(dimValue(item.v)!);
    else return undefined;
  }
  return out;
}

const ACTIVATION_OPS: Record<string, UnaryOp | "identity"> = {
  identity: "identity",
  relu: "relu",
  gelu: "gelu",
  gelu_tanh: "gelu_tanh",
  silu: "silu",
  tanh: "tanh",
  sigmoid: "sigmoid",
};

export const BUILTIN_LOWERINGS: ReadonlyMap<string, BuiltinLowering> = new Map<
  string,
  BuiltinLowering
>([
  ...UNARY.map((fn): [string, BuiltinLowering] => [
    fn,
    (ir, args) => {
      const x = args.get("x")?.node;
      return x === undefined ? undefined : ir.unary(fn, x);
    },
  ]),
  [
    "activation",
    (ir, args) => {
      const x = args.get("x")?.node;
      const fn = args.get("fn")?.value;
      if (x === undefined || fn?.k !== "enum" || fn.member === undefined) return undefined;
      const op = ACTIVATION_OPS[fn.member];
      if (!op) return undefined;
      return op === "identity" ? x : ir.unary(op, x);
    },
  ],
  [
    "softmax",
    (ir, args) => {
      const x = args.get("x")?.node;
      if (x === undefined) return undefined;
      return alongAxis(ir, x, axisOf(ir, x, args.get("axis"), -1), (y) => ir.softmax(y));
    },
  ],
  [
    "log_softmax",
    (ir, args) => {
      const x = args.get("x")?.node;
      if (x === undefined) return undefined;
      return alongAxis(ir, x, axisOf(ir, x, args.get("axis"), -1), (y) => {
        const shifted = ir.binary("sub", y, ir.reduce("max", y, -1, true));
        const logSum = ir.unary("log", ir.reduce("sum", ir.unary("exp", shifted), -1, true));
        return ir.binary("sub", shifted, logSum);
      });
    },
  ],
  ...(["mean", "sum", "max"] as const).map((fn): [string, BuiltinLowering] => [
    fn,
    (ir, args) => {
      const x = args.get("x")?.node;
      if (x === undefined) return undefined;
      const keep = args.get("keepdim")?.value;
      return ir.reduce(
        fn,
        x,
        axisOf(ir, x, args.get("axis"), -1),
        keep?.k === "bool" && keep.v === true,
      );
    },
  ]),
  [
    "variance",
    (ir, args) => {
      const x = args.get("x")?.node;
      if (x === undefined) return undefined;
      const axis = axisOf(ir, x, args.get("axis"), -1);
      const keep = args.get("keepdim")?.value;
      const centered = ir.binary("sub", x, ir.reduce("mean", x, axis, true));
      return ir.reduce(
        "mean",
        ir.binary("mul", centered, centered),
        axis,
        keep?.k === "bool" && keep.v === true,
      );
    },
  ],
  [
    "transpose",
    (ir, args) => {
      const x = args.get("x")?.node;
      if (x === undefined) return undefined;
      const rank = ir.shape(x).length;
      const a = axisOf(ir, x, args.get("a"), -2);
      const b = axisOf(ir, x, args.get("b"), -1);
      const perm = [...Array(rank).keys()];
      [perm[a], perm[b]] = [perm[b]!, perm[a]!];
      return ir.permute(x, perm);
    },
  ],
  [
    "reshape",
    (ir, args, shape) => {
      const x = args.get("x")?.node;
      return x === undefined ? undefined : ir.reshape(x, shape);
    },
  ],
  [
    "permute",
    (ir, args) => {
      const x = args.get("x")?.node;
      const order = args.get("order");
      const perm = order ? numbers(order.value) : undefined;
      return x === undefined || !perm ? undefined : ir.permute(x, perm);
    },
  ],
  [
    "concat",
    (ir, args) => {
      const xs = args.get("xs");
      if (xs?.value.k !== "list") return undefined;
      const nodes = xs.value.items.map((v) => (v.k === "tensor" ? v.node : undefined));
      if (nodes.some((n) => n === undefined) || nodes.length === 0) return undefined;
      return ir.concat(nodes as number[], axisOf(ir, nodes[0]!, args.get("axis"), -1));
    },
  ],
  [
    "take",
    (ir, args) => {
      const table = args.get("table")?.node;
      const ids = args.get("ids")?.node;
      return table === undefined || ids === undefined ? undefined : ir.gather(table, ids);
    },
  ],
  [
    "select",
    (ir, args, shape) => {
      const x = args.get("x")?.node;
      const index = args.get("index")?.number;
      if (x === undefined || index === undefined) return undefined;
      return ir.reshape(ir.slice(x, axisOf(ir, x, args.get("axis"), -1), index, 1), shape);
    },
  ],
  [
    "causal_mask",
    (ir, args) => {
      const x = args.get("x")?.node;
      return x === undefined ? undefined : ir.causalMask(x);
    },
  ],
  [
    "positions",
    (ir, args) => {
      const x = args.get("x")?.node;
      return x === undefined ? undefined : ir.iota(x);
    },
  ],
  ["task_ids", (ir, args) => args.get("x")?.node],
  [
    "cross_entropy",
    (ir, args) => {
      const logits = args.get("logits")?.node;
      const labels = args.get("labels")?.node;
      if (logits === undefined || labels === undefined) return undefined;
      const ignore = args.get("ignore_index")?.number ?? -100;
      return lowerCrossEntropy(
        ir,
        logits,
        labels,
        ignore,
        args.get("label_smoothing")?.number ?? 0,
      );
    },
  ],
  [
    "distill",
    (ir, args) => {
      const s = args.get("student")?.node;
      const ts = args.get("teachers")?.value;
      if (s === undefined || ts?.k !== "list") return undefined;
      const teachers = ts.items.map((v) => (v.k === "tensor" ? v.node : undefined));
      if (teachers.length === 0 || teachers.some((t) => t === undefined)) return undefined;
      const temperature = args.get("temperature")?.number ?? 1;
      const labels = args.get("labels")?.value;
      const w = args.get("weights")?.value;
      let weights: DistillWeights;
      if (labels?.k === "tensor" && labels.node !== undefined)
        weights = { kind: "confidence", labels: labels.node };
      else if (w?.k === "tensor" && w.node !== undefined) weights = { kind: "rows", node: w.node };
      else {
        const given = floats(w);
        if (given === undefined) return undefined;
        const values = given.length > 0 ? given : teachers.map(() => 1 / teachers.length);
        weights = { kind: "fixed", values };
      }
      return lowerDistill(ir, s, teachers as number[], temperature, weights);
    },
  ],
  [
    "mse",
    (ir, args) => {
      const a = args.get("a")?.node;
      const b = args.get("b")?.node;
      return a === undefined || b === undefined ? undefined : lowerMse(ir, a, b);
    },
  ],
]);
