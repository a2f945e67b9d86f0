/**
 * Shared CLI plumbing: the exit codes of vision.md, user-facing errors, and printing
 * diagnostics with their code frames.
 */
import * as fs from "node:fs";
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
/** No usable device, or a failure moec cannot blame on its input. */
export const EXIT_DEVICE = 3;
/** moec's own bug ("please report it"): never for a problem in the user's files or options. */
export const EXIT_INTERNAL = 3;

/**
 * Whether stderr is a terminal a person watches: a TTY (under cli/launch.ts, the launcher's),
 * TERM not dumb, not CI.
 */
export function stderrIsInteractive(): boolean {
  return process.stderr.isTTY === true && process.env.TERM !== "dumb" && !("CI" in process.env);
}

/** Whether to colour what goes to stderr. */
export function stderrColor(): boolean {
  return stderrIsInteractive() && !process.env.NO_COLOR;
}

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

/**
 * Diagnostics printed during this command, in `check --json`'s form: with `--json`, an error
 * ends in one JSON object on stdout that carries them (see errorJson).
 */
const printedDiagnostics: ReturnType<typeof diagnosticsJson> = [];

export function printDiagnostics(diagnostics: readonly Diagnostic[], analysis: Analysis): void {
  if (diagnostics.length === 0) return;
  printedDiagnostics.push(...diagnosticsJson(diagnostics, analysis));
  const sources = new Map([...sourcesOf(analysis)].map(([f, t]) => [displayPath(f), t]));
  const text = renderDiagnostics(withDisplayPaths(diagnostics), sources, {
    color: stderrColor(),
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

/** Node's error codes for file-system failures the user's paths cause, in words. */
const FS_PROBLEMS: Record<string, string> = {
  ENOENT: "no such file or directory",
  ENOTDIR: "a path component is not a directory",
  EISDIR: "is a directory",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  ENOSPC: "no space left on the device",
  EDQUOT: "disk quota exceeded",
  EEXIST: "already exists",
  ENAMETOOLONG: "name too long",
  EMFILE: "too many open files",
  EIO: "input/output error",
};

/** A file-system error (anything with one of Node's codes above) as words, else undefined. */
export function fsProblem(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? FS_PROBLEMS[code] : undefined;
}

/**
 * Runs `write`; a file-system error it raises becomes a one-line CliError naming `what` (an
 * option and its path): a path the user gave that cannot be written is their problem (exit 1),
 * not moec's.
 */
export function mapWriteErrors<T>(what: string, write: () => T): T {
  try {
    return write();
  } catch (err) {
    const problem = fsProblem(err);
    if (problem) throw new CliError(`${what}: cannot write there (${problem})`);
    throw err;
  }
}

/**
 * Checks, before any work, that the folder `dir` will hold a new file: it exists, is a folder,
 * and accepts one (a probe file is created and removed: permission bits do not tell, for root
 * or on /proc).
 */
function checkWritableFolder(dir: string, what: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch {
    throw new CliError(`${what}: the folder ${displayPath(dir)} does not exist`);
  }
  if (!stat.isDirectory()) throw new CliError(`${what}: ${displayPath(dir)} is not a folder`);
  const probe = path.join(dir, `.moec-probe-${process.pid}-${Date.now()}.tmp`);
  mapWriteErrors(what, () => {
    fs.writeFileSync(probe, "");
    fs.rmSync(probe, { force: true });
  });
}

/** `what FILE` (e.g. `-o out.safetensors`) can be written: checked before any work. */
export function checkOutputFile(file: string, what: string): void {
  const full = path.resolve(file);
  const label = `${what} ${file}`;
  if (fs.existsSync(full) && fs.statSync(full).isDirectory())
    throw new CliError(`${label}: is a folder; give a file name`);
  checkWritableFolder(path.dirname(full), label);
}

/**
 * `what DIR` can be written as a folder of output (a bundle, a run directory): not a file;
 * an existing one passes `options.test` (a bundle replaces only a bundle); its parent folder
 * exists (with `options.parents`, the nearest existing ancestor). Checked before any work.
 */
export function checkOutputFolder(
  dir: string,
  what: string,
  options?: { test?: (dir: string) => boolean; kind?: string; parents?: boolean },
): void {
  const full = path.resolve(dir);
  const label = `${what} ${dir}`;
  if (fs.existsSync(full)) {
    if (!fs.statSync(full).isDirectory())
      throw new CliError(`${label}: is a file, and ${options?.kind ?? "the output"} is a folder`);
    if (options?.test && !options.test(full))
      throw new CliError(
        `${label}: exists and is not ${options.kind ?? "moec's"}; not replacing it`,
      );
    // Replacing it writes beside it (a sibling renamed into place); otherwise, inside it.
    checkWritableFolder(options?.test ? path.dirname(full) : full, label);
    return;
  }
  // With `parents`, the missing folders above it are created when it is written (mkdir -p).
  let parent = path.dirname(full);
  if (options?.parents)
    while (!fs.existsSync(parent) && path.dirname(parent) !== parent) parent = path.dirname(parent);
  checkWritableFolder(parent, label);
}

/**
 * A failed command's error as `check --json` reports a file (`moec run --json` and every
 * other `--json` command, so a tool reading stdout always gets JSON): the diagnostics printed
 * on the way, or the one-line cause as a diagnostic without a position.
 */
export function errorJson(message: string, exitCode: number): string {
  const diagnostics =
    printedDiagnostics.length > 0 ? printedDiagnostics : [{ severity: "error" as const, message }];
  const files = [...new Set(printedDiagnostics.map((d) => d.file))];
  return JSON.stringify({ files, ok: false, exitCode, diagnostics }, null, 2) + "\n";
}
