/**
 * Hover: for a name, what it declares (kind, signature as written, doc comment) and its type at
 * that point; for any other expression, its inferred dtype and symbolic shape; for a block or
 * a model, its parameter count (total, trainable, per task, active per token); for a training
 * program's `loss`, its terms (./loss-terms.ts); for a LoRA `targets` pattern in a model, the
 * layers it places LoRAs on.
 */
import type { Hover } from "vscode-languageserver/node";
import type {
  Arg,
  Binding,
  ComponentDecl,
  Expr,
  ParamDecl,
  SourceFile,
  StringLit,
  WithExpr,
} from "../../grammar/ast.js";
import type { AstNode } from "./ast-walk.js";
import { BUILTINS } from "../../compiler/check/builtins.js";
import { matchesTarget } from "../../compiler/check/evaluator.js";
import type { EditorAnalysis } from "./analysis.js";
import { isExpr, nodePathAt } from "./ast-walk.js";
import { describeLoss } from "./loss-terms.js";
import type { SymbolDecl } from "./symbol-index.js";
import { componentHeader, countText, portLines, sourceText, valueText } from "./symbol-text.js";
import type { DocumentView } from "./workspace.js";

export function hover(view: DocumentView, offset: number): Hover | null {
  const o = view.toAnalysis(offset);
  if (o === undefined) return null;
  const a = view.analysis;
  const file = view.file;
  const ast = a.graph.modules.get(file)?.ast;
  if (!ast) return null;
  const occ = a.index.at(file, o);
  let markdown: string | undefined;
  let span = occ?.span;
  if (occ) {
    const decl = a.index.declaration(occ.key);
    if (decl)
      markdown = describeDeclaration(a, decl, typeAt(a, file, ast, occ.span.start, occ.span.end));
  }
  if (markdown === undefined) {
    const path = nodePathAt(ast, o);
    const expr = [...path].reverse().find(isExpr);
    const targets = expr?.kind === "StringLit" ? targetedLayers(a, file, path) : undefined;
    if (targets !== undefined && expr) {
      markdown = targets;
      span = expr.span;
    } else if (expr?.kind === "NameExpr" && BUILTINS.has(expr.name.name)) {
      const b = BUILTINS.get(expr.name.name)!;
      markdown = code(`(builtin) ${b.signature}`) + `\n\n${b.doc}`;
      span = expr.span;
    } else if (expr) {
      const t = typeOf(a, file, expr);
      if (t !== undefined) {
        markdown = code(t);
        span = expr.span;
      }
    }
  }
  if (markdown === undefined) return null;
  const loc = span ? view.location(file, span) : undefined;
  const result: Hover = { contents: { kind: "markdown", value: markdown } };
  if (loc) result.range = loc.range;
  return result;
}

function code(text: string): string {
  return "```moe\n" + text + "\n```";
}

function typeOf(a: EditorAnalysis, file: string, e: Expr): string | undefined {
  const t = a.typeOf(file, e);
  return t ? valueText(t.value, t.unifier) : undefined;
}

/** The type of the name written at [start, end): a use's value, or a binding's value. */
function typeAt(
  a: EditorAnalysis,
  file: string,
  ast: SourceFile,
  start: number,
  end: number,
): string | undefined {
  const path = nodePathAt(ast, start + 1 > end ? start : start + 1);
  for (let i = path.length - 1; i >= 0; i--) {
    const n = path[i]!;
    if (n.kind === "NameExpr" && n.span.start === start) return typeOf(a, file, n as Expr);
    if (n.kind === "Binding") {
      const b = n as Binding;
      if (b.target.span.start === start) return typeOf(a, file, b.value);
    }
  }
  return undefined;
}

