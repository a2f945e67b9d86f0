/**
 * One analysis of an open document, as the language server keeps it: the front end's result
 * for the document as entry file (its imports included), exactly as `moec check` computes it,
 * and what the providers derive from it lazily, on the first request that needs it: the
 * inferred types of one body's expressions and the declaration of every name (the checker
 * run again over that body or that file with its recording on), parameter reports.
 *
 * Recording only on request keeps the re-check after a keystroke to the diagnostics' work.
 */
import type { ComponentDecl, Expr, TrainDecl } from "../../grammar/ast.js";
import { checkProgram, guardDepth } from "../../compiler/check/check-program.js";
import { countParams, type ParamReport } from "../../compiler/check/count-params.js";
import { type Diagnostic, hasErrors } from "../../compiler/diagnostics.js";
import {
  type ElaboratedModel,
  elaborateModel,
  elaborateTrain,
  listModels,
} from "../../compiler/check/elaborate-model.js";
import { Evaluator, type NameReference } from "../../compiler/check/evaluator.js";
import {
  type FileSystemView,
  type ModuleGraph,
  type ParseFunction,
  loadModules,
} from "../../compiler/check/load-modules.js";
import { type ResolvedProgram, resolveNames } from "../../compiler/check/resolve-names.js";
import type { Unifier } from "../../compiler/check/unify.js";
import type { Instance, Value } from "../../compiler/check/values.js";
import type { CheckCache } from "./check-cache.js";
import { SymbolIndex } from "./symbol-index.js";
import { STANDARD_LIBRARY } from "../../compiler/library/index.js";

/** The inferred values of the expressions of one body, and the unifier that resolves their shapes. */
export interface BodyTypes {
  types: ReadonlyMap<Expr, Value>;
  unifier: Unifier;
}

/** The parameter count of one instance of a block, found by elaborating a model that uses it. */
export interface BlockParams {
  /** Where the counted instance sits (`blocks.0.ffn` in model `Translator`). */
  model: string;
  path: string;
  /** Its constructor arguments, as written by the elaboration (`d = 256`). */
  args: Map<string, string>;
  total: number;
  trainable: number;
  /** How many instances of the block the model has. */
  instances: number;
}

export class EditorAnalysis {
  private symbolIndex?: SymbolIndex;
  private reports?: Map<string, ParamReport>;
  private instanceRecords?: { model: string; evaluator: Evaluator }[];
  private readonly bodyTypeCache = new Map<ComponentDecl | TrainDecl, BodyTypes>();
  private readonly trainModels = new Map<TrainDecl, ElaboratedModel | undefined>();

  constructor(
    readonly entry: string,
    /** The entry's text this analysis saw. */
    readonly text: string,
    readonly version: number,
    readonly graph: ModuleGraph,
    readonly program: ResolvedProgram,
    readonly models: ElaboratedModel[],
    readonly diagnostics: Diagnostic[],
    /** Milliseconds the front end took. */
    readonly elapsedMs: number,
  ) {}

  /**
   * The types of the expressions of one block, model or training program, from a check of
   * that body alone with `recordTypes` (the checker is deterministic per body).
   */
  bodyTypes(file: string, body: ComponentDecl | TrainDecl): BodyTypes {
    let cached = this.bodyTypeCache.get(body);
    if (!cached) {
      const evaluator = new Evaluator(this.program, [], "check", STANDARD_LIBRARY);
      evaluator.recordTypes = true;
      guardDepth([], file, body.span, () => {
        if (body.kind === "ComponentDecl") evaluator.checkComponent(body, file);
        else evaluator.checkTrain(body, file);
      });
      cached = { types: evaluator.types, unifier: evaluator.unifier };
      this.bodyTypeCache.set(body, cached);
    }
    return cached;
  }

  /** The inferred value of an expression of `file`, with the unifier to resolve its shape. */
  typeOf(file: string, e: Expr): { value: Value; unifier: Unifier } | undefined {
    const items = this.graph.modules.get(file)?.ast.items ?? [];
    const body = items.find((i) => i.span.start <= e.span.start && e.span.end <= i.span.end);
    if (!body || (body.kind !== "ComponentDecl" && body.kind !== "TrainDecl")) return undefined;
    const bt = this.bodyTypes(file, body);
    const value = bt.types.get(e);
    return value ? { value, unifier: bt.unifier } : undefined;
  }

  /** Every name use of the entry file with its declaration (the entry's bodies checked again, recording). */
  entryReferences(): NameReference[] {
    const mod = this.graph.modules.get(this.entry);
    if (!mod) return [];
    const evaluator = new Evaluator(this.program, [], "check", STANDARD_LIBRARY);
    evaluator.recordReferences = true;
    for (const item of mod.ast.items) {
      guardDepth([], this.entry, item.span, () => {
        if (item.kind === "ComponentDecl") evaluator.checkComponent(item, this.entry);
        else if (item.kind === "TrainDecl") evaluator.checkTrain(item, this.entry);
      });
    }
    return evaluator.references;
  }

  /** Whether the entry text has syntax errors (then the last clean analysis answers requests). */
  get syntaxErrors(): boolean {
    return this.diagnostics.some((d) => d.file === this.entry && d.code.startsWith("E01"));
  }

  textOf(file: string): string | undefined {
    return this.graph.modules.get(file)?.text;
  }

