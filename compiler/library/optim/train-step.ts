/**
 * The train-step graph: a differentiated graph (forward, loss, gradients) with the optimizer
 * appended, so one device program computes the loss and every parameter's new value and
 * optimizer state. Its outputs are the graph's own (loss, loss terms), `grad_norm`, and per
 * updated parameter `update:<p>`, `exp_avg:<p>`, `exp_avg_sq:<p>`; the train executor copies
 * those back into the parameters' buffers after each step.
 */
import type { IrGraph, IrNode, IrOrigin } from "../../ir/graph.js";
import { IrBuilder } from "../../ir/builder.js";
import type { Draft } from "../../ir/ops.js";
import { type AdamWOptions, type AdamWParam, appendAdamW } from "./adamw.js";

/** How one parameter trains (the train program's parameter table). */
export interface TrainParamSpec {
  name: string;
  trainable: boolean;
  /** Weight decay applies to it. */
  decay: boolean;
  /** Per-parameter learning-rate multiplier (default 1). */
  lrScale?: number;
  /** The only rows (first-axis indices, ascending) that train; absent: every row. */
  rows?: number[];
}

/**
 * Appends AdamW to `graph` for every trainable parameter that has a gradient in `gradients`
 * (parameter name → gradient node). Like PyTorch, a parameter without a gradient (it does not
 * reach the loss) is left alone: no decay, no state. Throws on a gradient of an unknown or
 * frozen parameter, or one whose shape is not its parameter's.
 */
export function assembleTrainStep(
  graph: IrGraph,
  gradients: ReadonlyMap<string, number>,
  params: readonly TrainParamSpec[],
  options: AdamWOptions,
  /** Where the program binds its optimizer: the origin of the update's nodes. */
  optimizerOrigin?: IrOrigin,
): IrGraph {
  const b = new IrBuilder();
  const paramNodes = new Map<string, IrNode>();
  // Replaying the nodes in order keeps their ids, so gradient ids stay valid.
  for (const n of graph.nodes) {
    let id: number;
    if (n.op === "param") {
      id = b.param(n.name, n.shape, n.trainable, n.init, n.dtype);
      paramNodes.set(n.name, n);
    } else {
      const { id: _id, ...draft } = n;
      id = b.at(graph.origins?.[n.id], () => b.make(draft as Draft<typeof n.op>));
    }
    if (id !== n.id) throw new Error(`internal: node %${n.id} replayed as %${id}`);
  }
  for (const o of graph.outputs) b.output(o.name, o.node);
  const spec = new Map(params.map((p) => [p.name, p]));
  const updates: AdamWParam[] = [];
  for (const [name, grad] of gradients) {
    const node = paramNodes.get(name);
    const s = spec.get(name);
    if (!node || !s) throw new Error(`gradient for ${name}, which is not a parameter of the graph`);
    if (!s.trainable) throw new Error(`gradient for frozen parameter ${name}`);
    const gs = b.shape(grad);
    if (gs.join(",") !== node.shape.join(",")) {
      throw new Error(
        `gradient of ${name} has shape [${gs.join(", ")}], the parameter [${node.shape.join(", ")}]`,
      );
    }
    const u: AdamWParam = { name, param: node.id, grad, decay: s.decay };
    if (s.lrScale !== undefined) u.lrScale = s.lrScale;
    if (s.rows !== undefined) u.rows = s.rows;
    updates.push(u);
  }
  b.at(optimizerOrigin && { ...optimizerOrigin, role: "optimizer" }, () =>
    appendAdamW(b, updates, options),
  );
  return b.finish();
}
