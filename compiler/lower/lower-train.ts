/**
 * Pass: lower a `train` program to one IR graph, the forward passes of its instances and its
 * losses. The evaluator runs the program's body in `lower` mode, as lower-model.ts does for a
 * model: its `in` ports become IR inputs, the instances it applies are inlined (a `frozen`
 * instance's parameters are frozen and named under its binding, `large.enc...`), the loss
 * builtins lower through lower-losses.ts, and each trainable MoE layer whose router weights
 * the balance or z loss adds them as terms. Outputs, each f32 [1]:
 *
 *   loss                   the program's `loss` plus every `aux:` term (what training minimises)
 *   loss:<name>            each other scalar f32 binding of the program body (ce, kd, ...)
 *   aux:<layer>.balance    balance·E·Σₑ fₑ·Pₑ of the MoE layer at <layer> (its parameter path)
 *   aux:<layer>.z          z_loss·mean over tokens of logsumexp(logits)²
 *
 * With dropout or router jitter in the model, the graph has the input `train.noise_key` (f32
 * [1]): the step's key for the `random` op, which the trainer sets per step (noiseKey).
 * For the training metrics, each MoE layer also outputs `routing:<layer>.share` (f32 [E]),
 * each expert's share of the layer's routed tokens (or mean gate, for dense routers), and
 * `evalGraph` adds each cross_entropy's accuracy counts (see AccuracyMetric).
 */
import type { Span, TrainDecl } from "../../grammar/ast.js";
import { type Diagnostic, diagnostic } from "../diagnostics.js";
import { checkTrainOverrides } from "../check/elaborate-model.js";
import { Evaluator } from "../check/evaluator.js";
import type { ResolvedProgram } from "../check/resolve-names.js";
import type { Value } from "../check/values.js";
import type { IrGraph, IrOrigin } from "../ir/graph.js";
import { inputsOf, numel } from "../ir/graph.js";
import type { IrBuilder } from "../ir/builder.js";
import { hashU32 } from "../ir/ops.js";
import { pruneGraph } from "../ir/prune-graph.js";
import { num } from "../library/options.js";
import { groupInstances, resolveParamGroups } from "../library/optim/param-groups.js";
import { Inliner } from "./inliner.js";
import { type LoweredInput, Lowering, routingOutputName } from "./lower-model.js";
import type { LoweredLibrary, PlacedLora } from "./lowering-hooks.js";

/** A parameter of a lowered training program. */
export interface TrainParam {
  /** Dotted path, as `moec params` names it (frozen instances under their binding). */
  name: string;
  shape: number[];
  /** False for parameters of `frozen` instances. */
  trainable: boolean;
  /**
   * Whether AdamW's weight decay applies: to matrices (rank ≥ 2) that are not embedding
   * tables (read with `take`, as std.nn's Embedding and routers' task tables are); never to
   * biases or norm weights (rank 1).
   */
  decay: boolean;
  /** Learning-rate multiplier from the optimizer's parameter groups (absent: 1). */
  lrScale?: number;
  /** The only rows (first-axis indices) that train, from a parameter group (absent: all). */
  rows?: number[];
}

/** AdamW's options, as the program's `optimizer = AdamW(...)` gives them (std.optim defaults). */
export interface AdamWOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Global gradient-norm clipping (`max_norm`); undefined: none. */
  maxNorm?: number;
}

/** One output of a training graph that `loss` adds up or reports. */
export interface LossTerm {
  /** The output name: `loss:<binding>` or `aux:<layer>.balance` / `aux:<layer>.z`. */
  name: string;
  /** Its node in `graph` (f32 [1]). */
  node: number;
}

/** An MoE layer's routing share output in a training graph. */
export interface RoutingShare {
  /** The layer's dotted path (`net.blocks.0.moe`; `#2` for a second application). */
  layer: string;
  /** The output `routing:<layer>.share`, f32 [experts]. */
  output: string;
  experts: number;
}

/**
 * The accuracy of one cross_entropy term on the eval graph: argmax of its logits against its
 * labels over the positions whose label is not ignore_index. Outputs (f32), summed over the
 * batch so batches add up: `accuracy:<term>.correct` and `.count` [1]; with a task input,
 * `.task_correct` and `.task_count` [tasks], by task id.
 */
export interface AccuracyMetric {
  /** The binding the cross_entropy is (part of): `ce`, or `loss` (`#2` for a second one). */
  term: string;
  /** The task names in id order, when counted per task. */
  tasks?: string[];
}

/** Output names of an accuracy metric's counts. */
export const accuracyOutput = (
  term: string,
  what: "correct" | "count" | "task_correct" | "task_count",
): string => `accuracy:${term}.${what}`;

