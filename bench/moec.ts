/**
 * moec's side of the benchmarks, on the WebGPU device, with the peers (TF.js WebGPU and wasm,
 * onnxruntime-node) run in the same process and printed side by side as ratios:
 * - matmul 1024³ f32 (issue #3: ≥ 3× TF.js WebGPU; also vs moec's naive kernel and ORT);
 * - one transformer block d=512, T=256, 8 heads (issue #3: ≥ 4× TF.js WebGPU), with peak
 *   device memory against the sum of live tensors' sizes;
 * - the MoE layer T=1024, d=512, h=1024, E=8 top-2 and T=256, E=64 (issue #4): moec's sparse
 *   top-k (router, grouping, expert GEMMs, combine: all on the device), and its dense soft
 *   mixture for comparison; the expert GEMMs' GFLOP/s against moec's plain matmul.
 * - adapters (issue #5): 8 tasks' LoRA r=16 on every Linear of a d=768 block, one segmented
 *   forward against merged weights and against 8 per-task forwards.
 * Every moec program is checked against the reference interpreter before it is timed. The
 * matmul, the block and the MoE layers are timed between the peers' timed calls (ratios pair
 * each peer's calls with the moec calls made between them: the VM's speed drifts).
 */
import * as path from "node:path";
import { compileGraph } from "../compiler/kernels/compile-graph.js";
import { IrBuilder } from "../compiler/ir/builder.js";
import type { IrGraph } from "../compiler/ir/graph.js";
import { analyze, lower, nodeFileSystem } from "../compiler/pipeline.js";
import {
  DEFAULT_TUNING,
  type Tuning,
  matmulTier,
  matmulVariant,
  withMatmulVariant,
} from "../compiler/kernels/wgsl/variants.js";
import { loadTuning } from "../runtime/autotune.js";
import { type GpuContext, adapterSummary, openDevice } from "../runtime/device.js";
import { Executor, type TensorData } from "../runtime/executor.js";
import { type HostTensor, interpret } from "../runtime/reference/interpret.js";
import { initWeights, randomInputs } from "../runtime/weights.js";
import { paramSpecs } from "../runtime/run-model.js";
import { type PeerSuiteResult, runPeerSuite } from "./peers/suite.js";
import {
  DEFAULT_MOE,
  DEFAULT_TRANSFORMER,
  matmulName,
  median,
  moeName,
  transformerName,
} from "./peers/workloads.js";

const BLOCK_SOURCE = (d: number, heads: number) => `import std.nn { TransformerBlock }
model Block() {
  in x: f32[B, T, ${d}]
  out y: f32[B, T, ${d}]
  layer = TransformerBlock(${d}, ${heads}, ${4 * d}, act: gelu_tanh)
  y = layer(x)
}`;

const MOE_SOURCE = (
  d: number,
  hidden: number,
  experts: number,
  router: string,
) => `import std.nn { FFN }
import std.route { MoE, Soft, TopK }
model Layer() {
  in x: f32[N, ${d}]
  out y: f32[N, ${d}]
  moe = MoE(router: ${router}, experts: [FFN(${d}, ${hidden}, act: gelu_tanh); ${experts}])
  y = moe(x)
}`;

/**
 * A d-wide pre-norm transformer block written out so every Linear can carry an adapter:
 * `lora` is appended to each Linear (`with per task LoRA(r: 16)`, `with LoRA(r: 16)` or
 * nothing), and `task` is passed to the per-task ones.
 */
const ADAPTED_BLOCK_SOURCE = (d: number, heads: number, lora: string, perTask: boolean) => {
  const lin = (i: number, o: number) => `Linear(${i}, ${o})${lora ? ` with ${lora}` : ""}`;
  const call = (name: string, arg: string) =>
    perTask ? `${name}(${arg}, task)` : `${name}(${arg})`;
  const hd = d / heads;
  return `import std.nn { Linear, LayerNorm }
import std.adapt { LoRA }
tasks Eight { t0, t1, t2, t3, t4, t5, t6, t7 }
model Block() {
  in x: f32[B, T, ${d}]
  in task: Eight[B]
  out y: f32[B, T, ${d}]
  ln_1 = LayerNorm(${d})
  ln_2 = LayerNorm(${d})
  q = ${lin(d, d)}
  k = ${lin(d, d)}
  v = ${lin(d, d)}
  o = ${lin(d, d)}
  up = ${lin(d, 4 * d)}
  down = ${lin(4 * d, d)}
  h = ln_1(x)
  qh = permute(reshape(${call("q", "h")}, [B, T, ${heads}, ${hd}]), [0, 2, 1, 3])
  kh = permute(reshape(${call("k", "h")}, [B, T, ${heads}, ${hd}]), [0, 2, 1, 3])
  vh = permute(reshape(${call("v", "h")}, [B, T, ${heads}, ${hd}]), [0, 2, 1, 3])
  scores = causal_mask((qh @ transpose(kh)) * (1.0 / sqrt(${hd})))
  mixed = reshape(permute(softmax(scores) @ vh, [0, 2, 1, 3]), [B, T, ${d}])
  a = x + ${call("o", "mixed")}
  y = a + ${call("down", `gelu_tanh(${call("up", "ln_2(a)")})`)}
}`;
};

