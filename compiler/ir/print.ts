/**
 * A readable text form of the IR (`moec compile --emit ir`, golden files):
 *   %7 = matmul %5, %6 : f32[1, 5, 64]
 */
import type { IrGraph, IrNode } from "./graph.js";
import { opRow } from "./ops.js";

/** The node's attributes, as its op's row prints them. */
function attrs(n: IrNode): string {
  return opRow(n.op).print?.(n) ?? "";
}

export function printGraph(g: IrGraph): string {
  const lines = g.nodes.map((n) => {
    const ins = "inputs" in n ? ` ${n.inputs.map((i) => `%${i}`).join(", ")}` : "";
    const sep = ins && attrs(n) ? "," : "";
    return `%${n.id} = ${n.op}${attrs(n)}${sep}${ins} : ${n.dtype}[${n.shape.join(", ")}]`;
  });
  for (const o of g.outputs) lines.push(`output "${o.name}" = %${o.node}`);
  return lines.join("\n") + "\n";
}
