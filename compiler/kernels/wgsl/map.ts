/**
 * One invocation per output element (or per `launch.items` elements, in a loop): the
 * elementwise-map template (fused elementwise chains, copies of views, gather, concat, iota,
 * masks, constant fills), the reduction along a non-last axis (a loop per output element,
 * with its epilogue), scatter_add (one invocation per column, so no two invocations ever
 * add into the same element) and expert_matmul_wgrad (one per block of weight elements).
 */
import { numel } from "../../ir/graph.js";
import { REDUCE_FUNCTION_ROWS, type ReduceFunctionRow } from "../../ir/ops.js";
import type { Launch } from "../plan-buffers.js";
import { WGRAD_BLOCK } from "./variants.js";
import {
  Block,
  type ExprContext,
  KernelWriter,
  accumulatorInit,
  entry,
  moduleText,
  u32,
  unflatten,
  viewIndex,
} from "./kernel-writer.js";

/** Stores the root's value at coordinates `coords` (iteration space = the root's shape). */
function store(w: KernelWriter, b: Block, coords: string[], indent = "  "): string {
  const k = w.kernel;
  const out = w.bind(k.out.storage, k.out.dtype, "read_write");
  const isLoadedView = !k.members.includes(k.root) && k.anchor !== k.root && k.loads[k.root];
  const v = isLoadedView ? b.load(k.loads[k.root]!) : b.valueAs(k.root, k.out.dtype);
  return `${indent}${out.set(viewIndex(k.out, coords), v)}`;
}

/**
 * The element index `gi` of each of an invocation's elements, and the early exit past the
 * end: `body` (indented for its level) runs once per element. With several items the
 * elements of one step are consecutive across the workgroup, as with one.
 */
function perElement(launch: Launch, size: number, body: (indent: string) => string[]): string[] {
  const threads = launch.workgroupSize[0];
  const items = launch.items ?? 1;
  const guard = (i: string) => [`${i}if (gi >= ${u32(size)}) {`, `${i}  return;`, `${i}}`];
  if (items === 1) {
    return [`  let gi = wg * ${u32(threads)} + lidx;`, ...guard("  "), ...body("  ")];
  }
  return [
    `  for (var item = 0u; item < ${u32(items)}; item += 1u) {`,
    `    let gi = (wg * ${u32(items)} + item) * ${u32(threads)} + lidx;`,
    ...guard("    "),
    ...body("    "),
    `  }`,
  ];
}

export function emitMap(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const size = numel(k.shape);
  const coords = unflatten("gi", k.shape);
  const ctx: ExprContext = { writer: w, rank: k.shape.length, bound: new Map(), serial: { n: 0 } };
  return moduleText(
    w,
    entry(
      launch,
      perElement(launch, size, (indent) => {
        const b = new Block(ctx, (a) => coords[a]!, indent);
        const st = store(w, b, coords, indent);
        return [...b.lines, st];
      }),
    ),
  );
}

export function emitReduce(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const n = w.node(k.anchor!);
  if (n.op !== "reduce") throw new Error("internal: reduce kernel without a reduce");
  const input = k.loads[n.inputs[0]]!;
  const coords = unflatten("gi", k.shape);
  const axisSize = input.shape[n.axis]!;
  // The reduce's output has the input's rank (size 1 at the axis); its coordinates are the
  // root's, right-aligned.
  const rank = k.shape.length;
  const outCoords = n.shape.map((d, a) => (d === 1 ? "0u" : coords[a + rank - n.shape.length]!));
  const inCoords = outCoords.map((c, a) => (a === n.axis ? "r" : c));
  const buf = w.bindView(input);
  const load = `f32(${buf.get(viewIndex(input, inCoords))})`;
  const f: ReduceFunctionRow = REDUCE_FUNCTION_ROWS[n.fn];
  const init = accumulatorInit(f.identity);
  for (const h of f.wgsl.helpers ?? []) w.use(h);
  const combine = f.wgsl.combine("acc", load);
  const result = f.wgsl.finish("acc", axisSize);
  const ctx: ExprContext = {
    writer: w,
    rank,
    bound: new Map([[n.id, "red"]]),
    serial: { n: 0 },
  };
  return moduleText(
    w,
    entry(
      launch,
      perElement(launch, numel(k.shape), (i) => {
        const b = new Block(ctx, (a) => coords[a]!, i);
        const st = store(w, b, coords, i);
        return [
          `${i}var acc = ${init};`,
          `${i}for (var r = 0u; r < ${u32(axisSize)}; r += 1u) {`,
          `${i}  acc = ${combine};`,
          `${i}}`,
          `${i}let red: ${n.dtype} = ${n.dtype}(${result});`,
          ...b.lines,
          st,
        ];
      }),
    ),
  );
}

