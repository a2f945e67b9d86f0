/**
 * `moec params FILE [--model M | --program [NAME]]`: every parameter, totals, active per
 * token, per-task cost; for a train program also the trainable parameters of each task.
 */
import { hasErrors } from "../compiler/diagnostics.js";
import { dimConst } from "../compiler/check/dims.js";
import {
  analyze,
  elaborate,
  elaborateTrain,
  nodeFileSystem,
  reportParams,
} from "../compiler/pipeline.js";
import type { ParamReport } from "../compiler/check/count-params.js";
import type { Value } from "../compiler/check/values.js";
import { resolveInputFiles } from "./check-command.js";
import {
  CliError,
  EXIT_OK,
  EXIT_USAGE,
  EXIT_USER_ERROR,
  diagnosticsJson,
  displayPath,
  printDiagnostics,
} from "./report.js";

/** Parses `--set name=value` into a compile-time value. */
export function parseOverride(text: string): [string, Value] {
  const m = /^([\p{L}_][\p{L}\p{N}_]*)=(.+)$/u.exec(text);
  if (!m) throw new CliError(`--set expects NAME=VALUE, found "${text}"`, EXIT_USAGE);
  const [, name, raw] = m as unknown as [string, string, string];
  if (/^-?\d+$/.test(raw)) return [name, { k: "int", v: dimConst(Number(raw)), isDim: false }];
  if (/^-?(\d+\.\d*|\d*\.\d+|\d+)(e-?\d+)?$/i.test(raw))
    return [name, { k: "float", v: Number(raw) }];
  if (raw === "true" || raw === "false") return [name, { k: "bool", v: raw === "true" }];
  throw new CliError(`--set ${name}: expected a number or true/false, found "${raw}"`, EXIT_USAGE);
}

const fmt = (n: number) => n.toLocaleString("en-US");

export function runParams(
  file: string,
  options: { model?: string; program?: string | boolean; set?: string[]; json?: boolean },
): number {
  if (options.model !== undefined && options.program !== undefined)
    throw new CliError("--model and --program exclude each other", EXIT_USAGE);
  const [entry] = resolveInputFiles([file]);
  const overrides = new Map((options.set ?? []).map(parseOverride));
  const analysis = analyze([entry!], nodeFileSystem());
  if (hasErrors(analysis.diagnostics)) {
    if (options.json)
      process.stdout.write(
        JSON.stringify(
          { ok: false, diagnostics: diagnosticsJson(analysis.diagnostics, analysis) },
          null,
          2,
        ) + "\n",
      );
    else printDiagnostics(analysis.diagnostics, analysis);
    return EXIT_USER_ERROR;
  }
  // `--program [NAME]`: the parameters of a training program's instances (frozen ones frozen).
  const result =
    options.program !== undefined
      ? elaborateTrain(
          analysis,
          entry!,
          typeof options.program === "string" ? options.program : undefined,
          overrides,
        )
      : elaborate(analysis, entry!, options.model, overrides);
  if ("error" in result) throw new CliError(result.error.replace(entry!, displayPath(entry!)));
  if (hasErrors(result.diagnostics)) {
    if (options.json)
      process.stdout.write(
        JSON.stringify(
          { ok: false, diagnostics: diagnosticsJson(result.diagnostics, analysis) },
          null,
          2,
        ) + "\n",
      );
    else printDiagnostics(result.diagnostics, analysis);
    return EXIT_USER_ERROR;
  }
  const report = reportParams(result.model);
  if (options.json) {
    process.stdout.write(
      JSON.stringify({ ok: true, file: displayPath(entry!), ...report }, null, 2) + "\n",
    );
  } else {
    printDiagnostics(analysis.diagnostics, analysis);
    const kind = options.program !== undefined ? "train" : "model";
    process.stdout.write(formatReport(report, displayPath(entry!), kind));
  }
  return EXIT_OK;
}

export function formatReport(
  r: ParamReport,
  file: string,
  kind: "model" | "train" = "model",
): string {
  const lines: string[] = [`${kind} ${r.model} (${file})`, ""];
  const rows = r.params.map((p) => [
    p.name,
    `[${p.shape.join(", ")}]`,
    p.dtype,
    fmt(p.count),
    p.trainable ? "yes" : "frozen",
    p.task ?? (p.taskRows !== undefined ? "a row each" : ""),
  ]);
  const header = ["parameter", "shape", "dtype", "count", "trainable", "task"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === 3 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  lines.push(line(header));
  for (const row of rows) lines.push(line(row));
  lines.push("");
  const label = (s: string) => `${s} `.padEnd(22);
  lines.push(`${label("total")}${fmt(r.total)}`);
  lines.push(`${label("trainable")}${fmt(r.trainable)}`);
  lines.push(`${label("frozen")}${fmt(r.frozen)}`);
  lines.push(`${label("shared (all tasks)")}${fmt(r.backbone)}`);
  lines.push(`${label("active per token")}${fmt(r.activePerToken)}`);
  for (const m of r.moeLayers) {
    lines.push(
      `${label(`  ${m.path}`)}${m.router}, ${m.experts} experts, ${m.activePerToken} per token, ${fmt(m.expertParams)} expert params`,
    );
  }
  if (r.perTask.length > 0) {
    lines.push("per task (extra parameters, % of the shared parameters):");
    for (const t of r.perTask) {
      lines.push(`${label(`  ${t.task}`)}+${fmt(t.params)}  (${t.percentOfBackbone.toFixed(2)}%)`);
    }
    // A train program: what one task's examples train (a per-task adapter or a task's row
    // of a router's task embedding trains only on its task; shared parameters on all).
    if (kind === "train") {
      lines.push(
        `trainable per task (${fmt(r.sharedTrainable)} shared + the task's own + its rows):`,
      );
      for (const t of r.perTask) {
        lines.push(
          `${label(`  ${t.task}`)}${fmt(t.trainableTotal)}  (+${fmt(t.trainable)} own, +${fmt(t.trainableRows)} rows)`,
        );
      }
    }
  }
  return lines.join("\n") + "\n";
}
