/**
 * CST → AST: a hand walk over the concrete syntax tree produced by grammar/parser.ts.
 *
 * Every node gets the span of its text (0-based offsets, end exclusive); a parenthesized
 * expression's span includes its parentheses. Binary operator chains, parsed flat, get their
 * precedence here (`*` `/` `%` `@` over `+` `-` over comparisons, all left-associative), with an
 * explicit stack so that very long chains cannot overflow the call stack. Tokens invented by
 * error recovery (Chevrotain's single-token insertion) have no position and are ignored for
 * spans; a missing expression becomes an `ErrorExpr`. The walk never throws on a partial tree.
 */
import type { CstNode, IToken } from "chevrotain";
import type {
  Arg,
  BinaryOp,
  Binding,
  ComponentDecl,
  ConstDecl,
  DimRef,
  EnumDecl,
  Expr,
  Ident,
  ImportDecl,
  ImportName,
  Item,
  ParamDecl,
  PortDecl,
  RecordExpr,
  SourceFile,
  Span,
  Stmt,
  TasksDecl,
  TrainDecl,
  TypeRef,
  WeightDecl,
} from "./ast.js";
import {
  Bang,
  Frozen,
  Identifier,
  isIntLiteral,
  LParen,
  NumberLit,
  numberValue,
  StringLit,
  stringValue,
  tokenEnd,
  True,
} from "./lexer.js";
import type { BrokenBinding } from "./parser.js";

type Children = Record<string, (CstNode | IToken)[] | undefined>;

/** The children of an `operand` node (see `operandParts` in grammar/parser.ts). */
interface OperandChildren {
  unary?: IToken[];
  prefix?: IToken[];
  atom?: (IToken | CstNode)[];
  expr?: CstNode[];
  RParen?: IToken[];
  post?: (CstNode | IToken)[];
}

/** The children of an `expr` node: its first operand inline, then the rest. */
interface ExprChildren extends OperandChildren {
  op?: IToken[];
  operand?: CstNode[];
  withOperand?: CstNode[];
}

function kids(n: CstNode): Children {
  return n.children as Children;
}

function tok(n: CstNode, key: string, i = 0): IToken | undefined {
  return kids(n)[key]?.[i] as IToken | undefined;
}

const NONE: readonly never[] = Object.freeze([]);

function toks(n: CstNode, key: string): readonly IToken[] {
  return (kids(n)[key] as IToken[] | undefined) ?? NONE;
}

function sub(n: CstNode, key: string, i = 0): CstNode | undefined {
  return kids(n)[key]?.[i] as CstNode | undefined;
}

function subs(n: CstNode, key: string): readonly CstNode[] {
  return (kids(n)[key] as CstNode[] | undefined) ?? NONE;
}

/** A token that exists in the source (not inserted by recovery). */
function real(t: IToken | undefined): t is IToken {
  return t !== undefined && !t.isInsertedInRecovery && !Number.isNaN(t.startOffset);
}

function sp(start: number, end: number): Span {
  return { start, end: Math.max(start, end) };
}

const PRECEDENCE: Record<string, number> = {
  "*": 3,
  "/": 3,
  "%": 3,
  "@": 3,
  "+": 2,
  "-": 2,
  "==": 1,
  "!=": 1,
  "<": 1,
  "<=": 1,
  ">": 1,
  ">=": 1,
};

export interface BuildContext {
  path: string;
  text: string;
  /** Doc comment text keyed by the start offset of the token it documents. */
  docs: ReadonlyMap<number, string>;
}

/** Builds the AST of a file from the `file` rule's CST (which may be partial or missing). */
export function buildAst(cst: CstNode | undefined, ctx: BuildContext): SourceFile {
  const b = new Builder(ctx);
  const items: Item[] = [];
  if (cst !== undefined) {
    for (const itemNode of subs(cst, "item")) {
      const item = b.item(itemNode);
      if (item !== undefined) items.push(item);
    }
  }
  return sourceFile(ctx, items);
}

/** The AST of one `item` CST node (for building item by item while parsing). */
export function itemBuilder(ctx: BuildContext): (item: CstNode) => Item | undefined {
  const b = new Builder(ctx);
  return (n) => b.item(n);
}

