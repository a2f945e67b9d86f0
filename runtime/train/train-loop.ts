/**
 * The training loop over a run directory: resume from the newest complete checkpoint (or
 * start from the given initial parameters and zero optimizer state), then per step draw a
 * batch, set the scheduled learning rate and bias corrections, submit the step (up to two in
 * flight), log its scalars to metrics.jsonl and the progress line as they arrive, and write a
 * checkpoint every `checkpointEvery` steps and at the end.
 */
import { mkdirSync } from "node:fs";
import path from "node:path";

import type { CompiledProgram } from "../../compiler/kernels/compile-graph.js";
import {
  ADAMW_INPUTS,
  type AdamWOptions,
  adamwNames,
  adamwStepInputs,
} from "../../compiler/library/optim/adamw.js";
import { NOISE_KEY_INPUT, noiseKey } from "../../compiler/lower/lower-train.js";
import type { GpuContext } from "../device.js";
import type { TensorData } from "../executor.js";
import {
  type Checkpoint,
  type RetentionOptions,
  type StateTensor,
  type TrainerState,
  findResumeCheckpoint,
  isOptimizerState,
  moecVersion,
  writeCheckpoint,
} from "./checkpoint.js";
import type { DataCursor, DataPort, TrainData } from "./data.js";
import { Ema, MetricsLog, type ProgressMode, formatProgress } from "./metrics.js";
import { type LrSchedule, checkSchedule, learningRate } from "./schedule.js";
import { type PendingStep, TrainExecutor } from "./train-executor.js";

/** The program's inputs that the data file feeds (all but the optimizer's step inputs). */
export function dataPorts(program: CompiledProgram): DataPort[] {
  const optim = new Set<string>([...Object.values(ADAMW_INPUTS), NOISE_KEY_INPUT]);
  return program.inputs.filter((i) => !optim.has(i.name));
}

export interface TrainRunOptions {
  runDir: string;
  program: CompiledProgram;
  data: TrainData;
  schedule: LrSchedule;
  adamw: AdamWOptions;
  /** Parameters at step 0 (every parameter the program reads but the optimizer state). */
  initialParams: () => ReadonlyMap<string, TensorData>;
  checkpointEvery: number;
  retention?: RetentionOptions;
  seeds: TrainerState["seeds"];
  configHash: string;
  sourceHash: string;
  /** Tokens one step consumes, for tokens/s (default: the batch size). */
  tokensPerStep?: number;
  /** Resume from the run directory's newest checkpoint when it has one (default true). */
  resume?: boolean;
  /** Stop after this step, as if interrupted (tests; default: the schedule's total). */
  stopAfter?: number;
  progress?: { write: (text: string) => void; mode: ProgressMode; every?: number };
  warn?: (line: string) => void;
  inFlight?: number;
  /**
   * Evaluates the parameters at each checkpoint (for instance a forward program on held-out
   * data); the loss is recorded as the checkpoint's `evalLoss`, so retention can keep the best.
   */
  evaluate?: (params: ReadonlyMap<string, TensorData>, step: number) => Promise<number> | number;
}

/**
 * A step whose loss or gradient norm is not finite: training stops there, before any
 * checkpoint holds the step's parameters (the newest checkpoint is the last finite state).
 */
export class NonFiniteError extends Error {
  override readonly name = "NonFiniteError";
  constructor(
    readonly step: number,
    /** `loss`, a loss term's name, or `grad_norm`. */
    readonly what: string,
    readonly value: number,
  ) {
    super(`step ${step}: ${what} is ${value}`);
  }
}

export interface TrainRunResult {
  /** The step training started after (0, or the resumed checkpoint's). */
  resumedFrom: number;
  lastStep: number;
  /** The loss of the first step this call ran, and of the last. */
  firstLoss: number;
  lastLoss: number;
  lastCheckpoint: string | undefined;
}

