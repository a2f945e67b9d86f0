// Lowering: the IR of a model, run by the reference interpreter, computes what the model
// means; checked against float64 code written independently here.
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { verifyGraph } from "../../compiler/ir/verify.js";
import type { LoweredModel } from "../../compiler/lower/lower-model.js";
import { elaborate } from "../../compiler/pipeline.js";
import { type HostTensor, erf, interpret } from "../../runtime/reference/interpret.js";
import { lowerFile } from "./routing-fixtures.js";

const examples = path.join(import.meta.dirname, "../../examples");

function lowerInline(source: string, dims: Record<string, number>): LoweredModel {
  const { lowered, diagnostics } = lowerFile(source, path.join(examples, "__lower__.moe"), dims);
  expect(diagnostics).toEqual([]);
  expect(verifyGraph(lowered!.graph)).toEqual([]);
  return lowered!;
}

/** Deterministic values in [-1, 1), never all zero. */
function values(n: number, seed: number): Float64Array {
  let s = seed >>> 0 || 1;
  return Float64Array.from({ length: n }, () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) / 2 ** 32) * 2 - 1;
  });
}

function leaves(m: LoweredModel, seed = 1): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  m.graph.nodes.forEach((n, i) => {
    if (n.op !== "param" && n.op !== "input") return;
    const size = n.shape.reduce((a, b) => a * b, 1);
    out.set(n.name, { shape: n.shape, data: values(size, seed * 1000 + i) });
  });
  return out;
}

const at = (t: HostTensor, ...idx: number[]) => {
  let flat = 0;
  idx.forEach((v, i) => (flat = flat * t.shape[i]! + v));
  return t.data[flat]!;
};

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol = 1e-12) {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < actual.length; i++)
    expect(Math.abs(actual[i]! - expected[i]!)).toBeLessThan(tol);
}

