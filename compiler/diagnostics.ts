/**
 * Diagnostics: one catalogue of stable codes for every phase, and a renderer that prints them
 * rustc/Gleam style (`error[E0302]: ...`, `--> file:line:col`, the source line, carets, hint).
 * Every code here is documented in docs/errors.md and exercised by test/compiler/errors.test.ts.
 */
import type { Span } from "../grammar/span.js";

export type Severity = "error" | "warning" | "note";

/** The catalogue: code → short title. The first digit after `E`/`W` names the phase. */
export const DIAGNOSTIC_CODES = {
  // E01xx: lexing and parsing
  E0101: "syntax error",
  E0102: "unterminated string",
  E0103: "unterminated block comment",
  E0104: "unexpected character",
  E0105: "nesting too deep",
  E0106: "invalid number",
  // E02xx: names and modules
  E0201: "unknown name",
  E0202: "duplicate definition",
  E0203: "unknown module",
  E0204: "name not found in module",
  E0205: "import cycle",
  E0206: "cannot read imported file",
  E0207: "unknown type",
  E0208: "primitive outside the standard library",
  // E03xx: types and shapes
  E0301: "type mismatch",
  E0302: "shape mismatch",
  E0303: "rank mismatch",
  E0304: "dtype mismatch",
  E0305: "wrong number of arguments",
  E0306: "unknown named argument",
  E0307: "missing argument",
  E0308: "argument given twice",
  E0309: "not callable",
  E0310: "unknown member",
  E0311: "output never assigned",
  E0312: "assignment to an input",
  E0313: "reshape changes the element count",
  E0314: "value not known at compile time",
  E0315: "invalid dimension",
  E0316: "model parameter without a default",
  E0317: "parameter shape depends on an input dimension",
  E0318: "unknown option value",
  E0319: "invalid value",
  // E04xx: experts, routers, adapters, tasks, training
  E0401: "experts differ in signature",
  E0402: "router selects more experts than exist",
  E0403: "malformed expert groups",
  E0404: "task set mismatch",
  E0405: "no task input for `per task`",
  E0406: "per-task values do not match the task set",
  E0407: "per-task instances differ in signature",
  E0408: "adapter does not fit its base",
  E0409: "router needs the task ids",
  E0410: "training program incomplete",
  E0411: "router needs the token ids",
  E0412: "parameter group does not fit the parameters",
  // E0413 (per-task LoRA with targets, refused) is retired: such LoRAs are supported.
  E0414: "router needs the instruction features",
  // E06xx: lowering to the back end
  E0601: "not supported by the back end yet",
  // W05xx: warnings
  W0501: "unused binding",
  W0502: "grouping along the sequence breaks causality",
  W0503: "unused import",
  W0504: "top-1 router renormalised: no gradient",
  // W06xx: lowering warnings
  W0601: "batch padded to the mixture-of-tokens group",
} as const;

export type DiagnosticCode = keyof typeof DIAGNOSTIC_CODES;

/** A secondary location shown under the main message (e.g. "first defined here"). */
export interface RelatedInfo {
  file: string;
  span: Span;
  message: string;
}

/** One problem found in a user's program. */
export interface Diagnostic {
  code: DiagnosticCode;
  severity: Severity;
  message: string;
  file: string;
  span: Span;
  hint?: string;
  related?: RelatedInfo[];
}

/** Builds a diagnostic; the severity follows from the code's letter. */
export function diagnostic(
  code: DiagnosticCode,
  file: string,
  span: Span,
  message: string,
  extra: { hint?: string; related?: RelatedInfo[] } = {},
): Diagnostic {
  const severity: Severity = code.startsWith("W") ? "warning" : "error";
  const d: Diagnostic = { code, severity, message, file, span };
  if (extra.hint !== undefined) d.hint = extra.hint;
  if (extra.related !== undefined && extra.related.length > 0) d.related = extra.related;
  return d;
}

export function hasErrors(diagnostics: readonly Diagnostic[]): boolean {
  return diagnostics.some((d) => d.severity === "error");
}

/** 1-based line and column of an offset (columns count UTF-16 units, as editors do). */
export interface LineColumn {
  line: number;
  column: number;
}

/** Maps offsets to lines for one source text; built once per file. */
export class LineMap {
  private readonly starts: number[] = [0];
  constructor(readonly text: string) {
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 10) this.starts.push(i + 1);
      else if (c === 13 && text.charCodeAt(i + 1) !== 10) this.starts.push(i + 1);
    }
  }
  lineColumn(offset: number): LineColumn {
    const o = Math.max(0, Math.min(offset, this.text.length));
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= o) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, column: o - this.starts[lo]! + 1 };
  }
  offset(line: number, column: number): number {
    const start = this.starts[Math.max(0, Math.min(line - 1, this.starts.length - 1))]!;
    return Math.min(start + column - 1, this.text.length);
  }
  lineText(line: number): string {
    const start = this.starts[line - 1] ?? this.text.length;
    const next = this.starts[line] ?? this.text.length;
    return this.text.slice(start, next).replace(/\r?\n$|\r$/, "");
  }
  get lineCount(): number {
    return this.starts.length;
  }
}

