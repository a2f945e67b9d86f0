/**
 * The op table: one row per IR op (OPS) and one per elementwise or reduction function
 * (UNARY_FUNCTION_ROWS, BINARY_FUNCTION_ROWS, REDUCE_FUNCTION_ROWS). A row is everything the
 * compiler knows about its op outside the structural kernel templates: the shape and dtype
 * rule (the builder computes with it, the verifier checks with it), the float64 reference
 * implementation (runtime/reference/interpret.ts is a loop over rows), the fusion class
 * (compiler/kernels/fuse-kernels.ts), the WGSL text of elementwise ops
 * (compiler/kernels/wgsl/kernel-writer.ts), how it prints (print.ts) and a slot for its
 * gradient rule (its vector-Jacobian product: ./differentiate-graph.ts walks the graph with them).
 *
 * Recipe: adding a new op.
 *   - A unary / binary / reduce function (`softplus`, `atan2`, `prod`): its name in the
 *     UnaryOp / BinaryOp / ReduceOp union below and its row in UNARY_FUNCTION_ROWS /
 *     BINARY_FUNCTION_ROWS / REDUCE_FUNCTION_ROWS (TypeScript rejects a name without a row). If its
 *     WGSL calls a helper function WGSL lacks, `env.use("name_")` it and add the helper's text
 *     to HELPERS in kernels/wgsl/kernel-writer.ts.
 *   - A new op: its member of the IrNode union below (its attributes), a row in OPS
 *     (TypeScript rejects OPS until it has one), and a typed constructor in builder.ts that
 *     calls `make`. An elementwise op (fusion kernel "map" with inline operands) with a `wgsl`
 *     function is then fused and emitted by the generic path; an op that needs its own kernel
 *     template (a new anchor kind) also needs that template in kernels/wgsl/ and its case in
 *     emit-wgsl.ts and plan-buffers.ts.
 *   - Its gradient: a rule per input in the row's `vjp` slot, or "none" where no gradient
 *     flows (autodiff, ./differentiate-graph.ts, reads only the slots).
 *   - Tests: its reference against hand-computed values (test/runtime/reference/), its GPU
 *     kernel against the reference (test/runtime/kernels.test.ts), its gradient against
 *     central differences (test/compiler/ir/differentiate-graph.test.ts);
 *     test/compiler/ir/ops.test.ts checks every row is complete.
 */
import { type HostTensor, broadcastIndex, erf, strides } from "./float64.js";
import { broadcast, groupRowsLength, numel } from "./shapes.js";

// ---- Nodes: the IR's dtypes, function names and node shapes (graph.ts re-exports them).

export type IrDType = "f32" | "i32";

/** Unary elementwise functions: each has its row in UNARY_FUNCTION_ROWS. */
export type UnaryOp =
  | "neg"
  | "relu"
  | "gelu"
  | "gelu_tanh"
  | "silu"
  | "tanh"
  | "sigmoid"
  | "exp"
  | "log"
  | "sqrt"
  | "rsqrt"
  | "abs"
  | "erf"
  | "step";
/** Binary elementwise functions (numpy broadcasting): rows in BINARY_FUNCTION_ROWS. */
export type BinaryOp = "add" | "sub" | "mul" | "div" | "max" | "min" | "pow" | "eq" | "lt";
/** Reductions along one axis: rows in REDUCE_FUNCTION_ROWS. */
export type ReduceOp = "sum" | "mean" | "max";

/** One node of the graph. `inputs` are ids of earlier nodes. */
export type IrNode =
  | { id: number; op: "input"; name: string; dtype: IrDType; shape: number[] }
  | {
      id: number;
      op: "param";
      name: string;
      dtype: IrDType;
      shape: number[];
      trainable: boolean;
      init: string;
    }
  | { id: number; op: "const"; value: number; dtype: IrDType; shape: number[] }
  | { id: number; op: "unary"; fn: UnaryOp; inputs: [number]; dtype: IrDType; shape: number[] }
  | {
      id: number;
      op: "binary";
      fn: BinaryOp;
      inputs: [number, number];
      dtype: IrDType;
      shape: number[];
    }
  /** [..., m, k] @ [..., k, n] with batch broadcasting; a 2-D right side is shared by all rows. */
  | { id: number; op: "matmul"; inputs: [number, number]; dtype: IrDType; shape: number[] }
  | {
      id: number;
      op: "reduce";
      fn: ReduceOp;
      axis: number;
      inputs: [number];
      dtype: IrDType;
      shape: number[];
    }
  /** Softmax along the last axis (max subtracted, float32). */
  | { id: number; op: "softmax"; inputs: [number]; dtype: IrDType; shape: number[] }
  /** out[..., i, j] = x[..., i, j] where j ≤ i + offset, else -inf. */
  | { id: number; op: "causal_mask"; inputs: [number]; dtype: IrDType; shape: number[] }
  /** Rows of a [n, d] table at integer ids [...]: [..., d]. */
  | { id: number; op: "gather"; inputs: [number, number]; dtype: IrDType; shape: number[] }
  /** Adds rows of src [..., d] into a zero [n, d] table at ids [...] (the gradient of gather). */
  | {
      id: number;
      op: "scatter_add";
      rows: number;
      inputs: [number, number];
      dtype: IrDType;
      shape: number[];
    }
  | { id: number; op: "permute"; perm: number[]; inputs: [number]; dtype: IrDType; shape: number[] }
  | { id: number; op: "reshape"; inputs: [number]; dtype: IrDType; shape: number[] }
  /** The last-axis position of each element, 0..n-1 (as i32). */
  | { id: number; op: "iota"; inputs: [number]; dtype: IrDType; shape: number[] }
  /**
   * Uniform [0, 1) values of the given shape, a pure function of (key, stream, flat index):
   * input 0 is the per-step key (f32 [1], an integer below 2^24), `stream` tells the uses in
   * one graph apart. Dropout and router jitter draw from it, so a step replays bit for bit.
   */
  | { id: number; op: "random"; stream: number; inputs: [number]; dtype: IrDType; shape: number[] }
  | { id: number; op: "concat"; axis: number; inputs: number[]; dtype: IrDType; shape: number[] }
  /** The slice [start, start + size) along `axis`. */
  | {
      id: number;
      op: "slice";
      axis: number;
      start: number;
      size: number;
      inputs: [number];
      dtype: IrDType;
      shape: number[];
    }
  | { id: number; op: "cast"; inputs: [number]; dtype: IrDType; shape: number[] }
  /** Running sum along `axis` (inclusive). */
  | { id: number; op: "cumsum"; axis: number; inputs: [number]; dtype: IrDType; shape: number[] }
  /**
   * Positions (i32) of the k largest entries along the last axis, largest first (NaN above
   * all, as torch.topk); ties go to the lower position. Not differentiable (its consumers take
   * values with gather).
   */
  | { id: number; op: "topk"; k: number; inputs: [number]; dtype: IrDType; shape: number[] }
  /**
   * The rows of ids [R] (i32) grouped by id, for kernels that want rows of one expert together:
   * for each expert 0..experts-1, then for the rows whose id is outside that range (dropped),
   * the row numbers in increasing order followed by -1 up to the next multiple of `align`;
   * -1 fills the rest. Length: the smallest multiple of `align` ≥ R + (experts + 1)(align - 1).
   */
  | {
      id: number;
      op: "group_rows";
      experts: number;
      align: number;
      inputs: [number];
      dtype: IrDType;
      shape: number[];
    }
  /**
   * Per-row expert matmul: y[r] = x[r] @ w[ids[r]] for x [R, K], w [E, K, N], ids [R] (i32);
   * rows whose id is outside 0..E-1 are zero. `order` (group_rows of ids) only schedules the
   * work: a GPU kernel walks rows grouped by expert, so each tile reads one expert's weights.
   */
  | {
      id: number;
      op: "expert_matmul";
      inputs: [number, number, number, number];
      dtype: IrDType;
      shape: number[];
    }
  /**
   * The weight gradient of expert_matmul: dw[e] = Σ over rows r with ids[r] = e of
   * x[r]ᵀ · g[r], for x [R, K], g [R, N], ids [R] (i32): [experts, K, N]. `order` as there.
   */
  | {
      id: number;
      op: "expert_matmul_wgrad";
      experts: number;
      inputs: [number, number, number, number];
      dtype: IrDType;
      shape: number[];
    };

