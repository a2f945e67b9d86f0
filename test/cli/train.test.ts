// `moec train` end to end on the WebGPU device (a child process per run, one device each):
// a shipped example and a small classifier overfit their data, a checkpoint holds what
// `moec params` names, the same seed gives the same bytes, a run killed with SIGKILL resumes
// to the uninterrupted run's weights bit for bit, a loss that blows up stops with exit 3, and
// bad input is one line before anything runs.
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { readSafetensorsFile, writeSafetensorsFile } from "../../runtime/safetensors.js";
import { moec, moecNodeArgs, root } from "./moec-cli.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-train-"));

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/**
 * `moec run SRC ARGS -o <tmp>/TO`: the result, and the logits it wrote, read on demand (a
 * refused run writes none).
 */
function runForLogits(src: string, args: string[], to: string) {
  const o = path.join(tmp, to);
  const res = moec(["run", src, ...args, "-o", o]);
  return { res, logits: () => readSafetensorsFile(o).read("logits").data as Float32Array };
}

/** The tensors of a safetensors file as name → bytes (for bit-for-bit comparisons). */
function bytesOf(file: string): Map<string, Buffer> {
  const st = readSafetensorsFile(file);
  return new Map(
    st.names().map((n) => {
      const d = st.read(n).data as Float32Array;
      return [n, Buffer.from(d.buffer, d.byteOffset, d.byteLength)];
    }),
  );
}

/** Two safetensors files hold the same tensors, bit for bit. */
function expectSameTensors(fileA: string, fileB: string): void {
  const a = bytesOf(fileA);
  const b = bytesOf(fileB);
  expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
  for (const [k, v] of a) expect(b.get(k)!.equals(v), k).toBe(true);
}

function lastMetrics(runDir: string): Record<string, number> {
  const lines = fs.readFileSync(path.join(runDir, "metrics.jsonl"), "utf8").trim().split("\n");
  return JSON.parse(lines.at(-1)!) as Record<string, number>;
}

const classifier = path.join(tmp, "clf.moe");
fs.writeFileSync(
  classifier,
  `import std.nn { Embedding, Linear }
import std.optim { AdamW }

model Clf(lr: Float = 0.05) {
  in tokens: i32[B, T]
  out logits: f32[B, T, 16]
  embed = Embedding(16, 8)
  head = Linear(8, 16)
  logits = head(embed(tokens))
}

train Fit(lr: Float = 0.05) {
  in tokens: i32[B, T]
  in targets: i32[B, T]
  net = Clf()
  loss = cross_entropy(net(tokens), targets)
  optimizer = AdamW(lr: lr, max_norm: 1.0)
}

train Frozen() {
  in tokens: i32[B, T]
  in targets: i32[B, T]
  net = frozen Clf()
  loss = cross_entropy(net(tokens), targets)
  optimizer = AdamW()
}
`,
);

/** 8 sequences of length 5 over 16 symbols, each target a fixed function of its token. */
const sequences = path.join(tmp, "seq.safetensors");
{
  const n = 8 * 5;
  const tokens = Int32Array.from({ length: n }, (_, i) => (i * 7 + 3) % 16);
  const targets = tokens.map((t) => (t * 5 + 1) % 16);
  writeSafetensorsFile(
    sequences,
    new Map([
      ["tokens", { dtype: "I32", shape: [8, 5], data: tokens }],
      ["targets", { dtype: "I32", shape: [8, 5], data: targets }],
    ]),
  );
}

function paramNames(file: string, program: string): string[] {
  const r = moec(["params", file, "--program", program, "--json"]);
  expect(r.code).toBe(0);
  const report = JSON.parse(r.stdout) as { params: { name: string }[] };
  return report.params.map((p) => p.name).sort();
}

/** A checkpoint's parameters without its LoRAs, named as the model names them (no `net.`). */
function baseWeights(ckpt: string, out: string): string {
  const model = readSafetensorsFile(path.join(ckpt, "model.safetensors"));
  const tensors = model
    .names()
    .filter((n) => !n.includes(".lora_"))
    .map((n) => {
      const t = model.read(n);
      const data = t.data as Float32Array;
      return [n.replace(/^net\./, ""), { dtype: "F32", shape: [...t.shape], data }] as const;
    });
  writeSafetensorsFile(out, new Map(tensors));
  return out;
}

