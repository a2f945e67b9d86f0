// The issue's test: one AdamW step of the exported train program in PyTorch matches one
// `moec train` step on the WebGPU device: relative L2 < 1e-4 per parameter of the values, of
// the change (up to float32's resolution of the stored value, for a change too small for it)
// and of Adam's moments. Each case writes random weights and a data file of exactly one batch
// (so the batch holds every example whatever the shuffle; the programs' losses are means over
// examples and tokens, so the order only reorders sums), runs `moec train --steps 1` in a child
// process (one device each), and one step of the exported module in float64 on the same
// weights and batch.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { exportTorch } from "../../cli/export-torch.js";
import { parseOverride } from "../../cli/params-command.js";
import { type LoweredTrain } from "../../compiler/lower/lower-train.js";
import { analyze, lowerTrain, nodeFileSystem } from "../../compiler/pipeline.js";
import {
  type TensorToWrite,
  readSafetensorsFile,
  writeSafetensorsFile,
} from "../../runtime/safetensors.js";
import { moecAsync, root } from "../cli/moec-cli.js";
import { prng } from "../prng.js";
import { relL2 } from "../rel-l2.js";
import { findTorchPython } from "./torch-harness.js";

interface GpuTrainCase {
  name: string;
  file: string;
  program: string;
  model?: string;
  /** The program's parameters (`moec train --set`; the export's `--set` too). */
  set?: string[];
  /** The batch (= the data file's examples) and the other free dims (from the data). */
  dims: Record<string, number>;
  /** Exclusive bound of each integer input (labels, token ids); task inputs use their set. */
  ids: Record<string, number>;
}

const CASES: GpuTrainCase[] = [
  {
    name: "tiny-transformer",
    file: "examples/tiny-transformer.moe",
    program: "Label",
    set: ["layers=1", "d=16", "heads=2"],
    dims: { B: 4, T: 4 },
    ids: { label: 10 },
  },
  {
    // An MoE layer (top-1 with a task embedding) and its balance loss.
    name: "symbol-maps",
    file: "examples/symbol-maps.moe",
    program: "Fit",
    dims: { B: 8 },
    ids: { tokens: 16, targets: 16 },
  },
  {
    // Parameter groups: lr_scale 10 on the per-task adapters, only rows 13..16 of the tied
    // embedding, clipping; the transformer blocks are frozen.
    name: "repro-adapters",
    file: "examples/repro/adapters.moe",
    program: "AdapterTune",
    model: "Adapted",
    dims: { B: 4, T: 6 },
    ids: { tokens: 17, targets: 17 },
  },
  {
    // Confidence-weighted distillation from three frozen teachers, plus cross-entropy.
    name: "repro-distill-confidence",
    file: "examples/repro/distill.moe",
    program: "DistillConfidence",
    model: "MultiTask",
    set: ["features=8"],
    dims: { B: 6 },
    ids: { label: 4 },
  },
];

const PY = String.raw`
import importlib.util, json, sys
import torch
cases = json.load(open(sys.argv[1]))
for c in cases:
    spec = importlib.util.spec_from_file_location("m_" + c["name"].replace("-", "_"), c["dir"] + "/model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    program = getattr(mod, c["program"])()
    program.load_state_dict(mod.load_file(c["dir"] + "/weights.safetensors"))
    program.double()
    before = {k: v.clone() for k, v in program.state_dict().items()}
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in mod.load_file(c["dir"] + "/data.safetensors").items()}
    opt = program.configure_optimizer()
    mod.train_step(program, opt, **inputs)
    out = {}
    for k, v in program.state_dict().items():
        out[k] = v.float().contiguous()
        out["change." + k] = (v - before[k]).float().contiguous()
    for n, p in program.named_parameters():
        if p.grad is not None:
            out["grad_norm." + n] = p.grad.norm().float().reshape(1)
        for k, v in opt.state.get(p, {}).items():
            if k in ("exp_avg", "exp_avg_sq"):
                out[k + "." + n] = v.float().contiguous()
    mod.save_file(out, c["dir"] + "/torch.safetensors")
`;

