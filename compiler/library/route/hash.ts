/**
 * Hash routing (`Hash(seed)`, "Hash Layers", Roller et al. 2021): a fixed, parameter-free
 * token id → expert map. Each token goes to exactly one expert with weight 1:
 *
 *   expert(id) = ((A·u + B) mod p) mod E,   u = max(id, 0) mod p,   p = 2³¹ − 1,
 *   A = 48271^(2·seed + 2) mod p,   B = 48271^(2·seed + 1) mod p
 *
 * (a Carter–Wegman universal hash over the Mersenne prime p; A and B are successive states of
 * the MINSTD generator, so each seed picks its own multiplier). The IR computes it in i32 with
 * add, sub, mul, div (truncating) and lt only, every intermediate below 2³¹, so the reference
 * interpreter (float64, exact below 2⁵³) and the GPU kernels (i32) agree exactly: A·u mod p is
 * Horner's rule over A's base-2¹⁵ digits, each constant product by Schrage's method
 * (c·u mod p = c·(u mod q) − r·⌊u/q⌋ (+ p), q = ⌊p/c⌋, r = p mod c, exact when r < q).
 * Sparse like top-1: rows grouped by expert, one expert matmul for all experts.
 */
import type { IrBuilder } from "../../ir/builder.js";
import {
  applyStackedExperts,
  recordRouterStats,
  routingStat,
  tokenRows,
} from "../../lower/routing/common.js";
import { num, requireRange } from "../options.js";
import type { RouterFamily } from "./router-family.js";

/** The Mersenne prime 2³¹ − 1 the hash works modulo. */
export const HASH_PRIME = 2147483647;
const MINSTD = 48271;
const DIGIT = 1 << 15;

/** (b^e) mod p, exactly. */
function powMod(b: number, e: number, p: number): number {
  let result = 1n;
  let base = BigInt(b) % BigInt(p);
  let k = BigInt(e);
  const m = BigInt(p);
  while (k > 0n) {
    if (k & 1n) result = (result * base) % m;
    base = (base * base) % m;
    k >>= 1n;
  }
  return Number(result);
}

/** The multiplier A and offset B of seed `seed`'s hash. */
export function hashConstants(seed: number): { A: number; B: number } {
  return {
    A: powMod(MINSTD, 2 * seed + 2, HASH_PRIME),
    B: powMod(MINSTD, 2 * seed + 1, HASH_PRIME),
  };
}

/** The expert (of E) that token id `id` goes to under `Hash(seed)`: the definition, on the host. */
export function hashExpert(id: number, seed: number, E: number): number {
  const p = BigInt(HASH_PRIME);
  const { A, B } = hashConstants(seed);
  const u = BigInt(Math.max(id, 0)) % p;
  return Number(((BigInt(A) * u + BigInt(B)) % p) % BigInt(E));
}

/** The IR of expert(id) for token ids `ids` (i32, any shape): i32 of the same shape. */
export function lowerHash(ir: IrBuilder, ids: number, seed: number, E: number): number {
  const P = HASH_PRIME;
  const k = (v: number) => ir.constant(v, "i32");
  /** t + p where t < 0: t in (−p, p) → [0, p). */
  const wrap = (t: number) => ir.binary("add", t, ir.binary("mul", ir.binary("lt", t, k(0)), k(P)));
  /** (a + b) mod p for a, b in [0, p), without leaving i32. */
  const addMod = (a: number, b: number) => wrap(ir.binary("sub", a, ir.binary("sub", k(P), b)));
  /** s mod n for s ≥ 0. */
  const mod = (s: number, n: number) =>
    ir.binary("sub", s, ir.binary("mul", ir.binary("div", s, k(n)), k(n)));
  /** (c·s) mod p for s in [0, p) and a constant 1 ≤ c ≤ 2¹⁵ (Schrage: r < q). */
  const mulConst = (s: number, c: number): number => {
    if (c === 1) return s;
    const q = Math.floor(P / c);
    const r = P % c;
    const hi = ir.binary("div", s, k(q));
    const lo = ir.binary("sub", s, ir.binary("mul", hi, k(q)));
    return wrap(ir.binary("sub", ir.binary("mul", lo, k(c)), ir.binary("mul", hi, k(r))));
  };
  const { A, B } = hashConstants(seed);
  const u = mod(ir.binary("max", ids, k(0)), P);
  // A·u mod p by Horner over A's base-2¹⁵ digits (A < 2³¹: three digits, the top one 0 or 1).
  const digits = [Math.floor(A / DIGIT ** 2), Math.floor(A / DIGIT) % DIGIT, A % DIGIT];
  let acc: number | undefined;
  for (const digit of digits) {
    if (acc === undefined) {
      if (digit !== 0) acc = mulConst(u, digit);
      continue;
    }
    const shifted = mulConst(acc, DIGIT);
    acc = digit === 0 ? shifted : addMod(shifted, mulConst(u, digit));
  }
  return mod(addMod(acc!, k(B)), E);
}

export const hash: RouterFamily = {
  name: "Hash",
  checkOptions(ctx) {
    requireRange(ctx, "seed", (x) => x >= 0, "non-negative");
  },
  routingInput: () => "token ids",
  registerParams() {},
  activeExperts: () => 1,
  lower(m) {
    const { r, router } = m;
    const ir = r.lowering.builder;
    const tokens = m.ids;
    if (tokens?.node === undefined || tokens.t.dtype !== "i32") {
      r.unsupported("Hash without token ids (pass them as the MoE's second input)");
      return undefined;
    }
    const { lead, N, xf } = tokenRows(m);
    const E = m.experts.length;
    if (ir.shape(tokens.node).reduce((a, b) => a * b, 1) !== N) {
      r.unsupported("Hash with token ids that do not match the tokens of x");
      return undefined;
    }
    const ids = lowerHash(ir, ir.reshape(tokens.node, [N]), num(router, "seed") ?? 0, E);
    // Every token is one row for its expert, with weight 1: no gather, no weighting.
    const y = applyStackedExperts(r, m.experts, xf, ids);
    if (y === undefined) return undefined;
    if (r.lowering.routingStats) {
      const stat = routingStat(r);
      recordRouterStats(ir, stat, undefined, ids, ids, E);
      stat("experts", ir.reshape(ids, [N, 1]));
      stat("weights", ir.constant(1, "f32", [N, 1]));
    }
    return ir.reshape(y, [...lead, ir.shape(y)[1]!]);
  },
};
