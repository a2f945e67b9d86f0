/**
 * Lowering step for sparse MoE layers: turns E copies of an expert body, each applied to the
 * same rows X [R, d], into one body over all rows in which every row uses its own expert's
 * weights (ids [R]). Experts are ordinary components (FFN, LoRA-wrapped Linear, anything built
 * from row-wise ops), so this works on their lowered IR rather than on a list of known layers:
 *
 *   - a node computed from X becomes the same op on the stacked rows;
 *   - a value that differs per expert and does not depend on X (a weight, a transposed weight,
 *     LoRA's scale times a matrix) is stacked into [E, ...] (a transpose of a stack of
 *     parameters stays a strided view);
 *   - `rows @ W_e` becomes expert_matmul(rows, stack(W), ids, order): the GPU kernel walks the
 *     rows grouped by expert (`order`), so no expert ever computes on another's tokens;
 *   - `rows + b_e` (and any other elementwise use of a per-expert value) reads b[ids[r]];
 *   - values every expert shares (a frozen base under LoRA experts, constants) stay shared.
 *
 * The per-expert copies become dead and pruneGraph drops them. Anything that is not row-wise
 * (a reduction over rows, an embedding lookup inside an expert) is reported, not guessed.
 */
import type { IrBuilder } from "../ir/builder.js";
import { type IrNode, inputsOf, numel } from "../ir/graph.js";
import { BINARY_FUNCTION_ROWS, UNARY_FUNCTION_ROWS } from "../ir/ops.js";

type Built =
  | { kind: "row"; node: number }
  | { kind: "shared"; node: number }
  | { kind: "per_expert"; nodes: number[] };

/**
 * Rows are grouped by expert in blocks of `align` rows (group_rows): a GPU register block of
 * rows never straddles two experts. Big blocks reuse each weight load across more rows; with
 * few rows per expert they mostly compute padding, so the block follows the expected rows per
 * expert.
 */
export function rowAlign(rows: number, experts: number): number {
  const perExpert = Math.ceil(rows / experts);
  let align = 4;
  while (align < 16 && align < perExpert) align *= 2;
  // 32-row blocks (the large matmul variant's) once padding stays under ~1/8 of the rows.
  if (perExpert >= 128) align = 32;
  return align;
}

/** One body over all experts, or the reason it cannot be built. */
export type StackResult = { node: number } | { error: string };

/**
 * Attributes of a node apart from its id, inputs and shape, for comparing experts' copies:
 * experts whose sizes differ (per-task widths) compare equal.
 */
function shapeFree(n: IrNode): string {
  const { id: _id, shape: _shape, ...rest } = n as IrNode & { inputs?: number[] };
  void _id;
  void _shape;
  const copy: Record<string, unknown> = { ...rest };
  delete copy.inputs;
  return JSON.stringify(copy);
}

/** shapeFree with the shape: equal only for copies of one size. */
function signature(n: IrNode): string {
  return `${shapeFree(n)}${JSON.stringify(n.shape)}`;
}

