// The loss builtins' IR (compiler/lower/lower-losses.ts) on hand-built graphs, against float64
// formulas written here, at magnitudes where a log-sum-exp without the max overflows; and the
// check rules of their options.
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { IrBuilder } from "../../compiler/ir/builder.js";
import { verifyGraph } from "../../compiler/ir/verify.js";
import { lowerCrossEntropy, lowerDistill, lowerMse } from "../../compiler/lower/lower-losses.js";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";
import { type HostTensor, interpret } from "../../runtime/reference/interpret.js";
import { values } from "./routing-fixtures.js";

/** Builds a graph with inputs of `shapes`, one output `f(...)`, and runs it on `data`. */
function evaluate(
  shapes: { shape: number[]; dtype?: "i32" }[],
  data: Float64Array[],
  f: (ir: IrBuilder, ...xs: number[]) => number,
): { value: number; shape: number[] } {
  const ir = new IrBuilder();
  const xs = shapes.map((s, i) => ir.input(`x${i}`, s.dtype ?? "f32", s.shape));
  ir.output("y", f(ir, ...xs));
  const graph = ir.finish();
  expect(verifyGraph(graph)).toEqual([]);
  const leaves = new Map<string, HostTensor>(
    shapes.map((s, i) => [`x${i}`, { shape: s.shape, data: data[i]! }]),
  );
  const y = interpret(graph, leaves).outputs.get("y")!;
  return { value: y.data[0]!, shape: y.shape };
}

const rowsOf = (data: Float64Array, C: number) =>
  [...Array(data.length / C).keys()].map((i) => [...data.slice(i * C, (i + 1) * C)]);

/** log-softmax with max subtraction, in float64. */
const logSoftmax = (z: number[]) => {
  const m = Math.max(...z);
  const lse = m + Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0));
  return z.map((v) => v - lse);
};

const near = (a: number, b: number, tol = 1e-9) => {
  expect(Number.isFinite(a)).toBe(true);
  expect(Math.abs(a - b)).toBeLessThan(tol * Math.max(1, Math.abs(b)));
};

describe("loss lowering", () => {
  it("cross_entropy: (1−ε)·nll + ε·mean(−log p) over kept rows, stable at large logits", () => {
    for (const [seed, scale, eps, ignore] of [
      [1, 1, 0, -100],
      [2, 3, 0.1, 0],
      [3, 900, 0.25, 3],
      [4, 50, 1, 1],
    ] as const) {
      const [N, C] = [9, 5];
      const logits = values(N * C, seed).map((v) => v * scale);
      const labels = values(N, seed + 50).map((v) => Math.floor(((v + 1) / 2) * C));
      labels[2] = ignore < 0 ? ignore : labels[2]!;
      labels[4] = ignore;
      const { value, shape } = evaluate(
        [{ shape: [3, 3, C] }, { shape: [3, 3], dtype: "i32" }],
        [logits, labels],
        (ir, x, y) => lowerCrossEntropy(ir, x, y, ignore, eps),
      );
      expect(shape).toEqual([]);
      let total = 0;
      let count = 0;
      rowsOf(logits, C).forEach((z, i) => {
        if (labels[i] === ignore) return;
        const lp = logSoftmax(z);
        total += (1 - eps) * -lp[labels[i]!]! + (eps * -lp.reduce((a, b) => a + b)) / C;
        count++;
      });
      near(value, total / count);
    }
  });

  it("cross_entropy with every label ignored is 0, not NaN", () => {
    const { value } = evaluate(
      [{ shape: [4, 3] }, { shape: [4], dtype: "i32" }],
      [values(12, 8), Float64Array.from([-100, -100, -100, -100])],
      (ir, x, y) => lowerCrossEntropy(ir, x, y, -100, 0.1),
    );
    expect(value).toBe(0);
  });

  it("distill: τ²·Σ p·log(p/q) / rows for a weighted mixture of teachers", () => {
    for (const [seed, scale, tau, w] of [
      [1, 1, 1, [0.5, 0.5, 0]],
      [2, 4, 2.5, [0.2, 0.3, 0.5]],
      [3, 400, 0.7, [1, 0, 0]],
    ] as const) {
      const [N, C] = [6, 4];
      const xs = [0, 1, 2, 3].map((k) => values(N * C, seed * 10 + k).map((v) => v * scale));
      const { value } = evaluate(
        xs.map(() => ({ shape: [2, 3, C] })),
        xs,
        (ir, s, ...ts) => lowerDistill(ir, s, ts, tau, { kind: "fixed", values: w }),
      );
      const s = rowsOf(xs[0]!, C);
      const ts = xs.slice(1).map((x) => rowsOf(x, C));
      let kl = 0;
      s.forEach((z, i) => {
        const logq = logSoftmax(z.map((v) => v / tau));
        const p = logq.map((_, j) =>
          ts.reduce(
            (a, t, k) => a + w[k]! * Math.exp(logSoftmax(t[i]!.map((v) => v / tau))[j]!),
            0,
          ),
        );
        p.forEach((pj, j) => (kl += pj === 0 ? 0 : pj * (Math.log(pj) - logq[j]!)));
      });
      near(value, (tau * tau * kl) / N, 1e-8);
      expect(value).toBeGreaterThanOrEqual(-1e-12);
    }
  });

  it("distill with per-example weights, and confidence-aware (CA-MKD) weights from the labels", () => {
    const [N, C, K, tau] = [5, 4, 3, 2];
    const xs = [0, 1, 2, 3].map((k) => values(N * C, 40 + k).map((v) => v * 3));
    const s = rowsOf(xs[0]!, C);
    const ts = xs.slice(1).map((x) => rowsOf(x, C));
    /** τ²·KL(Σ_k w[i][k]·p_k ‖ q) / N, per-example weights w[i]. */
    const expected = (w: number[][]) => {
      let kl = 0;
      s.forEach((z, i) => {
        const logq = logSoftmax(z.map((v) => v / tau));
        logq.forEach((lq, j) => {
          const pj = ts.reduce(
            (a, t, k) => a + w[i]![k]! * Math.exp(logSoftmax(t[i]!.map((v) => v / tau))[j]!),
            0,
          );
          kl += pj * (Math.log(pj) - lq);
        });
      });
      return (tau * tau * kl) / N;
    };
    // Per-example rows (one of them puts all weight on one teacher: log 0 is clamped).
    const rows = [
      [0.2, 0.3, 0.5],
      [1, 0, 0],
      [0.6, 0.2, 0.2],
      [1 / 3, 1 / 3, 1 / 3],
      [0, 0.5, 0.5],
    ];
    const perExample = evaluate(
      [...xs.map(() => ({ shape: [N, C] })), { shape: [N, K] }],
      [...xs, Float64Array.from(rows.flat())],
      (ir, st, t0, t1, t2, w) =>
        lowerDistill(ir, st!, [t0!, t1!, t2!], tau, { kind: "rows", node: w! }),
    );
    near(perExample.value, expected(rows), 1e-8);
    // Confidence-aware: L_k = −log softmax(t_k)[label]; w_k = (1 − e^{L_k}/Σ_j e^{L_j})/(K − 1);
    // an out-of-range label (-100) weighs the teachers equally.
    const labels = [2, 0, 3, 1, -100];
    const ca = labels.map((y, i) => {
      const L = ts.map((t) => (y >= 0 ? -logSoftmax(t[i]!)[y]! : 0));
      const total = L.reduce((a, l) => a + Math.exp(l), 0);
      return L.map((l) => (1 - Math.exp(l) / total) / (K - 1));
    });
    const confident = evaluate(
      [...xs.map(() => ({ shape: [N, C] })), { shape: [N], dtype: "i32" as const }],
      [...xs, Float64Array.from(labels)],
      (ir, st, t0, t1, t2, y) =>
        lowerDistill(ir, st!, [t0!, t1!, t2!], tau, { kind: "confidence", labels: y! }),
    );
    near(confident.value, expected(ca), 1e-8);
    // The weights differ from uniform: a teacher that predicts the label better weighs more.
    expect(
      Math.abs(confident.value - expected(labels.map(() => [1 / 3, 1 / 3, 1 / 3]))),
    ).toBeGreaterThan(1e-6);
  });

  it("mse: the mean of squared differences", () => {
    const a = values(24, 5);
    const b = values(24, 6);
    const { value, shape } = evaluate(
      [{ shape: [2, 3, 4] }, { shape: [2, 3, 4] }],
      [a, b],
      lowerMse,
    );
    expect(shape).toEqual([]);
    near(value, a.reduce((acc, v, i) => acc + (v - b[i]!) ** 2, 0) / 24);
  });
});

