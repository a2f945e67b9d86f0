/**
 * `moec train FILE --data D.safetensors`: lowers a `train` program at the data's sizes,
 * differentiates its loss and appends AdamW (one train-step graph), compiles it for the
 * device and runs it step after step, with checkpoints and metrics in a run directory.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { TrainDecl } from "../grammar/ast.js";
import { codeFrame } from "../compiler/diagnostics.js";
import type { NonFiniteError } from "../runtime/train/train-loop.js";
import { LimitError } from "../compiler/kernels/plan-buffers.js";
import {
  type LoweredTrain,
  NOISE_KEY_INPUT,
  accuracyOutput,
  selectTrainProgram,
} from "../compiler/lower/lower-train.js";
import { assembleTrain } from "../compiler/pipeline.js";
import { peftAdapterFiles } from "../runtime/peft.js";
import { paramSpecs } from "../runtime/run-model.js";
import { type SafetensorsFile, WeightsError } from "../runtime/safetensors.js";
import { DataError, TrainData } from "../runtime/train/data.js";
import { CheckpointError, listCheckpoints } from "../runtime/train/checkpoint.js";
import { type AccuracyCounts, type EvalMetrics, accuracyOf } from "../runtime/train/metrics.js";
import type { LrSchedule } from "../runtime/train/schedule.js";
import { initWeights, loadWeights } from "../runtime/weights.js";
import type { TensorData } from "../runtime/executor.js";
import {
  analyzeEntry,
  lowerTrainProgram,
  openTensors,
  parseDims,
  splitNamedPath,
} from "./model-options.js";
import { compileProgress } from "./progress.js";
import {
  stderrIsInteractive,
  CliError,
  EXIT_DEVICE,
  EXIT_USAGE,
  checkOutputFolder,
  displayPath,
  sourcesOf,
} from "./report.js";

export interface TrainOptions {
  program?: string;
  data?: string;
  evalData?: string;
  steps?: string;
  batch?: string;
  seed?: string;
  out?: string;
  saveEvery?: string;
  evalEvery?: string;
  keep?: string;
  resume?: boolean | string;
  weights?: string[];
  warmup?: string;
  schedule?: string;
  set?: string[];
  dim?: string[];
  json?: boolean;
  /** Load weights and data holding NaN or infinities. */
  allowNonfinite?: boolean;
}

/** What a finished run reports (and tests read). */
export interface TrainSummary {
  program: string;
  runDir: string;
  device: string;
  dims: Record<string, number>;
  steps: number;
  resumedFrom: number;
  firstLoss: number;
  lastLoss: number;
  checkpoint: string | undefined;
  updated: number;
  frozen: number;
  kernels: number;
}

const SCHEDULES = ["constant", "cosine", "linear"] as const;

function positive(value: string | undefined, flag: string, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min || !Number.isSafeInteger(Number(value)))
    throw new CliError(
      `${flag} expects an integer of at least ${min}, found "${value}"`,
      EXIT_USAGE,
    );
  return Number(value);
}

/**
 * The sizes of the program's free input dims: the leading one of every data input is the
 * batch (`--batch`), the others come from the data file's tensors (a sequence length), unless
 * `--dim` gives them.
 */
export function trainDims(
  decl: TrainDecl,
  data: SafetensorsFile,
  batch: number,
  given: ReadonlyMap<string, number>,
): Map<string, number> {
  const dims = new Map(given);
  for (const stmt of decl.body) {
    if (stmt.kind !== "PortDecl" || stmt.direction !== "in") continue;
    const dimRefs = stmt.type.kind === "NamedType" ? (stmt.type.dims ?? []) : [];
    const names = dimRefs.map((d) => (d.kind === "NameExpr" ? d.name.name : undefined));
    const lead = names[0];
    if (lead !== undefined && !given.has(lead)) dims.set(lead, batch);
    if (!data.has(stmt.name.name)) continue; // TrainData names the missing tensor
    const stored = data.info(stmt.name.name).shape;
    names.forEach((name, i) => {
      if (i > 0 && name !== undefined && !dims.has(name) && stored[i] !== undefined)
        dims.set(name, stored[i]!);
    });
  }
  return dims;
}

