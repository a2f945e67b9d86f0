/**
 * Reproduction 2, AT-MoE (arXiv 2410.10896): LoRA experts trained one per task, fused by a
 * grouped router (softmax over groups × softmax within the group, one decision per sequence
 * from its instruction, the task token's state) trained alone on the mixture
 * (examples/repro/grouped-lora.moe). A decoder (d = 64, 2 layers, 4 heads, learned
 * positions) is pretrained on copy and reverse, then frozen; one LoRA expert per new task on
 * that task alone; 2 groups × 2 tasks grouped by function: two ciphers (symbol maps) and two
 * sorts (rearrangements), {cipher:1, cipher:2} and {sort, sort_desc}. Departures from the
 * issue (measured, docs/reproductions.md): an expert is a rank-8 LoRA on both FFN projections,
 * not r = 4, and its run also tunes its task's token row (the task prompt every position
 * sees), since at r = 4 on the up projection alone each LoRA stayed near 45%; the second group
 * is {sort, sort_desc}, not the issue's example {sort, shift}, because shift is a symbol map
 * like the ciphers and the router grouped it with them. Sequences of 8 symbols, length 6
 * (`moec data gen sequences`, a task token first); token accuracy over the answer positions
 * of held-out examples (the last fifth of one data file of all six tasks; the rest trains).
 *
 * Arms, per new task: the frozen base; the task's own LoRA (Solo, its own task); the uniform
 * average of the four LoRAs (Fused with zero gates: every weight 1/4); the fused model (the
 * trained grouped router); the fused model with each group pinned (`--pin-groups` on both
 * layers). Pass, in the mean over seeds and in every seed: fused ≥ 95% of the task's own LoRA
 * and > uniform, for every task; pinning a group keeps its tasks ≥ 90% of fused and puts the
 * other group's tasks within 25% of the way from the frozen base to fused. Routing, per layer
 * and in every seed:
 * for ≥ 90% of each task's examples the argmax group (of the group weights `moec run
 * --trace-routing` writes per token, averaged over the example's answer tokens) is the task's
 * family.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import {
  type TensorToWrite,
  readSafetensorsFile,
  writeSafetensorsFile,
} from "../../runtime/safetensors.js";
import {
  type Experiment,
  type ReproContext,
  ROOT,
  type TrainRun,
  accuracyAt,
  dataGen,
  argmaxAt,
  inputsFile,
  mean,
  moec,
  pct,
  pickRows,
  secs,
  table,
  train,
} from "../harness.js";

const FILE = path.join(ROOT, "examples", "repro", "grouped-lora.moe");
/** The data file's tasks, in task-id order: two to pretrain on, four new ones. */
const TASKS = ["copy", "reverse", "cipher:1", "cipher:2", "sort", "sort_desc"] as const;
const PRETRAIN_TASKS = [0, 1];
/**
 * The new tasks' ids by group, by function (two symbol maps, two rearrangements): expert
 * (g, e) of Fused is the LoRA of GROUPS[g][e].
 */
const GROUPS = [
  [2, 3],
  [4, 5],
] as const;
const NEW_TASKS = GROUPS.flat();
/** Task t's token: after the VOCAB symbols and the separator (`moec data gen sequences`). */
const taskToken = (t: number) => VOCAB + 1 + t;
const LAYERS = ["blocks.0.experts.moe", "blocks.1.experts.moe"];
const IGNORE = -100;
const VOCAB = 8;
const LENGTH = 6;
// Pretraining's loss is flat from step ~160 and the ciphers' LoRAs from ~60 (every seed);
// the sorts' LoRAs improve slowly after 100 (capacity: they need attention by content).
const PRETRAIN_STEPS = 200;
const ADAPT_STEPS = 100;
const ROUTE_STEPS = 400;
// The router routes each sequence once, on its instruction (the task token's state): per
// token, its gradient was too noisy at batch 64 (which expert helps differs token by token) and
// the ciphers fused at 82 / 94% on seed 0; per sequence, at their own LoRAs' 100%
// (docs/reproductions.md).
const ROUTE_BATCH = 64;
/** The share of a task's examples whose argmax group must be the task's family. */
const FAMILY_SHARE = 0.9;

