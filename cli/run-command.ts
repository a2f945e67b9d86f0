/**
 * `moec run FILE|BUNDLE`: lowers the model (or loads a compiled bundle), prepares weights and
 * inputs, runs it on the WebGPU device (or the reference interpreter) and reports or saves
 * the outputs.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import type { IrGraph } from "../compiler/ir/graph.js";
import { LimitError } from "../compiler/kernels/plan-buffers.js";
import { type LoweredInput, ROUTING_PREFIX } from "../compiler/lower/lower-model.js";
import { type SafetensorsFile, WeightsError } from "../runtime/safetensors.js";
import {
  checksum,
  paramSpecs,
  prepareInputs,
  prepareWeights,
  numel,
  runReference,
} from "../runtime/run-model.js";
import type { PlacedLora } from "../compiler/lower/lowering-hooks.js";
import { loadPeftAdapter } from "../runtime/peft.js";
import { WEIGHT_MAPS, combineCheckpoints, trainedInstance } from "../runtime/weight-maps.js";
import { type TypedTensor, weightsToSafetensors } from "../runtime/weights.js";
import { writeSafetensorsFile } from "../runtime/safetensors.js";
import {
  type RunnableProgram,
  programFromBundle,
  readBundle,
  throwIfBundleFault,
} from "./bundle.js";
import {
  type ModelOptions,
  lowerFromSource,
  openTensors,
  splitNamedPath,
} from "./model-options.js";
import { compileProgress } from "./progress.js";
import {
  CliError,
  EXIT_DEVICE,
  EXIT_USAGE,
  EXIT_USER_ERROR,
  checkOutputFile,
  displayPath,
  mapWriteErrors,
} from "./report.js";

export interface RunOptions extends ModelOptions {
  weights?: string;
  weightsMap?: string;
  /** `[task=]dir`, repeatable (one per task for `per task` LoRAs). */
  adapter?: string[];
  initMissing?: boolean;
  /** Load weights, adapters and inputs holding NaN or infinities. */
  allowNonfinite?: boolean;
  inputs?: string;
  task?: string;
  seed?: string;
  output?: string;
  stats?: boolean;
  traceRouting?: string;
  tune?: boolean;
  backend?: string;
}

/** What one run produced, for printing and for tests. */
export interface RunResult {
  model: string;
  backend: string;
  device?: string;
  dims: Record<string, number>;
  outputs: Map<string, TypedTensor>;
  /**
   * Milliseconds: compiling the kernels (GPU only), the first forward call (uploads) and a
   * steady-state one.
   */
  timings: { compileMs?: number; firstMs: number; steadyMs?: number };
  /** GPU only: distinct kernels compiled and the devices that compiled them in parallel. */
  compiled?: { kernels: number; workers: number };
  kernels?: { name: string; ms: number }[];
  memory?: { peakBytes: number; tensorBytes: number };
}

export function parseSeed(seed: string | undefined): number {
  if (seed === undefined) return 0;
  if (!/^\d+$/.test(seed))
    throw new CliError(`--seed expects a non-negative integer, found "${seed}"`, EXIT_USAGE);
  return Number(seed);
}

/** The weight options of `moec run` (and `moec export`): --weights, --weights-map, --adapter. */
export type WeightOptions = Pick<RunOptions, "weights" | "weightsMap" | "adapter">;

/**
 * The checkpoint the weight options name for `graph`'s parameters: read, renamed by its weight
 * map, narrowed to this model's instance of a training checkpoint, combined with a PEFT
 * adapter (`loras` undefined: a bundle, which takes none). Undefined: seeded weights.
 */
