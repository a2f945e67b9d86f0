/**
 * `npm run repro -- NAME... [--seeds N] [--jobs N] [--quick] [--out DIR]`: the seed papers' claims in
 * miniature (issue #14), each a `.moe` file under examples/repro/ trained with `moec train`.
 * `npm run repro -- --list` prints the names, one a line. Exit status 1 when a claim fails.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { Command } from "commander";
import { type Experiment, ROOT, setJobs } from "./harness.js";
import { adapters } from "./experiments/adapters.js";
import { distill } from "./experiments/distill.js";
import { groupedLora } from "./experiments/grouped-lora.js";
import { mixtureOfTokens } from "./experiments/mixture-of-tokens.js";
import { taskMoe } from "./experiments/task-moe.js";

// In the seed papers' order (seeds.md): task MoE, AT-MoE, MoT, adapters, ROaD.
const EXPERIMENTS: readonly Experiment[] = [
  taskMoe,
  groupedLora,
  mixtureOfTokens,
  adapters,
  distill,
];

const program = new Command("repro")
  .description("reproduce the seed papers' claims in miniature with moec train")
  .argument("[names...]", "experiments to run (--list shows them)")
  .option("--list", "print the experiments' names, one a line")
  .option("--seeds <n>", "seeds 0..N-1", "3")
  .option("--quick", "one seed, a few steps: that it runs end to end (CI); no verdict")
  .option("--out <dir>", "where data and runs go", path.join(ROOT, "runs", "repro"))
  .option("--jobs <n>", "moec processes at once (independent arms run together)", "2")
  .showHelpAfterError();
program.parse();
const opts = program.opts<{
  list?: boolean;
  seeds: string;
  quick?: boolean;
  out: string;
  jobs: string;
}>();

if (opts.list) {
  for (const e of EXPERIMENTS) console.log(e.name);
  process.exit(0);
}
const names = program.args;
if (names.length === 0) program.error("name an experiment (npm run repro -- --list)");
const chosen = names.map((n) => {
  const e = EXPERIMENTS.find((x) => x.name === n);
  if (!e)
    program.error(`no experiment "${n}"; there are: ${EXPERIMENTS.map((x) => x.name).join(", ")}`);
  return e!;
});
const count = Number(opts.seeds);
if (!Number.isInteger(count) || count < 1) program.error(`--seeds expects a positive integer`);
const jobs = Number(opts.jobs);
if (!Number.isInteger(jobs) || jobs < 1) program.error(`--jobs expects a positive integer`);
setJobs(jobs);
const seeds = opts.quick ? [0] : Array.from({ length: count }, (_, i) => i);

let failed = false;
for (const e of chosen) {
  const dir = path.join(opts.out, e.name);
  fs.mkdirSync(dir, { recursive: true });
  console.log(`== ${e.name}: ${e.title}`);
  console.log(
    `   seeds ${seeds.join(", ")}${opts.quick ? " (quick: a few steps, no verdict)" : ""}; files in ${path.relative(process.cwd(), dir) || "."}`,
  );
  const started = performance.now();
  const verdict = await e.run({
    seeds,
    quick: opts.quick === true,
    dir,
    log: (l) => console.log(l),
  });
  const minutes = ((performance.now() - started) / 60000).toFixed(1);
  if (verdict) {
    console.log(`${verdict.pass ? "PASS" : "FAIL"} ${e.name} (${minutes} min): ${verdict.because}`);
    failed ||= !verdict.pass;
  } else console.log(`ran ${e.name} end to end (${minutes} min)`);
  console.log();
}
process.exit(failed ? 1 : 0);
