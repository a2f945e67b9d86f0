/**
 * What every WGSL template shares: storage bindings, literals, the math helpers WGSL lacks
 * (erf, a tanh that neither overflows nor cancels, pow of negative bases), strided index
 * arithmetic and the evaluation of a kernel's elementwise members at a coordinate.
 *
 * All shapes are concrete, so sizes and strides are baked into the code as constants: no
 * uniform buffers, and the WGSL compiler folds the index arithmetic.
 */
import type { FusedKernel, View } from "../fuse-kernels.js";
import { type IrDType, type IrGraph, type IrNode, inputsOf } from "../../ir/graph.js";
import { type WgslEnv, opRow } from "../../ir/ops.js";

export type BindingType = "f32" | "i32" | "vec4<f32>";

export interface EmittedBinding {
  binding: number;
  /** The storage (node id) bound here; plan-buffers maps it to a buffer. */
  storage: number;
  type: BindingType;
  access: "read" | "read_write";
  /** For a storage bound as several windows: which one (0-based). */
  window?: number;
}

export const u32 = (n: number): string => {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new Error(`internal: ${n} is not a u32`);
  }
  return `${n}u`;
};

/**
 * An f32 value as WGSL. WGSL has no literal for infinities and NaN, and a constant expression
 * that evaluates to one is an error, so they are bit patterns read from private variables.
 */
export function f32Lit(v: number): string {
  if (Number.isNaN(v)) return "bitcast<f32>(nan_bits)";
  const f = Math.fround(v);
  if (f === Infinity) return "bitcast<f32>(pinf_bits)";
  if (f === -Infinity) return "bitcast<f32>(ninf_bits)";
  if (Object.is(f, -0)) return "f32(-0.0)";
  let s = String(f);
  if (!/[.e]/.test(s)) s += ".0";
  return `f32(${s})`;
}

export function i32Lit(v: number): string {
  const i = Math.trunc(v);
  if (i === -2147483648) return "i32(-2147483647 - 1)";
  return `i32(${Math.max(-2147483647, Math.min(2147483647, i))})`;
}

export const NEG_INF = "bitcast<f32>(ninf_bits)";

/** tanh x = x · Σ c_n x^{2n}. */
const TANH_SERIES = [
  1,
  -1 / 3,
  2 / 15,
  -17 / 315,
  62 / 2835,
  -1382 / 155925,
  21844 / 6081075,
  -929569 / 638512875,
  6404582 / 10854718875,
];

/**
 * Helper functions, emitted once per module when used: the op table's WGSL snippets
 * (compiler/ir/ops.ts) ask for them by name with `env.use`.
 */
