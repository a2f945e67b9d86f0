/**
 * Compiling a program's kernels before its first run, as fast as the machine allows, with
 * progress. Every distinct kernel (by WGSL text and binding layout) is compiled once.
 *
 * On a GPU the driver compiles at pipeline creation: every pipeline is created with
 * createComputePipelineAsync, all in flight at once, and a kernel is done when its pipeline is.
 * A software driver (lavapipe) compiles a shader with LLVM at its first dispatch instead, on
 * the device's single queue thread, one kernel after the other. So there each kernel is
 * dispatched once on a tiny scratch binding ("warmed") before the real run, by as many
 * devices as there are cores: this device and sibling devices on the same adapter, which
 * take kernels from one queue, longest first. What a sibling compiles reaches this device
 * through Mesa's shader cache (on disk, shared by every device of the process), so this
 * device then only loads it. Without that cache (MESA_SHADER_CACHE_DISABLE) a sibling's work
 * would be thrown away, and this device warms every kernel alone.
 */
import * as os from "node:os";
import type { EmittedKernel } from "../compiler/kernels/emit-wgsl.js";
import type { GpuContext } from "./device.js";

type Kernel = Pick<EmittedKernel, "name" | "wgsl" | "entryPoint" | "bindings">;

export interface CompileOptions {
  /** Called as kernels finish compiling: `done` of `total` distinct kernels. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Compile now, before the first run (default). false only creates the pipelines, so a
   * software driver compiles each kernel at its first dispatch (tests of one small program).
   */
  warm?: boolean;
  /**
   * Devices that compile at once on a software driver (this one included); default: one per
   * core, at most 4. 1 compiles everything on this device.
   */
  workers?: number;
}

export class ShaderError extends Error {
  override readonly name = "ShaderError";
  constructor(
    message: string,
    /** Each error as { line, col, message }. */
    readonly messages: { line: number; col: number; message: string }[],
  ) {
    super(message);
  }
}

const pipelineCache = new WeakMap<GPUDevice, Map<string, Promise<GPUComputePipeline>>>();

/**
 * Compiles one kernel into a compute pipeline, reporting WGSL errors with line:col. Cached per
 * device by WGSL text and binding layout.
 */
export function createKernelPipeline(
  device: GPUDevice,
  kernel: Pick<EmittedKernel, "name" | "wgsl" | "entryPoint" | "bindings">,
): Promise<GPUComputePipeline> {
  let cache = pipelineCache.get(device);
  if (!cache) pipelineCache.set(device, (cache = new Map()));
  const key = pipelineKey(kernel);
  let p = cache.get(key);
  if (!p) {
    p = compilePipeline(device, kernel);
    cache.set(key, p);
    // A failed compile must not poison the cache for a fixed retry.
    p.catch(() => cache.delete(key));
  }
  return p;
}

/** What makes two kernels one pipeline: their WGSL, entry point and binding layout. */
export function pipelineKey(
  kernel: Pick<EmittedKernel, "wgsl" | "entryPoint" | "bindings">,
): string {
  const layoutKey = kernel.bindings.map((b) => `${b.binding}:${b.access}`).join(",");
  return `${layoutKey}\n${kernel.entryPoint}\n${kernel.wgsl}`;
}

async function compilePipeline(
  device: GPUDevice,
  kernel: Pick<EmittedKernel, "name" | "wgsl" | "entryPoint" | "bindings">,
): Promise<GPUComputePipeline> {
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ label: kernel.name, code: kernel.wgsl });
  const info = await module.getCompilationInfo();
  const scopeError = await device.popErrorScope();
  const errors = info.messages.filter((m) => m.type === "error");
  if (errors.length > 0 || scopeError) {
    const source = kernel.wgsl.split("\n");
    const messages = errors.map((m) => ({ line: m.lineNum, col: m.linePos, message: m.message }));
    const first = messages[0];
    const text = first
      ? `${kernel.name}:${first.line}:${first.col}: ${first.message.split("\n")[0]}` +
        (source[first.line - 1] !== undefined ? `\n    ${source[first.line - 1]!.trim()}` : "") +
        (messages.length > 1 ? `\n(and ${messages.length - 1} more)` : "")
      : `${kernel.name}: ${scopeError!.message}`;
    throw new ShaderError(`WGSL error in ${text}`, messages);
  }
  const layout = device.createBindGroupLayout({
    label: kernel.name,
    entries: kernel.bindings.map((b) => ({
      binding: b.binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: b.access === "read" ? "read-only-storage" : "storage" },
    })),
  });
  device.pushErrorScope("validation");
  try {
    return await device.createComputePipelineAsync({
      label: kernel.name,
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: kernel.entryPoint },
    });
  } catch (e) {
    throw new ShaderError(
      `pipeline creation failed for ${kernel.name}: ${e instanceof Error ? e.message : String(e)}`,
      [],
    );
  } finally {
    const err = await device.popErrorScope();
    if (err)
      throw new ShaderError(`pipeline creation failed for ${kernel.name}: ${err.message}`, []);
  }
}

/** What compiling took, for reports and the bench. */
export interface CompileReport {
  /** Distinct kernels compiled (or found compiled) for this program. */
  kernels: number;
  /** Devices that compiled them. */
  workers: number;
  ms: number;
}