/** The IR of one training program at fixed sizes. */
export interface LoweredTrain {
  name: string;
  /** Forward passes and losses; outputs `loss`, then the terms in order, then the shares. */
  graph: IrGraph;
  /** `graph` plus the accuracy counts (`accuracy`): what evaluation runs. */
  evalGraph: IrGraph;
  /** Each MoE layer's share output, in the order the layers were lowered. */
  routing: RoutingShare[];
  /** The cross_entropy terms evalGraph measures accuracy for. */
  accuracy: AccuracyMetric[];
  /** The node of the `loss` output (f32 [1]). */
  loss: number;
  /** The program's scalar bindings (`loss:`), then the MoE auxiliary losses (`aux:`). */
  terms: LossTerm[];
  inputs: LoweredInput[];
  /** Free dims and their sizes (B, T, ...). */
  dims: Map<string, number>;
  optimizer: AdamWOptions;
  /** Where the program binds `optimizer`: what the update's nodes are named after. */
  optimizerOrigin?: IrOrigin;
  params: TrainParam[];
  /** The LoRA adapters placed (module paths under the program's bindings). */
  loras: PlacedLora[];
}

/** Output name of the loss term bound to `name` in the program body. */
export const lossTermName = (name: string): string => `loss:${name}`;
/** Output name of an MoE layer's weighted auxiliary loss (`what`: balance or z). */
export const auxTermName = (layer: string, what: "balance" | "z"): string => `aux:${layer}.${what}`;

export { listTrainPrograms, selectTrainProgram } from "../check/elaborate-model.js";

/** The input that carries a training step's noise key (see the `random` op). */
export const NOISE_KEY_INPUT = "train.noise_key";

/** Step `step`'s noise key under `seed`: 24 bits, so the f32 input holds it exactly. */
export function noiseKey(seed: number, step: number): number {
  return hashU32((hashU32(step >>> 0) ^ seed) >>> 0) & 0xffffff;
}

/** Lowering hooks that keep each MoE layer's balance and z losses for the aux terms. */
class TrainLowering extends Lowering {
  private noiseKey: number | undefined;
  private noiseStreams = 0;
  /** Set for the step's graph; left unset for evaluation, which has no dropout or jitter. */
  noise?: (shape: number[]) => number;

  /** Each call is its own stream of the step's key. */
  freshNoise(shape: number[]): number {
    this.noiseKey ??= this.builder.input(NOISE_KEY_INPUT, "f32", [1]);
    return this.builder.random(this.noiseKey, shape, ++this.noiseStreams);
  }

  /** The latest application's statistics by layer, until its weights arrive. */
  private readonly pending = new Map<string, Map<string, number>>();
  readonly aux: LossTerm[] = [];
  /** Every MoE application's share statistic, by layer (`#2` for a second application). */
  readonly shares: { layer: string; node: number }[] = [];
  /** Every cross_entropy call, in lowering order. */
  readonly crossEntropies: { logits: number; labels: number; ignoreIndex: number; loss: number }[] =
    [];

  override crossEntropy(logits: number, labels: number, ignoreIndex: number, loss: number): void {
    this.crossEntropies.push({ logits, labels, ignoreIndex, loss });
  }

  override routing(layer: string, name: string, node: number): void {
    if (name === "share") {
      let named = layer;
      for (let i = 2; this.shares.some((s) => s.layer === named); i++) named = `${layer}#${i}`;
      this.shares.push({ layer: named, node });
      return;
    }
    if (name !== "balance_loss" && name !== "z_loss") return;
    let m = this.pending.get(layer);
    if (!m) this.pending.set(layer, (m = new Map()));
    m.set(name, node);
  }

  auxLossWeights(layer: string, w: { balance: number; z: number }, trainable: boolean): void {
    const stats = this.pending.get(layer);
    this.pending.delete(layer);
    // A frozen router (a teacher's) learns nothing from its own balance.
    if (!stats || !trainable) return;
    const ir = this.builder;
    const add = (stat: string, what: "balance" | "z", weight: number) => {
      const node = stats.get(stat);
      if (weight <= 0 || node === undefined) return;
      let name = auxTermName(layer, what);
      // A layer applied twice (shared weights) gets one term per application.
      for (let i = 2; this.aux.some((t) => t.name === name); i++)
        name = auxTermName(`${layer}#${i}`, what);
      this.aux.push({ name, node: ir.binary("mul", ir.reshape(node, [1]), ir.constant(weight)) });
    };
    add("balance_loss", "balance", w.balance);
    add("z_loss", "z", w.z);
  }
}

/**
 * Lowers the training program `train` with parameter `overrides` (of the program's own
 * parameters) and free-dim sizes `dims`. Problems are added to `diagnostics`.
 */
