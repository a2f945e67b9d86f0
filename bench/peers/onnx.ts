/**
 * Peer: onnxruntime-node on its CPU execution provider (MLAS kernels). The graphs are built in
 * code with the project's ONNX writer, compiler/export/onnx-graph.ts (on the onnx-proto package;
 * `moec export --format onnx` writes with it too): no .onnx files, no converter. Weights are
 * initializers, so ORT can pre-pack them, as it would for an exported model. Graph
 * optimizations are left at ORT's default ("all"). Threads: ORT's default intra-op pool (one
 * thread per physical core) unless `threads` is given.
 *
 * Install note: onnxruntime-node's postinstall downloads GPU providers; .npmrc sets
 * `onnxruntime-node-install=skip` (and npm's allowScripts does not list it). The CPU binaries
 * ship inside the npm package.
 */
import type * as Ort from "onnxruntime-node";

import { attr, DataType, OnnxGraph } from "../../compiler/export/onnx-graph.js";
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
  type Check,
  type MatmulCase,
  type MoeCase,
  type MoeConfig,
  type PeerTiming,
  type RunCounts,
  type RunOptions,
  type TransformerCase,
  type TransformerConfig,
} from "./workloads.js";

/** ONNX opset the graphs use: Gelu (approximate="tanh") needs 20. */
export const OPSET = 20;

export interface OrtPeerOptions {
  /** intra-op threads; 0 or absent = ORT's default (physical cores). */
  threads?: number;
}

/**
 * "sparse" (the ORT peer): TopK → per expert Equal/NonZero → Gather its tokens → FFN → scale by
 * its gate → Concat → ScatterND to (token, slot) → ReduceSum over the k slots. "dense-masked": every expert runs on every token
 * and is multiplied by a gate that is zero where it was not chosen (k/E of the work is useful;
 * reported GFLOP/s count only the useful FLOPs). Only "sparse" is the ORT MoE peer.
 */
export type MoeGraphVariant = "sparse" | "dense-masked";

export interface OrtPeer {
  readonly peer: string;
  readonly description: string;
  matmul(m: number, n: number, k: number, run?: RunOptions): Promise<PeerTiming>;
  transformerBlock(cfg?: TransformerConfig, run?: RunOptions): Promise<PeerTiming>;
  moeLayer(cfg?: MoeConfig, run?: RunOptions, variant?: MoeGraphVariant): Promise<PeerTiming>;
  runMatmul(mc: MatmulCase, run?: RunOptions): Promise<PeerTiming>;
  runTransformer(tc: TransformerCase, run?: RunOptions): Promise<PeerTiming>;
  runMoe(mc: MoeCase, run?: RunOptions, variant?: MoeGraphVariant): Promise<PeerTiming>;
  close(): Promise<void>;
}

const DEFAULT_RUNS: RunCounts = { warmup: 3, runs: 10 };

