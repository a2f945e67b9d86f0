/**
 * Find references and document highlights: every occurrence of the declaration under the
 * cursor, in the document's own analysis and in those of the workspace files that import the
 * declaring file (named arguments and member accesses reach across files).
 */
import {
  type DocumentHighlight,
  DocumentHighlightKind,
  type Location,
} from "vscode-languageserver/node";
import type { Span } from "../../grammar/ast.js";
import { type SymbolDecl, declKey } from "./symbol-index.js";
import type { DocumentView } from "./workspace.js";

/** The declaration under the cursor. */
export function declarationAt(view: DocumentView, offset: number): SymbolDecl | undefined {
  const o = view.toAnalysis(offset);
  if (o === undefined) return undefined;
  const index = view.analysis.index;
  const occ = index.at(view.file, o);
  return occ ? index.declaration(occ.key) : undefined;
}

/** Every occurrence of a declaration across the workspace, as protocol locations. */
export function occurrencesAcrossWorkspace(
  view: DocumentView,
  decl: SymbolDecl,
  includeDeclaration: boolean,
): { location: Location; file: string; span: Span }[] {
  const key = decl.kind === "module" ? decl.key : declKey(decl.file, decl.span);
  const out: { location: Location; file: string; span: Span }[] = [];
  const seen = new Set<string>();
  const analyses = [view.analysis, ...view.workspace.analysesSeeing(decl.file)];
  for (const a of analyses) {
    for (const occ of a.index.occurrencesOf(key)) {
      if (occ.declaration && !includeDeclaration) continue;
      const loc =
        a === view.analysis
          ? view.location(occ.file, occ.span)
          : view.workspace.location(occ.file, occ.span, a);
      if (!loc) continue;
      const id = `${loc.uri}:${loc.range.start.line}:${loc.range.start.character}`;
      if (seen.has(id)) continue;
      seen.add(id);
      out.push({ location: loc, file: occ.file, span: occ.span });
    }
  }
  return out;
}

export function references(
  view: DocumentView,
  offset: number,
  includeDeclaration: boolean,
): Location[] {
  const decl = declarationAt(view, offset);
  if (!decl) return [];
  return occurrencesAcrossWorkspace(view, decl, includeDeclaration).map((o) => o.location);
}

export function documentHighlights(view: DocumentView, offset: number): DocumentHighlight[] {
  const decl = declarationAt(view, offset);
  if (!decl) return [];
  const out: DocumentHighlight[] = [];
  for (const occ of view.analysis.index.occurrencesOf(decl.key)) {
    if (occ.file !== view.file) continue;
    const loc = view.location(occ.file, occ.span);
    if (!loc) continue;
    out.push({
      range: loc.range,
      kind: occ.declaration ? DocumentHighlightKind.Write : DocumentHighlightKind.Read,
    });
  }
  return out;
}