export function sourceFile(ctx: BuildContext, items: Item[]): SourceFile {
  return { kind: "SourceFile", path: ctx.path, items, span: sp(0, ctx.text.length) };
}

class Builder {
  constructor(private readonly ctx: BuildContext) {}

  private doc<T extends { doc?: string }>(node: T, first: IToken | undefined): T {
    if (real(first)) {
      const d = this.ctx.docs.get(first.startOffset);
      if (d !== undefined) node.doc = d;
    }
    return node;
  }

  private ident(t: IToken): Ident {
    return { kind: "Ident", name: t.image, span: sp(t.startOffset, tokenEnd(t)) };
  }

  /** End of `t` when it is real, else `fallback`. */
  private endOr(t: IToken | undefined, fallback: number): number {
    return real(t) ? tokenEnd(t) : fallback;
  }

  // -------------------------------------------------------------------------------------------
  // Items

  item(n: CstNode): Item | undefined {
    const c = kids(n);
    if (c["importDecl"]) return this.importDecl(sub(n, "importDecl")!);
    if (c["tasksDecl"]) return this.nameListDecl(sub(n, "tasksDecl")!, "TasksDecl");
    if (c["enumDecl"]) return this.nameListDecl(sub(n, "enumDecl")!, "EnumDecl");
    if (c["constDecl"]) return this.constDecl(sub(n, "constDecl")!);
    if (c["componentDecl"]) return this.component(sub(n, "componentDecl")!);
    if (c["trainDecl"]) return this.component(sub(n, "trainDecl")!);
    return undefined;
  }

  private importDecl(n: CstNode): ImportDecl | undefined {
    const kw = tok(n, "KwImport");
    const mp = sub(n, "modulePath");
    if (!real(kw) || mp === undefined) return undefined;
    let module: ImportDecl["module"];
    const str = tok(mp, "StringLit");
    if (str !== undefined) {
      module = {
        kind: "file",
        path: stringValue(str.image),
        span: sp(str.startOffset, tokenEnd(str)),
      };
    } else {
      const parts = toks(mp, "Identifier").filter(real);
      if (parts.length === 0) return undefined;
      module = {
        kind: "std",
        parts: parts.map((t) => this.ident(t)),
        span: sp(parts[0]!.startOffset, tokenEnd(parts[parts.length - 1]!)),
      };
    }
    let end = module.span.end;
    const names: ImportName[] = [];
    for (const nn of subs(n, "importName")) {
      const ids = toks(nn, "Identifier");
      const name = ids[0];
      if (!real(name)) continue;
      const alias = ids[1];
      const node: ImportName = {
        kind: "ImportName",
        name: this.ident(name),
        span: sp(name.startOffset, real(alias) ? tokenEnd(alias) : tokenEnd(name)),
      };
      if (real(alias)) node.alias = this.ident(alias);
      names.push(node);
      end = node.span.end;
    }
    end = this.endOr(tok(n, "RBrace"), end);
    return { kind: "ImportDecl", module, names, span: sp(kw.startOffset, end) };
  }

  private nameListDecl(n: CstNode, kind: "TasksDecl" | "EnumDecl"): Item | undefined {
    const kw = tok(n, kind === "TasksDecl" ? "KwTasks" : "KwEnum");
    const ids = toks(n, "Identifier");
    const name = ids[0];
    if (!real(kw) || !real(name)) return undefined;
    const members = ids.slice(1).filter(real);
    let end = members.length > 0 ? tokenEnd(members[members.length - 1]!) : tokenEnd(name);
    end = this.endOr(tok(n, "RBrace"), end);
    return this.doc<TasksDecl | EnumDecl>(
      {
        kind,
        name: this.ident(name),
        members: members.map((t) => this.ident(t)),
        span: sp(kw.startOffset, end),
      },
      kw,
    );
  }

