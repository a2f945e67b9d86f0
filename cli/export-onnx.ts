/**
 * `moec export FILE --format onnx [--dim B=..]... -o model.onnx`: the lowered model as an ONNX
 * graph (compiler/export/onnx-model.ts), its weights as initializers (prepared as `moec run`
 * prepares them), or as external data beside the file when they pass 2 GB.
 *
 * Free dims not given with --dim stay symbolic: the model is lowered at a base size, at another
 * size per free dim and at a check size (compiler/export/onnx-dims.ts says how the
 * graphs are compared); a size that does not follow them is an error asking for --dim.
 */
import * as path from "node:path";
import { LineMap } from "../compiler/diagnostics.js";
import { NotSymbolicError, SymbolicSizes } from "../compiler/export/onnx-dims.js";
import { ONNX_OPSET, UnmappableOpError, buildOnnxModel } from "../compiler/export/onnx-model.js";
import type { IrGraph } from "../compiler/ir/graph.js";
import type { LoweredModel } from "../compiler/lower/lower-model.js";
import type { Analysis } from "../compiler/pipeline.js";
import { prepareWeights } from "../runtime/run-model.js";
import { type TypedTensor, WeightsError } from "../runtime/weights.js";
import {
  AskedDims,
  type ModelOptions,
  analyzeEntry,
  checkDimsUsed,
  lowerAnalyzed,
  parseDims,
} from "./model-options.js";
import type { ExportHeader } from "./export-format.js";
import { CliError, displayPath, sourcesOf } from "./report.js";
import { type WeightOptions, openRunWeights, parseSeed } from "./run-command.js";

/**
 * The free dims' sizes the lowerings compare (see the file comment): no number above 1 divides
 * all three, so a model that pads a dim to a multiple of something shows it at some of them.
 */
const BASE_SIZE = 5;
const PROBE_SIZE = 7;
const CHECK_SIZE = 6;

/** ONNX's protobuf limit: a model past it keeps its weights in a file beside it. */
export const EXTERNAL_DATA_THRESHOLD = 2 ** 31 - 2 ** 24;

/**
 * The options `moec export --format onnx` reads (export-command.ts's ExportOptions has them;
 * they are spelled out here so this file does not import the command that imports it).
 */
export interface OnnxExportOptions extends ModelOptions, WeightOptions {
  initMissing?: boolean;
  allowNonfinite?: boolean;
  seed?: string;
}

/** What an ONNX export made, for the command and for tests. */
export interface OnnxExport {
  model: string;
  /** The model file's bytes (files[0]'s data). */
  modelBytes: Uint8Array;
  /** The model file first, then its external data file if it has one. */
  files: { path: string; data: Uint8Array | Uint8Array[] }[];
  /** The dims left symbolic, and those fixed (by --dim) with their sizes. */
  symbolic: string[];
  fixed: Map<string, number>;
  /** The weights written, by parameter path. */
  weights: Map<string, TypedTensor>;
}

/** Sizes for lowering: given ones, `free` for any other name asked for (recorded). */
class FreeDims extends AskedDims {
  constructor(
    given: ReadonlyMap<string, number>,
    private readonly free: (name: string) => number,
  ) {
    super(given);
  }
  override get(name: string): number | undefined {
    return super.get(name) ?? this.free(name);
  }
}

/**
 * Exports `file`'s model; `thresholdBytes` (tests lower it) is the initializer size above
 * which the weights go to `<out>.data`.
 */
