/**
 * Back end pass 1 (fuse): groups the nodes of a tensor IR graph into GPU kernels.
 *
 * Memory traffic, not arithmetic, is what a small model's forward pass spends its time on, so
 * every value that can be computed where it is consumed is: a kernel stores one value (its
 * root) and evaluates the nodes that feed only it (its members) in registers. The rules:
 *
 *   - reshape, permute and slice never copy on their own: they become strided *views* that the
 *     consuming kernel reads through (so `x @ transpose(weight)` reads the weight transposed and
 *     the attention head split is free). A view is copied only where a later reshape cannot be
 *     expressed with strides, or where it is a graph output; even then a permute of a kernel's
 *     only result is folded into that kernel's store instead of a copy.
 *   - elementwise ops (unary, binary with broadcasting, cast, iota, causal_mask, gather,
 *     concat, constants) join the kernel of their consumers when all consumers are in one
 *     kernel; chains become one pass.
 *   - a matmul or a reduction along a non-last axis is an *anchor*: the elementwise chain that
 *     consumes only it (bias, activation, residual, scaling) is its epilogue.
 *   - reductions along the last axis and softmax make a *rows* kernel: one workgroup per row
 *     evaluates the whole row-wise chain, which is what LayerNorm, RMSNorm and masked, scaled
 *     softmax lower to.
 *   - `softmax(mask(scale(Q @ Kᵀ))) @ V` becomes one attention kernel (online softmax) when the
 *     scores are used nowhere else.
 *
 * The result is plain data (no WGSL, no device): plan-buffers.ts assigns buffers and launch
 * sizes, emit-wgsl.ts writes the shaders.
 */
import { type IrDType, type IrGraph, type IrNode, inputsOf, numel } from "../ir/graph.js";
import { type AnchorKernel, fusionOf, isAnchorKernel } from "../ir/ops.js";
import { paramStacks } from "../ir/param-stacks.js";

/** How a kernel reads a value: a strided window onto the buffer of a stored tensor. */
export interface View {
  /** The node whose buffer holds the data (an input, a parameter or a kernel's stored value). */
  storage: number;
  dtype: IrDType;
  /** First element, in elements. */
  offset: number;
  /** The value's logical shape. */
  shape: number[];
  /** Elements per step along each logical axis. */
  strides: number[];
}

/** The anchors' kinds are the op table's anchor fusion kernels (compiler/ir/ops.ts). */
export type KernelKind = "map" | "rows" | "attention" | AnchorKernel;

/** One GPU kernel: computes `members` (and its anchor) and stores the value of `root`. */
export interface FusedKernel {
  kind: KernelKind;
  /** A readable, unique name: kind and the root's node id (`matmul_12`). */
  name: string;
  /** The node whose value the kernel writes; its shape is the kernel's iteration space. */
  root: number;
  shape: number[];
  /** Elementwise and row-wise nodes evaluated in the kernel, ascending ids (the root included
   *  unless the root is the anchor or a copied view). */
  members: number[];
  /** matmul / non-last-axis reduce / scatter_add node whose result the members consume; for
   *  "attention" the `P @ V` matmul. */
  anchor?: number;
  /** For "attention": the `Q @ Kᵀ` matmul and the softmax evaluated on the fly. */
  scores?: number;
  softmax?: number;
  /** How each non-member value a member (or the anchor) consumes is read, by node id. */
  loads: Record<number, View>;
  /** Where the root's value is written (contiguous unless a permute was folded into it). */
  out: View;
  /**
   * Computed from parameters and constants only (merged adapter weights, for one): the
   * runtime runs it once after parameters change, not on every call.
   */
  static?: boolean;
}

/** A tensor that owns a buffer. */
export interface Storage {
  /** The node that owns it (its id is the storage id). */
  id: number;
  /**
   * "pack": the concatenation of parameters (experts' weights stacked for an expert matmul),
   * laid out so the parameters are uploaded straight into it and the concat is never computed.
   */
  role: "input" | "param" | "value" | "pack" | "static";
  /** A parameter uploaded into a pack: the pack's storage id and the element offset. */
  packedIn?: { storage: number; offset: number };
  dtype: IrDType;
  shape: number[];
  numel: number;
  /** Input name or parameter path. */
  name?: string;
}

