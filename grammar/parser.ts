/**
 * The parser of the moe language: one Chevrotain `CstParser`, created (and self-analysed) once
 * at module load and reused for every parse.
 *
 * The rules follow docs/language.md and accept exactly its language; a few differ in *shape*,
 * to keep the CST small and the call stack shallow (the parser is on the language server's
 * keystroke path, and must survive deeply nested input):
 * - Binary operators are one flat chain per expression, `expr := operand (op operand)*
 *   ('with' operand)*`; the precedence levels of the grammar (`compare`, `additive`, `mult`)
 *   are applied when the AST is built (build-ast.ts). A chained comparison (`a < b < c`) is
 *   reported here, as the grammar demands.
 * - `unary`, `prefixed`, `postfix` and `primary` are one sequence, `operand := ('-' | '!')*
 *   ('per' 'task' | 'frozen')* primary ('(' args? ')' | '.' Ident)*`. The first operand of an
 *   expression is parsed inline, as children of the `expr` node (see `operandParts`).
 * - `arg` and `dim` are inline in `args` and `type`: their parts are children labelled `arg`
 *   and `dim`, in source order.
 * A pre-scan (`prescan`) bounds the nesting depth (E0105) before the parser runs.
 *
 * Error handling. Chevrotain's single-token insertion/deletion is on (`recoveryEnabled`), its
 * rule-level re-sync is off; instead the statement and item loops catch recognition errors and
 * re-sync at statement starts (`in`, `out`, `param`, `repeat`, `if`, `name =`, `;`, `}`) and at
 * item keywords. All messages are written here (`mismatchMessage`, `closerMessage`,
 * `noAltMessage`, ...) in user terms: what was expected, what was found. After an error further
 * errors are suppressed until the parser reaches a real statement or item start (or a body's
 * closing `}`), errors at an offset already reported are dropped, and a parse error right after
 * a lexer error in the same statement is not reported: one typo gives one diagnostic.
 */
import {
  CstParser,
  EOF,
  isRecognitionException,
  NoViableAltException,
  tokenMatcher,
  type CstNode,
  type IRecognitionException,
  type IToken,
  type ParserMethod,
  type TokenType,
} from "chevrotain";
import { diagnostic, LineMap, type Diagnostic } from "../compiler/diagnostics.js";
import {
  allTokens,
  As,
  At,
  Bang,
  Block,
  Colon,
  Comma,
  Const,
  Dot,
  Ellipsis,
  Else,
  Enum,
  Eq,
  EqEq,
  False,
  Frozen,
  Gt,
  GtEq,
  Identifier,
  If,
  Import,
  In,
  keywordTokens,
  LBrace,
  LBracket,
  LParen,
  Lt,
  LtEq,
  Minus,
  Model,
  NotEq,
  NumberLit,
  Out,
  Param,
  Per,
  Percent,
  Plus,
  Primitive,
  RBrace,
  RBracket,
  Repeat,
  RParen,
  Semicolon,
  Slash,
  Star,
  StringLit,
  Tasks,
  tokenEnd,
  Train,
  True,
  With,
} from "./lexer.js";

/** Bracket nesting (plus runs of prefix operators) allowed before E0105. */
export const MAX_NESTING = 200;

// ---------------------------------------------------------------------------------------------
// Token sets

function setOf(...types: TokenType[]): ReadonlySet<TokenType> {
  return new Set(types);
}

export const ITEM_START = setOf(Import, Tasks, Enum, Const, Block, Model, Primitive, Train);
const STMT_KEYWORD = setOf(In, Out, Param, Repeat, If);
const HEADER_KEYWORD = setOf(Repeat, If);
const OPENERS = setOf(LParen, LBracket, LBrace);
const CLOSERS = setOf(RParen, RBracket, RBrace);
/** Tokens after `in`/`out`/`param` that show the keyword is misused as a name. */
const NOT_AFTER_PORT = setOf(Colon, Eq, Comma, RParen, RBracket, RBrace);
const PREFIX_OPS = setOf(Minus, Bang, Frozen, Per);
const COMPARISON = setOf(EqEq, NotEq, Lt, LtEq, Gt, GtEq);
const BINARY_OPS = [Plus, Minus, Star, Slash, Percent, At, EqEq, NotEq, Lt, LtEq, Gt, GtEq];
const EXPR_START = setOf(
  Identifier,
  NumberLit,
  StringLit,
  True,
  False,
  LParen,
  LBracket,
  LBrace,
  Minus,
  Bang,
  Per,
  Frozen,
);
const DIM_START = new Set([...EXPR_START, Ellipsis]);
const KEYWORDS = new Set(keywordTokens);

const K_ITEM = 1;
const K_OPEN = 2;
const K_CLOSE = 3;
const K_PREFIX = 4;
/** Token kinds for the pre-scan, indexed by `tokenTypeIdx`. */
const TOKEN_KIND: number[] = (() => {
  const kinds: number[] = [];
  const set = (types: Iterable<TokenType>, k: number) => {
    for (const t of types) kinds[t.tokenTypeIdx!] = k;
  };
  set(ITEM_START, K_ITEM);
  set(OPENERS, K_OPEN);
  set(CLOSERS, K_CLOSE);
  set(PREFIX_OPS, K_PREFIX);
  return kinds;
})();

/** How a token type is written, for messages. */
const LITERAL: ReadonlyMap<TokenType, string> = new Map(
  allTokens
    .filter((t) => typeof t.PATTERN === "string" || KEYWORDS.has(t))
    .map((t): [TokenType, string] => [
      t,
      typeof t.PATTERN === "string" ? t.PATTERN : (t.PATTERN as RegExp).source,
    ]),
);

/** `}`, `in`, ... for a token type; "a name", "a number", ... for the others. */
export function expectedText(type: TokenType): string {
  const lit = LITERAL.get(type);
  if (lit !== undefined) return "`" + lit + "`";
  if (type === Identifier) return "a name";
  if (type === NumberLit) return "a number";
  if (type === StringLit) return "a string";
  if (type === EOF) return "end of file";
  return type.name;
}

function clip(s: string, max = 24): string {
  const one = s.replace(/[\r\n\t]/g, " ");
  return one.length > max ? one.slice(0, max) + "…" : one;
}

