/**
 * Peer benchmarks: the shared workloads. Every peer (TF.js WebGPU, TF.js wasm, onnxruntime-node)
 * runs on exactly the data made here (seeded, so every run and every peer sees the same numbers)
 * and is checked against the float64 CPU references here, so a broken peer cannot look fast.
 *
 * Layouts (all row-major float32):
 *   - matmul: A [m, k] · B [k, n] = C [m, n].
 *   - Linear weights are [in, out] (y = x · W + b). moec's std.nn Linear stores [out, in] like
 *     PyTorch; transpose when feeding these weights to moec.
 *
 * References are cheap on purpose (the whole peer suite must stay well under a minute on 2
 * cores): matmul is checked on every entry with Freivalds' test (C·r against A·(B·r)) plus a
 * sample of exact entries; the transformer block and the MoE layer are recomputed in float64 for
 * a seeded sample of rows (tokens) and compared there, and every peer's full-output checksum is
 * printed side by side so that disagreement on the rows not sampled shows too.
 */

// ---------------------------------------------------------------------------------------------
// Results

/** How a peer's output compared with the float64 reference. */
export interface Check {
  /** Largest |peer − reference| over the entries compared exactly (`compared` of them). */
  maxAbsDiff: number;
  /** The tolerance maxAbsDiff must stay within. */
  tolerance: number;
  /** How many output entries were compared exactly against the reference. */
  compared: number;
  /**
   * Largest |r·(peer row) − r·(reference row)| over every output row and 4 fixed random
   * vectors r in [-1, 1]^width (Freivalds' test for matmul): every output entry takes part, so
   * a wrong row or tile shows even where no entry was sampled. Must stay within
   * projectionTolerance.
   */
  projection: number;
  projectionTolerance: number;
  /** Sum of every output entry, in float64 (compare across peers). */
  checksum: number;
  /** Rows left out because their top-k expert choice is a near-tie (MoE only). */
  skipped?: number;
  ok: boolean;
}

/** One timed workload on one peer. `ms` is the median of `runs` timed calls after warm-up. */
export interface PeerTiming {
  /** Peer label, e.g. "tfjs-webgpu", "tfjs-wasm", "onnxruntime-node". */
  peer: string;
  /** Workload label with its sizes, e.g. "matmul 1024x1024x1024". */
  name: string;
  /** Median wall time of one call, in milliseconds. */
  ms: number;
  /** Fastest timed call, in milliseconds. */
  minMs: number;
  runs: number;
  warmup: number;
  /** Useful floating-point work per call / median time (dense-masked work is not counted). */
  gflops?: number;
  check: Check;
  /** Anything that qualifies the number (thread count, variant, ...). */
  note?: string;
}

/** How often to run a workload: `warmup` untimed calls, then `runs` timed ones. */
export interface RunOptions {
  warmup?: number;
  runs?: number;
  /**
   * Called after each timed call, outside its timing: the bench times moec here, so both
   * sides of a ratio sample the same moments of a machine whose speed drifts.
   */
  between?: () => Promise<void>;
}

/** Run counts with the defaults filled in. */
export type RunCounts = { warmup: number; runs: number };

/**
 * Times `call` (which must finish all its work, including reading results back): `warmup`
 * untimed calls, then `runs` timed ones. Every call's output is checked, outside the timed
 * window; the returned check is the first failing one, else the last.
 */
export async function timeCalls<T>(
  call: () => Promise<T>,
  opts: RunCounts & Pick<RunOptions, "between">,
  check: (output: T) => Check,
): Promise<{ ms: number; minMs: number; check: Check }> {
  if (opts.runs < 1) throw new Error("timeCalls: runs must be at least 1");
  let verdict: Check | null = null;
  const verify = (out: T) => {
    const c = check(out);
    if (verdict === null || verdict.ok) verdict = c;
  };
  for (let i = 0; i < opts.warmup; i++) verify(await call());
  const times: number[] = [];
  for (let i = 0; i < opts.runs; i++) {
    const t0 = performance.now();
    const out = await call();
    times.push(performance.now() - t0);
    verify(out);
    await opts.between?.();
  }
  return { ms: median(times), minMs: Math.min(...times), check: verdict! };
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function fmtMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2);
}

