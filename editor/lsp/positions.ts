/**
 * Conversions between the compiler's offsets and the protocol's positions, between paths and
 * URIs, and through the edits made since an analysis (so requests can be answered from an
 * analysis of an older text while the new one is being checked).
 */
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { Position, Range } from "vscode-languageserver/node";
import type { Span } from "../../grammar/ast.js";
import { LineMap } from "../../compiler/diagnostics.js";

const lineMaps = new Map<string, LineMap>();

/** The line map of a text (cached per file while its text stays the same). */
export function lineMapFor(file: string, text: string): LineMap {
  const cached = lineMaps.get(file);
  if (cached && cached.text === text) return cached;
  const map = new LineMap(text);
  lineMaps.set(file, map);
  return map;
}

export function offsetToPosition(map: LineMap, offset: number): Position {
  const lc = map.lineColumn(offset);
  return { line: lc.line - 1, character: lc.column - 1 };
}

export function positionToOffset(map: LineMap, pos: Position): number {
  const line = Math.max(0, Math.min(pos.line, map.lineCount - 1));
  const lineText = map.lineText(line + 1);
  return map.offset(line + 1, Math.min(pos.character, lineText.length) + 1);
}

export function spanToRange(map: LineMap, span: Span): Range {
  return { start: offsetToPosition(map, span.start), end: offsetToPosition(map, span.end) };
}

/** A file path for a document URI (`file:` URIs; others become a stable virtual path). */
export function uriToPath(uri: string): string {
  if (uri.startsWith("file:")) return path.resolve(fileURLToPath(uri));
  return "/" + uri.replace(/[:/\\]+/g, "_");
}

export function pathToUri(file: string): string {
  return pathToFileURL(file).href;
}

/** One text change: `[start, end)` of the text before it was replaced by `length` characters. */
export interface TextChange {
  start: number;
  end: number;
  length: number;
}

/**
 * The changes made to a document since the text an analysis saw, in order. Maps offsets of
 * the current text back to that text (for the request) and forward again (for the answer);
 * an offset inside changed text has no counterpart.
 */
export class EditLog {
  readonly changes: TextChange[] = [];

  get empty(): boolean {
    return this.changes.length === 0;
  }

  /** Current text → analysed text. */
  toOld(offset: number): number | undefined {
    let o = offset;
    for (let i = this.changes.length - 1; i >= 0; i--) {
      const c = this.changes[i]!;
      if (o <= c.start) continue;
      if (o < c.start + c.length) return undefined;
      o = o - c.length + (c.end - c.start);
    }
    return o;
  }

  /** Analysed text → current text. */
  toNew(offset: number): number | undefined {
    let o = offset;
    for (const c of this.changes) {
      if (o <= c.start) continue;
      if (o >= c.end) {
        o = o + c.length - (c.end - c.start);
        continue;
      }
      return undefined;
    }
    return o;
  }

  spanToNew(span: Span): Span | undefined {
    const start = this.toNew(span.start);
    const end = this.toNew(span.end);
    return start === undefined || end === undefined ? undefined : { start, end };
  }
}