function describeDeclaration(
  a: EditorAnalysis,
  d: SymbolDecl,
  typeHere: string | undefined,
): string {
  const text = a.textOf(d.file) ?? "";
  const parts: string[] = [];
  const doc = (node: { doc?: string } | undefined) => {
    if (node?.doc) parts.push(node.doc);
  };
  const ownerName = d.owner
    ? `${d.owner.kind === "TrainDecl" ? "train" : d.owner.form} ${d.owner.name.name}`
    : undefined;
  switch (d.kind) {
    case "component":
    case "train": {
      const decl = d.node as ComponentDecl;
      const lines = [componentHeader(text, decl), ...portLines(text, decl)];
      parts.push(code(lines.join("\n")));
      doc(decl);
      if (decl.kind === "ComponentDecl") {
        const counts = paramCounts(a, decl, d.file);
        if (counts) parts.push(counts);
      }
      break;
    }
    case "param": {
      const p = d.node as ParamDecl | undefined;
      const written = p ? sourceText(text, p.span) : d.name;
      parts.push(code(`(parameter) ${written}`));
      if (ownerName) parts.push(`parameter of \`${ownerName}\``);
      doc(p);
      break;
    }
    case "port": {
      const p = d.node as Extract<SymbolDecl["node"], { kind: "PortDecl" }>;
      parts.push(
        code(
          `(${p.direction === "in" ? "input" : "output"}) ${p.name.name}: ${sourceText(text, p.type.span)}`,
        ),
      );
      if (typeHere && typeHere !== sourceText(text, p.type.span))
        parts.push(`here: \`${typeHere}\``);
      doc(p);
      break;
    }
    case "weight": {
      const w = d.node as Extract<SymbolDecl["node"], { kind: "WeightDecl" }> | undefined;
      parts.push(code(`(param) ${w ? sourceText(text, w.span).replace(/^param\s+/, "") : d.name}`));
      if (ownerName) parts.push(`learnable tensor of \`${ownerName}\``);
      doc(w);
      break;
    }
    case "binding": {
      const b = d.node as Extract<SymbolDecl["node"], { kind: "Binding" }> | undefined;
      const t = typeHere ?? (b ? typeOf(a, d.file, b.value) : undefined);
      parts.push(code(`${d.name}${t ? `: ${t}` : ""}`));
      doc(b);
      if (d.name === "loss" && d.owner?.kind === "TrainDecl") {
        const terms = describeLoss(a, d.owner, d.file);
        if (terms) parts.push(terms);
      }
      break;
    }
    case "dim":
      parts.push(code(`(dimension) ${d.name}`));
      parts.push(
        `free dimension${ownerName ? ` of \`${ownerName}\`` : ""}: each use of the component gets its own, unified with the shapes of its inputs`,
      );
      break;
    case "tasks":
    case "enum": {
      const decl = d.node as Extract<SymbolDecl["node"], { kind: "TasksDecl" | "EnumDecl" }>;
      parts.push(
        code(`${d.kind} ${decl.name.name} { ${decl.members.map((m) => m.name).join(", ")} }`),
      );
      doc(decl);
      break;
    }
    case "task":
    case "enumMember": {
      const parent = d.parent;
      parts.push(
        code(
          `(${d.kind === "task" ? "task" : "enum member"}) ${parent ? `${parent.name.name}.` : ""}${d.name}`,
        ),
      );
      doc(parent);
      break;
    }
    case "const": {
      const c = d.node as Extract<SymbolDecl["node"], { kind: "ConstDecl" }>;
      parts.push(code(sourceText(text, c.span)));
      doc(c);
      break;
    }
    case "module": {
      parts.push(code(`module ${d.name}`));
      const lead = (a.textOf(d.file) ?? "").split("\n").filter((l) => l.startsWith("//"));
      const intro: string[] = [];
      for (const l of lead) {
        if (!l.startsWith("//")) break;
        intro.push(l.replace(/^\/\/+\s?/, ""));
      }
      if (intro.length > 0) parts.push(intro.join(" "));
      break;
    }
  }
  return parts.join("\n\n");
}

/**
 * For a string in `base with [per task] LoRA(targets: [...])` bound in a model of the entry:
 * the layers that pattern puts a LoRA on (from the model's `moec params` report), undefined
 * elsewhere.
 */
function targetedLayers(a: EditorAnalysis, file: string, path: AstNode[]): string | undefined {
  // The path's nodes are the AST's own objects; their kind says which interface they are.
  const as = <T>(n: AstNode | undefined) => n as unknown as T;
  const at = path.length - 1;
  if (path[at]?.kind !== "StringLit" || path[at - 1]?.kind !== "ListExpr") return;
  if (path[at - 2]?.kind !== "Arg" || as<Arg>(path[at - 2]).name?.name !== "targets") return;
  const str = as<StringLit>(path[at]);
  const withExpr = as<WithExpr | undefined>(path.findLast((n) => n.kind === "WithExpr"));
  const binding = as<Binding | undefined>(path.findLast((n) => n.kind === "Binding"));
  const model = as<ComponentDecl | undefined>(path.find((n) => n.kind === "ComponentDecl"));
  if (!withExpr || !binding || model?.form !== "model" || file !== a.entry) return;
  const report = a.paramReports().get(model.name.name);
  if (!report) return;
  // The base's path: its binding when it was bound before, else this binding.
  let base = withExpr.base;
  while (base.kind === "FrozenExpr") base = base.operand;
  const root = base.kind === "NameExpr" ? base.name.name : binding.target.name;
  const layers = new Set<string>();
  for (const p of report.params) {
    if (!p.name.endsWith(".lora_A.weight")) continue;
    let layer = p.name.slice(0, -".lora_A.weight".length);
    if (p.task !== undefined && layer.endsWith(`.${p.task}`))
      layer = layer.slice(0, -(p.task.length + 1));
    if (matchesTarget(layer, root, str.value)) layers.add(layer);
  }
  const all = [...layers];
  const shown = all.slice(0, 8).map((l) => `- \`${l}\``);
  if (all.length > 8) shown.push(`- … ${all.length - 8} more`);
  const head = `**${JSON.stringify(str.value)}** puts LoRA on ${all.length} layer${all.length === 1 ? "" : "s"} of \`${root}\``;
  return [head, ...shown].join("\n");
}