export interface FusedProgram {
  graph: IrGraph;
  /** In execution order. */
  kernels: FusedKernel[];
  /** Every buffer-owning tensor, ascending ids. */
  storages: Storage[];
  /** Graph outputs; each view is contiguous (possibly at an offset into its storage). */
  outputs: { name: string; view: View }[];
}

export interface FuseOptions {
  /**
   * Storage buffers a kernel may bind (the device's maxStorageBuffersPerShaderStage; 8 is
   * WebGPU's default). Fusion stops growing a kernel before it would read more.
   */
  maxStorageBuffers?: number;
  /** Turn the attention pattern into one kernel (default true; false keeps three). */
  fuseAttention?: boolean;
}

/** Contiguous row-major strides. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) out[i] = out[i + 1]! * shape[i + 1]!;
  return out;
}

/** True when the view walks its elements in row-major order with no gaps (any offset). */
export function isContiguous(v: View): boolean {
  const c = contiguousStrides(v.shape);
  return v.shape.every((d, i) => d === 1 || v.strides[i] === c[i]);
}

/** `view` reshaped without copying, or undefined when strides cannot express it. */
export function reshapeView(v: View, shape: readonly number[]): View | undefined {
  if (numel(shape) !== numel(v.shape)) return undefined;
  if (isContiguous(v)) return { ...v, shape: [...shape], strides: contiguousStrides(shape) };
  // Torch's stride computation: split the old dims into runs that are contiguous with each
  // other; each run must be exactly covered by consecutive new dims.
  const oldShape = v.shape.filter((d) => d !== 1);
  const oldStrides = v.strides.filter((_, i) => v.shape[i] !== 1);
  const strides = new Array<number>(shape.length).fill(0);
  let viewD = shape.length - 1;
  let chunkBase = oldStrides[oldStrides.length - 1] ?? 1;
  let tensorNumel = 1;
  let viewNumel = 1;
  for (let d = oldShape.length - 1; d >= 0; d--) {
    tensorNumel *= oldShape[d]!;
    if (d === 0 || oldStrides[d - 1] !== tensorNumel * chunkBase) {
      while (viewD >= 0 && (viewNumel < tensorNumel || shape[viewD] === 1)) {
        strides[viewD] = viewNumel * chunkBase;
        viewNumel *= shape[viewD]!;
        viewD--;
      }
      if (viewNumel !== tensorNumel) return undefined;
      if (d > 0) {
        chunkBase = oldStrides[d - 1]!;
        tensorNumel = 1;
        viewNumel = 1;
      }
    }
  }
  while (viewD >= 0 && shape[viewD] === 1) strides[viewD--] = 1;
  if (viewD !== -1) return undefined;
  return { ...v, shape: [...shape], strides };
}

// How each op fuses is its row's fusion class (compiler/ir/ops.ts).

/** Evaluated per output element; can live inside another op's kernel. */
const isExpression = (n: IrNode): boolean => fusionOf(n).kernel === "map";
/** Reshape, permute, slice: a strided window onto a stored value. */
const isView = (n: IrNode): boolean => fusionOf(n).kernel === "view";
/** Needs the whole last axis (softmax, a last-axis reduction): makes a rows kernel. */
const isRowWise = (n: IrNode): boolean => fusionOf(n).kernel === "rows";
/** An anchor that takes over its consumers' map kernel as its epilogue (matmul, reduce). */
const hasEpilogue = (n: IrNode): boolean => fusionOf(n).epilogue === true;
const isLeaf = (n: IrNode): boolean => fusionOf(n).kernel === "leaf";

/** How a consumer uses one of its inputs. */
type UseKind = "expr" | "buffer";

interface Use {
  consumer: number; // -1 for a graph output
  kind: UseKind;
}