/**
 * Parameters at step 0: each `--weights` file over the parameters it covers (its keys
 * prefixed with PREFIX.), the rest seeded as `moec run` seeds them. A key that matches no
 * parameter, or a parameter two files give, is an error.
 */
function initialParameters(
  train: LoweredTrain,
  specs: readonly string[],
  seed: number,
  allowNonFinite = false,
): { params: Map<string, TensorData>; loaded: number } {
  const all = paramSpecs(train.graph);
  const params = new Map<string, TensorData>();
  const from = new Map<string, string>();
  for (const spec of specs) {
    // `--weights [PREFIX=]FILE`: a checkpoint for the parameters under PREFIX (all without).
    const { name: prefix, path: file } = splitNamedPath(spec);
    const under = prefix === undefined ? all : all.filter((p) => p.path.startsWith(`${prefix}.`));
    if (prefix !== undefined && under.length === 0) {
      const tops = [...new Set(all.map((p) => p.path.split(".")[0]!))];
      throw new CliError(
        `--weights ${prefix}=...: the program has no parameters under ${prefix} (its instances: ${tops.join(", ")})`,
        EXIT_USAGE,
      );
    }
    const st = openTensors(file, "--weights")!;
    const rename = (key: string) => (prefix === undefined ? key : `${prefix}.${key}`);
    const given = new Set(st.names().map(rename));
    for (const name of given) {
      const before = from.get(name);
      if (before !== undefined)
        throw new CliError(`--weights: ${name} is in both ${before} and ${file}`, EXIT_USAGE);
      from.set(name, file);
    }
    try {
      // Only the parameters the file holds: a key matching none of them is still an error.
      const loaded = loadWeights(
        under.filter((p) => given.has(p.path)),
        st,
        { rename, allowNonFinite },
      );
      for (const [name, t] of loaded) params.set(name, t.data as TensorData);
    } catch (err) {
      if (err instanceof WeightsError) throw new CliError(err.message);
      throw err;
    }
  }
  // Seeded per parameter path, so a parameter's initial value does not depend on the others.
  for (const [name, t] of initWeights(
    all.filter((p) => !params.has(p.path)),
    seed,
  ))
    params.set(name, t.data as TensorData);
  return { params, loaded: from.size };
}

function hashOf(value: unknown): string {
  return createHash("sha256").update(JSON.stringify(value)).digest("hex").slice(0, 16);
}

