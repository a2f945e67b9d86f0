/**
 * The reference interpreter: executes IR on the CPU in float64, one op at a time, with no
 * fusion and no cleverness. It is the oracle every GPU kernel and every gradient is checked
 * against, so each op is written for clarity.
 */
import { type IrGraph, type IrNode, numel } from "../../compiler/ir/graph.js";

/** A dense row-major tensor (i32 values are stored exactly in the float64 array). */
export interface HostTensor {
  shape: number[];
  data: Float64Array;
}

export function strides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) out[i] = out[i + 1]! * shape[i + 1]!;
  return out;
}

/** Index into `shape` (broadcast against `outShape`) of the flat output index `flat`. */
function broadcastIndex(
  flat: number,
  outShape: readonly number[],
  shape: readonly number[],
  st: readonly number[],
): number {
  let idx = 0;
  let rem = flat;
  const off = outShape.length - shape.length;
  for (let i = outShape.length - 1; i >= 0; i--) {
    const c = rem % outShape[i]!;
    rem = Math.floor(rem / outShape[i]!);
    const j = i - off;
    if (j >= 0 && shape[j] !== 1) idx += c * st[j]!;
  }
  return idx;
}

/** erf to double precision: Taylor series near 0, continued fraction for erfc in the tails. */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let term = ax;
    let sum = ax;
    for (let n = 1; n < 100; n++) {
      term *= (-ax * ax) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
  let f = ax;
  for (let n = 60; n >= 1; n--) f = ax + n / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

export const UNARY_FUNCTIONS: Record<string, (x: number) => number> = {
  neg: (x) => -x,
  relu: (x) => (x > 0 ? x : 0),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  gelu_tanh: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
  silu: (x) => x / (1 + Math.exp(-x)),
  tanh: Math.tanh,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  abs: Math.abs,
  step: (x) => (x > 0 ? 1 : 0),
};

export const BINARY_FUNCTIONS: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  max: Math.max,
  min: Math.min,
  pow: Math.pow,
  eq: (a, b) => (a === b ? 1 : 0),
  lt: (a, b) => (a < b ? 1 : 0),
};

