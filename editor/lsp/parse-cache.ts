/**
 * Parses for the language server: one cached result per file, reused while the text is
 * unchanged (the standard library, imported modules), and an edited file is reparsed only
 * between the top-level items the edit touched.
 *
 * The item-wise reparse gives exactly what `parseSource` gives for the whole text, or is not
 * used: it applies only when the previous parse was free of diagnostics and the reparsed
 * window parses cleanly on its own. Then the window starts right after a complete item (where
 * the lexer and the parser are between items) and ends right before the leading comments of
 * an unchanged item, so no token, comment or doc comment crosses its edges, and whatever
 * starts an item cannot continue the one before it. Everything else falls back to a full parse.
 */
import type { Comment, Item, Span } from "../../grammar/ast.js";
import type { ParseResult } from "../../grammar/parse.js";
import { parseSource } from "../../grammar/parse.js";

interface Entry {
  text: string;
  result: ParseResult;
}

/** How often each path was taken (for benchmarks and tests). */
export interface ParseStats {
  hits: number;
  incremental: number;
  full: number;
}

export class ParseCache {
  private readonly entries = new Map<string, Entry>();
  readonly stats: ParseStats = { hits: 0, incremental: 0, full: 0 };

  /** A `ParseFunction` for `loadModules`. The result is shared: callers must not mutate it. */
  readonly parse = (text: string, file: string): ParseResult => this.parseWith(text, file, false);

  /**
   * The same, for the document being edited when its previous parse is read by nobody any
   * more (its analysis is being replaced): the items after the edit are moved in place instead
   * of copied, which saves most of the work of an edit near the top of a long file.
   */
  parseOwned(text: string, file: string): ParseResult {
    return this.parseWith(text, file, true);
  }

  /**
   * The parse function for analysing `entry` as the server does: the entry's own parse may
   * move items in place (its previous analysis is being replaced), every other module's is
   * shared.
   */
  forEntry(entry: string): (text: string, file: string) => ParseResult {
    return (text, file) => (file === entry ? this.parseOwned(text, file) : this.parse(text, file));
  }

  private parseWith(text: string, file: string, inPlace: boolean): ParseResult {
    const old = this.entries.get(file);
    if (old && old.text === text) {
      this.stats.hits++;
      return old.result;
    }
    let result = old ? reparseItems(old, text, file, inPlace) : undefined;
    if (result) this.stats.incremental++;
    else {
      result = parseSource(text, file);
      this.stats.full++;
    }
    this.entries.set(file, { text, result });
    return result;
  }

  /** Forgets a file (closed, deleted). */
  forget(file: string): void {
    this.entries.delete(file);
  }
}

/** Reparses the items an edit touched, or returns undefined when only a full parse is exact. */
export function reparseItems(
  old: Entry,
  text: string,
  file: string,
  inPlace = false,
): ParseResult | undefined {
  if (old.result.diagnostics.length > 0) return undefined;
  const a = old.text;
  const max = Math.min(a.length, text.length);
  let prefix = 0;
  while (prefix < max && a.charCodeAt(prefix) === text.charCodeAt(prefix)) prefix++;
  let suffix = 0;
  while (
    suffix < max - prefix &&
    a.charCodeAt(a.length - 1 - suffix) === text.charCodeAt(text.length - 1 - suffix)
  )
    suffix++;
  const changeEnd = a.length - suffix;
  const delta = text.length - a.length;
  const items = old.result.file.items;
  // Chunk i is item i with the comments and blank space before it: [end of item i-1, end of i).
  const boundary = (i: number) => (i === 0 ? 0 : items[i - 1]!.span.end);
  let keepBefore = 0; // items [0, keepBefore) lie before the edit
  while (keepBefore < items.length && items[keepBefore]!.span.end <= prefix) keepBefore++;
  let keepFrom = keepBefore; // items [keepFrom, n) lie after it, with their leading comments
  while (keepFrom < items.length && boundary(keepFrom) < changeEnd) keepFrom++;
  const windowStart = boundary(keepBefore);
  const oldWindowEnd = keepFrom < items.length ? boundary(keepFrom) : a.length;
  if (oldWindowEnd < changeEnd) return undefined;
  const windowEnd = oldWindowEnd + delta;
  // Whitespace on both edges, so no token of the window can join one of its neighbours.
  if (windowStart > 0 && !isSpace(text.charCodeAt(windowStart))) return undefined;
  if (windowEnd < text.length && !isSpace(text.charCodeAt(windowEnd))) return undefined;
  const window = parseSource(text.slice(windowStart, windowEnd), file);
  if (window.diagnostics.length > 0) return undefined;
  // A doc comment after the window's last item would document the next, unchanged item.
  const lastEnd = window.file.items.at(-1)?.span.end ?? 0;
  if (window.comments.some((c) => c.span.start >= lastEnd && c.text.startsWith("///")))
    return undefined;

  const outItems: Item[] = items.slice(0, keepBefore);
  for (const item of window.file.items) outItems.push(shifted(item, windowStart));
  for (let i = keepFrom; i < items.length; i++) {
    outItems.push(inPlace ? shiftInPlace(items[i]!, delta) : shifted(items[i]!, delta));
  }
  const comments: Comment[] = [];
  for (const c of old.result.comments) if (c.span.end <= windowStart) comments.push(c);
  for (const c of window.comments) comments.push(shifted(c, windowStart));
  for (const c of old.result.comments)
    if (c.span.start >= oldWindowEnd) comments.push(shifted(c, delta));
  return {
    file: {
      kind: "SourceFile",
      path: file,
      items: outItems,
      span: { start: 0, end: text.length },
    },
    comments,
    diagnostics: [],
  };
}

/**
 * Moves every span under `node` by `delta`, replacing the span objects. The parser builds a
 * tree (no node is shared; test/editor/parse-cache.test.ts checks the result against full
 * parses), so every node is visited once.
 */
function shiftInPlace<T>(node: T, delta: number): T {
  if (delta !== 0) moveSpans(node, delta);
  return node;
}

function moveSpans(v: unknown, delta: number): void {
  if (Array.isArray(v)) {
    for (const x of v) if (typeof x === "object" && x !== null) moveSpans(x, delta);
    return;
  }
  const o = v as Record<string, unknown>;
  for (const key in o) {
    const x = o[key];
    if (typeof x !== "object" || x === null) continue;
    if (key === "span") {
      const s = x as Span;
      o[key] = { start: s.start + delta, end: s.end + delta };
    } else moveSpans(x, delta);
  }
}

function isSpace(c: number): boolean {
  return c === 32 || c === 10 || c === 13 || c === 9;
}

/** A copy of an AST node with every span moved by `delta` (the original is shared, not touched). */
export function shifted<T>(node: T, delta: number): T {
  if (delta === 0 || typeof node !== "object" || node === null) return node;
  return shiftValue(node, delta) as T;
}

function shiftValue(v: unknown, delta: number): unknown {
  if (Array.isArray(v)) {
    const out = new Array<unknown>(v.length);
    for (let i = 0; i < v.length; i++) {
      const x: unknown = v[i];
      out[i] = typeof x === "object" && x !== null ? shiftValue(x, delta) : x;
    }
    return out;
  }
  // A shallow copy keeps the node's shape (fast to clone), then nested objects are replaced.
  const out: Record<string, unknown> = { ...(v as Record<string, unknown>) };
  for (const key in out) {
    const x = out[key];
    if (typeof x !== "object" || x === null) continue;
    if (key === "span") {
      const s = x as Span;
      out[key] = { start: s.start + delta, end: s.end + delta };
    } else out[key] = shiftValue(x, delta);
  }
  return out;
}
