/**
 * `moec view FILE [--model M] [--set ...] [--dim ...] [--stats S.json] [--trace-routing
 * T.safetensors] [--metrics metrics.jsonl] -o report.html [--open]`: one self-contained HTML
 * page of the checked model (boxes, shapes, parameter counts, source links), its routing from
 * a run's files and its training curves (docs/view.md). Front end only: no device is opened.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { modelViewOf } from "../editor/view/elaborate-view.js";
import { parseMetrics } from "../editor/view/metrics-data.js";
import { renderPage } from "../editor/view/render-page.js";
import {
  type RoutingLayer,
  RoutingDataError,
  type TraceTensor,
  mergeRouting,
  parseStats,
  parseTrace,
} from "../editor/view/routing-data.js";
import { writeFileAtomic } from "../runtime/atomic-write.js";
import { analyzeEntry, parseDims, openTensors } from "./model-options.js";
import { parseOverride } from "./params-command.js";
import { CliError, EXIT_OK, EXIT_USAGE, displayPath, printDiagnostics } from "./report.js";

export interface ViewOptions {
  model?: string;
  set?: string[];
  dim?: string[];
  stats?: string;
  traceRouting?: string;
  metrics?: string;
  output?: string;
  open?: boolean;
  links?: string;
}

export function runView(file: string, options: ViewOptions): number {
  if (options.links !== undefined && options.links !== "vscode" && options.links !== "file")
    throw new CliError(`--links expects vscode or file, found "${options.links}"`, EXIT_USAGE);
  const { analysis, entry } = analyzeEntry(file);
  const overrides = new Map((options.set ?? []).map(parseOverride));
  const result = modelViewOf(analysis, entry, options.model, overrides, parseDims(options.dim));
  if ("error" in result) throw new CliError(result.error.replace(entry, displayPath(entry)));
  if ("diagnostics" in result) {
    printDiagnostics(result.diagnostics, analysis);
    throw new CliError(`cannot instantiate ${displayPath(entry)}; see above`);
  }
  printDiagnostics(analysis.diagnostics, analysis); // warnings

  let routing: RoutingLayer[] | undefined;
  try {
    const stats =
      options.stats !== undefined
        ? parseStats(readJson(options.stats), `--stats ${options.stats}`)
        : [];
    const trace = options.traceRouting !== undefined ? readTrace(options.traceRouting) : new Map();
    if (options.stats !== undefined || options.traceRouting !== undefined)
      routing = mergeRouting(stats, trace);
  } catch (err) {
    if (err instanceof RoutingDataError) throw new CliError(err.message);
    throw err;
  }
  // Stats of another model (or of a train program, `net.moe`) still draw, but say so.
  const known = new Set(result.view.moes.map((m) => m.path));
  const stray = (routing ?? []).filter((l) => !known.has(l.layer)).map((l) => l.layer);
  if (stray.length > 0)
    process.stderr.write(
      `moec: warning: routing data for ${stray.slice(0, 3).join(", ")}${stray.length > 3 ? ", ..." : ""}, not an MoE layer of ${result.view.name} (its MoE layers: ${[...known].join(", ") || "none"})\n`,
    );
  let metrics;
  if (options.metrics !== undefined) {
    metrics = parseMetrics(readText(options.metrics, "--metrics"));
    if (metrics.steps + metrics.evals === 0)
      throw new CliError(`--metrics ${options.metrics}: no step or evaluation line`);
  }
  const sources: { stats?: string; trace?: string; metrics?: string } = {};
  if (options.stats) sources.stats = options.stats;
  if (options.traceRouting) sources.trace = options.traceRouting;
  if (options.metrics) sources.metrics = options.metrics;
  const page = renderPage({
    model: result.view,
    ...(routing ? { routing } : {}),
    ...(metrics ? { metrics } : {}),
    displayPath,
    links: options.links === "file" ? "file" : "vscode",
    sources,
  });
  const out = options.output ?? `${result.view.name}.html`;
  try {
    writeFileAtomic(out, page);
  } catch (err) {
    throw new CliError(`cannot write ${out}: ${err instanceof Error ? err.message : String(err)}`);
  }
  process.stdout.write(`wrote ${displayPath(path.resolve(out))}\n`);
  if (options.open) openInBrowser(path.resolve(out));
  return EXIT_OK;
}

function readText(file: string, what: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    throw new CliError(`${what} ${file}: no such file`);
  }
}

function readJson(file: string): unknown {
  const text = readText(file, "--stats");
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new CliError(
      `--stats ${file}: not JSON (${err instanceof Error ? err.message : String(err)}); pass what \`moec run --stats --json\` prints`,
    );
  }
}

function readTrace(
  file: string,
): Map<string, ReturnType<typeof parseTrace> extends Map<string, infer T> ? T : never> {
  const st = openTensors(file, "--trace-routing")!;
  const tensors = new Map<string, TraceTensor>();
  for (const name of st.names()) {
    const t = st.read(name);
    tensors.set(name, { shape: t.shape, data: t.data });
  }
  const layers = parseTrace(tensors);
  if (layers.size === 0)
    throw new CliError(
      `--trace-routing ${file}: no <layer>.experts, <layer>.tokens or <layer>.groups tensor; pass what \`moec run --trace-routing\` writes`,
    );
  return layers;
}

/** `--open`: the system's opener, detached; a machine without one gets a note, not an error. */
function openInBrowser(file: string): void {
  const opener = process.platform === "darwin" ? "open" : "xdg-open";
  const found = (process.env.PATH ?? "")
    .split(path.delimiter)
    .some((dir) => dir !== "" && fs.existsSync(path.join(dir, opener)));
  if (!found && process.platform !== "darwin") {
    process.stderr.write(`moec: --open: no ${opener} on this machine; open ${file} yourself\n`);
    return;
  }
  const child = spawn(opener, [file], { detached: true, stdio: "ignore" });
  child.on("error", () => {
    process.stderr.write(`moec: --open: ${opener} failed; open ${file} yourself\n`);
  });
  child.unref();
}