type Tensor = TensorToWrite;

export const groupedLora: Experiment = {
  name: "grouped-lora",
  title:
    "AT-MoE (2410.10896): per-task LoRAs fused by a grouped router keep ≥ 95% of each LoRA; pinned groups; routing by family (departures: experts are LoRA r = 8 on both FFN projections + the task's token row, not r = 4; groups {cipher:1, cipher:2} and {sort, sort_desc}, not {sort, shift})",
  async run(ctx) {
    const s = ctx.quick
      ? { pre: 10, adapt: 5, route: 5, count: 2400 } // ≥ 64 held-out examples a task
      : { pre: PRETRAIN_STEPS, adapt: ADAPT_STEPS, route: ROUTE_STEPS, count: 9600 };
    // Seeds, and within a seed the four LoRAs and the evaluations, are independent: they run
    // together as job slots allow (harness.ts); results are read back in seed order.
    const seeds = await Promise.all(ctx.seeds.map((seed) => runSeed(ctx, seed, s)));

    ctx.log(
      `pretraining (copy, reverse) held-out token accuracy: ${seeds.map((r) => pct(r.pretrained)).join(", ")}`,
    );
    const at = (arm: Arm, i: number) => seeds.map((r) => r.arms[arm][i]!);
    NEW_TASKS.forEach((t, i) => {
      const g = GROUPS.findIndex((grp) => (grp as readonly number[]).includes(t));
      for (const line of table(
        `${TASKS[t]} (group ${g}): held-out token accuracy`,
        ctx.seeds,
        ARMS.map((arm) => ({ arm, values: at(arm, i) })),
      ))
        ctx.log(line);
    });
    for (const line of table(
      "examples whose argmax group (mean over its answer tokens) is the task's family",
      ctx.seeds,
      LAYERS.flatMap((layer, l) =>
        NEW_TASKS.map((t, i) => ({
          arm: `${layer}, ${TASKS[t]}`,
          values: seeds.map((r) => r.family[l]![i]!),
        })),
      ),
    ))
      ctx.log(line);
    if (ctx.quick) return undefined;

    // The claims, in the mean over seeds and in every seed.
    const failures: string[] = [];
    const held: string[] = [];
    /** Each arm's value in the mean (index 0), then per seed. */
    const v = (arm: Arm, i: number) => [mean(at(arm, i)), ...at(arm, i)];
    /** A claim `value ≥ bound` (or ≤), checked in the mean and every seed; failing seeds named. */
    const claim = (
      label: (value: number, bound: number) => string,
      value: number[],
      bound: number[],
      atMost = false,
    ) => {
      const bad = value
        .map((x, k) => ((atMost ? x <= bound[k]! : x >= bound[k]!) ? -1 : k))
        .filter((k) => k >= 0);
      const text = label(value[0]!, bound[0]!);
      if (bad.length === 0) held.push(text);
      else
        failures.push(
          `${text}, failing in ${bad.map((k) => (k === 0 ? "the mean" : `seed ${ctx.seeds[k - 1]} (${pct(value[k]!)} vs ${pct(bound[k]!)})`)).join(", ")}`,
        );
    };
    NEW_TASKS.forEach((t, i) => {
      const name = TASKS[t];
      const fused = v("fused (grouped router)", i);
      const own = v("own LoRA (Solo)", i);
      const uniform = v("uniform average", i);
      const base = v("frozen base", i);
      claim(
        (f, b) => `${name}: fused ${pct(f)} vs 95% of own ${pct(b)}`,
        fused,
        own.map((x) => 0.95 * x),
      );
      // Strictly above the uniform average: a tiny margin stands for ">".
      claim(
        (f, b) => `${name}: fused ${pct(f)} vs uniform ${pct(b)}`,
        fused,
        uniform.map((x) => x + 1e-9),
      );
      GROUPS.forEach((grp, g) => {
        const pinned = v(g === 0 ? "group 0 pinned" : "group 1 pinned", i);
        if ((grp as readonly number[]).includes(t))
          claim(
            (p, b) => `${name}, own group ${g} pinned: ${pct(p)} vs 90% of fused ${pct(b)}`,
            pinned,
            fused.map((x) => 0.9 * x),
          );
        else
          claim(
            (p, b) =>
              `${name}, other group ${g} pinned: ${pct(p)} vs base + 25% of the way to fused ${pct(b)}`,
            pinned,
            base.map((b, k) => b + 0.25 * (fused[k]! - b)),
            true,
          );
      });
    });
    // Per example and layer, in every seed: the argmax group is the task's family for ≥ 90%.
    LAYERS.forEach((layer, l) =>
      NEW_TASKS.forEach((t, i) => {
        const share = seeds.map((r) => r.family[l]![i]!);
        (share.every((x) => x >= FAMILY_SHARE) ? held : failures).push(
          `${layer}, ${TASKS[t]}: argmax group = family for ${share.map(pct).join(", ")} of examples`,
        );
      }),
    );
    return failures.length === 0
      ? { pass: true, because: `means, each holding in every seed too: ${held.join("; ")}` }
      : { pass: false, because: `${failures.join("; ")} (held: ${held.join("; ")})` };
  },
};

