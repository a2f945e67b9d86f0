/**
 * The first run of the README's GPT-2 (`moec run examples/gpt2.moe --dim B=1 --dim T=16`) with
 * an empty shader cache, as a new user's first command meets it (issue #16). Each measurement
 * is a fresh process with its own empty MESA_SHADER_CACHE_DIR, so nothing compiled earlier
 * helps. Two ways side by side:
 *
 *   - before: what moec did until issue #16: every kernel compiled by lavapipe at its first
 *     dispatch, one after the other on the device's queue thread, and every matmul with the
 *     16×16 register block (DEFAULT_TUNING without its small-matmul tier);
 *   - now: kernels compiled before the first call on this device and sibling devices at once
 *     (runtime/compile-kernels.ts), small matmuls with a variant that compiles 6× faster.
 *
 * Reported: kernel compile + first call (what the user waits for after the model is lowered),
 * and the whole `moec run` command's wall time now. Medians of `REPEATS` runs, alternated.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { performance } from "node:perf_hooks";
import { lowerFromSource } from "../cli/model-options.js";
import { compileGraph } from "../compiler/kernels/compile-graph.js";
import { DEFAULT_TUNING } from "../compiler/kernels/wgsl/variants.js";
import { openDevice } from "../runtime/device.js";
import { Executor, type TensorData } from "../runtime/executor.js";
import { prepareInputs, prepareWeights } from "../runtime/run-model.js";
import { median } from "./peers/workloads.js";

const REPEATS = 3;
const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "../..");
const README_ARGS = ["examples/gpt2.moe", "--dim", "B=1", "--dim", "T=16"];

interface ChildResult {
  compileMs: number;
  firstMs: number;
  kernels: number;
  workers: number;
}

/** In the child: one cold start, the old way or the new, printed as JSON. */
async function coldStart(mode: "before" | "now"): Promise<ChildResult> {
  const { lowered } = lowerFromSource(path.join(repoRoot, "examples/gpt2.moe"), {
    dim: ["B=1", "T=16"],
  });
  const ctx = await openDevice();
  try {
    const { smallMatmul: _, ...withoutSmallTier } = DEFAULT_TUNING;
    const program = compileGraph(
      lowered.graph,
      ctx.limits,
      mode === "before" ? withoutSmallTier : DEFAULT_TUNING,
    );
    const weights = prepareWeights(lowered.graph, undefined, 0, {});
    const inputs = prepareInputs(lowered.inputs, undefined, 0, undefined, {});
    const t0 = performance.now();
    const exe = await Executor.create(ctx, program, mode === "now" ? { compile: {} } : {});
    const compileMs = performance.now() - t0;
    try {
      exe.setParams(new Map([...weights].map(([k, t]) => [k, t.data as TensorData])));
      const t1 = performance.now();
      await exe.run(new Map([...inputs].map(([k, t]) => [k, t.data as TensorData])));
      const firstMs = performance.now() - t1;
      return { compileMs, firstMs, kernels: exe.compiled.kernels, workers: exe.compiled.workers };
    } finally {
      exe.destroy();
    }
  } finally {
    await ctx.close();
  }
}

function freshCache(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "moec-cold-"));
}

function measureChild(mode: "before" | "now"): ChildResult {
  const cache = freshCache();
  try {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), mode], {
      cwd: repoRoot,
      encoding: "utf8",
      env: { ...process.env, MESA_SHADER_CACHE_DIR: cache },
    });
    if (r.status !== 0) throw new Error(`cold start (${mode}) failed:\n${r.stderr}`);
    return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as ChildResult;
  } finally {
    fs.rmSync(cache, { recursive: true, force: true });
  }
}

function measureCli(): number {
  const cache = freshCache();
  try {
    const t0 = performance.now();
    const r = spawnSync(
      process.execPath,
      [path.join(repoRoot, "bin/moec.js"), "run", ...README_ARGS],
      {
        cwd: repoRoot,
        encoding: "utf8",
        env: { ...process.env, MESA_SHADER_CACHE_DIR: cache },
      },
    );
    if (r.status !== 0) throw new Error(`moec run failed:\n${r.stderr}`);
    return performance.now() - t0;
  } finally {
    fs.rmSync(cache, { recursive: true, force: true });
  }
}

export function benchColdStart(): string[] {
  const before: number[] = [];
  const now: number[] = [];
  const cli: number[] = [];
  let last: ChildResult | undefined;
  for (let i = 0; i < REPEATS; i++) {
    const b = measureChild("before");
    before.push(b.compileMs + b.firstMs);
    last = measureChild("now");
    now.push(last.compileMs + last.firstMs);
    cli.push(measureCli());
  }
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const mb = median(before);
  const mn = median(now);
  return [
    `README GPT-2 (B=1, T=16), empty shader cache, ${os.availableParallelism()} cores, median of ${REPEATS}:`,
    `  before (compile at first dispatch, 16×16 blocks):  ${s(mb)}  [${before.map(s).join(", ")}]`,
    `  now (${last!.kernels} kernels on ${last!.workers} devices, small tier): ${s(mn)}  [${now.map(s).join(", ")}]  ratio ${(mn / mb).toFixed(2)} (issue #16 asks ≤ 0.50: ${mn <= mb / 2 ? "PASS" : "FAIL"})`,
    `  whole \`moec run\` command now (start to exit):    ${s(median(cli))}  [${cli.map(s).join(", ")}]`,
  ];
}

if (process.argv[2] === "before" || process.argv[2] === "now") {
  const result = await coldStart(process.argv[2]);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
