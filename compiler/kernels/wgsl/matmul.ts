/**
 * The matmul template: C[b, i, j] = Σ_k A[b, i, k] · B[b, k, j], then the fused epilogue, for
 * operands given as strided views (so Bᵀ of a Linear weight, the heads of Q/K/V and a batch
 * broadcast are all read in place). One template, several variants (compiler/kernels/wgsl/variants.ts):
 *
 *   - register blocks (tm × tn outputs per invocation, no barriers): the fastest on CPU
 *     emulations such as lavapipe, where workgroup barriers are expensive. With `vector`,
 *     operands contiguous along k are read as vec4 (dot products), and a B contiguous along n
 *     as vec4 rows with vec4 accumulators;
 *   - shared-memory tiles (tileK > 0): the workgroup stages a BM×tileK slice of A and a
 *     tileK×BN slice of B in workgroup memory, what real GPUs favour.
 *
 * Loads clamp their row/column to the matrix so edge blocks read valid memory; only stores
 * are guarded. The epilogue is a function of (value, batch, i, j) so every variant shares it.
 */
import type { View } from "../fuse-kernels.js";
import { type Launch, matmulDims, matmulTile } from "../plan-buffers.js";
import type { IrDType } from "../../ir/graph.js";
import {
  Block,
  type Buf,
  type ExprContext,
  KernelWriter,
  linearWorkgroup,
  moduleText,
  u32,
  unflatten,
  viewIndex,
} from "./kernel-writer.js";

/** Element offset of a batch-broadcast operand's first matrix element for batch coords. */
function batchBase(view: View, batchCoords: string[]): string {
  const r = view.shape.length;
  const lead = view.shape.slice(0, r - 2);
  const coords = lead.map((d, a) =>
    d === 1 ? "0u" : batchCoords[a + batchCoords.length - lead.length]!,
  );
  const sub: View = { ...view, shape: lead, strides: view.strides.slice(0, r - 2) };
  return viewIndex(sub, coords);
}

const aligned4 = (view: View, skip: number): boolean =>
  view.offset % 4 === 0 &&
  view.strides.every((s, a) => a === skip || view.shape[a] === 1 || s % 4 === 0);

/**
 * The epilogue: a function of (value, batch, i, j) that evaluates the members with the
 * matmul's value and stores the root. With `hoistRows`, the values that depend on the row
 * alone (an expert's bias row, a gate weight, a row id) are left out of it as `rowLines`, for
 * the caller to compute once per row (with `bt` and `i` in scope) and pass as `rowArgs`.
 */
export function epilogueFunction(
  w: KernelWriter,
  anchor: number,
  batchShape: number[],
  name = "epilogue",
  hoistRows = false,
): { fn: string; rowLines: string[]; rowArgs: string[] } {
  const k = w.kernel;
  const rank = k.shape.length;
  const batch = unflatten("bt", batchShape);
  const coord = (a: number) => (a < rank - 2 ? batch[a]! : a === rank - 2 ? "i" : "j");
  const ctx: ExprContext = { writer: w, rank, bound: new Map([[anchor, "acc"]]), serial: { n: 0 } };
  const hoist = hoistRows
    ? { varying: ["j", "acc"], lines: [] as string[], names: new Map<string, IrDType>() }
    : undefined;
  const b = new Block(ctx, coord, "  ", hoist);
  const out = w.bind(k.out.storage, k.out.dtype, "read_write");
  const v = b.valueAs(k.root, k.out.dtype);
  const coords = k.shape.map((_, a) => coord(a));
  const params = [...(hoist?.names ?? [])].map(([n, t]) => `, ${n}: ${t}`).join("");
  return {
    fn: [
      `fn ${name}(acc: f32, bt: u32, i: u32, j: u32${params}) {`,
      ...b.lines,
      `  ${out.set(viewIndex(k.out, coords), v)}`,
      `}`,
    ].join("\n"),
    rowLines: hoist?.lines ?? [],
    rowArgs: [...(hoist?.names.keys() ?? [])],
  };
}

