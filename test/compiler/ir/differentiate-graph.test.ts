// Reverse-mode autodiff (compiler/ir/differentiate-graph.ts): every op's gradient rule against
// float64 central differences of the reference interpreter, at sizes 1, 7 and odd shapes,
// broadcasting on either side; then hand-built composites (LayerNorm, causal attention, GELU
// MLP, SwiGLU, an embedding with repeated ids, a top-1 MoE).
import { describe, expect, it } from "vitest";

import { IrBuilder } from "../../../compiler/ir/builder.js";
import { differentiateGraph } from "../../../compiler/ir/differentiate-graph.js";
import { type BinaryOp, type UnaryOp } from "../../../compiler/ir/graph.js";
import { UNARY_FUNCTION_ROWS, type UnaryFunctionRow } from "../../../compiler/ir/ops.js";
import { interpret } from "../../../runtime/reference/interpret.js";
import { checkGradients, prng, tensor, uniform, withLoss } from "./gradient-check.js";

const p = (b: IrBuilder, name: string, shape: number[]) => b.param(name, shape, true, "normal");

describe("unary rules", () => {
  // Domains: away from relu's and abs's kink, positive where log and the roots need it.
  const domain: Record<UnaryOp, [number, number, number]> = {
    neg: [-2, 2, 0],
    relu: [-2, 2, 0.05],
    gelu: [-4, 4, 0],
    gelu_tanh: [-4, 4, 0],
    silu: [-4, 4, 0],
    tanh: [-2, 2, 0],
    sigmoid: [-4, 4, 0],
    exp: [-2, 2, 0],
    log: [0.2, 3, 0],
    sqrt: [0.2, 3, 0],
    rsqrt: [0.2, 3, 0],
    abs: [-2, 2, 0.05],
    erf: [-3, 3, 0],
    step: [-2, 2, 0.05],
  };
  for (const fn of Object.keys(domain) as UnaryOp[]) {
    if (fn === "step") continue;
    for (const shape of [[1], [7], [3, 5]]) {
      it(`${fn} at [${shape}]`, () => {
        const [lo, hi, gap] = domain[fn];
        checkGradients({
          build: (b) => b.unary(fn, p(b, "x", shape)),
          leaves: { x: uniform(prng(shape.length * 31 + fn.length), shape, lo, hi, gap) },
        });
      });
    }
  }

  it("step, eq and lt pass no gradient: their parameter is unused", () => {
    for (const build of [
      (b: IrBuilder) => b.binary("mul", p(b, "w", [3]), b.unary("step", p(b, "x", [3]))),
      (b: IrBuilder) =>
        b.binary("mul", p(b, "w", [3]), b.binary("eq", p(b, "x", [3]), p(b, "w", [3]))),
      (b: IrBuilder) =>
        b.binary("mul", p(b, "w", [3]), b.binary("lt", p(b, "x", [3]), b.constant(0))),
    ]) {
      const r = prng(5);
      const { differentiated } = checkGradients({
        build,
        leaves: { x: uniform(r, [3], -2, 2, 0.1), w: uniform(r, [3], -2, 2, 0.1) },
      });
      expect(differentiated.unused).toEqual(["x"]);
      expect([...differentiated.gradients.keys()]).toEqual(["w"]);
    }
  });
});

