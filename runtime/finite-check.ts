/**
 * NaN and infinities in loaded tensors (weights, adapters, inputs, training data). A corrupt
 * checkpoint must not run to plausible numbers: loading one is an error naming each tensor
 * and its count of bad values, unless the user passes `--allow-nonfinite`.
 */
import type { TensorArray } from "./safetensors.js";

/** How many NaN, +Inf and -Inf values a tensor holds. */
export interface NonFiniteCount {
  nan: number;
  posInf: number;
  negInf: number;
  /** Index of the first one. */
  first: number;
}

/** The non-finite values of a float tensor; undefined when there are none (or it is integer). */
export function countNonFinite(data: TensorArray): NonFiniteCount | undefined {
  if (!(data instanceof Float32Array) && !(data instanceof Float64Array)) return undefined;
  let nan = 0;
  let posInf = 0;
  let negInf = 0;
  let first = -1;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    // One comparison for the common case: every finite value passes it.
    if (v - v === 0) continue;
    if (first < 0) first = i;
    if (v !== v) nan++;
    else if (v > 0) posInf++;
    else negInf++;
  }
  return first < 0 ? undefined : { nan, posInf, negInf, first };
}

/** `tensor x: 3 non-finite values of 4096 (2 NaN, 1 +Inf; the first at index 17)`. */
export function describeNonFinite(name: string, c: NonFiniteCount, size: number): string {
  const n = c.nan + c.posInf + c.negInf;
  const kinds = [
    c.nan && `${c.nan} NaN`,
    c.posInf && `${c.posInf} +Inf`,
    c.negInf && `${c.negInf} -Inf`,
  ].filter(Boolean);
  return `tensor ${name}: ${n} non-finite value${n === 1 ? "" : "s"} of ${size} (${kinds.join(", ")}; the first at index ${c.first})`;
}

/** The hint every non-finite error ends with. */
export const ALLOW_NONFINITE_HINT = "pass --allow-nonfinite to load it anyway";
