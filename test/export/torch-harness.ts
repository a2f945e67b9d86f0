// Runs exported PyTorch modules against the float64 reference interpreter: one Python process
// per test file (importing torch costs seconds), `moec run --backend reference` for the
// expected outputs and for the round trip of the weights torch saved.
import { spawnSync } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { formatDim } from "../../compiler/check/dims.js";
import { analyze, elaborate, nodeFileSystem, reportParams } from "../../compiler/pipeline.js";
import { exportTorch } from "../../cli/export-torch.js";
import { MOEC_VERSION } from "../../cli/export-format.js";
import { parseOverride } from "../../cli/params-command.js";
import {
  type SafetensorsDtype,
  type TensorToWrite,
  readSafetensorsFile,
  writeSafetensorsFile,
} from "../../runtime/safetensors.js";
import { prng } from "../prng.js";
import { moecAsync, root } from "../cli/moec-cli.js";
import { relL2 } from "../rel-l2.js";

/** A Python that imports torch (Debian's python3-torch is /usr/bin/python3), or why none. */
export function findTorchPython(): { python?: string; why: string } {
  for (const py of ["/usr/bin/python3", "python3"]) {
    const r = spawnSync(py, ["-c", "import torch"], { encoding: "utf8", timeout: 120_000 });
    if (r.status === 0) return { python: py, why: "" };
  }
  return { why: "no python3 that imports torch (scripts/setup.sh installs python3-torch)" };
}

/** A moec dtype's safetensors name (task ids are i32). */
const SAFETENSORS_DTYPES: Record<string, SafetensorsDtype> = {
  f32: "F32",
  f16: "F16",
  bf16: "BF16",
  i32: "I32",
  i64: "I64",
  bool: "BOOL",
  task: "I32",
};

export interface TorchCase {
  /** Unique label (also the work folder's name). */
  name: string;
  /** The .moe file, relative to the repository root. */
  file: string;
  model?: string;
  set?: string[];
  dims: Record<string, number>;
  /** Exclusive upper bound of each i32 input's values (default 4); task inputs use their set. */
  ids?: Record<string, number>;
  /** Task inputs include -1 (no task) beside the tasks' ids. */
  noTask?: boolean;
  /** Scale of the random weights (default 0.5). */
  scale?: number;
  /** `--merge-adapters` and `--pin-groups`, given to the export and to `moec run` alike. */
  mergeAdapters?: boolean;
  pinGroups?: string[];
}

export interface TorchResult {
  name: string;
  /** state_dict() keys, shapes and dtypes equal `moec params --json`'s. */
  keysMatch: boolean;
  keysDiff: string;
  /** Relative L2 error of each output against the reference interpreter. */
  relL2: Record<string, number>;
  /** torch → safetensors → `moec run`: relative L2 against torch's own outputs. */
  roundTrip: Record<string, number>;
  /** Each MoE layer's auxiliary losses in torch (`layer.aux`) and in `moec run --stats`. */
  aux: Record<string, { balance: number; z: number }>;
  stats: Record<string, { balance_loss?: number; z_loss?: number }>;
  error?: string;
}

const PY_SCRIPT = String.raw`
import importlib.util, json, sys, traceback
import torch
torch.manual_seed(0)
TORCH_DTYPES = {"f32": "torch.float32", "f16": "torch.float16", "bf16": "torch.bfloat16",
                "i32": "torch.int32", "i64": "torch.int64", "bool": "torch.bool"}
cases = json.load(open(sys.argv[1]))
results = []
for c in cases:
    r = {"name": c["name"], "keysMatch": False, "keysDiff": "", "relL2": {}, "roundTrip": {}}
    try:
        spec = importlib.util.spec_from_file_location("m_" + c["name"].replace("-", "_"), c["dir"] + "/model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = getattr(mod, c["cls"])()
        got = {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()}
        dtypes = {k: v.dtype for k, v in model.state_dict().items()}
        want = {p["name"]: [p["shape"], TORCH_DTYPES[p["dtype"]]] for p in c["params"]}
        r["keysMatch"] = got == want
        if got != want:
            r["keysDiff"] = json.dumps({"extra": sorted(set(got) - set(want))[:5], "missing": sorted(set(want) - set(got))[:5],
                                        "shape": [k for k in got if k in want and got[k] != want[k]][:5]})
        model.load_state_dict(mod.load_file(c["dir"] + "/weights.safetensors"))
        model.double().eval()
        inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in mod.load_file(c["dir"] + "/inputs.safetensors").items()}
        ref = mod.load_file(c["dir"] + "/ref.safetensors")
        with torch.no_grad():
            out = model(**inputs)
        if not isinstance(out, dict):
            out = {c["outputs"][0]: out}
        r["aux"] = {n: {k: float(v) for k, v in m.aux.items()} for n, m in model.named_modules()
                    if isinstance(m, mod.MoE) and m.aux}
        for k, v in out.items():
            e = ref[k].double()
            r["relL2"][k] = float((v.double() - e).norm() / max(e.norm(), 1e-30))
        # Round trip: change every floating weight in torch (rounded to its own dtype, as the
        # saved file holds it), save, and let moec run the saved file.
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    v.mul_(1.25).add_(0.01)
                    v.copy_(v.to(dtypes[k]))
            out2 = model(**inputs)
        if not isinstance(out2, dict):
            out2 = {c["outputs"][0]: out2}
        mod.save_file({k: v.to(dtypes[k]).contiguous() for k, v in model.state_dict().items()}, c["dir"] + "/roundtrip.safetensors")
        mod.save_file({k: v.float().contiguous() for k, v in out2.items()}, c["dir"] + "/torch-out.safetensors")
    except Exception:
        r["error"] = traceback.format_exc()[-2000:]
    results.append(r)
print(json.dumps(results))
`;