/** One line per result, aligned; `showName: false` leaves the workload name out. */
export function formatTimings(
  results: readonly PeerTiming[],
  { showName = true }: { showName?: boolean } = {},
): string[] {
  const nameW = Math.max(0, ...results.map((r) => r.name.length));
  const peerW = Math.max(0, ...results.map((r) => r.peer.length));
  return results.map((r) => {
    const gf = r.gflops === undefined ? "" : `${r.gflops.toFixed(1)} GFLOP/s`;
    const c = r.check;
    const check =
      `${c.ok ? "ok" : "WRONG"} (maxdiff ${c.maxAbsDiff.toExponential(1)},` +
      ` proj ${c.projection.toExponential(1)}, sum ${c.checksum.toPrecision(7)})`;
    return (
      (showName ? `${r.name.padEnd(nameW)}  ` : "") +
      `${r.peer.padEnd(peerW)}  ${fmtMs(r.ms).padStart(7)} ms` +
      ` (min ${fmtMs(r.minMs)}, ${r.runs} runs)  ${gf.padStart(15)}  ${check}` +
      (r.note ? `  ${r.note}` : "")
    );
  });
}

// ---------------------------------------------------------------------------------------------
// Seeded random data

/** mulberry32: small, fast, good enough for benchmark data. Returns floats in [0, 1). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` floats uniform in [-scale, scale). */
export function uniform(n: number, seed: number, scale = 1): Float32Array {
  const next = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (next() * 2 - 1) * scale;
  return out;
}

/** Uniform weights with variance 1/fanIn (so activations stay O(1) through a layer). */
function weights(n: number, fanIn: number, seed: number): Float32Array {
  return uniform(n, seed, Math.sqrt(3 / fanIn));
}

/** `count` distinct indices in [0, n), sorted; always includes 0 and n-1. */
export function sampleIndices(n: number, count: number, seed: number): number[] {
  if (count >= n) return Array.from({ length: n }, (_, i) => i);
  const picked = new Set<number>([0, n - 1]);
  const next = rng(seed);
  while (picked.size < count) picked.add(Math.floor(next() * n));
  return [...picked].sort((a, b) => a - b);
}

export function checksum(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i]!;
  return s;
}

/** GELU, tanh approximation (GPT-2; moec's `gelu_tanh`). */
export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

// ---------------------------------------------------------------------------------------------
// Checking against a float64 reference

/**
 * The float64 reference of one workload's output, compact: every row's projections onto a few
 * random vectors, plus a few full rows.
 */
interface RowReference {
  width: number;
  rs: Float32Array[];
  /** proj[p][row] = rs[p] · (reference row). */
  proj: Float64Array[];
  /** Full reference rows for a seeded sample of row indices. */
  rows: Map<number, Float64Array>;
  /** Rows not to compare (MoE near-ties). */
  skip: ReadonlySet<number>;
  /** Largest acceptable |peer − reference| for one entry. */
  tolerance: number;
}

