// Checkpoints in the run directory: write → read round trip, the `latest` pointer, retention
// (last K and the best by eval loss), and resuming past torn or corrupt checkpoints.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { afterAll, describe, expect, it } from "vitest";

import {
  type Checkpoint,
  LATEST_FILE,
  findResumeCheckpoint,
  isOptimizerState,
  listCheckpoints,
  moecVersion,
  readCheckpoint,
  readLatestPointer,
  writeCheckpoint,
} from "../../../runtime/train/checkpoint.js";
import { prng } from "../gpu-harness.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "moec-ckpt-"));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
let runs = 0;
const newRun = () => path.join(root, `run${runs++}`);

function checkpoint(step: number, seed: number, evalLoss?: number): Omit<Checkpoint, "dir"> {
  const rand = prng(seed);
  const f32 = (n: number) => Float32Array.from({ length: n }, () => rand() - 0.5);
  const state: Checkpoint["state"] = {
    step,
    data: { epoch: 2, position: 48 },
    seeds: { init: 1, data: seed, noise: 1 },
    configHash: "c0ffee",
    sourceHash: "5ca1ab1e",
    moecVersion: moecVersion(),
  };
  if (evalLoss !== undefined) state.evalLoss = evalLoss;
  return {
    state,
    params: new Map([
      ["blocks.0.w", { shape: [3, 4], data: f32(12) }],
      ["blocks.0.b", { shape: [4], data: f32(4) }],
      ["ids", { shape: [2], data: Int32Array.of(7, -3) }],
    ]),
    optimizer: new Map([
      ["exp_avg.blocks.0.w", { shape: [3, 4], data: f32(12) }],
      ["exp_avg_sq.blocks.0.w", { shape: [3, 4], data: f32(12).map(Math.abs) }],
    ]),
  };
}

describe("checkpoints", () => {
  it("round-trips parameters, optimizer state and trainer state, then points latest at it", () => {
    const run = newRun();
    const c = checkpoint(100, 1);
    const dir = writeCheckpoint(run, c);
    expect(dir).toBe(path.join(run, "ckpt-100"));
    expect(fs.readdirSync(dir).sort()).toEqual([
      "model.safetensors",
      "optimizer.safetensors",
      "trainer_state.json",
    ]);
    expect(fs.readFileSync(path.join(run, LATEST_FILE), "utf8")).toBe("ckpt-100\n");
    expect(readLatestPointer(run)).toBe(dir);
    const back = readCheckpoint(dir);
    expect(back.state).toEqual(c.state);
    expect(back.state.moecVersion).toBe(
      (JSON.parse(fs.readFileSync("package.json", "utf8")) as { version: string }).version,
    );
    expect(back.params).toEqual(c.params);
    expect(back.optimizer).toEqual(c.optimizer);
    expect([...back.optimizer.keys()].every(isOptimizerState)).toBe(true);
    expect([...back.params.keys()].some(isOptimizerState)).toBe(false);
    // No temporary left behind.
    expect(fs.readdirSync(run).sort()).toEqual(["ckpt-100", "latest"]);
  });

  it("keeps the last K and the best by eval loss", () => {
    const run = newRun();
    const losses = [0.9, 0.2, 0.5, 0.4, 0.6];
    losses.forEach((loss, i) =>
      writeCheckpoint(run, checkpoint(10 * (i + 1), i, loss), { keepLast: 2, keepBest: true }),
    );
    expect(listCheckpoints(run).map((c) => c.step)).toEqual([50, 40, 20]);
    expect(readLatestPointer(run)).toBe(path.join(run, "ckpt-50"));
    writeCheckpoint(run, checkpoint(60, 9), { keepLast: 1 });
    expect(listCheckpoints(run).map((c) => c.step)).toEqual([60]);
  });

  it("resumes from the newest complete checkpoint, skipping torn ones with a warning", () => {
    const corruptions: [string, (dir: string) => void, RegExp][] = [
      [
        "a missing file",
        (d) => fs.rmSync(path.join(d, "optimizer.safetensors")),
        /missing optimizer\.safetensors/,
      ],
      [
        "a truncated tensor file",
        (d) => {
          const f = path.join(d, "model.safetensors");
          fs.truncateSync(f, fs.statSync(f).size - 5);
        },
        /model\.safetensors: .*/,
      ],
      [
        "a bad safetensors header",
        (d) =>
          fs.writeFileSync(
            path.join(d, "model.safetensors"),
            Buffer.from([8, 0, 0, 0, 0, 0, 0, 0, 123, 34]),
          ),
        /model\.safetensors: .*/,
      ],
      [
        "JSON that does not parse",
        (d) => fs.writeFileSync(path.join(d, "trainer_state.json"), '{"step": 20, "data'),
        /trainer_state\.json does not parse/,
      ],
    ];
    for (const [what, corrupt, why] of corruptions) {
      const run = newRun();
      writeCheckpoint(run, checkpoint(10, 1));
      const good = checkpoint(10, 1);
      writeCheckpoint(run, checkpoint(20, 2));
      corrupt(path.join(run, "ckpt-20"));
      // A temporary directory of an interrupted write is not a checkpoint; its writer (a pid
      // above Linux's pid_max) is gone, so it is removed, with a warning.
      const stale = path.join(run, ".ckpt-30.4999999.abc.tmp");
      fs.mkdirSync(stale);
      const warnings: string[] = [];
      const found = findResumeCheckpoint(run, (w) => warnings.push(w));
      expect(found?.state.step, what).toBe(10);
      expect(found?.params).toEqual(good.params);
      expect(fs.existsSync(stale)).toBe(false);
      expect(warnings, what).toHaveLength(2);
      expect(warnings[0]).toBe("removed .ckpt-30.4999999.abc.tmp, left by an interrupted save");
      expect(
        warnings[1]!.startsWith(`skipping checkpoint ${path.join(run, "ckpt-20")}: `),
        what,
      ).toBe(true);
      expect(warnings[1], what).toMatch(why);
      expect(warnings[1], what).not.toContain("\n");
    }
  });

  it("finds nothing in an empty or missing run directory", () => {
    const warnings: string[] = [];
    expect(findResumeCheckpoint(newRun(), (w) => warnings.push(w))).toBeUndefined();
    const run = newRun();
    writeCheckpoint(run, checkpoint(5, 1));
    fs.rmSync(path.join(run, "ckpt-5", "trainer_state.json"));
    expect(findResumeCheckpoint(run, (w) => warnings.push(w))).toBeUndefined();
    expect(warnings).toEqual([
      `skipping checkpoint ${path.join(run, "ckpt-5")}: missing trainer_state.json`,
    ]);
  });
});