function lowerSource(source: string, dims: Record<string, number>): IrGraph {
  const file = path.resolve("bench-model.moe");
  const analysis = analyze([file], nodeFileSystem(new Map([[file, source]])));
  const result = lower(analysis, file, undefined, new Map(), new Map(Object.entries(dims)));
  if ("error" in result || !result.model) {
    const why =
      "error" in result
        ? result.error
        : [...analysis.diagnostics, ...result.diagnostics].map((d) => d.message).join("; ");
    throw new Error(`bench model did not lower: ${why}`);
  }
  return result.model.graph;
}

/** C = A·B, n×n by n×n inputs (the layout TF.js's matMul sees). */
function matmulGraph(n: number): IrGraph {
  const b = new IrBuilder();
  b.output("c", b.matmul(b.input("a", "f32", [n, n]), b.input("b", "f32", [n, n])));
  return b.finish();
}

/** The two GEMMs of `rows` expert rows (d → hidden → d) as plain matmuls with weights [out, in]. */
function denseExpertGemms(rows: number, d: number, hidden: number): IrGraph {
  const b = new IrBuilder();
  const up = b.permute(b.param("up", [hidden, d], true, "normal"), [1, 0]);
  const down = b.permute(b.param("down", [d, hidden], true, "normal"), [1, 0]);
  b.output("h", b.matmul(b.input("x", "f32", [rows, d]), up));
  b.output("y", b.matmul(b.input("g", "f32", [rows, hidden]), down));
  return b.finish();
}

/** Relative L2 distance of a GPU output from the float64 reference. */
function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

interface MoecTiming {
  ms: number;
  kernels: number;
  check: string;
  memory: { peakBytes: number; totalBytes: number };
  /** With `perKernel`: each kernel's time in one timed run (its own submit or pass). */
  perKernel?: { name: string; ms: number; nodes: number[] }[];
}

/** A compiled program, checked against the reference, ready to time call by call. */
interface PreparedGraph {
  /** Times one steady-state call (ms) and records it. */
  sample(): Promise<number>;
  samples: number[];
  /** Stops sampling; the median of the samples and the rest of the report. */
  finish(minSamples: number, perKernel?: boolean): Promise<MoecTiming>;
}

/** Compiles `graph`, checks one call against the reference, and returns its sampler. */
async function prepareGraph(
  ctx: GpuContext,
  graph: IrGraph,
  tuning: Tuning,
): Promise<PreparedGraph> {
  const program = compileGraph(graph, ctx.limits, tuning);
  const exe = await Executor.create(ctx, program);
  try {
    const weights = initWeights(paramSpecs(graph), 1);
    const inputs = randomInputs(
      graph.nodes.flatMap((n) =>
        n.op === "input" ? [{ name: n.name, dtype: n.dtype, shape: n.shape }] : [],
      ),
      1,
    );
    const params = new Map([...weights].map(([k, v]) => [k, v.data as TensorData]));
    exe.setParams(params);
    const feeds = new Map([...inputs].map(([k, v]) => [k, v.data as TensorData]));
    const out = await exe.run(feeds);
    const leaves = new Map<string, HostTensor>();
    for (const [k, v] of [...weights, ...inputs])
      leaves.set(k, { shape: v.shape, data: Float64Array.from(v.data) });
    const ref = interpret(graph, leaves).outputs;
    const worst = Math.max(
      ...graph.outputs.map((o) => relL2(out.get(o.name)!, ref.get(o.name)!.data)),
    );
    const check =
      worst < 1e-5
        ? `ok (rel L2 ${worst.toExponential(1)})`
        : `WRONG (rel L2 ${worst.toExponential(1)})`;
    await exe.timeKernels(1);
    const samples: number[] = [];
    return {
      samples,
      sample: async () => {
        const t = await exe.timeKernels(1);
        samples.push(t);
        return t;
      },
      finish: async (minSamples, perKernel = false) => {
        try {
          while (samples.length < minSamples) samples.push(await exe.timeKernels(1));
          const result: MoecTiming = {
            ms: median(samples),
            kernels: program.kernels.length,
            check,
            memory: program.memory,
          };
          if (perKernel) {
            const timed = await Executor.create(ctx, program, { timing: true });
            try {
              timed.setParams(params);
              await timed.run(feeds);
              await timed.run(feeds);
              result.perKernel = timed.stats().map((st, i) => ({
                name: st.name,
                ms: st.lastMs,
                nodes: program.kernels[i]!.nodes,
              }));
            } finally {
              timed.destroy();
            }
          }
          return result;
        } finally {
          exe.destroy();
        }
      },
    };
  } catch (e) {
    exe.destroy();
    throw e;
  }
}

