/**
 * Reproduction 3, Mixture of Tokens (arXiv 2310.15961), on the task of reproduction 1
 * (examples/repro/mixture-of-tokens.moe): dense FFN of width 16 against a FLOP-matched MoT
 * (groups of 8 tokens along the batch, 16 experts of width 8, softmax over the group), then
 * the transition to `discrete: true` with a few hundred tuning steps from the MoT's weights.
 * Pass, in every seed: the steps MoT takes to reach the dense model's final training loss
 * ≤ dense steps / 1.5; the tuned sparse model's loss over all pairs within 5% of the MoT's.
 */
import * as path from "node:path";
import {
  type Experiment,
  ROOT,
  type TrainRun,
  mean,
  symbolMaps,
  table,
  train,
} from "../harness.js";

const FILE = path.join(ROOT, "examples", "repro", "mixture-of-tokens.moe");
/** The tuning's first evaluation: what the discrete model loses before it adapts. */
const EARLY = 10;
/** Training losses are averaged over this many steps (one batch of 256 is noisy). */
const WINDOW = 25;

export const mixtureOfTokens: Experiment = {
  name: "mixture-of-tokens",
  title:
    "Mixture of Tokens (2310.15961): MoT reaches dense's loss in ≤ 1/1.5 of the steps; discrete tuning keeps it within 5%",
  async run(ctx) {
    // MoT's lead grows with training (one seed: 1.37× at 1000 steps, 1.64× at 2000, 1.93× at
    // 3000): at 1000 the dense model has barely begun to fit the pairs.
    const steps = ctx.quick ? 30 : 2000;
    const tuneSteps = ctx.quick ? 10 : 500;
    const rows = {
      denseLoss: [] as number[],
      motReach: [] as number[],
      speedup: [] as number[],
      motEval: [] as number[],
      tunedEval: [] as number[],
      ratio: [] as number[],
      early: [] as number[],
    };
    for (const seed of ctx.seeds) {
      const { data, pairs } = await symbolMaps(ctx.dir, seed);
      const base = { data, evalData: pairs, batch: 256, seed };
      const dense = await train(FILE, path.join(ctx.dir, `dense-${seed}`), {
        ...base,
        program: "FitDense",
        steps,
      });
      const mot = await train(FILE, path.join(ctx.dir, `mot-${seed}`), {
        ...base,
        program: "FitMoT",
        steps,
      });
      const tuned = await train(FILE, path.join(ctx.dir, `tuned-${seed}`), {
        ...base,
        program: "TuneDiscrete",
        steps: tuneSteps,
        evalEvery: EARLY,
        weights: [mot.model],
      });
      const target = smoothed(dense).at(-1)!;
      const reach = smoothed(mot).findIndex((l) => l <= target);
      const motReach = reach < 0 ? Number.POSITIVE_INFINITY : reach + WINDOW;
      const motEval = finalEval(mot);
      const tunedEval = finalEval(tuned);
      const early = tuned.evals.find((e) => e.step === EARLY)?.eval_loss ?? Number.NaN;
      rows.denseLoss.push(target);
      rows.motReach.push(motReach);
      rows.speedup.push(steps / motReach);
      rows.motEval.push(motEval);
      rows.tunedEval.push(tunedEval);
      rows.ratio.push(tunedEval / motEval);
      rows.early.push(early);
      ctx.log(
        `  seed ${seed}: dense ends at loss ${target.toFixed(3)} after ${steps} steps; MoT reaches it at step ${motReach} (${(steps / motReach).toFixed(2)}× fewer); eval loss MoT ${motEval.toFixed(3)}, tuned discrete ${tunedEval.toFixed(3)} after ${tuneSteps} steps`,
      );
    }
    const num = (d: number) => (x: number) => (Number.isFinite(x) ? x.toFixed(d) : "never");
    for (const line of table(
      "steps and losses",
      ctx.seeds,
      [
        { arm: `dense training loss at ${steps} (mean of ${WINDOW})`, values: rows.denseLoss },
        { arm: "MoT steps to reach it", values: rows.motReach },
        { arm: "dense steps / MoT steps (≥ 1.5)", values: rows.speedup },
        { arm: "MoT eval loss over all pairs", values: rows.motEval },
        { arm: `discrete eval loss after ${EARLY} tuning steps`, values: rows.early },
        { arm: `tuned discrete eval loss (${tuneSteps} steps)`, values: rows.tunedEval },
        { arm: "tuned / MoT (≤ 1.05)", values: rows.ratio },
      ],
      num(3),
    ))
      ctx.log(line);
    if (ctx.quick) return undefined;
    const slow = ctx.seeds.filter((_, i) => !(rows.speedup[i]! >= 1.5));
    const lossy = ctx.seeds.filter((_, i) => !(rows.ratio[i]! <= 1.05));
    const pass = slow.length === 0 && lossy.length === 0;
    return {
      pass,
      because: pass
        ? `in every seed MoT needs ≥ 1.5× fewer steps (mean ${mean(rows.speedup).toFixed(2)}×) and the tuned discrete model's loss is ≤ 1.05× MoT's (at most ${Math.max(...rows.ratio).toFixed(3)}×)`
        : [
            slow.length ? `MoT under 1.5× in seeds ${slow.join(", ")}` : "",
            lossy.length ? `tuned discrete over 5% worse in seeds ${lossy.join(", ")}` : "",
          ]
            .filter(Boolean)
            .join("; "),
    };
  },
};

/** Mean training loss over the WINDOW steps ending at each step (from the WINDOW-th on). */
function smoothed(run: TrainRun): number[] {
  const losses = run.steps.map((s) => s.loss);
  const out: number[] = [];
  for (let i = WINDOW - 1; i < losses.length; i++)
    out.push(mean(losses.slice(i - WINDOW + 1, i + 1)));
  return out;
}

function finalEval(run: TrainRun): number {
  const e = run.evals.at(-1);
  if (!e) throw new Error(`${run.dir}: no evaluation`);
  return e.eval_loss;
}
