// Reverse mode through every router and adapter family as lowered from .moe source, against
// float64 central differences (gradient-check.ts): top-k (k, renormalisation, capacity drops),
// expert choice, task routing at each level, task maps, grouped two-level routing (pinned too),
// mixture of tokens (continuous and discrete), shared experts, hash routing, LoRA (merged and
// unmerged, targeted), bottleneck and per-task adapters, the balance and z losses and distill.
//
// Routers that make a discrete choice (a `topk`) are only differentiable away from ties, so
// every case takes the first seed whose top-k margin (the gap between consecutive values up to
// the first one left out) exceeds 1e-3, and asserts that every integer value of the graph
// (experts, ranks, row groupings) is the same at each θ ± ε·u the finite differences visit.
// The model's f32 inputs are made trainable too, so the layer's input gradient is checked.
import * as path from "node:path";
import { describe, expect, it } from "vitest";

import { differentiateGraph } from "../../../compiler/ir/differentiate-graph.js";
import { IrBuilder } from "../../../compiler/ir/builder.js";
import { type IrGraph, type IrNode, inputsOf, numel } from "../../../compiler/ir/graph.js";
import { opRow } from "../../../compiler/ir/ops.js";
import { verifyGraph } from "../../../compiler/ir/verify.js";
import type { LowerOptions, LoweredModel } from "../../../compiler/lower/lower-model.js";
import { analyze, lowerTrain, nodeFileSystem } from "../../../compiler/pipeline.js";
import { type HostTensor, interpret } from "../../../runtime/reference/interpret.js";
import { lowerFile, values } from "../routing-fixtures.js";
import { checkGradients, topkMargin, withTrainableInputs } from "./gradient-check.js";
import {
  experts,
  groupedModel,
  instructedModel,
  loraModel,
  moeModel,
  motModel,
  taskModel,
} from "../../family-models.js";

const file = path.join(import.meta.dirname, "../../../examples/__families__.moe");

/** Lowers model source at `dims`; lowering reports exactly the diagnostic codes `expected`. */
function lowerSource(
  source: string,
  dims: Record<string, number>,
  options: LowerOptions = {},
  expected: string[] = [],
): LoweredModel {
  const { lowered, diagnostics } = lowerFile(source, file, dims, undefined, options);
  expect(diagnostics.map((d) => d.code)).toEqual(expected);
  expect(verifyGraph(lowered!.graph)).toEqual([]);
  return lowered!;
}

const nameSeed = (name: string) => [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 17);

/**
 * Values for every param and input of `graph`, by name (so two lowerings of one model get the
 * same values): f32 uniform in [-1, 1), integer inputs from `ints`.
 */
function seededLeaves(
  graph: IrGraph,
  seed: number,
  ints: Record<string, number[]> = {},
): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const n of graph.nodes) {
    if (n.op !== "param" && n.op !== "input") continue;
    if (n.dtype === "i32") {
      expect(ints[n.name], `integer input ${n.name}`).toBeDefined();
      out.set(n.name, { shape: n.shape, data: Float64Array.from(ints[n.name]!) });
    } else
      out.set(n.name, {
        shape: n.shape,
        data: values(numel(n.shape), nameSeed(n.name) ^ (seed * 7919)),
      });
  }
  return out;
}

/** Every integer value of the graph: the routing decisions and everything computed from them. */
function decisions(graph: IrGraph, at: HostTensor[]): string {
  return graph.nodes
    .filter((n) => n.dtype === "i32")
    .map((n) => `${n.id}:${at[n.id]!.data.join(",")}`)
    .join(";");
}

/**
 * Every op that takes integer inputs (ids, row orders) declares them "none". A cast from i32
 * (a mask, a count) is exempt: its value depends on no parameter, so the pass never walks it.
 */
function expectIntegerInputsUndifferentiated(graph: IrGraph): void {
  for (const n of graph.nodes) {
    if (n.op === "cast") continue;
    const rules = opRow(n.op).vjp?.(n);
    inputsOf(n).forEach((input, k) => {
      if (graph.nodes[input]!.dtype !== "i32" || n.dtype !== "f32") return;
      expect(rules?.[k], `input ${k} of ${n.op} (node ${n.id})`).toBe("none");
    });
  }
}

const trainableNames = (graph: IrGraph) =>
  graph.nodes.flatMap((n) =>
    n.op === "param" && n.trainable && n.dtype === "f32" ? [n.name] : [],
  );