/** Trains on the device until the schedule's last step (or `stopAfter`). */
export async function runTraining(ctx: GpuContext, o: TrainRunOptions): Promise<TrainRunResult> {
  checkSchedule(o.schedule);
  if (!Number.isInteger(o.checkpointEvery) || o.checkpointEvery < 1)
    throw new Error(`checkpoint interval must be a positive integer, got ${o.checkpointEvery}`);
  const warn = o.warn ?? ((line: string) => process.stderr.write(`warning: ${line}\n`));
  const total = o.schedule.totalSteps;
  const last = Math.min(total, o.stopAfter ?? total);
  const shapes = new Map(o.program.params.map((p) => [p.name, p.shape]));

  let step = 0;
  let cursor: DataCursor = { epoch: 0, position: 0 };
  let state: Map<string, TensorData>;
  const resumed = o.resume === false ? undefined : findResumeCheckpoint(o.runDir, warn);
  if (resumed) {
    state = checkpointState(resumed, shapes);
    step = resumed.state.step;
    cursor = resumed.state.data;
    if (resumed.state.configHash !== o.configHash)
      warn(`resuming ${resumed.dir} under a different training configuration`);
    if (resumed.state.sourceHash !== o.sourceHash)
      warn(`resuming ${resumed.dir} with a changed program source`);
  } else {
    state = new Map(o.initialParams());
    for (const [name, shape] of shapes) {
      if (isOptimizerState(name)) state.set(name, new Float32Array(numel(shape)));
      else if (!state.has(name)) throw new Error(`no initial value for parameter ${name}`);
    }
  }

  mkdirSync(o.runDir, { recursive: true });
  const log = new MetricsLog(path.join(o.runDir, "metrics.jsonl"), resumed ? step : 0);
  let exe: TrainExecutor;
  try {
    exe = await TrainExecutor.create(ctx, o.program, { inFlight: o.inFlight ?? 2 });
  } catch (e) {
    log.close();
    throw e;
  }
  const tokens = o.tokensPerStep ?? o.data.batchSize;
  // Dropout or router jitter in the step: each step gets its key from the seed and its number.
  const noisy = o.program.inputs.some((i) => i.name === NOISE_KEY_INPUT);
  const smoothLoss = new Ema(0.9);
  const smoothMs = new Ema(0.9);
  let lastLoss = NaN;
  let firstLoss = NaN;
  let lastCheckpoint: string | undefined;
  let lastArrival = performance.now();
  // The executor counts its own steps from 1; the run's continue the checkpoint's.
  const offset = step;
  const queue: { pending: PendingStep; lr: number; cursor: DataCursor }[] = [];
  try {
    exe.setState(state);
    const receive = async () => {
      const { pending, lr, cursor: after } = queue.shift()!;
      const { scalars } = await pending.result;
      const now = performance.now();
      const ms = now - lastArrival;
      lastArrival = now;
      lastLoss = scalars.get("loss")?.[0] ?? NaN;
      if (pending.step === 1) firstLoss = lastLoss;
      const terms: Record<string, number> = {};
      for (const [name, v] of scalars)
        if (name !== "loss" && name !== adamwNames.gradNorm && v.length === 1) terms[name] = v[0]!;
      // The first step also compiles the shaders: its time is not a step's.
      const msPerStep = pending.step === 1 ? NaN : ms;
      const s = pending.step + offset;
      const gradNorm = scalars.get(adamwNames.gradNorm)?.[0] ?? NaN;
      log.append({
        step: s,
        loss: lastLoss,
        terms,
        grad_norm: gradNorm,
        lr,
        tokens_per_s: (tokens * 1000) / msPerStep,
        ms_per_step: msPerStep,
      });
      if (!Number.isFinite(lastLoss)) {
        // Name the first term that went bad, when one did: it says where to look.
        const bad = Object.entries(terms).find(([, v]) => !Number.isFinite(v));
        throw new NonFiniteError(s, bad ? bad[0] : "loss", bad ? bad[1] : lastLoss);
      }
      if (!Number.isFinite(gradNorm)) throw new NonFiniteError(s, "the gradient norm", gradNorm);
      smoothLoss.add(lastLoss);
      smoothMs.add(msPerStep);
      if (o.progress && (s % (o.progress.every ?? 1) === 0 || s === last)) {
        o.progress.write(
          formatProgress(
            {
              step: s,
              totalSteps: total,
              loss: smoothLoss.value,
              terms,
              tokensPerS: (tokens * 1000) / smoothMs.value,
              msPerStep: smoothMs.value,
              lr,
            },
            o.progress.mode,
          ),
        );
      }
      return after;
    };
    for (let t = step + 1; t <= last; t++) {
      const batch = o.data.batch(cursor);
      cursor = batch.cursor;
      const lr = learningRate(o.schedule, t);
      const feeds = new Map<string, TensorData>(batch.inputs);
      for (const [k, v] of adamwStepInputs(t, lr, o.adamw)) feeds.set(k, v);
      if (noisy) feeds.set(NOISE_KEY_INPUT, Float32Array.of(noiseKey(o.seeds.noise, t)));
      queue.push({ pending: await exe.submit(feeds), lr, cursor });
      if (queue.length >= (o.inFlight ?? 2)) await receive();
      if (t % o.checkpointEvery === 0 || t === last) {
        let after = cursor;
        while (queue.length > 0) after = await receive();
        const saved = await saveCheckpoint(exe, o, t, after, shapes);
        lastCheckpoint = saved.dir;
        if (saved.evalLoss !== undefined) {
          log.appendEval(t, saved.evalLoss);
          o.progress?.write(
            o.progress.mode === "json"
              ? JSON.stringify({ event: "eval", step: t, eval_loss: saved.evalLoss }) + "\n"
              : `${o.progress.mode === "tty" ? "\n" : ""}step ${t}: eval loss ${saved.evalLoss.toFixed(4)}\n`,
          );
        }
        log.sync();
        lastArrival = performance.now(); // the checkpoint's time is not a step's
      }
    }
    while (queue.length > 0) await receive();
    if (o.progress?.mode === "tty") o.progress.write("\n");
    return {
      resumedFrom: offset,
      lastStep: Math.max(last, offset),
      firstLoss,
      lastLoss,
      lastCheckpoint,
    };
  } finally {
    log.close();
    exe.destroy();
  }
}

