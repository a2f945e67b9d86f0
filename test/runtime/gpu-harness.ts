// Shared by the GPU kernel tests: seeded random leaves, run a graph on the device and on the
// float64 reference interpreter, and compare them (relative L2 error, infinities exactly).
import { type CompiledProgram, compileGraph } from "../../compiler/kernels/compile-graph.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import { numel } from "../../compiler/ir/graph.js";
import type { Tuning } from "../../compiler/kernels/wgsl/variants.js";
import { afterAll, beforeAll } from "vitest";
import { type GpuContext, type OpenDeviceOptions, openDevice } from "../../runtime/device.js";
import { Executor, type TensorData } from "../../runtime/executor.js";
import { type HostTensor, interpret } from "../../runtime/reference/interpret.js";

import { prng } from "../prng.js";

export { prng };

export interface LeafSpec {
  /** f32 values uniform in [lo, hi) (default [-2, 2)), never all zero. */
  lo?: number;
  hi?: number;
  /** i32 values uniform in [0, ints). */
  ints?: number;
}

/** Random values for every input and parameter, exactly representable in float32. */
export function randomLeaves(
  graph: IrGraph,
  seed: number,
  specs: Record<string, LeafSpec> = {},
): Map<string, HostTensor> {
  const rand = prng(seed);
  const out = new Map<string, HostTensor>();
  for (const n of graph.nodes) {
    if (n.op !== "input" && n.op !== "param") continue;
    const spec = specs[n.name] ?? {};
    const data = new Float64Array(numel(n.shape));
    for (let i = 0; i < data.length; i++) {
      if (n.dtype === "i32") data[i] = Math.floor(rand() * (spec.ints ?? 4));
      else {
        const lo = spec.lo ?? -2;
        const hi = spec.hi ?? 2;
        data[i] = Math.fround(lo + (hi - lo) * rand());
      }
    }
    out.set(n.name, { shape: [...n.shape], data });
  }
  return out;
}

/** The leaves as device data: parameters for setParams, inputs for run. */
export function deviceFeeds(
  graph: IrGraph,
  leaves: ReadonlyMap<string, HostTensor>,
): { params: Map<string, TensorData>; inputs: Map<string, TensorData> } {
  const params = new Map<string, TensorData>();
  const inputs = new Map<string, TensorData>();
  for (const n of graph.nodes) {
    if (n.op === "param") params.set(n.name, toDevice(leaves.get(n.name)!, n.dtype));
    if (n.op === "input") inputs.set(n.name, toDevice(leaves.get(n.name)!, n.dtype));
  }
  return { params, inputs };
}

export function toDevice(t: HostTensor, dtype: "f32" | "i32"): TensorData {
  return dtype === "i32" ? Int32Array.from(t.data) : Float32Array.from(t.data);
}

/** ‖gpu − ref‖₂ / ‖ref‖₂ over finite reference entries; infinite ones must match exactly. */
export function relL2(gpu: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (gpu.length !== ref.length) return Infinity;
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const r = ref[i]!;
    const g = gpu[i]!;
    if (Number.isNaN(g)) return NaN;
    if (!Number.isFinite(r)) {
      if (g !== r) return Infinity;
      continue;
    }
    num += (g - r) ** 2;
    den += r * r;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export interface CheckResult {
  program: CompiledProgram;
  /** Relative L2 error per output. */
  errors: Record<string, number>;
  gpu: Map<string, TensorData>;
  ref: Map<string, HostTensor>;
}

/**
 * Compiles `graph` for the device, runs it once on random leaves (intermediate and output
 * buffers poisoned with NaN first) and compares every output with the reference interpreter.
 */
export async function checkGraph(
  ctx: GpuContext,
  graph: IrGraph,
  opts: {
    seed?: number;
    tuning?: Tuning;
    specs?: Record<string, LeafSpec>;
    /** Compile for these limits (at most the device's) instead of the device's own. */
    limits?: Record<string, number>;
  } = {},
): Promise<CheckResult> {
  const leaves = randomLeaves(graph, opts.seed ?? 1, opts.specs);
  const program = compileGraph(
    graph,
    { ...ctx.limits, ...opts.limits },
    opts.tuning ? { tuning: opts.tuning } : {},
  );
  const exe = await Executor.create(ctx, program);
  try {
    const { params, inputs } = deviceFeeds(graph, leaves);
    exe.setParams(params);
    exe.poison();
    const gpu = await exe.run(inputs);
    const ref = interpret(graph, leaves).outputs;
    const errors: Record<string, number> = {};
    for (const [name, r] of ref) errors[name] = relL2(gpu.get(name)!, r.data);
    return { program, errors, gpu, ref };
  } finally {
    exe.destroy();
  }
}

/**
 * One device for the calling test file (call at its top level): opened before its tests,
 * closed after them. The returned function gives the device, or fails the test with the
 * reason there is none (never skips).
 */
export function useDevice(options: OpenDeviceOptions = {}): () => GpuContext {
  let opened: GpuContext | undefined;
  let openError = "openDevice() was not called";
  beforeAll(async () => {
    try {
      opened = await openDevice(options);
    } catch (e) {
      openError = e instanceof Error ? e.message : String(e);
    }
  });
  afterAll(async () => {
    await opened?.close();
  });
  return () => {
    if (!opened)
      throw new Error(`GPU tests need a WebGPU adapter (run scripts/setup.sh): ${openError}`);
    return opened;
  };
}
