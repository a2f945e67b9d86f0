/**
 * Shared CLI plumbing: the exit codes of vision.md, user-facing errors, and printing
 * diagnostics with their code frames.
 */
import * as path from "node:path";
import {
  type Diagnostic,
  LineMap,
  diagnosticToJson,
  renderDiagnostics,
} from "../compiler/diagnostics.js";
import type { Analysis } from "../compiler/pipeline.js";

export const EXIT_OK = 0;
export const EXIT_USER_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_DEVICE = 3;

/** An error to show as one line (no stack unless --verbose), with its exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT_USER_ERROR,
  ) {
    super(message);
  }
}

/** Source texts of every module the analysis read, keyed by path (for code frames). */
export function sourcesOf(analysis: Analysis): Map<string, string> {
  return new Map([...analysis.graph.modules].map(([file, m]) => [file, m.text]));
}

/** Paths in messages are relative to the working directory when that is shorter. */
export function displayPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith("..") && rel.length < file.length ? rel : file;
}

export function withDisplayPaths(diagnostics: readonly Diagnostic[]): Diagnostic[] {
  return diagnostics.map((d) => ({
    ...d,
    file: displayPath(d.file),
    ...(d.related ? { related: d.related.map((r) => ({ ...r, file: displayPath(r.file) })) } : {}),
  }));
}

export function printDiagnostics(diagnostics: readonly Diagnostic[], analysis: Analysis): void {
  if (diagnostics.length === 0) return;
  const sources = new Map([...sourcesOf(analysis)].map(([f, t]) => [displayPath(f), t]));
  const text = renderDiagnostics(withDisplayPaths(diagnostics), sources, {
    color: process.stderr.isTTY === true && !process.env.NO_COLOR,
  });
  process.stderr.write(text + "\n");
}

export function diagnosticsJson(diagnostics: readonly Diagnostic[], analysis: Analysis) {
  const maps = new Map<string, LineMap>();
  return diagnostics.map((d) => {
    let m = maps.get(d.file);
    const text = analysis.graph.modules.get(d.file)?.text;
    if (!m && text !== undefined) {
      m = new LineMap(text);
      maps.set(d.file, m);
    }
    return { ...diagnosticToJson(d, m), file: displayPath(d.file) };
  });
}

export function summary(diagnostics: readonly Diagnostic[]): string {
  const errors = diagnostics.filter((d) => d.severity === "error").length;
  const warnings = diagnostics.filter((d) => d.severity === "warning").length;
  const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? "" : "s"}`;
  return `${plural(errors, "error")}, ${plural(warnings, "warning")}`;
}