export function openRunWeights(
  graph: IrGraph,
  loras: PlacedLora[] | undefined,
  options: WeightOptions,
): SafetensorsFile | undefined {
  let weightsFile = openTensors(options.weights, "--weights");
  const paths = paramSpecs(graph).map((p) => p.path);
  const map = options.weightsMap === undefined ? undefined : WEIGHT_MAPS.get(options.weightsMap);
  if (options.weightsMap !== undefined) {
    if (!map) {
      throw new CliError(
        `unknown --weights-map "${options.weightsMap}"; maps: ${[...WEIGHT_MAPS.keys()].join(", ")}`,
        EXIT_USAGE,
      );
    }
    if (!weightsFile) throw new CliError("--weights-map needs --weights FILE", EXIT_USAGE);
  }
  if (weightsFile && !map) {
    // A moec train checkpoint: the parameters under the binding of this model's instance.
    const trained = trainedInstance(weightsFile, paths);
    if (trained) {
      weightsFile = trained.file;
      process.stderr.write(
        `reading the parameters under \`${trained.binding}.\` of ${displayPath(options.weights!)} (a training checkpoint)\n`,
      );
    }
  }
  try {
    if (map && weightsFile) weightsFile = map.apply(weightsFile, paths);
    const adapters = options.adapter ?? [];
    if (adapters.length > 0) {
      if (!weightsFile)
        throw new CliError("--adapter needs --weights (the base model's checkpoint)", EXIT_USAGE);
      if (!loras) throw new CliError("--adapter needs a .moe source, not a bundle", EXIT_USAGE);
      const files = adapterSets(adapters, loras).map(({ task, dir }) =>
        loadPeftAdapter(dir, loras, paths, map, task),
      );
      weightsFile = combineCheckpoints([weightsFile, ...files]);
    }
  } catch (err) {
    if (err instanceof WeightsError) throw new CliError(err.message);
    throw err;
  }
  return weightsFile;
}

/**
 * Which adapter feeds which of the model's LoRAs: a plain `--adapter DIR` its LoRAs that
 * belong to no task, `--adapter TASK=DIR` that task's `per task` LoRAs; each set exactly once.
 */
function adapterSets(
  specs: readonly string[],
  loras: readonly { task?: string }[],
): { task?: string; dir: string }[] {
  const tasks = [...new Set(loras.flatMap((l) => (l.task === undefined ? [] : [l.task])))];
  const shared = loras.some((l) => l.task === undefined);
  const sets = specs.map((spec) => {
    const { name, path: dir } = splitNamedPath(spec);
    return name === undefined ? { dir } : { task: name, dir };
  });
  const seen = new Set<string | undefined>();
  for (const { task } of sets) {
    if (task !== undefined && !tasks.includes(task))
      throw new CliError(
        `--adapter ${task}=...: the model has no \`per task\` LoRAs of a task ${task}${tasks.length ? ` (its tasks: ${tasks.join(", ")})` : ""}`,
        EXIT_USAGE,
      );
    if (task === undefined && !shared && tasks.length > 0)
      throw new CliError(
        `the model's LoRAs are \`per task\` (${tasks.join(", ")}): give each task's adapter as --adapter TASK=DIR`,
        EXIT_USAGE,
      );
    if (seen.has(task))
      throw new CliError(
        task === undefined ? "--adapter DIR given twice" : `--adapter ${task}=... given twice`,
        EXIT_USAGE,
      );
    seen.add(task);
  }
  const missing = [...(shared ? [undefined] : []), ...tasks].filter((t) => !seen.has(t));
  if (missing.length > 0)
    throw new CliError(
      `the model's LoRAs ${missing.map((t) => (t === undefined ? "of no task" : `of task ${t}`)).join(", ")} have no adapter: ${missing.map((t) => (t === undefined ? "--adapter DIR" : `--adapter ${t}=DIR`)).join(", ")}`,
      EXIT_USAGE,
    );
  return sets;
}

