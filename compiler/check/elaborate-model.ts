/**
 * Pass 4: instantiate a model with its parameter defaults (and `--set` overrides): every
 * component is expanded with concrete sizes, so checks that need numbers (k ≤ experts,
 * d divisible by heads) run, and every learnable tensor gets its dotted path and shape.
 */
import type { ComponentDecl } from "../../grammar/ast.js";
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