export async function executeTrain(file: string, o: TrainOptions): Promise<TrainSummary> {
  if (!o.data)
    throw new CliError(
      "missing --data FILE (a safetensors file, one tensor per input)",
      EXIT_USAGE,
    );
  const steps = positive(o.steps, "--steps", 100);
  const batch = positive(o.batch, "--batch", 32);
  const seed = positive(o.seed, "--seed", 0, 0);
  const warmup = positive(o.warmup, "--warmup", 0, 0);
  const keep = positive(o.keep, "--keep", 3);
  const schedule = o.schedule ?? "constant";
  if (!(SCHEDULES as readonly string[]).includes(schedule))
    throw new CliError(
      `--schedule must be one of ${SCHEDULES.join(", ")}, found "${schedule}"`,
      EXIT_USAGE,
    );
  const dataFile: SafetensorsFile = openTensors(o.data, "--data")!;
  if (o.evalEvery !== undefined && o.evalData === undefined)
    throw new CliError("--eval-every needs --eval-data (what to evaluate on)", EXIT_USAGE);
  if (o.evalData !== undefined && !fs.existsSync(o.evalData))
    throw new CliError(`--eval-data ${o.evalData}: no such file`);

  const { analysis, entry } = analyzeEntry(file);
  const chosen = selectTrainProgram(analysis.program, entry, o.program);
  if (typeof chosen === "string") throw new CliError(chosen.replace(entry, displayPath(entry)));
  const given = parseDims(o.dim);
  const dims = trainDims(chosen.decl, dataFile, batch, given);
  const train = lowerTrainProgram(analysis, entry, chosen.decl.name.name, o.set, dims, { given });
  const step = assembleTrain(train);
  if ("error" in step) throw new CliError(step.error);

  const runDir = path.resolve(
    typeof o.resume === "string" ? o.resume : (o.out ?? path.join("runs", train.name)),
  );
  // Checkpoints are written from the first --save-every on: a run directory that cannot be
  // written is found now, not after the training it was to keep.
  checkOutputFolder(
    typeof o.resume === "string" ? o.resume : (o.out ?? displayPath(runDir)),
    typeof o.resume === "string" ? "--resume" : "--out",
    { parents: true, kind: "a run directory" },
  );
  const existing = fs.existsSync(runDir) ? listCheckpoints(runDir) : [];
  if (existing.length > 0 && o.resume === undefined)
    throw new CliError(
      `${displayPath(runDir)} already holds checkpoints (newest ${path.basename(existing.at(-1)!.dir)}): --resume to continue that run, or --out another directory`,
      EXIT_USAGE,
    );
  const sourceHash = createHash("sha256")
    .update(analysis.graph.modules.get(entry)!.text)
    .digest("hex")
    .slice(0, 16);
  const lrSchedule: LrSchedule = {
    lr: train.optimizer.lr,
    totalSteps: steps,
    warmupSteps: warmup,
    decay: schedule as LrSchedule["decay"],
  };
  const { lr: _lr, ...adamw } = train.optimizer;
  const configHash = hashOf({
    program: train.name,
    dims: [...train.dims],
    set: o.set ?? [],
    batch,
    seed,
    schedule: lrSchedule,
    adamw,
    weights: o.weights ?? [],
  });

  // Loaded lazily: only training touches the device.
  const { openDevice, adapterSummary, DeviceError } = await import("../runtime/device.js");
  const { compileGraph } = await import("../compiler/kernels/compile-graph.js");
  const { loadTuning } = await import("../runtime/autotune.js");
  const { DEFAULT_TUNING } = await import("../compiler/kernels/wgsl/variants.js");
  const { runTraining, dataPorts, NonFiniteError } = await import("../runtime/train/train-loop.js");
  const { Executor } = await import("../runtime/executor.js");
  const ctx = await openDevice().catch((err: unknown) => {
    if (err instanceof DeviceError) throw new CliError(err.message, EXIT_DEVICE);
    throw err;
  });
  let evalExecutor: { destroy(): void } | undefined;
  try {
    let program;
    let evalProgram;
    let evalTrain: LoweredTrain = train;
    const tuning = loadTuning(ctx) ?? DEFAULT_TUNING;
    try {
      program = compileGraph(step.graph, ctx.limits, tuning);
      // Held-out loss and accuracy: the forward-and-loss graph with the accuracy counts,
      // lowered again without dropout and router jitter where the step has them.
      if (o.evalData !== undefined) {
        const noisy = train.graph.nodes.some((n) => n.op === "input" && n.name === NOISE_KEY_INPUT);
        evalTrain = noisy
          ? lowerTrainProgram(analysis, entry, train.name, o.set, dims, { evaluation: true })
          : train;
        evalProgram = compileGraph(evalTrain.evalGraph, ctx.limits, tuning);
      }
    } catch (err) {
      // Too large for this device at the user's sizes: their sizes to change (exit 1).
      if (err instanceof LimitError) throw new CliError(err.message);
      throw err;
    }
    // Parameters are made or read only once the step fits the device: generating gigabytes
    // and then failing on a limit costs the user minutes for a one-line error.
    const initial = initialParameters(train, o.weights ?? [], seed, o.allowNonfinite);
    const ports = dataPorts(program);
    let data: TrainData;
    try {
      data = TrainData.open(o.data, ports, { seed, allowNonFinite: o.allowNonfinite === true });
    } catch (err) {
      if (err instanceof DataError) throw new CliError(err.message);
      throw err;
    }
    let evaluate: ((params: ReadonlyMap<string, TensorData>) => Promise<EvalMetrics>) | undefined;
    if (evalProgram && o.evalData !== undefined) {
      let evalData: TrainData;
      try {
        evalData = TrainData.open(o.evalData, evalProgram.inputs, {
          seed,
          shuffle: false,
          allowNonFinite: o.allowNonfinite === true,
        });
      } catch (err) {
        if (err instanceof DataError) throw new CliError(`--eval-data: ${err.message}`);
        throw err;
      }
      const exe = await Executor.create(ctx, evalProgram, { compile: {} });
      evalExecutor = exe;
      // The mean loss over every whole batch of the file, in file order, and each
      // cross_entropy's accuracy from its correct and counted positions summed over them.
      evaluate = async (params) => {
        exe.setParams(params);
        const batches = Math.floor(evalData.examples / evalData.batchSize);
        let cursor = { epoch: 0, position: 0 };
        let sum = 0;
        const counts = new Map<string, Float64Array>();
        for (let i = 0; i < batches; i++) {
          const b = evalData.batch(cursor);
          cursor = b.cursor;
          const out = await exe.run(b.inputs);
          sum += out.get("loss")![0]!;
          for (const [name, v] of out) {
            if (!name.startsWith("accuracy:")) continue;
            let acc = counts.get(name);
            if (!acc) counts.set(name, (acc = new Float64Array(v.length)));
            for (let j = 0; j < v.length; j++) acc[j]! += v[j]!;
          }
        }
        const terms = new Map<string, AccuracyCounts>();
        for (const m of evalTrain.accuracy) {
          const get = (what: Parameters<typeof accuracyOutput>[1]) =>
            counts.get(accuracyOutput(m.term, what)) ?? new Float64Array(0);
          const c: AccuracyCounts = { correct: get("correct")[0]!, count: get("count")[0]! };
          if (m.tasks)
            c.tasks = { names: m.tasks, correct: get("task_correct"), count: get("task_count") };
          terms.set(m.term, c);
        }
        return { loss: sum / batches, ...accuracyOf(terms) };
      };
    }
    // Tokens per step: the elements of the largest integer input (tokens [B, T]), else B.
    const tokensPerStep = Math.max(
      batch,
      ...ports.filter((p) => p.dtype === "i32").map((p) => p.shape.reduce((a, b) => a * b, 1)),
    );
    const frozen = train.params.filter((p) => !p.trainable).length;
    const header = [
      `training ${train.name} on ${adapterSummary(ctx)}`,
      `  ${step.updated.length} trained tensors, ${frozen} frozen; ${program.kernels.length} kernels per step; ${[...train.dims].map(([k, v]) => `${k}=${v}`).join(", ")}`,
      `  data ${displayPath(path.resolve(o.data))}: ${data.examples} examples; run ${displayPath(runDir)}`,
    ];
    if (data.unused.length > 0)
      header.push(`  data tensors no input reads (left unread): ${data.unused.join(", ")}`);
    if (initial.loaded > 0) header.push(`  ${initial.loaded} tensors from --weights`);
    if (step.unused.length > 0)
      header.push(
        `  not reached by the loss (left as they are): ${step.unused.slice(0, 4).join(", ")}${step.unused.length > 4 ? ", ..." : ""}`,
      );
    if (!o.json) process.stderr.write(header.join("\n") + "\n");

    const tty = stderrIsInteractive();
    const progress = o.json
      ? { write: (t: string) => process.stdout.write(t), mode: "json" as const }
      : tty
        ? { write: (t: string) => process.stderr.write(t), mode: "tty" as const }
        : {
            write: (t: string) => process.stderr.write(t),
            mode: "lines" as const,
            every: Math.max(1, Math.round(steps / 20)),
          };
    let result;
    const compiling = compileProgress(o.json);
    try {
      result = await runTraining(ctx, {
        compile: compiling ? { onProgress: compiling.update } : {},
        runDir,
        program,
        data,
        schedule: lrSchedule,
        adamw,
        initialParams: () => initial.params,
        checkpointEvery: positive(o.saveEvery, "--save-every", steps),
        ...(o.evalEvery !== undefined
          ? { evalEvery: positive(o.evalEvery, "--eval-every", steps) }
          : {}),
        retention: { keepLast: keep },
        seeds: { init: seed, data: seed, noise: seed },
        configHash,
        sourceHash,
        tokensPerStep,
        resume: o.resume !== undefined,
        progress,
        ...(evaluate ? { evaluate } : {}),
        stepGraph: step.graph,
        ...(train.loras.length > 0
          ? { exports: (params) => peftAdapterFiles(params, train.loras) }
          : {}),
      });
    } catch (err) {
      if (err instanceof NonFiniteError) {
        const ckpts = listCheckpoints(runDir);
        const kept = ckpts.length
          ? `; ${displayPath(ckpts.at(-1)!.dir)} holds the last finite state`
          : "; no checkpoint was written before it";
        if (err.source) process.stderr.write(describeNonFinite(err, sourcesOf(analysis)));
        else if (err.sourceUnknown)
          process.stderr.write(`(no source for the non-finite value: ${err.sourceUnknown})\n`);
        throw new CliError(`training stopped at ${err.message}${kept}`, EXIT_DEVICE);
      }
      if (err instanceof CheckpointError) throw new CliError(err.message);
      throw err;
    } finally {
      compiling?.stop();
    }
    return {
      program: train.name,
      runDir,
      device: adapterSummary(ctx),
      dims: Object.fromEntries(train.dims),
      steps: result.lastStep,
      resumedFrom: result.resumedFrom,
      firstLoss: result.firstLoss,
      lastLoss: result.lastLoss,
      checkpoint: result.lastCheckpoint,
      updated: step.updated.length,
      frozen,
      kernels: program.kernels.length,
    };
  } finally {
    evalExecutor?.destroy();
    await ctx.close();
  }
}