const ARMS = [
  "frozen base",
  "own LoRA (Solo)",
  "uniform average",
  "fused (grouped router)",
  "group 0 pinned",
  "group 1 pinned",
] as const;
type Arm = (typeof ARMS)[number];

/** One seed: per arm, per new task (NEW_TASKS order) the held-out token accuracy; per layer
 * and new task, the share of examples routed to the task's family. */
interface SeedResult {
  pretrained: number;
  arms: Record<Arm, number[]>;
  family: number[][];
}

async function runSeed(
  ctx: ReproContext,
  seed: number,
  s: { pre: number; adapt: number; route: number; count: number },
): Promise<SeedResult> {
  const dir = path.join(ctx.dir, `seed-${seed}`);
  fs.mkdirSync(dir, { recursive: true });
  const all = await dataGen(path.join(dir, `all-${s.count}.safetensors`), "sequences", [
    ...["--tasks", TASKS.join(","), "--vocab", String(VOCAB), "--length", String(LENGTH)],
    ...["--count", String(s.count), "--seed", String(seed)],
  ]);
  const split = splitByTask(all, dir);
  const started = performance.now();
  const pre = await train(FILE, path.join(dir, "Pretrain"), {
    program: "Pretrain",
    data: split.train(PRETRAIN_TASKS, "pretrain"),
    evalData: split.held(PRETRAIN_TASKS, "pretrain-held"),
    evalEvery: s.pre,
    steps: s.pre,
    batch: 64,
    seed,
  });
  const pretrained = accuracyAt(pre, s.pre);
  ctx.log(`  seed ${seed}: pretrained, ${pct(pretrained)} on copy and reverse (${secs(started)})`);
  const loras = await Promise.all(
    NEW_TASKS.map((t) =>
      train(FILE, path.join(dir, `Adapt-${t}`), {
        program: "Adapt",
        data: split.train([t], `task-${t}`),
        evalData: split.held([t], `task-${t}-held`),
        evalEvery: s.adapt,
        steps: s.adapt,
        batch: 64,
        seed,
        weights: [pre.model],
      }),
    ),
  );
  ctx.log(
    `  seed ${seed}: LoRAs trained, ${loras.map((r, i) => `${TASKS[NEW_TASKS[i]!]} ${pct(accuracyAt(r, s.adapt))}`).join(", ")} (${secs(started)})`,
  );
  // Fused's starting point: the backbone, each LoRA in its expert's slot, zero gates.
  const init = fusedWeights(pre.model, loras, path.join(dir, "fused-init.safetensors"));
  const route = await train(FILE, path.join(dir, "Route"), {
    program: "Route",
    data: split.train(NEW_TASKS, "mixture"),
    steps: s.route,
    batch: ROUTE_BATCH,
    seed,
    weights: [init],
  });
  const held = split.held(NEW_TASKS, "held");
  const inputs = inputsFile(held, ["tokens"], path.join(dir, "held-inputs.safetensors"));
  const truth = readSafetensorsFile(held);
  const targets = truth.read("targets").data as ArrayLike<number>;
  const task = Array.from(truth.read("task").data as ArrayLike<number>);
  const T = targets.length / task.length;
  const evaluate = async (name: string, args: string[]) => {
    const out = path.join(dir, `${name}.safetensors`);
    await moec([
      ...["run", FILE, "--inputs", inputs, "-o", out],
      ...["--dim", `B=${task.length}`, "--dim", `T=${T}`, ...args],
    ]);
    const logits = readSafetensorsFile(out).read("logits").data as ArrayLike<number>;
    return perTask(logits, targets, task, T);
  };
  const trace = path.join(dir, "fused-trace.safetensors");
  const pin = (g: number) =>
    LAYERS.flatMap((l) => ["--pin-groups", `${l}=${GROUPS.map((_, h) => (h === g ? 1 : 0))}`]);
  const [base, uniform, fused, pinned0, pinned1] = await Promise.all([
    evaluate("base", ["--model", "Backbone", "--weights", pre.model]),
    evaluate("uniform", ["--weights", init]),
    evaluate("fused", ["--weights", route.model, "--trace-routing", trace]),
    evaluate("pin-0", ["--weights", route.model, ...pin(0)]),
    evaluate("pin-1", ["--weights", route.model, ...pin(1)]),
  ]);
  ctx.log(`  seed ${seed}: every stage and arm in ${secs(started)}`);
  return {
    pretrained,
    arms: {
      "frozen base": base,
      "own LoRA (Solo)": loras.map((r) => accuracyAt(r, s.adapt)),
      "uniform average": uniform,
      "fused (grouped router)": fused,
      "group 0 pinned": pinned0,
      "group 1 pinned": pinned1,
    },
    family: familyShares(trace, targets, task, T),
  };
}

