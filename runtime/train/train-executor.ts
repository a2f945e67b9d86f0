/**
 * Runs a compiled train-step program (compiler/library/optim/train-step.ts) step after step
 * with the parameters and optimizer state living on the device between steps.
 *
 *   const exe = await TrainExecutor.create(ctx, program);
 *   exe.setState(params);                      // parameters, optimizer state: uploaded once
 *   const pending = await exe.submit(inputs);  // encoded and submitted; scalars come later
 *   const { scalars } = await pending.result;  // loss, terms, grad_norm
 *   const state = await exe.readState();       // for a checkpoint
 *
 * A step is one command encoder: the kernels (all of them: "static" values of parameters
 * change when the parameters do), then a copy of each `update:<p>` output into parameter
 * `<p>`'s buffer, `exp_avg:<p>` into `exp_avg.<p>` and `exp_avg_sq:<p>` into `exp_avg_sq.<p>`,
 * then a copy of the scalar outputs (every other output) into a staging buffer that is
 * mapped asynchronously. Up to `inFlight` steps are submitted before the oldest one's scalars
 * are awaited, so reading step k back never stalls encoding step k + 1.
 *
 * Aliases: an output may be a parameter's own buffer (an update that is the parameter, or
 * another parameter). Copies into parameters all happen after the kernels, so one that reads
 * a parameter buffer could see an already updated value; such copies go through a scratch
 * buffer first, and an update that is its own parameter is no copy at all.
 */
import type { CompiledProgram, ProgramTensor } from "../../compiler/kernels/compile-graph.js";
import type { GpuContext } from "../device.js";
import type { CompileOptions } from "../compile-kernels.js";
import { type PreparedKernel, type TensorData, allocateProgram } from "../executor.js";
import { CompletionPacer } from "../gpu-wait.js";

/** The outputs of one step that are read back (all but the parameter and state updates). */
export interface StepResult {
  /** 1-based index of the step since the executor was created. */
  step: number;
  scalars: Map<string, TensorData>;
}

/** A submitted step; `result` resolves once its scalars are on the host. */
export interface PendingStep {
  step: number;
  result: Promise<StepResult>;
}

/** One copy at the end of a step, in bytes. */
interface StateCopy {
  from: ProgramTensor;
  to: ProgramTensor;
  bytes: number;
  /** Byte offset in the scratch buffer when the source is a parameter buffer. */
  scratch?: number;
}

interface Slot {
  staging: GPUBuffer;
  busy?: Promise<unknown>;
}

/** Which parameter an output updates, by the optimizer's naming; undefined: a scalar output. */
export function stateTarget(output: string): string | undefined {
  const m = /^(update|exp_avg|exp_avg_sq):(.+)$/.exec(output);
  if (!m) return undefined;
  return m[1] === "update" ? m[2]! : `${m[1]}.${m[2]}`;
}

export class TrainExecutor {
  readonly #ctx: GpuContext;
  readonly #program: CompiledProgram;
  readonly #buffers: GPUBuffer[];
  readonly #kernels: PreparedKernel[];
  #copies: StateCopy[];
  readonly #scratch: GPUBuffer | undefined;
  readonly #scalars: { out: ProgramTensor; offset: number; bytes: number }[];
  readonly #slots: Slot[];
  readonly #pacer = new CompletionPacer();
  readonly #set = new Set<string>();
  #steps = 0;
  #destroyed = false;

