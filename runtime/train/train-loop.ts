/**
 * The training loop over a run directory: resume from the newest complete checkpoint (or
 * start from the given initial parameters and zero optimizer state), then per step draw a
 * batch, set the scheduled learning rate and bias corrections, submit the step (up to two in
 * flight), log its scalars to metrics.jsonl and the progress line as they arrive, and write a
 * checkpoint every `checkpointEvery` steps and at the end.
 */
import type { CompileOptions } from "../compile-kernels.js";
import { mkdirSync } from "node:fs";
import path from "node:path";

import type { CompiledProgram } from "../../compiler/kernels/compile-graph.js";
import {
  ADAMW_STEP_INPUT,
  type AdamWOptions,
  adamwNames,
  adamwStepInputs,
} from "../../compiler/library/optim/adamw.js";
import { NOISE_KEY_INPUT, noiseKey } from "../../compiler/lower/lower-train.js";
import type { IrGraph } from "../../compiler/ir/graph.js";
import type { GpuContext } from "../device.js";
import type { HostTensor } from "../reference/interpret.js";
import { type NonFiniteSource, firstNonFinite } from "./find-non-finite.js";
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
import {
  Ema,
  type EvalMetrics,
  MetricsLog,
  type ProgressMode,
  RoutingWindow,
  formatEval,
  formatProgress,
  routingShareLayer,
  summarizeShare,
} from "./metrics.js";
import { type LrSchedule, checkSchedule, learningRate } from "./schedule.js";
import { type PendingStep, TrainExecutor } from "./train-executor.js";

