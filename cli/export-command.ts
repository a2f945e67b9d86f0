/**
 * `moec export FILE --format torch|onnx -o OUT`: hands a model to the engines people already
 * run (PyTorch for training on many GPUs, ONNX Runtime for serving). Each format is one
 * function producing the files to write; this command checks the options, names the output,
 * and writes every file atomically, so a failure leaves nothing half-written.
 */
import * as path from "node:path";
import { writeFileAtomic } from "../runtime/atomic-write.js";
import { exportOnnx } from "./export-onnx.js";
import { exportTorch } from "./export-torch.js";
import {
  type ExportHeader,
  type ExportOptions,
  type ExportFormat,
  MOEC_VERSION,
} from "./export-format.js";
import { CliError, EXIT_USAGE, checkOutputFile, displayPath, mapWriteErrors } from "./report.js";

export const EXPORT_FORMATS: ReadonlyMap<string, { extension: string; run: ExportFormat }> =
  new Map([
    ["torch", { extension: ".py", run: exportTorch }],
    ["onnx", { extension: ".onnx", run: exportOnnx }],
  ]);

export async function runExport(file: string, options: ExportOptions): Promise<number> {
  const format = options.format === undefined ? undefined : EXPORT_FORMATS.get(options.format);
  if (!format) {
    const given =
      options.format === undefined ? "no --format given" : `unknown --format "${options.format}"`;
    throw new CliError(`${given}; formats: ${[...EXPORT_FORMATS.keys()].join(", ")}`, EXIT_USAGE);
  }
  if (options.output !== undefined) checkOutputFile(options.output, "-o");
  const output = (model: string): string => {
    const out = options.output ?? `${model}${format.extension}`;
    if (options.output === undefined) checkOutputFile(out, "-o");
    return out;
  };
  const header = (model: string): ExportHeader => ({
    source: displayPath(path.resolve(file)),
    model,
    version: MOEC_VERSION,
  });
  const files = await format.run(file, options, output, header);
  // The files beside the main one first: a model file never names data that is not there.
  for (const f of [...files].reverse())
    mapWriteErrors(`-o ${f.path}`, () => writeFileAtomic(f.path, f.data));
  process.stderr.write(`wrote ${files.map((f) => displayPath(f.path)).join(", ")}\n`);
  return 0;
}
