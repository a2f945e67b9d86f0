/**
 * Runs a compiled program (compiler/kernels/compile-graph.ts) on a WebGPU device.
 *
 *   const exe = await Executor.create(ctx, program);
 *   exe.setParams(weights);                 // uploaded once
 *   const outputs = await exe.run(inputs);  // one command encoder per call
 *   exe.destroy();
 *
 * Shader modules and pipelines are created once per distinct WGSL text (and cached per device,
 * so identical layers share them); buffers and bind groups once per executor. A run writes the
 * inputs with queue.writeBuffer, encodes every dispatch in one compute pass, copies the outputs
 * to mapped staging buffers and reads them back. Static kernels (values of parameters alone,
 * such as merged adapter weights) run only on the first call after setParams. With `timing`,
 * each kernel gets its own pass
 * and timestamp queries (or, without the timestamp-query feature, its own submit timed on the
 * host), and stats() reports per-kernel times.
 *
 * Shader compilation errors are never swallowed: they surface as a ShaderError whose message
 * has `kernel:line:col: message` and the offending source line.
 */
import type { CompiledProgram, ProgramTensor } from "../compiler/kernels/compile-graph.js";
import type { EmittedKernel } from "../compiler/kernels/emit-wgsl.js";
import { type CompileOptions, type CompileReport, compileKernels } from "./compile-kernels.js";
import type { GpuContext } from "./device.js";
import { CompletionPacer } from "./gpu-wait.js";

export type TensorData = Float32Array | Int32Array;

export interface KernelStats {
  name: string;
  kind: string;
  variant?: string;
  calls: number;
  /** Sum over timed runs, milliseconds. */
  totalMs: number;
  lastMs: number;
}

export interface ExecutorOptions {
  /** Time every kernel (slower: one pass, or one submit, per kernel). */
  timing?: boolean;
  /**
   * Compile every kernel in create(), in parallel, with progress (runtime/compile-kernels.ts).
   * Without it a software driver compiles each kernel at its first dispatch.
   */
  compile?: CompileOptions;
}

/** One kernel ready to dispatch. */
export interface PreparedKernel {
  kernel: EmittedKernel;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
}

/** A program's buffers and its kernels' pipelines and bind groups, ready to dispatch. */
export interface AllocatedProgram {
  buffers: GPUBuffer[];
  kernels: PreparedKernel[];
  compiled: CompileReport;
}

/**
 * Compiles the program's kernels and creates its buffers (storage, copy source and
 * destination) and bind groups: what Executor and runtime/train/train-executor.ts share.
 */
export async function allocateProgram(
  ctx: GpuContext,
  program: Pick<CompiledProgram, "kernels" | "buffers">,
  compile: CompileOptions = { warm: false },
): Promise<AllocatedProgram> {
  const device = ctx.device;
  const { pipelines, report } = await compileKernels(ctx, program.kernels, compile);
  device.pushErrorScope("validation");
  device.pushErrorScope("out-of-memory");
  const buffers = program.buffers.map((b) =>
    device.createBuffer({
      label: `moec ${b.role} ${b.id}`,
      size: b.bytes,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    }),
  );
  const kernels = program.kernels.map((kernel, i) => {
    const pipeline = pipelines[i]!;
    const bindGroup = device.createBindGroup({
      label: kernel.name,
      layout: pipeline.getBindGroupLayout(0),
      entries: kernel.bindings.map((b) => ({
        binding: b.binding,
        resource: { buffer: buffers[b.buffer]!, offset: b.byteOffset, size: b.byteSize },
      })),
    });
    return { kernel, pipeline, bindGroup };
  });
  const oom = await device.popErrorScope();
  const invalid = await device.popErrorScope();
  if (oom || invalid) {
    for (const b of buffers) b.destroy();
    throw new Error(`could not allocate the program's buffers: ${(oom ?? invalid)!.message}`);
  }
  return { buffers, kernels, compiled: report };
}

export class Executor {
  readonly #ctx: GpuContext;
  readonly #program: CompiledProgram;
  readonly #buffers: GPUBuffer[];
  readonly #kernels: PreparedKernel[];
  readonly #staging = new Map<string, GPUBuffer>();
  readonly #stats: KernelStats[];
  readonly #timing: boolean;
  #query: { set: GPUQuerySet; resolve: GPUBuffer; read: GPUBuffer } | null = null;
  #paramsSet = new Set<string>();
  /** Static kernels (values of parameters alone) run on the first call after setParams. */
  #staticStale = true;
  #destroyed = false;
  /** Waits for forward passes without Dawn's busy polling (runtime/gpu-wait.ts). */
  readonly #pacer = new CompletionPacer();
  /**
   * Forward passes submitted so far: the first one also compiles the shaders (lavapipe
   * compiles at first dispatch), so its time says nothing about the next, and the pacer does
   * not learn from it.
   */
  #forwards = 0;

