// `moec run` end to end: the CLI runs each example on the WebGPU device (a child process, one
// device each) and its outputs equal the float64 reference interpreter's on the same seeded
// weights and inputs. Also bundles, and the one-line errors of bad input.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { executeRun } from "../../cli/run-command.js";
import { readSafetensorsFile, writeSafetensorsFile } from "../../runtime/safetensors.js";
import { weightsToSafetensors } from "../../runtime/weights.js";
import { spawnSync } from "node:child_process";
import { moec, moecNodeArgs, root } from "./moec-cli.js";
import { relL2 } from "../rel-l2.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-run-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs `args` on the GPU through the CLI and compares every output with the reference. */
async function expectGpuMatchesReference(name: string, file: string, args: string[]) {
  const out = path.join(tmp, `${name}.safetensors`);
  const r = moec(["run", file, ...args, "--seed", "3", "-o", out]);
  expect(r.stderr.replace(/Warning: .*\n/g, "")).toBe("");
  expect(r.code).toBe(0);
  const gpu = readSafetensorsFile(out);
  const opts: Record<string, unknown> = { backend: "reference", seed: "3", dim: [], set: [] };
  for (let i = 0; i < args.length; i += 2) {
    const key = args[i]!.replace(/^--/, "");
    if (key === "dim" || key === "set") (opts[key] as string[]).push(args[i + 1]!);
    else opts[key] = args[i + 1];
  }
  const ref = await executeRun(path.join(root, file), opts);
  expect(gpu.names().sort()).toEqual([...ref.outputs.keys()].sort());
  for (const [k, t] of ref.outputs) {
    const g = gpu.read(k);
    expect(g.shape).toEqual(t.shape);
    expect(relL2(g.data, t.data)).toBeLessThan(1e-5);
    expect([...(g.data as Float32Array)].every(Number.isFinite)).toBe(true);
  }
  return r.stdout;
}

describe("moec run on the GPU equals the reference", () => {
  it("GPT-2 (mini) with tied embeddings", async () => {
    const stdout = await expectGpuMatchesReference("gpt2", "examples/gpt2.moe", [
      "--dim",
      "B=2",
      "--dim",
      "T=7",
    ]);
    expect(stdout).toMatch(/logits {2}f32\[2, 7, 512\]/);
  });

  it("a small transformer, also through a compiled bundle", async () => {
    await expectGpuMatchesReference("tiny", "examples/tiny-transformer.moe", [
      "--dim",
      "B=2",
      "--dim",
      "T=5",
    ]);
    const bundle = path.join(tmp, "tiny.moec");
    const c = moec([
      "compile",
      "examples/tiny-transformer.moe",
      "--dim",
      "B=2",
      "--dim",
      "T=5",
      "-o",
      bundle,
    ]);
    expect(c.code).toBe(0);
    const manifest = JSON.parse(fs.readFileSync(path.join(bundle, "manifest.json"), "utf8"));
    expect(manifest.kernels.length).toBeGreaterThan(0);
    for (const k of manifest.kernels)
      expect(fs.readFileSync(path.join(bundle, k.file), "utf8")).toMatch(/@compute/);
    const viaBundle = path.join(tmp, "tiny-bundle.safetensors");
    expect(moec(["run", bundle, "--seed", "3", "-o", viaBundle]).code).toBe(0);
    const a = readSafetensorsFile(viaBundle).read("logits").data;
    const b = readSafetensorsFile(path.join(tmp, "tiny.safetensors")).read("logits").data;
    expect(relL2(a, b)).toBeLessThan(1e-6);
    // Options that change compilation do not apply to a compiled bundle.
    const merged = moec(["run", bundle, "--merge-adapters"]);
    expect(merged.code).toBe(2);
    expect(merged.stderr).toMatch(
      /compiled bundle: --merge-adapters changes how the model is compiled/,
    );
  });

  it("AT-MoE: grouped LoRA experts on a frozen base", async () => {
    await expectGpuMatchesReference("atmoe", "examples/at-moe.moe", [
      "--dim",
      "B=1",
      "--dim",
      "T=5",
      "--set",
      "layers=1",
      "--set",
      "d=32",
      "--set",
      "vocab=100",
    ]);
  });

  it("per-task residual adapters on GPT-2 with a mixed-task batch", async () => {
    await expectGpuMatchesReference("adapters", "examples/gpt2-adapters.moe", [
      "--dim",
      "B=3",
      "--dim",
      "T=4",
      "--set",
      "layers=1",
      "--set",
      "d=48",
      "--set",
      "heads=4",
      "--set",
      "vocab=100",
    ]);
  });

  it("task-based MoE: task-aware top-k with capacity, a task map, per-task adapters", async () => {
    await expectGpuMatchesReference("task-moe", "examples/task-moe.moe", [
      "--dim",
      "B=3",
      "--dim",
      "T=5",
      "--set",
      "layers=1",
      "--set",
      "d=32",
      "--set",
      "vocab=50",
    ]);
  });

  it("a Mixtral-shaped sparse MoE decoder (SwiGLU experts, top-2)", async () => {
    await expectGpuMatchesReference("mixtral", "examples/mixtral.moe", [
      "--dim",
      "B=2",
      "--dim",
      "T=6",
    ]);
  });

  it("mixture of tokens", async () => {
    await expectGpuMatchesReference("mot", "examples/mixture-of-tokens.moe", [
      "--dim",
      "B=8",
      "--dim",
      "T=3",
      "--set",
      "layers=1",
      "--set",
      "d=32",
      "--set",
      "vocab=50",
      "--set",
      "experts=4",
      "--set",
      "group=4",
    ]);
  });
});

