/**
 * A model's weights on the host: loaded from a safetensors checkpoint (every parameter checked
 * against the header first, all mismatches reported together), or initialised from a seed.
 * Also seeded random inputs for runs and tests. Random streams are keyed by (seed, name), so
 * adding, removing or reordering parameters never changes the values of the others.
 */
import type { DType } from "../compiler/check/values.js";
import {
  type SafetensorsDtype,
  type SafetensorsFile,
  type TensorArray,
  type TensorToWrite,
  WeightsError,
  showShape,
} from "./safetensors.js";

import { ALLOW_NONFINITE_HINT, countNonFinite, describeNonFinite } from "./finite-check.js";
import { checkpointOrigin } from "./weight-maps.js";

export { WeightsError } from "./safetensors.js";

/** What loading and initialising need to know of a parameter (`ParamRecord` satisfies it). */
export interface ParamSpec {
  path: string;
  shape: readonly number[];
  dtype: DType;
  /** `normal`, `normal(0.01)`, `uniform(0.1)`, `zeros` or `ones`; absent means `normal`. */
  init?: string;
}

/** A host tensor of a model dtype: floats in a Float32Array, i32/i64 in an Int32Array, bool in bytes. */
export interface TypedTensor {
  dtype: DType;
  shape: number[];
  data: TensorArray;
}

/**
 * Maps checkpoint keys to parameter paths. A map leaves keys it does not list unchanged; a
 * function returns the new name. `null` from either drops the key (a buffer the model does
 * not have, such as GPT-2's `attn.bias` mask).
 */
export type KeyRename =
  ReadonlyMap<string, string | null> | ((checkpointKey: string) => string | null);

/** Options of `loadWeights`. */
export interface LoadOptions {
  /** Applied to every checkpoint key before matching (interop maps such as `hf-gpt2`). */
  rename?: KeyRename;
  /**
   * Parameters (by path, after renaming) stored transposed in the checkpoint, as GPT-2's
   * Conv1D keeps `[in, out]` where a Linear has `[out, in]`; they must be 2-D.
   */
  transpose?: ReadonlySet<string> | ((paramPath: string) => boolean);
  /**
   * Require the stored dtype to be the parameter's. By default any float dtype loads into a
   * float parameter (F16/BF16 widen exactly) and I32/I64 into an integer one.
   */
  exactDtype?: boolean;
  /** `init` initialises parameters absent from the checkpoint (e.g. new LoRA adapters). */
  missing?: "error" | "init";
  /** `ignore` skips checkpoint tensors that match no parameter. */
  unexpected?: "error" | "ignore";
  /** Seed for initialisation: without a file, or for missing parameters. Default 0. */
  seed?: number;
  /** Load tensors holding NaN or infinities (by default each is an error: `--allow-nonfinite`). */
  allowNonFinite?: boolean;
}

/** Problems shown on the error's first line; the rest follow one per line. */
const INLINE_PROBLEMS = 10;

/**
 * The weights of `params`, by path in parameter order: read from `file`, or initialised from
 * `options.seed` when there is no file. Throws one `WeightsError` listing every missing,
 * unexpected, mis-shaped or mis-typed parameter before any tensor data is read.
 */
