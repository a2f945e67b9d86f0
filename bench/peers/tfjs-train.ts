/**
 * Peer of the training bench (bench/train.ts, issue #13): the reference causal LM trained in
 * TensorFlow.js (tfjs-core 4.x) on its WebGPU backend (on the bench's own Dawn device) and on
 * its wasm backend, opened by bench/peers/tfjs.ts's openTfjsPeer.
 *
 * The models are those of bench/train.ts and bench/peers/torch_train.py: vocab 64, d 64,
 * 2 pre-LN layers, 4 heads, FFN 4d (Linear with bias, exact GELU), LayerNorm eps 1e-5, learned
 * positions, final LayerNorm and a Linear head; the MoE variant swaps each FFN for 4 expert
 * FFNs behind a bias-free router d→4, top-1 of its softmax, the expert's output weighted by its
 * probability (moec's TopK(k: 1) keeps p). TF.js has no sparse dispatch inside a gradient tape
 * (reading the expert ids back to the CPU would leave the tape), so the MoE is dense-masked:
 * all 4 experts run on every token, each multiplied by a gate that is zero where unchosen.
 *
 * One step: upload the batch, forward, softmax cross-entropy over the vocab, gradients and
 * tf.train.adam's update (optimizer.minimize), then await the loss value. Adam, not AdamW: TF.js
 * has no decoupled weight decay (the others use decay 0.01, whose cost is one multiply-add a
 * weight). Token embeddings are one-hot matmuls because the wasm backend has no
 * UnsortedSegmentSum kernel, which gather's gradient needs (both backends run the same graph);
 * positions are 0..T-1 in every row, so their embedding is the [T, d] table, broadcast.
 *
 * Gradients: tfjs-core's Node bundle (its package.json "main") registers no gradient functions;
 * the @tensorflow/tfjs union package does, by importing tfjs-core's ESM
 * dist/register_all_gradients.js, which bundlers resolve. Plain Node cannot load that file
 * (ESM syntax in a package without "type": "module", extensionless relative imports), so
 * registerGradients() installs a module hook that only touches tfjs-core's dist/ files (add
 * ".js", load as ESM) and imports it. Those ESM modules share the Node bundle's engine and
 * registries (tfjs-core keeps them on a global, and its Tensor's instanceof is structural), so
 * the gradients are TF.js's own, exactly what an app on @tensorflow/tfjs would run.
 *
 * The batch is one seeded B×T draw of token ids and targets in [0, V), reused every step, so
 * that the loss must fall over the steps: a peer whose gradients or update are broken shows.
 */
import { createRequire, register } from "node:module";
import { pathToFileURL } from "node:url";

import type { GpuContext } from "../../runtime/device.js";
import { openTfjsPeer, type TfjsBackend } from "./tfjs.js";
import { median, rng } from "./workloads.js";

type Tf = typeof import("@tensorflow/tfjs-core");
type Tensor = import("@tensorflow/tfjs-core").Tensor;
type Tensor2D = import("@tensorflow/tfjs-core").Tensor2D;
type Variable = import("@tensorflow/tfjs-core").Variable;
type Scalar = import("@tensorflow/tfjs-core").Scalar;

/** The reference LM's sizes (bench/train.ts). */
export interface TrainShape {
  V: number;
  D: number;
  layers: number;
  heads: number;
  T: number;
  B: number;
  experts: number;
}

export type TrainModel = "dense" | "moe";

export interface TfjsTrainOptions {
  /** WebGPU only: run on this device (else tfjs.ts opens and closes its own). */
  ctx?: GpuContext;
  warmup?: number;
  steps?: number;
  /**
   * Skip a model whose timed steps would take longer than this (estimated from its last
   * warm-up step), so a slow backend cannot stall the bench. Default: no limit.
   */
  budgetMs?: Partial<Record<TrainModel, number>>;
}

export type TfjsTrainModelResult =
  | {
      model: TrainModel;
      params: number;
      /** Median awaited ms/step. */
      ms: number;
      minMs: number;
      /** Loss of each timed step, in order. */
      losses: number[];
    }
  | { model: TrainModel; skipped: string };

export interface TfjsTrainResult {
  /** "tfjs-webgpu" or "tfjs-wasm". */
  peer: string;
  description: string;
  version: string;
  results: TfjsTrainModelResult[];
}

const LN_EPS = 1e-5;

/**
 * Trains each of `models` for warm-up + timed steps on `backend`. Returns `{ skipped }` when
 * the backend cannot be initialised; a model that fails or is over budget is skipped alone.
 */