/** How a token that was found is described: "end of file", "`)`", "`foo`", "string \"ab\"". */
export function foundText(t: IToken): string {
  if (t.tokenType === EOF) return "end of file";
  if (t.tokenType === StringLit) return "string `" + clip(t.image).replace(/`/g, "\\`") + "`";
  if (t.isInsertedInRecovery) return expectedText(t.tokenType);
  return "`" + clip(t.image).replace(/`/g, "\\`") + "`";
}

function reservedHint(t: IToken): string | undefined {
  return KEYWORDS.has(t.tokenType)
    ? `\`${t.image}\` is a reserved word and cannot be used as a name`
    : undefined;
}

/** Separator between message and hint inside a Chevrotain exception message. */
const HINT_SEP = "\u0000";

function withHint(message: string, hint?: string): string {
  return hint === undefined ? message : message + HINT_SEP + hint;
}

// ---------------------------------------------------------------------------------------------
// Pre-scan: nesting limit and bracket depths

export interface Prescan {
  tokens: IToken[];
  /** depth[i]: brackets still open before token i (reset at every item keyword). */
  depth: Int32Array;
  /** closeOf[i]: for an opening bracket, the index of its matching closing bracket, else -1. */
  closeOf: Int32Array;
  /** Indices of `}` that close nothing, ascending. */
  strayRBraces: number[];
  diagnostics: Diagnostic[];
}

/** How far back a closing bracket looks for its opener (keeps the scan linear). */
const MATCH_WINDOW = 2 * MAX_NESTING;

/**
 * Reports E0105 where brackets (plus a run of prefix operators) nest deeper than
 * `MAX_NESTING`, and drops the tokens of that item (up to the next item keyword), so that the
 * recursive-descent parser never recurses deeper than the limit.
 */
export function prescan(tokens: IToken[], path: string): Prescan {
  const diagnostics: Diagnostic[] = [];
  const kind = TOKEN_KIND;
  let out: IToken[] | undefined; // a copy, made when the first item is dropped
  let depth = 0;
  let prefixRun = 0;
  let itemStart = 0;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    const k = kind[t.tokenTypeIdx] ?? 0;
    if (k === K_ITEM) {
      depth = 0;
      prefixRun = 0;
      itemStart = i;
    }
    let level = 0;
    if (k === K_OPEN) {
      depth++;
      level = depth + prefixRun;
      prefixRun = 0;
    } else if (k === K_PREFIX) {
      prefixRun++;
      level = depth + prefixRun;
    } else {
      prefixRun = 0;
      if (k === K_CLOSE && depth > 0) depth--;
    }
    if (level > MAX_NESTING) {
      diagnostics.push(
        diagnostic(
          "E0105",
          path,
          { start: t.startOffset, end: tokenEnd(t) },
          `nesting deeper than ${MAX_NESTING} levels`,
          { hint: "split the expression into several bindings; the rest of this item is skipped" },
        ),
      );
      // Drop the whole item: tokens [itemStart, next item keyword).
      if (out === undefined) out = tokens.slice(0, itemStart);
      else out.length -= i - itemStart;
      let end = i + 1;
      while (end < tokens.length && kind[tokens[end]!.tokenTypeIdx] !== K_ITEM) end++;
      i = end - 1;
      depth = 0;
      prefixRun = 0;
      itemStart = end;
      continue;
    }
    if (out !== undefined) out.push(t);
  }
  const kept = out ?? tokens;
  const depths = new Int32Array(kept.length + 1);
  const closeOf = new Int32Array(kept.length).fill(-1);
  const strayRBraces: number[] = [];
  const open: number[] = []; // indices of brackets not closed yet
  depth = 0;
  for (let i = 0; i < kept.length; i++) {
    const type = kept[i]!.tokenType;
    const k = kind[type.tokenTypeIdx!] ?? 0;
    if (k === K_ITEM) {
      depth = 0;
      open.length = 0;
    }
    depths[i] = depth;
    if (k === K_OPEN) {
      depth++;
      open.push(i);
    } else if (k === K_CLOSE) {
      if (depth > 0) depth--;
      // Match by kind: `{ ( }` closes the `{`, leaving the `(` unclosed.
      const want = type === RBrace ? LBrace : type === RParen ? LParen : LBracket;
      let j = open.length - 1;
      const stop = Math.max(0, open.length - MATCH_WINDOW);
      while (j >= stop && kept[open[j]!]!.tokenType !== want) j--;
      if (j >= stop && j >= 0) {
        closeOf[open[j]!] = i;
        open.length = j;
      } else if (type === RBrace) {
        strayRBraces.push(i);
      }
    }
  }
  return { tokens: kept, depth: depths, closeOf, strayRBraces, diagnostics };
}

// ---------------------------------------------------------------------------------------------
// Per-parse state

interface ParseState {
  path: string;
  text: string;
  scan: Prescan;
  /** Start offsets of lexer diagnostics, sorted. */
  lexErrors: number[];
  diagnostics: Diagnostic[];
  reported: Set<number>;
  /** True after an error, until a real statement or item start is reached. */
  gate: boolean;
  /** Offset of the token that last re-opened reporting. */
  lastSync: number;
  lineMap: LineMap | undefined;
  /** Stray `{` reported in the current item, each excusing one missing `}` at its end. */
  strayOpenBraces: number;
  /** When set, each parsed item is passed here and not kept in the file's CST. */
  onItem: ((item: CstNode) => void) | undefined;
}

/** A statement that failed after `name =`: kept as a binding whose value is an error. */
export interface BrokenBinding {
  name: "brokenBinding";
  target: IToken;
  eq: IToken;
  /** End offset of the last token that belongs to the broken statement. */
  end: number;
}

const NO_RESYNC = { resyncEnabled: false } as const;
const OP = { LABEL: "op" } as const;
const POST = { LABEL: "post" } as const;
const ATOM = { LABEL: "atom" } as const;
const ARG = { LABEL: "arg" } as const;
const DIM = { LABEL: "dim" } as const;
const PREFIX = { LABEL: "prefix" } as const;
const UNARY = { LABEL: "unary" } as const;
const TASK_WORD = { LABEL: "taskWord" } as const;
const WITH_OPERAND = { LABEL: "withOperand" } as const;

type Elem = (idx: number) => void;

interface OperandParts {
  base: number;
  unaryIteration: () => void;
  prefixIteration: () => void;
  primaryAlts: { ALT: () => unknown; GATE?: () => boolean }[];
  postfixIteration: () => void;
}

class MoeParser extends CstParser {
  private state: ParseState | undefined;

  constructor() {
    super(allTokens as TokenType[], {
      recoveryEnabled: true,
      maxLookahead: 2,
      nodeLocationTracking: "none",
      errorMessageProvider: {
        buildMismatchTokenMessage: (o) => this.mismatchMessage(o.expected, o.actual, o.previous),
        buildNotAllInputParsedMessage: (o) => `unexpected ${foundText(o.firstRedundant)}`,
        buildNoViableAltMessage: (o) =>
          this.noAltMessage(o.actual[0]!, o.previous, o.ruleName, o.expectedPathsPerAlt),
        buildEarlyExitMessage: (o) => this.noAltMessage(o.actual[0]!, o.previous, o.ruleName, []),
      },
    });
    // Chevrotain's in-repetition re-sync is replaced by the statement loops (and skipping the
    // hook saves work at the end of every repetition).
    (this as unknown as { attemptInRepetitionRecovery: () => void }).attemptInRepetitionRecovery =
      noop;
    this.performSelfAnalysis();
  }

  // -------------------------------------------------------------------------------------------
  // Entry

  /** Parses a token vector produced by `prescan`; the caller owns `state`. */
  parseTokens(tokens: IToken[], state: ParseState): CstNode {
    this.state = state;
    this.input = tokens;
    try {
      return this.file();
    } finally {
      this.state = undefined;
      this.input = [];
    }
  }