function compareRows(y: ArrayLike<number>, ref: RowReference): Check {
  const { width, rs, proj, rows, skip, tolerance } = ref;
  const nRows = proj[0]!.length;
  const projectionTolerance = tolerance * Math.sqrt(width);
  const cs = checksum(y);
  if (y.length !== nRows * width) {
    process.stderr.write(`peer check: output has ${y.length} entries, want ${nRows * width}\n`);
    return {
      maxAbsDiff: NaN,
      tolerance,
      compared: 0,
      projection: NaN,
      projectionTolerance,
      checksum: cs,
      ok: false,
    };
  }
  // NaN must fail: track it explicitly (Math.max ignores nothing, but `NaN <= tol` is false).
  const worse = (acc: number, v: number) =>
    Number.isNaN(acc) || Number.isNaN(v) ? NaN : Math.max(acc, v);
  let maxAbsDiff = 0;
  let compared = 0;
  for (const [row, want] of rows) {
    if (skip.has(row)) continue;
    for (let i = 0; i < width; i++) {
      maxAbsDiff = worse(maxAbsDiff, Math.abs(y[row * width + i]! - want[i]!));
      compared++;
    }
  }
  let projection = 0;
  for (let row = 0; row < nRows; row++) {
    if (skip.has(row)) continue;
    rs.forEach((r, p) => {
      projection = worse(projection, Math.abs(dot(r, y, width, row * width) - proj[p]![row]!));
    });
  }
  return {
    maxAbsDiff,
    tolerance,
    compared,
    projection,
    projectionTolerance,
    checksum: cs,
    ...(skip.size > 0 ? { skipped: skip.size } : {}),
    ok: compared > 0 && maxAbsDiff <= tolerance && projection <= projectionTolerance,
  };
}

/** x·W + b for several rows in float64, W [nIn, nOut] at wOff; four rows per pass over W. */
function linearRows(
  xs: readonly ArrayLike<number>[],
  w: Float32Array,
  bias: Float32Array | null,
  nIn: number,
  nOut: number,
  wOff = 0,
  bOff = 0,
): Float64Array[] {
  const outs = xs.map(() => {
    const o = new Float64Array(nOut);
    if (bias) for (let j = 0; j < nOut; j++) o[j] = bias[bOff + j]!;
    return o;
  });
  const zero = new Float64Array(nIn);
  const scratch = new Float64Array(nOut);
  for (let r = 0; r < xs.length; r += 4) {
    const x0 = xs[r]!;
    const x1 = xs[r + 1] ?? zero;
    const x2 = xs[r + 2] ?? zero;
    const x3 = xs[r + 3] ?? zero;
    const o0 = outs[r]!;
    const o1 = outs[r + 1] ?? scratch;
    const o2 = outs[r + 2] ?? scratch;
    const o3 = outs[r + 3] ?? scratch;
    for (let i = 0; i < nIn; i++) {
      const a0 = x0[i]!;
      const a1 = x1[i]!;
      const a2 = x2[i]!;
      const a3 = x3[i]!;
      const row = wOff + i * nOut;
      for (let j = 0; j < nOut; j++) {
        const wv = w[row + j]!;
        o0[j]! += a0 * wv;
        o1[j]! += a1 * wv;
        o2[j]! += a2 * wv;
        o3[j]! += a3 * wv;
      }
    }
  }
  return outs;
}

/** W·r for W [nIn, nOut] at wOff: the projection of a Linear's output, per input unit. */
function projectWeights(
  w: Float32Array,
  r: ArrayLike<number>,
  nIn: number,
  nOut: number,
  wOff = 0,
): Float64Array {
  const out = new Float64Array(nIn);
  for (let i = 0; i < nIn; i++) {
    let s = 0;
    const row = wOff + i * nOut;
    for (let j = 0; j < nOut; j++) s += w[row + j]! * r[j]!;
    out[i] = s;
  }
  return out;
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>, n: number, bOff = 0): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[i]! * b[bOff + i]!;
  return s;
}

/** The random projection vectors for rows of `width` entries. */
function projectors(width: number): Float32Array[] {
  return [977, 978, 979, 980].map((seed) => uniform(width, seed));
}

const referenceCache = new WeakMap<object, RowReference>();

function cached<C extends object>(c: C, compute: (c: C) => RowReference): RowReference {
  let ref = referenceCache.get(c);
  if (!ref) {
    ref = compute(c);
    referenceCache.set(c, ref);
  }
  return ref;
}

