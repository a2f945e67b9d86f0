/**
 * A code lens over each model: its parameter count from elaboration with the defaults, the
 * parameters a token activates when it has mixtures of experts, and each task's extra share
 * of the backbone (`params: 124.4M · active/token 40.2M (per task +0.8%)`). While the file has
 * errors, the last count of a model with the same name is shown.
 */
import type { CodeLens } from "vscode-languageserver/node";
import type { ParamReport } from "../../compiler/check/count-params.js";
import { shortCount } from "./symbol-text.js";
import type { DocumentView } from "./workspace.js";

export function codeLenses(view: DocumentView, lastReports: Map<string, ParamReport>): CodeLens[] {
  const ast = view.analysis.graph.modules.get(view.file)?.ast;
  if (!ast) return [];
  const out: CodeLens[] = [];
  for (const item of ast.items) {
    if (item.kind !== "ComponentDecl" || item.form !== "model") continue;
    const r = view.analysis.paramReports().get(item.name.name) ?? lastReports.get(item.name.name);
    const loc = view.location(view.file, item.name.span);
    if (!r || !loc) continue;
    out.push({ range: loc.range, command: { title: lensTitle(r), command: "" } });
  }
  return out;
}

export function lensTitle(r: ParamReport): string {
  let title = `params: ${shortCount(r.total)}`;
  if (r.frozen > 0) title += ` (trainable ${shortCount(r.trainable)})`;
  if (r.activePerToken < r.total) title += ` · active/token ${shortCount(r.activePerToken)}`;
  if (r.perTask.length > 0) {
    const pcts = r.perTask.map((t) => t.percentOfBackbone);
    const lo = Math.min(...pcts);
    const hi = Math.max(...pcts);
    const f = (x: number) => (x < 0.1 && x > 0 ? x.toFixed(2) : x.toFixed(1));
    title += ` (per task +${lo === hi ? f(lo) : `${f(lo)}–${f(hi)}`}%)`;
  }
  return title;
}