  /** Every rule: Chevrotain's rule-level re-sync is off, the statement and item loops re-sync. */
  private rule<F extends () => void>(name: string, impl: F): ParserMethod<[], CstNode> {
    return this.RULE(name, impl, NO_RESYNC);
  }

  // -------------------------------------------------------------------------------------------
  // Items

  file = this.rule("file", () => {
    if (this.RECORDING_PHASE) {
      this.MANY(() => this.SUBRULE(this.item));
      return;
    }
    for (;;) {
      const t = this.LA(1);
      if (t.tokenType === EOF) break;
      const before = this.position();
      if (ITEM_START.has(t.tokenType)) {
        this.resync(t);
        this.state!.strayOpenBraces = 0;
        try {
          const node = this.SUBRULE(this.item);
          const onItem = this.state!.onItem;
          if (onItem !== undefined) {
            // Hand the item over right away and drop it from the CST: the CST of one item
            // then dies young, which keeps garbage collection cheap on large files.
            onItem(node);
            (this.cstTop().children["item"] as CstNode[]).pop();
          }
        } catch (e) {
          this.rethrowUnlessRecognition(e);
          this.syncToItem();
        }
      } else {
        this.topLevelJunk(t);
        this.skip();
        this.syncToItem();
      }
      if (this.position() === before) this.skip();
    }
  });

  // Alternatives and repeated sub-parts live in fields, created once: allocating closures and
  // option objects on every rule call is a measurable share of the parse time.

  /**
   * Gate: an identifier followed by `=` starts the next statement, it is not a value, except
   * right after `if`/`repeat` (`if a = b {` is a comparison written with `=`).
   */
  private readonly notBindingStart = () =>
    this.LA(2).tokenType !== Eq || HEADER_KEYWORD.has(this.LA(0).tokenType);

  item = this.rule("item", () => {
    this.OR(this.itemAlts);
  });

  private readonly itemAlts = [
    { ALT: () => this.SUBRULE(this.importDecl) },
    { ALT: () => this.SUBRULE(this.tasksDecl) },
    { ALT: () => this.SUBRULE(this.enumDecl) },
    { ALT: () => this.SUBRULE(this.constDecl) },
    { ALT: () => this.SUBRULE(this.componentDecl) },
    { ALT: () => this.SUBRULE(this.trainDecl) },
  ];

  importDecl = this.rule("importDecl", () => {
    this.CONSUME(Import);
    this.SUBRULE(this.modulePath);
    this.CONSUME(LBrace);
    this.commaSeq(1, RBrace, isIdent, this.importNameElem, true, true, "name");
    this.CONSUME(RBrace);
  });

  private readonly importNameElem: Elem = (i) => this.subrule(i, this.importName);

  modulePath = this.rule("modulePath", () => {
    this.OR([
      {
        ALT: () => {
          this.CONSUME(Identifier);
          this.MANY(() => {
            this.CONSUME(Dot);
            this.CONSUME2(Identifier);
          });
        },
      },
      { ALT: () => this.CONSUME(StringLit) },
    ]);
  });

  importName = this.rule("importName", () => {
    this.CONSUME(Identifier);
    this.OPTION(this.importAlias);
  });

  private readonly importAlias = () => {
    this.CONSUME(As);
    this.CONSUME2(Identifier);
  };

  tasksDecl = this.rule("tasksDecl", () => {
    this.CONSUME(Tasks);
    this.nameList();
  });

  enumDecl = this.rule("enumDecl", () => {
    this.CONSUME(Enum);
    this.nameList();
  });

  /** `Ident '{' Ident (',' Ident)* ','? '}'` (shared by `tasks` and `enum`). */
  private nameList(): void {
    this.CONSUME(Identifier);
    this.CONSUME(LBrace);
    this.commaSeq(1, RBrace, isIdent, this.memberElem, true, true, "name");
    this.CONSUME(RBrace);
  }

  private readonly memberElem: Elem = (i) => {
    this.consume(i + 1, Identifier);
  };

  constDecl = this.rule("constDecl", () => {
    this.CONSUME(Const);
    this.CONSUME(Identifier);
    this.OPTION(this.typeAnnotation);
    this.CONSUME(Eq);
    this.SUBRULE(this.expr);
  });

  private readonly typeAnnotation = () => {
    this.CONSUME(Colon);
    this.SUBRULE(this.type);
  };

  componentDecl = this.rule("componentDecl", () => {
    this.OR(this.componentAlts);
    this.componentRest();
  });

  private readonly componentAlts = [
    { ALT: () => this.CONSUME(Block) },
    { ALT: () => this.CONSUME(Model) },
    { ALT: () => this.CONSUME(Primitive) },
  ];

  trainDecl = this.rule("trainDecl", () => {
    this.CONSUME(Train);
    this.componentRest();
  });

  /** `Ident params? body`; a broken parameter list re-syncs at the body's `{`. */
  private componentRest(): void {
    this.CONSUME(Identifier);
    if (this.RECORDING_PHASE) {
      this.OPTION(() => this.SUBRULE(this.params));
    } else if (this.LA(1).tokenType === LParen) {
      try {
        this.SUBRULE(this.params);
      } catch (e) {
        this.rethrowUnlessRecognition(e);
        this.syncTo(isLBrace);
        if (this.LA(1).tokenType !== LBrace) return;
      }
    }
    this.SUBRULE(this.body);
  }

  params = this.rule("params", () => {
    this.CONSUME(LParen);
    this.commaSeq(1, RParen, isIdent, this.paramElem, true, false, "parameter");
    this.CONSUME(RParen);
  });

  private readonly paramElem: Elem = (i) => this.subrule(i, this.param);

  param = this.rule("param", () => {
    this.CONSUME(Identifier);
    this.CONSUME(Colon);
    this.SUBRULE(this.type);
    this.OPTION(this.defaultValue);
  });

  private readonly defaultValue = () => {
    this.CONSUME(Eq);
    this.SUBRULE(this.expr);
  };

  // -------------------------------------------------------------------------------------------
  // Types

  type = this.rule("type", () => {
    this.OR(this.typeAlts);
  });

  private readonly typeAlts = [
    {
      ALT: () => {
        this.CONSUME(LBracket);
        this.SUBRULE(this.type);
        this.CONSUME(RBracket);
      },
    },
    {
      ALT: () => {
        this.CONSUME(Identifier);
        this.OPTION(this.tensorDims);
      },
    },
  ];

  private readonly tensorDims = () => {
    this.CONSUME2(LBracket);
    this.commaSeq(1, RBracket, isDimStart, this.dimElem, false, false, "dimension");
    this.CONSUME2(RBracket);
  };

  /** `dim := '...' | expr`, inline: the dimensions are children labelled `dim`, in order. */
  private readonly dimAlts = [0, 1].map((i) => [
    { ALT: () => this.consume(20 + i, Ellipsis, DIM) },
    { ALT: () => this.subrule(20 + i, this.expr, DIM) },
  ]);

