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
import type { View } from "../fuse-kernels.js";
import { epilogueFunction } from "./matmul.js";

/** A quiet NaN (kernel-writer's header declares nan_bits). */
const NAN = "bitcast<f32>(nan_bits)";
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
  const isNan = w.use("is_nan");

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
    `${view.dtype === "f32" ? "" : "f32"}(${w.bindView(view).get(idx)})`;

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

  // vec4 path: Q rows, Kᵀ columns and V rows contiguous and 16-byte aligned (the layout
  // std.nn.Attention produces); the register arrays are then unrolled with constant indices
  // so the compiler can keep them out of indexed (gathered) memory.
  const r4 = (view: typeof Q, axis: number) =>
    view.dtype === "f32" &&
    view.strides[axis] === 1 &&
    view.offset % 4 === 0 &&
    view.shape.every((d, a) => a === axis || d === 1 || view.strides[a]! % 4 === 0);
  const vec =
    !launch.scalarOnly &&
    d0 % 4 === 0 &&
    hd % 4 === 0 &&
    d0 <= 128 &&
    hd <= 128 &&
    r4(Q, Q.shape.length - 1) &&
    r4(Kt, Kt.shape.length - 2) &&
    r4(V, V.shape.length - 1);
  if (vec) return emitAttentionRows(w, launch, { Q, Kt, V, d0, hd, tq, tk, causal, s, e, at });
  const body = [
    `  let gi = wg * ${u32(threads)} + lidx;`,
    `  if (gi >= ${u32(tq * batchShape.reduce((a, b) => a * b, 1))}) {`,
    `    return;`,
    `  }`,
    `  let i = gi % ${u32(tq)};`,
    `  let bt = gi / ${u32(tq)};`,
  ];
  const update: string[] = [];
  if (vec) {
    const q4 = w.bind(Q.storage, "vec4<f32>");
    const k4 = w.bind(Kt.storage, "vec4<f32>");
    const v4 = w.bind(V.storage, "vec4<f32>");
    const nq = d0 / 4;
    const nx = hd / 4;
    body.push(`  let q_base = (${at(Q, "i", "0u")}) / 4u;`);
    for (let c = 0; c < nq; c++) body.push(`  let q${c} = ${q4.get(`q_base + ${c}u`)};`);
    for (let c = 0; c < nx; c++) body.push(`  var o${c} = vec4<f32>(0.0);`);
    body.push(
      `  var m: f32 = ${NEG_INF};`,
      `  var l: f32 = 0.0;`,
      `  for (var j = 0u; j < ${keyEnd}; j += 1u) {`,
      `    let k_base = (${at(Kt, "0u", "j")}) / 4u;`,
      `    let score = ${Array.from({ length: nq }, (_, c) => `dot(q${c}, ${k4.get(`k_base + ${c}u`)})`).join(" +\n      ")};`,
    );
    update.push(`        let v_base = (${at(V, "j", "0u")}) / 4u;`);
    const corr = Array.from({ length: nx }, (_, c) => `        o${c} = o${c} * corr;`);
    const acc = Array.from(
      { length: nx },
      (_, c) => `        o${c} = o${c} + p * ${v4.get(`v_base + ${c}u`)};`,
    );
    update.push(`__CORR__`, ...corr, `__ACC__`, ...acc);
  } else {
    body.push(
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
    );
  }
  const rescale = vec
    ? update.slice(update.indexOf("__CORR__") + 1, update.indexOf("__ACC__"))
    : [
        `        for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
        `          o[x] = o[x] * corr;`,
        `        }`,
      ];
  const accumulate = vec
    ? [update[0]!, ...update.slice(update.indexOf("__ACC__") + 1)]
    : [
        `        for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
        `          o[x] = o[x] + p * ${rd(V, at(V, "j", "x"))};`,
        `        }`,
      ];
  body.push(
    ...s.lines,
    // A NaN score makes m NaN for good (tested on the bits: drivers may compare NaN as they
    // like), and the row NaN, as in PyTorch.
    `    if (${isNan}(${e})) {`,
    `      m = ${e};`,
    `    } else if (!${isNinf}(${e}) && !${isNan}(m)) {`,
    `      var p: f32 = 1.0;`,
    `      if (${e} > m) {`,
    `        let corr = select(exp(m - ${e}), 0.0, ${isNinf}(m));`,
    `        l = l * corr;`,
    ...rescale,
    `        m = ${e};`,
    `      } else {`,
    `        p = exp(${e} - m);`,
    `      }`,
    `      l = l + p;`,
    ...accumulate.map((line) => line.slice(2)),
    `    }`,
    `  }`,
  );
  if (vec) {
    body.push(
      `  let inv_l = select(select(0.0, 1.0 / l, l > 0.0), ${NAN}, ${isNan}(m) || ${isNan}(l));`,
    );
    body.push(
      `  var orow: array<vec4<f32>, ${hd / 4}>;`,
      ...Array.from({ length: hd / 4 }, (_, c) => `  orow[${c}] = o${c} * inv_l;`),
      `  for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
      `    epilogue(orow[x / 4u][x % 4u], bt, i, x);`,
      `  }`,
    );
  } else {
    body.push(
      `  for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
      `    epilogue(select(select(0.0, o[x] / l, l > 0.0), ${NAN}, ${isNan}(m) || ${isNan}(l)), bt, i, x);`,
      `  }`,
    );
  }
  const epi = epilogueFunction(w, pv.id, batchShape).fn;
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

