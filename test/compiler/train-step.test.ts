// Train-step assembly: the differentiated graph's nodes keep their ids, AdamW is appended for
// each trainable parameter with a gradient, and mistakes in the gradient map are one line.
import { describe, expect, it } from "vitest";

import { IrBuilder } from "../../compiler/ir/builder.js";
import { verifyGraph } from "../../compiler/ir/verify.js";
import { compileGraph } from "../../compiler/kernels/compile-graph.js";
import {
  ADAMW_DEFAULTS,
  ADAMW_STEP_INPUT,
  type AdamWParam,
  appendAdamW,
} from "../../compiler/library/optim/adamw.js";
import { assembleTrainStep } from "../../compiler/library/optim/train-step.js";

/** loss = mean((x·w + b − y)²) with dw, db by hand, and a frozen scale and an unused param. */
function regression() {
  const b = new IrBuilder();
  const x = b.input("x", "f32", [6, 3]);
  const y = b.input("y", "f32", [6, 2]);
  const w = b.param("w", [3, 2], true, "normal");
  const bias = b.param("b", [2], true, "zeros");
  const scale = b.param("scale", [2], false, "ones");
  b.param("unused", [5], true, "normal");
  const r = b.binary("sub", b.binary("mul", b.binary("add", b.matmul(x, w), bias), scale), y);
  b.output("loss", b.reduce("mean", b.reshape(b.binary("mul", r, r), [1, 12]), 1, false));
  const dr = b.binary("mul", b.binary("mul", r, b.constant(2 / 12)), scale);
  const dw = b.matmul(b.permute(x, [1, 0]), dr);
  const db = b.reduce("sum", dr, 0, false);
  return { graph: b.finish(), dw, db };
}

const SPECS = [
  { name: "w", trainable: true, decay: true },
  { name: "b", trainable: true, decay: false, lrScale: 0.5 },
  { name: "scale", trainable: false, decay: false },
  { name: "unused", trainable: true, decay: true },
];

describe("assembleTrainStep", () => {
  it("appends AdamW for each parameter with a gradient, keeping the graph's nodes", () => {
    const { graph, dw, db } = regression();
    const step = assembleTrainStep(
      graph,
      new Map([
        ["w", dw],
        ["b", db],
      ]),
      SPECS,
      ADAMW_DEFAULTS,
    );
    expect(verifyGraph(step)).toEqual([]);
    expect(step.nodes.slice(0, graph.nodes.length)).toEqual(graph.nodes);
    expect(step.outputs.map((o) => o.name)).toEqual([
      "loss",
      "grad_norm",
      "update:w",
      "exp_avg:w",
      "exp_avg_sq:w",
      "update:b",
      "exp_avg:b",
      "exp_avg_sq:b",
    ]);
    const leaves = step.nodes.flatMap((n) =>
      n.op === "param" || n.op === "input" ? [`${n.op} ${n.name}`] : [],
    );
    expect(leaves).toEqual(
      expect.arrayContaining([
        `input ${ADAMW_STEP_INPUT}`,
        "param exp_avg.w",
        "param exp_avg_sq.b",
      ]),
    );
    // Optimizer state is frozen as far as the graph goes: only the optimizer writes it.
    for (const n of step.nodes)
      if (n.op === "param" && n.name.startsWith("exp_avg")) expect(n.trainable).toBe(false);
    // The unused parameter gets no state, as in PyTorch (a parameter without .grad).
    expect(leaves.some((l) => l.includes("exp_avg.unused"))).toBe(false);
  });

  it("rejects gradients of frozen or unknown parameters and of the wrong shape", () => {
    const { graph, dw, db } = regression();
    const run = (grads: [string, number][]) => () =>
      assembleTrainStep(graph, new Map(grads), SPECS, ADAMW_DEFAULTS);
    expect(run([["scale", db]])).toThrow("gradient for frozen parameter scale");
    expect(run([["ghost", db]])).toThrow(
      "gradient for ghost, which is not a parameter of the graph",
    );
    expect(run([["w", db]])).toThrow("gradient of w has shape [2], the parameter [3, 2]");
    expect(run([["w", dw]])).not.toThrow();
  });
});

describe("AdamW over flat vectors", () => {
  /** `count` parameters of assorted shapes and settings, their gradients as inputs. */
  function optimizer(count: number, stack?: { frozen: boolean }) {
    const b = new IrBuilder();
    const params: AdamWParam[] = [];
    for (let i = 0; i < count; i++) {
      const shape = i % 3 === 0 ? [i + 1, 5] : [2 * i + 1];
      params.push({
        name: `p${i}`,
        param: b.param(`p${i}`, shape, true, "normal"),
        grad: b.binary("mul", b.input(`g${i}`, "f32", shape), b.constant(2)),
        decay: i % 2 === 0,
        ...(i % 4 === 1 ? { lrScale: 10 } : {}),
        ...(i === 3 ? { rows: [1, 2] } : {}),
      });
    }
    // Three experts' weights stacked as an expert matmul reads them.
    if (stack) {
      const experts = [0, 1, 2].map((e) =>
        b.param(`e${e}`, [4, 3], !stack.frozen || e !== 1, "normal"),
      );
      const stacked = b.concat(
        experts.map((e) => b.reshape(e, [1, 4, 3])),
        0,
      );
      b.output("read", b.reduce("sum", stacked, 0, false));
      experts.forEach((e, i) => {
        if (stack.frozen && i === 1) return;
        params.push({
          name: `e${i}`,
          param: e,
          grad: b.unary("neg", b.input(`ge${i}`, "f32", [4, 3])),
          decay: true,
        });
      });
    }
    appendAdamW(b, params, { ...ADAMW_DEFAULTS, maxNorm: 1 });
    return compileGraph(b.finish());
  }

  it("is the same few kernels for 4 tensors or 40", () => {
    const small = optimizer(4);
    const large = optimizer(40);
    // The gradients' own kernels, one per tensor (the ×2), each storing into the flat
    // gradient; then ‖g‖, the two moments and the update.
    expect(small.kernels.length - 4).toBe(4);
    expect(large.kernels.length - 40).toBe(4);
    // Every parameter, and each moment, lives in one buffer.
    const buffers = (prefix: string) =>
      new Set(large.params.filter((p) => p.name.startsWith(prefix)).map((p) => p.buffer));
    expect(buffers("p").size).toBe(1);
    expect(buffers("exp_avg.").size).toBe(1);
    expect(buffers("exp_avg_sq.").size).toBe(1);
  });

  it("takes a stack of experts' weights in whole, in the stack's order", () => {
    const program = optimizer(5, { frozen: false });
    const at = (name: string) => program.params.find((p) => p.name === name)!;
    expect(
      new Set(program.params.filter((p) => /^(p|e)\d/.test(p.name)).map((p) => p.buffer)).size,
    ).toBe(1);
    expect(at("e1").byteOffset - at("e0").byteOffset).toBe(4 * 12);
    expect(at("e2").byteOffset - at("e1").byteOffset).toBe(4 * 12);
    // No kernel computes the stack: the expert read binds the flat parameter buffer.
    expect(program.kernels.length - 5 - 3).toBe(5);
  });

  it("falls back to per-tensor updates when a stack has a frozen member", () => {
    const program = optimizer(5, { frozen: true });
    const at = (name: string) => program.params.find((p) => p.name === name)!;
    // The stack is still one pack; the update is per tensor, so more kernels.
    expect(at("e0").buffer).toBe(at("e1").buffer);
    expect(at("p0").buffer).not.toBe(at("p1").buffer);
    expect(program.kernels.length).toBeGreaterThan(5 + 2 + 5);
  });
});
