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
import type { ParamReport, ParamRow } from "../compiler/check/count-params.js";
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

/** `moec params` options (cli/main.ts). */
export interface ParamsOptions {
  model?: string;
  program?: string | boolean;
  set?: string[];
  json?: boolean;
  /** Summary tree to this depth instead of the flat list (a string from the command line). */
  depth?: string;
  /** Every tensor, even for a large model. */
  flat?: boolean;
}

/** Above this many tensors the text report is a summary tree unless `--flat` is given. */
export const FLAT_LIMIT = 100;
/** The summary tree's depth when the report chooses it for a large model. */
export const DEFAULT_DEPTH = 3;

export function runParams(file: string, options: ParamsOptions): number {
  if (options.model !== undefined && options.program !== undefined)
    throw new CliError("--model and --program exclude each other", EXIT_USAGE);
  if (options.depth !== undefined && options.flat)
    throw new CliError("--depth and --flat exclude each other", EXIT_USAGE);
  const depth = options.depth === undefined ? undefined : Number(options.depth);
  if (depth !== undefined && !(Number.isInteger(depth) && depth >= 1))
    throw new CliError(`--depth expects a whole number ≥ 1, found "${options.depth}"`, EXIT_USAGE);
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
    const layout =
      depth !== undefined
        ? { depth }
        : !options.flat && report.params.length > FLAT_LIMIT
          ? { depth: DEFAULT_DEPTH, chosen: true }
          : undefined;
    process.stdout.write(formatReport(report, displayPath(entry!), kind, layout));
  }
  return EXIT_OK;
}

/**
 * The text report: the parameter table (every tensor, or with `layout` a summary tree to
 * `layout.depth`), then totals, active parameters and per-task costs.
 */
export function formatReport(
  r: ParamReport,
  file: string,
  kind: "model" | "train" = "model",
  layout?: { depth: number; chosen?: boolean },
): string {
  const lines: string[] = [`${kind} ${r.model} (${file})`, ""];
  if (layout) {
    lines.push(...formatTree(r.params, layout.depth));
    if (layout.chosen)
      lines.push(
        `(${fmt(r.params.length)} tensors, shown to depth ${layout.depth}: --depth N for more levels, --flat for every tensor)`,
      );
  } else {
    const rows = r.params.map((p) => [
      p.name,
      `[${p.shape.join(", ")}]`,
      p.dtype,
      fmt(p.count),
      p.trainable ? "yes" : "frozen",
      p.task ?? (p.taskRows !== undefined ? "a row each" : ""),
    ]);
    const header = ["parameter", "shape", "dtype", "count", "trainable", "task"];
    lines.push(...table(header, rows, [3]));
  }
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

/** Columns padded to their widest cell (right-aligned where `right` says), header first. */
function table(header: string[], rows: string[][], right: number[]): string[] {
  // A loop, not Math.max(...cells): a model may have more tensors than a call has arguments.
  const widths = header.map((h) => h.length);
  for (const row of rows) row.forEach((c, i) => (widths[i] = Math.max(widths[i]!, c.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (right.includes(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

/** One name of the dotted parameter paths, with everything under it. */
interface TreeNode {
  name: string;
  count: number;
  trainable: number;
  /** The task all its parameters belong to; null once two differ or one is shared. */
  task: string | null | undefined;
  /** Set on a parameter tensor. */
  shape?: number[];
  children: Map<string, TreeNode>;
  /** Structure and counts, names of numbered children aside: equal ones collapse. */
  signature?: string;
}

function buildTree(params: readonly ParamRow[]): TreeNode {
  const root: TreeNode = { name: "", count: 0, trainable: 0, task: undefined, children: new Map() };
  for (const p of params) {
    let node = root;
    const add = (n: TreeNode) => {
      n.count += p.count;
      if (p.trainable) n.trainable += p.count;
      const task = p.task ?? null;
      n.task = n.task === undefined ? task : n.task === task ? task : null;
    };
    add(root);
    for (const part of p.name.split(".")) {
      let child = node.children.get(part);
      if (!child) {
        child = { name: part, count: 0, trainable: 0, task: undefined, children: new Map() };
        node.children.set(part, child);
      }
      add(child);
      node = child;
    }
    node.shape = p.shape;
  }
  return root;
}

function signatureOf(n: TreeNode): string {
  if (n.signature === undefined) {
    const kids = [...n.children.values()].map((c) => `${c.name}:${signatureOf(c)}`);
    n.signature = `${n.count}/${n.trainable}/${n.shape?.join("x") ?? ""}(${kids.join(",")})`;
  }
  return n.signature;
}

/** Children in order, with runs of numbered siblings of one signature (layers, experts) as one. */
function groupChildren(n: TreeNode): { node: TreeNode; label: string; repeat: number }[] {
  const kids = [...n.children.values()];
  const out: { node: TreeNode; label: string; repeat: number }[] = [];
  for (let i = 0; i < kids.length;) {
    const first = kids[i]!;
    let j = i + 1;
    if (/^\d+$/.test(first.name)) {
      const sig = signatureOf(first);
      while (
        j < kids.length &&
        kids[j]!.name === String(Number(first.name) + (j - i)) &&
        signatureOf(kids[j]!) === sig
      )
        j++;
    }
    const repeat = j - i;
    const label =
      repeat > 1 ? `${first.name}..${kids[j - 1]!.name} (×${repeat}, each)` : first.name;
    out.push({ node: first, label, repeat });
    i = j;
  }
  return out;
}

/**
 * The parameters as a tree of their dotted paths down to `depth` levels, as torchinfo prints a
 * model: each line a module's parameter count; numbered siblings that are alike (the blocks of
 * a `repeat`, the experts of a layer) on one line, with one of them below it.
 */
export function formatTree(params: readonly ParamRow[], depth: number): string[] {
  const rows: string[][] = [];
  const walk = (n: TreeNode, prefix: string, level: number) => {
    const kids = groupChildren(n);
    kids.forEach(({ node, label }, i) => {
      const last = i === kids.length - 1;
      const branch = level === 1 ? "" : last ? "└─ " : "├─ ";
      const shape = node.shape ? ` [${node.shape.join(", ")}]` : "";
      const trainable =
        node.trainable === node.count
          ? "yes"
          : node.trainable === 0
            ? "frozen"
            : fmt(node.trainable);
      rows.push([
        `${prefix}${branch}${label}${shape}`,
        fmt(node.count),
        trainable,
        typeof node.task === "string" ? node.task : "",
      ]);
      if (level < depth)
        walk(node, level === 1 ? "" : `${prefix}${last ? "   " : "│  "}`, level + 1);
    });
  };
  walk(buildTree(params), "", 1);
  return table(["module", "params", "trainable", "task"], rows, [1]);
}