  private readonly dimElem: Elem = (i) => {
    this.or(20 + i, this.dimAlts[i]!);
  };

  // -------------------------------------------------------------------------------------------
  // Bodies and statements

  body = this.rule("body", () => {
    this.CONSUME(LBrace);
    if (this.RECORDING_PHASE) {
      this.MANY(() => this.SUBRULE(this.stmt));
      this.CONSUME(RBrace);
      return;
    }
    this.statements();
    const t = this.LA(1);
    if (t.tokenType === RBrace) {
      // A body closed by its own `}` is a statement-level success: report errors again.
      this.resync(t);
      this.CONSUME(RBrace);
    } else {
      const st = this.state!;
      if (st.strayOpenBraces > 0) {
        // A stray `{` already reported in this item: this missing `}` is its consequence.
        st.strayOpenBraces--;
        st.gate = true;
      }
      try {
        this.CONSUME(RBrace);
      } catch (e) {
        this.rethrowUnlessRecognition(e);
      }
    }
  });

  /** Whether the body being parsed is the first body of an `if` (so `else` may follow it). */
  private inThenBody(): boolean {
    const parent = this.cstParent();
    return (
      parent !== undefined &&
      parent.name === "stmt" &&
      parent.children["KwIf"] !== undefined &&
      parent.children["body"] === undefined
    );
  }

  /** `stmt*` with statement-level recovery. Stops at `}`, an item keyword or the end of file. */
  private statements(): void {
    const cst = this.cstTop();
    for (;;) {
      const t = this.LA(1);
      const type = t.tokenType;
      if (KEYWORDS.has(type) && this.LA(2).tokenType === Eq) {
        // `block = ...`: one clear message rather than the errors of reading it as an item.
        const before = this.position();
        this.report(
          t,
          `\`${t.image}\` is a reserved word and cannot name a binding`,
          `choose another name, e.g. \`${t.image}_\` or \`my_${t.image}\``,
        );
        this.skip();
        this.syncToStatement(before + 1);
        if (this.position() === before) this.skip();
        continue;
      }
      // An item keyword starts an item only with the item's name (or import path) after it;
      // otherwise (`block(x)`, a reserved word used as a name) it is part of a broken statement.
      const next = this.LA(2).tokenType;
      const startsItem = ITEM_START.has(type) && (next === Identifier || next === StringLit);
      if (type === RBrace || type === EOF || startsItem) return;
      if (type === Else && this.inThenBody()) {
        // `if c { ... else { ... }`: the `}` before `else` is missing; end the body here so
        // that the `if` takes its `else`.
        const open = (cst.children["LBrace"] as IToken[] | undefined)?.[0];
        const at = open && !Number.isNaN(open.startOffset) ? ` opened at ${this.where(open)}` : "";
        this.report(t, `expected \`}\` to close the body of \`if\`${at}, found \`else\``);
        return;
      }
      const before = this.position();
      if (STMT_KEYWORD.has(type) || type === Identifier || type === Semicolon) {
        const isBinding = type === Identifier && this.LA(2).tokenType === Eq;
        if (this.statementStartsAt(1)) this.resync(t);
        const eq = this.LA(2);

        try {
          this.SUBRULE(this.stmt);
        } catch (e) {
          this.rethrowUnlessRecognition(e);
          this.syncToStatement(before + 1);
          if (isBinding) {
            const broken: BrokenBinding = {
              name: "brokenBinding",
              target: t,
              eq,
              end: Math.max(tokenEnd(eq), tokenEnd(this.LA(0))),
            };
            (cst.children["stmt"] ??= []).push(broken as unknown as CstNode);
          }
        }
      } else {
        this.statementJunk(t);
        if (type === LBrace) this.state!.strayOpenBraces++;
        this.skip();
        this.syncToStatement(before + 1);
      }
      if (this.position() === before) this.skip();
    }
  }

  stmt = this.rule("stmt", () => {
    this.OR(this.stmtAlts);
  });

  private readonly stmtAlts = [
    {
      ALT: () => {
        this.OR2(this.directionAlts);
        this.CONSUME(Identifier);
        this.CONSUME(Colon);
        this.portTypeNotNextStatement();
        this.SUBRULE(this.type);
      },
    },
    {
      ALT: () => {
        this.CONSUME(Param);
        this.CONSUME2(Identifier);
        this.CONSUME2(Colon);
        this.SUBRULE2(this.type);
        this.OPTION(this.weightInit);
      },
    },
    {
      ALT: () => {
        this.CONSUME3(Identifier);
        this.CONSUME2(Eq);
        this.SUBRULE2(this.expr);
      },
    },
    {
      ALT: () => {
        this.CONSUME(Repeat);
        this.noBodyInsteadOfHeader("a count after `repeat`");
        this.SUBRULE3(this.expr);
        this.OPTION2(this.repeatLabel);
        this.SUBRULE(this.body);
      },
    },
    {
      ALT: () => {
        this.CONSUME(If);
        this.noBodyInsteadOfHeader("a condition after `if`");
        this.SUBRULE4(this.expr);
        this.SUBRULE2(this.body);
        this.OPTION3(this.elseBranch);
      },
    },
    { ALT: () => this.CONSUME(Semicolon) },
  ];

  private readonly directionAlts = [
    { ALT: () => this.CONSUME(In) },
    { ALT: () => this.CONSUME(Out) },
  ];

  private readonly weightInit = () => {
    this.CONSUME(Eq);
    this.SUBRULE(this.expr);
  };

  private readonly repeatLabel = () => {
    this.CONSUME(As);
    this.CONSUME4(Identifier);
  };

  private readonly elseBranch = () => {
    this.CONSUME(Else);
    this.SUBRULE3(this.body);
  };

  // -------------------------------------------------------------------------------------------
  // Expressions

  /**
   * `operand (binop operand)* ('with' operand)*`; precedence is applied in build-ast.ts.
   * The first operand is parsed inline (its parts are children of the `expr` node itself, see
   * `operandParts`); most expressions are a single operand, and one CST node fewer per
   * expression is a good part of the parse time.
   */
  expr = this.rule("expr", () => {
    this.operandParts(this.exprParts);
    this.MANY(this.binaryIteration);
    this.MANY2(this.withIteration);
    if (!this.RECORDING_PHASE) this.checkWithAndComparisons();
  });

  private readonly binopAlts = BINARY_OPS.map((type) => ({ ALT: () => this.CONSUME(type, OP) }));

  private readonly binaryIteration = () => {
    this.OR(this.binopAlts);
    this.SUBRULE2(this.operand);
  };

  private readonly withIteration = () => {
    this.CONSUME(With);
    this.SUBRULE3(this.operand, WITH_OPERAND);
  };

  /** The second and later operands of an expression, and the operand after `with`. */
  operand = this.rule("operand", () => {
    this.operandParts(this.operandOnlyParts);
  });

