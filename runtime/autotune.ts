/**
 * Picks the matmul variants and the elementwise kernels' shapes for an adapter by timing them,
 * and remembers the choice.
 *
 * Which variant is fastest depends on the hardware far more than on the model: on lavapipe
 * (CPU emulation) barrier-free register blocks win by an order of magnitude, on real GPUs
 * shared-memory tiles do. `autotune(ctx)` times every candidate (compiler/kernels/wgsl/variants.ts) on
 * a few representative shapes for both operand layouts and caches the winners in
 * `$MOEC_CACHE_DIR/autotune.json` (default `~/.cache/moec/`), keyed by the adapter's identity
 * (vendor, architecture, device, description) and the template version, so later runs on the
 * same adapter start at once. The file is written atomically (temp file + rename): concurrent
 * processes never see half a file.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { compileGraph } from "../compiler/kernels/compile-graph.js";
import { processAlive, writeFileAtomic } from "./atomic-write.js";
import { IrBuilder } from "../compiler/ir/builder.js";
import {
  DEFAULT_TUNING,
  ELEMENTWISE_VARIANTS,
  type ElementwiseShape,
  LARGE_MATMUL_VARIANTS,
  MATMUL_VARIANTS,
  type MatmulChoice,
  type MatmulVariant,
  type Tuning,
  matmulVariant,
  withMatmulVariant,
} from "../compiler/kernels/wgsl/variants.js";
import type { GpuContext } from "./device.js";
import { Executor } from "./executor.js";

/** Bump when the templates change enough to invalidate cached choices. */
export const TEMPLATE_VERSION = 4;

export type MatmulLayout = "nn" | "nt";

export interface BenchOptions {
  /** "nn": C = A·B with B [k, n]; "nt" (default "nn"): C = A·Wᵀ with W a [n, k] parameter. */
  layout?: MatmulLayout;
  /** Roughly how long to time, in milliseconds (default 300). */
  budgetMs?: number;
}

/**
 * GFLOP/s of one m×k by k×n matmul on the device (2·m·n·k flops per run), the best of a few
 * timed batches after a warm-up run. Uses `variant` (name or object) for the matmul, or the
 * default tuning's choice for the layout.
 */
/** Deterministic test data in [-0.5, 0.5) (timing only: the values do not matter). */
function fill(len: number): Float32Array {
  const x = new Float32Array(len);
  for (let i = 0; i < len; i++) x[i] = ((i * 7919) % 1000) / 1000 - 0.5;
  return x;
}

/**
 * Milliseconds per forward pass of `exe` (after a call that compiled and uploaded): the best
 * of 3 batches, each sized to about a third of `budgetMs`.
 */
async function bestTime(exe: Executor, budgetMs: number): Promise<number> {
  const first = await exe.timeKernels(1);
  const reps = Math.max(1, Math.min(50, Math.floor(budgetMs / 3 / Math.max(first, 0.01))));
  let best = first;
  for (let trial = 0; trial < 3; trial++) best = Math.min(best, await exe.timeKernels(reps));
  return best;
}

export async function benchMatmul(
  ctx: GpuContext,
  m: number,
  n: number,
  k: number,
  variant?: MatmulVariant | string,
  options: BenchOptions = {},
): Promise<number> {
  const layout = options.layout ?? "nn";
  const v =
    typeof variant === "string"
      ? matmulVariant(variant)
      : (variant ?? DEFAULT_TUNING.matmul[layout]);
  const b = new IrBuilder();
  const a = b.input("a", "f32", [m, k]);
  const right =
    layout === "nn"
      ? b.input("b", "f32", [k, n])
      : b.permute(b.param("w", [n, k], true, "normal"), [1, 0]);
  b.output("c", b.matmul(a, right));
  const program = compileGraph(b.finish(), ctx.limits, {
    tuning: withMatmulVariant(DEFAULT_TUNING, v),
  });
  const exe = await Executor.create(ctx, program);
  try {
    if (layout === "nt") exe.setParams({ w: fill(n * k) });
    const inputs: Record<string, Float32Array> = { a: fill(m * k) };
    if (layout === "nn") inputs.b = fill(k * n);
    await exe.run(inputs); // compiles lazily-built driver state, uploads the inputs
    const best = await bestTime(exe, options.budgetMs ?? 300);
    return (2 * m * n * k) / (best * 1e6);
  } finally {
    exe.destroy();
  }
}

