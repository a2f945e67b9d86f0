// `train` programs in the PyTorch export: one step of the exported program (its loss, the
// routers' auxiliary losses, clip_grad_norm_ and AdamW as the program configures them, its
// parameter groups included) against one step of moec's train-step graph run in the float64
// reference interpreter (distill with fixed and confidence-aware weights, cross_entropy, frozen
// teachers, MoE balance losses, lr_scale, decay on and off, rows), on the same weights and
// batch: the loss, every parameter and both Adam moments after the step, relative L2 < 1e-6,
// and the rows a group does not train bit for bit as they were. Then: every train program of
// every shipped example exports (no "not exported" line in any model's module).
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { exportTorch } from "../../cli/export-torch.js";
import { parseOverride } from "../../cli/params-command.js";
import { ADAMW_STEP_INPUT } from "../../compiler/library/optim/adamw.js";
import { NOISE_KEY_INPUT } from "../../compiler/lower/lower-train.js";
import { analyze, assembleTrain, lowerTrain, nodeFileSystem } from "../../compiler/pipeline.js";
import { listModels } from "../../compiler/check/elaborate-model.js";
import { listTrainPrograms } from "../../compiler/lower/lower-train.js";
import type { HostTensor } from "../../compiler/ir/float64.js";
import { interpret } from "../../runtime/reference/interpret.js";
import {
  type TensorToWrite,
  readSafetensorsFile,
  writeSafetensorsFile,
} from "../../runtime/safetensors.js";
import { prng } from "../prng.js";
import { root } from "../cli/moec-cli.js";
import { findTorchPython } from "./torch-harness.js";
import { relL2 } from "../rel-l2.js";

interface TrainCase {
  name: string;
  /** The .moe file, relative to the repository root (or, with `source`, the name it is written under). */
  file: string;
  /** The program's text, written to a temporary file (cases the shipped examples lack). */
  source?: string;
  program: string;
  model?: string;
  set?: string[];
  dims: Record<string, number>;
  /** Exclusive bound of each integer input (labels, token ids). */
  ids: Record<string, number>;
  /** Integer inputs whose first element is -100 (an ignored label). */
  ignored?: string[];
}

/**
 * AdamW groups beyond the shipped examples': decay forced off on a matrix and on for a bias
 * and a lookup table, rows of a table with weight decay (which train_step must undo on the
 * other rows), a group bound to a name, and parameters no group names (the defaults).
 */
const GROUPS_SOURCE = `import std.nn { Embedding, Linear, LayerNorm }
import std.optim { AdamW, Group }

model Net(vocab: Int = 11, d: Dim = 6) {
  in tokens: i32[B, T]
  out logits: f32[B, T, vocab]
  embed = Embedding(vocab, d)
  pos = Embedding(8, d)
  norm = LayerNorm(d)
  hidden = Linear(d, 7)
  head = Linear(7, vocab)
  logits = head(gelu(hidden(norm(embed(tokens) + pos(positions(tokens))))))
}

train Fit(lr: Float = 1e-2) {
  in tokens: i32[B, T]
  in labels: i32[B, T]
  net = Net()
  loss = cross_entropy(net(tokens), labels)
  table = Group(params: ["embed.weight"], rows: [9, 2, 3, 2], decay: on, lr_scale: 0.5)
  optimizer = AdamW(lr: lr, weight_decay: 0.1, max_norm: 0.5, groups: [
    Group(params: ["hidden.weight"], decay: off, lr_scale: 3.0),
    Group(params: ["head.bias", "pos.weight"], decay: on),
    table,
  ])
}
`;

/** distill with per-example teacher weights, a tensor [B, K] the program computes. */
const WEIGHTED_SOURCE = `import std.nn { Linear }
import std.optim { AdamW }

model Net(d: Dim = 6, classes: Int = 5) {
  in x: f32[B, d]
  out logits: f32[B, classes]
  fc = Linear(d, classes)
  logits = fc(x)
}

train Mix() {
  in x: f32[B, 6]
  in trust: f32[B, 2]
  net = Net()
  t1 = frozen Net()
  t2 = frozen Net()
  loss = distill(net(x), [t1(x), t2(x)], temperature: 2.0, weights: softmax(3.0 * trust))
  optimizer = AdamW(lr: 1e-2)
}
`;

