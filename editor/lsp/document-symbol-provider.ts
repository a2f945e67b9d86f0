/**
 * The outline: top-level declarations with their parameters, ports, learnable tensors,
 * bindings (first binding of each name) and `repeat`/`if` bodies; task and enum members.
 */
import { type DocumentSymbol, SymbolKind } from "vscode-languageserver/node";
import type { Ident, Item, Span, Stmt } from "../../grammar/ast.js";
import { declKey } from "./symbol-index.js";
import { sourceText } from "./symbol-text.js";
import type { DocumentView } from "./workspace.js";

export function documentSymbols(view: DocumentView): DocumentSymbol[] {
  const a = view.analysis;
  const ast = a.graph.modules.get(view.file)?.ast;
  if (!ast) return [];
  const text = a.text;
  const make = (
    name: string,
    kind: SymbolKind,
    span: Span,
    selection: Span,
    detail?: string,
    children?: DocumentSymbol[],
  ): DocumentSymbol | undefined => {
    const range = view.location(view.file, span)?.range;
    const selectionRange = view.location(view.file, selection)?.range;
    if (!range || !selectionRange) return undefined;
    const s: DocumentSymbol = { name, kind, range, selectionRange };
    if (detail) s.detail = detail;
    if (children) s.children = children;
    return s;
  };
  const keep = (xs: (DocumentSymbol | undefined)[]) => xs.filter((x): x is DocumentSymbol => !!x);
  const members = (ids: Ident[], kind: SymbolKind) =>
    keep(ids.map((m) => make(m.name, kind, m.span, m.span)));

  const statements = (stmts: readonly Stmt[]): DocumentSymbol[] => {
    const out: (DocumentSymbol | undefined)[] = [];
    for (const s of stmts) {
      switch (s.kind) {
        case "PortDecl":
          out.push(
            make(
              s.name.name,
              SymbolKind.Field,
              s.span,
              s.name.span,
              `${s.direction} ${sourceText(text, s.type.span)}`,
            ),
          );
          break;
        case "WeightDecl":
          out.push(
            make(
              s.name.name,
              SymbolKind.Property,
              s.span,
              s.name.span,
              `param ${sourceText(text, s.type.span)}`,
            ),
          );
          break;
        case "Binding":
          // Rebindings are uses of the first binding, not declarations.
          if (a.index.declaration(declKey(view.file, s.target.span))) {
            out.push(make(s.target.name, SymbolKind.Variable, s.span, s.target.span));
          }
          break;
        case "RepeatStmt": {
          const label = s.label?.name ?? "layers";
          out.push(
            make(
              `repeat ${sourceText(text, s.count.span)} as ${label}`,
              SymbolKind.Namespace,
              s.span,
              s.label?.span ?? s.count.span,
              undefined,
              statements(s.body),
            ),
          );
          break;
        }
        case "IfStmt":
          out.push(
            make(
              `if ${sourceText(text, s.condition.span)}`,
              SymbolKind.Namespace,
              s.span,
              s.condition.span,
              undefined,
              statements([...s.then, ...(s.else ?? [])]),
            ),
          );
          break;
      }
    }
    return keep(out);
  };

  const item = (i: Item): DocumentSymbol | undefined => {
    switch (i.kind) {
      case "ImportDecl": {
        const m =
          i.module.kind === "std" ? i.module.parts.map((p) => p.name).join(".") : i.module.path;
        return make(
          `import ${m}`,
          SymbolKind.Module,
          i.span,
          i.module.span,
          i.names.map((n) => n.name.name).join(", "),
        );
      }
      case "TasksDecl":
        return make(
          i.name.name,
          SymbolKind.Enum,
          i.span,
          i.name.span,
          "tasks",
          members(i.members, SymbolKind.EnumMember),
        );
      case "EnumDecl":
        return make(
          i.name.name,
          SymbolKind.Enum,
          i.span,
          i.name.span,
          "enum",
          members(i.members, SymbolKind.EnumMember),
        );
      case "ConstDecl":
        return make(
          i.name.name,
          SymbolKind.Constant,
          i.span,
          i.name.span,
          sourceText(text, i.value.span),
        );
      case "ComponentDecl":
      case "TrainDecl": {
        const params = keep(
          i.params.map((p) =>
            make(
              p.name.name,
              SymbolKind.TypeParameter,
              p.span,
              p.name.span,
              sourceText(text, p.type.span),
            ),
          ),
        );
        const kind =
          i.kind === "TrainDecl"
            ? SymbolKind.Function
            : i.form === "model"
              ? SymbolKind.Module
              : i.form === "primitive"
                ? SymbolKind.Interface
                : SymbolKind.Class;
        const form = i.kind === "TrainDecl" ? "train" : i.form;
        return make(i.name.name, kind, i.span, i.name.span, form, [
          ...params,
          ...statements(i.body),
        ]);
      }
    }
  };
  return keep(ast.items.map(item));
}
