/**
 * Test helpers: a stable S-expression rendering of a parse result (for golden files), an
 * iterative AST walker, and line:col formatting.
 *
 * Golden format: one S-expression per item, `(Kind field=value ...)`; names print bare, strings
 * as JSON. Spans are left out except on top-level items, shown as `@line:col-line:col`, so that
 * goldens stay readable and small edits do not ripple through every line. Diagnostics follow.
 */
import type { Span } from "../../grammar/ast.js";
import type { ParseResult } from "../../grammar/parse.js";
import { LineMap, type Diagnostic } from "../../compiler/diagnostics.js";

const WIDTH = 96;
const BARE = /^[\p{L}_][\p{L}\p{M}\p{Nd}_]*$/u;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export function lineCol(map: LineMap, offset: number): string {
  const lc = map.lineColumn(offset);
  return `${lc.line}:${lc.column}`;
}

export function spanText(map: LineMap, span: Span): string {
  return `${lineCol(map, span.start)}-${lineCol(map, span.end)}`;
}

export function formatDiagnostic(map: LineMap, d: Diagnostic): string {
  const hint = d.hint ? ` [hint: ${d.hint}]` : "";
  return `${d.code} ${spanText(map, d.span)} ${d.message}${hint}`;
}

/** The golden text of a parse result. */
export function printParseResult(result: ParseResult, text: string): string {
  const map = new LineMap(text);
  const out: string[] = [];
  for (const item of result.file.items) {
    out.push(print(item as unknown as Json, "", spanText(map, item.span)));
  }
  if (result.diagnostics.length > 0) {
    out.push("; diagnostics");
    for (const d of result.diagnostics) out.push(formatDiagnostic(map, d));
  }
  return out.join("\n") + "\n";
}

function print(v: Json, indent: string, at?: string): string {
  if (v === null) return "null";
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  if (Array.isArray(v)) {
    if (v.length === 0) return "[]";
    const inner = indent + "  ";
    const parts = v.map((x) => print(x, inner));
    const flat = `[${parts.join(" ")}]`;
    if (!flat.includes("\n") && indent.length + flat.length <= WIDTH) return flat;
    return `[\n${parts.map((p) => inner + p).join("\n")}\n${indent}]`;
  }
  const kind = v["kind"];
  if (kind === "Ident" && typeof v["name"] === "string") {
    return BARE.test(v["name"]) ? v["name"] : JSON.stringify(v["name"]);
  }
  const inner = indent + "  ";
  const fields: string[] = [];
  for (const [k, x] of Object.entries(v)) {
    if (k === "kind" || k === "span" || x === undefined) continue;
    fields.push(`${k}=${print(x, inner)}`);
  }
  const head = typeof kind === "string" ? kind : "";
  const open = typeof kind === "string" ? "(" : "{";
  const close = typeof kind === "string" ? ")" : "}";
  const label = at ? ` @${at}` : "";
  const flat = `${open}${head}${label}${fields.length > 0 && head ? " " : ""}${fields.join(" ")}${close}`;
  if (!flat.includes("\n") && indent.length + flat.length <= WIDTH) return flat;
  return `${open}${head}${label}\n${fields.map((f) => inner + f).join("\n")}${close}`;
}

/** A node of the AST: any object with a `kind` and a `span`. */
export interface AnyNode {
  kind: string;
  span: Span;
  [key: string]: unknown;
}

/**
 * Visits every object with a `span` below `root` (nodes, and span-carrying parts such as record
 * fields), with its nearest span-carrying ancestor. Iterative: safe on very deep trees.
 */
export function walkSpans(
  root: object,
  visit: (
    node: { span: Span } & Record<string, unknown>,
    parent: { span: Span } | undefined,
  ) => void,
): void {
  const stack: [unknown, { span: Span } | undefined][] = [[root, undefined]];
  while (stack.length > 0) {
    const [value, parent] = stack.pop()!;
    if (value === null || typeof value !== "object") continue;
    if (Array.isArray(value)) {
      for (const x of value) stack.push([x, parent]);
      continue;
    }
    const obj = value as Record<string, unknown>;
    let self = parent;
    if (isSpan(obj["span"])) {
      self = obj as { span: Span };
      visit(obj as { span: Span } & Record<string, unknown>, parent);
    }
    for (const [k, x] of Object.entries(obj)) {
      if (k !== "span") stack.push([x, self]);
    }
  }
}

function isSpan(x: unknown): x is Span {
  return (
    typeof x === "object" &&
    x !== null &&
    typeof (x as Span).start === "number" &&
    typeof (x as Span).end === "number"
  );
}

/** The tree without spans (to compare structure across CRLF/LF versions of a file). */
export function withoutSpans(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value, (k, v: unknown) => (k === "span" ? undefined : v)));
}