describe("binary rules", () => {
  const pairs: [number[], number[]][] = [
    [[1], [1]],
    [[7], [7]],
    [[3, 5], [5]],
    [[5], [3, 5]],
    [
      [3, 1],
      [1, 5],
    ],
    [[1], [3, 5]],
    [
      [2, 3, 5],
      [3, 1],
    ],
  ];
  const fns: BinaryOp[] = ["add", "sub", "mul", "div", "max", "min", "pow"];
  for (const fn of fns) {
    for (const [sa, sb] of pairs) {
      it(`${fn} of [${sa}] and [${sb}]`, () => {
        const rand = prng(sa.length * 13 + sb.length * 7 + fn.length);
        // a on a grid of odd twentieths, b on even ones: max and min never meet a tie.
        const grid = (shape: number[], odd: number) =>
          tensor(shape, () => (2 * Math.floor(rand() * 30 - 15) + odd) / 20 + (odd ? 0.3 : 0));
        const leaves =
          fn === "pow"
            ? { a: uniform(rand, sa, 0.3, 2), b: uniform(rand, sb, -2, 2) }
            : fn === "div"
              ? { a: uniform(rand, sa), b: uniform(rand, sb, 0.5, 2) }
              : { a: grid(sa, 1), b: grid(sb, 0) };
        checkGradients({
          build: (b) => b.binary(fn, p(b, "a", sa), p(b, "b", sb)),
          leaves,
        });
      });
    }
  }

  it("pow with a constant exponent: the exponent stays a constant, and gets no gradient", () => {
    const { differentiated, forward } = checkGradients({
      build: (b) => b.binary("pow", p(b, "a", [7]), b.constant(3)),
      leaves: { a: uniform(prng(3), [7], -2, 2) },
    });
    const added = differentiated.graph.nodes.slice(forward.nodes.length);
    expect(added.some((n) => n.op === "binary" && n.fn === "sub")).toBe(false);
    expect(added.some((n) => n.op === "const" && n.value === 2)).toBe(true);
  });

  it("max and min split a tie evenly between the sides", () => {
    for (const fn of ["max", "min"] as const) {
      const { graph, loss, leaves } = withLoss({
        build: (b) => b.binary(fn, p(b, "a", [3]), p(b, "b", [3])),
        leaves: { a: tensor([3], (i) => [1, 2, 3][i]!), b: tensor([3], (i) => [1, 0, 5][i]!) },
      });
      leaves.set(
        "cotangent",
        tensor([3], () => 2),
      );
      const d = differentiateGraph(graph, loss, { outputPrefix: "g:" });
      const out = interpret(d.graph, leaves).outputs;
      const a = [...out.get("g:a")!.data];
      const b = [...out.get("g:b")!.data];
      expect(a).toEqual(fn === "max" ? [1, 2, 0] : [1, 0, 2]);
      expect(b).toEqual(fn === "max" ? [1, 0, 2] : [1, 2, 0]);
    }
  });
});

