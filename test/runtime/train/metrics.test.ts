// metrics.jsonl lines, resuming a log (lines past the checkpoint and a torn line dropped), the
// smoothed loss, the progress line for a terminal and for --json, routing shares over a
// logging window (entropy, dead experts), eval accuracy from counts, and the lr schedules.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import {
  type AccuracyCounts,
  Ema,
  MetricsLog,
  RoutingWindow,
  type StepMetrics,
  accuracyOf,
  duration,
  evalJson,
  formatEval,
  formatProgress,
  metricsLine,
  routingShareLayer,
  shareEntropy,
  summarizeShare,
} from "../../../runtime/train/metrics.js";
import { checkSchedule, learningRate } from "../../../runtime/train/schedule.js";
import { prng } from "../gpu-harness.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-metrics-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const rand = prng(9);
function metrics(step: number): StepMetrics {
  return {
    step,
    loss: 2 * rand(),
    terms: { ce: rand(), balance: rand() / 10 },
    grad_norm: rand(),
    lr: 1e-3 * rand(),
    tokens_per_s: 1e4 * rand(),
    ms_per_step: 50 * rand(),
  };
}

describe("metrics", () => {
  it("writes one JSON line per step with every term", () => {
    const m = metrics(3);
    const row = JSON.parse(metricsLine(m)) as Record<string, number>;
    expect(Object.keys(row)).toEqual([
      "step",
      "loss",
      "ce",
      "balance",
      "grad_norm",
      "lr",
      "tokens_per_s",
      "ms_per_step",
    ]);
    expect(row.ce).toBe(m.terms.ce);
    expect(JSON.parse(metricsLine({ ...m, loss: NaN })).loss).toBeNull();
    expect(() => metricsLine({ ...m, terms: { lr: 1 } })).toThrow(
      "loss term lr clashes with a metrics key",
    );
  });

  it("appends, and on resume drops the steps after the checkpoint and a torn line", () => {
    const file = path.join(dir, "metrics.jsonl");
    const log = new MetricsLog(file);
    for (let s = 1; s <= 6; s++) log.append(metrics(s));
    log.sync();
    log.close();
    fs.appendFileSync(file, '{"step": 7, "lo'); // a crash mid-line
    const resumed = new MetricsLog(file, 4);
    resumed.append(metrics(5));
    resumed.close();
    const steps = fs
      .readFileSync(file, "utf8")
      .trimEnd()
      .split("\n")
      .map((l) => (JSON.parse(l) as { step: number }).step);
    expect(steps).toEqual([1, 2, 3, 4, 5]);
  });

  it("smooths the loss without bias towards zero", () => {
    const ema = new Ema(0.9);
    expect(ema.value).toBeNaN();
    expect(ema.add(2)).toBeCloseTo(2, 12);
    ema.add(Number.NaN); // a diverged step does not poison the average
    expect(ema.add(4)).toBeCloseTo((0.9 * 0.1 * 2 + 0.1 * 4) / (1 - 0.81), 12);
  });

  it("formats the progress line for a terminal and for --json", () => {
    const p = {
      step: 42,
      totalSteps: 1000,
      loss: 0.123456,
      terms: { ce: 0.1, balance: 0.02346 },
      tokensPerS: 12345,
      msPerStep: 45.04,
      lr: 0.0003,
    };
    const tty = formatProgress(p, "tty");
    expect(tty).toBe(
      "\rstep   42/1000 | loss 0.1235 (ce 0.1000, balance 0.0235) | 12.3k tok/s | 45.0 ms/step | lr 3.00e-4 | ETA 43s\x1b[K",
    );
    expect(tty).not.toContain("\n");
    const json = formatProgress(p, "json");
    expect(json.endsWith("\n")).toBe(true);
    expect(JSON.parse(json)).toEqual({
      step: 42,
      total_steps: 1000,
      loss: 0.123456,
      ce: 0.1,
      balance: 0.02346,
      tokens_per_s: 12345,
      ms_per_step: 45.04,
      lr: 0.0003,
      eta_s: (958 * 45.04) / 1000,
    });
    expect(duration(187)).toBe("3m07s");
    expect(duration(7500)).toBe("2h05m");
  });
});

/** A random share vector over `E` experts with `dead` of them exactly 0. */
function randomShare(E: number, dead: number): number[] {
  const w = Array.from({ length: E }, (_, e) => (e < dead ? 0 : 0.05 + rand()));
  const sum = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / sum);
}

