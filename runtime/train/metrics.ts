/**
 * Training metrics: one JSON line per step appended to `runs/NAME/metrics.jsonl`, and the
 * progress line a person watches: rewritten in place with \r on a terminal, or one JSON
 * object per line with `--json`. Beside the loss: each MoE layer's routing share (entropy,
 * least and most used expert, dead experts) and the eval accuracy (docs/training.md, Metrics).
 */
import { closeSync, fsyncSync, openSync, readFileSync, writeSync } from "node:fs";

import { writeFileAtomic } from "../atomic-write.js";

/** One step's numbers. Loss terms are keyed by their names beside the fixed keys. */
export interface StepMetrics {
  step: number;
  loss: number;
  terms: Readonly<Record<string, number>>;
  grad_norm: number;
  lr: number;
  tokens_per_s: number;
  ms_per_step: number;
  /** Each MoE layer's routing in this step, by layer path. */
  routing?: Readonly<Record<string, RoutingSummary>>;
}

const FIXED = ["step", "loss", "grad_norm", "lr", "tokens_per_s", "ms_per_step", "routing"];

/** The JSON line of one step: the fixed keys, then each term under its own name. */
export function metricsLine(m: StepMetrics): string {
  const row: Record<string, unknown> = { step: m.step, loss: num(m.loss) };
  for (const [name, v] of Object.entries(m.terms)) {
    if (FIXED.includes(name)) throw new Error(`loss term ${name} clashes with a metrics key`);
    row[name] = num(v);
  }
  row.grad_norm = num(m.grad_norm);
  row.lr = m.lr;
  row.tokens_per_s = num(m.tokens_per_s);
  row.ms_per_step = num(m.ms_per_step);
  if (m.routing && Object.keys(m.routing).length > 0) row.routing = routingJson(m.routing);
  return JSON.stringify(row);
}

// ---------------------------------------------------------------- routing

/**
 * One MoE layer's routing over some steps: `share[e]` is expert e's share of the tokens the
 * router assigned (the mean gate, for dense routers), summing to 1; `dead` counts the experts
 * whose share is exactly 0 (no token chose them in any of the steps); `entropy` is the
 * entropy of `share` in nats (log E when perfectly balanced, 0 when one expert takes all).
 */
export interface RoutingSummary {
  share: number[];
  entropy: number;
  min: number;
  max: number;
  dead: number;
}

/** The train graph's output holding a layer's share vector: `routing:<layer>.share`. */
export function routingShareLayer(output: string): string | undefined {
  return /^routing:(.+)\.share$/.exec(output)?.[1];
}

/** −Σ p·log p in nats, with 0·log 0 = 0. */
export function shareEntropy(share: ArrayLike<number>): number {
  let h = 0;
  for (let i = 0; i < share.length; i++) {
    const p = share[i]!;
    if (p > 0) h -= p * Math.log(p);
  }
  return h;
}

/** The summary of one share vector. */
export function summarizeShare(share: ArrayLike<number>): RoutingSummary {
  const s = Array.from(share);
  return {
    share: s,
    entropy: shareEntropy(s),
    min: Math.min(...s),
    max: Math.max(...s),
    dead: s.filter((p) => p === 0).length,
  };
}

/**
 * Share vectors accumulated over a logging window (the steps between two progress lines):
 * every step routes the same number of tokens, so the window's share is the steps' mean, and
 * an expert is dead over the window when no step gave it a token.
 */
export class RoutingWindow {
  readonly #sums = new Map<string, Float64Array>();
  #steps = 0;

  add(shares: ReadonlyMap<string, ArrayLike<number>>): void {
    for (const [layer, share] of shares) {
      let sum = this.#sums.get(layer);
      if (!sum) this.#sums.set(layer, (sum = new Float64Array(share.length)));
      for (let e = 0; e < share.length; e++) sum[e]! += share[e]!;
    }
    this.#steps++;
  }

