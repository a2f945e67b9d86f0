/**
 * Where a step went non-finite: the step replayed in the reference interpreter, each f32 value
 * rounded to float32 (so an overflow there is one here too), stopped at the first node in the
 * graph's order whose value has a NaN or an infinity. Lowering records each node's origin (the
 * expression or application it came from), so the answer is a place in the user's source.
 */
import type { IrGraph, IrOrigin } from "../../compiler/ir/graph.js";
import { type HostTensor, interpret } from "../reference/interpret.js";

export interface NonFiniteSource {
  /** The node's id and op (`binary div`, `param blocks.0.ln.weight`, ...). */
  node: number;
  op: string;
  /** The first bad value in it. */
  value: number;
  origin?: IrOrigin;
}

export function firstNonFinite(
  graph: IrGraph,
  leaves: ReadonlyMap<string, HostTensor>,
): NonFiniteSource | undefined {
  let found: NonFiniteSource | undefined;
  interpret(graph, leaves, {
    float32: true,
    stopAfter: (id, value) => {
      const bad = value.data.find((v) => !Number.isFinite(v));
      if (bad === undefined) return false;
      const n = graph.nodes[id]!;
      const what =
        n.op === "param" || n.op === "input"
          ? `${n.op} ${n.name}`
          : n.op === "unary" || n.op === "binary" || n.op === "reduce"
            ? `${n.op} ${n.fn}`
            : n.op;
      const origin = graph.origins?.[id];
      found = { node: id, op: what, value: bad, ...(origin ? { origin } : {}) };
      return true;
    },
  });
  return found;
}