export async function runTfjsTrain(
  backend: TfjsBackend,
  shape: TrainShape,
  models: readonly TrainModel[],
  opts: TfjsTrainOptions = {},
): Promise<TfjsTrainResult | { skipped: string }> {
  let peer;
  try {
    await registerGradients();
    peer = await openTfjsPeer(backend, backend === "webgpu" ? { ctx: opts.ctx } : {});
  } catch (e) {
    return { skipped: firstLine(e) };
  }
  try {
    // The same module instance tfjs.ts set the backend on (one global engine per process).
    const tf: Tf = await import("@tensorflow/tfjs-core");
    if (tf.getBackend() !== backend)
      return { skipped: `TF.js backend is ${tf.getBackend()}, not ${backend}` };
    const results: TfjsTrainModelResult[] = [];
    for (const model of models) {
      try {
        results.push(await trainModel(tf, shape, model, opts));
      } catch (e) {
        results.push({ model, skipped: `failed: ${firstLine(e)}` });
      }
    }
    return { peer: peer.peer, description: peer.description, version: tf.version_core, results };
  } finally {
    await peer.close();
  }
}

/** Module hooks for tfjs-core's ESM dist/ files only (the tf-core*.js bundles are left alone). */
const GRADIENT_HOOKS = `
const DIST = "/@tensorflow/tfjs-core/dist/";
const bundle = (url) => /\\/tf-core[^/]*\\.js$/.test(url);
export async function resolve(specifier, context, next) {
  if (context.parentURL?.includes(DIST) && /^\\.\\.?\\//.test(specifier) && !specifier.endsWith(".js"))
    return next(specifier + ".js", context);
  return next(specifier, context);
}
export async function load(url, context, next) {
  if (url.includes(DIST) && !bundle(url)) return next(url, { ...context, format: "module" });
  return next(url, context);
}`;

let gradients: Promise<void> | undefined;

/** Registers TF.js's gradient functions (once per process); see the header. */
function registerGradients(): Promise<void> {
  gradients ??= (async () => {
    // The Node bundle first: the engine on the global is then its own, and the tensors the
    // ESM gradient code makes are the bundle's (with its chained ops installed).
    await import("@tensorflow/tfjs-core");
    register("data:text/javascript," + encodeURIComponent(GRADIENT_HOOKS));
    const require = createRequire(import.meta.url);
    const pkg = require.resolve("@tensorflow/tfjs-core/package.json");
    await import(
      pathToFileURL(pkg.replace(/package\.json$/, "dist/register_all_gradients.js")).href
    );
  })();
  return gradients;
}

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0]!;
}