const HELPERS: Record<string, string> = {
  // lowbias32 (Chris Wellons), and the random op's value from it: ops.ts hashU32/uniformAt.
  hash_u32: `fn hash_u32(v: u32) -> u32 {
  var x = v;
  x = x ^ (x >> 16u);
  x = x * 0x7feb352du;
  x = x ^ (x >> 15u);
  x = x * 0x846ca68bu;
  return x ^ (x >> 16u);
}`,
  uniform_at: `fn uniform_at(key: u32, stream: u32, i: u32) -> f32 {
  let h = hash_u32(hash_u32(hash_u32(stream) ^ key) ^ i);
  return f32(h >> 8u) * 5.9604644775390625e-8;
}`,
  is_ninf: `fn is_ninf(x: f32) -> bool {
  return bitcast<u32>(x) == 0xff800000u;
}`,
  // NaN tests on the bits: a driver may fold x != x to false, and max/min may drop a NaN.
  is_nan: `fn is_nan(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}`,
  relu_: `fn relu_(x: f32) -> f32 {
  return select(max(x, 0.0), x, is_nan(x));
}`,
  max_: `fn max_(a: f32, b: f32) -> f32 {
  return select(max(a, b), bitcast<f32>(nan_bits), is_nan(a) || is_nan(b));
}`,
  // a ranks above b: a > b, with NaN above every number (torch.topk's order).
  above_: `fn above_(a: f32, b: f32) -> bool {
  if (is_nan(a)) {
    return !is_nan(b);
  }
  return !is_nan(b) && a > b;
}`,
  min_: `fn min_(a: f32, b: f32) -> f32 {
  return select(min(a, b), bitcast<f32>(nan_bits), is_nan(a) || is_nan(b));
}`,
  // erf for |x| < 1 by its Taylor series (12 terms: < 2e-9 truncation, relative accuracy
  // near 0); erfc beyond by Numerical Recipes' Chebyshev fit (fractional error < 1.2e-7).
  erf_: `fn erf_(x: f32) -> f32 {
  let a = abs(x);
  if (a < 1.0) {
    let z = x * x;
    var p = ${f32Lit(erfTaylor(11))};
${Array.from({ length: 11 }, (_, i) => `    p = p * z + ${f32Lit(erfTaylor(10 - i))};`).join("\n")}
    return x * p;
  }
  return sign(x) * (1.0 - erfc_ge1(a));
}`,
  erfc_ge1: `fn erfc_ge1(a: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.5 * a);
  let y = -a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277))))))));
  return t * exp(y);
}`,
  // Exact GELU: x·Φ(x). Far left it is x·erfc(|x|/√2)/2, computed without cancellation.
  gelu_: `fn gelu_(x: f32) -> f32 {
  let z = x * 0.70710678118654752;
  if (z < -1.0) {
    return 0.5 * x * erfc_ge1(-z);
  }
  return 0.5 * x * (1.0 + erf_(z));
}`,
  // tanh: odd Taylor polynomial near 0 (where (1-e)/(1+e) cancels), exp(-2|x|) beyond (no
  // overflow for large |x|, unlike sinh/cosh).
  tanh_: `fn tanh_(x: f32) -> f32 {
  let a = abs(x);
  if (a < 0.55) {
    let z = x * x;
    var p = ${f32Lit(TANH_SERIES[TANH_SERIES.length - 1]!)};
${TANH_SERIES.slice(0, -1)
  .reverse()
  .map((c) => `    p = p * z + ${f32Lit(c)};`)
  .join("\n")}
    return x * p;
  }
  let e = exp(-2.0 * a);
  return sign(x) * ((1.0 - e) / (1.0 + e));
}`,
  sigmoid_: `fn sigmoid_(x: f32) -> f32 {
  if (x >= 0.0) {
    return 1.0 / (1.0 + exp(-x));
  }
  let e = exp(x);
  return e / (1.0 + e);
}`,
  // pow with numpy's semantics for negative bases and integer exponents.
  pow_: `fn pow_(a: f32, b: f32) -> f32 {
  if (b == 0.0) {
    return 1.0;
  }
  if (a == 0.0) {
    return select(bitcast<f32>(pinf_bits), 0.0, b > 0.0);
  }
  let r = exp2(b * log2(abs(a)));
  if (a > 0.0) {
    return r;
  }
  if (fract(b) != 0.0) {
    return bitcast<f32>(nan_bits);
  }
  return select(r, -r, fract(b * 0.5) != 0.0);
}`,
};
const HELPER_DEPS: Record<string, string[]> = {
  relu_: ["is_nan"],
  max_: ["is_nan"],
  min_: ["is_nan"],
  above_: ["is_nan"],
  erf_: ["erfc_ge1"],
  gelu_: ["erf_", "erfc_ge1"],
  uniform_at: ["hash_u32"],
};

/** 2/√π · (-1)^n / (n! (2n+1)): the Taylor coefficients of erf. */
function erfTaylor(n: number): number {
  let fact = 1;
  for (let i = 2; i <= n; i++) fact *= i;
  return ((2 / Math.sqrt(Math.PI)) * (n % 2 === 0 ? 1 : -1)) / (fact * (2 * n + 1));
}

function bindingName(b: { binding: number; access: "read" | "read_write" }): string {
  return `${b.access === "read" ? "in" : "out"}${b.binding}`;
}

/** Reads and writes one bound storage at a flat element index (of the bound type). */
export interface Buf {
  get(index: string): string;
  /** A statement (no indentation, with its semicolon). */
  set(index: string, value: string): string;
}

