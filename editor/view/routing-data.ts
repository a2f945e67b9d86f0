/**
 * Routing data for `moec view`, from the files the user passes: the JSON `moec run --stats
 * --json` prints (its `routing` object, per MoE layer) and the safetensors `moec run
 * --trace-routing` writes (`<layer>.experts` [N, k], `<layer>.weights`, `<layer>.tokens`
 * [E, c], `<layer>.groups` [N, G]). Pure: tensors come in as plain arrays.
 */

/** One tensor of a trace file. */
export interface TraceTensor {
  shape: number[];
  data: ArrayLike<number>;
}

/** Per-token choices of one layer. */
export interface LayerTrace {
  /** Tokens (rows) traced. */
  tokens: number;
  /** For each token: the experts it went to, with their weights (dropped ones as -1). */
  choices: { expert: number; weight?: number }[][];
  /** For each token, the group weights of a Grouped router. */
  groups?: number[][];
}

export interface RoutingLayer {
  layer: string;
  tokensPerExpert?: number[];
  share?: number[];
  dropped?: number;
  groupWeights?: number[];
  entropy?: number;
  balanceLoss?: number;
  zLoss?: number;
  /** Every other statistic, as printed. */
  other: [string, number | number[]][];
  trace?: LayerTrace;
}

export class RoutingDataError extends Error {}

const numberList = (v: unknown): number[] | undefined =>
  Array.isArray(v) && v.every((x) => typeof x === "number") ? (v as number[]) : undefined;

/** The `routing` object of `moec run --stats --json` output (or the object itself). */
export function parseStats(json: unknown, what = "--stats"): RoutingLayer[] {
  if (typeof json !== "object" || json === null)
    throw new RoutingDataError(`${what}: expected a JSON object`);
  const obj = json as Record<string, unknown>;
  const routing = "routing" in obj ? obj.routing : "outputs" in obj ? undefined : obj;
  if (routing === undefined)
    throw new RoutingDataError(
      `${what}: no "routing" object: the model has no MoE layer, or the run lacked --stats`,
    );
  if (typeof routing !== "object" || routing === null)
    throw new RoutingDataError(`${what}: "routing" is not an object`);
  const layers: RoutingLayer[] = [];
  for (const [layer, raw] of Object.entries(routing as Record<string, unknown>)) {
    if (typeof raw !== "object" || raw === null) continue;
    const stats = raw as Record<string, unknown>;
    const out: RoutingLayer = { layer, other: [] };
    for (const [key, v] of Object.entries(stats)) {
      const list = numberList(v);
      const num = typeof v === "number" ? v : undefined;
      if (key === "tokens_per_expert" && list) out.tokensPerExpert = list;
      else if (key === "share" && list) out.share = list;
      else if (key === "group_weights" && list) out.groupWeights = list;
      else if (key === "dropped" && num !== undefined) out.dropped = num;
      else if (key === "entropy" && num !== undefined) out.entropy = num;
      else if (key === "balance_loss" && num !== undefined) out.balanceLoss = num;
      else if (key === "z_loss" && num !== undefined) out.zLoss = num;
      else if (list) out.other.push([key, list]);
      else if (num !== undefined) out.other.push([key, num]);
    }
    layers.push(out);
  }
  return layers;
}

/**
 * Per-token choices from a trace file's tensors by name. Top-k: `<layer>.experts` [N, k]
 * (-1 where dropped) and `<layer>.weights` [N, k]; expert choice: `<layer>.tokens` [E, c]
 * (the tokens each expert took, -1 for an empty slot) and `<layer>.weights` [E, c].
 */
export function parseTrace(tensors: ReadonlyMap<string, TraceTensor>): Map<string, LayerTrace> {
  const layers = new Map<string, Map<string, TraceTensor>>();
  for (const [name, t] of tensors) {
    const dot = name.lastIndexOf(".");
    if (dot < 0) continue;
    const layer = name.slice(0, dot);
    if (!layers.has(layer)) layers.set(layer, new Map());
    layers.get(layer)!.set(name.slice(dot + 1), t);
  }
  const out = new Map<string, LayerTrace>();
  for (const [layer, parts] of layers) {
    const experts = parts.get("experts");
    const weights = parts.get("weights");
    const tokens = parts.get("tokens");
    const groups = parts.get("groups");
    let trace: LayerTrace | undefined;
    if (experts && experts.shape.length === 2) {
      const [n, k] = experts.shape as [number, number];
      const choices: LayerTrace["choices"] = [];
      for (let i = 0; i < n; i++) {
        const row: { expert: number; weight?: number }[] = [];
        for (let j = 0; j < k; j++) {
          const c: { expert: number; weight?: number } = { expert: experts.data[i * k + j]! };
          if (weights && weights.data.length === n * k) c.weight = weights.data[i * k + j]!;
          row.push(c);
        }
        choices.push(row);
      }
      trace = { tokens: n, choices };
    } else if (tokens && tokens.shape.length === 2) {
      // Expert choice: invert the [E, c] table into each token's experts.
      const [e, c] = tokens.shape as [number, number];
      let n = 0;
      for (let i = 0; i < tokens.data.length; i++) n = Math.max(n, tokens.data[i]! + 1);
      const choices: LayerTrace["choices"] = Array.from({ length: n }, () => []);
      for (let x = 0; x < e; x++)
        for (let j = 0; j < c; j++) {
          const tok = tokens.data[x * c + j]!;
          if (tok < 0) continue;
          const ch: { expert: number; weight?: number } = { expert: x };
          if (weights && weights.data.length === e * c) ch.weight = weights.data[x * c + j]!;
          choices[tok]!.push(ch);
        }
      trace = { tokens: n, choices };
    }
    if (groups && groups.shape.length === 2) {
      const [n, g] = groups.shape as [number, number];
      const rows: number[][] = [];
      for (let i = 0; i < n; i++)
        rows.push(Array.from({ length: g }, (_, j) => groups.data[i * g + j]!));
      trace ??= { tokens: n, choices: [] };
      trace.groups = rows;
    }
    if (trace) out.set(layer, trace);
  }
  return out;
}

/** Stats and traces merged by layer, in the stats' order, then trace-only layers. */
export function mergeRouting(
  stats: readonly RoutingLayer[],
  traces: ReadonlyMap<string, LayerTrace>,
): RoutingLayer[] {
  const out = stats.map((s) => ({ ...s }));
  for (const [layer, trace] of traces) {
    let found = out.find((s) => s.layer === layer);
    if (found) found.trace = trace;
    else {
      found = { layer, other: [], trace };
      out.push(found);
    }
    // A trace alone still gives the heat map: each expert's assignments, and the dropped ones.
    if (!found.tokensPerExpert && trace.choices.length > 0) {
      const counts: number[] = [];
      let dropped = 0;
      for (const row of trace.choices)
        for (const c of row) {
          if (c.expert < 0) dropped++;
          else counts[c.expert] = (counts[c.expert] ?? 0) + 1;
        }
      found.tokensPerExpert = Array.from(counts, (n) => n ?? 0);
      found.dropped ??= dropped;
    }
  }
  return out;
}

/** Number of experts of a layer, from whatever it has. */
export function expertCount(r: RoutingLayer, fromModel?: number): number {
  if (fromModel !== undefined) return fromModel;
  if (r.tokensPerExpert) return r.tokensPerExpert.length;
  if (r.share) return r.share.length;
  let e = 0;
  for (const row of r.trace?.choices ?? []) for (const c of row) e = Math.max(e, c.expert + 1);
  return e;
}
