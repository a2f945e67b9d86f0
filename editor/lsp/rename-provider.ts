/**
 * Rename: a block, model, parameter, port, binding, dimension, task set or task (and the other
 * user declarations) with all its occurrences across the workspace. Declarations of the
 * standard library and builtins cannot be renamed. An import alias (`Foo as Bar`) keeps its
 * alias: only occurrences spelled like the declaration are edited.
 */
import {
  ErrorCodes,
  type Range,
  ResponseError,
  type TextEdit,
  type WorkspaceEdit,
} from "vscode-languageserver/node";
import { keywordTokens } from "../../grammar/lexer.js";
import { declarationAt, occurrencesAcrossWorkspace } from "./references-provider.js";
import type { SymbolDecl } from "./symbol-index.js";
import type { DocumentView } from "./workspace.js";

const KEYWORDS = new Set(keywordTokens.map((t) => (t.PATTERN as RegExp).source));
const IDENTIFIER = /^[\p{L}_][\p{L}\p{M}\p{Nd}_]*$/u;

function renameable(view: DocumentView, offset: number): SymbolDecl {
  const decl = declarationAt(view, offset);
  if (!decl) throw new ResponseError(ErrorCodes.InvalidRequest, "nothing to rename here");
  if (decl.kind === "module")
    throw new ResponseError(ErrorCodes.InvalidRequest, "a module path cannot be renamed");
  if (view.workspace.isStdlib(decl.file)) {
    throw new ResponseError(
      ErrorCodes.InvalidRequest,
      `\`${decl.name}\` is declared in the standard library and cannot be renamed`,
    );
  }
  return decl;
}

export function prepareRename(
  view: DocumentView,
  offset: number,
): { range: Range; placeholder: string } | null {
  const decl = renameable(view, offset);
  const o = view.toAnalysis(offset)!;
  const occ = view.analysis.index.at(view.file, o)!;
  const loc = view.location(view.file, occ.span);
  if (!loc) return null;
  const text = view.analysis.text.slice(occ.span.start, occ.span.end);
  return { range: loc.range, placeholder: text === decl.name ? decl.name : text };
}

export function rename(view: DocumentView, offset: number, newName: string): WorkspaceEdit {
  const decl = renameable(view, offset);
  if (!IDENTIFIER.test(newName) || KEYWORDS.has(newName)) {
    throw new ResponseError(ErrorCodes.InvalidParams, `\`${newName}\` is not a valid name`);
  }
  const clash = conflicting(view, decl, newName);
  if (clash) {
    throw new ResponseError(
      ErrorCodes.InvalidParams,
      `\`${newName}\` is already defined here (${clash})`,
    );
  }
  const changes: Record<string, TextEdit[]> = {};
  const lines = new Map<string, string[]>();
  for (const occ of occurrencesAcrossWorkspace(view, decl, true)) {
    let l = lines.get(occ.location.uri);
    if (!l) {
      const text = view.workspace.textForEdit(occ.location.uri, occ.file) ?? "";
      lines.set(occ.location.uri, (l = text.split(/\r?\n|\r/)));
    }
    // Only names spelled like the declaration (not an import alias).
    const r = occ.location.range;
    const written =
      r.start.line === r.end.line
        ? (l[r.start.line] ?? "").slice(r.start.character, r.end.character)
        : "";
    if (written !== decl.name) continue;
    (changes[occ.location.uri] ??= []).push({ range: occ.location.range, newText: newName });
  }
  return { changes };
}

const LOCAL_KINDS = new Set(["param", "port", "weight", "binding", "dim"]);

/** A declaration the new name would collide with: in the same body for locals, the same file for globals. */
function conflicting(view: DocumentView, decl: SymbolDecl, newName: string): string | undefined {
  const index = view.workspace.analysisOf(decl.file)?.index ?? view.analysis.index;
  for (const d of index.declarations.values()) {
    if (d.name !== newName || d.file !== decl.file || d.key === decl.key) continue;
    if (LOCAL_KINDS.has(decl.kind)) {
      if (LOCAL_KINDS.has(d.kind) && d.owner === decl.owner) return `a ${d.kind} of the same body`;
    } else if (decl.kind === "task" || decl.kind === "enumMember") {
      if (d.parent === decl.parent) return `a member of ${decl.parent?.name.name}`;
    } else if (!LOCAL_KINDS.has(d.kind) && d.kind !== "task" && d.kind !== "enumMember") {
      return `a ${d.kind === "component" ? "component" : d.kind} of this file`;
    }
  }
  return undefined;
}