interface Group {
  kind: KernelKind;
  root: number;
  members: Set<number>;
  anchor?: number;
  /** Storages the members and anchor read (a bound on bindings while growing). */
  reads: Set<number>;
}

/**
 * Whether a consumer evaluates its inputs at its own point ("expr": elementwise and row-wise
 * ops) or reads them from stored tensors (matmul operands, non-last reductions,
 * gather/concat/scatter operands and views).
 */
function useKind(consumer: IrNode): UseKind {
  return fusionOf(consumer).operands === "inline" ? "expr" : "buffer";
}

/** Inputs a node actually reads (iota only takes its input's shape). */
function readsOf(n: IrNode): readonly number[] {
  return fusionOf(n).operands === "shape" ? [] : inputsOf(n);
}

export function fuseKernels(graph: IrGraph, options: FuseOptions = {}): FusedProgram {
  const nodes = graph.nodes;
  const maxReads = Math.max(2, (options.maxStorageBuffers ?? 8) - 1);
  const node = (id: number) => nodes[id]!;

  // Live nodes: reachable from the outputs.
  const live = new Set<number>();
  const stack = graph.outputs.map((o) => o.node);
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (live.has(id)) continue;
    live.add(id);
    for (const i of readsOf(node(id))) stack.push(i);
  }

  const uses = new Map<number, Use[]>();
  for (const id of [...live].sort((a, b) => a - b)) {
    uses.set(id, uses.get(id) ?? []);
    const n = node(id);
    for (const i of readsOf(n)) {
      const list = uses.get(i) ?? [];
      list.push({ consumer: id, kind: useKind(n) });
      uses.set(i, list);
    }
  }
  for (const o of graph.outputs) uses.get(o.node)!.push({ consumer: -1, kind: "buffer" });
  const isOutput = new Set(graph.outputs.map((o) => o.node));
  const ordered = [...live].sort((a, b) => a - b);

  // ---- Packs. A stack of whole parameters along axis 0 (how experts' weights are stacked;
  // compiler/ir/param-stacks.ts) becomes one buffer the parameters are uploaded into: the
  // stack is then free, and every reader of a packed parameter reads the pack. A stack whose
  // parts include an earlier pack's parameters, all of them, consecutive and in order (the
  // optimizer's flat parameter vector), takes that pack in whole: the pack nests.
  const packOf = new Map<number, { storage: number; offset: number }>(); // param or pack → place
  const packs = new Set<number>();
  const packMembers = new Map<number, number[]>(); // top-level pack → its parameters in order
  for (const stack of paramStacks(nodes)) {
    if (!live.has(stack.concat)) continue;
    const parts: { id: number; offset: number; nested?: number[] }[] = [];
    let offset = 0;
    let ok = true;
    for (let k = 0; k < stack.params.length && ok;) {
      const q = stack.params[k]!;
      const inner = packOf.get(q)?.storage;
      if (inner === undefined) {
        parts.push({ id: q, offset });
        offset += numel(node(q).shape);
        k++;
        continue;
      }
      const members = packMembers.get(inner)!;
      ok = packOf.get(q)!.offset === 0 && members.every((m, j) => stack.params[k + j] === m);
      parts.push({ id: inner, offset, nested: members });
      offset += members.reduce((a, m) => a + numel(node(m).shape), 0);
      k += members.length;
    }
    if (!ok) continue;
    for (const part of parts) {
      if (part.nested) {
        for (const m of part.nested) {
          const at = packOf.get(m)!;
          packOf.set(m, { storage: stack.concat, offset: part.offset + at.offset });
        }
        packMembers.delete(part.id);
      }
      packOf.set(part.id, { storage: stack.concat, offset: part.offset });
    }
    packs.add(stack.concat);
    packMembers.set(stack.concat, stack.params);
  }

  // ---- Views. A view op's input is stored (or is itself a view); a reshape that strides
  // cannot express stores the view it reshapes.
  const copied = new Set<number>(); // view-op nodes that get a buffer of their own
  const storageOwner = (id: number): boolean => {
    const n = node(id);
    if (isView(n)) return copied.has(id);
    return true; // every non-view node read through a view is stored
  };
  const rawView = (id: number): View => {
    const n = node(id);
    if (storageOwner(id)) {
      const packed = packOf.get(id);
      return {
        storage: packed?.storage ?? id,
        dtype: n.dtype,
        offset: packed?.offset ?? 0,
        shape: [...n.shape],
        strides: contiguousStrides(n.shape),
      };
    }
    return composeView(id);
  };
  const composeView = (id: number): View => {
    const n = node(id);
    const src = rawView(inputsOf(n)[0]!);
    switch (n.op) {
      case "permute":
        return {
          ...src,
          shape: n.perm.map((p) => src.shape[p]!),
          strides: n.perm.map((p) => src.strides[p]!),
        };
      case "slice":
        return {
          ...src,
          offset: src.offset + n.start * src.strides[n.axis]!,
          shape: n.shape.slice(),
          strides: src.strides.slice(),
        };
      case "reshape": {
        const r = reshapeView(src, n.shape);
        if (!r) throw new Error(`internal: reshape ${id} of a non-contiguous view`);
        return r;
      }
      default:
        throw new Error(`internal: ${n.op} is not a view`);
    }
  };
  for (const id of ordered) {
    const n = node(id);
    if (n.op !== "reshape") continue;
    if (!reshapeView(rawView(n.inputs[0]), n.shape)) copied.add(n.inputs[0]);
  }
  for (const o of graph.outputs) {
    const n = node(o.node);
    if (isView(n) && !isContiguous(rawView(o.node))) copied.add(o.node);
  }
  // A view op's source must be stored; the shapes of view chains are resolved above.

  // ---- Groups, built from the outputs backwards: a node joins the kernel of its consumers
  // when they all sit in one kernel that can evaluate it.
  const groupOf = new Map<number, Group>();
  const groups: Group[] = [];
  const inlineConst = (id: number) =>
    node(id).op === "const" && (uses.get(id) ?? []).every((u) => u.kind === "expr");

  /** The storages `id` binds to read its inputs (constants in expressions are literals). */
  const inputsRead = (id: number): number[] => {
    const n = node(id);
    const expr = useKind(n) === "expr";
    return readsOf(n)
      .filter((i) => !(expr && node(i).op === "const"))
      .map((i) => rawView(i).storage);
  };

  const newGroup = (id: number): Group => {
    const n = node(id);
    const f = fusionOf(n).kernel;
    let kind: KernelKind = "map";
    let anchor: number | undefined;
    if (isAnchorKernel(f)) [kind, anchor] = [f, id];
    else if (f === "rows") kind = "rows";
    const g: Group = { kind, root: id, members: new Set(), reads: new Set() };
    if (anchor !== undefined) g.anchor = anchor;
    else if (!isView(n)) g.members.add(id);
    if (isView(n)) g.reads.add(rawComposeStorage(id));
    else for (const s of inputsRead(id)) g.reads.add(s);
    groups.push(g);
    groupOf.set(id, g);
    return g;
  };
  const rawComposeStorage = (id: number): number => composeView(id).storage;

  const canJoin = (id: number, g: Group): boolean => {
    const n = node(id);
    const reads = new Set(g.reads);
    reads.delete(id); // read by the group until now, computed in it from here on
    for (const s of inputsRead(id)) reads.add(s);
    if (reads.size > maxReads) return false;
    if (isExpression(n)) return true;
    if (hasEpilogue(n)) {
      return (
        g.kind === "map" &&
        g.anchor === undefined &&
        n.shape.join(",") === node(g.root).shape.join(",")
      );
    }
    if (isRowWise(n)) return g.kind === "map" || g.kind === "rows";
    return false;
  };

  for (const id of [...ordered].reverse()) {
    const n = node(id);
    if (isLeaf(n) || packs.has(id)) continue;
    if (isView(n)) {
      if (copied.has(id)) newGroup(id);
      continue;
    }
    const us = uses.get(id) ?? [];
    if (fusionOf(n).kernel === "const") {
      if (!inlineConst(id)) newGroup(id);
      continue;
    }
    const forced = isOutput.has(id) || us.length === 0 || us.some((u) => u.kind === "buffer");
    const target = forced ? undefined : groupOf.get(us[0]!.consumer);
    if (
      target &&
      us.every((u) => groupOf.get(u.consumer) === target && target.members.has(u.consumer)) &&
      canJoin(id, target)
    ) {
      groupOf.set(id, target);
      const f = fusionOf(n).kernel;
      if (hasEpilogue(n) && isAnchorKernel(f)) {
        target.anchor = id;
        target.kind = f;
      } else {
        target.members.add(id);
        if (isRowWise(n)) target.kind = "rows";
      }
      target.reads.delete(id);
      for (const s of inputsRead(id)) target.reads.add(s);
      continue;
    }
    newGroup(id);
  }

  // ---- Kernels.
  const kernels: FusedKernel[] = [];
  const stored = new Set<number>(); // storage ids written by kernels
  for (const g of groups) {
    const root = node(g.root);
    const members = [...g.members].sort((a, b) => a - b);
    const loads: Record<number, View> = {};
    const load = (consumer: number) => {
      const expr = useKind(node(consumer)) === "expr";
      for (const id of readsOf(node(consumer))) {
        if (g.members.has(id) || id === g.anchor) continue;
        if (expr && node(id).op === "const") continue; // a literal
        loads[id] = rawView(id);
      }
    };
    for (const m of members) load(m);
    if (g.anchor !== undefined) load(g.anchor);
    if (isView(root)) loads[g.root] = composeView(g.root);
    const kernel: FusedKernel = {
      kind: g.kind,
      name: `${g.kind}_${g.root}`,
      root: g.root,
      shape: [...root.shape],
      members,
      loads,
      out: {
        storage: g.root,
        dtype: root.dtype,
        offset: 0,
        shape: [...root.shape],
        strides: contiguousStrides(root.shape),
      },
    };
    if (g.anchor !== undefined) kernel.anchor = g.anchor;
    kernels.push(kernel);
  }

  // ---- Store views: a kernel whose only reader is a copied permute writes the permuted
  // layout itself, and the copy disappears.
  const kernelOf = new Map(kernels.map((k) => [k.root, k]));
  for (const p of [...copied]) {
    const pn = node(p);
    if (pn.op !== "permute") continue;
    const x = pn.inputs[0];
    const producer = kernelOf.get(x);
    const xn = node(x);
    if (!producer || isOutput.has(x) || xn.op === "input" || xn.op === "param") continue;
    if ((uses.get(x) ?? []).length !== 1) continue;
    const pStrides = contiguousStrides(pn.shape);
    const strides = new Array<number>(xn.shape.length).fill(0);
    pn.perm.forEach((src, a) => (strides[src] = pStrides[a]!));
    producer.out = { ...producer.out, storage: p, strides };
    const copy = kernelOf.get(p)!;
    kernels.splice(kernels.indexOf(copy), 1);
    kernelOf.delete(p);
    // Readers of p read its buffer, unchanged; readers of x do not exist.
  }

  if (options.fuseAttention ?? true) fuseAttention(graph, kernels, uses, isOutput, maxReads);
  fuseLowRank(graph, kernels, uses, isOutput, maxReads);

  kernels.sort((a, b) => a.root - b.root);
  for (const k of kernels) stored.add(k.out.storage);

  // ---- Static kernels: values of parameters and constants alone.
  const staticValue = new Map<number, boolean>();
  const isStatic = (id: number): boolean => {
    const known = staticValue.get(id);
    if (known !== undefined) return known;
    const n = node(id);
    const v = n.op !== "input" && readsOf(n).every(isStatic);
    staticValue.set(id, v);
    return v;
  };
  const statics = new Set<number>();
  for (const k of kernels) {
    if (isStatic(k.root) && !isOutput.has(k.root) && !isOutput.has(k.out.storage)) {
      k.static = true;
      statics.add(k.out.storage);
    }
  }

  // ---- Concatenations written in place by the kernels of their parts.
  const placed = placeConcatParts(graph, kernels);
  stored.clear();
  for (const k of kernels) stored.add(k.out.storage);

  // ---- Storages: leaves, and whatever a kernel writes.
  const storages: Storage[] = [];
  for (const id of ordered) {
    const n = node(id);
    if (n.op === "input" || n.op === "param") {
      const st: Storage = {
        id,
        role: n.op,
        dtype: n.dtype,
        shape: [...n.shape],
        numel: numel(n.shape),
        name: n.name,
      };
      const packed = packOf.get(id);
      if (packed) st.packedIn = packed;
      storages.push(st);
    } else if (packs.has(id)) {
      if (packOf.has(id)) continue; // nested in a larger pack
      storages.push({
        id,
        role: "pack",
        dtype: n.dtype,
        shape: [...n.shape],
        numel: numel(n.shape),
      });
    } else if (stored.has(id)) {
      storages.push({
        id,
        role: statics.has(id) ? "static" : "value",
        dtype: n.dtype,
        shape: [...n.shape],
        numel: numel(n.shape),
      });
    }
  }

  const outputs = graph.outputs.map((o) => ({
    name: o.name,
    view: relocate(rawView(o.node), placed),
  }));
  for (const o of outputs) {
    if (!isContiguous(o.view)) throw new Error(`internal: output ${o.name} is not contiguous`);
  }
  return { graph, kernels, storages, outputs };
}