interface FamilyCase {
  source: string;
  dims: Record<string, number>;
  /** Integer inputs (task ids, token ids). */
  ints?: Record<string, number[]>;
  options?: LowerOptions;
  /** Diagnostic codes lowering reports (warnings). */
  diagnostics?: string[];
  /** The output differentiated (default `y`). */
  output?: string;
  /** Trainable parameters the output does not reach. */
  unused?: string[];
  /** A further condition on a seed's outputs (some rows over capacity). */
  accept?(outputs: Map<string, HostTensor>): boolean;
}

/**
 * Lowers the case, picks the first seed with a routing margin > 1e-3 (and `accept`), checks
 * every gradient against central differences with the routing unchanged at θ ± ε·u, and that
 * the gradients are exactly the trainable parameters (and f32 inputs) the output reaches.
 */
function checkFamily(c: FamilyCase) {
  const m = lowerSource(c.source, c.dims, c.options, c.diagnostics);
  const graph = withTrainableInputs(m.graph);
  const y = graph.outputs.find((o) => o.name === (c.output ?? "y"))!.node;
  let seed: number | undefined;
  let leaves = new Map<string, HostTensor>();
  let at: HostTensor[] = [];
  for (let s = 1; s <= 64 && seed === undefined; s++) {
    leaves = seededLeaves(graph, s, c.ints);
    const run = interpret(graph, leaves);
    if (topkMargin(graph, run.values) > 1e-3 && (c.accept?.(run.outputs) ?? true)) {
      seed = s;
      at = run.values;
    }
  }
  expect(seed, "a seed with routing margin > 1e-3").toBeDefined();
  expect(topkMargin(graph, at)).toBeGreaterThan(1e-3);
  const routing = decisions(graph, at);
  let visits = 0;
  const result = checkGradients({
    base: graph,
    build: () => y,
    leaves: Object.fromEntries(leaves),
    seed,
    atPerturbed(moved) {
      expect(decisions(graph, interpret(graph, moved).values)).toBe(routing);
      visits++;
    },
  });
  expect(visits).toBe(4);
  const unused = c.unused ?? [];
  expect([...result.differentiated.gradients.keys()].sort()).toEqual(
    trainableNames(graph)
      .filter((n) => !unused.includes(n))
      .sort(),
  );
  expect(result.differentiated.unused.sort()).toEqual([...unused].sort());
  expectIntegerInputsUndifferentiated(graph);
  return { m, graph, seed: seed!, leaves, result };
}

describe("top-k token choice", () => {
  for (const k of [1, 2])
    for (const renormalize of [true, false])
      for (const N of [7, 1]) {
        it(`TopK(k: ${k}, renormalize: ${renormalize}) at N = ${N}`, () => {
          const { result } = checkFamily({
            source: moeModel(`TopK(k: ${k}, renormalize: ${renormalize})`),
            dims: { N },
            diagnostics: k === 1 && renormalize ? ["W0504"] : [],
          });
          expect(
            result.differentiated.graph.nodes.some((n) => n.op === "expert_matmul_wgrad"),
          ).toBe(true);
          // The gate learns from the output, except top-1 renormalised: p / p = 1 leaves it
          // nothing (W0504; docs/routing.md), which is why top-1 keeps p by default.
          const largest = (name: string) =>
            Math.max(...Array.from(result.gradients.get(name)!.data, Math.abs));
          const gate = largest("moe.router.gate.weight") / largest("x");
          if (k === 1 && renormalize) expect(gate).toBeLessThan(1e-6);
          else if (N > 1) expect(gate).toBeGreaterThan(1e-3);
        });
      }

  it("TopK(k: 2, softmax: after) at N = 7", () => {
    checkFamily({ source: moeModel("TopK(k: 2, softmax: after)"), dims: { N: 7 } });
  });

  for (const overflow of ["residual", "zero"])
    for (const k of [1, 2]) {
      it(`TopK(k: ${k}, capacity: 1.0, overflow: ${overflow}) with rows over capacity`, () => {
        const dropped = (o: Map<string, HostTensor>) => o.get("routing:moe.dropped")!.data[0]!;
        const { graph, leaves } = checkFamily({
          source: moeModel(`TopK(k: ${k}, capacity: 1.0, overflow: ${overflow})`, "", 3),
          dims: { N: 9 },
          options: { routingStats: true },
          accept: (o) => dropped(o) > 0,
        });
        expect(dropped(interpret(graph, leaves).outputs)).toBeGreaterThan(0);
      });
    }
});

