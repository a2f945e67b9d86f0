// Every shipped example exported with --format torch matches the float64 reference
// interpreter (docs/export.md): same weights, same inputs, relative L2 < 1e-5 in float64.
import { beforeAll, describe, expect, it } from "vitest";
import {
  type TorchCase,
  type TorchResult,
  findTorchPython,
  runTorchCases,
} from "./torch-harness.js";

const found = findTorchPython();
if (!found.python) console.warn(`skipping the PyTorch export tests: ${found.why}`);

const CASES: TorchCase[] = [
  {
    name: "tiny-transformer",
    file: "examples/tiny-transformer.moe",
    dims: { B: 2, T: 5 },
  },
  {
    name: "task-moe",
    file: "examples/task-moe.moe",
    set: ["layers=2", "d=16", "vocab=12"],
    dims: { B: 3, T: 4 },
    ids: { tokens: 12 },
  },
];

describe.skipIf(!found.python)("moec export --format torch: examples", () => {
  let results: Map<string, TorchResult>;
  beforeAll(async () => {
    results = new Map((await runTorchCases(found.python!, CASES)).map((r) => [r.name, r]));
    for (const r of results.values())
      console.log(
        `${r.name}: rel L2 ${JSON.stringify(r.relL2)} round trip ${JSON.stringify(r.roundTrip)}`,
      );
  }, 600_000);
  for (const c of CASES) {
    it(c.name, () => {
      const r = results.get(c.name)!;
      expect(r.error).toBeUndefined();
      expect(r.keysDiff).toBe("");
      expect(r.keysMatch).toBe(true);
      expect(Object.keys(r.relL2).length).toBeGreaterThan(0);
      for (const v of Object.values(r.relL2)) expect(v).toBeLessThan(1e-5);
      for (const v of Object.values(r.roundTrip)) expect(v).toBeLessThan(1e-5);
    });
  }
});