export async function executeRun(target: string, options: RunOptions): Promise<RunResult> {
  const backend = options.backend ?? "gpu";
  if (backend !== "gpu" && backend !== "reference") {
    throw new CliError(`--backend must be gpu or reference, found "${backend}"`, EXIT_USAGE);
  }
  const seed = parseSeed(options.seed);
  // Where the results go is checked before the run, not discovered after it.
  if (options.output !== undefined) checkOutputFile(options.output, "-o");
  if (options.traceRouting !== undefined) checkOutputFile(options.traceRouting, "--trace-routing");
  let graph: IrGraph;
  let inputs: LoweredInput[];
  let name: string;
  let dims: Map<string, number>;
  let bundled: RunnableProgram | undefined;
  let loras: PlacedLora[] | undefined;
  if (fs.existsSync(target) && fs.statSync(target).isDirectory()) {
    const bundle = readDamaged(target, () => readBundle(target));
    if (options.dim?.length || options.set?.length || options.model) {
      throw new CliError(
        `${displayPath(target)} is a compiled bundle: its model and sizes are fixed (${[...bundle.dims].map(([k, v]) => `${k}=${v}`).join(", ")}); recompile to change them`,
        EXIT_USAGE,
      );
    }
    // Options that change lowering cannot apply to a program already compiled.
    const lowering = [
      options.mergeAdapters && "--merge-adapters",
      options.pinGroups?.length && "--pin-groups",
      options.traceRouting !== undefined && "--trace-routing",
    ].filter((o): o is string => typeof o === "string");
    if (lowering.length > 0) {
      throw new CliError(
        `${displayPath(target)} is a compiled bundle: ${lowering.join(", ")} ${lowering.length === 1 ? "changes" : "change"} how the model is compiled; run the .moe source instead`,
        EXIT_USAGE,
      );
    }
    ({ graph, inputs, name, dims } = bundle);
    if (bundle.code) {
      const code = bundle.code;
      bundled = readDamaged(target, () => programFromBundle(code));
    }
  } else {
    const routing = options.stats === true || options.traceRouting !== undefined;
    const { lowered } = lowerFromSource(target, { ...options, routing });
    ({ graph, inputs, name, dims, loras } = lowered);
  }
  const weightsFile = openRunWeights(graph, loras, options);
  const inputsFile = openTensors(options.inputs, "--inputs");
  // Weights and inputs are made only after every size is checked: generating or reading
  // gigabytes, then failing on a limit, costs the user minutes for a one-line error.
  const prepare = (extraBytes: number) => {
    checkHostMemory(graph, inputs, extraBytes);
    try {
      const allowNonFinite = options.allowNonfinite === true;
      const weights = prepareWeights(graph, weightsFile, seed, {
        allowNonFinite,
        ...(options.initMissing ? { missing: "init" } : {}),
      });
      const feeds = prepareInputs(inputs, inputsFile, seed, options.task, { allowNonFinite });
      return { weights, inputs: feeds };
    } catch (err) {
      if (err instanceof WeightsError) throw new CliError(err.message);
      throw err;
    }
  };
  const dimsRecord = Object.fromEntries(dims);
  if (backend === "reference") {
    // The interpreter holds every value in float64 (an upper bound: all nodes at once).
    const values = graph.nodes.reduce((a, n) => a + 8 * numel(n.shape), 0);
    const { weights, inputs: feeds } = prepare(values);
    const t0 = performance.now();
    const outputs = runReference(graph, weights, feeds);
    return {
      model: name,
      backend,
      dims: dimsRecord,
      outputs,
      timings: { firstMs: performance.now() - t0 },
    };
  }
  // Loaded lazily: only a GPU run touches the device.
  const { runOnGpu } = await import("../runtime/run-gpu.js");
  const { DeviceError } = await import("../runtime/device.js");
  // Outputs are read back into host arrays as well.
  const outputBytes = graph.outputs.reduce((a, o) => a + 4 * numel(graph.nodes[o.node]!.shape), 0);
  const progress = compileProgress(options.json);
  try {
    const result = await runOnGpu(graph, () => prepare(outputBytes), {
      stats: options.stats === true,
      tune: options.tune === true,
      ...(bundled ? { bundled } : {}),
      log: (line: string) => process.stderr.write(`moec: ${line}\n`),
      ...(progress ? { onCompileProgress: progress.update } : {}),
    });
    return { model: name, backend, dims: dimsRecord, ...result };
  } catch (err) {
    if (bundled) throwIfBundleFault(target, err);
    // Too large for this device at these sizes: the user's sizes, not moec's bug.
    if (err instanceof LimitError) throw new CliError(err.message, EXIT_USER_ERROR);
    if (err instanceof DeviceError) throw new CliError(err.message, EXIT_DEVICE);
    throw err;
  } finally {
    progress?.stop();
  }
}

