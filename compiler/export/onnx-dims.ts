/**
 * Which sizes of a lowered graph follow its free dims, and how. The IR has concrete shapes
 * only, so the exporter lowers the model several times: at base sizes, once more per free dim
 * with that dim changed, and once with every dim at a check size. Where the graphs differ only
 * in sizes (shapes, slice bounds, top-k counts), each size that changed is fitted as a
 * monomial c·∏ dimᵉ (B·T, 2·T, T/group) and the fit checked against the last lowering. The
 * ONNX builder asks for the sizes it must write into the graph; a size with no fit (a
 * capacity rounded up, a padded group) or a graph whose structure changed keeps those dims
 * fixed, which the builder reports (NotSymbolicError) so the caller can ask for --dim.
 */
import type { IrGraph, IrNode } from "../ir/graph.js";

/** A size in terms of the free dims: `num/den · ∏ dim^exps[dim]` (exps empty: a constant). */
export interface SymSize {
  num: number;
  den: number;
  exps: Record<string, number>;
}

export const constSize = (n: number): SymSize => ({ num: n, den: 1, exps: {} });

export const isConst = (s: SymSize): boolean => Object.keys(s.exps).length === 0;

/** `2*B*T`, `T/4`, `8`. */
export function showSize(s: SymSize): string {
  const vars = Object.entries(s.exps).flatMap(([d, e]) => Array<string>(e).fill(d));
  const parts = [...(s.num !== 1 || vars.length === 0 ? [String(s.num)] : []), ...vars];
  return parts.join("*") + (s.den !== 1 ? `/${s.den}` : "");
}

/** A size the graph needs written in, which cannot follow the named free dims. */
export class NotSymbolicError extends Error {
  constructor(
    readonly dims: readonly string[],
    /** Why, as a phrase: "the shape of op 10 (const) is no product of the free dims". */
    readonly reason: string,
    /** The IR node it is about, where there is one (its source origin locates it). */
    readonly node?: number,
  ) {
    super(reason);
  }
}

/** The lowerings the analysis compares (all of one model, same options, same fixed dims). */
export interface DimProbes {
  baseSize: number;
  /** Per free dim: the graph lowered with that dim at `probeSize`, the others at `baseSize`. */
  perDim: ReadonlyMap<string, IrGraph>;
  probeSize: number;
  /** Every free dim at `checkSize`. */
  check: IrGraph;
  checkSize: number;
}

/**
 * Node fields that name structure: they must agree between lowerings. (group_rows' align may
 * change: it only schedules GPU work, and no ONNX op is written for it.)
 */
const STRUCTURAL = new Set([
  "op",
  "fn",
  "inputs",
  "dtype",
  "name",
  "perm",
  "axis",
  "stream",
  "trainable",
  "init",
  "experts",
]);

/** How a model's sizes follow its free dims (those the probes vary). */
export class SymbolicSizes {
  /** Free dims whose lowering changed the graph's structure (they cannot stay free). */
  readonly structural = new Map<string, string>();

  /**
   * `base` is the graph the builder writes (lowered at `probes.baseSize` for every free dim);
   * without probes every size is fixed.
   */
  constructor(
    readonly base: IrGraph,
    private readonly probes?: DimProbes,
  ) {
    if (!probes) return;
    for (const [dim, g] of probes.perDim) {
      const why = structureDiffers(base, g);
      if (why) this.structural.set(dim, why);
    }
    if (this.structural.size === 0) {
      const why = structureDiffers(base, probes.check);
      if (why) for (const d of probes.perDim.keys()) this.structural.set(d, why);
    }
  }

  get freeDims(): string[] {
    return this.probes ? [...this.probes.perDim.keys()] : [];
  }

  /**
   * The size at field `field` (index `index` of an array field) of node `id`, in terms of the
   * free dims; `what` names it in the error when it has no fit.
   */
  size(id: number, field: string, index: number | undefined, what: string): SymSize {
    const read = (g: IrGraph) => {
      const v = (g.nodes[id] as unknown as Record<string, unknown>)[field];
      return (index === undefined ? v : (v as number[])[index]) as number;
    };
    const p = this.probes;
    const v0 = read(this.base);
    if (!p) return constSize(v0);
    const exps: Record<string, number> = {};
    const varying = [...p.perDim].filter(([, g]) => read(g) !== v0).map(([d]) => d);
    const noFit = () => new NotSymbolicError(varying, `${what} is no product of the free dims`, id);
    for (const dim of varying) {
      const v = read(p.perDim.get(dim)!);
      const e = Math.log(v / v0) / Math.log(p.probeSize / p.baseSize);
      if (!(v0 > 0 && v > 0 && Math.abs(e - Math.round(e)) < 1e-9 && Math.round(e) > 0))
        throw noFit();
      exps[dim] = Math.round(e);
    }
    if (varying.length === 0) {
      // Not moved by any one dim, yet moved by all of them at once: no product fits.
      if (read(p.check) !== v0)
        throw new NotSymbolicError(this.freeDims, `${what} is no product of the free dims`, id);
      return constSize(v0);
    }
    const power = (size: number) => Object.values(exps).reduce((a, e) => a * size ** e, 1);
    // v0 = num/den · base^Σe: the smallest denominator that makes num an integer.
    const c = v0 / power(p.baseSize);
    let den = 1;
    while (den <= 4096 && Math.abs(c * den - Math.round(c * den)) > 1e-9) den++;
    const num = Math.round(c * den);
    const ok = den <= 4096 && (num * power(p.checkSize)) / den === read(p.check);
    if (!ok) throw noFit();
    return { num, den, exps };
  }

  /** A number of node `id` that must not change with the free dims (a constant's value). */
  fixed(id: number, field: string, what: string): number {
    const v = (g: IrGraph) => (g.nodes[id] as unknown as Record<string, number>)[field]!;
    const moved = (g: IrGraph) => v(g) !== v(this.base);
    const varying = [...(this.probes?.perDim ?? [])].filter(([, g]) => moved(g)).map(([d]) => d);
    if (varying.length === 0 && this.probes && moved(this.probes.check))
      varying.push(...this.freeDims);
    if (varying.length > 0)
      throw new NotSymbolicError(varying, `${what} changes with the size`, id);
    return v(this.base);
  }

  /** The sizes of node `id`'s shape. */
  shape(node: IrNode, what: string): SymSize[] {
    return node.shape.map((_, a) => this.size(node.id, "shape", a, `${what}, axis ${a},`));
  }
}

/** Why two lowerings of one model are not the same graph up to sizes, or undefined. */
function structureDiffers(a: IrGraph, b: IrGraph): string | undefined {
  if (a.nodes.length !== b.nodes.length)
    return `the graph has ${a.nodes.length} ops at one size and ${b.nodes.length} at another`;
  for (let i = 0; i < a.nodes.length; i++) {
    const x = a.nodes[i] as unknown as Record<string, unknown>;
    const y = b.nodes[i] as unknown as Record<string, unknown>;
    for (const k of STRUCTURAL) {
      if (JSON.stringify(x[k]) !== JSON.stringify(y[k]))
        return `op ${i} (${String(x.op)}) changes its ${k} with the size`;
    }
    const sx = x.shape as number[];
    const sy = y.shape as number[];
    if (sx.length !== sy.length) return `op ${i} (${String(x.op)}) changes its rank with the size`;
  }
  if (JSON.stringify(a.outputs) !== JSON.stringify(b.outputs))
    return "the outputs change with the size";
  return undefined;
}
