/**
 * `moec export --format torch`: the model as one self-contained Python module
 * (compiler/export/emit-torch.ts), checked and elaborated first so only a model `moec run`
 * accepts is exported. A construct with no PyTorch translation is one line, exit 1.
 */
import { hasErrors } from "../compiler/diagnostics.js";
import { type ElaboratedModel, selectModel } from "../compiler/check/elaborate-model.js";
import { TorchEmitter, TorchExportError } from "../compiler/export/emit-torch.js";
import { PinMatcher } from "../compiler/lower/pin-groups.js";
import { analyze, elaborate, nodeFileSystem } from "../compiler/pipeline.js";
import { resolveInputFiles } from "./check-command.js";
import type { ExportFormat } from "./export-format.js";
import { parsePins, throwPinProblems } from "./model-options.js";
import { parseOverride } from "./params-command.js";
import { CliError, displayPath, printDiagnostics } from "./report.js";

/**
 * `--pin-groups` against the model's Grouped MoE layers, matched and reported as lowering
 * does for `moec run`: the weights of each pinned layer, by its path.
 */
function resolvePins(
  specs: readonly string[] | undefined,
  model: ElaboratedModel,
): Map<string, number[]> {
  const matcher = new PinMatcher(parsePins(specs));
  const out = new Map<string, number[]>();
  for (const m of model.moes) {
    if (m.router !== "Grouped") continue;
    // Experts are `<layer>.experts.<group>.<expert>`: the groups are the distinct <group>s.
    const groups = new Set(m.experts.map((e) => e.slice(m.path.length + 1).split(".")[1])).size;
    const weights = matcher.weightsFor(m.path, groups);
    if (weights) out.set(m.path, weights);
  }
  throwPinProblems(matcher.report());
  return out;
}

export const exportTorch: ExportFormat = async (file, options, output, header) => {
  const [entry] = resolveInputFiles([file]);
  const overrides = new Map((options.set ?? []).map(parseOverride));
  const analysis = analyze([entry!], nodeFileSystem());
  if (hasErrors(analysis.diagnostics)) {
    printDiagnostics(analysis.diagnostics, analysis);
    throw new CliError(`${displayPath(entry!)} has errors; nothing exported`);
  }
  // Elaborating checks the sizes (`--set` included) as `moec run` would.
  const result = elaborate(analysis, entry!, options.model, overrides);
  if ("error" in result) throw new CliError(result.error.replace(entry!, displayPath(entry!)));
  if (hasErrors(result.diagnostics)) {
    printDiagnostics(result.diagnostics, analysis);
    throw new CliError(`${displayPath(entry!)} has errors; nothing exported`);
  }
  const pins = resolvePins(options.pinGroups, result.model);
  const chosen = selectModel(analysis.program, entry!, options.model);
  if (typeof chosen === "string") throw new CliError(chosen);
  const name = chosen.decl.name.name;
  const out = output(name);
  const h = header(name);
  let text: string;
  try {
    text = new TorchEmitter(analysis.program).emit({
      program: analysis.program,
      model: chosen,
      overrides,
      mergeAdapters: options.mergeAdapters === true,
      pins,
      header: [
        `${h.model}: exported from ${h.source} by moec ${h.version} (moec export --format torch).`,
      ],
    });
  } catch (e) {
    if (e instanceof TorchExportError)
      throw new CliError(e.message.replace(/^[^:]+/, (p) => displayPath(p)));
    throw e;
  }
  return [{ path: out, data: text }];
};
