/**
 * The routing templates: top-k along the last axis (one invocation per row, an insertion list
 * of k entries), the running sum along an axis (one invocation per column), and group_rows
 * (one invocation per expert, no atomics, so the grouping is deterministic). Sparse MoE layers
 * use them to pick experts, rank tokens against an expert's capacity and group the rows of
 * each expert for the expert matmul; none of them reads anything back to the host.
 */
import { numel } from "../../ir/graph.js";
import type { Launch } from "../plan-buffers.js";
import {
  type KernelWriter,
  entry,
  moduleText,
  u32,
  unflatten,
  viewIndex,
} from "./kernel-writer.js";

/** One invocation per item: `gi` is the invocation's global index. */
function perItem(launch: Launch, body: string[]): string {
  return entry(launch, [`  let gi = wg * ${u32(launch.workgroupSize[0])} + lidx;`, ...body]);
}

export function emitTopk(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const n = w.node(k.anchor!);
  if (n.op !== "topk") throw new Error("internal: topk kernel without a topk");
  const x = k.loads[n.inputs[0]]!;
  const d = x.shape[x.shape.length - 1]!;
  const rows = numel(n.shape) / n.k;
  const lead = unflatten("gi", x.shape.slice(0, -1));
  const xBuf = w.bindView(x);
  const out = w.bind(k.out.storage, "i32", "read_write");
  // A strict `>` keeps the earlier (lower) position first among equal values; NaN ranks
  // above every number (torch.topk), tested on the bits.
  const above = w.use("above_");
  return moduleText(
    w,
    perItem(launch, [
      `  if (gi >= ${u32(rows)}) {`,
      `    return;`,
      `  }`,
      `  var vals: array<f32, ${n.k}>;`,
      `  var pos: array<i32, ${n.k}>;`,
      `  var filled = 0u;`,
      `  for (var j = 0u; j < ${u32(d)}; j += 1u) {`,
      `    let v = f32(${xBuf.get(viewIndex(x, [...lead, "j"]))});`,
      `    if (filled < ${u32(n.k)} || ${above}(v, vals[${n.k - 1}])) {`,
      `      var p = min(filled, ${u32(n.k - 1)});`,
      `      loop {`,
      `        if (p == 0u || !${above}(v, vals[p - 1u])) {`,
      `          break;`,
      `        }`,
      `        vals[p] = vals[p - 1u];`,
      `        pos[p] = pos[p - 1u];`,
      `        p -= 1u;`,
      `      }`,
      `      vals[p] = v;`,
      `      pos[p] = i32(j);`,
      `      filled = min(filled + 1u, ${u32(n.k)});`,
      `    }`,
      `  }`,
      `  for (var q = 0u; q < ${u32(n.k)}; q += 1u) {`,
      `    ${out.set(viewIndex(k.out, [...unflatten("gi", n.shape.slice(0, -1)), "q"]), "pos[q]")}`,
      `  }`,
    ]),
  );
}

export function emitScan(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const n = w.node(k.anchor!);
  if (n.op !== "cumsum") throw new Error("internal: scan kernel without a cumsum");
  const x = k.loads[n.inputs[0]]!;
  const size = n.shape[n.axis]!;
  const columns = numel(n.shape) / size;
  const others = n.shape.filter((_, a) => a !== n.axis);
  const flat = unflatten("gi", others);
  const coords = (at: string) => {
    const c = [...flat];
    c.splice(n.axis, 0, at);
    return c;
  };
  const xBuf = w.bindView(x);
  const out = w.bind(k.out.storage, n.dtype, "read_write");
  const zero = n.dtype === "i32" ? "0" : "0.0";
  return moduleText(
    w,
    perItem(launch, [
      `  if (gi >= ${u32(columns)}) {`,
      `    return;`,
      `  }`,
      `  var acc = ${n.dtype}(${zero});`,
      `  for (var r = 0u; r < ${u32(size)}; r += 1u) {`,
      `    acc += ${n.dtype}(${xBuf.get(viewIndex(x, coords("r")))});`,
      `    ${out.set(viewIndex(k.out, coords("r")), "acc")}`,
      `  }`,
    ]),
  );
}

export function emitGroupRows(w: KernelWriter, launch: Launch): string {
  const k = w.kernel;
  const n = w.node(k.anchor!);
  if (n.op !== "group_rows") throw new Error("internal: group kernel without group_rows");
  const ids = k.loads[n.inputs[0]]!;
  const R = ids.shape[0]!;
  const E = n.experts;
  const A = n.align;
  const P = n.shape[0]!;
  const idsBuf = w.bindView(ids);
  const out = w.bind(k.out.storage, "i32", "read_write");
  const at = (i: string) => viewIndex(k.out, [i]);
  // Invocation e writes expert e's segment (e = E: the rows with ids out of range); the start
  // of its segment is the padded size of the segments before it.
  return moduleText(
    w,
    [
      `fn segment_of(id: i32) -> u32 {`,
      `  return select(${u32(E)}, u32(id), id >= 0 && id < ${E});`,
      `}`,
      ``,
      perItem(launch, [
        `  if (gi > ${u32(E)}) {`,
        `    return;`,
        `  }`,
        `  var counts: array<u32, ${E + 1}>;`,
        `  for (var r = 0u; r < ${u32(R)}; r += 1u) {`,
        `    let s = segment_of(i32(${idsBuf.get(viewIndex(ids, ["r"]))}));`,
        `    counts[s] += 1u;`,
        `  }`,
        `  var start = 0u;`,
        `  for (var q = 0u; q < gi; q += 1u) {`,
        `    start += (counts[q] + ${u32(A - 1)}) / ${u32(A)} * ${u32(A)};`,
        `  }`,
        `  var p = start;`,
        `  for (var r = 0u; r < ${u32(R)}; r += 1u) {`,
        `    if (segment_of(i32(${idsBuf.get(viewIndex(ids, ["r"]))})) == gi) {`,
        `      ${out.set(at("p"), "i32(r)")}`,
        `      p += 1u;`,
        `    }`,
        `  }`,
        `  var end = start + (counts[gi] + ${u32(A - 1)}) / ${u32(A)} * ${u32(A)};`,
        `  if (gi == ${u32(E)}) {`,
        `    end = ${u32(P)};`,
        `  }`,
        `  for (; p < end; p += 1u) {`,
        `    ${out.set(at("p"), "-1")}`,
        `  }`,
      ]),
    ].join("\n"),
  );
}
