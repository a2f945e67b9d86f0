/**
 * Shape arithmetic shared by the op table's shape rules, the builder and the verifier.
 */

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Numpy broadcasting of two concrete shapes; throws on mismatch (lowering checked it already). */
export function broadcast(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1)
      throw new Error(`internal: cannot broadcast [${a}] with [${b}]`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

/** The length of group_rows' result for `rows` ids over `experts` experts. */
export function groupRowsLength(rows: number, experts: number, align: number): number {
  return Math.ceil((rows + (experts + 1) * (align - 1)) / align) * align;
}
