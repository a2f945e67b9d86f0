/**
 * What every reproduction shares: running `moec` as a user would (the built CLI, one child
 * process per command, so a run here is a run anyone can repeat by hand), reading a run's
 * metrics, and printing tables of seeds × arms.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { readSafetensorsFile, writeSafetensorsFile } from "../runtime/safetensors.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/**
 * The built CLI, as a user runs it; MOEC_FROM_SOURCE=1 runs cli/main.ts through tsx instead
 * (the tests, which must see the sources as they are, not the last build).
 */
const MOEC =
  process.env.MOEC_FROM_SOURCE === "1"
    ? ["--import", "tsx", path.join(ROOT, "cli", "main.ts")]
    : [path.join(ROOT, "bin", "moec.js")];

/** How a reproduction runs: its seeds, its budget, where its files go, where it prints. */
export interface ReproContext {
  seeds: number[];
  /** CI's smoke run: one seed and a few steps; the table prints, the claim is not judged. */
  quick: boolean;
  /** A directory of its own for data and runs. */
  dir: string;
  log: (line: string) => void;
}

export interface Experiment {
  name: string;
  /** One line: the paper and its claim. */
  title: string;
  /** Runs every arm and seed, prints its tables; the verdict, or undefined in quick mode. */
  run: (ctx: ReproContext) => Promise<Verdict | undefined>;
}

export interface Verdict {
  pass: boolean;
  /** What held or did not, in numbers. */
  because: string;
}

/**
 * How many `moec` processes run at once (`npm run repro -- --jobs N`). On lavapipe a training
 * step is mostly dispatch overhead on one thread, so two processes on two cores train nearly
 * twice as fast as one; experiments start independent arms together and these slots pace them.
 */
let freeSlots = 2;
const waitingForSlot: (() => void)[] = [];

export function setJobs(jobs: number): void {
  freeSlots = jobs;
}

async function withSlot<T>(work: () => Promise<T>): Promise<T> {
  if (freeSlots > 0) freeSlots--;
  else await new Promise<void>((resolve) => waitingForSlot.push(resolve));
  try {
    return await work();
  } finally {
    const next = waitingForSlot.shift();
    if (next) next();
    else freeSlots++;
  }
}

/**
 * Runs `moec ARGS` from the repository root when a job slot is free; throws with its stderr
 * when it fails.
 */
export async function moec(args: readonly string[]): Promise<string> {
  if (MOEC.length === 1 && !fs.existsSync(path.join(ROOT, "dist", "cli", "main.js")))
    throw new Error("moec is not built: run `npm run build` (npm run repro does)");
  return withSlot(() => spawnMoec(args));
}

function spawnMoec(args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...MOEC, ...args], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code === 0) resolve(stdout);
      else {
        const why = stderr.trim().split("\n").slice(-6).join("\n");
        reject(new Error(`moec ${args.join(" ")} exited with ${code}:\n${why}`));
      }
    });
  });
}

/** `moec data gen NAME OPTIONS -o FILE` unless FILE exists; returns FILE. */
export async function dataGen(file: string, name: string, options: readonly string[]) {
  if (!fs.existsSync(file)) await moec(["data", "gen", name, ...options, "-o", file]);
  return file;
}

/** One evaluation line of metrics.jsonl. */
export interface EvalLine {
  step: number;
  eval_loss: number;
  accuracy?: Record<string, number>;
  task_accuracy?: Record<string, Record<string, number>>;
}

/** One step line of metrics.jsonl (the fields the reports read). */
export interface StepLine {
  step: number;
  loss: number;
  routing?: Record<string, { share: number[]; entropy: number; dead: number }>;
}

export interface TrainRun {
  dir: string;
  steps: StepLine[];
  evals: EvalLine[];
  /** The last checkpoint's parameters. */
  model: string;
}

export interface TrainOptions {
  program?: string;
  data: string;
  evalData?: string;
  evalEvery?: number;
  steps: number;
  batch: number;
  seed: number;
  set?: Record<string, number | string>;
  weights?: string[];
  extra?: string[];
}

/** `moec train FILE ...` into `dir` (a fresh run: an old one there is removed first). */
export async function train(file: string, dir: string, o: TrainOptions): Promise<TrainRun> {
  fs.rmSync(dir, { recursive: true, force: true });
  const args = ["train", file, "--data", o.data, "--out", dir, "--json"];
  if (o.program) args.push("--program", o.program);
  args.push("--steps", String(o.steps), "--batch", String(o.batch), "--seed", String(o.seed));
  if (o.evalData) args.push("--eval-data", o.evalData);
  if (o.evalEvery) args.push("--eval-every", String(o.evalEvery));
  for (const [k, v] of Object.entries(o.set ?? {})) args.push("--set", `${k}=${v}`);
  for (const w of o.weights ?? []) args.push("--weights", w);
  args.push(...(o.extra ?? []));
  await moec(args);
  return readRun(dir, o.steps);
}

