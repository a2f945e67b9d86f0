/**
 * Reading the text before the cursor, for completion and signature help (the document is
 * usually incomplete while typing, so these work on text, not on the AST).
 */

/** The identifier that ends a text (the word being typed). */
export const WORD_BEFORE = /[\p{L}_][\p{L}\p{M}\p{Nd}_]*$/u;

/** Whether the cursor is in a `//` comment or a string of the current line. */
export function inCommentOrString(line: string): boolean {
  let inString = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === "/" && line[i + 1] === "/") return true;
  }
  return inString;
}

/** The innermost bracket open at `offset` (within the current item). */
export function innermostOpen(
  text: string,
  offset: number,
): { char: string; index: number } | undefined {
  const stack: { char: string; index: number }[] = [];
  // Start at the current top-level item: the last line that starts with a declaration keyword.
  const itemStart = Math.max(
    0,
    ...[
      ...text
        .slice(0, offset)
        .matchAll(/^(?:block|model|primitive|train|const|tasks|enum|import)\b/gm),
    ].map((m) => m.index ?? 0),
  );
  let inString = false;
  for (let i = itemStart; i < offset; i++) {
    const c = text[i]!;
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"' || c === "\n") inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === "/" && text[i + 1] === "/") {
      const nl = text.indexOf("\n", i);
      i = nl < 0 ? offset : nl;
    } else if (c === "(" || c === "[" || c === "{") stack.push({ char: c, index: i });
    else if (c === ")" || c === "]" || c === "}") stack.pop();
  }
  return stack.at(-1);
}

/** A `{` that opens a record (after `(`, `:`, `,`, `=`, `[`), not a body. */
export function isRecordBrace(text: string, index: number): boolean {
  const prev = text.slice(0, index).trimEnd().at(-1);
  return prev !== undefined && "(:,=[".includes(prev);
}

export function lastTopLevelComma(args: string): number {
  let depth = 0;
  let last = -1;
  for (let i = 0; i < args.length; i++) {
    const c = args[i]!;
    if (c === "(" || c === "[" || c === "{") depth++;
    else if (c === ")" || c === "]" || c === "}") depth--;
    else if (c === "," && depth === 0) last = i;
  }
  return last;
}