/**
 * How a storage is bound: as one binding, or — when it is larger than one storage binding may
 * be — as several consecutive windows of `windowBytes`, selected by index in the shader.
 */
export interface BindingLayout {
  /** Bytes of each window (a multiple of 256: binding offsets must be aligned). */
  windowBytes: number;
  /** Bytes of a storage's data (what its bindings cover). */
  storageBytes(storage: number): number;
}

const NO_WINDOWS: BindingLayout = { windowBytes: Infinity, storageBytes: () => 0 };

/** Collects bindings and helper functions while a template writes one kernel. */
export class KernelWriter {
  readonly bindings: EmittedBinding[] = [];
  private readonly bufs = new Map<string, Buf>();
  private readonly helpers = new Set<string>();
  private readonly accessors: string[] = [];

  constructor(
    readonly graph: IrGraph,
    readonly kernel: FusedKernel,
    private readonly layout: BindingLayout = NO_WINDOWS,
  ) {}

  node(id: number): IrNode {
    return this.graph.nodes[id]!;
  }

  /**
   * Access to `storage` as an array of `type`. Names follow binding order, not storage ids, so
   * identical layers get identical text and share one pipeline.
   */
  bind(storage: number, type: BindingType, access: "read" | "read_write" = "read"): Buf {
    const key = `${storage}:${type}:${access}`;
    const known = this.bufs.get(key);
    if (known) return known;
    const windows = this.windowCount(storage);
    const names: string[] = [];
    for (let window = 0; window < windows; window++) {
      const binding = this.bindings.length;
      const b: EmittedBinding = { binding, storage, type, access };
      if (windows > 1) b.window = window;
      this.bindings.push(b);
      names.push(bindingName(b));
    }
    let buf: Buf;
    if (windows === 1) {
      const name = names[0]!;
      buf = { get: (i) => `${name}[${i}]`, set: (i, v) => `${name}[${i}] = ${v};` };
    } else {
      // Window w holds elements [w·E, (w+1)·E) of the storage.
      const per = this.layout.windowBytes / (type === "vec4<f32>" ? 16 : 4);
      const fn = `${names[0]}_at`;
      const branches = (leaf: (name: string, index: string) => string) =>
        names
          .map((name, w) => {
            const index = w === 0 ? "i" : `i - ${u32(w * per)}`;
            if (w === names.length - 1) return `  ${leaf(name, index)}`;
            return `  if (i < ${u32((w + 1) * per)}) {\n    ${leaf(name, index)}\n  }`;
          })
          .join("\n");
      if (access === "read") {
        // Reads select instead of branching: every window is read (an index past a binding's
        // end is clamped by WebGPU's robust access) and the right value kept. Branchy
        // accessors inlined into unrolled kernels took lavapipe minutes to compile.
        const reads = names.map((name, w) =>
          w === 0
            ? `  var v = ${name}[i];`
            : `  v = select(v, ${name}[i - ${u32(w * per)}], i >= ${u32(w * per)});`,
        );
        this.accessors.push(`fn ${fn}(i: u32) -> ${type} {\n${reads.join("\n")}\n  return v;\n}`);
        buf = { get: (i) => `${fn}(${i})`, set: () => "" };
      } else {
        this.accessors.push(
          `fn ${fn}_get(i: u32) -> ${type} {\n${branches((n, i) => `return ${n}[${i}];`)}\n}`,
          `fn ${fn}_set(i: u32, v: ${type}) {\n${branches((n, i) => `${n}[${i}] = v;\n    return;`)}\n}`,
        );
        buf = { get: (i) => `${fn}_get(${i})`, set: (i, v) => `${fn}_set(${i}, ${v});` };
      }
    }
    this.bufs.set(key, buf);
    return buf;
  }

  /** How many bindings (windows) a storage needs. */
  windowCount(storage: number): number {
    const bytes = this.layout.storageBytes(storage);
    return bytes > this.layout.windowBytes ? Math.ceil(bytes / this.layout.windowBytes) : 1;
  }

  /** Binds the storage behind `view` for scalar reads of its dtype. */
  bindView(view: View): Buf {
    return this.bind(view.storage, view.dtype);
  }

