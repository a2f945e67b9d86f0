// Every router and adapter family (docs/routing.md; the small models of test/family-models.ts,
// which the gradient checks use too) exported to ONNX and run by onnxruntime-node
// against the reference interpreter on the same weights and inputs: relative L2 < 1e-5, at two
// sizes of each dim left symbolic. Task ids are a mixed batch with a task-less example (-1).
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { compareAt, exportTo, scratchDir, session, writeModel } from "./onnx-harness.js";
import {
  experts,
  groupedModel,
  instructedModel,
  loraModel,
  moeModel,
  motModel,
  taskModel,
} from "../family-models.js";

const dir = scratchDir();

const hashModel = `import std.nn { FFN }
import std.route { MoE, Hash }
model M() { in x: f32[B, T, 4]  in tokens: i32[B, T]  out y: f32[B, T, 4]
  moe = MoE(router: Hash(seed: 2), experts: ${experts(4)})
  y = moe(x, tokens) }`;

const bottleneckModel = `import std.adapt { Bottleneck }
model M() { in x: f32[B, T, 6]  out y: f32[B, T, 6]
  a = Bottleneck(6, 3, act: gelu)
  b = Bottleneck(6, 1, norm: false)
  y = b(a(x)) }`;

const perTaskModel = (adapter: string) => `import std.nn { Linear }
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

interface Family {
  name: string;
  source: string;
  /** Dims fixed at export: their sizes do not follow them (docs/export.md). */
  dim?: Record<string, number>;
  /** Two sizes of each symbolic dim. */
  sizes: Record<string, number>[];
  mergeAdapters?: boolean;
  /** Every example has a task (no -1). */
  everyTask?: boolean;
}

const N2 = [{ N: 7 }, { N: 12 }];
const BT2 = [
  { B: 4, T: 3 },
  { B: 5, T: 2 },
];

const FAMILIES: Family[] = [
  ...[1, 2].flatMap((k) =>
    [true, false].map((renormalize) => ({
      name: `TopK(k: ${k}, renormalize: ${renormalize})`,
      source: moeModel(`TopK(k: ${k}, renormalize: ${renormalize})`),
      sizes: N2,
    })),
  ),
  { name: "TopK(k: 2, softmax: after)", source: moeModel("TopK(k: 2, softmax: after)"), sizes: N2 },
  ...["residual", "zero"].flatMap((overflow) =>
    [1, 2].map((k) => ({
      name: `TopK(k: ${k}, capacity: 1.0, overflow: ${overflow})`,
      source: moeModel(`TopK(k: ${k}, capacity: 1.0, overflow: ${overflow})`, "", 3),
      // The capacity is rounded from N.
      dim: { N: 9 },
      sizes: [{}],
    })),
  ),
  ...[1.5, 0.5, 1].map((capacity) => ({
    name: `ExpertChoice(capacity: ${capacity})`,
    source: moeModel(`ExpertChoice(capacity: ${capacity})`),
    // Each expert's number of rows is rounded from N.
    dim: { N: 7 },
    sizes: [{}],
  })),
  ...[
    "TaskRoute(level: token, k: 2, embed: 3)",
    "TaskRoute(level: token, k: 1, embed: 2)",
    "TaskRoute(level: sequence, k: 1, embed: 2)",
    "TaskRoute(level: sequence, k: 2, embed: 3)",
    "TaskRoute(level: task, k: 2)",
    "TaskRoute(level: task, k: 1)",
    "TopK(k: 2, task_embed: 3)",
  ].map((router) => ({ name: router, source: taskModel(router), sizes: BT2 })),
  // A task map needs every example's task (the reference rejects -1 too).
  {
    name: "TaskMap({ a: [0], b: [1, 2], c: [2, 3] })",
    source: taskModel("TaskMap({ a: [0], b: [1, 2], c: [2, 3] })"),
    sizes: BT2,
    everyTask: true,
  },
  ...[
    "Grouped()",
    "Grouped(outer: normalize, inner: normalize)",
    "Grouped(outer: softmax, inner: normalize)",
  ].map((router) => ({
    name: router,
    source: groupedModel(router, `[[FFN(4, 3, act: gelu); 2], [FFN(4, 3, act: gelu); 3]]`),
    sizes: N2,
  })),
  {
    name: "Grouped(pin: [0.7, 0.3])",
    source: groupedModel("Grouped(pin: [0.7, 0.3])", `[[FFN(4, 3, act: gelu); 2]; 2]`),
    sizes: N2,
  },
  {
    name: "Grouped LoRA experts on one base",
    source: groupedModel("Grouped(inner: normalize)", `[[base with LoRA(r: 2, alpha: 4.0); 2]; 2]`),
    sizes: N2,
  },
  ...[
    ["Grouped(on: instruction)", `[[FFN(4, 3, act: gelu); 2], [FFN(4, 3, act: gelu); 3]]`],
    ["Grouped(inner: normalize, on: instruction)", `[[base with LoRA(r: 2, alpha: 4.0); 2]; 2]`],
  ].map(([router, groups]) => ({
    name: `${router} over ${groups}`,
    source: instructedModel(router!, groups!),
    sizes: BT2,
  })),
  // Mixture of tokens mixes across its group axis, padded to whole groups: that dim is fixed.
  ...[
    "TokenMix(group: 3)",
    "TokenMix(group: 3, temperature: 0.5, emit: softmax_experts)",
    "TokenMix(group: 3, discrete: true)",
  ].map((router) => ({
    name: router,
    source: motModel(router),
    dim: { B: 3 },
    sizes: [{ T: 4 }, { T: 2 }],
  })),
  ...[
    "TokenMix(group: 2, axis: sequence)",
    "TokenMix(group: 2, discrete: true, axis: sequence)",
  ].map((router) => ({
    name: router,
    source: motModel(router),
    dim: { T: 4 },
    sizes: [{ B: 3 }, { B: 6 }],
  })),
  {
    name: "TokenMix(group: 2) padding a batch of 3",
    source: motModel("TokenMix(group: 2)"),
    dim: { B: 3 },
    sizes: [{ T: 2 }, { T: 3 }],
  },
  {
    name: "TopK(2) with a shared expert",
    source: moeModel("TopK(2)", ", shared: [FFN(4, 5, act: gelu)]"),
    sizes: N2,
  },
  {
    name: "Soft() with two shared experts",
    source: moeModel("Soft()", ", shared: [FFN(4, 5, act: gelu), FFN(4, 2)]"),
    sizes: N2,
  },
  { name: "Hash", source: hashModel, sizes: BT2 },
  { name: "LoRA unmerged (targeted, frozen base)", source: loraModel, sizes: N2 },
  { name: "LoRA merged", source: loraModel, sizes: N2, mergeAdapters: true },
  { name: "Bottleneck adapters", source: bottleneckModel, sizes: BT2 },
  ...[
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
  ].map(([name, adapter]) => ({ name: name!, source: perTaskModel(adapter!), sizes: BT2 })),
];

/** Task ids for a batch of B: every task, and a task-less example (-1) unless `every`. */
const taskIds = (B: number, every = false) =>
  Array.from({ length: B }, (_, i) => (every ? [2, 0, 1] : [2, 0, -1, 1])[i % (every ? 3 : 4)]!);

describe("every router and adapter family exports to ONNX and matches the reference", () => {
  FAMILIES.forEach((f, i) => {
    it(f.name, async () => {
      const file = writeModel(dir, `family${i}`, f.source);
      const fixed = f.dim ?? {};
      const options = {
        dim: Object.entries(fixed).map(([k, v]) => `${k}=${v}`),
        ...(f.mergeAdapters ? { mergeAdapters: true } : {}),
      };
      const e = exportTo(file, path.join(dir, `family${i}.onnx`), options);
      expect(e.symbolic).toEqual(
        Object.keys(f.sizes[0]!)
          .filter((d) => !(d in fixed))
          .sort(),
      );
      const s = await session(e.modelBytes);
      for (const sizes of f.sizes) {
        const dims = { ...fixed, ...sizes };
        const ints: Record<string, number[]> = f.source.includes("in task")
          ? { task: taskIds(dims.B!, f.everyTask) }
          : {};
        const errors = await compareAt(file, e, s, dims, options, ints);
        for (const [name, err] of Object.entries(errors))
          expect(err, `${name} at ${JSON.stringify(dims)}`).toBeLessThan(1e-5);
      }
      await s.release();
    });
  });
});