describe("structural rules", () => {
  const r = prng(99);
  const cases: [string, (b: IrBuilder) => number, Record<string, number[]>][] = [
    ["matmul 2-D", (b) => b.matmul(p(b, "a", [7, 3]), p(b, "b", [3, 5])), {}],
    ["matmul 1×1", (b) => b.matmul(p(b, "a", [1, 1]), p(b, "b", [1, 1])), {}],
    [
      "matmul, a shared 2-D right side",
      (b) => b.matmul(p(b, "a", [2, 7, 3]), p(b, "b", [3, 5])),
      {},
    ],
    ["matmul, batched", (b) => b.matmul(p(b, "a", [3, 4, 3]), p(b, "b", [3, 3, 5])), {}],
    ["matmul, broadcast left", (b) => b.matmul(p(b, "a", [1, 4, 3]), p(b, "b", [3, 3, 5])), {}],
    ["matmul, broadcast right", (b) => b.matmul(p(b, "a", [2, 3, 4, 3]), p(b, "b", [3, 3, 5])), {}],
    [
      "matmul, 2-D left, batched right",
      (b) => b.matmul(p(b, "a", [4, 3]), p(b, "b", [3, 3, 5])),
      {},
    ],
    ...[0, 1, 2].flatMap((axis) =>
      (["sum", "mean", "max"] as const).map(
        (fn): [string, (b: IrBuilder) => number, Record<string, number[]>] => [
          `reduce ${fn} axis ${axis}`,
          (b) => b.reduce(fn, p(b, "x", [3, 7, 5]), axis, true),
          {},
        ],
      ),
    ),
    ["reduce max of one", (b) => b.reduce("max", p(b, "x", [1]), 0, false), {}],
    ["softmax [7]", (b) => b.softmax(p(b, "x", [7])), {}],
    ["softmax [3, 5]", (b) => b.softmax(p(b, "x", [3, 5])), {}],
    ["softmax of one", (b) => b.softmax(p(b, "x", [1])), {}],
    ["causal mask under softmax", (b) => b.softmax(b.causalMask(p(b, "x", [2, 5, 5]))), {}],
    ["causal mask, not square", (b) => b.softmax(b.causalMask(p(b, "x", [3, 7]))), {}],
    ["permute", (b) => b.permute(p(b, "x", [2, 3, 5]), [2, 0, 1]), {}],
    ["reshape", (b) => b.reshape(p(b, "x", [3, 5]), [5, 3]), {}],
    [
      "concat axis 0",
      (b) => b.concat([p(b, "x", [1, 3]), p(b, "y", [7, 3]), p(b, "x", [1, 3])], 0),
      {},
    ],
    ["concat axis 1", (b) => b.concat([p(b, "x", [3, 2]), p(b, "y", [3, 5])], 1), {}],
    ["slice at the start", (b) => b.slice(p(b, "x", [3, 7]), 1, 0, 2), {}],
    ["slice in the middle", (b) => b.slice(p(b, "x", [7, 3]), 0, 2, 3), {}],
    ["slice at the end", (b) => b.slice(p(b, "x", [3, 7]), 1, 6, 1), {}],
    ["slice, all of it", (b) => b.slice(p(b, "x", [3, 7]), 1, 0, 7), {}],
    ["cast f32 → f32", (b) => b.make({ op: "cast", inputs: [p(b, "x", [7])], dtype: "f32" }), {}],
    ["cumsum axis 0", (b) => b.cumsum(p(b, "x", [7, 3]), 0), {}],
    ["cumsum axis 1", (b) => b.cumsum(p(b, "x", [3, 7]), 1), {}],
    ["cumsum of one", (b) => b.cumsum(p(b, "x", [1]), 0), {}],
  ];
  for (const [name, build] of cases) {
    it(name, () => {
      const probe = new IrBuilder();
      build(probe);
      const leaves = Object.fromEntries(
        probe.nodes
          .filter((n) => n.op === "param")
          .map((n) => [(n as { name: string }).name, uniform(r, n.shape)]),
      );
      checkGradients({ build, leaves });
    });
  }

  it("gather: repeated ids accumulate; the ids get no cotangent", () => {
    const ids = tensor([7], (i) => [2, 0, 2, 4, 2, 0, 1][i]!);
    const { differentiated, gradients, leaves } = checkGradients({
      build: (b) => b.gather(p(b, "table", [5, 3]), b.input("ids", "i32", [7])),
      leaves: { table: uniform(r, [5, 3]), ids },
    });
    expect([...differentiated.gradients.keys()]).toEqual(["table"]);
    // Row 3 is never read: zero; row 2 is the sum of three rows of the cotangent.
    const g = gradients.get("table")!.data;
    const c = leaves.get("cotangent")!.data;
    expect([...g.slice(9, 12)]).toEqual([0, 0, 0]);
    expect(g[6]).toBeCloseTo(c[0]! + c[6]! + c[12]!, 12);
  });

  it("gather through ids computed from a parameter: the cast to i32 stops the gradient", () => {
    const { differentiated } = checkGradients({
      build: (b) => b.gather(p(b, "table", [5, 3]), b.cast(p(b, "where", [4]), "i32")),
      leaves: { table: uniform(r, [5, 3]), where: tensor([4], (i) => [4.5, 0.2, 2.7, 4.1][i]!) },
    });
    expect(differentiated.unused).toEqual(["where"]);
  });

  it("scatter_add with repeated ids (2-D ids)", () => {
    checkGradients({
      build: (b) => b.scatterAdd(p(b, "src", [2, 3, 4]), b.input("ids", "i32", [2, 3]), 5),
      leaves: { src: uniform(r, [2, 3, 4]), ids: tensor([2, 3], (i) => [1, 4, 1, 0, 1, 3][i]!) },
    });
  });

  it("expert_matmul: rows of several experts, a dropped row and an idle expert", () => {
    const ids = tensor([7], (i) => [0, 2, 2, 0, -1, 3, 2][i]!);
    const { differentiated } = checkGradients({
      build: (b) => {
        const idsNode = b.input("ids", "i32", [7]);
        return b.expertMatmul(
          p(b, "x", [7, 3]),
          p(b, "w", [4, 3, 5]),
          idsNode,
          b.groupRows(idsNode, 4, 2),
        );
      },
      leaves: { x: uniform(r, [7, 3]), w: uniform(r, [4, 3, 5]), ids },
    });
    const wgrad = differentiated.graph.nodes.filter((n) => n.op === "expert_matmul_wgrad");
    expect(wgrad).toHaveLength(1);
  });

  it("expert_matmul_wgrad's own rules (second order)", () => {
    const ids = tensor([7], (i) => [1, 0, 1, 1, 2, 0, 1][i]!);
    checkGradients({
      build: (b) => {
        const idsNode = b.input("ids", "i32", [7]);
        const order = b.groupRows(idsNode, 3, 4);
        return b.expertMatmulWgrad(p(b, "x", [7, 2]), p(b, "g", [7, 5]), idsNode, order, 3);
      },
      leaves: { x: uniform(r, [7, 2]), g: uniform(r, [7, 5]), ids },
    });
  });

  it("reduce max splits a tie evenly among the maximal positions", () => {
    const { graph, loss, leaves } = withLoss({
      build: (b) => b.reduce("max", p(b, "x", [2, 3]), 1, true),
      leaves: { x: tensor([2, 3], (i) => [2, 2, 1, 0, 5, 5][i]!) },
    });
    leaves.set(
      "cotangent",
      tensor([2, 1], () => 3),
    );
    const d = differentiateGraph(graph, loss, { outputPrefix: "g:" });
    expect([...interpret(d.graph, leaves).outputs.get("g:x")!.data]).toEqual([
      1.5, 1.5, 0, 0, 1.5, 1.5,
    ]);
  });
});