function runArgs(c: TorchCase, dir: string, weights: string, out: string): string[] {
  return [
    "run",
    c.file,
    "--backend",
    "reference",
    ...(c.model ? ["--model", c.model] : []),
    ...(c.set ?? []).flatMap((s) => ["--set", s]),
    ...(c.mergeAdapters ? ["--merge-adapters"] : []),
    ...(c.pinGroups ?? []).flatMap((p) => ["--pin-groups", p]),
    ...Object.entries(c.dims).flatMap(([k, v]) => ["--dim", `${k}=${v}`]),
    "--weights",
    path.join(dir, weights),
    "--inputs",
    path.join(dir, "inputs.safetensors"),
    "-o",
    path.join(dir, out),
    "--stats",
    "--json",
  ];
}

/** Exports, runs and compares every case: the results by case name. */
export async function runTorchCases(python: string, cases: TorchCase[]): Promise<TorchResult[]> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "moec-torch-"));
  const prepared: {
    c: TorchCase;
    dir: string;
    cls: string;
    params: { name: string; shape: number[]; dtype: string }[];
    outputs: string[];
  }[] = [];
  for (const c of cases) {
    const dir = path.join(work, c.name);
    fs.mkdirSync(dir);
    const file = path.join(root, c.file);
    const overrides = new Map((c.set ?? []).map(parseOverride));
    const analysis = analyze([file], nodeFileSystem());
    const el = elaborate(analysis, file, c.model, overrides);
    if ("error" in el) throw new Error(el.error);
    const model = el.model;
    const params = reportParams(model).params;
    const rand = prng(c.name.length * 7919 + 17);
    const scale = c.scale ?? 0.5;
    const weights = new Map(
      params.map((p) => {
        const n = p.shape.reduce((a, b) => a * b, 1);
        const dtype = SAFETENSORS_DTYPES[p.dtype]!;
        // Integer weights: small values; bool: 0 or 1; floating: uniform in ±scale.
        const data = Float64Array.from({ length: n }, () =>
          dtype === "BOOL"
            ? Number(rand() < 0.5)
            : dtype === "I32" || dtype === "I64"
              ? Math.floor(rand() * 7) - 3
              : (rand() * 2 - 1) * scale,
        );
        return [p.name, { dtype, shape: p.shape, data }];
      }),
    );
    writeSafetensorsFile(path.join(dir, "weights.safetensors"), weights);
    const inputs = new Map<string, TensorToWrite>(
      (model.root?.inputs ?? []).map((port): [string, TensorToWrite] => {
        const shape = port.type.dims.map((d) => {
          const s = formatDim(d);
          const v = /^\d+$/.test(s) ? Number(s) : c.dims[s];
          if (v === undefined) throw new Error(`${c.name}: no size for dim ${s}`);
          return v;
        });
        const n = shape.reduce((a, b) => a * b, 1);
        const dtype = SAFETENSORS_DTYPES[port.type.dtype] ?? "I32";
        if (dtype === "F32" || dtype === "F16" || dtype === "BF16")
          return [
            port.name,
            { dtype, shape, data: Float64Array.from({ length: n }, () => rand() * 2 - 1) },
          ];
        const set = model.tasks.find((t) => t.set === port.type.taskSet);
        const hi = set ? set.members.length : (c.ids?.[port.name] ?? 4);
        const lo = set && c.noTask ? -1 : 0;
        const data = Int32Array.from({ length: n }, () => lo + Math.floor(rand() * (hi - lo)));
        return [port.name, { dtype, shape, data }];
      }),
    );
    writeSafetensorsFile(path.join(dir, "inputs.safetensors"), inputs);
    const files = await exportTorch(
      file,
      { model: c.model, set: c.set, mergeAdapters: c.mergeAdapters, pinGroups: c.pinGroups },
      () => path.join(dir, "model.py"),
      (m) => ({ source: c.file, model: m, version: MOEC_VERSION }),
    );
    const text = files[0]!.data;
    if (typeof text !== "string") throw new Error("the torch format writes one text file");
    fs.writeFileSync(files[0]!.path, text);
    prepared.push({
      c,
      dir,
      cls: model.name,
      params: params.map((p) => ({ name: p.name, shape: p.shape, dtype: p.dtype })),
      outputs: (model.root?.outputs ?? []).map((o) => o.name),
    });
  }
  const refs = await Promise.all(
    prepared.map(({ c, dir }) =>
      moecAsync(runArgs(c, dir, "weights.safetensors", "ref.safetensors")),
    ),
  );
  refs.forEach((r, i) => {
    if (r.code !== 0) throw new Error(`moec run ${prepared[i]!.c.name}: ${r.stderr}`);
  });
  const spec = path.join(work, "cases.json");
  fs.writeFileSync(
    spec,
    JSON.stringify(
      prepared.map((p) => ({
        name: p.c.name,
        dir: p.dir,
        cls: p.cls,
        params: p.params,
        outputs: p.outputs,
      })),
    ),
  );
  const py = spawnSync(python, ["-c", PY_SCRIPT, spec], {
    encoding: "utf8",
    timeout: 600_000,
    maxBuffer: 64 << 20,
  });
  if (py.status !== 0) throw new Error(`python: ${py.stderr}`);
  const results = JSON.parse(py.stdout) as TorchResult[];
  results.forEach((r, i) => {
    const summary = JSON.parse(refs[i]!.stdout) as { routing?: TorchResult["stats"] };
    r.stats = summary.routing ?? {};
    r.aux ??= {};
  });
  const trips = await Promise.all(
    prepared.map(({ c, dir }, i) =>
      results[i]!.error
        ? undefined
        : moecAsync(runArgs(c, dir, "roundtrip.safetensors", "roundtrip-out.safetensors")),
    ),
  );
  trips.forEach((r, i) => {
    if (!r) return;
    const res = results[i]!;
    if (r.code !== 0) {
      res.error = `moec run on torch's weights: ${r.stderr}`;
      return;
    }
    const dir = prepared[i]!.dir;
    const mine = readSafetensorsFile(path.join(dir, "roundtrip-out.safetensors"));
    const theirs = readSafetensorsFile(path.join(dir, "torch-out.safetensors"));
    for (const name of prepared[i]!.outputs)
      res.roundTrip[name] = relL2(mine.read(name).data, theirs.read(name).data);
  });
  fs.rmSync(work, { recursive: true, force: true });
  return results;
}

