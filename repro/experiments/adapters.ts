/**
 * Reproduction, per-task residual adapters (arXiv 2004.03829, a versatile generative LM):
 * a small decoder pretrained on copy, reverse, sort and shift (task tokens), then four new
 * tasks (reverse∘shift, descending sort, dedupe, a cipher) learnt by (a) full fine-tuning,
 * (b) per-task bottleneck adapters (each with its own LayerNorm, 2.81% of the model per task)
 * training only the adapters and the new task-token rows at 10× the learning rate, (c) the
 * new task-token rows only (also at 10×), (d) nothing (frozen).
 * Exact match (every answer token right) on held-out sequences, from `moec run` logits.
 *
 * Pass: (b) at most 2 points under (a) and (b) ≥ (c) + 10 points, on the mean over seeds and
 * in every seed, and the adapters' mixed-task batch equal to per-task runs (`moec run --task
 * NAME` on each task's rows) on the first seed (a check of kernels, not of training). "Within
 * 2 points" is read one-sided: adapters above full fine-tuning do not fail the claim (that
 * they lose little against it).
 *
 * Departure from the issue (in the title, adapters.moe and docs/reproductions.md): besides
 * one adapter after each block, one on the embedding output before block 0. After the blocks
 * alone the adapters reached 58% against full fine-tuning's 66% (descending sort 19% against
 * 58%): they cannot change what the frozen first attention sees.
 *
 * Sizes shrunk to the budget: vocab 8, length 6, 1000 pretraining and 250 tuning steps of
 * batch 64; full fine-tuning at 3e-3, the best of 1e-3, 2e-3, 3e-3, 5e-3 on seed 0.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { readSafetensorsFile, writeSafetensorsFile } from "../../runtime/safetensors.js";
import {
  type Experiment,
  type ReproContext,
  ROOT,
  type TrainRun,
  accuracyAt,
  dataGen,
  mean,
  argmaxAt,
  moec,
  pct,
  pickRows,
  readTensors,
  secs,
  table,
  train,
} from "../harness.js";

const FILE = path.join(ROOT, "examples", "repro", "adapters.moe");
/** Old tasks first: `moec data gen` gives task t the token vocab + 1 + t, so the new tasks'
 * tokens are rows the pretraining never trains (split off below, ids renumbered 0..3). */
const OLD = ["copy", "reverse", "sort", "shift"];
const NEW = [
  { name: "reverse_shift", spec: "reverse∘shift" },
  { name: "sort_desc", spec: "sort_desc" },
  { name: "dedupe", spec: "dedupe" },
  { name: "cipher", spec: "cipher:1" },
];
const VOCAB = 8;
const LENGTH = 6;
/** Each arm: its program, the model `moec run` evaluates, whether it takes the task ids. */
const ARMS = [
  { arm: "(a) full fine-tuning", program: "FullFinetune", model: "Decoder", task: false },
  { arm: "(b) per-task adapters", program: "AdapterTune", model: "Adapted", task: true },
  { arm: "(c) task embedding only", program: "TaskRowTune", model: "TaskRow", task: false },
  { arm: "(d) frozen", program: undefined, model: "Decoder", task: false },
] as const;
const GAP_TO_FULL = 0.02;
const OVER_EMBEDDING = 0.1;
/** Mixed batch against per-task runs: the largest |difference| of a logit allowed. */
const SAME = 1e-5;

