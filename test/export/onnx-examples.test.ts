// Every shipped example's models exported to ONNX and run by onnxruntime-node (CPU, every
// graph optimisation on) against `moec run --backend reference` on the same weights and
// inputs: relative L2 < 1e-5, at two sizes of each dim left symbolic. Models whose defaults
// are large are shrunk with --set (the structure is the same); dims that cannot stay symbolic
// in a model (docs/export.md) are fixed with --dim, as a user would.
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { compareAt, exportTo, scratchDir, session } from "./onnx-harness.js";

const root = path.join(import.meta.dirname, "../..");
const dir = scratchDir();

interface Case {
  file: string;
  model?: string;
  set?: string[];
  /** Dims fixed at export (they cannot stay symbolic), and the sizes they are run at. */
  dim?: Record<string, number>;
  /** The two sizes of the symbolic dims. */
  sizes: Record<string, number>[];
}

const CASES: Case[] = [
  {
    file: "examples/tiny-transformer.moe",
    sizes: [
      { B: 2, T: 3 },
      { B: 3, T: 5 },
    ],
  },
];

describe("every shipped example exports to ONNX and matches the reference", () => {
  for (const c of CASES) {
    it(`${c.file}${c.model ? ` ${c.model}` : ""}`, async () => {
      const file = path.join(root, c.file);
      const dims = Object.entries(c.dim ?? {}).map(([k, v]) => `${k}=${v}`);
      const options = { ...(c.model ? { model: c.model } : {}), set: c.set ?? [], dim: dims };
      const e = exportTo(file, path.join(dir, "m.onnx"), options);
      expect(e.symbolic).toEqual(Object.keys(c.sizes[0]!).sort());
      const s = await session(e.files[0]!.data as Uint8Array);
      for (const sizes of c.sizes) {
        const errors = await compareAt(file, e, s, { ...c.dim, ...sizes }, options);
        for (const [name, err] of Object.entries(errors))
          expect(err, `${name} at ${JSON.stringify(sizes)}`).toBeLessThan(1e-5);
      }
      await s.release();
    });
  }
});