/** The program's inputs that the data file feeds (all but the optimizer's step inputs). */
export function dataPorts(program: CompiledProgram): DataPort[] {
  const optim = new Set<string>([ADAMW_STEP_INPUT, NOISE_KEY_INPUT]);
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
  /**
   * Also evaluate (without a checkpoint) every this many steps; evaluation runs at every
   * checkpoint either way.
   */
  evalEvery?: number;
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
  /** How the step's kernels compile before step 1 (progress; runtime/compile-kernels.ts). */
  compile?: CompileOptions;
  /**
   * Evaluates the parameters at each checkpoint (for instance a forward program on held-out
   * data): a loss, or a loss with accuracies. The loss is recorded as the checkpoint's
   * `evalLoss`, so retention can keep the best.
   */
  evaluate?: (
    params: ReadonlyMap<string, TensorData>,
    step: number,
  ) => Promise<number | EvalMetrics> | number | EvalMetrics;
  /**
   * The step's IR (with its origins): when a step goes non-finite, it is replayed in the
   * reference to name the first non-finite value's source (NonFiniteError.source). Skipped
   * above `replayLimit` parameters (default 2M), where the reference would take minutes.
   */
  stepGraph?: IrGraph;
  /** Files to add to each checkpoint from its parameters (e.g. LoRA adapters in PEFT's layout). */
  exports?: (params: ReadonlyMap<string, StateTensor>) => ReadonlyMap<string, Uint8Array | string>;
  replayLimit?: number;
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
  /** The first non-finite value of the step, replayed in the reference (when it could be). */
  source?: NonFiniteSource;
  /** Why there is no source, when the replay was skipped or failed. */
  sourceUnknown?: string;
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
    exe = await TrainExecutor.create(ctx, o.program, {
      inFlight: o.inFlight ?? 2,
      ...(o.compile ? { compile: o.compile } : {}),
    });
  } catch (e) {
    log.close();
    throw e;
  }
  const tokens = o.tokensPerStep ?? o.data.batchSize;
  // Dropout or router jitter in the step: each step gets its key from the seed and its number.
  const noisy = o.program.inputs.some((i) => i.name === NOISE_KEY_INPUT);
  const smoothLoss = new Ema(0.9);
  const smoothMs = new Ema(0.9);
  const routingWindow = new RoutingWindow();
  let lastLoss = NaN;
  let firstLoss = NaN;
  let lastCheckpoint: string | undefined;
  let lastArrival = performance.now();
  // The executor counts its own steps from 1; the run's continue the checkpoint's.
  const offset = step;
  // The newest finite state this call knows (the start, then each checkpoint): a non-finite
  // step is replayed from there.
  let restart = { step, cursor, state };
  const feedsFor = (t: number, at: DataCursor) => {
    const batch = o.data.batch(at);
    const feeds = new Map<string, TensorData>(batch.inputs);
    const lr = learningRate(o.schedule, t);
    for (const [k, v] of adamwStepInputs(t, lr, o.adamw)) feeds.set(k, v);
    if (noisy) feeds.set(NOISE_KEY_INPUT, Float32Array.of(noiseKey(o.seeds.noise, t)));
    return { feeds, cursor: batch.cursor, lr };
  };
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
      // Each MoE layer's share vector (read back with the scalars, in the same staging copy).
      const shares = new Map<string, TensorData>();
      for (const [name, v] of scalars) {
        const layer = routingShareLayer(name);
        if (layer !== undefined) shares.set(layer, v);
        else if (name !== "loss" && name !== adamwNames.gradNorm && v.length === 1)
          terms[name] = v[0]!;
      }
      const routing = Object.fromEntries([...shares].map(([l, v]) => [l, summarizeShare(v)]));
      routingWindow.add(shares);
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
        routing,
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
              routing: routingWindow.take(),
            },
            o.progress.mode,
          ),
        );
      }
      return after;
    };
    for (let t = step + 1; t <= last; t++) {
      const next = feedsFor(t, cursor);
      cursor = next.cursor;
      queue.push({ pending: await exe.submit(next.feeds), lr: next.lr, cursor });
      if (queue.length >= (o.inFlight ?? 2)) await receive();
      const checkpointNow = t % o.checkpointEvery === 0 || t === last;
      const evalNow =
        o.evaluate !== undefined && o.evalEvery !== undefined && t % o.evalEvery === 0;
      if (checkpointNow || evalNow) {
        let after = cursor;
        while (queue.length > 0) after = await receive();
        let evaluated: EvalMetrics | undefined;
        if (checkpointNow) {
          const saved = await saveCheckpoint(exe, o, t, after, shapes);
          lastCheckpoint = saved.dir;
          restart = { step: t, cursor: after, state: saved.state };
          evaluated = saved.eval;
        } else evaluated = await evaluateState(o, await exe.readState(), t);
        if (evaluated !== undefined) {
          log.appendEval(t, evaluated);
          o.progress?.write(formatEval(t, evaluated, o.progress.mode));
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
  } catch (e) {
    if (e instanceof NonFiniteError && o.stepGraph) {
      // Drain what is in flight, then replay from the restart point to the bad step.
      for (const q of queue) await q.pending.result.catch(() => undefined);
      queue.length = 0;
      await locateNonFinite(e, o.stepGraph, exe, restart, feedsFor, o.replayLimit ?? 2e6);
    }
    throw e;
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
): Promise<{ dir: string; eval?: EvalMetrics; state: Map<string, TensorData> }> {
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
  const evaluated = await evaluateState(o, all, step);
  if (evaluated) {
    state.evalLoss = evaluated.loss;
    if (evaluated.accuracy) state.evalAccuracy = evaluated.accuracy;
    if (evaluated.taskAccuracy) state.evalTaskAccuracy = evaluated.taskAccuracy;
  }
  const dir = writeCheckpoint(
    o.runDir,
    { state, params, optimizer },
    o.retention,
    o.exports?.(params),
  );
  return evaluated === undefined ? { dir, state: all } : { dir, eval: evaluated, state: all };
}

/** `o.evaluate` of the model's parameters in `all` (the optimizer state left out). */
async function evaluateState(
  o: TrainRunOptions,
  all: ReadonlyMap<string, TensorData>,
  step: number,
): Promise<EvalMetrics | undefined> {
  if (!o.evaluate) return undefined;
  const model = new Map([...all].filter(([name]) => !isOptimizerState(name)));
  const e = await o.evaluate(model, step);
  return typeof e === "number" ? { loss: e } : e;
}

/**
 * Sets `e.source`: the state before step `e.step` is rebuilt on the device from `restart`
 * (steps replay bit for bit), then that step runs in the reference (find-non-finite.ts).
 */
async function locateNonFinite(
  e: NonFiniteError,
  graph: IrGraph,
  exe: TrainExecutor,
  restart: { step: number; cursor: DataCursor; state: ReadonlyMap<string, TensorData> },
  feedsFor: (t: number, at: DataCursor) => { feeds: Map<string, TensorData>; cursor: DataCursor },
  limit: number,
): Promise<void> {
  let params = 0;
  for (const n of graph.nodes) if (n.op === "param") params += numel(n.shape);
  if (params > limit) {
    e.sourceUnknown = `the model has ${params} parameter values, too many to replay in the reference`;
    return;
  }
  try {
    exe.setState(restart.state);
    let cursor = restart.cursor;
    for (let t = restart.step + 1; t < e.step; t++) {
      const next = feedsFor(t, cursor);
      cursor = next.cursor;
      await (
        await exe.submit(next.feeds)
      ).result;
    }
    const state = await exe.readState();
    const { feeds } = feedsFor(e.step, cursor);
    const leaves = new Map<string, HostTensor>();
    for (const n of graph.nodes) {
      if (n.op !== "param" && n.op !== "input") continue;
      const data = n.op === "param" ? state.get(n.name) : feeds.get(n.name);
      if (!data) throw new Error(`no value for ${n.op} ${n.name}`);
      leaves.set(n.name, { shape: n.shape, data: Float64Array.from(data) });
    }
    const source = firstNonFinite(graph, leaves);
    if (source) e.source = source;
    else e.sourceUnknown = "the reference replay of the step stayed finite";
  } catch (err) {
    e.sourceUnknown = `the replay failed: ${err instanceof Error ? err.message : String(err)}`;
  }
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
