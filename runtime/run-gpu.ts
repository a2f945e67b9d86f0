/**
 * Running a model on the WebGPU device: open the device, pick the matmul variants tuned for
 * this adapter (measured once, cached on disk), compile the graph against the device's limits
 * (or take a bundle's kernels as compiled), upload weights once, run, read back.
 */
import { performance } from "node:perf_hooks";
import { type CompiledProgram, compileGraph } from "../compiler/kernels/compile-graph.js";
import type { IrGraph } from "../compiler/ir/graph.js";
import { DEFAULT_TUNING } from "../compiler/kernels/wgsl/variants.js";
import { checkBufferLimits } from "../compiler/kernels/plan-buffers.js";
import { autotune, loadTuning } from "./autotune.js";
import { adapterSummary, openDevice } from "./device.js";
import { Executor, type TensorData } from "./executor.js";
import type { TypedTensor } from "./weights.js";

/** The parts of a compiled program the executor runs (all a bundle stores). */
type RunnableProgram = Pick<
  CompiledProgram,
  "kernels" | "buffers" | "inputs" | "params" | "outputs" | "memory"
>;

export interface GpuRunResult {
  device: string;
  outputs: Map<string, TypedTensor>;
  /** Milliseconds: compiling the kernels, the first forward call and a steady-state one. */
  timings: { compileMs: number; firstMs: number; steadyMs?: number };
  /** Distinct kernels compiled and the devices that compiled them. */
  compiled: { kernels: number; workers: number };
  kernels?: { name: string; ms: number }[];
  memory: { peakBytes: number; tensorBytes: number };
}

/** What a run uploads, made only once the program is known to fit the device. */
export interface HostTensors {
  weights: ReadonlyMap<string, TypedTensor>;
  inputs: ReadonlyMap<string, TypedTensor>;
}

/**
 * Compiles `graph` against the device's limits (or checks a bundle's buffers against them)
 * and only then calls `prepare` for the weights and inputs: a model too large for the device
 * fails in a second, before gigabytes of weights are generated or read.
 */
export async function runOnGpu(
  graph: IrGraph,
  prepare: () => HostTensors,
  options: {
    stats: boolean;
    tune?: boolean;
    bundled?: RunnableProgram;
    log?: (line: string) => void;
    /** Called as kernels compile (runtime/compile-kernels.ts): `done` of `total`. */
    onCompileProgress?: (done: number, total: number) => void;
  },
): Promise<GpuRunResult> {
  const ctx = await openDevice();
  let exe: Executor | undefined;
  try {
    let program: RunnableProgram;
    if (options.bundled) {
      program = options.bundled;
      checkBufferLimits(program.buffers, ctx.limits);
    } else {
      // Tuned variants when this adapter was tuned (`moec tune`), else the defaults: measuring
      // every variant takes a minute on a software driver, too long to do unasked.
      let tuning = loadTuning(ctx);
      if (!tuning && options.tune) {
        options.log?.(`tuning matmul kernels for ${adapterSummary(ctx)} (cached afterwards)`);
        tuning = await autotune(ctx, options.log ? { log: options.log } : {});
      }
      program = compileGraph(graph, ctx.limits, tuning ?? DEFAULT_TUNING);
    }
    const { weights, inputs } = prepare();
    // The executor reads only the runnable parts of a program.
    const compile = options.onCompileProgress ? { onProgress: options.onCompileProgress } : {};
    exe = await Executor.create(ctx, program as CompiledProgram, {
      timing: options.stats,
      compile,
    });
    const params = new Map<string, TensorData>();
    for (const [name, t] of weights) params.set(name, t.data as TensorData);
    exe.setParams(params);
    const feeds = new Map<string, TensorData>();
    for (const [name, t] of inputs) feeds.set(name, t.data as TensorData);
    let t0 = performance.now();
    let out = await exe.run(feeds);
    const firstMs = performance.now() - t0;
    // A second call shows the steady state (pipelines and uploads done).
    t0 = performance.now();
    out = await exe.run(feeds);
    const steadyMs = performance.now() - t0;
    const outputs = new Map<string, TypedTensor>();
    for (const o of program.outputs) {
      const data = out.get(o.name)!;
      outputs.set(o.name, { dtype: o.dtype, shape: o.shape, data });
    }
    const result: GpuRunResult = {
      device: adapterSummary(ctx),
      outputs,
      timings: { compileMs: exe.compiled.ms, firstMs, steadyMs },
      compiled: { kernels: exe.compiled.kernels, workers: exe.compiled.workers },
      memory: { peakBytes: program.memory.peakBytes, tensorBytes: program.memory.totalBytes },
    };
    if (options.stats) result.kernels = exe.stats().map((k) => ({ name: k.name, ms: k.lastMs }));
    return result;
  } finally {
    exe?.destroy();
    await ctx.close();
  }
}
