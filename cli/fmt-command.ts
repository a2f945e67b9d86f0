/**
 * `moec fmt [--check] [--stdin] FILE...`: format `.moe` files in place.
 *
 * - Files are rewritten atomically (temporary file + rename), and only when they change.
 * - `--check` writes nothing: it lists the files that are not formatted (stdout) and exits 1
 *   if there are any.
 * - `--stdin` formats standard input to standard output (FILE, if given, names it in messages).
 * - A file with syntax errors is never touched: its diagnostics go to stderr, exit 1.
 * Exit codes: 0 all formatted, 1 unformatted files under --check or syntax errors, 3 an
 * internal formatter error (the file is left alone).
 */
import * as fs from "node:fs";
import { hasErrors, renderDiagnostics, type Diagnostic } from "../compiler/diagnostics.js";
import { formatSource, FormatterError } from "../compiler/format/format-source.js";
import { writeFileAtomic } from "../runtime/atomic-write.js";
import { resolveInputFiles } from "./check-command.js";
import {
  stderrColor,
  CliError,
  EXIT_DEVICE,
  EXIT_OK,
  EXIT_USAGE,
  EXIT_USER_ERROR,
  displayPath,
  withDisplayPaths,
} from "./report.js";

export interface FmtOptions {
  check?: boolean;
  stdin?: boolean;
}

type Outcome = "formatted" | "changed" | "syntax-error" | "internal-error";

export function runFmt(files: readonly string[], options: FmtOptions): number {
  if (options.stdin) {
    if (files.length > 1)
      throw new CliError("--stdin takes at most one FILE (its name)", EXIT_USAGE);
    return formatStdin(files[0], options);
  }
  if (files.length === 0) throw new CliError("no files to format (or use --stdin)", EXIT_USAGE);
  const entries = resolveInputFiles(files);
  const outcomes: Outcome[] = [];
  const unformatted: string[] = [];
  for (const file of entries) {
    const outcome = formatFile(file, options);
    outcomes.push(outcome);
    if (outcome === "changed" && options.check) unformatted.push(displayPath(file));
  }
  if (unformatted.length > 0) {
    process.stdout.write(unformatted.map((f) => f + "\n").join(""));
    const n = unformatted.length;
    process.stderr.write(`${n} file${n === 1 ? "" : "s"} would be reformatted\n`);
  }
  return exitCode(outcomes, options);
}

function exitCode(outcomes: readonly Outcome[], options: FmtOptions): number {
  if (outcomes.includes("internal-error")) return EXIT_DEVICE;
  if (outcomes.includes("syntax-error")) return EXIT_USER_ERROR;
  if (options.check && outcomes.includes("changed")) return EXIT_USER_ERROR;
  return EXIT_OK;
}

function formatFile(file: string, options: FmtOptions): Outcome {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new CliError(`cannot read ${displayPath(file)}: ${(e as Error).message}`);
  }
  const result = format(text, file);
  if ("failed" in result) return result.failed;
  if (result.formatted === text) return "formatted";
  if (!options.check) writeFileAtomic(file, result.formatted);
  return "changed";
}

function formatStdin(name: string | undefined, options: FmtOptions): number {
  const text = fs.readFileSync(0, "utf8");
  const result = format(text, name ?? "<stdin>");
  if ("failed" in result) return exitCode([result.failed], options);
  if (options.check) {
    if (result.formatted === text) return EXIT_OK;
    process.stdout.write(`${name === undefined ? "<stdin>" : displayPath(name)}\n`);
    return EXIT_USER_ERROR;
  }
  process.stdout.write(result.formatted);
  return EXIT_OK;
}

/** The formatted text, or why there is none (after reporting it on stderr). */
function format(text: string, file: string): { formatted: string } | { failed: Outcome } {
  try {
    const { formatted, diagnostics } = formatSource(text, file);
    if (hasErrors(diagnostics)) {
      printDiagnostics(diagnostics, file, text);
      return { failed: "syntax-error" };
    }
    return { formatted };
  } catch (e) {
    if (!(e instanceof FormatterError)) throw e;
    process.stderr.write(`moec: ${displayPath(file)}: ${e.message}\n`);
    return { failed: "internal-error" };
  }
}

function printDiagnostics(diagnostics: readonly Diagnostic[], file: string, text: string): void {
  const shown = displayPath(file);
  const rendered = renderDiagnostics(withDisplayPaths(diagnostics), new Map([[shown, text]]), {
    color: stderrColor(),
  });
  const errors = diagnostics.filter((d) => d.severity === "error").length;
  process.stderr.write(
    `${rendered}\n${shown}: ${errors} syntax error${errors === 1 ? "" : "s"}, not formatted\n`,
  );
}
