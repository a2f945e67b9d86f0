/**
 * Training step speed (issue #13): the reference causal transformer (vocab 64, d 64, 2 layers,
 * 4 heads, FFN 4d, T 32, B 32, pre-LN) and the same with a 4-expert top-1 MoE FFN. One step is
 * forward, loss, backward and AdamW, as `moec train` runs it (compiled by the same pipeline,
 * run by the same TrainExecutor). Prints ms/step (median of 10 awaited steps after warm-up,
 * and pipelined: 10 steps submitted two in flight), dispatches per step, GFLOP/s, and peak
 * device memory against parameters + optimizer state + saved activations.
 *
 * PyTorch runs the same two models on one CPU thread (bench/peers/torch_train.py) when
 * `python3 -c "import torch"` works, and its ms/step is printed beside moec's. TF.js trains
 * them too (bench/peers/tfjs-train.ts), on its WebGPU backend on moec's device and on its wasm
 * backend, in this process; a table puts every peer's ms/step beside moec's, and the issue's
 * two gates (dense step ≥ 4× TF.js WebGPU's speed, faster than TF.js wasm) print PASS/FAIL.
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
import {
  runTfjsTrain,
  type TfjsTrainModelResult,
  type TfjsTrainResult,
} from "./peers/tfjs-train.js";
import { median } from "./peers/workloads.js";

const V = 64;
const D = 64;
const LAYERS = 2;
const HEADS = 4;
const T = 32;
const B = 32;

const EXPERTS = 4;
const SHAPE = { V, D, layers: LAYERS, heads: HEADS, T, B, experts: EXPERTS };
/** Warm-up and timed steps, for moec and the TF.js peers alike. */
const WARMUP = 3;
const STEPS = 10;

