// `moec run`'s --merge-adapters and --pin-groups on `moec export --format onnx`: the graph
// exported with the option matches the reference interpreter lowered with the same option
// (relative L2 < 1e-5), and differs from the graph without it.
import * as path from "node:path";
import onnxProto from "onnx-proto";
import { describe, expect, it } from "vitest";
import { root } from "../cli/moec-cli.js";
import { loraModel } from "../family-models.js";
import { compareAt, exportTo, scratchDir, session, writeModel } from "./onnx-harness.js";

const dir = scratchDir();
const matmuls = (bytes: Uint8Array) =>
  (onnxProto.onnx.ModelProto.decode(bytes).graph?.node ?? []).filter((n) => n.opType === "MatMul")
    .length;

describe("moec export --format onnx: --merge-adapters, --pin-groups", () => {
  it("--pin-groups fixes a Grouped layer's group weights, as moec run does", async () => {
    const file = path.join(root, "test/export/fixtures/routers.moe");
    const options = { model: "Pinned", pinGroups: ["moe=0.2,0.8"] };
    const pinned = exportTo(file, path.join(dir, "pinned.onnx"), options);
    const s = await session(pinned.modelBytes);
    const dims = { B: 2, T: 3 };
    for (const v of Object.values(await compareAt(file, pinned, s, dims, options)))
      expect(v).toBeLessThan(1e-5);
    // The source's own pin (0.7, 0.3) gives other outputs: the option is what the graph has.
    const unpinned = await compareAt(file, pinned, s, dims, { model: "Pinned" });
    for (const v of Object.values(unpinned)) expect(v).toBeGreaterThan(1e-3);
  });

  it("--merge-adapters merges LoRA into its Linear bases: fewer matmuls, the same outputs", async () => {
    const file = writeModel(dir, "lora", loraModel);
    const merged = exportTo(file, path.join(dir, "merged.onnx"), { mergeAdapters: true });
    const plain = exportTo(file, path.join(dir, "plain.onnx"));
    // Per merged LoRA, B·A and one matmul by the merged weight replace x·Aᵀ·Bᵀ's two.
    expect(matmuls(merged.modelBytes)).toBeLessThan(matmuls(plain.modelBytes));
    const s = await session(merged.modelBytes);
    for (const N of [3, 5]) {
      const errors = await compareAt(file, merged, s, { N }, { mergeAdapters: true });
      for (const v of Object.values(errors)) expect(v).toBeLessThan(1e-5);
    }
  });
});