// ---------------------------------------------------------------------------------------------
// matmul

export interface MatmulCase {
  m: number;
  n: number;
  k: number;
  /** [m, k] */
  a: Float32Array;
  /** [k, n] */
  b: Float32Array;
  flops: number;
}

export function makeMatmul(m: number, n: number, k: number, seed = 1): MatmulCase {
  return { m, n, k, a: uniform(m * k, seed), b: uniform(k * n, seed + 1), flops: 2 * m * n * k };
}

export function matmulName(m: number, n: number, k: number): string {
  return `matmul ${m}x${n}x${k}`;
}

function matmulReference(mc: MatmulCase): RowReference {
  const { m, n, k, a, b } = mc;
  const rs = projectors(n);
  // Freivalds: C·r = A·(B·r).
  const proj = rs.map((r) => {
    const br = projectWeights(b, r, k, n);
    const out = new Float64Array(m);
    for (let i = 0; i < m; i++) out[i] = dot(br, a, k, i * k);
    return out;
  });
  const rows = new Map<number, Float64Array>();
  const sample = sampleIndices(m, 4, 3);
  linearRows(
    sample.map((i) => a.subarray(i * k, (i + 1) * k)),
    b,
    null,
    k,
    n,
  ).forEach((row, j) => rows.set(sample[j]!, row));
  // Entries are sums of k products of U(-1,1) values, |c| ~ sqrt(k/9); float32 accumulation
  // error stays near 1e-7·sqrt(k)·|c|, while a wrong entry is off by O(sqrt(k)).
  return { width: n, rs, proj, rows, skip: new Set(), tolerance: 2e-6 * k };
}

/** Checks C = A·B: every row by Freivalds' test, and 4 full rows exactly. */
export function checkMatmul(c: ArrayLike<number>, mc: MatmulCase): Check {
  return compareRows(c, cached(mc, matmulReference));
}

// ---------------------------------------------------------------------------------------------
// Transformer block (GPT-2 layout, pre-norm)

export interface TransformerConfig {
  d: number;
  T: number;
  heads: number;
  B: number;
}

export const DEFAULT_TRANSFORMER: TransformerConfig = { d: 512, T: 256, heads: 8, B: 1 };

/**
 * One pre-norm transformer block (moec's std.nn TransformerBlock with act gelu_tanh, causal):
 * h = x + o(attn(q(ln1 x), k(ln1 x), v(ln1 x))); y = h + W2·gelu_tanh(W1·ln2(h) + b1) + b2.
 * Linear weights are [in, out]; LayerNorm eps 1e-5, biased variance.
 */
export interface TransformerCase {
  cfg: TransformerConfig;
  /** Input [B, T, d]. */
  x: Float32Array;
  ln1g: Float32Array;
  ln1b: Float32Array;
  wq: Float32Array;
  bq: Float32Array;
  wk: Float32Array;
  bk: Float32Array;
  wv: Float32Array;
  bv: Float32Array;
  wo: Float32Array;
  bo: Float32Array;
  ln2g: Float32Array;
  ln2b: Float32Array;
  /** [d, 4d] */
  w1: Float32Array;
  b1: Float32Array;
  /** [4d, d] */
  w2: Float32Array;
  b2: Float32Array;
  flops: number;
}

export const LN_EPS = 1e-5;

export function transformerName(cfg: TransformerConfig): string {
  return `transformer d=${cfg.d} T=${cfg.T} heads=${cfg.heads} B=${cfg.B}`;
}

