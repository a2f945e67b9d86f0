/**
 * Back end pass 2 (plan): decides, for a fused program, which GPU buffer holds each stored
 * tensor and how each kernel is launched, and checks both against the device's limits.
 *
 *   - Buffers: parameters and inputs get buffers of their own (parameters are uploaded once,
 *     inputs written before every run); every other stored value lives in a pool buffer from
 *     the kernel that writes it to the last kernel that reads it (outputs to the end), and a
 *     pool buffer is reused once its tensor is dead (best fit, growing the largest free one).
 *     `peakBytes` is what the program allocates; `totalBytes` what it would without reuse.
 *   - Launches: a kernel numbers its workgroups linearly; the grid spreads that count over
 *     x, y and z so no dimension exceeds maxComputeWorkgroupsPerDimension.
 *   - Limits: a tensor larger than a storage binding, a kernel that binds more storage buffers
 *     than the device allows, or more workgroups than three grid dimensions hold is a one-line
 *     LimitError naming the tensor and the limit. Workgroup sizes and shared-memory tiles that
 *     do not fit are shrunk instead (they are the compiler's choice, not the model's).
 *
 * Limits are a plain object (the front end never opens a device): pass GpuContext.limits, or
 * WEBGPU_DEFAULT_LIMITS to stay portable.
 */
import { type FusedKernel, type FusedProgram, type Storage } from "./fuse-kernels.js";
import { type IrGraph, inputsOf, numel } from "../ir/graph.js";
import { fusionOf } from "../ir/ops.js";
import {
  DEFAULT_TUNING,
  type MatmulVariant,
  type Tuning,
  WGRAD_BLOCK,
  matmulTier,
} from "./wgsl/variants.js";

/** The device limits the planner checks (names as in WebGPU's GPUSupportedLimits). */
export interface DeviceLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number;
  maxComputeWorkgroupSizeX: number;
  maxComputeWorkgroupSizeY: number;
  maxComputeWorkgroupSizeZ: number;
  maxComputeWorkgroupsPerDimension: number;
  maxStorageBuffersPerShaderStage: number;
}

/** The limits every WebGPU device has. */
export const WEBGPU_DEFAULT_LIMITS: DeviceLimits = {
  maxBufferSize: 268_435_456,
  maxStorageBufferBindingSize: 134_217_728,
  maxComputeWorkgroupStorageSize: 16_384,
  maxComputeInvocationsPerWorkgroup: 256,
  maxComputeWorkgroupSizeX: 256,
  maxComputeWorkgroupSizeY: 256,
  maxComputeWorkgroupSizeZ: 64,
  maxComputeWorkgroupsPerDimension: 65_535,
  maxStorageBuffersPerShaderStage: 8,
};

/**
 * Every buffer of a plan within maxBufferSize (a plan from a bundle was made for other limits,
 * or edited): checked before anything is allocated.
 */
export function checkBufferLimits(buffers: readonly PhysicalBuffer[], limits: LimitsLike): void {
  const lim = resolveLimits(limits);
  for (const b of buffers) {
    if (!(b.bytes <= lim.maxBufferSize)) {
      throw new LimitError(
        `${b.role === "pool" ? "pool buffer" : `${b.role} buffer`} ${b.id} needs ${b.bytes} bytes, over maxBufferSize = ${lim.maxBufferSize}`,
        "maxBufferSize",
      );
    }
  }
}

/** Any object with (some of) the limits: DeviceLimits, GpuContext.limits, a parsed JSON. */
export type LimitsLike = Partial<DeviceLimits> | Readonly<Record<string, number>>;

/** Fills in WebGPU's defaults for limits a partial or foreign limits object lacks. */
export function resolveLimits(limits: LimitsLike = {}): DeviceLimits {
  const out = { ...WEBGPU_DEFAULT_LIMITS };
  for (const key of Object.keys(out) as (keyof DeviceLimits)[]) {
    const v = (limits as Partial<Record<string, number>>)[key];
    if (typeof v === "number" && Number.isFinite(v) && v > 0) out[key] = v;
  }
  return out;
}

/** The largest element index a kernel's u32 arithmetic holds. */
const MAX_U32 = 2 ** 32 - 1;

/** A model that does not fit the device: the message is one line naming tensor and limit. */
export class LimitError extends Error {
  override readonly name = "LimitError";
  constructor(
    message: string,
    readonly limit: keyof DeviceLimits,
  ) {
    super(message);
  }
}

export interface PhysicalBuffer {
  id: number;
  /** Rounded up to 16 bytes (vec4 bindings). */
  bytes: number;
  role: "input" | "param" | "pool";
}