  private constDecl(n: CstNode): Item | undefined {
    const kw = tok(n, "KwConst");
    const name = tok(n, "Identifier");
    if (!real(kw) || !real(name)) return undefined;
    const typeNode = sub(n, "type");
    const type = typeNode ? this.type(typeNode) : undefined;
    const after = this.endOr(tok(n, "Eq"), type ? type.span.end : tokenEnd(name));
    const value = this.exprOrError(sub(n, "expr"), after);
    const node: ConstDecl = {
      kind: "ConstDecl",
      name: this.ident(name),
      ...(type ? { type } : {}),
      value,
      span: sp(kw.startOffset, Math.max(value.span.end, after)),
    };
    return this.doc(node, kw);
  }

  private component(n: CstNode): Item | undefined {
    const kw = tok(n, "KwBlock") ?? tok(n, "KwModel") ?? tok(n, "KwPrimitive") ?? tok(n, "KwTrain");
    const name = tok(n, "Identifier");
    if (!real(kw) || !real(name)) return undefined;
    let end = tokenEnd(name);
    const params: ParamDecl[] = [];
    const paramsNode = sub(n, "params");
    if (paramsNode !== undefined) {
      for (const p of subs(paramsNode, "param")) {
        const param = this.param(p);
        if (param !== undefined) params.push(param);
      }
      end = Math.max(end, this.endOr(tok(paramsNode, "RParen"), params.at(-1)?.span.end ?? end));
    }
    const bodyNode = sub(n, "body");
    let body: Stmt[] = [];
    if (bodyNode !== undefined) {
      const built = this.body(bodyNode, end);
      body = built.stmts;
      end = Math.max(end, built.end);
    }
    if (kw.image === "train") {
      return this.doc<TrainDecl>(
        { kind: "TrainDecl", name: this.ident(name), params, body, span: sp(kw.startOffset, end) },
        kw,
      );
    }
    const node: ComponentDecl = {
      kind: "ComponentDecl",
      form: kw.image as ComponentDecl["form"],
      name: this.ident(name),
      params,
      body,
      span: sp(kw.startOffset, end),
    };
    return this.doc(node, kw);
  }

  private param(n: CstNode): ParamDecl | undefined {
    const name = tok(n, "Identifier");
    const typeNode = sub(n, "type");
    if (!real(name) || typeNode === undefined) return undefined;
    const type = this.type(typeNode);
    const node: ParamDecl = {
      kind: "ParamDecl",
      name: this.ident(name),
      type,
      span: sp(name.startOffset, type.span.end),
    };
    if (tok(n, "Eq") !== undefined) {
      const after = this.endOr(tok(n, "Eq"), type.span.end);
      node.default = this.exprOrError(sub(n, "expr"), after);
      node.span = sp(name.startOffset, Math.max(after, node.default.span.end));
    }
    return this.doc(node, name);
  }

  // -------------------------------------------------------------------------------------------
  // Types

  private type(n: CstNode): TypeRef {
    const name = tok(n, "Identifier");
    const brackets = toks(n, "LBracket");
    const close = tok(n, "RBracket");
    if (name !== undefined) {
      const start = real(name) ? name.startOffset : (brackets.find(real)?.startOffset ?? 0);
      let end = real(name) ? tokenEnd(name) : start;
      const node: TypeRef = {
        kind: "NamedType",
        name: real(name) ? this.ident(name) : { kind: "Ident", name: "", span: sp(start, start) },
        span: sp(start, end),
      };
      if (brackets.length > 0) {
        const dims: DimRef[] = [];
        for (const d of (n.children["dim"] ?? NONE) as (IToken | CstNode)[]) {
          dims.push(this.dim(d));
        }
        end = Math.max(end, this.endOr(brackets[0], end));
        if (dims.length > 0) end = Math.max(end, dims[dims.length - 1]!.span.end);
        end = this.endOr(close, end);
        node.dims = dims;
        node.span = sp(start, end);
      }
      return node;
    }
    const open = brackets[0];
    const inner = sub(n, "type");
    const start = real(open) ? open.startOffset : 0;
    const element: TypeRef = inner
      ? this.type(inner)
      : {
          kind: "NamedType",
          name: { kind: "Ident", name: "", span: sp(start, start) },
          span: sp(start, start),
        };
    return {
      kind: "ListType",
      element,
      span: sp(start, this.endOr(close, element.span.end)),
    };
  }