export function emitScatter(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const n = w.node(k.anchor!);
  if (n.op === "expert_matmul_wgrad") return emitExpertWgrad(w, launch);
  if (n.op !== "scatter_add") throw new Error("internal: scatter kernel without scatter_add");
  const src = k.loads[n.inputs[0]]!;
  const ids = k.loads[n.inputs[1]]!;
  const threads = launch.workgroupSize[0];
  const [rows, d] = n.shape as [number, number];
  const out = w.bind(k.out.storage, k.out.dtype, "read_write");
  const srcBuf = w.bindView(src);
  const idsBuf = w.bindView(ids);
  const count = numel(ids.shape);
  const lead = unflatten("i", ids.shape);
  const srcCoords = [...lead, "j"].slice(-src.shape.length);
  return moduleText(
    w,
    entry(launch, [
      `  let j = wg * ${u32(threads)} + lidx;`,
      `  if (j >= ${u32(d)}) {`,
      `    return;`,
      `  }`,
      `  for (var r = 0u; r < ${u32(rows)}; r += 1u) {`,
      `    ${out.set(viewIndex(k.out, ["r", "j"]), "0.0")}`,
      `  }`,
      `  for (var i = 0u; i < ${u32(count)}; i += 1u) {`,
      `    let id = i32(${idsBuf.get(viewIndex(ids, lead))});`,
      `    if (id >= 0 && id < ${rows}) {`,
      `      let r = u32(id);`,
      `      let at = ${viewIndex(k.out, ["r", "j"])};`,
      `      ${out.set("at", `${out.get("at")} + f32(${srcBuf.get(viewIndex(src, srcCoords))})`)}`,
      `    }`,
      `  }`,
    ]),
  );
}

/**
 * expert_matmul_wgrad: one invocation per WGRAD_BLOCK × WGRAD_BLOCK block (e, q.., j..) of
 * the weight gradient, summing x[r, q]·g[r, j] over the rows routed to expert e, so no two
 * invocations write one element and each sum runs in slot order. A block reuses each loaded
 * value WGRAD_BLOCK times (one value per multiply-add was the cost on a software driver: 100
 * ms for the reference MoE's 17M multiply-adds). The rows come from `order` (group_rows of
 * ids): expert e's segment starts at a block of `align` slots, found by binary search over the
 * blocks' first rows (their experts never decrease), and ends at the first slot of another
 * expert or a block of fill.
 */
