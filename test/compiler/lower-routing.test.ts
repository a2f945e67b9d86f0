// Dense MoE lowering (Soft, Grouped on tokens and on an instruction, TokenMix, TaskMap) against
// float64 code written here.
import { describe, expect, it } from "vitest";
import { type HostTensor, interpret } from "../../runtime/reference/interpret.js";
import * as path from "node:path";
import {
  close,
  ffn,
  leaves,
  linear,
  lower,
  lowerFile,
  mat,
  relu,
  row,
  softmax,
} from "./routing-fixtures.js";

const statsFile = path.join(import.meta.dirname, "../../examples/__routing__.moe");

/**
 * Σ_g Σ_{e in g} w(g)·softmax(b within g)_e·expert_e(x) over FFN experts `moe.experts.g.j` of
 * width 4: groups of `sizes`, group weights `wg`, expert logits `b` (group-major).
 */
function groupedMix(
  l: Map<string, HostTensor>,
  xn: number[],
  wg: number[],
  b: number[],
  sizes: number[],
): number[] {
  const out = [0, 0, 0, 0];
  let first = 0;
  sizes.forEach((size, g) => {
    const inner = softmax(b.slice(first, first + size));
    for (let j = 0; j < size; j++) {
      const ye = ffn(l, `moe.experts.${g}.${j}`, xn);
      for (let o = 0; o < 4; o++) out[o]! += wg[g]! * inner[j]! * ye[o]!;
    }
    first += size;
  });
  return out;
}

