// Small models of every router and adapter family (docs/routing.md, docs/adapters.md), shared
// by the gradient checks (test/compiler/ir/differentiate-families.test.ts) and the ONNX export
// tests (test/export/onnx-families.test.ts).

export const experts = (n: number, d = 4, h = 3) => `[FFN(${d}, ${h}, act: gelu); ${n}]`;

export const moeModel = (router: string, more = "", E = 4) => `import std.nn { FFN }
import std.route { MoE, TopK, ExpertChoice, Soft }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  moe = MoE(router: ${router}, experts: ${experts(E)}${more})
  y = moe(x) }`;

export const taskModel = (router: string, E = 4) => `import std.nn { FFN }
import std.route { MoE, TaskRoute, TaskMap, TopK }
tasks Lang { a, b, c }
model M() { in x: f32[B, T, 4]  in task: Lang[B]  out y: f32[B, T, 4]
  moe = MoE(router: ${router}, experts: ${experts(E)})
  y = moe(x, task) }`;

export const groupedModel = (router: string, groups: string) => `import std.nn { FFN, Linear }
import std.adapt { LoRA }
import std.route { MoE, Grouped }
model M() { in x: f32[N, 4]  out y: f32[N, 4]
  ${groups.includes("base") ? "base = Linear(4, 4)" : ""}
  moe = MoE(router: ${router}, experts: ${groups})
  y = moe(x) }`;

/** Grouped routing on an instruction: one f32 vector per sequence, beside x [B, T, 4]. */
export const instructedModel = (router: string, groups: string) => `import std.nn { FFN, Linear }
import std.adapt { LoRA }
import std.route { MoE, Grouped }
model M() { in x: f32[B, T, 4]  in instruction: f32[B, 4]  out y: f32[B, T, 4]
  ${groups.includes("base") ? "base = Linear(4, 4)" : ""}
  moe = MoE(router: ${router}, experts: ${groups})
  y = moe(x, instruction) }`;

export const motModel = (router: string, E = 3) => `import std.nn { FFN }
import std.route { MoE, TokenMix }
model M() { in x: f32[B, T, 4]  out y: f32[B, T, 4]
  moe = MoE(router: ${router}, experts: ${experts(E)})
  y = moe(x) }`;

export const loraModel = `import std.nn { Linear, FFN }
import std.adapt { LoRA }
block Pair(d: Dim) { in x: f32[..., d]  out y: f32[..., d]
  q = Linear(d, d)
  v = Linear(d, d, bias: false)
  y = v(q(x)) }
model M() { in x: f32[N, 4]  out y: f32[N, 3]
  q = Linear(4, 3) with LoRA(r: 2, alpha: 6.0)
  k = Linear(4, 4, bias: false) with LoRA(r: 3)
  f = FFN(4, 5, act: gelu) with LoRA(r: 2)
  pair = frozen Pair(4) with LoRA(r: 2, alpha: 4.0, targets: ["q"])
  y = q(pair(k(x)) + f(x)) }`;