  /**
   * `('-' | '!')* ('per' 'task' | 'frozen')* primary ('(' args? ')' | '.' Ident)*`, with CST
   * labels `unary`, `prefix` (+ `taskWord`), `atom` (the literal, name, `(`, list or record
   * node; a parenthesized expression adds `expr` and `RParen`) and `post` (argument lists and
   * member names, in order). Used by `operand` and, with other occurrence indices, by `expr`.
   */
  private operandParts(p: OperandParts): void {
    this.many(p.base + 1, p.unaryIteration);
    this.many(p.base + 2, p.prefixIteration);
    this.or(p.base + 3, p.primaryAlts);
    this.many(p.base + 3, p.postfixIteration);
  }

  private makeOperandParts(base: number): OperandParts {
    const unaryAlts = [
      { ALT: () => this.consume(base, Minus, UNARY) },
      { ALT: () => this.consume(base, Bang, UNARY) },
    ];
    const taskWord = {
      GATE: () => this.LA(1).image === "task",
      DEF: () => this.consume(base + 1, Identifier, TASK_WORD),
    };
    const prefixAlts = [
      {
        ALT: () => {
          this.consume(base, Per, PREFIX);
          const word = this.option(base + 1, taskWord);
          if (!this.RECORDING_PHASE && word === undefined) {
            const t = this.LA(1);
            this.report(
              t,
              `expected \`task\` after \`per\`, found ${foundText(t)}`,
              "write `per task E`",
            );
          }
        },
      },
      { ALT: () => this.consume(base, Frozen, PREFIX) },
    ];
    const primaryAlts = [
      { ALT: () => this.consume(base, NumberLit, ATOM) },
      { ALT: () => this.consume(base, StringLit, ATOM) },
      { ALT: () => this.consume(base, True, ATOM) },
      { ALT: () => this.consume(base, False, ATOM) },
      // `name =` is never an expression: it starts the next statement.
      { GATE: this.notBindingStart, ALT: () => this.consume(base, Identifier, ATOM) },
      {
        ALT: () => {
          this.consume(base, LParen, ATOM);
          this.subrule(base, this.expr);
          this.consume(base, RParen);
        },
      },
      { ALT: () => this.subrule(base, this.list, ATOM) },
      { ALT: () => this.subrule(base, this.record, ATOM) },
    ];
    const postfixAlts = [
      { ALT: () => this.subrule(base, this.args, POST) },
      {
        ALT: () => {
          this.consume(base, Dot);
          this.consume(base + 2, Identifier, POST);
        },
      },
    ];
    return {
      base,
      unaryIteration: () => this.or(base + 1, unaryAlts),
      prefixIteration: () => this.or(base + 2, prefixAlts),
      primaryAlts,
      postfixIteration: () => this.or(base + 4, postfixAlts),
    };
  }

  private readonly exprParts = this.makeOperandParts(10);
  private readonly operandOnlyParts = this.makeOperandParts(0);

  /** `'[' ']' | '[' expr ';' expr ']' | '[' expr (',' expr)* ','? ']'` */
  list = this.rule("list", () => {
    this.CONSUME(LBracket);
    if (this.RECORDING_PHASE) {
      this.OPTION(() => {
        this.SUBRULE(this.expr);
        this.OR([
          {
            ALT: () => {
              this.CONSUME(Semicolon);
              this.SUBRULE2(this.expr);
            },
          },
          { ALT: () => this.commaRest(1, RBracket, isExprStart, this.listElem, true, "element") },
        ]);
      });
    } else if (this.LA(1).tokenType !== RBracket) {
      this.SUBRULE(this.expr);
      if (this.LA(1).tokenType === Semicolon) {
        this.CONSUME(Semicolon);
        this.SUBRULE2(this.expr);
      } else {
        this.commaRest(1, RBracket, isExprStart, this.listElem, true, "element");
      }
    }
    this.CONSUME(RBracket);
  });

  private readonly listElem: Elem = () => this.SUBRULE3(this.expr);

  /** `'{' field (',' field)* ','? '}'` */
  record = this.rule("record", () => {
    this.CONSUME(LBrace);
    this.commaSeq(1, RBrace, isIdent, this.fieldElem, true, true, "field");
    this.CONSUME(RBrace);
  });

  private readonly fieldElem: Elem = (i) => this.subrule(i, this.field);

  field = this.rule("field", () => {
    this.CONSUME(Identifier);
    this.CONSUME(Colon);
    this.SUBRULE(this.expr);
  });

  /**
   * `'(' (arg (',' arg)* ','?)? ')'` with `arg := (Ident ':')? expr` inline: the names and the
   * values are children labelled `arg`, in order (a name token applies to the value after it).
   */
  args = this.rule("args", () => {
    this.CONSUME(LParen);
    this.commaSeq(1, RParen, isExprStart, this.argElem, true, false, "argument");
    this.CONSUME(RParen);
  });

  private readonly argNames = [0, 1].map((i) => () => {
    this.consume(10 + i, Identifier, ARG);
    this.consume(10 + i, Colon);
  });

  private readonly argElem: Elem = (i) => {
    this.option(10 + i, this.argNames[i]!);
    this.subrule(10 + i, this.expr, ARG);
  };

  // -------------------------------------------------------------------------------------------
  // Comma-separated sequences

  /**
   * `elem (',' elem)* ','?` (the trailing comma when `trailing`), optional unless `required`.
   * Occurrence indices `slot` and `slot + 1` of OPTION/MANY/Comma are used. At run time a
   * missing comma between two elements is reported and the element parsed anyway.
   */
  private commaSeq(
    slot: number,
    closer: TokenType,
    isStart: (t: IToken) => boolean,
    elem: Elem,
    trailing: boolean,
    required: boolean,
    what: string,
  ): void {
    if (this.RECORDING_PHASE) {
      const seq = () => {
        elem(0);
        this.commaRest(slot, closer, isStart, elem, trailing, what);
      };
      if (required) seq();
      else this.option(slot, seq);
      return;
    }
    if (!required && !isStart(this.LA(1))) return;
    elem(0);
    this.commaRest(slot, closer, isStart, elem, trailing, what);
  }

