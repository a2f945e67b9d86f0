/**
 * Builds IR graphs with shape inference, so every node's shape is right by construction.
 * Used by lowering, by autodiff later, and by tests that build graphs by hand.
 */
import type { BinaryOp, IrDType, IrGraph, IrNode, ReduceOp, UnaryOp } from "./graph.js";

/** Numpy broadcasting of two concrete shapes; throws on mismatch (lowering checked it already). */
export function broadcast(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1)
      throw new Error(`internal: cannot broadcast [${a}] with [${b}]`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

/** The length of group_rows' result for `rows` ids over `experts` experts. */
export function groupRowsLength(rows: number, experts: number, align: number): number {
  return Math.ceil((rows + (experts + 1) * (align - 1)) / align) * align;
}

type Omit2<T> = T extends unknown ? Omit<T, "id"> : never;

export class IrBuilder {
  readonly nodes: IrNode[] = [];
  readonly outputs: { name: string; node: number }[] = [];
  private readonly params = new Map<string, number>();

  private add(n: Omit2<IrNode>): number {
    const id = this.nodes.length;
    this.nodes.push({ ...n, id } as IrNode);
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
    return this.add({ op: "input", name, dtype, shape });
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
    const id = this.add({ op: "param", name, dtype, shape, trainable, init });
    this.params.set(name, id);
    return id;
  }

  constant(value: number, dtype: IrDType = "f32", shape: number[] = []): number {
    return this.add({ op: "const", value, dtype, shape });
  }

  unary(fn: UnaryOp, x: number): number {
    const n = this.node(x);
    return this.add({ op: "unary", fn, inputs: [x], dtype: n.dtype, shape: [...n.shape] });
  }

  binary(fn: BinaryOp, a: number, b: number): number {
    const na = this.node(a);
    const nb = this.node(b);
    return this.add({
      op: "binary",
      fn,
      inputs: [a, b],
      dtype: na.dtype,
      shape: broadcast(na.shape, nb.shape),
    });
  }

  matmul(a: number, b: number): number {
    const sa = this.shape(a);
    const sb = this.shape(b);
    if (sa.length < 2 || sb.length < 2) throw new Error("internal: matmul needs rank >= 2");
    const m = sa[sa.length - 2]!;
    const k = sa[sa.length - 1]!;
    const k2 = sb[sb.length - 2]!;
    const n = sb[sb.length - 1]!;
    if (k !== k2) throw new Error(`internal: matmul inner dims ${k} vs ${k2}`);
    const batch = broadcast(sa.slice(0, -2), sb.slice(0, -2));
    return this.add({
      op: "matmul",
      inputs: [a, b],
      dtype: this.node(a).dtype,
      shape: [...batch, m, n],
    });
  }

  reduce(fn: ReduceOp, x: number, axis: number, keepdim: boolean): number {
    const s = this.shape(x);
    const ax = axis < 0 ? s.length + axis : axis;
    const reduced = s.map((d, i) => (i === ax ? 1 : d));
    const id = this.add({
      op: "reduce",
      fn,
      axis: ax,
      inputs: [x],
      dtype: this.node(x).dtype,
      shape: reduced,
    });
    return keepdim
      ? id
      : this.reshape(
          id,
          s.filter((_, i) => i !== ax),
        );
  }

  softmax(x: number): number {
    return this.add({ op: "softmax", inputs: [x], dtype: "f32", shape: [...this.shape(x)] });
  }

  causalMask(x: number): number {
    return this.add({ op: "causal_mask", inputs: [x], dtype: "f32", shape: [...this.shape(x)] });
  }

  gather(table: number, ids: number): number {
    const t = this.shape(table);
    return this.add({
      op: "gather",
      inputs: [table, ids],
      dtype: this.node(table).dtype,
      shape: [...this.shape(ids), t[1]!],
    });
  }

  scatterAdd(src: number, ids: number, rows: number): number {
    const s = this.shape(src);
    return this.add({
      op: "scatter_add",
      rows,
      inputs: [src, ids],
      dtype: "f32",
      shape: [rows, s[s.length - 1]!],
    });
  }

  permute(x: number, perm: number[]): number {
    const s = this.shape(x);
    if (perm.every((p, i) => p === i)) return x;
    return this.add({
      op: "permute",
      perm,
      inputs: [x],
      dtype: this.node(x).dtype,
      shape: perm.map((p) => s[p]!),
    });
  }

  reshape(x: number, shape: number[]): number {
    const s = this.shape(x);
    if (s.length === shape.length && s.every((d, i) => d === shape[i])) return x;
    return this.add({ op: "reshape", inputs: [x], dtype: this.node(x).dtype, shape });
  }

  iota(like: number): number {
    return this.add({ op: "iota", inputs: [like], dtype: "i32", shape: [...this.shape(like)] });
  }

  concat(xs: number[], axis: number): number {
    const s = [...this.shape(xs[0]!)];
    const ax = axis < 0 ? s.length + axis : axis;
    s[ax] = xs.reduce((acc, x) => acc + this.shape(x)[ax]!, 0);
    return this.add({
      op: "concat",
      axis: ax,
      inputs: xs,
      dtype: this.node(xs[0]!).dtype,
      shape: s,
    });
  }

  slice(x: number, axis: number, start: number, size: number): number {
    const s = [...this.shape(x)];
    const ax = axis < 0 ? s.length + axis : axis;
    s[ax] = size;
    return this.add({
      op: "slice",
      axis: ax,
      start,
      size,
      inputs: [x],
      dtype: this.node(x).dtype,
      shape: s,
    });
  }

  cast(x: number, dtype: IrDType): number {
    if (this.node(x).dtype === dtype) return x;
    return this.add({ op: "cast", inputs: [x], dtype, shape: [...this.shape(x)] });
  }

  cumsum(x: number, axis: number): number {
    const n = this.node(x);
    const ax = axis < 0 ? n.shape.length + axis : axis;
    return this.add({ op: "cumsum", axis: ax, inputs: [x], dtype: n.dtype, shape: [...n.shape] });
  }

  topk(x: number, k: number): number {
    const s = this.shape(x);
    return this.add({ op: "topk", k, inputs: [x], dtype: "i32", shape: [...s.slice(0, -1), k] });
  }

  groupRows(ids: number, experts: number, align: number): number {
    const rows = this.shape(ids)[0]!;
    const length = groupRowsLength(rows, experts, align);
    return this.add({
      op: "group_rows",
      experts,
      align,
      inputs: [ids],
      dtype: "i32",
      shape: [length],
    });
  }

  expertMatmul(x: number, w: number, ids: number, order: number): number {
    const sx = this.shape(x);
    const sw = this.shape(w);
    if (sx.length !== 2 || sw.length !== 3 || sx[1] !== sw[1])
      throw new Error(`internal: expert_matmul of [${sx}] and [${sw}]`);
    return this.add({
      op: "expert_matmul",
      inputs: [x, w, ids, order],
      dtype: "f32",
      shape: [sx[0]!, sw[2]!],
    });
  }

  output(name: string, node: number): void {
    this.outputs.push({ name, node });
  }

  finish(): IrGraph {
    return { nodes: this.nodes, outputs: this.outputs };
  }
}