async function trainModel(
  tf: Tf,
  s: TrainShape,
  model: TrainModel,
  opts: TfjsTrainOptions,
): Promise<TfjsTrainModelResult> {
  const warmup = opts.warmup ?? 3;
  const steps = opts.steps ?? 10;
  const budget = opts.budgetMs?.[model] ?? Infinity;
  const { V, D, T, B, heads } = s;
  const dh = D / heads;
  const hidden = 4 * D;

  // Parameters: PyTorch's defaults (Linear U(±1/√fan_in), embeddings N(0, 1), LayerNorm 1/0),
  // seeded, so every run trains the same network.
  let seed = 1;
  const vars: Variable[] = [];
  const param = (t: Tensor): Variable => {
    const v = tf.variable(t);
    t.dispose();
    vars.push(v);
    return v;
  };
  const uniform = (shape: number[], bound: number) =>
    param(tf.randomUniform(shape, -bound, bound, "float32", seed++));
  const normal = (shape: number[]) => param(tf.randomNormal(shape, 0, 1, "float32", seed++));
  const linear = (fanIn: number, fanOut: number, bias = true) => ({
    w: uniform([fanIn, fanOut], 1 / Math.sqrt(fanIn)),
    b: bias ? uniform([fanOut], 1 / Math.sqrt(fanIn)) : undefined,
  });
  const layerNormParams = () => ({ g: param(tf.ones([D])), b: param(tf.zeros([D])) });
  const ffnParams = () => ({ up: linear(D, hidden), down: linear(hidden, D) });
  const p = {
    embed: normal([V, D]),
    pos: normal([T, D]),
    blocks: Array.from({ length: s.layers }, () => ({
      ln1: layerNormParams(),
      q: linear(D, D),
      k: linear(D, D),
      v: linear(D, D),
      o: linear(D, D),
      ln2: layerNormParams(),
      ffn: model === "dense" ? ffnParams() : undefined,
      router: model === "moe" ? linear(D, s.experts, false) : undefined,
      experts: model === "moe" ? Array.from({ length: s.experts }, ffnParams) : [],
    })),
    lnF: layerNormParams(),
    head: linear(D, V),
  };
  const params = vars.reduce((a, v) => a + v.size, 0);

  // Additive causal mask, 0 on and below the diagonal.
  const maskData = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) maskData[i * T + j] = -1e9;
  const mask = tf.tensor2d(maskData, [T, T]);
  const rand = rng(7);
  const tokenIds = Int32Array.from({ length: B * T }, () => Math.floor(rand() * V) % V);
  const targetIds = Int32Array.from({ length: B * T }, () => Math.floor(rand() * V) % V);

  // int32 one-hot, then a cast: the wasm backend's OneHot ignores its dtype argument (a
  // float32 one-hot comes back holding the int bit patterns).
  const oneHot = (ids: Tensor, depth: number) => tf.cast(tf.oneHot(ids, depth), "float32");
  const dense = (x: Tensor, l: { w: Tensor; b?: Tensor }): Tensor =>
    tf.fused.matMul({ a: x as Tensor2D, b: l.w as Tensor2D, bias: l.b });
  const layerNorm = (x: Tensor, l: { g: Tensor; b: Tensor }) => {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, LN_EPS))), l.g), l.b);
  };
  // Exact GELU, as moec's std.nn FFN and PyTorch's F.gelu (TF.js has erf, not gelu).
  const gelu = (x: Tensor) => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
  const ffn = (x: Tensor, f: ReturnType<typeof ffnParams>) => dense(gelu(dense(x, f.up)), f.down);
  const split = (y: Tensor) => tf.transpose(tf.reshape(y, [B, T, heads, dh]), [0, 2, 1, 3]);

  const loss = (tokens: Tensor, targets: Tensor): Scalar => {
    // [B·T, D] rows throughout; attention reshapes to [B, heads, T, dh].
    // Positions are 0..T-1 in every sequence: their embedding is the whole table, broadcast.
    let x: Tensor = tf.reshape(
      tf.add(tf.reshape(tf.matMul(oneHot(tokens, V), p.embed), [B, T, D]), p.pos),
      [B * T, D],
    );
    for (const blk of p.blocks) {
      const a = layerNorm(x, blk.ln1);
      const q = split(tf.mul(dense(a, blk.q), 1 / Math.sqrt(dh)));
      const k = split(dense(a, blk.k));
      const v = split(dense(a, blk.v));
      const att = tf.softmax(tf.add(tf.matMul(q, k, false, true), mask));
      const mixed = tf.reshape(tf.transpose(tf.matMul(att, v), [0, 2, 1, 3]), [B * T, D]);
      x = tf.add(x, dense(mixed, blk.o));
      const h = layerNorm(x, blk.ln2);
      if (blk.ffn) x = tf.add(x, ffn(h, blk.ffn));
      else {
        // Dense-masked top-1: gate = p where the expert is the argmax, else 0.
        const probs = tf.softmax(dense(h, blk.router!));
        const gate = tf.mul(probs, oneHot(tf.argMax(probs, -1), s.experts));
        const gates = tf.split(gate, s.experts, 1);
        let y: Tensor | undefined;
        blk.experts.forEach((ex, e) => {
          const ye = tf.mul(ffn(h, ex), gates[e]!);
          y = y ? tf.add(y, ye) : ye;
        });
        x = tf.add(x, y!);
      }
    }
    const logits = dense(layerNorm(x, p.lnF), p.head);
    return tf.losses.softmaxCrossEntropy(oneHot(targets, V), logits) as Scalar;
  };

  const optimizer = tf.train.adam(1e-3, 0.9, 0.999, 1e-8);
  const step = async (): Promise<number> => {
    const tokens = tf.tensor1d(tokenIds, "int32");
    const targets = tf.tensor1d(targetIds, "int32");
    const cost = optimizer.minimize(() => loss(tokens, targets), true, vars);
    tokens.dispose();
    targets.dispose();
    if (!cost) throw new Error("optimizer.minimize returned no loss");
    const value = (await cost.data())[0]!;
    cost.dispose();
    return value;
  };

  try {
    let last = 0;
    for (let i = 0; i < warmup; i++) {
      const t0 = performance.now();
      await step();
      last = performance.now() - t0;
    }
    if (last * steps > budget)
      return {
        model,
        skipped: `~${(last / 1000).toFixed(1)} s/step, ${steps} steps would exceed the ${(budget / 1000).toFixed(0)} s budget`,
      };
    const times: number[] = [];
    const losses: number[] = [];
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now();
      losses.push(await step());
      times.push(performance.now() - t0);
    }
    return { model, params, ms: median(times), minMs: Math.min(...times), losses };
  } finally {
    optimizer.dispose();
    tf.dispose([...vars, mask]);
  }
}