  private constructor(
    ctx: GpuContext,
    program: CompiledProgram,
    buffers: GPUBuffer[],
    kernels: PreparedKernel[],
    /** How compiling the kernels went (see ExecutorOptions.compile). */
    readonly compiled: CompileReport,
    options: ExecutorOptions,
  ) {
    this.#ctx = ctx;
    this.#program = program;
    this.#buffers = buffers;
    this.#kernels = kernels;
    this.#timing = options.timing ?? false;
    this.#stats = program.kernels.map((k) => {
      const s: KernelStats = { name: k.name, kind: k.kind, calls: 0, totalMs: 0, lastMs: 0 };
      if (k.variant) s.variant = k.variant;
      return s;
    });
  }

  static async create(
    ctx: GpuContext,
    program: CompiledProgram,
    options: ExecutorOptions = {},
  ): Promise<Executor> {
    const { buffers, kernels, compiled } = await allocateProgram(ctx, program, options.compile);
    return new Executor(ctx, program, buffers, kernels, compiled, options);
  }

  get program(): CompiledProgram {
    return this.#program;
  }

  /** Uploads parameters by path. Names the program does not read are ignored. */
  setParams(params: ReadonlyMap<string, TensorData> | Record<string, TensorData>): void {
    this.#live();
    const entries = params instanceof Map ? [...params] : Object.entries(params);
    const byName = new Map(this.#program.params.map((p) => [p.name, p]));
    for (const [name, data] of entries) {
      const p = byName.get(name);
      if (!p) continue;
      this.#write(p, data, "parameter");
      this.#paramsSet.add(name);
      this.#staticStale = true;
    }
  }

  /** Fills every intermediate and output buffer with NaN (tests: unwritten data shows). */
  poison(): void {
    this.#live();
    const queue = this.#ctx.device.queue;
    this.#program.buffers.forEach((b, i) => {
      if (b.role !== "pool") return;
      queue.writeBuffer(this.#buffers[i]!, 0, new Float32Array(b.bytes / 4).fill(Number.NaN));
    });
  }

  /** One forward pass: inputs by name → outputs by name. */
  async run(
    inputs: ReadonlyMap<string, TensorData> | Record<string, TensorData>,
  ): Promise<Map<string, TensorData>> {
    this.#live();
    const device = this.#ctx.device;
    const given = inputs instanceof Map ? inputs : new Map(Object.entries(inputs));
    for (const p of this.#program.params) {
      if (!this.#paramsSet.has(p.name)) throw new Error(`parameter ${p.name} was never set`);
    }
    for (const input of this.#program.inputs) {
      const data = given.get(input.name);
      if (!data) throw new Error(`missing input ${input.name}`);
      this.#write(input, data, "input");
    }
    device.pushErrorScope("validation");
    let result: Map<string, TensorData> | undefined;
    try {
      // A call that also runs the static kernels takes longer than the ones after it.
      const steady = this.#forwards++ > 0 && !this.#staticStale;
      if (this.#timing) await this.#runTimed();
      else {
        const encoder = device.createCommandEncoder({ label: "moec forward" });
        const pass = encoder.beginComputePass();
        for (const k of this.#kernels)
          if (!k.kernel.static || this.#staticStale) this.#dispatch(pass, k);
        pass.end();
        device.queue.submit([encoder.finish()]);
      }
      this.#staticStale = false;
      result = await this.#readOutputs(steady);
    } finally {
      const err = await device.popErrorScope();
      if (err) throw new Error(`GPU validation error while running the program: ${err.message}`);
    }
    return result;
  }

  /**
   * Runs every kernel `reps` times back to back in one submit (inputs and parameters as they
   * are) and returns milliseconds per repetition: for benchmarks.
   */
  async timeKernels(reps = 1): Promise<number> {
    this.#live();
    const device = this.#ctx.device;
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    // Forward calls only: static kernels ran when the parameters were set.
    const forward = this.#kernels.filter((k) => !k.kernel.static);
    for (let r = 0; r < reps; r++) for (const k of forward) this.#dispatch(pass, k);
    pass.end();
    const t0 = performance.now();
    device.queue.submit([encoder.finish()]);
    await this.#pacer.wait(() => device.queue.onSubmittedWorkDone(), reps, {
      learn: this.#forwards++ > 0,
    });
    return (performance.now() - t0) / reps;
  }

  /** Per-kernel times of the timed runs so far (zeros unless created with `timing`). */
  stats(): KernelStats[] {
    return this.#stats.map((s) => ({ ...s }));
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const b of this.#buffers) b.destroy();
    for (const b of this.#staging.values()) b.destroy();
    if (this.#query) {
      this.#query.set.destroy();
      this.#query.resolve.destroy();
      this.#query.read.destroy();
    }
  }

  #live(): void {
    if (this.#destroyed) throw new Error("the executor was destroyed");
  }

  #write(t: ProgramTensor, data: TensorData, what: string): void {
    const want = t.shape.reduce((a, b) => a * b, 1);
    const ok = t.dtype === "i32" ? data instanceof Int32Array : data instanceof Float32Array;
    if (!ok) {
      throw new Error(
        `${what} ${t.name} is ${t.dtype}: pass a ${t.dtype === "i32" ? "Int32Array" : "Float32Array"}`,
      );
    }
    if (data.length !== want) {
      throw new Error(
        `${what} ${t.name} needs ${want} values for shape [${t.shape.join(", ")}], got ${data.length}`,
      );
    }
    this.#ctx.device.queue.writeBuffer(
      this.#buffers[t.buffer]!,
      t.byteOffset,
      data.buffer,
      data.byteOffset,
      data.byteLength,
    );
  }

  #dispatch(pass: GPUComputePassEncoder, k: PreparedKernel): void {
    pass.setPipeline(k.pipeline);
    pass.setBindGroup(0, k.bindGroup);
    pass.dispatchWorkgroups(...k.kernel.grid);
  }

  async #runTimed(): Promise<void> {
    const device = this.#ctx.device;
    const n = this.#kernels.length;
    if (this.#ctx.features.includes("timestamp-query") && n > 0) {
      if (!this.#query) {
        this.#query = {
          set: device.createQuerySet({ type: "timestamp", count: 2 * n }),
          resolve: device.createBuffer({
            size: 16 * n,
            usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
          }),
          read: device.createBuffer({
            size: 16 * n,
            usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
          }),
        };
      }
      const q = this.#query;
      const encoder = device.createCommandEncoder({ label: "moec forward (timed)" });
      this.#kernels.forEach((k, i) => {
        const pass = encoder.beginComputePass({
          timestampWrites: {
            querySet: q.set,
            beginningOfPassWriteIndex: 2 * i,
            endOfPassWriteIndex: 2 * i + 1,
          },
        });
        this.#dispatch(pass, k);
        pass.end();
      });
      encoder.resolveQuerySet(q.set, 0, 2 * n, q.resolve, 0);
      encoder.copyBufferToBuffer(q.resolve, 0, q.read, 0, 16 * n);
      device.queue.submit([encoder.finish()]);
      await q.read.mapAsync(GPUMapMode.READ);
      const ts = new BigInt64Array(q.read.getMappedRange().slice(0));
      q.read.unmap();
      for (let i = 0; i < n; i++) this.#record(i, Number(ts[2 * i + 1]! - ts[2 * i]!) / 1e6);
      return;
    }
    for (let i = 0; i < n; i++) {
      const encoder = device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      this.#dispatch(pass, this.#kernels[i]!);
      pass.end();
      const t0 = performance.now();
      device.queue.submit([encoder.finish()]);
      await device.queue.onSubmittedWorkDone();
      this.#record(i, performance.now() - t0);
    }
  }

  #record(i: number, ms: number): void {
    const s = this.#stats[i]!;
    s.calls++;
    s.totalMs += ms;
    s.lastMs = ms;
  }

  /** `steady`: the forward pass just submitted is one the pacer may learn from. */
  async #readOutputs(steady: boolean): Promise<Map<string, TensorData>> {
    const device = this.#ctx.device;
    const encoder = device.createCommandEncoder({ label: "moec read back" });
    const reads: { out: ProgramTensor; staging: GPUBuffer; bytes: number }[] = [];
    for (const out of this.#program.outputs) {
      const bytes = Math.max(4, out.shape.reduce((a, b) => a * b, 1) * 4);
      let staging = this.#staging.get(out.name);
      if (!staging) {
        staging = device.createBuffer({
          label: `moec output ${out.name}`,
          size: Math.ceil(bytes / 4) * 4,
          usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        });
        this.#staging.set(out.name, staging);
      }
      encoder.copyBufferToBuffer(this.#buffers[out.buffer]!, out.byteOffset, staging, 0, bytes);
      reads.push({ out, staging, bytes });
    }
    device.queue.submit([encoder.finish()]);
    const mapped = () => Promise.all(reads.map((r) => r.staging.mapAsync(GPUMapMode.READ)));
    // Timed runs wait kernel by kernel; a forward pass is paced as one piece of work.
    await (this.#timing ? mapped() : this.#pacer.wait(mapped, 1, { learn: steady }));
    const result = new Map<string, TensorData>();
    for (const { out, staging, bytes } of reads) {
      const copy = staging.getMappedRange(0, bytes).slice(0);
      staging.unmap();
      const n = out.shape.reduce((a, b) => a * b, 1);
      result.set(
        out.name,
        out.dtype === "i32" ? new Int32Array(copy, 0, n) : new Float32Array(copy, 0, n),
      );
    }
    return result;
  }
}