/** How one kernel is launched (and the template choices that shape it). */
export interface Launch {
  workgroupSize: [number, number, number];
  /** Logical workgroups; the kernel derives its work from the linear workgroup index. */
  workgroups: number;
  grid: [number, number, number];
  /** Bytes of workgroup memory the kernel declares. */
  workgroupBytes: number;
  /** matmul / attention: the variant after adapting it to the shape. */
  matmul?: MatmulVariant & { layout: "nn" | "nt" };
  /** rows: invocations per row. */
  rowThreads?: number;
  /** rows: set when each invocation owns a row (rowThreads 1), this many rows per workgroup. */
  rowsPerWorkgroup?: number;
  /** map, reduce: elements each invocation computes, in a loop. */
  items?: number;
  /** Emit scalar loads only (set when vec4 bindings would exceed the binding limit). */
  scalarOnly?: boolean;
}

export interface BufferPlan {
  buffers: PhysicalBuffer[];
  /** Storage id (node id) → buffer id. */
  bufferOf: Record<number, number>;
  /** One per kernel, in program order. */
  launches: Launch[];
  /** Bytes allocated: parameters, inputs and the pool. */
  peakBytes: number;
  /** Bytes every stored tensor would take without reuse. */
  totalBytes: number;
  tuning: Tuning;
  limits: DeviceLimits;
  /** Storages larger than this are bound as several windows of this many bytes. */
  windowBytes: number;
  /** Bytes each storage's bindings cover (its data, rounded up to 16). */
  storageBytes: Record<number, number>;
}

export function storageBytes(s: { numel: number }): number {
  return Math.max(16, Math.ceil((s.numel * 4) / 16) * 16);
}

/** "blocks.0.ln_1.weight [768] f32", or the node and op for values without a name. */
export function describeTensor(graph: IrGraph, id: number): string {
  const n = graph.nodes[id]!;
  const out = graph.outputs.find((o) => o.node === id);
  const name =
    n.op === "input" || n.op === "param"
      ? `${n.op} ${n.name}`
      : out
        ? `output ${out.name} (%${id} ${n.op})`
        : `%${id} (${n.op})`;
  return `${name} [${n.shape.join(", ")}] ${n.dtype}`;
}