describe("moec run shows the routing", () => {
  it("--stats reports each MoE layer; --trace-routing writes each token's experts", () => {
    const trace = path.join(tmp, "trace.safetensors");
    const args = ["--dim", "B=3", "--dim", "T=4", "--set", "layers=2", "--set", "d=16"];
    const r = moec([
      "run",
      "examples/task-moe.moe",
      ...args,
      "--set",
      "vocab=20",
      "--backend",
      "reference",
      "--stats",
      "--json",
      "--trace-routing",
      trace,
    ]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout);
    // The dense TaskMap layer reports only its mean gate share.
    expect(Object.keys(summary.routing)).toEqual([
      "blocks.0.ffn.moe",
      "blocks.1.ffn.moe",
      "final.moe",
    ]);
    const { share: taskShare, ...rest } = summary.routing["final.moe"];
    expect(rest).toEqual({});
    expect(taskShare.reduce((a: number, b: number) => a + b)).toBeCloseTo(1, 6);
    // 12 tokens, top-2 over 8 experts, capacity 1.25: at most ceil(1.25·2·12/8) = 4 each.
    const sparse = ["blocks.0.ffn.moe", "blocks.1.ffn.moe"].map((l) => summary.routing[l]);
    for (const layer of sparse as Record<string, number & number[]>[]) {
      const load = layer.tokens_per_expert as number[];
      // The share of the router's choices, before the capacity drops any.
      expect(layer.share.reduce((a, b) => a + b)).toBeCloseTo(1, 6);
      expect(load).toHaveLength(8);
      expect(Math.max(...load)).toBeLessThanOrEqual(4);
      expect(load.reduce((a, b) => a + b) + layer.dropped!).toBe(24);
      if (layer.dropped === 0)
        load.forEach((n, e) => expect(layer.share[e]! * 24).toBeCloseTo(n, 4));
      expect(layer.entropy).toBeGreaterThan(0);
      expect(layer.entropy).toBeLessThanOrEqual(Math.log(8) + 1e-6);
      expect(layer.balance_loss).toBeGreaterThan(0);
      expect(layer.z_loss).toBeGreaterThan(0);
    }
    // The model's outputs stay the model's: no routing tensors among them.
    expect(summary.outputs.map((o: { name: string }) => o.name)).toEqual(["logits"]);
    const t = readSafetensorsFile(trace);
    expect(t.names().sort()).toEqual([
      "blocks.0.ffn.moe.experts",
      "blocks.0.ffn.moe.weights",
      "blocks.1.ffn.moe.experts",
      "blocks.1.ffn.moe.weights",
    ]);
    const experts = t.read("blocks.0.ffn.moe.experts");
    const weights = t.read("blocks.0.ffn.moe.weights");
    expect(experts.shape).toEqual([12, 2]);
    // Kept choices name an expert; a dropped one is -1 with weight 0.
    for (let i = 0; i < 24; i++) {
      const e = experts.data[i]!;
      expect(e).toBeGreaterThanOrEqual(-1);
      expect(e).toBeLessThan(8);
      if (e === -1) expect(weights.data[i]).toBe(0);
    }
  });
});

