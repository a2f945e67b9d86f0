/**
 * The knobs of the kernel templates that depend on the adapter rather than on the model: the
 * matmul variant (register block, workgroup shape, vector loads, shared-memory tiles) and the
 * thread counts of the other templates. runtime/autotune.ts times the candidates on an adapter
 * and caches its choice; the compiler only ever sees the chosen numbers (plain data), so it
 * stays pure.
 */

/** One way to compute C = A·B (the template is compiler/kernels/wgsl/matmul.ts). */
export interface MatmulVariant {
  name: string;
  /** Rows and columns of C one invocation computes (a register block). */
  tm: number;
  tn: number;
  /** Invocations per workgroup along x and y. */
  wx: number;
  wy: number;
  /**
   * Which output axis x walks: "cols" puts consecutive invocations on consecutive columns
   * (coalesced B and C on GPUs), "rows" on consecutive row blocks (on CPU emulations the B
   * loads then stay uniform across SIMD lanes).
   */
  lanes: "cols" | "rows";
  /** Use vec4 loads where an operand's layout allows (contiguous along k, or B along n). */
  vector: boolean;
  /** Shared-memory K tile: 0 keeps everything in registers (no barriers). */
  tileK: number;
}

/** A variant per operand layout. */
export interface MatmulChoice {
  /** B read along n (B contiguous in its last axis): `x @ w`, `P @ V`. */
  nn: MatmulVariant;
  /** B read along k (a transposed operand): `x @ transpose(weight)`, `Q @ Kᵀ`. */
  nt: MatmulVariant;
}

/** Adapter-specific choices; `DEFAULT_TUNING` when nothing was measured. */
export interface Tuning {
  /** The adapter this was measured on (for humans; the cache keys by it). */
  adapter?: string;
  matmul: MatmulChoice;
  /**
   * The variants for large matmuls (`isLargeMatmul`): a bigger register block costs the
   * driver more time to compile once and saves more on every call.
   */
  largeMatmul: MatmulChoice;
  /**
   * The variants for small matmuls (`isSmallMatmul`; absent: `matmul`). These run in about the
   * time of their launch whatever the variant, so what counts is the first compile: on
   * lavapipe LLVM takes ~2.7 s of CPU for a 16×16 register block and ~0.4 s for a 2×4 one, for
   * every distinct matmul of a model (the README's GPT-2 has six).
   */
  smallMatmul?: MatmulChoice;
  /**
   * Invocations per workgroup of elementwise (map), reduce and one-invocation-per-row kernels
   * (attention, top-k, scans).
   */
  mapThreads: number;
  /**
   * At most this many elements per invocation of a map or reduce kernel, in a loop (fewer when
   * the tensor is small, so there are still workgroups for every core). lavapipe runs a
   * workgroup as a loop over 8-lane SIMD chunks: one chunk that loops over 64 elements is 3-6×
   * faster than 64 invocations with one each. GPUs want 1.
   */
  mapItems: number;
  /** Invocations that share one row in row-wise (softmax, norm) kernels. */
  rowThreads: number;
  /**
   * When a row-wise kernel has at least 16 workgroups' worth of rows: one invocation per row,
   * this many rows per workgroup, no workgroup memory and no barriers (which lavapipe pays
   * for dearly). 0 always shares rows among `rowThreads` invocations (GPUs).
   */
  rowsPerWorkgroup: number;
}

/** The candidates the autotuner times; the first ones are good defaults on most adapters. */
export const MATMUL_VARIANTS: readonly MatmulVariant[] = [
  // Large register blocks first: lavapipe (Mesa's software Vulkan) loads storage buffers one
  // lane and one component at a time, each with its own bounds check, so what a matmul costs
  // there is mostly the number of loaded scalars, M·N·K·(1/tm + 1/tn). 16×16 halves that
  // against 8×8 (the accumulators spill, but to the stack, which is far cheaper); scalar
  // loads keep the unrolled body small.
  {
    name: "sreg16x16-cols-8x2",
    tm: 16,
    tn: 16,
    wx: 8,
    wy: 2,
    lanes: "cols",
    vector: false,
    tileK: 0,
  },
  {
    name: "reg16x16-cols-8x2",
    tm: 16,
    tn: 16,
    wx: 8,
    wy: 2,
    lanes: "cols",
    vector: true,
    tileK: 0,
  },
  {
    name: "sreg16x8-cols-8x2",
    tm: 16,
    tn: 8,
    wx: 8,
    wy: 2,
    lanes: "cols",
    vector: false,
    tileK: 0,
  },
  { name: "reg8x8-cols-8x4", tm: 8, tn: 8, wx: 8, wy: 4, lanes: "cols", vector: true, tileK: 0 },
  { name: "reg4x4-cols-8x8", tm: 4, tn: 4, wx: 8, wy: 8, lanes: "cols", vector: true, tileK: 0 },
  { name: "reg4x4-rows-8x8", tm: 4, tn: 4, wx: 8, wy: 8, lanes: "rows", vector: true, tileK: 0 },
  { name: "reg4x4-cols-16x4", tm: 4, tn: 4, wx: 16, wy: 4, lanes: "cols", vector: true, tileK: 0 },
  { name: "reg4x4-rows-4x16", tm: 4, tn: 4, wx: 4, wy: 16, lanes: "rows", vector: true, tileK: 0 },
  { name: "reg8x4-cols-8x8", tm: 8, tn: 4, wx: 8, wy: 8, lanes: "cols", vector: true, tileK: 0 },
  { name: "reg4x8-rows-8x8", tm: 4, tn: 8, wx: 8, wy: 8, lanes: "rows", vector: true, tileK: 0 },
  { name: "reg2x4-cols-16x8", tm: 2, tn: 4, wx: 16, wy: 8, lanes: "cols", vector: true, tileK: 0 },
  {
    name: "tile64-4x4-16x16",
    tm: 4,
    tn: 4,
    wx: 16,
    wy: 16,
    lanes: "cols",
    vector: false,
    tileK: 16,
  },
  {
    name: "tile32-2x2-16x16",
    tm: 2,
    tn: 2,
    wx: 16,
    wy: 16,
    lanes: "cols",
    vector: false,
    tileK: 16,
  },
  // 32×32 vec4 blocks, one invocation wide along rows so the rows (and the A loads) are the
  // same for the whole workgroup: on lavapipe 1.5-2.3× the 16×16 block's GFLOP/s at 1024³,
  // but its 4096-FMA loop body takes LLVM 25-40 s to compile on first use (Mesa caches it on
  // disk afterwards), so only large matmuls use it (LARGE_MATMUL_VARIANTS, isLargeMatmul).
  {
    name: "vreg32x32-cols-8x1",
    tm: 32,
    tn: 32,
    wx: 8,
    wy: 1,
    lanes: "cols",
    vector: true,
    tileK: 0,
  },
  { name: "naive-16x16", tm: 1, tn: 1, wx: 16, wy: 16, lanes: "cols", vector: false, tileK: 0 },
];