  get index(): SymbolIndex {
    this.symbolIndex ??= new SymbolIndex(this);
    return this.symbolIndex;
  }

  /** `moec params` report of each elaborated model of the entry, by model name. */
  paramReports(): Map<string, ParamReport> {
    if (!this.reports) {
      this.reports = new Map();
      for (const m of this.models) this.reports.set(m.name, countParams(m));
    }
    return this.reports;
  }

  /**
   * A training program instantiated with its defaults, as `moec params --program` does (its
   * parameters, frozen ones frozen, and its MoE layers with their routers' aux-loss weights);
   * undefined while the document has errors. Once per analysis, on the first hover of its loss.
   */
  trainModel(decl: TrainDecl, file: string): ElaboratedModel | undefined {
    if (hasErrors(this.diagnostics)) return undefined;
    if (!this.trainModels.has(decl)) {
      const found: Diagnostic[] = [];
      let model: ElaboratedModel | undefined;
      guardDepth(found, file, decl.span, () => {
        model = elaborateTrain(this.program, { decl, file }, new Map(), found, STANDARD_LIBRARY);
      });
      this.trainModels.set(decl, hasErrors(found) ? undefined : model);
    }
    return this.trainModels.get(decl);
  }

  /**
   * Parameters of one instance of `block`: the entry's models are elaborated again with every
   * construction recorded (once per analysis, on the first hover that needs it); a block no
   * model uses is elaborated on its own when all its parameters have defaults.
   */
  blockParams(block: ComponentDecl, file: string): BlockParams | undefined {
    if (hasErrors(this.diagnostics)) return undefined;
    if (!this.instanceRecords) {
      this.instanceRecords = [];
      for (const m of listModels(this.program, [this.entry])) {
        const evaluator = new Evaluator(this.program, [], "elaborate", STANDARD_LIBRARY);
        evaluator.recordInstances = true;
        guardDepth([], m.file, m.decl.span, () => {
          evaluator.elaborate(m.decl, m.file, new Map());
        });
        this.instanceRecords.push({ model: m.decl.name.name, evaluator });
      }
    }
    for (const { model, evaluator } of this.instanceRecords) {
      const found = evaluator.instances.filter((i) => i.decl === block && i.path !== undefined);
      if (found.length === 0) continue;
      return countInstance(model, found[0]!, found.length, evaluator);
    }
    if (block.params.every((p) => p.default !== undefined)) {
      const evaluator = new Evaluator(this.program, [], "elaborate", STANDARD_LIBRARY);
      let root: Instance | undefined;
      guardDepth([], file, block.span, () => {
        root = evaluator.elaborate(block, file, new Map());
      });
      if (root) return countInstance(block.name.name, root, 1, evaluator);
    }
    return undefined;
  }
}

function countInstance(
  model: string,
  inst: Instance,
  instances: number,
  evaluator: Evaluator,
): BlockParams {
  const prefix = inst.path ?? "";
  let total = 0;
  let trainable = 0;
  for (const p of evaluator.params) {
    if (prefix !== "" && p.path !== prefix && !p.path.startsWith(prefix + ".")) continue;
    const n = p.shape.reduce((a, b) => a * b, 1);
    total += n;
    if (p.trainable) trainable += n;
  }
  const args = new Map<string, string>();
  for (const [name, v] of inst.args) {
    if (v.k === "int" || v.k === "float" || v.k === "bool" || v.k === "enum") {
      const text = describeScalar(v);
      if (text !== undefined) args.set(name, text);
    }
  }
  return { model, path: prefix, args, total, trainable, instances };
}

function describeScalar(v: Value): string | undefined {
  switch (v.k) {
    case "int": {
      const c = [...v.v.entries()];
      return c.length === 1 && c[0]![0] === "" ? String(c[0]![1]) : undefined;
    }
    case "float":
      return v.v === undefined ? undefined : String(v.v);
    case "bool":
      return v.v === undefined ? undefined : String(v.v);
    case "enum":
      return v.member;
    default:
      return undefined;
  }
}

/**
 * The front end for one open document, as `analyze()` in compiler/pipeline.ts runs it (the
 * same phases and the same diagnostics, checked by test/editor/analysis.test.ts), with parses
 * served from the server's cache and, with a `CheckCache`, only the edited body checked again
 * when that gives exactly checkProgram's result.
 */
export function analyzeDocument(
  entry: string,
  version: number,
  fsView: FileSystemView,
  parse: ParseFunction,
  checkCache?: CheckCache,
): EditorAnalysis {
  const t0 = performance.now();
  const diagnostics: Diagnostic[] = [];
  const graph = loadModules([entry], fsView, diagnostics, parse);
  const program = resolveNames(graph, diagnostics);
  if (checkCache) checkCache.check(program, entry, diagnostics);
  else checkProgram(program, diagnostics, STANDARD_LIBRARY);
  const models: ElaboratedModel[] = [];
  if (!hasErrors(diagnostics)) {
    const seen = new Set(diagnostics.map(diagnosticKey));
    for (const model of listModels(program, [entry])) {
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
  const text = graph.modules.get(entry)?.text ?? fsView.readFile(entry) ?? "";
  return new EditorAnalysis(
    entry,
    text,
    version,
    graph,
    program,
    models,
    diagnostics,
    performance.now() - t0,
  );
}

function diagnosticKey(d: Diagnostic): string {
  return `${d.code}|${d.file}|${d.span.start}|${d.message}`;
}
