/**
 * The IR verifier: every input refers to an earlier node, and every node's shape and dtype are
 * what its op's rule gives. Tests run it after every pass.
 */
import { type IrGraph, type IrNode, inputsOf } from "./graph.js";
import { opRow } from "./ops.js";

export function verifyGraph(g: IrGraph): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  g.nodes.forEach((n, index) => {
    const bad = (msg: string) => problems.push(`node ${n.id} (${n.op}): ${msg}`);
    if (n.id !== index) bad(`id ${n.id} at position ${index}`);
    for (const i of inputsOf(n))
      if (!(i >= 0 && i < index)) bad(`input ${i} is not an earlier node`);
    if (n.shape.some((d) => !Number.isInteger(d) || d < 0))
      bad(`shape [${n.shape}] has a bad dimension`);
    if (n.op === "param") {
      if (seen.has(n.name)) bad(`parameter ${n.name} appears twice`);
      seen.add(n.name);
    }
    const expected = expectedShape(g, n);
    if (expected.join(",") !== n.shape.join(",")) bad(`shape [${n.shape}], expected [${expected}]`);
    const dtype = expectedDtype(g, n);
    if (dtype !== undefined && dtype !== n.dtype) bad(`dtype ${n.dtype}, expected ${dtype}`);
  });
  for (const o of g.outputs)
    if (!g.nodes[o.node]) problems.push(`output ${o.name} refers to missing node ${o.node}`);
  return problems;
}

/** The shape the op's row gives for the node's inputs; [] where they do not fit. */
function expectedShape(g: IrGraph, n: IrNode): number[] {
  try {
    return opRow(n.op).shape(
      n,
      inputsOf(n).map((i) => g.nodes[i]?.shape ?? []),
    );
  } catch {
    return [];
  }
}

function expectedDtype(g: IrGraph, n: IrNode): string | undefined {
  const ins = inputsOf(n).map((i) => g.nodes[i]?.dtype);
  if (ins.some((d) => d === undefined)) return undefined;
  try {
    return opRow(n.op).dtype(n, ins as IrNode["dtype"][]);
  } catch {
    return undefined;
  }
}