  private dim(d: IToken | CstNode): DimRef {
    if ((d as IToken).tokenType !== undefined) {
      const t = d as IToken;
      return { kind: "Ellipsis", span: sp(t.startOffset, tokenEnd(t)) };
    }
    return this.exprOrError(d as CstNode, 0);
  }

  // -------------------------------------------------------------------------------------------
  // Statements

  /** The statements of a `{ ... }` body and the end offset of its text. */
  private body(n: CstNode, fallbackEnd: number): { stmts: Stmt[]; end: number } {
    const open = tok(n, "LBrace");
    let end = this.endOr(open, fallbackEnd);
    const stmts: Stmt[] = [];
    for (const s of subs(n, "stmt")) {
      const stmt =
        (s as unknown as BrokenBinding).name === "brokenBinding"
          ? this.brokenBinding(s as unknown as BrokenBinding)
          : this.stmt(s);
      if (stmt !== undefined) {
        stmts.push(stmt);
        end = Math.max(end, stmt.span.end);
      }
    }
    end = this.endOr(tok(n, "RBrace"), end);
    return { stmts, end };
  }

  private brokenBinding(b: BrokenBinding): Stmt {
    const after = tokenEnd(b.eq);
    const end = Math.max(after, b.end);
    return this.doc<Binding>(
      {
        kind: "Binding",
        target: this.ident(b.target),
        value: { kind: "ErrorExpr", span: sp(after, end) },
        span: sp(b.target.startOffset, end),
      },
      b.target,
    );
  }

