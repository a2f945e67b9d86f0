/**
 * The tensor IR: a graph in SSA form over a small closed set of primitive ops. Every value has
 * a dtype and a concrete shape (dims are bound before lowering). Each op is pure and has a
 * gradient expressible in the same op set, so `moec train` can differentiate the graph into
 * more of the same IR. Everything about an op beyond its attributes (shape rule, reference
 * implementation, fusion class, WGSL, gradient slot) is its row in ./ops.ts.
 */
import type { BinaryOp, ReduceOp, UnaryOp } from "./ops.js";

export type IrDType = "f32" | "i32";

// The function names are the keys of the op table's function rows.
export type { BinaryOp, ReduceOp, UnaryOp } from "./ops.js";
export { BINARY_OPS, REDUCE_OPS, UNARY_OPS } from "./ops.js";
export { numel } from "./shapes.js";

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
   * Positions (i32) of the k largest entries along the last axis, largest first; ties go to
   * the lower position. Not differentiable (its consumers take values with gather).
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
    };

export type IrOpName = IrNode["op"];

/** A whole program: nodes in topological order, and its named outputs. */
export interface IrGraph {
  nodes: IrNode[];
  outputs: { name: string; node: number }[];
}

/** Node inputs, uniformly (leaf nodes have none). */
export function inputsOf(n: IrNode): readonly number[] {
  return "inputs" in n ? n.inputs : [];
}
