/**
 * `formatSource`: the code formatter of the moe language (`moec fmt`, the Prettier plugin in
 * editor/prettier-plugin and the language server all call into this file).
 *
 * The layout is built with Prettier's document builders and printed by Prettier's printer:
 * 2-space indent, one statement per line, `name = value`, spaces around binary operators,
 * argument, parameter, list and record lists that do not fit broken one per line with a
 * trailing comma, at most one blank line kept between statements and items.
 *
 * Comments. The parser keeps every comment as text and span. Each is attached to the nearest
 * node by position, as Prettier plugins do (`Source.attachAll`): a comment on its own line
 * leads the node after it, one at the end of a line trails the node before it (after a list
 * item's comma; a `//` comment after an operator, `=` or `:` leads the next operand on its own
 * line instead), one inside an empty list or body dangles inside it, one right after an opening
 * bracket stays there. Comments are printed right where they are attached, never moved to the
 * end of a line: so they print in source order and a `//` comment stays on its line.
 *
 * Preserved: the AST (modulo spans), every comment, string values (re-escaped), numbers as
 * written, parentheses written by the user, `()` after a component name, blank lines between
 * statements and items (runs collapsed to one), the dominant line ending, a byte order mark,
 * the trailing spaces of a `///` comment (they are part of the doc text). `;` separators are
 * dropped, except one right after a `///` comment: it ends the doc comment, and dropping it
 * would attach the comment to the next statement. A `///` comment never moves past a token.
 *
 * Checked, not assumed: the output is parsed again and must give the same AST (spans aside)
 * and the same comments; if not, formatting throws `FormatterError` (a bug in the formatter)
 * rather than return code that means something else.
 */
import { doc, type Doc } from "prettier";
import type {
  Arg,
  BinaryExpr,
  Binding,
  CallExpr,
  ComponentDecl,
  ConstDecl,
  EnumDecl,
  Expr,
  Ident,
  IfStmt,
  ImportDecl,
  ImportName,
  ListType,
  MemberExpr,
  NamedType,
  ParamDecl,
  PortDecl,
  RepeatStmt,
  SourceFile,
  Span,
  TasksDecl,
  TrainDecl,
  WeightDecl,
  WithExpr,
} from "../../grammar/ast.js";
import type { ParseResult } from "../../grammar/parse.js";
import { tokenize } from "../../grammar/lexer.js";
import { parseSource } from "../../grammar/parse.js";
import { hasErrors, type Diagnostic } from "../diagnostics.js";

const {
  breakParent,
  group,
  hardline,
  ifBreak,
  indent,
  join,
  line,
  literalline,
  markAsRoot,
  softline,
} = doc.builders;

/** The default line width of `moec fmt`, the plugin and the language server. */
export const DEFAULT_PRINT_WIDTH = 100;

export interface FormatOptions {
  /** Lines longer than this are broken where the layout allows (default 100). */
  printWidth?: number;
}

export interface FormatResult {
  /** The formatted text; the input unchanged when it has syntax errors. */
  formatted: string;
  /** The parser's diagnostics (syntax errors stop formatting). */
  diagnostics: Diagnostic[];
}

/** Options of the document printer (Prettier's names; `moec fmt` uses 100, 2, false). */
export interface LayoutOptions {
  printWidth: number;
  tabWidth: number;
  useTabs: boolean;
}

/** The formatter would have changed the program: a bug in the formatter, never the input's fault. */
export class FormatterError extends Error {
  constructor(message: string) {
    super(`internal formatter error: ${message}; the file was left as it is (please report it)`);
    this.name = "FormatterError";
  }
}

/**
 * Formats one `.moe` source text. With syntax errors, returns the text unchanged with the
 * diagnostics. Idempotent; the output parses to the same AST as the input.
 */
export function formatSource(
  text: string,
  path = "<input>",
  options: FormatOptions = {},
): FormatResult {
  const parsed = parseSource(text, path);
  if (hasErrors(parsed.diagnostics)) return { formatted: text, diagnostics: parsed.diagnostics };
  const layoutOptions: LayoutOptions = {
    printWidth: options.printWidth ?? DEFAULT_PRINT_WIDTH,
    tabWidth: 2,
    useTabs: false,
  };
  let formatted = layOut(text, parsed, layoutOptions).output;
  if (dominantLineEnding(text) === "\r\n") formatted = formatted.replace(/\n/g, "\r\n");
  if (text.startsWith("\uFEFF")) formatted = "\uFEFF" + formatted;
  return { formatted, diagnostics: parsed.diagnostics };
}

/**
 * The Prettier document of a parsed file without syntax errors, in a layout already checked
 * (printed with `options`) to preserve the AST and the comments. Used by the Prettier plugin.
 */
export function formatDocument(text: string, parsed: ParseResult, options: LayoutOptions): Doc {
  return layOut(text, parsed, options).doc;
}

/** `"\r\n"` when most line breaks of `text` are CRLF, else `"\n"`. */
export function dominantLineEnding(text: string): "\n" | "\r\n" {
  let crlf = 0;
  let lf = 0;
  for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) {
    if (i > 0 && text.charCodeAt(i - 1) === 13) crlf++;
    else lf++;
  }
  return crlf > lf ? "\r\n" : "\n";
}

function layOut(
  text: string,
  parsed: ParseResult,
  options: LayoutOptions,
): { doc: Doc; output: string } {
  const source = new Source(text, parsed);
  const built = new DocBuilder(source).file();
  const output = doc.printer.printDocToString(built, options).formatted;
  const problem = checkOutput(parsed, output);
  if (problem !== "") throw new FormatterError(problem);
  return { doc: built, output };
}

/** "" when `output` parses to the same tree and comments as the original, else what differs. */
function checkOutput(original: ParseResult, output: string): string {
  const again = parseSource(output, original.file.path);
  if (again.diagnostics.length > 0) {
    const d = again.diagnostics[0]!;
    return `the output has a syntax error (${d.code} ${d.message})`;
  }
  if (!sameTree(original.file, again.file)) return "the output parses to a different program";
  const before = original.comments.map((c) => normalizeComment(c.text));
  const after = again.comments.map((c) => normalizeComment(c.text));
  if (before.length !== after.length || before.some((c, i) => c !== after[i])) {
    return "the output lost or reordered a comment";
  }
  return "";
}

/** A comment as the formatter keeps it: line endings normalised, `//` comments right-trimmed. */
export function normalizeComment(text: string): string {
  const t = text.replace(/\r\n/g, "\n");
  return t.startsWith("//") ? t.trimEnd() : t;
}

