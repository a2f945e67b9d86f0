/**
 * Pass 5 (report): parameter accounting for an elaborated model: every tensor by dotted name,
 * totals, trainable and frozen counts, parameters active per token (experts weighted by how
 * many a token visits), and each task's extra parameters as a share of the shared backbone.
 */
import type { ElaboratedModel } from "./elaborate-model.js";

/** One row of the parameter table. */
export interface ParamRow {
  name: string;
  shape: number[];
  dtype: string;
  count: number;
  trainable: boolean;
  task?: string;
}

/** The full report printed by `moec params`. */
export interface ParamReport {
  model: string;
  params: ParamRow[];
  total: number;
  trainable: number;
  frozen: number;
  /** Parameters shared by all tasks (those not under `per task`). */
  backbone: number;
  /** Parameters one token uses: shared ones, its experts' share, and its own task's. */
  activePerToken: number;
  perTask: { task: string; params: number; trainable: number; percentOfBackbone: number }[];
  moeLayers: {
    path: string;
    router: string;
    experts: number;
    activePerToken: number;
    expertParams: number;
  }[];
}

export function countParams(model: ElaboratedModel): ParamReport {
  const params: ParamRow[] = model.params.map((p) => {
    const row: ParamRow = {
      name: p.path,
      shape: p.shape,
      dtype: p.dtype,
      count: p.shape.reduce((a, b) => a * b, 1),
      trainable: p.trainable,
    };
    if (p.task !== undefined) row.task = p.task;
    return row;
  });
  const sum = (rows: ParamRow[]) => rows.reduce((a, r) => a + r.count, 0);
  const total = sum(params);
  const trainable = sum(params.filter((r) => r.trainable));
  const shared = params.filter((r) => r.task === undefined);
  const backbone = sum(shared);

  const under = (prefix: string) => (r: ParamRow) => r.name.startsWith(prefix + ".");
  const inExpert = new Set<ParamRow>();
  const moeLayers = model.moes.map((m) => {
    const rows = shared.filter((r) => m.experts.some((e) => under(e)(r)));
    rows.forEach((r) => inExpert.add(r));
    return {
      path: m.path,
      router: m.router,
      experts: m.experts.length,
      activePerToken: m.activePerToken,
      expertParams: sum(rows),
    };
  });
  let active = sum(shared.filter((r) => !inExpert.has(r)));
  for (const m of moeLayers) active += (m.expertParams / Math.max(1, m.experts)) * m.activePerToken;

  const taskNames: string[] = [];
  for (const t of model.tasks)
    for (const m of t.members) if (!taskNames.includes(m)) taskNames.push(m);
  for (const r of params)
    if (r.task !== undefined && !taskNames.includes(r.task)) taskNames.push(r.task);
  const perTask = taskNames.map((task) => {
    const rows = params.filter((r) => r.task === task);
    const n = sum(rows);
    return {
      task,
      params: n,
      trainable: sum(rows.filter((r) => r.trainable)),
      percentOfBackbone: backbone > 0 ? (100 * n) / backbone : 0,
    };
  });
  active += Math.max(0, ...perTask.map((t) => t.params));

  return {
    model: model.name,
    params,
    total,
    trainable,
    frozen: total - trainable,
    backbone,
    activePerToken: Math.round(active),
    perTask,
    moeLayers,
  };
}
