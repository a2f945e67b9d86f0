/**
 * The fused attention template: softmax(f(Q · Kᵀ)) · V with f any elementwise chain (scale,
 * causal mask, additive bias), one invocation per query row. The invocation keeps its query
 * row and the output row in registers and streams over the keys with an online softmax
 * (running max m and normaliser l), so the T×T score matrix never exists in memory. With a
 * causal mask applied last, keys after the query are skipped outright.
 */
import { type Launch, matmulDims } from "../plan-buffers.js";
import {
  Block,
  type ExprContext,
  KernelWriter,
  NEG_INF,
  linearWorkgroup,
  moduleText,
  u32,
  unflatten,
  viewIndex,
} from "./kernel-writer.js";
import { epilogueFunction } from "./matmul.js";

export function emitAttention(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const g = w.graph;
  const pv = g.nodes[k.anchor!]!;
  const qk = g.nodes[k.scores!]!;
  const sm = g.nodes[k.softmax!]!;
  if (pv.op !== "matmul" || qk.op !== "matmul" || sm.op !== "softmax") {
    throw new Error("internal: malformed attention kernel");
  }
  const { m: tq, n: hd } = matmulDims(g, pv.id);
  const { n: tk, k: d0 } = matmulDims(g, qk.id);
  const Q = k.loads[qk.inputs[0]]!;
  const Kt = k.loads[qk.inputs[1]]!;
  const V = k.loads[pv.inputs[1]]!;
  const rank = k.shape.length;
  const batchShape = k.shape.slice(0, -2);
  const batch = unflatten("bt", batchShape);
  const threads = launch.workgroupSize[0];
  const isNinf = w.use("is_ninf");

  // Operand element offsets: batch coordinates, then the matrix axes.
  const at = (view: typeof Q, row: string, col: string) => {
    const r = view.shape.length;
    const coords = view.shape.map((d, a) =>
      d === 1
        ? "0u"
        : a === r - 2
          ? row
          : a === r - 1
            ? col
            : batch[a + batchShape.length - (r - 2)]!,
    );
    return viewIndex(view, coords);
  };
  const rd = (view: typeof Q, idx: string) =>
    `${view.dtype === "f32" ? "" : "f32"}(${w.bindView(view)}[${idx}])`;

  // The score chain between Q·Kᵀ and the softmax, evaluated at (batch, i, j).
  const ctx: ExprContext = {
    writer: w,
    rank,
    bound: new Map([[qk.id, "score"]]),
    serial: { n: 0 },
  };
  const scoreCoord = (a: number) => (a < rank - 2 ? batch[a]! : a === rank - 2 ? "i" : "j");
  const s = new Block(ctx, scoreCoord, "    ");
  const e = s.valueAs(sm.inputs[0], "f32");
  // Keys after the query can be skipped only when the mask is the last step before softmax.
  const causal = g.nodes[sm.inputs[0]]!.op === "causal_mask";
  const keyEnd = causal ? `min(${u32(tk)}, i + 1u)` : u32(tk);

  const body = [
    `  let gi = wg * ${u32(threads)} + lidx;`,
    `  if (gi >= ${u32(tq * batchShape.reduce((a, b) => a * b, 1))}) {`,
    `    return;`,
    `  }`,
    `  let i = gi % ${u32(tq)};`,
    `  let bt = gi / ${u32(tq)};`,
    `  var qrow: array<f32, ${d0}>;`,
    `  for (var q = 0u; q < ${u32(d0)}; q += 1u) {`,
    `    qrow[q] = ${rd(Q, at(Q, "i", "q"))};`,
    `  }`,
    `  var o: array<f32, ${hd}>;`,
    `  for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
    `    o[x] = 0.0;`,
    `  }`,
    `  var m: f32 = ${NEG_INF};`,
    `  var l: f32 = 0.0;`,
    `  for (var j = 0u; j < ${keyEnd}; j += 1u) {`,
    `    var score: f32 = 0.0;`,
    `    for (var q = 0u; q < ${u32(d0)}; q += 1u) {`,
    `      score += qrow[q] * ${rd(Kt, at(Kt, "q", "j"))};`,
    `    }`,
    ...s.lines,
    `    if (!${isNinf}(${e})) {`,
    `      var p: f32 = 1.0;`,
    `      if (${e} > m) {`,
    `        let corr = select(exp(m - ${e}), 0.0, ${isNinf}(m));`,
    `        l = l * corr;`,
    `        for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
    `          o[x] = o[x] * corr;`,
    `        }`,
    `        m = ${e};`,
    `      } else {`,
    `        p = exp(${e} - m);`,
    `      }`,
    `      l = l + p;`,
    `      for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
    `        o[x] = o[x] + p * ${rd(V, at(V, "j", "x"))};`,
    `      }`,
    `    }`,
    `  }`,
    `  for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
    `    epilogue(select(0.0, o[x] / l, l > 0.0), bt, i, x);`,
    `  }`,
  ];
  const epi = epilogueFunction(w, pv.id, batchShape);
  return moduleText(
    w,
    [
      epi,
      ``,
      `@compute @workgroup_size(${threads}, 1, 1)`,
      `fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {`,
      `  ${linearWorkgroup(launch.grid, launch.workgroups)}`,
      ...body,
      `}`,
    ].join("\n"),
  );
}
