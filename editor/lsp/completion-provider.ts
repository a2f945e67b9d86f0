/**
 * Completion. The context comes from the text before the cursor (the document is usually
 * incomplete while typing); what is in scope comes from the last analysis:
 * - after `import std.`: the standard library's modules; inside `import m { ... }`: its names;
 * - in a type position: scalar types, dtypes, task sets, enums; inside `f32[...]`: dims;
 * - inside a call: named arguments not given yet (`act: gelu`), and for `name: |` the values of
 *   the parameter's type (enum members, true/false);
 * - a record key under `per task`: task names;
 * - after `inst.`: the instance's weights and parts;
 * - elsewhere: names in scope at the cursor, the file's declarations, builtins, standard
 *   library components (a snippet with their parameters and defaults, adding the import when
 *   needed) and keywords.
 */
import {
  type CompletionItem,
  CompletionItemKind,
  type CompletionList,
  InsertTextFormat,
  type TextEdit,
} from "vscode-languageserver/node";
import type {
  ComponentDecl,
  EnumDecl,
  ImportDecl,
  Item,
  ParamDecl,
  SourceFile,
  TrainDecl,
} from "../../grammar/ast.js";
import { BUILTINS } from "../../compiler/check/builtins.js";
import { stdModulePath } from "../../compiler/check/load-modules.js";
import { DTYPES } from "../../compiler/check/values.js";
import type { EditorAnalysis } from "./analysis.js";
import { allStatements, enclosingBody } from "./ast-walk.js";
import { offsetToPosition } from "./positions.js";
import {
  WORD_BEFORE,
  inCommentOrString,
  innermostOpen,
  isRecordBrace,
  lastTopLevelComma,
} from "./text-context.js";
import { componentHeader, paramText, portLines, sourceText, valueText } from "./symbol-text.js";
import type { DocumentView, Workspace } from "./workspace.js";

const TOP_KEYWORDS = ["import", "tasks", "enum", "const", "block", "model", "train"];
const STMT_KEYWORDS = ["in", "out", "param", "repeat", "if", "else"];
const EXPR_KEYWORDS = ["per task", "frozen", "with", "true", "false"];
const SCALAR_TYPES = [
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
];

/** A component (or primitive) the completion may offer, with where it is declared. */
interface ComponentInfo {
  decl: ComponentDecl;
  file: string;
  text: string;
  /** `std.nn` when it comes from the standard library. */
  stdModule?: string;
}