const found = findTorchPython();
if (!found.python) console.warn(`skipping the PyTorch train-vs-device tests: ${found.why}`);

interface Prepared {
  c: GpuTrainCase;
  dir: string;
  train: LoweredTrain;
  weights: Map<string, TensorToWrite>;
  /** `moec train`'s exit code and stderr. */
  code: number | null;
  stderr: string;
}

describe.skipIf(!found.python)("moec export --format torch: a step against `moec train`", () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moec-torch-train-gpu-"));
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
  const prepared = new Map<string, Prepared>();
  let python: { status: number | null; stderr: string } | undefined;

  beforeAll(async () => {
    for (const c of CASES) {
      const dir = path.join(work, c.name);
      fs.mkdirSync(dir);
      const file = path.join(root, c.file);
      const analysis = analyze([file], nodeFileSystem());
      const overrides = new Map((c.set ?? []).map(parseOverride));
      const lowered = lowerTrain(
        analysis,
        file,
        c.program,
        overrides,
        new Map(Object.entries(c.dims)),
      );
      if ("error" in lowered || !lowered.train) throw new Error(`${c.name}: cannot lower`);
      const train = lowered.train;
      const rand = prng(c.name.length * 7919 + 11);
      const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
      const weights = new Map<string, TensorToWrite>();
      for (const p of train.params) {
        const data = Float32Array.from({ length: size(p.shape) }, () => (rand() * 2 - 1) * 0.5);
        weights.set(p.name, { dtype: "F32", shape: p.shape, data });
      }
      const data = new Map<string, TensorToWrite>();
      for (const i of train.inputs) {
        const n = size(i.shape);
        const hi = i.tasks?.length ?? c.ids[i.name];
        const values =
          i.dtype === "f32"
            ? Float32Array.from({ length: n }, () => rand() * 2 - 1)
            : Int32Array.from({ length: n }, () => Math.floor(rand() * hi!));
        data.set(i.name, {
          dtype: i.dtype === "f32" ? "F32" : "I32",
          shape: i.shape,
          data: values,
        });
      }
      writeSafetensorsFile(path.join(dir, "weights.safetensors"), weights);
      writeSafetensorsFile(path.join(dir, "data.safetensors"), data);
      const [out] = await exportTorch(
        file,
        { model: c.model, set: c.set },
        () => path.join(dir, "model.py"),
        (m) => ({ source: c.file, model: m, version: "test" }),
      );
      fs.writeFileSync(path.join(dir, "model.py"), out!.data as string);
      // One at a time: each run compiles its kernels on the shared CPU cores.
      const r = await moecAsync([
        "train",
        c.file,
        "--program",
        c.program,
        ...(c.set ?? []).flatMap((s) => ["--set", s]),
        "--weights",
        path.join(dir, "weights.safetensors"),
        "--data",
        path.join(dir, "data.safetensors"),
        "--batch",
        String(c.dims.B),
        "--steps",
        "1",
        "--out",
        path.join(dir, "run"),
      ]);
      prepared.set(c.name, { c, dir, train, weights, code: r.code, stderr: r.stderr });
    }
    const spec = path.join(work, "cases.json");
    fs.writeFileSync(
      spec,
      JSON.stringify(
        [...prepared.values()].map((p) => ({ name: p.c.name, program: p.c.program, dir: p.dir })),
      ),
    );
    python = spawnSync(found.python!, ["-c", PY, spec], { encoding: "utf8", timeout: 600_000 });
  }, 1_200_000);

  it.each(CASES.map((c) => c.name))("%s", (name) => {
    const p = prepared.get(name)!;
    expect(p.code, p.stderr).toBe(0);
    expect(python?.stderr).not.toMatch(/Traceback/);
    expect(python?.status).toBe(0);
    const ckpt = path.join(p.dir, "run", "ckpt-1");
    const gpu = readSafetensorsFile(path.join(ckpt, "model.safetensors"));
    const moments = readSafetensorsFile(path.join(ckpt, "optimizer.safetensors"));
    const torch = readSafetensorsFile(path.join(p.dir, "torch.safetensors"));
    const rows: string[] = [];
    let worstValue = 0;
    let worstChange = 0;
    let worstMoment = 0;
    let stepped = 0;
    let belowFloat32 = 0;
    const noise: string[] = [];
    const gradNorm = (n: string) =>
      torch.has(`grad_norm.${n}`) ? torch.read(`grad_norm.${n}`).data[0]! : 0;
    const totalGrad = Math.hypot(...p.train.params.map((q) => gradNorm(q.name)));
    for (const param of p.train.params) {
      const before = p.weights.get(param.name)!.data as Float32Array;
      const after = gpu.read(param.name).data as Float32Array;
      const want = torch.read(`change.${param.name}`).data;
      const value = relL2(after, torch.read(param.name).data);
      let err = 0;
      let norm = 0;
      let ulp = 0;
      for (let i = 0; i < after.length; i++) {
        err += (after[i]! - before[i]! - want[i]!) ** 2;
        norm += want[i]! ** 2;
        ulp += (after[i]! * 2 ** -23) ** 2;
      }
      [err, norm, ulp] = [Math.sqrt(err), Math.sqrt(norm), Math.sqrt(ulp)];
      if (norm === 0) {
        // Both sides leave a frozen or unreached parameter exactly as it was.
        expect(err, `${param.name} moved on the device only`).toBe(0);
        continue;
      }
      stepped++;
      const g = gradNorm(param.name);
      if (g > 0 && g < 1e-9 * totalGrad) {
        // A gradient that is 0 up to rounding (an attention key bias: softmax ignores it): Adam
        // turns each side's rounding noise into a step of up to lr·lr_scale per element
        // (|m̂|/(√v̂ + eps) ≤ 1 at step 1), so only that bound holds.
        const lr = p.train.optimizer.lr * (param.lrScale ?? 1);
        let most = 0;
        for (let i = 0; i < after.length; i++)
          most = Math.max(most, Math.abs(after[i]! - before[i]! - want[i]!));
        expect(most, `${param.name}: a step of rounding noise`).toBeLessThanOrEqual(lr * 1.0001);
        noise.push(param.name);
        continue;
      }
      worstValue = Math.max(worstValue, value);
      // The device stores float32 parameters: a change is resolved to about two roundings of
      // the value (2^-23·|p|), which bounds the change of a parameter that only weight decay
      // moves (a per-task adapter of a task not in the batch: −lr·wd·p, 1e-4 of p) to ~1e-3.
      const change = err / norm;
      if (ulp > 1e-4 * norm) belowFloat32++;
      else worstChange = Math.max(worstChange, change);
      if (err >= 1e-4 * norm + ulp || change >= 1e-4)
        rows.push(
          `  ${param.name}: value ${value.toExponential(2)}, change ${change.toExponential(2)} (float32 resolution ${(ulp / norm).toExponential(2)})`,
        );
      expect(err, `${param.name}: the change`).toBeLessThan(1e-4 * norm + ulp);
      if (moments.has(`exp_avg.${param.name}`) && torch.has(`exp_avg.${param.name}`)) {
        for (const m of ["exp_avg", "exp_avg_sq"]) {
          const rel = relL2(
            moments.read(`${m}.${param.name}`).data,
            torch.read(`${m}.${param.name}`).data,
          );
          worstMoment = Math.max(worstMoment, rel);
          if (rel >= 1e-4) rows.push(`  ${m}.${param.name}: ${rel.toExponential(2)}`);
        }
      }
    }
    console.log(
      `${name}: ${stepped} parameters stepped (${belowFloat32} by less than float32 resolves to 1e-4${noise.length ? `; ${noise.length} by rounding noise alone: ${noise.join(", ")}` : ""}); worst rel L2 of a value ${worstValue.toExponential(2)}, of a change ${worstChange.toExponential(2)}, of a moment ${worstMoment.toExponential(2)}\n${rows.join("\n")}`,
    );
    expect(stepped).toBeGreaterThan(0);
    expect(worstValue).toBeLessThan(1e-4);
    expect(worstChange).toBeLessThan(1e-4);
    expect(worstMoment).toBeLessThan(1e-4);
  });
});