const FFN_DENSE = `mlp = FFN(${D}, ${4 * D})`;
const FFN_MOE = `mlp = MoE(router: TopK(k: 1), experts: [FFN(${D}, ${4 * D}); ${EXPERTS}])`;

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
    for (let i = 0; i < WARMUP; i++) await (await exe.submit(feeds(++t))).result;
    const awaited: number[] = [];
    for (let i = 0; i < STEPS; i++) {
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
    [script, "--threads", "1", "--warmup", String(WARMUP), "--steps", String(STEPS)],
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

type ModelName = "dense" | "moe";
const MODELS: readonly ModelName[] = ["dense", "moe"];

/** A TF.js backend's run: its results per model, or why it did not run. */
type TfjsRun = TfjsTrainResult | { skipped: string };

type Timed = { ms: number } | { why: string };

/** The TF.js result for one model, if it ran (not skipped) and its loss fell. */
function tfjsTimed(run: TfjsRun, model: ModelName): Timed {
  if ("skipped" in run) return { why: run.skipped };
  const r = run.results.find((x) => x.model === model);
  if (!r) return { why: "not run" };
  if ("skipped" in r) return { why: r.skipped };
  if (!lossFalls(r.losses)) return { why: "its loss did not fall (a broken peer)" };
  return { ms: r.ms };
}

/** Finite losses, the last below the first: the update moves the weights downhill. */
function lossFalls(losses: readonly number[]): boolean {
  return (
    losses.length >= 2 && losses.every(Number.isFinite) && losses[losses.length - 1]! < losses[0]!
  );
}

/** One line per model of a TF.js backend: ms/step, parameters and the loss sanity check. */
function tfjsLines(label: string, run: TfjsRun, moecParams: Record<ModelName, number>): string[] {
  if ("skipped" in run) return [`  ${label} skipped: ${run.skipped}`];
  const lines = [`  ${label} (${run.description}):`];
  for (const r of run.results as TfjsTrainModelResult[]) {
    if ("skipped" in r) {
      lines.push(`    ${r.model.padEnd(6)} skipped: ${r.skipped}`);
      continue;
    }
    const l = r.losses;
    const same =
      r.params === moecParams[r.model]
        ? ""
        : ` (TF.js has ${r.params}, moec ${moecParams[r.model]})`;
    lines.push(
      `    ${r.model.padEnd(6)} ${r.ms.toFixed(1).padStart(7)} ms/step (min ${r.minMs.toFixed(1)}), ${gflops(r.ms)} GFLOP/s, ${r.params} parameters${same}; ` +
        `loss ${l[0]!.toFixed(4)} → ${l[l.length - 1]!.toFixed(4)} over the ${l.length} timed steps: ` +
        (lossFalls(l) ? "falls, ok" : "DOES NOT FALL: this peer is broken, its time means nothing"),
    );
  }
  return lines;
}

export async function benchTrain(): Promise<string[]> {
  const lines = [
    `reference LM: vocab ${V}, d ${D}, ${LAYERS} layers, ${HEADS} heads, FFN ${4 * D}, T ${T}, B ${B}; one step = forward + backward + AdamW`,
  ];
  // PyTorch first, alone on the CPU (lavapipe's threads would take its core).
  const torch = runTorchPeer();
  // One device for moec's two models and TF.js WebGPU, as `moec train` holds one for its run.
  const ctx = await openDevice();
  const moec: Record<ModelName, MoecStep | undefined> = { dense: undefined, moe: undefined };
  let webgpu: TfjsRun;
  let wasm: TfjsRun;
  try {
    lines.push(`device: ${adapterSummary(ctx)}`);
    moec.dense = await benchOne(ctx, "dense", FFN_DENSE);
    lines.push(moec.dense.line);
    moec.moe = await benchOne(ctx, "moe", FFN_MOE);
    lines.push(moec.moe.line);
    const runs = { warmup: WARMUP, steps: STEPS };
    webgpu = await runTfjsTrain("webgpu", SHAPE, MODELS, { ...runs, ctx });
    // The wasm MoE (dense-masked, ~0.8 s/step here) runs only if its steps fit in a minute.
    wasm = await runTfjsTrain("wasm", SHAPE, MODELS, { ...runs, budgetMs: { moe: 60_000 } });
  } finally {
    await ctx.close();
  }
  const m = { dense: moec.dense, moe: moec.moe };
  const params = { dense: m.dense.params, moe: m.moe.params };

  if ("skipped" in torch) lines.push(`PyTorch peer skipped: ${torch.skipped}`);
  else {
    lines.push(
      `PyTorch ${torch.torch} CPU (${torch.python}), ${torch.threads} thread (bench/peers/torch_train.py, MoE sparse by index):`,
    );
    for (const name of MODELS) {
      const t = torch[name];
      const same =
        t.params === m[name].params
          ? ""
          : ` (PyTorch has ${t.params} parameters, moec ${m[name].params})`;
      lines.push(
        `  ${name.padEnd(6)} ${t.ms.toFixed(1).padStart(7)} ms/step (min ${t.min_ms.toFixed(1)}), ${gflops(t.ms)} GFLOP/s; ` +
          `moec/PyTorch ${(m[name].ms / t.ms).toFixed(1)}× (goal ≤ 2×)${same}`,
      );
    }
  }

  const version = [webgpu, wasm].find((r): r is TfjsTrainResult => !("skipped" in r))?.version;
  lines.push(
    `TF.js${version ? ` ${version}` : ""} (bench/peers/tfjs-train.ts; tf.train.adam: Adam without AdamW's decoupled weight decay; ` +
      `MoE dense-masked: all ${EXPERTS} experts on every token, gated by top-1 p; one seeded batch reused, so the loss must fall):`,
    ...tfjsLines("WebGPU", webgpu, params),
    ...tfjsLines("wasm", wasm, params),
  );

  // Side by side: each peer's median ms/step and moec's speedup over it (peer ms / moec ms;
  // above 1× moec is faster).
  const cell = (ms: number | undefined, moecMs: number) =>
    ms === undefined ? "—" : `${ms.toFixed(1)} (${(ms / moecMs).toFixed(2)}×)`;
  const cols = ["moec", "TF.js WebGPU", "TF.js wasm", "PyTorch"];
  const row = (cells: string[]) =>
    `  ${cells[0]!.padEnd(6)} ${cells
      .slice(1)
      .map((c, i) => c.padStart(i === 0 ? 8 : 18))
      .join("")}`;
  lines.push(
    `ms/step side by side (median of ${STEPS} awaited steps; in parentheses moec's speedup, peer ms / moec ms):`,
    row(["model", ...cols]),
  );
  for (const name of MODELS) {
    const mm = m[name].ms;
    const tw = tfjsTimed(webgpu, name);
    const ta = tfjsTimed(wasm, name);
    const pt = "skipped" in torch ? undefined : torch[name].ms;
    lines.push(
      row([
        name,
        mm.toFixed(1),
        cell("ms" in tw ? tw.ms : undefined, mm),
        cell("ms" in ta ? ta.ms : undefined, mm),
        cell(pt, mm),
      ]),
    );
  }

  // Issue #13's gates, from this run's dense step.
  const gate = (what: string, peer: Timed, min: number, strict: boolean) => {
    if (!("ms" in peer)) return `gate: ${what}: SKIPPED (${peer.why})`;
    const speedup = peer.ms / m.dense.ms;
    const pass = strict ? speedup > min : speedup >= min;
    return `gate: ${what}: ${pass ? "PASS" : "FAIL"} (${speedup.toFixed(2)}×: ${peer.ms.toFixed(1)} vs ${m.dense.ms.toFixed(1)} ms/step)`;
  };
  lines.push(
    gate("moec's dense step ≥ 4× faster than TF.js WebGPU", tfjsTimed(webgpu, "dense"), 4, false),
    gate("moec's dense step faster than TF.js wasm", tfjsTimed(wasm, "dense"), 1, true),
    // And the goal on sparse layers: an MoE step costs at most 1.5 dense steps.
    `goal: moec's MoE step ≤ 1.5× its dense step: ${m.moe.ms <= 1.5 * m.dense.ms ? "PASS" : "FAIL"} (${(m.moe.ms / m.dense.ms).toFixed(2)}×: ${m.moe.ms.toFixed(1)} vs ${m.dense.ms.toFixed(1)} ms/step)`,
    "note: issue #13's numbers, measured earlier on this machine: TF.js WebGPU 1157 (dense) / 2038 (MoE dense-masked) ms/step, wasm 557 ms/step dense",
  );
  return lines;
}
