/**
 * Peer: TensorFlow.js (tfjs-core 4.x) on its WebGPU backend (through the same Dawn binding and
 * adapter moec uses) and on its wasm backend (XNNPACK, SIMD, one thread).
 *
 * WebGPU on Node: @tensorflow/tfjs-backend-webgpu registers itself at import time only when
 * `globalThis.navigator.gpu` exists, and WebGPUBackend's constructor checks it again. Node 20 has
 * no `navigator`, so we install `{ gpu }` (the object from webgpu's `create()`, owned by the
 * GpuContext) before the dynamic import, and remove it on close. The backend's own factory
 * would request a second adapter and device that nothing ever destroys; since Dawn aborts when
 * the `create()` object is collected before its devices (see runtime/device.ts), we register a
 * factory that hands WebGPUBackend the GpuContext's device instead, so `ctx.close()` tears
 * everything down in the right order. No other stubs are needed: tfjs reads `adapter.info`
 * (which dawn.node has) and never touches canvas APIs for compute.
 *
 * wasm: the .wasm binaries ship in the package's dist/ folder; `setWasmPaths` points there. On
 * Node tfjs always loads the non-threaded build (its WASM_HAS_MULTITHREAD_SUPPORT flag is false
 * under IS_NODE), so this is one thread either way; we also call setThreadsCount(1).
 *
 * TF.js has one global engine: only one TfjsPeer may be open at a time.
 */
import { createRequire } from "node:module";
import * as path from "node:path";

import { openDevice, type GpuContext } from "../../runtime/device.js";
import {
  checkMatmul,
  checkMoe,
  checkTransformer,
  DEFAULT_MOE,
  DEFAULT_TRANSFORMER,
  LN_EPS,
  makeMatmul,
  makeMoe,
  makeTransformer,
  matmulName,
  moeName,
  transformerName,
  timeCalls,
  type MatmulCase,
  type MoeCase,
  type MoeConfig,
  type PeerTiming,
  type RunCounts,
  type RunOptions,
  type TransformerCase,
  type TransformerConfig,
} from "./workloads.js";

type Tf = typeof import("@tensorflow/tfjs-core");
type Tensor = import("@tensorflow/tfjs-core").Tensor;
type Tensor2D = import("@tensorflow/tfjs-core").Tensor2D;

export type TfjsBackend = "webgpu" | "wasm";

export interface TfjsPeerOptions {
  /** WebGPU only: run on this device (else one is opened and closed with the peer). */
  ctx?: GpuContext;
}

/** An initialized TF.js backend; run workloads on it, then close(). */
export interface TfjsPeer {
  /** "tfjs-webgpu" or "tfjs-wasm". */
  readonly peer: string;
  /** Backend details, e.g. the adapter or the wasm binary flavour. */
  readonly description: string;
  matmul(m: number, n: number, k: number, run?: RunOptions): Promise<PeerTiming>;
  transformerBlock(cfg?: TransformerConfig, run?: RunOptions): Promise<PeerTiming>;
  moeLayer(cfg?: MoeConfig, run?: RunOptions): Promise<PeerTiming>;
  /** Also accepts prebuilt cases, so several peers can share one (large) data set. */
  runMatmul(mc: MatmulCase, run?: RunOptions): Promise<PeerTiming>;
  runTransformer(tc: TransformerCase, run?: RunOptions): Promise<PeerTiming>;
  runMoe(mc: MoeCase, run?: RunOptions): Promise<PeerTiming>;
  close(): Promise<void>;
}

const DEFAULT_RUNS: RunCounts = { warmup: 2, runs: 5 };

let openPeer: TfjsBackend | null = null;

/** Opens TF.js on the given backend. Throws if it cannot be initialized (message says why). */
export async function openTfjsPeer(
  backend: TfjsBackend,
  opts: TfjsPeerOptions = {},
): Promise<TfjsPeer> {
  if (openPeer) throw new Error(`a TF.js peer (${openPeer}) is already open; close it first`);
  openPeer = backend;
  try {
    return backend === "webgpu" ? await openWebgpu(opts) : await openWasm();
  } catch (e) {
    openPeer = null;
    throw e;
  }
}