  /** `(',' elem)* ','?` after a first element. */
  private commaRest(
    slot: number,
    closer: TokenType,
    isStart: (t: IToken) => boolean,
    elem: Elem,
    trailing: boolean,
    what: string,
  ): void {
    if (this.RECORDING_PHASE) {
      this.many(slot, () => {
        this.consume(slot, Comma);
        elem(1);
      });
      if (trailing) this.option(slot + 1, () => this.consume(slot + 1, Comma));
      return;
    }
    for (;;) {
      const t = this.LA(1);
      if (t.tokenType === Comma) {
        if (trailing && this.LA(2).tokenType === closer) {
          this.consume(slot + 1, Comma);
          return;
        }
        this.consume(slot, Comma);
        elem(1);
      } else if (isStart(t) && !this.atStatementStart()) {
        this.report(
          t,
          `expected \`,\` or ${expectedText(closer)} after the ${what}, found ${foundText(t)}`,
          `separate ${what}s with commas`,
        );
        elem(1);
      } else {
        return;
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Checks done while parsing

  /** `in x:` + `y = ...`: a port has no default, so `y =` is the next statement, not a type. */
  private portTypeNotNextStatement(): void {
    if (this.RECORDING_PHASE || this.LA(1).tokenType !== Identifier) return;
    if (this.LA(2).tokenType !== Eq) return;
    const t = this.LA(1);
    const message = `expected a type after \`:\`, found ${foundText(t)}`;
    this.report(t, message, "write the port's type, e.g. `in x: f32[B, T, d]`");
    throw new NoViableAltException(message, t, this.LA(0));
  }

  /**
   * `if { ... }` / `repeat { ... }`: the `{` is the body, not a record, so the header is missing.
   * Reported here (a record would give a confusing message) and the statement is abandoned.
   */
  private noBodyInsteadOfHeader(what: string): void {
    if (this.RECORDING_PHASE || this.LA(1).tokenType !== LBrace) return;
    const t = this.LA(1);
    const message = `expected ${what}, found ${foundText(t)}`;
    this.report(t, message);
    throw new NoViableAltException(message, t, this.LA(0));
  }

  /** A `with` operand cannot start with `-`/`!`; comparisons cannot be chained. */
  private checkWithAndComparisons(): void {
    const children = this.cstTop().children;
    const ops = children["op"] as IToken[] | undefined;
    if (ops !== undefined && ops.length > 1) {
      let seen = false;
      for (const op of ops) {
        if (!COMPARISON.has(op.tokenType)) continue;
        if (seen) {
          this.report(
            op,
            `comparison operators cannot be chained: unexpected ${foundText(op)}`,
            "use parentheses, e.g. `(a < b) == c`",
          );
          break;
        }
        seen = true;
      }
    }
    const withOperands = children["withOperand"] as CstNode[] | undefined;
    if (withOperands !== undefined) {
      for (const w of withOperands) {
        const unary = w.children["unary"] as IToken[] | undefined;
        if (unary !== undefined) {
          this.report(
            unary[0]!,
            `expected an adapter after \`with\`, found ${foundText(unary[0]!)}`,
            "put the adapter in parentheses: `base with (-x)`",
          );
        }
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Recovery helpers (run time only)

  private cstTop(): CstNode {
    const stack = (this as unknown as { CST_STACK: CstNode[] }).CST_STACK;
    return stack[stack.length - 1]!;
  }

  private cstParent(): CstNode | undefined {
    const stack = (this as unknown as { CST_STACK: CstNode[] }).CST_STACK;
    return stack[stack.length - 2];
  }

  /** Index of the last consumed token (-1 before the first). */
  private position(): number {
    return (this as unknown as { currIdx: number }).currIdx;
  }

  private skip(): void {
    if (this.LA(1).tokenType !== EOF) (this as unknown as { consumeToken(): void }).consumeToken();
  }

  private depthAt(index: number): number {
    const d = this.state!.scan.depth;
    return index < d.length ? d[index]! : 0;
  }

  /** Whether a `}` that closes nothing follows in the current item (so a `{` is missing). */
  private strayRBraceAhead(): boolean {
    const { tokens, strayRBraces } = this.state!.scan;
    const here = this.position() + 1;
    let lo = 0;
    let hi = strayRBraces.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (strayRBraces[mid]! < here) lo = mid + 1;
      else hi = mid;
    }
    if (lo === strayRBraces.length) return false;
    const stray = strayRBraces[lo]!;
    for (let j = here; j < stray; j++) if (ITEM_START.has(tokens[j]!.tokenType)) return false;
    return true;
  }

  private rethrowUnlessRecognition(e: unknown): void {
    if (!isRecognitionException(e as Error)) throw e;
  }

  /** `name =` or a statement keyword: a point where a new statement certainly starts. */
  private atStatementStart(): boolean {
    return ITEM_START.has(this.LA(1).tokenType) || this.statementStartsAt(1);
  }

  /**
   * Whether LA(k) starts a statement: `name =`, `repeat`, `if`, or `in`/`out`/`param` not used
   * as a name (`Linear(in: 8)` is a misuse of the keyword, not a new statement).
   */
  private statementStartsAt(k: number): boolean {
    const type = this.LA(k).tokenType;
    if (type === Identifier) return this.LA(k + 1).tokenType === Eq;
    if (type === Repeat || type === If) return true;
    if (type === In || type === Out || type === Param)
      return !NOT_AFTER_PORT.has(this.LA(k + 1).tokenType);
    return false;
  }

  /** Skips to the next item keyword (or the end of file). */
  private syncToItem(): void {
    while (this.LA(1).tokenType !== EOF && !ITEM_START.has(this.LA(1).tokenType)) this.skip();
  }

  /** Skips until `stop` holds for a token outside brackets opened while skipping, or an item keyword. */
  private syncTo(stop: (t: IToken) => boolean): void {
    let rel = 0;
    for (;;) {
      const t = this.LA(1);
      const type = t.tokenType;
      if (type === EOF || ITEM_START.has(type)) return;
      if (rel === 0 && stop(t)) return;
      if (OPENERS.has(type)) rel++;
      else if (CLOSERS.has(type) && rel > 0) rel--;
      this.skip();
    }
  }

  /**
   * Skips the rest of a broken statement: stops at a statement keyword or `name =` (outside
   * brackets opened while skipping), at `;` or `}` at the statement's own depth, at an item
   * keyword or at the end of file.
   */
  private syncToStatement(stmtStart: number): void {
    const startDepth = this.depthAt(stmtStart);
    // A bracket the broken statement opened and that is closed further on (say the `{` of
    // `norm {` where `if` was forgotten) is skipped as a whole, so that the statements inside
    // it are not taken for statements of the enclosing body.
    const here = this.position() + 1;
    const closeOf = this.state!.scan.closeOf;
    let groupEnd = -1;
    for (let k = stmtStart; k < here && k < closeOf.length; k++) {
      if (closeOf[k]! >= here && closeOf[k]! > groupEnd) groupEnd = closeOf[k]!;
    }
    while (this.position() < groupEnd && this.LA(1).tokenType !== EOF) this.skip();
    let rel = 0;
    for (;;) {
      const t = this.LA(1);
      const type = t.tokenType;
      if (type === EOF || ITEM_START.has(type)) return;
      if (rel === 0) {
        if (this.statementStartsAt(1)) return;
        if (
          (type === RBrace || type === Semicolon) &&
          this.depthAt(this.position() + 1) <= startDepth
        ) {
          return;
        }
      }
      if (OPENERS.has(type)) rel++;
      else if (CLOSERS.has(type) && rel > 0) rel--;
      this.skip();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Reporting

  /** A real statement or item start: errors are reported again from here on. */
  private resync(t: IToken): void {
    const s = this.state!;
    s.gate = false;
    s.lastSync = t.startOffset;
  }

  /** Records a syntax error (E0101) unless suppressed or already reported at that offset. */
  report(t: IToken, message: string, hint?: string): void {
    const s = this.state;
    if (s === undefined || s.gate) return;
    const span = this.spanOf(t);
    s.gate = true;
    if (s.reported.has(span.start)) return;
    if (lexErrorIn(s.lexErrors, s.lastSync, span.start)) return;
    s.reported.add(span.start);
    s.diagnostics.push(diagnostic("E0101", s.path, span, message, hint ? { hint } : {}));
  }

  private spanOf(t: IToken): { start: number; end: number } {
    const len = this.state!.text.length;
    if (t.tokenType === EOF || Number.isNaN(t.startOffset)) {
      return { start: Math.max(0, len - 1), end: len };
    }
    return { start: t.startOffset, end: tokenEnd(t) };
  }

  /**
   * Chevrotain creates each CST node's `children` with `Object.create(null)`, which V8 keeps in
   * (slow, large) dictionary mode; a plain object literal is a fast-mode object and parses ~25%
   * faster. No rule or token name collides with an `Object.prototype` member.
   */
  cstInvocationStateUpdate(fullRuleName: string): void {
    (this as unknown as { CST_STACK: CstNode[] }).CST_STACK.push({
      name: fullRuleName,
      children: {},
    });
  }

  /** Chevrotain calls this for every recognition error it raises. */
  SAVE_ERROR(error: IRecognitionException): IRecognitionException {
    const sep = error.message.indexOf(HINT_SEP);
    if (sep < 0) this.report(error.token, error.message);
    else this.report(error.token, error.message.slice(0, sep), error.message.slice(sep + 1));
    return error;
  }

  protected override canTokenTypeBeInsertedInRecovery(tokType: TokenType): boolean {
    // Inventing names or literals would put made-up values into the tree.
    return tokType !== Identifier && tokType !== NumberLit && tokType !== StringLit;
  }

  /**
   * Single-token insertion must not glue a statement to the next one (`b` + `y = 2` is not
   * `b = y`), nor open a body after `else` (`else if` would swallow the enclosing `}`).
   */
  canRecoverWithSingleTokenInsertion(expected: TokenType, follows: TokenType[]): boolean {
    if ((expected === Eq || expected === Colon) && this.atStatementStart()) return false;
    // A `{` is only invented when a `}` further on closes nothing; otherwise the invented body
    // would swallow the enclosing block's `}`.
    if (expected === LBrace && !this.strayRBraceAhead()) return false;
    if (!this.canTokenTypeBeInsertedInRecovery(expected)) return false;
    const t = this.LA(1);
    return follows.some((f) => tokenMatcher(t, f));
  }

  /** Single-token deletion must not delete the start of the next statement, nor a bracket. */
  canRecoverWithSingleTokenDeletion(expected: TokenType): boolean {
    if (this.atStatementStart()) return false;
    const type = this.LA(1).tokenType;
    if (OPENERS.has(type) || CLOSERS.has(type)) return false; // keep brackets balanced
    return this.LA(2).tokenType === expected;
  }

  private where(t: IToken): string {
    const s = this.state!;
    s.lineMap ??= new LineMap(s.text);
    const lc = s.lineMap.lineColumn(t.startOffset);
    return `${lc.line}:${lc.column}`;
  }

  private topLevelJunk(t: IToken): void {
    let hint =
      "a file holds `import`, `tasks`, `enum`, `const`, `block`, `model`, `primitive` and `train` items";
    if (t.tokenType === Identifier && this.LA(2).tokenType === Eq) {
      hint = `a file-level binding needs \`const\`: \`const ${clip(t.image)} = ...\``;
    } else if (STMT_KEYWORD.has(t.tokenType)) {
      hint = "ports, parameters and statements belong inside a `block`, `model` or `train` body";
    } else if (CLOSERS.has(t.tokenType)) {
      hint = `this ${foundText(t)} has no matching opening bracket`;
    }
    this.report(t, `unexpected ${foundText(t)}: expected an item`, hint);
  }

  private statementJunk(t: IToken): void {
    let hint = "a statement starts with `in`, `out`, `param`, `repeat`, `if` or `name =`";
    if (t.tokenType === Else) hint = "`else` must directly follow the `}` of an `if` body";
    else if (CLOSERS.has(t.tokenType))
      hint = `this ${foundText(t)} has no matching opening bracket`;
    this.report(t, `unexpected ${foundText(t)}`, hint);
  }

  // -------------------------------------------------------------------------------------------
  // Messages for Chevrotain's errors

  private mismatchMessage(expected: TokenType, actual: IToken, previous: IToken): string {
    const rule = this.getCurrentRuleName();
    const found = foundText(actual);
    const prev = previous.tokenType === EOF ? undefined : foundText(previous);
    const node = this.cstTop();
    if (CLOSERS.has(expected)) return this.closerMessage(expected, actual, rule, node);
    switch (expected) {
      case Eq:
        if (rule === "constDecl") {
          return withHint(
            `expected \`=\` and a value after ${constName(node)}, found ${found}`,
            "write `const name = value` (for example `const vocab: Int = 8000`)",
          );
        }
        return withHint(
          `expected \`=\` after ${prev ?? "the name"}, found ${found}`,
          actual.tokenType === Colon
            ? "to declare a port write `in x: f32[B, T, d]` or `out y: ...`; a binding is `name = expression`"
            : "a binding is written `name = expression`",
        );
      case Colon:
        if (rule === "param") {
          return withHint(
            `expected \`:\` and a type after parameter ${prev}, found ${found}`,
            `write \`${previous.image}: Dim\` or \`${previous.image}: Int = 8\``,
          );
        }
        if (rule === "field") {
          return withHint(
            `expected \`:\` after field name ${prev}, found ${found}`,
            "records are written `{ name: value, ... }`",
          );
        }
        if (rule === "constDecl") {
          return `expected \`:\` after ${prev}, found ${found}`;
        }
        if (node.children["KwParam"] !== undefined) {
          return withHint(
            `expected \`:\` and a type after \`param ${previous.image}\`, found ${found}`,
            `write \`param ${previous.image}: f32[n, m]\``,
          );
        }
        return withHint(
          `expected \`:\` and a type after port ${prev}, found ${found}`,
          `write \`${node.children["KwOut"] ? "out" : "in"} ${previous.image}: f32[B, T, d]\``,
        );
      case Identifier: {
        const hint = reservedHint(actual);
        if (rule === "tasksDecl" || rule === "enumDecl") {
          if (node.children["Identifier"] === undefined) {
            return withHint(`expected a name after ${prev}, found ${found}`, hint);
          }
          return withHint(
            `expected a ${rule === "tasksDecl" ? "task" : "member"} name after ${prev}, found ${found}`,
            hint,
          );
        }
        if (rule === "importName")
          return withHint(`expected a name to import, found ${found}`, hint);
        return withHint(`expected a name after ${prev ?? "this point"}, found ${found}`, hint);
      }
      case LBrace:
        return this.openBraceMessage(actual, previous, rule, node);
      default:
        return `expected ${expectedText(expected)}${prev ? ` after ${prev}` : ""}, found ${found}`;
    }
  }

  private openBraceMessage(actual: IToken, previous: IToken, rule: string, node: CstNode): string {
    const found = foundText(actual);
    if (rule === "tasksDecl" || rule === "enumDecl") {
      const kw = rule === "tasksDecl" ? "tasks" : "enum";
      const name = nameOf(node) ?? "Name";
      return withHint(
        `expected \`{\` after \`${kw} ${name}\`, found ${found}`,
        `list the members: \`${kw} ${name} { a, b }\``,
      );
    }
    if (rule === "importDecl") {
      return withHint(
        `expected \`{\` and the names to import after the module path, found ${found}`,
        "write `import std.nn { Linear, LayerNorm as LN }`",
      );
    }
    if (rule === "body") {
      const parent = this.cstParent();
      let owner = "the body";
      let hint: string | undefined;
      if (parent !== undefined) {
        const p = parent.children;
        if (p["KwElse"] !== undefined) {
          owner = "the `else` body";
          if (actual.tokenType === If)
            hint = "`else if` is not supported: write `else { if c { ... } }`";
        } else if (p["KwIf"] !== undefined) {
          owner = "the body of `if`";
          if (actual.tokenType === Eq) hint = "use `==` to compare values";
        } else if (p["KwRepeat"] !== undefined) owner = "the body of `repeat`";
        else {
          const kw = (["KwBlock", "KwModel", "KwPrimitive", "KwTrain"] as const).find(
            (k) => p[k] !== undefined,
          );
          const name = nameOf(parent);
          if (kw !== undefined && name !== undefined) {
            owner = `the body of \`${kw.slice(2).toLowerCase()} ${name}\``;
          }
        }
      }
      return withHint(`expected \`{\` to start ${owner}, found ${found}`, hint);
    }
    return `expected \`{\` after ${foundText(previous)}, found ${found}`;
  }

  private closerMessage(expected: TokenType, actual: IToken, rule: string, node: CstNode): string {
    const found = foundText(actual);
    const closer = expectedText(expected);
    const openerType = expected === RBrace ? LBrace : expected === RParen ? LParen : LBracket;
    const openers = (node.children[openerType.name] ?? node.children["atom"]) as
      IToken[] | undefined;
    const last = openers?.[openers.length - 1];
    const opener = last?.tokenType === openerType ? last : undefined;
    const at =
      opener && !Number.isNaN(opener.startOffset) ? ` opened at ${this.where(opener)}` : "";
    const what: Record<string, string> = {
      body: "the block",
      record: "the record",
      tasksDecl: "the task list",
      enumDecl: "the enum",
      importDecl: "the import list",
      args: "the argument list",
      params: "the parameter list",
      list: "the list",
      type: "the dimension list",
      operand: `the ${expectedText(openerType)}`,
      expr: `the ${expectedText(openerType)}`,
    };
    const closes = `expected ${closer} to close ${what[rule] ?? `the ${expectedText(openerType)}`}${at}, found ${found}`;
    const type = actual.tokenType;
    if (KEYWORDS.has(type) && this.LA(2).tokenType === Colon) {
      return withHint(
        `unexpected reserved word ${found}`,
        `${reservedHint(actual)}; rename it (for example \`${actual.image}_dim\`)`,
      );
    }
    const structural =
      type === EOF ||
      (type === LBrace && rule === "params") ||
      ITEM_START.has(type) ||
      STMT_KEYWORD.has(type) ||
      CLOSERS.has(type) ||
      (type === Identifier && this.LA(2).tokenType === Eq);
    if (structural || rule === "body" || rule === "operand" || rule === "expr") return closes;
    const element: Record<string, string> = {
      record: "field",
      tasksDecl: "name",
      enumDecl: "name",
      importDecl: "name",
      args: "argument",
      params: "parameter",
      list: node.children["Semicolon"] ? "" : "element",
      type: "dimension",
    };
    const el = element[rule];
    if (!el) return closes;
    let hint: string | undefined;
    if (type === Identifier || type === NumberLit) hint = `separate ${el}s with commas`;
    return withHint(`expected \`,\` or ${closer} after the ${el}, found ${found}`, hint);
  }

  private noAltMessage(
    actual: IToken,
    previous: IToken,
    rule: string,
    paths: TokenType[][][],
  ): string {
    const found = foundText(actual);
    const after = previous.tokenType === EOF ? "" : ` after ${foundText(previous)}`;
    if (rule === "type" && paths.some((alt) => alt.some((path) => path[0] === Ellipsis))) {
      rule = "dim";
    }
    switch (rule) {
      case "expr":
      case "operand":
        return withHint(`expected an expression${after}, found ${found}`, reservedHint(actual));
      case "type":
        return withHint(
          `expected a type${after}, found ${found}`,
          reservedHint(actual) ??
            "a type is a name such as `Dim`, a tensor type such as `f32[B, T, d]`, or a list such as `[Module]`",
        );
      case "dim":
        return withHint(
          `expected a dimension${after}, found ${found}`,
          "a dimension is a name, a number, an expression such as `4*d`, or `...`",
        );
      case "modulePath":
        return withHint(
          `expected a module path after \`import\`, found ${found}`,
          'write `import std.nn { Linear }` or `import "./parts.moe" { Expert }`',
        );
      default:
        return `unexpected ${found}`;
    }
  }

  private getCurrentRuleName(): string {
    return (this as unknown as { getCurrRuleFullName(): string }).getCurrRuleFullName();
  }
}

function noop(): void {}

function isLBrace(t: IToken): boolean {
  return t.tokenType === LBrace;
}

function isIdent(t: IToken): boolean {
  return t.tokenType === Identifier;
}

function isExprStart(t: IToken): boolean {
  return EXPR_START.has(t.tokenType);
}

function isDimStart(t: IToken): boolean {
  return DIM_START.has(t.tokenType);
}

function nameOf(node: CstNode): string | undefined {
  const ids = node.children["Identifier"] as IToken[] | undefined;
  const t = ids?.[0];
  return t && !t.isInsertedInRecovery ? clip(t.image) : undefined;
}

function constName(node: CstNode): string {
  const n = nameOf(node);
  return n === undefined ? "the constant" : `\`const ${n}\``;
}

/** Whether a lexer diagnostic starts in [from, to]. */
function lexErrorIn(sorted: readonly number[], from: number, to: number): boolean {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]! < from) lo = mid + 1;
    else hi = mid;
  }
  return lo < sorted.length && sorted[lo]! <= to;
}

/** The single parser instance (self-analysed once, at module load). */
export const moeParser = new MoeParser();

/** Creates the per-parse state for `moeParser.parseTokens`. */
export function newParseState(
  path: string,
  text: string,
  scan: Prescan,
  lexErrors: number[],
): ParseState {
  return {
    path,
    text,
    scan,
    lexErrors,
    diagnostics: [],
    reported: new Set(),
    gate: false,
    lastSync: 0,
    lineMap: undefined,
    strayOpenBraces: 0,
    onItem: undefined,
  };
}

export type { ParseState };