export function planBuffers(
  program: FusedProgram,
  limits: LimitsLike = WEBGPU_DEFAULT_LIMITS,
  tuning: Tuning = DEFAULT_TUNING,
): BufferPlan {
  const lim = resolveLimits(limits);
  const graph = program.graph;
  const storageById = new Map(program.storages.map((s) => [s.id, s]));

  // A tensor larger than one storage binding is bound as several windows (see
  // wgsl/kernel-writer.ts); only the buffer size itself is a hard limit.
  const windowBytes = Math.floor(lim.maxStorageBufferBindingSize / 256) * 256;
  const windowsOf = (id: number) => {
    const s = storageById.get(id)!;
    const bytes = storageBytes(s);
    return bytes > windowBytes ? Math.ceil(bytes / windowBytes) : 1;
  };
  for (const s of program.storages) {
    const bytes = s.numel * 4;
    if (bytes > lim.maxBufferSize) {
      throw new LimitError(
        `tensor ${describeTensor(graph, s.id)} needs ${bytes} bytes, over maxBufferSize = ${lim.maxBufferSize}`,
        "maxBufferSize",
      );
    }
    // Kernels index elements with u32 (and write sizes as u32 literals): a device whose
    // maxBufferSize allows more would otherwise get shaders that wrap around or do not compile.
    if (s.numel > MAX_U32) {
      throw new LimitError(
        `tensor ${describeTensor(graph, s.id)} has ${s.numel} elements, over the ${MAX_U32} that 32-bit kernel indices reach`,
        "maxBufferSize",
      );
    }
  }
  program.kernels.forEach((k) => {
    const bound = new Set([...Object.values(k.loads).map((v) => v.storage), k.out.storage]);
    const bindings = [...bound].reduce((a, id) => a + windowsOf(id), 0);
    if (bindings > lim.maxStorageBuffersPerShaderStage) {
      const big = [...bound].filter((id) => windowsOf(id) > 1);
      const why =
        big.length > 0
          ? ` (${big.map((id) => `${describeTensor(graph, id)} is over maxStorageBufferBindingSize = ${lim.maxStorageBufferBindingSize}, bound as ${windowsOf(id)} windows`).join("; ")})`
          : "";
      throw new LimitError(
        `kernel ${k.name} computing ${describeTensor(graph, k.root)} needs ${bindings} storage buffer bindings, over maxStorageBuffersPerShaderStage = ${lim.maxStorageBuffersPerShaderStage}${why}`,
        "maxStorageBuffersPerShaderStage",
      );
    }
  });

  // ---- Buffers.
  const buffers: PhysicalBuffer[] = [];
  const bufferOf: Record<number, number> = {};
  for (const s of program.storages) {
    if (s.role === "value" || s.packedIn) continue;
    bufferOf[s.id] = buffers.length;
    // Packs and static values (computed once from parameters) persist like parameters.
    const role = s.role === "pack" || s.role === "static" ? "param" : s.role;
    buffers.push({ id: buffers.length, bytes: storageBytes(s), role });
  }
  // Packed parameters live in their pack's buffer (compile-graph gives their byte offsets).
  for (const s of program.storages) if (s.packedIn) bufferOf[s.id] = bufferOf[s.packedIn.storage]!;
  const lastUse = new Map<number, number>();
  program.kernels.forEach((k, t) => {
    for (const v of Object.values(k.loads)) lastUse.set(v.storage, t);
  });
  for (const o of program.outputs) lastUse.set(o.view.storage, Infinity);
  // Several kernels may write one storage (the parts of a concatenation, fuse-kernels.ts): it
  // takes its buffer at the first write and keeps it past the last write and the last read.
  const lastWrite = new Map<number, number>();
  program.kernels.forEach((k, t) => lastWrite.set(k.out.storage, t));
  const free: PhysicalBuffer[] = [];
  const dying = new Map<number, number[]>(); // kernel index → storages dead after it
  program.kernels.forEach((k, t) => {
    const s = storageById.get(k.out.storage)!;
    if (s.role === "value" && bufferOf[s.id] === undefined) {
      const need = storageBytes(s);
      // Best fit among free pool buffers; else grow the largest; else a new one.
      let pick: PhysicalBuffer | undefined;
      for (const b of free) if (b.bytes >= need && (!pick || b.bytes < pick.bytes)) pick = b;
      if (!pick && free.length > 0) {
        pick = free.reduce((a, b) => (b.bytes > a.bytes ? b : a));
        pick.bytes = need;
      }
      if (pick) free.splice(free.indexOf(pick), 1);
      else {
        pick = { id: buffers.length, bytes: need, role: "pool" };
        buffers.push(pick);
      }
      bufferOf[s.id] = pick.id;
      // Written but never read: free after the last write.
      const end = Math.max(lastUse.get(s.id) ?? t, lastWrite.get(s.id)!);
      if (end !== Infinity) dying.set(end, [...(dying.get(end) ?? []), s.id]);
    }
    for (const dead of dying.get(t) ?? []) {
      const st = storageById.get(dead)!;
      if (st.role === "value") free.push(buffers[bufferOf[dead]!]!);
    }
  });
  checkBufferLimits(buffers, lim);

  const launches = program.kernels.map((k) => scheduleKernel(program, k, lim, tuning));
  const peakBytes = buffers.reduce((a, b) => a + b.bytes, 0);
  const totalBytes = program.storages.reduce((a, s) => a + (s.packedIn ? 0 : storageBytes(s)), 0);
  const bytesOf: Record<number, number> = {};
  for (const s of program.storages) bytesOf[s.id] = storageBytes(s);
  return {
    buffers,
    bufferOf,
    launches,
    peakBytes,
    totalBytes,
    tuning,
    limits: lim,
    windowBytes,
    storageBytes: bytesOf,
  };
}

// ---------------------------------------------------------------------------------------------
// Launch geometry.