/** The lowest finite f32. */
const LOWEST = "-3.4028234663852886e38";

/** Query rows per invocation in the vec4 path: the K and V rows loaded once serve them all. */
const ATTENTION_ROWS = 8;

/**
 * The vec4 path, ATTENTION_ROWS query rows per invocation: on lavapipe every loaded scalar
 * costs a per-lane bounds-checked load, so sharing each key's K and V rows between several
 * queries divides the load count. The launch still counts one invocation per row; the
 * invocations past the row groups return at once.
 */
function emitAttentionRows(
  w: KernelWriter,
  launch: Launch,
  o: {
    Q: View;
    Kt: View;
    V: View;
    d0: number;
    hd: number;
    tq: number;
    tk: number;
    causal: boolean;
    s: Block;
    e: string;
    at: (view: View, row: string, col: string) => string;
  },
): string {
  const k = w.kernel;
  const pv = w.graph.nodes[k.anchor!]!;
  const { Q, Kt, V, d0, hd, tq, tk, causal, s, e, at } = o;
  const isNan = w.use("is_nan");
  const batchShape = k.shape.slice(0, -2);
  const threads = launch.workgroupSize[0];
  // Loads through window accessors (tensors larger than one binding) are inlined at every
  // use; fewer unrolled rows keep such kernels' compile time reasonable on lavapipe.
  const windowed = [Q, Kt, V].some((view) => w.windowCount(view.storage) > 1);
  const R = windowed ? 2 : ATTENTION_ROWS;
  const groups = Math.ceil(tq / R);
  const nb = batchShape.reduce((a, b) => a * b, 1);
  const q4 = w.bind(Q.storage, "vec4<f32>");
  const k4 = w.bind(Kt.storage, "vec4<f32>");
  const v4 = w.bind(V.storage, "vec4<f32>");
  const nq = d0 / 4;
  const nx = hd / 4;
  const body = [
    `  let gi = wg * ${u32(threads)} + lidx;`,
    `  if (gi >= ${u32(groups * nb)}) {`,
    `    return;`,
    `  }`,
    `  let i0 = (gi % ${u32(groups)}) * ${u32(R)};`,
    `  let bt = gi / ${u32(groups)};`,
  ];
  for (let r = 0; r < R; r++) {
    body.push(`  let q_base${r} = (${at(Q, `min(i0 + ${r}u, ${u32(tq - 1)})`, "0u")}) / 4u;`);
    for (let c = 0; c < nq; c++) body.push(`  let q${r}_${c} = ${q4.get(`q_base${r} + ${c}u`)};`);
    for (let c = 0; c < nx; c++) body.push(`  var o${r}_${c} = vec4<f32>(0.0);`);
    // The running max starts at the lowest finite float, not -inf, so the update needs no
    // branch: a masked score (-inf) then gives p = 0 and corr = 1. Branches in these unrolled
    // rows made lavapipe's first-dispatch compile seconds slower.
    body.push(`  var m${r}: f32 = ${LOWEST};`, `  var l${r}: f32 = 0.0;`);
  }
  const keyEnd = causal ? `min(${u32(tk)}, i0 + ${u32(R)})` : u32(tk);
  body.push(
    `  for (var j = 0u; j < ${keyEnd}; j += 1u) {`,
    `    let k_base = (${at(Kt, "0u", "j")}) / 4u;`,
  );
  for (let c = 0; c < nq; c++) body.push(`    let kk${c} = ${k4.get(`k_base + ${c}u`)};`);
  body.push(`    let v_base = (${at(V, "j", "0u")}) / 4u;`);
  for (let c = 0; c < nx; c++) body.push(`    let vv${c} = ${v4.get(`v_base + ${c}u`)};`);
  for (let r = 0; r < R; r++) {
    const dotq = Array.from({ length: nq }, (_, c) => `dot(q${r}_${c}, kk${c})`).join(" + ");
    body.push(
      `    {`,
      `      let i = min(i0 + ${r}u, ${u32(tq - 1)});`,
      `      let score = ${dotq};`,
      ...s.lines.map((line) => `  ${line}`),
      `      let mn = ${w.use("max_")}(m${r}, ${e});`,
      `      let corr = exp(m${r} - mn);`,
      `      let p = exp(${e} - mn);`,
      `      l${r} = l${r} * corr + p;`,
      ...Array.from({ length: nx }, (_, c) => `      o${r}_${c} = o${r}_${c} * corr + p * vv${c};`),
      `      m${r} = mn;`,
      `    }`,
    );
  }
  // Each row's result goes through one local array and a loop over the epilogue: inlining
  // R·hd epilogue calls made lavapipe's first-dispatch compile several times slower.
  body.push(`  }`, `  var orow: array<vec4<f32>, ${nx}>;`);
  for (let r = 0; r < R; r++) {
    body.push(
      `  if (i0 + ${r}u < ${u32(tq)}) {`,
      `    let inv_l = select(select(0.0, 1.0 / l${r}, l${r} > 0.0), ${NAN}, ${isNan}(m${r}) || ${isNan}(l${r}));`,
      ...Array.from({ length: nx }, (_, c) => `    orow[${c}] = o${r}_${c} * inv_l;`),
      `    for (var x = 0u; x < ${u32(hd)}; x += 1u) {`,
      `      epilogue(orow[x / 4u][x % 4u], bt, i0 + ${r}u, x);`,
      `    }`,
      `  }`,
    );
  }
  const epi = epilogueFunction(w, pv.id, batchShape).fn;
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
