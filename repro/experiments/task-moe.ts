/**
 * Reproduction 1, Task-based MoE (arXiv 2308.15772): routing by task beats task-agnostic
 * routing, which beats a dense layer, at equal active FLOPs (examples/repro/task-moe.moe).
 * 64 symbols, 16 tasks, target = a per-task permutation; accuracy over all 1024 (symbol,
 * task) pairs after 500 and 1000 steps, batch 256, Adam 3e-3. Pass, in every seed: each
 * task-routed arm > the task-agnostic arm > dense, by ≥ 5 points at 500 steps. Also reported:
 * I(task; expert) of the agnostic arm's top-1 choices over the pairs, in bits.
 */
import * as path from "node:path";
import {
  type Experiment,
  ROOT,
  type TrainRun,
  accuracyAt,
  inputsFile,
  mean,
  moec,
  mutualInformation,
  pct,
  readTensors,
  routingReport,
  secs,
  symbolMaps,
  table,
  train,
} from "../harness.js";

const FILE = path.join(ROOT, "examples", "repro", "task-moe.moe");
const ARMS = [
  { arm: "dense", program: "FitDense", model: "Dense" },
  { arm: "top-1, task-agnostic", program: "FitAgnostic", model: "Agnostic" },
  { arm: "task-level (task → expert)", program: "FitTaskLevel", model: "TaskLevel" },
  { arm: "token-level, task-aware", program: "FitTaskToken", model: "TaskToken" },
] as const;
const MARGIN = 0.05;

export const taskMoe: Experiment = {
  name: "task-moe",
  title: "Task-based MoE (2308.15772): task-routed > task-agnostic > dense at equal active FLOPs",
  async run(ctx) {
    const steps = ctx.quick ? 20 : 1000;
    const checkAt = ctx.quick ? 10 : 500;
    const runs = new Map<string, TrainRun[]>();
    const mi: number[] = [];
    for (const seed of ctx.seeds) {
      // The maps (the rules) and the samples both follow the seed.
      const { data, pairs } = await symbolMaps(ctx.dir, seed);
      for (const a of ARMS) {
        const started = performance.now();
        const run = await train(FILE, path.join(ctx.dir, `${a.program}-${seed}`), {
          program: a.program,
          data,
          evalData: pairs,
          evalEvery: checkAt,
          steps,
          batch: 256,
          seed,
        });
        runs.set(a.arm, [...(runs.get(a.arm) ?? []), run]);
        ctx.log(
          `  seed ${seed} ${a.arm}: ${pct(accuracyAt(run, checkAt))} at ${checkAt}, ${pct(accuracyAt(run, steps))} at ${steps} (${secs(started)})`,
        );
        if (a.program === "FitAgnostic") mi.push(await taskExpertInformation(run, pairs));
      }
    }
    const rowsAt = (step: number) =>
      ARMS.map((a) => ({ arm: a.arm, values: runs.get(a.arm)!.map((r) => accuracyAt(r, step)) }));
    for (const line of table(
      `accuracy over all pairs at ${checkAt} steps`,
      ctx.seeds,
      rowsAt(checkAt),
    ))
      ctx.log(line);
    for (const line of table(`accuracy over all pairs at ${steps} steps`, ctx.seeds, rowsAt(steps)))
      ctx.log(line);
    ctx.log(
      `I(task; expert) of the task-agnostic arm's choices: ${mi.map((x) => x.toFixed(2)).join(", ")} bits (mean ${mean(mi).toFixed(2)}; ≤ 3 for 8 experts, 0 = the task says nothing)`,
    );
    for (const a of ARMS.slice(1)) {
      ctx.log(`routing at the end, ${a.arm}, seed ${ctx.seeds[0]}:`);
      for (const line of routingReport(runs.get(a.arm)![0]!)) ctx.log(line);
    }
    if (ctx.quick) return undefined;

    // The claim, seed by seed, at 500 steps.
    const at = (arm: string, i: number) => accuracyAt(runs.get(arm)![i]!, checkAt);
    const failures: string[] = [];
    ctx.seeds.forEach((seed, i) => {
      const dense = at(ARMS[0].arm, i);
      const agnostic = at(ARMS[1].arm, i);
      if (agnostic - dense < MARGIN)
        failures.push(`seed ${seed}: agnostic ${pct(agnostic)} vs dense ${pct(dense)}`);
      for (const a of ARMS.slice(2)) {
        const routed = at(a.arm, i);
        if (routed - agnostic < MARGIN)
          failures.push(`seed ${seed}: ${a.arm} ${pct(routed)} vs agnostic ${pct(agnostic)}`);
      }
    });
    return failures.length === 0
      ? {
          pass: true,
          because: `in every seed at ${checkAt} steps, each task-routed arm beats the agnostic one and the agnostic one beats dense, by ≥ 5 points`,
        }
      : { pass: false, because: `under the 5-point margin: ${failures.join("; ")}` };
  },
};

/**
 * I(task; expert) over every pair: the agnostic model run on the pairs with its routing
 * traced (`moec run --trace-routing`), each pair's top-1 expert against its task.
 */
async function taskExpertInformation(run: TrainRun, pairs: string): Promise<number> {
  const trace = path.join(run.dir, "routing.safetensors");
  const task = readTensors(pairs, ["task"]).get("task")!;
  await moec([
    "run",
    FILE,
    "--model",
    "Agnostic",
    "--weights",
    run.model,
    "--inputs",
    inputsFile(pairs, ["tokens", "task"], path.join(run.dir, "pairs-inputs.safetensors")),
    "--trace-routing",
    trace,
    "--dim",
    `B=${task.length}`,
  ]);
  const experts = readTensors(trace, ["moe.experts"]).get("moe.experts")!;
  return mutualInformation(task, experts);
}