describe("routing statistics", () => {
  it("entropy of a share vector in nats: log E when balanced, 0 for one expert", () => {
    expect(shareEntropy([0.25, 0.25, 0.25, 0.25])).toBeCloseTo(Math.log(4), 14);
    expect(shareEntropy([0, 1, 0])).toBe(0);
    const p = [0.5, 0.3, 0.2, 0];
    expect(shareEntropy(p)).toBeCloseTo(
      -(0.5 * Math.log(0.5) + 0.3 * Math.log(0.3) + 0.2 * Math.log(0.2)),
      14,
    );
    // Any vector: at most log E, and dead experts do not count towards it.
    for (const E of [1, 3, 7]) {
      const s = randomShare(E, E > 1 ? 1 : 0);
      expect(shareEntropy(s)).toBeLessThanOrEqual(Math.log(E - (E > 1 ? 1 : 0)) + 1e-12);
      expect(shareEntropy(s)).toBeGreaterThanOrEqual(0);
    }
  });

  it("summarises a share vector: least and most used expert, dead ones", () => {
    const s = summarizeShare(Float32Array.from([0.5, 0, 0.125, 0.375, 0]));
    expect(s).toEqual({
      share: [0.5, 0, 0.125, 0.375, 0],
      entropy: shareEntropy([0.5, 0.125, 0.375]),
      min: 0,
      max: 0.5,
      dead: 2,
    });
  });

  it("a window averages the steps' shares; an expert is dead only if no step used it", () => {
    const w = new RoutingWindow();
    const steps = [
      new Map([
        ["blocks.0.moe", [0.5, 0.5, 0, 0]],
        ["blocks.1.moe", [1, 0]],
      ]),
      new Map([
        ["blocks.0.moe", [0.25, 0.25, 0.5, 0]],
        ["blocks.1.moe", [1, 0]],
      ]),
    ];
    for (const s of steps) w.add(s);
    const r = w.take();
    expect(Object.keys(r)).toEqual(["blocks.0.moe", "blocks.1.moe"]);
    expect(r["blocks.0.moe"]!.share).toEqual([0.375, 0.375, 0.25, 0]);
    expect(r["blocks.0.moe"]!.dead).toBe(1); // expert 2 was used in the second step
    expect(r["blocks.1.moe"]).toMatchObject({ share: [1, 0], dead: 1, min: 0, max: 1 });
    // The next window starts empty.
    w.add(new Map([["blocks.0.moe", [0, 0, 0, 1]]]));
    expect(w.take()["blocks.0.moe"]!.share).toEqual([0, 0, 0, 1]);
    // Random windows: the mean still sums to 1 and dead counts the zeros.
    for (let trial = 0; trial < 5; trial++) {
      const E = 1 + Math.floor(rand() * 9);
      const deadAll = Math.floor(rand() * E);
      const n = 1 + Math.floor(rand() * 6);
      for (let i = 0; i < n; i++) w.add(new Map([["m", randomShare(E, deadAll)]]));
      const m = w.take()["m"]!;
      expect(m.share).toHaveLength(E);
      expect(m.share.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
      expect(m.dead).toBe(deadAll);
    }
  });

  it("names the layer of a share output", () => {
    expect(routingShareLayer("routing:net.blocks.0.moe.share")).toBe("net.blocks.0.moe");
    expect(routingShareLayer("routing:moe#2.share")).toBe("moe#2");
    expect(routingShareLayer("routing:moe.tokens_per_expert")).toBeUndefined();
    expect(routingShareLayer("aux:moe.balance")).toBeUndefined();
  });

  it("metrics lines and progress carry per-layer routing; a terminal shows the range", () => {
    const routing = {
      "blocks.0.moe": summarizeShare([0.125, 0.375, 0.5, 0]),
      "blocks.1.moe": summarizeShare([0.25, 0.25, 0.25, 0.25]),
    };
    const row = JSON.parse(metricsLine({ ...metrics(4), routing })) as {
      routing: Record<string, { share: number[]; dead: number; entropy: number }>;
    };
    expect(row.routing["blocks.0.moe"]).toEqual({
      share: [0.125, 0.375, 0.5, 0],
      entropy: Number(routing["blocks.0.moe"].entropy.toPrecision(6)),
      min: 0,
      max: 0.5,
      dead: 1,
    });
    // A share is written to 6 significant digits: a tiny one is not rounded to 0.
    const tiny = JSON.parse(
      metricsLine({ ...metrics(5), routing: { m: summarizeShare([1e-9, 1 - 1e-9]) } }),
    ) as { routing: { m: { share: number[]; dead: number } } };
    expect(tiny.routing.m.share[0]).toBe(1e-9);
    expect(tiny.routing.m.dead).toBe(0);
    // No MoE layer: no routing key.
    expect(JSON.parse(metricsLine({ ...metrics(6), routing: {} }))).not.toHaveProperty("routing");

    const p = {
      step: 10,
      totalSteps: 10,
      loss: 1,
      terms: {},
      tokensPerS: 100,
      msPerStep: 10,
      lr: 0.001,
      routing,
    };
    expect(formatProgress(p, "lines")).toBe(
      "step 10/10 | loss 1.0000 | 100 tok/s | 10.0 ms/step | lr 1.00e-3 | ETA 0s | blocks.0.moe share 0.0-50.0% dead 1 | blocks.1.moe share 25.0-25.0% dead 0\n",
    );
    const three = { ...routing, "blocks.2.moe": summarizeShare([0.9, 0.1]) };
    expect(formatProgress({ ...p, routing: three }, "tty")).toContain(
      "| 3 MoE layers share 0.0-90.0% dead 1\x1b[K",
    );
    const json = JSON.parse(formatProgress(p, "json")) as { routing: unknown };
    expect(json.routing).toEqual(row.routing);
  });
});

describe("eval accuracy", () => {
  it("divides the summed counts, overall and per task; nothing counted is NaN (null in JSON)", () => {
    const counts = new Map<string, AccuracyCounts>([
      [
        "ce",
        {
          correct: 30,
          count: 40,
          tasks: { names: ["a", "b", "c"], correct: [10, 20, 0], count: [10, 30, 0] },
        },
      ],
      ["kd_ce", { correct: 0, count: 0 }],
    ]);
    const acc = accuracyOf(counts);
    expect(acc.accuracy).toEqual({ ce: 0.75, kd_ce: NaN });
    expect(acc.taskAccuracy).toEqual({ ce: { a: 1, b: 2 / 3, c: NaN } });
    expect(accuracyOf(new Map())).toEqual({});
    expect(accuracyOf(new Map([["ce", { correct: 1, count: 4 }]]))).toEqual({
      accuracy: { ce: 0.25 },
    });
    const e = { loss: 0.5, ...acc };
    expect(evalJson(e)).toEqual({
      eval_loss: 0.5,
      accuracy: { ce: 0.75, kd_ce: null },
      task_accuracy: { ce: { a: 1, b: 2 / 3, c: null } },
    });
    expect(JSON.parse(formatEval(20, e, "json"))).toEqual({
      event: "eval",
      step: 20,
      ...evalJson(e),
    });
    expect(formatEval(20, e, "lines")).toBe(
      "step 20: eval loss 0.5000, ce accuracy 75.0% (a 100.0%, b 66.7%, c -), kd_ce accuracy -\n",
    );
    // One term: its name is left out; without accuracies the line is the loss alone.
    expect(formatEval(7, { loss: 0.25, accuracy: { loss: 0.5 } }, "tty")).toBe(
      "\nstep 7: eval loss 0.2500, accuracy 50.0%\n",
    );
    expect(formatEval(7, { loss: 0.25 }, "lines")).toBe("step 7: eval loss 0.2500\n");
  });

  it("appends eval lines to metrics.jsonl", () => {
    const file = path.join(dir, "eval.jsonl");
    const log = new MetricsLog(file);
    log.append(metrics(1));
    log.appendEval(1, { loss: 0.25, accuracy: { loss: 0.5 }, taskAccuracy: { loss: { a: 0.5 } } });
    log.close();
    const lines = fs.readFileSync(file, "utf8").trimEnd().split("\n");
    expect(JSON.parse(lines[1]!)).toEqual({
      step: 1,
      eval_loss: 0.25,
      accuracy: { loss: 0.5 },
      task_accuracy: { loss: { a: 0.5 } },
    });
  });
});

describe("learning-rate schedules", () => {
  it("warms up linearly, then decays by cosine or linearly to the minimum", () => {
    const s = { lr: 1e-3, totalSteps: 110, warmupSteps: 10, minLr: 1e-4 };
    expect(learningRate(s, 1)).toBeCloseTo(1e-4, 15);
    expect(learningRate(s, 10)).toBeCloseTo(1e-3, 15);
    expect(learningRate(s, 60)).toBeCloseTo(1e-4 + 0.9e-3 * 0.5, 15);
    expect(learningRate(s, 110)).toBeCloseTo(1e-4, 15);
    expect(learningRate(s, 500)).toBeCloseTo(1e-4, 15);
    const lin = { ...s, decay: "linear" as const };
    expect(learningRate(lin, 35)).toBeCloseTo(1e-4 + 0.9e-3 * 0.75, 15);
    expect(learningRate({ ...s, decay: "constant" as const }, 80)).toBe(1e-3);
    // Cosine decay never increases.
    for (let t = 11; t < 110; t++)
      expect(learningRate(s, t + 1)).toBeLessThanOrEqual(learningRate(s, t));
  });

  it("rejects schedules that make no sense, in one line", () => {
    expect(() => checkSchedule({ lr: 0, totalSteps: 10 })).toThrow(
      "learning rate must be positive, got 0",
    );
    expect(() => checkSchedule({ lr: 1, totalSteps: 10, warmupSteps: 11 })).toThrow(
      "warmup steps must be an integer from 0 to 10, got 11",
    );
    expect(() => checkSchedule({ lr: 1, totalSteps: 10, minLr: 2 })).toThrow(
      "minimum learning rate must be between 0 and 1, got 2",
    );
  });
});