/** Where a storage moved: into another storage's buffer, at an element offset. */
type Placement = Map<number, { storage: number; offset: number }>;

/** `v` where its storage now lives (a placed concatenation may itself be placed). */
function relocate(v: View, placed: Placement): View {
  for (let to = placed.get(v.storage); to; to = placed.get(v.storage))
    v = { ...v, storage: to.storage, offset: v.offset + to.offset };
  return v;
}

/**
 * A concatenation along its outermost non-unit axis lays each part out as one contiguous
 * block, so the kernel computing a part can store it straight into the concatenation's buffer
 * at its offset, and the concatenation costs no pass of its own (the gradients of a train
 * step, concatenated into the optimizer's flat vector, are written where AdamW reads them). A
 * part that cannot be placed so (a parameter, a value some other kernel also writes or that
 * is computed once from parameters, a strided view, a repeated part) is copied by a kernel
 * of its own, so a concatenation of any number of parts never binds more than two buffers.
 */
function placeConcatParts(graph: IrGraph, kernels: FusedKernel[]): Placement {
  const node = (id: number) => graph.nodes[id]!;
  const placed: Placement = new Map();
  const writers = new Map<number, FusedKernel[]>();
  for (const k of kernels) writers.set(k.out.storage, [...(writers.get(k.out.storage) ?? []), k]);
  for (const k of [...kernels]) {
    const c = node(k.root);
    if (c.op !== "concat" || k.kind !== "map" || k.static) continue;
    if (k.members.length !== 1 || k.members[0] !== c.id || k.out.storage !== c.id) continue;
    if (!c.shape.slice(0, c.axis).every((d) => d === 1)) continue;
    const partStorages = c.inputs.map((i) => k.loads[i]!.storage);
    // Parts whose own kernel can store them here: written by that kernel alone, whole and
    // contiguous, not computed once from parameters, and not a part twice.
    const candidates = new Map<number, FusedKernel>();
    c.inputs.forEach((input, j) => {
      const view = k.loads[input]!;
      const s = view.storage;
      const producer = writers.get(s);
      const size = numel(node(input).shape);
      if (
        producer?.length === 1 &&
        !producer[0]!.static &&
        !placed.has(s) &&
        partStorages.indexOf(s) === j &&
        partStorages.lastIndexOf(s) === j &&
        isContiguous(view) &&
        view.offset === 0 &&
        numel(node(s).shape) === size &&
        producer[0]!.out.offset === 0 &&
        numel(producer[0]!.out.shape) === size
      )
        candidates.set(s, producer[0]!);
    });
    // A kernel may not bind the buffer it writes a second time, to read: a part whose kernel
    // reads another placed part (or the concatenation) is copied instead.
    for (let changed = true; changed;) {
      changed = false;
      for (const [s, producer] of candidates) {
        const reads = Object.values(producer.loads).map((v) => relocate(v, placed).storage);
        if (reads.some((r) => r === c.id || (r !== s && candidates.has(r)))) {
          candidates.delete(s);
          changed = true;
        }
      }
    }
    const pieces: FusedKernel[] = [];
    let offset = 0;
    c.inputs.forEach((input, j) => {
      const view = k.loads[input]!;
      const shape = node(input).shape;
      if (candidates.has(view.storage)) {
        placed.set(view.storage, { storage: c.id, offset });
      } else {
        pieces.push({
          kind: "map",
          name: `${k.name}_part${j}`,
          root: c.id,
          shape: [...shape],
          members: [],
          loads: { [c.id]: view },
          out: {
            storage: c.id,
            dtype: c.dtype,
            offset,
            shape: [...shape],
            strides: contiguousStrides(shape),
          },
        });
      }
      offset += numel(shape);
    });
    kernels.splice(kernels.indexOf(k), 1, ...pieces);
    // This concatenation's writers are now its parts' kernels and its copies.
    writers.set(c.id, [...candidates.values(), ...pieces]);
  }
  if (placed.size === 0) return placed;
  for (const k of kernels) {
    for (const [id, v] of Object.entries(k.loads)) k.loads[Number(id)] = relocate(v, placed);
    k.out = relocate(k.out, placed);
  }
  return placed;
}