describe("loss builtins' checks", () => {
  const file = path.join(import.meta.dirname, "../../examples/__losses__.moe");
  function codes(call: string): string[] {
    const source = `import std.nn { Linear }
import std.optim { AdamW }
model M() { in x: f32[N, 4]  out y: f32[N, 3]  l = Linear(4, 3)  y = l(x) }
train Fit(pad: Int = 0) {
  in x: f32[N, 4]
  in labels: i32[N]
  in confidence: f32[N, 2]
  net = M()
  t1 = frozen M()
  t2 = frozen M()
  logits = net(x)
  teachers = [t1(x), t2(x)]
  loss = ${call}
  optimizer = AdamW()
}
`;
    const a = analyze([file], nodeFileSystem(new Map([[file, source]])));
    return a.diagnostics.filter((d) => d.severity === "error").map((d) => d.code);
  }

  it("accepts the options, including a program parameter as ignore_index", () => {
    expect(codes("cross_entropy(logits, labels, ignore_index: pad, label_smoothing: 0.2)")).toEqual(
      [],
    );
    expect(codes("cross_entropy(logits, labels, ignore_index: -1, label_smoothing: 1)")).toEqual(
      [],
    );
  });

  it("rejects a smoothing outside [0, 1] (E0319) and options of the wrong kind (E0301)", () => {
    expect(codes("cross_entropy(logits, labels, label_smoothing: 1.5)")).toEqual(["E0319"]);
    expect(codes("cross_entropy(logits, labels, label_smoothing: -0.1)")).toEqual(["E0319"]);
    expect(codes("cross_entropy(logits, labels, ignore_index: 0.5)")).toEqual(["E0301"]);
    expect(codes("cross_entropy(logits, labels, label_smoothing: true)")).toEqual(["E0301"]);
    expect(codes("distill(logits, [logits], temperature: 0.0)")).toEqual(["E0319"]);
  });

  it("distill's weights: per example as f32[rows, K], or confidence-aware from i32 labels", () => {
    expect(codes("distill(logits, teachers, weights: confidence)")).toEqual([]);
    expect(codes("distill(logits, teachers, labels: labels)")).toEqual([]);
    expect(codes("distill(logits, [t1(x)], weights: confidence)")).toEqual(["E0302"]);
    expect(codes("distill(logits, teachers, labels: x)")).toEqual(["E0302"]);
    expect(codes("distill(logits, teachers, weights: [0.5, 0.5], labels: labels)")).toEqual([
      "E0319",
    ]);
  });
});
