/**
 * Generic walks over the AST (plain data: every node is an object with a `span`), used by the
 * providers to find what is under the cursor and to visit declarations.
 */
import type { ComponentDecl, Expr, SourceFile, Span, Stmt, TrainDecl } from "../../grammar/ast.js";

/** Any AST node (including record fields, which have a span but no kind). */
export interface AstNode {
  kind?: string;
  span: Span;
}

function isNode(v: unknown): v is AstNode {
  return typeof v === "object" && v !== null && "span" in v;
}

/** The direct children of a node, in source order. */
export function childrenOf(node: AstNode): AstNode[] {
  const out: AstNode[] = [];
  for (const key in node) {
    if (key === "span") continue;
    const v = (node as unknown as Record<string, unknown>)[key];
    if (Array.isArray(v)) {
      for (const x of v) if (isNode(x)) out.push(x);
    } else if (isNode(v)) out.push(v);
  }
  out.sort((a, b) => a.span.start - b.span.start);
  return out;
}

/** Nodes containing `offset`, outermost first (the file's item, down to a name or literal). */
export function nodePathAt(file: SourceFile, offset: number): AstNode[] {
  const path: AstNode[] = [];
  let level: AstNode[] = file.items;
  for (;;) {
    // The innermost wins at a boundary between two nodes (`a|.b` is on `a`): prefer the
    // node that starts before the offset, then the one that starts at it.
    const hit =
      level.find((n) => n.span.start < offset && offset <= n.span.end) ??
      level.find((n) => n.span.start <= offset && offset <= n.span.end);
    if (!hit) return path;
    path.push(hit);
    level = childrenOf(hit);
  }
}

/** Visits every node under `node` (depth first, `node` included). */
export function forEachNode(node: AstNode, visit: (n: AstNode) => void): void {
  visit(node);
  for (const c of childrenOf(node)) forEachNode(c, visit);
}

const EXPR_KINDS = new Set([
  "NumberLit",
  "StringLit",
  "BoolLit",
  "NameExpr",
  "MemberExpr",
  "CallExpr",
  "BinaryExpr",
  "UnaryExpr",
  "ListExpr",
  "RepeatListExpr",
  "RecordExpr",
  "PerTaskExpr",
  "FrozenExpr",
  "WithExpr",
  "ErrorExpr",
]);

export function isExpr(n: AstNode): n is Expr {
  return n.kind !== undefined && EXPR_KINDS.has(n.kind);
}

/** The component or training program an offset lies in. */
export function enclosingBody(
  file: SourceFile,
  offset: number,
): ComponentDecl | TrainDecl | undefined {
  const item = file.items.find((i) => i.span.start <= offset && offset <= i.span.end);
  return item && (item.kind === "ComponentDecl" || item.kind === "TrainDecl") ? item : undefined;
}

/** Every statement of a body, nested ones included, in source order. */
export function allStatements(body: readonly Stmt[]): Stmt[] {
  const out: Stmt[] = [];
  const visit = (stmts: readonly Stmt[]) => {
    for (const s of stmts) {
      out.push(s);
      if (s.kind === "RepeatStmt") visit(s.body);
      else if (s.kind === "IfStmt") {
        visit(s.then);
        if (s.else) visit(s.else);
      }
    }
  };
  visit(body);
  return out;
}
