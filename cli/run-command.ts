/**
 * `moec run FILE|BUNDLE`: lowers the model (or loads a compiled bundle), prepares weights and
 * inputs, runs it on the WebGPU device (or the reference interpreter) and reports or saves
 * the outputs.
 */
import * as fs from "node:fs";
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
  runReference,
} from "../runtime/run-model.js";
import { peftScaleAt, readPeftAdapter } from "../runtime/peft.js";
import { WEIGHT_MAPS, combineCheckpoints, trainedInstance } from "../runtime/weight-maps.js";
import { type TypedTensor, weightsToSafetensors } from "../runtime/weights.js";
import { writeSafetensorsFile } from "../runtime/safetensors.js";
import { type RunnableProgram, programFromBundle, readBundle } from "./bundle.js";
import { type ModelOptions, lowerFromSource, openTensors } from "./model-options.js";
import { CliError, EXIT_DEVICE, EXIT_USAGE, displayPath } from "./report.js";

export interface RunOptions extends ModelOptions {
  weights?: string;
  weightsMap?: string;
  adapter?: string;
  initMissing?: boolean;
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
  /** Milliseconds: the first forward call (pipelines, uploads) and a steady-state one. */
  timings: { firstMs: number; steadyMs?: number };
  kernels?: { name: string; ms: number }[];
  memory?: { peakBytes: number; tensorBytes: number };
}

function parseSeed(seed: string | undefined): number {
  if (seed === undefined) return 0;
  if (!/^\d+$/.test(seed))
    throw new CliError(`--seed expects a non-negative integer, found "${seed}"`, EXIT_USAGE);
  return Number(seed);
}

export async function executeRun(target: string, options: RunOptions): Promise<RunResult> {
  const backend = options.backend ?? "gpu";
  if (backend !== "gpu" && backend !== "reference") {
    throw new CliError(`--backend must be gpu or reference, found "${backend}"`, EXIT_USAGE);
  }
  const seed = parseSeed(options.seed);
  let graph: IrGraph;
  let inputs: LoweredInput[];
  let name: string;
  let dims: Map<string, number>;
  let bundled: RunnableProgram | undefined;
  let loras: { path: string; r: number; alpha: number }[] | undefined;
  if (fs.existsSync(target) && fs.statSync(target).isDirectory()) {
    const bundle = readBundle(target);
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
    if (bundle.code) bundled = programFromBundle(bundle.code);
  } else {
    const routing = options.stats === true || options.traceRouting !== undefined;
    const { lowered } = lowerFromSource(target, { ...options, routing });
    ({ graph, inputs, name, dims, loras } = lowered);
  }
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
    if (options.adapter !== undefined) {
      if (!weightsFile)
        throw new CliError("--adapter needs --weights (the base model's checkpoint)", EXIT_USAGE);
      if (!loras) throw new CliError("--adapter needs a .moe source, not a bundle", EXIT_USAGE);
      const adapter = loadPeftAdapter(options.adapter, loras, paths, map);
      weightsFile = combineCheckpoints([weightsFile, adapter]);
    }
  } catch (err) {
    if (err instanceof WeightsError) throw new CliError(err.message);
    throw err;
  }
  const inputsFile = openTensors(options.inputs, "--inputs");
  let weights: Map<string, TypedTensor>;
  let feeds: Map<string, TypedTensor>;
  try {
    weights = prepareWeights(
      graph,
      weightsFile,
      seed,
      options.initMissing ? { missing: "init" } : {},
    );
    feeds = prepareInputs(inputs, inputsFile, seed, options.task);
  } catch (err) {
    if (err instanceof WeightsError) throw new CliError(err.message);
    throw err;
  }
  const dimsRecord = Object.fromEntries(dims);
  if (backend === "reference") {
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
  try {
    const result = await runOnGpu(graph, weights, feeds, {
      stats: options.stats === true,
      tune: options.tune === true,
      ...(bundled ? { bundled } : {}),
      log: (line) => process.stderr.write(`moec: ${line}\n`),
    });
    return { model: name, backend, dims: dimsRecord, ...result };
  } catch (err) {
    if (err instanceof DeviceError || err instanceof LimitError)
      throw new CliError(err.message, EXIT_DEVICE);
    throw err;
  }
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

/**
 * A PEFT adapter directory as moec tensors: renamed like the base weights (`map`), its LoRA
 * scale checked against the model's LoRA at each adapted layer, and every adapted module
 * checked to have a LoRA in the model.
 */
function loadPeftAdapter(
  dir: string,
  loras: readonly { path: string; r: number; alpha: number }[],
  paths: readonly string[],
  map: { apply(file: SafetensorsFile, paramPaths: readonly string[]): SafetensorsFile } | undefined,
): SafetensorsFile {
  const { config, file } = readPeftAdapter(dir);
  const adapter = map ? map.apply(file, paths) : file;
  const known = new Set(paths);
  const stray = adapter.names().filter((n) => !known.has(n));
  if (stray.length > 0) {
    const targets = config.targets.length
      ? ` (its target_modules: ${config.targets.join(", ")})`
      : "";
    throw new CliError(
      `${dir}: the adapter${targets} adapts ${stray.length === 1 ? "a layer" : `${stray.length} layers`} the model has no LoRA on: ${stray.slice(0, 3).join(", ")}${stray.length > 3 ? ", ..." : ""}; add them to the model's LoRA targets`,
    );
  }
  const provided = new Set(adapter.names());
  for (const l of loras) {
    if (!provided.has(`${l.path}.lora_A.weight`)) continue;
    const { r, alpha } = peftScaleAt(config, l.path);
    if (l.r !== r || l.alpha !== alpha) {
      throw new CliError(
        `${dir}: adapter_config.json has r ${r}, lora_alpha ${alpha} for ${l.path}; the model's LoRA there has r ${l.r}, alpha ${l.alpha}`,
      );
    }
  }
  return adapter;
}

export async function runRun(target: string, options: RunOptions): Promise<number> {
  const result = await executeRun(target, options);
  const modelOutputs = new Map(
    [...result.outputs].filter(([name]) => !name.startsWith(ROUTING_PREFIX)),
  );
  const routing = routingReport(result.outputs);
  if (options.output) {
    writeSafetensorsFile(options.output, weightsToSafetensors(modelOutputs), {
      model: result.model,
      backend: result.backend,
    });
  }
  if (options.traceRouting) {
    const trace = new Map<string, TypedTensor>();
    for (const [layer, stats] of routing)
      for (const [what, t] of stats) if (TRACE_OUTPUTS.has(what)) trace.set(`${layer}.${what}`, t);
    if (trace.size === 0)
      throw new CliError(
        "--trace-routing: the model has no MoE layer with per-token routing to trace (sparse or grouped)",
      );
    writeSafetensorsFile(options.traceRouting, weightsToSafetensors(trace), {
      model: result.model,
    });
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