async function openWebgpu(opts: TfjsPeerOptions): Promise<TfjsPeer> {
  const ownCtx = !opts.ctx;
  const ctx = opts.ctx ?? (await openDevice({ label: "tfjs-webgpu peer" }));
  const g = globalThis as { navigator?: unknown };
  const hadNavigator = Object.prototype.hasOwnProperty.call(g, "navigator");
  const previous = g.navigator;
  // userAgent too: tfjs-core's isMobile() falls back to `window.opera` when it is missing.
  Object.defineProperty(g, "navigator", {
    value: { gpu: ctx.gpu, userAgent: "node" },
    configurable: true,
    writable: true,
  });
  const restoreNavigator = () => {
    if (hadNavigator) g.navigator = previous;
    else delete g.navigator;
  };
  try {
    const tf: Tf = await import("@tensorflow/tfjs-core");
    const webgpu = await import("@tensorflow/tfjs-backend-webgpu");
    // Replace the self-registered factory (own adapter + device) by one on ctx's device.
    if (tf.findBackendFactory("webgpu")) tf.removeBackend("webgpu");
    tf.registerBackend("webgpu", () => new webgpu.WebGPUBackend(ctx.device, ctx.adapter.info));
    if (!(await tf.setBackend("webgpu"))) throw new Error("tf.setBackend('webgpu') failed");
    await tf.ready();
    const info = ctx.adapter.info;
    return makePeer(tf, "tfjs-webgpu", `${info.description || info.device} via Dawn`, async () => {
      await ctx.device.queue.onSubmittedWorkDone();
      tf.removeBackend("webgpu");
      restoreNavigator();
      if (ownCtx) await ctx.close();
    });
  } catch (e) {
    restoreNavigator();
    if (ownCtx) await ctx.close();
    throw e;
  }
}

async function openWasm(): Promise<TfjsPeer> {
  const tf: Tf = await import("@tensorflow/tfjs-core");
  const wasm = await import("@tensorflow/tfjs-backend-wasm");
  const require = createRequire(import.meta.url);
  const dist = path.join(
    path.dirname(require.resolve("@tensorflow/tfjs-backend-wasm/package.json")),
    "dist",
  );
  wasm.setWasmPaths(dist + path.sep);
  wasm.setThreadsCount(1);
  // Kept so close() can put it back: removeBackend() drops the factory too.
  const factory = tf.findBackendFactory("wasm");
  if (!factory) throw new Error("@tensorflow/tfjs-backend-wasm did not register a 'wasm' backend");
  if (!(await tf.setBackend("wasm"))) throw new Error("tf.setBackend('wasm') failed");
  await tf.ready();
  const simd = await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT");
  const threads = wasm.getThreadsCount();
  return makePeer(
    tf,
    "tfjs-wasm",
    `XNNPACK ${simd ? "SIMD" : "no SIMD"}, ${threads} thread${threads === 1 ? "" : "s"}`,
    async () => {
      tf.removeBackend("wasm"); // frees the wasm heap
      tf.registerBackend("wasm", factory, 2);
    },
  );
}