export function exportOnnxModel(
  file: string,
  options: OnnxExportOptions,
  output: (model: string) => string,
  header: (model: string) => ExportHeader,
  thresholdBytes = EXTERNAL_DATA_THRESHOLD,
): OnnxExport {
  const seed = parseSeed(options.seed);
  const { analysis, entry } = analyzeEntry(file);
  const given = parseDims(options.dim);
  const lowerAt = (sizes: (name: string) => number) => {
    const dims = new FreeDims(given, sizes);
    const lowered = lowerAnalyzed(analysis, entry, options, dims);
    return { lowered, dims };
  };
  const base = lowerAt(() => BASE_SIZE);
  checkDimsUsed(base.dims, new Set(given.keys()), `model ${base.lowered.name}`);
  const fixed = new Map(given);
  const free = [...base.dims.asked].filter((d) => !given.has(d)).sort();
  const probe = (dim: string, size: number): LoweredModel => {
    try {
      return lowerAt((d) => (d === dim ? size : BASE_SIZE)).lowered;
    } catch (err) {
      if (err instanceof CliError)
        throw notSymbolic([dim], `the model does not lower at ${dim}=${size}`);
      throw err;
    }
  };
  const sizes =
    free.length === 0
      ? new SymbolicSizes(base.lowered.graph)
      : new SymbolicSizes(base.lowered.graph, {
          baseSize: BASE_SIZE,
          probeSize: PROBE_SIZE,
          perDim: new Map(free.map((d) => [d, probe(d, PROBE_SIZE).graph])),
          checkSize: CHECK_SIZE,
          check: (() => {
            try {
              return lowerAt(() => CHECK_SIZE).lowered.graph;
            } catch (err) {
              if (err instanceof CliError)
                throw notSymbolic(free, `the model does not lower at size ${CHECK_SIZE}`);
              throw err;
            }
          })(),
        });
  for (const [dim, why] of sizes.structural) throw notSymbolic([dim], why);

  const model = base.lowered.name;
  const out = output(model);
  let weights: Map<string, TypedTensor>;
  try {
    const file = openRunWeights(base.lowered.graph, base.lowered.loras, options);
    weights = prepareWeights(base.lowered.graph, file, seed, {
      allowNonFinite: options.allowNonfinite === true,
      ...(options.initMissing ? { missing: "init" } : {}),
    });
  } catch (err) {
    if (err instanceof WeightsError) throw new CliError(err.message);
    throw err;
  }
  const h = header(model);
  const dataName = `${path.basename(out)}.data`;
  let built: { model: Uint8Array; data?: Uint8Array[] };
  try {
    built = buildOnnxModel({
      name: model,
      sizes,
      weights,
      header: {
        opset: ONNX_OPSET,
        producerName: "moec",
        producerVersion: h.version,
        docString: `model ${h.model} from ${h.source}, exported by moec ${h.version}`,
        metadata: {
          source: h.source,
          model: h.model,
          moec_version: h.version,
          ...Object.fromEntries([...fixed].map(([d, v]) => [`dim.${d}`, String(v)])),
          ...(free.length ? { symbolic_dims: free.join(",") } : {}),
        },
      },
      external: { location: dataName, thresholdBytes },
    });
  } catch (err) {
    if (err instanceof UnmappableOpError)
      throw new CliError(`cannot export ${model} to ONNX: ${err.message}`);
    if (err instanceof NotSymbolicError) {
      const at =
        err.node === undefined ? undefined : locate(base.lowered.graph, err.node, analysis);
      throw notSymbolic(err.dims, `${err.reason}${at ? `; lowered from ${at}` : ""}`);
    }
    throw err;
  }
  const files: OnnxExport["files"] = [{ path: out, data: built.model }];
  if (built.data) files.push({ path: path.join(path.dirname(out), dataName), data: built.data });
  return { model, modelBytes: built.model, files, symbolic: free, fixed, weights };
}

/** `file:line:col` of the source an IR node was lowered from, where lowering recorded it. */
function locate(graph: IrGraph, node: number, analysis: Analysis): string | undefined {
  const origin = graph.origins?.[node];
  const text = origin && sourcesOf(analysis).get(origin.file);
  if (!origin || text === undefined) return undefined;
  const { line, column } = new LineMap(text).lineColumn(origin.start);
  return `${displayPath(origin.file)}:${line}:${column}`;
}

function notSymbolic(dims: readonly string[], why: string): CliError {
  const list = dims.map((d) => `\`${d}\``).join(", ");
  const hint = dims.map((d) => `--dim ${d}=SIZE`).join(" ");
  return new CliError(
    `${list} cannot stay a symbolic ONNX dimension (${why}); fix ${dims.length > 1 ? "them" : "it"} with ${hint}`,
  );
}

/** The format's entry in export-command.ts's table: the files to write. */
export const exportOnnx = (
  file: string,
  options: OnnxExportOptions,
  output: (model: string) => string,
  header: (model: string) => ExportHeader,
): Promise<OnnxExport["files"]> =>
  Promise.resolve(exportOnnxModel(file, options, output, header).files);