export function makeTransformer(
  cfg: TransformerConfig = DEFAULT_TRANSFORMER,
  seed = 100,
): TransformerCase {
  const { d, T, B } = cfg;
  if (d % cfg.heads !== 0) throw new Error(`d=${d} is not divisible by heads=${cfg.heads}`);
  const h = 4 * d;
  let s = seed;
  const near1 = (n: number) => {
    const u = uniform(n, s++, 0.1);
    for (let i = 0; i < n; i++) u[i]! += 1;
    return u;
  };
  const small = (n: number) => uniform(n, s++, 0.1);
  return {
    cfg,
    x: uniform(B * T * d, s++),
    ln1g: near1(d),
    ln1b: small(d),
    wq: weights(d * d, d, s++),
    bq: small(d),
    wk: weights(d * d, d, s++),
    bk: small(d),
    wv: weights(d * d, d, s++),
    bv: small(d),
    wo: weights(d * d, d, s++),
    bo: small(d),
    ln2g: near1(d),
    ln2b: small(d),
    w1: weights(d * h, d, s++),
    b1: small(h),
    w2: weights(h * d, h, s++),
    b2: small(d),
    // q, k, v, o and the two FFN matmuls, plus QKᵀ and PV over the full T×T square.
    flops: 2 * B * T * (4 * d * d + 2 * d * h) + 2 * 2 * B * T * T * d,
  };
}

function layerNorm64(
  x: ArrayLike<number>,
  d: number,
  g: Float32Array,
  b: Float32Array,
): Float64Array {
  let mean = 0;
  for (let i = 0; i < d; i++) mean += x[i]!;
  mean /= d;
  let v = 0;
  for (let i = 0; i < d; i++) v += (x[i]! - mean) ** 2;
  const inv = 1 / Math.sqrt(v / d + LN_EPS);
  const out = new Float64Array(d);
  for (let i = 0; i < d; i++) out[i] = (x[i]! - mean) * inv * g[i]! + b[i]!;
  return out;
}

function transformerReference(tc: TransformerCase): RowReference {
  const { d, T, heads, B } = tc.cfg;
  const dh = d / heads;
  const scale = 1 / Math.sqrt(dh);
  const rs = projectors(d);
  const w2r = rs.map((r) => projectWeights(tc.w2, r, 4 * d, d));
  const b2r = rs.map((r) => dot(tc.b2, r, d));
  const proj = rs.map(() => new Float64Array(B * T));
  const rows = new Map<number, Float64Array>();
  const sampled = new Set(sampleIndices(B * T, 32, 7));
  for (let b = 0; b < B; b++) {
    const xs = Array.from({ length: T }, (_, t) =>
      tc.x.subarray((b * T + t) * d, (b * T + t + 1) * d),
    );
    const ln1 = xs.map((x) => layerNorm64(x, d, tc.ln1g, tc.ln1b));
    const q = linearRows(ln1, tc.wq, tc.bq, d, d);
    const k = linearRows(ln1, tc.wk, tc.bk, d, d);
    const v = linearRows(ln1, tc.wv, tc.bv, d, d);
    const mixed = q.map((qt, t) => {
      const out = new Float64Array(d);
      const scores = new Float64Array(t + 1);
      for (let hd = 0; hd < heads; hd++) {
        const base = hd * dh;
        let mx = -Infinity;
        for (let u = 0; u <= t; u++) {
          let s = 0;
          for (let i = base; i < base + dh; i++) s += qt[i]! * k[u]![i]!;
          scores[u] = s * scale;
          mx = Math.max(mx, scores[u]!);
        }
        let z = 0;
        for (let u = 0; u <= t; u++) {
          scores[u] = Math.exp(scores[u]! - mx);
          z += scores[u]!;
        }
        for (let u = 0; u <= t; u++) {
          const p = scores[u]! / z;
          for (let i = base; i < base + dh; i++) out[i]! += p * v[u]![i]!;
        }
      }
      return out;
    });
    const hs = linearRows(mixed, tc.wo, tc.bo, d, d);
    hs.forEach((h, t) => {
      for (let i = 0; i < d; i++) h[i]! += xs[t]![i]!;
    });
    const up = linearRows(
      hs.map((h) => layerNorm64(h, d, tc.ln2g, tc.ln2b)),
      tc.w1,
      tc.b1,
      d,
      4 * d,
    );
    for (const u of up) for (let i = 0; i < u.length; i++) u[i] = geluTanh(u[i]!);
    rs.forEach((r, p) => {
      for (let t = 0; t < T; t++) {
        proj[p]![b * T + t] = dot(hs[t]!, r, d) + dot(up[t]!, w2r[p]!, 4 * d) + b2r[p]!;
      }
    });
    const ts = Array.from({ length: T }, (_, t) => t).filter((t) => sampled.has(b * T + t));
    linearRows(
      ts.map((t) => up[t]!),
      tc.w2,
      tc.b2,
      4 * d,
      d,
    ).forEach((down, j) => {
      const h = hs[ts[j]!]!;
      for (let i = 0; i < d; i++) down[i]! += h[i]!;
      rows.set(b * T + ts[j]!, down);
    });
  }
  return { width: d, rs, proj, rows, skip: new Set(), tolerance: 2e-3 };
}

