/**
 * The lowered IR graph as an ONNX model (`moec export --format onnx`). Pure: the graph, its
 * weights as data and how its sizes follow the free dims (./onnx-dims.ts) in, bytes out.
 *
 * One IR op becomes one or a few ONNX ops of the default domain at opset 20 (Gelu needs it).
 * Routing stays sparse as the IR has it: `topk` is TopK, `gather` is Gather, `scatter_add` is
 * ScatterElements with reduction add, and `expert_matmul` runs each expert on its own rows
 * only (NonZero of ids = e, Gather of those rows, MatMul by that expert's weight) with the
 * results put back by one ScatterElements (reduction add) into zeros, so a row whose id is
 * outside the experts stays zero, as in the IR. `group_rows` only schedules GPU work: nothing
 * of it is written. Only what the outputs need is written.
 */
import type { IrDType, IrGraph, IrNode } from "../ir/graph.js";
import { inputsOf } from "../ir/graph.js";
import {
  type ExternalData,
  type ModelHeader,
  type OnnxDim,
  DataType,
  OnnxGraph,
  attr,
} from "./onnx-graph.js";
import { NotSymbolicError, type SymSize, SymbolicSizes, isConst, showSize } from "./onnx-dims.js";

/** The opset written: Gelu (exact and tanh) is a single op from 20. */
export const ONNX_OPSET = 20;

/** An IR op with no ONNX form here (training-only ops, the random op). */
export class UnmappableOpError extends Error {
  constructor(
    readonly op: string,
    detail: string,
  ) {
    super(`the IR op \`${op}\` has no ONNX mapping (${detail})`);
  }
}

/** One parameter's values, in the parameter's dtype. */
export interface OnnxWeight {
  shape: readonly number[];
  data: ArrayLike<number>;
}

export interface OnnxModelOptions {
  /** The graph's name (the model's). */
  name: string;
  /** The lowered graph and how its sizes follow the free dims. */
  sizes: SymbolicSizes;
  /** Every parameter's values, by path. */
  weights: ReadonlyMap<string, OnnxWeight>;
  header: ModelHeader;
  /** Initializers over `thresholdBytes` in all go to the data file at `location`. */
  external?: ExternalData & { thresholdBytes: number };
}

const ELEM: Record<IrDType, (typeof DataType)[keyof typeof DataType]> = {
  f32: DataType.FLOAT,
  i32: DataType.INT32,
};

const UNARY_ONNX: Partial<Record<string, string>> = {
  neg: "Neg",
  relu: "Relu",
  tanh: "Tanh",
  sigmoid: "Sigmoid",
  exp: "Exp",
  log: "Log",
  sqrt: "Sqrt",
  abs: "Abs",
  erf: "Erf",
};
/** Unary functions ONNX computes on int32 as the IR does (the rest go through f32). */
const UNARY_I32 = new Set(["neg", "relu", "abs"]);
const BINARY_ONNX = {
  add: "Add",
  sub: "Sub",
  mul: "Mul",
  div: "Div",
  max: "Max",
  min: "Min",
  pow: "Pow",
  eq: "Equal",
  lt: "Less",
} as const;
const REDUCE_ONNX = { sum: "ReduceSum", mean: "ReduceMean", max: "ReduceMax" } as const;