  /** Each layer's summary over the window so far, then the window starts again. */
  take(): Record<string, RoutingSummary> {
    const out: Record<string, RoutingSummary> = {};
    for (const [layer, sum] of this.#sums)
      out[layer] = summarizeShare(Array.from(sum, (x) => x / this.#steps));
    this.#sums.clear();
    this.#steps = 0;
    return out;
  }
}

/**
 * Routing as JSON: shares to 6 significant digits (a nonzero share stays nonzero, so `dead`
 * can be checked against the vector), JSON's null for a non-finite number.
 */
function routingJson(r: Readonly<Record<string, RoutingSummary>>): Record<string, unknown> {
  const round = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(6)) : null);
  return Object.fromEntries(
    Object.entries(r).map(([layer, s]) => [
      layer,
      {
        share: s.share.map(round),
        entropy: round(s.entropy),
        min: round(s.min),
        max: round(s.max),
        dead: s.dead,
      },
    ]),
  );
}

// ---------------------------------------------------------------- evaluation

/**
 * What one evaluation measured: the mean loss and, per cross_entropy term (by binding name),
 * the share of positions whose argmax is the label, overall and per task. NaN where nothing
 * was counted (every label ignored, a task with no examples).
 */
export interface EvalMetrics {
  loss: number;
  accuracy?: Record<string, number>;
  taskAccuracy?: Record<string, Record<string, number>>;
}

/** Correct and counted positions of one cross_entropy term, summed over batches. */
export interface AccuracyCounts {
  correct: number;
  count: number;
  /** Per task, in task-id order, with the task names. */
  tasks?: { names: readonly string[]; correct: ArrayLike<number>; count: ArrayLike<number> };
}

/** Accuracy per term (and per task) from counts; a count of 0 gives NaN. */
export function accuracyOf(
  counts: ReadonlyMap<string, AccuracyCounts>,
): Pick<EvalMetrics, "accuracy" | "taskAccuracy"> {
  if (counts.size === 0) return {};
  const ratio = (c: number, n: number) => (n > 0 ? c / n : NaN);
  const accuracy: Record<string, number> = {};
  const taskAccuracy: Record<string, Record<string, number>> = {};
  for (const [term, c] of counts) {
    accuracy[term] = ratio(c.correct, c.count);
    const t = c.tasks;
    if (t)
      taskAccuracy[term] = Object.fromEntries(
        t.names.map((name, i) => [name, ratio(t.correct[i]!, t.count[i]!)]),
      );
  }
  return Object.keys(taskAccuracy).length > 0 ? { accuracy, taskAccuracy } : { accuracy };
}

/** An evaluation's JSON fields (metrics.jsonl's eval lines and `--json`'s eval events). */
export function evalJson(e: EvalMetrics): Record<string, unknown> {
  const row: Record<string, unknown> = { eval_loss: num(e.loss) };
  if (e.accuracy) row.accuracy = mapValues(e.accuracy, num);
  if (e.taskAccuracy) row.task_accuracy = mapValues(e.taskAccuracy, (t) => mapValues(t, num));
  return row;
}

function mapValues<T, U>(r: Readonly<Record<string, T>>, f: (v: T) => U): Record<string, U> {
  return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, f(v)]));
}

/**
 * The progress output of an evaluation: `step 300: eval loss 0.0123, accuracy 99.6% (m0
 * 100.0%, m1 99.2%)`; with several cross_entropy terms each accuracy is named by its term.
 */
export function formatEval(step: number, e: EvalMetrics, mode: ProgressMode): string {
  if (mode === "json") return JSON.stringify({ event: "eval", step, ...evalJson(e) }) + "\n";
  const parts = [`eval loss ${fixed(e.loss)}`];
  const terms = Object.entries(e.accuracy ?? {});
  for (const [term, acc] of terms) {
    const tasks = Object.entries(e.taskAccuracy?.[term] ?? {});
    parts.push(
      `${terms.length > 1 ? `${term} ` : ""}accuracy ${percent(acc)}` +
        (tasks.length ? ` (${tasks.map(([t, a]) => `${t} ${percent(a)}`).join(", ")})` : ""),
    );
  }
  return `${mode === "tty" ? "\n" : ""}step ${step}: ${parts.join(", ")}\n`;
}

const percent = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : "-");

/** JSON has no NaN or infinity: a diverged loss is written as null. */
const num = (x: number) => (Number.isFinite(x) ? x : null);

/** Appends step lines to a metrics.jsonl file. */
export class MetricsLog {
  readonly #fd: number;

  /**
   * Opens `file` for appending. `resumeStep`: a run resumed from that step first drops the
   * lines after it (they will be logged again) and a torn last line, keeping one line a step.
   */
  constructor(
    readonly file: string,
    resumeStep?: number,
  ) {
    if (resumeStep !== undefined) truncateMetrics(file, resumeStep);
    this.#fd = openSync(file, "a");
  }

