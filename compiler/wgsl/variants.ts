/**
 * The knobs of the kernel templates that depend on the adapter rather than on the model: the
 * matmul variant (register block, workgroup shape, vector loads, shared-memory tiles) and the
 * thread counts of the other templates. runtime/autotune.ts times the candidates on an adapter
 * and caches its choice; the compiler only ever sees the chosen numbers (plain data), so it
 * stays pure.
 */

/** One way to compute C = A·B (the template is compiler/wgsl/matmul.ts). */
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

/** Adapter-specific choices; `DEFAULT_TUNING` when nothing was measured. */
export interface Tuning {
  /** The adapter this was measured on (for humans; the cache keys by it). */
  adapter?: string;
  matmul: {
    /** B read along n (B contiguous in its last axis): `x @ w`, `P @ V`. */
    nn: MatmulVariant;
    /** B read along k (a transposed operand): `x @ transpose(weight)`, `Q @ Kᵀ`. */
    nt: MatmulVariant;
  };
  /** Invocations per workgroup of elementwise (map) kernels. */
  mapThreads: number;
  /** Invocations that share one row in row-wise (softmax, norm) kernels. */
  rowThreads: number;
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
  mapThreads: 64,
  rowThreads: 64,
};