const CASES: TrainCase[] = [
  {
    name: "tiny-transformer",
    file: "examples/tiny-transformer.moe",
    program: "Label",
    set: ["d=16", "heads=2"],
    dims: { B: 2, T: 4 },
    ids: { label: 10 },
  },
  {
    name: "task-moe",
    file: "examples/task-moe.moe",
    program: "Translate",
    set: ["d=16", "vocab=12"],
    dims: { B: 3, T: 4 },
    ids: { tokens: 12, targets: 12 },
  },
  {
    name: "mixtral",
    file: "examples/mixtral.moe",
    program: "LM",
    set: ["d=16", "heads=2", "hidden=24", "experts=4", "vocab=12"],
    dims: { B: 2, T: 3 },
    ids: { tokens: 12, targets: 12 },
  },
  {
    name: "road-distill",
    file: "examples/road-distill.moe",
    program: "Distill",
    model: "Student",
    set: ["d=16", "heads=2", "vocab=12"],
    dims: { B: 3, T: 4 },
    ids: { tokens: 12, nli_labels: 3, qa_start: 4 },
  },
  {
    // A program that trains a block (GPT2), no model: exported with each model of its file.
    name: "gpt2",
    file: "examples/gpt2.moe",
    program: "LM",
    model: "GPT2Mini",
    set: ["layers=1", "d=16", "heads=2", "vocab=12"],
    dims: { B: 2, T: 4 },
    ids: { tokens: 12, targets: 12 },
  },
  {
    // lr_scale 10 on the adapters, and only the new task tokens' rows of the (tied) embedding.
    name: "repro-adapters",
    file: "examples/repro/adapters.moe",
    program: "AdapterTune",
    model: "Adapted",
    dims: { B: 2, T: 4 },
    ids: { tokens: 17, targets: 17 },
  },
  {
    name: "repro-grouped-lora",
    file: "examples/repro/grouped-lora.moe",
    program: "Adapt",
    model: "Solo",
    dims: { B: 2, T: 4 },
    ids: { tokens: 15, targets: 15 },
  },
  {
    // CA-MKD's weights from the labels, one label ignored (its teachers weigh equally).
    name: "repro-distill-confidence",
    file: "examples/repro/distill.moe",
    program: "DistillConfidence",
    model: "MultiTask",
    set: ["features=8"],
    dims: { B: 5 },
    ids: { label: 4 },
    ignored: ["label"],
  },
  {
    name: "distill-weighted",
    file: "weighted.moe",
    source: WEIGHTED_SOURCE,
    program: "Mix",
    dims: { B: 4 },
    ids: {},
  },
  {
    name: "groups",
    file: "groups.moe",
    source: GROUPS_SOURCE,
    program: "Fit",
    dims: { B: 2, T: 5 },
    ids: { tokens: 11, labels: 11 },
  },
];

const PY = String.raw`
import importlib.util, json, sys
import torch
cases = json.load(open(sys.argv[1]))
out = []
for c in cases:
    spec = importlib.util.spec_from_file_location("m_" + c["name"].replace("-", "_"), c["dir"] + "/model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    program = getattr(mod, c["program"])()
    keys = sorted(program.state_dict().keys())
    program.load_state_dict(mod.load_file(c["dir"] + "/weights.safetensors"))
    program.double()
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in mod.load_file(c["dir"] + "/inputs.safetensors").items()}
    opt = program.configure_optimizer()
    loss = mod.train_step(program, opt, **inputs)
    state = {k: v.float().contiguous() for k, v in program.state_dict().items()}
    state["__loss__"] = loss.detach().float().reshape(1)
    for n, p in program.named_parameters():
        for k, v in opt.state.get(p, {}).items():
            if k in ("exp_avg", "exp_avg_sq"):
                state[k + "." + n] = v.float().contiguous()
    mod.save_file(state, c["dir"] + "/after.safetensors")
    out.append({"name": c["name"], "keys": keys})
print(json.dumps(out))
`;

const found = findTorchPython();
if (!found.python) console.warn(`skipping the PyTorch train export tests: ${found.why}`);

