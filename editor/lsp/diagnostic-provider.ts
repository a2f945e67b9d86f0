/**
 * Diagnostics as the protocol shows them: the CLI's code, message and span; its hint and its
 * related locations ("first defined here") as related information; the hint also in `data`
 * for the code actions.
 */
import {
  type Diagnostic as LspDiagnostic,
  DiagnosticSeverity,
  type DiagnosticRelatedInformation,
} from "vscode-languageserver/node";
import type { Diagnostic } from "../../compiler/diagnostics.js";
import type { EditorAnalysis } from "./analysis.js";
import { lineMapFor, pathToUri, spanToRange } from "./positions.js";

/** What a published diagnostic carries for code actions. */
export interface DiagnosticData {
  hint?: string;
}

/**
 * The diagnostics of `file`. A problem the elaboration finds inside the standard library
 * (`d / heads` not whole, inside Attention) is also shown at its use in the entry file, the
 * first "used here" location, with the library location as related information.
 */
export function toLspDiagnostics(
  analysis: EditorAnalysis,
  file: string,
  uriOf: (file: string) => string = pathToUri,
  isStdlib: (file: string) => boolean = () => false,
): LspDiagnostic[] {
  const text = analysis.textOf(file);
  if (text === undefined) return [];
  const map = lineMapFor(file, text);
  const out: LspDiagnostic[] = [];
  for (const d of analysis.diagnostics) {
    if (d.file === file) {
      out.push(toLspDiagnostic(d, spanToRange(map, d.span), analysis, uriOf));
      continue;
    }
    const use =
      file === analysis.entry && isStdlib(d.file)
        ? d.related?.find((r) => r.file === file)
        : undefined;
    if (!use) continue;
    const moved: Diagnostic = {
      ...d,
      file,
      span: use.span,
      related: [
        { file: d.file, span: d.span, message: "reported here" },
        ...(d.related ?? []).filter((r) => r !== use),
      ],
    };
    out.push(toLspDiagnostic(moved, spanToRange(map, use.span), analysis, uriOf));
  }
  return out;
}

function toLspDiagnostic(
  d: Diagnostic,
  range: LspDiagnostic["range"],
  analysis: EditorAnalysis,
  uriOf: (file: string) => string,
): LspDiagnostic {
  const related: DiagnosticRelatedInformation[] = [];
  for (const r of d.related ?? []) {
    const text = analysis.textOf(r.file);
    if (text === undefined) continue;
    related.push({
      location: { uri: uriOf(r.file), range: spanToRange(lineMapFor(r.file, text), r.span) },
      message: r.message,
    });
  }
  if (d.hint !== undefined) {
    related.push({ location: { uri: uriOf(d.file), range }, message: `hint: ${d.hint}` });
  }
  const out: LspDiagnostic = {
    range,
    severity:
      d.severity === "error"
        ? DiagnosticSeverity.Error
        : d.severity === "warning"
          ? DiagnosticSeverity.Warning
          : DiagnosticSeverity.Information,
    code: d.code,
    source: "moec",
    message: d.message,
  };
  if (related.length > 0) out.relatedInformation = related;
  if (d.hint !== undefined) out.data = { hint: d.hint } satisfies DiagnosticData;
  if (d.code === "W0501" || d.code === "W0503") out.tags = [1]; // Unnecessary
  return out;
}