export async function runTrain(file: string, o: TrainOptions): Promise<number> {
  const s = await executeTrain(file, o);
  if (o.json) {
    process.stdout.write(JSON.stringify({ event: "done", ...s }) + "\n");
    return 0;
  }
  const from = s.resumedFrom > 0 ? ` (resumed after step ${s.resumedFrom})` : "";
  process.stdout.write(
    `trained ${s.program}: ${s.steps} steps${from}, loss ${s.lastLoss.toFixed(4)}\n` +
      (s.checkpoint ? `wrote ${displayPath(s.checkpoint)}/\n` : ""),
  );
  return 0;
}

/**
 * Where a non-finite step went bad, from the reference replay: the value's op, then the
 * source it was lowered from with a code frame, then the applications it was inlined from.
 */
function describeNonFinite(err: NonFiniteError, sources: ReadonlyMap<string, string>): string {
  const src = err.source!;
  const origin = src.origin;
  const where =
    origin?.role === "gradient"
      ? "in the gradient of"
      : origin?.role === "optimizer"
        ? "in the optimizer's update at"
        : "lowered from";
  const lines = [
    `step ${err.step}'s first non-finite value (the step replayed in the reference, in f32): ${src.value} in \`${src.op}\`${origin ? `, ${where}:` : ""}`,
  ];
  for (let o = origin, depth = 0; o && depth < 8; o = o.caller, depth++) {
    const label = depth === 0 ? undefined : "inlined from here";
    lines.push(...codeFrame(displayPath(o.file), o, sources.get(o.file), label));
  }
  return lines.join("\n") + "\n";
}
