/** `moec check FILE...`: parse, resolve and check; diagnostics on stderr, exit 1 on errors. */
import * as fs from "node:fs";
import * as path from "node:path";
import { hasErrors } from "../compiler/diagnostics.js";
import { analyze, nodeFileSystem } from "../compiler/pipeline.js";
import {
  CliError,
  EXIT_OK,
  EXIT_USER_ERROR,
  diagnosticsJson,
  displayPath,
  printDiagnostics,
  summary,
} from "./report.js";

/** The OS's reason in words: "permission denied" from `EACCES: permission denied, open 'x'`. */
function osReason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return "no such file";
  const m = /^[A-Z0-9]+: ([^,]+)/.exec(err instanceof Error ? err.message : "");
  return m ? m[1]! : String(err);
}

export function resolveInputFiles(files: readonly string[]): string[] {
  return files.map((f) => {
    const abs = path.resolve(f);
    let stat: fs.Stats;
    try {
      stat = fs.statSync(abs);
    } catch (err) {
      throw new CliError(`cannot read ${f}: ${osReason(err)}`);
    }
    if (stat.isDirectory()) throw new CliError(`${f} is a directory; pass .moe files`);
    // A file the front end cannot read would check as empty ("ok"): fail here, with the reason.
    try {
      fs.closeSync(fs.openSync(abs, "r"));
    } catch (err) {
      throw new CliError(`cannot read ${f}: ${osReason(err)}`);
    }
    return abs;
  });
}

export function runCheck(files: readonly string[], options: { json?: boolean }): number {
  const entries = resolveInputFiles(files);
  const analysis = analyze(entries, nodeFileSystem());
  const diagnostics = analysis.diagnostics;
  if (options.json) {
    const out = {
      files: entries.map(displayPath),
      ok: !hasErrors(diagnostics),
      diagnostics: diagnosticsJson(diagnostics, analysis),
    };
    process.stdout.write(JSON.stringify(out, null, 2) + "\n");
  } else {
    printDiagnostics(diagnostics, analysis);
    const names = entries.map(displayPath).join(", ");
    if (diagnostics.length === 0) process.stdout.write(`${names}: ok\n`);
    else process.stderr.write(`${names}: ${summary(diagnostics)}\n`);
  }
  return hasErrors(diagnostics) ? EXIT_USER_ERROR : EXIT_OK;
}