/** Largest inner size of a matmul evaluated inside another kernel's epilogue. */
const LOW_RANK = 64;

/**
 * A low-rank product feeding only another matmul's epilogue — LoRA's `s·(xAᵀ)Bᵀ` added to
 * `xWᵀ + b` — is computed in that epilogue (an r-term dot product per output element), so one
 * pass computes `xWᵀ + b + s·(xAᵀ)Bᵀ`; only the small `xAᵀ` keeps a kernel of its own.
 */
function fuseLowRank(
  graph: IrGraph,
  kernels: FusedKernel[],
  uses: Map<number, Use[]>,
  isOutput: Set<number>,
  maxReads: number,
): void {
  const node = (id: number) => graph.nodes[id]!;
  const inner = (m: IrNode) => node(inputsOf(m)[0]!).shape.at(-1)!;
  const byRoot = new Map(kernels.map((k) => [k.root, k]));
  for (const small of [...kernels]) {
    if (small.kind !== "matmul" || small.anchor === undefined) continue;
    const m = node(small.anchor);
    if (m.op !== "matmul" || isOutput.has(m.id) || inner(m) > LOW_RANK) continue;
    // The other matmul: one whose value only this kernel's members read (grouping made the
    // low-rank product the anchor), or one whose members alone read this kernel's value.
    const readOnlyBy = (k: FusedKernel, readers: FusedKernel) =>
      !isOutput.has(k.root) &&
      k.out.storage === k.root &&
      (uses.get(k.root) ?? []).length > 0 &&
      (uses.get(k.root) ?? []).every((u) => readers.members.includes(u.consumer));
    const feeding = Object.keys(small.loads)
      .map((id) => byRoot.get(Number(id)))
      .find((k) => k && k !== small && k.kind === "matmul" && readOnlyBy(k, small));
    const reading = [...byRoot.values()].find(
      (k) => k !== small && k.kind === "matmul" && readOnlyBy(small, k),
    );
    const big = feeding ?? reading;
    if (!big || big.anchor === undefined) continue;
    const anchor = node(big.anchor);
    if (anchor.op !== "matmul" || anchor.shape.join(",") !== m.shape.join(",")) continue;
    // The cheaper product goes into the other's epilogue, never the reverse.
    if (inner(m) >= inner(anchor)) continue;
    const [keep, drop] = big === feeding ? [small, big] : [big, small];
    const loads: Record<number, View> = { ...keep.loads, ...drop.loads };
    delete loads[drop.root];
    if (new Set(Object.values(loads).map((v) => v.storage)).size > maxReads) continue;
    keep.anchor = anchor.id;
    keep.members = [...new Set([...keep.members, ...drop.members, m.id])]
      .filter((id) => id !== anchor.id)
      .sort((x, y) => x - y);
    keep.loads = loads;
    kernels.splice(kernels.indexOf(drop), 1);
    byRoot.delete(drop.root);
  }
}