describe("lowering", () => {
  it("Linear computes x·Wᵀ + b over leading dims", () => {
    const m = lowerInline(
      `import std.nn { Linear }
model M() { in x: f32[B, T, 4]  out y: f32[B, T, 3]  proj = Linear(4, 3)  y = proj(x) }`,
      { B: 2, T: 3 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const w = l.get("proj.weight")!;
    const b = l.get("proj.bias")!;
    const expected: number[] = [];
    for (let i = 0; i < 2; i++)
      for (let t = 0; t < 3; t++)
        for (let o = 0; o < 3; o++) {
          let acc = at(b, o);
          for (let k = 0; k < 4; k++) acc += at(x, i, t, k) * at(w, o, k);
          expected.push(acc);
        }
    expect(y.shape).toEqual([2, 3, 3]);
    expectClose(y.data, expected);
  });

  it("LayerNorm, FFN (exact GELU) and residuals", () => {
    const m = lowerInline(
      `import std.nn { LayerNorm, FFN }
model M() { in x: f32[N, 6]  out y: f32[N, 6]
  norm = LayerNorm(6)  ffn = FFN(6, 5)
  y = x + ffn(norm(x)) }`,
      { N: 4 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const expected: number[] = [];
    for (let r = 0; r < 4; r++) {
      const row = [...Array(6).keys()].map((j) => at(x, r, j));
      const mu = row.reduce((a, b) => a + b) / 6;
      const v = row.reduce((a, b) => a + (b - mu) ** 2, 0) / 6;
      const n = row.map(
        (z, j) =>
          ((z - mu) / Math.sqrt(v + 1e-5)) * at(l.get("norm.weight")!, j) +
          at(l.get("norm.bias")!, j),
      );
      const h = [...Array(5).keys()].map((o) => {
        let acc = at(l.get("ffn.up.bias")!, o);
        for (let k = 0; k < 6; k++) acc += n[k]! * at(l.get("ffn.up.weight")!, o, k);
        return 0.5 * acc * (1 + erf(acc / Math.SQRT2));
      });
      for (let o = 0; o < 6; o++) {
        let acc = at(l.get("ffn.down.bias")!, o);
        for (let k = 0; k < 5; k++) acc += h[k]! * at(l.get("ffn.down.weight")!, o, k);
        expected.push(row[o]! + acc);
      }
    }
    expectClose(y.data, expected);
  });

  it("causal multi-head attention", () => {
    const [B, T, d, H] = [2, 5, 6, 3];
    const m = lowerInline(
      `import std.nn { Attention }
model M() { in x: f32[B, T, ${d}]  out y: f32[B, T, ${d}]  attn = Attention(${d}, heads: ${H}, causal: true)  y = attn(x) }`,
      { B, T },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const proj = (name: string, b: number, t: number) =>
      [...Array(d).keys()].map((o) => {
        let acc = at(l.get(`attn.${name}.bias`)!, o);
        for (let k = 0; k < d; k++) acc += at(x, b, t, k) * at(l.get(`attn.${name}.weight`)!, o, k);
        return acc;
      });
    const hd = d / H;
    const expected: number[] = [];
    for (let b = 0; b < B; b++) {
      const q = [...Array(T).keys()].map((t) => proj("q", b, t));
      const k = [...Array(T).keys()].map((t) => proj("k", b, t));
      const v = [...Array(T).keys()].map((t) => proj("v", b, t));
      for (let t = 0; t < T; t++) {
        const mixed = new Array<number>(d).fill(0);
        for (let h = 0; h < H; h++) {
          const scores = [...Array(t + 1).keys()].map((s) => {
            let acc = 0;
            for (let j = 0; j < hd; j++) acc += q[t]![h * hd + j]! * k[s]![h * hd + j]!;
            return acc / Math.sqrt(hd);
          });
          const mx = Math.max(...scores);
          const e = scores.map((z) => Math.exp(z - mx));
          const sum = e.reduce((a, c) => a + c);
          for (let s = 0; s <= t; s++)
            for (let j = 0; j < hd; j++) mixed[h * hd + j]! += (e[s]! / sum) * v[s]![h * hd + j]!;
        }
        for (let o = 0; o < d; o++) {
          let acc = at(l.get("attn.o.bias")!, o);
          for (let j = 0; j < d; j++) acc += mixed[j]! * at(l.get("attn.o.weight")!, o, j);
          expected.push(acc);
        }
      }
    }
    expectClose(y.data, expected, 1e-10);
  });

  it("LoRA adds (alpha / r)·x·Aᵀ·Bᵀ to the base output", () => {
    const m = lowerInline(
      `import std.nn { Linear }
import std.adapt { LoRA }
model M() { in x: f32[N, 4]  out y: f32[N, 3]  q = Linear(4, 3) with LoRA(r: 2, alpha: 6.0)  y = q(x) }`,
      { N: 3 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const expected: number[] = [];
    for (let n = 0; n < 3; n++) {
      const xa = [0, 1].map((r) =>
        [0, 1, 2, 3].reduce((acc, k) => acc + at(x, n, k) * at(l.get("q.lora_A.weight")!, r, k), 0),
      );
      for (let o = 0; o < 3; o++) {
        let acc = at(l.get("q.bias")!, o);
        for (let k = 0; k < 4; k++) acc += at(x, n, k) * at(l.get("q.weight")!, o, k);
        acc +=
          3 *
          (xa[0]! * at(l.get("q.lora_B.weight")!, o, 0) +
            xa[1]! * at(l.get("q.lora_B.weight")!, o, 1));
        expected.push(acc);
      }
    }
    expectClose(y.data, expected);
  });

  it("gives the IR the parameters elaboration names, with tied weights once", () => {
    for (const [file, model, dims] of [
      ["gpt2.moe", "GPT2Mini", { B: 1, T: 4 }],
      ["tiny-transformer.moe", undefined, { B: 2, T: 3 }],
    ] as const) {
      const full = path.join(examples, file);
      const { lowered, diagnostics, analysis } = lowerFile(undefined, full, dims, model);
      expect(diagnostics).toEqual([]);
      expect(verifyGraph(lowered!.graph)).toEqual([]);
      const result = elaborate(analysis, full, model);
      if ("error" in result) throw new Error(result.error);
      const fromIr = lowered!.graph.nodes.flatMap((n) =>
        n.op === "param" ? [`${n.name} [${n.shape}]`] : [],
      );
      const fromElaboration = result.model.params.map((p) => `${p.path} [${p.shape}]`);
      expect(new Set(fromIr)).toEqual(new Set(fromElaboration));
      expect(fromIr.length).toBe(fromElaboration.length);
    }
  });

  it("records the id range of gathered inputs", () => {
    const { lowered } = lowerFile(
      undefined,
      path.join(examples, "gpt2.moe"),
      { B: 1, T: 4 },
      "GPT2Mini",
    );
    expect(lowered!.inputs).toEqual([{ name: "tokens", dtype: "i32", shape: [1, 4], max: 512 }]);
  });

  it("asks for the sizes of free input dims", () => {
    const { lowered, diagnostics } = lowerFile(
      undefined,
      path.join(examples, "gpt2.moe"),
      { B: 1 },
      "GPT2Mini",
    );
    expect(lowered).toBeUndefined();
    expect(diagnostics.map((d) => [d.code, d.message, d.hint])).toEqual([
      ["E0314", "the size of `T` (in input `tokens`) is not known", "pass it with --dim T=N"],
    ]);
  });

  it.each([
    ["one rank: segmented, one expert_matmul per LoRA matrix for all tasks", "2", 2],
    ["ranks per task: segmented with zero padding", "{ a: 2, b: 3, c: 1 }", 2],
  ])("base with per task LoRA, %s", (_, r, segmented) => {
    const source = `import std.nn { Linear }
import std.adapt { LoRA }
tasks Lang { a, b, c }
model M() { in x: f32[B, T, 4]  in task: Lang[B]  out y: f32[B, T, 5]
  q = Linear(4, 5) with per task LoRA(r: ${r}, alpha: 4.0)
  y = q(x, task) }`;
    const file = path.join(examples, "__per_task_lora__.moe");
    const { lowered, diagnostics } = lowerFile(source, file, { B: 4, T: 2 });
    expect(diagnostics).toEqual([]);
    const g = lowered!.graph;
    expect(g.nodes.filter((n) => n.op === "expert_matmul").length).toBe(segmented);
    // The base runs once, on every token.
    const onX = g.nodes.filter((n) => n.op === "matmul" && g.nodes[n.inputs[0]]!.op === "input");
    expect(onX.length).toBe(1);
    const l = leaves(lowered!);
    const tasks = [2, 0, -1, 1];
    l.set("task", { shape: [4], data: Float64Array.from(tasks) });
    const y = interpret(g, l).outputs.get("y")!;
    const x = l.get("x")!;
    const mat = (name: string) => l.get(name)!;
    const names = ["a", "b", "c"];
    for (let b = 0; b < 4; b++)
      for (let t = 0; t < 2; t++)
        for (let o = 0; o < 5; o++) {
          const xi = (k: number) => at(x, b, t, k);
          let want = at(mat("q.bias"), o);
          for (let k = 0; k < 4; k++) want += at(mat("q.weight"), o, k) * xi(k);
          if (tasks[b]! >= 0) {
            const name = names[tasks[b]!]!;
            const A = mat(`q.${name}.lora_A.weight`);
            const B = mat(`q.${name}.lora_B.weight`);
            const rank = A.shape[0]!;
            for (let j = 0; j < rank; j++) {
              let ax = 0;
              for (let k = 0; k < 4; k++) ax += at(A, j, k) * xi(k);
              want += (4 / rank) * at(B, o, j) * ax;
            }
          }
          expect(Math.abs(at(y, b, t, o) - want)).toBeLessThan(1e-12);
        }
  });

  it("LoRA targets: adapters placed by path equal adapters written in place", () => {
    const pair = (q: string) => `block Pair(d: Dim) {
  in x: f32[N, d]
  out y: f32[N, d]
  q = ${q}
  o = Linear(d, d)
  y = o(relu(q(x)))
}`;
    const header = `import std.nn { Linear }
import std.adapt { LoRA }`;
    const targeted = `${header}
${pair("Linear(d, d)")}
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  first = frozen Pair(4) with LoRA(r: 2, alpha: 4.0, targets: ["q"])
  second = Pair(4) with LoRA(r: 3, targets: ["*"])
  y = second(first(x)) }`;
    const explicit = `${header}
${pair("Linear(d, d) with LoRA(r: 2, alpha: 4.0)")}
block Both(d: Dim) {
  in x: f32[N, d]
  out y: f32[N, d]
  q = Linear(d, d) with LoRA(r: 3)
  o = Linear(d, d) with LoRA(r: 3)
  y = o(relu(q(x)))
}
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  first = frozen Pair(4)
  second = Both(4)
  y = second(first(x)) }`;
    const a = lowerFile(targeted, path.join(examples, "__targets_a__.moe"), { N: 3 });
    const b = lowerFile(explicit, path.join(examples, "__targets_b__.moe"), { N: 3 });
    expect(a.diagnostics).toEqual([]);
    expect(b.diagnostics).toEqual([]);
    const names = (m: LoweredModel) =>
      m.graph.nodes.flatMap((n) => (n.op === "param" ? [n.name] : [])).sort();
    expect(names(a.lowered!)).toEqual(names(b.lowered!));
    expect(names(a.lowered!)).toContain("first.q.lora_A.weight");
    expect(names(a.lowered!)).not.toContain("first.o.lora_A.weight");
    expect(names(a.lowered!)).toContain("second.o.lora_B.weight");
    const l = leaves(a.lowered!);
    expectClose(
      interpret(a.lowered!.graph, l).outputs.get("y")!.data,
      interpret(b.lowered!.graph, l).outputs.get("y")!.data,
    );
  });

  it("per task LoRA targets: each task's adapters placed by path equal ones written in place", () => {
    const pair = (q: string, o: string, task: string) => `block Pair(d: Dim) {
  in x: f32[N, d]${task}
  out y: f32[N, d]
  q = ${q}
  o = ${o}
  y = o(relu(q(x${task ? ", task" : ""})))
}`;
    const header = `import std.nn { Linear }
import std.adapt { LoRA }
tasks Lang { a, b, c }`;
    const targeted = `${header}
${pair("Linear(d, d)", "Linear(d, d)", "")}
model M() { in x: f32[N, 4]  in task: Lang[N]  out y: f32[N, 4]
  first = frozen Pair(4) with per task LoRA(r: { a: 2, b: 3, c: 1 }, alpha: 4.0, targets: ["q"])
  y = first(x, task) }`;
    const explicit = `${header}
${pair("Linear(d, d) with per task LoRA(r: { a: 2, b: 3, c: 1 }, alpha: 4.0)", "Linear(d, d)", "\n  in task: Lang[N]")}
model M() { in x: f32[N, 4]  in task: Lang[N]  out y: f32[N, 4]
  first = Pair(4)
  y = first(x, task) }`;
    const a = lowerFile(targeted, path.join(examples, "__task_targets_a__.moe"), { N: 5 });
    const b = lowerFile(explicit, path.join(examples, "__task_targets_b__.moe"), { N: 5 });
    expect(a.diagnostics).toEqual([]);
    expect(b.diagnostics).toEqual([]);
    const params = (m: LoweredModel) =>
      m.graph.nodes.flatMap((n) => (n.op === "param" ? [[n.name, n.trainable]] : [])).sort();
    const lora = (m: LoweredModel) => params(m).filter(([n]) => String(n).includes("lora"));
    expect(lora(a.lowered!)).toEqual(lora(b.lowered!));
    expect(lora(a.lowered!).map(([n]) => n)).toEqual(
      ["a", "b", "c"].flatMap((t) => [`first.q.${t}.lora_A.weight`, `first.q.${t}.lora_B.weight`]),
    );
    // The base stays frozen, each task's LoRA trains.
    expect(params(a.lowered!).filter(([, trainable]) => trainable)).toEqual(lora(a.lowered!));
    const l = leaves(a.lowered!);
    // Every task, and an example with no task (-1), which keeps the base alone.
    l.set("task", { shape: [5], data: Float64Array.from([2, 0, -1, 1, 0]) });
    const y = interpret(a.lowered!.graph, l).outputs.get("y")!.data;
    expectClose(y, interpret(b.lowered!.graph, l).outputs.get("y")!.data);
    const base = new Map(l);
    for (const [n, t] of l)
      if (n.includes("lora_B")) base.set(n, { ...t, data: t.data.map(() => 0) });
    const plain = interpret(a.lowered!.graph, base).outputs.get("y")!.data;
    // Only the task-less example (row 2) is the base's output.
    for (let i = 0; i < 5; i++) {
      const row = (v: ArrayLike<number>) => Array.from(v).slice(i * 4, i * 4 + 4);
      if (i === 2) expect(row(y)).toEqual(row(plain));
      else expect(row(y)).not.toEqual(row(plain));
    }
  });

  it("per task LoRA targets inside MoE experts: E0601 at the adapter, not in the base", () => {
    const source = `import std.nn { FFN }
import std.route { MoE, TopK }
import std.adapt { LoRA }
tasks Lang { en, fr }
block Layer(d: Dim) { in x: f32[B, T, d]  out y: f32[B, T, d]
  moe = MoE(router: TopK(1), experts: [FFN(d, 8); 2])
  y = moe(x) }
model M() { in x: f32[B, T, 4]  in task: Lang[B]  out y: f32[B, T, 4]
  layer = frozen Layer(4) with per task LoRA(r: 2, targets: ["up"])
  y = layer(x, task) }`;
    const file = path.join(examples, "__task_targets_moe__.moe");
    const { diagnostics } = lowerFile(source, file, { B: 2, T: 3 });
    expect(
      diagnostics.map((d) => [d.code, d.file, source.slice(d.span.start, d.span.end)]),
    ).toEqual([["E0601", file, 'LoRA(r: 2, targets: ["up"])']]);
    expect(diagnostics[0]!.message).toMatch(/does not lead with the batch/);
  });

  it("`frozen` on an adapter freezes the adapter, not its base, in moec params as in lowering", () => {
    const source = `import std.nn { Linear }
import std.adapt { LoRA, Bottleneck }
tasks Lang { a, b }
block Pair(d: Dim) { in x: f32[N, d]  out y: f32[N, d]
  q = Linear(d, d)
  o = Linear(d, d)
  y = o(relu(q(x))) }
model M() { in x: f32[N, 4]  in task: Lang[N]  out y: f32[N, 4]
  p = Linear(4, 4) with frozen LoRA(r: 2)
  f = frozen Linear(4, 4) with LoRA(r: 2)
  t = Pair(4) with frozen per task LoRA(r: 2, targets: ["q"])
  g = Linear(4, 4) with frozen Bottleneck(4, r: 2)
  y = g(t(f(p(x)), task)) }`;
    const file = path.join(examples, "__frozen_adapters__.moe");
    const { lowered, diagnostics, analysis } = lowerFile(source, file, { N: 3 });
    expect(diagnostics).toEqual([]);
    const result = elaborate(analysis, file, undefined);
    if ("error" in result) throw new Error(result.error);
    const elaborated = Object.fromEntries(result.model.params.map((p) => [p.path, p.trainable]));
    const fromIr = Object.fromEntries(
      lowered!.graph.nodes.flatMap((n) => (n.op === "param" ? [[n.name, n.trainable]] : [])),
    );
    expect(elaborated).toEqual(fromIr);
    const trainable = Object.keys(fromIr)
      .filter((n) => fromIr[n])
      .sort();
    expect(trainable).toEqual([
      "f.lora_A.weight",
      "f.lora_B.weight",
      "g.bias",
      "g.weight",
      "p.bias",
      "p.weight",
      "t.o.bias",
      "t.o.weight",
      "t.q.bias",
      "t.q.weight",
    ]);
  });

  it("integer weights lower as i32 like integer inputs (i64 included)", () => {
    const m = lowerInline(
      `model M() { in x: i64[N, 4]  out y: i64[N, 4]  out z: i32[4]  param a: i64[4] = ones
  param b: i32[4]
  y = x + a
  z = b * 2 }`,
      { N: 2 },
    );
    const dtypes = m.graph.nodes.flatMap((n) => (n.op === "param" ? [[n.name, n.dtype]] : []));
    expect(dtypes).toEqual([
      ["a", "i32"],
      ["b", "i32"],
    ]);
  });

  it("LoRA targets on a base bound elsewhere: the base's names; the base alone has no LoRA", () => {
    const m = lowerInline(
      `import std.nn { FFN }
import std.adapt { LoRA }
model M() { in x: f32[N, 4]  out y: f32[N, 4]  out z: f32[N, 4]
  ffn = FFN(4, 6)
  tuned = ffn with LoRA(r: 2, targets: ["up"])
  y = tuned(x)
  z = ffn(x) }`,
      { N: 3 },
    );
    const names = m.graph.nodes.flatMap((n) => (n.op === "param" ? [n.name] : [])).sort();
    // As `moec params` names them: the LoRA sits on ffn.up, and nothing is named tuned.*.
    expect(names).toEqual([
      "ffn.down.bias",
      "ffn.down.weight",
      "ffn.up.bias",
      "ffn.up.lora_A.weight",
      "ffn.up.lora_B.weight",
      "ffn.up.weight",
    ]);
    const l = leaves(m);
    const run = () => interpret(m.graph, l).outputs;
    const before = run();
    const diff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
      Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i]!)));
    expect(diff(before.get("y")!.data, before.get("z")!.data)).toBeGreaterThan(1e-3);
    // With lora_B zero the adapted base is the base: y = z.
    const b = l.get("ffn.up.lora_B.weight")!;
    l.set("ffn.up.lora_B.weight", { shape: b.shape, data: new Float64Array(b.data.length) });
    const after = run();
    expectClose(after.get("y")!.data, after.get("z")!.data);
    expectClose(after.get("z")!.data, before.get("z")!.data);
  });

  it("--merge-adapters: LoRA on a Linear folds into the weight; both forms agree", () => {
    const source = `import std.nn { Linear, FFN }
import std.adapt { LoRA }
model M() { in x: f32[B, 8]  out y: f32[B, 8]
  q = Linear(8, 8) with LoRA(r: 2, alpha: 4.0)
  k = Linear(8, 8, bias: false) with LoRA(r: 3)
  f = FFN(8, 16) with LoRA(r: 2)
  y = f(k(q(x))) }`;
    const file = path.join(examples, "__merge__.moe");
    const plain = lowerFile(source, file, { B: 5 });
    const merged = lowerFile(source, file, { B: 5 }, undefined, { mergeAdapters: true });
    expect(merged.diagnostics).toEqual([]);
    const g = merged.lowered!.graph;
    expect(verifyGraph(g)).toEqual([]);
    // Two weights merged (B·A, parameters only), the FFN's adapter kept: 2 matmuls on x fewer.
    const onParams = g.nodes.filter(
      (n) => n.op === "matmul" && n.inputs.every((i) => g.nodes[i]!.op === "param"),
    );
    expect(onParams.map((n) => n.shape)).toEqual([
      [8, 8],
      [8, 8],
    ]);
    const count = (m: LoweredModel) => m.graph.nodes.filter((n) => n.op === "matmul").length;
    expect(count(merged.lowered!)).toBe(count(plain.lowered!) - 2);
    // lora_B is random here (it starts at zero in a fresh model, which would hide a bug).
    const l = leaves(plain.lowered!);
    const want = interpret(plain.lowered!.graph, l).outputs.get("y")!.data;
    expectClose(interpret(g, l).outputs.get("y")!.data, want, 1e-12);
  });

  it("names what the back end cannot run yet", () => {
    const source = `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[B, T, 4]  out y: f32[B, T, 4]
  moe = MoE(router: TokenMix(group: 2, discrete: true, emit: softmax_experts), experts: [FFN(4, 8); 2])
  y = moe(x) }`;
    const file = path.join(examples, "__unsupported__.moe");
    const { lowered, diagnostics } = lowerFile(source, file, { B: 2, T: 2 });
    expect(lowered).toBeUndefined();
    expect(diagnostics.map((d) => d.code)).toEqual(["E0601"]);
    expect(diagnostics[0]!.message).toMatch(/discrete: true, emit: softmax_experts/);
  });

  it("lowers the task-based MoE example with its sparse top-k layers", () => {
    const { lowered, diagnostics } = lowerFile(undefined, path.join(examples, "task-moe.moe"), {
      B: 1,
      T: 2,
    });
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    expect(lowered!.graph.nodes.some((n) => n.op === "expert_matmul")).toBe(true);
  });

  it.each([
    [
      "per-task widths, segmented with zero padding",
      "Bottleneck",
      "{ en_de: 2, en_fr: 3, de_en: 1 }",
      2,
    ],
    ["one width, segmented", "Bottleneck", "2", 2],
    [
      "a softmax over the per-task width: every task's adapter, masked",
      "SoftBottleneck",
      "{ en_de: 2, en_fr: 3, de_en: 1 }",
      0,
    ],
  ])(
    "per-task adapters, %s: a mixed batch equals each example alone; -1 bypasses",
    (_, block, r, segmented) => {
      const source = `import std.nn { Linear }
import std.adapt { Bottleneck }
tasks Lang { en_de, en_fr, de_en }
block SoftBottleneck(d: Dim, r: Dim) {
  in x: f32[B, T, d]
  out y: f32[B, T, d]
  down = Linear(d, r)
  up = Linear(r, d)
  y = x + up(softmax(down(x)))
}
model M() { in x: f32[B, T, 4]  in task: Lang[B]  out y: f32[B, T, 4]
  adapter = per task ${block}(4, r: ${r})
  y = adapter(x, task) }`;
      const mixed = lowerInline(source, { B: 4, T: 2 });
      expect(mixed.graph.nodes.filter((n) => n.op === "expert_matmul").length).toBe(segmented);
      const single = lowerInline(source, { B: 1, T: 2 });
      const l = leaves(mixed);
      l.set("task", { shape: [4], data: Float64Array.from([2, 0, -1, 1]) });
      const y = interpret(mixed.graph, l).outputs.get("y")!;
      const x = l.get("x")!;
      [2, 0, -1, 1].forEach((task, b) => {
        const one = new Map(l);
        one.set("x", { shape: [1, 2, 4], data: x.data.slice(b * 8, b * 8 + 8) });
        one.set("task", { shape: [1], data: Float64Array.from([task]) });
        const yb = interpret(single.graph, one).outputs.get("y")!;
        expectClose(y.data.slice(b * 8, b * 8 + 8), yb.data);
        // No task: the adapters are bypassed.
        if (task === -1) expectClose(yb.data, one.get("x")!.data);
      });
      // Each task's adapter has its own parameters (and here, maybe, its own width).
      const widths = mixed.graph.nodes.flatMap((n) =>
        n.op === "param" && n.name.endsWith("down.bias") ? [`${n.name} ${n.shape}`] : [],
      );
      if (block === "Bottleneck")
        expect(widths).toEqual(
          r === "2"
            ? [
                "adapter.en_de.down.bias 2",
                "adapter.en_fr.down.bias 2",
                "adapter.de_en.down.bias 2",
              ]
            : [
                "adapter.en_de.down.bias 2",
                "adapter.en_fr.down.bias 3",
                "adapter.de_en.down.bias 1",
              ],
        );
    },
  );
});
