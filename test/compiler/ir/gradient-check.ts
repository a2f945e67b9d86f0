// Shared by the gradient tests: build a graph whose value y depends on trainable parameters,
// take the loss ⟨c, y⟩ for a random cotangent c, differentiate it, and compare the gradients
// with float64 central differences of the reference interpreter along random directions.
import { expect } from "vitest";

import { IrBuilder } from "../../../compiler/ir/builder.js";
import {
  type DifferentiatedGraph,
  differentiateGraph,
} from "../../../compiler/ir/differentiate-graph.js";
import { type IrGraph, type IrNode, numel } from "../../../compiler/ir/graph.js";
import { verifyGraph } from "../../../compiler/ir/verify.js";
import { type HostTensor, interpret } from "../../../runtime/reference/interpret.js";

import { prng } from "../../prng.js";

export { prng };

/** A tensor of `shape` with values from `f` (index → value). */
export function tensor(shape: number[], f: (i: number) => number): HostTensor {
  return { shape, data: Float64Array.from({ length: numel(shape) }, (_, i) => f(i)) };
}

/** Uniform in [lo, hi), away from zero by at least `gap` (a kink of relu, abs, …). */
export function uniform(rand: () => number, shape: number[], lo = -2, hi = 2, gap = 0): HostTensor {
  return tensor(shape, () => {
    for (;;) {
      const v = lo + (hi - lo) * rand();
      if (Math.abs(v) >= gap) return v;
    }
  });
}

export interface GradientCase {
  /** A graph to extend (a lowered model); default: an empty one. */
  base?: IrGraph;
  /** The graph's value: params made with `b.param(name, shape, true, …)` are differentiated. */
  build(b: IrBuilder): number;
  /** Values of every param and input `build` makes. */
  leaves: Record<string, HostTensor>;
  seed?: number;
  /** Called with the leaves at θ ± ε·u for each direction u (to check routing stays put). */
  atPerturbed?(leaves: ReadonlyMap<string, HostTensor>): void;
}

export interface GradientResult {
  differentiated: DifferentiatedGraph;
  /** The gradient of ⟨c, y⟩ for each differentiated parameter, by path. */
  gradients: Map<string, HostTensor>;
  forward: IrGraph;
  loss: number;
  leaves: Map<string, HostTensor>;
}

/** Builds the case with its loss ⟨c, y⟩ (c the random input "cotangent"). */
export function withLoss(c: GradientCase): {
  graph: IrGraph;
  loss: number;
  leaves: Map<string, HostTensor>;
} {
  const b = c.base ? IrBuilder.extend(c.base) : new IrBuilder();
  const y = c.build(b);
  const shape = b.shape(y);
  const cot = b.input("cotangent", "f32", shape);
  const flat = b.reshape(b.binary("mul", y, cot), [numel(shape)]);
  const loss = b.reduce("sum", flat, 0, false);
  b.output("loss", loss);
  const rand = prng((c.seed ?? 1) * 7919 + 17);
  const leaves = new Map(Object.entries(c.leaves));
  leaves.set("cotangent", uniform(rand, shape, -1, 1, 0.05));
  return { graph: b.finish(), loss, leaves };
}

/**
 * Checks every gradient against central differences (ε = 1e-6) along two random directions:
 * |finite difference − ⟨gradient, u⟩| < tolerance · Σ|gradient ⊙ u|.
 */
export function checkGradients(c: GradientCase, tolerance = 1e-6): GradientResult {
  const { graph, loss, leaves } = withLoss(c);
  const differentiated = differentiateGraph(graph, loss, { outputPrefix: "grad:" });
  expect(verifyGraph(differentiated.graph)).toEqual([]);
  const { outputs } = interpret(differentiated.graph, leaves);
  const gradients = new Map<string, HostTensor>();
  for (const [name] of differentiated.gradients) {
    const g = outputs.get(`grad:${name}`)!;
    expect(g.shape, name).toEqual(leaves.get(name)!.shape);
    expect(g.data.every(Number.isFinite), name).toBe(true);
    gradients.set(name, g);
  }
  const lossAt = (shift: Map<string, HostTensor>, scale: number) => {
    const moved = new Map(leaves);
    for (const [name, u] of shift) {
      const x = leaves.get(name)!;
      moved.set(
        name,
        tensor(x.shape, (i) => x.data[i]! + scale * u.data[i]!),
      );
    }
    c.atPerturbed?.(moved);
    return interpret(graph, moved).outputs.get("loss")!.data[0]!;
  };
  const rand = prng((c.seed ?? 1) * 104729 + 3);
  const eps = 1e-6;
  for (let trial = 0; trial < 2; trial++) {
    const directions = new Map<string, HostTensor>();
    let analytic = 0;
    let scale = 0;
    for (const [name, g] of gradients) {
      const u = uniform(rand, g.shape, -1, 1);
      directions.set(name, u);
      for (let i = 0; i < u.data.length; i++) {
        analytic += g.data[i]! * u.data[i]!;
        scale += Math.abs(g.data[i]! * u.data[i]!);
      }
    }
    const numeric = (lossAt(directions, eps) - lossAt(directions, -eps)) / (2 * eps);
    // All-zero gradients (relu left of 0, softmax of one element) must be zero indeed.
    if (scale === 0) expect(Math.abs(numeric)).toBeLessThan(1e-9);
    else expect(Math.abs(numeric - analytic) / scale).toBeLessThan(tolerance);
  }
  return { differentiated, gradients, forward: graph, loss, leaves };
}

/** The graph with every f32 input turned into a trainable parameter of the same name. */
export function withTrainableInputs(graph: IrGraph): IrGraph {
  const nodes = graph.nodes.map((n): IrNode =>
    n.op === "input" && n.dtype === "f32"
      ? {
          op: "param",
          id: n.id,
          name: n.name,
          dtype: "f32",
          shape: n.shape,
          trainable: true,
          init: "normal",
        }
      : n,
  );
  return { nodes, outputs: graph.outputs };
}

/**
 * The smallest gap, over every row of every `topk`, between consecutive values of the row
 * sorted largest first, up to and including the first value left out (Infinity: no topk).
 */
export function topkMargin(graph: IrGraph, at: HostTensor[]): number {
  let margin = Infinity;
  for (const n of graph.nodes) {
    if (n.op !== "topk") continue;
    const x = at[n.inputs[0]]!;
    const d = x.shape[x.shape.length - 1]!;
    for (let r = 0; r < x.data.length / d; r++) {
      const row = [...x.data.slice(r * d, (r + 1) * d)].sort((a, b) => b - a);
      for (let j = 0; j < Math.min(n.k, d - 1); j++)
        margin = Math.min(margin, row[j]! - row[j + 1]!);
    }
  }
  return margin;
}