describe("moec run --pin-groups", () => {
  const args = ["--dim", "B=1", "--dim", "T=3", "--set", "layers=2", "--set", "d=16"];
  const run = (...extra: string[]) =>
    moec([
      "run",
      "examples/at-moe.moe",
      ...args,
      "--set",
      "vocab=20",
      "--backend",
      "reference",
      ...extra,
    ]);

  it("fixes one layer's group weights and reports them; the other layer keeps its router", () => {
    const r = run("--stats", "--json", "--pin-groups", "blocks.1=0.2,0,0.8");
    expect(r.stderr).toBe("");
    const routing = JSON.parse(r.stdout).routing;
    expect(routing["blocks.1.experts.moe"].group_weights).toEqual([
      expect.closeTo(0.2, 6),
      0,
      expect.closeTo(0.8, 6),
    ]);
    const free = routing["blocks.0.experts.moe"].group_weights as number[];
    expect(free.every((w) => w > 0)).toBe(true);
    expect(free.reduce((a, b) => a + b)).toBeCloseTo(1, 6);
  });

  it("--trace-routing writes each token's group weights; their mean is --stats'", () => {
    const trace = path.join(tmp, "grouped-trace.safetensors");
    const r = run(
      "--stats",
      "--json",
      "--pin-groups",
      "blocks.1=0.2,0,0.8",
      "--trace-routing",
      trace,
    );
    expect(r.code).toBe(0);
    const routing = JSON.parse(r.stdout).routing;
    const t = readSafetensorsFile(trace);
    expect(t.names().sort()).toEqual([
      "blocks.0.experts.moe.groups",
      "blocks.1.experts.moe.groups",
    ]);
    for (const layer of ["blocks.0.experts.moe", "blocks.1.experts.moe"]) {
      const groups = t.read(`${layer}.groups`);
      expect(groups.shape).toEqual([3, 3]); // B·T tokens, 3 groups
      const mean = [0, 1, 2].map((g) => {
        let sum = 0;
        for (let i = 0; i < 3; i++) sum += groups.data[i * 3 + g]!;
        return sum / 3;
      });
      const reported = routing[layer].group_weights as number[];
      mean.forEach((m, g) => expect(m).toBeCloseTo(reported[g]!, 6));
    }
    // The free layer's weights differ per token (a softmax of each token's scores).
    const free = t.read("blocks.0.experts.moe.groups").data;
    expect(free[0]).not.toBeCloseTo(free[3]!, 6);
    expect(Array.from(t.read("blocks.1.experts.moe.groups").data.slice(0, 3))).toEqual([
      expect.closeTo(0.2, 6),
      0,
      expect.closeTo(0.8, 6),
    ]);
  });

  it("names what is wrong: weights, group count, layer", () => {
    const sum = run("--pin-groups", "blocks.0=0.5,0.6,0");
    expect(sum.code).toBe(2);
    expect(sum.stderr.trim()).toBe("moec: --pin-groups blocks.0: the weights sum to 1.1, not 1");
    const count = run("--pin-groups", "blocks.0=0.5,0.5");
    expect(count.code).toBe(1);
    expect(count.stderr).toMatch(/blocks.0.experts.moe has 3 groups, 2 weights given/);
    const layer = run("--pin-groups", "blocks.7=1,0,0");
    expect(layer.code).toBe(1);
    expect(layer.stderr).toMatch(/no such layer .*blocks.0.experts.moe, blocks.1.experts.moe/);
  });
});

describe("moec run --json: an error is JSON on stdout, as check --json reports a file", () => {
  it("a source error: its diagnostic with code and position (exit 1)", () => {
    const bad = path.join(tmp, "bad-json.moe");
    fs.writeFileSync(bad, "model M {\n  in x: f32[B]\n  out y: f32[B]\n  y = nope(x)\n}\n");
    const r = moec(["run", bad, "--dim", "B=2", "--json"]);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout);
    expect(out.ok).toBe(false);
    expect(out.exitCode).toBe(1);
    expect(out.diagnostics).toEqual([
      expect.objectContaining({ code: "E0201", severity: "error", line: 4, column: 7 }),
    ]);
  });

  it("an error without a position: the one-line cause (exit 1), and usage (exit 2)", () => {
    const missing = path.join(tmp, "no-such-weights.safetensors");
    const args = ["run", "examples/tiny-transformer.moe", "--dim", "B=1", "--dim", "T=2"];
    const r = moec([...args, "--weights", missing, "--json"]);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ ok: false, exitCode: 1, files: [] });
    expect(out.diagnostics).toHaveLength(1);
    expect(out.diagnostics[0].message).toContain("no-such-weights.safetensors");
    const usage = moec([...args, "--no-such-option", "--json"]);
    expect(usage.code).toBe(2);
    expect(JSON.parse(usage.stdout)).toMatchObject({ ok: false, exitCode: 2 });
  });
});

