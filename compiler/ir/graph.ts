/**
 * The tensor IR: a graph in SSA form over a small closed set of ops. Every value has a dtype
 * and a concrete shape (dims are bound before lowering). Each op is pure and has a gradient
 * expressible in the same op set, so `moec train` can differentiate the graph into more of the
 * same IR. The node types and everything about an op (shape rule, reference implementation,
 * fusion class, WGSL, gradient rule) are its row in ./ops.ts. ("Op" is the IR's word;
 * "primitive" means the standard library's `primitive` declarations.)
 */
import type { IrNode } from "./ops.js";

// The nodes and function names are declared beside their rows in the op table.
export type { BinaryOp, IrDType, IrNode, IrOpName, ReduceOp, UnaryOp } from "./ops.js";
export { BINARY_OPS, REDUCE_OPS, UNARY_OPS } from "./ops.js";
export { numel } from "./shapes.js";

/** A whole program: nodes in topological order, and its named outputs. */
export interface IrGraph {
  nodes: IrNode[];
  outputs: { name: string; node: number }[];
  /**
   * Where each node came from, by node id, where lowering knows (absent in graphs built by
   * hand): what `moec train` names when a value turns non-finite.
   */
  origins?: (IrOrigin | undefined)[];
}

/** A source range a node was lowered from: an expression, or an application it inlined. */
export interface IrOrigin {
  file: string;
  /** Offsets into the file's text, as grammar spans are. */
  start: number;
  end: number;
  /** The application whose body this is in (a call site further out), if any. */
  caller?: IrOrigin;
  /** Set on the nodes of the gradient of a value from here, and of the optimizer's update. */
  role?: "gradient" | "optimizer";
}

/** Node inputs, uniformly (leaf nodes have none). */
export function inputsOf(n: IrNode): readonly number[] {
  return "inputs" in n ? n.inputs : [];
}
