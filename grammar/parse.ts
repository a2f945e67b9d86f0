/**
 * `parseSource`: text → AST, comments and syntax diagnostics (E0101–E0106).
 *
 * Pure: every call starts from fresh per-parse state (the one lexer and the one parser are
 * reused, only their input changes). Never throws and always terminates, whatever the input.
 */
import type { IToken } from "chevrotain";
import type { Comment, Item, SourceFile } from "./ast.js";
import { diagnostic, type Diagnostic } from "../compiler/diagnostics.js";
import { itemBuilder, sourceFile } from "./build-ast.js";
import { tokenEnd, tokenize } from "./lexer.js";
import { moeParser, newParseState, prescan } from "./parser.js";

/** The parser's result: the tree, the comments (for the formatter) and syntax diagnostics. */
export interface ParseResult {
  file: SourceFile;
  comments: Comment[];
  diagnostics: Diagnostic[];
}

export function parseSource(text: string, path: string): ParseResult {
  try {
    return parseUnchecked(text, path);
  } catch (e) {
    // Not expected to happen; a parse must never take the caller down.
    const tooDeep = e instanceof RangeError;
    return {
      file: { kind: "SourceFile", path, items: [], span: { start: 0, end: text.length } },
      comments: [],
      diagnostics: [
        diagnostic(
          tooDeep ? "E0105" : "E0101",
          path,
          { start: 0, end: 0 },
          tooDeep
            ? "nesting too deep to parse"
            : `internal parser error: ${e instanceof Error ? e.message : String(e)}`,
        ),
      ],
    };
  }
}

function parseUnchecked(text: string, path: string): ParseResult {
  // Chevrotain reports syntax errors as exceptions; their stack traces are never looked at
  // and capturing them is most of the cost of a syntax error. Restored before returning.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return parseWithoutTraces(text, path);
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
}

function parseWithoutTraces(text: string, path: string): ParseResult {
  const lexed = tokenize(text, path);
  const scanned = prescan(lexed.tokens, path);
  const lexDiagnostics = [...lexed.diagnostics, ...scanned.diagnostics];
  const state = newParseState(
    path,
    text,
    scanned,
    lexDiagnostics.map((d) => d.span.start).sort((a, b) => a - b),
  );
  const ctx = { path, text, docs: docComments(text, lexed.comments) };
  const build = itemBuilder(ctx);
  const items: Item[] = [];
  state.onItem = (node) => {
    const item = build(node);
    if (item !== undefined) items.push(item);
  };
  moeParser.parseTokens(scanned.tokens, state);
  const file = sourceFile(ctx, items);
  const diagnostics: Diagnostic[] = [...lexDiagnostics, ...state.diagnostics];
  diagnostics.sort((a, b) => a.span.start - b.span.start);
  const comments: Comment[] = lexed.comments.map((c) => ({
    text: c.image,
    span: { start: c.startOffset, end: tokenEnd(c) },
  }));
  return { file, comments, diagnostics };
}

function isDocComment(c: IToken): boolean {
  return c.image.startsWith("///") && !c.image.startsWith("////");
}

function onlyWhitespace(text: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (!/\s/.test(text[i]!)) return false;
  return true;
}

/**
 * Doc comments: a run of `///` lines (only whitespace between them) documents the token that
 * follows it directly. Keyed by that token's start offset; text without `///` and one space.
 */
function docComments(text: string, comments: readonly IToken[]): Map<number, string> {
  const docs = new Map<number, string>();
  let i = 0;
  while (i < comments.length) {
    const first = comments[i]!;
    if (!isDocComment(first)) {
      i++;
      continue;
    }
    const lines: string[] = [];
    let end = first.startOffset;
    let j = i;
    while (j < comments.length) {
      const c = comments[j]!;
      if (!isDocComment(c) || !onlyWhitespace(text, end, c.startOffset)) break;
      const body = c.image.slice(3);
      lines.push(body.startsWith(" ") ? body.slice(1) : body);
      end = tokenEnd(c);
      j++;
    }
    let k = end;
    while (k < text.length && /\s/.test(text[k]!)) k++;
    docs.set(k, lines.join("\n"));
    i = j;
  }
  return docs;
}
