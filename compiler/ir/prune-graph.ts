/**
 * Drops the nodes no output depends on and renumbers the rest (ids stay positions). Inputs and
 * parameters are kept even when unused: they are the program's interface. Lowering leaves dead
 * nodes behind where a rewrite replaced a subgraph (stack-experts.ts replaces each expert's
 * own copy of a body with one body over all experts).
 */
import { type IrGraph, type IrNode, inputsOf } from "./graph.js";

export function pruneGraph(graph: IrGraph): IrGraph {
  const live = new Set<number>();
  const stack = graph.outputs.map((o) => o.node);
  for (const n of graph.nodes) if (n.op === "input" || n.op === "param") stack.push(n.id);
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (live.has(id)) continue;
    live.add(id);
    for (const i of inputsOf(graph.nodes[id]!)) stack.push(i);
  }
  if (live.size === graph.nodes.length) return graph;
  const renumber = new Map<number, number>();
  const nodes: IrNode[] = [];
  for (const n of graph.nodes) {
    if (!live.has(n.id)) continue;
    const id = nodes.length;
    renumber.set(n.id, id);
    const copy = { ...n, id } as IrNode;
    if ("inputs" in copy) {
      (copy as { inputs: number[] }).inputs = copy.inputs.map((i) => renumber.get(i)!);
    }
    nodes.push(copy);
  }
  const outputs = graph.outputs.map((o) => ({ name: o.name, node: renumber.get(o.node)! }));
  const origins = graph.origins;
  if (!origins) return { nodes, outputs };
  return {
    nodes,
    outputs,
    origins: graph.nodes.filter((n) => live.has(n.id)).map((n) => origins[n.id]),
  };
}