export async function openOrtPeer(opts: OrtPeerOptions = {}): Promise<OrtPeer> {
  const ort: typeof Ort = await import("onnxruntime-node");
  const threads = opts.threads ?? 0;
  const sessionOptions: Ort.InferenceSession.SessionOptions = {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "all",
    ...(threads > 0 ? { intraOpNumThreads: threads, interOpNumThreads: 1 } : {}),
  };
  const peer = "onnxruntime-node";
  const threadNote =
    threads > 0 ? `${threads} thread${threads === 1 ? "" : "s"}` : "default threads";
  const description = `onnxruntime ${ort.env.versions.node ?? "?"} CPU EP, ${threadNote}`;

  /** Builds a session, times calls feeding `feeds`, checks every output `y`. */
  const timeGraph = async (
    model: Uint8Array,
    feeds: Record<string, Ort.Tensor>,
    run: RunOptions,
    check: (y: Float32Array) => Check,
  ): Promise<{ ms: number; minMs: number; opts: RunCounts; check: Check }> => {
    const opts = { ...DEFAULT_RUNS, ...run };
    const session = await ort.InferenceSession.create(model, sessionOptions);
    try {
      const timed = await timeCalls(
        async () => (await session.run(feeds))["y"]!.data as Float32Array,
        opts,
        check,
      );
      return { ...timed, opts };
    } finally {
      await session.release();
    }
  };

  const runMatmul = async (mc: MatmulCase, run: RunOptions = {}): Promise<PeerTiming> => {
    const g = new OnnxGraph("matmul");
    const a = g.input("a", DataType.FLOAT, [mc.m, mc.k]);
    const b = g.input("b", DataType.FLOAT, [mc.k, mc.n]);
    g.node("MatMul", [a, b], {}, ["y"]);
    g.output("y", DataType.FLOAT, [mc.m, mc.n]);
    const feeds = {
      a: new ort.Tensor("float32", mc.a, [mc.m, mc.k]),
      b: new ort.Tensor("float32", mc.b, [mc.k, mc.n]),
    };
    const { ms, minMs, opts, check } = await timeGraph(
      g.toModel({ opset: OPSET, producerName: "moec-bench" }),
      feeds,
      run,
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
      note: threadNote,
    };
  };

  const runTransformer = async (tc: TransformerCase, run: RunOptions = {}): Promise<PeerTiming> => {
    const { B, T } = tc.cfg;
    const { ms, minMs, opts, check } = await timeGraph(
      transformerGraph(tc),
      { x: new ort.Tensor("float32", tc.x, [B, T, tc.cfg.d]) },
      run,
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
      note: threadNote,
    };
  };

  const runMoe = async (
    mc: MoeCase,
    run: RunOptions = {},
    variant: MoeGraphVariant = "sparse",
  ): Promise<PeerTiming> => {
    const model = variant === "sparse" ? moeSparseGraph(mc) : moeDenseMaskedGraph(mc);
    const { ms, minMs, opts, check } = await timeGraph(
      model,
      { x: new ort.Tensor("float32", mc.x, [mc.cfg.T, mc.cfg.d]) },
      run,
      (y) => checkMoe(y, mc),
    );
    return {
      peer: variant === "sparse" ? peer : `${peer} (dense-masked)`,
      name: moeName(mc.cfg),
      ms,
      minMs,
      warmup: opts.warmup,
      runs: opts.runs,
      gflops: mc.flops / ms / 1e6,
      check,
      note:
        variant === "sparse"
          ? `${threadNote}; sparse: NonZero/Gather per expert, ScatterND + ReduceSum`
          : `${threadNote}; NOT the ORT peer: all E experts on all tokens, masked`,
    };
  };

  return {
    peer,
    description,
    runMatmul,
    runTransformer,
    runMoe,
    matmul: (m, n, k, run) => runMatmul(makeMatmul(m, n, k), run),
    transformerBlock: (cfg = DEFAULT_TRANSFORMER, run) => runTransformer(makeTransformer(cfg), run),
    moeLayer: (cfg = DEFAULT_MOE, run, variant) => runMoe(makeMoe(cfg), run, variant),
    close: async () => {},
  };
}

// ---------------------------------------------------------------------------------------------
// Graphs

/** y = x·W + b (ORT fuses MatMul + Add). */
function linear(
  g: OnnxGraph,
  x: string,
  w: Float32Array,
  b: Float32Array,
  nIn: number,
  nOut: number,
): string {
  const [mm] = g.node("MatMul", [x, g.init("w", w, [nIn, nOut])]);
  return g.node("Add", [mm!, g.init("b", b, [nOut])])[0]!;
}

function gelu(g: OnnxGraph, x: string): string {
  return g.node("Gelu", [x], { approximate: attr.s("tanh") })[0]!;
}