describe("the walk", () => {
  it("sums cotangents where a value is used twice and stops at frozen parameters and inputs", () => {
    const b = new IrBuilder();
    const w = b.param("w", [3], true, "normal");
    const frozen = b.param("frozen", [3], false, "normal");
    const x = b.input("x", "f32", [3]);
    const y = b.binary("mul", b.binary("mul", w, w), b.binary("add", frozen, x));
    const loss = b.reduce("sum", y, 0, false);
    const g = b.finish();
    const d = differentiateGraph(g, loss, { outputPrefix: "g:" });
    expect([...d.gradients.keys()]).toEqual(["w"]);
    expect(d.unused).toEqual([]);
    // The forward graph is kept as it was, with the gradients appended.
    expect(d.graph.nodes.slice(0, g.nodes.length)).toEqual(g.nodes);
    const leaves = new Map([
      ["w", tensor([3], (i) => i + 1)],
      ["frozen", tensor([3], () => 0.5)],
      ["x", tensor([3], (i) => i)],
    ]);
    // d/dw w²(f + x) = 2w(f + x)
    expect([...interpret(d.graph, leaves).outputs.get("g:w")!.data]).toEqual([1, 6, 15]);
    // No new node reads the frozen parameter's or the input's cotangent: nothing is built for them.
    const fresh = d.graph.nodes.slice(g.nodes.length);
    expect(fresh.some((n) => n.op === "param" || n.op === "input")).toBe(false);
  });

  it("IrBuilder.extend keeps the graph's nodes, outputs and parameters", () => {
    const b = new IrBuilder();
    const w = b.param("w", [2], true, "normal");
    b.output("y", b.unary("exp", w));
    const g = b.finish();
    const more = IrBuilder.extend(g);
    expect(more.param("w", [2], true, "normal")).toBe(w);
    more.output("z", more.unary("neg", w));
    const extended = more.finish();
    expect(extended.nodes.slice(0, 2)).toEqual(g.nodes);
    expect(extended.outputs.map((o) => o.name)).toEqual(["y", "z"]);
    expect(g.nodes).toHaveLength(2); // the original is not modified
  });

  it("reports trainable parameters the loss does not reach as unused", () => {
    const b = new IrBuilder();
    const w = b.param("w", [2], true, "normal");
    b.param("lonely", [2], true, "normal");
    const loss = b.reduce("sum", w, 0, false);
    const d = differentiateGraph(b.finish(), loss);
    expect(d.unused).toEqual(["lonely"]);
    expect(d.graph.outputs).toEqual([]);
  });

  it("rejects a loss that is not one f32 value", () => {
    const b = new IrBuilder();
    const w = b.param("w", [2], true, "normal");
    expect(() => differentiateGraph(b.finish(), w)).toThrow(/one f32 value/);
  });

  it("throws a clear internal error where a needed rule is missing", () => {
    const b = new IrBuilder();
    const w = b.param("w", [2], true, "normal");
    const loss = b.reduce("sum", b.unary("tanh", w), 0, false);
    const rows = UNARY_FUNCTION_ROWS as Record<string, UnaryFunctionRow>;
    const tanh = rows.tanh!;
    rows.tanh = { ...tanh, vjp: [undefined] };
    try {
      expect(() => differentiateGraph(b.finish(), loss)).toThrow(
        /internal: no gradient rule for input 0 of unary tanh \(node 1\)/,
      );
    } finally {
      rows.tanh = tanh;
    }
  });
});

/** LayerNorm over the last axis: (x − μ)·rsqrt(σ² + ε)·γ + β. */
export function layerNorm(b: IrBuilder, x: number, gamma: number, beta: number): number {
  const mu = b.reduce("mean", x, -1, true);
  const centered = b.binary("sub", x, mu);
  const variance = b.reduce("mean", b.binary("mul", centered, centered), -1, true);
  const inv = b.unary("rsqrt", b.binary("add", variance, b.constant(1e-5)));
  return b.binary("add", b.binary("mul", b.binary("mul", centered, inv), gamma), beta);
}

/** Causal single-head attention over [batch, seq, d]. */
export function attention(b: IrBuilder, q: number, k: number, v: number): number {
  const d = b.shape(q).at(-1)!;
  const scores = b.binary(
    "mul",
    b.matmul(q, b.permute(k, [0, 2, 1])),
    b.constant(1 / Math.sqrt(d)),
  );
  return b.matmul(b.softmax(b.causalMask(scores)), v);
}