/** Checks a transformer block output [B, T, d]: every row projected, 32 rows in full. */
export function checkTransformer(y: ArrayLike<number>, tc: TransformerCase): Check {
  return compareRows(y, cached(tc, transformerReference));
}

// ---------------------------------------------------------------------------------------------
// Mixture-of-experts layer

export interface MoeConfig {
  /** Tokens. */
  T: number;
  d: number;
  /** Expert FFN hidden width. */
  hidden: number;
  /** Experts. */
  E: number;
  topk: number;
  /**
   * Divide the chosen top-k probabilities by their sum (moec's std.route TopK default,
   * `renormalize: true`); false weights each expert by its plain softmax probability.
   */
  renormalize: boolean;
}

export const DEFAULT_MOE: MoeConfig = {
  T: 1024,
  d: 512,
  hidden: 1024,
  E: 8,
  topk: 2,
  renormalize: true,
};

/**
 * A top-k MoE layer: logits = x·Wr + br; p = softmax(logits); the k largest p choose experts;
 * y = Σ_chosen w_e · (gelu_tanh(x·W1_e + b1_e)·W2_e + b2_e), with w = the chosen p (renormalized
 * to sum 1 when cfg.renormalize). No residual, no capacity limit (dropless).
 */
export interface MoeCase {
  cfg: MoeConfig;
  /** [T, d] */
  x: Float32Array;
  /** [d, E] */
  wr: Float32Array;
  /** [E] */
  br: Float32Array;
  /** [E, d, hidden] */
  w1: Float32Array;
  /** [E, hidden] */
  b1: Float32Array;
  /** [E, hidden, d] */
  w2: Float32Array;
  /** [E, d] */
  b2: Float32Array;
  /** Useful FLOPs: the router plus k expert FFNs per token (what a sparse layer must do). */
  flops: number;
}

export function moeName(cfg: MoeConfig): string {
  return `moe T=${cfg.T} d=${cfg.d} h=${cfg.hidden} E=${cfg.E} top${cfg.topk}`;
}

export function makeMoe(cfg: MoeConfig = DEFAULT_MOE, seed = 200): MoeCase {
  const { T, d, hidden: h, E } = cfg;
  if (cfg.topk < 1 || cfg.topk > E) throw new Error(`topk=${cfg.topk} must be in 1..E=${E}`);
  return {
    cfg,
    x: uniform(T * d, seed),
    // Logits with variance ~1, so routing spreads over the experts.
    wr: uniform(d * E, seed + 1, 3 / Math.sqrt(d)),
    br: uniform(E, seed + 2, 0.1),
    w1: weights(E * d * h, d, seed + 3),
    b1: uniform(E * h, seed + 4, 0.1),
    w2: weights(E * h * d, h, seed + 5),
    b2: uniform(E * d, seed + 6, 0.1),
    flops: 2 * T * d * E + cfg.topk * T * (2 * d * h * 2),
  };
}