/** Pre-norm GPT-2 block, x [B, T, d] → y [B, T, d]. */
export function transformerGraph(tc: TransformerCase): Uint8Array {
  const { B, T, d, heads } = tc.cfg;
  const dh = d / heads;
  const g = new OnnxGraph("transformer_block");
  const x = g.input("x", DataType.FLOAT, [B, T, d]);
  const ln = (v: string, gamma: Float32Array, beta: Float32Array) =>
    g.node(
      "LayerNormalization",
      [v, g.init("ln_g", gamma, [d]), g.init("ln_b", beta, [d])],
      { axis: attr.i(-1), epsilon: attr.f(LN_EPS) },
      1,
    )[0]!;
  const headShape = g.ints("head_shape", [B, T, heads, dh]);
  const split = (v: string, perm: number[]) =>
    g.node("Transpose", [g.node("Reshape", [v, headShape])[0]!], { perm: attr.ints(perm) })[0]!;

  const ln1 = ln(x, tc.ln1g, tc.ln1b);
  const scale = g.init("scale", Float32Array.of(1 / Math.sqrt(dh)), []);
  const q = split(g.node("Mul", [linear(g, ln1, tc.wq, tc.bq, d, d), scale])[0]!, [0, 2, 1, 3]);
  const kT = split(linear(g, ln1, tc.wk, tc.bk, d, d), [0, 2, 3, 1]);
  const v = split(linear(g, ln1, tc.wv, tc.bv, d, d), [0, 2, 1, 3]);
  const mask = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) mask[i * T + j] = -1e9;
  const [scores] = g.node("Add", [g.node("MatMul", [q, kT])[0]!, g.init("mask", mask, [T, T])]);
  const [probs] = g.node("Softmax", [scores!], { axis: attr.i(-1) });
  const [ctx] = g.node("MatMul", [probs!, v]);
  const [merged] = g.node("Transpose", [ctx!], { perm: attr.ints([0, 2, 1, 3]) });
  const [mixed] = g.node("Reshape", [merged!, g.ints("model_shape", [B, T, d])]);
  const [h] = g.node("Add", [x, linear(g, mixed!, tc.wo, tc.bo, d, d)]);
  const ln2 = ln(h!, tc.ln2g, tc.ln2b);
  const up = gelu(g, linear(g, ln2, tc.w1, tc.b1, d, 4 * d));
  g.node("Add", [h!, linear(g, up, tc.w2, tc.b2, 4 * d, d)], {}, ["y"]);
  g.output("y", DataType.FLOAT, [B, T, d]);
  return g.toModel({ opset: OPSET, producerName: "moec-bench" });
}

/** Router → softmax → TopK → (renormalized) gates [T, k] and expert ids [T, k]. */
function router(g: OnnxGraph, mc: MoeCase, x: string): { gates: string; ids: string } {
  const { d, E, topk } = mc.cfg;
  const [probs] = g.node("Softmax", [linear(g, x, mc.wr, mc.br, d, E)], { axis: attr.i(-1) });
  const [values, ids] = g.node("TopK", [probs!, g.ints("k", [topk])], { axis: attr.i(-1) }, 2);
  let gates = values!;
  if (mc.cfg.renormalize) {
    const [sum] = g.node("ReduceSum", [gates, g.ints("axes", [-1])], { keepdims: attr.i(1) });
    gates = g.node("Div", [gates, sum!])[0]!;
  }
  return { gates, ids: ids! };
}

function expertSlices(mc: MoeCase, e: number) {
  const { d, hidden: h } = mc.cfg;
  return {
    w1: mc.w1.subarray(e * d * h, (e + 1) * d * h),
    b1: mc.b1.subarray(e * h, (e + 1) * h),
    w2: mc.w2.subarray(e * h * d, (e + 1) * h * d),
    b2: mc.b2.subarray(e * d, (e + 1) * d),
  };
}

/**
 * The ORT MoE peer: each expert's FFN runs on its own tokens only. x [T, d] → y [T, d].
 *
 * Per expert e: NonZero(ids == e) over the flattened [T·k] top-k ids gives the (token, slot)
 * positions p routed to e; the tokens p / k are gathered, run through e's FFN, and scaled by
 * their gates. The T·k scaled rows are scattered (each position exactly once, so no reduction)
 * into [T·k, d], reshaped to [T, k, d] and summed over k.
 *
 * Not ScatterND(reduction="add") straight into [T, d]: in onnxruntime 1.30 (CPU EP) that op
 * races when two updates hit the same row and the intra-op pool has more than one thread;
 * about one run in five then loses a token's contribution (the checks catch it).
 */
