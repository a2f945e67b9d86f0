/**
 * Workspace symbols: the top-level declarations of every `.moe` file of the workspace, of the
 * open documents and of the standard library, matched by a case-insensitive subsequence.
 */
import { type SymbolInformation, SymbolKind } from "vscode-languageserver/node";
import { stdModulePath } from "../../compiler/check/load-modules.js";
import { lineMapFor, spanToRange } from "./positions.js";
import type { Workspace } from "./workspace.js";

const LIMIT = 500;

export function workspaceSymbols(ws: Workspace, query: string): SymbolInformation[] {
  const files = new Set(ws.workspaceFiles());
  for (const m of ws.fsView.stdlibModules()) files.add(stdModulePath(ws.fsView, ["std", m]));
  const q = query.toLowerCase();
  const out: SymbolInformation[] = [];
  for (const file of files) {
    const text = ws.fsView.readFile(file);
    if (text === undefined) continue;
    const ast = ws.parseCache.parse(text, file).file;
    const map = lineMapFor(file, text);
    for (const item of ast.items) {
      if (item.kind === "ImportDecl") continue;
      const name = item.name.name;
      if (!matches(name.toLowerCase(), q)) continue;
      const kind =
        item.kind === "ComponentDecl"
          ? item.form === "model"
            ? SymbolKind.Module
            : item.form === "primitive"
              ? SymbolKind.Interface
              : SymbolKind.Class
          : item.kind === "TrainDecl"
            ? SymbolKind.Function
            : item.kind === "ConstDecl"
              ? SymbolKind.Constant
              : SymbolKind.Enum;
      out.push({
        name,
        kind,
        location: { uri: ws.uriOf(file), range: spanToRange(map, item.name.span) },
        containerName: ws.isStdlib(file)
          ? `std.${file.replace(/^.*[\\/]/, "").replace(/\.moe$/, "")}`
          : undefined,
      } as SymbolInformation);
      if (out.length >= LIMIT) return out;
    }
  }
  return out;
}

/** `q` is a subsequence of `name`. */
function matches(name: string, q: string): boolean {
  let i = 0;
  for (const c of name) if (i < q.length && c === q[i]) i++;
  return i === q.length;
}
