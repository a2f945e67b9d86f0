/**
 * The abstract syntax tree of a `.moe` file. Every node carries the span of source text it
 * came from, so every later diagnostic can point at it. The tree is plain data (no methods,
 * no parent pointers), so it can be compared, printed as a golden file and cached per document.
 */

import type { Span } from "./span.js";

export type { Span };

/** A name as written, with its span (used for definitions and references alike). */
export interface Ident {
  kind: "Ident";
  name: string;
  span: Span;
}

/** One parsed `.moe` file. */
export interface SourceFile {
  kind: "SourceFile";
  /** Path as given to the parser (used in diagnostics). */
  path: string;
  items: Item[];
  span: Span;
}

export type Item = ImportDecl | TasksDecl | EnumDecl | ConstDecl | ComponentDecl | TrainDecl;

/**
 * `import std.nn { Linear, LayerNorm as LN }` or `import "./parts.moe" { Expert }`.
 * `module` is the dotted path (`["std", "nn"]`) for library imports, or a relative file path.
 */
export interface ImportDecl {
  kind: "ImportDecl";
  module: { kind: "std"; parts: Ident[]; span: Span } | { kind: "file"; path: string; span: Span };
  names: ImportName[];
  span: Span;
}

/** One imported name, optionally renamed with `as`. */
export interface ImportName {
  kind: "ImportName";
  name: Ident;
  alias?: Ident;
  span: Span;
}

/** `tasks Lang { en_de, en_fr }`: a closed set of task names. */
export interface TasksDecl {
  kind: "TasksDecl";
  doc?: string;
  name: Ident;
  members: Ident[];
  span: Span;
}

/** `enum Act { relu, gelu }`: a closed set of symbolic option values (used by the stdlib). */
export interface EnumDecl {
  kind: "EnumDecl";
  doc?: string;
  name: Ident;
  members: Ident[];
  span: Span;
}

/** `const vocab: Int = 50257` at file level. */
export interface ConstDecl {
  kind: "ConstDecl";
  doc?: string;
  name: Ident;
  type?: TypeRef;
  value: Expr;
  span: Span;
}

/**
 * `block`, `model` and `primitive` declarations share one shape.
 * - `block`: a reusable component with ports and a body.
 * - `model`: an entry point; every parameter needs a default.
 * - `primitive`: a typed declaration of a component the compiler implements (stdlib only);
 *   its body holds only ports and `param`s.
 */
export interface ComponentDecl {
  kind: "ComponentDecl";
  form: "block" | "model" | "primitive";
  doc?: string;
  name: Ident;
  params: ParamDecl[];
  body: Stmt[];
  span: Span;
}

/** `train Name(params) { ... }`: a training program (ports, bindings, `loss`, `optimizer`). */
export interface TrainDecl {
  kind: "TrainDecl";
  doc?: string;
  name: Ident;
  params: ParamDecl[];
  body: Stmt[];
  span: Span;
}

/** A constructor parameter `d: Dim = 256`, with the `///` comment written before it. */
export interface ParamDecl {
  kind: "ParamDecl";
  doc?: string;
  name: Ident;
  type: TypeRef;
  default?: Expr;
  span: Span;
}

/**
 * A type as written. `Dim`, `Int`, `f32[B, T, d]`, `Lang[B]` (a tensor of task ids),
 * `[Module]` (a list). Whether a name is a dtype, a scalar type or a task set is decided by
 * the resolver, not the parser.
 */
export type TypeRef = NamedType | ListType;

/** `Name` or `Name[dims]`; `dims` is absent for non-tensor types, `[]` for a scalar tensor. */
export interface NamedType {
  kind: "NamedType";
  name: Ident;
  dims?: DimRef[];
  span: Span;
}

/** `[T]`: a list of T. */
export interface ListType {
  kind: "ListType";
  element: TypeRef;
  span: Span;
}

/** One dimension in a tensor type: an expression (`B`, `4*d`, `d/heads`) or `...` (any leading dims). */
export type DimRef = Expr | { kind: "Ellipsis"; span: Span };

export type Stmt = PortDecl | WeightDecl | Binding | RepeatStmt | IfStmt;

/** `in x: f32[B, T, d]` or `out y: f32[B, T, d]`. */
export interface PortDecl {
  kind: "PortDecl";
  direction: "in" | "out";
  doc?: string;
  name: Ident;
  type: TypeRef;
  span: Span;
}

