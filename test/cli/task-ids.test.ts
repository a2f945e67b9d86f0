// `moec run --inputs` with task id -1 ("no task", docs/adapters.md): accepted for task inputs
// only, and the model bypasses per-task adapters and gives TopK task 0's embedding, on the
// device and in the reference interpreter alike.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { readSafetensorsFile, writeSafetensorsFile } from "../../runtime/safetensors.js";
import { moec } from "./moec-cli.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-task-ids-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const model = path.join(tmp, "no-task.moe");
fs.writeFileSync(
  model,
  `import std.nn { Embedding, FFN }
import std.adapt { Bottleneck }
import std.route { MoE, TopK }
tasks Lang { en, fr }
model M() {
  in x: f32[3, 8]
  in task: Lang[3]
  in ids: i32[3]
  out adapted: f32[3, 8]
  out routed: f32[3, 8]
  out embedded: f32[3, 8]
  adapter = per task Bottleneck(8, r: { en: 4, fr: 2 })
  adapted = adapter(x, task)
  moe = MoE(router: TopK(k: 2, task_embed: 4), experts: [FFN(8, 16); 4])
  routed = moe(x, task)
  embed = Embedding(10, 8)
  embedded = embed(ids)
}
`,
);

// Rows 0 and 1 are the same token: task 0, then "no task".
const x = Float32Array.from({ length: 24 }, (_, i) =>
  i < 16 ? Math.sin(1.7 * (i % 8) + 0.3) : Math.cos(i),
);

function inputs(name: string, task: number[], ids = [1, 2, 3]): string {
  const file = path.join(tmp, `${name}.safetensors`);
  writeSafetensorsFile(
    file,
    new Map([
      ["x", { dtype: "F32" as const, shape: [3, 8], data: x }],
      ["task", { dtype: "I32" as const, shape: [3], data: Int32Array.from(task) }],
      ["ids", { dtype: "I32" as const, shape: [3], data: Int32Array.from(ids) }],
    ]),
  );
  return file;
}

const row = (t: ArrayLike<number>, r: number) => Array.from(t).slice(r * 8, r * 8 + 8);

describe("task id -1 through moec run --inputs", () => {
  for (const backend of ["reference", "gpu"]) {
    it(`bypasses per-task adapters and routes as task 0 (${backend})`, () => {
      const out = path.join(tmp, `out-${backend}.safetensors`);
      const r = moec([
        "run",
        model,
        "--inputs",
        inputs("mixed", [0, -1, 1]),
        "--backend",
        backend,
        "-o",
        out,
      ]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const o = readSafetensorsFile(out);
      const adapted = o.read("adapted").data;
      const routed = o.read("routed").data;
      // No task: the adapter returns its input; task 0's adapter changes it.
      for (const [a, b] of row(adapted, 1).map((v, j) => [v, x[8 + j]!]))
        expect(a).toBeCloseTo(b, 6);
      expect(row(adapted, 0).some((v, j) => Math.abs(v - x[j]!) > 1e-4)).toBe(true);
      // No task routes with task 0's embedding: the same token gives the same output.
      for (const [a, b] of row(routed, 1).map((v, j) => [v, row(routed, 0)[j]!]))
        expect(a).toBeCloseTo(b, 5);
    });
  }

  it("still refuses task ids past the task set, and -1 where an input is not task ids", () => {
    const past = moec([
      "run",
      model,
      "--inputs",
      inputs("past", [0, 2, 1]),
      "--backend",
      "reference",
    ]);
    expect(past.code).toBe(1);
    expect(past.stderr).toMatch(/task holds 2, outside -1\.\.1/);
    const below = moec([
      "run",
      model,
      "--inputs",
      inputs("below", [0, -2, 1]),
      "--backend",
      "reference",
    ]);
    expect(below.code).toBe(1);
    expect(below.stderr).toMatch(/task holds -2, outside -1\.\.1/);
    const ids = moec([
      "run",
      model,
      "--inputs",
      inputs("ids", [0, 1, 1], [1, -1, 3]),
      "--backend",
      "reference",
    ]);
    expect(ids.code).toBe(1);
    expect(ids.stderr).toMatch(/ids holds -1, outside 0\.\.9/);
  });
});
