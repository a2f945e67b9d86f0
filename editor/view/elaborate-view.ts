/**
 * The model `moec view` draws: one model of an analysed file instantiated as `moec params`
 * does (its parameter report), and again with every construction recorded (the boxes), as the
 * language server's block hovers do. Front end only: no lowering, no device.
 */
import type { Diagnostic } from "../../compiler/diagnostics.js";
import { hasErrors } from "../../compiler/diagnostics.js";
import { guardDepth } from "../../compiler/check/check-program.js";
import { selectModel } from "../../compiler/check/elaborate-model.js";
import { Evaluator } from "../../compiler/check/evaluator.js";
import type { Value } from "../../compiler/check/values.js";
import { STANDARD_LIBRARY } from "../../compiler/library/index.js";
import { type Analysis, elaborate, reportParams } from "../../compiler/pipeline.js";
import { type ModelView, buildModelView } from "./model-view.js";

export function modelViewOf(
  analysis: Analysis,
  entry: string,
  modelName: string | undefined,
  overrides: Map<string, Value>,
  dims: ReadonlyMap<string, number>,
): { view: ModelView } | { error: string } | { diagnostics: Diagnostic[] } {
  const result = elaborate(analysis, entry, modelName, overrides);
  if ("error" in result) return { error: result.error };
  if (hasErrors(result.diagnostics)) return { diagnostics: result.diagnostics };
  const chosen = selectModel(analysis.program, entry, modelName);
  if (typeof chosen === "string") return { error: chosen };
  const evaluator = new Evaluator(analysis.program, [], "elaborate", STANDARD_LIBRARY);
  evaluator.recordInstances = true;
  const found: Diagnostic[] = [];
  guardDepth(found, chosen.file, chosen.decl.span, () => {
    evaluator.elaborate(chosen.decl, chosen.file, overrides);
  });
  const sources = new Map<string, string>();
  for (const [file, mod] of analysis.graph.modules) sources.set(file, mod.text);
  const view = buildModelView({
    name: result.model.name,
    file: entry,
    instances: evaluator.instances,
    params: result.model.params,
    moes: result.model.moes,
    report: reportParams(result.model),
    sources,
    dims,
  });
  return { view };
}
