/**
 * Semantic tokens: every identifier classified by what the checker resolved it to (component,
 * parameter, port, weight, binding, dimension, task, enum member, builtin function, type), with
 * `declaration`, `readonly` (dims, constants) and `defaultLibrary` (standard library,
 * builtins) modifiers; keywords, numbers, strings, comments and operators by token type.
 */
import {
  SemanticTokensBuilder,
  type SemanticTokens,
  type SemanticTokensLegend,
} from "vscode-languageserver/node";
import type { IToken } from "chevrotain";
import { BUILTINS } from "../../compiler/check/builtins.js";
import { DTYPES } from "../../compiler/check/values.js";
import {
  Identifier,
  LineComment,
  NumberLit,
  StringLit,
  keywordTokens,
  tokenEnd,
  tokenize,
} from "../../grammar/lexer.js";
import type { SymbolKind } from "./symbol-index.js";
import type { DocumentView } from "./workspace.js";

const TOKEN_TYPES = [
  "namespace",
  "type",
  "class",
  "enum",
  "interface",
  "parameter",
  "variable",
  "property",
  "enumMember",
  "function",
  "keyword",
  "comment",
  "string",
  "number",
  "operator",
  "typeParameter",
] as const;
const TOKEN_MODIFIERS = ["declaration", "readonly", "defaultLibrary", "documentation"] as const;

type TokenType = (typeof TOKEN_TYPES)[number];
type Modifier = (typeof TOKEN_MODIFIERS)[number];

export const semanticTokensLegend: SemanticTokensLegend = {
  tokenTypes: [...TOKEN_TYPES],
  tokenModifiers: [...TOKEN_MODIFIERS],
};

const KIND_TOKEN: Record<SymbolKind, TokenType> = {
  component: "class",
  train: "function",
  tasks: "enum",
  enum: "enum",
  task: "enumMember",
  enumMember: "enumMember",
  const: "variable",
  param: "parameter",
  port: "variable",
  weight: "property",
  binding: "variable",
  dim: "typeParameter",
  module: "namespace",
};

const TYPE_NAMES = new Set<string>([
  "Dim",
  "Int",
  "Float",
  "Bool",
  "String",
  "Module",
  "Router",
  "Adapter",
  "Optimizer",
  "Tasks",
  "TaskMap",
  ...DTYPES,
]);
const KEYWORD_TYPES = new Set(keywordTokens);
const OPERATORS = new Set([
  "+",
  "-",
  "*",
  "/",
  "%",
  "@",
  "==",
  "!=",
  "<",
  "<=",
  ">",
  ">=",
  "!",
  "=",
  "->",
  "...",
]);

export function semanticTokens(view: DocumentView): SemanticTokens {
  const a = view.analysis;
  const text = a.text;
  const lexed = tokenize(text, view.file);
  const index = a.index;
  const builder = new SemanticTokensBuilder();
  const doc = view.document;
  const map = doc.lineMap;
  const current = doc.text;
  const emit = (start: number, end: number, type: TokenType, mods: Modifier[] = []) => {
    const s = doc.edits.toNew(start);
    const e = doc.edits.toNew(end);
    if (s === undefined || e === undefined || e <= s) return;
    let bits = 0;
    for (const m of mods) bits |= 1 << TOKEN_MODIFIERS.indexOf(m);
    // One token per line (block comments may span several).
    let from = s;
    while (from < e) {
      const nl = current.indexOf("\n", from);
      const to = nl < 0 || nl >= e ? e : nl;
      if (to > from) {
        const pos = map.lineColumn(from);
        builder.push(pos.line - 1, pos.column - 1, to - from, TOKEN_TYPES.indexOf(type), bits);
      }
      from = to + 1;
    }
  };
  const all: IToken[] = [...lexed.tokens, ...lexed.comments].sort(
    (x, y) => x.startOffset - y.startOffset,
  );
  let afterPer = false;
  for (const t of all) {
    const start = t.startOffset;
    const end = tokenEnd(t);
    const type = t.tokenType;
    if (type === LineComment || type.name.endsWith("BlockComment")) {
      const docComment = t.image.startsWith("///") && !t.image.startsWith("////");
      emit(start, end, "comment", docComment ? ["documentation"] : []);
      continue;
    }
    if (type === StringLit) emit(start, end, "string");
    else if (type === NumberLit) emit(start, end, "number");
    else if (KEYWORD_TYPES.has(type)) emit(start, end, "keyword");
    else if (OPERATORS.has(t.image)) emit(start, end, "operator");
    else if (type === Identifier) {
      if (afterPer && t.image === "task") emit(start, end, "keyword");
      else classifyName(start, end, t.image);
    }
    afterPer = t.image === "per";
  }
  return builder.build();

  function classifyName(start: number, end: number, name: string): void {
    const occ = index.at(view.file, start);
    if (occ && occ.span.start <= start && end <= occ.span.end) {
      const d = index.declaration(occ.key);
      if (d) {
        let type = KIND_TOKEN[d.kind];
        if (
          d.kind === "component" &&
          d.node?.kind === "ComponentDecl" &&
          d.node.form === "primitive"
        )
          type = "interface";
        const mods: Modifier[] = [];
        if (occ.declaration) mods.push("declaration");
        if (d.kind === "dim" || d.kind === "const") mods.push("readonly");
        if (view.workspace.isStdlib(d.file)) mods.push("defaultLibrary");
        emit(start, end, type, mods);
        return;
      }
    }
    if (TYPE_NAMES.has(name)) emit(start, end, "type", ["defaultLibrary"]);
    else if (BUILTINS.has(name)) emit(start, end, "function", ["defaultLibrary"]);
  }
}
