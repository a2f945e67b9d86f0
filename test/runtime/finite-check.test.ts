// Loading NaN or infinities is an error naming the file, the tensor (by its key in the file it
// came from, through maps and combinations) and the count, unless allowed.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { countNonFinite } from "../../runtime/finite-check.js";
import {
  type TensorToWrite,
  readSafetensors,
  writeSafetensors,
  writeSafetensorsFile,
} from "../../runtime/safetensors.js";
import { DataError, TrainData } from "../../runtime/train/data.js";
import { combineCheckpoints, renameCheckpoint } from "../../runtime/weight-maps.js";
import { loadWeights } from "../../runtime/weights.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moec-finite-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const f32 = (shape: number[], data: number[]): TensorToWrite => ({
  dtype: "F32",
  shape,
  data: Float32Array.from(data),
});

describe("non-finite values", () => {
  it("counts NaN, +Inf and -Inf and the first index; integers never", () => {
    expect(countNonFinite(Float32Array.from([1, 2, 3]))).toBeUndefined();
    expect(countNonFinite(Float32Array.from([1, -Infinity, NaN, Infinity, NaN]))).toEqual({
      nan: 2,
      posInf: 1,
      negInf: 1,
      first: 1,
    });
    expect(countNonFinite(Int32Array.from([1, 2]))).toBeUndefined();
  });

  it("loadWeights names the file and key each bad tensor came from", () => {
    const base = readSafetensors(
      writeSafetensors(new Map([["w", f32([2], [1, 2])]])),
      "base.safetensors",
    );
    const adapter = renameCheckpoint(
      readSafetensors(
        writeSafetensors(new Map([["base_model.model.a", f32([2], [NaN, 1])]])),
        "adapter_model.safetensors",
      ),
      (n) => n.replace("base_model.model.", ""),
    );
    const both = combineCheckpoints([base, adapter]);
    const params = [
      { path: "w", shape: [2], dtype: "f32" as const },
      { path: "a", shape: [2], dtype: "f32" as const },
    ];
    expect(() => loadWeights(params, both)).toThrow(
      "adapter_model.safetensors: tensor a (key base_model.model.a): 1 non-finite value of 2 (1 NaN; the first at index 0); pass --allow-nonfinite to load it anyway",
    );
    const loaded = loadWeights(params, both, { allowNonFinite: true });
    expect(Number.isNaN(loaded.get("a")!.data[0])).toBe(true);
  });

  it("training data with NaN is refused unless allowed", () => {
    const file = path.join(tmp, "data.safetensors");
    writeSafetensorsFile(file, new Map([["x", f32([4, 2], [0, 1, 2, 3, 4, Infinity, 6, 7])]]));
    const ports = [{ name: "x", dtype: "f32" as const, shape: [2, 2] }];
    expect(() => TrainData.open(file, ports, { seed: 0 })).toThrow(DataError);
    expect(() => TrainData.open(file, ports, { seed: 0 })).toThrow(
      "tensor x: 1 non-finite value of 8 (1 +Inf; the first at index 5); pass --allow-nonfinite",
    );
    expect(TrainData.open(file, ports, { seed: 0, allowNonFinite: true }).examples).toBe(4);
  });
});