async function saveCheckpoint(
  exe: TrainExecutor,
  o: TrainRunOptions,
  step: number,
  cursor: DataCursor,
  shapes: ReadonlyMap<string, number[]>,
): Promise<{ dir: string; evalLoss?: number }> {
  const all = await exe.readState();
  // A finite loss does not make the update after it finite (an overflowing learning rate):
  // a checkpoint is only ever of finite state, so the newest one is always safe to resume.
  for (const [name, data] of all) {
    const bad = data.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) throw new NonFiniteError(step, `parameter ${name}`, data[bad]!);
  }
  const params = new Map<string, StateTensor>();
  const optimizer = new Map<string, StateTensor>();
  for (const [name, data] of all) {
    (isOptimizerState(name) ? optimizer : params).set(name, { shape: shapes.get(name)!, data });
  }
  const state: TrainerState = {
    step,
    data: cursor,
    seeds: o.seeds,
    configHash: o.configHash,
    sourceHash: o.sourceHash,
    moecVersion: moecVersion(),
  };
  if (o.evaluate) {
    const model = new Map([...params].map(([name, t]) => [name, t.data]));
    state.evalLoss = await o.evaluate(model, step);
  }
  const dir = writeCheckpoint(o.runDir, { state, params, optimizer }, o.retention);
  return state.evalLoss === undefined ? { dir } : { dir, evalLoss: state.evalLoss };
}

/** The checkpoint's tensors, checked against the program's parameters. */
function checkpointState(
  c: Checkpoint,
  shapes: ReadonlyMap<string, number[]>,
): Map<string, TensorData> {
  const all = new Map([...c.params, ...c.optimizer]);
  const out = new Map<string, TensorData>();
  for (const [name, shape] of shapes) {
    const t = all.get(name);
    if (!t) throw new Error(`${c.dir}: the checkpoint has no ${name}`);
    if (t.shape.join(",") !== shape.join(","))
      throw new Error(
        `${c.dir}: ${name} is [${t.shape.join(", ")}] in the checkpoint, [${shape.join(", ")}] in the program`,
      );
    out.set(name, t.data);
  }
  return out;
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}