/** Compiles, checks once against the reference, then times `reps` steady-state calls. */
async function timeGraph(
  ctx: GpuContext,
  graph: IrGraph,
  tuning: Tuning,
  reps: number,
  perKernel = false,
): Promise<MoecTiming> {
  return (await prepareGraph(ctx, graph, tuning)).finish(reps, perKernel);
}

const pad = (s: string, n: number) => s.padEnd(n);
const ms = (x: number) => `${x.toFixed(x < 10 ? 2 : 1)} ms`.padStart(11);

/**
 * Each peer's line with moec's ratio: against the median of the moec calls made between that
 * peer's timed calls (`paired`, keyed by peer) when there are some, else against `moecMs`.
 */
function peerLines(
  peers: PeerSuiteResult,
  workload: string,
  moecMs: number,
  goal?: { peer: string; ratio: number },
  paired?: ReadonlyMap<string, number[]>,
): string[] {
  const lines: string[] = [];
  for (const t of peers.timings.filter((p) => p.name === workload)) {
    const own = paired?.get(t.peer);
    const ratio = t.ms / (own && own.length > 0 ? median(own) : moecMs);
    const verdict =
      goal && t.peer === goal.peer
        ? `  (goal ≥ ${goal.ratio}×: ${ratio >= goal.ratio ? "met" : "NOT met"})`
        : "";
    const gf =
      t.gflops !== undefined ? `${t.gflops.toFixed(1).padStart(7)} GFLOP/s` : "".padStart(15);
    lines.push(
      `  ${pad(t.peer + (t.note ? ` (${t.note})` : ""), 34)}${ms(t.ms)} ${gf}   moec ${ratio >= 1 ? `${ratio.toFixed(2)}× faster` : `${(1 / ratio).toFixed(2)}× slower`}${verdict}  [${t.check.ok ? "checked" : "WRONG"}]`,
    );
  }
  for (const f of peers.failures.filter((p) => p.name === workload || p.name === "(open)")) {
    lines.push(`  ${pad(f.peer, 34)}failed: ${f.error}`);
  }
  return lines;
}