  private stmt(n: CstNode): Stmt | undefined {
    const c = kids(n);
    const name = tok(n, "Identifier");
    if (c["KwIn"] || c["KwOut"]) {
      const kw = (tok(n, "KwIn") ?? tok(n, "KwOut"))!;
      const typeNode = sub(n, "type");
      if (!real(kw) || !real(name) || typeNode === undefined) return undefined;
      const type = this.type(typeNode);
      return this.doc<PortDecl>(
        {
          kind: "PortDecl",
          direction: kw.image as "in" | "out",
          name: this.ident(name),
          type,
          span: sp(kw.startOffset, type.span.end),
        },
        kw,
      );
    }
    if (c["KwParam"]) {
      const kw = tok(n, "KwParam")!;
      const typeNode = sub(n, "type");
      if (!real(kw) || !real(name) || typeNode === undefined) return undefined;
      const type = this.type(typeNode);
      const node: WeightDecl = {
        kind: "WeightDecl",
        name: this.ident(name),
        type,
        span: sp(kw.startOffset, type.span.end),
      };
      if (tok(n, "Eq") !== undefined) {
        const after = this.endOr(tok(n, "Eq"), type.span.end);
        const init = this.exprOrError(sub(n, "expr"), after);
        node.init = init;
        node.span = sp(kw.startOffset, Math.max(after, init.span.end));
      }
      return this.doc(node, kw);
    }
    if (c["KwRepeat"]) {
      const kw = tok(n, "KwRepeat")!;
      if (!real(kw)) return undefined;
      const count = this.exprOrError(sub(n, "expr"), tokenEnd(kw));
      let end = count.span.end;
      const label = real(name) ? this.ident(name) : undefined;
      if (label) end = label.span.end;
      let body: Stmt[] = [];
      const bodyNode = sub(n, "body");
      if (bodyNode) {
        const built = this.body(bodyNode, end);
        body = built.stmts;
        end = Math.max(end, built.end);
      }
      return {
        kind: "RepeatStmt",
        count,
        ...(label ? { label } : {}),
        body,
        span: sp(kw.startOffset, end),
      };
    }
    if (c["KwIf"]) {
      const kw = tok(n, "KwIf")!;
      if (!real(kw)) return undefined;
      const condition = this.exprOrError(sub(n, "expr"), tokenEnd(kw));
      let end = condition.span.end;
      let then: Stmt[] = [];
      const thenNode = sub(n, "body", 0);
      if (thenNode) {
        const built = this.body(thenNode, end);
        then = built.stmts;
        end = Math.max(end, built.end);
      }
      const elseKw = tok(n, "KwElse");
      if (elseKw !== undefined) {
        end = Math.max(end, this.endOr(elseKw, end));
        const elseNode = sub(n, "body", 1);
        let otherwise: Stmt[] = [];
        if (elseNode) {
          const built = this.body(elseNode, end);
          otherwise = built.stmts;
          end = Math.max(end, built.end);
        }
        return {
          kind: "IfStmt",
          condition,
          then,
          else: otherwise,
          span: sp(kw.startOffset, end),
        };
      }
      return { kind: "IfStmt", condition, then, span: sp(kw.startOffset, end) };
    }
    if (c["Semicolon"]) return undefined;
    if (real(name)) {
      const after = this.endOr(tok(n, "Eq"), tokenEnd(name));
      const value = this.exprOrError(sub(n, "expr"), after);
      return this.doc<Binding>(
        {
          kind: "Binding",
          target: this.ident(name),
          value,
          span: sp(name.startOffset, Math.max(after, value.span.end)),
        },
        name,
      );
    }
    return undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Expressions

  private exprOrError(n: CstNode | undefined, at: number): Expr {
    if (n !== undefined) {
      const e = this.expr(n);
      if (e !== undefined) return e;
    }
    return { kind: "ErrorExpr", span: sp(at, at) };
  }

  private expr(n: CstNode): Expr | undefined {
    const c = n.children as ExprChildren;
    if (c.atom === undefined) return undefined;
    const first = this.operandFrom(c);
    const operands = c.operand ?? NONE;
    const ops = c.op ?? NONE;
    const count = Math.min(ops.length, operands.length);
    let result: Expr;
    if (count === 0) {
      result = first;
    } else {
      // Operator precedence with explicit stacks (left-associative).
      const values: Expr[] = [first];
      const pending: IToken[] = [];
      const reduce = () => {
        const op = pending.pop()!;
        const right = values.pop()!;
        const left = values.pop()!;
        values.push({
          kind: "BinaryExpr",
          op: op.image as BinaryOp,
          left,
          right,
          span: sp(left.span.start, right.span.end),
        });
      };
      for (let i = 0; i < count; i++) {
        const op = ops[i]!;
        const p = PRECEDENCE[op.image] ?? 0;
        while (pending.length > 0 && (PRECEDENCE[pending[pending.length - 1]!.image] ?? 0) >= p) {
          reduce();
        }
        pending.push(op);
        values.push(this.operandFrom(operands[i]!.children as OperandChildren));
      }
      while (pending.length > 0) reduce();
      result = values[0]!;
    }
    const withOperands = c.withOperand;
    if (withOperands !== undefined) {
      for (const w of withOperands) {
        const adapter = this.operandFrom(w.children as OperandChildren);
        result = {
          kind: "WithExpr",
          base: result,
          adapter,
          span: sp(result.span.start, adapter.span.end),
        };
      }
    }
    return result;
  }

  /** `unary* prefix* primary postfix*` (see `operandParts` in the parser for the CST labels). */
  private operandFrom(c: OperandChildren): Expr {
    let e = this.primary(c);
    const post = c.post;
    if (post !== undefined) {
      for (const p of post) {
        if ((p as IToken).tokenType === undefined) {
          const callArgs = p as CstNode;
          const args = this.args(callArgs);
          const last = args.length > 0 ? args[args.length - 1]!.span.end : e.span.end;
          const ac = callArgs.children as { LParen?: IToken[]; RParen?: IToken[] };
          const end = this.endOr(ac.RParen?.[0], Math.max(last, this.endOr(ac.LParen?.[0], last)));
          e = { kind: "CallExpr", callee: e, args, span: sp(e.span.start, end) };
        } else if (real(p as IToken)) {
          const m = p as IToken;
          e = {
            kind: "MemberExpr",
            object: e,
            member: this.ident(m),
            span: sp(e.span.start, tokenEnd(m)),
          };
        }
      }
    }
    const prefix = c.prefix;
    if (prefix !== undefined) {
      for (let i = prefix.length - 1; i >= 0; i--) {
        const t = prefix[i]!;
        const span = sp(real(t) ? t.startOffset : e.span.start, e.span.end);
        e =
          t.tokenType === Frozen
            ? { kind: "FrozenExpr", operand: e, span }
            : { kind: "PerTaskExpr", operand: e, span };
      }
    }
    const unary = c.unary;
    if (unary !== undefined) {
      for (let i = unary.length - 1; i >= 0; i--) {
        const t = unary[i]!;
        e = {
          kind: "UnaryExpr",
          op: t.tokenType === Bang ? "!" : "-",
          operand: e,
          span: sp(real(t) ? t.startOffset : e.span.start, e.span.end),
        };
      }
    }
    return e;
  }

  private primary(c: OperandChildren): Expr {
    const atom = c.atom?.[0];
    if (atom === undefined) return { kind: "ErrorExpr", span: sp(0, 0) };
    const t = atom as IToken;
    const type = t.tokenType;
    if (type === undefined) {
      const node = atom as CstNode;
      return node.name === "list" ? this.list(node) : this.record(node);
    }
    const start = real(t) ? t.startOffset : 0;
    if (type === LParen) {
      const e = this.exprOrError(c.expr?.[0], real(t) ? tokenEnd(t) : start);
      // A parenthesized expression's span covers its parentheses.
      e.span = sp(Math.min(start, e.span.start), this.endOr(c.RParen?.[0], e.span.end));
      return e;
    }
    const span = sp(start, real(t) ? tokenEnd(t) : start);
    if (type === Identifier) {
      return {
        kind: "NameExpr",
        name: { kind: "Ident", name: t.image, span: sp(start, span.end) },
        span,
      };
    }
    if (type === NumberLit) {
      return { kind: "NumberLit", value: numberValue(t.image), isInt: isIntLiteral(t.image), span };
    }
    if (type === StringLit) return { kind: "StringLit", value: stringValue(t.image), span };
    return { kind: "BoolLit", value: type === True, span };
  }

  private list(n: CstNode): Expr {
    const open = tok(n, "LBracket");
    const start = real(open) ? open.startOffset : 0;
    const exprs: Expr[] = [];
    for (const x of subs(n, "expr")) {
      const e = this.expr(x);
      if (e) exprs.push(e);
    }
    const lastEnd = exprs.length > 0 ? exprs[exprs.length - 1]!.span.end : start + 1;
    const end = this.endOr(tok(n, "RBracket"), lastEnd);
    if (tok(n, "Semicolon") !== undefined) {
      const element = exprs[0] ?? { kind: "ErrorExpr", span: sp(start, start) };
      const count = exprs[1] ?? { kind: "ErrorExpr", span: sp(lastEnd, lastEnd) };
      return { kind: "RepeatListExpr", element, count, span: sp(start, end) };
    }
    return { kind: "ListExpr", elements: exprs, span: sp(start, end) };
  }

  private record(n: CstNode): Expr {
    const open = tok(n, "LBrace");
    const start = real(open) ? open.startOffset : 0;
    const fields: RecordExpr["fields"] = [];
    let end = start + 1;
    for (const f of subs(n, "field")) {
      const name = tok(f, "Identifier");
      if (!real(name)) continue;
      const after = this.endOr(tok(f, "Colon"), tokenEnd(name));
      const value = this.exprOrError(sub(f, "expr"), after);
      const fieldEnd = Math.max(after, value.span.end);
      fields.push({ name: this.ident(name), value, span: sp(name.startOffset, fieldEnd) });
      end = fieldEnd;
    }
    end = this.endOr(tok(n, "RBrace"), end);
    return { kind: "RecordExpr", fields, span: sp(start, end) };
  }

  /** The `arg` children of an argument list: name tokens and value nodes, in order. */
  private args(n: CstNode): Arg[] {
    const args: Arg[] = [];
    let name: IToken | undefined;
    for (const el of (n.children["arg"] ?? NONE) as (IToken | CstNode)[]) {
      if ((el as IToken).tokenType !== undefined) {
        name = el as IToken;
        continue;
      }
      const at = real(name) ? tokenEnd(name) : 0;
      const value = this.exprOrError(el as CstNode, at);
      if (real(name)) {
        args.push({
          kind: "Arg",
          name: this.ident(name),
          value,
          span: sp(name.startOffset, Math.max(at, value.span.end)),
        });
      } else {
        args.push({ kind: "Arg", value, span: { ...value.span } });
      }
      name = undefined;
    }
    return args;
  }
}
