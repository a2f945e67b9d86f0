/**
 * The compiler, phase by phase. Read this file first: each phase is one pass in its own file,
 * takes the previous phase's output, and adds its diagnostics to one list.
 *
 *   source ─parse─▶ AST ─load─▶ module graph ─resolve─▶ scopes ─check─▶ typed program
 *          ─elaborate─▶ concrete model ─count─▶ parameter report
 *          ─lower─▶ tensor IR ─fuse─▶ kernels ─plan─▶ buffers, dispatches ─emit─▶ WGSL
 *   train:  ─lowerTrain─▶ forward + loss IR ─differentiate─▶ + gradients ─assemble─▶ + AdamW
 *          (one train-step graph, then fuse → plan → emit as above)
 *
 *   grammar/        parse (tokens, parser, CST → AST)
 *   compiler/check/ load, resolve, check, elaborate, count: the front end, pure, no IR
 *   compiler/library/ the standard library's primitives (routers, MoE, LoRA, AdamW), one
 *                   file per family: handed to check and lower as one table from here
 *   compiler/lower/ lower (the evaluator again, with the inliner's hooks) → compiler/ir/
 *   compiler/kernels/ fuse → plan → emit (compileGraph); the runtime executes the result
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { checkProgram, type CheckedProgram, guardDepth } from "./check/check-program.js";
import { countParams, type ParamReport } from "./check/count-params.js";
import { type Diagnostic, hasErrors } from "./diagnostics.js";
import {
  type ElaboratedModel,
  elaborateModel,
  elaborateTrain as elaborateTrainProgram,
  listModels,
  selectModel,
  selectTrainProgram,
} from "./check/elaborate-model.js";
import { type FileSystemView, type ModuleGraph, loadModules } from "./check/load-modules.js";
import { differentiateGraph } from "./ir/differentiate-graph.js";
import type { IrGraph } from "./ir/graph.js";
import { STANDARD_LIBRARY } from "./library/index.js";
import { assembleTrainStep } from "./library/optim/train-step.js";
import { type LowerOptions, type LoweredModel, lowerModel } from "./lower/lower-model.js";
import { type LoweredTrain, lowerTrain as lowerTrainProgram } from "./lower/lower-train.js";
import { type ResolvedProgram, resolveNames } from "./check/resolve-names.js";
import type { Value } from "./check/values.js";

/** Everything the front end knows about a set of entry files. */
export interface Analysis {
  graph: ModuleGraph;
  program: ResolvedProgram;
  checked: CheckedProgram;
  /** The entry files' models, instantiated with their defaults (when the check was clean). */
  models: ElaboratedModel[];
  diagnostics: Diagnostic[];
}

/**
 * Front end: parse, load imports, resolve names, check, then instantiate every model of the
 * entry files so checks that need concrete sizes run too. Pure over the file-system view.
 */
export function analyze(entries: readonly string[], fsView: FileSystemView): Analysis {
  const diagnostics: Diagnostic[] = [];
  const graph = loadModules(entries, fsView, diagnostics); // parse every module (grammar/parse.ts)
  const program = resolveNames(graph, diagnostics);
  const checked = checkProgram(program, diagnostics, STANDARD_LIBRARY);
  const models: ElaboratedModel[] = [];
  if (!hasErrors(diagnostics)) {
    const seen = new Set(diagnostics.map(diagnosticKey));
    for (const model of listModels(program, entries)) {
      const found: Diagnostic[] = [];
      guardDepth(found, model.file, model.decl.span, () => {
        models.push(elaborateModel(program, model, new Map(), found, STANDARD_LIBRARY));
      });
      for (const d of found) {
        if (!seen.has(diagnosticKey(d))) diagnostics.push(d);
        seen.add(diagnosticKey(d));
      }
    }
  }
  return { graph, program, checked, models, diagnostics };
}

function diagnosticKey(d: Diagnostic): string {
  return `${d.code}|${d.file}|${d.span.start}|${d.message}`;
}

/** Middle end: instantiate one model of an analysed file with concrete sizes. */
export function elaborate(
  analysis: Analysis,
  file: string,
  modelName: string | undefined,
  overrides: Map<string, Value> = new Map(),
): { model: ElaboratedModel; diagnostics: Diagnostic[] } | { error: string } {
  const chosen = selectModel(analysis.program, file, modelName);
  if (typeof chosen === "string") return { error: chosen };
  const diagnostics: Diagnostic[] = [];
  const model = elaborateModel(analysis.program, chosen, overrides, diagnostics, STANDARD_LIBRARY);
  return { model, diagnostics };
}

/** Middle end for a `train` program: its instances' parameters, for the parameter report. */
export function elaborateTrain(
  analysis: Analysis,
  file: string,
  programName: string | undefined,
  overrides: Map<string, Value> = new Map(),
): { model: ElaboratedModel; diagnostics: Diagnostic[] } | { error: string } {
  const chosen = selectTrainProgram(analysis.program, file, programName);
  if (typeof chosen === "string") return { error: chosen };
  const diagnostics: Diagnostic[] = [];
  let model: ElaboratedModel | undefined;
  guardDepth(diagnostics, chosen.file, chosen.decl.span, () => {
    model = elaborateTrainProgram(
      analysis.program,
      chosen,
      overrides,
      diagnostics,
      STANDARD_LIBRARY,
    );
  });
  // A program nested too deeply to evaluate reports E0105 and has no parameters.
  const empty = {
    name: chosen.decl.name.name,
    file,
    root: undefined,
    params: [],
    moes: [],
    tasks: [],
  };
  return { model: model ?? empty, diagnostics };
}