const MAX_FRAME_WIDTH = 160;

/** Renders diagnostics as text. `sources` maps a file path to its text (for the code frame). */
export function renderDiagnostics(
  diagnostics: readonly Diagnostic[],
  sources: ReadonlyMap<string, string>,
  options: { color?: boolean } = {},
): string {
  const maps = new Map<string, LineMap>();
  const mapFor = (file: string): LineMap | undefined => {
    let m = maps.get(file);
    if (!m) {
      const text = sources.get(file);
      if (text === undefined) return undefined;
      m = new LineMap(text);
      maps.set(file, m);
    }
    return m;
  };
  const paint = (code: string, s: string) => (options.color ? `\x1b[${code}m${s}\x1b[0m` : s);
  const out: string[] = [];
  for (const d of diagnostics) {
    const colorCode = d.severity === "error" ? "1;31" : d.severity === "warning" ? "1;33" : "1;36";
    out.push(`${paint(colorCode, `${d.severity}[${d.code}]`)}: ${paint("1", d.message)}`);
    out.push(...renderFrame(d.file, d.span, mapFor(d.file), undefined, paint));
    for (const r of d.related ?? []) {
      out.push(...renderFrame(r.file, r.span, mapFor(r.file), r.message, paint));
    }
    if (d.hint) out.push(`  = hint: ${d.hint}`);
    out.push("");
  }
  return out.join("\n");
}

/** The code frame of `span` in `file` (its text given), labelled: what diagnostics show. */
export function codeFrame(file: string, span: Span, text: string | undefined, label?: string) {
  return renderFrame(
    file,
    span,
    text === undefined ? undefined : new LineMap(text),
    label,
    (_, s) => s,
  );
}

function renderFrame(
  file: string,
  span: Span,
  map: LineMap | undefined,
  label: string | undefined,
  paint: (code: string, s: string) => string,
): string[] {
  if (!map) return [`  --> ${file}${label ? `: ${label}` : ""}`];
  const start = map.lineColumn(span.start);
  const end = map.lineColumn(Math.max(span.start, span.end));
  const lines = [`  --> ${file}:${start.line}:${start.column}`];
  const gutter = String(start.line).length;
  const pad = " ".repeat(gutter);
  let text = map.lineText(start.line).replace(/\t/g, " ");
  let caretStart = start.column - 1;
  let caretLen =
    end.line === start.line ? Math.max(1, end.column - start.column) : text.length - caretStart;
  // Long lines (a 1 MB line) are cut to a window around the span.
  if (text.length > MAX_FRAME_WIDTH) {
    const from = Math.max(0, caretStart - 40);
    text = (from > 0 ? "…" : "") + text.slice(from, from + MAX_FRAME_WIDTH) + "…";
    caretStart = caretStart - from + (from > 0 ? 1 : 0);
    caretLen = Math.min(caretLen, MAX_FRAME_WIDTH - (caretStart - 1));
  }
  caretLen = Math.max(1, caretLen);
  lines.push(`${pad} |`);
  lines.push(`${paint("1;34", String(start.line))} | ${text}`);
  const carets = " ".repeat(Math.max(0, caretStart)) + "^".repeat(caretLen);
  lines.push(`${pad} | ${paint("1;31", carets)}${label ? ` ${label}` : ""}`);
  return lines;
}

/** The JSON form used by `--json` outputs and the language server. */
export interface DiagnosticJson {
  code: string;
  severity: Severity;
  message: string;
  file: string;
  line: number;
  column: number;
  endLine: number;
  endColumn: number;
  hint?: string;
}

export function diagnosticToJson(d: Diagnostic, map: LineMap | undefined): DiagnosticJson {
  const s = map ? map.lineColumn(d.span.start) : { line: 0, column: 0 };
  const e = map ? map.lineColumn(d.span.end) : { line: 0, column: 0 };
  const json: DiagnosticJson = {
    code: d.code,
    severity: d.severity,
    message: d.message,
    file: d.file,
    line: s.line,
    column: s.column,
    endLine: e.line,
    endColumn: e.column,
  };
  if (d.hint) json.hint = d.hint;
  return json;
}

/** Edit distance, for "did you mean" hints. */
export function editDistance(a: string, b: string): number {
  if (a === b) return 0;
  const prev = new Array<number>(b.length + 1);
  for (let j = 0; j <= b.length; j++) prev[j] = j;
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      const cost = a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : cost));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

/** The closest candidate to `name`, if close enough to be a plausible typo. */
export function suggest(name: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  const limit = Math.max(1, Math.floor(name.length / 3));
  for (const c of candidates) {
    if (c === name) continue;
    const d = editDistance(name, c);
    if (d < bestDistance || (d === bestDistance && best !== undefined && c < best)) {
      best = c;
      bestDistance = d;
    }
  }
  return bestDistance <= limit ? best : undefined;
}
