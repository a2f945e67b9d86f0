/**
 * What the op table's float64 reference implementations share (./ops.ts): the host tensor,
 * row-major strides, broadcast indexing and erf. runtime/reference/interpret.ts re-exports the
 * public ones.
 */

/** A dense row-major tensor (i32 values are stored exactly in the float64 array). */
export interface HostTensor {
  shape: number[];
  data: Float64Array;
}

export function strides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) out[i] = out[i + 1]! * shape[i + 1]!;
  return out;
}

/** Index into `shape` (broadcast against `outShape`) of the flat output index `flat`. */
export function broadcastIndex(
  flat: number,
  outShape: readonly number[],
  shape: readonly number[],
  st: readonly number[],
): number {
  let idx = 0;
  let rem = flat;
  const off = outShape.length - shape.length;
  for (let i = outShape.length - 1; i >= 0; i--) {
    const c = rem % outShape[i]!;
    rem = Math.floor(rem / outShape[i]!);
    const j = i - off;
    if (j >= 0 && shape[j] !== 1) idx += c * st[j]!;
  }
  return idx;
}

/** erf to double precision: Taylor series near 0, continued fraction for erfc in the tails. */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let term = ax;
    let sum = ax;
    for (let n = 1; n < 100; n++) {
      term *= (-ax * ax) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
  let f = ax;
  for (let n = 60; n >= 1; n--) f = ax + n / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}
