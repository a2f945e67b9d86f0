// Autodiff of graphs that lowering produces from .moe source (std.nn layers, MoE layers whose
// experts stack into expert_matmul over group_rows, dense and sparse routers), checked against
// float64 central differences like the hand-built cases in differentiate-graph.test.ts.
import { describe, expect, it } from "vitest";

import { leaves, lower } from "../routing-fixtures.js";
import { checkGradients } from "./gradient-check.js";

const moeSource = (router: string) => `import std.nn { FFN }
import std.route { MoE, TopK, ExpertChoice, Soft }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  moe = MoE(router: ${router}, experts: [FFN(4, 3, act: gelu); 4])
  y = moe(x) }`;

describe("lowered models", () => {
  for (const [router, N] of [
    ["Soft()", 7],
    ["TopK(1)", 7],
    ["TopK(2)", 5],
    ["TopK(2)", 1],
    ["ExpertChoice(capacity: 1.5)", 7],
  ] as const) {
    it(`an MoE layer with ${router} at N = ${N}: every parameter's gradient`, () => {
      const m = lower(moeSource(router), { N });
      const y = m.graph.outputs.find((o) => o.name === "y")!.node;
      const { differentiated } = checkGradients({
        base: m.graph,
        build: () => y,
        leaves: Object.fromEntries(leaves(m)),
      });
      const params = m.graph.nodes.filter((n) => n.op === "param" && n.trainable);
      expect(params.length).toBeGreaterThan(0);
      expect([...differentiated.gradients.keys()].sort()).toEqual(
        params.map((n) => (n as { name: string }).name).sort(),
      );
      if (router !== "Soft()")
        expect(differentiated.graph.nodes.some((n) => n.op === "expert_matmul_wgrad")).toBe(true);
    });
  }
});