describe.skipIf(!found.python)("moec export --format torch: train programs", () => {
  it("one AdamW step in PyTorch matches moec's train step in the reference", async () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "moec-torch-train-"));
    const expected = [];
    for (const c of CASES) {
      const dir = path.join(work, c.name);
      fs.mkdirSync(dir);
      const file = c.source ? path.join(dir, c.file) : path.join(root, c.file);
      if (c.source) fs.writeFileSync(file, c.source);
      const overrides = new Map((c.set ?? []).map(parseOverride));
      const analysis = analyze([file], nodeFileSystem());
      const lowered = lowerTrain(
        analysis,
        file,
        c.program,
        overrides,
        new Map(Object.entries(c.dims)),
      );
      if ("error" in lowered || !lowered.train) throw new Error(`${c.name}: cannot lower`);
      const train = lowered.train;
      const step = assembleTrain(train);
      if ("error" in step) throw new Error(step.error);
      const rand = prng(c.name.length * 104729 + 3);
      const leaves = new Map<string, HostTensor>();
      const weights = new Map<string, TensorToWrite>();
      const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
      for (const p of train.params) {
        const data = Float32Array.from({ length: size(p.shape) }, () => (rand() * 2 - 1) * 0.5);
        weights.set(p.name, { dtype: "F32", shape: p.shape, data });
        leaves.set(p.name, { shape: p.shape, data: Float64Array.from(data) });
      }
      for (const n of step.graph.nodes)
        if (n.op === "param" && !leaves.has(n.name))
          leaves.set(n.name, { shape: n.shape, data: new Float64Array(size(n.shape)) }); // moments
      const inputs = new Map<string, TensorToWrite>();
      for (const i of train.inputs) {
        const n = size(i.shape);
        const hi = i.tasks?.length ?? c.ids[i.name];
        const data =
          i.dtype === "f32"
            ? Float32Array.from({ length: n }, () => rand() * 2 - 1)
            : Int32Array.from({ length: n }, (_, j) =>
                j === 0 && c.ignored?.includes(i.name) ? -100 : Math.floor(rand() * hi!),
              );
        inputs.set(i.name, { dtype: i.dtype === "f32" ? "F32" : "I32", shape: i.shape, data });
        leaves.set(i.name, { shape: i.shape, data: Float64Array.from(data) });
      }
      const { lr, beta1, beta2 } = train.optimizer;
      leaves.set(ADAMW_STEP_INPUT, {
        shape: [3],
        data: Float64Array.from([lr, 1 - beta1, 1 - beta2]),
      });
      leaves.set(NOISE_KEY_INPUT, { shape: [1], data: new Float64Array(1) });
      const { outputs } = interpret(step.graph, leaves);
      writeSafetensorsFile(path.join(dir, "weights.safetensors"), weights);
      writeSafetensorsFile(path.join(dir, "inputs.safetensors"), inputs);
      const files = await exportTorch(
        file,
        { model: c.model, set: c.set },
        () => path.join(dir, "model.py"),
        (m) => ({ source: c.file, model: m, version: "test" }),
      );
      const text = files[0]!.data;
      if (typeof text !== "string") throw new Error("the torch format writes one text file");
      fs.writeFileSync(path.join(dir, "model.py"), text);
      expected.push({ c, dir, train, weights, outputs, updated: new Set(step.updated) });
    }
    const spec = path.join(work, "cases.json");
    fs.writeFileSync(
      spec,
      JSON.stringify(expected.map((e) => ({ name: e.c.name, program: e.c.program, dir: e.dir }))),
    );
    const py = spawnSync(found.python!, ["-c", PY, spec], { encoding: "utf8", timeout: 600_000 });
    expect(py.stderr).not.toMatch(/Traceback/);
    expect(py.status).toBe(0);
    const keys = JSON.parse(py.stdout) as { name: string; keys: string[] }[];
    expected.forEach(({ c, dir, train, weights, outputs, updated }, i) => {
      // The program's state_dict() is `moec params --program`'s (names under its bindings).
      expect(keys[i]!.keys).toEqual(train.params.map((p) => p.name).sort());
      const after = readSafetensorsFile(path.join(dir, "after.safetensors"));
      const loss = relL2(after.read("__loss__").data, outputs.get("loss")!.data);
      let worst = 0;
      let rowChecks = 0;
      // Adam's moments over every parameter at once: a gradient that is 0 up to rounding (a key
      // bias under softmax) has moments that are rounding noise on both sides.
      const moments = {
        exp_avg: { got: [] as number[], want: [] as number[] },
        exp_avg_sq: { got: [] as number[], want: [] as number[] },
      };
      for (const p of train.params) {
        const want = updated.has(p.name) ? outputs.get(`update:${p.name}`)!.data : undefined;
        if (!want) continue;
        const got = after.read(p.name).data;
        const rel = relL2(got, want);
        if (rel > 1e-6) console.log(`  ${p.name}: ${rel.toExponential(3)}`);
        worst = Math.max(worst, rel);
        for (const m of ["exp_avg", "exp_avg_sq"] as const) {
          moments[m].got.push(...after.read(`${m}.${p.name}`).data);
          moments[m].want.push(...outputs.get(`${m}:${p.name}`)!.data);
        }
        if (p.rows) {
          // The rows the group does not train: not moved at all, by decay or Adam.
          const before = weights.get(p.name)!.data as Float32Array;
          const rowSize = before.length / p.shape[0]!;
          const trained = new Set(p.rows);
          let moved = 0;
          let idle = 0;
          for (let r = 0; r < p.shape[0]!; r++) {
            if (trained.has(r)) continue;
            idle++;
            for (let j = r * rowSize; j < (r + 1) * rowSize; j++) {
              if (got[j] !== before[j]) moved++;
              if (after.read(`exp_avg.${p.name}`).data[j] !== 0) moved++;
              if (after.read(`exp_avg_sq.${p.name}`).data[j] !== 0) moved++;
            }
          }
          expect(idle, p.name).toBeGreaterThan(0);
          expect(moved, `${p.name}: values and moments of rows outside the group that moved`).toBe(
            0,
          );
          rowChecks++;
        }
      }
      for (const [m, { got, want }] of Object.entries(moments)) {
        const rel = relL2(got, want);
        if (rel > 1e-6) console.log(`  ${m}: ${rel.toExponential(3)}`);
        worst = Math.max(worst, rel);
      }
      console.log(
        `${c.name}: loss rel ${loss.toExponential(2)}, worst parameter or moment rel L2 ${worst.toExponential(2)} (${updated.size} updated)`,
      );
      expect(loss).toBeLessThan(1e-5);
      expect(updated.size).toBeGreaterThan(0);
      if (train.params.some((p) => p.rows && updated.has(p.name)))
        expect(rowChecks).toBeGreaterThan(0);
      // The issue asks for 1e-4; float64 on both sides gives float32 rounding (~4e-8).
      expect(worst).toBeLessThan(1e-6);
    });
    fs.rmSync(work, { recursive: true, force: true });
  }, 600_000);
});

