/**
 * Inlay hints: the inferred type after every binding of a tensor (`x = attn(h)` shows
 * `: f32[B, T, d]`), resolved through the checker's unifier.
 */
import { type InlayHint, InlayHintKind, type Range } from "vscode-languageserver/node";
import type { Stmt } from "../../grammar/ast.js";
import { allStatements } from "./ast-walk.js";
import { positionToOffset } from "./positions.js";
import { tensorText } from "./symbol-text.js";
import type { DocumentView } from "./workspace.js";

export function inlayHints(view: DocumentView, range: Range): InlayHint[] {
  const a = view.analysis;
  const ast = a.graph.modules.get(view.file)?.ast;
  if (!ast) return [];
  const map = view.document.lineMap;
  const from = view.toAnalysis(positionToOffset(map, range.start)) ?? 0;
  const to = view.toAnalysis(positionToOffset(map, range.end)) ?? a.text.length;
  const out: InlayHint[] = [];
  for (const item of ast.items) {
    if (item.kind !== "ComponentDecl" && item.kind !== "TrainDecl") continue;
    if (item.span.end < from || item.span.start > to) continue;
    const bt = a.bodyTypes(view.file, item);
    for (const s of allStatements(item.body) as Stmt[]) {
      if (s.kind !== "Binding" || s.target.span.end < from || s.target.span.start > to) continue;
      const v = bt.types.get(s.value);
      if (v?.k !== "tensor") continue;
      const loc = view.location(view.file, s.target.span);
      if (!loc) continue;
      out.push({
        position: loc.range.end,
        label: `: ${tensorText(v.t, bt.unifier)}`,
        kind: InlayHintKind.Type,
      });
    }
  }
  return out;
}
