// Every model of every shipped example (examples/*.moe, examples/repro/*.moe) exported to ONNX
// and run by onnxruntime-node (CPU, every graph optimisation on) against `moec run --backend
// reference` on the same weights and inputs: relative L2 < 1e-5, at two sizes of the dims left
// symbolic. Models whose defaults are large are shrunk with --set (the structure is the same);
// dims that cannot stay symbolic in a model (docs/export.md) are fixed with --dim, as a user
// would, and the model is then run at that size.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { listModels } from "../../compiler/check/elaborate-model.js";
import { analyze, nodeFileSystem } from "../../compiler/pipeline.js";
import { compareAt, exportTo, scratchDir, session } from "./onnx-harness.js";

const root = path.join(import.meta.dirname, "../..");
const dir = scratchDir();

interface Case {
  set?: string[];
  /** Dims fixed at export (they cannot stay symbolic) with their sizes. */
  dim?: Record<string, number>;
}

const small = ["layers=2", "d=64", "vocab=50"];
const smallHeads = [...small, "heads=4"];
/** By `file:model`; a model not listed exports at its defaults with every dim symbolic. */
const CASES: Record<string, Case> = {
  "examples/at-moe.moe:Backbone": { set: small },
  "examples/at-moe.moe:ATMoEModel": { set: small },
  "examples/gpt2-adapters.moe:GPT2TaskAdapters": { set: [...smallHeads, "context=32"] },
  "examples/gpt2.moe:GPT2Small": { set: smallHeads },
  // The batch is padded to whole groups: the padding's size does not follow B.
  "examples/mixture-of-tokens.moe:MoTLM": {
    set: [...small, "experts=4", "group=8"],
    dim: { B: 4 },
  },
  "examples/road-distill.moe:LargeTeacher": { set: smallHeads },
  "examples/road-distill.moe:BaseTeacher": { set: smallHeads },
  "examples/road-distill.moe:Student": { set: smallHeads },
  // Expert capacity is rounded up from B·T.
  "examples/task-moe.moe:Translator": { set: small, dim: { B: 3, T: 5 } },
  // Groups of examples: the graph's structure changes with B.
  "examples/repro/mixture-of-tokens.moe:MoT": { dim: { B: 5 } },
};

const files = ["examples", "examples/repro"].flatMap((d) =>
  fs
    .readdirSync(path.join(root, d))
    .filter((f) => f.endsWith(".moe"))
    .map((f) => `${d}/${f}`),
);

function modelsOf(file: string): string[] {
  const full = path.join(root, file);
  const analysis = analyze([full], nodeFileSystem());
  return listModels(analysis.program, [full]).map((m) => m.decl.name.name);
}

/** Two sizes for the symbolic dims: each dim differs between them, and from the probes'. */
const SIZES = [
  [2, 3],
  [3, 5],
];

describe("every shipped example exports to ONNX and matches the reference", () => {
  it("finds the examples", () => {
    expect(files.length).toBeGreaterThan(10);
    for (const key of Object.keys(CASES)) expect(files).toContain(key.split(":")[0]);
  });
  for (const file of files)
    for (const model of modelsOf(file)) {
      const c = CASES[`${file}:${model}`] ?? {};
      it(`${file} ${model}`, async () => {
        const full = path.join(root, file);
        const fixed = c.dim ?? {};
        const options = {
          model,
          set: c.set ?? [],
          dim: Object.entries(fixed).map(([k, v]) => `${k}=${v}`),
        };
        const e = exportTo(full, path.join(dir, "m.onnx"), options);
        expect(e.symbolic.some((d) => d in fixed)).toBe(false);
        const s = await session(e.modelBytes);
        const runs = e.symbolic.length === 0 ? SIZES.slice(0, 1) : SIZES;
        for (const sizes of runs) {
          const dims = {
            ...fixed,
            ...Object.fromEntries(e.symbolic.map((d, i) => [d, sizes[i]!])),
          };
          const errors = await compareAt(full, e, s, dims, options);
          expect(Object.keys(errors).length).toBeGreaterThan(0);
          for (const [name, err] of Object.entries(errors))
            expect(err, `${name} at ${JSON.stringify(dims)}`).toBeLessThan(1e-5);
        }
        await s.release();
      });
    }
});
