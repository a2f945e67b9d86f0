import { LineMap } from "../../compiler/diagnostics.js";
import type { ParseResult } from "../../grammar/parse.js";
import { parseSource } from "../../grammar/parse.js";

export interface Found {
  code: string;
  /** `line:col` of the span start. */
  at: string;
  /** `line:col` of the span end (exclusive). */
  end: string;
  message: string;
  hint?: string;
}

/** Parses `text` and returns its diagnostics with line:col positions. */
export function diagnosticsOf(text: string): Found[] {
  return describeDiagnostics(parseSource(text, "test.moe"), text);
}

export function describeDiagnostics(result: ParseResult, text: string): Found[] {
  const map = new LineMap(text);
  return result.diagnostics.map((d) => {
    const s = map.lineColumn(d.span.start);
    const e = map.lineColumn(d.span.end);
    const found: Found = {
      code: d.code,
      at: `${s.line}:${s.column}`,
      end: `${e.line}:${e.column}`,
      message: d.message,
    };
    if (d.hint !== undefined) found.hint = d.hint;
    return found;
  });
}
