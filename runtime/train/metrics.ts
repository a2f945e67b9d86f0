/**
 * Training metrics: one JSON line per step appended to `runs/NAME/metrics.jsonl`, and the
 * progress line a person watches: rewritten in place with \r on a terminal, or one JSON
 * object per line with `--json`.
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
}

const FIXED = ["step", "loss", "grad_norm", "lr", "tokens_per_s", "ms_per_step"];

/** The JSON line of one step: the fixed keys, then each term under its own name. */
export function metricsLine(m: StepMetrics): string {
  const row: Record<string, number | null> = { step: m.step, loss: num(m.loss) };
  for (const [name, v] of Object.entries(m.terms)) {
    if (FIXED.includes(name)) throw new Error(`loss term ${name} clashes with a metrics key`);
    row[name] = num(v);
  }
  row.grad_norm = num(m.grad_norm);
  row.lr = m.lr;
  row.tokens_per_s = num(m.tokens_per_s);
  row.ms_per_step = num(m.ms_per_step);
  return JSON.stringify(row);
}

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

  /** The held-out loss at a checkpoint: its own line, `{"step", "eval_loss"}`. */
  appendEval(step: number, evalLoss: number): void {
    writeSync(this.#fd, JSON.stringify({ step, eval_loss: num(evalLoss) }) + "\n");
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
  return mode === "tty" ? `\r${parts.join(" | ")}\x1b[K` : `${parts.join(" | ")}\n`;
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
