/**
 * Options shared by `moec compile` and `moec run`: which model, its parameter overrides
 * (`--set`) and the sizes of its free input dims (`--dim`), and lowering with them.
 */
import { hasErrors } from "../compiler/diagnostics.js";
import type { LoweredModel } from "../compiler/lower/lower-model.js";
import type { LoweredTrain } from "../compiler/lower/lower-train.js";
import type { PinReport } from "../compiler/lower/pin-groups.js";
import { type Analysis, analyze, lower, lowerTrain, nodeFileSystem } from "../compiler/pipeline.js";
import * as fs from "node:fs";
import { type SafetensorsFile, WeightsError, readSafetensorsFile } from "../runtime/safetensors.js";
import { resolveInputFiles } from "./check-command.js";
import { parseOverride } from "./params-command.js";
import { CliError, EXIT_USAGE, displayPath, printDiagnostics } from "./report.js";

export interface ModelOptions {
  model?: string;
  set?: string[];
  dim?: string[];
  json?: boolean;
  /** Lower with the MoE layers' routing outputs (moec run --stats / --trace-routing). */
  routing?: boolean;
  /** `--pin-groups LAYER=w1,w2,...` (repeatable): group weights of Grouped MoE layers. */
  pinGroups?: string[];
  /** `--merge-adapters`: LoRA on Linear bases merged into the base weights. */
  mergeAdapters?: boolean;
}

/** `blocks.2=0.7,0.3,0` → blocks.2 ↦ [0.7, 0.3, 0]: non-negative weights summing to 1. */
export function parsePins(specs: readonly string[] = []): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const spec of specs) {
    const m = /^([A-Za-z_][\w.]*)=(.+)$/.exec(spec);
    const weights = m ? m[2]!.split(",").map((w) => Number(w.trim())) : [];
    if (!m || weights.some((w) => !Number.isFinite(w) || w < 0)) {
      throw new CliError(
        `--pin-groups expects LAYER=w1,w2,... with non-negative weights, found "${spec}"`,
        EXIT_USAGE,
      );
    }
    const sum = weights.reduce((a, b) => a + b, 0);
    if (Math.abs(sum - 1) > 1e-6)
      throw new CliError(`--pin-groups ${m[1]}: the weights sum to ${sum}, not 1`, EXIT_USAGE);
    out.set(m[1]!, weights);
  }
  return out;
}

/** `--dim T=16` → T ↦ 16. */
export function parseDims(specs: readonly string[] = []): Map<string, number> {
  const dims = new Map<string, number>();
  for (const spec of specs) {
    const m = /^([\p{L}_][\p{L}\p{N}_]*)=(\d+)$/u.exec(spec);
    if (!m)
      throw new CliError(
        `--dim expects NAME=SIZE with a positive integer, found "${spec}"`,
        EXIT_USAGE,
      );
    const size = Number(m[2]);
    if (size < 1) throw new CliError(`--dim ${m[1]}: the size must be at least 1`, EXIT_USAGE);
    const before = dims.get(m[1]!);
    if (before !== undefined)
      throw new CliError(
        `--dim ${m[1]} is given twice (${m[1]}=${before} and ${m[1]}=${size}); give it once`,
        EXIT_USAGE,
      );
    dims.set(m[1]!, size);
  }
  return dims;
}

/**
 * Sizes that record which names lowering asks for: those are the model's free dims, so a
 * `--dim` never asked for names a dimension the model does not have.
 */
export class AskedDims extends Map<string, number> {
  readonly asked = new Set<string>();
  override get(name: string): number | undefined {
    this.asked.add(name);
    return super.get(name);
  }
}