export async function benchMoec(): Promise<string[]> {
  const ctx = await openDevice();
  const lines: string[] = [`device: ${adapterSummary(ctx)}`];
  try {
    const tuned = loadTuning(ctx);
    const tuning = tuned ?? DEFAULT_TUNING;
    lines.push(
      `kernels: ${tuned ? "tuned for this adapter (moec tune)" : "default variants (run `moec tune` to tune)"}`,
    );
    const log = (line: string) => process.stderr.write(`  … ${line}\n`);

    // The matmul, the block and the MoE layers are compiled and checked first, then timed
    // between the peers' timed calls of the same workload: this VM's speed drifts by ±30% over minutes, so
    // each ratio compares calls made at the same moments.
    const tc = DEFAULT_TRANSFORMER;
    const blockName = transformerName(tc);
    const moeCases = [DEFAULT_MOE, { ...DEFAULT_MOE, T: 256, E: 64 }];
    const moeGraphs = moeCases.map((mc) =>
      lowerSource(MOE_SOURCE(mc.d, mc.hidden, mc.E, `TopK(${mc.topk})`), { N: mc.T }),
    );
    const prepared = new Map<string, PreparedGraph>();
    prepared.set(
      blockName,
      await prepareGraph(
        ctx,
        lowerSource(BLOCK_SOURCE(tc.d, tc.heads), { B: tc.B, T: tc.T }),
        tuning,
      ),
    );
    for (const [i, mc] of moeCases.entries()) {
      prepared.set(moeName(mc), await prepareGraph(ctx, moeGraphs[i]!, tuning));
    }
    // The variant moec itself picks for a matmul this size.
    const n = 1024;
    const mm = matmulTier(tuning, 1, n, n, n).nn;
    prepared.set(
      matmulName(n, n, n),
      await prepareGraph(ctx, matmulGraph(n), withMatmulVariant(tuning, mm)),
    );
    // The expert GEMMs' yardstick: the same two GEMMs (k·T rows) as plain dense matmuls,
    // timed right after each MoE call.
    const denseRefs = new Map<string, PreparedGraph>();
    for (const mc of moeCases) {
      denseRefs.set(
        moeName(mc),
        await prepareGraph(ctx, denseExpertGemms(mc.T * mc.topk, mc.d, mc.hidden), tuning),
      );
    }
    /** Workload → peer → moec's times between that peer's calls. */
    const paired = new Map<string, Map<string, number[]>>();
    const peers = await runPeerSuite({
      ctx,
      log,
      between: async (workload, peer) => {
        const p = prepared.get(workload);
        if (!p) return;
        const t = await p.sample();
        await denseRefs.get(workload)?.sample();
        const byPeer = paired.get(workload) ?? new Map<string, number[]>();
        paired.set(workload, byPeer);
        byPeer.set(peer, [...(byPeer.get(peer) ?? []), t]);
      },
    });

    // Matmul 1024³.
    const flops = 2 * n * n * n;
    const matmul = await prepared.get(matmulName(n, n, n))!.finish(5);
    const naive = await timeGraph(
      ctx,
      matmulGraph(n),
      withMatmulVariant(tuning, matmulVariant("naive-16x16")),
      3,
    );
    const gflops = (t: number) => `${(flops / t / 1e6).toFixed(1).padStart(7)} GFLOP/s`;
    lines.push(
      "",
      `matmul 1024×1024×1024 f32 (moec kernel ${mm.name}; ${matmul.check})`,
      `  ${pad("moec", 34)}${ms(matmul.ms)} ${gflops(matmul.ms)}`,
      `  ${pad("moec naive kernel", 34)}${ms(naive.ms)} ${gflops(naive.ms)}   moec ${(naive.ms / matmul.ms).toFixed(2)}× faster`,
    );
    lines.push(
      ...peerLines(
        peers,
        matmulName(n, n, n),
        matmul.ms,
        { peer: "tfjs-webgpu", ratio: 3 },
        paired.get(matmulName(n, n, n)),
      ),
    );

    // One transformer block.
    const block = await prepared.get(blockName)!.finish(5);
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    lines.push(
      "",
      `transformer block d=${tc.d} T=${tc.T} heads=${tc.heads} B=${tc.B} (${block.kernels} kernels; ${block.check})`,
    );
    lines.push(
      `  ${pad("moec", 34)}${ms(block.ms)}   peak device memory ${mib(block.memory.peakBytes)} for ${mib(block.memory.totalBytes)} of tensors`,
    );
    lines.push(
      ...peerLines(
        peers,
        blockName,
        block.ms,
        { peer: "tfjs-webgpu", ratio: 4 },
        paired.get(blockName),
      ),
    );

    // The MoE layers: sparse top-k (the peers' workload) and moec's own dense soft mixture.
    for (const [i, mc] of moeCases.entries()) {
      const graph = moeGraphs[i]!;
      const mname = moeName(mc);
      const moe = await prepared.get(mname)!.finish(5, true);
      // The expert GEMMs' rate: useful FLOPs (k rows per token) over the expert kernels' time.
      const expertKernels = (moe.perKernel ?? []).filter((k) =>
        k.nodes.some((id) => graph.nodes[id]!.op === "expert_matmul"),
      );
      // Per-kernel times come from one submit per kernel, which adds overhead each: take the
      // expert kernels' share of that run, applied to the steady-state call time.
      const allMs = (moe.perKernel ?? []).reduce((a, k) => a + k.ms, 0);
      const expertMs = (moe.ms * expertKernels.reduce((a, k) => a + k.ms, 0)) / allMs;
      const expertFlops = 2 * 2 * mc.T * mc.topk * mc.d * mc.hidden;
      const expertRate = expertFlops / expertMs / 1e6;
      const dense = await denseRefs.get(mname)!.finish(5);
      const denseRate = expertFlops / dense.ms / 1e6;
      lines.push(
        "",
        `MoE layer T=${mc.T} d=${mc.d} hidden=${mc.hidden} E=${mc.E} top-${mc.topk}, dropless (${moe.check})`,
      );
      lines.push(
        `  ${pad("moec sparse top-k", 34)}${ms(moe.ms)}   ${moe.kernels} kernels, no host round trip; expert GEMMs ${expertMs.toFixed(1)} ms = ${expertRate.toFixed(1)} GFLOP/s`,
        `  ${pad("  the same GEMMs, dense", 34)}${ms(dense.ms)}   ${denseRate.toFixed(1)} GFLOP/s: the expert GEMMs reach ${((100 * expertRate) / denseRate).toFixed(0)}% of moec's plain matmul (goal ≥ 70%; ${dense.check})`,
      );
      if (mc.E <= 8) {
        const soft = await timeGraph(
          ctx,
          lowerSource(MOE_SOURCE(mc.d, mc.hidden, mc.E, "Soft()"), { N: mc.T }),
          tuning,
          1,
        );
        lines.push(
          `  ${pad("moec dense soft mixture (all E)", 34)}${ms(soft.ms)}   moec sparse ${(soft.ms / moe.ms).toFixed(2)}× faster  (${soft.check})`,
        );
      }
      lines.push(
        ...peerLines(peers, mname, moe.ms, { peer: "tfjs-webgpu", ratio: 5 }, paired.get(mname)),
      );
      const wasm = peers.timings.find((t) => t.name === mname && t.peer === "tfjs-wasm");
      if (wasm) {
        const own = paired.get(mname)?.get("tfjs-wasm");
        const moecMs = own && own.length > 0 ? median(own) : moe.ms;
        lines.push(
          `  goal: no slower than tfjs-wasm: ${moecMs <= wasm.ms ? "met" : "NOT met"} (${(moecMs / wasm.ms).toFixed(2)}× its time, moec calls between its calls)`,
        );
      }
    }
    // Adapters (issue #5): a mixed batch of 8 tasks, LoRA r=16 on every Linear of a d=768
    // block: one segmented forward against merged weights (the block without adapters, what
    // a merged LoRA costs) and against one forward per task.
    const ad = { d: 768, heads: 12, B: 8, T: 32 };
    const adapterGraph = (lora: string, perTask: boolean, B: number) =>
      prepareGraph(
        ctx,
        lowerSource(ADAPTED_BLOCK_SOURCE(ad.d, ad.heads, lora, perTask), { B, T: ad.T }),
        tuning,
      );
    // The three are sampled in turns, so their ratios compare the same moments.
    const runs = [
      await adapterGraph("per task LoRA(r: 16, alpha: 32.0)", true, ad.B),
      await adapterGraph("", false, ad.B),
      await adapterGraph("LoRA(r: 16, alpha: 32.0)", false, ad.B / 8),
    ];
    for (let round = 0; round < 5; round++) for (const r of runs) await r.sample();
    const [segmented, merged, single] = [
      await runs[0]!.finish(5),
      await runs[1]!.finish(5),
      await runs[2]!.finish(5),
    ];
    const separate = 8 * single.ms;
    lines.push(
      "",
      `adapters: d=${ad.d} block, B=${ad.B} sequences of ${ad.T} from 8 tasks, LoRA r=16 on all 6 Linears (${segmented.check})`,
      `  ${pad("moec segmented (one forward)", 34)}${ms(segmented.ms)}   ${segmented.kernels} kernels; ${(segmented.ms / merged.ms).toFixed(2)}× the merged forward (goal ≤ 1.3×: ${segmented.ms <= 1.3 * merged.ms ? "met" : "NOT met"})`,
      `  ${pad("merged weights (no adapter cost)", 34)}${ms(merged.ms)}`,
      `  ${pad("8 separate per-task forwards", 34)}${ms(separate)}   8 × ${single.ms.toFixed(1)} ms on 1 sequence each; segmented ${(separate / segmented.ms).toFixed(2)}× faster`,
    );
    return lines;
  } finally {
    await ctx.close();
  }
}