function readRun(dir: string, last: number): TrainRun {
  const lines = fs
    .readFileSync(path.join(dir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return {
    dir,
    steps: lines.filter((l) => "loss" in l) as unknown as StepLine[],
    evals: lines.filter((l) => "eval_loss" in l) as unknown as EvalLine[],
    model: path.join(dir, `ckpt-${last}`, "model.safetensors"),
  };
}

/** The evaluation at `step`; its accuracy (the one loss term's, or the named one's). */
export function accuracyAt(run: TrainRun, step: number, term?: string): number {
  const e = run.evals.find((x) => x.step === step);
  if (!e?.accuracy) throw new Error(`${run.dir}: no accuracy evaluated at step ${step}`);
  const values = Object.entries(e.accuracy);
  const hit = term === undefined ? values[0] : values.find(([k]) => k === term);
  if (!hit) throw new Error(`${run.dir}: no accuracy for ${term} at step ${step}`);
  return hit[1];
}

/** Reads tensors of a safetensors file as plain numbers. */
export function readTensors(file: string, names: readonly string[]): Map<string, number[]> {
  const f = readSafetensorsFile(file);
  return new Map(names.map((n) => [n, Array.from(f.read(n).data as ArrayLike<number>)]));
}

/**
 * The rows `rows` (first-axis indices, in that order) of an integer tensor, e.g. the examples
 * of one task: its shape and data, ready to write.
 */
export function pickRows(
  t: { shape: readonly number[]; data: ArrayLike<number> },
  rows: readonly number[],
): { shape: number[]; data: Int32Array } {
  const width = t.shape.slice(1).reduce((a, b) => a * b, 1);
  const data = new Int32Array(rows.length * width);
  rows.forEach((r, j) => {
    for (let k = 0; k < width; k++) data[j * width + k] = t.data[r * width + k]!;
  });
  return { shape: [rows.length, ...t.shape.slice(1)], data };
}

/** The index of the largest of `count` values from `values[at]` (the first on ties). */
export function argmaxAt(values: ArrayLike<number>, at: number, count: number): number {
  let best = 0;
  for (let c = 1; c < count; c++) if (values[at + c]! > values[at + best]!) best = c;
  return best;
}

/**
 * The symbol maps of reproductions 1 and 3 for `seed` (its rules and samples): 16 tasks over
 * 64 symbols, 16384 training examples, and every (symbol, task) pair once for evaluation.
 */
export async function symbolMaps(dir: string, seed: number) {
  const common = ["--tasks", "16", "--symbols", "64", "--seed", String(seed)];
  return {
    data: await dataGen(path.join(dir, `maps-${seed}.safetensors`), "symbols", [
      ...common,
      "--count",
      "16384",
    ]),
    pairs: await dataGen(path.join(dir, `pairs-${seed}.safetensors`), "symbols", [
      ...common,
      "--all-pairs",
    ]),
  };
}

/**
 * A copy of the data file `src` with only the tensors `names` (`moec run --inputs` takes the
 * model's inputs and nothing else, not a train program's targets); returns `dst`.
 */
export function inputsFile(src: string, names: readonly string[], dst: string): string {
  const f = readSafetensorsFile(src);
  const tensors = new Map(
    names.map((n) => {
      const t = f.read(n);
      return [n, { dtype: f.info(n).dtype, shape: [...t.shape], data: t.data }] as const;
    }),
  );
  writeSafetensorsFile(dst, tensors);
  return dst;
}

/** Mutual information I(A; B) in bits between two label sequences of equal length. */
export function mutualInformation(a: readonly number[], b: readonly number[]): number {
  const n = a.length;
  const joint = new Map<string, number>();
  const pa = new Map<number, number>();
  const pb = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    joint.set(`${a[i]},${b[i]}`, (joint.get(`${a[i]},${b[i]}`) ?? 0) + 1);
    pa.set(a[i]!, (pa.get(a[i]!) ?? 0) + 1);
    pb.set(b[i]!, (pb.get(b[i]!) ?? 0) + 1);
  }
  let mi = 0;
  for (const [key, c] of joint) {
    const [x, y] = key.split(",").map(Number);
    mi += (c / n) * Math.log2((c * n) / (pa.get(x!)! * pb.get(y!)!));
  }
  return mi;
}

export const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** A fraction as a percentage with one decimal (`0.4236` → `42.4%`). */
export const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** Whole seconds since `since` (a performance.now() reading), for progress lines. */
export const secs = (since: number) => `${((performance.now() - since) / 1000).toFixed(0)} s`;

/**
 * A table: one row per arm, a column per seed and the mean. `cell` formats a value
 * (accuracy as a percentage by default).
 */
export function table(
  title: string,
  seeds: readonly number[],
  rows: readonly { arm: string; values: readonly number[] }[],
  cell: (x: number) => string = pct,
): string[] {
  const head = ["arm", ...seeds.map((s) => `seed ${s}`), "mean"];
  const body = rows.map((r) => [r.arm, ...r.values.map(cell), cell(mean(r.values))]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const fmt = (cols: string[]) =>
    "  " + cols.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [title, fmt(head), ...body.map(fmt)];
}

/** The routing report of a run's last step: per MoE layer, the experts' shares and entropy. */
export function routingReport(run: TrainRun): string[] {
  const last = run.steps.at(-1);
  if (!last?.routing) return [];
  return Object.entries(last.routing).map(([layer, r]) => {
    const shares = r.share.map((s) => `${Math.round(100 * s)}`).join(" ");
    return `  ${layer}: share % [${shares}], entropy ${r.entropy.toFixed(2)} nats, ${r.dead} dead`;
  });
}