export function emitMatmul(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const g = w.graph;
  const anchor = g.nodes[k.anchor!]!;
  if (anchor.op !== "matmul" && anchor.op !== "expert_matmul")
    throw new Error("internal: matmul kernel without a matmul");
  // An expert matmul walks the slots of its row order: slot s holds row order[s] (-1: none),
  // and an invocation's tm slots lie in one expert's segment, so its B is one expert's matrix.
  const expert = anchor.op === "expert_matmul";
  const v = launch.matmul!;
  const { m: M, n: N, k: K } = matmulDims(g, anchor.id);
  const A = k.loads[anchor.inputs[0]]!;
  const B = k.loads[anchor.inputs[1]]!;
  const ra = A.shape.length;
  const rb = B.shape.length;
  const sAm = A.shape[ra - 2] === 1 ? 0 : A.strides[ra - 2]!;
  const sAk = A.strides[ra - 1]!;
  const sBk = B.strides[rb - 2]!;
  const sBn = B.shape[rb - 1] === 1 ? 0 : B.strides[rb - 1]!;
  const batchShape = k.shape.slice(0, -2);
  const { bm, bn } = matmulTile(v);
  const tilesN = Math.ceil(N / bn);
  const tilesM = Math.ceil(M / bm);
  const { tm, tn } = v;

  const vector = v.vector && v.tileK === 0 && !launch.scalarOnly;
  const f32A = A.dtype === "f32";
  const f32B = B.dtype === "f32";
  const vecA = vector && f32A && K % 4 === 0 && sAk === 1 && aligned4(A, ra - 1);
  const vecBk = vector && f32B && K % 4 === 0 && sBk === 1 && aligned4(B, rb - 2);
  const vecBn =
    vector && !vecBk && f32B && N % 4 === 0 && tn % 4 === 0 && sBn === 1 && aligned4(B, rb - 1);
  const kv = (vecA || vecBk || vecBn) && K % 4 === 0 ? 4 : 1;

  const bufA = vecA ? w.bind(A.storage, "vec4<f32>") : w.bindView(A);
  const bufB = vecBk || vecBn ? w.bind(B.storage, "vec4<f32>") : w.bindView(B);
  const rd = (buf: Buf, isF32: boolean, idx: string) =>
    isF32 ? buf.get(idx) : `f32(${buf.get(idx)})`;

  const rowsX = v.lanes === "rows";
  const lines: string[] = [
    `  let tile_n = wg % ${u32(tilesN)};`,
    `  let tile_m = (wg / ${u32(tilesN)}) % ${u32(tilesM)};`,
    `  let bt = wg / ${u32(tilesN * tilesM)};`,
  ];
  // A workgroup axis of size 1 contributes nothing: leaving its id out keeps the other
  // operand's addresses uniform across the workgroup (one scalar load on SIMD emulations).
  const lidOr0 = (axis: "x" | "y") => ((axis === "x" ? v.wx : v.wy) === 1 ? "0u" : `lid.${axis}`);
  const lr = rowsX ? lidOr0("x") : lidOr0("y");
  const lc = rowsX ? lidOr0("y") : lidOr0("x");
  const batch = unflatten("bt", batchShape);
  let steps = u32(K / kv);
  let rowOf = (r: number) => `min(row0 + ${r}u, ${u32(M - 1)})`;
  if (expert) {
    const ids = k.loads[anchor.inputs[2]]!;
    const order = k.loads[anchor.inputs[3]]!;
    const idsBuf = w.bindView(ids);
    const orderBuf = w.bindView(order);
    const E = B.shape[0]!;
    const slot = (r: number) => `order_${r}`;
    rowOf = (r: number) => `u32(max(${slot(r)}, 0))`;
    lines.push(
      `  let a_base = ${viewIndex({ ...A, shape: [], strides: [] }, [])};`,
      `  let row0 = tile_m * ${u32(bm)} + ${lr} * ${u32(tm)};`,
      `  if (row0 >= ${u32(M)}) {`,
      `    return;`,
      `  }`,
    );
    for (let r = 0; r < tm; r++)
      lines.push(`  let ${slot(r)} = i32(${orderBuf.get(viewIndex(order, [`row0 + ${r}u`]))});`);
    lines.push(
      `  if (${slot(0)} < 0) {`,
      `    return;`,
      `  }`,
      `  let ex = i32(${idsBuf.get(viewIndex(ids, [`u32(${slot(0)})`]))});`,
      `  let valid = ex >= 0 && ex < ${E};`,
      `  let b_base = ${u32(B.offset)} + u32(select(0, ex, valid)) * ${u32(B.strides[0]!)};`,
      `  let k_steps = select(0u, ${steps}, valid);`,
    );
    steps = "k_steps";
  } else {
    lines.push(`  let a_base = ${batchBase(A, batch)};`, `  let b_base = ${batchBase(B, batch)};`);
  }
  if (!expert) lines.push(`  let row0 = tile_m * ${u32(bm)} + ${lr} * ${u32(tm)};`);
  lines.push(`  let col0 = tile_n * ${u32(bn)} + ${lc} * ${u32(tn)};`);

  const accType = vecBn ? "vec4<f32>" : "f32";
  const groups = vecBn ? tn / 4 : tn;
  for (let r = 0; r < tm; r++)
    for (let c = 0; c < groups; c++) lines.push(`  var acc_${r}_${c} = ${accType}(0.0);`);

  if (v.tileK > 0) {
    const tk = v.tileK;
    const threads = v.wx * v.wy;
    lines.push(
      `  let lt = lid.y * ${u32(v.wx)} + lid.x;`,
      `  let lrow = ${lr} * ${u32(tm)};`,
      `  let lcol = ${lc} * ${u32(tn)};`,
      `  for (var k0 = 0u; k0 < ${u32(K)}; k0 += ${u32(tk)}) {`,
      `    for (var e = lt; e < ${u32(bm * tk)}; e += ${u32(threads)}) {`,
      `      let gr = tile_m * ${u32(bm)} + e / ${u32(tk)};`,
      `      let gk = k0 + e % ${u32(tk)};`,
      `      let x = ${rd(bufA, f32A, `a_base + min(gr, ${u32(M - 1)}) * ${u32(sAm)} + min(gk, ${u32(K - 1)}) * ${u32(sAk)}`)};`,
      `      a_tile[e] = select(0.0, x, gr < ${u32(M)} && gk < ${u32(K)});`,
      `    }`,
      `    for (var e = lt; e < ${u32(tk * bn)}; e += ${u32(threads)}) {`,
      `      let gk = k0 + e / ${u32(bn)};`,
      `      let gc = tile_n * ${u32(bn)} + e % ${u32(bn)};`,
      `      let x = ${rd(bufB, f32B, `b_base + min(gk, ${u32(K - 1)}) * ${u32(sBk)} + min(gc, ${u32(N - 1)}) * ${u32(sBn)}`)};`,
      `      b_tile[e] = select(0.0, x, gk < ${u32(K)} && gc < ${u32(N)});`,
      `    }`,
      `    workgroupBarrier();`,
      `    for (var kk = 0u; kk < ${u32(tk)}; kk += 1u) {`,
    );
    for (let r = 0; r < tm; r++)
      lines.push(`      let a${r} = a_tile[(lrow + ${r}u) * ${u32(tk)} + kk];`);
    for (let c = 0; c < tn; c++)
      lines.push(`      let b${c} = b_tile[kk * ${u32(bn)} + lcol + ${c}u];`);
    for (let r = 0; r < tm; r++)
      for (let c = 0; c < tn; c++) lines.push(`      acc_${r}_${c} += a${r} * b${c};`);
    lines.push(`    }`, `    workgroupBarrier();`, `  }`);
  } else {
    // Row and column bases, clamped so edge blocks read inside the matrices.
    for (let r = 0; r < tm; r++) {
      const base = `a_base + ${rowOf(r)} * ${u32(sAm)}`;
      lines.push(`  let ar${r} = ${vecA ? `(${base}) / 4u` : base};`);
    }
    if (vecBn) {
      for (let c = 0; c < groups; c++)
        lines.push(`  let bc${c} = (b_base + min(col0 + ${4 * c}u, ${u32(N - 4)})) / 4u;`);
    } else {
      for (let c = 0; c < tn; c++) {
        const base = `b_base + min(col0 + ${c}u, ${u32(N - 1)}) * ${u32(sBn)}`;
        lines.push(`  let bc${c} = ${vecBk ? `(${base}) / 4u` : base};`);
      }
    }
    lines.push(`  for (var kq = 0u; kq < ${steps}; kq += 1u) {`);
    if (kv === 4) lines.push(`    let k = kq * 4u;`);
    else lines.push(`    let k = kq;`);
    const comp = ["x", "y", "z", "w"];
    // a(r, kk): scalar A[row r, k + kk]
    const aAt = (r: number, kk: number) => (vecA ? `a${r}.${comp[kk]}` : `a${r}_${kk}`);
    for (let r = 0; r < tm; r++) {
      if (vecA) lines.push(`    let a${r} = ${bufA.get(`ar${r} + kq`)};`);
      else
        for (let kk = 0; kk < kv; kk++)
          lines.push(
            `    let a${r}_${kk} = ${rd(bufA, f32A, `ar${r} + (k + ${kk}u) * ${u32(sAk)}`)};`,
          );
    }
    if (vecBn) {
      for (let kk = 0; kk < kv; kk++)
        for (let c = 0; c < groups; c++)
          lines.push(
            `    let b${kk}_${c} = ${bufB.get(`bc${c} + (k + ${kk}u) * ${u32(sBk / 4)}`)};`,
          );
      for (let r = 0; r < tm; r++)
        for (let c = 0; c < groups; c++) {
          const terms = Array.from({ length: kv }, (_, kk) => `${aAt(r, kk)} * b${kk}_${c}`);
          lines.push(`    acc_${r}_${c} += ${terms.join(" + ")};`);
        }
    } else if (vecBk) {
      for (let c = 0; c < tn; c++) lines.push(`    let b${c} = ${bufB.get(`bc${c} + kq`)};`);
      for (let r = 0; r < tm; r++)
        for (let c = 0; c < tn; c++) {
          if (vecA) lines.push(`    acc_${r}_${c} += dot(a${r}, b${c});`);
          else {
            const terms = Array.from(
              { length: kv },
              (_, kk) => `${aAt(r, kk)} * b${c}.${comp[kk]}`,
            );
            lines.push(`    acc_${r}_${c} += ${terms.join(" + ")};`);
          }
        }
    } else {
      for (let kk = 0; kk < kv; kk++)
        for (let c = 0; c < tn; c++)
          lines.push(
            `    let b${kk}_${c} = ${rd(bufB, f32B, `bc${c} + (k + ${kk}u) * ${u32(sBk)}`)};`,
          );
      for (let r = 0; r < tm; r++)
        for (let c = 0; c < tn; c++) {
          const terms = Array.from({ length: kv }, (_, kk) => `${aAt(r, kk)} * b${kk}_${c}`);
          lines.push(`    acc_${r}_${c} += ${terms.join(" + ")};`);
        }
    }
    lines.push(`  }`);
  }

  // Stores through the epilogue, guarded at the matrix edges. The block goes through a local
  // array and one loop rather than tm·tn inlined epilogue calls: unrolled, a 16×16 block with a
  // GELU epilogue took lavapipe's LLVM back end 25-40 s to compile on first dispatch; looped, 2 s.
  lines.push(`  var res: array<f32, ${tm * tn}>;`);
  if (expert) {
    // Each slot's row (or -1); the loop below indexes them.
    lines.push(
      `  var rows = array<i32, ${tm}>(${Array.from({ length: tm }, (_, r) => `order_${r}`).join(", ")});`,
    );
  }
  for (let r = 0; r < tm; r++) {
    for (let c = 0; c < tn; c++) {
      const value = vecBn ? `acc_${r}_${Math.floor(c / 4)}[${c % 4}]` : `acc_${r}_${c}`;
      lines.push(`  res[${r * tn + c}] = ${value};`);
    }
  }
  // Row-only epilogue values (an expert's row id, a gate weight) once per row, not per element.
  const epi = epilogueFunction(w, anchor.id, batchShape, "epilogue", true);
  const args = epi.rowArgs.map((a) => `, ${a}`).join("");
  lines.push(
    `  for (var r = 0u; r < ${u32(tm)}; r += 1u) {`,
    ...(expert
      ? [`    let row = rows[r];`, `    let i = u32(max(row, 0));`, `    if (row >= 0) {`]
      : [`    let i = row0 + r;`, `    if (i < ${u32(M)}) {`]),
    ...epi.rowLines.map((l) => `      ${l}`),
    `      for (var c = 0u; c < ${u32(tn)}; c += 1u) {`,
    `        if (col0 + c < ${u32(N)}) {`,
    `          epilogue(res[r * ${u32(tn)} + c], bt, i, col0 + c${args});`,
    `        }`,
    `      }`,
    `    }`,
    `  }`,
  );

  const shared =
    v.tileK > 0
      ? [
          `var<workgroup> a_tile: array<f32, ${bm * v.tileK}>;`,
          `var<workgroup> b_tile: array<f32, ${v.tileK * bn}>;`,
          ``,
        ]
      : [];
  return moduleText(
    w,
    [
      ...shared,
      epi.fn,
      ``,
      `@compute @workgroup_size(${v.wx}, ${v.wy}, 1)`,
      `fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {`,
      `  ${linearWorkgroup(launch.grid, launch.workgroups)}`,
      ...lines,
      `}`,
    ].join("\n"),
  );
}