/** Parameter counts of a model (its `moec params` report) or of one instance of a block. */
function paramCounts(a: EditorAnalysis, decl: ComponentDecl, file: string): string | undefined {
  if (decl.form === "model" && file === a.entry) {
    const r = a.paramReports().get(decl.name.name);
    if (!r) return undefined;
    const lines = [
      `**parameters** ${countText(r.total)}`,
      `- trainable ${countText(r.trainable)}${r.frozen > 0 ? `, frozen ${countText(r.frozen)}` : ""}`,
      `- active per token ${countText(r.activePerToken)}`,
    ];
    if (r.perTask.length > 0) {
      lines.push(
        `- per task: ${r.perTask.map((t) => `${t.task} +${countText(t.params)} (+${t.percentOfBackbone.toFixed(1)}%)`).join(", ")}`,
      );
    }
    for (const m of r.moeLayers.slice(0, 4)) {
      lines.push(`- MoE \`${m.path}\`: ${m.experts} experts, ${m.activePerToken} per token`);
    }
    if (r.moeLayers.length > 4) lines.push(`- … ${r.moeLayers.length - 4} more MoE layers`);
    return lines.join("\n");
  }
  if (decl.form !== "block") return undefined;
  const b = a.blockParams(decl, file);
  if (!b) return undefined;
  const args = [...b.args].map(([k, v]) => `${k} = ${v}`).join(", ");
  const where = b.path ? `\`${b.path}\` in ${b.model}` : "with its defaults";
  return [
    `**parameters** ${countText(b.total)} per instance (${where}${args ? `; ${args}` : ""})`,
    `- trainable ${countText(b.trainable)}`,
    b.instances > 1 ? `- ${b.instances} instances in ${b.model}` : undefined,
  ]
    .filter((l) => l !== undefined)
    .join("\n");
}