/**
 * A describe block: every case exported, run in float64 against the reference (relative L2
 * < 1e-5), its state_dict() checked against `moec params`, and torch's saved weights run by
 * `moec run` (the same outputs as torch's). Skipped, saying why, without a torch Python.
 */
export function describeTorchCases(title: string, cases: TorchCase[]): void {
  const found = findTorchPython();
  if (!found.python) console.warn(`skipping ${title}: ${found.why}`);
  describe.skipIf(!found.python)(title, () => {
    let results: Map<string, TorchResult>;
    beforeAll(async () => {
      results = new Map((await runTorchCases(found.python!, cases)).map((r) => [r.name, r]));
      for (const r of results.values())
        console.log(
          `${r.name}: rel L2 ${JSON.stringify(r.relL2)} round trip ${JSON.stringify(r.roundTrip)}`,
        );
    }, 900_000);
    for (const c of cases) {
      it(c.name, () => {
        const r = results.get(c.name)!;
        expect(r.error).toBeUndefined();
        expect(r.keysDiff).toBe("");
        expect(r.keysMatch).toBe(true);
        expect(Object.keys(r.relL2).length).toBeGreaterThan(0);
        for (const v of Object.values(r.relL2)) expect(v).toBeLessThan(1e-5);
        expect(Object.keys(r.roundTrip)).toEqual(Object.keys(r.relL2));
        for (const v of Object.values(r.roundTrip)) expect(v).toBeLessThan(1e-5);
        // The auxiliary losses of every layer with router logits, as moec run --stats has them.
        const withLogits = Object.entries(r.stats).filter(([, s]) => s.balance_loss !== undefined);
        expect(Object.keys(r.aux).sort()).toEqual(withLogits.map(([k]) => k).sort());
        for (const [layer, s] of withLogits) {
          const a = r.aux[layer]!;
          expect(Math.abs(a.balance - s.balance_loss!)).toBeLessThan(
            1e-5 * Math.max(1, s.balance_loss!),
          );
          expect(Math.abs(a.z - s.z_loss!)).toBeLessThan(1e-5 * Math.max(1, s.z_loss!));
        }
      });
    }
  });
}
