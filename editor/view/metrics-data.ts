/**
 * Training curves for `moec view --metrics`: the series of a run's metrics.jsonl (docs/
 * training.md). Step lines have loss, lr, grad_norm, each loss term and per-layer routing;
 * evaluation lines have eval_loss and accuracy. A line that does not parse (a run still
 * writing its last line) is skipped and counted.
 */

export interface Series {
  name: string;
  points: [number, number][];
}

export interface MetricsView {
  /** Chart title → its series (one chart per group: loss, lr, grad norm, ...). */
  charts: { title: string; series: Series[] }[];
  /** Per MoE layer, each step's expert shares (the step lines' `routing.<layer>.share`). */
  shares: { layer: string; steps: number[]; share: number[][] }[];
  steps: number;
  evals: number;
  skipped: number;
}

/** Keys of a step line that are not loss terms. */
const FIXED = new Set([
  "step",
  "loss",
  "lr",
  "grad_norm",
  "tokens_per_s",
  "ms_per_step",
  "routing",
]);

export function parseMetrics(text: string): MetricsView {
  const series = new Map<string, Map<string, [number, number][]>>();
  const add = (chart: string, name: string, step: number, v: unknown) => {
    if (typeof v !== "number" || !Number.isFinite(v)) return;
    if (!series.has(chart)) series.set(chart, new Map());
    const c = series.get(chart)!;
    if (!c.has(name)) c.set(name, []);
    c.get(name)!.push([step, v]);
  };
  const shares = new Map<string, { steps: number[]; share: number[][] }>();
  let steps = 0;
  let evals = 0;
  let skipped = 0;
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch {
      skipped++;
      continue;
    }
    if (typeof obj !== "object" || obj === null) {
      skipped++;
      continue;
    }
    const o = obj as Record<string, unknown>;
    const step = o.step;
    if (typeof step !== "number") {
      skipped++;
      continue;
    }
    if ("eval_loss" in o) {
      evals++;
      add("loss", "eval_loss", step, o.eval_loss);
      for (const [term, v] of Object.entries(asRecord(o.accuracy)))
        add("accuracy", `accuracy ${term}`, step, v);
      for (const [term, tasks] of Object.entries(asRecord(o.task_accuracy)))
        for (const [task, v] of Object.entries(asRecord(tasks)))
          add("accuracy", `${term} ${task}`, step, v);
      continue;
    }
    steps++;
    add("loss", "loss", step, o.loss);
    for (const [k, v] of Object.entries(o)) if (!FIXED.has(k)) add("loss terms", k, step, v);
    add("learning rate", "lr", step, o.lr);
    add("gradient norm", "grad_norm", step, o.grad_norm);
    for (const [layer, r] of Object.entries(asRecord(o.routing))) {
      const rec = asRecord(r);
      add("routing: least / most used expert share", `${layer} min`, step, rec.min);
      add("routing: least / most used expert share", `${layer} max`, step, rec.max);
      add("routing: share entropy (nats)", layer, step, rec.entropy);
      const share = rec.share;
      if (Array.isArray(share) && share.every((x) => typeof x === "number")) {
        if (!shares.has(layer)) shares.set(layer, { steps: [], share: [] });
        shares.get(layer)!.steps.push(step);
        shares.get(layer)!.share.push(share as number[]);
      }
    }
  }
  const order = [
    "loss",
    "loss terms",
    "accuracy",
    "learning rate",
    "gradient norm",
    "routing: least / most used expert share",
    "routing: share entropy (nats)",
  ];
  const charts = order
    .filter((t) => series.has(t))
    .map((title) => ({
      title,
      series: [...series.get(title)!].map(([name, points]) => ({ name, points })),
    }));
  return {
    charts,
    shares: [...shares].map(([layer, v]) => ({ layer, ...v })),
    steps,
    evals,
    skipped,
  };
}

function asRecord(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : {};
}
