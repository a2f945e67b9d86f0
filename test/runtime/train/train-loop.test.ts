// The training loop over a run directory on the device: a run interrupted after a torn
// checkpoint resumes from the previous one and ends bit for bit where an uninterrupted run
// ends, with one metrics line per step.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import { compileGraph } from "../../../compiler/kernels/compile-graph.js";
import { writeSafetensorsFile } from "../../../runtime/safetensors.js";
import { listCheckpoints, readCheckpoint } from "../../../runtime/train/checkpoint.js";
import { TrainData } from "../../../runtime/train/data.js";
import { type TrainRunOptions, dataPorts, runTraining } from "../../../runtime/train/train-loop.js";
import { useDevice } from "../gpu-harness.js";
import { ADAMW, C, D, dataset, initialState, softmaxRegression } from "./softmax-regression.js";

const gpu = useDevice();
const root = fs.mkdtempSync(path.join(os.tmpdir(), "moec-train-"));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const EXAMPLES = 150;
const STEPS = 30;

describe("runTraining", () => {
  it("resumes past a torn checkpoint and matches an uninterrupted run; keeps the best evaluated", async () => {
    const ctx = gpu();
    const program = compileGraph(softmaxRegression(), ctx.limits);
    const { x, y } = dataset(31, EXAMPLES);
    const file = path.join(root, "data.safetensors");
    writeSafetensorsFile(
      file,
      new Map([
        ["x", { dtype: "F32", shape: [EXAMPLES, D], data: x }],
        ["y", { dtype: "F32", shape: [EXAMPLES, C], data: y }],
      ]),
    );
    expect(dataPorts(program).map((p) => p.name)).toEqual(["x", "y"]);
    const init = initialState(32);
    const options = (runDir: string): TrainRunOptions => ({
      runDir,
      program,
      data: TrainData.open(file, dataPorts(program), { seed: 5 }),
      schedule: { lr: 0.05, totalSteps: STEPS, warmupSteps: 3 },
      adamw: ADAMW,
      initialParams: () =>
        new Map(
          [...init].filter(([k]) => !k.startsWith("exp_avg")).map(([k, v]) => [k, v.slice()]),
        ),
      checkpointEvery: 10,
      retention: { keepLast: 5 },
      seeds: { init: 32, data: 5, noise: 32 },
      configHash: "cfg",
      sourceHash: "src",
    });

    const whole = path.join(root, "whole");
    const lines: string[] = [];
    const a = await runTraining(ctx, {
      ...options(whole),
      progress: { write: (t) => lines.push(t), mode: "json" },
    });
    expect(a).toMatchObject({ resumedFrom: 0, lastStep: STEPS });
    expect(listCheckpoints(whole).map((c) => c.step)).toEqual([30, 20, 10]);
    expect(lines).toHaveLength(STEPS);
    expect(JSON.parse(lines[STEPS - 1]!)).toMatchObject({ step: STEPS, total_steps: STEPS });

    // Evaluated at each checkpoint: the best (step 20 here) outlives the last-K window.
    const evaluated = path.join(root, "evaluated");
    const evalLosses = new Map([
      [10, 0.5],
      [20, 0.1],
      [30, 0.3],
    ]);
    const seen: number[] = [];
    await runTraining(ctx, {
      ...options(evaluated),
      retention: { keepLast: 1, keepBest: true },
      evaluate: (params, step) => {
        expect([...params.keys()].sort()).toEqual(["b", "temp", "w"]);
        seen.push(step);
        return evalLosses.get(step)!;
      },
    });
    expect(seen).toEqual([10, 20, 30]);
    expect(listCheckpoints(evaluated).map((c) => c.step)).toEqual([30, 20]);
    expect(readCheckpoint(path.join(evaluated, "ckpt-20")).state.evalLoss).toBe(0.1);

    // `evalEvery` evaluates between checkpoints too (no checkpoint there), into metrics.jsonl;
    // the parameters it sees are those after that step (the same run's at a checkpoint).
    const often = path.join(root, "often");
    const at = new Map<number, Float32Array>();
    await runTraining(ctx, {
      ...options(often),
      evalEvery: 4,
      evaluate: (params, step) => {
        at.set(step, Float32Array.from(params.get("w")!));
        return step / 100;
      },
    });
    expect([...at.keys()]).toEqual([4, 8, 10, 12, 16, 20, 24, 28, 30]);
    expect(listCheckpoints(often).map((c) => c.step)).toEqual([30, 20, 10]);
    const evals = fs
      .readFileSync(path.join(often, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { step: number; eval_loss?: number })
      .filter((l) => l.eval_loss !== undefined);
    expect(evals.map((l) => l.step)).toEqual([4, 8, 10, 12, 16, 20, 24, 28, 30]);
    expect(at.get(20)).toEqual(readCheckpoint(path.join(often, "ckpt-20")).params.get("w")!.data);
    expect(at.get(8)).not.toEqual(at.get(4));

    const broken = path.join(root, "broken");
    const b1 = await runTraining(ctx, { ...options(broken), stopAfter: 17 });
    expect(b1.lastCheckpoint).toBe(path.join(broken, "ckpt-17"));
    // Torn: the tensors of the newest checkpoint never reached the disk.
    fs.truncateSync(path.join(broken, "ckpt-17", "model.safetensors"), 20);
    const warnings: string[] = [];
    const b2 = await runTraining(ctx, { ...options(broken), warn: (w) => warnings.push(w) });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^skipping checkpoint .*ckpt-17: model\.safetensors: /);
    expect(b2).toMatchObject({ resumedFrom: 10, lastStep: STEPS });

    const final = (run: string) => readCheckpoint(path.join(run, `ckpt-${STEPS}`));
    const [ca, cb] = [final(whole), final(broken)];
    expect(cb.state.data).toEqual(ca.state.data);
    expect(cb.params).toEqual(ca.params);
    expect(cb.optimizer).toEqual(ca.optimizer);
    expect(ca.params.get("temp")!.data).toEqual(init.get("temp"));

    const metrics = (run: string) =>
      fs
        .readFileSync(path.join(run, "metrics.jsonl"), "utf8")
        .trimEnd()
        .split("\n")
        .map((l) => JSON.parse(l) as { step: number; loss: number; lr: number; grad_norm: number });
    const [ma, mb] = [metrics(whole), metrics(broken)];
    expect(mb.map((m) => m.step)).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    expect(mb.map((m) => [m.loss, m.lr, m.grad_norm])).toEqual(
      ma.map((m) => [m.loss, m.lr, m.grad_norm]),
    );
    expect(ma[STEPS - 1]!.loss).toBeLessThan(ma[0]!.loss / 2);
    expect(Object.keys(ma[0]!)).toContain("ce_first");
  });
});
