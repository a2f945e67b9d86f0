// Every shipped example trains from its `.moe` file with `moec train` (issue #13): at a small
// configuration (`--set` shrinks width, depth and vocabulary) each overfits 8 sequences to a
// loss below 0.01 within 300 steps. The examples whose papers adapt a pretrained base
// (AT-MoE's LoRA experts, GPT-2's task adapters, ROaD's teachers) train in two stages, the
// second starting from the first's checkpoint with `--weights`, as their headers show. Each
// run is a child process with its own device; independent runs overlap.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { generateNli, generateRelated, generateSequences } from "../../runtime/data/synthetic.js";
import { writeSafetensorsFile } from "../../runtime/safetensors.js";
import { type MoecResult, moecAsync } from "./moec-cli.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-train-examples-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const STEPS = 300;
const EXAMPLES = 8;

/** The data sets as `moec data gen` writes them (the same library call), 8 examples each. */
function dataFile(name: string, set: ReturnType<typeof generateSequences>): string {
  const file = path.join(tmp, `${name}.safetensors`);
  writeSafetensorsFile(file, set.tensors, set.metadata);
  return file;
}
// 8 symbols, inputs of 4: sequences of 9 tokens over a vocabulary of 8 + sep + task tokens.
const sequences = dataFile(
  "sequences",
  generateSequences({
    tasks: ["copy", "reverse", "sort", "shift"],
    vocab: 8,
    length: 4,
    count: EXAMPLES,
    seed: 0,
  }),
);
// Three tasks, for the examples with a three-task set (gpt2-adapters' Gen, task-moe's Lang),
// and new sequences for the second stages.
const threeTasks = dataFile(
  "three-tasks",
  generateSequences({
    tasks: ["reverse", "sort", "shift"],
    vocab: 8,
    length: 4,
    count: EXAMPLES,
    seed: 1,
  }),
);
const labels = dataFile(
  "labels",
  generateRelated({
    tasks: 1,
    classes: 4,
    features: 16,
    relatedness: 0,
    noise: 0,
    count: EXAMPLES,
    seed: 0,
    length: 4,
  }),
);
const nli = dataFile("nli", generateNli({ vocab: 8, length: 4, count: EXAMPLES, seed: 0 }));

/**
 * `moec train` of one program on all 8 examples at once; resolves to its run directory.
 * `weights`: the checkpoint a second stage starts from; `schedule`: the learning rate's after
 * warmup (the CLI's default is constant).
 */
async function train(
  run: string,
  example: string,
  program: string,
  data: string,
  sets: Record<string, number>,
  weights?: string,
  schedule?: "cosine",
): Promise<string> {
  const out = path.join(tmp, run);
  const r: MoecResult = await moecAsync([
    "train",
    `examples/${example}`,
    "--program",
    program,
    "--data",
    data,
    "--batch",
    String(EXAMPLES),
    "--steps",
    String(STEPS),
    ...(schedule !== undefined ? ["--schedule", schedule] : []),
    "--out",
    out,
    ...Object.entries(sets).flatMap(([k, v]) => ["--set", `${k}=${v}`]),
    ...(weights !== undefined ? ["--weights", weights] : []),
  ]);
  expect(r.stderr, `${run}: ${r.stderr}`).not.toMatch(/^moec:/m);
  expect(r.code, `${run}: ${r.stderr}`).toBe(0);
  expect(r.stderr).toContain(`training ${program} on `);
  // A second stage loads the first's parameters and keeps them frozen.
  if (weights !== undefined)
    expect(r.stderr).toMatch(/ [1-9]\d* frozen;[^]* \d+ tensors from --weights/);
  return out;
}

/**
 * The last step's metrics: the loss the data gives (the total minus the routers' auxiliary
 * terms, which a balance loss keeps near its weight however well the data is fit) and each
 * auxiliary term.
 */
function finalLoss(runDir: string): { step: number; data: number; aux: number[] } {
  const lines = fs.readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n");
  const last = JSON.parse(lines.at(-1)!) as Record<string, number>;
  const aux = Object.entries(last)
    .filter(([k]) => k.startsWith("aux:"))
    .map(([, v]) => v);
  return { step: last.step!, data: last.loss! - aux.reduce((a, b) => a + b, 0), aux };
}