  use(helper: string): string {
    for (const dep of HELPER_DEPS[helper] ?? []) this.helpers.add(dep);
    this.helpers.add(helper);
    return helper;
  }

  /** Module-scope declarations: bindings, window accessors, then helpers. */
  header(): string {
    const lines = [
      `var<private> ninf_bits: u32 = 0xff800000u;`,
      `var<private> pinf_bits: u32 = 0x7f800000u;`,
      `var<private> nan_bits: u32 = 0x7fc00000u;`,
      ...this.bindings.map(
        (b) =>
          `@group(0) @binding(${b.binding}) var<storage, ${b.access}> ${bindingName(b)}: array<${b.type}>;`,
      ),
    ];
    for (const a of this.accessors) lines.push("", a);
    for (const h of Object.keys(HELPERS)) if (this.helpers.has(h)) lines.push("", HELPERS[h]!);
    return lines.join("\n");
  }
}

/** A 1-D kernel's entry point: workgroup index `wg`, local index `lidx`, then `body`. */
export function entry(
  launch: { workgroupSize: readonly number[]; grid: readonly number[]; workgroups: number },
  body: string[],
): string {
  const [x, y, z] = launch.workgroupSize;
  return [
    `@compute @workgroup_size(${x}, ${y}, ${z})`,
    `fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lidx: u32) {`,
    `  ${linearWorkgroup(launch.grid, launch.workgroups)}`,
    ...body,
    `}`,
  ].join("\n");
}

/** The linear workgroup index of a (possibly 2-D/3-D) grid, and the early exit beyond it. */
export function linearWorkgroup(grid: readonly number[], workgroups: number): string {
  const [gx, gy] = grid as [number, number, number];
  return [
    `let wg = wid.x + wid.y * ${u32(gx)} + wid.z * ${u32(gx * gy)};`,
    `  if (wg >= ${u32(workgroups)}) {`,
    `    return;`,
    `  }`,
  ].join("\n");
}

/** Flat element offset of `view` at the given per-axis coordinates (WGSL u32 expressions). */
export function viewIndex(view: View, coords: readonly string[]): string {
  const terms: string[] = [];
  if (view.offset !== 0) terms.push(u32(view.offset));
  view.shape.forEach((d, k) => {
    const s = view.strides[k]!;
    if (d === 1 || s === 0) return;
    terms.push(s === 1 ? coords[k]! : `${coords[k]} * ${u32(s)}`);
  });
  return terms.length === 0 ? "0u" : terms.join(" + ");
}

/** `u32` coordinate expressions of a flat index over `shape` (row-major). */
export function unflatten(flat: string, shape: readonly number[]): string[] {
  const out: string[] = [];
  let stride = 1;
  for (let k = shape.length - 1; k >= 0; k--) {
    const d = shape[k]!;
    if (d === 1) out[k] = "0u";
    else {
      const q = stride === 1 ? flat : `(${flat} / ${u32(stride)})`;
      // The leading axis needs no modulo when flat < numel.
      out[k] = k === 0 ? q : `(${q} % ${u32(d)})`;
    }
    stride *= d;
  }
  return out;
}

/** Everything a Block needs to know about its kernel. */
export interface ExprContext {
  writer: KernelWriter;
  /** Rank of the iteration space the coordinates index. */
  rank: number;
  /** Values computed elsewhere (matmul accumulators, reductions), by node id. */
  bound: Map<number, string>;
  /** Row statistics of softmax members (rows kernels): max and sum of exp. */
  softmaxStats?: Map<number, { max: string; sum: string }>;
  /** Unique suffix for generated names. */
  serial: { n: number };
}

/**
 * Emits `let` statements evaluating kernel members at one point of the iteration space.
 * A Block is one WGSL scope: values are computed once in it and reused.
 */
export class Block {
  readonly lines: string[] = [];
  private readonly cache = new Map<number, string>();
  /** With `hoist`: names whose value depends on the innermost coordinate. */
  private readonly varying: Set<string>;