/** Deep equality of two syntax trees, ignoring `span`s (iterative: trees can be deep). */
export function sameTree(a: unknown, b: unknown): boolean {
  const stack: [unknown, unknown][] = [[a, b]];
  while (stack.length > 0) {
    const [x, y] = stack.pop()!;
    if (x === y) continue;
    if (typeof x !== "object" || typeof y !== "object" || x === null || y === null) return false;
    if (Array.isArray(x) !== Array.isArray(y)) return false;
    if (Array.isArray(x)) {
      const ya = y as unknown[];
      if (x.length !== ya.length) return false;
      for (let i = 0; i < x.length; i++) stack.push([x[i], ya[i]]);
      continue;
    }
    const xo = x as Record<string, unknown>;
    const yo = y as Record<string, unknown>;
    const keys = (o: Record<string, unknown>) =>
      Object.keys(o).filter((k) => k !== "span" && o[k] !== undefined);
    const xk = keys(xo);
    const yk = keys(yo);
    if (xk.length !== yk.length) return false;
    for (const k of xk) {
      if (!Object.prototype.hasOwnProperty.call(yo, k)) return false;
      stack.push([xo[k], yo[k]]);
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// The source: tokens, brackets, comments and where each comment belongs

/** A bracketed list the AST has no node for: parameters, arguments, dimensions, a body... */
interface Group {
  kind: "Group";
  role: "params" | "args" | "dims" | "body" | "names" | "members";
  span: Span;
  items: readonly Node[];
}

/** A record field (the AST gives fields no `kind`). */
type Field = { name: Ident; value: Expr; span: Span };

type ModuleRef = ImportDecl["module"];

/** Any node comments can attach to. */
type Node = { kind?: string; span: Span };

/** A comment, or a `;` kept because a `///` comment ends right before it. */
interface Note {
  text: string;
  span: Span;
  form: "line" | "block" | "semi";
  /** A `///` doc comment (exactly three slashes). */
  isDoc: boolean;
  /** Nothing but spaces and tabs between the start of its line and the note. */
  ownLine: boolean;
  /** Nothing but spaces and tabs between the note and the end of its line. */
  endOfLine: boolean;
}

/** The notes attached to one node. */
interface Slots {
  leading: Note[];
  trailing: Note[];
  /** Inside an empty list or body. */
  dangling: Note[];
  /** At the end of the line of an opening bracket, before the first item. */
  afterOpen: Note[];
  /** Inside the parentheses written around an expression, before / after it. */
  parenLeading: Note[];
  parenTrailing: Note[];
}

const EXPRESSION_KINDS = new Set([
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

function kindOf(n: Node): string {
  return n.kind ?? "Field";
}

class Source {
  readonly file: SourceFile;
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];
  private readonly images: string[] = [];
  private readonly match: Int32Array;
  private readonly groups = new Map<object, Map<string, Group>>();
  private readonly slots = new Map<object, Slots>();
  /** The text with every comment blanked out (newlines inside comments too). */
  private readonly blanked: string;

  constructor(
    readonly text: string,
    parsed: ParseResult,
  ) {
    this.file = parsed.file;
    for (const t of tokenize(text, parsed.file.path).tokens) {
      this.starts.push(t.startOffset);
      this.ends.push(t.startOffset + t.image.length);
      this.images.push(t.image);
    }
    this.match = new Int32Array(this.images.length).fill(-1);
    const open: number[] = [];
    for (let i = 0; i < this.images.length; i++) {
      const image = this.images[i]!;
      if (image === "(" || image === "[" || image === "{") open.push(i);
      else if (image === ")" || image === "]" || image === "}") {
        const j = open.pop();
        if (j !== undefined) {
          this.match[j] = i;
          this.match[i] = j;
        }
      }
    }
    const chars = text.split("");
    for (const c of parsed.comments) chars.fill(" ", c.span.start, c.span.end);
    this.blanked = chars.join("");
    this.attachAll(this.notesOf(parsed));
  }

  // -------------------------------------------------------------------------------------------
  // Tokens

  /** Index of the first token starting at or after `offset`. */
  private tokenAfter(offset: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid]! < offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The span of the bracketed region opening with the first token at or after `offset`. */
  private bracketAfter(offset: number, expected: string): Span | undefined {
    const i = this.tokenAfter(offset);
    if (this.images[i] !== expected || this.match[i]! < 0) return undefined;
    return { start: this.starts[i]!, end: this.ends[this.match[i]!]! };
  }

  /** The token ending exactly at `offset`, or -1. */
  private tokenEndingAt(offset: number): number {
    const i = this.tokenAfter(offset) - 1;
    return i >= 0 && this.ends[i] === offset ? i : -1;
  }

  /** Whether the expression is written in parentheses (its span then covers them). */
  parenthesized(n: Node): boolean {
    if (!EXPRESSION_KINDS.has(kindOf(n))) return false;
    const i = this.tokenAfter(n.span.start);
    if (this.starts[i] !== n.span.start || this.images[i] !== "(") return false;
    const j = this.tokenEndingAt(n.span.end);
    return j >= 0 && this.match[i] === j;
  }

  /** The span of an expression without the parentheses written around it. */
  innerSpan(n: Node): Span {
    let i = this.tokenAfter(n.span.start);
    let j = this.tokenEndingAt(n.span.end);
    if (this.starts[i] !== n.span.start || j < 0) return n.span;
    while (i < j && this.images[i] === "(" && this.match[i] === j) {
      i++;
      j--;
    }
    return { start: this.starts[i]!, end: this.ends[j]! };
  }

  /** The index of the `,` token between `from` and `to`, or -1. */
  commaBetween(from: number, to: number): number {
    const i = this.tokenAfter(from);
    return i < this.starts.length && this.starts[i]! < to && this.images[i] === "," ? i : -1;
  }

  tokenStart(i: number): number {
    return this.starts[i]!;
  }

  // -------------------------------------------------------------------------------------------
  // Groups: bracketed lists, found by the tokens after the node before them

  /** The group `key` of `owner`, made once (comments attach to it by identity). */
  private group(owner: object, key: string, make: () => Group | undefined): Group | undefined {
    let byKey = this.groups.get(owner);
    if (byKey === undefined) {
      byKey = new Map();
      this.groups.set(owner, byKey);
    }
    let g = byKey.get(key);
    if (g === undefined) {
      g = make();
      if (g !== undefined) byKey.set(key, g);
    }
    return g;
  }

  private makeGroup(
    role: Group["role"],
    after: number,
    open: string,
    items: readonly Node[],
  ): Group | undefined {
    const span = this.bracketAfter(after, open);
    return span ? { kind: "Group", role, span, items } : undefined;
  }

  paramsOf(c: ComponentDecl | TrainDecl): Group | undefined {
    return this.group(c, "params", () => this.makeGroup("params", c.name.span.end, "(", c.params));
  }

  bodyOf(c: ComponentDecl | TrainDecl): Group {
    return this.group(c, "body", () => {
      const after = this.paramsOf(c)?.span.end ?? c.name.span.end;
      return this.makeGroup("body", after, "{", c.body);
    })!;
  }

  repeatBodyOf(r: RepeatStmt): Group {
    return this.group(r, "body", () =>
      this.makeGroup("body", (r.label ?? r.count).span.end, "{", r.body),
    )!;
  }

  thenOf(s: IfStmt): Group {
    return this.group(s, "then", () => this.makeGroup("body", s.condition.span.end, "{", s.then))!;
  }

  elseOf(s: IfStmt): Group | undefined {
    if (s.else === undefined) return undefined;
    const otherwise = s.else;
    return this.group(s, "else", () => {
      const elseKeyword = this.tokenAfter(this.thenOf(s).span.end);
      return this.makeGroup("body", this.ends[elseKeyword] ?? s.span.end, "{", otherwise);
    });
  }

  argsOf(c: CallExpr): Group {
    return this.group(c, "args", () => this.makeGroup("args", c.callee.span.end, "(", c.args))!;
  }

  dimsOf(t: NamedType): Group | undefined {
    if (t.dims === undefined) return undefined;
    const dims = t.dims;
    return this.group(t, "dims", () => this.makeGroup("dims", t.name.span.end, "[", dims));
  }

  namesOf(d: ImportDecl): Group {
    return this.group(d, "names", () => this.makeGroup("names", d.module.span.end, "{", d.names))!;
  }

  membersOf(d: TasksDecl | EnumDecl): Group {
    return this.group(d, "members", () =>
      this.makeGroup("members", d.name.span.end, "{", d.members),
    )!;
  }

  /** Whether `(` follows the name of a component with no parameters. */
  hasEmptyParens(c: ComponentDecl | TrainDecl): boolean {
    return c.params.length === 0 && this.paramsOf(c) !== undefined;
  }

  /** The child nodes of `n`, in source order (what comments can attach to). */
  children(n: Node): Node[] {
    const out: (Node | undefined)[] = [];
    switch (kindOf(n)) {
      case "SourceFile":
        return (n as SourceFile).items;
      case "ImportDecl": {
        const d = n as ImportDecl;
        out.push(d.module, this.namesOf(d));
        break;
      }
      case "std":
        return (n as Extract<ModuleRef, { kind: "std" }>).parts;
      case "ImportName": {
        const d = n as ImportName;
        out.push(d.name, d.alias);
        break;
      }
      case "TasksDecl":
      case "EnumDecl": {
        const d = n as TasksDecl | EnumDecl;
        out.push(d.name, this.membersOf(d));
        break;
      }
      case "ConstDecl": {
        const d = n as ConstDecl;
        out.push(d.name, d.type, d.value);
        break;
      }
      case "ComponentDecl":
      case "TrainDecl": {
        const d = n as ComponentDecl | TrainDecl;
        out.push(d.name, this.paramsOf(d), this.bodyOf(d));
        break;
      }
      case "ParamDecl": {
        const d = n as ParamDecl;
        out.push(d.name, d.type, d.default);
        break;
      }
      case "NamedType": {
        const t = n as NamedType;
        out.push(t.name, this.dimsOf(t));
        break;
      }
      case "ListType":
        return [(n as ListType).element];
      case "PortDecl": {
        const d = n as PortDecl;
        out.push(d.name, d.type);
        break;
      }
      case "WeightDecl": {
        const d = n as WeightDecl;
        out.push(d.name, d.type, d.init);
        break;
      }
      case "Binding": {
        const d = n as Binding;
        out.push(d.target, d.value);
        break;
      }
      case "RepeatStmt": {
        const s = n as RepeatStmt;
        out.push(s.count, s.label, this.repeatBodyOf(s));
        break;
      }
      case "IfStmt": {
        const s = n as IfStmt;
        out.push(s.condition, this.thenOf(s), this.elseOf(s));
        break;
      }
      case "Group":
        return (n as Group).items as Node[];
      case "MemberExpr": {
        const e = n as MemberExpr;
        out.push(e.object, e.member);
        break;
      }
      case "CallExpr": {
        const e = n as CallExpr;
        out.push(e.callee, this.argsOf(e));
        break;
      }
      case "Arg": {
        const a = n as Arg;
        out.push(a.name, a.value);
        break;
      }
      case "BinaryExpr": {
        const e = n as BinaryExpr;
        out.push(e.left, e.right);
        break;
      }
      case "WithExpr": {
        const e = n as WithExpr;
        out.push(e.base, e.adapter);
        break;
      }
      case "UnaryExpr":
      case "PerTaskExpr":
      case "FrozenExpr":
        return [(n as unknown as { operand: Expr }).operand];
      case "ListExpr":
        return (n as unknown as { elements: Expr[] }).elements;
      case "RepeatListExpr": {
        const e = n as unknown as { element: Expr; count: Expr };
        out.push(e.element, e.count);
        break;
      }
      case "RecordExpr":
        return (n as unknown as { fields: Field[] }).fields;
      case "Field": {
        const f = n as Field;
        out.push(f.name, f.value);
        break;
      }
      default:
        return [];
    }
    return out.filter((c): c is Node => c !== undefined);
  }

  // -------------------------------------------------------------------------------------------
  // Comments

  slotsOf(n: object): Slots {
    let s = this.slots.get(n);
    if (s === undefined) {
      s = {
        leading: [],
        trailing: [],
        dangling: [],
        afterOpen: [],
        parenLeading: [],
        parenTrailing: [],
      };
      this.slots.set(n, s);
    }
    return s;
  }

  /** Slots of `n` if any note is attached to it (without creating them). */
  peekSlots(n: object): Slots | undefined {
    return this.slots.get(n);
  }

  private notesOf(parsed: ParseResult): Note[] {
    const text = this.text;
    const notes: Note[] = parsed.comments.map((c) => {
      const form = c.text.startsWith("//") ? "line" : "block";
      return {
        text: c.text,
        span: c.span,
        form,
        isDoc: form === "line" && c.text.startsWith("///") && !c.text.startsWith("////"),
        ownLine: false,
        endOfLine: false,
      };
    });
    // A `;` right after a `///` comment ends its doc comment run: keep it (see file comment).
    const semis: Note[] = [];
    for (const c of notes) {
      if (!c.isDoc) continue;
      const i = this.tokenAfter(c.span.end);
      if (this.images[i] !== ";") continue;
      if (!/^\s*$/.test(text.slice(c.span.end, this.starts[i]))) continue;
      semis.push({
        text: ";",
        span: { start: this.starts[i]!, end: this.ends[i]! },
        form: "semi",
        isDoc: false,
        ownLine: false,
        endOfLine: false,
      });
    }
    const all = semis.length === 0 ? notes : [...notes, ...semis];
    all.sort((a, b) => a.span.start - b.span.start);
    for (const n of all) {
      n.ownLine = this.onlyBlanksBefore(n.span.start);
      n.endOfLine = this.onlyBlanksAfter(n.span.end);
    }
    return all;
  }

  private onlyBlanksBefore(offset: number): boolean {
    const text = this.text;
    for (let i = offset - 1; i >= 0; i--) {
      const c = text[i]!;
      if (c === "\n" || c === "\r") return true;
      if (c !== " " && c !== "\t" && !(i === 0 && c === "\uFEFF")) return false;
    }
    return true;
  }

  private onlyBlanksAfter(offset: number): boolean {
    const text = this.text;
    for (let i = offset; i < text.length; i++) {
      const c = text[i]!;
      if (c === "\n" || c === "\r") return true;
      if (c !== " " && c !== "\t") return false;
    }
    return true;
  }

  /** Nothing but spaces and tabs (no token, no newline, comments ignored) in [from, to). */
  private sameLineGap(from: number, to: number): boolean {
    return /^[ \t]*$/.test(this.blanked.slice(from, to));
  }

  /** No token in [from, to) (comments ignored). */
  private noTokens(from: number, to: number): boolean {
    return /^\s*$/.test(this.blanked.slice(from, to));
  }

  /** Whether [from, to) contains an empty line (only spaces and tabs between two newlines). */
  blankLineBetween(from: number, to: number): boolean {
    return /\n[ \t]*\r?\n/.test(this.text.slice(from, to));
  }

  /** Whether the line after the note's line is empty (the note ends its line). */
  blankLineAfter(n: Note): boolean {
    const text = this.text;
    let i = n.span.end;
    while (text[i] === " " || text[i] === "\t") i++;
    if (text[i] === "\r") i++;
    if (text[i] !== "\n") return false;
    i++;
    while (text[i] === " " || text[i] === "\t") i++;
    return text[i] === "\n" || text[i] === "\r";
  }

  /** Whether the line before the note's line is empty. */
  blankLineBefore(n: Note): boolean {
    const text = this.text;
    let i = n.span.start - 1;
    while (i >= 0 && (text[i] === " " || text[i] === "\t")) i--;
    if (text[i] !== "\n") return false;
    i--;
    if (text[i] === "\r") i--;
    while (i >= 0 && (text[i] === " " || text[i] === "\t")) i--;
    return text[i] === "\n";
  }

  /** Whether a newline separates the end of `a` from the start of `b` (outside comments). */
  newlineBetween(a: Note, b: Note): boolean {
    return /[\r\n]/.test(this.blanked.slice(a.span.end, b.span.start));
  }

  /** Where a note sits: the innermost node around it and its neighbours there. */
  private locate(note: Note): {
    enclosing: Node;
    preceding?: Node;
    following?: Node;
    paren?: "parenLeading" | "parenTrailing";
  } {
    let node: Node = this.file;
    const { start, end } = note.span;
    for (;;) {
      if (this.parenthesized(node)) {
        const inner = this.innerSpan(node);
        if (start < inner.start) return { enclosing: node, paren: "parenLeading" };
        if (end > inner.end) return { enclosing: node, paren: "parenTrailing" };
      }
      const kids = this.children(node);
      let lo = 0;
      let hi = kids.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (kids[mid]!.span.end <= start) lo = mid + 1;
        else hi = mid;
      }
      const next = kids[lo];
      if (next !== undefined && next.span.start <= start && end <= next.span.end) {
        node = next;
        continue;
      }
      const out: { enclosing: Node; preceding?: Node; following?: Node } = { enclosing: node };
      if (lo > 0) out.preceding = kids[lo - 1]!;
      if (next !== undefined) out.following = next;
      return out;
    }
  }

  /** 0: trails `preceding` (or follows the opening bracket); 1: leads `following` (or dangles). */
  private rank(note: Note, enclosing: Node, preceding?: Node, following?: Node): 0 | 1 {
    const listLike = isListLike(enclosing) || kindOf(enclosing) === "SourceFile";
    let rank: 0 | 1;
    const afterDroppedSemicolon =
      isListLike(enclosing) && !preceding && !this.onBracketLine(enclosing, note);
    if (note.ownLine || afterDroppedSemicolon) {
      // On its own line (or first in a list but after a dropped `;`): it leads the next node
      // where that starts a line.
      rank = following && (!preceding || startsLine(enclosing, following)) ? 1 : preceding ? 0 : 1;
    } else if (note.form === "line") {
      // After an operand, `=` or `:`, a line comment leads the next operand on its own line
      // (ending the line before the operator would move the operator).
      const leadsNext = following !== undefined && !listLike && startsLine(enclosing, following);
      rank = leadsNext ? 1 : preceding || listLike ? 0 : 1;
    } else if (listLike && note.endOfLine) {
      rank = 0; // stays at the end of its line: after the previous item or the bracket
    } else if (listLike) {
      // Inside a line: leads the next item on that line, else trails the previous one.
      const sameLine = following && this.sameLineGap(note.span.end, following.span.start);
      rank = sameLine || !preceding ? 1 : 0;
    } else if (preceding && following) {
      // Inside an expression: leads the next node when only whitespace separates them (newlines
      // aside: the layout may move them), else trails the previous one.
      rank = this.noTokens(note.span.end, following.span.start) ? 1 : 0;
    } else {
      rank = preceding ? 0 : 1;
    }
    // A doc comment never passes a token: before a `,` it would document the next parameter.
    if (rank === 1 && note.isDoc && preceding && following) {
      if (!this.noTokens(note.span.end, following.span.start)) rank = 0;
    }
    return rank;
  }

  /** Whether `note` is on the line of the opening bracket of the list `n`. */
  private onBracketLine(n: Node, note: Note): boolean {
    const open = this.parenthesized(n) ? this.innerSpan(n).start : n.span.start;
    return this.sameLineGap(open + 1, note.span.start);
  }

  private attachAll(notes: Note[]): void {
    type Placed = ReturnType<Source["locate"]> & { note: Note; rank: number };
    const placed: Placed[] = [];
    for (const note of notes) {
      const where = this.locate(note);
      if (note.form === "semi" && !isBodyGroup(where.enclosing)) continue; // `[E; n]`
      placed.push({ ...where, note, rank: 0 });
    }
    // Desired places. Rank 0: trailing the preceding node or after the opening bracket;
    // rank 1: leading the following node or dangling. Within one gap (same neighbours) ranks
    // never decrease, so the notes of a gap print in source order.
    for (const p of placed) {
      if (p.paren === undefined) p.rank = this.rank(p.note, p.enclosing, p.preceding, p.following);
    }
    for (let i = 1; i < placed.length; i++) {
      const a = placed[i - 1]!;
      const b = placed[i]!;
      if (
        a.paren === undefined &&
        b.paren === undefined &&
        a.enclosing === b.enclosing &&
        a.preceding === b.preceding &&
        a.following === b.following &&
        b.rank < a.rank
      ) {
        b.rank = a.rank;
      }
    }
    for (const p of placed) {
      const { note, enclosing, preceding, following } = p;
      if (p.paren !== undefined) this.slotsOf(enclosing)[p.paren].push(note);
      else if (p.rank === 0 && preceding) this.slotsOf(preceding).trailing.push(note);
      else if (p.rank === 0) this.slotsOf(enclosing).afterOpen.push(note);
      else if (following) this.slotsOf(following).leading.push(note);
      else this.slotsOf(enclosing).dangling.push(note);
    }
  }
}

/** Bracketed lists whose first line may end with a comment after the opening bracket. */
function isListLike(n: Node): boolean {
  const k = kindOf(n);
  return k === "Group" || k === "ListExpr" || k === "RecordExpr";
}

/**
 * Whether `child` of `parent` is printed at the start of a line when a comment line precedes
 * it (so a comment on its own line before it can lead it and stay on its own line).
 */
function startsLine(parent: Node, child: Node): boolean {
  switch (kindOf(parent)) {
    case "SourceFile":
    case "Group":
    case "ListExpr":
    case "RecordExpr":
      return true;
    case "BinaryExpr":
      return child === (parent as BinaryExpr).right;
    case "WithExpr":
      return child === (parent as WithExpr).adapter;
    case "Binding":
    case "ConstDecl":
    case "Arg":
    case "Field":
      return child === (parent as { value?: Expr }).value;
    case "WeightDecl":
      return child === (parent as WeightDecl).init;
    case "ParamDecl":
      return child === (parent as ParamDecl).default;
    default:
      // Bodies: a comment line before `{` stays before it.
      return isBodyGroup(child);
  }
}

function isBodyGroup(n: Node): boolean {
  return kindOf(n) === "Group" && (n as Group).role === "body";
}

// ---------------------------------------------------------------------------------------------
// Building the document

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

/** A newline that keeps the trailing spaces of the line before it (and indents as usual). */
const keepLine: Doc = markAsRoot(literalline);

/** Whether a note must keep its trailing spaces (they are part of a doc comment's text). */
function needsKeep(n: Note | undefined): boolean {
  return n !== undefined && n.isDoc && /[ \t]$/.test(n.text);
}

/** The newline after a note that ends its line. */
function newlineAfter(n: Note | undefined): Doc {
  return needsKeep(n) ? keepLine : hardline;
}

function noteDoc(n: Note): Doc {
  if (n.form === "semi") return ";";
  // The lines of a block comment keep their text and indentation; one over several lines breaks
  // the groups around it (so line widths are measured right).
  if (n.form === "block") return join(literalline, n.text.replace(/\r\n/g, "\n").split("\n"));
  return n.isDoc ? n.text : n.text.trimEnd();
}

function quote(value: string): string {
  let out = '"';
  for (const ch of value) {
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\t") out += "\\t";
    else out += ch;
  }
  return out + '"';
}

const NO_NOTES: readonly Note[] = [];

class DocBuilder {
  constructor(private readonly src: Source) {}

  // -------------------------------------------------------------------------------------------
  // Comments around nodes

  private slots(n: object): Slots | undefined {
    return this.src.peekSlots(n);
  }

  private leading(n: object): readonly Note[] {
    return this.slots(n)?.leading ?? NO_NOTES;
  }

  private trailing(n: object): readonly Note[] {
    return this.slots(n)?.trailing ?? NO_NOTES;
  }

  /** Leading notes; blank lines after them are kept only between statements (`keepBlank`). */
  private printLeading(notes: readonly Note[], keepBlank = false): Doc[] {
    const parts: Doc[] = [];
    for (const n of notes) {
      parts.push(noteDoc(n));
      const breaks = n.form === "line" || n.endOfLine;
      if (n.form === "line") parts.push(newlineAfter(n));
      else parts.push(n.endOfLine ? hardline : " ");
      if (keepBlank && breaks && this.src.blankLineAfter(n)) parts.push(hardline);
    }
    return parts;
  }

  /**
   * Trailing notes, right after the node (never moved to the end of the line: they would pass
   * the tokens and comments after them). A line comment ends its line there, with a newline of
   * its own unless `newlineFollows` (a statement or a list item: the separator is one).
   */
  private printTrailing(
    notes: readonly Note[],
    options: { newlineFollows?: boolean; keepBlank?: boolean } = {},
  ): Doc[] {
    const parts: Doc[] = [];
    let atLineStart = false;
    notes.forEach((n, i) => {
      if (n.ownLine) {
        if (!atLineStart) parts.push(hardline);
        if (options.keepBlank && this.src.blankLineBefore(n)) parts.push(hardline);
      } else if (!atLineStart) parts.push(" ");
      parts.push(noteDoc(n));
      atLineStart = false;
      if (n.form === "line") {
        parts.push(breakParent);
        if (!options.newlineFollows || i < notes.length - 1) {
          parts.push(newlineAfter(n));
          atLineStart = true;
        }
      }
    });
    return parts;
  }

  private printDangling(notes: readonly Note[]): Doc[] {
    const parts: Doc[] = [];
    notes.forEach((n, i) => {
      if (i > 0) {
        const prev = notes[i - 1]!;
        if (prev.form === "line" || this.src.newlineBetween(prev, n)) {
          parts.push(newlineAfter(prev));
          if (this.src.blankLineAfter(prev)) parts.push(hardline);
        } else parts.push(" ");
      }
      parts.push(noteDoc(n));
    });
    return parts;
  }

  /** Whether a note before the node needs the node to start a new line. */
  private hasLeadingOwnLine(n: object): boolean {
    return this.leading(n).some((c) => c.form === "line" || c.endOfLine);
  }

  /**
   * `printed` with the node's comments around it, and its parentheses (those written in the
   * source, or `parens` when the context needs them).
   */
  private withComments(
    n: Node,
    printed: Doc,
    options: {
      parens?: boolean;
      skipLeading?: boolean;
      /** A statement or item: a newline follows, blank lines around comments are kept. */
      statement?: boolean;
      /** Trailing notes to print instead of the node's own. */
      trailingNotes?: readonly Note[];
    } = {},
  ): Doc {
    const s = this.slots(n);
    let d = printed;
    if (options.parens || this.src.parenthesized(n)) {
      d = [
        "(",
        this.printLeading(s?.parenLeading ?? NO_NOTES),
        d,
        this.printTrailing(s?.parenTrailing ?? NO_NOTES),
        ")",
      ];
    }
    if (s === undefined) return d;
    const parts: Doc[] = [];
    if (!options.skipLeading) parts.push(this.printLeading(s.leading, options.statement));
    // Notes attached where the printer has no place for them (not expected) lead the node.
    if (s.dangling.length > 0 && !isListLike(n) && kindOf(n) !== "SourceFile") {
      parts.push(this.printLeading(s.dangling));
    }
    const trailing = options.trailingNotes ?? s.trailing;
    const statement = options.statement === true;
    parts.push(
      d,
      this.printTrailing(trailing, { newlineFollows: statement, keepBlank: statement }),
    );
    return parts;
  }

  // -------------------------------------------------------------------------------------------
  // Lists

  /**
   * A bracketed, comma-separated list: flat when it fits, else one item per line with a
   * trailing comma. Notes after an item's comma print after the comma.
   */
  private delimited(
    owner: Node,
    items: readonly Node[],
    open: string,
    close: string,
    printItem: (n: Node) => Doc,
    options: { spaced: boolean; trailingComma: boolean },
  ): Doc {
    const s = this.slots(owner);
    const afterOpen = s?.afterOpen ?? NO_NOTES;
    const dangling = s?.dangling ?? NO_NOTES;
    const sep = options.spaced ? line : softline;
    const openDoc: Doc[] = [open];
    afterOpen.forEach((n, i) => {
      openDoc.push(" ", noteDoc(n), breakParent);
      if (n.form === "line" && i < afterOpen.length - 1) openDoc.push(newlineAfter(n));
    });
    const first: Doc = afterOpen.length > 0 ? newlineAfter(afterOpen.at(-1)) : sep;
    if (items.length === 0) {
      if (dangling.length === 0)
        return afterOpen.length > 0 ? [openDoc, hardline, close] : open + close;
      const multiline =
        afterOpen.length > 0 ||
        dangling.some((n) => n.form === "line") ||
        dangling.some((n, i) => i > 0 && this.src.newlineBetween(dangling[i - 1]!, n));
      if (!multiline) return [open, join(" ", dangling.map(noteDoc)), close];
      return [openDoc, indent([first, this.printDangling(dangling)]), hardline, close];
    }
    const parts: Doc[] = [];
    items.forEach((item, i) => {
      const next = items[i + 1];
      const trailing = this.trailing(item);
      const comma = this.src.commaBetween(item.span.end, next ? next.span.start : owner.span.end);
      const commaAt = comma >= 0 ? this.src.tokenStart(comma) : Infinity;
      let before = trailing.filter((n) => n.span.start < commaAt);
      let after = trailing.filter((n) => n.span.start >= commaAt);
      // A line comment before the comma moves after it (it would end the line before the
      // comma), unless it is a doc comment: then the comma keeps it off the next parameter.
      const last = before.at(-1);
      if (last && last.form === "line" && !last.isDoc && !last.ownLine) {
        before = before.slice(0, -1);
        after = [last, ...after];
      }
      const lastItem = next === undefined;
      // Without a comma in the source after the last item, its notes go after the new one.
      const beforeComma = lastItem && comma < 0 ? NO_NOTES : before;
      const afterComma = lastItem && comma < 0 ? trailing : after;
      parts.push(this.withComments(item, printItem(item), { trailingNotes: beforeComma }));
      parts.push(lastItem ? (options.trailingComma ? ifBreak(",") : "") : ",");
      parts.push(this.printTrailing(afterComma, { newlineFollows: true }));
      if (!lastItem) {
        const lastNote = afterComma.at(-1);
        parts.push(lastNote && lastNote.form === "line" ? newlineAfter(lastNote) : line);
      }
    });
    return group([openDoc, indent([first, parts]), sep, close]);
  }

  /** Statements (or top-level items), one per line, single blank lines kept. */
  private statements(stmts: readonly Node[], print: (n: Node) => Doc): Doc[] {
    const parts: Doc[] = [];
    stmts.forEach((stmt, i) => {
      if (i > 0) {
        const prev = stmts[i - 1]!;
        const trailing = this.trailing(prev);
        parts.push(newlineAfter(trailing.at(-1)));
        const from = Math.max(prev.span.end, trailing.at(-1)?.span.end ?? 0);
        const to = Math.min(stmt.span.start, this.leading(stmt)[0]?.span.start ?? Infinity);
        if (this.src.blankLineBetween(from, to)) parts.push(hardline);
      }
      parts.push(this.withComments(stmt, print(stmt), { statement: true }));
    });
    return parts;
  }

  private body(g: Group, options: { skipLeading?: boolean; skipTrailing?: boolean } = {}): Doc {
    const s = this.slots(g);
    const afterOpen = s?.afterOpen ?? NO_NOTES;
    const dangling = s?.dangling ?? NO_NOTES;
    const open: Doc[] = ["{"];
    afterOpen.forEach((n, i) => {
      open.push(" ", noteDoc(n), n.form === "line" ? breakParent : "");
      if (n.form === "line" && i < afterOpen.length - 1) open.push(newlineAfter(n));
    });
    const first = newlineAfter(afterOpen.at(-1));
    let printed: Doc;
    if (g.items.length > 0) {
      const stmts = this.statements(g.items, (n) => this.stmt(n));
      printed = [open, indent([first, stmts]), hardline, "}"];
    } else if (dangling.length > 0) {
      printed = [open, indent([first, this.printDangling(dangling)]), hardline, "}"];
    } else {
      printed = afterOpen.length > 0 ? [open, hardline, "}"] : "{}";
    }
    return this.withComments(g, printed, {
      skipLeading: options.skipLeading === true,
      ...(options.skipTrailing ? { trailingNotes: NO_NOTES } : {}),
    });
  }

  // -------------------------------------------------------------------------------------------
  // File and items

  file(): Doc {
    const f = this.src.file;
    if (f.items.length === 0) {
      const dangling = this.slots(f)?.dangling ?? NO_NOTES;
      return dangling.length === 0 ? "" : [this.printDangling(dangling), hardline];
    }
    return [this.statements(f.items, (n) => this.item(n)), hardline];
  }

  private ident(id: Ident): Doc {
    return this.withComments(id, id.name);
  }

  private item(n: Node): Doc {
    switch (kindOf(n)) {
      case "ImportDecl": {
        const d = n as ImportDecl;
        const m = d.module;
        const moduleDoc = this.withComments(
          m,
          m.kind === "std"
            ? join(
                ".",
                m.parts.map((p) => this.ident(p)),
              )
            : quote(m.path),
        );
        const names = this.namesOf(d);
        return ["import ", moduleDoc, " ", names];
      }
      case "TasksDecl":
      case "EnumDecl": {
        const d = n as TasksDecl | EnumDecl;
        const g = this.src.membersOf(d);
        const members = this.withComments(
          g,
          this.delimited(g, d.members, "{", "}", (m) => (m as Ident).name, {
            spaced: true,
            trailingComma: true,
          }),
        );
        return [d.kind === "TasksDecl" ? "tasks " : "enum ", this.ident(d.name), " ", members];
      }
      case "ConstDecl": {
        const d = n as ConstDecl;
        return [
          "const ",
          this.ident(d.name),
          d.type ? [": ", this.type(d.type)] : "",
          " =",
          this.assigned(d.value),
        ];
      }
      case "ComponentDecl":
      case "TrainDecl": {
        const d = n as ComponentDecl | TrainDecl;
        const keyword = d.kind === "TrainDecl" ? "train" : d.form;
        const paramsGroup = this.src.paramsOf(d);
        const params = paramsGroup
          ? this.withComments(
              paramsGroup,
              this.delimited(
                paramsGroup,
                d.params,
                "(",
                ")",
                (p) => this.paramBody(p as ParamDecl),
                {
                  spaced: false,
                  trailingComma: true,
                },
              ),
            )
          : "";
        return [keyword, " ", this.ident(d.name), params, " ", this.body(this.src.bodyOf(d))];
      }
      default:
        return this.stmt(n);
    }
  }

  private namesOf(d: ImportDecl): Doc {
    const g = this.src.namesOf(d);
    return this.withComments(
      g,
      this.delimited(
        g,
        d.names,
        "{",
        "}",
        (x) => {
          const name = x as ImportName;
          return name.alias
            ? [this.ident(name.name), " as ", this.ident(name.alias)]
            : this.ident(name.name);
        },
        { spaced: true, trailingComma: true },
      ),
    );
  }

  /** A parameter, without its own comments (the list prints those). */
  private paramBody(p: ParamDecl): Doc {
    return [
      this.ident(p.name),
      ": ",
      this.type(p.type),
      p.default ? [" =", this.assigned(p.default)] : "",
    ];
  }

  private type(t: NamedType | ListType): Doc {
    if (t.kind === "ListType") return this.withComments(t, ["[", this.type(t.element), "]"]);
    const g = this.src.dimsOf(t);
    const dims = g
      ? this.withComments(
          g,
          this.delimited(
            g,
            t.dims ?? [],
            "[",
            "]",
            (d) => (kindOf(d) === "Ellipsis" ? "..." : this.exprBody(d as Expr)),
            {
              spaced: false,
              trailingComma: false,
            },
          ),
        )
      : "";
    return this.withComments(t, [this.ident(t.name), dims]);
  }

  /** ` value` after `=` or `:`; on its own indented line when a comment line precedes it. */
  private assigned(value: Expr): Doc {
    const printed = this.expr(value);
    return this.hasLeadingOwnLine(value) ? indent([hardline, printed]) : [" ", printed];
  }

  // -------------------------------------------------------------------------------------------
  // Statements

  private stmt(n: Node): Doc {
    switch (kindOf(n)) {
      case "PortDecl": {
        const s = n as PortDecl;
        return [s.direction, " ", this.ident(s.name), ": ", this.type(s.type)];
      }
      case "WeightDecl": {
        const s = n as WeightDecl;
        return [
          "param ",
          this.ident(s.name),
          ": ",
          this.type(s.type),
          s.init ? [" =", this.assigned(s.init)] : "",
        ];
      }
      case "Binding": {
        const s = n as Binding;
        return [this.ident(s.target), " =", this.assigned(s.value)];
      }
      case "RepeatStmt": {
        const s = n as RepeatStmt;
        return [
          "repeat ",
          this.expr(s.count),
          s.label ? [" as ", this.ident(s.label)] : "",
          " ",
          this.body(this.src.repeatBodyOf(s)),
        ];
      }
      case "IfStmt": {
        const s = n as IfStmt;
        const thenGroup = this.src.thenOf(s);
        const elseGroup = this.src.elseOf(s);
        const parts: Doc[] = ["if ", this.expr(s.condition), " "];
        if (elseGroup === undefined) {
          parts.push(this.body(thenGroup));
          return parts;
        }
        // `else` goes where the notes between the two bodies allow.
        const thenNotes = this.trailing(thenGroup);
        const elseNotes = this.leading(elseGroup);
        parts.push(this.body(thenGroup, { skipTrailing: true }));
        parts.push(this.printTrailing(thenNotes, { newlineFollows: true }));
        const lastThen = thenNotes.at(-1);
        if (lastThen && (lastThen.form === "line" || lastThen.endOfLine)) {
          parts.push(newlineAfter(lastThen));
        } else if (elseNotes[0]?.ownLine) parts.push(hardline);
        else parts.push(" ");
        parts.push(
          this.printLeading(elseNotes),
          "else ",
          this.body(elseGroup, { skipLeading: true }),
        );
        return parts;
      }
      default:
        throw new FormatterError(`unexpected node ${kindOf(n)}`);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Expressions

  /** Whether `child` needs parentheses in its place (the parser would read it otherwise). */
  private needsParens(child: Expr, parent: Expr, role: string): boolean {
    const k = child.kind;
    switch (parent.kind) {
      case "BinaryExpr": {
        if (k === "WithExpr") return true;
        if (k !== "BinaryExpr") return false;
        const p = PRECEDENCE[parent.op]!;
        const c = PRECEDENCE[child.op]!;
        if (p === 1 && c === 1) return true; // comparisons do not chain
        return role === "left" ? c < p : c <= p;
      }
      case "UnaryExpr":
        return k === "BinaryExpr" || k === "WithExpr";
      case "PerTaskExpr":
      case "FrozenExpr":
        return k === "BinaryExpr" || k === "WithExpr" || k === "UnaryExpr";
      case "WithExpr":
        return role === "adapter" && (k === "BinaryExpr" || k === "WithExpr" || k === "UnaryExpr");
      case "CallExpr":
      case "MemberExpr":
        return (
          k === "BinaryExpr" ||
          k === "WithExpr" ||
          k === "UnaryExpr" ||
          k === "PerTaskExpr" ||
          k === "FrozenExpr" ||
          (parent.kind === "MemberExpr" && k === "NumberLit")
        );
      default:
        return false;
    }
  }

  private expr(e: Expr, parens = false): Doc {
    return this.withComments(e, this.exprBody(e), { parens });
  }

  private exprBody(e: Expr): Doc {
    switch (e.kind) {
      case "NumberLit": {
        const inner = this.src.innerSpan(e);
        return this.src.text.slice(inner.start, inner.end);
      }
      case "StringLit":
        return quote(e.value);
      case "BoolLit":
        return e.value ? "true" : "false";
      case "NameExpr":
        return e.name.name;
      case "ErrorExpr":
        throw new FormatterError("cannot format a file with syntax errors");
      case "MemberExpr":
      case "CallExpr":
        return this.postfixChain(e);
      case "BinaryExpr":
        return this.binaryChain(e);
      case "WithExpr":
        return this.withChain(e);
      case "UnaryExpr": {
        const spaced = e.op === "-" && e.operand.kind === "UnaryExpr" && e.operand.op === "-";
        return [
          e.op,
          spaced && !this.src.parenthesized(e.operand) ? " " : "",
          this.expr(e.operand, this.needsParens(e.operand, e, "operand")),
        ];
      }
      case "PerTaskExpr":
        return ["per task ", this.expr(e.operand, this.needsParens(e.operand, e, "operand"))];
      case "FrozenExpr":
        return ["frozen ", this.expr(e.operand, this.needsParens(e.operand, e, "operand"))];
      case "ListExpr":
        return this.delimited(e, e.elements, "[", "]", (x) => this.exprBody(x as Expr), {
          spaced: false,
          trailingComma: true,
        });
      case "RepeatListExpr":
        return ["[", this.expr(e.element), "; ", this.expr(e.count), "]"];
      case "RecordExpr":
        return this.delimited(
          e,
          e.fields,
          "{",
          "}",
          (f) => {
            const field = f as Field;
            return [this.ident(field.name), ":", this.assigned(field.value)];
          },
          { spaced: true, trailingComma: true },
        );
    }
  }

  /** `a.b(c).d`: printed from the inside out without recursion on the chain. */
  private postfixChain(e: MemberExpr | CallExpr): Doc {
    const chain: (MemberExpr | CallExpr)[] = [e];
    let base: Expr = e.kind === "CallExpr" ? e.callee : e.object;
    while (
      (base.kind === "CallExpr" || base.kind === "MemberExpr") &&
      !this.src.parenthesized(base)
    ) {
      chain.push(base);
      base = base.kind === "CallExpr" ? base.callee : base.object;
    }
    let d: Doc = this.expr(base, this.needsParens(base, chain.at(-1)!, "object"));
    for (let i = chain.length - 1; i >= 0; i--) {
      const link = chain[i]!;
      const piece: Doc =
        link.kind === "CallExpr" ? [d, this.args(link)] : [d, ".", this.ident(link.member)];
      d = i === 0 ? piece : this.withComments(link, piece);
    }
    return d;
  }

  private args(call: CallExpr): Doc {
    const g = this.src.argsOf(call);
    return this.withComments(
      g,
      this.delimited(
        g,
        call.args,
        "(",
        ")",
        (a) => {
          const arg = a as Arg;
          return arg.name
            ? [this.ident(arg.name), ":", this.assigned(arg.value)]
            : this.expr(arg.value);
        },
        { spaced: false, trailingComma: true },
      ),
    );
  }

  /** `a + b - c`: one level of precedence, flattened; breaks after the operators. */
  private binaryChain(e: BinaryExpr): Doc {
    const level = PRECEDENCE[e.op]!;
    const chain: BinaryExpr[] = [e];
    let base: Expr = e.left;
    while (
      level > 1 &&
      base.kind === "BinaryExpr" &&
      PRECEDENCE[base.op] === level &&
      !this.src.parenthesized(base)
    ) {
      chain.push(base);
      base = base.left;
    }
    let d: Doc = this.expr(base, this.needsParens(base, chain.at(-1)!, "left"));
    for (let i = chain.length - 1; i >= 0; i--) {
      const link = chain[i]!;
      const right = this.expr(link.right, this.needsParens(link.right, link, "right"));
      const piece: Doc = [d, " ", link.op, indent([line, right])];
      d = i === 0 ? piece : this.withComments(link, piece);
    }
    return group(d);
  }

  /** `base with A with B`. */
  private withChain(e: WithExpr): Doc {
    const chain: WithExpr[] = [e];
    let base: Expr = e.base;
    while (base.kind === "WithExpr" && !this.src.parenthesized(base)) {
      chain.push(base);
      base = base.base;
    }
    let d: Doc = this.expr(base, this.needsParens(base, chain.at(-1)!, "base"));
    for (let i = chain.length - 1; i >= 0; i--) {
      const link = chain[i]!;
      const adapter = this.expr(link.adapter, this.needsParens(link.adapter, link, "adapter"));
      const piece: Doc = [d, indent([line, "with ", adapter])];
      d = i === 0 ? piece : this.withComments(link, piece);
    }
    return group(d);
  }
}
