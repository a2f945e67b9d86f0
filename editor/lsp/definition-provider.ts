/**
 * Go to definition: the declaration a name resolves to, as the checker resolved it (scopes,
 * rebinding), across files and into the standard library; a module path goes to its file.
 */
import type { Location } from "vscode-languageserver/node";
import type { DocumentView } from "./workspace.js";

export function definition(view: DocumentView, offset: number): Location[] | null {
  const o = view.toAnalysis(offset);
  if (o === undefined) return null;
  const index = view.analysis.index;
  const occ = index.at(view.file, o);
  if (!occ) return null;
  const decl = index.declaration(occ.key);
  if (!decl) return null;
  const loc = view.location(decl.file, decl.span);
  return loc ? [loc] : null;
}
