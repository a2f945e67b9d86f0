/**
 * Folding: declarations, `repeat`/`if` bodies and multi-line calls, lists and records; block
 * comments and runs of line comments; runs of imports.
 */
import { type FoldingRange, FoldingRangeKind } from "vscode-languageserver/node";
import type { Span } from "../../grammar/ast.js";
import { forEachNode } from "./ast-walk.js";
import type { DocumentView } from "./workspace.js";

export function foldingRanges(view: DocumentView): FoldingRange[] {
  const mod = view.analysis.graph.modules.get(view.file);
  if (!mod) return [];
  const out: FoldingRange[] = [];
  const seen = new Set<number>();
  const add = (span: Span, kind?: FoldingRangeKind) => {
    const r = view.location(view.file, span)?.range;
    if (!r || r.end.line <= r.start.line || seen.has(r.start.line)) return;
    seen.add(r.start.line);
    const f: FoldingRange = { startLine: r.start.line, endLine: r.end.line };
    if (kind) f.kind = kind;
    out.push(f);
  };
  const folds = new Set([
    "ComponentDecl",
    "TrainDecl",
    "TasksDecl",
    "EnumDecl",
    "RepeatStmt",
    "IfStmt",
    "CallExpr",
    "ListExpr",
    "RecordExpr",
  ]);
  for (const item of mod.ast.items) {
    forEachNode(item, (n) => {
      if (n.kind !== undefined && folds.has(n.kind)) add(n.span);
    });
  }
  // Imports: one range over each run of consecutive import lines.
  const imports = mod.ast.items.filter((i) => i.kind === "ImportDecl");
  if (imports.length > 1) {
    add({ start: imports[0]!.span.start, end: imports.at(-1)!.span.end }, FoldingRangeKind.Imports);
  }
  // Comments: block comments, and runs of line comments on consecutive lines.
  let run: Span | undefined;
  const flush = () => {
    if (run) add(run, FoldingRangeKind.Comment);
    run = undefined;
  };
  for (const c of mod.comments) {
    if (c.text.startsWith("/*")) {
      flush();
      add(c.span, FoldingRangeKind.Comment);
      continue;
    }
    if (run && /^[ \t]*\r?\n[ \t]*$/.test(mod.text.slice(run.end, c.span.start)))
      run = { start: run.start, end: c.span.end };
    else {
      flush();
      run = { ...c.span };
    }
  }
  flush();
  return out.sort((a, b) => a.startLine - b.startLine);
}