export type IrOpName = IrNode["op"];

/**
 * What a gradient rule builds its IR with: the builder's constructors (IrBuilder implements
 * this), declared here so the table does not import the builder that reads it.
 */
export interface GradientBuilder {
  shape(id: number): number[];
  node(id: number): IrNode;
  constant(value: number, dtype?: IrDType, shape?: number[]): number;
  unary(fn: UnaryOp, x: number): number;
  binary(fn: BinaryOp, a: number, b: number): number;
  matmul(a: number, b: number): number;
  reduce(fn: ReduceOp, x: number, axis: number, keepdim: boolean): number;
  softmax(x: number): number;
  causalMask(x: number): number;
  gather(table: number, ids: number): number;
  scatterAdd(src: number, ids: number, rows: number): number;
  permute(x: number, perm: number[]): number;
  reshape(x: number, shape: number[]): number;
  iota(like: number): number;
  concat(xs: number[], axis: number): number;
  slice(x: number, axis: number, start: number, size: number): number;
  cast(x: number, dtype: IrDType): number;
  cumsum(x: number, axis: number): number;
  groupRows(ids: number, experts: number, align: number): number;
  expertMatmul(x: number, w: number, ids: number, order: number): number;
  expertMatmulWgrad(x: number, g: number, ids: number, order: number, experts: number): number;
}

export type NodeOf<K extends IrOpName> = Extract<IrNode, { op: K }>;

/** A node before it is added: no id, and a dtype and shape only where they are attributes. */
export type Draft<K extends IrOpName> = K extends IrOpName
  ? Omit<NodeOf<K>, "id" | "dtype" | "shape"> & { dtype?: IrDType; shape?: number[] }
  : never;

/**
 * How fuse-kernels.ts treats an op.
 *   kernel: "leaf" (an input or parameter: a buffer the caller fills), "const" (a literal where
 *     read inline, else a kernel of its own), "view" (reshape, permute, slice: a strided window
 *     onto its input's buffer, copied only where strides cannot express it), "map" (evaluated
 *     per element inside its consumers' kernel, or a map kernel of its own), "rows" (needs the
 *     whole last axis: makes its kernel a rows kernel), or an *anchor* that a kernel template
 *     computes with its own loop: "matmul", "reduce" (along a non-last axis), "topk", "scan",
 *     "group", "scatter".
 *   operands: how it reads its inputs: evaluated at the same point ("inline", so they may be
 *     fused into its kernel), from stored buffers ("stored"), or only their shape ("shape").
 *   epilogue: an anchor that may take over its consumers' map kernel (same shape), which
 *     becomes its epilogue; other anchors always get a kernel of their own.
 */
export type FusionKernel =
  | "leaf"
  | "const"
  | "view"
  | "map"
  | "rows"
  | "matmul"
  | "reduce"
  | "topk"
  | "scan"
  | "group"
  | "scatter";
export type AnchorKernel = Exclude<FusionKernel, "leaf" | "const" | "view" | "map" | "rows">;

export interface Fusion {
  kernel: FusionKernel;
  operands: "inline" | "stored" | "shape";
  epilogue?: boolean;
}

export function isAnchorKernel(k: FusionKernel): k is AnchorKernel {
  return k !== "leaf" && k !== "const" && k !== "view" && k !== "map" && k !== "rows";
}

/** What an elementwise WGSL snippet may ask of the kernel it is written into. */
export interface WgslEnv {
  /** The node's dtype; operands arrive converted to it. */
  dtype: IrDType;
  /** Adds a helper function (kernels/wgsl/kernel-writer.ts HELPERS) to the module; its name. */
  use(helper: string): string;
  /** The value of operand `i` where that input is a constant node. */
  constant(i: number): number | undefined;
  /** The u32 coordinate of the node's axis `axis` at the point being evaluated. */
  coord(axis: number): string;
  /** An f32 literal (infinities and NaN included). */
  f32(value: number): string;
}

/** What autodiff (./differentiate-graph.ts) hands a gradient rule. */
export interface VjpContext<N> {
  ir: GradientBuilder;
  node: N;
  /** The cotangent of the node's value (a node of the node's shape). */
  cotangent: number;
}
/** IR for one input's cotangent: a node of that input's shape. */
export type Cotangent<N> = (ctx: VjpContext<N>) => number;
/**
 * Per input: its cotangent rule; "none" where no gradient flows to it (indices, masks,
 * positions); undefined where the rule is not written (autodiff rejects the op where it needs
 * one; test/compiler/ir/ops.test.ts wants every slot filled).
 */
export type InputVjp<N> = Cotangent<N> | "none" | undefined;

/** One op. Methods (not function properties) so a row of one op serves as a row of any. */
export interface OpRow<K extends IrOpName> {
  /** The result dtype from the attributes and the inputs' dtypes. */
  dtype(n: Draft<K>, inputs: readonly IrDType[]): IrDType;
  /** The result shape from the attributes and the inputs' shapes; throws where they do not fit. */
  shape(n: Draft<K>, inputs: readonly (readonly number[])[]): number[];
  /** The attributes as printed after the op name (` axis=1`); none when absent. */
  print?(n: NodeOf<K>): string;
  /** Fills `out` (zeroed, row-major, the node's shape) in float64; absent for leaves. */
  reference?(n: NodeOf<K>, inputs: readonly HostTensor[], out: Float64Array): void;
  fusion(n: NodeOf<K>): Fusion;
  /** For fusion kernel "map" with inline or shape operands: the WGSL expression of the value. */
  wgsl?(n: NodeOf<K>, operands: readonly string[], env: WgslEnv): string;
  /** The gradient slot, one entry per input; absent only for leaves (no inputs). */
  vjp?(n: NodeOf<K>): readonly InputVjp<NodeOf<K>>[] | undefined;
}

// ---- Functions.

export interface UnaryFunctionRow {
  reference(x: number): number;
  /** The f32 WGSL expression of the function of `x`. */
  wgsl(x: string, env: WgslEnv): string;
  /** The i32 form; absent: computed in f32 and truncated. */
  wgslI32?(x: string, env: WgslEnv): string;
  /** Stacked experts of different widths may apply it to zero padding (stack-experts.ts). */
  paddingSafe: boolean;
  vjp?: readonly [InputVjp<NodeOf<"unary">>];
}

