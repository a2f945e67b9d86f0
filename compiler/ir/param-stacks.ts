/**
 * Parameter stacks: concatenations along axis 0 whose parts are whole parameters (each as is
 * or reshaped), such as the experts' weights stacked for an expert matmul. Along axis 0 each
 * part is one contiguous block, so the back end lays such a stack out as a *pack*: one buffer
 * the parameters are uploaded into, the concatenation never computed (fuse-kernels.ts). The
 * optimizer (library/optim/adamw.ts) reads the same stacks to lay its flat parameter buffer
 * out so that every stack is a contiguous run of it.
 */
import { type IrNode, numel } from "./graph.js";

export interface ParamStack {
  /** The concat node. */
  concat: number;
  /** The parameter node of each part, in order. */
  params: number[];
}

/** The parameter under part `id` (as is, or through one reshape), if it is a whole one. */
function wholeParam(nodes: readonly IrNode[], id: number): IrNode | undefined {
  const v = nodes[id]!;
  const src = v.op === "reshape" ? nodes[v.inputs[0]]! : v;
  return src.op === "param" && numel(src.shape) === numel(v.shape) ? src : undefined;
}

/** Every parameter stack among `nodes`, in node order; a stack may repeat no parameter. */
export function paramStacks(nodes: readonly IrNode[]): ParamStack[] {
  const out: ParamStack[] = [];
  for (const n of nodes) {
    if (n.op !== "concat" || n.axis !== 0) continue;
    const params = n.inputs.map((i) => wholeParam(nodes, i)?.id);
    if (params.some((p) => p === undefined)) continue;
    if (new Set(params).size !== params.length) continue;
    out.push({ concat: n.id, params: params as number[] });
  }
  return out;
}
