/**
 * Training step speed (issue #13): the reference causal transformer (vocab 64, d 64, 2 layers,
 * 4 heads, FFN 4d, T 32, B 32, pre-LN) and the same with a 4-expert top-1 MoE FFN. One step is
 * forward, loss, backward and AdamW, as `moec train` runs it (compiled by the same pipeline,
 * run by the same TrainExecutor). Prints ms/step (median of 10 awaited steps after warm-up,
 * and pipelined: 10 steps submitted two in flight), dispatches per step, GFLOP/s, and peak
 * device memory against parameters + optimizer state.
 *
 * Peers measured on this machine for the issue (not rerun here: TF.js training code and
 * PyTorch are not part of the bench yet): TF.js WebGPU 1157 ms/step dense, 2038 ms/step MoE;
 * TF.js wasm 557 ms/step dense; PyTorch CPU one thread 18-25 dense, 28-31 MoE.
 */
import { compileGraph } from "../compiler/kernels/compile-graph.js";
import { DEFAULT_TUNING } from "../compiler/kernels/wgsl/variants.js";
import { adamwStepInputs } from "../compiler/library/optim/adamw.js";
import { analyze, assembleTrain, lowerTrain, nodeFileSystem } from "../compiler/pipeline.js";
import { loadTuning } from "../runtime/autotune.js";
import { type GpuContext, adapterSummary, openDevice } from "../runtime/device.js";
import type { TensorData } from "../runtime/executor.js";
import { paramSpecs } from "../runtime/run-model.js";
import { TrainExecutor } from "../runtime/train/train-executor.js";
import { initWeights } from "../runtime/weights.js";
import { median } from "./peers/workloads.js";

const V = 64;
const D = 64;
const LAYERS = 2;
const HEADS = 4;
const T = 32;
const B = 32;

const FFN_DENSE = `mlp = FFN(${D}, ${4 * D})`;
const FFN_MOE = `mlp = MoE(router: TopK(k: 1), experts: [FFN(${D}, ${4 * D}); 4])`;

const source = (ffn: string) => `import std.nn { Embedding, Linear, LayerNorm, Attention, FFN }
import std.route { MoE, TopK }
import std.optim { AdamW }
model LM() {
  in tokens: i32[B, T]
  out logits: f32[B, T, ${V}]
  embed = Embedding(${V}, ${D})
  pos = Embedding(${T}, ${D})
  x = embed(tokens) + pos(positions(tokens))
  repeat ${LAYERS} as blocks {
    ln_1 = LayerNorm(${D})
    attn = Attention(${D}, heads: ${HEADS}, causal: true)
    ln_2 = LayerNorm(${D})
    ${ffn}
    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))
  }
  ln_f = LayerNorm(${D})
  head = Linear(${D}, ${V})
  logits = head(ln_f(x))
}
train Fit() {
  in tokens: i32[B, T]
  in targets: i32[B, T]
  net = LM()
  loss = cross_entropy(net(tokens), targets)
  optimizer = AdamW(lr: 0.001)
}
`;

/** Forward FLOPs of the dense model (matmuls and attention's two T×T products); ×3 for a step. */
function stepFlops(): number {
  const perToken = LAYERS * (12 * D * D + 2 * T * D) + D * V;
  return 3 * 2 * B * T * perToken;
}

async function benchOne(ctx: GpuContext, name: string, ffn: string): Promise<string[]> {
  const file = `/bench/${name}.moe`;
  const analysis = analyze([file], nodeFileSystem(new Map([[file, source(ffn)]])));
  const lowered = lowerTrain(
    analysis,
    file,
    undefined,
    new Map(),
    new Map([
      ["B", B],
      ["T", T],
    ]),
  );
  if ("error" in lowered || !lowered.train)
    throw new Error(`cannot lower the ${name} bench: ${JSON.stringify(lowered)}`);
  const train = lowered.train;
  const step = assembleTrain(train);
  if ("error" in step) throw new Error(step.error);
  let exe: TrainExecutor | undefined;
  try {
    const program = compileGraph(step.graph, ctx.limits, loadTuning(ctx) ?? DEFAULT_TUNING);
    exe = await TrainExecutor.create(ctx, program, { inFlight: 2 });
    const state = new Map<string, TensorData>();
    for (const [k, t] of initWeights(paramSpecs(step.graph), 1)) state.set(k, t.data as TensorData);
    exe.setState(state);
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % V;
    const feeds = (t: number) =>
      new Map<string, TensorData>([
        ["tokens", Int32Array.from({ length: B * T }, rand)],
        ["targets", Int32Array.from({ length: B * T }, rand)],
        ...adamwStepInputs(t, 1e-3),
      ]);
    let t = 0;
    for (let i = 0; i < 3; i++) await (await exe.submit(feeds(++t))).result;
    const awaited: number[] = [];
    for (let i = 0; i < 10; i++) {
      const f = feeds(++t);
      const t0 = performance.now();
      await (
        await exe.submit(f)
      ).result;
      awaited.push(performance.now() - t0);
    }
    const batches = Array.from({ length: 10 }, () => feeds(++t));
    const t0 = performance.now();
    const pending = [];
    for (const f of batches) pending.push(await exe.submit(f));
    await Promise.all(pending.map((p) => p.result));
    const pipelined = (performance.now() - t0) / 10;
    const ms = median(awaited);
    const params = train.params.reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0);
    const mib = (b: number) => (b / 2 ** 20).toFixed(2);
    return [
      `${name.padEnd(6)} ${ms.toFixed(1).padStart(7)} ms/step awaited, ${pipelined.toFixed(1).padStart(7)} ms/step pipelined; ` +
        `${program.kernels.length} dispatches/step; ${((stepFlops() / ms) * 1e-6).toFixed(2)} GFLOP/s (dense-model FLOPs); ` +
        `peak ${mib(program.memory.peakBytes)} MiB for ${mib(params * 4 * 3)} MiB of parameters + AdamW state`,
    ];
  } finally {
    exe?.destroy();
  }
}

export async function benchTrain(): Promise<string[]> {
  const lines = [
    `reference LM: vocab ${V}, d ${D}, ${LAYERS} layers, ${HEADS} heads, FFN ${4 * D}, T ${T}, B ${B}; one step = forward + backward + AdamW`,
  ];
  // One device for both models, as `moec train` holds one for its run.
  const ctx = await openDevice();
  try {
    lines.push(`device: ${adapterSummary(ctx)}`);
    lines.push(...(await benchOne(ctx, "dense", FFN_DENSE)));
    lines.push(...(await benchOne(ctx, "moe", FFN_MOE)));
  } finally {
    await ctx.close();
  }
  lines.push(
    "peers (issue #13, measured earlier on this machine, not rerun): TF.js WebGPU 1157 (dense) / 2038 (MoE) ms/step, TF.js wasm 557 ms/step dense, PyTorch CPU 1 thread 18-25 / 28-31 ms/step",
  );
  return lines;
}
