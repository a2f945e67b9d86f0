/**
 * The IR verifier: every input refers to an earlier node, and every node's shape and dtype are
 * what its op's rule gives. Tests run it after every pass.
 */
import { broadcast, groupRowsLength } from "./builder.js";
import { type IrGraph, type IrNode, inputsOf, numel } from "./graph.js";

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
    if (expected && expected.join(",") !== n.shape.join(","))
      bad(`shape [${n.shape}], expected [${expected}]`);
  });
  for (const o of g.outputs)
    if (!g.nodes[o.node]) problems.push(`output ${o.name} refers to missing node ${o.node}`);
  return problems;
}

function expectedShape(g: IrGraph, n: IrNode): number[] | undefined {
  const s = (i: number) => g.nodes[i]?.shape ?? [];
  try {
    switch (n.op) {
      case "unary":
      case "softmax":
      case "causal_mask":
      case "cast":
      case "iota":
        return s(n.inputs[0]);
      case "binary":
        return broadcast(s(n.inputs[0]), s(n.inputs[1]));
      case "matmul": {
        const a = s(n.inputs[0]);
        const b = s(n.inputs[1]);
        if (a[a.length - 1] !== b[b.length - 2]) return [];
        return [...broadcast(a.slice(0, -2), b.slice(0, -2)), a[a.length - 2]!, b[b.length - 1]!];
      }
      case "reduce":
        return s(n.inputs[0]).map((d, i) => (i === n.axis ? 1 : d));
      case "gather":
        return [...s(n.inputs[1]), s(n.inputs[0])[1]!];
      case "scatter_add": {
        const src = s(n.inputs[0]);
        return [n.rows, src[src.length - 1]!];
      }
      case "permute":
        return n.perm.map((p) => s(n.inputs[0])[p]!);
      case "reshape":
        return numel(s(n.inputs[0])) === numel(n.shape) ? n.shape : [];
      case "concat": {
        const out = [...s(n.inputs[0]!)];
        out[n.axis] = n.inputs.reduce((a, i) => a + s(i)[n.axis]!, 0);
        return out;
      }
      case "slice": {
        const out = [...s(n.inputs[0])];
        if (n.start + n.size > out[n.axis]!) return [];
        out[n.axis] = n.size;
        return out;
      }
      case "cumsum":
        return s(n.inputs[0]);
      case "topk": {
        const x = s(n.inputs[0]);
        return n.k <= x[x.length - 1]! ? [...x.slice(0, -1), n.k] : [];
      }
      case "group_rows":
        return [groupRowsLength(s(n.inputs[0])[0]!, n.experts, n.align)];
      case "expert_matmul": {
        const [x, w] = [s(n.inputs[0]), s(n.inputs[1])];
        return x[1] === w[1] ? [x[0]!, w[2]!] : [];
      }
      default:
        return undefined;
    }
  } catch {
    return [];
  }
}