export interface BinaryFunctionRow {
  /** For an i32 result the value is truncated. */
  reference(a: number, b: number): number;
  wgsl(a: string, b: string, env: WgslEnv): string;
  /** Stacked experts of different widths may apply it to zero padding (stack-experts.ts). */
  paddingSafe: boolean;
  vjp?: readonly [InputVjp<NodeOf<"binary">>, InputVjp<NodeOf<"binary">>];
}

export interface ReduceFunctionRow {
  /** The accumulator's start (also the WGSL accumulator's). */
  identity: number;
  combine(acc: number, x: number): number;
  finish(acc: number, count: number): number;
  wgsl: {
    combine(acc: string, x: string): string;
    /** The result from the accumulator over `count` elements. */
    finish(acc: string, count: number): string;
    /** Helper functions (kernels/wgsl/kernel-writer.ts HELPERS) that `combine` calls. */
    helpers?: readonly string[];
  };
}

// ---- Gradient helpers: what the rows' vjp rules share.

type UnaryNode = NodeOf<"unary">;
type BinaryNode = NodeOf<"binary">;

/** A scalar f32 constant (broadcasts against anything). */
const scalar = (ir: GradientBuilder, v: number) => ir.constant(v);
const mul = (ir: GradientBuilder, a: number, b: number) => ir.binary("mul", a, b);

/** `g` summed over the axes it was broadcast along (numpy rules), back to `shape`. */
export function unbroadcast(ir: GradientBuilder, g: number, shape: readonly number[]): number {
  let x = g;
  while (ir.shape(x).length > shape.length) x = ir.reduce("sum", x, 0, false);
  for (let a = 0; a < shape.length; a++)
    if (shape[a] === 1 && ir.shape(x)[a] !== 1) x = ir.reduce("sum", x, a, true);
  return x;
}

/** `g` broadcast to `shape` (itself where it has it already). */
export function expand(ir: GradientBuilder, g: number, shape: readonly number[]): number {
  if (ir.shape(g).join(",") === shape.join(",")) return g;
  return ir.binary("add", g, ir.constant(0, "f32", [...shape]));
}

/** The last two axes swapped. */
function transposeLast(ir: GradientBuilder, x: number): number {
  const r = ir.shape(x).length;
  return ir.permute(x, [...Array(r - 2).keys(), r - 1, r - 2]);
}

/** A unary rule g · f'(x), with f' built from x and the node's value y. */
function chain(
  derivative: (ir: GradientBuilder, x: number, y: number) => number,
): readonly [InputVjp<UnaryNode>] {
  return [({ ir, node, cotangent }) => mul(ir, cotangent, derivative(ir, node.inputs[0], node.id))];
}

/** A binary rule: each side's cotangent at the output's shape, summed back to the input's. */
function sides(
  da: (ir: GradientBuilder, g: number, n: BinaryNode) => number,
  db: (ir: GradientBuilder, g: number, n: BinaryNode) => number,
): readonly [InputVjp<BinaryNode>, InputVjp<BinaryNode>] {
  return [
    ({ ir, node, cotangent }) => unbroadcast(ir, da(ir, cotangent, node), ir.shape(node.inputs[0])),
    ({ ir, node, cotangent }) => unbroadcast(ir, db(ir, cotangent, node), ir.shape(node.inputs[1])),
  ];
}

/**
 * Where a = b, max and min split the cotangent evenly between the sides (as JAX does): the
 * share of side a is [a wins] + ½[a = b].
 */
function share(ir: GradientBuilder, wins: number, a: number, b: number): number {
  return ir.binary("add", ir.unary("step", wins), mul(ir, ir.binary("eq", a, b), scalar(ir, 0.5)));
}

export const UNARY_FUNCTION_ROWS = {
  neg: {
    reference: (x) => -x,
    wgsl: (x) => `-${x}`,
    wgslI32: (x) => `-${x}`,
    paddingSafe: true,
    vjp: [({ ir, cotangent }) => ir.unary("neg", cotangent)],
  },
  // NaN stays NaN, as in PyTorch (WGSL's max may drop a NaN operand: a helper tests the bits).
  relu: {
    reference: (x) => (x <= 0 ? 0 : x),
    wgsl: (x, env) => `${env.use("relu_")}(${x})`,
    wgslI32: (x) => `max(${x}, 0)`,
    paddingSafe: true,
    vjp: chain((ir, x) => ir.unary("step", x)),
  },
  gelu: {
    reference: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
    wgsl: (x, env) => `${env.use("gelu_")}(${x})`,
    paddingSafe: true,
    vjp: chain((ir, x) =>
      // Φ(x) + x·φ(x)
      ir.binary(
        "add",
        mul(
          ir,
          scalar(ir, 0.5),
          ir.binary("add", scalar(ir, 1), ir.unary("erf", mul(ir, x, scalar(ir, Math.SQRT1_2)))),
        ),
        mul(
          ir,
          mul(ir, x, scalar(ir, 1 / Math.sqrt(2 * Math.PI))),
          ir.unary("exp", mul(ir, mul(ir, x, x), scalar(ir, -0.5))),
        ),
      ),
    ),
  },
  gelu_tanh: {
    reference: (x) =>
      0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
    wgsl: (x, env) =>
      `0.5 * ${x} * (1.0 + ${env.use("tanh_")}(0.7978845608028654 * (${x} + 0.044715 * ${x} * ${x} * ${x})))`,
    paddingSafe: true,
    vjp: chain((ir, x) => {
      // ½(1 + t) + ½x(1 − t²)·u', t = tanh u, u = √(2/π)(x + 0.044715x³)
      const k = Math.sqrt(2 / Math.PI);
      const x2 = mul(ir, x, x);
      const u = mul(
        ir,
        scalar(ir, k),
        ir.binary("add", x, mul(ir, scalar(ir, 0.044715), mul(ir, x2, x))),
      );
      const t = ir.unary("tanh", u);
      const du = mul(
        ir,
        scalar(ir, k),
        ir.binary("add", scalar(ir, 1), mul(ir, scalar(ir, 3 * 0.044715), x2)),
      );
      return ir.binary(
        "add",
        mul(ir, scalar(ir, 0.5), ir.binary("add", scalar(ir, 1), t)),
        mul(
          ir,
          mul(ir, mul(ir, scalar(ir, 0.5), x), ir.binary("sub", scalar(ir, 1), mul(ir, t, t))),
          du,
        ),
      );
    }),
  },
  silu: {
    reference: (x) => x / (1 + Math.exp(-x)),
    wgsl: (x, env) => `${x} * ${env.use("sigmoid_")}(${x})`,
    paddingSafe: true,
    vjp: chain((ir, x) => {
      // σ(x)(1 + x(1 − σ(x)))
      const s = ir.unary("sigmoid", x);
      return mul(
        ir,
        s,
        ir.binary("add", scalar(ir, 1), mul(ir, x, ir.binary("sub", scalar(ir, 1), s))),
      );
    }),
  },
  tanh: {
    reference: Math.tanh,
    wgsl: (x, env) => `${env.use("tanh_")}(${x})`,
    paddingSafe: true,
    vjp: chain((ir, _, y) => ir.binary("sub", scalar(ir, 1), mul(ir, y, y))),
  },
  sigmoid: {
    reference: (x) => 1 / (1 + Math.exp(-x)),
    wgsl: (x, env) => `${env.use("sigmoid_")}(${x})`,
    paddingSafe: true,
    vjp: chain((ir, _, y) => mul(ir, y, ir.binary("sub", scalar(ir, 1), y))),
  },
  exp: {
    reference: Math.exp,
    wgsl: (x) => `exp(${x})`,
    paddingSafe: true,
    vjp: chain((_, __, y) => y),
  },
  // log 0, sqrt of a negative and 1/sqrt 0 are infinities or NaN a zero weight cannot cancel.
  log: {
    reference: Math.log,
    wgsl: (x) => `log(${x})`,
    paddingSafe: false,
    vjp: [({ ir, node, cotangent }) => ir.binary("div", cotangent, node.inputs[0])],
  },
  sqrt: {
    reference: Math.sqrt,
    wgsl: (x) => `sqrt(${x})`,
    paddingSafe: false,
    vjp: chain((ir, _, y) => ir.binary("div", scalar(ir, 0.5), y)),
  },
  rsqrt: {
    reference: (x) => 1 / Math.sqrt(x),
    // 1/sqrt rather than inverseSqrt, which some drivers approximate to ~12 bits.
    wgsl: (x) => `(1.0 / sqrt(${x}))`,
    paddingSafe: false,
    vjp: chain((ir, _, y) => mul(ir, scalar(ir, -0.5), mul(ir, y, mul(ir, y, y)))),
  },
  abs: {
    reference: Math.abs,
    wgsl: (x) => `abs(${x})`,
    wgslI32: (x) => `abs(${x})`,
    paddingSafe: true,
    vjp: chain((ir, x) =>
      ir.binary("sub", ir.unary("step", x), ir.unary("step", ir.unary("neg", x))),
    ),
  },
  /** The error function: GELU's derivative needs it. */
  erf: {
    reference: erf,
    wgsl: (x, env) => `${env.use("erf_")}(${x})`,
    paddingSafe: true,
    // 2/√π · exp(−x²)
    vjp: chain((ir, x) =>
      mul(ir, scalar(ir, 2 / Math.sqrt(Math.PI)), ir.unary("exp", ir.unary("neg", mul(ir, x, x)))),
    ),
  },
  /** 1 where x > 0, else 0: the derivative of relu (its own gradient is zero). */
  step: {
    reference: (x) => (x > 0 ? 1 : 0),
    wgsl: (x) => `select(0.0, 1.0, ${x} > 0.0)`,
    wgslI32: (x) => `select(0, 1, ${x} > 0)`,
    paddingSafe: true,
    vjp: ["none"],
  },
} satisfies Record<UnaryOp, UnaryFunctionRow>;