const maxDiff = (a: Float32Array, b: Float32Array) =>
  a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

describe("moec train", () => {
  it("overfits 8 sequences; the checkpoint holds what moec params names, bit-identical per seed", () => {
    const runs = ["a", "b"].map((k) => path.join(tmp, `clf-${k}`));
    for (const out of runs) {
      const r = moec([
        "train",
        classifier,
        "--data",
        sequences,
        "--batch",
        "8",
        "--steps",
        "150",
        "--out",
        out,
      ]);
      expect(r.stderr).toMatch(/training Fit on /);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/trained Fit: 150 steps, loss \d/);
    }
    const m = lastMetrics(runs[0]!);
    expect(m.step).toBe(150);
    expect(m.loss).toBeLessThan(0.01);
    const ckpt = path.join(runs[0]!, "ckpt-150");
    expect(fs.readFileSync(path.join(runs[0]!, "latest"), "utf8").trim()).toBe("ckpt-150");
    const model = bytesOf(path.join(ckpt, "model.safetensors"));
    expect([...model.keys()].sort()).toEqual(paramNames(classifier, "Fit"));
    const optimizer = bytesOf(path.join(ckpt, "optimizer.safetensors"));
    expect([...optimizer.keys()].sort()).toEqual(
      [...model.keys()].flatMap((k) => [`exp_avg.${k}`, `exp_avg_sq.${k}`]).sort(),
    );
    const state = JSON.parse(fs.readFileSync(path.join(ckpt, "trainer_state.json"), "utf8"));
    expect(state.step).toBe(150);
    // The same seed twice: the same bytes.
    expectSameTensors(
      path.join(ckpt, "model.safetensors"),
      path.join(runs[1]!, "ckpt-150", "model.safetensors"),
    );
  });

  it("--eval-data records the held-out loss and accuracy at each checkpoint and --eval-every", () => {
    // The sequences with every 7th target ignored: those positions count for neither.
    const ignored = path.join(tmp, "seq-ignored.safetensors");
    const st = readSafetensorsFile(sequences);
    const targets = Int32Array.from(st.read("targets").data, (y, i) => (i % 7 === 0 ? -100 : y));
    writeSafetensorsFile(
      ignored,
      new Map([
        ["tokens", { dtype: "I32", shape: [8, 5], data: st.read("tokens").data as Int32Array }],
        ["targets", { dtype: "I32", shape: [8, 5], data: targets }],
      ]),
    );
    const out = path.join(tmp, "eval");
    const r = moec([
      "train",
      classifier,
      "--data",
      ignored,
      "--eval-data",
      ignored,
      "--batch",
      "4",
      "--steps",
      "150",
      "--save-every",
      "75",
      "--eval-every",
      "50",
      "--out",
      out,
    ]);
    expect(r.code).toBe(0);
    const lines = fs.readFileSync(path.join(out, "metrics.jsonl"), "utf8").trim().split("\n");
    const evals = lines
      .map((l) => JSON.parse(l) as Record<string, number>)
      .filter((m) => "eval_loss" in m);
    // At each checkpoint (75, 150) and every 50 steps between, where no checkpoint is written.
    expect(evals.map((m) => m.step)).toEqual([50, 75, 100, 150]);
    expect(fs.existsSync(path.join(out, "ckpt-50"))).toBe(false);
    // The same examples as training: by the end the held-out loss is small too.
    expect(evals[3]!.eval_loss).toBeLessThan(evals[0]!.eval_loss);
    expect(evals[3]!.eval_loss).toBeLessThan(0.05);
    // Every counted position right: an ignored label (-100) counted as a miss would show.
    const accuracy = evals.map((m) => (m.accuracy as unknown as Record<string, number>).loss!);
    expect(accuracy[3]).toBe(1);
    expect(accuracy[0]).toBeGreaterThanOrEqual(0);
    expect(r.stderr).toMatch(/step 150: eval loss \d\.\d{4}, accuracy 100\.0%\n/);
    const state = JSON.parse(
      fs.readFileSync(path.join(out, "ckpt-150", "trainer_state.json"), "utf8"),
    );
    expect(state.evalLoss).toBe(evals[3]!.eval_loss);
    expect(state.evalAccuracy).toEqual({ loss: 1 });
    // No MoE layer: no routing in the step lines.
    expect(lastMetrics(out)).not.toHaveProperty("routing");

    const alone = moec(["train", classifier, "--data", ignored, "--eval-every", "5"]);
    expect(alone.code).toBe(2);
    expect(alone.stderr).toMatch(/^moec: --eval-every needs --eval-data/m);
  });

  it("trains the shipped symbol-maps example (a task-aware top-1 MoE) well below chance, with routing and per-task accuracy", () => {
    const data = path.join(tmp, "maps.safetensors");
    const gen = moec([
      "data",
      "gen",
      "symbols",
      "--tasks",
      "4",
      "--symbols",
      "16",
      "--count",
      "512",
      "-o",
      data,
    ]);
    expect(gen.code).toBe(0);
    const out = path.join(tmp, "maps");
    const r = moec([
      "train",
      "examples/symbol-maps.moe",
      "--data",
      data,
      "--batch",
      "64",
      "--steps",
      "200",
      "--out",
      out,
      "--eval-data",
      data,
      "--save-every",
      "100",
      "--json",
    ]);
    expect(r.code).toBe(0);
    const events = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const done = events.at(-1)!;
    expect(done.event).toBe("done");
    expect(done.steps).toBe(200);
    // Chance is ln 16 = 2.77; the balance loss is reported as its own term.
    expect(done.firstLoss as number).toBeGreaterThan(2.5);
    expect(done.lastLoss as number).toBeLessThan(2.0);
    const lines = fs
      .readFileSync(path.join(out, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);

    // Routing: one share per expert of the layer (as moec params counts them), summing to 1,
    // in every step line (that step) and every --json progress event (the logging window).
    const experts = new Set(
      paramNames("examples/symbol-maps.moe", "Fit").flatMap(
        (n) => /^net\.moe\.experts\.(\d+)\./.exec(n)?.[1] ?? [],
      ),
    ).size;
    expect(experts).toBe(4);
    type Routing = Record<
      string,
      { share: number[]; entropy: number; min: number; max: number; dead: number }
    >;
    const checkRouting = (routing: Routing) => {
      expect(Object.keys(routing)).toEqual(["net.moe"]);
      const { share, entropy, min, max, dead } = routing["net.moe"]!;
      expect(share).toHaveLength(experts);
      expect(share.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 4);
      expect(dead).toBe(share.filter((x) => x === 0).length);
      expect(min).toBe(Math.min(...share));
      expect(max).toBe(Math.max(...share));
      expect(entropy).toBeGreaterThanOrEqual(0);
      expect(entropy).toBeLessThanOrEqual(Math.log(experts) + 1e-5);
    };
    const steps = lines.filter((l) => !("eval_loss" in l));
    expect(steps).toHaveLength(200);
    expect(steps.at(-1)!["aux:net.moe.balance"]).toBeGreaterThan(0);
    for (const l of steps) checkRouting(l.routing as Routing);
    // Top-1 over 64 examples: each share is a multiple of 1/64.
    for (const x of (steps[0]!.routing as Routing)["net.moe"]!.share)
      expect(x * 64).toBeCloseTo(Math.round(x * 64), 3);
    const progress = events.filter((e) => e.event === undefined);
    expect(progress.length).toBeGreaterThan(0);
    for (const e of progress) checkRouting(e.routing as Routing);

    // Eval: accuracy on the training data, overall and per task (the tasks declaration's
    // names), in metrics.jsonl, the --json events and trainer_state.json.
    const evals = lines.filter((l) => "eval_loss" in l);
    expect(evals.map((l) => l.step)).toEqual([100, 200]);
    const evalEvents = events.filter((e) => e.event === "eval");
    expect(evalEvents.map(({ event: _e, ...rest }) => rest)).toEqual(evals);
    const taskIds = readSafetensorsFile(data).read("task").data;
    const perTask = [0, 1, 2, 3].map((k) => taskIds.filter((t) => t === k).length);
    for (const l of evals) {
      const accuracy = (l.accuracy as Record<string, number>).loss!;
      const tasks = (l.task_accuracy as Record<string, Record<string, number>>).loss!;
      expect(Object.keys(tasks)).toEqual(["m0", "m1", "m2", "m3"]);
      for (const a of [accuracy, ...Object.values(tasks)]) {
        expect(a).toBeGreaterThanOrEqual(0);
        expect(a).toBeLessThanOrEqual(1);
      }
      // Every example is in one task: the overall accuracy is the tasks' weighted mean.
      const weighted = Object.values(tasks).reduce((a, t, k) => a + t * perTask[k]!, 0);
      expect(accuracy).toBeCloseTo(weighted / taskIds.length, 6);
    }
    // Well above chance (1/16) after training on the same examples.
    const final = (evals[1]!.accuracy as Record<string, number>).loss!;
    expect(final).toBeGreaterThan(4 / 16);
    const state = JSON.parse(
      fs.readFileSync(path.join(out, "ckpt-200", "trainer_state.json"), "utf8"),
    );
    expect(state.evalAccuracy).toEqual(evals[1]!.accuracy);
    expect(state.evalTaskAccuracy).toEqual(evals[1]!.task_accuracy);
  });

  // 3000 steps twice: a minute on an idle machine, more on a loaded one.
  it(
    "resumes a run killed with SIGKILL to the uninterrupted run's weights, bit for bit",
    { timeout: 240_000 },
    async () => {
      const args = (out: string) => [
        "train",
        classifier,
        "--data",
        sequences,
        "--batch",
        "4",
        "--steps",
        "3000",
        "--save-every",
        "25",
        "--out",
        out,
      ];
      const whole = path.join(tmp, "whole");
      expect(moec(args(whole)).code).toBe(0);
      const killed = path.join(tmp, "killed");
      const child: ChildProcess = spawn(process.execPath, [...moecNodeArgs, ...args(killed)], {
        cwd: root,
        stdio: "ignore",
      });
      const exited = new Promise<number | null>((resolve) =>
        child.on("exit", (code) => resolve(code)),
      );
      // Kill it once it has written its second checkpoint, mid-run.
      const deadline = Date.now() + 200_000;
      while (Date.now() < deadline && !fs.existsSync(path.join(killed, "ckpt-50")))
        await new Promise((r) => setTimeout(r, 5));
      child.kill("SIGKILL");
      await exited;
      const kept = fs.readdirSync(killed).filter((d) => d.startsWith("ckpt-"));
      expect(kept.length).toBeGreaterThan(0);
      expect(kept).not.toContain("ckpt-3000"); // it was killed before the end
      const resumed = moec([...args(killed), "--resume"]);
      expect(resumed.code).toBe(0);
      expect(resumed.stdout).toMatch(/resumed after step \d+/);
      for (const file of ["model.safetensors", "optimizer.safetensors"])
        expectSameTensors(
          path.join(whole, "ckpt-3000", file),
          path.join(killed, "ckpt-3000", file),
        );
    },
  );

  it(
    "a run killed with SIGKILL in the middle of a save resumes to the same bytes",
    { timeout: 240_000 },
    async () => {
      // A checkpoint every step, so saves are most of the run; a kill lands when a save's
      // temporary directory is there.
      const args = (out: string) => [
        "train",
        classifier,
        "--data",
        sequences,
        "--batch",
        "4",
        "--steps",
        "120",
        "--save-every",
        "1",
        "--keep",
        "2",
        "--out",
        out,
      ];
      const whole = path.join(tmp, "save-whole");
      expect(moec(args(whole)).code).toBe(0);
      const killed = path.join(tmp, "save-killed");
      const temporary = (name: string) => /^\.ckpt-\d+\.\d+\.[0-9a-f]+\.tmp$/.test(name);
      let midSave = 0;
      for (let attempt = 0; attempt < 6 && midSave === 0; attempt++) {
        const child = spawn(
          process.execPath,
          [...moecNodeArgs, ...args(killed), ...(attempt > 0 ? ["--resume"] : [])],
          { cwd: root, stdio: "ignore" },
        );
        const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
        const deadline = Date.now() + 60_000;
        let seen = false;
        while (!seen && Date.now() < deadline) {
          seen = fs.existsSync(killed) && fs.readdirSync(killed).some(temporary);
          if (!seen) await new Promise((r) => setTimeout(r, 1));
        }
        child.kill("SIGKILL");
        await exited;
        if (fs.readdirSync(killed).some(temporary)) midSave++;
      }
      expect(midSave, "no kill landed during a save").toBeGreaterThan(0);
      const resumed = moec([...args(killed), "--resume"]);
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stderr).toMatch(
        /removed \.ckpt-\d+\.\d+\.[0-9a-f]+\.tmp, left by an interrupted save/,
      );
      expect(fs.readdirSync(killed).filter(temporary)).toEqual([]);
      for (const file of ["model.safetensors", "optimizer.safetensors"])
        expectSameTensors(path.join(whole, "ckpt-120", file), path.join(killed, "ckpt-120", file));
    },
  );

  it(
    "a checkpoint runs as it is, and its LoRA adapters load as a PEFT adapter on the base",
    { timeout: 240_000 },
    () => {
      const src = path.join(tmp, "tune.moe");
      fs.writeFileSync(
        src,
        `import std.nn { Embedding, Linear }
import std.adapt { LoRA }
import std.optim { AdamW }
model Tagger() {
  in tokens: i32[B, T]
  out logits: f32[B, T, 16]
  embed = frozen Embedding(16, 8)
  proj = frozen Linear(8, 8) with LoRA(r: 2, alpha: 4.0)
  head = frozen Linear(8, 16) with LoRA(r: 4, alpha: 8.0)
  logits = head(proj(embed(tokens)))
}
train Tune() {
  in tokens: i32[B, T]
  in targets: i32[B, T]
  net = Tagger()
  loss = cross_entropy(net(tokens), targets)
  optimizer = AdamW(lr: 0.05)
}
`,
      );
      const out = path.join(tmp, "tune-run");
      const r = moec([
        "train",
        src,
        "--data",
        sequences,
        "--batch",
        "8",
        "--steps",
        "30",
        "--out",
        out,
      ]);
      expect(r.code, r.stderr).toBe(0);
      const ckpt = path.join(out, "ckpt-30");
      const config = JSON.parse(
        fs.readFileSync(path.join(ckpt, "adapter", "adapter_config.json"), "utf8"),
      );
      // Two ranks: the first LoRA's in r and lora_alpha, the other's in PEFT's patterns.
      expect(config).toMatchObject({
        peft_type: "LORA",
        r: 2,
        lora_alpha: 4,
        rank_pattern: { head: 4 },
        alpha_pattern: { head: 8 },
      });
      expect(config.target_modules.sort()).toEqual(["head", "proj"]);
      const adapter = readSafetensorsFile(path.join(ckpt, "adapter", "adapter_model.safetensors"));
      expect(adapter.names().sort()).toEqual([
        "base_model.model.head.lora_A.weight",
        "base_model.model.head.lora_B.weight",
        "base_model.model.proj.lora_A.weight",
        "base_model.model.proj.lora_B.weight",
      ]);
      // The base alone, by the model's own names: the checkpoint's frozen parameters.
      const base = baseWeights(ckpt, path.join(tmp, "tune-base.safetensors"));
      const run = (weights: string[], to: string) => {
        const r = runForLogits(
          src,
          ["--dim", "B=2", "--dim", "T=3", "--seed", "4", ...weights],
          to,
        );
        expect(r.res.code, r.res.stderr).toBe(0);
        return { res: r.res, logits: r.logits() };
      };
      const whole = run(
        ["--weights", path.join(ckpt, "model.safetensors")],
        "tune-whole.safetensors",
      );
      expect(whole.res.stderr).toMatch(
        /reading the parameters under `net\.` of .* \(a training checkpoint\)/,
      );
      const peft = run(
        ["--weights", base, "--adapter", path.join(ckpt, "adapter")],
        "tune-peft.safetensors",
      );
      const plain = run(["--weights", base, "--init-missing"], "tune-plain.safetensors");
      expect(maxDiff(whole.logits, peft.logits)).toBeLessThan(1e-5);
      // The adapters changed the model: without them (LoRA B zero-initialised) it differs.
      expect(maxDiff(whole.logits, plain.logits)).toBeGreaterThan(1e-3);
    },
  );

  it(
    "per-task LoRAs placed by targets train into one PEFT adapter per task, which load back by task",
    { timeout: 240_000 },
    () => {
      const src = path.join(tmp, "task-tune.moe");
      fs.writeFileSync(
        src,
        `import std.nn { Embedding, Linear }
import std.adapt { LoRA }
import std.optim { AdamW }
tasks Lang { a, b }
block Body(d: Dim) {
  in x: f32[B, T, d]
  out y: f32[B, T, d]
  proj = Linear(d, d)
  head = Linear(d, d)
  y = head(relu(proj(x)))
}
model Tagger() {
  in tokens: i32[B, T]
  in task: Lang[B]
  out logits: f32[B, T, 16]
  embed = frozen Embedding(16, 8)
  body = frozen Body(8) with per task LoRA(r: { a: 2, b: 3 }, alpha: 4.0, targets: ["proj", "head"])
  out_proj = frozen Linear(8, 16)
  logits = out_proj(body(embed(tokens), task))
}
train Tune() {
  in tokens: i32[B, T]
  in task: Lang[B]
  in targets: i32[B, T]
  net = Tagger()
  loss = cross_entropy(net(tokens, task), targets)
  optimizer = AdamW(lr: 0.05)
}
`,
      );
      const data = path.join(tmp, "task-seq.safetensors");
      const seq = readSafetensorsFile(sequences);
      const rows = seq.info("tokens").shape[0]!;
      writeSafetensorsFile(
        data,
        new Map([
          ...["tokens", "targets"].map((n) => {
            const t = seq.read(n);
            return [n, { dtype: "I32", shape: [...t.shape], data: t.data as Int32Array }] as const;
          }),
          [
            "task",
            {
              dtype: "I32",
              shape: [rows],
              data: Int32Array.from({ length: rows }, (_, i) => i % 2),
            },
          ],
        ]),
      );
      const out = path.join(tmp, "task-tune-run");
      const r = moec(["train", src, "--data", data, "--batch", "8", "--steps", "20", "--out", out]);
      expect(r.code, r.stderr).toBe(0);
      const ckpt = path.join(out, "ckpt-20");
      expect(
        fs
          .readdirSync(ckpt)
          .filter((f) => f.startsWith("adapter"))
          .sort(),
      ).toEqual(["adapter-a", "adapter-b"]);
      for (const [task, r] of [
        ["a", 2],
        ["b", 3],
      ] as const) {
        const config = JSON.parse(
          fs.readFileSync(path.join(ckpt, `adapter-${task}`, "adapter_config.json"), "utf8"),
        );
        expect(config).toMatchObject({ r, lora_alpha: 4, rank_pattern: {} });
        expect(config.target_modules.sort()).toEqual(["head", "proj"]);
      }
      const base = baseWeights(ckpt, path.join(tmp, "task-tune-base.safetensors"));
      // Inputs with both tasks and an example of no task.
      const inputs = path.join(tmp, "task-tune-inputs.safetensors");
      writeSafetensorsFile(
        inputs,
        new Map([
          [
            "tokens",
            {
              dtype: "I32",
              shape: [3, 4],
              data: Int32Array.from([1, 5, 9, 2, 7, 3, 3, 8, 0, 4, 11, 6]),
            },
          ],
          ["task", { dtype: "I32", shape: [3], data: Int32Array.from([1, -1, 0]) }],
        ]),
      );
      const run = (weights: string[], to: string) =>
        runForLogits(src, ["--inputs", inputs, "--dim", "B=3", "--dim", "T=4", ...weights], to);
      const whole = run(
        ["--weights", path.join(ckpt, "model.safetensors")],
        "tt-whole.safetensors",
      );
      expect(whole.res.code, whole.res.stderr).toBe(0);
      const adapters = ["a", "b"].flatMap((t) => [
        "--adapter",
        `${t}=${path.join(ckpt, `adapter-${t}`)}`,
      ]);
      const peft = run(["--weights", base, ...adapters], "tt-peft.safetensors");
      expect(peft.res.code, peft.res.stderr).toBe(0);
      expect(maxDiff(whole.logits(), peft.logits())).toBeLessThan(1e-5);
      // The base alone (LoRA B zero-initialised): the examples of a task differ, the one of no
      // task (row 1) is the same.
      const plain = run(["--weights", base, "--init-missing"], "tt-plain.safetensors");
      expect(plain.res.code, plain.res.stderr).toBe(0);
      const row = (v: Float32Array, i: number) => v.subarray(i * 4 * 16, (i + 1) * 4 * 16);
      for (const i of [0, 2])
        expect(maxDiff(row(peft.logits(), i), row(plain.logits(), i))).toBeGreaterThan(1e-3);
      expect(maxDiff(row(peft.logits(), 1), row(plain.logits(), 1))).toBeLessThan(1e-6);
      // Swapping the tasks' adapters changes the tasks' examples (ranks differ: refused).
      const swapped = run(
        [
          "--weights",
          base,
          "--adapter",
          `a=${path.join(ckpt, "adapter-b")}`,
          "--adapter",
          `b=${path.join(ckpt, "adapter-a")}`,
        ],
        "tt-swapped.safetensors",
      );
      expect(swapped.res.code).toBe(1);
      expect(swapped.res.stderr).toMatch(/r 3, lora_alpha 4 .* the model's LoRA there has r 2/);
      // A plain --adapter, a task left out, a task the model has not: one line, exit 2.
      for (const [args, message] of [
        [
          ["--adapter", path.join(ckpt, "adapter-a")],
          /LoRAs are `per task` \(a, b\): give each task's adapter as --adapter TASK=DIR/,
        ],
        [adapters.slice(0, 2), /LoRAs of task b have no adapter: --adapter b=DIR/],
        [
          [...adapters, "--adapter", `c=${path.join(ckpt, "adapter-a")}`],
          /no `per task` LoRAs of a task c \(its tasks: a, b\)/,
        ],
      ] as const) {
        const bad = run(["--weights", base, ...args], "tt-bad.safetensors");
        expect(bad.res.code, bad.res.stderr).toBe(2);
        expect(bad.res.stderr).toMatch(message);
        expect(bad.res.stderr.trim().split("\n")).toHaveLength(1);
      }
    },
  );

  // Four runs in child processes: give them time on a loaded two-core machine.
  it(
    "dropout and router jitter replay per step: a resumed run ends on the same bytes",
    { timeout: 240_000 },
    () => {
      const noisy = path.join(tmp, "noisy.moe");
      fs.writeFileSync(
        noisy,
        `import std.nn { Embedding, Linear, FFN }
import std.adapt { LoRA }
import std.route { MoE, TopK }
import std.optim { AdamW }
model Net() {
  in tokens: i32[B, T]
  out logits: f32[B, T, 16]
  embed = Embedding(16, 8)
  moe = MoE(router: TopK(k: 1, noise: 0.3, renormalize: false), experts: [FFN(8, 8); 2])
  head = Linear(8, 16) with LoRA(r: 2, dropout: 0.3)
  x = embed(tokens)
  logits = head(x + moe(x))
}
train Fit() {
  in tokens: i32[B, T]
  in targets: i32[B, T]
  net = Net()
  loss = cross_entropy(net(tokens), targets)
  optimizer = AdamW(lr: 0.02)
}
`,
      );
      const args = (out: string) => [
        "train",
        noisy,
        "--data",
        sequences,
        "--batch",
        "4",
        "--steps",
        "40",
        "--save-every",
        "20",
        "--out",
        out,
      ];
      const whole = path.join(tmp, "noisy-whole");
      const r = moec(args(whole));
      expect(r.code, r.stderr).toBe(0);
      const losses = fs
        .readFileSync(path.join(whole, "metrics.jsonl"), "utf8")
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as { loss?: number })
        .flatMap((m) => (m.loss === undefined ? [] : [m.loss]));
      expect(losses.every(Number.isFinite)).toBe(true);
      // Resume from step 20 (the step-40 checkpoint removed): steps 21–40 draw the same masks.
      const resumed = path.join(tmp, "noisy-resumed");
      fs.cpSync(whole, resumed, { recursive: true });
      fs.rmSync(path.join(resumed, "ckpt-40"), { recursive: true });
      fs.writeFileSync(path.join(resumed, "latest"), "ckpt-20\n");
      const again = moec([...args(resumed), "--resume"]);
      expect(again.code, again.stderr).toBe(0);
      for (const file of ["model.safetensors", "optimizer.safetensors"])
        expectSameTensors(path.join(whole, "ckpt-40", file), path.join(resumed, "ckpt-40", file));
      // Another seed draws other masks: other bytes, though the data order is the same.
      const seeded = path.join(tmp, "noisy-seed");
      expect(moec([...args(seeded), "--seed", "9"]).code).toBe(0);
      const a = bytesOf(path.join(whole, "ckpt-40", "model.safetensors"));
      const b = bytesOf(path.join(seeded, "ckpt-40", "model.safetensors"));
      expect([...a].some(([k, v]) => !b.get(k)!.equals(v))).toBe(true);
    },
  );

  it("stops with exit 3 at the step whose loss is not finite, keeping the last finite checkpoint", () => {
    const out = path.join(tmp, "blowup");
    // An absurd learning rate overflows the weights after the first update.
    const r = moec([
      "train",
      classifier,
      "--data",
      sequences,
      "--batch",
      "8",
      "--steps",
      "20",
      "--save-every",
      "1",
      "--set",
      "lr=1e30",
      "--out",
      out,
    ]);
    expect(r.code).toBe(3);
    const m =
      /training stopped at step (\d+): (.+) is (NaN|-?Infinity); (.+) holds the last finite state/.exec(
        r.stderr,
      );
    expect(m, r.stderr).not.toBeNull();
    const step = Number(m![1]);
    expect(step).toBeGreaterThan(1);
    // The newest checkpoint is from before the stop, and every weight in it is finite.
    const latest = fs.readFileSync(path.join(out, "latest"), "utf8").trim();
    expect(Number(latest.replace("ckpt-", ""))).toBeLessThan(step);
    expect(m![4]).toContain(latest);
    // Where: the step replayed in the reference names the first non-finite value's source,
    // with code frames down from the program's own line.
    expect(r.stderr).toMatch(
      new RegExp(`step ${step}'s first non-finite value .*: -?(Infinity|NaN) in \``),
    );
    expect(r.stderr).toMatch(/clf\.moe:\d+:\d+\n.*\n.*\n.*\^+/);
    for (const t of bytesOf(path.join(out, latest, "model.safetensors")).values()) {
      const f = new Float32Array(t.buffer.slice(t.byteOffset, t.byteOffset + t.byteLength));
      expect(f.every(Number.isFinite)).toBe(true);
    }
  });

  it("refuses bad input with one line before it runs", () => {
    const noData = moec(["train", classifier]);
    expect(noData.code).toBe(2);
    expect(noData.stderr).toMatch(/missing --data FILE/);

    const wrong = path.join(tmp, "wrong.safetensors");
    writeSafetensorsFile(
      wrong,
      new Map([
        ["tokens", { dtype: "F32", shape: [8, 5], data: new Float32Array(40).fill(1) }],
        ["targets", { dtype: "I32", shape: [8, 5], data: new Int32Array(40) }],
      ]),
    );
    const dtype = moec([
      "train",
      classifier,
      "--data",
      wrong,
      "--batch",
      "8",
      "--out",
      path.join(tmp, "w"),
    ]);
    expect(dtype.code).toBe(1);
    expect(dtype.stderr).toMatch(/tensor tokens is F32, its input is i32/);

    const frozen = moec([
      "train",
      classifier,
      "--program",
      "Frozen",
      "--data",
      sequences,
      "--batch",
      "8",
    ]);
    expect(frozen.code).toBe(1);
    expect(frozen.stderr).toMatch(/every parameter of Frozen is frozen/);

    const existing = moec([
      "train",
      classifier,
      "--data",
      sequences,
      "--batch",
      "8",
      "--out",
      path.join(tmp, "clf-a"),
    ]);
    expect(existing.code).toBe(2);
    expect(existing.stderr).toMatch(/already holds checkpoints.*--resume/);

    const big = moec([
      "train",
      classifier,
      "--data",
      sequences,
      "--batch",
      "9",
      "--out",
      path.join(tmp, "big"),
    ]);
    expect(big.code).toBe(1);
    expect(big.stderr).toMatch(/8 examples are fewer than one batch of 9/);
    for (const r of [noData, dtype, frozen, existing, big]) {
      expect(
        r.stderr
          .trim()
          .split("\n")
          .filter((l) => l.startsWith("moec:")),
      ).toHaveLength(1);
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    }
  });
});
