/**
 * Reverse-mode differentiation of an IR graph: the gradient of a one-element loss with
 * respect to every trainable parameter, appended to the same graph as more IR of the same op
 * set, so the backward pass is fused, planned and emitted like the forward one.
 *
 * Only the nodes between trainable parameters and the loss are differentiated. Cotangents are
 * summed where a value is used more than once; the walk stops at frozen parameters, inputs,
 * constants and every input its op's row marks "none" (indices, masks, integers). Each op's
 * vector-Jacobian rule is the `vjp` slot of its row in ./ops.ts.
 */
import { IrBuilder } from "./builder.js";
import { type IrGraph, type IrNode, inputsOf, numel } from "./graph.js";
import { type InputVjp, type NodeOf, opRow } from "./ops.js";

/** A differentiated graph and the node of each trainable parameter's gradient. */
export interface DifferentiatedGraph {
  graph: IrGraph;
  /** Parameter path → the node of d loss / d parameter (the parameter's shape). */
  gradients: Map<string, number>;
  /** Trainable parameters the loss does not depend on (their gradient is zero). */
  unused: string[];
}

export interface DifferentiateOptions {
  /** Which parameters to differentiate; default: those marked trainable. */
  trainable?: (p: NodeOf<"param">) => boolean;
  /** Where given, each gradient is also an output named prefix + the parameter's path. */
  outputPrefix?: string;
}

/** The rule of each input of `n`; undefined where its row has none written. */
function rulesOf(n: IrNode): readonly InputVjp<IrNode>[] | undefined {
  return opRow(n.op).vjp?.(n);
}

function describe(n: IrNode): string {
  return "fn" in n ? `${n.op} ${n.fn} (node ${n.id})` : `${n.op} (node ${n.id})`;
}

export function differentiateGraph(
  graph: IrGraph,
  loss: number,
  options: DifferentiateOptions = {},
): DifferentiatedGraph {
  const trainable = options.trainable ?? ((p) => p.trainable);
  const lossNode = graph.nodes[loss];
  if (!lossNode || numel(lossNode.shape) !== 1 || lossNode.dtype !== "f32")
    throw new Error(`internal: the loss must be one f32 value; node ${loss} is not`);
  const count = graph.nodes.length;
  const flows = (n: IrNode, k: number) => rulesOf(n)?.[k] !== "none";

  // Forward: the f32 values that depend on a trainable parameter through differentiable inputs.
  const fromParams = new Array<boolean>(count).fill(false);
  for (const n of graph.nodes) {
    if (n.dtype !== "f32") continue;
    if (n.op === "param") fromParams[n.id] = trainable(n);
    else fromParams[n.id] = inputsOf(n).some((i, k) => fromParams[i]! && flows(n, k));
  }
  // Backward: those the loss depends on.
  const needed = new Array<boolean>(count).fill(false);
  needed[loss] = fromParams[loss]!;
  for (let id = loss; id >= 0; id--) {
    const n = graph.nodes[id]!;
    if (!needed[id]) continue;
    inputsOf(n).forEach((i, k) => {
      if (fromParams[i] && flows(n, k)) needed[i] = true;
    });
  }

  const ir = IrBuilder.extend(graph);
  const cotangents = new Map<number, number>();
  if (needed[loss]) cotangents.set(loss, ir.constant(1, "f32", [...lossNode.shape]));
  for (let id = loss; id >= 0; id--) {
    const n = graph.nodes[id]!;
    const g = cotangents.get(id);
    if (g === undefined || n.op === "param") continue;
    const rules = rulesOf(n);
    inputsOf(n).forEach((input, k) => {
      if (!needed[input]) return;
      const rule = rules?.[k];
      if (rule === "none") return;
      if (rule === undefined)
        throw new Error(`internal: no gradient rule for input ${k} of ${describe(n)}`);
      // The gradient's nodes are named after the value they differentiate.
      const from = graph.origins?.[id];
      const gk = ir.at(from && { ...from, role: "gradient" }, () =>
        rule({ ir, node: n, cotangent: g }),
      );
      const want = graph.nodes[input]!.shape;
      if (ir.shape(gk).join(",") !== want.join(","))
        throw new Error(
          `internal: the rule of ${describe(n)} gave [${ir.shape(gk)}] for input ${k} of shape [${want}]`,
        );
      const before = cotangents.get(input);
      const sum = () => ir.binary("add", before!, gk);
      cotangents.set(
        input,
        before === undefined ? gk : ir.at(from && { ...from, role: "gradient" }, sum),
      );
    });
  }

  const gradients = new Map<string, number>();
  const unused: string[] = [];
  for (const n of graph.nodes) {
    if (n.op !== "param" || n.dtype !== "f32" || !trainable(n)) continue;
    const g = cotangents.get(n.id);
    if (g === undefined) unused.push(n.name);
    else {
      gradients.set(n.name, g);
      if (options.outputPrefix !== undefined) ir.output(options.outputPrefix + n.name, g);
    }
  }
  return { graph: ir.finish(), gradients, unused };
}