describe("expert choice", () => {
  for (const [capacity, N] of [
    [1.5, 7],
    [0.5, 9],
    [1, 1],
  ] as const) {
    it(`ExpertChoice(capacity: ${capacity}) at N = ${N}`, () => {
      checkFamily({ source: moeModel(`ExpertChoice(capacity: ${capacity})`), dims: { N } });
    });
  }
});

describe("task routing", () => {
  // A mixed batch: every task, and one example without a task (routed as task 0).
  const task = [2, 0, -1, 1];
  for (const router of [
    "TaskRoute(level: token, k: 2, embed: 3)",
    "TaskRoute(level: token, k: 1, embed: 2)",
    "TaskRoute(level: sequence, k: 1, embed: 2)",
    "TaskRoute(level: sequence, k: 2, embed: 3)",
    "TaskRoute(level: task, k: 2)",
    "TaskRoute(level: task, k: 1)",
    "TopK(k: 2, task_embed: 3)",
  ]) {
    it(`${router} in a mixed-task batch`, () => {
      checkFamily({ source: taskModel(router), dims: { B: 4, T: 3 }, ints: { task } });
    });
  }

  it("TaskRoute(level: token) at B = 1, T = 1", () => {
    checkFamily({
      source: taskModel("TaskRoute(level: token, k: 2, embed: 3)"),
      dims: { B: 1, T: 1 },
      ints: { task: [1] },
    });
  });

  it("TaskMap: each example's experts; an expert no task in the batch maps to gets zero", () => {
    const { result } = checkFamily({
      source: taskModel("TaskMap({ a: [0], b: [1, 2], c: [2, 3] })"),
      dims: { B: 4, T: 3 },
      ints: { task: [2, 0, 1, 0] },
    });
    // Without task c in the batch expert 3 has weight 0 everywhere: a gradient of exactly 0.
    const l = new Map(result.leaves);
    l.set("task", { shape: [4], data: Float64Array.from([1, 0, 1, 0]) });
    const out = interpret(result.differentiated.graph, l).outputs;
    for (const [name] of result.differentiated.gradients)
      if (name.startsWith("moe.experts.3."))
        expect(
          out.get(`grad:${name}`)!.data.every((v) => v === 0),
          name,
        ).toBe(true);
    expect(out.get("grad:moe.experts.0.up.weight")!.data.some((v) => v !== 0)).toBe(true);
  });
});

describe("grouped two-level routing", () => {
  for (const router of [
    "Grouped()",
    "Grouped(outer: normalize, inner: normalize)",
    "Grouped(outer: softmax, inner: normalize)",
  ]) {
    it(`${router} over FFN experts in groups of 2 and 3`, () => {
      checkFamily({
        source: groupedModel(router, `[[FFN(4, 3, act: gelu); 2], [FFN(4, 3, act: gelu); 3]]`),
        dims: { N: 7 },
      });
    });
  }

  it("Grouped(pin: [0.7, 0.3]): the group gate does not reach the output", () => {
    checkFamily({
      source: groupedModel("Grouped(pin: [0.7, 0.3])", `[[FFN(4, 3, act: gelu); 2]; 2]`),
      dims: { N: 7 },
      unused: ["moe.router.group_gate.weight"],
    });
  });

  it("Grouped LoRA experts on one base (factorised: the base runs once)", () => {
    const { graph } = checkFamily({
      source: groupedModel(
        "Grouped(inner: normalize)",
        `[[base with LoRA(r: 2, alpha: 4.0); 2]; 2]`,
      ),
      dims: { N: 5 },
      // `base` itself is applied only through the experts.
    });
    expect(trainableNames(graph).filter((n) => n.includes("lora_")).length).toBe(8);
  });

  // The instruction is an input too: its gradient is checked with x's.
  for (const [router, groups] of [
    ["Grouped(on: instruction)", `[[FFN(4, 3, act: gelu); 2], [FFN(4, 3, act: gelu); 3]]`],
    [
      "Grouped(outer: normalize, inner: normalize, on: instruction)",
      `[[FFN(4, 3, act: gelu); 2]; 2]`,
    ],
    ["Grouped(inner: normalize, on: instruction)", `[[base with LoRA(r: 2, alpha: 4.0); 2]; 2]`],
  ]) {
    it(`${router} over ${groups}: one decision per sequence`, () => {
      checkFamily({ source: instructedModel(router!, groups!), dims: { B: 3, T: 2 } });
    });
  }

  it("Grouped(pin: [0.7, 0.3], on: instruction): only the expert gate sees the instruction", () => {
    checkFamily({
      source: instructedModel(
        "Grouped(pin: [0.7, 0.3], on: instruction)",
        `[[FFN(4, 3, act: gelu); 2]; 2]`,
      ),
      dims: { B: 2, T: 3 },
      unused: ["moe.router.group_gate.weight"],
    });
  });
});