describe("moec export --format torch: every shipped train program", () => {
  const files = ["examples", "examples/repro"].flatMap((d) =>
    fs
      .readdirSync(path.join(root, d))
      .filter((f) => f.endsWith(".moe"))
      .map((f) => `${d}/${f}`),
  );

  it.each(files)("%s: each model's module exports its train programs", async (rel) => {
    const file = path.join(root, rel);
    const analysis = analyze([file], nodeFileSystem());
    const models = listModels(analysis.program, [file]).map((m) => m.decl.name.name);
    const programs = listTrainPrograms(analysis.program, file).map((t) => t.decl.name.name);
    expect(models.length).toBeGreaterThan(0);
    const classes = new Set<string>();
    for (const model of models) {
      const [out] = await exportTorch(
        file,
        { model },
        () => "/dev/null",
        (m) => ({ source: rel, model: m, version: "test" }),
      );
      const text = out!.data as string;
      expect(text.match(/^# train .*not exported.*$/m)?.[0], `${rel} --model ${model}`).toBe(
        undefined,
      );
      for (const m of text.matchAll(/^class (\w+)\(nn\.Module\):/gm)) classes.add(m[1]!);
    }
    // A program is a class of the module of some model it trains (renamed only with a `_`).
    for (const p of programs)
      expect(
        [...classes].some((c) => c.replace(/_+$/, "") === p),
        `${rel}: ${p}`,
      ).toBe(true);
  });
});