  private constructor(
    ctx: GpuContext,
    program: CompiledProgram,
    buffers: GPUBuffer[],
    kernels: PreparedKernel[],
    inFlight: number,
  ) {
    this.#ctx = ctx;
    this.#program = program;
    this.#buffers = buffers;
    this.#kernels = kernels;
    const params = new Map(program.params.map((p) => [p.name, p]));
    const roles = program.buffers.map((b) => b.role);
    this.#copies = [];
    let scratchBytes = 0;
    this.#scalars = [];
    let stagingBytes = 0;
    for (const out of program.outputs) {
      const target = stateTarget(out.name);
      const bytes = 4 * numel(out.shape);
      if (target === undefined) {
        this.#scalars.push({ out, offset: stagingBytes, bytes });
        stagingBytes += bytes;
        continue;
      }
      const to = params.get(target);
      if (!to)
        throw new Error(`output ${out.name} updates ${target}, which the program does not read`);
      if (to.dtype !== out.dtype || to.shape.join(",") !== out.shape.join(",")) {
        throw new Error(
          `output ${out.name} is [${out.shape.join(", ")}] ${out.dtype}, its parameter ${target} [${to.shape.join(", ")}] ${to.dtype}`,
        );
      }
      if (out.buffer === to.buffer && out.byteOffset === to.byteOffset) continue;
      const copy: StateCopy = { from: out, to, bytes };
      if (roles[out.buffer] !== "pool") {
        copy.scratch = scratchBytes;
        scratchBytes += bytes;
      }
      this.#copies.push(copy);
    }
    this.#copies = coalesce(this.#copies);
    const device = ctx.device;
    this.#scratch =
      scratchBytes > 0
        ? device.createBuffer({
            label: "moec train scratch",
            size: scratchBytes,
            usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
          })
        : undefined;
    this.#slots = Array.from({ length: inFlight }, (_, i) => ({
      staging: device.createBuffer({
        label: `moec train scalars ${i}`,
        size: Math.max(4, stagingBytes),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      }),
    }));
  }

  /** `inFlight`: steps submitted before the oldest one's scalars are awaited (default 2). */
  static async create(
    ctx: GpuContext,
    program: CompiledProgram,
    options: { inFlight?: number; compile?: CompileOptions } = {},
  ): Promise<TrainExecutor> {
    const inFlight = options.inFlight ?? 2;
    if (!Number.isInteger(inFlight) || inFlight < 1)
      throw new Error(`steps in flight must be a positive integer, got ${inFlight}`);
    const { buffers, kernels } = await allocateProgram(ctx, program, options.compile);
    try {
      return new TrainExecutor(ctx, program, buffers, kernels, inFlight);
    } catch (e) {
      for (const b of buffers) b.destroy();
      throw e;
    }
  }

  get program(): CompiledProgram {
    return this.#program;
  }

  /** Steps submitted so far. */
  get steps(): number {
    return this.#steps;
  }

  /** Names of the parameters each step overwrites (trained parameters and optimizer state). */
  get updated(): string[] {
    return this.#program.outputs.flatMap((o) => stateTarget(o.name) ?? []);
  }

  /**
   * Uploads parameters and optimizer state by name (behind any step in flight: the queue keeps
   * the order). Names the program does not read are returned, not uploaded.
   */
  setState(state: ReadonlyMap<string, TensorData>): string[] {
    this.#live();
    const byName = new Map(this.#program.params.map((p) => [p.name, p]));
    const unknown: string[] = [];
    for (const [name, data] of state) {
      const p = byName.get(name);
      if (!p) {
        unknown.push(name);
        continue;
      }
      this.#write(p, data, "parameter");
      this.#set.add(name);
    }
    return unknown;
  }

  /** Fills every intermediate and output buffer with NaN (tests: unwritten data shows). */
  poison(): void {
    this.#live();
    this.#program.buffers.forEach((b, i) => {
      if (b.role !== "pool") return;
      const nan = new Float32Array(b.bytes / 4).fill(Number.NaN);
      this.#ctx.device.queue.writeBuffer(this.#buffers[i]!, 0, nan);
    });
  }

  /**
   * Encodes and submits one step. Waits only when `inFlight` steps are already pending (for
   * the oldest); the step's scalars arrive through the returned `result`.
   */
  async submit(inputs: ReadonlyMap<string, TensorData>): Promise<PendingStep> {
    this.#live();
    for (const p of this.#program.params) {
      if (!this.#set.has(p.name)) throw new Error(`parameter ${p.name} was never set`);
    }
    for (const input of this.#program.inputs) {
      if (!inputs.has(input.name)) throw new Error(`missing input ${input.name}`);
    }
    const step = ++this.#steps;
    const slot = this.#slots[(step - 1) % this.#slots.length]!;
    // The slot's staging buffer must be unmapped before this step copies into it.
    if (slot.busy) await slot.busy.catch(() => undefined);
    this.#live();
    for (const input of this.#program.inputs) this.#write(input, inputs.get(input.name)!, "input");

    const device = this.#ctx.device;
    device.pushErrorScope("validation");
    const encoder = device.createCommandEncoder({ label: `moec train step ${step}` });
    const pass = encoder.beginComputePass();
    for (const k of this.#kernels) {
      pass.setPipeline(k.pipeline);
      pass.setBindGroup(0, k.bindGroup);
      pass.dispatchWorkgroups(...k.kernel.grid);
    }
    pass.end();
    const buf = (t: ProgramTensor) => this.#buffers[t.buffer]!;
    // Sources in parameter buffers are set aside before any parameter is overwritten.
    for (const c of this.#copies) {
      if (c.scratch !== undefined)
        encoder.copyBufferToBuffer(
          buf(c.from),
          c.from.byteOffset,
          this.#scratch!,
          c.scratch,
          c.bytes,
        );
    }
    for (const c of this.#copies) {
      if (c.scratch !== undefined)
        encoder.copyBufferToBuffer(this.#scratch!, c.scratch, buf(c.to), c.to.byteOffset, c.bytes);
      else
        encoder.copyBufferToBuffer(
          buf(c.from),
          c.from.byteOffset,
          buf(c.to),
          c.to.byteOffset,
          c.bytes,
        );
    }
    for (const s of this.#scalars) {
      if (s.bytes > 0)
        encoder.copyBufferToBuffer(buf(s.out), s.out.byteOffset, slot.staging, s.offset, s.bytes);
    }
    device.queue.submit([encoder.finish()]);
    const validated = device.popErrorScope();
    const result = this.#readScalars(step, slot, validated);
    // A caller that drops a step's result must not crash the process with an unhandled
    // rejection; one that awaits it still sees the error.
    result.catch(() => undefined);
    slot.busy = result;
    return { step, result };
  }

  /** Submits one step and waits for its scalars. */
  async step(inputs: ReadonlyMap<string, TensorData>): Promise<StepResult> {
    return (await this.submit(inputs)).result;
  }

  /** Waits for every submitted step. */
  async flush(): Promise<void> {
    await Promise.all(this.#slots.map((s) => s.busy?.catch(() => undefined)));
  }

  /**
   * Reads parameters and optimizer state back after every submitted step (all of them, or the
   * named ones): for checkpoints.
   */
  async readState(names?: readonly string[]): Promise<Map<string, TensorData>> {
    this.#live();
    await this.flush();
    const byName = new Map(this.#program.params.map((p) => [p.name, p]));
    const wanted = (names ?? [...byName.keys()]).map((n) => {
      const p = byName.get(n);
      if (!p) throw new Error(`the program has no parameter ${n}`);
      return p;
    });
    const device = this.#ctx.device;
    let total = 0;
    const at = wanted.map((p) => {
      const offset = total;
      total += 4 * numel(p.shape);
      return offset;
    });
    const staging = device.createBuffer({
      label: "moec train state read",
      size: Math.max(4, total),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      const encoder = device.createCommandEncoder({ label: "moec train state read" });
      wanted.forEach((p, i) => {
        const bytes = 4 * numel(p.shape);
        if (bytes > 0)
          encoder.copyBufferToBuffer(
            this.#buffers[p.buffer]!,
            p.byteOffset,
            staging,
            at[i]!,
            bytes,
          );
      });
      device.queue.submit([encoder.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const all = staging.getMappedRange().slice(0);
      staging.unmap();
      return new Map(
        wanted.map((p, i) => {
          const n = numel(p.shape);
          const data =
            p.dtype === "i32" ? new Int32Array(all, at[i]!, n) : new Float32Array(all, at[i]!, n);
          return [p.name, data.slice()];
        }),
      );
    } finally {
      staging.destroy();
    }
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const b of this.#buffers) b.destroy();
    for (const s of this.#slots) s.staging.destroy();
    this.#scratch?.destroy();
  }

  async #readScalars(
    step: number,
    slot: Slot,
    validated: Promise<GPUError | null>,
  ): Promise<StepResult> {
    const err = await validated;
    if (err) throw new Error(`GPU validation error in train step ${step}: ${err.message}`);
    // The first step also compiles the shaders, and the steps submitted with it wait behind
    // that: their times say nothing about the next (learning one made step 3 sleep 8 s).
    const learn = step > this.#slots.length;
    await this.#pacer.wait(() => slot.staging.mapAsync(GPUMapMode.READ), 1, { learn });
    const all = slot.staging.getMappedRange().slice(0);
    slot.staging.unmap();
    const scalars = new Map<string, TensorData>();
    for (const s of this.#scalars) {
      const n = s.bytes / 4;
      scalars.set(
        s.out.name,
        s.out.dtype === "i32"
          ? new Int32Array(all, s.offset, n)
          : new Float32Array(all, s.offset, n),
      );
    }
    return { step, scalars };
  }

  #live(): void {
    if (this.#destroyed) throw new Error("the train executor was destroyed");
  }

  #write(t: ProgramTensor, data: TensorData, what: string): void {
    const ok = t.dtype === "i32" ? data instanceof Int32Array : data instanceof Float32Array;
    if (!ok) {
      throw new Error(
        `${what} ${t.name} is ${t.dtype}: pass a ${t.dtype === "i32" ? "Int32Array" : "Float32Array"}`,
      );
    }
    const want = numel(t.shape);
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
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Copies from adjacent ranges of one buffer into adjacent ranges of another merged into one
 * (the optimizer writes its flat update where the packed parameters lie in the same order,
 * so a step's state updates are a copy or three, not three per tensor).
 */
function coalesce(copies: readonly StateCopy[]): StateCopy[] {
  const direct = copies
    .filter((c) => c.scratch === undefined)
    .sort((a, b) => a.from.buffer - b.from.buffer || a.from.byteOffset - b.from.byteOffset);
  const out: StateCopy[] = [];
  for (const c of direct) {
    const last = out.at(-1);
    if (
      last &&
      last.from.buffer === c.from.buffer &&
      last.to.buffer === c.to.buffer &&
      last.from.byteOffset + last.bytes === c.from.byteOffset &&
      last.to.byteOffset + last.bytes === c.to.byteOffset
    )
      last.bytes += c.bytes;
    else out.push({ ...c });
  }
  return [...out, ...copies.filter((c) => c.scratch !== undefined)];
}