function emitExpertWgrad(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const n = w.node(k.anchor!);
  if (n.op !== "expert_matmul_wgrad") throw new Error("internal: not expert_matmul_wgrad");
  const orderNode = w.node(n.inputs[3]);
  if (orderNode.op !== "group_rows") throw new Error("internal: expert rows not group_rows");
  const [x, g, ids, order] = n.inputs.map((i) => k.loads[i]!);
  const [experts, depth, cols] = n.shape as [number, number, number];
  const align = orderNode.align;
  const slots = order!.shape[0]!;
  const threads = launch.workgroupSize[0];
  const W = WGRAD_BLOCK;
  const qBlocks = Math.ceil(depth / W);
  const jBlocks = Math.ceil(cols / W);
  const out = w.bind(k.out.storage, k.out.dtype, "read_write");
  const xBuf = w.bindView(x!);
  const gBuf = w.bindView(g!);
  const idsBuf = w.bindView(ids!);
  const orderBuf = w.bindView(order!);
  const slot = (at: string) => `i32(${orderBuf.get(viewIndex(order!, [at]))})`;
  const expertOf = (row: string) => `i32(${idsBuf.get(viewIndex(ids!, [`u32(${row})`]))})`;
  return moduleText(
    w,
    entry(launch, [
      `  let gi = wg * ${u32(threads)} + lidx;`,
      `  if (gi >= ${u32(experts * qBlocks * jBlocks)}) {`,
      `    return;`,
      `  }`,
      `  let e = i32(gi / ${u32(qBlocks * jBlocks)});`,
      `  let q0 = ((gi / ${u32(jBlocks)}) % ${u32(qBlocks)}) * ${u32(W)};`,
      `  let j0 = (gi % ${u32(jBlocks)}) * ${u32(W)};`,
      // The first block whose first row's expert is ≥ e (dropped rows and fill count as E).
      `  var lo = 0u;`,
      `  var hi = ${u32(slots / align)};`,
      `  while (lo < hi) {`,
      `    let mid = (lo + hi) / 2u;`,
      `    let first = ${slot(`mid * ${u32(align)}`)};`,
      `    var key = ${experts};`,
      `    if (first >= 0) {`,
      `      let ex = ${expertOf("first")};`,
      `      if (ex >= 0 && ex < ${experts}) {`,
      `        key = ex;`,
      `      }`,
      `    }`,
      `    if (key < e) {`,
      `      lo = mid + 1u;`,
      `    } else {`,
      `      hi = mid;`,
      `    }`,
      `  }`,
      `  var acc: array<f32, ${W * W}>;`,
      `  for (var s = lo * ${u32(align)}; s < ${u32(slots)}; s += 1u) {`,
      `    let r = ${slot("s")};`,
      `    if (r < 0) {`,
      `      if (s % ${u32(align)} == 0u) {`,
      `        break;`,
      `      }`,
      `      continue;`,
      `    }`,
      `    if (${expertOf("r")} != e) {`,
      `      break;`,
      `    }`,
      `    let row = u32(r);`,
      `    var xs: array<f32, ${W}>;`,
      `    var gs: array<f32, ${W}>;`,
      `    for (var t = 0u; t < ${u32(W)}; t += 1u) {`,
      `      let q = min(q0 + t, ${u32(depth - 1)});`,
      `      let j = min(j0 + t, ${u32(cols - 1)});`,
      `      xs[t] = f32(${xBuf.get(viewIndex(x!, ["row", "q"]))});`,
      `      gs[t] = f32(${gBuf.get(viewIndex(g!, ["row", "j"]))});`,
      `    }`,
      `    for (var a = 0u; a < ${u32(W)}; a += 1u) {`,
      `      for (var b = 0u; b < ${u32(W)}; b += 1u) {`,
      `        acc[a * ${u32(W)} + b] = acc[a * ${u32(W)} + b] + xs[a] * gs[b];`,
      `      }`,
      `    }`,
      `  }`,
      `  for (var a = 0u; a < ${u32(W)}; a += 1u) {`,
      `    for (var b = 0u; b < ${u32(W)}; b += 1u) {`,
      `      let q = q0 + a;`,
      `      let j = j0 + b;`,
      `      if (q < ${u32(depth)} && j < ${u32(cols)}) {`,
      `        ${out.set(viewIndex(k.out, ["u32(e)", "q", "j"]), `acc[a * ${u32(W)} + b]`)}`,
      `      }`,
      `    }`,
      `  }`,
    ]),
  );
}