/** `eq` and `lt` give 1 or 0 in the operands' dtype. */
function compare(op: string): BinaryFunctionRow["wgsl"] {
  return (a, b, env) => {
    const [zero, one] = env.dtype === "i32" ? ["0", "1"] : ["0.0", "1.0"];
    return `select(${zero}, ${one}, ${a} ${op} ${b})`;
  };
}

export const BINARY_FUNCTION_ROWS = {
  add: {
    reference: (a, b) => a + b,
    wgsl: (a, b) => `${a} + ${b}`,
    paddingSafe: true,
    vjp: sides(
      (_, g) => g,
      (_, g) => g,
    ),
  },
  sub: {
    reference: (a, b) => a - b,
    wgsl: (a, b) => `${a} - ${b}`,
    paddingSafe: true,
    vjp: sides(
      (_, g) => g,
      (ir, g) => ir.unary("neg", g),
    ),
  },
  mul: {
    reference: (a, b) => a * b,
    wgsl: (a, b) => `${a} * ${b}`,
    paddingSafe: true,
    vjp: sides(
      (ir, g, n) => mul(ir, g, n.inputs[1]),
      (ir, g, n) => mul(ir, g, n.inputs[0]),
    ),
  },
  div: {
    reference: (a, b) => a / b,
    wgsl: (a, b) => `${a} / ${b}`,
    paddingSafe: false,
    vjp: sides(
      (ir, g, n) => ir.binary("div", g, n.inputs[1]),
      // −g·a/b² = −g·y/b
      (ir, g, n) => ir.unary("neg", ir.binary("div", mul(ir, g, n.id), n.inputs[1])),
    ),
  },
  // Math.max and the helpers propagate NaN; WGSL's max and min need not.
  max: {
    reference: Math.max,
    wgsl: (a, b, env) =>
      env.dtype === "i32" ? `max(${a}, ${b})` : `${env.use("max_")}(${a}, ${b})`,
    paddingSafe: true,
    vjp: sides(
      (ir, g, { inputs: [a, b] }) => mul(ir, g, share(ir, ir.binary("sub", a, b), a, b)),
      (ir, g, { inputs: [a, b] }) => mul(ir, g, share(ir, ir.binary("sub", b, a), a, b)),
    ),
  },
  min: {
    reference: Math.min,
    wgsl: (a, b, env) =>
      env.dtype === "i32" ? `min(${a}, ${b})` : `${env.use("min_")}(${a}, ${b})`,
    paddingSafe: true,
    vjp: sides(
      (ir, g, { inputs: [a, b] }) => mul(ir, g, share(ir, ir.binary("sub", b, a), a, b)),
      (ir, g, { inputs: [a, b] }) => mul(ir, g, share(ir, ir.binary("sub", a, b), a, b)),
    ),
  },
  pow: {
    reference: Math.pow,
    wgsl: (a, b, env) => {
      if (env.dtype === "i32") return `i32(${env.use("pow_")}(f32(${a}), f32(${b})))`;
      // Constant exponents that have exact, cheaper forms.
      switch (env.constant(1)) {
        case 1:
          return a;
        case 2:
          return `${a} * ${a}`;
        case 3:
          return `${a} * ${a} * ${a}`;
        case 0.5:
          return `sqrt(${a})`;
        case -1:
          return `1.0 / ${a}`;
        case -0.5:
          return `1.0 / sqrt(${a})`;
      }
      return `${env.use("pow_")}(${a}, ${b})`;
    },
    paddingSafe: false,
    vjp: sides(
      // b·a^(b−1); a constant exponent stays constant, so the kernel keeps its exact forms.
      (ir, g, { inputs: [a, b] }) => {
        const e = ir.node(b);
        const less =
          e.op === "const"
            ? ir.constant(e.value - 1, e.dtype, [...e.shape])
            : ir.binary("sub", b, scalar(ir, 1));
        return mul(ir, g, mul(ir, b, ir.binary("pow", a, less)));
      },
      // y·ln a: defined for a > 0 only (a constant exponent gets no gradient)
      (ir, g, n) => mul(ir, g, mul(ir, n.id, ir.unary("log", n.inputs[0]))),
    ),
  },
  // Comparisons keep padding finite, but stacking has never relied on it.
  eq: {
    reference: (a, b) => (a === b ? 1 : 0),
    wgsl: compare("=="),
    paddingSafe: false,
    vjp: ["none", "none"],
  },
  lt: {
    reference: (a, b) => (a < b ? 1 : 0),
    wgsl: compare("<"),
    paddingSafe: false,
    vjp: ["none", "none"],
  },
} satisfies Record<BinaryOp, BinaryFunctionRow>;