function evalNode(n: IrNode, get: (id: number) => HostTensor): Float64Array {
  const out = new Float64Array(numel(n.shape));
  switch (n.op) {
    case "input":
    case "param":
      throw new Error("internal: leaves are fed, not evaluated");
    case "const":
      return out.fill(n.value);
    case "unary": {
      const x = get(n.inputs[0]).data;
      const f = UNARY_FUNCTIONS[n.fn]!;
      for (let i = 0; i < out.length; i++) out[i] = f(x[i]!);
      return out;
    }
    case "binary": {
      const a = get(n.inputs[0]);
      const b = get(n.inputs[1]);
      const f = BINARY_FUNCTIONS[n.fn]!;
      const sa = strides(a.shape);
      const sb = strides(b.shape);
      for (let i = 0; i < out.length; i++) {
        out[i] = f(
          a.data[broadcastIndex(i, n.shape, a.shape, sa)]!,
          b.data[broadcastIndex(i, n.shape, b.shape, sb)]!,
        );
      }
      if (n.dtype === "i32") for (let i = 0; i < out.length; i++) out[i] = Math.trunc(out[i]!);
      return out;
    }
    case "matmul": {
      const a = get(n.inputs[0]);
      const b = get(n.inputs[1]);
      const r = n.shape.length;
      const m = n.shape[r - 2]!;
      const p = n.shape[r - 1]!;
      const k = a.shape[a.shape.length - 1]!;
      const batchShape = n.shape.slice(0, -2);
      const aBatch = a.shape.slice(0, -2);
      const bBatch = b.shape.slice(0, -2);
      const sa = strides(aBatch);
      const sb = strides(bBatch);
      const batches = numel(batchShape);
      for (let t = 0; t < batches; t++) {
        const ao = broadcastIndex(t, batchShape, aBatch, sa) * m * k;
        const bo = broadcastIndex(t, batchShape, bBatch, sb) * k * p;
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < p; j++) {
            let acc = 0;
            for (let q = 0; q < k; q++) acc += a.data[ao + i * k + q]! * b.data[bo + q * p + j]!;
            out[t * m * p + i * p + j] = acc;
          }
        }
      }
      return out;
    }
    case "reduce": {
      const x = get(n.inputs[0]);
      const size = x.shape[n.axis]!;
      const inner = numel(x.shape.slice(n.axis + 1));
      const outer = numel(x.shape.slice(0, n.axis));
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) {
          let acc = n.fn === "max" ? -Infinity : 0;
          for (let j = 0; j < size; j++) {
            const v = x.data[(o * size + j) * inner + i]!;
            acc = n.fn === "max" ? Math.max(acc, v) : acc + v;
          }
          out[o * inner + i] = n.fn === "mean" ? acc / size : acc;
        }
      }
      return out;
    }
    case "softmax": {
      const x = get(n.inputs[0]).data;
      const d = n.shape[n.shape.length - 1]!;
      for (let r = 0; r < out.length / d; r++) {
        let mx = -Infinity;
        for (let j = 0; j < d; j++) mx = Math.max(mx, x[r * d + j]!);
        let sum = 0;
        for (let j = 0; j < d; j++)
          sum += out[r * d + j] = mx === -Infinity ? 0 : Math.exp(x[r * d + j]! - mx);
        for (let j = 0; j < d; j++) out[r * d + j] = sum > 0 ? out[r * d + j]! / sum : 0;
      }
      return out;
    }
    case "causal_mask": {
      const x = get(n.inputs[0]).data;
      const rows = n.shape[n.shape.length - 2]!;
      const cols = n.shape[n.shape.length - 1]!;
      for (let i = 0; i < out.length; i++) {
        const j = i % cols;
        const r = Math.floor(i / cols) % rows;
        out[i] = j <= r ? x[i]! : -Infinity;
      }
      return out;
    }
    case "gather": {
      const table = get(n.inputs[0]);
      const ids = get(n.inputs[1]).data;
      const [rows, d] = table.shape as [number, number];
      for (let i = 0; i < ids.length; i++) {
        const row = ids[i]!;
        if (!(row >= 0 && row < rows))
          throw new RangeError(`gather: id ${row} is outside 0..${rows - 1}`);
        for (let j = 0; j < d; j++) out[i * d + j] = table.data[row * d + j]!;
      }
      return out;
    }
    case "scatter_add": {
      const src = get(n.inputs[0]).data;
      const ids = get(n.inputs[1]).data;
      const d = n.shape[1]!;
      for (let i = 0; i < ids.length; i++)
        for (let j = 0; j < d; j++) out[ids[i]! * d + j] += src[i * d + j]!;
      return out;
    }
    case "permute": {
      const x = get(n.inputs[0]);
      const sx = strides(x.shape);
      const so = strides(n.shape);
      for (let i = 0; i < out.length; i++) {
        let src = 0;
        for (let a = 0; a < n.shape.length; a++)
          src += (Math.floor(i / so[a]!) % n.shape[a]!) * sx[n.perm[a]!]!;
        out[i] = x.data[src]!;
      }
      return out;
    }
    case "reshape":
    case "cast":
      out.set(get(n.inputs[0]).data);
      if (n.op === "cast" && n.dtype === "i32")
        for (let i = 0; i < out.length; i++) out[i] = Math.trunc(out[i]!);
      return out;
    case "iota": {
      const d = n.shape[n.shape.length - 1]!;
      for (let i = 0; i < out.length; i++) out[i] = i % d;
      return out;
    }
    case "concat": {
      const outer = numel(n.shape.slice(0, n.axis));
      const inner = numel(n.shape.slice(n.axis + 1));
      let offset = 0;
      for (const id of n.inputs) {
        const x = get(id);
        const size = x.shape[n.axis]!;
        for (let o = 0; o < outer; o++) {
          for (let j = 0; j < size * inner; j++)
            out[(o * n.shape[n.axis]! + offset) * inner + j] = x.data[o * size * inner + j]!;
        }
        offset += size;
      }
      return out;
    }
    case "cumsum": {
      const x = get(n.inputs[0]).data;
      const size = n.shape[n.axis]!;
      const inner = numel(n.shape.slice(n.axis + 1));
      const outer = numel(n.shape.slice(0, n.axis));
      for (let o = 0; o < outer; o++)
        for (let i = 0; i < inner; i++) {
          let acc = 0;
          for (let j = 0; j < size; j++) {
            const at = (o * size + j) * inner + i;
            out[at] = acc += x[at]!;
          }
        }
      return out;
    }
    case "topk": {
      const x = get(n.inputs[0]);
      const d = x.shape[x.shape.length - 1]!;
      for (let r = 0; r < out.length / n.k; r++) {
        const row = Array.from({ length: d }, (_, j) => j);
        // Stable sort: equal values keep the lower position first.
        row.sort((a, b) => x.data[r * d + b]! - x.data[r * d + a]! || a - b);
        for (let j = 0; j < n.k; j++) out[r * n.k + j] = row[j]!;
      }
      return out;
    }
    case "group_rows": {
      const ids = get(n.inputs[0]).data;
      out.fill(-1);
      let at = 0;
      for (let e = 0; e <= n.experts; e++) {
        for (let r = 0; r < ids.length; r++) {
          const id = ids[r]!;
          const inRange = id >= 0 && id < n.experts;
          if (e < n.experts ? id === e : !inRange) out[at++] = r;
        }
        at = Math.ceil(at / n.align) * n.align;
      }
      return out;
    }
    case "expert_matmul": {
      const x = get(n.inputs[0]);
      const w = get(n.inputs[1]);
      const ids = get(n.inputs[2]).data;
      const order = get(n.inputs[3]).data;
      const [E, K, N] = w.shape as [number, number, number];
      // The schedule must cover every row once, whatever the kernel does with it.
      const seen = new Uint8Array(ids.length);
      for (const r of order) if (r >= 0) seen[r]! += 1;
      if (seen.some((c) => c !== 1))
        throw new Error("expert_matmul: order does not cover every row once");
      for (let r = 0; r < ids.length; r++) {
        const e = ids[r]!;
        if (!(e >= 0 && e < E)) continue;
        for (let j = 0; j < N; j++) {
          let acc = 0;
          for (let q = 0; q < K; q++) acc += x.data[r * K + q]! * w.data[(e * K + q) * N + j]!;
          out[r * N + j] = acc;
        }
      }
      return out;
    }
    case "slice": {
      const x = get(n.inputs[0]);
      const outer = numel(n.shape.slice(0, n.axis));
      const inner = numel(n.shape.slice(n.axis + 1));
      const full = x.shape[n.axis]!;
      for (let o = 0; o < outer; o++) {
        for (let j = 0; j < n.size * inner; j++)
          out[o * n.size * inner + j] = x.data[(o * full + n.start) * inner + j]!;
      }
      return out;
    }
  }
}

/**
 * Runs a graph. `leaves` gives a tensor for every `input` (by name) and `param` (by path).
 * Returns every node's value when `keepAll`, else only the outputs (by name).
 */
export function interpret(
  graph: IrGraph,
  leaves: ReadonlyMap<string, HostTensor>,
): { outputs: Map<string, HostTensor>; values: HostTensor[] } {
  const values: HostTensor[] = [];
  const get = (id: number) => values[id]!;
  for (const n of graph.nodes) {
    if (n.op === "input" || n.op === "param") {
      const t = leaves.get(n.name);
      if (!t) throw new Error(`no value for ${n.op} ${n.name}`);
      if (t.shape.join(",") !== n.shape.join(",")) {
        throw new Error(`${n.op} ${n.name}: expected shape [${n.shape}], got [${t.shape}]`);
      }
      values.push(t);
      continue;
    }
    values.push({ shape: n.shape, data: evalNode(n, get) });
  }
  return { outputs: new Map(graph.outputs.map((o) => [o.name, get(o.node)])), values };
}
