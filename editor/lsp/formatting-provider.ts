/**
 * Document formatting with the compiler's formatter (`compiler/format/format-source.ts`, the code
 * `moec fmt` and the Prettier plugin run): one edit replacing the whole text, none when the
 * text is already formatted or has syntax errors. The formatter (and Prettier's printer under
 * it) is loaded on the first request, so the server starts without it.
 */
import type { TextEdit } from "vscode-languageserver/node";
import type { Diagnostic } from "../../compiler/diagnostics.js";
import type { OpenDocument } from "./workspace.js";

/** `formatSource` of compiler/format/format-source.ts. */
type FormatSource = (
  text: string,
  path?: string,
) => { formatted: string; diagnostics: Diagnostic[] };

// A computed specifier: the formatter is looked up when first needed, not when compiling.
const FORMATTER = "../../compiler/format/format-source.js";
let formatter: Promise<FormatSource> | undefined;

export async function formatDocument(doc: OpenDocument): Promise<TextEdit[]> {
  formatter ??= (import(FORMATTER) as Promise<{ formatSource: FormatSource }>).then(
    (m) => m.formatSource,
  );
  const formatSource = await formatter;
  const text = doc.text;
  const result = formatSource(text, doc.path);
  if (result.diagnostics.some((d) => d.severity === "error") || result.formatted === text) {
    return [];
  }
  const end = doc.lineMap.lineColumn(text.length);
  return [
    {
      range: {
        start: { line: 0, character: 0 },
        end: { line: end.line - 1, character: end.column - 1 },
      },
      newText: result.formatted,
    },
  ];
}