/** How long the queue must still hold work before a sibling device is opened for it. */
const SIBLING_DELAY_MS = 150;

/** Kernels already warmed on a device: a later program that shares them does not redo them. */
const warmed = new WeakMap<GPUDevice, Set<string>>();

/** Whether Mesa's on-disk shader cache is off, so a sibling's compile would not carry over. */
function mesaCacheDisabled(): boolean {
  const off = process.env.MESA_SHADER_CACHE_DISABLE;
  return off !== undefined && /^(1|true|yes)$/i.test(off);
}

/**
 * Compiles the distinct kernels of `kernels`; resolves with a pipeline per kernel (in order).
 * Shader errors reject with a ShaderError, as createKernelPipeline does.
 */
export async function compileKernels(
  ctx: GpuContext,
  kernels: readonly Kernel[],
  options: CompileOptions = {},
): Promise<{ pipelines: GPUComputePipeline[]; report: CompileReport }> {
  const t0 = performance.now();
  const device = ctx.device;
  const distinct = new Map<string, Kernel>();
  for (const k of kernels) {
    const key = pipelineKey(k);
    if (!distinct.has(key)) distinct.set(key, k);
  }
  const total = distinct.size;
  let done = 0;
  const tick = () => options.onProgress?.(++done, total);
  options.onProgress?.(0, total);

  let seen = warmed.get(device);
  if (!seen) warmed.set(device, (seen = new Set()));
  const warm = ctx.isSoftware && options.warm !== false;
  const pending = warm ? [...distinct].filter(([key]) => !seen.has(key)) : [];
  // On a GPU a kernel is compiled when its pipeline is; on a software driver when warmed.
  const pipelines = await Promise.all(kernels.map((k) => createKernelPipeline(device, k)));
  if (!warm || pending.length === 0) {
    for (let i = 0; i < total; i++) tick();
    return { pipelines, report: { kernels: total, workers: 1, ms: performance.now() - t0 } };
  }
  for (let i = pending.length; i < total; i++) tick();

  // Longest first: the big kernels start at once and the small ones fill in around them.
  pending.sort(([, a], [, b]) => b.wgsl.length - a.wgsl.length);
  const queue = pending.map(([key, kernel]) => ({ key, kernel }));
  const wanted = options.workers ?? Math.min(4, os.availableParallelism());
  const workers = mesaCacheDisabled() ? 1 : Math.max(1, Math.min(wanted, queue.length));
  const siblings: GPUDevice[] = [];
  const work = async (dev: GPUDevice) => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      // A warm-up that fails (a lost sibling, say) only means the kernel compiles at its real
      // first dispatch instead: never a wrong result, so not an error.
      await warmKernel(dev, next.kernel).catch(() => undefined);
      // A sibling's compile is in the shader cache: this device's first dispatch loads it.
      seen.add(next.key);
      tick();
    }
  };
  const helpers = Array.from({ length: workers - 1 }, async () => {
    // With the shaders in Mesa's cache the queue empties in milliseconds: a sibling (which
    // costs a device) is opened only for work still waiting after a moment.
    await new Promise((resolve) => setTimeout(resolve, SIBLING_DELAY_MS));
    if (queue.length === 0) return;
    // A sibling that cannot be opened leaves its share to the others.
    const sibling = await ctx.openSibling().catch(() => undefined);
    if (!sibling) return;
    siblings.push(sibling);
    await work(sibling);
  });
  try {
    await Promise.all([work(device), ...helpers]);
  } finally {
    for (const s of siblings) s.destroy();
  }
  return {
    pipelines,
    report: { kernels: total, workers: 1 + siblings.length, ms: performance.now() - t0 },
  };
}

/**
 * Dispatches one workgroup of `kernel` on scratch buffers, so the driver compiles it. Loads
 * and stores are bounds-checked (WebGPU's robust access), so any buffer size is safe; the
 * scratch is zeros and is dropped after.
 */
async function warmKernel(device: GPUDevice, kernel: Kernel): Promise<void> {
  // This device's pipeline is cached already; a sibling makes its own.
  const p = await createKernelPipeline(device, kernel);
  device.pushErrorScope("validation");
  const buffers = kernel.bindings.map((b) =>
    device.createBuffer({
      size: Math.max(16, Math.min(Math.ceil(b.byteSize / 16) * 16, 1 << 16)),
      usage: GPUBufferUsage.STORAGE,
    }),
  );
  const encoder = device.createCommandEncoder({ label: `warm ${kernel.name}` });
  const pass = encoder.beginComputePass();
  pass.setPipeline(p);
  pass.setBindGroup(
    0,
    device.createBindGroup({
      layout: p.getBindGroupLayout(0),
      entries: kernel.bindings.map((b, i) => ({
        binding: b.binding,
        resource: { buffer: buffers[i]! },
      })),
    }),
  );
  pass.dispatchWorkgroups(1);
  pass.end();
  device.queue.submit([encoder.finish()]);
  await device.queue.onSubmittedWorkDone();
  for (const b of buffers) b.destroy();
  await device.popErrorScope();
}