/**
 * Back end, first step: lower one model to the tensor IR with its free input dims bound
 * (`dims`: B, T, ...). The remaining steps (fuse → plan → emit WGSL) are compileGraph's.
 */
export function lower(
  analysis: Analysis,
  file: string,
  modelName: string | undefined,
  overrides: Map<string, Value>,
  dims: ReadonlyMap<string, number>,
  options: LowerOptions = {},
): { model: LoweredModel | undefined; diagnostics: Diagnostic[] } | { error: string } {
  const chosen = selectModel(analysis.program, file, modelName);
  if (typeof chosen === "string") return { error: chosen };
  const diagnostics: Diagnostic[] = [];
  let model: LoweredModel | undefined;
  guardDepth(diagnostics, chosen.file, chosen.decl.span, () => {
    model = lowerModel(
      analysis.program,
      chosen,
      overrides,
      dims,
      diagnostics,
      STANDARD_LIBRARY,
      options,
    );
  });
  return { model, diagnostics };
}

/**
 * Back end for a `train` program (`--program NAME`, default the file's first): its forward
 * passes and losses as one IR graph, with the optimizer's options and the parameters' flags.
 */
export function lowerTrain(
  analysis: Analysis,
  file: string,
  programName: string | undefined,
  overrides: Map<string, Value>,
  dims: ReadonlyMap<string, number>,
  /** `evaluation`: the forward and loss for held-out data, without dropout or router jitter. */
  options: { evaluation?: boolean } = {},
): { train: LoweredTrain | undefined; diagnostics: Diagnostic[] } | { error: string } {
  const chosen = selectTrainProgram(analysis.program, file, programName);
  if (typeof chosen === "string") return { error: chosen };
  const diagnostics: Diagnostic[] = [];
  let train: LoweredTrain | undefined;
  guardDepth(diagnostics, chosen.file, chosen.decl.span, () => {
    train = lowerTrainProgram(
      analysis.program,
      chosen,
      overrides,
      dims,
      diagnostics,
      STANDARD_LIBRARY,
      options,
    );
  });
  return { train, diagnostics };
}

/** One training step as IR: forward, loss, backward and the AdamW update. */
export interface TrainStepGraph {
  graph: IrGraph;
  /** Trainable parameters the step updates (those the loss depends on), in graph order. */
  updated: string[];
  /** Trainable parameters the loss does not reach: they keep their values, as in PyTorch. */
  unused: string[];
}

/**
 * Back end for training, after lowerTrain: differentiate the loss with respect to every
 * trainable parameter (ir/differentiate-graph.ts) and append the optimizer
 * (library/optim/train-step.ts). A program with nothing to train is an error, not a no-op.
 */
export function assembleTrain(train: LoweredTrain): TrainStepGraph | { error: string } {
  const trainable = train.params.filter((p) => p.trainable);
  if (trainable.length === 0)
    return {
      error: `every parameter of ${train.name} is frozen: there is nothing to train (drop \`frozen\` from the instances to train)`,
    };
  const { graph, gradients, unused } = differentiateGraph(train.graph, train.loss);
  if (gradients.size === 0)
    return {
      error: `the loss of ${train.name} does not depend on any trainable parameter (${trainable
        .slice(0, 3)
        .map((p) => p.name)
        .join(", ")}${trainable.length > 3 ? ", ..." : ""})`,
    };
  const { lr: _lr, ...adamw } = train.optimizer;
  const step = assembleTrainStep(graph, gradients, train.params, adamw, train.optimizerOrigin);
  return { graph: step, updated: [...gradients.keys()], unused };
}

/** Report: parameter table and budgets of an elaborated model. */
export function reportParams(model: ElaboratedModel): ParamReport {
  return countParams(model);
}

/** The package's stdlib/ folder, found from this module's location (source or dist/). */
export function findStdlibDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = path.join(dir, "stdlib");
    if (fs.existsSync(path.join(candidate, "nn.moe"))) return candidate;
    dir = path.dirname(dir);
  }
  throw new Error("internal: cannot find the moec standard library (stdlib/)");
}

/** A view of the real file system, with optional in-memory overrides (editor buffers). */
export function nodeFileSystem(overlay: ReadonlyMap<string, string> = new Map()): FileSystemView {
  const stdlibDir = findStdlibDir();
  return {
    stdlibDir,
    readFile(file) {
      const o = overlay.get(file);
      if (o !== undefined) return o;
      try {
        return fs.readFileSync(file, "utf8");
      } catch {
        return undefined;
      }
    },
    stdlibModules() {
      return fs
        .readdirSync(stdlibDir)
        .filter((f) => f.endsWith(".moe"))
        .map((f) => f.slice(0, -4))
        .sort();
    },
  };
}