/**
 * Refuses a run whose weights, inputs and outputs (plus `extraBytes`) need more host memory
 * than is free, before any of them is made.
 */
function checkHostMemory(
  graph: IrGraph,
  inputs: readonly LoweredInput[],
  extraBytes: number,
): void {
  const params = paramSpecs(graph).reduce((a, p) => a + 4 * numel(p.shape), 0);
  const feeds = inputs.reduce((a, i) => a + 4 * numel(i.shape), 0);
  const needed = params + feeds + extraBytes;
  const free = os.freemem();
  if (needed > free) {
    throw new CliError(
      `the run needs ${gib(needed)} of host memory (parameters ${gib(params)}, inputs ${gib(feeds)}${extraBytes > 0 ? `, outputs and values ${gib(extraBytes)}` : ""}), but only ${gib(free)} is free; use smaller --dim or --set sizes`,
    );
  }
}

function gib(bytes: number): string {
  return bytes >= 2 ** 30
    ? `${(bytes / 2 ** 30).toPrecision(3)} GiB`
    : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/**
 * Reads a bundle's files with `read`: what they hold is data from disk, so a value of the
 * wrong kind there (valid JSON, wrong content) is a damaged bundle (exit 1), not moec's bug.
 */
function readDamaged<T>(dir: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    if (err instanceof CliError || !(err instanceof TypeError || err instanceof RangeError))
      throw err;
    throw new CliError(`${displayPath(dir)}: damaged bundle: ${oneLine(err.message)}`);
  }
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, " ").trim();
}

/** The routing outputs of a run, by MoE layer and statistic (`routing:<layer>.<stat>`). */
export function routingReport(
  outputs: ReadonlyMap<string, TypedTensor>,
): Map<string, Map<string, TypedTensor>> {
  const layers = new Map<string, Map<string, TypedTensor>>();
  for (const [name, t] of outputs) {
    if (!name.startsWith(ROUTING_PREFIX)) continue;
    const rest = name.slice(ROUTING_PREFIX.length);
    const dot = rest.lastIndexOf(".");
    const layer = rest.slice(0, dot);
    if (!layers.has(layer)) layers.set(layer, new Map());
    layers.get(layer)!.set(rest.slice(dot + 1), t);
  }
  return layers;
}

/** Per-token choices, for --trace-routing (`groups`: a grouped router's group weights). */
const TRACE_OUTPUTS = new Set(["experts", "weights", "tokens", "groups"]);

