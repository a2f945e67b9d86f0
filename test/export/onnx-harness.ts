// Shared by the ONNX export tests: export a .moe file in-process, run the model with
// onnxruntime-node (CPU, every graph optimisation on) and compare each output with the
// reference interpreter on the same weights and inputs (`moec run --backend reference`).
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type * as Ort from "onnxruntime-node";
import { type OnnxExport, exportOnnxModel } from "../../cli/export-onnx.js";
import type { ExportOptions } from "../../cli/export-format.js";
import { lowerFromSource } from "../../cli/model-options.js";
import { prepareInputs, runReference } from "../../runtime/run-model.js";
import type { TypedTensor } from "../../runtime/weights.js";
import { relL2 } from "../rel-l2.js";
export { relL2 };

const ort: typeof Ort = await import("onnxruntime-node");

/** A scratch folder removed when the process exits. */
export function scratchDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-onnx-"));
  process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes `source` as a .moe file in `dir`; its path. */
export function writeModel(dir: string, name: string, source: string): string {
  const file = path.join(dir, `${name}.moe`);
  fs.writeFileSync(file, source);
  return file;
}

export function exportTo(
  file: string,
  out: string,
  options: ExportOptions = {},
  thresholdBytes?: number,
): OnnxExport {
  return exportOnnxModel(
    file,
    { format: "onnx", ...options },
    () => out,
    (model) => ({ source: file, model, version: "test" }),
    thresholdBytes,
  );
}

export async function session(model: Uint8Array | string): Promise<Ort.InferenceSession> {
  const opts: Ort.InferenceSession.SessionOptions = {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "all",
  };
  return typeof model === "string"
    ? ort.InferenceSession.create(model, opts)
    : ort.InferenceSession.create(model, opts);
}

/**
 * Runs the exported model at `dims` and the reference on the same weights and seeded inputs
 * (`ints` fixes integer inputs); the relative L2 error per output.
 */
export async function compareAt(
  file: string,
  exported: OnnxExport,
  s: Ort.InferenceSession,
  dims: Record<string, number>,
  options: ExportOptions = {},
  ints: Record<string, number[]> = {},
): Promise<Record<string, number>> {
  const { lowered } = lowerFromSource(file, {
    ...options,
    dim: Object.entries(dims).map(([k, v]) => `${k}=${v}`),
  });
  const inputs = prepareInputs(lowered.inputs, undefined, 7, undefined);
  for (const [name, values] of Object.entries(ints)) {
    const t = inputs.get(name)!;
    inputs.set(name, { ...t, data: Int32Array.from(values) });
  }
  const want = runReference(lowered.graph, exported.weights, inputs);
  const feeds: Record<string, Ort.Tensor> = {};
  for (const [name, t] of inputs) feeds[name] = tensor(t);
  const got = await s.run(feeds);
  const out: Record<string, number> = {};
  for (const [name, w] of want) {
    const g = got[name]!;
    if (g.dims.join(",") !== w.shape.join(","))
      throw new Error(`${name}: ONNX shape [${g.dims}] vs reference [${w.shape}]`);
    out[name] = relL2(g.data as ArrayLike<number>, w.data);
  }
  return out;
}

function tensor(t: TypedTensor): Ort.Tensor {
  return t.dtype === "i32"
    ? new ort.Tensor("int32", Int32Array.from(t.data as ArrayLike<number>), t.shape)
    : new ort.Tensor("float32", Float32Array.from(t.data as ArrayLike<number>), t.shape);
}
