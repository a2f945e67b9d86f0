/**
 * Quick fixes for the checker's hints: "did you mean `X`?" replaces the name; an unknown name
 * the standard library declares gets its import (into an existing `import std.m { ... }` when
 * there is one); an unused binding can be renamed `_x`.
 */
import {
  type CodeAction,
  CodeActionKind,
  type Diagnostic as LspDiagnostic,
} from "vscode-languageserver/node";
import { CompletionContext, stdlibItems } from "./completion-provider.js";
import type { DiagnosticData } from "./diagnostic-provider.js";
import { positionToOffset } from "./positions.js";
import type { DocumentView } from "./workspace.js";

export function codeActions(view: DocumentView, diagnostics: LspDiagnostic[]): CodeAction[] {
  const out: CodeAction[] = [];
  const uri = view.document.uri;
  const text = view.document.text;
  const map = view.document.lineMap;
  for (const d of diagnostics) {
    if (d.source !== "moec") continue;
    const hint = (d.data as DiagnosticData | undefined)?.hint ?? hintFromRelated(d);
    const written = text.slice(
      positionToOffset(map, d.range.start),
      positionToOffset(map, d.range.end),
    );
    const mean = hint ? /did you mean `([^`]+)`\?/.exec(hint) : null;
    if (mean) {
      out.push({
        title: `Replace \`${written}\` with \`${mean[1]}\``,
        kind: CodeActionKind.QuickFix,
        diagnostics: [d],
        isPreferred: true,
        edit: { changes: { [uri]: [{ range: d.range, newText: mean[1]! }] } },
      });
    }
    if (d.code === "E0201") {
      const message = typeof d.message === "string" ? d.message : d.message.value;
      const name = /unknown name `([^`]+)`/.exec(message)?.[1];
      const std = name ? stdlibItems(view.workspace).find((i) => i.name === name) : undefined;
      if (std) {
        const edit = new CompletionContext(view, positionToOffset(map, d.range.start)).importEdit(
          std.module,
          std.name,
        );
        if (edit) {
          out.push({
            title: `Import \`${std.name}\` from std.${std.module}`,
            kind: CodeActionKind.QuickFix,
            diagnostics: [d],
            isPreferred: !mean,
            edit: { changes: { [uri]: [edit] } },
          });
        }
      }
    }
    if (d.code === "W0501" && /^[\p{L}][\p{L}\p{M}\p{Nd}_]*$/u.test(written)) {
      out.push({
        title: `Rename to \`_${written}\``,
        kind: CodeActionKind.QuickFix,
        diagnostics: [d],
        edit: { changes: { [uri]: [{ range: d.range, newText: `_${written}` }] } },
      });
    }
  }
  return out;
}

function hintFromRelated(d: LspDiagnostic): string | undefined {
  const r = d.relatedInformation?.find((x) => x.message.startsWith("hint: "));
  return r?.message.slice("hint: ".length);
}