describe("mixture of tokens", () => {
  for (const router of [
    "TokenMix(group: 3)",
    "TokenMix(group: 3, temperature: 0.5, emit: softmax_experts)",
    "TokenMix(group: 2, axis: sequence)",
    "TokenMix(group: 3, discrete: true)",
    "TokenMix(group: 2, discrete: true, axis: sequence)",
  ]) {
    it(router, () => {
      const sequence = router.includes("sequence");
      checkFamily({
        source: motModel(router),
        dims: { B: 3, T: sequence ? 4 : 2 },
        diagnostics: sequence ? ["W0502"] : [],
        // The τ → 0 limit gives each expert its token with weight 1: the controller only
        // picks (a topk), so like a hash router it gets no gradient (docs/routing.md).
        unused: router.includes("discrete") ? ["moe.router.controller.weight"] : [],
      });
    });
  }

  it("TokenMix(group: 2) padding the batch of 3", () => {
    checkFamily({
      source: motModel("TokenMix(group: 2)"),
      dims: { B: 3, T: 2 },
      diagnostics: ["W0601"],
    });
  });
});

describe("shared experts and hash routing", () => {
  it("TopK(2) with a shared expert: the shared expert sees every token", () => {
    checkFamily({
      source: moeModel("TopK(2)", ", shared: [FFN(4, 5, act: gelu)]"),
      dims: { N: 7 },
    });
  });

  it("Soft() with two shared experts", () => {
    checkFamily({
      source: moeModel("Soft()", ", shared: [FFN(4, 5, act: gelu), FFN(4, 2)]"),
      dims: { N: 5 },
    });
  });

  it("Hash: no router parameters, every expert its tokens' gradient", () => {
    const tokens = Array.from({ length: 14 }, (_, i) => (i * 7919 + 13) % 50257);
    const { graph } = checkFamily({
      source: `import std.nn { FFN }
import std.route { MoE, Hash }
model M() { in x: f32[B, T, 4]  in tokens: i32[B, T]  out y: f32[B, T, 4]
  moe = MoE(router: Hash(seed: 2), experts: ${experts(4)})
  y = moe(x, tokens) }`,
      dims: { B: 2, T: 7 },
      ints: { tokens },
    });
    expect(trainableNames(graph).filter((n) => n.includes("router"))).toEqual([]);
  });
});

describe("adapters", () => {
  it("LoRA merged and unmerged: the same gradients; a frozen targeted base gets none", () => {
    const unmerged = checkFamily({ source: loraModel, dims: { N: 7 } });
    const merged = checkFamily({
      source: loraModel,
      dims: { N: 7 },
      options: { mergeAdapters: true },
    });
    // Merging changed the graph: the Linear bases now multiply by W + (alpha / r)·B·A.
    expect(merged.graph.nodes.length).not.toBe(unmerged.graph.nodes.length);
    expect(merged.seed).toBe(unmerged.seed);
    const a = unmerged.result.gradients;
    const b = merged.result.gradients;
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [name, g] of a) {
      const h = b.get(name)!.data;
      const scale = Math.max(...Array.from(g.data, Math.abs));
      expect(scale, name).toBeGreaterThan(0);
      g.data.forEach((v, i) => expect(Math.abs(v - h[i]!) / scale, name).toBeLessThan(1e-12));
    }
    // The frozen pair trains only the LoRA on its q.
    const keys = [...a.keys()].filter((n) => n.startsWith("pair."));
    expect(keys.sort()).toEqual(["pair.q.lora_A.weight", "pair.q.lora_B.weight"]);
  });

  it("Bottleneck adapter (LayerNorm, down, relu, up, residual), and one without its norm", () => {
    checkFamily({
      source: `import std.adapt { Bottleneck }
model M() { in x: f32[B, T, 6]  out y: f32[B, T, 6]
  a = Bottleneck(6, 3, act: gelu)
  b = Bottleneck(6, 1, norm: false)
  y = b(a(x)) }`,
      dims: { B: 1, T: 7 },
    });
  });
});