export function loadWeights(
  params: readonly ParamSpec[],
  file: SafetensorsFile | undefined,
  options: LoadOptions = {},
): Map<string, TypedTensor> {
  const seed = options.seed ?? 0;
  if (!file) return initWeights(params, seed);

  const rename = renameFunction(options.rename);
  const transposed = options.transpose;
  const isTransposed = (p: string): boolean =>
    transposed === undefined
      ? false
      : typeof transposed === "function"
        ? transposed(p)
        : transposed.has(p);

  // Checkpoint key → parameter path, in file order.
  const source = new Map<string, string>();
  const conflicts: string[] = [];
  for (const key of file.names()) {
    const target = rename(key);
    if (target === null) continue;
    const other = source.get(target);
    if (other !== undefined) {
      conflicts.push(`checkpoint keys ${show(other)} and ${show(key)} both map to ${show(target)}`);
      continue;
    }
    source.set(target, key);
  }

  const paramPaths = new Set(params.map((p) => p.path));
  const missing: string[] = [];
  const wrong: string[] = [];
  const toInit: ParamSpec[] = [];
  for (const p of params) {
    const key = source.get(p.path);
    if (key === undefined) {
      if (options.missing === "init") toInit.push(p);
      else missing.push(`missing ${show(p.path)} ${showShape(p.shape)}`);
      continue;
    }
    const info = file.info(key);
    const from = key === p.path ? "" : ` (checkpoint key ${show(key)})`;
    let shape = info.shape;
    let note = "";
    if (isTransposed(p.path)) {
      if (shape.length !== 2) {
        wrong.push(
          `${show(p.path)}${from} cannot be transposed: shape ${showShape(shape)} is not 2-D`,
        );
        continue;
      }
      shape = [shape[1]!, shape[0]!];
      note = ` (transposed from ${showShape(info.shape)})`;
    }
    if (!sameShape(shape, p.shape)) {
      wrong.push(
        `${show(p.path)}${from} has shape ${showShape(shape)}${note}, expected ${showShape(p.shape)}`,
      );
    }
    if (!dtypeFits(info.dtype, p.dtype, options.exactDtype ?? false)) {
      wrong.push(`${show(p.path)}${from} has dtype ${info.dtype}, expected ${p.dtype}`);
    }
  }
  const unexpected: string[] = [];
  if (options.unexpected !== "ignore") {
    for (const [target, key] of source) {
      if (paramPaths.has(target)) continue;
      unexpected.push(`unexpected ${show(key)}${key === target ? "" : ` (as ${show(target)})`}`);
    }
  }

  const problems = [...missing, ...unexpected, ...wrong, ...conflicts];
  if (problems.length > 0) {
    const n = problems.length;
    const inline = problems.slice(0, INLINE_PROBLEMS).join("; ");
    const more = n > INLINE_PROBLEMS ? `; and ${n - INLINE_PROBLEMS} more, all listed below` : "";
    const lines = [`${file.fileName}: ${n} problem${n === 1 ? "" : "s"}: ${inline}${more}`];
    if (n > INLINE_PROBLEMS) lines.push(...problems.map((p) => `  ${p}`));
    if (params.length > 0 && file.tensors.size > 0 && params.every((p) => !source.has(p.path))) {
      lines.push(
        "hint: no checkpoint key names a parameter of this model; does the checkpoint need a rename map?",
      );
    }
    throw new WeightsError("mismatch", file.fileName, lines.join("\n"), problems);
  }

  const initialised = initWeights(toInit, seed);
  const out = new Map<string, TypedTensor>();
  // Non-finite values, by the file they come from (an adapter's, a base checkpoint's).
  const nonFinite = new Map<string, string[]>();
  for (const p of params) {
    const fresh = initialised.get(p.path);
    if (fresh) {
      out.set(p.path, fresh);
      continue;
    }
    const key = source.get(p.path)!;
    const t = file.read(key);
    const bad = options.allowNonFinite ? undefined : countNonFinite(t.data);
    if (bad) {
      const at = checkpointOrigin(file, key);
      const name = at.key === p.path ? show(p.path) : `${show(p.path)} (key ${show(at.key)})`;
      nonFinite.set(at.fileName, [
        ...(nonFinite.get(at.fileName) ?? []),
        describeNonFinite(name, bad, t.data.length),
      ]);
    }
    const data = isTransposed(p.path) ? transpose2d(t.data, t.shape[0]!, t.shape[1]!) : t.data;
    out.set(p.path, { dtype: p.dtype, shape: [...p.shape], data });
  }
  if (nonFinite.size > 0) {
    const lines = [...nonFinite].map(([f, list]) => `${f}: ${list.join("; ")}`);
    throw new WeightsError(
      "bad-entry",
      file.fileName,
      `${lines.join("; ")}; ${ALLOW_NONFINITE_HINT}`,
      [...nonFinite.values()].flat(),
    );
  }
  return out;
}

/**
 * Seeded initial weights following each parameter's `init`: `normal(std)` draws N(0, std²),
 * std 0.02 by default; `uniform(b)` draws U(-b, b), b = 1/√(last dimension) by default;
 * `zeros` and `ones`. Integer and bool parameters take `ones` or else zeros.
 */
