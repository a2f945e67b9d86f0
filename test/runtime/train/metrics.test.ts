// metrics.jsonl lines, resuming a log (lines past the checkpoint and a torn line dropped), the
// smoothed loss, the progress line for a terminal and for --json, and the lr schedules.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import {
  Ema,
  MetricsLog,
  type StepMetrics,
  duration,
  formatProgress,
  metricsLine,
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