export const adapters: Experiment = {
  name: "adapters",
  title:
    "Per-task residual adapters (2004.03829): adapters within 2 points of full fine-tuning, ≥ 10 above the task embedding alone (departure: an adapter on the embedding output too)",
  async run(ctx) {
    const preSteps = ctx.quick ? 10 : 1000;
    const steps = ctx.quick ? 10 : 250;
    // Seeds and, within a seed, the arms after pretraining are independent: they run together
    // as job slots allow (harness.ts), and the results are read back in seed order.
    const seeds = await Promise.all(ctx.seeds.map((seed) => runSeed(ctx, seed, preSteps, steps)));
    const exact = (arm: number) => seeds.map((s) => s.arms[arm]!.all);
    for (const line of table(
      `exact match on held-out sequences of the new tasks, after ${steps} steps`,
      ctx.seeds,
      ARMS.map((a, i) => ({ arm: a.arm, values: exact(i) })),
    ))
      ctx.log(line);
    NEW.forEach((t, k) => {
      const row = ARMS.map((_, i) => pct(mean(seeds.map((s) => s.arms[i]!.tasks[k]!))));
      ctx.log(`  ${t.name}: ${row.join(" / ")} (a / b / c / d, mean over seeds)`);
    });
    const same = seeds.flatMap((s) => (s.same === undefined ? [] : [s.same]));
    ctx.log(
      `  pretraining token accuracy on the old tasks: ${seeds.map((s) => pct(s.pretrained)).join(", ")}; mixed-task batch vs per-task runs, max |Δ logit|: ${same.map((x) => x.toExponential(1)).join(", ")}`,
    );
    if (ctx.quick) return undefined;

    const [full, adapter, embedding] = ARMS.map((_, i) => mean(exact(i)));
    const failures: string[] = [];
    // The mean first, then each seed (labelled), as the direction must hold in every seed.
    const runs = [
      { who: "means", full: full!, adapter: adapter!, embedding: embedding! },
      ...ctx.seeds.map((seed, k) => ({
        who: `seed ${seed}`,
        full: exact(0)[k]!,
        adapter: exact(1)[k]!,
        embedding: exact(2)[k]!,
      })),
    ];
    for (const r of runs) {
      if (r.full - r.adapter > GAP_TO_FULL)
        failures.push(
          `${r.who}: adapters ${pct(r.adapter)} more than 2 points under full fine-tuning ${pct(r.full)}`,
        );
      if (r.adapter - r.embedding < OVER_EMBEDDING)
        failures.push(
          `${r.who}: adapters ${pct(r.adapter)} < task embedding ${pct(r.embedding)} + 10 points`,
        );
    }
    const worst = Math.max(...same);
    if (!(worst <= SAME)) failures.push(`mixed-task batch differs from per-task runs by ${worst}`);
    return failures.length === 0
      ? {
          pass: true,
          because: `means: adapters ${pct(adapter!)} vs full ${pct(full!)} (at most 2 points under, in every seed), vs task embedding ${pct(embedding!)} (≥ 10 above, in every seed); mixed batch = per-task runs (max |Δ| ${worst.toExponential(1)})`,
        }
      : { pass: false, because: failures.join("; ") };
  },
};

/** One seed's results: pretraining accuracy, each arm's exact match (ARMS order), and the
 * mixed-batch check (first seed only). */
interface SeedResult {
  pretrained: number;
  arms: { all: number; tasks: number[] }[];
  same?: number;
}

async function runSeed(
  ctx: ReproContext,
  seed: number,
  preSteps: number,
  steps: number,
): Promise<SeedResult> {
  const gen = (kind: string, count: number, sample: number) =>
    dataGen(path.join(ctx.dir, `${kind}-${seed}.safetensors`), "sequences", [
      "--tasks",
      [...OLD, ...NEW.map((t) => t.spec)].join(","),
      "--vocab",
      String(VOCAB),
      "--length",
      String(LENGTH),
      "--count",
      String(count),
      "--seed",
      String(sample),
    ]);
  const all = await gen("train", 24000, seed);
  const held = await gen("eval", 2400, 1000 + seed);
  const [pre, tune] = split(all, ctx.dir, `train-${seed}`);
  const [preEval, tuneEval] = split(held, ctx.dir, `eval-${seed}`);

  const started = performance.now();
  const base = await train(FILE, path.join(ctx.dir, `Pretrain-${seed}`), {
    program: "Pretrain",
    data: pre,
    evalData: preEval,
    steps: preSteps,
    batch: 64,
    seed,
  });
  const pretrained = accuracyAt(base, preSteps);
  ctx.log(
    `  seed ${seed} pretraining: token accuracy ${pct(pretrained)} on the old tasks (${secs(started)})`,
  );
  let same: number | undefined;
  const arms = await Promise.all(
    ARMS.map(async (a) => {
      const started = performance.now();
      let weights = base.model;
      if (a.program !== undefined) {
        const run: TrainRun = await train(FILE, path.join(ctx.dir, `${a.program}-${seed}`), {
          program: a.program,
          data: tune,
          evalData: tuneEval,
          steps,
          batch: 64,
          seed,
          weights: [base.model],
        });
        weights = run.model;
      }
      const logits = await runModel(
        a.model,
        weights,
        tuneEval,
        a.task,
        ctx.dir,
        `${a.program ?? "Frozen"}-${seed}-eval`, // (a) and (d) both run Decoder, in parallel
      );
      const m = exactMatch(tuneEval, logits);
      ctx.log(
        `  seed ${seed} ${a.arm}: exact match ${pct(m.all)} (${NEW.map((t, i) => `${t.name} ${pct(m.tasks[i]!)}`).join(", ")}) (${secs(started)})`,
      );
      // One seed suffices for an equivalence of kernels (4 more processes, the budget's).
      if (a.task && seed === ctx.seeds[0])
        same = await segmentedVsPerTask(weights, tuneEval, logits, ctx.dir, seed);
      return m;
    }),
  );
  return { pretrained, arms, ...(same === undefined ? {} : { same }) };
}