describe("moec run: bad input is one line and a non-zero exit", () => {
  it("reports a corrupt weights file (exit 1)", () => {
    const bad = path.join(tmp, "bad.safetensors");
    fs.writeFileSync(bad, Buffer.from([1, 2, 3]));
    const r = moec([
      "run",
      "examples/gpt2.moe",
      "--dim",
      "B=1",
      "--dim",
      "T=2",
      "--weights",
      bad,
      "--backend",
      "reference",
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^moec: .*bad\.safetensors: too short/);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("reports weights that do not fit the model, all at once (exit 1)", () => {
    const weights = path.join(tmp, "gpt2-weights.safetensors");
    const wte = {
      dtype: "f32" as const,
      shape: [512, 32],
      data: new Float32Array(512 * 32).fill(0.5),
    };
    writeSafetensorsFile(weights, weightsToSafetensors(new Map([["gpt.wte.weight", wte]])));
    const r = moec([
      "run",
      "examples/gpt2.moe",
      "--dim",
      "B=1",
      "--dim",
      "T=2",
      "--weights",
      weights,
      "--backend",
      "reference",
    ]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split("\n");
    expect(lines[0]).toMatch(
      /^moec: .*gpt2-weights\.safetensors: 36 problems: missing gpt\.wpe\.weight \[128, 64\];/,
    );
    expect(lines).toContain("  gpt.wte.weight has shape [512, 32], expected [512, 64]");
    expect(lines).toHaveLength(37);
  });

  it("asks for free dims (exit 1, with the diagnostic)", () => {
    const r = moec(["run", "examples/gpt2.moe", "--dim", "B=1", "--backend", "reference"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/error\[E0314\]: the size of `T` \(in input `tokens`\) is not known/);
    expect(r.stderr).toMatch(/hint: pass it with --dim T=N/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it("rejects an unknown task and wrong usage", () => {
    const task = moec([
      "run",
      "examples/gpt2-adapters.moe",
      "--dim",
      "B=1",
      "--dim",
      "T=2",
      "--set",
      "layers=1",
      "--set",
      "d=32",
      "--set",
      "heads=2",
      "--set",
      "vocab=50",
      "--task",
      "translat",
      "--backend",
      "reference",
    ]);
    expect(task.code).toBe(1);
    expect(task.stderr.trim()).toBe(
      "moec: unknown task `translat`; the tasks are translate, summarize, dialogue",
    );
    expect(moec(["run", "examples/gpt2.moe", "--backend", "cpu"]).code).toBe(2);
    expect(moec(["run", "examples/gpt2.moe", "--dim", "T"]).code).toBe(2);
  });
});

describe("moec run: wrong answers are errors, never exit 0", () => {
  const tiny = path.join(tmp, "tiny.moe");
  fs.writeFileSync(
    tiny,
    `import std.nn { Linear }
model Tiny() {
  in x: f32[B, 4]
  out y: f32[B, 2]
  fc = Linear(4, 2)
  y = relu(fc(x))
}
`,
  );
  const f32 = (shape: number[], data: number[]) => ({
    dtype: "F32" as const,
    shape,
    data: Float32Array.from(data),
  });

  it("--dim of a dimension the model lacks, or given twice, is a usage error naming it", () => {
    const unknown = moec(["run", tiny, "--dim", "B=2", "--dim", "Q=3", "--backend", "reference"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr.trim()).toBe(
      "moec: --dim Q: model Tiny has no free dimension `Q` (its free dimensions: B)",
    );
    const twice = moec(["run", tiny, "--dim", "B=2", "--dim", "B=3", "--backend", "reference"]);
    expect(twice.code).toBe(2);
    expect(twice.stderr.trim()).toBe("moec: --dim B is given twice (B=2 and B=3); give it once");
    const compile = moec(["compile", tiny, "--dim", "B=2", "--dim", "Q=3", "--emit", "plan"]);
    expect(compile.code).toBe(2);
    expect(compile.stderr).toMatch(/--dim Q: model Tiny has no free dimension `Q`/);
  });

  it("weights or inputs holding NaN or infinities are an error naming the tensor and the count", () => {
    const weights = path.join(tmp, "tiny-nan.safetensors");
    writeSafetensorsFile(
      weights,
      new Map([
        ["fc.weight", f32([2, 4], [0.1, NaN, 0.3, 0.4, 0.5, NaN, 0.7, NaN])],
        ["fc.bias", f32([2], [0, Infinity])],
      ]),
    );
    const args = ["run", tiny, "--dim", "B=2", "--backend", "reference", "--json"];
    const r = moec([...args, "--weights", weights]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain(
      "tensor fc.weight: 3 non-finite values of 8 (3 NaN; the first at index 1); tensor fc.bias: 1 non-finite value of 2 (1 +Inf; the first at index 1); pass --allow-nonfinite to load it anyway",
    );
    // Allowed, the NaN reaches the output through relu (PyTorch keeps it too).
    const allowed = moec([...args, "--weights", weights, "--allow-nonfinite"]);
    expect(allowed.code).toBe(0);
    expect(JSON.parse(allowed.stdout).outputs[0].checksum.mean).toBeNull();

    const inputs = path.join(tmp, "tiny-inf.safetensors");
    writeSafetensorsFile(inputs, new Map([["x", f32([2, 4], [1, 2, 3, -Infinity, 5, 6, 7, 8])]]));
    const bad = moec([...args, "--inputs", inputs]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(
      "tiny-inf.safetensors: tensor x: 1 non-finite value of 8 (1 -Inf; the first at index 3); pass --allow-nonfinite",
    );
    expect(moec([...args, "--inputs", inputs, "--allow-nonfinite"]).code).toBe(0);
  });

  it("moec train: --weights holding NaN and an unknown --dim are refused before the device", () => {
    const data = path.join(tmp, "seq.safetensors");
    const gen = ["data", "gen", "sequences", "--tasks", "copy,reverse", "--count", "16"];
    expect(moec([...gen, "-o", data]).code).toBe(0);
    const ln = new Float32Array(64).fill(1);
    ln[5] = NaN;
    const weights = path.join(tmp, "at-moe-nan.safetensors");
    writeSafetensorsFile(
      weights,
      new Map([["net.blocks.0.ln_1.weight", { dtype: "F32", shape: [64], data: ln }]]),
    );
    const train = ["train", "examples/at-moe.moe", "--program", "Pretrain", "--data", data];
    const args = [...train, "--steps", "1", "--batch", "4", "--out", path.join(tmp, "run")];
    const r = moec([...args, "--weights", weights]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      `moec: ${weights}: tensor net.blocks.0.ln_1.weight: 1 non-finite value of 64 (1 NaN; the first at index 5); pass --allow-nonfinite to load it anyway`,
    );
    const dim = moec([...args, "--dim", "Q=3"]);
    expect(dim.code).toBe(2);
    expect(dim.stderr.trim()).toBe(
      "moec: --dim Q: program Pretrain has no free dimension `Q` (its free dimensions: B, T)",
    );
  });
});

describe("an unreadable file is exit 1 with the OS's reason, never ok", () => {
  // As root every file is readable: run moec as nobody (setpriv) there; else chmod suffices.
  const isRoot = process.getuid?.() === 0;
  const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => fs.existsSync(p));
  const asUser = (args: string[]) => {
    const [cmd, ...rest] =
      isRoot && setpriv
        ? [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", process.execPath]
        : [process.execPath];
    const r = spawnSync(cmd!, [...rest, ...moecNodeArgs, ...args], {
      cwd: root,
      encoding: "utf8",
      timeout: 120_000,
    });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  it.skipIf(isRoot && !setpriv)("check, params and run of a mode-000 file", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moec-unreadable-"));
    try {
      fs.chmodSync(dir, 0o755);
      const file = path.join(dir, "locked.moe");
      fs.writeFileSync(file, "model M() {\n  in x: f32[2]\n  out y: f32[2]\n  y = x\n}\n");
      fs.chmodSync(file, 0o000);
      for (const cmd of ["check", "params", "run"]) {
        const r = asUser([cmd, file]);
        expect(r.code, cmd).toBe(1);
        expect(r.stdout, cmd).toBe("");
        expect(r.stderr.trim(), cmd).toBe(`moec: cannot read ${file}: permission denied`);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