/** Spreads `workgroups` over a grid whose dimensions stay within `maxPerDim`. */
export function spreadGrid(
  workgroups: number,
  maxPerDim: number,
  what: string,
): [number, number, number] {
  const w = Math.max(1, workgroups);
  if (w <= maxPerDim) return [w, 1, 1];
  const y = Math.ceil(w / maxPerDim);
  if (y <= maxPerDim) return [Math.ceil(w / y), y, 1];
  const z = Math.ceil(w / (maxPerDim * maxPerDim));
  if (z > maxPerDim) {
    throw new LimitError(
      `${what} needs ${w} workgroups, over maxComputeWorkgroupsPerDimension³ = ${maxPerDim}³`,
      "maxComputeWorkgroupsPerDimension",
    );
  }
  const perZ = Math.ceil(w / z);
  const yy = Math.ceil(perZ / maxPerDim);
  return [Math.ceil(perZ / yy), yy, z];
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Threads per workgroup for 1-D kernels, within the device's limits. */
function clampThreads(n: number, lim: DeviceLimits): number {
  let t = Math.max(1, n);
  while (t > lim.maxComputeInvocationsPerWorkgroup || t > lim.maxComputeWorkgroupSizeX) t >>= 1;
  return Math.max(1, t);
}

/** The matmul dimensions of an anchor: batch count, m, n, k. */
export function matmulDims(
  graph: IrGraph,
  id: number,
): { batch: number; m: number; n: number; k: number } {
  const n = graph.nodes[id]!;
  const a = graph.nodes[(n as { inputs: number[] }).inputs[0]!]!;
  const r = n.shape.length;
  // An expert matmul walks the slots of its row order (rows grouped by expert, padded).
  const m = n.op === "expert_matmul" ? graph.nodes[n.inputs[3]]!.shape[0]! : n.shape[r - 2]!;
  return {
    batch: numel(n.shape.slice(0, -2)),
    m,
    n: n.shape[r - 1]!,
    k: a.shape[a.shape.length - 1]!,
  };
}

/** Whether the matmul's B operand is read along k (a transposed weight, Kᵀ). */
export function matmulLayout(kernel: FusedKernel, graph: IrGraph): "nn" | "nt" {
  const n = graph.nodes[kernel.anchor!]!;
  const b = kernel.loads[(n as { inputs: number[] }).inputs[1]!];
  if (!b) return "nn";
  const r = b.shape.length;
  return b.strides[r - 2] === 1 && b.strides[r - 1] !== 1 ? "nt" : "nn";
}

function adaptVariant(v: MatmulVariant, m: number, n: number, lim: DeviceLimits): MatmulVariant {
  const out = { ...v };
  if (out.tileK === 0) {
    // A register block taller or wider than the matrix only wastes invocations.
    out.tm = Math.min(out.tm, nextPow2(m));
    out.tn = Math.min(out.tn, nextPow2(n));
    // So do invocations past the matrix's edge: a workgroup wider than a skinny matrix (a
    // router's E columns, a LoRA's r) gives its width to the other axis instead.
    const [alongN, alongM] =
      out.lanes === "cols" ? (["wx", "wy"] as const) : (["wy", "wx"] as const);
    while (out[alongN] > 1 && (out[alongN] / 2) * out.tn >= n) {
      out[alongN] /= 2;
      if (out[alongM] * out.tm < m) out[alongM] *= 2;
    }
    while (out[alongM] > 1 && (out[alongM] / 2) * out.tm >= m) {
      out[alongM] /= 2;
      if (out[alongN] * out.tn < n) out[alongN] *= 2;
    }
  }
  while (
    out.wx * out.wy > lim.maxComputeInvocationsPerWorkgroup ||
    out.wx > lim.maxComputeWorkgroupSizeX ||
    out.wy > lim.maxComputeWorkgroupSizeY
  ) {
    if (out.wx >= out.wy) out.wx >>= 1;
    else out.wy >>= 1;
  }
  if (out.tileK > 0 && tileBytes(out) > lim.maxComputeWorkgroupStorageSize) {
    out.tileK = 0; // registers only: always fits
  }
  return out;
}

/** Rows and columns of C one workgroup covers. */
export function matmulTile(v: MatmulVariant): { bm: number; bn: number } {
  return v.lanes === "cols"
    ? { bm: v.wy * v.tm, bn: v.wx * v.tn }
    : { bm: v.wx * v.tm, bn: v.wy * v.tn };
}

function tileBytes(v: MatmulVariant): number {
  const { bm, bn } = matmulTile(v);
  return (bm + bn) * v.tileK * 4;
}

function scheduleKernel(
  program: FusedProgram,
  k: FusedKernel,
  lim: DeviceLimits,
  tuning: Tuning,
): Launch {
  const graph = program.graph;
  const what = `kernel ${k.name} computing ${describeTensor(graph, k.root)}`;
  const size = numel(k.shape);
  const launch = (
    workgroupSize: [number, number, number],
    workgroups: number,
    workgroupBytes = 0,
  ): Launch => ({
    workgroupSize,
    workgroups,
    grid: spreadGrid(workgroups, lim.maxComputeWorkgroupsPerDimension, what),
    workgroupBytes,
  });
  switch (k.kind) {
    case "map":
    case "reduce": {
      const t = clampThreads(tuning.mapThreads, lim);
      // Up to mapItems elements per invocation, keeping 16 workgroups (work for every core).
      const items = Math.max(1, Math.min(tuning.mapItems, Math.floor(size / (t * 16))));
      const l = launch([t, 1, 1], Math.ceil(size / (t * items)));
      if (items > 1) l.items = items;
      return l;
    }
    case "scatter": {
      const anchor = graph.nodes[k.anchor!]!;
      if (anchor.op === "expert_matmul_wgrad") {
        const [experts, depth, cols] = anchor.shape as [number, number, number];
        const blocks = experts * Math.ceil(depth / WGRAD_BLOCK) * Math.ceil(cols / WGRAD_BLOCK);
        const t = clampThreads(Math.min(tuning.mapThreads, nextPow2(blocks)), lim);
        return launch([t, 1, 1], Math.ceil(blocks / t));
      }
      const d = k.shape[k.shape.length - 1]!;
      const t = clampThreads(Math.min(tuning.mapThreads, nextPow2(d)), lim);
      return launch([t, 1, 1], Math.ceil(d / t));
    }
    case "rows": {
      const extents = k.members.map((id) => {
        const n = graph.nodes[id]!;
        // A row-wise member (softmax, a reduction) spans its input's last axis.
        const src = fusionOf(n).kernel === "rows" ? graph.nodes[inputsOf(n)[0]!]! : n;
        return src.shape[src.shape.length - 1] ?? 1;
      });
      const last = k.shape[k.shape.length - 1] ?? 1;
      const rows = k.shape.length === 0 ? 1 : size / Math.max(1, last);
      const perGroup = clampThreads(tuning.rowsPerWorkgroup, lim);
      if (tuning.rowsPerWorkgroup > 0 && rows >= 16 * perGroup) {
        const l = launch([perGroup, 1, 1], Math.ceil(rows / perGroup));
        l.rowThreads = 1;
        l.rowsPerWorkgroup = perGroup;
        return l;
      }
      let t = clampThreads(Math.min(tuning.rowThreads, nextPow2(Math.max(1, ...extents))), lim);
      while (t > 1 && t * 8 > lim.maxComputeWorkgroupStorageSize) t >>= 1;
      const l = launch([t, 1, 1], rows, t > 1 ? t * 8 : 0);
      l.rowThreads = t;
      return l;
    }
    case "attention": {
      // One invocation per query row.
      const r = k.shape.length;
      const rows = numel(k.shape.slice(0, -1));
      const t = clampThreads(Math.min(tuning.mapThreads, nextPow2(k.shape[r - 2] ?? 1)), lim);
      return launch([t, 1, 1], Math.ceil(rows / t));
    }
    case "topk": {
      const t = clampThreads(tuning.mapThreads, lim);
      const node = graph.nodes[k.anchor!]!;
      return launch([t, 1, 1], Math.ceil(size / node.shape[node.shape.length - 1]! / t));
    }
    case "scan": {
      const node = graph.nodes[k.anchor!]!;
      const t = clampThreads(tuning.mapThreads, lim);
      const axis = node.op === "cumsum" ? node.axis : 0;
      return launch([t, 1, 1], Math.ceil(size / node.shape[axis]! / t));
    }
    case "group": {
      const node = graph.nodes[k.anchor!]!;
      const experts = node.op === "group_rows" ? node.experts : 0;
      const t = clampThreads(Math.min(tuning.mapThreads, nextPow2(experts + 1)), lim);
      return launch([t, 1, 1], Math.ceil((experts + 1) / t));
    }
    case "matmul": {
      const { batch, m, n, k: depth } = matmulDims(graph, k.anchor!);
      const layout = matmulLayout(k, graph);
      const anchor = graph.nodes[k.anchor!]!;
      const expert = anchor.op === "expert_matmul";
      // Rows of an expert matmul are walked in group_rows order: an invocation's register
      // block must stay inside one expert's segment, which shared-memory tiles (whole
      // workgroups) do not; so registers only, adapted like any register variant.
      const chosen = matmulTier(tuning, batch, m, n, depth)[layout];
      const v = adaptVariant(expert ? { ...chosen, tileK: 0 } : chosen, m, n, lim);
      if (expert) {
        const order = graph.nodes[anchor.inputs[3]]!;
        const align = order.op === "group_rows" ? order.align : 1;
        while (v.tm > 1 && align % v.tm !== 0) v.tm >>= 1;
      }
      const { bm, bn } = matmulTile(v);
      const l = launch(
        [v.wx, v.wy, 1],
        Math.ceil(m / bm) * Math.ceil(n / bn) * batch,
        v.tileK > 0 ? tileBytes(v) : 0,
      );
      l.matmul = { ...v, layout };
      return l;
    }
  }
}

/** For reports: what each storage is. */
export function storageRole(s: Storage): string {
  return s.role === "value" ? "intermediate" : s.role;
}