export const REDUCE_FUNCTION_ROWS = {
  sum: {
    identity: 0,
    combine: (acc, x) => acc + x,
    finish: (acc) => acc,
    wgsl: { combine: (acc, x) => `${acc} + ${x}`, finish: (acc) => acc },
  },
  mean: {
    identity: 0,
    combine: (acc, x) => acc + x,
    finish: (acc, count) => acc / count,
    wgsl: { combine: (acc, x) => `${acc} + ${x}`, finish: (acc, count) => `${acc} / ${count}.0` },
  },
  max: {
    identity: -Infinity,
    combine: Math.max,
    finish: (acc) => acc,
    // A NaN anywhere in the row makes the maximum NaN, as torch.amax does.
    wgsl: { combine: (acc, x) => `max_(${acc}, ${x})`, finish: (acc) => acc, helpers: ["max_"] },
  },
} satisfies Record<ReduceOp, ReduceFunctionRow>;

/** Unary elementwise functions (the table's order). */
export const UNARY_OPS = Object.keys(UNARY_FUNCTION_ROWS) as readonly UnaryOp[];
/** Binary elementwise functions, with numpy broadcasting. */
export const BINARY_OPS = Object.keys(BINARY_FUNCTION_ROWS) as readonly BinaryOp[];
/** Reductions along one axis. */
export const REDUCE_OPS = Object.keys(REDUCE_FUNCTION_ROWS) as readonly ReduceOp[];

// ---- Ops.

const same = (i: number) => (_: unknown, ins: readonly IrDType[]) => ins[i]!;
const always = (d: IrDType) => () => d;
/** Strides of a row-major shape, in elements. */
function rowMajorStrides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length);
  for (let a = shape.length - 1, s = 1; a >= 0; a--) {
    out[a] = s;
    s *= shape[a]!;
  }
  return out;
}

