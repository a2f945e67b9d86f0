/**
 * Back end pass 3 (emit): WGSL for every kernel of a planned program, from a few templates
 * (compiler/kernels/wgsl/): elementwise map (also copies, gather, concat, fills), matmul with a fused
 * epilogue (variants chosen by the plan), row reductions (softmax, norms), non-last-axis
 * reductions, scatter_add and expert weight gradients, fused attention, and the routing
 * kernels (top-k, running sums, rows grouped by expert). Sizes, strides and tile shapes are
 * constants in the text, so each kernel is specialised to its shapes.
 *
 * The output is plain data: the runtime creates one pipeline per distinct WGSL text and binds
 * the planned buffers in the order of `bindings`.
 */
import type { FusedKernel, FusedProgram, KernelKind } from "./fuse-kernels.js";
import type { BufferPlan, Launch } from "./plan-buffers.js";
import { emitAttention } from "./wgsl/attention.js";
import { type BindingType, KernelWriter } from "./wgsl/kernel-writer.js";
import { emitMap, emitReduce, emitScatter } from "./wgsl/map.js";
import { emitMatmul } from "./wgsl/matmul.js";
import { emitGroupRows, emitScan, emitTopk } from "./wgsl/routing.js";
import { emitRows } from "./wgsl/rows.js";

export interface KernelBinding {
  binding: number;
  /** Index into the plan's buffers, and the byte range of it that is bound. */
  buffer: number;
  byteOffset: number;
  byteSize: number;
  /** The stored tensor (node id) this binding reads or writes. */
  storage: number;
  access: "read" | "read_write";
  type: BindingType;
}

export interface EmittedKernel {
  name: string;
  kind: KernelKind;
  wgsl: string;
  entryPoint: string;
  bindings: KernelBinding[];
  workgroupSize: [number, number, number];
  /** dispatchWorkgroups(x, y, z). */
  grid: [number, number, number];
  /** IR nodes the kernel computes. */
  nodes: number[];
  /** matmul / attention variant, for reports and stats. */
  variant?: string;
  /** Reads only parameters and constants: run once after parameters change. */
  static?: boolean;
}

function emitKernel(
  program: FusedProgram,
  plan: BufferPlan,
  k: FusedKernel,
  launch: Launch,
): { wgsl: string; w: KernelWriter } {
  const w = new KernelWriter(program.graph, k, {
    windowBytes: plan.windowBytes,
    storageBytes: (id) => plan.storageBytes[id]!,
  });
  switch (k.kind) {
    case "map":
      return { wgsl: emitMap(w, launch), w };
    case "reduce":
      return { wgsl: emitReduce(w, launch), w };
    case "scatter":
      return { wgsl: emitScatter(w, launch), w };
    case "rows":
      return { wgsl: emitRows(w, launch), w };
    case "matmul":
      return { wgsl: emitMatmul(w, launch), w };
    case "attention":
      return { wgsl: emitAttention(w, launch), w };
    case "topk":
      return { wgsl: emitTopk(w, launch), w };
    case "scan":
      return { wgsl: emitScan(w, launch), w };
    case "group":
      return { wgsl: emitGroupRows(w, launch), w };
  }
}

export function emitWgsl(program: FusedProgram, plan: BufferPlan): EmittedKernel[] {
  return program.kernels.map((k, index) => {
    const planned = plan.launches[index]!;
    // A storage read both as vec4 and as scalars takes two bindings; if that exceeds the
    // device's limit, the kernel is emitted again with scalar loads only.
    let { wgsl, w } = emitKernel(program, plan, k, planned);
    if (w.bindings.length > plan.limits.maxStorageBuffersPerShaderStage) {
      ({ wgsl, w } = emitKernel(program, plan, k, { ...planned, scalarOnly: true }));
    }
    const launch = planned;
    const nodes = [...k.members];
    for (const extra of [k.anchor, k.scores, k.softmax])
      if (extra !== undefined && !nodes.includes(extra)) nodes.push(extra);
    const emitted: EmittedKernel = {
      name: k.name,
      kind: k.kind,
      wgsl,
      entryPoint: "main",
      bindings: w.bindings.map((b) => {
        const buffer = plan.bufferOf[b.storage];
        if (buffer === undefined) throw new Error(`internal: no buffer for storage ${b.storage}`);
        const bytes = plan.storageBytes[b.storage]!;
        const byteOffset = (b.window ?? 0) * plan.windowBytes;
        const byteSize = Math.min(bytes - byteOffset, plan.windowBytes);
        return { ...b, buffer, byteOffset, byteSize };
      }),
      workgroupSize: launch.workgroupSize,
      grid: launch.grid,
      nodes: nodes.sort((a, b) => a - b),
    };
    if (launch.matmul) emitted.variant = `${launch.matmul.name} (${launch.matmul.layout})`;
    if (k.static) emitted.static = true;
    return emitted;
  });
}