export function initWeights(params: readonly ParamSpec[], seed: number): Map<string, TypedTensor> {
  const out = new Map<string, TypedTensor>();
  for (const p of params) {
    const shape = checkShape(p.shape, p.path);
    const n = shape.reduce((a, b) => a * b, 1);
    const init = parseInit(p.init ?? "normal", p.path);
    if (!isFloat(p.dtype)) {
      const data = p.dtype === "bool" ? new Uint8Array(n) : new Int32Array(n);
      if (init.kind === "ones") data.fill(1);
      out.set(p.path, { dtype: p.dtype, shape, data });
      continue;
    }
    const data = new Float32Array(n);
    switch (init.kind) {
      case "zeros":
        break;
      case "ones":
        data.fill(1);
        break;
      case "normal": {
        const rng = SeededRandom.forKey(seed, `param:${p.path}`);
        rng.fillNormal(data, init.arg ?? 0.02);
        break;
      }
      case "uniform": {
        const rng = SeededRandom.forKey(seed, `param:${p.path}`);
        const bound = init.arg ?? 1 / Math.sqrt(Math.max(1, shape[shape.length - 1] ?? 1));
        for (let i = 0; i < n; i++) data[i] = bound * (2 * rng.float() - 1);
        break;
      }
    }
    out.set(p.path, { dtype: p.dtype, shape, data });
  }
  return out;
}

/** A model input to fill with random data. */
export interface InputSpec {
  name: string;
  /** `task` inputs are task ids, drawn from [0, max) with max the number of tasks. */
  dtype: DType | "task";
  shape: readonly number[];
  /** Exclusive upper bound of integer inputs (the vocabulary size for token ids); default 2. */
  max?: number;
}

/**
 * Seeded random inputs of the declared shapes: floats ~ N(0, 1), integers uniform in
 * [0, max), bools 0 or 1, task ids in [0, number of tasks) as i32.
 */
export function randomInputs(inputs: readonly InputSpec[], seed: number): Map<string, TypedTensor> {
  const out = new Map<string, TypedTensor>();
  for (const input of inputs) {
    const shape = checkShape(input.shape, input.name);
    const n = shape.reduce((a, b) => a * b, 1);
    const rng = SeededRandom.forKey(seed, `input:${input.name}`);
    if (input.dtype === "task" && input.max === undefined) {
      throw new Error(`input ${input.name}: a task-id input needs max (the number of tasks)`);
    }
    const dtype: DType = input.dtype === "task" ? "i32" : input.dtype;
    if (isFloat(dtype)) {
      const data = new Float32Array(n);
      rng.fillNormal(data, 1);
      out.set(input.name, { dtype, shape, data });
      continue;
    }
    const max = dtype === "bool" ? 2 : (input.max ?? 2);
    if (!Number.isSafeInteger(max) || max < 1 || max > 2 ** 31) {
      throw new Error(`input ${input.name}: max must be an integer in [1, 2^31], got ${max}`);
    }
    const data = dtype === "bool" ? new Uint8Array(n) : new Int32Array(n);
    for (let i = 0; i < n; i++) data[i] = rng.below(max);
    out.set(input.name, { dtype, shape, data });
  }
  return out;
}

/** Weights in the writer's form, for saving with `writeSafetensorsFile`. */
export function weightsToSafetensors(
  weights: ReadonlyMap<string, TypedTensor>,
): Map<string, TensorToWrite> {
  const out = new Map<string, TensorToWrite>();
  for (const [name, t] of weights) {
    out.set(name, {
      dtype: t.dtype.toUpperCase() as SafetensorsDtype,
      shape: t.shape,
      data: t.data,
    });
  }
  return out;
}

/**
 * A small, fast, seeded PRNG (xoshiro128**, seeded through splitmix32 from a hash of the
 * seed and a key), so each named tensor gets its own reproducible stream.
 */
export class SeededRandom {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare: number | undefined;

  constructor(a: number, b: number) {
    let x = a >>> 0;
    let y = b >>> 0;
    const mix = (): number => {
      // splitmix32 on two interleaved lanes: 64 bits of seed reach every state word.
      x = (x + 0x9e3779b9) | 0;
      let z = x ^ Math.imul(y, 0x632be5ab);
      y = (y + 0x7f4a7c15) | 0;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = mix();
    this.s1 = mix();
    this.s2 = mix();
    this.s3 = mix();
    // xoshiro's one forbidden state.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** The stream for `key` under `seed` (any safe integer; the key is hashed). */
  static forKey(seed: number, key: string): SeededRandom {
    if (!Number.isSafeInteger(seed)) throw new Error(`seed must be an integer, got ${seed}`);
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 2 ** 32) >>> 0;
    // Two independent multiplicative hash lanes over the key's UTF-16 code units.
    let h1 = 0xdeadbeef ^ lo;
    let h2 = 0x41c6ce57 ^ hi;
    for (let i = 0; i < key.length; i++) {
      const c = key.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 0x9e3779b1);
      h2 = Math.imul(h2 ^ c, 0x5f356495);
    }
    h1 = Math.imul(h1 ^ (h1 >>> 16), 0x85ebca6b) ^ Math.imul(h2 ^ (h2 >>> 13), 0xc2b2ae35);
    h2 = Math.imul(h2 ^ (h2 >>> 16), 0x85ebca6b) ^ Math.imul(h1 ^ (h1 >>> 13), 0xc2b2ae35);
    return new SeededRandom(h1 ^ key.length, h2);
  }