/** Chris Wellons' lowbias32 integer hash (u32 in, u32 out); kernel-writer's `hash_u32`. */
export function hashU32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * The `random` op's value at flat index `i`: 24 hashed bits scaled to [0, 1), exact in f32, so
 * the reference and the kernel agree bit for bit (kernel-writer's `uniform_at`).
 */
export function uniformAt(key: number, stream: number, i: number): number {
  const h = hashU32((hashU32((hashU32(stream >>> 0) ^ key) >>> 0) ^ i) >>> 0);
  return (h >>> 8) / 16777216;
}

const given = (n: { dtype?: IrDType }) => {
  if (n.dtype === undefined) throw new Error("internal: the dtype is an attribute here");
  return n.dtype;
};
const givenShape = (n: { shape?: number[] }) => {
  if (n.shape === undefined) throw new Error("internal: the shape is an attribute here");
  return n.shape;
};
const fusion = (kernel: FusionKernel, operands: Fusion["operands"], epilogue?: boolean) => {
  const f: Fusion = { kernel, operands };
  if (epilogue) f.epilogue = true;
  return () => f;
};
const LEAF = fusion("leaf", "stored");
const MAP_INLINE = fusion("map", "inline");
const MAP_STORED = fusion("map", "stored");
const VIEW = fusion("view", "stored");
const ROWS = fusion("rows", "inline");

function checkAxis(axis: number, rank: number): void {
  if (!(Number.isInteger(axis) && axis >= 0 && axis < rank))
    throw new Error(`internal: axis ${axis} of a rank-${rank} value`);
}

/** The independent 1-D lines along `axis` of a shape: outer × inner, `size` apart by inner. */
function lines(shape: readonly number[], axis: number) {
  return {
    size: shape[axis]!,
    inner: numel(shape.slice(axis + 1)),
    outer: numel(shape.slice(0, axis)),
  };
}

/** The schedule of an expert op must cover every row once, whatever its kernel does with it. */
function coversRows(order: HostTensor, rows: number): void {
  const seen = new Uint8Array(rows);
  for (const r of order.data) if (r >= 0) seen[r]! += 1;
  if (seen.some((c) => c !== 1))
    throw new Error("expert_matmul: order does not cover every row once");
}

export const OPS: { readonly [K in IrOpName]: OpRow<K> } = {
  input: {
    dtype: given,
    shape: givenShape,
    print: (n) => ` "${n.name}"`,
    fusion: LEAF,
  },
  param: {
    dtype: given,
    shape: givenShape,
    print: (n) => ` "${n.name}"${n.trainable ? "" : " frozen"} init=${n.init}`,
    fusion: LEAF,
  },
  const: {
    dtype: given,
    shape: givenShape,
    print: (n) => ` ${Number.isInteger(n.value) ? n.value.toFixed(1) : String(n.value)}`,
    reference: (n, _, out) => out.fill(n.value),
    fusion: fusion("const", "stored"),
  },
  unary: {
    dtype: same(0),
    shape: (_, [x]) => [...x!],
    print: (n) => ` ${n.fn}`,
    reference(n, [x], out) {
      const f = UNARY_FUNCTION_ROWS[n.fn].reference;
      for (let i = 0; i < out.length; i++) out[i] = f(x!.data[i]!);
      // As the kernel does: an i32 function without an i32 form is computed in f32, truncated.
      if (n.dtype === "i32") for (let i = 0; i < out.length; i++) out[i] = Math.trunc(out[i]!);
    },
    fusion: MAP_INLINE,
    wgsl(n, [x], env) {
      const row: UnaryFunctionRow = UNARY_FUNCTION_ROWS[n.fn];
      if (n.dtype !== "i32") return row.wgsl(x!, env);
      if (row.wgslI32) return row.wgslI32(x!, env);
      return `i32(${row.wgsl(`f32(${x})`, { ...env, dtype: "f32" })})`;
    },
    vjp: (n) => (UNARY_FUNCTION_ROWS[n.fn] as UnaryFunctionRow).vjp,
  },
  binary: {
    dtype: same(0),
    shape: (_, [a, b]) => broadcast(a!, b!),
    print: (n) => ` ${n.fn}`,
    reference(n, [a, b], out) {
      const f = BINARY_FUNCTION_ROWS[n.fn].reference;
      const sa = strides(a!.shape);
      const sb = strides(b!.shape);
      for (let i = 0; i < out.length; i++) {
        out[i] = f(
          a!.data[broadcastIndex(i, n.shape, a!.shape, sa)]!,
          b!.data[broadcastIndex(i, n.shape, b!.shape, sb)]!,
        );
      }
      if (n.dtype === "i32") for (let i = 0; i < out.length; i++) out[i] = Math.trunc(out[i]!);
    },
    fusion: MAP_INLINE,
    wgsl: (n, [a, b], env) => BINARY_FUNCTION_ROWS[n.fn].wgsl(a!, b!, env),
    vjp: (n) => (BINARY_FUNCTION_ROWS[n.fn] as BinaryFunctionRow).vjp,
  },
  /** [..., m, k] @ [..., k, n] with batch broadcasting; a 2-D right side is shared by all rows. */
  matmul: {
    dtype: same(0),
    shape(_, [a, b]) {
      if (a!.length < 2 || b!.length < 2) throw new Error("internal: matmul needs rank >= 2");
      const k = a![a!.length - 1]!;
      const k2 = b![b!.length - 2]!;
      if (k !== k2) throw new Error(`internal: matmul inner dims ${k} vs ${k2}`);
      return [
        ...broadcast(a!.slice(0, -2), b!.slice(0, -2)),
        a![a!.length - 2]!,
        b![b!.length - 1]!,
      ];
    },
    reference(n, [a, b], out) {
      const r = n.shape.length;
      const m = n.shape[r - 2]!;
      const p = n.shape[r - 1]!;
      const k = a!.shape[a!.shape.length - 1]!;
      const batchShape = n.shape.slice(0, -2);
      const aBatch = a!.shape.slice(0, -2);
      const bBatch = b!.shape.slice(0, -2);
      const sa = strides(aBatch);
      const sb = strides(bBatch);
      const batches = numel(batchShape);
      for (let t = 0; t < batches; t++) {
        const ao = broadcastIndex(t, batchShape, aBatch, sa) * m * k;
        const bo = broadcastIndex(t, batchShape, bBatch, sb) * k * p;
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < p; j++) {
            let acc = 0;
            for (let q = 0; q < k; q++) acc += a!.data[ao + i * k + q]! * b!.data[bo + q * p + j]!;
            out[t * m * p + i * p + j] = acc;
          }
        }
      }
    },
    fusion: fusion("matmul", "stored", true),
    vjp: () => [
      ({ ir, node, cotangent: g }) => {
        const [a, b] = node.inputs;
        return unbroadcast(ir, ir.matmul(g, transposeLast(ir, b)), ir.shape(a));
      },
      ({ ir, node, cotangent: g }) => {
        const [a, b] = node.inputs;
        const bs = ir.shape(b);
        if (bs.length > 2) return unbroadcast(ir, ir.matmul(transposeLast(ir, a), g), bs);
        // A shared right side: one [k, rows] @ [rows, n] product sums over the batch.
        const [k, n] = bs as [number, number];
        const rows = numel(node.shape) / Math.max(1, n);
        const a2 = ir.reshape(a, [rows, k]);
        return ir.matmul(ir.permute(a2, [1, 0]), ir.reshape(g, [rows, n]));
      },
    ],
  },
  /** Along one axis, kept with size 1 (the builder reshapes it away unless keepdim). */
  reduce: {
    dtype: same(0),
    shape(n, [x]) {
      checkAxis(n.axis, x!.length);
      return x!.map((d, i) => (i === n.axis ? 1 : d));
    },
    print: (n) => ` ${n.fn} axis=${n.axis}`,
    reference(n, [x], out) {
      const f: ReduceFunctionRow = REDUCE_FUNCTION_ROWS[n.fn];
      const { size, inner, outer } = lines(x!.shape, n.axis);
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) {
          let acc = f.identity;
          for (let j = 0; j < size; j++) acc = f.combine(acc, x!.data[(o * size + j) * inner + i]!);
          out[o * inner + i] = f.finish(acc, size);
        }
      }
    },
    // Along the last axis a row reduction (LayerNorm's statistics); otherwise an anchor that
    // loops over the axis per output element.
    fusion: (n) =>
      n.axis === n.shape.length - 1
        ? { kernel: "rows", operands: "inline" }
        : { kernel: "reduce", operands: "stored", epilogue: true },
    vjp: () => [
      ({ ir, node, cotangent: g }) => {
        const x = node.inputs[0];
        const shape = ir.shape(x);
        switch (node.fn) {
          case "sum":
            return expand(ir, g, shape);
          case "mean":
            return expand(ir, mul(ir, g, scalar(ir, 1 / shape[node.axis]!)), shape);
          case "max": {
            // Ties share the cotangent evenly among the positions equal to the maximum.
            const hit = ir.binary("eq", x, node.id);
            const count = ir.reduce("sum", hit, node.axis, true);
            return mul(ir, hit, ir.binary("div", g, count));
          }
        }
      },
    ],
  },
  /** Softmax along the last axis (max subtracted, float32). */
  softmax: {
    dtype: always("f32"),
    shape: (_, [x]) => [...x!],
    reference(n, [x], out) {
      const d = n.shape[n.shape.length - 1]!;
      const xs = x!.data;
      for (let r = 0; r < out.length / d; r++) {
        let mx = -Infinity;
        for (let j = 0; j < d; j++) mx = Math.max(mx, xs[r * d + j]!);
        let sum = 0;
        for (let j = 0; j < d; j++)
          sum += out[r * d + j] = mx === -Infinity ? 0 : Math.exp(xs[r * d + j]! - mx);
        // A NaN sum (a NaN in the row) stays NaN; only an all-masked row gives zeros.
        for (let j = 0; j < d; j++) out[r * d + j] = sum === 0 ? 0 : out[r * d + j]! / sum;
      }
    },
    fusion: ROWS,
    vjp: () => [
      // y ⊙ (g − Σ g⊙y) along the last axis
      ({ ir, node, cotangent: g }) => {
        const y = node.id;
        const dot = ir.reduce("sum", mul(ir, g, y), -1, true);
        return mul(ir, y, ir.binary("sub", g, dot));
      },
    ],
  },
  /** out[..., i, j] = x[..., i, j] where j ≤ i, else -inf. */
  causal_mask: {
    dtype: always("f32"),
    shape: (_, [x]) => [...x!],
    reference(n, [x], out) {
      const rows = n.shape[n.shape.length - 2]!;
      const cols = n.shape[n.shape.length - 1]!;
      for (let i = 0; i < out.length; i++) {
        const j = i % cols;
        const r = Math.floor(i / cols) % rows;
        out[i] = j <= r ? x!.data[i]! : -Infinity;
      }
    },
    fusion: MAP_INLINE,
    wgsl(n, [x], env) {
      const r = n.shape.length;
      return `select(${x}, ${env.f32(-Infinity)}, ${env.coord(r - 1)} > ${env.coord(r - 2)})`;
    },
    vjp: () => [
      // Zero where masked: step(mask(0) + 1) is 1 on the kept positions, 0 on the -inf ones.
      ({ ir, node, cotangent: g }) => {
        const kept = ir.causalMask(ir.constant(0, "f32", [...node.shape]));
        return mul(ir, g, ir.unary("step", ir.binary("add", kept, scalar(ir, 1))));
      },
    ],
  },
  /** Rows of a [n, d] table at integer ids [...]: [..., d]. */
  gather: {
    dtype: same(0),
    shape: (_, [table, ids]) => [...ids!, table![1]!],
    reference(n, [table, ids], out) {
      const [rows, d] = table!.shape as [number, number];
      for (let i = 0; i < ids!.data.length; i++) {
        const row = ids!.data[i]!;
        if (!(row >= 0 && row < rows))
          throw new RangeError(`gather: id ${row} is outside 0..${rows - 1}`);
        for (let j = 0; j < d; j++) out[i * d + j] = table!.data[row * d + j]!;
      }
    },
    // Evaluated per element, reading the table and the ids from their buffers.
    fusion: MAP_STORED,
    // Repeated ids accumulate: the table's cotangent is the cotangent scattered back.
    vjp: () => [
      ({ ir, node, cotangent }) =>
        ir.scatterAdd(cotangent, node.inputs[1], ir.shape(node.inputs[0])[0]!),
      "none",
    ],
  },
  /** Adds rows of src [..., d] into a zero [n, d] table at ids [...] (the gradient of gather). */
  scatter_add: {
    dtype: always("f32"),
    shape: (n, [src]) => [n.rows, src![src!.length - 1]!],
    print: (n) => ` rows=${n.rows}`,
    reference(n, [src, ids], out) {
      const d = n.shape[1]!;
      for (let i = 0; i < ids!.data.length; i++)
        for (let j = 0; j < d; j++) out[ids!.data[i]! * d + j] += src!.data[i * d + j]!;
    },
    fusion: fusion("scatter", "stored"),
    vjp: () => [({ ir, node, cotangent }) => ir.gather(cotangent, node.inputs[1]), "none"],
  },
  permute: {
    dtype: same(0),
    shape(n, [x]) {
      if ([...n.perm].sort((a, b) => a - b).join(",") !== x!.map((_, i) => i).join(","))
        throw new Error(`internal: [${n.perm}] does not permute a rank-${x!.length} value`);
      return n.perm.map((p) => x![p]!);
    },
    print: (n) => ` [${n.perm.join(", ")}]`,
    reference(n, [x], out) {
      const sx = strides(x!.shape);
      const so = strides(n.shape);
      for (let i = 0; i < out.length; i++) {
        let src = 0;
        for (let a = 0; a < n.shape.length; a++)
          src += (Math.floor(i / so[a]!) % n.shape[a]!) * sx[n.perm[a]!]!;
        out[i] = x!.data[src]!;
      }
    },
    fusion: VIEW,
    vjp: (n) => {
      const inverse = n.perm.map((_, a) => n.perm.indexOf(a));
      return [({ ir, cotangent }) => ir.permute(cotangent, inverse)];
    },
  },
  /** The shape is the attribute; the element count must not change. */
  reshape: {
    dtype: same(0),
    shape(n, [x]) {
      const shape = givenShape(n);
      if (numel(shape) !== numel(x!)) throw new Error(`internal: reshape [${x}] to [${shape}]`);
      return shape;
    },
    reference: (_, [x], out) => out.set(x!.data),
    fusion: VIEW,
    vjp: () => [({ ir, node, cotangent }) => ir.reshape(cotangent, ir.shape(node.inputs[0]))],
  },
  /** The last-axis position of each element, 0..n-1 (as i32); reads only its input's shape. */
  iota: {
    dtype: always("i32"),
    shape: (_, [x]) => [...x!],
    reference(n, _, out) {
      const d = n.shape[n.shape.length - 1]!;
      for (let i = 0; i < out.length; i++) out[i] = i % d;
    },
    fusion: fusion("map", "shape"),
    wgsl: (n, _, env) => `i32(${env.coord(n.shape.length - 1)})`,
    vjp: () => ["none"],
  },
  random: {
    dtype: always("f32"),
    shape: givenShape,
    print: (n) => ` stream=${n.stream}`,
    reference(n, [key], out) {
      const k = key!.data[0]! >>> 0;
      for (let i = 0; i < out.length; i++) out[i] = uniformAt(k, n.stream, i);
    },
    fusion: MAP_INLINE,
    wgsl(n, [key], env) {
      const strides = rowMajorStrides(n.shape);
      const index = n.shape.length
        ? n.shape
            .map((_, a) => (strides[a] === 1 ? env.coord(a) : `${env.coord(a)} * ${strides[a]}u`))
            .join(" + ")
        : "0u";
      return `${env.use("uniform_at")}(u32(${key}), ${n.stream >>> 0}u, ${index})`;
    },
    // The values do not depend on the key's value continuously: no gradient flows to it.
    vjp: () => ["none"],
  },
  concat: {
    dtype: same(0),
    shape(n, ins) {
      const out = [...ins[0]!];
      checkAxis(n.axis, out.length);
      for (const s of ins)
        if (s.length !== out.length || s.some((d, a) => a !== n.axis && d !== out[a]))
          throw new Error(`internal: concat of [${ins[0]}] and [${s}] along ${n.axis}`);
      out[n.axis] = ins.reduce((acc, s) => acc + s[n.axis]!, 0);
      return out;
    },
    print: (n) => ` axis=${n.axis}`,
    reference(n, ins, out) {
      const { size: total, inner, outer } = lines(n.shape, n.axis);
      let offset = 0;
      for (const x of ins) {
        const size = x.shape[n.axis]!;
        for (let o = 0; o < outer; o++) {
          for (let j = 0; j < size * inner; j++)
            out[(o * total + offset) * inner + j] = x.data[o * size * inner + j]!;
        }
        offset += size;
      }
    },
    // Evaluated per element, each part read from its buffer.
    fusion: MAP_STORED,
    // Each part's cotangent is its slice; the offset is the parts before it.
    vjp: (n) =>
      n.inputs.map((input, k): InputVjp<NodeOf<"concat">> => ({ ir, node, cotangent }) => {
        const size = (i: number) => ir.shape(i)[node.axis]!;
        const start = node.inputs.slice(0, k).reduce((acc, i) => acc + size(i), 0);
        return ir.slice(cotangent, node.axis, start, size(input));
      }),
  },
  /** The slice [start, start + size) along `axis`. */
  slice: {
    dtype: same(0),
    shape(n, [x]) {
      const out = [...x!];
      checkAxis(n.axis, out.length);
      if (n.start < 0 || n.size < 0 || n.start + n.size > out[n.axis]!)
        throw new Error(`internal: slice ${n.start}+${n.size} of ${out[n.axis]}`);
      out[n.axis] = n.size;
      return out;
    },
    print: (n) => ` axis=${n.axis} start=${n.start} size=${n.size}`,
    reference(n, [x], out) {
      const { inner, outer } = lines(n.shape, n.axis);
      const full = x!.shape[n.axis]!;
      for (let o = 0; o < outer; o++) {
        for (let j = 0; j < n.size * inner; j++)
          out[o * n.size * inner + j] = x!.data[(o * full + n.start) * inner + j]!;
      }
    },
    fusion: VIEW,
    vjp: () => [
      // Zero padding on both sides, as concat with zero constants.
      ({ ir, node, cotangent }) => {
        const full = ir.shape(node.inputs[0]);
        const pad = (size: number) =>
          ir.constant(
            0,
            "f32",
            full.map((d, a) => (a === node.axis ? size : d)),
          );
        const after = full[node.axis]! - node.start - node.size;
        const parts = [
          ...(node.start > 0 ? [pad(node.start)] : []),
          cotangent,
          ...(after > 0 ? [pad(after)] : []),
        ];
        return parts.length === 1 ? cotangent : ir.concat(parts, node.axis);
      },
    ],
  },
  /** The dtype is the attribute; to i32 truncates toward zero. */
  cast: {
    dtype: given,
    shape: (_, [x]) => [...x!],
    reference(n, [x], out) {
      out.set(x!.data);
      if (n.dtype === "i32") for (let i = 0; i < out.length; i++) out[i] = Math.trunc(out[i]!);
    },
    fusion: MAP_INLINE,
    // The operand arrives converted to the node's dtype, which is the whole cast.
    wgsl: (_, [x]) => x!,
    // To f32 from f32 passes the cotangent; from i32 its input is not differentiated anyway.
    vjp: (n) => (n.dtype === "i32" ? ["none"] : [({ cotangent }) => cotangent]),
  },
  /** Running sum along `axis` (inclusive). */
  cumsum: {
    dtype: same(0),
    shape(n, [x]) {
      checkAxis(n.axis, x!.length);
      return [...x!];
    },
    print: (n) => ` axis=${n.axis}`,
    reference(n, [x], out) {
      const { size, inner, outer } = lines(n.shape, n.axis);
      for (let o = 0; o < outer; o++)
        for (let i = 0; i < inner; i++) {
          let acc = 0;
          for (let j = 0; j < size; j++) {
            const at = (o * size + j) * inner + i;
            out[at] = acc += x!.data[at]!;
          }
        }
    },
    fusion: fusion("scan", "stored"),
    vjp: () => [
      // The reverse running sum: Σ g − cumsum(g) + g.
      ({ ir, node, cotangent: g }) => {
        const total = ir.reduce("sum", g, node.axis, true);
        return ir.binary("add", ir.binary("sub", total, ir.cumsum(g, node.axis)), g);
      },
    ],
  },
  /**
   * Positions (i32) of the k largest entries along the last axis, largest first (NaN above
   * all, as torch.topk); ties go to the lower position. Not differentiable (its consumers take
   * values with gather).
   */
  topk: {
    dtype: always("i32"),
    shape(n, [x]) {
      if (!(n.k <= x![x!.length - 1]!)) throw new Error(`internal: top ${n.k} of [${x}]`);
      return [...x!.slice(0, -1), n.k];
    },
    print: (n) => ` k=${n.k}`,
    reference(n, [x], out) {
      const d = x!.shape[x!.shape.length - 1]!;
      for (let r = 0; r < out.length / n.k; r++) {
        const row = Array.from({ length: d }, (_, j) => j);
        // Stable sort: equal values keep the lower position first; NaN ranks above every
        // number, as in torch.topk, so a NaN router logit is chosen (and shows) rather than hidden.
        const above = (u: number, v: number) => (u !== u ? v === v : v === v && u > v);
        row.sort((a, b) => {
          const [u, v] = [x!.data[r * d + a]!, x!.data[r * d + b]!];
          return above(u, v) ? -1 : above(v, u) ? 1 : a - b;
        });
        for (let j = 0; j < n.k; j++) out[r * n.k + j] = row[j]!;
      }
    },
    fusion: fusion("topk", "stored"),
    vjp: () => ["none"],
  },
  /** See graph.ts: the rows of ids [R] grouped by id, padded to `align`. */
  group_rows: {
    dtype: always("i32"),
    shape: (n, [ids]) => [groupRowsLength(ids![0]!, n.experts, n.align)],
    print: (n) => ` experts=${n.experts} align=${n.align}`,
    reference(n, [ids], out) {
      out.fill(-1);
      let at = 0;
      for (let e = 0; e <= n.experts; e++) {
        for (let r = 0; r < ids!.data.length; r++) {
          const id = ids!.data[r]!;
          const inRange = id >= 0 && id < n.experts;
          if (e < n.experts ? id === e : !inRange) out[at++] = r;
        }
        at = Math.ceil(at / n.align) * n.align;
      }
    },
    fusion: fusion("group", "stored"),
    vjp: () => ["none"],
  },
  /** y[r] = x[r] @ w[ids[r]]; `order` (group_rows of ids) only schedules the work. */
  expert_matmul: {
    dtype: always("f32"),
    shape(_, [x, w]) {
      if (x!.length !== 2 || w!.length !== 3 || x![1] !== w![1])
        throw new Error(`internal: expert_matmul of [${x}] and [${w}]`);
      return [x![0]!, w![2]!];
    },
    reference(_, [x, w, ids, order], out) {
      const [E, K, N] = w!.shape as [number, number, number];
      coversRows(order!, ids!.data.length);
      for (let r = 0; r < ids!.data.length; r++) {
        const e = ids!.data[r]!;
        if (!(e >= 0 && e < E)) continue;
        for (let j = 0; j < N; j++) {
          let acc = 0;
          for (let q = 0; q < K; q++) acc += x!.data[r * K + q]! * w!.data[(e * K + q) * N + j]!;
          out[r * N + j] = acc;
        }
      }
    },
    fusion: fusion("matmul", "stored", true),
    vjp: () => [
      // dx[r] = g[r] @ w[ids[r]]ᵀ
      ({ ir, node, cotangent }) => {
        const [, w, ids, order] = node.inputs;
        return ir.expertMatmul(cotangent, ir.permute(w, [0, 2, 1]), ids, order);
      },
      ({ ir, node, cotangent }) => {
        const [x, w, ids, order] = node.inputs;
        return ir.expertMatmulWgrad(x, cotangent, ids, order, ir.shape(w)[0]!);
      },
      "none",
      "none",
    ],
  },
  /** dw[e] = Σ_{r: ids[r] = e} x[r]ᵀ · g[r]: [experts, K, N]. */
  expert_matmul_wgrad: {
    dtype: always("f32"),
    shape(n, [x, g, ids]) {
      if (x!.length !== 2 || g!.length !== 2 || ids!.length !== 1)
        throw new Error(`internal: expert_matmul_wgrad of [${x}], [${g}], [${ids}]`);
      if (x![0] !== g![0] || x![0] !== ids![0])
        throw new Error(`internal: expert_matmul_wgrad rows [${x}], [${g}], [${ids}]`);
      return [n.experts, x![1]!, g![1]!];
    },
    print: (n) => ` experts=${n.experts}`,
    reference(n, [x, g, ids, order], out) {
      const [E, K, N] = n.shape as [number, number, number];
      coversRows(order!, ids!.data.length);
      for (let r = 0; r < ids!.data.length; r++) {
        const e = ids!.data[r]!;
        if (!(e >= 0 && e < E)) continue;
        for (let q = 0; q < K; q++)
          for (let j = 0; j < N; j++)
            out[(e * K + q) * N + j] += x!.data[r * K + q]! * g!.data[r * N + j]!;
      }
    },
    // One invocation per weight element, looping over the rows (no two write one element).
    fusion: fusion("scatter", "stored"),
    vjp: () => [
      // dx[r] = c[ids[r]] · g[r]ᵀ, dg[r] = x[r] · c[ids[r]] for the cotangent c.
      ({ ir, node, cotangent }) => {
        const [, g, ids, order] = node.inputs;
        return ir.expertMatmul(g, ir.permute(cotangent, [0, 2, 1]), ids, order);
      },
      ({ ir, node, cotangent }) => {
        const [x, , ids, order] = node.inputs;
        return ir.expertMatmul(x, cotangent, ids, order);
      },
      "none",
      "none",
    ],
  },
};

/** The row of an op, typed for any node. */
export function opRow(op: IrOpName): OpRow<IrOpName> {
  return OPS[op] as OpRow<IrOpName>;
}

export function fusionOf(n: IrNode): Fusion {
  return opRow(n.op).fusion(n);
}