/**
 * `matmul(softmax(f(Q @ Kᵀ)), V)`, where f is elementwise (scaling, masking, bias) and neither
 * the scores nor the probabilities are read elsewhere, becomes one kernel that streams over
 * the keys with an online softmax: the [T, T] score matrix never reaches memory.
 */
function fuseAttention(
  graph: IrGraph,
  kernels: FusedKernel[],
  uses: Map<number, Use[]>,
  isOutput: Set<number>,
  maxReads: number,
): void {
  const node = (id: number) => graph.nodes[id]!;
  const byRoot = new Map(kernels.map((k) => [k.root, k]));
  for (const pv of [...kernels]) {
    if (pv.kind !== "matmul" || pv.anchor === undefined) continue;
    const m2 = node(pv.anchor);
    if (m2.op !== "matmul") continue;
    const rows = byRoot.get(m2.inputs[0]);
    if (!rows || rows.kind !== "rows") continue;
    const sm = node(rows.root);
    if (sm.op !== "softmax" || isOutput.has(sm.id) || uses.get(sm.id)!.length !== 1) continue;
    // Only one softmax and no other reduction in the row kernel, and the [T, T] matrix must
    // be the scores' shape.
    const rowOps = rows.members.map(node);
    if (rowOps.some((n) => n.op === "reduce" || (n.op === "softmax" && n.id !== sm.id))) continue;
    if (m2.shape.slice(0, -2).join(",") !== sm.shape.slice(0, -2).join(",")) continue;
    const scoreLoads = Object.keys(rows.loads)
      .map(Number)
      .filter((id) => node(id).op === "matmul");
    if (scoreLoads.length !== 1) continue;
    const qk = byRoot.get(scoreLoads[0]!);
    if (!qk || qk.kind !== "matmul" || qk.members.length > 0 || qk.anchor !== qk.root) continue;
    const m1 = node(qk.root);
    if (isOutput.has(m1.id) || m1.shape.join(",") !== sm.shape.join(",")) continue;
    // The query row and the output row live in registers: keep them modest.
    const headDims = [node(inputsOf(m1)[0]!).shape.at(-1)!, m2.shape.at(-1)!];
    if (headDims.some((d) => d > 512)) continue;
    if (!uses.get(m1.id)!.every((u) => rows.members.includes(u.consumer))) continue;
    if (rows.out.storage !== sm.id || qk.out.storage !== m1.id) continue;
    // Merge: the P @ V kernel computes the scores and the softmax itself.
    const loads: Record<number, View> = { ...pv.loads, ...rows.loads, ...qk.loads };
    delete loads[m1.id];
    delete loads[sm.id];
    if (new Set(Object.values(loads).map((v) => v.storage)).size > maxReads) continue;
    pv.kind = "attention";
    pv.name = `attention_${pv.root}`;
    pv.members = [...new Set([...pv.members, ...rows.members])].sort((a, b) => a - b);
    pv.scores = m1.id;
    pv.softmax = sm.id;
    pv.loads = loads;
    kernels.splice(kernels.indexOf(rows), 1);
    kernels.splice(kernels.indexOf(qk), 1);
  }
}