/** `param weight: f32[out, in] = normal(0.02)`: a learnable tensor. */
export interface WeightDecl {
  kind: "WeightDecl";
  doc?: string;
  name: Ident;
  type: TypeRef;
  init?: Expr;
  span: Span;
}

/** `name = expr`. Rebinding an existing name updates it (`x = x + f(x)`). */
export interface Binding {
  kind: "Binding";
  doc?: string;
  target: Ident;
  value: Expr;
  span: Span;
}

/** `repeat n as blocks { ... }`: the body is instantiated n times, parameters under `blocks.i`. */
export interface RepeatStmt {
  kind: "RepeatStmt";
  count: Expr;
  label?: Ident;
  body: Stmt[];
  span: Span;
}

/** `if cond { ... } else { ... }` on a compile-time Bool. */
export interface IfStmt {
  kind: "IfStmt";
  condition: Expr;
  then: Stmt[];
  else?: Stmt[];
  span: Span;
}

export type Expr =
  | NumberLit
  | StringLit
  | BoolLit
  | NameExpr
  | MemberExpr
  | CallExpr
  | BinaryExpr
  | UnaryExpr
  | ListExpr
  | RepeatListExpr
  | RecordExpr
  | PerTaskExpr
  | FrozenExpr
  | WithExpr
  | ErrorExpr;

/** `8`, `1.25`, `1e-5`. `isInt` is true when written without a point or exponent. */
export interface NumberLit {
  kind: "NumberLit";
  value: number;
  isInt: boolean;
  span: Span;
}

export interface StringLit {
  kind: "StringLit";
  value: string;
  span: Span;
}

export interface BoolLit {
  kind: "BoolLit";
  value: boolean;
  span: Span;
}

/** A reference to a name in scope. */
export interface NameExpr {
  kind: "NameExpr";
  name: Ident;
  span: Span;
}

/** `a.b`: a member of an instance (a sub-module, a parameter) or of a multi-output result. */
export interface MemberExpr {
  kind: "MemberExpr";
  object: Expr;
  member: Ident;
  span: Span;
}

/** `f(a, b, k: 2)`: construction of a component, application of an instance, or a builtin call. */
export interface CallExpr {
  kind: "CallExpr";
  callee: Expr;
  args: Arg[];
  span: Span;
}

/** A positional (`name` absent) or named (`k: 2`) argument. */
export interface Arg {
  kind: "Arg";
  name?: Ident;
  value: Expr;
  span: Span;
}

export type BinaryOp = "+" | "-" | "*" | "/" | "%" | "@" | "==" | "!=" | "<" | "<=" | ">" | ">=";

export interface BinaryExpr {
  kind: "BinaryExpr";
  op: BinaryOp;
  left: Expr;
  right: Expr;
  span: Span;
}

export interface UnaryExpr {
  kind: "UnaryExpr";
  op: "-" | "!";
  operand: Expr;
  span: Span;
}

/** `[a, b, c]`. */
export interface ListExpr {
  kind: "ListExpr";
  elements: Expr[];
  span: Span;
}

/** `[E; n]`: n copies of E; each copy constructs its own instances (fresh parameters). */
export interface RepeatListExpr {
  kind: "RepeatListExpr";
  element: Expr;
  count: Expr;
  span: Span;
}

/** `{ en_de: 300, en_fr: 100 }`: a record, e.g. a per-task value keyed by task name. */
export interface RecordExpr {
  kind: "RecordExpr";
  fields: { name: Ident; value: Expr; span: Span }[];
  span: Span;
}

/** `per task E`: one instance of E per task; applying it takes the task ids as last argument. */
export interface PerTaskExpr {
  kind: "PerTaskExpr";
  operand: Expr;
  span: Span;
}

/** `frozen E`: the parameters of E are not trainable. */
export interface FrozenExpr {
  kind: "FrozenExpr";
  operand: Expr;
  span: Span;
}

/** `base with LoRA(r: 8)`: an adapter attached to a base instance; same signature as base. */
export interface WithExpr {
  kind: "WithExpr";
  base: Expr;
  adapter: Expr;
  span: Span;
}

/** Placeholder left by error recovery where an expression could not be parsed. */
export interface ErrorExpr {
  kind: "ErrorExpr";
  span: Span;
}

/** A comment token kept for the formatter: `//`, `///` (doc) or `/* *\/`. */
export interface Comment {
  text: string;
  span: Span;
}
