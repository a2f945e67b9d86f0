/**
 * Pass 4: instantiate a model with its parameter defaults (and `--set` overrides): every
 * component is expanded with concrete sizes, so checks that need numbers (k ≤ experts,
 * d divisible by heads) run, and every learnable tensor gets its dotted path and shape.
 */
import type { ComponentDecl, TrainDecl } from "../../grammar/ast.js";
import { type Diagnostic, diagnostic, suggest } from "../diagnostics.js";
import { Evaluator, type ParamRecord } from "./evaluator.js";
import type { MoeRecord, PrimitiveLibrary } from "./primitive-rule.js";
import type { ResolvedProgram } from "./resolve-names.js";
import type { Instance, Value } from "./values.js";

/** A model expanded to concrete parameters. */
export interface ElaboratedModel {
  name: string;
  file: string;
  root: Instance | undefined;
  params: ParamRecord[];
  moes: MoeRecord[];
  /** Task sets of the model's task inputs, with their members. */
  tasks: { set: string; members: string[] }[];
}

/** The models defined in the entry files (not imported ones), in source order. */
export function listModels(
  program: ResolvedProgram,
  files: readonly string[],
): { decl: ComponentDecl; file: string }[] {
  const out: { decl: ComponentDecl; file: string }[] = [];
  for (const file of files) {
    const scope = program.scopes.get(file);
    if (!scope) continue;
    for (const item of scope.module.ast.items) {
      if (item.kind === "ComponentDecl" && item.form === "model") out.push({ decl: item, file });
    }
  }
  return out;
}

/**
 * Picks the model to elaborate: by name, or the only/last model of the file. Returns a
 * one-line error message when there is none or the name is unknown.
 */
export function selectModel(
  program: ResolvedProgram,
  file: string,
  name: string | undefined,
): { decl: ComponentDecl; file: string } | string {
  const models = listModels(program, [file]);
  if (models.length === 0) return `${file} declares no model`;
  if (name === undefined) return models[models.length - 1]!;
  const m = models.find((x) => x.decl.name.name === name);
  if (m) return m;
  const close = suggest(
    name,
    models.map((x) => x.decl.name.name),
  );
  return `no model \`${name}\` in ${file}${close ? ` (did you mean \`${close}\`?)` : ""}; models: ${models.map((x) => x.decl.name.name).join(", ")}`;
}

export function elaborateModel(
  program: ResolvedProgram,
  model: { decl: ComponentDecl; file: string },
  overrides: Map<string, Value>,
  diagnostics: Diagnostic[],
  library: PrimitiveLibrary,
): ElaboratedModel {
  for (const key of overrides.keys()) {
    if (!model.decl.params.some((p) => p.name.name === key)) {
      diagnostics.push(
        diagnostic(
          "E0306",
          model.file,
          model.decl.name.span,
          `model ${model.decl.name.name} has no parameter \`${key}\``,
          {
            hint: `its parameters are (${model.decl.params.map((p) => p.name.name).join(", ")})`,
          },
        ),
      );
    }
  }
  const evaluator = new Evaluator(program, diagnostics, "elaborate", library);
  const root = evaluator.elaborate(model.decl, model.file, overrides);
  const tasks: { set: string; members: string[] }[] = [];
  for (const port of root?.inputs ?? []) {
    if (port.type.dtype !== "task" || port.type.taskSet === undefined) continue;
    const g = program.scopes.get(model.file)?.names.get(port.type.taskSet);
    if (g?.kind === "tasks")
      tasks.push({ set: g.decl.name.name, members: g.decl.members.map((m) => m.name) });
  }
  return {
    name: model.decl.name.name,
    file: model.file,
    root,
    params: evaluator.params,
    moes: evaluator.moes,
    tasks,
  };
}

/** The training programs of `file`, in source order. */
export function listTrainPrograms(
  program: ResolvedProgram,
  file: string,
): { decl: TrainDecl; file: string }[] {
  const scope = program.scopes.get(file);
  if (!scope) return [];
  return scope.module.ast.items
    .filter((item): item is TrainDecl => item.kind === "TrainDecl")
    .map((decl) => ({ decl, file }));
}

/**
 * Picks a training program: by name, or the file's first. Returns a one-line error naming
 * the programs there are when there is none or the name is unknown.
 */
export function selectTrainProgram(
  program: ResolvedProgram,
  file: string,
  name: string | undefined,
): { decl: TrainDecl; file: string } | string {
  const all = listTrainPrograms(program, file);
  if (all.length === 0) return `${file} declares no training program`;
  if (name === undefined) return all[0]!;
  const found = all.find((t) => t.decl.name.name === name);
  if (found) return found;
  const names = all.map((t) => t.decl.name.name);
  const close = suggest(name, names);
  return `no training program \`${name}\` in ${file}${close ? ` (did you mean \`${close}\`?)` : ""}; training programs: ${names.join(", ")}`;
}

/** E0306 for each override that names none of the program's parameters. */
export function checkTrainOverrides(
  train: { decl: TrainDecl; file: string },
  overrides: Map<string, Value>,
  diagnostics: Diagnostic[],
): void {
  const { decl, file } = train;
  for (const key of overrides.keys()) {
    if (decl.params.some((p) => p.name.name === key)) continue;
    diagnostics.push(
      diagnostic(
        "E0306",
        file,
        decl.name.span,
        `training program ${decl.name.name} has no parameter \`${key}\``,
        { hint: `its parameters are (${decl.params.map((p) => p.name.name).join(", ")})` },
      ),
    );
  }
}

/**
 * Instantiates a training program's body with its parameters' defaults (and overrides): every
 * parameter of the instances it binds, named under their bindings (`student.enc...`), frozen
 * where the instance is `frozen`. The result reads like a model's for the parameter report.
 */
export function elaborateTrain(
  program: ResolvedProgram,
  train: { decl: TrainDecl; file: string },
  overrides: Map<string, Value>,
  diagnostics: Diagnostic[],
  library: PrimitiveLibrary,
): ElaboratedModel {
  checkTrainOverrides(train, overrides, diagnostics);
  const evaluator = new Evaluator(program, diagnostics, "elaborate", library);
  const values = evaluator.evaluateTrainRoot(train.decl, train.file, overrides);
  // The task sets of its task-id inputs (`in task: Lang[B]`), as a model's.
  const tasks: { set: string; members: string[] }[] = [];
  for (const v of values?.values() ?? []) {
    if (v.k !== "tensor" || v.t.dtype !== "task" || v.t.taskSet === undefined) continue;
    if (tasks.some((t) => t.set === v.t.taskSet)) continue;
    const g = program.scopes.get(train.file)?.names.get(v.t.taskSet);
    if (g?.kind === "tasks")
      tasks.push({ set: g.decl.name.name, members: g.decl.members.map((m) => m.name) });
  }
  return {
    name: train.decl.name.name,
    file: train.file,
    root: undefined,
    params: evaluator.params,
    moes: evaluator.moes,
    tasks,
  };
}
