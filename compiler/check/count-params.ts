/**
 * Pass 5 (report): parameter accounting for an elaborated model: every tensor by dotted name,
 * totals, trainable and frozen counts, parameters active per token (experts weighted by how
 * many a token visits), and each task's extra parameters as a share of the shared backbone.
 * Per task it also counts what training on that task's examples trains: every shared
 * trainable parameter, the task's own (`per task` instances), and its rows of task-indexed
 * tables (a router's task embedding), which no other task's examples reach.
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
  /** A table indexed by task id: row i belongs to task `taskRows[i]` alone. */
  taskRows?: string[];
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
  /** Trainable parameters every task trains: not a task's own, not a task's row. */
  sharedTrainable: number;
  perTask: {
    task: string;
    /** The task's own parameters (its `per task` instances). */
    params: number;
    /** Of those, trainable. */
    trainable: number;
    /** Trainable parameters in the task's rows of task-indexed tables (router task embeddings). */
    trainableRows: number;
    /** What training on the task's examples trains: sharedTrainable + trainable + trainableRows. */
    trainableTotal: number;
    percentOfBackbone: number;
  }[];
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
    if (p.taskRows !== undefined) row.taskRows = p.taskRows;
    return row;
  });
  const sum = (rows: ParamRow[]) => rows.reduce((a, r) => a + r.count, 0);
  const total = sum(params);
  const trainable = sum(params.filter((r) => r.trainable));
  const shared = params.filter((r) => r.task === undefined);
  const backbone = sum(shared);

  // Expert paths → the layers they belong to; each row looks up its own dotted prefixes, so
  // the cost is linear in rows and experts (10,000 experts: no rows × experts scan).
  const layersOf = new Map<string, number[]>();
  model.moes.forEach((m, i) => {
    for (const e of m.experts) {
      const at = layersOf.get(e);
      if (at === undefined) layersOf.set(e, [i]);
      else if (!at.includes(i)) at.push(i);
    }
  });
  const expertParams = model.moes.map(() => 0);
  // The last row counted for each layer: a row under two experts of one layer counts once.
  const countedRow = model.moes.map(() => -1);
  const inExpert = new Set<ParamRow>();
  shared.forEach((r, row) => {
    for (let dot = r.name.indexOf("."); dot >= 0; dot = r.name.indexOf(".", dot + 1)) {
      const layers = layersOf.get(r.name.slice(0, dot));
      if (layers === undefined) continue;
      for (const i of layers) {
        if (countedRow[i] === row) continue;
        countedRow[i] = row;
        expertParams[i] += r.count;
        inExpert.add(r);
      }
    }
  });
  const moeLayers = model.moes.map((m, i) => ({
    path: m.path,
    router: m.router,
    experts: m.experts.length,
    activePerToken: m.activePerToken,
    expertParams: expertParams[i]!,
  }));
  let active = sum(shared.filter((r) => !inExpert.has(r)));
  for (const m of moeLayers) active += (m.expertParams / Math.max(1, m.experts)) * m.activePerToken;

  const taskNames: string[] = [];
  for (const t of model.tasks)
    for (const m of t.members) if (!taskNames.includes(m)) taskNames.push(m);
  for (const r of params)
    for (const t of [...(r.task !== undefined ? [r.task] : []), ...(r.taskRows ?? [])])
      if (!taskNames.includes(t)) taskNames.push(t);
  const sharedTrainable = sum(
    params.filter((r) => r.trainable && r.task === undefined && r.taskRows === undefined),
  );
  const perTask = taskNames.map((task) => {
    const rows = params.filter((r) => r.task === task);
    const n = sum(rows);
    const own = sum(rows.filter((r) => r.trainable));
    // A task-indexed table's row is count / rows parameters, trained only by its own task.
    let trainableRows = 0;
    for (const r of params)
      if (r.trainable && r.task === undefined && r.taskRows !== undefined)
        trainableRows +=
          (r.count / r.taskRows.length) * r.taskRows.filter((t) => t === task).length;
    return {
      task,
      params: n,
      trainable: own,
      trainableRows,
      trainableTotal: sharedTrainable + own + trainableRows,
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
    sharedTrainable,
    activePerToken: Math.round(active),
    perTask,
    moeLayers,
  };
}