/** A top-1 MoE layer: softmax router, the top expert's probability as the gate. */
export function top1Moe(b: IrBuilder, x: number, router: number, experts: number): number {
  const [rows] = b.shape(x) as [number];
  const e = b.shape(experts)[0]!;
  const probs = b.softmax(b.matmul(x, router));
  const ids = b.reshape(b.topk(probs, 1), [rows]);
  const gate = b.reduce("max", probs, -1, true);
  const y = b.expertMatmul(x, experts, ids, b.groupRows(ids, e, 4));
  return b.binary("mul", y, gate);
}

describe("composites", () => {
  const r = prng(2024);

  it("LayerNorm at [7, 5] and [1, 3]", () => {
    for (const [rows, d] of [
      [7, 5],
      [1, 3],
    ] as const) {
      checkGradients({
        build: (b) => layerNorm(b, p(b, "x", [rows, d]), p(b, "gamma", [d]), p(b, "beta", [d])),
        leaves: {
          x: uniform(r, [rows, d]),
          gamma: uniform(r, [d], 0.5, 1.5),
          beta: uniform(r, [d]),
        },
      });
    }
  });

  it("softmax with a causal mask: attention at batch 2, sequence 5 and 1, head 3", () => {
    for (const seq of [5, 1]) {
      const s = [2, seq, 3];
      checkGradients({
        build: (b) => attention(b, p(b, "q", s), p(b, "k", s), p(b, "v", s)),
        leaves: { q: uniform(r, s), k: uniform(r, s), v: uniform(r, s) },
      });
    }
  });

  it("a GELU MLP", () => {
    checkGradients({
      build: (b) => {
        const x = b.input("x", "f32", [7, 4]);
        const h = b.unary(
          "gelu",
          b.binary("add", b.matmul(x, p(b, "w1", [4, 9])), p(b, "b1", [9])),
        );
        return b.binary("add", b.matmul(h, p(b, "w2", [9, 3])), p(b, "b2", [3]));
      },
      leaves: {
        x: uniform(r, [7, 4]),
        w1: uniform(r, [4, 9], -1, 1),
        b1: uniform(r, [9]),
        w2: uniform(r, [9, 3], -1, 1),
        b2: uniform(r, [3]),
      },
    });
  });

  it("SwiGLU", () => {
    checkGradients({
      build: (b) => {
        const x = p(b, "x", [7, 4]);
        const gate = b.unary("silu", b.matmul(x, p(b, "w1", [4, 5])));
        const up = b.matmul(x, p(b, "w3", [4, 5]));
        return b.matmul(b.binary("mul", gate, up), p(b, "w2", [5, 3]));
      },
      leaves: {
        x: uniform(r, [7, 4]),
        w1: uniform(r, [4, 5], -1, 1),
        w3: uniform(r, [4, 5], -1, 1),
        w2: uniform(r, [5, 3], -1, 1),
      },
    });
  });

  it("an embedding with repeated ids, then a tied output projection", () => {
    checkGradients({
      build: (b) => {
        const table = p(b, "table", [5, 3]);
        const h = b.unary("tanh", b.gather(table, b.input("ids", "i32", [7])));
        return b.matmul(h, b.permute(table, [1, 0]));
      },
      leaves: { table: uniform(r, [5, 3]), ids: tensor([7], (i) => [3, 1, 3, 3, 0, 1, 4][i]!) },
    });
  });

  it("a top-1 MoE: softmax router, gate, expert_matmul over grouped rows", () => {
    const x = uniform(r, [7, 4]);
    const router = uniform(r, [4, 3]);
    const leaves = { x, router, experts: uniform(r, [3, 4, 5], -1, 1) };
    // Routing must not change at θ ± ε: every row's top logit wins by a margin.
    for (let row = 0; row < 7; row++) {
      const logits = [0, 1, 2].map((e) =>
        [0, 1, 2, 3].reduce((acc, k) => acc + x.data[row * 4 + k]! * router.data[k * 3 + e]!, 0),
      );
      const [first, second] = logits.sort((a, b) => b - a);
      expect(first! - second!).toBeGreaterThan(1e-3);
    }
    const { differentiated } = checkGradients({
      build: (b) =>
        top1Moe(b, p(b, "x", [7, 4]), p(b, "router", [4, 3]), p(b, "experts", [3, 4, 5])),
      leaves,
    });
    expect([...differentiated.gradients.keys()].sort()).toEqual(["experts", "router", "x"]);
  });
});