export function completion(view: DocumentView, offset: number): CompletionList {
  const text = view.document.text;
  const before = text.slice(0, offset);
  const lineStart = before.lastIndexOf("\n") + 1;
  const line = before.slice(lineStart);
  const word = WORD_BEFORE.exec(line)?.[0] ?? "";
  const head = line.slice(0, line.length - word.length);
  const items: CompletionItem[] = [];
  const list = (): CompletionList => ({ isIncomplete: false, items });
  if (inCommentOrString(line)) return list();
  const ctx = new CompletionContext(view, offset - word.length);

  // import std.| and import std.nn { | }
  const importModule = /^\s*import\s+std\.$/.exec(head);
  if (importModule) {
    for (const m of view.workspace.fsView.stdlibModules()) {
      items.push({ label: m, kind: CompletionItemKind.Module, detail: `std.${m}` });
    }
    return list();
  }
  if (/^\s*import\s*$/.test(head)) {
    items.push({ label: "std", kind: CompletionItemKind.Module });
    return list();
  }
  const importNames = /^\s*import\s+std\.([\p{L}_][\p{L}\p{Nd}_]*)\s*\{[^}]*$/u.exec(head);
  if (importNames) {
    const decls = ctx.stdlibItems().filter((d) => d.module === importNames[1]);
    const given = new Set(
      head
        .slice(head.indexOf("{") + 1)
        .split(",")
        .map((s) => s.trim()),
    );
    for (const d of decls) {
      if (given.has(d.name)) continue;
      items.push({
        label: d.name,
        kind: itemKind(d.item),
        detail: d.detail,
        documentation: doc(d.item),
      });
    }
    return list();
  }

  // inst.|
  const member = /([\p{L}_][\p{L}\p{M}\p{Nd}_]*)\.$/u.exec(head);
  if (member) {
    items.push(...ctx.members(member[1]!));
    return list();
  }

  // f32[B, |]
  if (/\b[\p{L}_][\p{L}\p{Nd}_]*\[[^\][]*$/u.test(head) && /^\s*(in|out|param)\b/.test(line)) {
    items.push(...ctx.dims());
    return list();
  }

  // in x: | / param w: | / (d: |
  if (
    /^\s*(in|out|param)\s+[\p{L}_][\p{L}\p{Nd}_]*\s*:\s*$/u.test(head) ||
    ctx.inHeaderType(head)
  ) {
    items.push(...ctx.types());
    return list();
  }

  const open = innermostOpen(text, offset - word.length);
  if (open?.char === "{" && isRecordBrace(text, open.index)) {
    const segment = text.slice(open.index + 1, offset - word.length);
    if (/(^|,)\s*$/.test(segment)) {
      items.push(...ctx.taskNames());
      return list();
    }
  }
  if (open?.char === "(") {
    const callee = WORD_BEFORE.exec(text.slice(0, open.index).trimEnd())?.[0];
    const args = text.slice(open.index + 1, offset - word.length);
    const segment = args.slice(lastTopLevelComma(args) + 1);
    const named = /^\s*([\p{L}_][\p{L}\p{M}\p{Nd}_]*)\s*:\s*$/u.exec(segment);
    if (callee && named) {
      items.push(...ctx.argumentValues(callee, named[1]!));
    } else if (callee && /^\s*$/.test(segment)) {
      items.push(...ctx.namedArguments(callee, args));
    }
  }

  const body = ctx.body;
  if (!body) {
    if (/^\s*$/.test(head)) {
      for (const k of TOP_KEYWORDS) items.push(keyword(k));
      items.push({
        label: "import std.nn { ... }",
        kind: CompletionItemKind.Snippet,
        insertText: "import std.${1|nn,route,adapt,optim|} { $0 }",
        insertTextFormat: InsertTextFormat.Snippet,
        filterText: "import",
        sortText: "5",
      });
    }
    return list();
  }
  if (/^\s*$/.test(head)) for (const k of STMT_KEYWORDS) items.push(keyword(k));
  for (const k of EXPR_KEYWORDS) items.push(keyword(k));
  items.push(...ctx.namesInScope());
  items.push(...ctx.globals());
  items.push(...ctx.builtins());
  items.push(...ctx.stdlibComponents());
  return list();
}

function keyword(k: string): CompletionItem {
  return { label: k, kind: CompletionItemKind.Keyword, sortText: `5${k}` };
}

function doc(item: Item): CompletionItem["documentation"] {
  return "doc" in item && item.doc ? { kind: "markdown", value: item.doc } : undefined;
}

function itemKind(item: Item): CompletionItemKind {
  switch (item.kind) {
    case "ComponentDecl":
      return CompletionItemKind.Class;
    case "TasksDecl":
    case "EnumDecl":
      return CompletionItemKind.Enum;
    case "ConstDecl":
      return CompletionItemKind.Constant;
    case "TrainDecl":
      return CompletionItemKind.Function;
    case "ImportDecl":
      return CompletionItemKind.Module;
  }
}

/** What is visible at the cursor, from the last analysis. */
export class CompletionContext {
  readonly analysis: EditorAnalysis;
  readonly workspace: Workspace;
  readonly ast: SourceFile | undefined;
  /** The cursor in the analysed text (the nearest mapped offset before it). */
  readonly at: number;
  readonly body: ComponentDecl | TrainDecl | undefined;

  constructor(
    readonly view: DocumentView,
    offset: number,
  ) {
    this.analysis = view.analysis;
    this.workspace = view.workspace;
    this.ast = this.analysis.graph.modules.get(view.file)?.ast;
    let o: number | undefined;
    for (let x = offset; x >= 0 && o === undefined; x--) o = view.toAnalysis(x);
    this.at = o ?? 0;
    this.body = this.ast ? enclosingBody(this.ast, this.at) : undefined;
  }

  private get scope() {
    return this.analysis.program.scopes.get(this.view.file);
  }

  inHeaderType(head: string): boolean {
    if (!/[(,]\s*[\p{L}_][\p{L}\p{Nd}_]*\s*:\s*$/u.test(head)) return false;
    const b = this.body;
    if (!b) return /^\s*(block|model|primitive|train)\b/.test(head);
    // In the parameter list of the header: before the body's first statement.
    const firstStmt = b.body[0]?.span.start ?? b.span.end;
    return this.at < firstStmt && /^\s*(block|model|primitive|train)\b/.test(head);
  }

  types(): CompletionItem[] {
    const out: CompletionItem[] = [];
    for (const t of SCALAR_TYPES)
      out.push({ label: t, kind: CompletionItemKind.TypeParameter, sortText: `1${t}` });
    for (const d of DTYPES) {
      out.push({
        label: d,
        kind: CompletionItemKind.TypeParameter,
        detail: "tensor dtype",
        insertText: `${d}[$0]`,
        insertTextFormat: InsertTextFormat.Snippet,
        sortText: `0${d}`,
      });
    }
    for (const [name, g] of this.scope?.names ?? []) {
      if (g.kind === "tasks" || g.kind === "enum") {
        out.push({
          label: name,
          kind: CompletionItemKind.Enum,
          detail: `${g.kind} ${name}`,
          documentation: doc(g.decl),
          sortText: `2${name}`,
        });
      }
    }
    return out;
  }

  dims(): CompletionItem[] {
    const out: CompletionItem[] = [
      {
        label: "...",
        kind: CompletionItemKind.Operator,
        detail: "any leading dims",
        sortText: "9",
      },
    ];
    const b = this.body;
    if (!b) return out;
    const text = this.analysis.text;
    for (const p of b.params) {
      out.push({
        label: p.name.name,
        kind: CompletionItemKind.TypeParameter,
        detail: paramText(text, p),
        sortText: `0${p.name.name}`,
      });
    }
    const seen = new Set(b.params.map((p) => p.name.name));
    for (const d of this.analysis.index.declarations.values()) {
      if (d.kind !== "dim" || d.owner !== b || seen.has(d.name)) continue;
      seen.add(d.name);
      out.push({
        label: d.name,
        kind: CompletionItemKind.TypeParameter,
        detail: "free dimension",
        sortText: `1${d.name}`,
      });
    }
    for (const [name, g] of this.scope?.names ?? []) {
      if (g.kind === "const" && !seen.has(name))
        out.push({ label: name, kind: CompletionItemKind.Constant, sortText: `2${name}` });
    }
    return out;
  }

  taskNames(): CompletionItem[] {
    const out: CompletionItem[] = [];
    for (const [name, g] of this.scope?.names ?? []) {
      if (g.kind !== "tasks") continue;
      for (const m of g.decl.members) {
        out.push({
          label: m.name,
          kind: CompletionItemKind.EnumMember,
          detail: `task of ${name}`,
          insertText: `${m.name}: $0`,
          insertTextFormat: InsertTextFormat.Snippet,
          sortText: `0${m.name}`,
        });
      }
    }
    return out;
  }

  /** Components visible by name here, and every standard-library component. */
  findComponent(name: string): ComponentInfo | undefined {
    const g = this.scope?.names.get(name);
    if (g?.kind === "component") {
      return { decl: g.decl, file: g.file, text: this.analysis.textOf(g.file) ?? "" };
    }
    const std = this.stdlibItems().find((d) => d.name === name && d.item.kind === "ComponentDecl");
    if (std)
      return {
        decl: std.item as ComponentDecl,
        file: std.file,
        text: std.text,
        stdModule: `std.${std.module}`,
      };
    return undefined;
  }

  namedArguments(callee: string, argsText: string): CompletionItem[] {
    const given = new Set(
      [...argsText.matchAll(/(?:^|,)\s*([\p{L}_][\p{L}\p{M}\p{Nd}_]*)\s*:/gu)].map((m) => m[1]!),
    );
    const positional =
      argsText.trim() === ""
        ? 0
        : lastTopLevelComma(argsText) >= 0
          ? argsText.split(",").length - 1
          : 0;
    const out: CompletionItem[] = [];
    const c = this.findComponent(callee);
    if (c) {
      c.decl.params.forEach((p, i) => {
        if (given.has(p.name.name) || i < positional) return;
        const def = p.default ? sourceText(c.text, p.default.span) : undefined;
        out.push({
          label: `${p.name.name}:`,
          kind: CompletionItemKind.Field,
          detail: paramText(c.text, p),
          documentation: p.doc ? { kind: "markdown", value: p.doc } : undefined,
          insertText: `${p.name.name}: \${1:${escapeSnippet(def ?? p.name.name)}}`,
          insertTextFormat: InsertTextFormat.Snippet,
          filterText: p.name.name,
          sortText: `0${String(i).padStart(2, "0")}`,
        });
      });
      return out;
    }
    const b = BUILTINS.get(callee);
    if (b) {
      b.params.forEach((p, i) => {
        if (given.has(p.name) || i < positional) return;
        out.push({
          label: `${p.name}:`,
          kind: CompletionItemKind.Field,
          detail: b.signature,
          insertText: `${p.name}: $0`,
          insertTextFormat: InsertTextFormat.Snippet,
          filterText: p.name,
          sortText: `0${String(i).padStart(2, "0")}`,
        });
      });
    }
    return out;
  }

  argumentValues(callee: string, param: string): CompletionItem[] {
    const c = this.findComponent(callee);
    const p = c?.decl.params.find((x) => x.name.name === param);
    if (!c || !p) return [];
    const type =
      p.type.kind === "NamedType" && p.type.dims === undefined ? p.type.name.name : undefined;
    if (type === "Bool")
      return ["true", "false"].map((v) => ({
        label: v,
        kind: CompletionItemKind.Value,
        sortText: "0",
      }));
    if (type === "TaskMap") {
      return [
        {
          label: "{ ... }",
          kind: CompletionItemKind.Snippet,
          insertText: "{ $0 }",
          insertTextFormat: InsertTextFormat.Snippet,
          sortText: "0",
        },
      ];
    }
    const e = type ? this.findEnum(type, c.file) : undefined;
    if (!e) return [];
    const def = p.default ? sourceText(c.text, p.default.span) : undefined;
    return e.members.map((m, i) => ({
      label: m.name,
      kind: CompletionItemKind.EnumMember,
      detail: `${e.name.name}${m.name === def ? " (default)" : ""}`,
      documentation: e.doc ? { kind: "markdown", value: e.doc } : undefined,
      sortText: `0${String(i).padStart(2, "0")}`,
      preselect: m.name === def,
    }));
  }

  private findEnum(name: string, file: string): EnumDecl | undefined {
    const g =
      this.analysis.program.scopes.get(file)?.names.get(name) ?? this.scope?.names.get(name);
    if (g?.kind === "enum") return g.decl;
    const std = this.stdlibItems().find((d) => d.name === name && d.item.kind === "EnumDecl");
    return std?.item as EnumDecl | undefined;
  }

  /** Weights and named parts of the instance bound to `name`. */
  members(name: string): CompletionItem[] {
    const b = this.body;
    if (!b) return [];
    let inst: ComponentInfo | undefined;
    for (const s of allStatements(b.body)) {
      if (s.kind !== "Binding" || s.target.name !== name || s.span.start > this.at) continue;
      const v = this.analysis.bodyTypes(this.view.file, b).types.get(s.value);
      if (v?.k === "instance") {
        const d = v.inst.wrapOf?.base.decl ?? v.inst.decl;
        inst = {
          decl: d,
          file: v.inst.declFile,
          text: this.analysis.textOf(v.inst.declFile) ?? "",
        };
      } else if (v?.k === "outputs") {
        return [...v.fields].map(([k, t]) => ({
          label: k,
          kind: CompletionItemKind.Field,
          detail: valueText({ k: "tensor", t }, this.analysis.bodyTypes(this.view.file, b).unifier),
        }));
      }
    }
    if (!inst) return [];
    const out: CompletionItem[] = [];
    const seen = new Set<string>();
    for (const s of allStatements(inst.decl.body)) {
      if (s.kind === "WeightDecl" && !seen.has(s.name.name)) {
        seen.add(s.name.name);
        out.push({
          label: s.name.name,
          kind: CompletionItemKind.Field,
          detail: sourceText(inst.text, s.type.span),
        });
      } else if (s.kind === "Binding" && !seen.has(s.target.name)) {
        const v = this.analysis.bodyTypes(inst.file, inst.decl).types.get(s.value);
        if (v?.k !== "instance") continue;
        seen.add(s.target.name);
        out.push({
          label: s.target.name,
          kind: CompletionItemKind.Property,
          detail: `instance of ${v.inst.component}`,
        });
      }
    }
    return out;
  }

  /** Parameters, ports, dims, weights and bindings visible at the cursor. */
  namesInScope(): CompletionItem[] {
    const b = this.body;
    if (!b) return [];
    const a = this.analysis;
    const text = a.text;
    const out = new Map<string, CompletionItem>();
    for (const p of b.params) {
      out.set(p.name.name, {
        label: p.name.name,
        kind: CompletionItemKind.Variable,
        detail: `(parameter) ${paramText(text, p)}`,
        sortText: `1${p.name.name}`,
      });
    }
    for (const d of a.index.declarations.values()) {
      if (d.kind === "dim" && d.owner === b && !out.has(d.name)) {
        out.set(d.name, {
          label: d.name,
          kind: CompletionItemKind.TypeParameter,
          detail: "(dimension)",
          sortText: `1${d.name}`,
        });
      }
    }
    const visit = (stmts: readonly (typeof b.body)[number][]) => {
      for (const s of stmts) {
        if (s.span.start >= this.at) return;
        switch (s.kind) {
          case "PortDecl":
            out.set(s.name.name, {
              label: s.name.name,
              kind: CompletionItemKind.Field,
              detail: `(${s.direction === "in" ? "input" : "output"}) ${sourceText(text, s.type.span)}`,
              sortText: `1${s.name.name}`,
            });
            break;
          case "WeightDecl":
            out.set(s.name.name, {
              label: s.name.name,
              kind: CompletionItemKind.Field,
              detail: `(param) ${sourceText(text, s.type.span)}`,
              sortText: `1${s.name.name}`,
            });
            break;
          case "Binding": {
            // Not the binding being written.
            if (out.has(s.target.name) || s.span.end >= this.at) break;
            const bt = a.bodyTypes(this.view.file, b);
            const v = bt.types.get(s.value);
            const t = v ? valueText(v, bt.unifier) : undefined;
            out.set(s.target.name, {
              label: s.target.name,
              kind: CompletionItemKind.Variable,
              detail: t,
              sortText: `1${s.target.name}`,
            });
            break;
          }
          case "RepeatStmt":
            if (s.span.start < this.at && this.at <= s.span.end) visit(s.body);
            break;
          case "IfStmt":
            if (s.span.start < this.at && this.at <= s.span.end) {
              visit(s.then);
              if (s.else) visit(s.else);
            }
            break;
        }
      }
    };
    visit(b.body);
    return [...out.values()];
  }

  /** The file's declarations and imports. */
  globals(): CompletionItem[] {
    const out: CompletionItem[] = [];
    for (const [name, g] of this.scope?.names ?? []) {
      const text = this.analysis.textOf(g.file) ?? "";
      if (g.kind === "component")
        out.push(this.componentItem(name, { decl: g.decl, file: g.file, text }, "2"));
      else if (g.kind === "train") continue;
      else {
        out.push({
          label: name,
          kind: itemKind(g.decl),
          detail: g.kind === "const" ? sourceText(text, g.decl.span) : `${g.kind} ${name}`,
          documentation: doc(g.decl),
          sortText: `2${name}`,
        });
      }
    }
    return out;
  }

  builtins(): CompletionItem[] {
    const out: CompletionItem[] = [];
    for (const b of BUILTINS.values()) {
      out.push({
        label: b.name,
        kind: CompletionItemKind.Function,
        detail: b.signature,
        documentation: b.doc,
        insertText: `${b.name}($0)`,
        insertTextFormat: InsertTextFormat.Snippet,
        sortText: `3${b.name}`,
      });
    }
    return out;
  }

  /** Standard-library components not imported yet; accepting one adds the import. */
  stdlibComponents(): CompletionItem[] {
    const out: CompletionItem[] = [];
    const visible = this.scope?.names;
    for (const d of this.stdlibItems()) {
      if (d.item.kind !== "ComponentDecl" || visible?.has(d.name)) continue;
      const item = this.componentItem(
        d.name,
        { decl: d.item, file: d.file, text: d.text, stdModule: `std.${d.module}` },
        "4",
      );
      const edit = this.importEdit(d.module, d.name);
      if (edit) item.additionalTextEdits = [edit];
      item.detail = `${item.detail} — import from std.${d.module}`;
      out.push(item);
    }
    return out;
  }

  /** `FFN(${1:d}, ${2:hidden}, act: ${3:gelu}, bias: ${4:true})`: required parameters by position, then (up to three) defaults by name. */
  private componentItem(name: string, c: ComponentInfo, sort: string): CompletionItem {
    const required = c.decl.params.filter((p) => p.default === undefined);
    const optional = c.decl.params.filter((p) => p.default !== undefined);
    const parts: string[] = [];
    let n = 1;
    for (const p of required) parts.push(`\${${n++}:${escapeSnippet(p.name.name)}}`);
    if (optional.length <= 3) {
      for (const p of optional as ParamDecl[]) {
        parts.push(
          `${p.name.name}: \${${n++}:${escapeSnippet(sourceText(c.text, p.default!.span))}}`,
        );
      }
    }
    const body = parts.length > 0 ? parts.join(", ") : "$1";
    const header = componentHeader(c.text, c.decl);
    return {
      label: name,
      kind: c.decl.form === "primitive" ? CompletionItemKind.Interface : CompletionItemKind.Class,
      detail: header,
      documentation: {
        kind: "markdown",
        value: ["```moe", header, ...portLines(c.text, c.decl), "```", c.decl.doc ?? ""].join("\n"),
      },
      insertText: `${name}(${body})$0`,
      insertTextFormat: InsertTextFormat.Snippet,
      sortText: `${sort}${name}`,
    };
  }

  /** The edit that imports `name` from `std.module`: into an existing import of it, or a new line. */
  importEdit(module: string, name: string): TextEdit | undefined {
    const ast = this.ast;
    const doc = this.view.document;
    if (!ast) return undefined;
    const imports = ast.items.filter((i): i is ImportDecl => i.kind === "ImportDecl");
    const same = imports.find(
      (i) =>
        i.module.kind === "std" && i.module.parts.map((p) => p.name).join(".") === `std.${module}`,
    );
    if (same && same.names.length > 0) {
      const last = same.names.at(-1)!;
      const at = this.view.document.edits.toNew(last.span.end);
      if (at === undefined) return undefined;
      const pos = offsetToPosition(doc.lineMap, at);
      return { range: { start: pos, end: pos }, newText: `, ${name}` };
    }
    const after = imports.at(-1);
    const at = after ? this.view.document.edits.toNew(after.span.end) : 0;
    if (at === undefined) return undefined;
    if (!after) {
      return {
        range: { start: { line: 0, character: 0 }, end: { line: 0, character: 0 } },
        newText: `import std.${module} { ${name} }\n\n`,
      };
    }
    const pos = offsetToPosition(doc.lineMap, at);
    return { range: { start: pos, end: pos }, newText: `\nimport std.${module} { ${name} }` };
  }

  stdlibItems(): StdItem[] {
    return stdlibItems(this.workspace);
  }
}

interface StdItem {
  module: string;
  file: string;
  text: string;
  name: string;
  item: Exclude<Item, ImportDecl>;
  detail: string;
}

/** Every top-level declaration of the standard library (parses cached by text). */
export function stdlibItems(ws: Workspace): StdItem[] {
  const out: StdItem[] = [];
  for (const module of ws.fsView.stdlibModules()) {
    const file = stdModulePath(ws.fsView, ["std", module]);
    const text = ws.fsView.readFile(file);
    if (text === undefined) continue;
    const parsed = ws.parseCache.parse(text, file);
    for (const item of parsed.file.items) {
      if (item.kind === "ImportDecl") continue;
      const detail =
        item.kind === "ComponentDecl" || item.kind === "TrainDecl"
          ? componentHeader(text, item)
          : `${item.kind === "TasksDecl" ? "tasks" : item.kind === "EnumDecl" ? "enum" : "const"} ${item.name.name}`;
      out.push({ module, file, text, name: item.name.name, item, detail });
    }
  }
  return out;
}

function escapeSnippet(s: string): string {
  return s.replace(/[$}\\]/g, (c) => `\\${c}`);
}
