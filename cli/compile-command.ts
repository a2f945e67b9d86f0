/**
 * `moec compile FILE`: lowers a model at fixed sizes and writes a bundle (manifest, IR, plan,
 * one WGSL file per kernel), or prints one stage with `--emit ast|ir|wgsl|plan`. With
 * `--program [NAME]` it lowers a training program instead (forward passes and losses), which
 * prints with `--emit ast|ir` (the whole train step: forward, loss, backward, AdamW).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { printGraph } from "../compiler/ir/print.js";
import { assembleTrain } from "../compiler/pipeline.js";
import { compileForBundle, writeBundle } from "./bundle.js";
import { type ModelOptions, lowerFromSource, lowerTrainFromSource } from "./model-options.js";
import { LimitError } from "../compiler/kernels/plan-buffers.js";
import {
  CliError,
  EXIT_USAGE,
  EXIT_USER_ERROR,
  checkOutputFolder,
  displayPath,
  mapWriteErrors,
} from "./report.js";

export interface CompileOptions extends ModelOptions {
  output?: string;
  emit?: string;
  /** `--program [NAME]`: a training program (true: the file's first). */
  program?: string | boolean;
}

const STAGES = ["ast", "ir", "wgsl", "plan"] as const;

export function runCompile(file: string, options: CompileOptions): number {
  const emit = options.emit;
  if (emit !== undefined && !(STAGES as readonly string[]).includes(emit)) {
    throw new CliError(`--emit must be one of ${STAGES.join(", ")}, found "${emit}"`, EXIT_USAGE);
  }
  if (options.program !== undefined) return compileTrain(file, options, emit);
  // The output folder is checked before any work, when its default does not need the model.
  const bundleFolder = {
    kind: "a moec bundle",
    test: (dir: string) => fs.existsSync(path.join(dir, "manifest.json")),
  };
  if (emit === undefined && options.output !== undefined)
    checkOutputFolder(options.output, "-o", bundleFolder);
  const { analysis, lowered, entry } = lowerFromSource(file, options);
  if (emit === "ast") {
    const ast = analysis.graph.modules.get(entry)!.ast;
    process.stdout.write(JSON.stringify(ast, null, 2) + "\n");
    return 0;
  }
  if (emit === "ir") {
    process.stdout.write(printGraph(lowered.graph));
    return 0;
  }
  let code;
  try {
    code = compileForBundle(lowered.graph);
  } catch (err) {
    // Too large for WebGPU's default limits (the bundle's target): the sizes asked for, not a bug.
    if (err instanceof LimitError) throw new CliError(err.message, EXIT_USER_ERROR);
    throw err;
  }
  if (emit === "wgsl") {
    for (const k of code.kernels) process.stdout.write(`// ---- kernel ${k.name}\n${k.wgsl}\n`);
    return 0;
  }
  if (emit === "plan") {
    process.stdout.write(JSON.stringify(code.plan, null, 2) + "\n");
    return 0;
  }
  const out = options.output ?? `${lowered.name.toLowerCase()}.moec`;
  if (options.output === undefined) checkOutputFolder(out, "the bundle", bundleFolder);
  mapWriteErrors(`${options.output === undefined ? "the bundle" : "-o"} ${out}`, () =>
    writeBundle(out, lowered, displayPath(entry), code),
  );
  const dims = [...lowered.dims].map(([k, v]) => `${k}=${v}`).join(", ");
  const lines = [
    `compiled ${lowered.name} (${dims || "no free dims"}): ${code.kernels.length} kernels, ${lowered.graph.nodes.length} IR nodes`,
  ];
  if (code.memory) {
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
    lines.push(
      `device memory: peak ${mib(code.memory.peakBytes)} for ${mib(code.memory.tensorBytes)} of tensors`,
    );
  }
  lines.push(`wrote ${displayPath(path.resolve(out))}/`);
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

/**
 * A training program: `--emit ir` prints the whole train step (forward, loss, backward and
 * AdamW) as `moec train` runs it; `--emit ast` the file's syntax tree.
 */
function compileTrain(file: string, options: CompileOptions, emit: string | undefined): number {
  if (options.model !== undefined)
    throw new CliError("--model and --program exclude each other", EXIT_USAGE);
  if (emit !== "ir" && emit !== "ast") {
    throw new CliError(
      "a training program compiles with --emit ir or --emit ast; to run it, use moec train",
      EXIT_USAGE,
    );
  }
  const name = typeof options.program === "string" ? options.program : undefined;
  const { analysis, train, entry } = lowerTrainFromSource(file, name, options);
  if (emit === "ast") {
    const ast = analysis.graph.modules.get(entry)!.ast;
    process.stdout.write(JSON.stringify(ast, null, 2) + "\n");
    return 0;
  }
  const step = assembleTrain(train);
  if ("error" in step) throw new CliError(step.error);
  process.stdout.write(printGraph(step.graph));
  return 0;
}