describe("dense MoE lowering", () => {
  it("Soft: softmax-weighted sum of every expert", () => {
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, Soft }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  moe = MoE(router: Soft(), experts: [FFN(4, 3, act: relu); 3])
  y = moe(x) }`,
      { N: 5 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const expected = [...Array(5).keys()].flatMap((n) => {
      const xn = row(x, n);
      const w = softmax(linear(xn, mat(l.get("moe.router.gate.weight")!)));
      const ys = [0, 1, 2].map((e) => ffn(l, `moe.experts.${e}`, xn));
      return [0, 1, 2, 3].map((j) => ys.reduce((a, ye, e) => a + w[e]! * ye[j]!, 0));
    });
    close(y.data, expected);
  });

  it("Soft with one expert equals that expert", () => {
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, Soft }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  moe = MoE(router: Soft(), experts: [FFN(4, 3, act: relu)])
  y = moe(x) }`,
      { N: 3 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    close(
      y.data,
      [0, 1, 2].flatMap((n) => ffn(l, "moe.experts.0", row(l.get("x")!, n))),
    );
  });

  it("Grouped LoRA experts on a shared base: base(x) + Σ w(g)·w(e|g)·δ_e(x)", () => {
    const m = lower(
      `import std.nn { Linear }
import std.route { MoE, Grouped }
import std.adapt { LoRA }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  base = frozen Linear(4, 4)
  moe = MoE(router: Grouped(outer: softmax, inner: normalize), experts: [[base with LoRA(r: 2, alpha: 4.0); 2]; 2])
  y = moe(x) }`,
      { N: 3 },
    );
    // Base applied once, not once per expert.
    expect(m.graph.nodes.filter((n) => n.op === "param" && n.name === "base.weight")).toHaveLength(
      1,
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const expected = [0, 1, 2].flatMap((n) => {
      const xn = row(x, n);
      const wg = softmax(linear(xn, mat(l.get("moe.router.group_gate.weight")!)));
      const el = linear(xn, mat(l.get("moe.router.expert_gate.weight")!));
      const sig = el.map((z) => 1 / (1 + Math.exp(-z)));
      const inner = [0, 1].flatMap((g) => {
        const s = sig.slice(2 * g, 2 * g + 2);
        const t = s[0]! + s[1]!;
        return s.map((v) => (wg[g]! * v) / t);
      });
      const out = linear(xn, mat(l.get("base.weight")!), row(l.get("base.bias")!, 0));
      [0, 1].forEach((g) =>
        [0, 1].forEach((j) => {
          const p = `moe.experts.${g}.${j}`;
          const delta = linear(
            linear(xn, mat(l.get(`${p}.lora_A.weight`)!)),
            mat(l.get(`${p}.lora_B.weight`)!),
          );
          for (let o = 0; o < 4; o++) out[o] += 2 * inner[2 * g + j]! * delta[o]!;
        }),
      );
      return out;
    });
    close(y.data, expected);
  });

  it("TokenMix: merge over the group, expert, emit with the same weights", () => {
    const [B, T, d, E, group] = [4, 2, 3, 2, 2];
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[B, T, ${d}]  out y: f32[B, T, ${d}]
  moe = MoE(router: TokenMix(group: ${group}, temperature: 0.5), experts: [FFN(${d}, 2, act: relu); ${E}])
  y = moe(x) }`,
      { B, T },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const wc = mat(l.get("moe.router.controller.weight")!);
    const out = new Array<number>(B * T * d).fill(0);
    for (let g = 0; g < B / group; g++) {
      for (let t = 0; t < T; t++) {
        const members = [...Array(group).keys()].map((i) => (g * group + i) * T + t);
        const xs = members.map((r) => row(x, r));
        for (let e = 0; e < E; e++) {
          const w = softmax(xs.map((xi) => linear(xi, wc)[e]! / 0.5));
          const mixed = [...Array(d).keys()].map((j) =>
            xs.reduce((a, xi, i) => a + w[i]! * xi[j]!, 0),
          );
          const ye = ffn(l, `moe.experts.${e}`, mixed);
          members.forEach((r, i) => ye.forEach((v, j) => (out[r * d + j]! += w[i]! * v)));
        }
      }
    }
    close(y.data, out);
  });

  it("TokenMix(emit: softmax_experts, axis: sequence): consecutive positions, emit softmax(logits / τ) over experts (docs/routing.md)", () => {
    const [B, T, d, E, group, tau] = [2, 4, 3, 3, 2, 0.5];
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[B, T, ${d}]  out y: f32[B, T, ${d}]
  moe = MoE(router: TokenMix(group: ${group}, temperature: ${tau}, emit: softmax_experts, axis: sequence), experts: [FFN(${d}, 2, act: relu); ${E}])
  y = moe(x) }`,
      { B, T },
      ["W0502"],
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const wc = mat(l.get("moe.router.controller.weight")!);
    const out = new Array<number>(B * T * d).fill(0);
    for (let b = 0; b < B; b++) {
      for (let k = 0; k < T / group; k++) {
        const members = [...Array(group).keys()].map((i) => b * T + k * group + i);
        const xs = members.map((r) => row(x, r));
        const s = xs.map((xi) => linear(xi, wc).map((v) => v / tau)); // [group][E]
        const ys = [...Array(E).keys()].map((e) => {
          const w = softmax(s.map((si) => si[e]!));
          const mixed = [...Array(d).keys()].map((j) =>
            xs.reduce((a, xi, i) => a + w[i]! * xi[j]!, 0),
          );
          return ffn(l, `moe.experts.${e}`, mixed);
        });
        members.forEach((r, i) => {
          const p = softmax(s[i]!);
          ys.forEach((ye, e) => ye.forEach((v, j) => (out[r * d + j]! += p[e]! * v)));
        });
      }
    }
    close(y.data, out);
  });

  it("Grouped(outer: normalize) over groups of unequal size: σ over the sum, expert gate rows group-major (docs/routing.md)", () => {
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, Grouped }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  moe = MoE(router: Grouped(outer: normalize, inner: softmax), experts: [[FFN(4, 3, act: relu); 2], [FFN(4, 3, act: relu); 3]])
  y = moe(x) }`,
      { N: 3 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));
    const sizes = [2, 3];
    const expected = [0, 1, 2].flatMap((n) => {
      const xn = row(x, n);
      const a = linear(xn, mat(l.get("moe.router.group_gate.weight")!)).map(sigmoid);
      const wg = a.map((v) => v / (a[0]! + a[1]!));
      const b = linear(xn, mat(l.get("moe.router.expert_gate.weight")!));
      return groupedMix(l, xn, wg, b, sizes);
    });
    close(y.data, expected);
  });

  it("Grouped(on: instruction): each sequence's weights from its instruction, at every position", () => {
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, Grouped }
model M() { in x: f32[B, T, 4]  in instruction: f32[B, 4]  out y: f32[B, T, 4]
  moe = MoE(router: Grouped(on: instruction), experts: [[FFN(4, 3, act: relu); 2], [FFN(4, 3, act: relu)]])
  y = moe(x, instruction) }`,
      { B: 3, T: 7 },
    );
    const l = leaves(m);
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const instruction = l.get("instruction")!;
    const sizes = [2, 1];
    const expected = [...Array(21).keys()].flatMap((n) => {
      const xn = row(x, n);
      const z = row(instruction, Math.floor(n / 7));
      const wg = softmax(linear(z, mat(l.get("moe.router.group_gate.weight")!)));
      const b = linear(z, mat(l.get("moe.router.expert_gate.weight")!));
      return groupedMix(l, xn, wg, b, sizes);
    });
    close(y.data, expected);
  });

  it("TokenMix on a batch of single tokens [B, d] is the [B, 1, d] mixture, continuous or discrete", () => {
    for (const discrete of [false, true]) {
      const source = (x: string) => `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[${x}]  out y: f32[${x}]
  moe = MoE(router: TokenMix(group: 3, discrete: ${discrete}), experts: [FFN(4, 2, act: relu); 5])
  y = moe(x) }`;
      const seq = lower(source("B, 1, 4"), { B: 6 });
      const flat = lower(source("B, 4"), { B: 6 });
      const l = leaves(seq);
      const ys = interpret(seq.graph, l).outputs.get("y")!;
      l.set("x", { shape: [6, 4], data: l.get("x")!.data });
      const yf = interpret(flat.graph, l).outputs.get("y")!;
      expect(yf.shape).toEqual([6, 4]);
      close(yf.data, Array.from(ys.data));
    }
  });

  it("TaskMap: each example mixes its task's experts, in one mixed-task batch", () => {
    const m = lower(
      `import std.nn { FFN }
import std.route { MoE, TaskMap }
tasks Lang { en_de, en_fr }
model M() { in x: f32[B, T, 4]  in task: Lang[B]  out y: f32[B, T, 4]
  moe = MoE(router: TaskMap({ en_de: [0], en_fr: [1, 2] }), experts: [FFN(4, 3, act: relu); 3])
  y = moe(x, task) }`,
      { B: 2, T: 2 },
    );
    const l = leaves(m, { task: [1, 0] });
    const y = interpret(m.graph, l).outputs.get("y")!;
    const x = l.get("x")!;
    const expected = [0, 1, 2, 3].flatMap((r) => {
      const xn = row(x, r);
      if (r < 2) {
        const a = ffn(l, "moe.experts.1", xn);
        const b = ffn(l, "moe.experts.2", xn);
        return a.map((v, j) => 0.5 * v + 0.5 * b[j]!);
      }
      return ffn(l, "moe.experts.0", xn);
    });
    close(y.data, expected);
  });

  it("dense routers report each expert's mean gate share (summing to 1) with --stats", () => {
    const stats = (source: string, dims: Record<string, number>, fixed = {}) => {
      const { lowered } = lowerFile(source, statsFile, dims, undefined, { routingStats: true });
      const l = leaves(lowered!, fixed);
      return { l, share: interpret(lowered!.graph, l).outputs.get("routing:moe.share")! };
    };
    const mean = (rows: number[][]) =>
      rows[0]!.map((_, e) => rows.reduce((a, r) => a + r[e]!, 0) / rows.length);
    // Soft: the mean of the softmax gates.
    const soft = stats(
      `import std.nn { FFN }
import std.route { MoE, Soft }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  moe = MoE(router: Soft(), experts: [FFN(4, 3, act: relu); 3])
  y = moe(x) }`,
      { N: 7 },
    );
    const gate = mat(soft.l.get("moe.router.gate.weight")!);
    close(soft.share.data, mean(mat(soft.l.get("x")!).map((x) => softmax(linear(x, gate)))));
    // TaskMap: the mean of each example's row of the task table.
    const taskMap = stats(
      `import std.nn { FFN }
import std.route { MoE, TaskMap }
tasks Lang { en_de, en_fr }
model M() { in x: f32[B, T, 4]  in task: Lang[B]  out y: f32[B, T, 4]
  moe = MoE(router: TaskMap({ en_de: [0], en_fr: [1, 2] }), experts: [FFN(4, 3, act: relu); 3])
  y = moe(x, task) }`,
      { B: 4, T: 2 },
      { task: [1, 0, 1, 1] },
    );
    close(taskMap.share.data, [1 / 4, 3 / 8, 3 / 8]);
    // TokenMix: each token's emit weights over the experts, normalised, then averaged.
    const [B, T, E, group] = [4, 1, 3, 2];
    const mix = stats(
      `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[B, T, 3]  out y: f32[B, T, 3]
  moe = MoE(router: TokenMix(group: ${group}, temperature: 0.5), experts: [FFN(3, 2, act: relu); ${E}])
  y = moe(x) }`,
      { B, T },
    );
    const wc = mat(mix.l.get("moe.router.controller.weight")!);
    const xs = mat(mix.l.get("x")!);
    const perToken: number[][] = [];
    for (let g = 0; g < B / group; g++) {
      const members = [0, 1].map((i) => xs[g * group + i]!);
      const w = [...Array(E).keys()].map((e) =>
        softmax(members.map((xi) => linear(xi, wc)[e]! / 0.5)),
      );
      members.forEach((_, i) => {
        const t = w.reduce((a, we) => a + we[i]!, 0);
        perToken.push(w.map((we) => we[i]! / t));
      });
    }
    close(mix.share.data, mean(perToken));
    for (const s of [soft.share, taskMap.share, mix.share])
      expect([...s.data].reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
  });
});
