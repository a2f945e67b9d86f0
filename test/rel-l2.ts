/**
 * ‖got − want‖₂ / ‖want‖₂ (the absolute distance when `want` is all zeros; Infinity when the
 * lengths differ): how the tests compare outputs of two implementations.
 */
export function relL2(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) return Infinity;
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i]! - want[i]!) ** 2;
    den += want[i]! ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}