describe("per-task adapters in a mixed batch", () => {
  const task = [2, 0, -1, 1, 0];
  for (const [name, adapter] of [
    [
      "per task Bottleneck, per-task widths",
      "adapter = per task Bottleneck(4, r: { a: 2, b: 3, c: 1 })",
    ],
    ["per task Bottleneck, one width", "adapter = per task Bottleneck(4, r: 2)"],
    ["per task LoRA", "adapter = Linear(4, 4) with per task LoRA(r: 2, alpha: 4.0)"],
    [
      "Linear with per task Bottleneck, per-task widths",
      "adapter = Linear(4, 4) with per task Bottleneck(4, r: { a: 2, b: 3, c: 1 })",
    ],
    [
      "per task LoRA with targets, per-task ranks",
      'adapter = frozen Pair(4) with per task LoRA(r: { a: 2, b: 3, c: 1 }, targets: ["q", "o"])',
    ],
  ] as const) {
    it(`${name}: each task's adapter gets the gradient of its own rows only`, () => {
      const source = `import std.nn { Linear }
import std.adapt { Bottleneck, LoRA }
tasks Lang { a, b, c }
block Pair(d: Dim) { in x: f32[..., d]  out y: f32[..., d]
  q = Linear(d, d)
  o = Linear(d, d)
  y = o(gelu(q(x))) }
model M() { in x: f32[B, T, 4]  in task: Lang[B]  out y: f32[B, T, 4]
  head = Linear(4, 4)
  ${adapter}
  y = head(adapter(x, task)) }`;
      const T = 3;
      const mixed = checkFamily({ source, dims: { B: 5, T }, ints: { task } });
      // The same gradients as the sum over the examples alone, each through its own task's
      // adapter (and a task-less example through none).
      const single = withTrainableInputs(lowerSource(source, { B: 1, T }).graph);
      const b = IrBuilder.extend(single);
      const y = single.outputs.find((o) => o.name === "y")!.node;
      const cot = b.input("c", "f32", b.shape(y));
      const loss = b.reduce("sum", b.reshape(b.binary("mul", y, cot), [T * 4]), 0, false);
      const d = differentiateGraph(b.finish(), loss, { outputPrefix: "grad:" });
      const sums = new Map<string, Float64Array>();
      const l = mixed.result.leaves;
      const rows = (t: HostTensor, i: number) => t.data.slice(i * T * 4, (i + 1) * T * 4);
      task.forEach((id, i) => {
        const one = new Map(l);
        one.set("x", { shape: [1, T, 4], data: rows(l.get("x")!, i) });
        one.set("c", { shape: [1, T, 4], data: rows(l.get("cotangent")!, i) });
        one.set("task", { shape: [1], data: Float64Array.from([id]) });
        const out = interpret(d.graph, one).outputs;
        for (const [p] of d.gradients) {
          if (p === "x") continue;
          const g = out.get(`grad:${p}`)!.data;
          const acc = sums.get(p) ?? new Float64Array(g.length);
          g.forEach((v, j) => (acc[j] += v));
          sums.set(p, acc);
        }
      });
      const names = ["a", "b", "c"];
      for (const [p, g] of mixed.result.gradients) {
        if (p === "x") continue;
        const want = sums.get(p) ?? new Float64Array(g.data.length);
        const scale = Math.max(1e-300, ...Array.from(g.data, Math.abs));
        g.data.forEach((v, j) => expect(Math.abs(v - want[j]!) / scale, p).toBeLessThan(1e-10));
        const owner = names.find((t) => p.includes(`.${t}.`));
        // Every task is in the batch: each adapter has a gradient that is not zero.
        if (owner) expect(scale, p).toBeGreaterThan(1e-300);
      }
    });
  }
});

// ---------------------------------------------------------------- train programs