/** A usage error for `--dim` names lowering never asked for (`given` are the user's). */
export function checkDimsUsed(dims: AskedDims, given: ReadonlySet<string>, what: string): void {
  const unused = [...given].filter((d) => !dims.asked.has(d));
  if (unused.length === 0) return;
  const free = [...dims.asked].sort();
  throw new CliError(
    `--dim ${unused.join(", ")}: ${what} has no free dimension ${unused.map((d) => `\`${d}\``).join(" or ")} (${free.length ? `its free dimensions: ${free.join(", ")}` : "it has none"})`,
    EXIT_USAGE,
  );
}

/** Commander collector for repeatable options. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/**
 * Checks the file and lowers one model at the given sizes. Diagnostics go to stderr and
 * become a CliError (exit 1) when there are errors.
 */
export function lowerFromSource(
  file: string,
  options: ModelOptions,
): { analysis: Analysis; lowered: LoweredModel; entry: string } {
  const { analysis, entry } = analyzeEntry(file);
  const dims = new AskedDims(parseDims(options.dim));
  const lowered = lowerAnalyzed(analysis, entry, options, dims);
  checkDimsUsed(dims, new Set(dims.keys()), `model ${lowered.name}`);
  return { analysis, lowered, entry: entry };
}

/**
 * Lowers one model of an analysed file at `dims` (a map that may compute sizes as they are
 * asked for: `moec export` probes the free dims with it). Errors as lowerFromSource.
 */
export function lowerAnalyzed(
  analysis: Analysis,
  entry: string,
  options: ModelOptions,
  dims: ReadonlyMap<string, number>,
): LoweredModel {
  const overrides = new Map((options.set ?? []).map(parseOverride));
  const result = lower(analysis, entry, options.model, overrides, dims, {
    routingStats: options.routing === true,
    pinGroups: parsePins(options.pinGroups),
    mergeAdapters: options.mergeAdapters === true,
  });
  if ("error" in result) throw new CliError(result.error.replace(entry, displayPath(entry)));
  if (hasErrors(result.diagnostics) || !result.model) {
    printDiagnostics(result.diagnostics, analysis);
    throw new CliError(`cannot lower ${displayPath(entry)}; see above`);
  }
  if (result.model.pins) throwPinProblems(result.model.pins);
  return result.model;
}

/**
 * An option value `[NAME=]PATH` (`--weights net=ckpt.safetensors`, `--adapter en_de=dir`): a
 * value that names an existing file or folder is a path as it is, `=` and all.
 */
export function splitNamedPath(spec: string): { name: string | undefined; path: string } {
  const m = /^([A-Za-z_][\w.]*)=(.+)$/.exec(spec);
  if (!m || fs.existsSync(spec)) return { name: undefined, path: spec };
  return { name: m[1]!, path: m[2]! };
}

/** `--pin-groups` that did not apply (a weight count off, a layer not found): one line. */
export function throwPinProblems(pins: PinReport): void {
  if (pins.problems.length) throw new CliError(pins.problems[0]!);
  if (pins.unused.length) {
    const layers = pins.groupedLayers.length
      ? `its Grouped MoE layers: ${pins.groupedLayers.join(", ")}`
      : "it has no Grouped MoE layer";
    throw new CliError(`--pin-groups ${pins.unused[0]}: no such layer in the model (${layers})`);
  }
}

/**
 * Checks the file and lowers one training program (`name`, or the file's first) at the given
 * sizes: its forward passes and losses. Errors as lowerFromSource.
 */
export function lowerTrainFromSource(
  file: string,
  name: string | undefined,
  options: Pick<ModelOptions, "set" | "dim">,
): { analysis: Analysis; train: LoweredTrain; entry: string } {
  const { analysis, entry } = analyzeEntry(file);
  const dims = parseDims(options.dim);
  const train = lowerTrainProgram(analysis, entry, name, options.set, dims, { given: dims });
  return { analysis, train, entry };
}

/** Parses and checks one entry file; errors are printed and become a CliError (exit 1). */
export function analyzeEntry(file: string): { analysis: Analysis; entry: string } {
  const [entry] = resolveInputFiles([file]);
  const analysis = analyze([entry!], nodeFileSystem());
  if (hasErrors(analysis.diagnostics)) {
    printDiagnostics(analysis.diagnostics, analysis);
    throw new CliError(`${displayPath(entry!)} has errors; see above`);
  }
  return { analysis, entry: entry! };
}

/** Lowers a training program of an analysed file at the given sizes; errors as above. */
export function lowerTrainProgram(
  analysis: Analysis,
  entry: string,
  name: string | undefined,
  set: readonly string[] | undefined,
  dims: ReadonlyMap<string, number>,
  options: { evaluation?: boolean; given?: ReadonlyMap<string, number> } = {},
): LoweredTrain {
  const overrides = new Map((set ?? []).map(parseOverride));
  const asked = new AskedDims(dims);
  const { given, ...lowering } = options;
  const result = lowerTrain(analysis, entry, name, overrides, asked, lowering);
  if ("error" in result) throw new CliError(result.error.replace(entry, displayPath(entry)));
  if (hasErrors(result.diagnostics) || !result.train) {
    printDiagnostics(result.diagnostics, analysis);
    throw new CliError(`cannot lower ${displayPath(entry)}; see above`);
  }
  if (given) checkDimsUsed(asked, new Set(given.keys()), `program ${result.train.name}`);
  return result.train;
}

/** A safetensors file named by option `what` (--weights, --data, ...); problems are one line. */
export function openTensors(file: string | undefined, what: string): SafetensorsFile | undefined {
  if (file === undefined) return undefined;
  if (!fs.existsSync(file)) throw new CliError(`${what} ${file}: no such file`);
  try {
    return readSafetensorsFile(file);
  } catch (err) {
    if (err instanceof WeightsError) throw new CliError(err.message);
    throw err;
  }
}
