/**
 * Builds IR graphs with shape inference, so every node's shape is right by construction: each
 * typed constructor drafts a node and `make` takes its dtype and shape from the op's row in
 * ./ops.ts (which throws where the inputs do not fit). Used by lowering, by autodiff
 * (differentiate-graph.ts, which extends the graph it differentiates) and by tests that build
 * graphs by hand.
 */
import {
  type IrDType,
  type IrGraph,
  type IrNode,
  type IrOpName,
  type IrOrigin,
  inputsOf,
} from "./graph.js";
import {
  type BinaryOp,
  type Draft,
  type GradientBuilder,
  type ReduceOp,
  type UnaryOp,
  opRow,
} from "./ops.js";

export { broadcast, groupRowsLength } from "./shapes.js";

export class IrBuilder implements GradientBuilder {
  readonly nodes: IrNode[] = [];
  readonly outputs: { name: string; node: number }[] = [];
  private readonly params = new Map<string, number>();
  /** Origins by node id (see IrGraph.origins); `origin` is recorded for each node made. */
  private readonly origins: (IrOrigin | undefined)[] = [];
  origin: IrOrigin | undefined;

  /** A builder that appends to `graph`: its nodes, outputs and parameters are kept. */
  static extend(graph: IrGraph): IrBuilder {
    const b = new IrBuilder();
    b.nodes.push(...graph.nodes);
    b.outputs.push(...graph.outputs);
    if (graph.origins) b.origins.push(...graph.origins);
    for (const n of graph.nodes) if (n.op === "param") b.params.set(n.name, n.id);
    return b;
  }

  /**
   * Adds a node of `draft`'s op with the dtype and shape its row gives. The node's keys keep
   * the draft's order, then dtype, shape and id: the order ir.json is written in.
   */
  make<K extends IrOpName>(draft: Draft<K>): number {
    const row = opRow(draft.op);
    const ins = inputsOf(draft as IrNode).map((i) => this.node(i));
    const dtype = row.dtype(
      draft,
      ins.map((n) => n.dtype),
    );
    const shape = row.shape(
      draft,
      ins.map((n) => n.shape),
    );
    const id = this.nodes.length;
    this.nodes.push({ ...draft, dtype, shape, id } as IrNode);
    if (this.origin) this.origins[id] = this.origin;
    return id;
  }

  node(id: number): IrNode {
    const n = this.nodes[id];
    if (!n) throw new Error(`internal: no IR node ${id}`);
    return n;
  }

  shape(id: number): number[] {
    return this.node(id).shape;
  }

  input(name: string, dtype: IrDType, shape: number[]): number {
    return this.make({ op: "input", name, dtype, shape });
  }

  /** A parameter by dotted path; asking twice for one path gives the same node (sharing, tying). */
  param(
    name: string,
    shape: number[],
    trainable: boolean,
    init: string,
    dtype: IrDType = "f32",
  ): number {
    const existing = this.params.get(name);
    if (existing !== undefined) return existing;
    const id = this.make({ op: "param", name, dtype, shape, trainable, init });
    this.params.set(name, id);
    return id;
  }

  constant(value: number, dtype: IrDType = "f32", shape: number[] = []): number {
    return this.make({ op: "const", value, dtype, shape });
  }

  unary(fn: UnaryOp, x: number): number {
    return this.make({ op: "unary", fn, inputs: [x] });
  }

  binary(fn: BinaryOp, a: number, b: number): number {
    return this.make({ op: "binary", fn, inputs: [a, b] });
  }

  matmul(a: number, b: number): number {
    return this.make({ op: "matmul", inputs: [a, b] });
  }

  reduce(fn: ReduceOp, x: number, axis: number, keepdim: boolean): number {
    const s = this.shape(x);
    const ax = axis < 0 ? s.length + axis : axis;
    const id = this.make({ op: "reduce", fn, axis: ax, inputs: [x] });
    return keepdim
      ? id
      : this.reshape(
          id,
          s.filter((_, i) => i !== ax),
        );
  }

  softmax(x: number): number {
    return this.make({ op: "softmax", inputs: [x] });
  }

  causalMask(x: number): number {
    return this.make({ op: "causal_mask", inputs: [x] });
  }

  gather(table: number, ids: number): number {
    return this.make({ op: "gather", inputs: [table, ids] });
  }

  scatterAdd(src: number, ids: number, rows: number): number {
    return this.make({ op: "scatter_add", rows, inputs: [src, ids] });
  }

  permute(x: number, perm: number[]): number {
    if (perm.every((p, i) => p === i)) return x;
    return this.make({ op: "permute", perm, inputs: [x] });
  }

  reshape(x: number, shape: number[]): number {
    const n = this.node(x);
    if (n.shape.length === shape.length && n.shape.every((d, i) => d === shape[i])) return x;
    // The dtype is spelled out only to keep ir.json's key order (op, inputs, dtype, shape).
    return this.make({ op: "reshape", inputs: [x], dtype: n.dtype, shape });
  }

  iota(like: number): number {
    return this.make({ op: "iota", inputs: [like] });
  }

  /** Uniform [0, 1) values of `shape` from the f32 [1] `key` (see the op's row). */
  random(key: number, shape: number[], stream: number): number {
    return this.make({ op: "random", stream, inputs: [key], shape });
  }

  concat(xs: number[], axis: number): number {
    const rank = this.shape(xs[0]!).length;
    return this.make({ op: "concat", axis: axis < 0 ? rank + axis : axis, inputs: xs });
  }

  slice(x: number, axis: number, start: number, size: number): number {
    const rank = this.shape(x).length;
    const ax = axis < 0 ? rank + axis : axis;
    return this.make({ op: "slice", axis: ax, start, size, inputs: [x] });
  }

  cast(x: number, dtype: IrDType): number {
    if (this.node(x).dtype === dtype) return x;
    return this.make({ op: "cast", inputs: [x], dtype });
  }

  cumsum(x: number, axis: number): number {
    const rank = this.shape(x).length;
    return this.make({ op: "cumsum", axis: axis < 0 ? rank + axis : axis, inputs: [x] });
  }

  topk(x: number, k: number): number {
    return this.make({ op: "topk", k, inputs: [x] });
  }

  groupRows(ids: number, experts: number, align: number): number {
    return this.make({ op: "group_rows", experts, align, inputs: [ids] });
  }

  expertMatmul(x: number, w: number, ids: number, order: number): number {
    return this.make({ op: "expert_matmul", inputs: [x, w, ids, order] });
  }

  expertMatmulWgrad(x: number, g: number, ids: number, order: number, experts: number): number {
    return this.make({ op: "expert_matmul_wgrad", experts, inputs: [x, g, ids, order] });
  }

  output(name: string, node: number): void {
    this.outputs.push({ name, node });
  }

  /** Where node `id` came from, if recorded. */
  originOf(id: number): IrOrigin | undefined {
    return this.origins[id];
  }

  /** Runs `f` with `origin` recorded on the nodes it makes (restored after). */
  at<T>(origin: IrOrigin | undefined, f: () => T): T {
    const before = this.origin;
    this.origin = origin;
    try {
      return f();
    } finally {
      this.origin = before;
    }
  }

  finish(): IrGraph {
    if (!this.origins.some((o) => o !== undefined))
      return { nodes: this.nodes, outputs: this.outputs };
    this.origins.length = this.nodes.length;
    return { nodes: this.nodes, outputs: this.outputs, origins: this.origins };
  }
}
