/**
 * The reference interpreter: executes IR on the CPU in float64, one op at a time, with no
 * fusion and no cleverness. It is the oracle every GPU kernel and every gradient is checked
 * against. Each op's implementation is the `reference` of its row in compiler/ir/ops.ts,
 * written for clarity; this file only feeds the leaves and walks the graph.
 */
import { type HostTensor, erf, strides } from "../../compiler/ir/float64.js";
import { type IrGraph, inputsOf, numel } from "../../compiler/ir/graph.js";
import { BINARY_FUNCTION_ROWS, UNARY_FUNCTION_ROWS, opRow } from "../../compiler/ir/ops.js";

export { type HostTensor, erf, strides };

/** Each unary function's float64 reference, by name (the op table's, for callers that map). */
export const UNARY_FUNCTIONS: Record<string, (x: number) => number> = Object.fromEntries(
  Object.entries(UNARY_FUNCTION_ROWS).map(([name, row]) => [name, row.reference]),
);

/** Each binary function's float64 reference, by name. */
export const BINARY_FUNCTIONS: Record<string, (a: number, b: number) => number> =
  Object.fromEntries(
    Object.entries(BINARY_FUNCTION_ROWS).map(([name, row]) => [name, row.reference]),
  );

export interface InterpretOptions {
  /** Round every f32 node's value to float32 (its range too: beyond it is ±Infinity). */
  float32?: boolean;
  /** Called with each node's value (leaves too) as it is known: true stops the run there. */
  stopAfter?: (id: number, value: HostTensor) => boolean;
}

/**
 * Runs a graph. `leaves` gives a tensor for every `input` (by name) and `param` (by path).
 * Returns the outputs by name and every node's value.
 */
export function interpret(
  graph: IrGraph,
  leaves: ReadonlyMap<string, HostTensor>,
  options: InterpretOptions = {},
): { outputs: Map<string, HostTensor>; values: HostTensor[] } {
  const values: HostTensor[] = [];
  const get = (id: number) => values[id]!;
  for (const n of graph.nodes) {
    if (n.op === "input" || n.op === "param") {
      const t = leaves.get(n.name);
      if (!t) throw new Error(`no value for ${n.op} ${n.name}`);
      if (t.shape.join(",") !== n.shape.join(",")) {
        throw new Error(`${n.op} ${n.name}: expected shape [${n.shape}], got [${t.shape}]`);
      }
      values.push(t);
      if (options.stopAfter?.(n.id, t)) break;
      continue;
    }
    const reference = opRow(n.op).reference;
    if (!reference) throw new Error(`internal: ${n.op} has no reference implementation`);
    const data = new Float64Array(numel(n.shape));
    reference(n, inputsOf(n).map(get), data);
    if (options.float32 && n.dtype === "f32")
      for (let i = 0; i < data.length; i++) data[i] = Math.fround(data[i]!);
    values.push({ shape: n.shape, data });
    if (options.stopAfter?.(n.id, values[n.id]!)) break;
  }
  // A run stopped early has only the outputs computed by then.
  const known = graph.outputs.filter((o) => values[o.node] !== undefined);
  return { outputs: new Map(known.map((o) => [o.name, get(o.node)])), values };
}