/**
 * Per layer and new task (NEW_TASKS order): the share of the task's examples whose argmax
 * group, over the group weights averaged on the example's answer tokens (`<layer>.groups` of
 * `moec run --trace-routing`), is the task's family.
 */
function familyShares(
  trace: string,
  targets: ArrayLike<number>,
  task: readonly number[],
  T: number,
): number[][] {
  const f = readSafetensorsFile(trace);
  const G = GROUPS.length;
  return LAYERS.map((layer) => {
    const w = f.read(`${layer}.groups`).data as ArrayLike<number>;
    const right = new Map<number, number>();
    const count = new Map<number, number>();
    task.forEach((t, b) => {
      const sums = new Array<number>(G).fill(0);
      for (let j = 0; j < T; j++) {
        if (targets[b * T + j] === IGNORE) continue;
        for (let g = 0; g < G; g++) sums[g]! += w[(b * T + j) * G + g]!;
      }
      const family = GROUPS.findIndex((grp) => (grp as readonly number[]).includes(t));
      count.set(t, (count.get(t) ?? 0) + 1);
      if (argmaxAt(sums, 0, G) === family) right.set(t, (right.get(t) ?? 0) + 1);
    });
    return NEW_TASKS.map((t) => (right.get(t) ?? 0) / (count.get(t) ?? NaN));
  });
}

/**
 * The rows of one data file by task: the first 4/5 of each task's rows train, the last 1/5
 * are held out (`moec data gen sequences` has no sample seed apart from the rules' seed).
 */
function splitByTask(file: string, dir: string) {
  const f = readSafetensorsFile(file);
  const names = ["tokens", "targets", "task"];
  const tensors = new Map(names.map((n) => [n, f.read(n)]));
  const task = Array.from(tensors.get("task")!.data as ArrayLike<number>);
  const cut = Math.floor((4 * task.length) / 5);
  const write = (tasks: readonly number[], held: boolean, name: string) => {
    const out = path.join(dir, `${name}.safetensors`);
    const rows = task.map((t, i) => i).filter((i) => tasks.includes(task[i]!) && i >= cut === held);
    const picked = new Map<string, Tensor>();
    for (const n of names)
      picked.set(n, { dtype: f.info(n).dtype, ...pickRows(tensors.get(n)!, rows) });
    writeSafetensorsFile(out, picked);
    return out;
  };
  return {
    train: (tasks: readonly number[], name: string) => write(tasks, false, name),
    held: (tasks: readonly number[], name: string) => write(tasks, true, name),
  };
}