/** The experts and weights the router picks for one token, in float64 (ties: lower index first). */
export function routeToken(
  mc: MoeCase,
  t: number,
): { experts: number[]; weights: number[]; margin: number } {
  const { d, E, topk } = mc.cfg;
  const logits = new Float64Array(E);
  for (let e = 0; e < E; e++) logits[e] = mc.br[e]!;
  for (let i = 0; i < d; i++) {
    const xi = mc.x[t * d + i]!;
    for (let e = 0; e < E; e++) logits[e]! += xi * mc.wr[i * E + e]!;
  }
  let mx = -Infinity;
  for (let e = 0; e < E; e++) mx = Math.max(mx, logits[e]!);
  const p = new Float64Array(E);
  let z = 0;
  for (let e = 0; e < E; e++) {
    p[e] = Math.exp(logits[e]! - mx);
    z += p[e]!;
  }
  for (let e = 0; e < E; e++) p[e]! /= z;
  const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => p[b]! - p[a]! || a - b);
  const experts = order.slice(0, topk);
  let w = experts.map((e) => p[e]!);
  if (mc.cfg.renormalize) {
    const s = w.reduce((a, b) => a + b, 0);
    w = w.map((v) => v / s);
  }
  const margin = topk < E ? p[order[topk - 1]!]! - p[order[topk]!]! : Infinity;
  return { experts, weights: w, margin };
}

function moeReference(mc: MoeCase): RowReference {
  const { T, d, hidden: h, E } = mc.cfg;
  const rs = projectors(d);
  const proj = rs.map(() => new Float64Array(T));
  const rows = new Map<number, Float64Array>();
  const sampled = new Set(sampleIndices(T, 96, 11));
  for (const t of sampled) rows.set(t, new Float64Array(d));
  // Tokens whose k-th and (k+1)-th router probabilities are within 1e-5 are not compared:
  // float32 may legitimately pick the other expert.
  const skip = new Set<number>();
  const byExpert: { t: number; w: number }[][] = Array.from({ length: E }, () => []);
  for (let t = 0; t < T; t++) {
    const route = routeToken(mc, t);
    if (route.margin < 1e-5) skip.add(t);
    route.experts.forEach((e, j) => byExpert[e]!.push({ t, w: route.weights[j]! }));
  }
  for (let e = 0; e < E; e++) {
    const picks = byExpert[e]!;
    if (picks.length === 0) continue;
    const hidden = linearRows(
      picks.map(({ t }) => mc.x.subarray(t * d, (t + 1) * d)),
      mc.w1,
      mc.b1,
      d,
      h,
      e * d * h,
      e * h,
    );
    for (const u of hidden) for (let i = 0; i < h; i++) u[i] = geluTanh(u[i]!);
    rs.forEach((r, p) => {
      const w2r = projectWeights(mc.w2, r, h, d, e * h * d);
      const b2r = dot(r, mc.b2, d, e * d);
      picks.forEach(({ t, w }, j) => (proj[p]![t]! += w * (dot(hidden[j]!, w2r, h) + b2r)));
    });
    const full = picks.map((p, j) => ({ ...p, j })).filter(({ t }) => sampled.has(t));
    linearRows(
      full.map(({ j }) => hidden[j]!),
      mc.w2,
      mc.b2,
      h,
      d,
      e * h * d,
      e * d,
    ).forEach((down, i) => {
      const { t, w } = full[i]!;
      const row = rows.get(t)!;
      for (let c = 0; c < d; c++) row[c]! += w * down[c]!;
    });
  }
  return { width: d, rs, proj, rows, skip, tolerance: 1e-3 };
}

/** Checks an MoE output [T, d]: every token projected, 96 tokens in full; near-ties skipped. */
export function checkMoe(y: ArrayLike<number>, mc: MoeCase): Check {
  return compareRows(y, cached(mc, moeReference));
}
