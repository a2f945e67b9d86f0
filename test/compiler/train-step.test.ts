// Train-step assembly: the differentiated graph's nodes keep their ids, AdamW is appended for
// each trainable parameter with a gradient, and mistakes in the gradient map are one line.
import { describe, expect, it } from "vitest";

import { IrBuilder } from "../../compiler/ir/builder.js";
import { verifyGraph } from "../../compiler/ir/verify.js";
import { ADAMW_DEFAULTS, ADAMW_INPUTS } from "../../compiler/library/optim/adamw.js";
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
        `input ${ADAMW_INPUTS.lr}`,
        `input ${ADAMW_INPUTS.biasCorrection1}`,
        `input ${ADAMW_INPUTS.biasCorrection2}`,
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