  constructor(
    private readonly ctx: ExprContext,
    /** The coordinate of iteration axis k, as a u32 expression. */
    private readonly coord: (k: number) => string,
    private readonly indent = "  ",
    /**
     * Values that do not depend on the names in `varying` (the column coordinate, the
     * accumulator) go to `hoist.lines` instead, with their types in `hoist.names`: a matmul
     * computes them once per row rather than once per element.
     */
    private readonly hoist?: {
      varying: readonly string[];
      lines: string[];
      names: Map<string, IrDType>;
    },
  ) {
    this.varying = new Set(hoist?.varying ?? []);
  }

  /** Coordinate k of a value of shape `shape`, broadcast into the iteration space. */
  local(shape: readonly number[], k: number): string {
    return shape[k] === 1 ? "0u" : this.coord(k + this.ctx.rank - shape.length);
  }

  localAll(shape: readonly number[]): string[] {
    return shape.map((_, k) => this.local(shape, k));
  }

  private emit(expr: string, type: IrDType): string {
    const name = `v${this.ctx.serial.n++}`;
    const h = this.hoist;
    if (h && !(expr.match(/[A-Za-z_][A-Za-z0-9_]*/g) ?? []).some((x) => this.varying.has(x))) {
      h.lines.push(`let ${name}: ${type} = ${expr};`);
      h.names.set(name, type);
    } else {
      this.lines.push(`${this.indent}let ${name}: ${type} = ${expr};`);
      this.varying.add(name);
    }
    return name;
  }

  /** A name declared directly in `lines` (a var): never hoisted, nor what uses it. */
  private declared(name: string): string {
    this.varying.add(name);
    return name;
  }

  /** Reads `view` (the value of a node of the view's shape) at the current point. */
  load(view: View): string {
    const buf = this.ctx.writer.bindView(view);
    return this.emit(buf.get(viewIndex(view, this.localAll(view.shape))), view.dtype);
  }

  /** The value of node `id` as a WGSL expression of the node's dtype. */
  value(id: number): string {
    const bound = this.ctx.bound.get(id);
    if (bound !== undefined) return bound;
    const cached = this.cache.get(id);
    if (cached !== undefined) return cached;
    const v = this.compute(id);
    this.cache.set(id, v);
    return v;
  }

  /** value(id) converted to `dtype`. */
  valueAs(id: number, dtype: IrDType): string {
    const v = this.value(id);
    return this.ctx.writer.node(id).dtype === dtype ? v : `${dtype}(${v})`;
  }

  /** What a member's WGSL snippet may ask of this kernel. */
  private env(n: IrNode): WgslEnv {
    const w = this.ctx.writer;
    const inputs = inputsOf(n);
    return {
      dtype: n.dtype,
      use: (helper) => w.use(helper),
      constant: (i) => {
        const input = w.node(inputs[i]!);
        return input.op === "const" ? input.value : undefined;
      },
      coord: (axis) => this.local(n.shape, axis),
      f32: f32Lit,
    };
  }