/**
 * Milliseconds per call of a small workload made of the non-matmul templates (a LayerNorm
 * and GELU with a residual, a column sum, an elementwise map; [512, 768]) with the kernels
 * shaped by `shape`: the best of a few timed batches after a warm-up run.
 */
export async function benchElementwise(
  ctx: GpuContext,
  shape: ElementwiseShape,
  options: { budgetMs?: number } = {},
): Promise<number> {
  const b = new IrBuilder();
  const x = b.input("x", "f32", [512, 768]);
  const mean = b.reduce("mean", x, -1, true);
  const centered = b.binary("sub", x, mean);
  const variance = b.reduce("mean", b.binary("mul", centered, centered), -1, true);
  const eps = b.constant(1e-5);
  const normed = b.binary("mul", centered, b.unary("rsqrt", b.binary("add", variance, eps)));
  b.output("y", b.binary("add", b.unary("gelu_tanh", normed), x));
  b.output("s", b.reduce("sum", x, 0, false));
  b.output("e", b.unary("exp", b.binary("mul", x, b.constant(0.5))));
  const program = compileGraph(b.finish(), ctx.limits, { tuning: { ...DEFAULT_TUNING, ...shape } });
  const exe = await Executor.create(ctx, program);
  try {
    await exe.run({ x: fill(512 * 768) });
    return await bestTime(exe, options.budgetMs ?? 150);
  } finally {
    exe.destroy();
  }
}

/** "8×64, rows 8 per workgroup": a readable name for an elementwise shape. */
export function elementwiseName(s: ElementwiseShape): string {
  const rows =
    s.rowsPerWorkgroup > 0
      ? `rows ${s.rowsPerWorkgroup} per workgroup`
      : `rows ${s.rowThreads} threads`;
  return `${s.mapThreads}×${s.mapItems}, ${rows}`;
}

/** What identifies an adapter for the cache. */
export function adapterKey(ctx: Pick<GpuContext, "info">): string {
  const i = ctx.info;
  return [i.vendor, i.architecture, i.device, i.description, `templates v${TEMPLATE_VERSION}`].join(
    " | ",
  );
}

export function defaultCacheDir(): string {
  return process.env.MOEC_CACHE_DIR || path.join(os.homedir(), ".cache", "moec");
}

interface CacheFile {
  version: 1;
  entries: Record<
    string,
    { tuning: Tuning; measured: Record<string, Record<string, number>>; date: string }
  >;
}

/**
 * The cache file's valid entries. The file is only a cache: a missing one is empty, and a
 * damaged one (not JSON, or JSON whose entries are not tunings moec made) is ignored with
 * one line to `warn` and rewritten without the damage, so it cannot break every later run.
 */
function readCache(file: string, warn: (line: string) => void = warnOnStderr): CacheFile {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return { version: 1, entries: {} };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return repairCache(file, { version: 1, entries: {} }, "not valid JSON", warn);
  }
  const root = parsed as Partial<CacheFile> | null;
  if (!isObject(root) || root.version !== 1 || !isObject(root.entries))
    return repairCache(file, { version: 1, entries: {} }, "not a tuning cache", warn);
  const entries: CacheFile["entries"] = {};
  const bad: string[] = [];
  for (const [key, entry] of Object.entries(root.entries)) {
    if (isObject(entry) && isTuning(entry.tuning))
      entries[key] = entry as CacheFile["entries"][string];
    else bad.push(key);
  }
  const cache: CacheFile = { version: 1, entries };
  if (bad.length === 0) return cache;
  const what = `${bad.length === 1 ? "an entry" : `${bad.length} entries`} with unknown kernel variants`;
  return repairCache(file, cache, what, warn);
}

function warnOnStderr(line: string): void {
  process.stderr.write(`moec: warning: ${line}\n`);
}

