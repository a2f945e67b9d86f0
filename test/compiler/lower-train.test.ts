// Lowering `train` programs: the forward passes and losses as one graph, run by the float64
// reference interpreter and compared with loss formulas written independently here.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import type { Value } from "../../compiler/check/values.js";
import { verifyGraph } from "../../compiler/ir/verify.js";
import { uniformAt } from "../../compiler/ir/ops.js";
import { differentiateGraph } from "../../compiler/ir/differentiate-graph.js";
import { type LoweredTrain, NOISE_KEY_INPUT } from "../../compiler/lower/lower-train.js";
import {
  analyze,
  elaborateTrain,
  lowerTrain,
  nodeFileSystem,
  reportParams,
} from "../../compiler/pipeline.js";
import { type HostTensor, interpret } from "../../runtime/reference/interpret.js";
import { type Mat, ffn, linear, mat, row, softmax, values } from "./routing-fixtures.js";

const examples = path.join(import.meta.dirname, "../../examples");
const file = path.join(examples, "__train__.moe");

function lowerSource(
  source: string,
  dims: Record<string, number>,
  program?: string,
  overrides: Map<string, Value> = new Map(),
  at = file,
) {
  const analysis = analyze([at], nodeFileSystem(new Map([[at, source]])));
  expect(analysis.diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  return lowerTrain(analysis, at, program, overrides, new Map(Object.entries(dims)));
}

function lowerInline(
  source: string,
  dims: Record<string, number>,
  program?: string,
  overrides?: Map<string, Value>,
  at?: string,
): LoweredTrain {
  const r = lowerSource(source, dims, program, overrides, at);
  if ("error" in r) throw new Error(r.error);
  expect(r.diagnostics).toEqual([]);
  expect(verifyGraph(r.train!.graph)).toEqual([]);
  return r.train!;
}

/** Seeded leaves: f32 values in [-1, 1) (scaled), integer inputs in [0, max). */
function leaves(
  t: LoweredTrain,
  seed: number,
  fixed: Record<string, number[]> = {},
  scale = 1,
): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  t.graph.nodes.forEach((n, i) => {
    if (n.op !== "param" && n.op !== "input") return;
    const size = n.shape.reduce((a, b) => a * b, 1);
    let data = values(size, seed * 7919 + i + 1).map((v) => v * scale);
    const info = t.inputs.find((x) => x.name === n.name);
    if (n.op === "input" && n.dtype === "i32")
      data = data.map((v) => Math.floor(((v / scale + 1) / 2) * (info?.max ?? 2)));
    if (fixed[n.name]) data = Float64Array.from(fixed[n.name]!);
    out.set(n.name, { shape: n.shape, data });
  });
  return out;
}

/** The scalar outputs (routing shares are vectors, checked on their own). */
function run(t: LoweredTrain, l: Map<string, HostTensor>): Map<string, number> {
  const outs = interpret(t.graph, l).outputs;
  const m = new Map<string, number>();
  for (const [name, v] of outs) {
    if (name.startsWith("routing:")) continue;
    expect(v.shape).toEqual([1]);
    m.set(name, v.data[0]!);
  }
  return m;
}

const logSoftmax = (z: number[]) => {
  const m = Math.max(...z);
  const lse = m + Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0));
  return z.map((v) => v - lse);
};

/** PyTorch's F.cross_entropy (reduction "mean"), except that all-ignored gives 0. */
function crossEntropy(logits: Mat, labels: number[], ignore = -100, eps = 0): number {
  let total = 0;
  let count = 0;
  logits.forEach((z, i) => {
    if (labels[i] === ignore) return;
    const lp = logSoftmax(z);
    const nll = -lp[labels[i]!]!;
    const smooth = -lp.reduce((a, b) => a + b) / lp.length;
    total += (1 - eps) * nll + eps * smooth;
    count++;
  });
  return count === 0 ? 0 : total / count;
}

/** τ²·KL(Σ w_k softmax(t_k/τ) ‖ softmax(s/τ)), mean over rows. */
function distill(s: Mat, ts: Mat[], tau: number, w: number[]): number {
  let kl = 0;
  s.forEach((z, i) => {
    const q = softmax(z.map((v) => v / tau));
    const p = q.map((_, j) =>
      ts.reduce((a, t, k) => a + w[k]! * softmax(t[i]!.map((v) => v / tau))[j]!, 0),
    );
    p.forEach((pj, j) => (kl += pj === 0 ? 0 : pj * Math.log(pj / q[j]!)));
  });
  return (tau * tau * kl) / s.length;
}