/** Builds the model; throws UnmappableOpError or NotSymbolicError (./onnx-dims.ts). */
export function buildOnnxModel(options: OnnxModelOptions): {
  model: Uint8Array;
  /** The external data file's chunks, when the weights went there. */
  data?: Uint8Array[];
} {
  const { sizes, weights } = options;
  const graph = sizes.base;
  const g = new OnnxGraph(options.name);
  const nodes = graph.nodes;
  const names: string[] = [];
  const nameOf = (id: number) => {
    const n = names[id];
    if (n === undefined) throw new Error(`internal: op ${id} used before it is written`);
    return n;
  };
  const what = (n: IrNode) => `op ${n.id} (${n.op}${"fn" in n ? ` ${n.fn}` : ""})`;

  // ---- Sizes as int64 tensors computed from the inputs' shapes.
  const cache = new Map<string, string>();
  const cached = (key: string, make: () => string) => {
    let v = cache.get(key);
    if (v === undefined) cache.set(key, (v = make()));
    return v;
  };
  const inputDims = new Map<string, { input: string; axis: number }>();
  const onnxDims = (syms: readonly SymSize[], must: boolean, label: string): OnnxDim[] =>
    syms.map((s) => {
      if (isConst(s)) return s.num;
      const vars = Object.entries(s.exps);
      if (s.num === 1 && s.den === 1 && vars.length === 1 && vars[0]![1] === 1) return vars[0]![0];
      if (must)
        throw new NotSymbolicError(
          vars.map(([d]) => d),
          `${label} has a dimension of size ${showSize(s)}, not one free dim`,
        );
      return showSize(s);
    });
  const dimTensor = (dim: string): string =>
    cached(`dim:${dim}`, () => {
      const at = inputDims.get(dim);
      if (!at)
        throw new NotSymbolicError([dim], `no input has \`${dim}\` as one of its dimensions`);
      return g.node("Shape", [at.input], { start: attr.i(at.axis), end: attr.i(at.axis + 1) })[0]!;
    });
  /** An int64 [1] tensor holding the size. */
  const sizeTensor = (s: SymSize): string =>
    cached(`size:${showSize(s)}`, () => {
      if (isConst(s)) return g.ints("size", [s.num]);
      let t: string | undefined;
      for (const [dim, e] of Object.entries(s.exps))
        for (let i = 0; i < e; i++) {
          const d = dimTensor(dim);
          t = t === undefined ? d : g.node("Mul", [t, d])[0]!;
        }
      if (s.num !== 1) t = g.node("Mul", [t!, g.ints("num", [s.num])])[0]!;
      if (s.den !== 1) t = g.node("Div", [t!, g.ints("den", [s.den])])[0]!;
      return t!;
    });
  const shapeTensor = (syms: readonly SymSize[]): string =>
    cached(`shape:${syms.map(showSize).join(",")}`, () => {
      if (syms.every(isConst))
        return g.ints(
          "shape",
          syms.map((s) => s.num),
        );
      const parts: string[] = [];
      let run: number[] = [];
      const flush = () => {
        if (run.length) parts.push(g.ints("shape", run));
        run = [];
      };
      for (const s of syms) {
        if (isConst(s)) run.push(s.num);
        else {
          flush();
          parts.push(sizeTensor(s));
        }
      }
      flush();
      return g.node("Concat", parts, { axis: attr.i(0) })[0]!;
    });
  const int64 = (v: number) => cached(`i64:${v}`, () => g.ints("i", [v]));
  const scalarInt64 = (v: number) => cached(`s64:${v}`, () => g.ints("s", [v], []));
  const toScalar = (t: string) => g.node("Squeeze", [t])[0]!;
  const cast = (x: string, to: IrDType) => g.node("Cast", [x], { to: attr.i(ELEM[to]) })[0]!;
  /** Operand `i` of `n` in `n`'s dtype (the IR's elementwise ops convert their operands). */
  const operand = (n: IrNode, i: number) => {
    const id = inputsOf(n)[i]!;
    return nodes[id]!.dtype === n.dtype ? nameOf(id) : cast(nameOf(id), n.dtype);
  };

  // ---- What the outputs need; an expert op's `order` only schedules work on a GPU.
  const needed = new Uint8Array(nodes.length);
  for (const o of graph.outputs) needed[o.node] = 1;
  for (let id = nodes.length - 1; id >= 0; id--) {
    if (!needed[id]) continue;
    const n = nodes[id]!;
    const ins = inputsOf(n);
    const used = n.op === "expert_matmul" || n.op === "expert_matmul_wgrad" ? ins.slice(0, 3) : ins;
    for (const i of used) needed[i] = 1;
  }

  // ---- Inputs first, so every free dim has a Shape to be read from.
  for (const n of nodes) {
    if (n.op !== "input") continue;
    const dims = onnxDims(sizes.shape(n, `input \`${n.name}\``), true, `input \`${n.name}\``);
    dims.forEach((d, axis) => {
      if (typeof d === "string" && !inputDims.has(d)) inputDims.set(d, { input: n.name, axis });
    });
    names[n.id] = g.input(n.name, ELEM[n.dtype], dims);
  }

  for (const n of nodes) {
    if (!needed[n.id] || n.op === "input") continue;
    names[n.id] = emit(n);
  }

  for (const o of graph.outputs) {
    const n = nodes[o.node]!;
    let dims: OnnxDim[];
    try {
      dims = onnxDims(sizes.shape(n, `output \`${o.name}\``), false, o.name);
    } catch (err) {
      // An output size with no formula is left unnamed: ONNX Runtime infers it.
      if (!(err instanceof NotSymbolicError)) throw err;
      dims = n.shape.map(() => null);
    }
    g.node("Identity", [nameOf(o.node)], {}, [g.reserve(o.name)]);
    g.output(o.name, ELEM[n.dtype], dims);
  }

  const external =
    options.external && g.initializerBytes > options.external.thresholdBytes
      ? options.external
      : undefined;
  return g.toModelWithData(options.header, external);

  function emit(n: IrNode): string {
    const x = () => nameOf(inputsOf(n)[0]!);
    switch (n.op) {
      case "param": {
        const w = weights.get(n.name);
        if (!w) throw new Error(`internal: no weights for parameter ${n.name}`);
        sizes.shape(n, `parameter ${n.name}`).forEach((s) => {
          if (!isConst(s))
            throw new NotSymbolicError(
              Object.keys(s.exps),
              `the shape of parameter ${n.name} changes with the size`,
              n.id,
            );
        });
        const data =
          n.dtype === "i32"
            ? w.data instanceof Int32Array
              ? w.data
              : Int32Array.from(w.data)
            : w.data instanceof Float32Array
              ? w.data
              : Float32Array.from(w.data);
        return g.init("", data, n.shape, n.name);
      }
      case "const": {
        const value = sizes.fixed(n.id, "value", `the value of ${what(n)}`);
        const shape = sizes.shape(n, `the shape of ${what(n)}`);
        const one = n.dtype === "i32" ? Int32Array.of(value) : Float32Array.of(value);
        if (shape.every(isConst) && n.shape.every((d) => d === 1))
          return g.init("const", one, n.shape);
        return g.node("ConstantOfShape", [shapeTensor(shape)], {
          value: attr.tensor(one, [1]),
        })[0]!;
      }
      case "unary":
        return unary(n);
      case "binary": {
        const [a, b] = [operand(n, 0), operand(n, 1)];
        const [y] = g.node(BINARY_ONNX[n.fn], [a, b]);
        return n.fn === "eq" || n.fn === "lt" ? cast(y!, n.dtype) : y!;
      }
      case "matmul":
        return g.node("MatMul", [operand(n, 0), operand(n, 1)])[0]!;
      case "reduce":
        return g.node(REDUCE_ONNX[n.fn], [x(), int64(n.axis)], { keepdims: attr.i(1) })[0]!;
      case "softmax":
        return g.node("Softmax", [x()], { axis: attr.i(-1) })[0]!;
      case "causal_mask": {
        // Kept where column ≤ row, from the value's own shape, so any length works.
        const r = n.shape.length;
        const len = (axis: number) =>
          toScalar(g.node("Shape", [x()], { start: attr.i(axis), end: attr.i(axis + 1) })[0]!);
        const one = scalarInt64(1);
        const zero = scalarInt64(0);
        const rows = g.node("Range", [zero, len(r - 2), one])[0]!;
        const cols = g.node("Range", [zero, len(r - 1), one])[0]!;
        const [col] = g.node("Unsqueeze", [rows, int64(1)]);
        const [keep] = g.node("LessOrEqual", [cols, col!]);
        const ninf = cached("-inf", () => g.init("neg_inf", Float32Array.of(-Infinity), []));
        return g.node("Where", [keep!, x(), ninf])[0]!;
      }
      case "gather":
        return g.node("Gather", [nameOf(n.inputs[0]), nameOf(n.inputs[1])], {
          axis: attr.i(0),
        })[0]!;
      case "scatter_add": {
        // Rows of src [..., d] added into zeros [rows, d] at ids [...]: flattened to [M, d].
        const [src, ids] = n.inputs;
        const d = n.shape[1]!;
        const [flat] = g.node("Reshape", [nameOf(src), g.ints("shape", [-1, d])]);
        const [idx] = g.node("Reshape", [nameOf(ids), int64(-1)]);
        const [idx64] = g.node("Cast", [idx!], { to: attr.i(DataType.INT64) });
        const [col] = g.node("Unsqueeze", [idx64!, int64(1)]);
        const [wide] = g.node("Expand", [col!, g.node("Shape", [flat!])[0]!]);
        const rows = sizes.size(n.id, "rows", undefined, `the rows of ${what(n)}`);
        const [zeros] = g.node(
          "ConstantOfShape",
          [shapeTensor([rows, { num: d, den: 1, exps: {} }])],
          {
            value: attr.tensor(Float32Array.of(0), [1]),
          },
        );
        return g.node("ScatterElements", [zeros!, wide!, flat!], {
          axis: attr.i(0),
          reduction: attr.s("add"),
        })[0]!;
      }
      case "permute":
        return g.node("Transpose", [x()], { perm: attr.ints(n.perm) })[0]!;
      case "reshape":
        return g.node("Reshape", [x(), shapeTensor(sizes.shape(n, `the shape of ${what(n)}`))])[0]!;
      case "iota": {
        // 0..n-1 along the last axis, broadcast to the input's shape.
        const last = toScalar(g.node("Shape", [x()], { start: attr.i(-1) })[0]!);
        const [range] = g.node("Range", [scalarInt64(0), last, scalarInt64(1)]);
        const [full] = g.node("Expand", [range!, g.node("Shape", [x()])[0]!]);
        return cast(full!, "i32");
      }
      case "concat":
        return g.node(
          "Concat",
          n.inputs.map((_, i) => operand(n, i)),
          { axis: attr.i(n.axis) },
        )[0]!;
      case "slice": {
        const start = sizes.size(n.id, "start", undefined, `the start of ${what(n)}`);
        const size = sizes.size(n.id, "size", undefined, `the size of ${what(n)}`);
        const ends =
          isConst(start) && isConst(size)
            ? int64(start.num + size.num)
            : g.node("Add", [sizeTensor(start), sizeTensor(size)])[0]!;
        return g.node("Slice", [x(), sizeTensor(start), ends, int64(n.axis)])[0]!;
      }
      case "cast":
        return nodes[n.inputs[0]]!.dtype === n.dtype
          ? g.node("Identity", [x()])[0]!
          : cast(x(), n.dtype);
      case "cumsum":
        return g.node("CumSum", [x(), scalarInt64(n.axis)])[0]!;
      case "topk": {
        // Ties go to the lower position in ONNX's TopK too (sorted, largest first).
        const k = sizes.size(n.id, "k", undefined, `the count of ${what(n)}`);
        const [, indices] = g.node(
          "TopK",
          [x(), sizeTensor(k)],
          {
            axis: attr.i(-1),
            largest: attr.i(1),
            sorted: attr.i(1),
          },
          2,
        );
        return cast(indices!, "i32");
      }
      case "expert_matmul":
        return expertMatmul(n);
      case "group_rows":
        throw new UnmappableOpError(
          n.op,
          "its row order is read by an output, not only by expert ops",
        );
      case "random":
        throw new UnmappableOpError(
          n.op,
          "moec's counter-based random numbers; dropout and jitter are training-only",
        );
      case "expert_matmul_wgrad":
        throw new UnmappableOpError(n.op, "a weight gradient: training graphs do not export");
      case "input":
        throw new Error("internal: inputs are written first");
    }
  }

  function unary(n: Extract<IrNode, { op: "unary" }>): string {
    const xi = nameOf(n.inputs[0]);
    const f32 = n.dtype === "i32" && !UNARY_I32.has(n.fn) && n.fn !== "step";
    const x = f32 ? cast(xi, "f32") : xi;
    let y: string;
    switch (n.fn) {
      case "gelu":
        y = g.node("Gelu", [x])[0]!;
        break;
      case "gelu_tanh":
        y = g.node("Gelu", [x], { approximate: attr.s("tanh") })[0]!;
        break;
      case "silu":
        y = g.node("Mul", [x, g.node("Sigmoid", [x])[0]!])[0]!;
        break;
      case "rsqrt":
        y = g.node("Reciprocal", [g.node("Sqrt", [x])[0]!])[0]!;
        break;
      case "step": {
        const zero =
          n.dtype === "i32"
            ? g.init("zero", Int32Array.of(0), [])
            : g.init("zero", Float32Array.of(0), []);
        return cast(g.node("Greater", [x, zero])[0]!, n.dtype);
      }
      default:
        y = g.node(UNARY_ONNX[n.fn]!, [x])[0]!;
    }
    return f32 ? cast(y, "i32") : y;
  }

  /**
   * y[r] = x[r] @ w[ids[r]], rows outside the experts zero: each expert's rows gathered,
   * multiplied by its weight, and scattered back (reduction add into zeros).
   */
  function expertMatmul(n: Extract<IrNode, { op: "expert_matmul" }>): string {
    const [xId, wId, idsId] = n.inputs;
    const x = nameOf(xId);
    const w = nameOf(wId);
    const ids = nameOf(idsId);
    const experts = nodes[wId]!.shape[0]!;
    const N = n.shape[1]!;
    const rows: string[] = [];
    const positions: string[] = [];
    for (let e = 0; e < experts; e++) {
      const [mine] = g.node("Equal", [ids, g.init("expert", Int32Array.of(e), [])]);
      const [nz] = g.node("NonZero", [mine!]); // [1, n_e]
      const [pos] = g.node("Reshape", [nz!, int64(-1)]); // [n_e]
      const [xe] = g.node("Gather", [x, pos!], { axis: attr.i(0) }); // [n_e, K]
      const [we] = g.node("Gather", [w, scalarInt64(e)], { axis: attr.i(0) }); // [K, N]
      rows.push(g.node("MatMul", [xe!, we!])[0]!);
      positions.push(pos!);
    }
    const [ys] = g.node("Concat", rows, { axis: attr.i(0) }); // [M, N], M ≤ R
    const [at] = g.node("Concat", positions, { axis: attr.i(0) }); // [M]
    const [col] = g.node("Unsqueeze", [at!, int64(1)]);
    const [idx] = g.node("Expand", [col!, g.node("Shape", [ys!])[0]!]);
    const R = g.node("Shape", [x], { start: attr.i(0), end: attr.i(1) })[0]!;
    const [shape] = g.node("Concat", [R, int64(N)], { axis: attr.i(0) });
    const [zeros] = g.node("ConstantOfShape", [shape!], {
      value: attr.tensor(Float32Array.of(0), [1]),
    });
    return g.node("ScatterElements", [zeros!, idx!, ys!], {
      axis: attr.i(0),
      reduction: attr.s("add"),
    })[0]!;
  }
}
