/**
 * Training step speed (issue #13): the reference causal transformer (vocab 64, d 64, 2 layers,
 * 4 heads, FFN 4d, T 32, B 32, pre-LN) and the same with a 4-expert top-1 MoE FFN. One step is
 * forward, loss, backward and AdamW, as `moec train` runs it (compiled by the same pipeline,
 * run by the same TrainExecutor). Prints ms/step (median of 10 awaited steps after warm-up,
 * and pipelined: 10 steps submitted two in flight), dispatches per step, GFLOP/s, and peak
 * device memory against parameters + optimizer state + saved activations.
 *
 * PyTorch runs the same two models on one CPU thread (bench/peers/torch_train.py) when
 * `python3 -c "import torch"` works, and its ms/step is printed beside moec's. TF.js has no
 * training code in the bench: its numbers (measured for the issue) are printed as a reference.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { type IrGraph, inputsOf, numel } from "../compiler/ir/graph.js";
import { fusionOf } from "../compiler/ir/ops.js";
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

const gflops = (ms: number) => ((stepFlops() / ms) * 1e-6).toFixed(2);
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(2);

/**
 * Bytes of the forward values the backward reads (the activations a step must keep from its
 * forward to its backward): nodes of the lowered forward (ids below `forwardNodes`) that are
 * not parameters, inputs or constants and that a later node reads, views counted as the value
 * they view. Every IR value is 4 bytes per element.
 */
function savedActivationBytes(graph: IrGraph, forwardNodes: number): number {
  const base = (id: number): number => {
    const n = graph.nodes[id]!;
    return fusionOf(n).kernel === "view" ? base(inputsOf(n)[0]!) : id;
  };
  const saved = new Set<number>();
  for (const n of graph.nodes.slice(forwardNodes))
    for (const i of inputsOf(n)) {
      if (i >= forwardNodes) continue;
      const b = base(i);
      const kernel = fusionOf(graph.nodes[b]!).kernel;
      if (kernel !== "leaf" && kernel !== "const") saved.add(b);
    }
  return [...saved].reduce((a, id) => a + 4 * numel(graph.nodes[id]!.shape), 0);
}

interface MoecStep {
  /** Median awaited ms/step. */
  ms: number;
  params: number;
  line: string;
}

async function benchOne(ctx: GpuContext, name: string, ffn: string): Promise<MoecStep> {
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
    const trainable = train.params
      .filter((p) => p.trainable)
      .reduce((a, p) => a + p.shape.reduce((x, y) => x * y, 1), 0);
    const saved = savedActivationBytes(step.graph, train.graph.nodes.length);
    return {
      ms,
      params,
      line:
        `${name.padEnd(6)} ${ms.toFixed(1).padStart(7)} ms/step awaited, ${pipelined.toFixed(1).padStart(7)} ms/step pipelined; ` +
        `${program.kernels.length} dispatches/step; ${gflops(ms)} GFLOP/s (dense-model FLOPs); ` +
        `peak ${mib(program.memory.peakBytes)} MiB for ${mib(params * 4 + trainable * 8)} MiB of parameters + AdamW state ` +
        `+ ${mib(saved)} MiB of saved activations`,
    };
  } finally {
    exe?.destroy();
  }
}

/** What the PyTorch peer prints (bench/peers/torch_train.py). */
interface TorchResult {
  torch: string;
  /** The interpreter that ran it (set by runTorchPeer). */
  python: string;
  threads: number;
  dense: { params: number; ms: number; min_ms: number };
  moe: { params: number; ms: number; min_ms: number };
}

/** bench/peers/torch_train.py, found from this module (bench/ or .bench-build/bench/). */
function torchScript(): string | undefined {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = path.join(dir, "bench", "peers", "torch_train.py");
    if (fs.existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  return undefined;
}

/**
 * The Python that imports torch: $PYTHON if set, else `python3`, else the system's
 * /usr/bin/python3 (where Debian's python3-torch lives when a pyenv or venv python3 comes
 * first on PATH). Otherwise why not, from the first candidate.
 */
function torchPython(): { python: string } | { skipped: string } {
  const candidates = process.env.PYTHON ? [process.env.PYTHON] : ["python3", "/usr/bin/python3"];
  let first: string | undefined;
  for (const python of candidates) {
    const probe = spawnSync(python, ["-c", "import torch"], { encoding: "utf8" });
    if (probe.status === 0) return { python };
    const why = probe.error
      ? `${python} not found`
      : `${python} -c "import torch" fails: ${probe.stderr.trim().split("\n").pop() ?? `exit ${probe.status}`}`;
    first ??= why;
  }
  return { skipped: `${first}; scripts/setup.sh --bench installs torch` };
}

/** Runs the PyTorch peer, or says why it is skipped. */
export function runTorchPeer(): TorchResult | { skipped: string } {
  const found = torchPython();
  if ("skipped" in found) return found;
  const script = torchScript();
  if (!script) return { skipped: "bench/peers/torch_train.py not found" };
  const run = spawnSync(
    found.python,
    [script, "--threads", "1", "--warmup", "3", "--steps", "10"],
    {
      encoding: "utf8",
      timeout: 300_000,
    },
  );
  if (run.status !== 0) {
    const why = (run.stderr || String(run.error ?? "")).trim().split("\n").pop();
    return { skipped: `torch_train.py failed: ${why}` };
  }
  return { ...(JSON.parse(run.stdout) as TorchResult), python: found.python };
}

export async function benchTrain(): Promise<string[]> {
  const lines = [
    `reference LM: vocab ${V}, d ${D}, ${LAYERS} layers, ${HEADS} heads, FFN ${4 * D}, T ${T}, B ${B}; one step = forward + backward + AdamW`,
  ];
  // PyTorch first, alone on the CPU (lavapipe's threads would take its core).
  const torch = runTorchPeer();
  // One device for both models, as `moec train` holds one for its run.
  const ctx = await openDevice();
  const moec: Record<"dense" | "moe", MoecStep | undefined> = { dense: undefined, moe: undefined };
  try {
    lines.push(`device: ${adapterSummary(ctx)}`);
    moec.dense = await benchOne(ctx, "dense", FFN_DENSE);
    lines.push(moec.dense.line);
    moec.moe = await benchOne(ctx, "moe", FFN_MOE);
    lines.push(moec.moe.line);
  } finally {
    await ctx.close();
  }
  if ("skipped" in torch) lines.push(`PyTorch peer skipped: ${torch.skipped}`);
  else {
    lines.push(
      `PyTorch ${torch.torch} CPU (${torch.python}), ${torch.threads} thread (bench/peers/torch_train.py, MoE sparse by index):`,
    );
    for (const name of ["dense", "moe"] as const) {
      const t = torch[name];
      const m = moec[name]!;
      const same =
        t.params === m.params ? "" : ` (PyTorch has ${t.params} parameters, moec ${m.params})`;
      lines.push(
        `  ${name.padEnd(6)} ${t.ms.toFixed(1).padStart(7)} ms/step (min ${t.min_ms.toFixed(1)}), ${gflops(t.ms)} GFLOP/s; ` +
          `moec/PyTorch ${(m.ms / t.ms).toFixed(1)}× (goal ≤ 2×)${same}`,
      );
    }
  }
  lines.push(
    "TF.js peers (issue #13, measured earlier on this machine, not rerun): WebGPU 1157 (dense) / 2038 (MoE) ms/step, wasm 557 ms/step dense",
  );
  return lines;
}
