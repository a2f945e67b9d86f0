/**
 * The row-reduction template: one workgroup per row of the root (all axes but the last), for
 * kernels that reduce along the last axis — softmax, LayerNorm, RMSNorm, `sum(x, -1)` and the
 * elementwise chains around them. Each reduction is a phase: the invocations stride over the
 * row evaluating the reduction's input (recomputed from memory, never stored), then combine
 * their partial results in workgroup memory. Softmax is one phase with an online max/sum pair.
 * A last loop evaluates and stores the root. With `launch.rowsPerWorkgroup` each invocation
 * owns a whole row instead (no workgroup memory, no barriers).
 */
import { numel } from "../../ir/graph.js";
import { REDUCE_FUNCTION_ROWS, type ReduceFunctionRow } from "../../ir/ops.js";
import type { Launch } from "../plan-buffers.js";
import {
  Block,
  type ExprContext,
  KernelWriter,
  NEG_INF,
  accumulatorInit,
  linearWorkgroup,
  moduleText,
  u32,
  unflatten,
  viewIndex,
} from "./kernel-writer.js";

export function emitRows(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const t = launch.rowThreads ?? launch.workgroupSize[0];
  const solo = launch.rowsPerWorkgroup;
  // Which of a row's elements this invocation starts at (all of them when it is alone).
  const lane = t === 1 ? "0u" : "lidx";
  const rank = k.shape.length;
  const last = k.shape[rank - 1]!;
  const rowShape = k.shape.slice(0, -1);
  const rowCoords = unflatten("row", rowShape);
  const coordIn = (j: string) => (a: number) => (a === rank - 1 ? j : rowCoords[a]!);
  const ctx: ExprContext = {
    writer: w,
    rank,
    bound: new Map(),
    softmaxStats: new Map(),
    serial: { n: 0 },
  };
  const body: string[] = solo
    ? [
        `  let row = wg * ${u32(solo)} + lidx;`,
        `  if (row >= ${u32(numel(rowShape))}) {`,
        `    return;`,
        `  }`,
      ]
    : [`  let row = wg;`];
  const barrier = t === 1 ? [] : [`  workgroupBarrier();`];
  const isNinf = w.use("is_ninf");
  const isNan = w.use("is_nan");
  w.use("max_");
  let phase = 0;

  /** Tree reduction of red_a (and red_b) across the workgroup. */
  const treeReduce = (combine: (indent: string) => string[]): string[] => {
    if (t === 1) return [];
    return [
      `  workgroupBarrier();`,
      `  for (var s = ${u32(t / 2)}; s > 0u; s = s / 2u) {`,
      `    if (lidx < s) {`,
      ...combine("      "),
      `    }`,
      `    workgroupBarrier();`,
      `  }`,
    ];
  };

  for (const id of k.members) {
    const n = w.node(id);
    if (n.op !== "reduce" && n.op !== "softmax") continue;
    const input = w.node(n.inputs[0]);
    const extent = input.shape[input.shape.length - 1]!;
    const p = phase++;
    const loop = new Block(ctx, coordIn("j"), "    ");
    const x = loop.valueAs(input.id, "f32");
    if (n.op === "reduce") {
      const f: ReduceFunctionRow = REDUCE_FUNCTION_ROWS[n.fn];
      const init = accumulatorInit(f.identity);
      for (const h of f.wgsl.helpers ?? []) w.use(h);
      const comb = f.wgsl.combine;
      body.push(
        `  var acc${p}: f32 = ${init};`,
        `  for (var j = ${lane}; j < ${u32(extent)}; j += ${u32(t)}) {`,
        ...loop.lines,
        `    acc${p} = ${comb(`acc${p}`, x)};`,
        `  }`,
        ...(t === 1 ? [] : [`  red_a[lidx] = acc${p};`]),
        ...treeReduce((i) => [`${i}red_a[lidx] = ${comb("red_a[lidx]", "red_a[lidx + s]")};`]),
        `  let r${p}: ${n.dtype} = ${n.dtype}(${f.wgsl.finish(t === 1 ? `acc${p}` : "red_a[0]", extent)});`,
        ...barrier,
      );
      ctx.bound.set(id, `r${p}`);
    } else {
      // Online softmax statistics: m (running max) and s (sum of exp(x - m)).
      body.push(
        `  var m${p}: f32 = ${NEG_INF};`,
        `  var s${p}: f32 = 0.0;`,
        `  for (var j = ${lane}; j < ${u32(extent)}; j += ${u32(t)}) {`,
        ...loop.lines,
        // A NaN makes m NaN for good (tested on the bits: drivers may compare NaN as they
        // like), and the row's probabilities NaN, as in PyTorch.
        `    if (${isNan}(${x})) {`,
        `      m${p} = ${x};`,
        `    } else if (!${isNinf}(${x}) && !${isNan}(m${p})) {`,
        `      if (${x} > m${p}) {`,
        `        s${p} = select(s${p} * exp(m${p} - ${x}), 0.0, ${isNinf}(m${p})) + 1.0;`,
        `        m${p} = ${x};`,
        `      } else {`,
        `        s${p} = s${p} + exp(${x} - m${p});`,
        `      }`,
        `    }`,
        `  }`,
        ...(t === 1 ? [] : [`  red_a[lidx] = m${p};`, `  red_b[lidx] = s${p};`]),
        ...treeReduce((i) => [
          `${i}let ma = red_a[lidx];`,
          `${i}let mb = red_a[lidx + s];`,
          `${i}let mm = max_(ma, mb);`,
          `${i}if (${isNan}(mm)) {`,
          `${i}  red_a[lidx] = mm;`,
          `${i}} else if (!${isNinf}(mm)) {`,
          `${i}  red_b[lidx] = select(red_b[lidx] * exp(ma - mm), 0.0, ${isNinf}(ma)) +`,
          `${i}    select(red_b[lidx + s] * exp(mb - mm), 0.0, ${isNinf}(mb));`,
          `${i}  red_a[lidx] = mm;`,
          `${i}}`,
        ]),
        `  let m${p}r = ${t === 1 ? `m${p}` : "red_a[0]"};`,
        `  let s${p}r = select(${t === 1 ? `s${p}` : "red_b[0]"}, m${p}r, ${isNan}(m${p}r));`,
        // An all-masked row: every probability is 0, as in the reference.
        `  let m${p}f = select(m${p}r, 0.0, ${isNinf}(m${p}r));`,
        ...barrier,
      );
      ctx.softmaxStats!.set(id, { max: `m${p}f`, sum: `s${p}r` });
    }
  }

  const final = new Block(ctx, coordIn("j"), "    ");
  const out = w.bind(k.out.storage, k.out.dtype, "read_write");
  const v = final.valueAs(k.root, k.out.dtype);
  const coords = k.shape.map((_, a) => coordIn("j")(a));
  body.push(
    `  for (var j = ${lane}; j < ${u32(last)}; j += ${u32(t)}) {`,
    ...final.lines,
    `    ${out.set(viewIndex(k.out, coords), v)}`,
    `  }`,
  );
  return moduleText(
    w,
    [
      ...(t === 1
        ? []
        : [
            `var<workgroup> red_a: array<f32, ${t}>;`,
            `var<workgroup> red_b: array<f32, ${t}>;`,
            ``,
          ]),
      `@compute @workgroup_size(${launch.workgroupSize[0]}, 1, 1)`,
      `fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {`,
      `  ${linearWorkgroup(launch.grid, launch.workgroups)}`,
      ...body,
      `}`,
    ].join("\n"),
  );
}
