/**
 * The back end in one call: fuse → plan → emit, from a tensor IR graph to WGSL kernels with
 * their buffers and launches. Pure (no device): the limits and the tuned variants come in as
 * plain data, so `moec compile` can run it without a GPU and runtime/executor.ts runs the
 * result.
 */
import { type EmittedKernel, emitWgsl } from "./emit-wgsl.js";
import { type FusedProgram, type FuseOptions, fuseKernels } from "./fuse-kernels.js";
import type { IrDType, IrGraph } from "../ir/graph.js";
import { verifyGraph } from "../ir/verify.js";
import {
  type BufferPlan,
  type LimitsLike,
  type PhysicalBuffer,
  WEBGPU_DEFAULT_LIMITS,
  planBuffers,
  resolveLimits,
} from "./plan-buffers.js";
import { DEFAULT_TUNING, type Tuning } from "./wgsl/variants.js";

/** A named tensor the program reads or writes, and where its data lives. */
export interface ProgramTensor {
  name: string;
  dtype: IrDType;
  shape: number[];
  buffer: number;
  /** Byte offset in the buffer (outputs that are contiguous views of a larger tensor). */
  byteOffset: number;
}

export interface CompiledProgram {
  kernels: EmittedKernel[];
  buffers: PhysicalBuffer[];
  inputs: ProgramTensor[];
  params: ProgramTensor[];
  outputs: ProgramTensor[];
  memory: { peakBytes: number; totalBytes: number };
  /** The intermediate products, for tests and `moec compile --explain`. */
  fused: FusedProgram;
  plan: BufferPlan;
}

export interface CompileOptions extends FuseOptions {
  tuning?: Tuning;
}

export function compileGraph(
  graph: IrGraph,
  limits: LimitsLike = WEBGPU_DEFAULT_LIMITS,
  tuning: Tuning | CompileOptions = DEFAULT_TUNING,
): CompiledProgram {
  const options: CompileOptions = "matmul" in tuning ? { tuning } : tuning;
  const problems = verifyGraph(graph);
  if (problems.length > 0) throw new Error(`internal: invalid IR: ${problems[0]}`);
  const lim = resolveLimits(limits);
  const fused = fuseKernels(graph, {
    ...options,
    maxStorageBuffers: options.maxStorageBuffers ?? lim.maxStorageBuffersPerShaderStage,
  });
  const plan = planBuffers(fused, lim, options.tuning ?? DEFAULT_TUNING);
  const kernels = emitWgsl(fused, plan);
  const leaf = (role: "input" | "param") =>
    fused.storages
      .filter((s) => s.role === role)
      .map((s) => ({
        name: s.name!,
        dtype: s.dtype,
        shape: s.shape,
        buffer: plan.bufferOf[s.id]!,
        byteOffset: (s.packedIn?.offset ?? 0) * 4,
      }));
  const outputs = fused.outputs.map((o) => ({
    name: o.name,
    dtype: o.view.dtype,
    shape: o.view.shape,
    buffer: plan.bufferOf[o.view.storage]!,
    byteOffset: o.view.offset * 4,
  }));
  return {
    kernels,
    buffers: plan.buffers,
    inputs: leaf("input"),
    params: leaf("param"),
    outputs,
    memory: { peakBytes: plan.peakBytes, totalBytes: plan.totalBytes },
    fused,
    plan,
  };
}