export function lowerTrain(
  program: ResolvedProgram,
  train: { decl: TrainDecl; file: string },
  overrides: Map<string, Value>,
  dims: ReadonlyMap<string, number>,
  diagnostics: Diagnostic[],
  library: LoweredLibrary,
  options: { evaluation?: boolean } = {},
): LoweredTrain | undefined {
  const { decl, file } = train;
  checkTrainOverrides(train, overrides, diagnostics);
  // Routing statistics on: the balance and z losses are built from them.
  const lowering = new TrainLowering(dims, diagnostics, file, decl.name.span, true);
  if (!options.evaluation) lowering.noise = (shape) => lowering.freshNoise(shape);
  const evaluator = new Evaluator(program, diagnostics, "lower", library);
  evaluator.hooks = new Inliner(evaluator, lowering, library.rules);
  lowering.evaluator = evaluator;
  const before = diagnostics.length;
  const bindings = evaluator.evaluateTrainRoot(decl, file, overrides);
  if (!bindings || diagnostics.slice(before).some((d) => d.severity === "error")) return undefined;
  const fail = (span: Span, message: string): undefined => {
    diagnostics.push(diagnostic("E0601", file, span, message));
    return undefined;
  };
  const ir = lowering.builder;
  const loss = bindings.get("loss");
  if (loss?.k !== "tensor" || loss.node === undefined)
    return fail(decl.name.span, "the back end could not lower `loss`");
  const terms: LossTerm[] = [];
  for (const [name, v] of bindings) {
    if (name === "loss" || v.k !== "tensor" || v.node === undefined) continue;
    if (v.t.dtype !== "f32" || v.t.lead !== undefined || v.t.dims.length !== 0) continue;
    terms.push({ name: lossTermName(name), node: ir.reshape(v.node, [1]) });
  }
  let total = ir.reshape(loss.node, [1]);
  for (const t of lowering.aux) total = ir.binary("add", total, t.node);
  ir.output("loss", total);
  for (const t of [...terms, ...lowering.aux]) ir.output(t.name, t.node);
  const routing: RoutingShare[] = lowering.shares.map((s) => ({
    layer: s.layer,
    output: routingOutputName(s.layer, "share"),
    experts: numel(ir.shape(s.node)),
  }));
  lowering.shares.forEach((s, i) => ir.output(routing[i]!.output, s.node));
  const optimizerValue = bindings.get("optimizer");
  const optimizer = adamwOptions(optimizerValue);
  if (!optimizer || optimizerValue?.k !== "instance")
    return fail(decl.name.span, "the back end can train with AdamW only");
  for (const [name, size] of dims)
    if (!lowering.usedDims.has(name)) lowering.usedDims.set(name, size);
  // The eval graph's extra outputs are built on the same nodes, then each graph keeps its own.
  const trainOutputs = ir.outputs.length;
  const accuracy = accuracyOutputs(ir, lowering, bindings);
  const built = ir.finish();
  const graph = pruneGraph({ ...built, outputs: built.outputs.slice(0, trainOutputs) });
  const evalGraph = pruneGraph(built);
  const outputs = new Map(graph.outputs.map((o) => [o.name, o.node]));
  const optimizerBinding = decl.body.find(
    (s) => s.kind === "Binding" && s.target.name === "optimizer",
  );
  const params = trainParams(graph);
  const groups = resolveParamGroups(groupInstances(optimizerValue.inst), params, diagnostics);
  if (diagnostics.slice(before).some((d) => d.severity === "error")) return undefined;
  for (const p of params) {
    const g = groups.get(p.name);
    if (!g) continue;
    if (g.decay !== undefined) p.decay = g.decay;
    if (g.lrScale !== undefined) p.lrScale = g.lrScale;
    if (g.rows !== undefined) p.rows = g.rows;
  }
  return {
    name: decl.name.name,
    graph,
    evalGraph,
    routing,
    accuracy,
    loss: outputs.get("loss")!,
    terms: [...terms, ...lowering.aux].map((t) => ({ name: t.name, node: outputs.get(t.name)! })),
    inputs: lowering.inputs,
    dims: lowering.usedDims,
    optimizer,
    ...(optimizerBinding
      ? {
          optimizerOrigin: {
            file,
            start: optimizerBinding.span.start,
            end: optimizerBinding.span.end,
          },
        }
      : {}),
    params,
    loras: [...lowering.loras.values()],
  };
}

/**
 * Adds the accuracy counts of every cross_entropy call to `ir`'s outputs. Each is named by the
 * first scalar binding of the program body (source order) whose value depends on it, so
 * `ce = cross_entropy(...)` is `ce` even when `loss` adds it up. Counted per task when the
 * program has a task input whose shape leads the labels' ([B] task ids, [B] or [B, T] labels).
 */