/**
 * Fused's parameters: the pretrained backbone, the Adapt run of GROUPS[g][e] as expert (g, e)
 * of each layer (Solo's `experts.lora_up.lora_X` → Fused's `experts.moe.experts.g.e.lora_up.lora_X`), and
 * zero router gates, so that every expert weighs 1/4: the uniform average of the LoRAs.
 */
function fusedWeights(backbone: string, loras: readonly TrainRun[], out: string): string {
  const tensors = new Map<string, Tensor>();
  const copy = (file: string, rename: (n: string) => string | undefined) => {
    const f = readSafetensorsFile(file);
    for (const n of f.names()) {
      const to = rename(n);
      if (to === undefined) continue;
      const t = f.read(n);
      tensors.set(to, { dtype: f.info(n).dtype, shape: [...t.shape], data: t.data });
    }
  };
  // The backbone, its FFN copied into every expert's slot (each expert holds its own frozen
  // copy: `experts.up.weight` → `experts.moe.experts.g.e.up.weight`).
  const slots = GROUPS.flatMap((grp, g) => grp.map((_, e) => `${g}.${e}`));
  const ffn = /^(.*\.experts)\.((?:up|down)\.(?:weight|bias))$/;
  copy(backbone, (n) => (ffn.test(n) ? undefined : n));
  for (const slot of slots)
    copy(backbone, (n) => {
      const m = ffn.exec(n);
      return m ? `${m[1]}.moe.experts.${slot}.${m[2]}` : undefined;
    });
  GROUPS.forEach((grp, g) =>
    grp.forEach((t, e) =>
      copy(loras[NEW_TASKS.indexOf(t)]!.model, (n) => {
        const m = /^(.*\.experts)\.(lora_(?:up|down)\.lora_[AB]\.weight)$/.exec(n);
        return m ? `${m[1]}.moe.experts.${g}.${e}.${m[2]}` : undefined;
      }),
    ),
  );
  const prefix = [...tensors.keys()].find((n) => n.endsWith("embed.weight"))!;
  const root = prefix.slice(0, -"embed.weight".length);
  const d = tensors.get(prefix)!.shape[1]!;
  // Each new task's token row (its task prompt) from its own Adapt run, the one row that run
  // trained for its task; the other rows stay the backbone's.
  const embed = Float32Array.from(tensors.get(prefix)!.data as ArrayLike<number>);
  NEW_TASKS.forEach((t, i) => {
    const tuned = readSafetensorsFile(loras[i]!.model).read(prefix).data as ArrayLike<number>;
    const row = taskToken(t);
    for (let k = 0; k < d; k++) embed[row * d + k] = tuned[row * d + k]!;
  });
  tensors.set(prefix, { ...tensors.get(prefix)!, data: embed });
  for (const layer of LAYERS) {
    const gate = (name: string, rows: number) =>
      tensors.set(`${root}${layer}.router.${name}.weight`, {
        dtype: "F32",
        shape: [rows, d],
        data: new Float32Array(rows * d),
      });
    gate("group_gate", GROUPS.length);
    gate("expert_gate", NEW_TASKS.length);
  }
  writeSafetensorsFile(out, tensors);
  return out;
}

/** Token accuracy at the answer positions (targets ≠ -100), per new task, in NEW_TASKS order. */
function perTask(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  task: readonly number[],
  T: number,
): number[] {
  const V = logits.length / (task.length * T);
  const correct = new Map<number, number>();
  const count = new Map<number, number>();
  for (let i = 0; i < task.length * T; i++) {
    const y = targets[i]!;
    if (y === IGNORE) continue;
    const t = task[Math.floor(i / T)]!;
    count.set(t, (count.get(t) ?? 0) + 1);
    if (argmaxAt(logits, i * V, V) === y) correct.set(t, (correct.get(t) ?? 0) + 1);
  }
  return NEW_TASKS.map((t) => (correct.get(t) ?? 0) / (count.get(t) ?? NaN));
}