export function matmulVariant(name: string): MatmulVariant {
  const v = MATMUL_VARIANTS.find((x) => x.name === name);
  if (!v) {
    throw new Error(
      `unknown matmul variant ${name} (known: ${MATMUL_VARIANTS.map((x) => x.name).join(", ")})`,
    );
  }
  return v;
}

/** The best variants on lavapipe (what CI and the bench machine run); `moec tune` re-times. */
export const DEFAULT_TUNING: Tuning = {
  matmul: { nn: matmulVariant("sreg16x16-cols-8x2"), nt: matmulVariant("sreg16x16-cols-8x2") },
  largeMatmul: {
    nn: matmulVariant("vreg32x32-cols-8x1"),
    nt: matmulVariant("vreg32x32-cols-8x1"),
  },
  smallMatmul: { nn: matmulVariant("reg2x4-cols-16x8"), nt: matmulVariant("reg2x4-cols-16x8") },
  // One 8-lane SIMD chunk per workgroup (lavapipe's vector width on AVX2 and AVX-512 hosts).
  mapThreads: 8,
  mapItems: 64,
  rowThreads: 64,
  rowsPerWorkgroup: 8,
};

/**
 * The elementwise and row-kernel shapes `moec tune` times (the fields of `Tuning` besides the
 * matmuls): lavapipe's, and the one-element-per-invocation shapes GPUs like.
 */
export type ElementwiseShape = Pick<
  Tuning,
  "mapThreads" | "mapItems" | "rowThreads" | "rowsPerWorkgroup"
>;

export const ELEMENTWISE_VARIANTS: readonly ElementwiseShape[] = [
  { mapThreads: 8, mapItems: 64, rowThreads: 64, rowsPerWorkgroup: 8 },
  { mapThreads: 64, mapItems: 1, rowThreads: 64, rowsPerWorkgroup: 0 },
  { mapThreads: 256, mapItems: 1, rowThreads: 256, rowsPerWorkgroup: 0 },
];

/** The candidates `moec tune` times for large matmuls (the others are for every matmul). */
export const LARGE_MATMUL_VARIANTS: readonly MatmulVariant[] = [
  matmulVariant("vreg32x32-cols-8x1"),
  matmulVariant("sreg16x16-cols-8x2"),
  matmulVariant("reg16x16-cols-8x2"),
];

/** One variant for every matmul, whatever its size (benchmarks and tests of one variant). */
export function withMatmulVariant(tuning: Tuning, v: MatmulVariant): Tuning {
  const all = { nn: v, nt: v };
  return { ...tuning, matmul: all, largeMatmul: all, smallMatmul: all };
}

/**
 * Whether a matmul is large enough for `Tuning.largeMatmul`: enough work (2·batch·m·n·k of at
 * least 2^27 flops, the size of a d=512 projection of 256 tokens) for a slower first compile
 * to pay off, and enough rows and columns to fill a big register block.
 */
export function isLargeMatmul(batch: number, m: number, n: number, k: number): boolean {
  return 2 * batch * m * n * k >= 2 ** 27 && m >= 64 && n >= 128;
}

/**
 * Whether a matmul is small enough for `Tuning.smallMatmul`: at most 2^20 flops (2·batch·m·n·k),
 * e.g. a d=64 projection of 16 tokens to 512 outputs, where a launch costs as much as the work.
 */
export function isSmallMatmul(batch: number, m: number, n: number, k: number): boolean {
  return 2 * batch * m * n * k <= 2 ** 20;
}

/** The variants `tuning` has for a batch of m×k by k×n matmuls: its small, large or middle tier. */
export function matmulTier(
  tuning: Tuning,
  batch: number,
  m: number,
  n: number,
  k: number,
): MatmulChoice {
  if (isLargeMatmul(batch, m, n, k)) return tuning.largeMatmul;
  if (tuning.smallMatmul && isSmallMatmul(batch, m, n, k)) return tuning.smallMatmul;
  return tuning.matmul;
}

/** expert_matmul_wgrad: each invocation computes a WGRAD_BLOCK² block of the gradient. */
export const WGRAD_BLOCK = 4;