function lowerProgram(source: string, dims: Record<string, number>) {
  const analysis = analyze([file], nodeFileSystem(new Map([[file, source]])));
  expect(analysis.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  const r = lowerTrain(analysis, file, undefined, new Map(), new Map(Object.entries(dims)));
  if ("error" in r) throw new Error(r.error);
  expect(r.diagnostics).toEqual([]);
  expect(verifyGraph(r.train!.graph)).toEqual([]);
  return r.train!;
}

/** checkGradients of output `name` of a train program, with a routing margin as above. */
function checkProgram(graph: IrGraph, name: string, ints: Record<string, number[]>, scale = 1) {
  const y = graph.outputs.find((o) => o.name === name)!.node;
  for (let seed = 1; seed <= 64; seed++) {
    const leaves = seededLeaves(graph, seed, ints);
    for (const [n, t] of leaves)
      if (graph.nodes.find((x) => "name" in x && x.name === n)!.dtype === "f32")
        leaves.set(n, { shape: t.shape, data: t.data.map((v) => v * scale) });
    const at = interpret(graph, leaves).values;
    if (!(topkMargin(graph, at) > 1e-3)) continue;
    const routing = decisions(graph, at);
    return checkGradients({
      base: graph,
      build: () => y,
      leaves: Object.fromEntries(leaves),
      seed,
      atPerturbed: (moved) =>
        expect(decisions(graph, interpret(graph, moved).values)).toBe(routing),
    });
  }
  throw new Error("no seed with a routing margin > 1e-3");
}

describe("losses of train programs", () => {
  const moeProgram = `import std.nn { FFN, Linear }
import std.route { MoE, TopK }
import std.optim { AdamW }
model Net() {
  in x: f32[N, 6]
  out y: f32[N, 3]
  moe = MoE(router: TopK(k: 2, balance: 0.5, z_loss: 0.1), experts: [FFN(6, 5, act: gelu); 4])
  head = Linear(6, 3)
  y = head(x + moe(x))
}
train Fit() {
  in x: f32[N, 6]
  in labels: i32[N]
  net = Net()
  loss = cross_entropy(net(x), labels)
  optimizer = AdamW()
}
`;
  it("the balance and z losses reach the router gate only; the total loss every parameter", () => {
    const t = lowerProgram(moeProgram, { N: 7 });
    expect(t.terms.map((x) => x.name)).toEqual(["aux:net.moe.balance", "aux:net.moe.z"]);
    const labels = [0, 2, 1, 1, 0, 2, 2];
    const all = t.params.filter((p) => p.trainable).map((p) => p.name);
    const total = checkProgram(t.graph, "loss", { labels });
    expect([...total.differentiated.gradients.keys()].sort()).toEqual([...all].sort());
    for (const term of ["aux:net.moe.balance", "aux:net.moe.z"]) {
      const aux = checkProgram(t.graph, term, { labels });
      expect([...aux.differentiated.gradients.keys()], term).toEqual([
        "net.moe.router.gate.weight",
      ]);
      expect(aux.gradients.get("net.moe.router.gate.weight")!.data.some((v) => v !== 0)).toBe(true);
    }
  });

  it("distill: the student gets every gradient, the frozen teachers none", () => {
    const t = lowerProgram(
      `import std.nn { FFN, Linear }
import std.route { MoE, TopK }
import std.optim { AdamW }
model Net() { in x: f32[N, 5]  out y: f32[N, 4]
  moe = MoE(router: TopK(k: 1), experts: [FFN(5, 3, act: gelu); 3])
  head = Linear(5, 4)
  y = head(x + moe(x)) }
train KD() {
  in x: f32[N, 5]
  in labels: i32[N]
  student = Net()
  big = frozen Net()
  small = frozen Net()
  kd = distill(student(x), [big(x), small(x)], temperature: 2.0, weights: [0.7, 0.3])
  loss = 0.5 * kd + 0.5 * cross_entropy(student(x), labels)
  optimizer = AdamW()
}
`,
      { N: 7 },
    );
    const r = checkProgram(t.graph, "loss", { labels: [3, 0, 1, 2, 2, 0, 1] });
    const student = t.params.filter((p) => p.name.startsWith("student.")).map((p) => p.name);
    expect(t.params.filter((p) => !p.name.startsWith("student.")).every((p) => !p.trainable)).toBe(
      true,
    );
    expect([...r.differentiated.gradients.keys()].sort()).toEqual(student.sort());
    expect(r.differentiated.unused).toEqual([]);
    // The loss does depend on the teachers: differentiated as if trainable, they get gradients
    // that are not zero, so it is freezing that stops them.
    const all = differentiateGraph(r.forward, r.loss, {
      trainable: () => true,
      outputPrefix: "g:",
    });
    const out = interpret(all.graph, r.leaves).outputs;
    for (const teacher of ["big", "small"])
      expect(
        out.get(`g:${teacher}.head.weight`)!.data.some((v) => v !== 0),
        teacher,
      ).toBe(true);
  });
});