function makePeer(
  tf: Tf,
  peer: string,
  description: string,
  teardown: () => Promise<void>,
): TfjsPeer {
  let closed = false;
  const live = () => {
    if (closed) throw new Error(`${peer} peer is closed`);
  };

  const runMatmul = async (mc: MatmulCase, run: RunOptions = {}): Promise<PeerTiming> => {
    live();
    const opts = { ...DEFAULT_RUNS, ...run };
    const a = tf.tensor2d(mc.a, [mc.m, mc.k]);
    const b = tf.tensor2d(mc.b, [mc.k, mc.n]);
    try {
      const { ms, minMs, check } = await timeCalls(
        async () => {
          const c = tf.matMul(a, b);
          const data = await c.data();
          c.dispose();
          return data as Float32Array;
        },
        opts,
        (y) => checkMatmul(y, mc),
      );
      return {
        peer,
        name: matmulName(mc.m, mc.n, mc.k),
        ms,
        minMs,
        warmup: opts.warmup,
        runs: opts.runs,
        gflops: mc.flops / ms / 1e6,
        check,
      };
    } finally {
      a.dispose();
      b.dispose();
    }
  };

  const runTransformer = async (tc: TransformerCase, run: RunOptions = {}): Promise<PeerTiming> => {
    live();
    const opts = { ...DEFAULT_RUNS, ...run };
    const { d, T, heads, B } = tc.cfg;
    const dh = d / heads;
    const p = {
      x: tf.tensor2d(tc.x, [B * T, d]),
      ln1g: tf.tensor1d(tc.ln1g),
      ln1b: tf.tensor1d(tc.ln1b),
      wq: tf.tensor2d(tc.wq, [d, d]),
      bq: tf.tensor1d(tc.bq),
      wk: tf.tensor2d(tc.wk, [d, d]),
      bk: tf.tensor1d(tc.bk),
      wv: tf.tensor2d(tc.wv, [d, d]),
      bv: tf.tensor1d(tc.bv),
      wo: tf.tensor2d(tc.wo, [d, d]),
      bo: tf.tensor1d(tc.bo),
      ln2g: tf.tensor1d(tc.ln2g),
      ln2b: tf.tensor1d(tc.ln2b),
      w1: tf.tensor2d(tc.w1, [d, 4 * d]),
      b1: tf.tensor1d(tc.b1),
      w2: tf.tensor2d(tc.w2, [4 * d, d]),
      b2: tf.tensor1d(tc.b2),
      mask: causalMask(tf, T),
    };
    const heads4 = (t: Tensor) => tf.transpose(tf.reshape(t, [B, T, heads, dh]), [0, 2, 1, 3]);
    const forward = () =>
      tf.tidy(() => {
        const ln1 = layerNorm(tf, p.x, p.ln1g, p.ln1b);
        const q = heads4(tf.mul(linear(tf, ln1, p.wq, p.bq), 1 / Math.sqrt(dh)));
        const k = heads4(linear(tf, ln1, p.wk, p.bk));
        const v = heads4(linear(tf, ln1, p.wv, p.bv));
        const scores = tf.add(tf.matMul(q, k, false, true), p.mask);
        const mixed = tf.reshape(tf.transpose(tf.matMul(tf.softmax(scores), v), [0, 2, 1, 3]), [
          B * T,
          d,
        ]);
        const h = tf.add(p.x, linear(tf, mixed, p.wo, p.bo));
        const ln2 = layerNorm(tf, h, p.ln2g, p.ln2b);
        const up = geluTanh(tf, linear(tf, ln2, p.w1, p.b1));
        return tf.add(h, linear(tf, up, p.w2, p.b2));
      });
    try {
      const { ms, minMs, check } = await timeCalls(
        async () => {
          const y = forward();
          const data = await y.data();
          y.dispose();
          return data as Float32Array;
        },
        opts,
        (y) => checkTransformer(y, tc),
      );
      return {
        peer,
        name: transformerName(tc.cfg),
        ms,
        minMs,
        warmup: opts.warmup,
        runs: opts.runs,
        gflops: tc.flops / ms / 1e6,
        check,
      };
    } finally {
      for (const t of Object.values(p)) t.dispose();
    }
  };

  const runMoe = async (mc: MoeCase, run: RunOptions = {}): Promise<PeerTiming> => {
    live();
    const opts = { ...DEFAULT_RUNS, ...run };
    const { T, d, hidden: h, E, topk } = mc.cfg;
    const x = tf.tensor2d(mc.x, [T, d]);
    const wr = tf.tensor2d(mc.wr, [d, E]);
    const br = tf.tensor1d(mc.br);
    const experts = Array.from({ length: E }, (_, e) => ({
      w1: tf.tensor2d(mc.w1.subarray(e * d * h, (e + 1) * d * h), [d, h]),
      b1: tf.tensor1d(mc.b1.subarray(e * h, (e + 1) * h)),
      w2: tf.tensor2d(mc.w2.subarray(e * h * d, (e + 1) * h * d), [h, d]),
      b2: tf.tensor1d(mc.b2.subarray(e * d, (e + 1) * d)),
    }));
    // Sparse dispatch: the router runs on the backend, the top-k expert ids come back to the
    // CPU (TF.js has no on-device dynamic shapes), tokens are grouped per expert, each expert's
    // FFN runs on its own tokens only, and a gather puts the k outputs of each token back.
    const layer = async (): Promise<Float32Array> => {
      const { gates, indices } = tf.tidy(() => {
        const probs = tf.softmax(linear(tf, x, wr, br));
        const top = tf.topk(probs, topk);
        const w = mc.cfg.renormalize
          ? tf.div(top.values, tf.sum(top.values, -1, true))
          : top.values;
        return { gates: tf.reshape(w, [T * topk, 1]), indices: top.indices };
      });
      const ids = (await indices.data()) as Int32Array;
      indices.dispose();
      // Counting sort of the T·k (token, slot) pairs by expert.
      const counts = new Int32Array(E);
      for (const e of ids) counts[e]!++;
      const start = new Int32Array(E + 1);
      for (let e = 0; e < E; e++) start[e + 1] = start[e]! + counts[e]!;
      const fill = start.slice(0, E);
      const tokens = new Int32Array(T * topk); // sorted position -> token
      const position = new Int32Array(T * topk); // (token, slot) -> sorted position
      for (let i = 0; i < ids.length; i++) {
        const pos = fill[ids[i]!]!++;
        tokens[pos] = Math.floor(i / topk);
        position[i] = pos;
      }
      const y = tf.tidy(() => {
        const xs = tf.gather(x, tf.tensor1d(tokens, "int32"));
        const outs: Tensor[] = [];
        for (let e = 0; e < E; e++) {
          if (counts[e] === 0) continue;
          const xe = tf.slice(xs, [start[e]!, 0], [counts[e]!, d]) as Tensor2D;
          const ex = experts[e]!;
          outs.push(linear(tf, geluTanh(tf, linear(tf, xe, ex.w1, ex.b1)), ex.w2, ex.b2));
        }
        const ys = outs.length === 1 ? outs[0]! : tf.concat(outs, 0);
        const back = tf.mul(tf.gather(ys, tf.tensor1d(position, "int32")), gates);
        return tf.sum(tf.reshape(back, [T, topk, d]), 1);
      });
      gates.dispose();
      const data = (await y.data()) as Float32Array;
      y.dispose();
      return data;
    };
    try {
      const { ms, minMs, check } = await timeCalls(layer, opts, (y) => checkMoe(y, mc));
      return {
        peer,
        name: moeName(mc.cfg),
        ms,
        minMs,
        warmup: opts.warmup,
        runs: opts.runs,
        gflops: mc.flops / ms / 1e6,
        check,
        note: "sparse: top-k ids read back, per-expert FFN on its tokens",
      };
    } finally {
      x.dispose();
      wr.dispose();
      br.dispose();
      for (const ex of experts) for (const t of Object.values(ex)) t.dispose();
    }
  };

  return {
    peer,
    description,
    runMatmul,
    runTransformer,
    runMoe,
    matmul: (m, n, k, run) => runMatmul(makeMatmul(m, n, k), run),
    transformerBlock: (cfg = DEFAULT_TRANSFORMER, run) => runTransformer(makeTransformer(cfg), run),
    moeLayer: (cfg = DEFAULT_MOE, run) => runMoe(makeMoe(cfg), run),
    async close() {
      if (closed) return;
      closed = true;
      try {
        await teardown();
      } finally {
        openPeer = null;
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Layers (called inside tf.tidy)

/** y = x·W + b with the bias fused into the matmul. */
function linear(tf: Tf, x: Tensor, w: Tensor, b: Tensor): Tensor2D {
  return tf.fused.matMul({ a: x as Tensor2D, b: w as Tensor2D, bias: b }) as Tensor2D;
}

function layerNorm(tf: Tf, x: Tensor, g: Tensor, b: Tensor): Tensor {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, LN_EPS))), g), b);
}

/** GELU, tanh approximation (TF.js has no gelu op; this is what a TF.js model would compose). */
function geluTanh(tf: Tf, x: Tensor): Tensor {
  const inner = tf.mul(
    tf.add(x, tf.mul(tf.mul(tf.mul(x, x), x), 0.044715)),
    Math.sqrt(2 / Math.PI),
  );
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1));
}

/** [T, T] additive mask: 0 on and below the diagonal, -1e9 above. */
function causalMask(tf: Tf, T: number): Tensor {
  const m = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) m[i * T + j] = -1e9;
  return tf.tensor2d(m, [T, T]);
}