/** Warns once about `file`'s damage and rewrites it as `cache` (best effort: it is a cache). */
function repairCache(
  file: string,
  cache: CacheFile,
  problem: string,
  warn: (line: string) => void,
): CacheFile {
  let rewritten = true;
  try {
    writeCacheFile(file, `${JSON.stringify(cache, null, 2)}\n`);
  } catch {
    rewritten = false;
  }
  warn(
    `ignoring the damaged tuning cache ${file} (${problem}); ${rewritten ? "rewrote it without the damage" : "could not rewrite it"}`,
  );
  return cache;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * A cached tuning is trusted only when each choice is one moec offers (a known matmul variant
 * with its exact knobs, a known elementwise shape): the compiler takes these numbers as given.
 */
function isTuning(v: unknown): v is Tuning {
  if (!isObject(v)) return false;
  const sameVariant = (x: unknown): boolean =>
    isObject(x) &&
    MATMUL_VARIANTS.some(
      (known) =>
        Object.keys(x).length === Object.keys(known).length &&
        (Object.keys(known) as (keyof MatmulVariant)[]).every((k) => x[k] === known[k]),
    );
  const choice = (x: unknown): boolean => isObject(x) && sameVariant(x.nn) && sameVariant(x.nt);
  const shape = ELEMENTWISE_VARIANTS.some((known) =>
    (Object.keys(known) as (keyof ElementwiseShape)[]).every((k) => v[k] === known[k]),
  );
  return (
    choice(v.matmul) &&
    choice(v.largeMatmul) &&
    (v.smallMatmul === undefined || choice(v.smallMatmul)) &&
    shape &&
    (v.adapter === undefined || typeof v.adapter === "string")
  );
}

/**
 * Writes `text` to `file` so readers see the old or the new content, never a mix
 * (`writeFileAtomic`, which also removes the temporaries of killed writers). Exported for tests.
 */
export function writeCacheFile(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  // Earlier versions named their temporaries `autotune.json.<pid>.<random>.tmp`.
  const legacy = new RegExp(
    `^${path.basename(file).replace(/\./g, "\\.")}\\.(\\d+)\\.[0-9a-z]+\\.tmp$`,
  );
  for (const name of fs.readdirSync(path.dirname(file))) {
    const m = legacy.exec(name);
    if (m && !processAlive(Number(m[1])))
      fs.rmSync(path.join(path.dirname(file), name), { force: true });
  }
  writeFileAtomic(file, text);
}

export interface AutotuneOptions {
  /** Folder of autotune.json (default $MOEC_CACHE_DIR or ~/.cache/moec). */
  cacheDir?: string;
  /** Measure even when the cache has an entry for this adapter. */
  force?: boolean;
  /** Candidates for every matmul (default: the variants of compiler/kernels/wgsl/variants.ts). */
  variants?: readonly MatmulVariant[];
  /** [m, n, k] shapes to time them on; the score is the geometric mean of GFLOP/s. */
  shapes?: [number, number, number][];
  /**
   * Candidates for large matmuls (default LARGE_MATMUL_VARIANTS; an empty list keeps the
   * defaults' choice without measuring) and the shapes to time them on.
   */
  largeVariants?: readonly MatmulVariant[];
  largeShapes?: [number, number, number][];
  /**
   * Shapes of the elementwise, reduce and row kernels to time (default ELEMENTWISE_VARIANTS;
   * an empty list keeps the defaults' without measuring).
   */
  elementwiseVariants?: readonly ElementwiseShape[];
  /** Timing budget per measurement in ms. */
  budgetMs?: number;
  /** Progress lines (e.g. console.error). */
  log?: (line: string) => void;
}

/**
 * The cached tuning for this adapter, or undefined. A damaged cache file counts as empty: it
 * is reported through `warn` (default: one line on stderr) and rewritten.
 */
export function loadTuning(
  ctx: Pick<GpuContext, "info">,
  cacheDir = defaultCacheDir(),
  warn?: (line: string) => void,
): Tuning | undefined {
  return readCache(path.join(cacheDir, "autotune.json"), warn).entries[adapterKey(ctx)]?.tuning;
}

/** The tuned variants for `ctx`'s adapter: from the cache, or measured now and cached. */
export async function autotune(ctx: GpuContext, options: AutotuneOptions = {}): Promise<Tuning> {
  const dir = options.cacheDir ?? defaultCacheDir();
  const file = path.join(dir, "autotune.json");
  const key = adapterKey(ctx);
  if (!options.force) {
    const cached = readCache(file).entries[key];
    if (cached) return cached.tuning;
  }
  // The naive variant is a correctness baseline, never a contender; the big blocks are timed
  // for large matmuls only (they take long to compile, which small ones never pay back).
  const variants =
    options.variants ??
    MATMUL_VARIANTS.filter((v) => !v.name.startsWith("naive") && v.tm * v.tn <= 256);
  const measured: Record<string, Record<string, number>> = {};
  const pick = async (
    tier: string,
    candidates: readonly MatmulVariant[],
    shapes: [number, number, number][],
    fallback: MatmulChoice,
  ): Promise<MatmulChoice> => {
    if (candidates.length === 0) return fallback;
    const chosen = { ...fallback };
    for (const layout of ["nn", "nt"] as const) {
      const scores: Record<string, number> = {};
      measured[`${tier}${layout}`] = scores;
      let bestScore = -1;
      const firstShape: number[] = [];
      for (const v of candidates) {
        let logSum = 0;
        let timed = 0;
        for (const [m, n, k] of shapes) {
          const budgetMs = options.budgetMs ?? 150;
          const g = await benchMatmul(ctx, m, n, k, v, { layout, budgetMs });
          logSum += Math.log(Math.max(g, 1e-9));
          timed++;
          // A candidate at under a third of the best on the first shape cannot win: skip the rest.
          if (timed === 1) {
            firstShape.push(g);
            if (g < Math.max(...firstShape) / 3) break;
          }
        }
        const score = Math.exp(logSum / timed) * (timed < shapes.length ? 0 : 1);
        scores[v.name] = Number(score.toFixed(3));
        options.log?.(
          `autotune ${tier}${layout} ${v.name}: ${timed < shapes.length ? "pruned" : `${score.toFixed(2)} GFLOP/s`}`,
        );
        if (score > bestScore) {
          bestScore = score;
          chosen[layout] = v;
        }
      }
    }
    return chosen;
  };
  const matmul = await pick(
    "",
    variants,
    options.shapes ?? [
      [384, 384, 384],
      [64, 512, 512],
    ],
    DEFAULT_TUNING.matmul,
  );
  const largeMatmul = await pick(
    "large ",
    options.largeVariants ?? LARGE_MATMUL_VARIANTS,
    options.largeShapes ?? [[256, 1024, 512]],
    DEFAULT_TUNING.largeMatmul,
  );
  let elementwise: ElementwiseShape = DEFAULT_TUNING;
  const shapes = options.elementwiseVariants ?? ELEMENTWISE_VARIANTS;
  if (shapes.length > 0) {
    const scores: Record<string, number> = {};
    measured.elementwise = scores;
    let bestMs = Infinity;
    for (const shape of shapes) {
      const ms = await benchElementwise(ctx, shape, { budgetMs: options.budgetMs ?? 150 });
      scores[elementwiseName(shape)] = Number(ms.toFixed(3));
      options.log?.(`autotune elementwise ${elementwiseName(shape)}: ${ms.toFixed(2)} ms`);
      if (ms < bestMs) {
        bestMs = ms;
        elementwise = shape;
      }
    }
  }
  const tuning: Tuning = {
    ...DEFAULT_TUNING,
    ...elementwise,
    adapter: ctx.info.description || ctx.info.device,
    matmul,
    largeMatmul,
  };
  // Re-read just before writing so entries other processes added meanwhile survive.
  const cache = readCache(file);
  cache.entries[key] = { tuning, measured, date: new Date().toISOString() };
  writeCacheFile(file, `${JSON.stringify(cache, null, 2)}\n`);
  return tuning;
}