/**
 * Splits a `sequences` file made with OLD then NEW tasks into the old tasks' examples and the
 * new ones' (task ids renumbered from 0, as the `New` task type numbers them).
 */
function split(file: string, dir: string, tag: string): [string, string] {
  const out: [string, string] = [
    path.join(dir, `${tag}-old.safetensors`),
    path.join(dir, `${tag}-new.safetensors`),
  ];
  if (out.every((f) => fs.existsSync(f))) return out;
  const f = readSafetensorsFile(file);
  const tokens = f.read("tokens");
  const targets = f.read("targets");
  const task = f.read("task").data;
  [false, true].forEach((isNew, k) => {
    const rows = [...task.keys()].filter((i) => task[i]! >= OLD.length === isNew);
    writeSafetensorsFile(
      out[k]!,
      new Map([
        ["tokens", { dtype: "I32", ...pickRows(tokens, rows) }],
        ["targets", { dtype: "I32", ...pickRows(targets, rows) }],
        [
          "task",
          {
            dtype: "I32",
            shape: [rows.length],
            data: rows.map((r) => task[r]! - (isNew ? OLD.length : 0)),
          },
        ],
      ]),
    );
  });
  return out;
}

/** `moec run MODEL` on the tokens (and task ids) of `data`; the logits file. */
async function runModel(
  model: string,
  weights: string,
  data: string,
  withTask: boolean,
  dir: string,
  tag: string,
  only?: { rows: number[]; task: string },
): Promise<string> {
  const f = readSafetensorsFile(data);
  const tokens = f.read("tokens");
  const task = f.read("task").data;
  const rows = only?.rows ?? [...task.keys()];
  const width = tokens.shape[1]!;
  const inputs = new Map([["tokens", { dtype: "I32" as const, ...pickRows(tokens, rows) }]]);
  if (withTask && !only)
    inputs.set("task", {
      dtype: "I32",
      shape: [rows.length],
      data: Int32Array.from(rows.map((r) => task[r]!)),
    });
  const inputsFile = path.join(dir, `${tag}-inputs.safetensors`);
  writeSafetensorsFile(inputsFile, inputs);
  const out = path.join(dir, `${tag}-logits.safetensors`);
  const args = ["run", FILE, "--model", model, "--weights", weights, "--inputs", inputsFile];
  args.push("--dim", `B=${rows.length}`, "--dim", `T=${width}`, "-o", out);
  if (only) args.push("--task", only.task);
  await moec(args);
  return out;
}

/** Exact match over all sequences and per task: every scored position's argmax is its target. */
function exactMatch(data: string, logitsFile: string): { all: number; tasks: number[] } {
  const d = readTensors(data, ["targets", "task"]);
  const targets = d.get("targets")!;
  const task = d.get("task")!;
  const logits = readTensors(logitsFile, ["logits"]).get("logits")!;
  const n = task.length;
  const width = targets.length / n;
  const classes = logits.length / targets.length;
  const right = NEW.map(() => 0);
  const count = NEW.map(() => 0);
  for (let i = 0; i < n; i++) {
    let ok = true;
    for (let j = 0; j < width && ok; j++) {
      const y = targets[i * width + j]!;
      if (y < 0) continue;
      ok = argmaxAt(logits, (i * width + j) * classes, classes) === y;
    }
    count[task[i]!]!++;
    if (ok) right[task[i]!]!++;
  }
  return {
    all: right.reduce((a, b) => a + b, 0) / n,
    tasks: right.map((r, t) => r / count[t]!),
  };
}

/**
 * The adapters on a mixed-task batch (the held-out set, tasks interleaved, `logits`) against
 * `moec run --task NAME` on each task's rows alone: the largest |difference| of a logit.
 */
async function segmentedVsPerTask(
  weights: string,
  data: string,
  mixedFile: string,
  dir: string,
  seed: number,
): Promise<number> {
  const task = readTensors(data, ["task"]).get("task")!;
  const mixed = readTensors(mixedFile, ["logits"]).get("logits")!;
  const perRow = mixed.length / task.length;
  let worst = 0;
  for (const [t, { name }] of NEW.entries()) {
    const rows = [...task.keys()].filter((i) => task[i] === t);
    const file = await runModel("Adapted", weights, data, true, dir, `Adapted-${seed}-${name}`, {
      rows,
      task: name,
    });
    const alone = readTensors(file, ["logits"]).get("logits")!;
    rows.forEach((r, j) => {
      for (let k = 0; k < perRow; k++)
        worst = Math.max(worst, Math.abs(alone[j * perRow + k]! - mixed[r * perRow + k]!));
    });
  }
  return worst;
}