const near = (a: number, b: number, tol = 1e-9) =>
  expect(Math.abs(a - b)).toBeLessThan(tol * Math.max(1, Math.abs(b)));

const CLASSIFIER = `import std.nn { Embedding, Linear }
import std.optim { AdamW }

model Clf() {
  in tokens: i32[B, T]
  out logits: f32[B, T, 5]
  embed = Embedding(7, 4)
  head = Linear(4, 5)
  logits = head(embed(tokens))
}

train Fit(ls: Float = 0.1) {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  net = Clf()
  ce = cross_entropy(net(tokens), labels, ignore_index: 2, label_smoothing: ls)
  plain = cross_entropy(net(tokens), labels)
  loss = ce
  optimizer = AdamW(lr: 0.01)
}

train Other() {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  net = Clf()
  loss = cross_entropy(net(tokens), labels)
  optimizer = AdamW()
}
`;

/** The classifier's logits, by hand: head(embed(tokens)) per position. */
function classifierLogits(l: Map<string, HostTensor>): Mat {
  const emb = mat(l.get("net.embed.weight")!);
  const w = mat(l.get("net.head.weight")!);
  const b = row(l.get("net.head.bias")!, 0);
  return [...l.get("tokens")!.data].map((tok) => linear(emb[tok]!, w, b));
}