  private compute(id: number): string {
    const w = this.ctx.writer;
    const n = w.node(id);
    const k = w.kernel;
    const isMember = k.members.includes(id);
    if (!isMember) {
      const view = k.loads[id];
      if (view) return this.load(view);
      if (n.op === "const") return n.dtype === "f32" ? f32Lit(n.value) : i32Lit(n.value);
      throw new Error(`internal: kernel ${k.name} has no way to read node ${id} (${n.op})`);
    }
    const row = opRow(n.op);
    if (row.wgsl) {
      // An elementwise op: its row's snippet over its operands, read as the node's dtype.
      const operands =
        row.fusion(n).operands === "shape" ? [] : inputsOf(n).map((i) => this.valueAs(i, n.dtype));
      return this.emit(row.wgsl(n, operands, this.env(n)), n.dtype);
    }
    switch (n.op) {
      case "const":
        return n.dtype === "f32" ? f32Lit(n.value) : i32Lit(n.value);
      case "gather": {
        const table = k.loads[n.inputs[0]]!;
        const ids = k.loads[n.inputs[1]]!;
        const r = n.shape.length;
        const lead = this.localAll(n.shape).slice(0, r - 1);
        const idsBuf = w.bindView(ids);
        const idx = idsBuf.get(
          viewIndex(
            ids,
            ids.shape.map((d, q) => (d === 1 ? "0u" : lead[q]!)),
          ),
        );
        const rows = table.shape[0]!;
        // Out-of-range ids read the nearest row (the reference interpreter rejects them).
        const row = this.emit(`u32(clamp(i32(${idx}), 0, ${rows - 1}))`, "u32" as IrDType);
        const col = this.local(n.shape, r - 1);
        const buf = w.bindView(table);
        return this.emit(buf.get(viewIndex(table, [row, col])), table.dtype);
      }
      case "concat": {
        const name = this.declared(`v${this.ctx.serial.n++}`);
        const at = this.local(n.shape, n.axis);
        this.lines.push(`${this.indent}var ${name}: ${n.dtype};`);
        let start = 0;
        n.inputs.forEach((input, q) => {
          const view = k.loads[input]!;
          const size = view.shape[n.axis]!;
          const coords = this.localAll(n.shape).map((c, a) =>
            view.shape[a] === 1 ? "0u" : a === n.axis ? `(${at} - ${u32(start)})` : c,
          );
          const cond = q === n.inputs.length - 1 ? "" : `if (${at} < ${u32(start + size)}) `;
          const prefix = q === 0 ? "" : "else ";
          const buf = w.bindView(view);
          this.lines.push(
            `${this.indent}${prefix}${cond}{ ${name} = ${n.dtype}(${buf.get(viewIndex(view, coords))}); }`,
          );
          start += size;
        });
        return name;
      }
      case "matmul": {
        // A low-rank product inside an epilogue: an r-term dot product per element.
        const [ai, bi] = n.inputs;
        const A = k.loads[ai]!;
        const B = k.loads[bi]!;
        const r = n.shape.length;
        const K = A.shape[A.shape.length - 1]!;
        const lead = (view: View) =>
          view.shape
            .slice(0, -2)
            .map((d, q) => (d === 1 ? "0u" : this.local(n.shape, q + r - view.shape.length)));
        const i = this.local(n.shape, r - 2);
        const j = this.local(n.shape, r - 1);
        const name = this.declared(`v${this.ctx.serial.n++}`);
        const q = `q${name}`;
        const aBuf = w.bindView(A);
        const bBuf = w.bindView(B);
        this.lines.push(
          `${this.indent}var ${name}: f32 = 0.0;`,
          `${this.indent}for (var ${q} = 0u; ${q} < ${u32(K)}; ${q} += 1u) {`,
          `${this.indent}  ${name} += f32(${aBuf.get(viewIndex(A, [...lead(A), i, q]))}) * f32(${bBuf.get(viewIndex(B, [...lead(B), q, j]))});`,
          `${this.indent}}`,
        );
        return name;
      }
      case "softmax": {
        const stats = this.ctx.softmaxStats?.get(id);
        if (!stats) throw new Error(`internal: softmax ${id} evaluated before its statistics`);
        const e = this.valueAs(n.inputs[0], "f32");
        const ex = this.emit(`exp(${e} - ${stats.max})`, "f32");
        // A NaN in the row makes the sum NaN: every probability is NaN, as in PyTorch.
        const isNan = this.ctx.writer.use("is_nan");
        const sum = stats.sum;
        return this.emit(
          `select(select(0.0, ${ex} / ${sum}, ${sum} > 0.0), ${sum}, ${isNan}(${sum}))`,
          "f32",
        );
      }
      default:
        throw new Error(`internal: ${n.op} node ${id} cannot be evaluated inline`);
    }
  }
}

/**
 * The WGSL start of a reduction's accumulator (its row's identity): `0.0`, or -inf as the
 * bit pattern WGSL needs.
 */
export function accumulatorInit(identity: number): string {
  return Number.isInteger(identity) ? `${identity}.0` : f32Lit(identity);
}

/**
 * WGSL text of a kernel module: header, then the entry point and any extra functions. The
 * kernel's name is the module's label, not part of the text, so equal kernels share pipelines.
 */
export function moduleText(writer: KernelWriter, body: string): string {
  return `// generated by moec\n${writer.header()}\n\n${body}\n`;
}