  append(m: StepMetrics): void {
    writeSync(this.#fd, metricsLine(m) + "\n");
  }

  /**
   * An evaluation at a checkpoint: its own line, `{"step", "eval_loss"}` and, when measured,
   * `accuracy` and `task_accuracy` (evalJson).
   */
  appendEval(step: number, e: EvalMetrics): void {
    writeSync(this.#fd, JSON.stringify({ step, ...evalJson(e) }) + "\n");
  }

  /** Flushes to disk (at checkpoints: the log then covers every checkpointed step). */
  sync(): void {
    fsyncSync(this.#fd);
  }

  close(): void {
    closeSync(this.#fd);
  }
}

/** Keeps the lines of steps ≤ `step` that parse (atomically); a missing file stays missing. */
export function truncateMetrics(file: string, step: number): void {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return;
  }
  const kept = text.split("\n").filter((line) => {
    try {
      const row = JSON.parse(line) as { step?: unknown };
      return typeof row.step === "number" && row.step <= step;
    } catch {
      return false;
    }
  });
  writeFileAtomic(file, kept.map((l) => l + "\n").join(""));
}

/**
 * An exponential moving average with bias correction (Adam's, fastai's smoothed loss), so
 * the first values are not pulled towards zero.
 */
export class Ema {
  #value = 0;
  #count = 0;
  constructor(readonly beta = 0.98) {}

  add(x: number): number {
    if (!Number.isFinite(x)) return this.value;
    this.#count++;
    this.#value = this.beta * this.#value + (1 - this.beta) * x;
    return this.value;
  }

  get value(): number {
    return this.#count === 0 ? NaN : this.#value / (1 - this.beta ** this.#count);
  }
}

/** What the progress line shows. */
export interface Progress {
  step: number;
  totalSteps: number;
  /** Smoothed loss (Ema). */
  loss: number;
  terms: Readonly<Record<string, number>>;
  tokensPerS: number;
  /** Smoothed ms per step (also what the ETA is computed from). */
  msPerStep: number;
  lr: number;
  /** Each MoE layer's routing over the steps since the previous progress line. */
  routing?: Readonly<Record<string, RoutingSummary>>;
}

/**
 * The progress line: on a terminal one line to rewrite in place (\r, then clear to the end of
 * the line; no newline), else a JSON object and a newline.
 */
export type ProgressMode = "tty" | "lines" | "json";

/**
 * The progress line of one step: `tty` rewrites one line in place, `lines` prints a line per
 * call (a log file or a pipe), `json` one JSON object per line.
 */
export function formatProgress(p: Progress, mode: ProgressMode): string {
  const etaS = ((p.totalSteps - p.step) * p.msPerStep) / 1000;
  if (mode === "json") {
    return (
      JSON.stringify({
        step: p.step,
        total_steps: p.totalSteps,
        loss: num(p.loss),
        ...Object.fromEntries(Object.entries(p.terms).map(([k, v]) => [k, num(v)])),
        tokens_per_s: num(p.tokensPerS),
        ms_per_step: num(p.msPerStep),
        lr: p.lr,
        eta_s: num(etaS),
        ...(p.routing && Object.keys(p.routing).length > 0
          ? { routing: routingJson(p.routing) }
          : {}),
      }) + "\n"
    );
  }
  const width = String(p.totalSteps).length;
  const terms = Object.entries(p.terms);
  const parts = [
    `step ${String(p.step).padStart(width)}/${p.totalSteps}`,
    `loss ${fixed(p.loss)}` +
      (terms.length ? ` (${terms.map(([k, v]) => `${k} ${fixed(v)}`).join(", ")})` : ""),
    `${compact(p.tokensPerS)} tok/s`,
    `${Number.isFinite(p.msPerStep) ? p.msPerStep.toFixed(1) : "-"} ms/step`,
    `lr ${p.lr.toExponential(2)}`,
    `ETA ${duration(etaS)}`,
  ];
  const routing = Object.entries(p.routing ?? {});
  // On a terminal the line must fit: past two layers, the range over all of them.
  if (mode === "tty" && routing.length > 2) parts.push(routingAcross(routing));
  else for (const [layer, s] of routing) parts.push(`${layer} ${routingRange(s)}`);
  return mode === "tty" ? `\r${parts.join(" | ")}\x1b[K` : `${parts.join(" | ")}\n`;
}

/** `share 12.5-40.1% dead 1`: the least and most used expert's share, and the dead count. */
function routingRange(s: RoutingSummary): string {
  return `share ${percentRange(s.min, s.max)} dead ${s.dead}`;
}

/** Several layers: the lowest and highest share of any expert, and the dead ones in all. */
function routingAcross(layers: [string, RoutingSummary][]): string {
  const min = Math.min(...layers.map(([, s]) => s.min));
  const max = Math.max(...layers.map(([, s]) => s.max));
  const dead = layers.reduce((a, [, s]) => a + s.dead, 0);
  return `${layers.length} MoE layers share ${percentRange(min, max)} dead ${dead}`;
}

function percentRange(min: number, max: number): string {
  return `${(100 * min).toFixed(1)}-${(100 * max).toFixed(1)}%`;
}

const fixed = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : String(x));

/** 950, 12.3k, 4.56M. */
function compact(x: number): string {
  if (!Number.isFinite(x)) return "-";
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)}M`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)}k`;
  return x.toFixed(0);
}

/** 42s, 3m07s, 2h05m. */
export function duration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "-";
  const t = Math.round(s);
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m${String(t % 60).padStart(2, "0")}s`;
  return `${Math.floor(t / 3600)}h${String(Math.floor((t % 3600) / 60)).padStart(2, "0")}m`;
}