export function moeSparseGraph(mc: MoeCase): Uint8Array {
  const { T, d, hidden: h, E, topk } = mc.cfg;
  const g = new OnnxGraph("moe_sparse");
  const x = g.input("x", DataType.FLOAT, [T, d]);
  const { gates, ids } = router(g, mc, x);
  const flatShape = g.ints("flat", [T * topk]);
  const [idsFlat] = g.node("Reshape", [ids, flatShape]);
  const [gatesFlat] = g.node("Reshape", [gates, flatShape]);
  const k = g.ints("k", [topk], []);
  const zero = g.ints("zero", [0]);
  const one = g.ints("one", [1]);
  const outs: string[] = [];
  const positions: string[] = [];
  for (let e = 0; e < E; e++) {
    const [chosen] = g.node("Equal", [idsFlat!, g.ints(`e${e}`, [e], [])]);
    const [nz] = g.node("NonZero", [chosen!]); // [1, n_e]
    const [pos] = g.node("Squeeze", [nz!, zero]); // [n_e] positions token·k + slot
    const [tok] = g.node("Div", [pos!, k]); // [n_e] tokens
    const [gate] = g.node("Gather", [gatesFlat!, pos!], { axis: attr.i(0) }); // [n_e]
    const [xe] = g.node("Gather", [x, tok!], { axis: attr.i(0) }); // [n_e, d]
    const ex = expertSlices(mc, e);
    const ye = linear(g, gelu(g, linear(g, xe!, ex.w1, ex.b1, d, h)), ex.w2, ex.b2, h, d);
    const [scaled] = g.node("Mul", [ye, g.node("Unsqueeze", [gate!, one])[0]!]);
    outs.push(scaled!);
    positions.push(pos!);
  }
  const [updates] = g.node("Concat", outs, { axis: attr.i(0) }); // [T·k, d]
  const [allPos] = g.node("Concat", positions, { axis: attr.i(0) }); // [T·k], a permutation
  const [indices] = g.node("Unsqueeze", [allPos!, one]); // [T·k, 1]
  const [zeros] = g.node("ConstantOfShape", [g.ints("slots_shape", [T * topk, d])], {
    value: attr.tensor(Float32Array.of(0), [1]),
  });
  const [slots] = g.node("ScatterND", [zeros!, indices!, updates!]); // [T·k, d]
  const [perToken] = g.node("Reshape", [slots!, g.ints("tkd", [T, topk, d])]);
  g.node("ReduceSum", [perToken!, one], { keepdims: attr.i(0) }, ["y"]);
  g.output("y", DataType.FLOAT, [T, d]);
  return g.toModel({ opset: OPSET, producerName: "moec-bench" });
}

/** Labelled comparison only: every expert on every token, weighted by a masked gate. */
export function moeDenseMaskedGraph(mc: MoeCase): Uint8Array {
  const { T, d, hidden: h, E } = mc.cfg;
  const g = new OnnxGraph("moe_dense_masked");
  const x = g.input("x", DataType.FLOAT, [T, d]);
  const { gates, ids } = router(g, mc, x);
  // Dense [T, E] gate matrix, zero where the expert was not chosen.
  const [dense] = g.node(
    "ScatterElements",
    [g.init("gate_zeros", new Float32Array(T * E), [T, E]), ids, gates],
    { axis: attr.i(1) },
  );
  let acc: string | null = null;
  for (let e = 0; e < E; e++) {
    const ex = expertSlices(mc, e);
    const ye = linear(g, gelu(g, linear(g, x, ex.w1, ex.b1, d, h)), ex.w2, ex.b2, h, d);
    const [col] = g.node("Slice", [
      dense!,
      g.ints("s", [e]),
      g.ints("t", [e + 1]),
      g.ints("ax", [1]),
    ]);
    const [scaled] = g.node("Mul", [ye, col!]);
    acc = acc === null ? scaled! : g.node("Add", [acc, scaled!])[0]!;
  }
  g.node("Identity", [acc!], {}, ["y"]);
  g.output("y", DataType.FLOAT, [T, d]);
  return g.toModel({ opset: OPSET, producerName: "moec-bench" });
}