export function stackExperts(
  ir: IrBuilder,
  rows: number,
  outputs: readonly number[],
  ids: number,
  order: number,
): StackResult {
  const E = outputs.length;
  const R = ir.shape(rows)[0]!;
  const rowDependent = new Map<number, boolean>();
  const dependsOnRows = (id: number): boolean => {
    const known = rowDependent.get(id);
    if (known !== undefined) return known;
    const n = ir.node(id);
    const v = id === rows || inputsOf(n).some(dependsOnRows);
    rowDependent.set(id, v);
    return v;
  };
  const built = new Map<string, Built>();
  /** Whether the experts' values differ in shape (a padded value once stacked). */
  const padded = (tuple: readonly number[]): boolean => {
    const s0 = ir.shape(tuple[0]!).join(",");
    return tuple.some((id) => ir.shape(id).join(",") !== s0);
  };
  const stacks = new Map<string, number>();
  let problem: string | undefined;
  const fail = (why: string): undefined => {
    problem ??= why;
    return undefined;
  };
  let clampedIds: number | undefined;
  const rowIds = () => (clampedIds ??= ir.binary("max", ids, ir.constant(0, "i32")));

  /** [E, ...shape] from each expert's own value. */
  const stack = (nodes: number[]): number => {
    const key = nodes.join(",");
    const known = stacks.get(key);
    if (known !== undefined) return known;
    const first = ir.node(nodes[0]!);
    let out: number;
    const all = nodes.map((id) => ir.node(id));
    const widest = first.shape.map((_, a) => Math.max(...all.map((n) => n.shape[a]!)));
    if (first.op === "permute" && all.every((n) => shapeFree(n) === shapeFree(first))) {
      // Transposed weights: transpose the stack, a view of the parameters.
      const inner = stack(all.map((n) => inputsOf(n)[0]!));
      out = ir.permute(inner, [0, ...first.perm.map((p) => p + 1)]);
    } else if (all.some((n) => n.shape.some((d, a) => d !== widest[a]))) {
      // Sizes differ (per-task widths): zero-pad each to the widest. Zero rows and columns
      // add nothing to the matmuls they feed; the stack depends on parameters only, so the
      // runtime builds it once (a static kernel).
      const parts = nodes.map((id) => {
        let v = id;
        widest.forEach((w, a) => {
          const shape = ir.shape(v);
          if (shape[a]! < w)
            v = ir.concat(
              [
                v,
                ir.constant(
                  0,
                  ir.node(id).dtype,
                  shape.map((d, b) => (b === a ? w - d : d)),
                ),
              ],
              a,
            );
        });
        return ir.reshape(v, [1, ...widest]);
      });
      out = concatChunked(ir, parts, 0);
    } else {
      const parts = nodes.map((id) => ir.reshape(id, [1, ...ir.shape(id)]));
      // Parameters stack in one concat, which the back end lays out as one buffer (a pack)
      // they are uploaded into; anything computed is copied, a few inputs per kernel.
      out = all.every((n) => n.op === "param") ? ir.concat(parts, 0) : concatChunked(ir, parts, 0);
    }
    stacks.set(key, out);
    return out;
  };

  /** A per-expert value as seen by each row: its expert's value, broadcast like the original. */
  const perRow = (nodes: number[], rowRank: number): number | undefined => {
    const stacked = stack(nodes);
    const shape = ir.shape(stacked).slice(1);
    let s = [...shape];
    while (s.length > rowRank - 1) {
      if (s[0] !== 1) return fail(`a per-expert value of shape [${shape}] spans the token axis`);
      s = s.slice(1);
    }
    const table = ir.reshape(stacked, [E, Math.max(1, numel(s))]);
    const picked = ir.gather(table, rowIds());
    return ir.reshape(picked, [R, ...Array(rowRank - 1 - s.length).fill(1), ...s]);
  };

  const build = (tuple: number[]): Built | undefined => {
    const key = tuple.join(",");
    const known = built.get(key);
    if (known) return known;
    const result = buildUncached(tuple);
    if (result) built.set(key, result);
    return result;
  };

  /** A value not computed from the rows: the same for every expert, or one per expert. */
  const fixed = (tuple: number[]): Built => {
    const id0 = tuple[0]!;
    if (tuple.every((id) => id === id0)) return { kind: "shared", node: id0 };
    const nodes = tuple.map((id) => ir.node(id));
    const sig = signature(nodes[0]!);
    if (nodes.some((n) => signature(n) !== sig)) return { kind: "per_expert", nodes: tuple };
    if (nodes[0]!.op === "const") return { kind: "shared", node: id0 };
    const ins = inputsOf(nodes[0]!).map((_, i) => tuple.map((id) => inputsOf(ir.node(id))[i]!));
    const sameInputs = ins.length > 0 && ins.every((t) => fixed(t).kind === "shared");
    return sameInputs ? { kind: "shared", node: id0 } : { kind: "per_expert", nodes: tuple };
  };

  const buildUncached = (tuple: number[]): Built | undefined => {
    const id0 = tuple[0]!;
    const rowDep = tuple.map(dependsOnRows);
    if (!rowDep.some(Boolean)) return fixed(tuple);
    // One node for every expert: the rows themselves, or work on them that the experts share.
    if (tuple.every((id) => id === id0)) return { kind: "row", node: id0 };
    if (!rowDep.every(Boolean))
      return fail("the experts differ in which values depend on the tokens");
    const nodes = tuple.map((id) => ir.node(id));
    const n0 = nodes[0]!;
    const sig = shapeFree(n0);
    const odd = nodes.find((n) => shapeFree(n) !== sig);
    if (odd) return fail(`the experts differ in structure (${n0.op} against ${odd.op})`);
    // Experts may differ in the size of a value's last axis (per-task widths); it is padded
    // with zeros, which only ops that keep the padding harmless may see.
    const last = n0.shape.length - 1;
    if (nodes.some((n) => n.shape.some((d, a) => a !== last && d !== n0.shape[a])))
      return fail(`the experts' ${n0.op} values differ in shape beyond their last axis`);
    const ins = inputsOf(n0).map((_, i) => tuple.map((id) => inputsOf(ir.node(id))[i]!));
    const children: Built[] = [];
    for (const t of ins) {
      const c = build(t);
      if (!c) return undefined;
      children.push(c);
    }
    const paddedIn = ins.map((t) => dependsOnRows(t[0]!) && padded(t));
    if (paddedIn.some(Boolean)) {
      const safe =
        // Functions that keep finite padding finite (their rows' paddingSafe): not those
        // that turn a finite value into an infinity or NaN a zero weight cannot cancel.
        (n0.op === "unary" && UNARY_FUNCTION_ROWS[n0.fn].paddingSafe) ||
        (n0.op === "binary" && BINARY_FUNCTION_ROWS[n0.fn].paddingSafe) ||
        n0.op === "cast" ||
        (n0.op === "matmul" && !paddedIn[1]);
      if (!safe)
        return fail(
          `a ${n0.op === "unary" || n0.op === "binary" ? n0.fn : n0.op} of values whose size differs between experts`,
        );
    }
    const rank = n0.shape.length;
    const asRow = (c: Built): number | undefined =>
      c.kind === "per_expert" ? perRow(c.nodes, rank) : c.node;
    const row = (node: number | undefined): Built | undefined =>
      node === undefined ? undefined : { kind: "row", node };
    // A single-input op computed from the rows has the rows' value as its input.
    const only = children[0]?.kind === "row" ? children[0].node : -1;
    switch (n0.op) {
      case "unary":
        return row(ir.unary(n0.fn, only));
      case "cast":
        return row(ir.cast(only, n0.dtype));
      case "softmax":
        return rank >= 2 ? row(ir.softmax(only)) : fail("a softmax over tokens");
      case "binary": {
        const [a, b] = children.map(asRow);
        if (a === undefined || b === undefined) return undefined;
        return row(ir.binary(n0.fn, a, b));
      }
      case "reduce":
        if (n0.axis === 0) return fail("a reduction over tokens");
        return row(ir.reduce(n0.fn, only, n0.axis, true));
      case "reshape": {
        if (ir.shape(only)[0] !== R || n0.shape[0] !== R) return fail("a reshape across tokens");
        return row(ir.reshape(only, n0.shape));
      }
      case "permute":
        if (n0.perm[0] !== 0) return fail("a transpose of the token axis");
        return row(ir.permute(only, n0.perm));
      case "slice":
        if (n0.axis === 0) return fail("a slice of the token axis");
        return row(ir.slice(only, n0.axis, n0.start, n0.size));
      case "concat": {
        if (n0.axis === 0) return fail("a concatenation along the token axis");
        const parts = children.map(asRow);
        if (parts.some((p) => p === undefined)) return undefined;
        return row(ir.concat(parts as number[], n0.axis));
      }
      case "matmul": {
        const [a, b] = children as [Built, Built];
        if (a.kind !== "row" || b.kind === "row" || ir.shape(a.node).length !== 2)
          return fail("a matmul that is not tokens [R, k] times a weight");
        if (b.kind === "shared") return row(ir.matmul(a.node, b.node));
        if (ir.shape(b.nodes[0]!).length !== 2) return fail("a batched per-expert matmul");
        return row(ir.expertMatmul(a.node, stack(b.nodes), ids, order));
      }
      default:
        return fail(`the ${n0.op} op inside an expert`);
    }
  };

  // The experts' outputs correspond position by position; build from them.
  if (padded([...outputs])) return { error: "the experts' outputs differ in shape" };
  const out = build([...outputs]);
  if (!out || problem !== undefined)
    return { error: problem ?? "the experts could not be combined" };
  if (out.kind !== "row") return { error: "an expert whose output does not depend on its input" };
  return { node: out.node };
}

/**
 * Concatenation of many tensors as a tree of small concats: a kernel reads each input through
 * its own binding, and devices allow as few as 8 storage buffers per shader stage.
 */
export function concatChunked(ir: IrBuilder, xs: number[], axis: number, chunk = 6): number {
  let level = xs;
  while (level.length > 1) {
    const next: number[] = [];
    for (let i = 0; i < level.length; i += chunk) {
      const part = level.slice(i, i + chunk);
      next.push(part.length === 1 ? part[0]! : ir.concat(part, axis));
    }
    level = next;
  }
  return level[0]!;
}
