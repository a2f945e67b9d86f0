// Naming where a step went non-finite: lowering records each node's origin (the expression,
// and the applications it was inlined from), autodiff and the optimizer keep them with a role,
// and the reference replay in f32 stops at the first node with a NaN or an infinity.
import { describe, expect, it } from "vitest";

import { analyze, assembleTrain, lowerTrain, nodeFileSystem } from "../../../compiler/pipeline.js";
import type { IrOrigin } from "../../../compiler/ir/graph.js";
import type { HostTensor } from "../../../runtime/reference/interpret.js";
import { firstNonFinite } from "../../../runtime/train/find-non-finite.js";

const file = "/virtual/net.moe";
const source = `import std.nn { Linear }
import std.optim { AdamW }
model Net() {
  in x: f32[N, 4]
  out y: f32[N, 3]
  lin = Linear(4, 3)
  y = log(lin(x))
}
train Fit() {
  in x: f32[N, 4]
  in labels: i32[N]
  net = Net()
  loss = cross_entropy(net(x), labels)
  optimizer = AdamW()
}
`;

function step() {
  const analysis = analyze([file], nodeFileSystem(new Map([[file, source]])));
  const lowered = lowerTrain(analysis, file, "Fit", new Map(), new Map([["N", 5]]));
  if ("error" in lowered) throw new Error(lowered.error);
  const assembled = assembleTrain(lowered.train!);
  if ("error" in assembled) throw new Error(assembled.error);
  return assembled.graph;
}

const text = (o: IrOrigin) => source.slice(o.start, o.end);

function leaves(graph: ReturnType<typeof step>, xSign: number): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  for (const n of graph.nodes) {
    if (n.op !== "param" && n.op !== "input") continue;
    const size = n.shape.reduce((a, b) => a * b, 1);
    const data = Float64Array.from({ length: size }, (_, i) => {
      if (n.op === "param" && n.name.startsWith("exp_avg")) return 0;
      if (n.name === "x") return xSign * (0.5 + ((i * 7) % 5) / 10);
      if (n.name === "labels") return i % 3;
      if (n.name.startsWith("adamw.")) return 0.5;
      // Weights and bias positive: lin(x) has x's sign everywhere.
      return 0.1 + ((i * 3) % 7) / 20;
    });
    out.set(n.name, { shape: [...n.shape], data });
  }
  return out;
}

describe("finding the first non-finite value", () => {
  it("names the expression a value was lowered from, and where it was inlined from", () => {
    const graph = step();
    expect(graph.origins).toBeDefined();
    // log of a negative number: NaN, lowered from `log(lin(x))` inside Net, called from Fit.
    const found = firstNonFinite(graph, leaves(graph, -1))!;
    expect(found.op).toBe("unary log");
    expect(Number.isNaN(found.value)).toBe(true);
    expect(text(found.origin!)).toBe("log(lin(x))");
    expect(text(found.origin!.caller!)).toBe("net(x)");
    expect(found.origin!.role).toBeUndefined();
  });

  it("stays quiet on a finite step; marks gradient and optimizer nodes by role", () => {
    const graph = step();
    expect(firstNonFinite(graph, leaves(graph, 1))).toBeUndefined();
    const roles = new Set(graph.origins!.map((o) => o?.role));
    expect(roles).toEqual(new Set([undefined, "gradient", "optimizer"]));
    const optimizer = graph.origins!.find((o) => o?.role === "optimizer")!;
    expect(text(optimizer)).toBe("optimizer = AdamW()");
    // The Linear's matmul: its line in std.nn, inlined from `lin(x)` in Net, from `net(x)`.
    const matmuls = graph.nodes.filter((n) => n.op === "matmul" && !graph.origins![n.id]?.role);
    expect(matmuls.length).toBe(1);
    const o = graph.origins![matmuls[0]!.id]!;
    expect(o.file).toMatch(/stdlib[/\\]nn\.moe$/);
    expect(text(o.caller!)).toBe("lin(x)");
    expect(text(o.caller!.caller!)).toBe("net(x)");
  });
});