export async function runRun(target: string, options: RunOptions): Promise<number> {
  const result = await executeRun(target, options);
  const modelOutputs = new Map(
    [...result.outputs].filter(([name]) => !name.startsWith(ROUTING_PREFIX)),
  );
  const routing = routingReport(result.outputs);
  if (options.output) {
    const file = options.output;
    mapWriteErrors(`-o ${file}`, () =>
      writeSafetensorsFile(file, weightsToSafetensors(modelOutputs), {
        model: result.model,
        backend: result.backend,
      }),
    );
  }
  if (options.traceRouting) {
    const trace = new Map<string, TypedTensor>();
    for (const [layer, stats] of routing)
      for (const [what, t] of stats) if (TRACE_OUTPUTS.has(what)) trace.set(`${layer}.${what}`, t);
    if (trace.size === 0)
      throw new CliError(
        "--trace-routing: the model has no MoE layer with per-token routing to trace (sparse or grouped)",
      );
    const file = options.traceRouting;
    mapWriteErrors(`--trace-routing ${file}`, () =>
      writeSafetensorsFile(file, weightsToSafetensors(trace), { model: result.model }),
    );
  }
  const summaries = [...routing].map(([layer, stats]) => ({
    layer,
    stats: Object.fromEntries(
      [...stats]
        .filter(([what]) => !TRACE_OUTPUTS.has(what))
        .map(([what, t]) => [
          what,
          t.shape.length === 1 && t.shape[0] === 1 ? t.data[0]! : [...t.data],
        ]),
    ),
  }));
  const outputs = [...modelOutputs].map(([name, t]) => ({
    name,
    dtype: t.dtype,
    shape: t.shape,
    checksum: checksum(t),
  }));
  if (options.json) {
    process.stdout.write(
      JSON.stringify(
        {
          model: result.model,
          backend: result.backend,
          device: result.device,
          dims: result.dims,
          outputs,
          timings: result.timings,
          ...(result.compiled ? { compiled: result.compiled } : {}),
          ...(result.kernels ? { kernels: result.kernels } : {}),
          ...(result.memory ? { memory: result.memory } : {}),
          ...(options.stats && summaries.length > 0
            ? { routing: Object.fromEntries(summaries.map((r) => [r.layer, r.stats])) }
            : {}),
          ...(options.output ? { wrote: options.output } : {}),
        },
        null,
        2,
      ) + "\n",
    );
    return 0;
  }
  const where = result.device ? `${result.backend}: ${result.device}` : result.backend;
  const dims = Object.entries(result.dims)
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
  const lines = [`model ${result.model} on ${where}${dims ? ` (${dims})` : ""}`];
  for (const o of outputs) {
    const c = o.checksum;
    lines.push(
      `  ${o.name}  ${o.dtype}[${o.shape.join(", ")}]  mean ${fmt(c.mean)}  absmax ${fmt(c.absMax)}  l2 ${fmt(c.l2)}`,
    );
  }
  const t = result.timings;
  lines.push(
    `  time ${t.steadyMs !== undefined ? `${t.steadyMs.toFixed(2)} ms per call (first call ${t.firstMs.toFixed(1)} ms)` : `${t.firstMs.toFixed(1)} ms`}`,
  );
  if (t.compileMs !== undefined && result.compiled) {
    const { kernels, workers } = result.compiled;
    lines.push(
      `  kernels: ${kernels} compiled in ${(t.compileMs / 1000).toFixed(2)} s${workers > 1 ? ` on ${workers} devices` : ""}`,
    );
  }
  if (result.memory) {
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
    lines.push(
      `  device memory: peak ${mib(result.memory.peakBytes)} for ${mib(result.memory.tensorBytes)} of tensors`,
    );
  }
  if (options.stats && result.kernels) {
    lines.push("  kernels:");
    for (const k of result.kernels) lines.push(`    ${k.ms.toFixed(3).padStart(9)} ms  ${k.name}`);
  }
  if (options.stats && summaries.length > 0) {
    lines.push("  routing:");
    for (const { layer, stats } of summaries) {
      const parts = Object.entries(stats).map(([what, v]) =>
        Array.isArray(v)
          ? `${what.replaceAll("_", " ")} [${v.map((x) => (Number.isInteger(x) ? String(x) : x.toFixed(3))).join(", ")}]`
          : `${what.replaceAll("_", " ")} ${Number.isInteger(v) ? v : fmt(v)}`,
      );
      lines.push(`    ${layer}`, `      ${parts.join("  ")}`);
    }
  }
  if (options.output) lines.push(`wrote ${displayPath(path.resolve(options.output))}`);
  if (options.traceRouting) lines.push(`wrote ${displayPath(path.resolve(options.traceRouting))}`);
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

function fmt(x: number): string {
  return Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0) ? x.toExponential(3) : x.toFixed(4);
}