function accuracyOutputs(
  ir: IrBuilder,
  lowering: TrainLowering,
  bindings: ReadonlyMap<string, Value>,
): AccuracyMetric[] {
  if (lowering.crossEntropies.length === 0) return [];
  const scalars: { name: string; deps: Set<number> }[] = [];
  for (const [name, v] of bindings) {
    if (v.k !== "tensor" || v.node === undefined || v.t.dtype !== "f32") continue;
    if (v.t.lead !== undefined || v.t.dims.length !== 0) continue;
    scalars.push({ name, deps: ancestors(ir, v.node) });
  }
  const taskInput = lowering.inputs.find((i) => i.tasks !== undefined);
  const taskNode =
    taskInput &&
    ir.nodes.find((n) => n.op === "input" && n.name === taskInput.name && n.dtype === "i32")?.id;
  const metrics: AccuracyMetric[] = [];
  for (const ce of lowering.crossEntropies) {
    const base = scalars.find((s) => s.deps.has(ce.loss))?.name ?? "loss";
    let term = base;
    for (let i = 2; metrics.some((m) => m.term === term); i++) term = `${base}#${i}`;
    const labelShape = ir.shape(ce.labels);
    const N = numel(labelShape);
    const C = ir.shape(ce.logits).at(-1)!;
    const predicted = ir.topk(ir.reshape(ce.logits, [N, C]), 1); // [N, 1]: the argmax
    const labels = ir.reshape(ir.cast(ce.labels, "i32"), [N, 1]);
    const ignored = ir.cast(ir.binary("eq", labels, ir.constant(ce.ignoreIndex, "i32")), "f32");
    const kept = ir.binary("sub", ir.constant(1), ignored); // [N, 1]
    const correct = ir.binary("mul", ir.cast(ir.binary("eq", predicted, labels), "f32"), kept);
    const sum = (x: number) => ir.reduce("sum", x, 0, false); // [N, k] → [k]
    ir.output(accuracyOutput(term, "correct"), sum(correct));
    ir.output(accuracyOutput(term, "count"), sum(kept));
    const metric: AccuracyMetric = { term };
    const taskShape = taskNode === undefined ? undefined : ir.shape(taskNode);
    if (
      taskInput?.tasks &&
      taskNode !== undefined &&
      taskShape &&
      taskShape.every((d, i) => labelShape[i] === d)
    ) {
      const K = taskInput.tasks.length;
      const B = numel(taskShape);
      // Each example's task as a one-hot row ("no task", -1, matches none).
      const onehot = ir.cast(
        ir.binary("eq", ir.reshape(taskNode, [B, 1]), ir.iota(ir.constant(0, "i32", [1, K]))),
        "f32",
      );
      const perTask = (x: number) =>
        ir.reduce(
          "sum",
          ir.binary("mul", ir.reduce("sum", ir.reshape(x, [B, N / B]), 1, true), onehot),
          0,
          false,
        ); // [K]
      ir.output(accuracyOutput(term, "task_correct"), perTask(correct));
      ir.output(accuracyOutput(term, "task_count"), perTask(kept));
      metric.tasks = [...taskInput.tasks];
    }
    metrics.push(metric);
  }
  return metrics;
}

/** `node` and every node it depends on. */
function ancestors(ir: IrBuilder, node: number): Set<number> {
  const seen = new Set<number>();
  const stack = [node];
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    stack.push(...inputsOf(ir.nodes[id]!));
  }
  return seen;
}

/** The optimizer binding's options; undefined unless it is an AdamW. */
function adamwOptions(v: Value | undefined): AdamWOptions | undefined {
  if (v?.k !== "instance" || v.inst.component !== "AdamW") return undefined;
  const inst = v.inst;
  const maxNorm = num(inst, "max_norm") ?? 0;
  // The declaration's defaults are bound already; these fallbacks repeat std.optim's.
  return {
    lr: num(inst, "lr") ?? 1e-3,
    beta1: num(inst, "beta1") ?? 0.9,
    beta2: num(inst, "beta2") ?? 0.999,
    eps: num(inst, "eps") ?? 1e-8,
    weightDecay: num(inst, "weight_decay") ?? 0.01,
    ...(maxNorm > 0 ? { maxNorm } : {}),
  };
}

/** Every parameter of the graph with its trainability and weight-decay flag (see TrainParam). */
function trainParams(graph: IrGraph): TrainParam[] {
  const tables = new Set<number>();
  for (const n of graph.nodes) if (n.op === "gather") tables.add(n.inputs[0]);
  const out: TrainParam[] = [];
  for (const n of graph.nodes) {
    if (n.op !== "param") continue;
    out.push({
      name: n.name,
      shape: [...n.shape],
      trainable: n.trainable,
      decay: n.shape.length >= 2 && !tables.has(n.id),
    });
  }
  return out;
}