/** The first step's loss (a second stage on new data starts far from fitting it). */
function firstLoss(runDir: string): number {
  const first = fs.readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").split("\n")[0]!;
  return (JSON.parse(first) as { loss: number }).loss;
}

function expectOverfit(runDir: string, auxTerms = 0): void {
  const m = finalLoss(runDir);
  expect(m.step).toBe(STEPS);
  expect(m.data).toBeLessThan(0.01);
  expect(m.aux).toHaveLength(auxTerms);
  for (const a of m.aux) expect(a).toBeGreaterThan(0);
}

const small = { layers: 1, d: 16, vocab: 16, lr: 0.01 };

// Stages that a second run starts from, shared by the tests that need them.
const gpt2 = train("gpt2", "gpt2.moe", "LM", sequences, { ...small, heads: 2 });
const atMoeBase = train("at-moe-base", "at-moe.moe", "Pretrain", sequences, small);
const teachers = train("teachers", "road-distill.moe", "Teachers", nli, { ...small, heads: 2 });
// Rejections are asserted where each is awaited.
for (const stage of [gpt2, atMoeBase, teachers]) stage.catch(() => {});

const checkpoint = (runDir: string) => path.join(runDir, `ckpt-${STEPS}`, "model.safetensors");

describe.concurrent(`every example overfits ${EXAMPLES} sequences within ${STEPS} steps`, () => {
  // Most of a run is lavapipe compiling a few hundred shaders (one AdamW update per tensor
  // among them); a two-stage example compiles twice.
  const timeout = 1_800_000;

  it("gpt2.moe: a dense GPT-2 on next tokens", async () => expectOverfit(await gpt2), timeout);

  it(
    "gpt2-adapters.moe: per-task adapters on the frozen GPT-2 from gpt2.moe",
    async () => {
      const base = checkpoint(await gpt2);
      const out = await train(
        "adapters",
        "gpt2-adapters.moe",
        "Adapt",
        threeTasks,
        { ...small, heads: 2 },
        base,
      );
      expect(firstLoss(out)).toBeGreaterThan(0.5);
      expectOverfit(out);
    },
    timeout,
  );

  it(
    "tiny-transformer.moe: a label per position",
    async () => {
      const out = await train("tiny", "tiny-transformer.moe", "Label", labels, {
        layers: 1,
        d: 16,
        heads: 2,
        classes: 4,
        lr: 0.01,
      });
      expectOverfit(out);
    },
    timeout,
  );

  it(
    "mixtral.moe: top-2 SwiGLU experts with the balance loss",
    async () => {
      const out = await train("mixtral", "mixtral.moe", "LM", sequences, {
        ...small,
        heads: 2,
        hidden: 16,
        experts: 4,
      });
      expectOverfit(out, 1);
    },
    timeout,
  );

  it(
    "mixture-of-tokens.moe: tokens mixed across the batch",
    async () => {
      const out = await train("mot", "mixture-of-tokens.moe", "LM", sequences, {
        ...small,
        experts: 4,
        group: EXAMPLES,
      });
      expectOverfit(out);
    },
    timeout,
  );

  it(
    "task-moe.moe: task-aware routing, a task map and per-task adapters",
    async () => {
      // At a constant rate the two routers and the task map keep trading tokens to the end,
      // so where step 300 lands turns on rounding (0.001 or 0.02 by summation order alone);
      // a decaying rate settles the fit.
      const out = await train(
        "task-moe",
        "task-moe.moe",
        "Translate",
        threeTasks,
        small,
        undefined,
        "cosine",
      );
      expectOverfit(out, 1);
    },
    timeout,
  );

  it(
    "at-moe.moe: LoRA experts and grouped routers over the pretrained, frozen backbone",
    async () => {
      const base = await atMoeBase;
      expectOverfit(base);
      // New sequences, so that the experts have something to learn.
      const out = await train("at-moe", "at-moe.moe", "Tune", threeTasks, small, checkpoint(base));
      expect(firstLoss(out)).toBeGreaterThan(0.5);
      expectOverfit(out);
    },
    timeout,
  );

  it(
    "road-distill.moe: the student distils two trained teachers and fits the QA labels",
    async () => {
      const fitted = await teachers;
      expectOverfit(fitted);
      const out = await train(
        "distill",
        "road-distill.moe",
        "Distill",
        nli,
        { ...small, heads: 2 },
        checkpoint(fitted),
      );
      expectOverfit(out);
    },
    timeout,
  );
});
