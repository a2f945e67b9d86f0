/**
 * A readable text form of the IR (`moec compile --emit ir`, golden files):
 *   %7 = matmul %5, %6 : f32[1, 5, 64]
 */
import type { IrGraph, IrNode } from "./graph.js";

function attrs(n: IrNode): string {
  switch (n.op) {
    case "input":
      return ` "${n.name}"`;
    case "param":
      return ` "${n.name}"${n.trainable ? "" : " frozen"} init=${n.init}`;
    case "const":
      return ` ${Number.isInteger(n.value) ? n.value.toFixed(1) : String(n.value)}`;
    case "unary":
    case "binary":
      return ` ${n.fn}`;
    case "reduce":
      return ` ${n.fn} axis=${n.axis}`;
    case "permute":
      return ` [${n.perm.join(", ")}]`;
    case "concat":
      return ` axis=${n.axis}`;
    case "slice":
      return ` axis=${n.axis} start=${n.start} size=${n.size}`;
    case "scatter_add":
      return ` rows=${n.rows}`;
    case "cumsum":
      return ` axis=${n.axis}`;
    case "topk":
      return ` k=${n.k}`;
    case "group_rows":
      return ` experts=${n.experts} align=${n.align}`;
    default:
      return "";
  }
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