describe("lowering train programs", () => {
  it("cross_entropy with ignore_index and label smoothing matches PyTorch's formula", () => {
    const t = lowerInline(CLASSIFIER, { B: 3, T: 4 }, "Fit");
    expect(t.name).toBe("Fit");
    expect(t.graph.outputs.map((o) => o.name)).toEqual(["loss", "loss:ce", "loss:plain"]);
    expect(t.terms.map((x) => x.name)).toEqual(["loss:ce", "loss:plain"]);
    expect(t.graph.outputs[0]!.node).toBe(t.loss);
    expect(t.inputs).toEqual([
      { name: "tokens", dtype: "i32", shape: [3, 4], max: 7 },
      { name: "labels", dtype: "i32", shape: [3, 4], max: 5 },
    ]);
    expect(t.dims).toEqual(
      new Map([
        ["B", 3],
        ["T", 4],
      ]),
    );
    expect(t.optimizer).toEqual({
      lr: 0.01,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0.01,
    });
    expect(t.params).toEqual([
      { name: "net.embed.weight", shape: [7, 4], trainable: true, decay: false },
      { name: "net.head.weight", shape: [5, 4], trainable: true, decay: true },
      { name: "net.head.bias", shape: [5], trainable: true, decay: false },
    ]);
    for (const seed of [1, 2, 3]) {
      const l = leaves(t, seed, {}, 3);
      // Some positions carry the ignored label, some a label of 2's neighbours.
      const labels = l.get("labels")!.data;
      labels[0] = 2;
      labels[5] = 2;
      labels[7] = 4;
      const out = run(t, l);
      const logits = classifierLogits(l);
      const ce = crossEntropy(logits, [...labels], 2, 0.1);
      near(out.get("loss:ce")!, ce);
      near(out.get("loss")!, ce);
      near(out.get("loss:plain")!, crossEntropy(logits, [...labels]));
      expect(Math.abs(out.get("loss:plain")! - ce)).toBeGreaterThan(1e-6);
    }
  });

  it("cross_entropy over only ignored positions is 0, and --set reaches the program", () => {
    const t = lowerInline(
      CLASSIFIER,
      { B: 2, T: 3 },
      "Fit",
      new Map<string, Value>([["ls", { k: "float", v: 0.3 }]]),
    );
    const l = leaves(t, 4, { labels: [2, 2, 2, 2, 2, 2] });
    expect(run(t, l).get("loss:ce")).toBe(0);
    const l2 = leaves(t, 5);
    const labels = [...l2.get("labels")!.data];
    near(run(t, l2).get("loss:ce")!, crossEntropy(classifierLogits(l2), labels, 2, 0.3));
  });

  it("selects programs by name, the first by default, and lists them otherwise", () => {
    expect(lowerInline(CLASSIFIER, { B: 1, T: 2 }).name).toBe("Fit");
    expect(lowerInline(CLASSIFIER, { B: 1, T: 2 }, "Other").name).toBe("Other");
    const bad = lowerSource(CLASSIFIER, { B: 1, T: 2 }, "Fitt");
    expect("error" in bad && bad.error).toMatch(
      /no training program `Fitt`.*did you mean `Fit`.*training programs: Fit, Other/,
    );
    const none = lowerSource(
      "import std.nn { Linear }\nmodel M() { in x: f32[N, 2]  out y: f32[N, 2]  l = Linear(2, 2)  y = l(x) }\n",
      { N: 1 },
    );
    expect("error" in none && none.error).toMatch(/declares no training program/);
    const unknown = lowerSource(
      CLASSIFIER,
      { B: 1, T: 2 },
      "Fit",
      new Map<string, Value>([["lr", { k: "float", v: 1 }]]),
    );
    expect("error" in unknown).toBe(false);
    if (!("error" in unknown)) expect(unknown.diagnostics.map((d) => d.code)).toEqual(["E0306"]);
  });

  it("distill from two frozen teachers is τ²·KL(mixture ‖ student), teachers frozen", () => {
    const source = `import std.nn { Linear }
import std.optim { AdamW }
model Lin() { in x: f32[..., 5]  out y: f32[..., 4]  proj = Linear(5, 4)  y = proj(x) }
train KD(temperature: Float = 2.0, alpha: Float = 0.25) {
  in x: f32[N, 5]
  in labels: i32[N]
  student = Lin()
  t1 = frozen Lin()
  t2 = frozen Lin()
  s = student(x)
  kd = distill(s, [t1(x), t2(x)], temperature: temperature, weights: [0.7, 0.3])
  even = distill(s, [t1(x), t2(x)])
  ce = cross_entropy(s, labels)
  loss = alpha * ce + (1.0 - alpha) * kd
  optimizer = AdamW(lr: 1e-4, weight_decay: 0.05, eps: 1e-6)
}
`;
    const t = lowerInline(source, { N: 6 });
    expect(t.optimizer).toEqual({
      lr: 1e-4,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-6,
      weightDecay: 0.05,
    });
    const flags = new Map(t.params.map((p) => [p.name, p.trainable]));
    expect(flags).toEqual(
      new Map([
        ["student.proj.weight", true],
        ["student.proj.bias", true],
        ["t1.proj.weight", false],
        ["t1.proj.bias", false],
        ["t2.proj.weight", false],
        ["t2.proj.bias", false],
      ]),
    );
    for (const seed of [1, 2]) {
      const l = leaves(t, seed, {}, 2);
      const out = run(t, l);
      const x = mat(l.get("x")!);
      const apply = (p: string) =>
        x.map((r) => linear(r, mat(l.get(`${p}.proj.weight`)!), row(l.get(`${p}.proj.bias`)!, 0)));
      const [s, t1, t2] = [apply("student"), apply("t1"), apply("t2")];
      const kd = distill(s, [t1, t2], 2, [0.7, 0.3]);
      near(out.get("loss:kd")!, kd);
      near(out.get("loss:even")!, distill(s, [t1, t2], 1, [0.5, 0.5]));
      const ce = crossEntropy(s, [...l.get("labels")!.data]);
      near(out.get("loss:ce")!, ce);
      near(out.get("loss")!, 0.25 * ce + 0.75 * kd);
      // A teacher equal to the student (and weight 1) gives 0.
      const same = leaves(
        t,
        seed,
        {
          "t1.proj.weight": [...l.get("student.proj.weight")!.data],
          "t1.proj.bias": [...l.get("student.proj.bias")!.data],
          "t2.proj.weight": [...l.get("student.proj.weight")!.data],
          "t2.proj.bias": [...l.get("student.proj.bias")!.data],
        },
        2,
      );
      expect(Math.abs(run(t, same).get("loss:kd")!)).toBeLessThan(1e-12);
    }
  });

  it("distill over [B, T, C] averages over all B·T rows; mse is the mean squared error", () => {
    const source = `import std.nn { Linear }
import std.optim { AdamW }
model Lin() { in x: f32[..., 3]  out y: f32[..., 3]  proj = Linear(3, 3)  y = proj(x) }
train KD() {
  in x: f32[B, T, 3]
  in target: f32[B, T, 3]
  student = Lin()
  teacher = frozen Lin()
  s = student(x)
  kd = distill(s, [teacher(x)], temperature: 0.5)
  fit = mse(s, target)
  loss = kd + fit
  optimizer = AdamW()
}
`;
    const t = lowerInline(source, { B: 2, T: 3 });
    const l = leaves(t, 9, {}, 2);
    const out = run(t, l);
    const x = mat(l.get("x")!);
    const apply = (p: string) =>
      x.map((r) => linear(r, mat(l.get(`${p}.proj.weight`)!), row(l.get(`${p}.proj.bias`)!, 0)));
    const s = apply("student");
    near(out.get("loss:kd")!, distill(s, [apply("teacher")], 0.5, [1]));
    const target = [...l.get("target")!.data];
    const mse = s.flat().reduce((a, v, i) => a + (v - target[i]!) ** 2, 0) / 18;
    near(out.get("loss:fit")!, mse);
    near(out.get("loss")!, out.get("loss:kd")! + mse);
  });

  it("a top-1 MoE layer adds its weighted balance and z losses as aux terms", () => {
    const source = `import std.nn { FFN, Linear }
import std.route { MoE, TopK }
import std.optim { AdamW }
model Net() {
  in x: f32[N, 6]
  out y: f32[N, 3]
  moe = MoE(router: TopK(k: 1, balance: 0.01, z_loss: 0.001), experts: [FFN(6, 8, act: relu); 4])
  quiet = MoE(router: TopK(k: 1), experts: [FFN(6, 8, act: relu); 4])
  head = Linear(6, 3)
  y = head(quiet(x + moe(x)))
}
train Fit() {
  in x: f32[N, 6]
  in target: f32[N, 3]
  net = Net()
  teacher = frozen Net()
  fit = mse(net(x), target) + 0.0 * mean(mean(teacher(x), axis: 1), axis: 0)
  loss = fit
  optimizer = AdamW()
}
`;
    const N = 10;
    const t = lowerInline(source, { N });
    expect(t.terms.map((x) => x.name)).toEqual([
      "loss:fit",
      "aux:net.moe.balance",
      "aux:net.moe.z",
    ]);
    const gate = t.params.find((p) => p.name === "net.moe.router.gate.weight")!;
    expect(gate).toEqual({ name: gate.name, shape: [4, 6], trainable: true, decay: true });
    expect(t.params.find((p) => p.name === "teacher.moe.router.gate.weight")?.trainable).toBe(
      false,
    );
    // Every MoE layer reports its share, the frozen teacher's too, named by its path.
    expect(t.routing.map((r) => [r.layer, r.output, r.experts])).toEqual(
      ["net.moe", "net.quiet", "teacher.moe", "teacher.quiet"].map((layer) => [
        layer,
        `routing:${layer}.share`,
        4,
      ]),
    );
    for (const seed of [1, 2, 3]) {
      const l = leaves(t, seed, {}, 2);
      const out = run(t, l);
      const share = interpret(t.graph, l).outputs.get("routing:net.moe.share")!;
      const logits = mat(l.get("x")!).map((r) =>
        linear(r, mat(l.get("net.moe.router.gate.weight")!)),
      );
      const counts = [0, 0, 0, 0];
      const meanP = [0, 0, 0, 0];
      let z = 0;
      for (const z_ of logits) {
        counts[z_.indexOf(Math.max(...z_))]! += 1;
        softmax(z_).forEach((p, e) => (meanP[e]! += p / N));
        const m = Math.max(...z_);
        const lse = m + Math.log(z_.reduce((a, v) => a + Math.exp(v - m), 0));
        z += (lse * lse) / N;
      }
      const balance = 4 * counts.reduce((a, c, e) => a + (c / N) * meanP[e]!, 0);
      expect(share.shape).toEqual([4]);
      counts.forEach((c, e) => near(share.data[e]!, c / N));
      // The forward pass by hand: top-1 weights the chosen expert by its probability (Switch).
      const top1 = (layer: string, x: number[]) => {
        const z = linear(x, mat(l.get(`net.${layer}.router.gate.weight`)!));
        const best = z.indexOf(Math.max(...z));
        const p = softmax(z)[best]!;
        return ffn(l, `net.${layer}.experts.${best}`, x).map((v) => p * v);
      };
      const target = mat(l.get("target")!);
      let fit = 0;
      mat(l.get("x")!).forEach((x, n) => {
        const h = top1("moe", x).map((v, j) => v + x[j]!);
        const y = linear(
          top1("quiet", h),
          mat(l.get("net.head.weight")!),
          row(l.get("net.head.bias")!, 0),
        );
        y.forEach((v, j) => (fit += (v - target[n]![j]!) ** 2 / (N * 3)));
      });
      near(out.get("loss:fit")!, fit);
      near(out.get("aux:net.moe.balance")!, 0.01 * balance);
      near(out.get("aux:net.moe.z")!, 0.001 * z);
      near(out.get("loss")!, out.get("loss:fit")! + 0.01 * balance + 0.001 * z);
    }
  });

  it("the eval graph counts each cross_entropy's argmax hits, overall and per task", () => {
    const source = `import std.nn { Embedding }
import std.optim { AdamW }
tasks Kinds { a, b, c }
model Clf() { in tokens: i32[B, S]  out logits: f32[B, S, 5]  embed = Embedding(7, 5)  logits = embed(tokens) }
train Fit() {
  in tokens: i32[B, S]
  in kind: Kinds[B]
  in labels: i32[B, S]
  in other: i32[B, S]
  net = Clf()
  z = net(tokens)
  first = cross_entropy(z, labels, ignore_index: 2)
  loss = first + 0.5 * cross_entropy(z, other)
  optimizer = AdamW()
}
`;
    const [B, S] = [7, 3];
    const t = lowerInline(source, { B, S });
    // The second cross_entropy is part of `loss` only; the first is `first`.
    expect(t.accuracy).toEqual([
      { term: "first", tasks: ["a", "b", "c"] },
      { term: "loss", tasks: ["a", "b", "c"] },
    ]);
    expect(verifyGraph(t.evalGraph)).toEqual([]);
    // The train graph does not compute them.
    expect(t.graph.outputs.some((o) => o.name.startsWith("accuracy:"))).toBe(false);
    for (const seed of [1, 2]) {
      // One example without a task (-1): counted overall, in no task.
      const l = leaves(t, seed, { kind: [0, 2, 1, -1, 2, 0, 2] });
      const outs = interpret(t.evalGraph, l).outputs;
      const table = mat(l.get("net.embed.weight")!);
      const tokens = [...l.get("tokens")!.data];
      const kind = [...l.get("kind")!.data];
      const argmax = tokens.map((tok) => {
        const z = table[tok]!;
        return z.indexOf(Math.max(...z));
      });
      const check = (term: string, labels: number[], ignore: number) => {
        const correct = [0, 0, 0];
        const count = [0, 0, 0];
        let all = 0;
        let counted = 0;
        labels.forEach((y, i) => {
          if (y === ignore) return;
          const hit = argmax[i] === y ? 1 : 0;
          all += hit;
          counted++;
          const k = kind[Math.floor(i / S)]!;
          if (k >= 0) {
            correct[k]! += hit;
            count[k]!++;
          }
        });
        const get = (what: string) => [...outs.get(`accuracy:${term}.${what}`)!.data];
        expect(get("correct")).toEqual([all]);
        expect(get("count")).toEqual([counted]);
        expect(get("task_correct")).toEqual(correct);
        expect(get("task_count")).toEqual(count);
        return counted;
      };
      const labels = [...l.get("labels")!.data];
      expect(check("first", labels, 2)).toBeLessThan(B * S); // some labels are ignored
      expect(check("loss", [...l.get("other")!.data], -100)).toBe(B * S);
    }
  });

  it("LoRA on a frozen base: only the adapter trains, and the loss sees its update", () => {
    const source = `import std.nn { Linear }
import std.adapt { LoRA }
import std.optim { AdamW }
model Base() { in x: f32[N, 6]  out y: f32[N, 3]  proj = Linear(6, 3)  y = proj(x) }
train Tune() {
  in x: f32[N, 6]
  in labels: i32[N]
  net = frozen Base() with LoRA(r: 2, alpha: 4.0)
  ce = cross_entropy(net(x), labels, label_smoothing: 0.2)
  loss = ce
  optimizer = AdamW()
}
`;
    const t = lowerInline(source, { N: 5 });
    const byName = new Map(t.params.map((p) => [p.name, p]));
    expect(byName.get("net.proj.weight")).toMatchObject({ trainable: false, decay: true });
    expect(byName.get("net.proj.bias")).toMatchObject({ trainable: false, decay: false });
    const trainable = t.params.filter((p) => p.trainable).map((p) => [p.name, p.shape]);
    expect(trainable).toEqual(
      expect.arrayContaining([
        [expect.stringMatching(/lora_A\.weight$/), [2, 6]],
        [expect.stringMatching(/lora_B\.weight$/), [3, 2]],
      ]),
    );
    expect(trainable).toHaveLength(2);
    const aName = trainable.find(([n]) => (n as string).includes("lora_A"))![0] as string;
    const bName = aName.replace("lora_A", "lora_B");
    const l = leaves(t, 3, {}, 2);
    const A = mat(l.get(aName)!);
    const Bm = mat(l.get(bName)!);
    const logits = mat(l.get("x")!).map((r) =>
      linear(r, mat(l.get("net.proj.weight")!), row(l.get("net.proj.bias")!, 0)).map(
        (v, o) => v + 2 * linear(linear(r, A), Bm)[o]!,
      ),
    );
    near(run(t, l).get("loss")!, crossEntropy(logits, [...l.get("labels")!.data], -100, 0.2));
  });

  it("LoRA dropout and router jitter draw from the step's key; evaluation runs without them", () => {
    const source = `import std.nn { Linear, FFN }
import std.adapt { LoRA }
import std.route { MoE, TopK }
import std.optim { AdamW }
model Base() { in x: f32[N, 6]  out y: f32[N, 3]  proj = Linear(6, 3)  y = proj(x) }
model Routed(jitter: Float = 0.2) {
  in x: f32[N, 6]  out y: f32[N, 6]
  moe = MoE(router: TopK(k: 1, noise: jitter), experts: [FFN(6, 4); 3])
  y = moe(x)
}
train Tune(p: Float = 0.25) {
  in x: f32[N, 6]
  in labels: i32[N]
  net = frozen Base() with LoRA(r: 2, alpha: 4.0, dropout: p)
  loss = cross_entropy(net(x), labels)
  optimizer = AdamW()
}
train Jittered() {
  in x: f32[N, 6]
  in labels: i32[N]
  net = Routed()
  head = Linear(6, 3)
  loss = cross_entropy(head(net(x)), labels)
  optimizer = AdamW()
}
`;
    const t = lowerInline(source, { N: 7 }, "Tune");
    const randoms = t.graph.nodes.filter((n) => n.op === "random");
    expect(randoms.map((n) => n.shape)).toEqual([[7, 6]]); // the adapter's input, x's shape
    expect(t.graph.nodes.some((n) => n.op === "input" && n.name === NOISE_KEY_INPUT)).toBe(true);
    const a = t.params.find((p) => p.name.endsWith("lora_A.weight"))!.name;
    const l = leaves(t, 5, { [NOISE_KEY_INPUT]: [12345] }, 2);
    // The loss by hand: x·mask/(1 − p) through the adapter, the mask from the op's hash.
    const stream = (randoms[0] as { stream: number }).stream;
    const kept = (i: number) => (uniformAt(12345, stream, i) > 0.25 ? 1 / 0.75 : 0);
    const x = mat(l.get("x")!);
    const A = mat(l.get(a)!);
    const Bm = mat(l.get(a.replace("lora_A", "lora_B"))!);
    const logits = x.map((r, i) =>
      linear(r, mat(l.get("net.proj.weight")!), row(l.get("net.proj.bias")!, 0)).map(
        (v, o) =>
          v +
          2 *
            linear(
              linear(
                r.map((xv, j) => xv * kept(i * 6 + j)),
                A,
              ),
              Bm,
            )[o]!,
      ),
    );
    const dropped = x.flat().filter((_, i) => kept(i) === 0).length;
    expect(dropped).toBeGreaterThan(0);
    expect(dropped).toBeLessThan(42);
    near(run(t, l).get("loss")!, crossEntropy(logits, [...l.get("labels")!.data]));
    // Another key, another mask.
    const other = new Map(l).set(NOISE_KEY_INPUT, { shape: [1], data: Float64Array.of(777) });
    expect(run(t, other).get("loss")).not.toBe(run(t, l).get("loss"));
    // The gradient flows through the kept values only; the key gets none.
    const d = differentiateGraph(t.graph, t.loss);
    expect([...d.gradients.keys()].sort()).toEqual(
      t.params
        .filter((p) => p.trainable)
        .map((p) => p.name)
        .sort(),
    );

    // Evaluation: no random op, no key, and the loss of the same program at p = 0.
    const analysis = analyze([file], nodeFileSystem(new Map([[file, source]])));
    const evaluation = lowerTrain(analysis, file, "Tune", new Map(), new Map([["N", 7]]), {
      evaluation: true,
    });
    if ("error" in evaluation) throw new Error(evaluation.error);
    const e = evaluation.train!;
    expect(
      e.graph.nodes.some(
        (n) => n.op === "random" || (n.op === "input" && n.name === NOISE_KEY_INPUT),
      ),
    ).toBe(false);
    const p0 = lowerInline(source, { N: 7 }, "Tune", new Map([["p", { k: "float", v: 0 }]]));
    expect(p0.graph.nodes.some((n) => n.op === "random")).toBe(false);
    const evalLeaves = new Map([...l].filter(([k]) => k !== NOISE_KEY_INPUT));
    expect(run(e, evalLeaves).get("loss")).toBe(run(p0, evalLeaves).get("loss"));

    // Router jitter: the router's input times U[0.8, 1.2], one draw per token and feature.
    const j = lowerInline(source, { N: 7 }, "Jittered");
    expect(j.graph.nodes.filter((n) => n.op === "random").map((n) => n.shape)).toEqual([[7, 6]]);
  });

  it("examples/road-distill.moe's Distill lowers at a small configuration", () => {
    const at = path.join(examples, "road-distill.moe");
    const source = fs
      .readFileSync(at, "utf8")
      .replace(/vocab: Int = \d+/g, "vocab: Int = 40")
      .replace(
        /layers: Int = \d+,\s*d: Dim = \d+,\s*heads: Int = \d+/g,
        "layers: Int = 1, d: Dim = 8, heads: Int = 2",
      );
    const t = lowerInline(source, { B: 2, T: 3 }, "Distill", undefined, at);
    expect(t.graph.outputs.map((o) => o.name)).toEqual(["loss", "loss:kd", "loss:ce", "loss:qa"]);
    expect(t.optimizer.lr).toBe(3e-5);
    const p = new Map(t.params.map((x) => [x.name, x]));
    expect(p.get("student.enc.embed.weight")).toMatchObject({ trainable: true, decay: false });
    // The large teacher is twice the base one's width, the student half of it.
    expect(p.get("large.enc.embed.weight")).toMatchObject({ trainable: false, shape: [40, 16] });
    expect(p.get("student.enc.embed.weight")?.shape).toEqual([40, 4]);
    expect(p.get("base.enc.blocks.0.layer.mlp.up.weight")?.trainable).toBe(false);
    expect(p.get("student.enc.nli_head.weight")).toMatchObject({ trainable: true, decay: true });
    expect(p.get("student.enc.norm.weight")).toMatchObject({ trainable: true, decay: false });
    // The names and flags are those `moec params --program` reports.
    const analysis = analyze([at], nodeFileSystem(new Map([[at, source]])));
    const elaborated = elaborateTrain(analysis, at, "Distill");
    if ("error" in elaborated) throw new Error(elaborated.error);
    expect(elaborated.diagnostics).toEqual([]);
    const report = reportParams(elaborated.model);
    expect(new Map(report.params.map((r) => [r.name, [r.shape, r.trainable]]))).toEqual(
      new Map(t.params.map((x) => [x.name, [x.shape, x.trainable]])),
    );
    expect(report.trainable).toBeGreaterThan(0);
    expect(report.frozen).toBeGreaterThan(report.trainable);
    const l = leaves(t, 1, {}, 1);
    const out = run(t, l);
    for (const v of out.values()) expect(Number.isFinite(v)).toBe(true);
    near(
      out.get("loss")!,
      0.5 * out.get("loss:ce")! + 0.5 * out.get("loss:kd")! + out.get("loss:qa")!,
    );
    expect(out.get("loss:kd")!).toBeGreaterThan(0);
  });
});