  /** The next 32 random bits as an unsigned integer. */
  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  float(): number {
    return ((this.u32() >>> 5) * 67108864 + (this.u32() >>> 6)) / 9007199254740992;
  }

  /** Uniform integer in [0, max), for max ≤ 2^31 (bias below 2^-22). */
  below(max: number): number {
    return Math.floor(this.float() * max);
  }

  /** Standard normal, by Box–Muller (each pair of uniforms gives two values). */
  normal(): number {
    if (this.spare !== undefined) {
      const z = this.spare;
      this.spare = undefined;
      return z;
    }
    // 32-bit uniforms are plenty for weights; the first lies in (0, 1], so the log is finite
    // (tails are cut at 6.7σ).
    const r = Math.sqrt(-2 * Math.log((this.u32() + 1) * 2 ** -32));
    const theta = 2 * Math.PI * 2 ** -32 * this.u32();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** Fills `out` with `std * normal()`, value for value, without a call per element. */
  fillNormal(out: Float32Array, std: number): void {
    let i = 0;
    if (this.spare !== undefined && out.length > 0) out[i++] = std * this.normal();
    for (; i + 1 < out.length; i += 2) {
      const r = Math.sqrt(-2 * Math.log((this.u32() + 1) * 2 ** -32));
      const theta = 2 * Math.PI * 2 ** -32 * this.u32();
      out[i] = std * (r * Math.cos(theta));
      out[i + 1] = std * (r * Math.sin(theta));
    }
    if (i < out.length) out[i] = std * this.normal();
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

type Init = { kind: "normal" | "uniform"; arg?: number } | { kind: "zeros" | "ones" };

/** `name` or `name(x)` or `name(std=x)`; the evaluator's initialiser names. */
function parseInit(text: string, path: string): Init {
  const m = /^\s*(\w+)\s*(?:\(\s*(?:\w+\s*=\s*)?([^()]*?)\s*\))?\s*$/.exec(text);
  const kind = m?.[1];
  const argText = m?.[2];
  const arg = argText === undefined || argText === "" ? undefined : Number(argText);
  if (
    !m ||
    (kind !== "normal" && kind !== "uniform" && kind !== "zeros" && kind !== "ones") ||
    (arg !== undefined && (!Number.isFinite(arg) || arg < 0)) ||
    ((kind === "zeros" || kind === "ones") && arg !== undefined)
  ) {
    throw new Error(
      `parameter ${path}: unknown initialiser ${JSON.stringify(text)} (expected normal(std), uniform(bound), zeros or ones)`,
    );
  }
  if (kind === "zeros" || kind === "ones") return { kind };
  return arg === undefined ? { kind } : { kind, arg };
}

function renameFunction(rename: KeyRename | undefined): (key: string) => string | null {
  if (rename === undefined) return (key) => key;
  if (typeof rename === "function") return rename;
  return (key) => {
    const to = rename.get(key);
    return to === undefined ? key : to;
  };
}

function checkShape(shape: readonly number[], name: string): number[] {
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`${name}: shape ${showShape(shape)} is not a list of non-negative integers`);
  }
  return [...shape];
}

function isFloat(d: DType): boolean {
  return d === "f32" || d === "f16" || d === "bf16";
}

function dtypeFits(stored: SafetensorsDtype, wanted: DType, exact: boolean): boolean {
  if (exact) return stored.toLowerCase() === wanted;
  if (isFloat(wanted)) return stored === "F32" || stored === "F16" || stored === "BF16";
  if (wanted === "bool") return stored === "BOOL";
  return stored === "I32" || stored === "I64";
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Row-major [rows, cols] → [cols, rows]. */
function transpose2d<T extends TensorArray>(data: T, rows: number, cols: number): T {
  const out = new (data.constructor as new (n: number) => T)(data.length);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j]!;
  }
  return out;
}

/** Plain dotted paths print as they are; anything else is quoted, so messages stay one line each. */
function show(name: string): string {
  return /^[\w.\-/:]+$/.test(name) ? name : JSON.stringify(name);
}
